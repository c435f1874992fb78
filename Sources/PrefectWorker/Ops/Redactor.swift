import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Replaces secret values in text with `[REDACTED]`: a pure value, built once from a list of secrets.
///
/// Matching is on UTF-8 bytes, which is exact for Unicode text (a valid UTF-8 secret can only match at a
/// character boundary of valid UTF-8 text). Overlapping or nested matches of different secrets become one
/// `[REDACTED]`. Values shorter than `minimumLength` characters are not secrets here: they would match
/// everywhere. A secret that spans lines (a PEM key) is also matched line by line, since job output is
/// redacted a line at a time.
struct Redactor: Sendable, Equatable {
    static let placeholder = "[REDACTED]"
    /// Shorter values are not redacted.
    static let minimumLength = 6
    /// Names of variables whose values are secrets, as buildkite-agent's default `redacted-vars`.
    static let defaultPatterns = ["*_PASSWORD", "*_SECRET", "*_TOKEN", "*_ACCESS_KEY", "*_SECRET_KEY",
                                         "*_CONNECTION_STRING", "*_API_KEY"]

    /// Longest first, without duplicates.
    let secrets: [[UInt8]]

    init(secrets: some Sequence<String>) {
        var values = Set<String>()
        for secret in secrets {
            var parts = [secret]
            if secret.contains(where: \.isNewline) {
                parts += secret.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            }
            for part in parts where part.count >= Self.minimumLength { values.insert(part) }
        }
        self.secrets = values.map { Array($0.utf8) }.sorted { $0.count != $1.count ? $0.count > $1.count : $0.lexicographicallyPrecedes($1) }
    }

    var isEmpty: Bool { secrets.isEmpty }
    /// The longest secret, in bytes.
    var maximumBytes: Int { secrets.first?.count ?? 0 }

    /// The values of `environment` that are secrets: those of variables whose names match one of `patterns`
    /// (shell globs, case-insensitive), plus `PREFECT_API_KEY` and `PREFECT_API_AUTH_STRING` (the whole
    /// string and its password, the part after the first colon).
    static func secretValues(environment: [String: String], patterns: [String]) -> [String] {
        var values: [String] = []
        for (name, value) in environment {
            if name == "PREFECT_API_KEY" || patterns.contains(where: { globMatches($0, name) }) {
                values.append(value)
            }
            if name == "PREFECT_API_AUTH_STRING" {
                values.append(value)
                if let colon = value.firstIndex(of: ":") { values.append(String(value[value.index(after: colon)...])) }
            }
        }
        return values
    }

    /// Whether `name` matches the shell glob `pattern` (`*` any run, `?` one character), ignoring case.
    static func globMatches(_ pattern: String, _ name: String) -> Bool {
        let p = Array(pattern.uppercased()), n = Array(name.uppercased())
        var pi = 0, ni = 0
        var star: Int?, resume = 0
        while ni < n.count {
            if pi < p.count, p[pi] == "?" || p[pi] == n[ni] {
                pi += 1; ni += 1
            } else if pi < p.count, p[pi] == "*" {
                star = pi; resume = ni; pi += 1
            } else if let star {
                pi = star + 1; resume += 1; ni = resume
            } else {
                return false
            }
        }
        while pi < p.count, p[pi] == "*" { pi += 1 }
        return pi == p.count
    }

    /// The byte ranges of `bytes` that are secrets, merged where they overlap, in order.
    func matches(in bytes: UnsafeBufferPointer<UInt8>) -> [Range<Int>] {
        guard !secrets.isEmpty else { return [] }
        var found: [Range<Int>] = []
        for secret in secrets where secret.count <= bytes.count {
            let first = secret[0]
            var i = 0
            let last = bytes.count - secret.count
            while i <= last {
                if bytes[i] == first {
                    var j = 1
                    while j < secret.count, bytes[i + j] == secret[j] { j += 1 }
                    if j == secret.count { found.append(i..<(i + secret.count)) }
                }
                i += 1
            }
        }
        guard found.count > 1 else { return found }
        found.sort { $0.lowerBound < $1.lowerBound }
        var merged: [Range<Int>] = [found[0]]
        for range in found.dropFirst() {
            if range.lowerBound < merged[merged.count - 1].upperBound {
                merged[merged.count - 1] = merged[merged.count - 1].lowerBound..<max(range.upperBound, merged[merged.count - 1].upperBound)
            } else {
                merged.append(range)
            }
        }
        return merged
    }

    /// `text` with every secret in it replaced by `[REDACTED]`.
    func redact(_ text: String) -> String {
        guard !secrets.isEmpty, text.utf8.count >= Self.minimumLength else { return text }
        var text = text
        return text.withUTF8 { bytes in
            let ranges = matches(in: bytes)
            guard !ranges.isEmpty else { return String(decoding: bytes, as: UTF8.self) }
            var out: [UInt8] = []
            out.reserveCapacity(bytes.count)
            var position = 0
            for range in ranges {
                out += bytes[position..<range.lowerBound]
                out += Self.placeholder.utf8
                position = range.upperBound
            }
            out += bytes[position...]
            return String(decoding: out, as: UTF8.self)
        }
    }

    /// Every string in `json` (keys too) redacted.
    func redact(_ json: JSON) -> JSON {
        guard !secrets.isEmpty else { return json }
        switch json {
        case .string(let s): return .string(redact(s))
        case .array(let items): return .array(items.map(redact))
        case .object(let fields):
            var out: [String: JSON] = [:]
            for (key, value) in fields { out[redact(key)] = redact(value) }
            return .object(out)
        default: return json
        }
    }

    /// Where to cut an over-long, unterminated line: at most `proposed`, not inside a secret, and early
    /// enough that a secret cut off by the end of `bytes` (more may follow) lies wholly after the cut.
    func safeCut(_ bytes: UnsafeBufferPointer<UInt8>, proposed: Int) -> Int {
        guard !secrets.isEmpty else { return proposed }
        var cut = min(proposed, bytes.count - (maximumBytes - 1))
        for range in matches(in: bytes) where range.lowerBound < cut && cut < range.upperBound {
            cut = range.upperBound
        }
        return max(cut, 1)
    }
}

/// The secrets the worker knows now: its own (from its environment, fixed at start) and those of the runs it
/// is handling (from each job's `env`, added at launch and removed when the run is done). Every worker log
/// line, event, and line of job output passes through `redact`.
final class KnownSecrets: Sendable {
    private struct State {
        var counts: [String: Int] = [:]
        var redactor = Redactor(secrets: [String]())
    }

    private let base: [String]
    private let state: Mutex<State>

    init(_ secrets: [String]) {
        base = secrets
        state = Mutex(State(counts: [:], redactor: Redactor(secrets: secrets)))
    }

    /// The redactor for what is known now.
    var redactor: Redactor { state.withLock { $0.redactor } }

    func redact(_ text: String) -> String { redactor.redact(text) }
    func redact(_ json: JSON) -> JSON { redactor.redact(json) }

    /// Adds a run's secrets; `remove` them with the same list when the run is done.
    func add(_ secrets: [String]) {
        state.withLock { state in
            for secret in secrets { state.counts[secret, default: 0] += 1 }
            state.redactor = Redactor(secrets: base + state.counts.keys)
        }
    }

    func remove(_ secrets: [String]) {
        state.withLock { state in
            for secret in secrets {
                if let count = state.counts[secret] { state.counts[secret] = count > 1 ? count - 1 : nil }
            }
            state.redactor = Redactor(secrets: base + state.counts.keys)
        }
    }
}

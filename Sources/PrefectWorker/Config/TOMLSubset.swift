import Foundation

/// A value of the TOML subset that Prefect's `profiles.toml` and `prefect.toml` use.
enum TOMLValue: Equatable, Sendable {
    case string(String)
    case integer(Int)
    /// A float with its text as written (underscores removed), so `2.50` is handed on as written.
    case float(Double, text: String)
    case boolean(Bool)
    case table([String: TOMLValue])

    /// The value as an environment variable would carry it; nil for a table.
    var environmentText: String? {
        switch self {
        case .string(let s): s
        case .integer(let i): String(i)
        case .float(_, let text): text
        case .boolean(let b): b ? "true" : "false"
        case .table: nil
        }
    }

    var tableValue: [String: TOMLValue]? {
        if case .table(let t) = self { return t }
        return nil
    }
}

/// A TOML file outside the subset, or broken: names the file, the line and what is wrong.
struct TOMLError: Error, Equatable, CustomStringConvertible {
    var path: String
    var line: Int
    var message: String
    var description: String { "\(path):\(line): \(message)" }
}

/// Parses the TOML subset of Prefect's settings files: `[tables]` and `[dotted."quoted".tables]`, `key = value`
/// with bare, quoted and dotted keys, basic and literal strings, integers, floats, booleans and `#` comments.
/// Arrays, inline tables, multi-line strings, dates and arrays of tables are errors that say so: the worker
/// reads no setting that needs them, and guessing would be worse than stopping.
enum TOMLSubset {
    static func parse(_ text: String, path: String) throws -> [String: TOMLValue] {
        var parser = LineParser(path: path)
        var root: [String: TOMLValue] = [:]
        var current: [String] = []
        var definedTables: Set<[String]> = []
        var lineNumber = 0
        // "\r\n" is one Character in Swift: normalise line ends before splitting.
        let lines = text.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false)
        for rawLine in lines {
            lineNumber += 1
            parser.line = lineNumber
            parser.chars = Array(rawLine)
            parser.index = 0
            parser.skipSpaces()
            if parser.atEnd || parser.peek == "#" { continue }
            if parser.peek == "[" {
                if parser.peek(1) == "[" { throw parser.error("arrays of tables ([[...]]) are not supported") }
                parser.index += 1
                parser.skipSpaces()
                let keyPath = try parser.key()
                parser.skipSpaces()
                guard parser.peek == "]" else { throw parser.error("expected ']' to close the table header") }
                parser.index += 1
                try parser.expectLineEnd(after: "the table header")
                if definedTables.contains(keyPath) {
                    throw parser.error("table [\(render(keyPath))] is defined twice")
                }
                definedTables.insert(keyPath)
                try ensureTable(&root, keyPath, parser)
                current = keyPath
                continue
            }
            let keyPath = try parser.key()
            parser.skipSpaces()
            guard parser.peek == "=" else { throw parser.error("expected '=' after the key \(render(keyPath))") }
            parser.index += 1
            parser.skipSpaces()
            let value = try parser.value()
            try parser.expectLineEnd(after: "the value of \(render(keyPath))")
            try insert(&root, current + keyPath, value, parser)
        }
        return root
    }

    static func render(_ keyPath: [String]) -> String {
        keyPath.map { key in
            key.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") } && !key.isEmpty
                ? key : "\"" + key.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
        }.joined(separator: ".")
    }

    private static func ensureTable(_ table: inout [String: TOMLValue], _ keyPath: [String], _ parser: LineParser) throws {
        guard let first = keyPath.first else { return }
        var child: [String: TOMLValue]
        switch table[first] {
        case nil: child = [:]
        case .table(let existing)?: child = existing
        case _?: throw parser.error("\(render(keyPath)) is already a value, not a table")
        }
        try ensureTable(&child, Array(keyPath.dropFirst()), parser)
        table[first] = .table(child)
    }

    private static func insert(_ table: inout [String: TOMLValue], _ keyPath: [String], _ value: TOMLValue,
                               _ parser: LineParser, prefix: [String] = []) throws {
        let key = keyPath[0]
        if keyPath.count == 1 {
            guard table[key] == nil else { throw parser.error("key \(render(prefix + [key])) is defined twice") }
            table[key] = value
            return
        }
        var child: [String: TOMLValue]
        switch table[key] {
        case nil: child = [:]
        case .table(let existing)?: child = existing
        case _?: throw parser.error("\(render(prefix + [key])) is already a value, not a table")
        }
        try insert(&child, Array(keyPath.dropFirst()), value, parser, prefix: prefix + [key])
        table[key] = .table(child)
    }
}

/// The cursor over one line of a TOML file.
private struct LineParser {
    let path: String
    var line = 0
    var chars: [Character] = []
    var index = 0

    init(path: String) { self.path = path }

    var atEnd: Bool { index >= chars.count }
    var peek: Character? { index < chars.count ? chars[index] : nil }
    func peek(_ offset: Int) -> Character? { index + offset < chars.count ? chars[index + offset] : nil }

    func error(_ message: String) -> TOMLError { TOMLError(path: path, line: line, message: message) }

    mutating func skipSpaces() {
        while let c = peek, c == " " || c == "\t" { index += 1 }
    }

    mutating func expectLineEnd(after what: String) throws {
        skipSpaces()
        guard let c = peek else { return }
        if c == "#" { return }
        throw error("unexpected text after \(what): '\(String(chars[index...]).prefix(40))'")
    }

    /// A dotted key: bare (`A-Za-z0-9_-`), "basic" or 'literal' segments separated by dots.
    mutating func key() throws -> [String] {
        var segments: [String] = []
        while true {
            skipSpaces()
            guard let c = peek else { throw error(segments.isEmpty ? "expected a key" : "expected a key after '.'") }
            if c == "\"" {
                if peek(1) == "\"" && peek(2) == "\"" { throw error("multi-line strings are not supported as keys") }
                segments.append(try basicString())
            } else if c == "'" {
                segments.append(try literalString())
            } else {
                var bare = ""
                while let c = peek, c.isASCII, c.isLetter || c.isNumber || c == "_" || c == "-" {
                    bare.append(c)
                    index += 1
                }
                if bare.isEmpty { throw error("'\(c)' cannot start a key (bare keys are A-Z a-z 0-9 _ -; quote others)") }
                segments.append(bare)
            }
            skipSpaces()
            if peek == "." { index += 1; continue }
            return segments
        }
    }

    mutating func value() throws -> TOMLValue {
        guard let c = peek, c != "#" else { throw error("expected a value") }
        switch c {
        case "\"":
            if peek(1) == "\"" && peek(2) == "\"" { throw error("multi-line strings (\"\"\") are not supported") }
            return .string(try basicString())
        case "'":
            if peek(1) == "'" && peek(2) == "'" { throw error("multi-line literal strings (''') are not supported") }
            return .string(try literalString())
        case "[": throw error("arrays are not supported")
        case "{": throw error("inline tables are not supported")
        default:
            var word = ""
            while let c = peek, c != " ", c != "\t", c != "#" {
                word.append(c)
                index += 1
            }
            if word == "true" { return .boolean(true) }
            if word == "false" { return .boolean(false) }
            if let number = number(word) { return number }
            if word.range(of: #"^\d{4}-\d{2}-\d{2}|^\d{2}:\d{2}"#, options: .regularExpression) != nil {
                throw error("dates and times are not supported (quote the value to make it a string)")
            }
            throw error("'\(word.prefix(40))' is not a string, number or boolean (strings need quotes)")
        }
    }

    func number(_ word: String) -> TOMLValue? {
        // Underscores only between digits.
        if word.range(of: #"(^|[^0-9a-fA-F])_|_($|[^0-9a-fA-F])"#, options: .regularExpression) != nil { return nil }
        let text = word.replacingOccurrences(of: "_", with: "")
        for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where text.hasPrefix(prefix) {
            return Int(text.dropFirst(2), radix: radix).map(TOMLValue.integer)
        }
        if text.range(of: #"^[+-]?(0|[1-9][0-9]*)$"#, options: .regularExpression) != nil {
            return Int(text).map(TOMLValue.integer)
        }
        if text.range(of: #"^[+-]?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$"#, options: .regularExpression) != nil,
           let double = Double(text) {
            return .float(double, text: text.hasPrefix("+") ? String(text.dropFirst()) : text)
        }
        switch text {
        case "inf", "+inf": return .float(.infinity, text: "inf")
        case "-inf": return .float(-.infinity, text: "-inf")
        case "nan", "+nan", "-nan": return .float(.nan, text: "nan")
        default: return nil
        }
    }

    mutating func literalString() throws -> String {
        index += 1
        var s = ""
        while let c = peek {
            index += 1
            if c == "'" { return s }
            s.append(c)
        }
        throw error("unterminated string (missing ')")
    }

    mutating func basicString() throws -> String {
        index += 1
        var s = ""
        while let c = peek {
            index += 1
            switch c {
            case "\"": return s
            case "\\":
                guard let e = peek else { throw error("unterminated string (missing \")") }
                index += 1
                switch e {
                case "b": s.append("\u{08}")
                case "t": s.append("\t")
                case "n": s.append("\n")
                case "f": s.append("\u{0C}")
                case "r": s.append("\r")
                case "e": s.append("\u{1B}")
                case "\"": s.append("\"")
                case "\\": s.append("\\")
                case "u", "U":
                    let count = e == "u" ? 4 : 8
                    guard index + count <= chars.count,
                          let code = UInt32(String(chars[index..<index + count]), radix: 16),
                          let scalar = Unicode.Scalar(code) else {
                        throw error("invalid \\\(e) escape in a string (\(count) hex digits of a Unicode scalar)")
                    }
                    index += count
                    s.unicodeScalars.append(scalar)
                default: throw error("invalid escape '\\\(e)' in a string")
                }
            default: s.append(c)
            }
        }
        throw error("unterminated string (missing \")")
    }
}

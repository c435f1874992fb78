import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What the command line asks for.
public enum Invocation: Sendable, Equatable {
    case help
    case version
    case start(Settings)
}

/// A bad command line or setting: printed as one line with a usage hint, exit code 2.
public struct UsageError: Error, Equatable, CustomStringConvertible {
    /// The line to print.
    public var message: String
    /// An error with `message`.
    public init(_ message: String) { self.message = message }
    /// The message.
    public var description: String { message }
}

/// Turns the command line and the environment into an `Invocation`.
public enum CommandLineParser {
    /// Parses `arguments` (without the program name) with `environment` as the fallback for settings.
    public static func parse(_ arguments: [String], environment: [String: String]) throws -> Invocation {
        var args = arguments[...]
        guard let first = args.first else { throw UsageError("missing command; expected `start`") }
        switch first {
        case "-h", "--help", "help": return .help
        case "-V", "--version", "version": return .version
        case "start": args = args.dropFirst()
        default:
            if first.hasPrefix("-") { throw UsageError("unknown option '\(first)' before the command; expected `start`") }
            throw UsageError("unknown command '\(first)'; expected `start`")
        }

        // Every value each setting's flags were given, by the setting's name; `SettingTable` says what they mean.
        var flagValues: [String: [String]] = [:]
        while let arg = args.popFirst() {
            var option = arg
            var inlineValue: String?
            if arg.hasPrefix("--"), let eq = arg.firstIndex(of: "=") {
                option = String(arg[..<eq])
                inlineValue = String(arg[arg.index(after: eq)...])
            }
            func value() throws -> String {
                if let inlineValue { return inlineValue }
                guard let next = args.popFirst(), !(next.hasPrefix("-") && next.count > 1 && Double(next) == nil) else {
                    throw UsageError("option '\(option)' needs a value")
                }
                return next
            }
            switch option {
            case "-h", "--help": return .help
            case "-V", "--version": return .version
            default: break
            }
            guard let setting = settingsByFlag[option] else {
                if option.hasPrefix("-") { throw UsageError("unknown option '\(option)'") }
                throw UsageError("unexpected argument '\(arg)'")
            }
            if setting.takesValue {
                let given = try value()
                try setting.checkFlag?(option, given)
                flagValues[setting.name, default: []].append(given)
            } else {
                if inlineValue != nil { throw UsageError("option '\(option)' takes no value") }
                flagValues[setting.name, default: []].append(option == setting.negation ? "false" : "true")
            }
        }

        // Each setting in the table's order, so one derived from others comes after them.
        var draft = SettingsDraft(environment: environment)
        for setting in SettingTable.all {
            try setting.apply(setting.input(flagValues: flagValues, environment: environment), &draft)
        }
        return .start(draft.settings)
    }

    /// The settings by each of their flags (and negations).
    static let settingsByFlag: [String: Setting] = {
        var byFlag: [String: Setting] = [:]
        for setting in SettingTable.all {
            for flag in setting.flags + [setting.negation].compactMap({ $0 }) { byFlag[flag] = setting }
        }
        return byFlag
    }()

    static let installPolicies = ["always", "if-not-present", "never", "prompt"]

    /// The `--base-job-template` file: a JSON object. A missing file or bad JSON is a usage error naming both.
    static func loadBaseJobTemplate(_ path: String) throws -> JSON {
        guard !path.isEmpty else { throw UsageError("option '--base-job-template' must not be empty") }
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
            throw UsageError("--base-job-template: \(path) \(reason)")
        }
        let json: JSON
        do {
            json = try JSON.decode(data)
        } catch {
            throw UsageError("--base-job-template: \(path) is not valid JSON: \(error)")
        }
        guard case .object(let fields) = json else {
            throw UsageError("--base-job-template: \(path) holds a JSON \(json.typeName), not an object with job_configuration and variables")
        }
        guard fields["job_configuration"]?.objectValue != nil else {
            throw UsageError("--base-job-template: \(path) has no \"job_configuration\" object")
        }
        return json
    }

    /// `given` (`--state-dir`, else `PREFECT_WORKER_STATE_DIR`: its `SettingTable` entry's input), else systemd's
    /// `$STATE_DIRECTORY` (first entry), else `$XDG_STATE_HOME/prefect-worker`, else
    /// `$HOME/.local/state/prefect-worker`, else `/tmp/prefect-worker-<uid>`.
    static func stateDirectory(_ given: Setting.Input?, environment: [String: String]) throws -> String {
        func nonEmpty(_ key: String) -> String? { environment[key].flatMap { $0.isEmpty ? nil : $0 } }
        if let given {
            guard !given.value.isEmpty else { throw UsageError("option '--state-dir' must not be empty") }
            return given.value
        }
        if let dirs = nonEmpty("STATE_DIRECTORY"), let first = dirs.split(separator: ":").first { return String(first) }
        if let xdg = nonEmpty("XDG_STATE_HOME") { return xdg + "/prefect-worker" }
        if let home = nonEmpty("HOME"), home != "/" { return home + "/.local/state/prefect-worker" }
        return "/tmp/prefect-worker-\(getuid())"
    }

    /// Accepts `http(s)://host[:port][/path]`; anything else is a configuration error, not something to retry.
    static func parseAPIURL(_ raw: String) throws -> URL {
        let trimmed = raw.trimmingCharacters(in: .whitespaces)
        guard let components = URLComponents(string: trimmed),
              let scheme = components.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = components.host, !host.isEmpty,
              let url = components.url
        else {
            // Never echo credentials that may be embedded in the value.
            let shown = trimmed.contains("@") ? "<redacted>" : "'\(trimmed)'"
            throw UsageError("PREFECT_API_URL \(shown) is not a valid http(s) URL, e.g. http://127.0.0.1:4200/api")
        }
        if components.port == nil, trimmed.range(of: #"^[a-zA-Z]+://[^/]*:[^/@]*$"#, options: .regularExpression) != nil,
           !trimmed.contains("@") {
            throw UsageError("PREFECT_API_URL '\(trimmed)' has an invalid port")
        }
        return url
    }
}

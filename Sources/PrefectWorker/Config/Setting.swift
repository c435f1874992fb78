import Foundation

/// One setting of the worker, declared once: its flags, its environment variable, its key in `prefect.toml`, its
/// default, the kind of value it takes, how it fills `Settings`, and its lines in `--help`. `SettingTable.all`
/// lists every one; the command-line parser, `--help`, the check of profile and `prefect.toml` values and
/// `scripts/check-units` (through `--help`) all read that list.
struct Setting: Sendable {
    /// Where the setting is described in `--help`.
    enum Help: Sendable, Equatable {
        /// These lines, verbatim, under "Options for `start`".
        case option(String)
        /// These lines, verbatim, under "Environment:".
        case environment(String)
        /// In the lines of the setting with this name (one line of `--help` often covers a few settings).
        case within(String)
    }

    /// What was given for a setting: its flag's values in order (a flag may repeat), else its variable's value.
    struct Input: Sendable {
        var values: [String]
        /// The name to put in an error: the long flag, or the variable.
        var source: String
        var fromFlag: Bool
        /// The value that counts: the last flag given, or the variable's.
        var value: String { values.last ?? "" }
    }

    /// The flags, long one first (`--limit`, `-l`); empty for a setting only the environment and files set.
    var flags: [String] = []
    /// A flag that turns a switch off (`--no-create-pool-if-not-found`).
    var negation: String? = nil
    /// Whether the flags take a value; a switch's flags give `true` (its negation `false`).
    var takesValue = true
    /// The environment variable, then variables read in its place when it is unset (`SSL_CERT_FILE`).
    var variables: [String] = []
    /// Its key in `prefect.toml` (`worker.heartbeat_seconds`); nil when only the environment sets it.
    var toml: String? = nil
    /// The value it has when nothing sets it, as it would be written (`30`); nil when there is none or it is computed.
    var defaultValue: String? = nil
    /// The kind of value a profile or `prefect.toml` is checked for when the file is read; bounds are checked by
    /// `apply`, whose error names the file through `SettingSources.explain`.
    var kind: SettingKeys.Kind = .string
    /// Whether surrounding spaces are dropped before the value is read (Prefect's client settings).
    var trims = false
    /// Whether an empty variable counts as unset (all but the redaction globs, where empty means none).
    var emptyIsUnset = true
    var help: Help
    /// Checks a flag's value as soon as it is read, naming the flag as written (`-t` or `--type`).
    var checkFlag: (@Sendable (_ option: String, _ value: String) throws -> Void)? = nil
    /// Fills `Settings` from what was given (nil: nothing was, so the default or a fallback applies).
    var apply: @Sendable (Input?, inout SettingsDraft) throws -> Void

    /// The environment variable, if any.
    var variable: String? { variables.first }
    /// The name the table knows it by: its variable, else its long flag.
    var name: String { variable ?? flags[0] }

    /// What `flagValues` (by setting name) and `environment` give for this setting; a flag beats the variables.
    func input(flagValues: [String: [String]], environment: [String: String]) -> Input? {
        if let values = flagValues[name], !values.isEmpty { return Input(values: values, source: flags[0], fromFlag: true) }
        for variable in variables {
            guard var raw = environment[variable] else { continue }
            if trims { raw = raw.trimmingCharacters(in: .whitespaces) }
            if emptyIsUnset && raw.isEmpty { continue }
            return Input(values: [raw], source: variable, fromFlag: false)
        }
        return nil
    }
}

/// `Settings` while the table fills them, with the environment the settings come from and the values that are
/// only used to derive others.
struct SettingsDraft {
    var settings: Settings
    var environment: [String: String]
    /// `PREFECT_CLOUD_MAX_LOG_SIZE`: caps `PREFECT_LOGGING_TO_API_MAX_LOG_SIZE` on Prefect Cloud.
    var cloudMaxLogSize = 25_000

    init(environment: [String: String]) {
        // The API URL, pool and name are set by their settings, the first the table applies.
        settings = Settings(apiURL: URL(string: "http://127.0.0.1")!, pool: "", workerName: "")
        settings.environment = environment
        self.environment = environment
    }
}

// The shapes most settings take, with their error messages.
extension Setting {
    /// A number of seconds >= `minimum`; an empty value (`--query-seconds=`) leaves the default.
    static func seconds(_ variable: String, flags: [String] = [], toml: String?, minimum: Double, default value: String?,
                        help: Help, set: @escaping @Sendable (inout SettingsDraft, Double) -> Void) -> Setting {
        Setting(flags: flags, variables: [variable], toml: toml, defaultValue: value, kind: .number, help: help) { input, draft in
            guard let input, !input.value.isEmpty else { return }
            guard let seconds = Double(input.value), seconds.isFinite, seconds >= minimum else {
                throw UsageError("\(input.source): '\(input.value)' is not a number of seconds >= \(String(format: "%g", minimum))")
            }
            set(&draft, seconds)
        }
    }

    /// A whole number >= `minimum`; an empty value leaves the default.
    static func wholeNumber(_ variable: String, flags: [String] = [], toml: String?, minimum: Int, default value: String?,
                            help: Help, set: @escaping @Sendable (inout SettingsDraft, Int) -> Void) -> Setting {
        Setting(flags: flags, variables: [variable], toml: toml, defaultValue: value, kind: .integer, help: help) { input, draft in
            guard let input, !input.value.isEmpty else { return }
            guard let number = Int(input.value), number >= minimum else {
                throw UsageError("\(input.source): '\(input.value)' is not a whole number >= \(minimum)")
            }
            set(&draft, number)
        }
    }

    /// true or false, as Prefect's settings spell them (`1`, `yes`, `on`, ...).
    static func boolean(_ variable: String, toml: String?, default value: String?, trims: Bool = false, help: Help,
                        set: @escaping @Sendable (inout SettingsDraft, Bool) -> Void) -> Setting {
        Setting(variables: [variable], toml: toml, defaultValue: value, kind: .boolean, trims: trims, help: help) { input, draft in
            guard let input else { return }
            guard let enabled = JSONBoolean.parse(input.value) else {
                throw UsageError("\(input.source): '\(input.value)' is not true or false")
            }
            set(&draft, enabled)
        }
    }

    /// Any text; an empty variable is unset.
    static func text(_ variables: [String], toml: String?, default value: String? = nil,
                     trims: Bool = false, help: Help, set: @escaping @Sendable (inout SettingsDraft, String) -> Void) -> Setting {
        Setting(variables: variables, toml: toml, defaultValue: value, trims: trims, help: help) { input, draft in
            if let input { set(&draft, input.value) }
        }
    }

    /// A flag without a value; `negation` turns it off again (the last flag given wins).
    static func flagSwitch(_ flag: String, negation: String? = nil, default value: Bool, help: Help,
                           set: @escaping @Sendable (inout SettingsDraft, Bool) -> Void) -> Setting {
        Setting(flags: [flag], negation: negation, takesValue: false, defaultValue: String(value), help: help) { input, draft in
            set(&draft, input.map { $0.value == "true" } ?? value)
        }
    }

    /// Read elsewhere (the settings files, the proxies), listed for `--help`, the README and the files' check.
    static func documented(_ variables: [String], toml: String? = nil, help: Help) -> Setting {
        Setting(variables: variables, toml: toml, help: help) { _, _ in }
    }
}

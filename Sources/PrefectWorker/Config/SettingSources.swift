import Foundation

/// The sources of settings merged into one environment, the way Prefect 3.8 ranks them (`settings/base.py`,
/// `settings_customise_sources`): the process environment, then `prefect.toml` in the working directory, then
/// the active profile of `profiles.toml`. Flags beat all three; `CommandLineParser` applies them on top of
/// `environment`. Jobs inherit the merged environment, as Prefect's worker hands its current settings to
/// jobs as `PREFECT_*` variables (`BaseWorker._base_environment`).
public struct SettingSources: Sendable, Equatable {
    /// The process environment with the files' `PREFECT_*` settings beneath it.
    public var environment: [String: String]
    /// For each setting taken from a file: where it came from, e.g. `/root/.prefect/profiles.toml, profile 'local'`.
    var origins: [String: String]
    /// What was read, for the log: files, the profile and the names (never the values) of the settings.
    public var summary: [String]

    /// Reads the files the environment points to. A file outside the TOML subset, or a bad value of a setting
    /// the worker uses, is a `UsageError` naming the file (and the line or key).
    public static func load(environment: [String: String], workingDirectory: String,
                            readFile: (String) throws -> String? = SettingSources.readFile) throws -> SettingSources {
        var result = SettingSources(environment: environment, origins: [:], summary: [])

        // prefect.toml: nested tables of field names, e.g. [api] url = ... is PREFECT_API_URL.
        let tomlPath = (workingDirectory as NSString).appendingPathComponent("prefect.toml")
        var tomlSettings: [String: String] = [:]
        var profilesPathFromToml: String?
        if let text = try readFile(tomlPath) {
            let root = try parse(text, path: tomlPath)
            if case .string(let path)? = root[profilesPathKey] { profilesPathFromToml = path }
            tomlSettings = try flatten(root, prefix: ["PREFECT"], path: tomlPath)
            try check(tomlSettings, origin: tomlPath)
            result.summary.append("read \(tomlPath)" + names(tomlSettings, environment))
        }

        // profiles.toml: PREFECT_PROFILES_PATH, else profiles_path in prefect.toml, else $PREFECT_HOME/profiles.toml.
        let profilesPath: String
        if let path = nonEmpty(environment["PREFECT_PROFILES_PATH"]) {
            profilesPath = expand(path, environment, workingDirectory)
        } else if let path = profilesPathFromToml {
            profilesPath = expand(path, environment, workingDirectory)
        } else {
            let home = expand(nonEmpty(environment["PREFECT_HOME"]) ?? "~/.prefect", environment, workingDirectory)
            profilesPath = (home as NSString).appendingPathComponent("profiles.toml")
        }
        var profileSettings: [String: String] = [:]
        var profileOrigin = profilesPath
        if let text = try readFile(profilesPath) {
            let root = try parse(text, path: profilesPath)
            let profiles = root["profiles"]?.tableValue ?? [:]
            let chosen: (name: String, why: String)?
            if let name = nonEmpty(environment["PREFECT_PROFILE"]) {
                chosen = (name, "PREFECT_PROFILE")
            } else if case .string(let name)? = root["active"] {
                chosen = (name, "active")
            } else {
                chosen = nil
            }
            if let chosen, let table = profiles[chosen.name] {
                guard let entries = table.tableValue else {
                    throw UsageError("\(profilesPath): profiles.\(TOMLSubset.render([chosen.name])) is not a table")
                }
                let origin = "\(profilesPath), profile '\(chosen.name)'"
                var ignored: [String] = []
                for (key, value) in entries {
                    guard key.hasPrefix("PREFECT_") else { ignored.append(key); continue }
                    guard let text = value.environmentText ?? jsonText(of: key, value) else {
                        throw UsageError("\(origin): \(key) is a table; expected a string, number or boolean")
                    }
                    profileSettings[key] = text
                }
                try check(profileSettings, origin: origin)
                result.summary.append("using profile '\(chosen.name)' (\(chosen.why)) from \(profilesPath)" + names(profileSettings, environment)
                                      + (ignored.isEmpty ? "" : "; ignored keys that are not PREFECT_* settings: \(ignored.sorted().joined(separator: ", "))"))
                profileOrigin = origin
            } else if let chosen {
                // Prefect falls back to its built-in default profile, which sets nothing the worker reads.
                result.summary.append("profile '\(chosen.name)' (\(chosen.why)) is not in \(profilesPath); using no profile")
            } else {
                result.summary.append("\(profilesPath) names no active profile; using no profile")
            }
        } else {
            result.summary.append("no profiles file at \(profilesPath); using no profile")
        }

        // The environment beats prefect.toml, which beats the profile.
        let files = profileSettings.merging(tomlSettings) { $1 }
        for (key, value) in files where environment[key] == nil {
            result.environment[key] = value
            result.origins[key] = tomlSettings[key] != nil ? tomlPath : profileOrigin
        }
        return result
    }

    /// Adds where a setting came from to a usage error about it, when a file set it.
    public func explain(_ error: UsageError) -> UsageError {
        let keys = origins.keys.filter { error.message.contains($0) }.sorted()
        guard !keys.isEmpty else { return error }
        let notes = keys.map { "\($0) is set in \(origins[$0]!)" }.joined(separator: "; ")
        return UsageError(error.message + " (\(notes))")
    }

    /// The file's text; nil when there is no such file.
    @usableFromInline static func readFile(_ path: String) throws -> String? {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return nil }
        guard !isDirectory.boolValue, let data = FileManager.default.contents(atPath: path) else {
            throw UsageError("\(path): cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw UsageError("\(path): not UTF-8 text") }
        return text
    }

    static func parse(_ text: String, path: String) throws -> [String: TOMLValue] {
        do {
            return try TOMLSubset.parse(text, path: path)
        } catch let error as TOMLError {
            throw UsageError(error.description)
        }
    }

    /// `prefect.toml`'s key for the profiles file (`PREFECT_PROFILES_PATH` in `SettingTable`).
    static let profilesPathKey = SettingTable.named("PREFECT_PROFILES_PATH")?.toml ?? "profiles_path"

    /// The variables of `SettingTable`'s settings by their `prefect.toml` keys (`worker.heartbeat_seconds`).
    static let variablesByTOMLKey: [String: String] = Dictionary(
        SettingTable.all.compactMap { setting in setting.toml.flatMap { key in setting.variable.map { (key, $0) } } },
        uniquingKeysWith: { first, _ in first })

    /// `[a.b] c = v` sets the setting whose `prefect.toml` key is `a.b.c`; any other key becomes `PREFECT_A_B_C`, as
    /// Prefect names its settings. A table given for a setting that takes a JSON object (`[client.custom_headers]`)
    /// becomes that object.
    static func flatten(_ table: [String: TOMLValue], prefix: [String], path: String) throws -> [String: String] {
        var out: [String: String] = [:]
        for (key, value) in table {
            let dotted = (prefix.dropFirst() + [key]).joined(separator: ".")
            let name = variablesByTOMLKey[dotted] ?? (prefix + [key]).joined(separator: "_").uppercased()
            if let text = value.environmentText {
                out[name] = text
            } else if let text = jsonText(of: name, value) {
                out[name] = text
            } else if let child = value.tableValue {
                out.merge(try flatten(child, prefix: prefix + [key], path: path)) { $1 }
            }
        }
        return out
    }

    static func jsonText(of key: String, _ value: TOMLValue) -> String? {
        guard SettingKeys.used[key] == .jsonObject, let table = value.tableValue else { return nil }
        func json(_ v: TOMLValue) -> JSON {
            switch v {
            case .string(let s): .string(s)
            case .integer(let i): .int(i)
            case .float(let d, _): .double(d)
            case .boolean(let b): .bool(b)
            case .table(let t): .object(t.mapValues(json))
            }
        }
        return json(.table(table)).encoded()
    }

    static func check(_ settings: [String: String], origin: String) throws {
        for key in settings.keys.sorted() {
            guard let problem = SettingKeys.problem(key: key, value: settings[key]!) else { continue }
            let shown = SettingKeys.isSecret(key) ? "the value" : "'\(settings[key]!)'"
            throw UsageError("\(origin): \(key): \(shown) \(problem)")
        }
    }

    static func names(_ settings: [String: String], _ environment: [String: String]) -> String {
        guard !settings.isEmpty else { return " (no settings)" }
        let overridden = settings.keys.filter { environment[$0] != nil }.sorted()
        return ": " + settings.keys.sorted().joined(separator: ", ")
            + (overridden.isEmpty ? "" : " (the environment overrides \(overridden.joined(separator: ", ")))")
    }

    static func nonEmpty(_ value: String?) -> String? { value.flatMap { $0.isEmpty ? nil : $0 } }

    /// `~/x` under `$HOME`; a relative path from the working directory.
    static func expand(_ path: String, _ environment: [String: String], _ workingDirectory: String) -> String {
        if path == "~" || path.hasPrefix("~/"), let home = nonEmpty(environment["HOME"]) { return home + path.dropFirst() }
        if path.hasPrefix("/") { return path }
        return (workingDirectory as NSString).appendingPathComponent(path)
    }
}

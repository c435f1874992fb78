import Foundation

/// The check of a `PREFECT_*` value from a profile or `prefect.toml`, by the kind of value the setting takes in
/// `SettingTable`. A file may set any other `PREFECT_*` key (Prefect has hundreds; jobs inherit them); a bad
/// value of one the worker reads is an error naming the file and the key.
enum SettingKeys {
    enum Kind: Equatable, Sendable {
        case string, url, boolean, number, integer, logLevel
        /// A JSON object of strings, e.g. `{"X-Header": "value"}`.
        case jsonObject
        /// Comma-separated HTTP status codes, e.g. `404,429`.
        case statusCodes
        case choice([String])
    }

    /// The `PREFECT_*` variables of `SettingTable`, with their kinds.
    static let used: [String: Kind] = Dictionary(
        SettingTable.all.flatMap { setting in
            setting.variables.filter { $0.hasPrefix("PREFECT_") }.map { ($0, setting.kind) }
        }, uniquingKeysWith: { first, _ in first })

    /// What is wrong with `value` for `key`, or nil when it is a value of the key's kind (or the key is not ours).
    /// Bounds (">= 1", ports) are the parser's to check; this is about the kind of value.
    static func problem(key: String, value: String) -> String? {
        guard let kind = used[key] else { return nil }
        let trimmed = value.trimmingCharacters(in: .whitespaces)
        switch kind {
        case .string:
            return nil
        case .url:
            if trimmed.isEmpty { return nil }
            return (try? CommandLineParser.parseAPIURL(trimmed)) == nil ? "is not a valid http(s) URL" : nil
        case .boolean:
            return JSONBoolean.parse(trimmed) == nil ? "is not true or false" : nil
        case .number:
            return Double(trimmed).map { $0.isFinite } == true ? nil : "is not a number"
        case .integer:
            return Int(trimmed) == nil ? "is not a whole number" : nil
        case .logLevel:
            return Log.Level(name: trimmed) == nil ? "is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL" : nil
        case .choice(let choices):
            return choices.contains(trimmed) ? nil : "is not one of \(choices.joined(separator: ", "))"
        case .statusCodes:
            if trimmed.isEmpty { return nil }
            let codes = trimmed.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            return codes.allSatisfy({ Int($0).map { (100...599).contains($0) } == true })
                ? nil : "is not a comma-separated list of HTTP status codes"
        case .jsonObject:
            if trimmed.isEmpty { return nil }
            guard let json = try? JSON.decode(trimmed), case .object = json else { return "is not a JSON object" }
            return nil
        }
    }

    /// Whether a value of `key` must never be shown.
    static func isSecret(_ key: String) -> Bool {
        key == "PREFECT_API_KEY" || key == "PREFECT_API_AUTH_STRING" || key == "PREFECT_CLIENT_CUSTOM_HEADERS"
            || key.contains("KEY") || key.contains("SECRET") || key.contains("PASSWORD") || key.contains("TOKEN")
            || key.contains("AUTH")
    }
}

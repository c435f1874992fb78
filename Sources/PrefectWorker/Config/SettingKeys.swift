import Foundation

/// The `PREFECT_*` settings prefect-worker reads, with the kind of value each takes. A profile or `prefect.toml`
/// may set any other `PREFECT_*` key (Prefect has hundreds; jobs inherit them); a bad value of one of these is
/// an error naming the file and the key. Add a key here when the worker starts reading it.
enum SettingKeys {
    enum Kind: Equatable, Sendable {
        case string, url, boolean, number, integer, logLevel
        /// A JSON object of strings, e.g. `{"X-Header": "value"}`.
        case jsonObject
        /// Comma-separated HTTP status codes, e.g. `404,429`.
        case statusCodes
        case choice([String])
    }

    static let used: [String: Kind] = [
        // Connection and client.
        "PREFECT_API_URL": .url,
        "PREFECT_API_KEY": .string,
        "PREFECT_API_AUTH_STRING": .string,
        "PREFECT_CLOUD_API_URL": .url,
        "PREFECT_CLOUD_MAX_LOG_SIZE": .integer,
        "PREFECT_API_REQUEST_TIMEOUT": .number,
        "PREFECT_CLIENT_MAX_RETRIES": .integer,
        "PREFECT_CLIENT_RETRY_JITTER_FACTOR": .number,
        "PREFECT_CLIENT_RETRY_EXTRA_CODES": .statusCodes,
        "PREFECT_CLIENT_CUSTOM_HEADERS": .jsonObject,
        "PREFECT_API_SSL_CERT_FILE": .string,
        "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": .boolean,
        "PREFECT_API_ENABLE_HTTP2": .boolean,
        // The worker.
        "PREFECT_WORKER_POOL": .string,
        "PREFECT_WORKER_NAME": .string,
        "PREFECT_WORKER_WORK_QUEUES": .string,
        "PREFECT_WORKER_LIMIT": .integer,
        "PREFECT_WORKER_PREFETCH_SECONDS": .number,
        "PREFECT_WORKER_HEARTBEAT_SECONDS": .number,
        "PREFECT_WORKER_QUERY_SECONDS": .number,
        "PREFECT_WORKER_KILL_GRACE_SECONDS": .number,
        "PREFECT_WORKER_DRAIN_TIMEOUT": .number,
        "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": .number,
        "PREFECT_WORKER_ENABLE_CANCELLATION": .boolean,
        "PREFECT_WORKER_STATE_DIR": .string,
        "PREFECT_WORKER_WITH_HEALTHCHECK": .boolean,
        "PREFECT_WORKER_WEBSERVER_HOST": .string,
        "PREFECT_WORKER_WEBSERVER_PORT": .integer,
        "PREFECT_WORKER_LOG_FORMAT": .choice(["text", "json"]),
        "PREFECT_WORKER_DEBUG_MODE": .boolean,
        // Logging.
        "PREFECT_LOGGING_LEVEL": .logLevel,
        "PREFECT_LOGGING_TO_API_ENABLED": .boolean,
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": .number,
        "PREFECT_LOGGING_TO_API_BATCH_SIZE": .integer,
        "PREFECT_LOGGING_TO_API_MAX_LOG_SIZE": .integer,
        // Events and the API URL check.
        "PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE": .integer,
        "PREFECT_SILENCE_API_URL_MISCONFIGURATION": .boolean,
    ]

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

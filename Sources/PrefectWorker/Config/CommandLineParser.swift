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

        var pool = environment["PREFECT_WORKER_POOL"].flatMap { $0.isEmpty ? nil : $0 }
        var name = environment["PREFECT_WORKER_NAME"].flatMap { $0.isEmpty ? nil : $0 }
        var queuesFromFlags: [String] = []
        var flags: [String: String] = [:]
        var runOnce = false
        var createPool = true
        var baseJobTemplatePath: String?
        var installPolicy: String?

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
            func noValue() throws {
                if inlineValue != nil { throw UsageError("option '\(option)' takes no value") }
            }
            switch option {
            case "-h", "--help": return .help
            case "-V", "--version": return .version
            case "-p", "--pool": pool = try value()
            case "-n", "--name": name = try value()
            case "-q", "--work-queue": queuesFromFlags.append(try value())
            case "-t", "--type":
                let type = try value()
                guard type == "process" else {
                    throw UsageError("option '\(option)': worker type '\(type)' is not supported; only 'process' is")
                }
            case "-l", "--limit": flags["limit"] = try value()
            case "--prefetch-seconds", "--heartbeat-seconds", "--query-seconds", "--kill-grace-seconds",
                 "--drain-timeout", "--log-format", "--state-dir", "--cancellation-poll-seconds":
                flags[String(option.dropFirst(2))] = try value()
            case "--base-job-template": baseJobTemplatePath = try value()
            case "--install-policy":
                let policy = try value()
                guard installPolicies.contains(policy) else {
                    throw UsageError("option '--install-policy': '\(policy)' is not one of \(installPolicies.joined(separator: ", "))")
                }
                installPolicy = policy
            case "--run-once": try noValue(); runOnce = true
            case "--with-healthcheck": try noValue(); flags["with-healthcheck"] = "true"
            case "--create-pool-if-not-found": try noValue(); createPool = true
            case "--no-create-pool-if-not-found": try noValue(); createPool = false
            default:
                if option.hasPrefix("-") { throw UsageError("unknown option '\(option)'") }
                throw UsageError("unexpected argument '\(arg)'")
            }
        }

        guard let pool, !pool.isEmpty else { throw UsageError("option '--pool' is required") }
        let queues = queuesFromFlags.isEmpty
            ? (environment["PREFECT_WORKER_WORK_QUEUES"] ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            : queuesFromFlags
        guard let rawURL = environment["PREFECT_API_URL"], !rawURL.isEmpty else {
            throw UsageError("PREFECT_API_URL is not set; set it to your Prefect API, e.g. http://127.0.0.1:4200/api")
        }
        let apiURL = try parseAPIURL(rawURL)

        let workerName = name ?? Settings.defaultWorkerName()
        if workerName.isEmpty { throw UsageError("option '--name' must not be empty") }
        if workerName.contains("/") || workerName.contains("%") {
            throw UsageError("option '--name': worker names may not contain '/' or '%'")
        }
        for queue in queues where queue.isEmpty { throw UsageError("option '--work-queue' must not be empty") }

        var settings = Settings(apiURL: apiURL, pool: pool, workerName: workerName)
        settings.workQueues = queues
        settings.apiKey = environment["PREFECT_API_KEY"].flatMap { $0.isEmpty ? nil : $0 }
        settings.authString = environment["PREFECT_API_AUTH_STRING"].flatMap { $0.isEmpty ? nil : $0 }
        settings.runOnce = runOnce
        settings.createPoolIfNotFound = createPool
        settings.environment = environment
        settings.client = try ClientSettings.parse(environment)
        settings.installPolicy = installPolicy
        if let baseJobTemplatePath {
            settings.baseJobTemplate = try loadBaseJobTemplate(baseJobTemplatePath)
            settings.baseJobTemplatePath = baseJobTemplatePath
        }
        if let raw = environment["PREFECT_WORKER_REDACTED_VARS"] {
            settings.redactedVariablePatterns = raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }

        func seconds(_ flag: String, _ env: String, minimum: Double) throws -> Double? {
            let (raw, source) = flags[flag].map { ($0, "--\(flag)") } ?? (environment[env].map { ($0, env) } ?? (nil, ""))
            guard let raw, !raw.isEmpty else { return nil }
            guard let value = Double(raw), value.isFinite, value >= minimum else {
                throw UsageError("\(source): '\(raw)' is not a number of seconds >= \(String(format: "%g", minimum))")
            }
            return value
        }
        if let v = try seconds("heartbeat-seconds", "PREFECT_WORKER_HEARTBEAT_SECONDS", minimum: 1) { settings.heartbeatSeconds = v }
        if let v = try seconds("query-seconds", "PREFECT_WORKER_QUERY_SECONDS", minimum: 0.1) { settings.querySeconds = v }
        if let v = try seconds("prefetch-seconds", "PREFECT_WORKER_PREFETCH_SECONDS", minimum: 0) { settings.prefetchSeconds = v }
        if let v = try seconds("kill-grace-seconds", "PREFECT_WORKER_KILL_GRACE_SECONDS", minimum: 0) { settings.killGraceSeconds = v }
        settings.drainTimeout = try seconds("drain-timeout", "PREFECT_WORKER_DRAIN_TIMEOUT", minimum: 0)
        if let raw = environment["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] {
            switch raw.trimmingCharacters(in: .whitespaces).lowercased() {
            case "", "crash": settings.sigtermBehavior = nil
            case "reschedule": settings.sigtermBehavior = .reschedule
            case "relinquish": settings.sigtermBehavior = .relinquish
            default: throw UsageError("PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR: '\(raw)' is not one of crash, reschedule, relinquish")
            }
        }
        if let v = try seconds("cancellation-poll-seconds", "PREFECT_WORKER_CANCELLATION_POLL_SECONDS", minimum: 0.1) {
            settings.cancellationPollSeconds = v
            settings.cancellationPollIsSet = true
        }
        settings.stateDirectory = try stateDirectory(flag: flags["state-dir"], environment: environment)

        let (rawLimit, limitSource) = flags["limit"].map { ($0, "--limit") } ?? (environment["PREFECT_WORKER_LIMIT"].map { ($0, "PREFECT_WORKER_LIMIT") } ?? (nil, ""))
        if let rawLimit, !rawLimit.isEmpty {
            guard let limit = Int(rawLimit), limit >= 1 else {
                throw UsageError("\(limitSource): '\(rawLimit)' is not a whole number >= 1")
            }
            settings.limit = limit
        }

        if let rawLevel = environment["PREFECT_LOGGING_LEVEL"], !rawLevel.isEmpty {
            guard let level = Log.Level(name: rawLevel) else {
                throw UsageError("PREFECT_LOGGING_LEVEL: '\(rawLevel)' is not one of DEBUG, INFO, WARNING, ERROR")
            }
            settings.logLevel = level
        }
        if flags["with-healthcheck"] != nil {
            settings.withHealthcheck = true
        } else if let raw = environment["PREFECT_WORKER_WITH_HEALTHCHECK"], !raw.isEmpty {
            guard let enabled = JSONBoolean.parse(raw) else {
                throw UsageError("PREFECT_WORKER_WITH_HEALTHCHECK: '\(raw)' is not true or false")
            }
            settings.withHealthcheck = enabled
        }
        if let host = environment["PREFECT_WORKER_WEBSERVER_HOST"], !host.isEmpty { settings.webserverHost = host }
        if let rawPort = environment["PREFECT_WORKER_WEBSERVER_PORT"], !rawPort.isEmpty {
            guard let port = UInt16(rawPort) else {
                throw UsageError("PREFECT_WORKER_WEBSERVER_PORT: '\(rawPort)' is not a port number (0-65535)")
            }
            settings.webserverPort = port
        }
        if let rawFormat = flags["log-format"] ?? environment["PREFECT_WORKER_LOG_FORMAT"].flatMap({ $0.isEmpty ? nil : $0 }) {
            guard let format = Log.Format(rawValue: rawFormat) else {
                throw UsageError("--log-format / PREFECT_WORKER_LOG_FORMAT: '\(rawFormat)' is not one of text, json")
            }
            settings.logFormat = format
        }
        // After PREFECT_LOGGING_LEVEL: debug mode wins.
        try parseLoggingSettings(environment, into: &settings)
        return .start(settings)
    }

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

    /// `PREFECT_WORKER_DEBUG_MODE`, `PREFECT_WORKER_ENABLE_CANCELLATION`, `PREFECT_CLOUD_API_URL` and
    /// `PREFECT_LOGGING_TO_API_*`.
    static func parseLoggingSettings(_ environment: [String: String], into settings: inout Settings) throws {
        func raw(_ key: String) -> String? { environment[key].flatMap { $0.isEmpty ? nil : $0 } }
        func boolean(_ key: String) throws -> Bool? {
            guard let value = raw(key) else { return nil }
            guard let parsed = JSONBoolean.parse(value) else { throw UsageError("\(key): '\(value)' is not true or false") }
            return parsed
        }
        func integer(_ key: String, minimum: Int) throws -> Int? {
            guard let value = raw(key) else { return nil }
            guard let parsed = Int(value), parsed >= minimum else { throw UsageError("\(key): '\(value)' is not a whole number >= \(minimum)") }
            return parsed
        }
        if let debug = try boolean("PREFECT_WORKER_DEBUG_MODE") {
            settings.debugMode = debug
            if debug { settings.logLevel = .debug }
        }
        settings.enableCancellation = try boolean("PREFECT_WORKER_ENABLE_CANCELLATION")
        if let url = raw("PREFECT_CLOUD_API_URL") { settings.cloudAPIURL = url }
        if let enabled = try boolean("PREFECT_LOGGING_TO_API_ENABLED") { settings.logsToAPI.enabled = enabled }
        if let value = raw("PREFECT_LOGGING_TO_API_BATCH_INTERVAL") {
            guard let seconds = Double(value), seconds.isFinite, seconds >= 0.01 else {
                throw UsageError("PREFECT_LOGGING_TO_API_BATCH_INTERVAL: '\(value)' is not a number of seconds >= 0.01")
            }
            settings.logsToAPI.batchInterval = seconds
        }
        if let size = try integer("PREFECT_LOGGING_TO_API_BATCH_SIZE", minimum: 1) { settings.logsToAPI.batchSize = size }
        if let size = try integer("PREFECT_LOGGING_TO_API_MAX_LOG_SIZE", minimum: 100) { settings.logsToAPI.maxLogSize = size }
        // Prefect caps the size on Cloud (`connected_to_cloud` in settings/models/root.py).
        let cloudMax = try integer("PREFECT_CLOUD_MAX_LOG_SIZE", minimum: 100) ?? 25_000
        if settings.isCloud { settings.logsToAPI.maxLogSize = min(settings.logsToAPI.maxLogSize, cloudMax) }
        if let size = try integer("PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE", minimum: 0) { settings.eventsMaxQueueSize = size }
        if let silence = try boolean("PREFECT_SILENCE_API_URL_MISCONFIGURATION") { settings.silenceAPIURLMisconfiguration = silence }
    }

    /// `--state-dir`, else `PREFECT_WORKER_STATE_DIR`, else systemd's `$STATE_DIRECTORY` (first entry),
    /// else `$XDG_STATE_HOME/prefect-worker`, else `$HOME/.local/state/prefect-worker`, else `/tmp/prefect-worker-<uid>`.
    static func stateDirectory(flag: String?, environment: [String: String]) throws -> String {
        func nonEmpty(_ key: String) -> String? { environment[key].flatMap { $0.isEmpty ? nil : $0 } }
        if let flag {
            guard !flag.isEmpty else { throw UsageError("option '--state-dir' must not be empty") }
            return flag
        }
        if let dir = nonEmpty("PREFECT_WORKER_STATE_DIR") { return dir }
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

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The worker's version, printed by `--version` and sent in the User-Agent.
public enum WorkerVersion {
    public static let current = "0.1.0"
}

/// Everything the worker needs to know, from flags and `PREFECT_*` environment variables (a flag wins).
public struct Settings: Sendable, Equatable {
    public var apiURL: URL
    public var apiKey: String?
    public var authString: String?
    public var pool: String
    public var workerName: String
    public var workQueues: [String] = []
    public var heartbeatSeconds: Double = 30
    public var querySeconds: Double = 10
    public var prefetchSeconds: Double = 10
    /// At most this many runs in flight; nil = no limit.
    public var limit: Int?
    public var runOnce = false
    /// How long a job may take to exit after SIGTERM before it gets SIGKILL.
    public var killGraceSeconds: Double = 30
    /// On shutdown, how long to wait for in-flight runs before terminating them; nil = wait for them.
    public var drainTimeout: Double?
    public var createPoolIfNotFound = true
    /// How often to look for CANCELLING among this worker's runs (only while it has runs in flight).
    public var cancellationPollSeconds: Double = 1
    /// Where the journal of launched runs lives (see `StateDirectory`).
    public var stateDirectory: String = "/tmp/prefect-worker"
    public var logLevel: Log.Level = .info
    public var logFormat: Log.Format = .text
    /// Serve `/health` and `/metrics` on `webserverHost:webserverPort`.
    public var withHealthcheck = false
    public var webserverHost = "127.0.0.1"
    public var webserverPort: UInt16 = 8080
    /// How the API client talks to the server (Prefect's `PREFECT_API_*`/`PREFECT_CLIENT_*` settings).
    public var client = ClientSettings()
    /// The worker's own environment, handed to jobs.
    public var environment: [String: String] = [:]
    /// `--base-job-template`: the template of a pool the worker creates, and the file it came from.
    public var baseJobTemplate: JSON?
    public var baseJobTemplatePath: String?
    /// `--install-policy`: accepted so Prefect's service files keep working; a process worker installs nothing.
    public var installPolicy: String?
    /// `PREFECT_WORKER_DEBUG_MODE`: debug logging for the worker only (jobs do not inherit it as debug mode).
    public var debugMode = false
    /// `PREFECT_WORKER_ENABLE_CANCELLATION` as set (nil: not set). Ours cancels runs in flight either way.
    public var enableCancellation: Bool?
    /// `PREFECT_CLOUD_API_URL`: an API URL under it is Prefect Cloud, which tells the worker its id.
    public var cloudAPIURL = "https://api.prefect.cloud/api"
    /// `PREFECT_LOGGING_TO_API_*`: shipping job output and the worker's lines about runs to the run's logs.
    public var logsToAPI = LogsToAPI()

    /// Prefect's `PREFECT_LOGGING_TO_API_*` settings, with its defaults.
    public struct LogsToAPI: Sendable, Equatable {
        public var enabled = true
        /// Seconds between batches.
        public var batchInterval = 2.0
        /// Bytes per batch (of the JSON records), as Prefect counts them: max(batchSize - maxLogSize, maxLogSize).
        public var batchSize = 4_000_000
        /// Bytes of one record; a longer message is truncated, ending in "... [truncated]".
        public var maxLogSize = 1_000_000
        public init() {}
        public var maxBatchBytes: Int { max(batchSize - maxLogSize, maxLogSize) }
    }

    /// Whether the API is Prefect Cloud (Prefect's `determine_server_type`).
    public var isCloud: Bool { apiURL.absoluteString.hasPrefix(cloudAPIURL) }

    /// Variables (shell globs on the name) whose values are redacted from job output, logs and events.
    public var redactedVariablePatterns: [String] = Redactor.defaultPatterns

    /// The secrets in the worker's own environment and credentials (see `Redactor.secretValues`).
    public var secretValues: [String] {
        var env = environment
        if let apiKey { env["PREFECT_API_KEY"] = apiKey }
        if let authString { env["PREFECT_API_AUTH_STRING"] = authString }
        return Redactor.secretValues(environment: env, patterns: redactedVariablePatterns)
    }

    public init(apiURL: URL, pool: String, workerName: String) {
        self.apiURL = apiURL
        self.pool = pool
        self.workerName = workerName
    }

    /// `ProcessWorker <8 hex digits>`: unique per process and recognisable, like Prefect's `ProcessWorker <uuid>`.
    public static func defaultWorkerName() -> String {
        "ProcessWorker " + UUID().uuidString.lowercased().prefix(8)
    }
}

/// Booleans as Prefect's settings accept them.
enum JSONBoolean {
    static func parse(_ raw: String) -> Bool? {
        switch raw.lowercased() {
        case "1", "true", "yes", "on", "t", "y": true
        case "0", "false", "no", "off", "f", "n": false
        default: nil
        }
    }
}

/// What the command line asks for.
public enum Invocation: Sendable, Equatable {
    case help
    case version
    case start(Settings)
}

/// A bad command line or setting: printed as one line with a usage hint, exit code 2.
public struct UsageError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum CommandLineParser {
    public static let usage = """
    Usage: prefect-worker start --pool NAME [options]
           prefect-worker --help | --version

    Runs Prefect flow runs from a `process` work pool as local subprocesses,
    like `prefect worker start --type process`.

    Options for `start` (a flag beats the environment variable in brackets):
      -p, --pool NAME              work pool to serve, created as type `process` if missing [PREFECT_WORKER_POOL]
      -n, --name NAME              worker name [PREFECT_WORKER_NAME] (default: "ProcessWorker <random hex>")
      -q, --work-queue NAME        serve only this queue; repeat for several (default: all queues)
                                   [PREFECT_WORKER_WORK_QUEUES, comma-separated]
      -t, --type process           worker type; only `process` is supported
      -l, --limit N                at most N flow runs at once [PREFECT_WORKER_LIMIT]
          --prefetch-seconds S     claim runs scheduled up to S seconds ahead [PREFECT_WORKER_PREFETCH_SECONDS=10]
          --heartbeat-seconds S    heartbeat interval [PREFECT_WORKER_HEARTBEAT_SECONDS=30]
          --query-seconds S        poll interval [PREFECT_WORKER_QUERY_SECONDS=10]
          --kill-grace-seconds S   SIGTERM-to-SIGKILL grace for jobs [PREFECT_WORKER_KILL_GRACE_SECONDS=30]
          --drain-timeout S        on shutdown, wait at most S seconds for runs [PREFECT_WORKER_DRAIN_TIMEOUT]
          --cancellation-poll-seconds S
                               how often to check in-flight runs for CANCELLING
                               [PREFECT_WORKER_CANCELLATION_POLL_SECONDS=1]
      --run-once               claim what is due now, run it to the end, exit
          --state-dir DIR          journal of launched runs [PREFECT_WORKER_STATE_DIR, else $STATE_DIRECTORY,
                                   else $XDG_STATE_HOME/prefect-worker, else ~/.local/state/prefect-worker]
          --no-create-pool-if-not-found
                                   wait for a missing pool instead of creating it (--create-pool-if-not-found,
                                   the default, creates it)
          --with-healthcheck       serve GET /health and /metrics [PREFECT_WORKER_WITH_HEALTHCHECK] on
                                   PREFECT_WORKER_WEBSERVER_HOST (127.0.0.1) : PREFECT_WORKER_WEBSERVER_PORT (8080)
          --log-format text|json   worker log format [PREFECT_WORKER_LOG_FORMAT=text]; level from PREFECT_LOGGING_LEVEL,
                                   or DEBUG when PREFECT_WORKER_DEBUG_MODE is true
          --base-job-template PATH JSON base job template for a pool the worker creates; ignored (with a
                                   warning) when the pool exists
          --install-policy P       always|if-not-present|never|prompt: accepted; a process worker installs nothing

    Environment:
      PREFECT_API_URL              API base URL, e.g. http://127.0.0.1:4200/api (required)
      PREFECT_API_KEY              sent as `Authorization: Bearer` (Prefect Cloud)
      PREFECT_API_AUTH_STRING      sent as HTTP basic auth, "user:password" (self-hosted servers)
      PREFECT_API_REQUEST_TIMEOUT  seconds one request may take (60)
      PREFECT_CLIENT_MAX_RETRIES   retries of an ordinary API call (5)
      PREFECT_CLIENT_RETRY_JITTER_FACTOR
                                   retry delays vary by up to this fraction (0.2)
      PREFECT_CLIENT_RETRY_EXTRA_CODES
                                   statuses to retry besides 408, 429, 5xx, comma-separated
      PREFECT_CLIENT_CUSTOM_HEADERS
                                   extra request headers, a JSON object
      PREFECT_API_SSL_CERT_FILE    CA bundle for the server's certificate (else SSL_CERT_FILE, else the system's)
      PREFECT_API_TLS_INSECURE_SKIP_VERIFY
                                   do not verify the server's certificate (false)
      PREFECT_API_ENABLE_HTTP2     offer HTTP/2 over TLS (false)
      HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY
                                   proxies, in either case, as curl reads them
      PREFECT_CLOUD_API_URL        URLs under it are Prefect Cloud (https://api.prefect.cloud/api)
      PREFECT_CLOUD_MAX_LOG_SIZE   on Cloud, caps PREFECT_LOGGING_TO_API_MAX_LOG_SIZE (25000)
      PREFECT_LOGGING_TO_API_ENABLED (true), PREFECT_LOGGING_TO_API_BATCH_INTERVAL (2 s),
      PREFECT_LOGGING_TO_API_BATCH_SIZE (4000000 bytes), PREFECT_LOGGING_TO_API_MAX_LOG_SIZE (1000000 bytes)
                                   shipping job output and the worker's lines about runs to the run's logs
      PREFECT_WORKER_DEBUG_MODE    debug logging for the worker (false)
      PREFECT_WORKER_ENABLE_CANCELLATION
                                   accepted; runs in flight are always cancellable
      PREFECT_PROFILES_PATH, PREFECT_HOME, PREFECT_PROFILE
                                   Prefect's profiles file ($PREFECT_HOME/profiles.toml, PREFECT_HOME=~/.prefect)
                                   and its active profile; with ./prefect.toml, defaults beneath the environment

      PREFECT_WORKER_REDACTED_VARS variables whose values are redacted from job output and logs, comma-separated
                                   globs (default: *_PASSWORD,*_SECRET,*_TOKEN,*_ACCESS_KEY,*_SECRET_KEY,
                                   *_CONNECTION_STRING,*_API_KEY); PREFECT_API_KEY and PREFECT_API_AUTH_STRING always
    """

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
        if let v = try seconds("cancellation-poll-seconds", "PREFECT_WORKER_CANCELLATION_POLL_SECONDS", minimum: 0.1) {
            settings.cancellationPollSeconds = v
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
    public static func parseAPIURL(_ raw: String) throws -> URL {
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

import Foundation

/// Everything the worker needs to know, from flags and `PREFECT_*` environment variables (a flag wins).
public struct Settings: Sendable, Equatable {
    var apiURL: URL
    var apiKey: String?
    var authString: String?
    var pool: String
    var workerName: String
    var workQueues: [String] = []
    var heartbeatSeconds: Double = 30
    var querySeconds: Double = 10
    /// Whether `querySeconds` was set (flag, environment, profile): the poll then keeps it while the events
    /// stream is up too, instead of resting (`PollCadence`).
    var querySecondsIsSet = false
    var prefetchSeconds: Double = 10
    /// At most this many runs in flight; nil = no limit.
    var limit: Int?
    var runOnce = false
    /// How long a job may take to exit after SIGTERM before it gets SIGKILL.
    var killGraceSeconds: Double = 30
    /// On shutdown, how long to wait for in-flight runs before terminating them; nil = wait for them.
    var drainTimeout: Double?
    /// What an engine run stopped by a shutdown (drain timeout or second signal) is asked to let the worker do:
    /// nil leaves it CRASHED, `reschedule` hands it back to its pool, `relinquish` leaves its state alone.
    /// `PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR`, as `prefect flow-run execute` reads it.
    var sigtermBehavior: AttemptControl.Intent?
    var createPoolIfNotFound = true
    /// How often to look for CANCELLING among this worker's runs while the events socket is down (only while
    /// it has runs in flight); Prefect's runner falls back to 10 s.
    var cancellationPollSeconds: Double = 10
    /// Whether `cancellationPollSeconds` was set (flag, environment, profile): a proxy refusing WebSockets
    /// then keeps it instead of the 0.5 s default cadence for that case.
    var cancellationPollIsSet = false
    /// Where the journal of launched runs lives (see `StateDirectory`).
    var stateDirectory: String = "/tmp/prefect-worker"
    /// The lowest level written to the worker's log.
    public var logLevel: Log.Level = .info
    /// Plain text lines or one JSON object per line.
    public var logFormat: Log.Format = .text
    /// Serve `/health` and `/metrics` on `webserverHost:webserverPort`.
    var withHealthcheck = false
    var webserverHost = "127.0.0.1"
    var webserverPort: UInt16 = 8080
    /// How the API client talks to the server (Prefect's `PREFECT_API_*`/`PREFECT_CLIENT_*` settings).
    var client = ClientSettings()
    /// The worker's own environment, handed to jobs.
    var environment: [String: String] = [:]
    /// `--base-job-template`: the template of a pool the worker creates, and the file it came from.
    var baseJobTemplate: JSON?
    var baseJobTemplatePath: String?
    /// `--install-policy`: accepted so Prefect's service files keep working; a process worker installs nothing.
    var installPolicy: String?
    /// `PREFECT_WORKER_DEBUG_MODE`: debug logging for the worker only (jobs do not inherit it as debug mode).
    var debugMode = false
    /// `PREFECT_WORKER_ENABLE_CANCELLATION` as set (nil: not set). Ours cancels runs in flight either way.
    var enableCancellation: Bool?
    /// `PREFECT_CLOUD_API_URL`: an API URL under it is Prefect Cloud, which tells the worker its id.
    var cloudAPIURL = "https://api.prefect.cloud/api"
    /// `PREFECT_LOGGING_TO_API_*`: shipping job output and the worker's lines about runs to the run's logs.
    var logsToAPI = LogsToAPI()
    /// `PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE`: events kept for delivery at most. Prefect's 0 means unbounded;
    /// ours keeps memory bounded, so 0 (or unset) means 2,000.
    var eventsMaxQueueSize = 0
    var eventsQueueCapacity: Int { eventsMaxQueueSize > 0 ? eventsMaxQueueSize : 2_000 }
    /// `PREFECT_SILENCE_API_URL_MISCONFIGURATION`: no warning about an API URL that looks mistyped.
    var silenceAPIURLMisconfiguration = false

    /// What looks mistyped in the API URL, as Prefect warns of it (`_warn_on_misconfigured_api_url` in
    /// prefect/settings/models/root.py); empty when nothing does.
    static func apiURLMisconfigurations(_ url: String) -> [String] {
        var found: [String] = []
        if url.contains("app.prefect.cloud") { found.append("PREFECT_API_URL points to app.prefect.cloud; did you mean api.prefect.cloud?") }
        if url.contains("account/") { found.append("PREFECT_API_URL uses /account/ but should use /accounts/") }
        if url.contains("workspace/") { found.append("PREFECT_API_URL uses /workspace/ but should use /workspaces/") }
        if url.contains("api.prefect.cloud"), let path = URL(string: url)?.path, !path.isEmpty, !path.hasPrefix("/api") {
            found.append("PREFECT_API_URL should have /api after the base URL")
        }
        return found
    }

    /// Prefect's `PREFECT_LOGGING_TO_API_*` settings, with its defaults.
    struct LogsToAPI: Sendable, Equatable {
        var enabled = true
        /// Seconds between batches.
        var batchInterval = 2.0
        /// Bytes per batch (of the JSON records), as Prefect counts them: max(batchSize - maxLogSize, maxLogSize).
        var batchSize = 4_000_000
        /// Bytes of one record; a longer message is truncated, ending in "... [truncated]".
        var maxLogSize = 1_000_000
        init() {}
        var maxBatchBytes: Int { max(batchSize - maxLogSize, maxLogSize) }
    }

    /// Whether the API is Prefect Cloud (Prefect's `determine_server_type`).
    var isCloud: Bool { apiURL.absoluteString.hasPrefix(cloudAPIURL) }

    /// Variables (shell globs on the name) whose values are redacted from job output, logs and events.
    var redactedVariablePatterns: [String] = Redactor.defaultPatterns

    /// The secrets in the worker's own environment and credentials (see `Redactor.secretValues`).
    var secretValues: [String] {
        var env = environment
        if let apiKey { env["PREFECT_API_KEY"] = apiKey }
        if let authString { env["PREFECT_API_AUTH_STRING"] = authString }
        return Redactor.secretValues(environment: env, patterns: redactedVariablePatterns)
    }

    init(apiURL: URL, pool: String, workerName: String) {
        self.apiURL = apiURL
        self.pool = pool
        self.workerName = workerName
    }

    /// `ProcessWorker <8 hex digits>`: unique per process and recognisable, like Prefect's `ProcessWorker <uuid>`.
    static func defaultWorkerName() -> String {
        "ProcessWorker " + UUID().uuidString.lowercased().prefix(8)
    }
}

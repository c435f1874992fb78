import Foundation

/// Every setting the worker reads, once each. `--help` lists those with flags under the options and the others under
/// the environment, each group in this order; the parser reads them all in this order, so a setting derived from
/// others comes after them, and the ones without which nothing works (the pool, the API) are reported first.
/// Add a setting here and the parser, `--help`, the check of profile and `prefect.toml` values and
/// `scripts/check-units`' README check all know it; `Settings` gets the typed field its `apply` fills.
enum SettingTable {
    static let all: [Setting] = [pool] + connection + [name, workQueues] + client + options + logging + worker

    static let pool = Setting(flags: ["--pool", "-p"], variables: ["PREFECT_WORKER_POOL"], toml: "worker.pool", help: .option("""
      -p, --pool NAME              work pool to serve, created as type `process` if missing [PREFECT_WORKER_POOL]
    """)) { input, draft in
        guard let pool = input?.value, !pool.isEmpty else { throw UsageError("option '--pool' is required") }
        draft.settings.pool = pool
    }

    static let name = Setting(flags: ["--name", "-n"], variables: ["PREFECT_WORKER_NAME"], toml: "worker.name", help: .option("""
      -n, --name NAME              worker name [PREFECT_WORKER_NAME] (default: "ProcessWorker <random hex>")
    """)) { input, draft in
        let name = input?.value ?? Settings.defaultWorkerName()
        if name.isEmpty { throw UsageError("option '--name' must not be empty") }
        if name.contains("/") || name.contains("%") {
            throw UsageError("option '--name': worker names may not contain '/' or '%'")
        }
        draft.settings.workerName = name
    }

    static let workQueues = Setting(flags: ["--work-queue", "-q"], variables: ["PREFECT_WORKER_WORK_QUEUES"], toml: "worker.work_queues", help: .option("""
      -q, --work-queue NAME        serve only this queue; repeat for several (default: all queues)
                                   [PREFECT_WORKER_WORK_QUEUES, comma-separated]
    """)) { input, draft in
        guard let input else { return }
        // Every flag counts; the variable is a comma-separated list.
        let queues = input.fromFlag
            ? input.values
            : input.value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        for queue in queues where queue.isEmpty { throw UsageError("option '--work-queue' must not be empty") }
        draft.settings.workQueues = queues
    }

    /// The other flags of `prefect-worker start`, with the variables they override.
    static let options: [Setting] = [
        Setting(flags: ["--type", "-t"], help: .option("""
          -t, --type process           worker type; only `process` is supported
        """), checkFlag: { option, type in
            guard type == "process" else {
                throw UsageError("option '\(option)': worker type '\(type)' is not supported; only 'process' is")
            }
        }, apply: { _, _ in }),
        .wholeNumber("PREFECT_WORKER_LIMIT", flags: ["--limit", "-l"], toml: "worker.limit", minimum: 1, default: nil, help: .option("""
          -l, --limit N                at most N flow runs at once [PREFECT_WORKER_LIMIT]
        """)) { $0.settings.limit = $1 },
        .seconds("PREFECT_WORKER_PREFETCH_SECONDS", flags: ["--prefetch-seconds"], toml: "worker.prefetch_seconds", minimum: 0, default: "10", help: .option("""
              --prefetch-seconds S     claim runs scheduled up to S seconds ahead [PREFECT_WORKER_PREFETCH_SECONDS=10]
        """)) { $0.settings.prefetchSeconds = $1 },
        .seconds("PREFECT_WORKER_HEARTBEAT_SECONDS", flags: ["--heartbeat-seconds"], toml: "worker.heartbeat_seconds", minimum: 1, default: "30", help: .option("""
              --heartbeat-seconds S    heartbeat interval [PREFECT_WORKER_HEARTBEAT_SECONDS=30]
        """)) { $0.settings.heartbeatSeconds = $1 },
        .seconds("PREFECT_WORKER_QUERY_SECONDS", flags: ["--query-seconds"], toml: "worker.query_seconds", minimum: 0.1, default: "10", help: .option("""
              --query-seconds S        poll interval (unset: 30 s while the events stream pushes
                                       new runs) [PREFECT_WORKER_QUERY_SECONDS=10]
        """)) { draft, seconds in
            // Set: it holds also while the events stream is up (the poll rests to every 30 s then, unless set).
            draft.settings.querySeconds = seconds
            draft.settings.querySecondsIsSet = true
        },
        .seconds("PREFECT_WORKER_KILL_GRACE_SECONDS", flags: ["--kill-grace-seconds"], toml: "worker.kill_grace_seconds", minimum: 0, default: "30", help: .option("""
              --kill-grace-seconds S   SIGTERM-to-SIGKILL grace for jobs [PREFECT_WORKER_KILL_GRACE_SECONDS=30]
        """)) { $0.settings.killGraceSeconds = $1 },
        .seconds("PREFECT_WORKER_DRAIN_TIMEOUT", flags: ["--drain-timeout"], toml: "worker.drain_timeout", minimum: 0, default: nil, help: .option("""
              --drain-timeout S        on shutdown, wait at most S seconds for runs [PREFECT_WORKER_DRAIN_TIMEOUT]
        """)) { $0.settings.drainTimeout = $1 },
        .seconds("PREFECT_WORKER_CANCELLATION_POLL_SECONDS", flags: ["--cancellation-poll-seconds"], toml: "worker.cancellation_poll_seconds",
                 minimum: 0.1, default: "10", help: .option("""
              --cancellation-poll-seconds S
                                       how often to check in-flight runs for CANCELLING while
                                       the events stream is down (unset: 0.5 while a proxy refuses
                                       WebSockets) [PREFECT_WORKER_CANCELLATION_POLL_SECONDS=10]
        """)) { draft, seconds in
            // Set: it holds also while WebSockets are refused (the cadence is 0.5 s then, unless set).
            draft.settings.cancellationPollSeconds = seconds
            draft.settings.cancellationPollIsSet = true
        },
        .flagSwitch("--run-once", default: false, help: .option("""
              --run-once               claim what is due now, run it to the end, exit
        """)) { $0.settings.runOnce = $1 },
        Setting(flags: ["--state-dir"], variables: ["PREFECT_WORKER_STATE_DIR"], toml: "worker.state_dir", help: .option("""
              --state-dir DIR          journal of launched runs [PREFECT_WORKER_STATE_DIR, else $STATE_DIRECTORY,
                                       else $XDG_STATE_HOME/prefect-worker, else ~/.local/state/prefect-worker]
        """)) { input, draft in
            draft.settings.stateDirectory = try CommandLineParser.stateDirectory(input, environment: draft.environment)
        },
        .flagSwitch("--create-pool-if-not-found", negation: "--no-create-pool-if-not-found", default: true, help: .option("""
              --no-create-pool-if-not-found
                                       wait for a missing pool instead of creating it (--create-pool-if-not-found,
                                       the default, creates it)
        """)) { $0.settings.createPoolIfNotFound = $1 },
        Setting(flags: ["--with-healthcheck"], takesValue: false, variables: ["PREFECT_WORKER_WITH_HEALTHCHECK"],
                toml: "worker.with_healthcheck", defaultValue: "false", kind: .boolean, help: .option("""
              --with-healthcheck       serve GET /health and /metrics [PREFECT_WORKER_WITH_HEALTHCHECK] on
                                       PREFECT_WORKER_WEBSERVER_HOST (127.0.0.1) : PREFECT_WORKER_WEBSERVER_PORT (8080)
        """)) { input, draft in
            guard let input else { return }
            guard let enabled = JSONBoolean.parse(input.value) else {
                throw UsageError("\(input.source): '\(input.value)' is not true or false")
            }
            draft.settings.withHealthcheck = enabled
        },
        .text(["PREFECT_WORKER_WEBSERVER_HOST"], toml: "worker.webserver.host", default: "127.0.0.1",
              help: .within("--with-healthcheck")) { $0.settings.webserverHost = $1 },
        Setting(variables: ["PREFECT_WORKER_WEBSERVER_PORT"], toml: "worker.webserver.port", defaultValue: "8080", kind: .integer,
                help: .within("--with-healthcheck")) { input, draft in
            guard let input else { return }
            guard let port = UInt16(input.value) else {
                throw UsageError("\(input.source): '\(input.value)' is not a port number (0-65535)")
            }
            draft.settings.webserverPort = port
        },
        Setting(flags: ["--log-format"], variables: ["PREFECT_WORKER_LOG_FORMAT"], toml: "worker.log_format", defaultValue: "text",
                kind: .choice(["text", "json"]), help: .option("""
              --log-format text|json   worker log format [PREFECT_WORKER_LOG_FORMAT=text]; level from PREFECT_LOGGING_LEVEL,
                                       or DEBUG when PREFECT_WORKER_DEBUG_MODE is true
        """)) { input, draft in
            guard let input else { return }
            guard let format = Log.Format(rawValue: input.value) else {
                throw UsageError("--log-format / PREFECT_WORKER_LOG_FORMAT: '\(input.value)' is not one of text, json")
            }
            draft.settings.logFormat = format
        },
        Setting(variables: ["PREFECT_LOGGING_LEVEL"], toml: "logging.level", defaultValue: "INFO", kind: .logLevel,
                help: .within("--log-format")) { input, draft in
            guard let input else { return }
            guard let level = Log.Level(name: input.value) else {
                throw UsageError("\(input.source): '\(input.value)' is not one of DEBUG, INFO, WARNING, ERROR")
            }
            draft.settings.logLevel = level
        },
        Setting(flags: ["--base-job-template"], help: .option("""
              --base-job-template PATH JSON base job template for a pool the worker creates; ignored (with a
                                       warning) when the pool exists
        """)) { input, draft in
            guard let path = input?.value else { return }
            draft.settings.baseJobTemplate = try CommandLineParser.loadBaseJobTemplate(path)
            draft.settings.baseJobTemplatePath = path
        },
        Setting(flags: ["--install-policy"], help: .option("""
              --install-policy P       always|if-not-present|never|prompt: accepted; a process worker installs nothing
        """), checkFlag: { _, policy in
            guard CommandLineParser.installPolicies.contains(policy) else {
                throw UsageError("option '--install-policy': '\(policy)' is not one of \(CommandLineParser.installPolicies.joined(separator: ", "))")
            }
        }, apply: { input, draft in draft.settings.installPolicy = input?.value }),
    ]

    /// Where the API is and who the worker is to it.
    static let connection: [Setting] = [
        Setting(variables: ["PREFECT_API_URL"], toml: "api.url", kind: .url, help: .environment("""
          PREFECT_API_URL              API base URL, e.g. http://127.0.0.1:4200/api (required)
        """)) { input, draft in
            guard let raw = input?.value else {
                throw UsageError("PREFECT_API_URL is not set; set it to your Prefect API, e.g. http://127.0.0.1:4200/api")
            }
            draft.settings.apiURL = try CommandLineParser.parseAPIURL(raw)
        },
        .text(["PREFECT_API_KEY"], toml: "api.key", help: .environment("""
          PREFECT_API_KEY              sent as `Authorization: Bearer` (Prefect Cloud)
        """)) { $0.settings.apiKey = $1 },
        .text(["PREFECT_API_AUTH_STRING"], toml: "api.auth_string", help: .environment("""
          PREFECT_API_AUTH_STRING      sent as HTTP basic auth, "user:password" (self-hosted servers)
        """)) { $0.settings.authString = $1 },
    ]

    /// Prefect's client settings (`ClientSettings.parse` reads these alone).
    static let client: [Setting] = [
        Setting(variables: ["PREFECT_API_REQUEST_TIMEOUT"], toml: "api.request_timeout", defaultValue: "60", kind: .number, trims: true,
                help: .environment("""
          PREFECT_API_REQUEST_TIMEOUT  seconds one request may take (60)
        """)) { input, draft in
            guard let raw = input?.value else { return }
            guard let seconds = Double(raw), seconds.isFinite, seconds > 0, seconds <= 86_400 else {
                throw UsageError("PREFECT_API_REQUEST_TIMEOUT: '\(raw)' is not a number of seconds > 0 (at most 86400)")
            }
            draft.settings.client.requestTimeout = seconds
        },
        Setting(variables: ["PREFECT_CLIENT_MAX_RETRIES"], toml: "client.max_retries", defaultValue: "5", kind: .integer, trims: true,
                help: .environment("""
          PREFECT_CLIENT_MAX_RETRIES   retries of an ordinary API call (5)
        """)) { input, draft in
            guard let raw = input?.value else { return }
            guard let retries = Int(raw), (0...1000).contains(retries) else {
                throw UsageError("PREFECT_CLIENT_MAX_RETRIES: '\(raw)' is not a whole number from 0 to 1000")
            }
            draft.settings.client.maxRetries = retries
        },
        Setting(variables: ["PREFECT_CLIENT_RETRY_JITTER_FACTOR"], toml: "client.retry_jitter_factor", defaultValue: "0.2", kind: .number,
                trims: true, help: .environment("""
          PREFECT_CLIENT_RETRY_JITTER_FACTOR
                                       retry delays vary by up to this fraction (0.2)
        """)) { input, draft in
            guard let raw = input?.value else { return }
            guard let factor = Double(raw), factor.isFinite, factor >= 0, factor < 1 else {
                throw UsageError("PREFECT_CLIENT_RETRY_JITTER_FACTOR: '\(raw)' is not a number from 0 to below 1")
            }
            draft.settings.client.retryJitterFactor = factor
        },
        Setting(variables: ["PREFECT_CLIENT_RETRY_EXTRA_CODES"], toml: "client.retry_extra_codes", kind: .statusCodes, trims: true,
                help: .environment("""
          PREFECT_CLIENT_RETRY_EXTRA_CODES
                                       statuses to retry besides 408, 429, 5xx, comma-separated
        """)) { input, draft in
            guard let raw = input?.value else { return }
            for part in raw.split(separator: ",") {
                let code = part.trimmingCharacters(in: .whitespaces)
                guard let status = Int(code), (100...599).contains(status) else {
                    throw UsageError("PREFECT_CLIENT_RETRY_EXTRA_CODES: '\(code)' is not an HTTP status code (expected e.g. 404,421)")
                }
                draft.settings.client.retryExtraCodes.insert(status)
            }
        },
        Setting(variables: ["PREFECT_CLIENT_CUSTOM_HEADERS"], toml: "client.custom_headers", kind: .jsonObject, trims: true,
                help: .environment("""
          PREFECT_CLIENT_CUSTOM_HEADERS
                                       extra request headers, a JSON object
        """)) { input, draft in
            guard let raw = input?.value else { return }
            draft.settings.client.customHeaders = try ClientSettings.customHeaders(raw)
        },
        .text(["PREFECT_API_SSL_CERT_FILE", "SSL_CERT_FILE"], toml: "api.ssl_cert_file", trims: true, help: .environment("""
          PREFECT_API_SSL_CERT_FILE    CA bundle for the server's certificate (else SSL_CERT_FILE, else the system's)
        """)) { $0.settings.client.caFile = $1 },
        .boolean("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", toml: "api.tls_insecure_skip_verify", default: "false", trims: true,
                 help: .environment("""
          PREFECT_API_TLS_INSECURE_SKIP_VERIFY
                                       do not verify the server's certificate (false)
        """)) { $0.settings.client.insecureSkipVerify = $1 },
        .boolean("PREFECT_API_ENABLE_HTTP2", toml: "api.enable_http2", default: "false", trims: true, help: .environment("""
          PREFECT_API_ENABLE_HTTP2     offer HTTP/2 over TLS (false)
        """)) { $0.settings.client.http2 = $1 },
        // curl's variables, in either case; `ProxySettings` reads them all at once.
        Setting(variables: ["HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"], help: .environment("""
          HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY
                                       proxies, in either case, as curl reads them
        """)) { _, draft in draft.settings.client.proxies = ProxySettings(environment: draft.environment) },
    ]

    /// Prefect Cloud, and shipping logs and events to the API.
    static let logging: [Setting] = [
        Setting(variables: ["PREFECT_CLOUD_API_URL"], toml: "cloud.api_url", defaultValue: "https://api.prefect.cloud/api", kind: .url,
                help: .environment("""
          PREFECT_CLOUD_API_URL        URLs under it are Prefect Cloud (https://api.prefect.cloud/api)
        """)) { input, draft in
            if let url = input?.value { draft.settings.cloudAPIURL = url }
        },
        .wholeNumber("PREFECT_CLOUD_MAX_LOG_SIZE", toml: "cloud.max_log_size", minimum: 100, default: "25000", help: .environment("""
          PREFECT_CLOUD_MAX_LOG_SIZE   on Cloud, caps PREFECT_LOGGING_TO_API_MAX_LOG_SIZE (25000)
        """)) { $0.cloudMaxLogSize = $1 },
        .boolean("PREFECT_LOGGING_TO_API_ENABLED", toml: "logging.to_api.enabled", default: "true", help: .environment("""
          PREFECT_LOGGING_TO_API_ENABLED (true), PREFECT_LOGGING_TO_API_BATCH_INTERVAL (2 s),
          PREFECT_LOGGING_TO_API_BATCH_SIZE (4000000 bytes), PREFECT_LOGGING_TO_API_MAX_LOG_SIZE (1000000 bytes)
                                       shipping job output and the worker's lines about runs to the run's logs
        """)) { $0.settings.logsToAPI.enabled = $1 },
        .seconds("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", toml: "logging.to_api.batch_interval", minimum: 0.01, default: "2",
                 help: .within("PREFECT_LOGGING_TO_API_ENABLED")) { $0.settings.logsToAPI.batchInterval = $1 },
        .wholeNumber("PREFECT_LOGGING_TO_API_BATCH_SIZE", toml: "logging.to_api.batch_size", minimum: 1, default: "4000000",
                     help: .within("PREFECT_LOGGING_TO_API_ENABLED")) { $0.settings.logsToAPI.batchSize = $1 },
        Setting(variables: ["PREFECT_LOGGING_TO_API_MAX_LOG_SIZE"], toml: "logging.to_api.max_log_size", defaultValue: "1000000",
                kind: .integer, help: .within("PREFECT_LOGGING_TO_API_ENABLED")) { input, draft in
            if let raw = input?.value {
                guard let size = Int(raw), size >= 100 else {
                    throw UsageError("PREFECT_LOGGING_TO_API_MAX_LOG_SIZE: '\(raw)' is not a whole number >= 100")
                }
                draft.settings.logsToAPI.maxLogSize = size
            }
            // Prefect caps the size on Cloud (`connected_to_cloud` in settings/models/root.py); after the API URL,
            // the Cloud URL and the Cloud cap, which come before this in the table.
            if draft.settings.isCloud {
                draft.settings.logsToAPI.maxLogSize = min(draft.settings.logsToAPI.maxLogSize, draft.cloudMaxLogSize)
            }
        },
        .wholeNumber("PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE", toml: "events.worker_max_queue_size", minimum: 0, default: "0",
                     help: .environment("""
          PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE
                                       events kept for delivery at most (0: 2000)
        """)) { $0.settings.eventsMaxQueueSize = $1 },
        .boolean("PREFECT_SILENCE_API_URL_MISCONFIGURATION", toml: "silence_api_url_misconfiguration", default: "false",
                 help: .environment("""
          PREFECT_SILENCE_API_URL_MISCONFIGURATION
                                       no warning about an API URL that looks mistyped (false)
        """)) { $0.settings.silenceAPIURLMisconfiguration = $1 },
    ]

    /// How runs stop, debugging, the settings files and redaction.
    static let worker: [Setting] = [
        // What `prefect flow-run execute` reads from its environment, not a Prefect setting, so prefect.toml has no
        // key for it. Not checked when a file is read (its values are case-insensitive); the parser's error says
        // which file set it.
        Setting(variables: ["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"], defaultValue: "crash", help: .environment("""
          PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR
                                       crash|reschedule|relinquish: what an engine run stopped by a shutdown
                                       becomes (crash: CRASHED; reschedule: back to its pool, AwaitingRetry)
        """)) { input, draft in
            guard let raw = input?.value else { return }
            switch raw.trimmingCharacters(in: .whitespaces).lowercased() {
            case "", "crash": draft.settings.sigtermBehavior = nil
            case "reschedule": draft.settings.sigtermBehavior = .reschedule
            case "relinquish": draft.settings.sigtermBehavior = .relinquish
            default: throw UsageError("PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR: '\(raw)' is not one of crash, reschedule, relinquish")
            }
        },
        // After PREFECT_LOGGING_LEVEL: debug mode wins.
        .boolean("PREFECT_WORKER_DEBUG_MODE", toml: "worker.debug_mode", default: "false", help: .environment("""
          PREFECT_WORKER_DEBUG_MODE    debug logging for the worker (false)
        """)) { draft, debug in
            draft.settings.debugMode = debug
            if debug { draft.settings.logLevel = .debug }
        },
        .boolean("PREFECT_WORKER_ENABLE_CANCELLATION", toml: "worker.enable_cancellation", default: nil, help: .environment("""
          PREFECT_WORKER_ENABLE_CANCELLATION
                                       accepted; runs in flight are always cancellable
        """)) { $0.settings.enableCancellation = $1 },
        // Read by `SettingSources` from the environment, before the files they point to.
        .documented(["PREFECT_PROFILES_PATH"], toml: "profiles_path", help: .environment("""
          PREFECT_PROFILES_PATH, PREFECT_HOME, PREFECT_PROFILE
                                       Prefect's profiles file ($PREFECT_HOME/profiles.toml, PREFECT_HOME=~/.prefect)
                                       and its active profile; with ./prefect.toml, defaults beneath the environment
        """)),
        .documented(["PREFECT_HOME"], help: .within("PREFECT_PROFILES_PATH")),
        .documented(["PREFECT_PROFILE"], help: .within("PREFECT_PROFILES_PATH")),
        Setting(variables: ["PREFECT_WORKER_REDACTED_VARS"], toml: "worker.redacted_vars", emptyIsUnset: false, help: .environment("""

          PREFECT_WORKER_REDACTED_VARS variables whose values are redacted from job output and logs, comma-separated
                                       globs (default: *_PASSWORD,*_SECRET,*_TOKEN,*_ACCESS_KEY,*_SECRET_KEY,
                                       *_CONNECTION_STRING,*_API_KEY); PREFECT_API_KEY and PREFECT_API_AUTH_STRING always
        """)) { input, draft in
            guard let raw = input?.value else { return }
            draft.settings.redactedVariablePatterns = raw.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        },
    ]

    /// The setting with this flag or variable.
    static func named(_ name: String) -> Setting? { all.first { $0.flags.contains(name) || $0.variables.contains(name) } }
}

extension CommandLineParser {
    /// The text of `--help`.
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
                                   how often to check in-flight runs for CANCELLING while
                                   the events stream is down (unset: 0.5 while a proxy refuses
                                   WebSockets) [PREFECT_WORKER_CANCELLATION_POLL_SECONDS=10]
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
      PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE
                                   events kept for delivery at most (0: 2000)
      PREFECT_SILENCE_API_URL_MISCONFIGURATION
                                   no warning about an API URL that looks mistyped (false)
      PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR
                                   crash|reschedule|relinquish: what an engine run stopped by a shutdown
                                   becomes (crash: CRASHED; reschedule: back to its pool, AwaitingRetry)
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
}

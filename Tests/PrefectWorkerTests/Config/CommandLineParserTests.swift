import XCTest
@testable import PrefectWorker

final class CommandLineParserTests: XCTestCase {
    private let apiURL = "http://127.0.0.1:4200/api"
    private var baseEnv: [String: String] { ["PREFECT_API_URL": apiURL] }

    private func parse(_ args: [String], env: [String: String]? = nil) throws -> Invocation {
        try CommandLineParser.parse(args, environment: env ?? baseEnv)
    }

    private func settings(_ args: [String], env: [String: String]? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> Settings {
        let invocation = try parse(args, env: env)
        guard case .start(let settings) = invocation else {
            XCTFail("expected .start, got \(invocation)", file: file, line: line)
            throw UsageError("not start")
        }
        return settings
    }

    private func assertUsageError(_ args: [String], env: [String: String]? = nil, _ expected: String,
                                  file: StaticString = #filePath, line: UInt = #line) {
        do {
            let invocation = try parse(args, env: env)
            XCTFail("expected usage error \"\(expected)\", got \(invocation)", file: file, line: line)
        } catch let error as UsageError {
            XCTAssertEqual(error.message, expected, file: file, line: line)
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }

    /// The usage error's message for `args`, for checks on parts of it.
    private func usageMessage(_ args: [String], env: [String: String]? = nil, file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            let invocation = try parse(args, env: env)
            XCTFail("expected a usage error, got \(invocation)", file: file, line: line)
        } catch let error as UsageError {
            return error.message
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
        return ""
    }

    // MARK: - help and version

    func testHelpAndVersion() throws {
        for args in [["--help"], ["-h"], ["help"], ["start", "--help"], ["start", "-h"], ["start", "--pool", "p", "-h"]] {
            XCTAssertEqual(try parse(args, env: [:]), .help, "\(args)")
        }
        for args in [["--version"], ["-V"], ["version"], ["start", "--version"], ["start", "-p", "p", "-V"]] {
            XCTAssertEqual(try parse(args, env: [:]), .version, "\(args)")
        }
        XCTAssertTrue(CommandLineParser.usage.contains("--pool"))
        XCTAssertFalse(WorkerVersion.current.isEmpty)
    }

    func testCommandIsRequired() {
        assertUsageError([], "missing command; expected `start`")
        assertUsageError(["run"], "unknown command 'run'; expected `start`")
        assertUsageError(["--pool", "p"], "unknown option '--pool' before the command; expected `start`")
    }

    // MARK: - start

    func testMinimalStartHasDefaults() throws {
        let s = try settings(["start", "--pool", "my-pool"])
        XCTAssertEqual(s.pool, "my-pool")
        XCTAssertEqual(s.apiURL.absoluteString, apiURL)
        XCTAssertEqual(s.workQueues, [])
        XCTAssertEqual(s.heartbeatSeconds, 30)
        XCTAssertEqual(s.querySeconds, 10)
        XCTAssertEqual(s.prefetchSeconds, 10)
        XCTAssertEqual(s.killGraceSeconds, 30)
        XCTAssertNil(s.drainTimeout)
        XCTAssertNil(s.limit)
        XCTAssertFalse(s.runOnce)
        XCTAssertTrue(s.createPoolIfNotFound)
        XCTAssertNil(s.apiKey)
        XCTAssertNil(s.authString)
        XCTAssertEqual(s.logLevel, .info)
        XCTAssertEqual(s.logFormat, .text)
        XCTAssertEqual(s.environment, baseEnv, "the worker's environment is kept for the jobs")
    }

    func testLongFlags() throws {
        let s = try settings([
            "start", "--pool", "p", "--name", "w1", "--work-queue", "a", "--work-queue", "b", "--type", "process",
            "--limit", "3", "--prefetch-seconds", "5", "--heartbeat-seconds", "7.5", "--query-seconds", "0.5",
            "--kill-grace-seconds", "0", "--drain-timeout", "12", "--run-once", "--no-create-pool-if-not-found",
            "--log-format", "json",
        ])
        XCTAssertEqual(s.pool, "p")
        XCTAssertEqual(s.workerName, "w1")
        XCTAssertEqual(s.workQueues, ["a", "b"])
        XCTAssertEqual(s.limit, 3)
        XCTAssertEqual(s.prefetchSeconds, 5)
        XCTAssertEqual(s.heartbeatSeconds, 7.5)
        XCTAssertEqual(s.querySeconds, 0.5)
        XCTAssertEqual(s.killGraceSeconds, 0)
        XCTAssertEqual(s.drainTimeout, 12)
        XCTAssertTrue(s.runOnce)
        XCTAssertFalse(s.createPoolIfNotFound)
        XCTAssertEqual(s.logFormat, .json)
    }

    func testShortFlags() throws {
        let s = try settings(["start", "-p", "p", "-n", "w", "-q", "x", "-q", "y", "-q", "z", "-t", "process", "-l", "1"])
        XCTAssertEqual(s.pool, "p")
        XCTAssertEqual(s.workerName, "w")
        XCTAssertEqual(s.workQueues, ["x", "y", "z"])
        XCTAssertEqual(s.limit, 1)
    }

    func testInlineValues() throws {
        let s = try settings(["start", "--pool=p=1", "--name=w x", "--work-queue=a", "-q", "b", "--type=process",
                              "--limit=2", "--heartbeat-seconds=4", "--drain-timeout=0", "--log-format=json"])
        XCTAssertEqual(s.pool, "p=1", "only the first '=' separates")
        XCTAssertEqual(s.workerName, "w x")
        XCTAssertEqual(s.workQueues, ["a", "b"])
        XCTAssertEqual(s.limit, 2)
        XCTAssertEqual(s.heartbeatSeconds, 4)
        XCTAssertEqual(s.drainTimeout, 0)
        XCTAssertEqual(s.logFormat, .json)
    }

    func testCreatePoolFlagsLastOneWins() throws {
        XCTAssertTrue(try settings(["start", "-p", "p", "--no-create-pool-if-not-found", "--create-pool-if-not-found"]).createPoolIfNotFound)
        XCTAssertFalse(try settings(["start", "-p", "p", "--create-pool-if-not-found", "--no-create-pool-if-not-found"]).createPoolIfNotFound)
    }

    func testValuesThatLookLikeNegativeNumbersAreValues() throws {
        // "-1" is taken as the value (then rejected by the range check), not as an unknown flag.
        assertUsageError(["start", "-p", "p", "--prefetch-seconds", "-1"], "--prefetch-seconds: '-1' is not a number of seconds >= 0")
        assertUsageError(["start", "-p", "p", "--limit", "-5"], "--limit: '-5' is not a whole number >= 1")
        XCTAssertEqual(try settings(["start", "-p", "-"]).pool, "-", "a lone dash is a value")
    }

    // MARK: - Environment fallbacks

    func testEnvironmentFallbacks() throws {
        var env = baseEnv
        env["PREFECT_WORKER_POOL"] = "env-pool"
        env["PREFECT_WORKER_HEARTBEAT_SECONDS"] = "5"
        env["PREFECT_WORKER_QUERY_SECONDS"] = "2"
        env["PREFECT_WORKER_PREFETCH_SECONDS"] = "0"
        env["PREFECT_WORKER_KILL_GRACE_SECONDS"] = "3"
        env["PREFECT_WORKER_DRAIN_TIMEOUT"] = "60"
        env["PREFECT_WORKER_LIMIT"] = "4"
        env["PREFECT_API_KEY"] = "key"
        env["PREFECT_API_AUTH_STRING"] = "user:pass"
        env["PREFECT_LOGGING_LEVEL"] = "debug"
        let s = try settings(["start"], env: env)
        XCTAssertEqual(s.pool, "env-pool")
        XCTAssertEqual(s.heartbeatSeconds, 5)
        XCTAssertEqual(s.querySeconds, 2)
        XCTAssertEqual(s.prefetchSeconds, 0)
        XCTAssertEqual(s.killGraceSeconds, 3)
        XCTAssertEqual(s.drainTimeout, 60)
        XCTAssertEqual(s.limit, 4)
        XCTAssertEqual(s.apiKey, "key")
        XCTAssertEqual(s.authString, "user:pass")
        XCTAssertEqual(s.logLevel, .debug)
    }

    func testFlagBeatsEnvironment() throws {
        var env = baseEnv
        env["PREFECT_WORKER_POOL"] = "env-pool"
        env["PREFECT_WORKER_HEARTBEAT_SECONDS"] = "5"
        env["PREFECT_WORKER_QUERY_SECONDS"] = "not a number"
        env["PREFECT_WORKER_PREFETCH_SECONDS"] = "1"
        env["PREFECT_WORKER_KILL_GRACE_SECONDS"] = "1"
        env["PREFECT_WORKER_DRAIN_TIMEOUT"] = "1"
        env["PREFECT_WORKER_LIMIT"] = "bad"
        let s = try settings(["start", "-p", "flag-pool", "--heartbeat-seconds", "6", "--query-seconds", "3",
                              "--prefetch-seconds", "2", "--kill-grace-seconds", "2", "--drain-timeout", "2", "-l", "9"], env: env)
        XCTAssertEqual(s.pool, "flag-pool")
        XCTAssertEqual(s.heartbeatSeconds, 6)
        XCTAssertEqual(s.querySeconds, 3, "a bad environment value is not even read when the flag is given")
        XCTAssertEqual(s.prefetchSeconds, 2)
        XCTAssertEqual(s.killGraceSeconds, 2)
        XCTAssertEqual(s.drainTimeout, 2)
        XCTAssertEqual(s.limit, 9)
    }

    func testEmptyEnvironmentValuesAreIgnored() throws {
        var env = baseEnv
        for key in ["PREFECT_WORKER_HEARTBEAT_SECONDS", "PREFECT_WORKER_QUERY_SECONDS", "PREFECT_WORKER_LIMIT",
                    "PREFECT_WORKER_DRAIN_TIMEOUT", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_LOGGING_LEVEL",
                    "PREFECT_WORKER_POOL"] {
            env[key] = ""
        }
        let s = try settings(["start", "-p", "p"], env: env)
        XCTAssertEqual(s.heartbeatSeconds, 30)
        XCTAssertEqual(s.querySeconds, 10)
        XCTAssertNil(s.limit)
        XCTAssertNil(s.drainTimeout)
        XCTAssertNil(s.apiKey)
        XCTAssertNil(s.authString)
        XCTAssertEqual(s.logLevel, .info)
        assertUsageError(["start"], env: env, "option '--pool' is required")
    }

    func testLoggingLevelNames() throws {
        for (name, level) in [("DEBUG", Log.Level.debug), ("info", .info), ("Warning", .warning), ("WARN", .warning), ("ERROR", .error), ("critical", .error)] {
            var env = baseEnv
            env["PREFECT_LOGGING_LEVEL"] = name
            XCTAssertEqual(try settings(["start", "-p", "p"], env: env).logLevel, level, name)
        }
        var env = baseEnv
        env["PREFECT_LOGGING_LEVEL"] = "verbose"
        assertUsageError(["start", "-p", "p"], env: env, "PREFECT_LOGGING_LEVEL: 'verbose' is not one of DEBUG, INFO, WARNING, ERROR")
    }

    // MARK: - Errors

    func testUnknownFlagsAndArguments() {
        assertUsageError(["start", "-p", "p", "--bogus"], "unknown option '--bogus'")
        assertUsageError(["start", "-p", "p", "--bogus=1"], "unknown option '--bogus'")
        assertUsageError(["start", "-p", "p", "-x"], "unknown option '-x'")
        assertUsageError(["start", "-p=p"], "unknown option '-p=p'")
        assertUsageError(["start", "-p", "p", "extra"], "unexpected argument 'extra'")
    }

    func testMissingValues() {
        assertUsageError(["start", "--pool"], "option '--pool' needs a value")
        assertUsageError(["start", "-p"], "option '-p' needs a value")
        assertUsageError(["start", "--pool", "--name", "w"], "option '--pool' needs a value")
        assertUsageError(["start", "-p", "p", "-q"], "option '-q' needs a value")
        assertUsageError(["start", "-p", "p", "--limit"], "option '--limit' needs a value")
        assertUsageError(["start", "-p", "p", "--heartbeat-seconds", "--run-once"], "option '--heartbeat-seconds' needs a value")
    }

    func testFlagsWithoutValuesRejectInlineValues() {
        assertUsageError(["start", "-p", "p", "--run-once=yes"], "option '--run-once' takes no value")
        assertUsageError(["start", "-p", "p", "--no-create-pool-if-not-found=1"], "option '--no-create-pool-if-not-found' takes no value")
    }

    func testBadNumbers() {
        assertUsageError(["start", "-p", "p", "--heartbeat-seconds", "abc"], "--heartbeat-seconds: 'abc' is not a number of seconds >= 1")
        assertUsageError(["start", "-p", "p", "--heartbeat-seconds", "0.5"], "--heartbeat-seconds: '0.5' is not a number of seconds >= 1")
        assertUsageError(["start", "-p", "p", "--query-seconds", "0.05"], "--query-seconds: '0.05' is not a number of seconds >= 0.1")
        assertUsageError(["start", "-p", "p", "--query-seconds", "inf"], "--query-seconds: 'inf' is not a number of seconds >= 0.1")
        assertUsageError(["start", "-p", "p", "--query-seconds", "nan"], "--query-seconds: 'nan' is not a number of seconds >= 0.1")
        assertUsageError(["start", "-p", "p", "--kill-grace-seconds", "-1"], "--kill-grace-seconds: '-1' is not a number of seconds >= 0")
        assertUsageError(["start", "-p", "p", "--drain-timeout", "soon"], "--drain-timeout: 'soon' is not a number of seconds >= 0")
        assertUsageError(["start", "-p", "p", "--limit", "0"], "--limit: '0' is not a whole number >= 1")
        assertUsageError(["start", "-p", "p", "--limit", "1.5"], "--limit: '1.5' is not a whole number >= 1")
        assertUsageError(["start", "-p", "p", "-l", "many"], "--limit: 'many' is not a whole number >= 1")
        var env = baseEnv
        env["PREFECT_WORKER_QUERY_SECONDS"] = "x"
        assertUsageError(["start", "-p", "p"], env: env, "PREFECT_WORKER_QUERY_SECONDS: 'x' is not a number of seconds >= 0.1")
        env = baseEnv
        env["PREFECT_WORKER_HEARTBEAT_SECONDS"] = "0"
        assertUsageError(["start", "-p", "p"], env: env, "PREFECT_WORKER_HEARTBEAT_SECONDS: '0' is not a number of seconds >= 1")
        env = baseEnv
        env["PREFECT_WORKER_LIMIT"] = "abc"
        assertUsageError(["start", "-p", "p"], env: env, "PREFECT_WORKER_LIMIT: 'abc' is not a whole number >= 1")
    }

    func testOnlyProcessType() {
        assertUsageError(["start", "-p", "p", "--type", "docker"], "option '--type': worker type 'docker' is not supported; only 'process' is")
        assertUsageError(["start", "-p", "p", "-t", "kubernetes"], "option '-t': worker type 'kubernetes' is not supported; only 'process' is")
        assertUsageError(["start", "-p", "p", "--type=Process"], "option '--type': worker type 'Process' is not supported; only 'process' is")
    }

    func testPoolIsRequired() {
        assertUsageError(["start"], "option '--pool' is required")
        assertUsageError(["start", "--pool", ""], "option '--pool' is required")
        assertUsageError(["start", "--pool="], "option '--pool' is required")
        assertUsageError(["start", "-n", "w"], "option '--pool' is required")
    }

    func testLogFormat() throws {
        assertUsageError(["start", "-p", "p", "--log-format", "xml"], "--log-format / PREFECT_WORKER_LOG_FORMAT: 'xml' is not one of text, json")
        var env = baseEnv
        env["PREFECT_WORKER_LOG_FORMAT"] = "json"
        XCTAssertEqual(try settings(["start", "-p", "p"], env: env).logFormat, .json)
        XCTAssertEqual(try settings(["start", "-p", "p", "--log-format", "text"], env: env).logFormat, .text, "the flag wins")
        env["PREFECT_WORKER_LOG_FORMAT"] = ""
        XCTAssertEqual(try settings(["start", "-p", "p"], env: env).logFormat, .text)
        env["PREFECT_WORKER_LOG_FORMAT"] = "yaml"
        assertUsageError(["start", "-p", "p"], env: env, "--log-format / PREFECT_WORKER_LOG_FORMAT: 'yaml' is not one of text, json")
    }

    func testWorkerNames() throws {
        assertUsageError(["start", "-p", "p", "-n", "a/b"], "option '--name': worker names may not contain '/' or '%'")
        assertUsageError(["start", "-p", "p", "--name", "100%"], "option '--name': worker names may not contain '/' or '%'")
        assertUsageError(["start", "-p", "p", "--name", ""], "option '--name' must not be empty")
        assertUsageError(["start", "-p", "p", "-q", ""], "option '--work-queue' must not be empty")
        XCTAssertEqual(try settings(["start", "-p", "p", "-n", "ünï worker #1"]).workerName, "ünï worker #1")
    }

    func testDefaultWorkerName() throws {
        let pattern = #"^ProcessWorker [0-9a-f]{8}$"#
        let a = try settings(["start", "-p", "p"]).workerName
        let b = try settings(["start", "-p", "p"]).workerName
        XCTAssertNotNil(a.range(of: pattern, options: .regularExpression), a)
        XCTAssertNotNil(b.range(of: pattern, options: .regularExpression), b)
        XCTAssertNotEqual(a, b, "a fresh name per worker")
        XCTAssertNotNil(Settings.defaultWorkerName().range(of: pattern, options: .regularExpression))
    }

    // MARK: - PREFECT_API_URL

    func testAPIURLIsRequired() {
        let expected = "PREFECT_API_URL is not set; set it to your Prefect API, e.g. http://127.0.0.1:4200/api"
        assertUsageError(["start", "-p", "p"], env: [:], expected)
        assertUsageError(["start", "-p", "p"], env: ["PREFECT_API_URL": ""], expected)
    }

    func testValidAPIURLs() throws {
        for raw in ["http://127.0.0.1:4200/api", "https://api.prefect.cloud/api/accounts/a/workspaces/w", "http://localhost/api",
                    "HTTP://host:8080", "http://[::1]:4200/api"] {
            XCTAssertEqual(try CommandLineParser.parseAPIURL(raw).absoluteString, raw, raw)
        }
        XCTAssertEqual(try CommandLineParser.parseAPIURL("  http://h:1/api ").absoluteString, "http://h:1/api", "surrounding spaces are trimmed")
        XCTAssertEqual(try CommandLineParser.parseAPIURL("http://user:pw@h:1/api").absoluteString, "http://user:pw@h:1/api")
    }

    func testMalformedAPIURLs() {
        for raw in ["localhost:4200/api", "127.0.0.1:4200", "ftp://host/api", "http://", "http:///api", "not a url", "//host/api"] {
            assertUsageError(["start", "-p", "p"], env: ["PREFECT_API_URL": raw],
                             "PREFECT_API_URL '\(raw)' is not a valid http(s) URL, e.g. http://127.0.0.1:4200/api")
        }
    }

    func testInvalidPortIsReported() {
        let message = usageMessage(["start", "-p", "p"], env: ["PREFECT_API_URL": "http://host:abc"])
        XCTAssertTrue(message.hasPrefix("PREFECT_API_URL 'http://host:abc' "), message)
    }

    func testCredentialsInAMalformedURLAreNotEchoed() {
        for raw in ["ftp://user:s3cret@host/api", "http://user:s3cret@/api", "https://user:s3cret@host:port/api", "user:s3cret@host:4200/api"] {
            let message = usageMessage(["start", "-p", "p"], env: ["PREFECT_API_URL": raw])
            XCTAssertFalse(message.isEmpty, raw)
            XCTAssertFalse(message.contains("s3cret"), "\(raw) → \(message)")
            XCTAssertTrue(message.contains("PREFECT_API_URL"), message)
        }
    }

    // MARK: - Settings added for cancellation and the run journal

    func testCancellationPollSeconds() throws {
        XCTAssertEqual(try settings(["start", "-p", "p"]).cancellationPollSeconds, 10)
        XCTAssertEqual(try settings(["start", "-p", "p", "--cancellation-poll-seconds", "2.5"]).cancellationPollSeconds, 2.5)
        var env = baseEnv
        env["PREFECT_WORKER_CANCELLATION_POLL_SECONDS"] = "7"
        XCTAssertEqual(try settings(["start", "-p", "p"], env: env).cancellationPollSeconds, 7)
        assertUsageError(["start", "-p", "p", "--cancellation-poll-seconds", "0"], "--cancellation-poll-seconds: '0' is not a number of seconds >= 0.1")
    }

    func testStateDirectory() throws {
        XCTAssertEqual(try settings(["start", "-p", "p", "--state-dir", "/srv/state"]).stateDirectory, "/srv/state")
        assertUsageError(["start", "-p", "p", "--state-dir="], "option '--state-dir' must not be empty")
        func dir(_ extra: [String: String]) throws -> String {
            try settings(["start", "-p", "p"], env: baseEnv.merging(extra) { $1 }).stateDirectory
        }
        XCTAssertEqual(try dir(["PREFECT_WORKER_STATE_DIR": "/a", "STATE_DIRECTORY": "/b", "XDG_STATE_HOME": "/c", "HOME": "/d"]), "/a")
        XCTAssertEqual(try dir(["STATE_DIRECTORY": "/b1:/b2", "XDG_STATE_HOME": "/c", "HOME": "/d"]), "/b1")
        XCTAssertEqual(try dir(["XDG_STATE_HOME": "/c", "HOME": "/d"]), "/c/prefect-worker")
        XCTAssertEqual(try dir(["HOME": "/d"]), "/d/.local/state/prefect-worker")
        XCTAssertEqual(try dir(["HOME": "/"]), "/tmp/prefect-worker-\(getuid())")
        XCTAssertEqual(try dir([:]), "/tmp/prefect-worker-\(getuid())")
        // The flag beats the environment.
        XCTAssertEqual(try settings(["start", "-p", "p", "--state-dir=/f"], env: baseEnv.merging(["PREFECT_WORKER_STATE_DIR": "/a"]) { $1 }).stateDirectory, "/f")
    }

    // MARK: - Name, queues and healthcheck from the environment

    func testWorkerNameAndQueuesFromTheEnvironment() throws {
        var env = baseEnv
        env["PREFECT_WORKER_NAME"] = "env-worker"
        env["PREFECT_WORKER_WORK_QUEUES"] = "a, b,,c "
        var s = try settings(["start", "-p", "p"], env: env)
        XCTAssertEqual(s.workerName, "env-worker")
        XCTAssertEqual(s.workQueues, ["a", "b", "c"])
        s = try settings(["start", "-p", "p", "-n", "flag-worker", "-q", "x"], env: env)
        XCTAssertEqual(s.workerName, "flag-worker", "the flag wins")
        XCTAssertEqual(s.workQueues, ["x"], "flags replace the environment's queues")
        env["PREFECT_WORKER_NAME"] = "bad/name"
        assertUsageError(["start", "-p", "p"], env: env, "option '--name': worker names may not contain '/' or '%'")
        env["PREFECT_WORKER_NAME"] = ""
        XCTAssertTrue(try settings(["start", "-p", "p"], env: env).workerName.hasPrefix("ProcessWorker "), "empty means unset")
    }

    func testHealthcheckSettings() throws {
        XCTAssertFalse(try settings(["start", "-p", "p"]).withHealthcheck)
        XCTAssertTrue(try settings(["start", "-p", "p", "--with-healthcheck"]).withHealthcheck)
        assertUsageError(["start", "-p", "p", "--with-healthcheck=yes"], "option '--with-healthcheck' takes no value")
        for (raw, expected) in [("true", true), ("1", true), ("YES", true), ("on", true), ("false", false), ("0", false), ("off", false), ("", false)] {
            var env = baseEnv
            env["PREFECT_WORKER_WITH_HEALTHCHECK"] = raw
            XCTAssertEqual(try settings(["start", "-p", "p"], env: env).withHealthcheck, expected, raw)
        }
        var env = baseEnv
        env["PREFECT_WORKER_WITH_HEALTHCHECK"] = "false"
        XCTAssertTrue(try settings(["start", "-p", "p", "--with-healthcheck"], env: env).withHealthcheck, "the flag wins")
        env["PREFECT_WORKER_WITH_HEALTHCHECK"] = "maybe"
        assertUsageError(["start", "-p", "p"], env: env, "PREFECT_WORKER_WITH_HEALTHCHECK: 'maybe' is not true or false")

        env = baseEnv
        env["PREFECT_WORKER_WEBSERVER_HOST"] = "0.0.0.0"
        env["PREFECT_WORKER_WEBSERVER_PORT"] = "9090"
        let s = try settings(["start", "-p", "p"], env: env)
        XCTAssertEqual(s.webserverHost, "0.0.0.0")
        XCTAssertEqual(s.webserverPort, 9090)
        XCTAssertEqual(try settings(["start", "-p", "p"]).webserverPort, 8080)
        for bad in ["70000", "-1", "http", "80.5"] {
            env["PREFECT_WORKER_WEBSERVER_PORT"] = bad
            assertUsageError(["start", "-p", "p"], env: env, "PREFECT_WORKER_WEBSERVER_PORT: '\(bad)' is not a port number (0-65535)")
        }
    }

    func testSigtermBehaviourIsReadAsPrefectFlowRunExecuteReadsIt() throws {
        XCTAssertNil(try settings(["start", "--pool", "p"]).sigtermBehavior, "the default leaves the run CRASHED")
        for (raw, expected) in [("reschedule", AttemptControl.Intent.reschedule), ("RELINQUISH", .relinquish)] {
            XCTAssertEqual(try settings(["start", "--pool", "p"], env: baseEnv.merging(["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": raw]) { $1 }).sigtermBehavior, expected)
        }
        XCTAssertNil(try settings(["start", "--pool", "p"], env: baseEnv.merging(["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "crash"]) { $1 }).sigtermBehavior)
        assertUsageError(["start", "--pool", "p"], env: baseEnv.merging(["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "resched"]) { $1 },
                         "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR: 'resched' is not one of crash, reschedule, relinquish")
    }
}

import Foundation
import XCTest
@testable import PrefectWorker

/// The flags and settings of `prefect worker start` that a Prefect set-up may carry: `--base-job-template`,
/// `--install-policy`, `PREFECT_WORKER_DEBUG_MODE`, `PREFECT_LOGGING_TO_API_*`, `PREFECT_WORKER_ENABLE_CANCELLATION`.
final class PrefectCompatibilityTests: XCTestCase {
    private let env = ["PREFECT_API_URL": "http://127.0.0.1:4200/api"]
    private var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "compat-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func settings(_ args: [String], env extra: [String: String] = [:]) throws -> Settings {
        guard case .start(let settings) = try CommandLineParser.parse(["start", "--pool", "p"] + args,
                                                                     environment: env.merging(extra) { $1 }) else {
            throw UsageError("not start")
        }
        return settings
    }

    private func usageError(_ args: [String], env extra: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            let s = try settings(args, env: extra)
            XCTFail("expected a usage error, got \(s)", file: file, line: line)
        } catch let error as UsageError {
            return error.message
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
        }
        return ""
    }

    private func write(_ name: String, _ text: String) -> String {
        let path = directory + "/" + name
        FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
        return path
    }

    // MARK: - --base-job-template

    func testBaseJobTemplateIsReadFromItsFile() throws {
        let path = write("t.json", #"{"job_configuration": {"command": "{{ command }}"}, "variables": {"properties": {}}}"#)
        for args in [["--base-job-template", path], ["--base-job-template=\(path)"]] {
            let s = try settings(args)
            XCTAssertEqual(s.baseJobTemplatePath, path)
            XCTAssertEqual(s.baseJobTemplate?["job_configuration"]?["command"]?.stringValue, "{{ command }}")
        }
        XCTAssertNil(try settings([]).baseJobTemplate)
    }

    func testBadBaseJobTemplateNamesThePathAndTheProblem() {
        let missing = directory + "/nope.json"
        XCTAssertEqual(usageError(["--base-job-template", missing]), "--base-job-template: \(missing) does not exist")
        let broken = write("broken.json", #"{"job_configuration": "#)
        let message = usageError(["--base-job-template", broken])
        XCTAssertTrue(message.hasPrefix("--base-job-template: \(broken) is not valid JSON: "), message)
        XCTAssertGreaterThan(message.count, "--base-job-template: \(broken) is not valid JSON: ".count, "the JSON error is given: \(message)")
        let array = write("array.json", "[1]")
        XCTAssertEqual(usageError(["--base-job-template", array]),
                       "--base-job-template: \(array) holds a JSON array, not an object with job_configuration and variables")
        let noConfig = write("noconfig.json", #"{"variables": {}}"#)
        XCTAssertEqual(usageError(["--base-job-template", noConfig]), "--base-job-template: \(noConfig) has no \"job_configuration\" object")
        XCTAssertEqual(usageError(["--base-job-template"]), "option '--base-job-template' needs a value")
        XCTAssertEqual(usageError(["--base-job-template="]), "option '--base-job-template' must not be empty")
    }

    // MARK: - --install-policy

    func testInstallPolicyIsAcceptedAndChecked() throws {
        for policy in ["always", "if-not-present", "never", "prompt"] {
            XCTAssertEqual(try settings(["--install-policy", policy]).installPolicy, policy)
        }
        XCTAssertNil(try settings([]).installPolicy)
        XCTAssertEqual(usageError(["--install-policy", "sometimes"]),
                       "option '--install-policy': 'sometimes' is not one of always, if-not-present, never, prompt")
        XCTAssertEqual(usageError(["--install-policy"]), "option '--install-policy' needs a value")
    }

    // MARK: - Settings

    func testWorkerDebugModeBeatsTheLoggingLevel() throws {
        XCTAssertEqual(try settings([], env: ["PREFECT_WORKER_DEBUG_MODE": "true", "PREFECT_LOGGING_LEVEL": "WARNING"]).logLevel, .debug)
        XCTAssertEqual(try settings([], env: ["PREFECT_WORKER_DEBUG_MODE": "false", "PREFECT_LOGGING_LEVEL": "WARNING"]).logLevel, .warning)
        XCTAssertEqual(try settings([]).logLevel, .info)
        XCTAssertFalse(try settings([]).debugMode)
        XCTAssertEqual(usageError([], env: ["PREFECT_WORKER_DEBUG_MODE": "maybe"]), "PREFECT_WORKER_DEBUG_MODE: 'maybe' is not true or false")
    }

    func testLoggingToAPISettingsWithPrefectsDefaults() throws {
        let defaults = try settings([]).logsToAPI
        XCTAssertEqual(defaults, Settings.LogsToAPI())
        XCTAssertTrue(defaults.enabled)
        XCTAssertEqual(defaults.batchInterval, 2.0)
        XCTAssertEqual(defaults.batchSize, 4_000_000)
        XCTAssertEqual(defaults.maxLogSize, 1_000_000)
        XCTAssertEqual(defaults.maxBatchBytes, 3_000_000, "Prefect: max(batch_size - max_log_size, max_log_size)")
        let set = try settings([], env: ["PREFECT_LOGGING_TO_API_ENABLED": "false", "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
                                         "PREFECT_LOGGING_TO_API_BATCH_SIZE": "1000", "PREFECT_LOGGING_TO_API_MAX_LOG_SIZE": "800"]).logsToAPI
        XCTAssertFalse(set.enabled)
        XCTAssertEqual(set.batchInterval, 0.5)
        XCTAssertEqual(set.batchSize, 1000)
        XCTAssertEqual(set.maxLogSize, 800)
        XCTAssertEqual(set.maxBatchBytes, 800)
        XCTAssertEqual(usageError([], env: ["PREFECT_LOGGING_TO_API_BATCH_SIZE": "big"]),
                       "PREFECT_LOGGING_TO_API_BATCH_SIZE: 'big' is not a whole number >= 1")
        XCTAssertEqual(usageError([], env: ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "-1"]),
                       "PREFECT_LOGGING_TO_API_BATCH_INTERVAL: '-1' is not a number of seconds >= 0.01")
        XCTAssertEqual(usageError([], env: ["PREFECT_LOGGING_TO_API_ENABLED": "nah"]),
                       "PREFECT_LOGGING_TO_API_ENABLED: 'nah' is not true or false")
    }

    func testEnableCancellationAndCloudURL() throws {
        XCTAssertNil(try settings([]).enableCancellation)
        XCTAssertEqual(try settings([], env: ["PREFECT_WORKER_ENABLE_CANCELLATION": "false"]).enableCancellation, false)
        XCTAssertFalse(try settings([]).isCloud)
        let cloud = try settings([], env: ["PREFECT_API_URL": "https://api.prefect.cloud/api/accounts/a/workspaces/w"])
        XCTAssertTrue(cloud.isCloud)
        XCTAssertTrue(try settings([], env: ["PREFECT_CLOUD_API_URL": "http://127.0.0.1:4200"]).isCloud)
        XCTAssertEqual(cloud.logsToAPI.maxLogSize, 25_000, "Prefect caps the log size on Cloud")
        XCTAssertEqual(try settings([], env: ["PREFECT_LOGGING_TO_API_MAX_LOG_SIZE": "50000"]).logsToAPI.maxLogSize, 50_000, "not capped elsewhere")
        XCTAssertEqual(try settings([], env: ["PREFECT_API_URL": "https://api.prefect.cloud/api/x", "PREFECT_CLOUD_MAX_LOG_SIZE": "9000"]).logsToAPI.maxLogSize, 9_000)
    }

    func testEventsQueueSizeAndAPIURLMisconfigurationSettings() throws {
        XCTAssertEqual(try settings([]).eventsQueueCapacity, 2_000, "Prefect's 0 (unbounded) is our bounded default")
        XCTAssertEqual(try settings([], env: ["PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE": "0"]).eventsQueueCapacity, 2_000)
        XCTAssertEqual(try settings([], env: ["PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE": "50"]).eventsQueueCapacity, 50)
        XCTAssertTrue(usageError([], env: ["PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE": "-1"]).contains("PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE"))
        XCTAssertFalse(try settings([]).silenceAPIURLMisconfiguration)
        XCTAssertTrue(try settings([], env: ["PREFECT_SILENCE_API_URL_MISCONFIGURATION": "true"]).silenceAPIURLMisconfiguration)

        XCTAssertEqual(Settings.apiURLMisconfigurations("http://127.0.0.1:4200/api"), [])
        XCTAssertEqual(Settings.apiURLMisconfigurations("https://api.prefect.cloud/api/accounts/a/workspaces/w"), [])
        XCTAssertEqual(Settings.apiURLMisconfigurations("https://app.prefect.cloud/api/accounts/a/workspaces/w"),
                       ["PREFECT_API_URL points to app.prefect.cloud; did you mean api.prefect.cloud?"])
        XCTAssertEqual(Settings.apiURLMisconfigurations("https://api.prefect.cloud/api/account/a/workspace/w"),
                       ["PREFECT_API_URL uses /account/ but should use /accounts/", "PREFECT_API_URL uses /workspace/ but should use /workspaces/"])
        XCTAssertEqual(Settings.apiURLMisconfigurations("https://api.prefect.cloud/accounts/a/workspaces/w"),
                       ["PREFECT_API_URL should have /api after the base URL"])
    }

    func testEventsOverTheQueueSizeAreDroppedAndCountedAsEvents() throws {
        // They were counted as dropped log lines.
        let settings = try settings([], env: ["PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE": "3"])
        let client = PrefectClient(baseURL: URL(string: "http://127.0.0.1:9/api")!, apiKey: nil, authString: nil, settings: ClientSettings())
        let context = WorkerContext(settings: settings, client: client)
        for i in 0..<5 { _ = context.events.emit("prefect.worker.test-\(i)", related: []) }
        XCTAssertEqual(context.events.shipper.pending, 3)
        let metrics = context.metrics.render(lastHeartbeat: nil, lastPoll: nil)
        XCTAssertTrue(metrics.contains("prefect_worker_events_dropped_total 2\n"), metrics)
        XCTAssertTrue(metrics.contains("prefect_worker_log_lines_dropped_total 0\n"), metrics)
    }

    func testTheHelpDocumentsTheNewFlagsAndSettings() {
        for name in ["--base-job-template", "--install-policy", "PREFECT_WORKER_DEBUG_MODE", "PREFECT_LOGGING_TO_API_ENABLED",
                     "PREFECT_WORKER_ENABLE_CANCELLATION", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE", "PREFECT_HOME",
                     "PREFECT_CLOUD_API_URL", "PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE", "PREFECT_SILENCE_API_URL_MISCONFIGURATION"] {
            XCTAssertTrue(CommandLineParser.usage.contains(name), name)
        }
    }

    // MARK: - Shipped log records

    func testLongLinesAreTruncatedLikePrefectsAPILogHandler() throws {
        let short = FlowRunLog.shippable(runID: "r", level: .info, message: "hello", maxSize: 1_000)
        XCTAssertEqual(short.body["message"]?.stringValue, "hello")
        XCTAssertEqual(short.size, FlowRunLog.recordOverhead + "prefect.flow_runs.worker".utf8.count + 5)
        let long = String(repeating: "é", count: 1_000) // 2000 bytes
        let cut = FlowRunLog.shippable(runID: "r", level: .info, message: long, maxSize: 1_000)
        let message = try XCTUnwrap(cut.body["message"]?.stringValue)
        XCTAssertTrue(message.hasSuffix("... [truncated]"), message)
        XCTAssertLessThanOrEqual(cut.size, 1_000)
        XCTAssertTrue(message.hasPrefix("éé"))
        XCTAssertEqual(cut.key, "r")
    }
}

/// The worker's identity as Prefect's worker sends it: `X-Prefect-Worker-Name` always, `X-Prefect-Worker-Id`
/// once Prefect Cloud answered a heartbeat with `return_id`; and log batches bounded in bytes.
final class WorkerIdentityTests: XCTestCase {
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = NSTemporaryDirectory() + "identity-\(UUID().uuidString)"
    }

    override func tearDown() {
        fake.stop()
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    private func worker(cloud: Bool) -> Worker {
        var settings = Settings(apiURL: fake.apiURL, pool: "p", workerName: "w1")
        settings.stateDirectory = stateDirectory
        if cloud { settings.cloudAPIURL = fake.url }
        return Worker(settings: settings)
    }

    func testWorkerNameIsSentAndTheIdOnlyOnceCloudGaveIt() async throws {
        let id = "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"
        fake.route("POST", "/api/work_pools/p/workers/heartbeat") { _, _, body in
            let json = try? JSON.decode(body)
            return json?["return_id"] == .bool(true) ? .json(200, "\"\(id)\"") : .noContent
        }
        let worker = worker(cloud: true)
        await PoolService(context: worker.context).sendHeartbeat()
        await PoolService(context: worker.context).sendHeartbeat()
        let beats = fake.requests("POST", "/api/work_pools/p/workers/heartbeat")
        XCTAssertEqual(beats.count, 2)
        XCTAssertEqual(beats[0].json?["return_id"], .bool(true), "asks Cloud for its id")
        XCTAssertNil(beats[1].json?["return_id"], "asks only until it knows")
        XCTAssertEqual(beats.map { $0.header("X-Prefect-Worker-Name") }, ["w1", "w1"])
        XCTAssertNil(beats[0].header("X-Prefect-Worker-Id"))
        XCTAssertEqual(beats[1].header("X-Prefect-Worker-Id"), id)
        XCTAssertEqual(worker.context.workerID, id)
    }

    func testAServerThatIsNotCloudIsNeverAskedForAnId() async throws {
        fake.route("POST", "/api/work_pools/p/workers/heartbeat") { _, _, _ in .noContent }
        let worker = worker(cloud: false)
        await PoolService(context: worker.context).sendHeartbeat()
        let beat = try XCTUnwrap(fake.requests("POST", "/api/work_pools/p/workers/heartbeat").first)
        XCTAssertNil(beat.json?["return_id"])
        XCTAssertEqual(beat.header("X-Prefect-Worker-Name"), "w1")
        XCTAssertNil(beat.header("X-Prefect-Worker-Id"))
        XCTAssertNil(worker.context.workerID)
    }

    func testJobsGetTheWorkerIdOnceKnownAndTheMergedSettings() throws {
        var settings = Settings(apiURL: fake.apiURL, pool: "p", workerName: "w1")
        settings.stateDirectory = stateDirectory
        settings.environment = ["PREFECT_FROM_PROFILE": "profile-value", "PATH": "/usr/bin:/bin"]
        let context = WorkerContext(settings: settings, client: fake.client())
        let supervisor = FlowRunSupervisor(context: context, runID: "r1")
        let run = try JSONTreeDecoder.decode(FlowRun.self, from: Data(fakeFlowRunJSON(id: "r1", stateType: "PENDING").utf8))
        let job = try JobConfiguration(RenderedJob(configuration: ["command": .string("true")], variables: [:]))
        var env = supervisor.environment(for: run, job: job, flowName: nil, deployment: nil, parameters: "{}", parametersFile: "/tmp/x")
        XCTAssertEqual(env["PREFECT__WORKER_NAME"], "w1")
        XCTAssertNil(env["PREFECT__WORKER_ID"], "unknown until Cloud says")
        XCTAssertEqual(env["PREFECT_FROM_PROFILE"], "profile-value", "jobs inherit the merged settings")
        context.workerID = "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"
        env = supervisor.environment(for: run, job: job, flowName: nil, deployment: nil, parameters: "{}", parametersFile: "/tmp/x")
        XCTAssertEqual(env["PREFECT__WORKER_ID"], "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed")
    }

    /// Prefect's worker (`_base_attribution_environment`) gives a job the flow's and the deployment's names
    /// beside their ids, each only when it has one.
    func testJobsGetTheFlowAndDeploymentNamesBesideTheirIds() throws {
        var settings = Settings(apiURL: fake.apiURL, pool: "p", workerName: "w1")
        settings.stateDirectory = stateDirectory
        let context = WorkerContext(settings: settings, client: fake.client())
        let supervisor = FlowRunSupervisor(context: context, runID: "r1")
        let run = try JSONTreeDecoder.decode(FlowRun.self, from: Data(fakeFlowRunJSON(id: "r1", stateType: "PENDING").utf8))
        let job = try JobConfiguration(RenderedJob(configuration: ["command": .string("true")], variables: [:]))
        let deployment = try JSONTreeDecoder.decode(Deployment.self, from: Data(#"{"id": "d-1", "name": "nightly"}"#.utf8))
        let env = supervisor.environment(for: run, job: job, flowName: "etl", deployment: deployment, parameters: "{}", parametersFile: "/tmp/x")
        XCTAssertEqual(env["PREFECT__FLOW_ID"], "f-1")
        XCTAssertEqual(env["PREFECT__FLOW_NAME"], "etl")
        XCTAssertEqual(env["PREFECT__DEPLOYMENT_ID"], "d-1")
        XCTAssertEqual(env["PREFECT__DEPLOYMENT_NAME"], "nightly")

        // No name known (or an empty one): the variable is not set, as Prefect leaves it out.
        let unnamed = try JSONTreeDecoder.decode(Deployment.self, from: Data(#"{"id": "d-1", "name": ""}"#.utf8))
        let bare = supervisor.environment(for: run, job: job, flowName: nil, deployment: unnamed, parameters: "{}", parametersFile: "/tmp/x")
        XCTAssertEqual(bare["PREFECT__FLOW_ID"], "f-1")
        XCTAssertNil(bare["PREFECT__FLOW_NAME"])
        XCTAssertEqual(bare["PREFECT__DEPLOYMENT_ID"], "d-1")
        XCTAssertNil(bare["PREFECT__DEPLOYMENT_NAME"])
    }

    func testLogBatchesAreBoundedInBytes() async throws {
        fake.route("POST", "/api/logs/") { _, _, _ in .json(201, "null") }
        let shipper = APIShipper(client: fake.client(), path: "/logs/", what: "logs", capacity: 100, batchSize: 50, maxBatchBytes: 1_000)
        for i in 0..<5 {
            shipper.add(FlowRunLog.shippable(runID: "r", level: .info, message: String(repeating: "x", count: 300) + "\(i)", maxSize: 10_000))
        }
        await shipper.deliverAll()
        let batches = fake.requests("POST", "/api/logs/").map { request -> Int in
            if case .array(let records)? = request.json { return records.count }
            return -1
        }
        // Each record is about 525 bytes: one per batch under a 1000-byte bound.
        XCTAssertEqual(batches, [1, 1, 1, 1, 1])
    }
}

import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// `Recovery` against `FakePrefectAPI`, with real processes standing in for jobs a previous worker left running.
final class RecoveryTests: XCTestCase {
    private typealias P = ProcessTestSupport
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("recovery-tests-\(UUID().uuidString)").path
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            .json(200, fakeFlowRunJSON(id: String(path.split(separator: "/").last!), stateType: "RUNNING"))
        }
        fake.route("GET", "/api/flows/*") { _, _, _ in .json(200, #"{"id": "f-1", "name": "etl"}"#) }
        fake.route("POST", "/api/events") { _, _, _ in .noContent }
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            .json(201, JSON.object(["status": "ACCEPT", "state": (try? JSON.decode(body))?["state"] ?? .null]))
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    private func items(_ json: JSON?) -> [JSON] {
        if case .array(let items)? = json { return items }
        return []
    }

    /// The heartbeat events the fake server has received, by run id.
    private func heartbeats() -> [String: [JSON]] {
        var byRun: [String: [JSON]] = [:]
        for request in fake.requests("POST", "/api/events") {
            for event in items(request.json) where event["event"]?.stringValue == "prefect.flow-run.heartbeat" {
                let resource = event["resource"]?["prefect.resource.id"]?.stringValue ?? ""
                byRun[String(resource.dropFirst("prefect.flow-run.".count)), default: []].append(event)
            }
        }
        return byRun
    }

    /// Regression: only jobs the worker launched heartbeated; a plain command adopted after a worker restart
    /// ran on without heartbeats, so Prefect's zombie-run automation could crash it. An adopted engine run
    /// gets none from the worker (its engine sends its own).
    func testAnAdoptedJobOfAWorkerOwnedRunHeartbeats() async throws {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        let context = WorkerContext(settings: settings, client: fake.client())
        try context.journal.prepare()
        try await context.outbox.prepare()
        let launcher = RunLifecycle(context: context)
        let launched = Task { await launcher.run() }

        func job(_ runID: String) throws -> pid_t {
            try ChildProcesses.shared.spawn(P.request(P.sleep, ["30"], environment: [
                "PATH": "/usr/bin:/bin", "PREFECT__FLOW_RUN_ID": runID, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
            ])).pid
        }
        let command = try job("run-command"), engine = try job("run-engine")
        let recovery = Recovery(context: context, runs: launcher)
        await recovery.adopt(runID: "run-command", pid: command, processStart: ProcFS.startTime(of: command), owner: .worker)
        await recovery.adopt(runID: "run-engine", pid: engine, processStart: ProcFS.startTime(of: engine), owner: .engine)

        let deadline = Date().addingTimeInterval(10)
        while heartbeats()["run-command"] == nil, Date() < deadline {
            await context.events.shipper.deliverAll()
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        // Long enough for an engine run's heartbeat, had the worker started one, to be delivered too.
        try await Task.sleep(nanoseconds: 300_000_000)
        await context.events.shipper.deliverAll()
        let beats = heartbeats()
        await P.killAndReap(command)
        await P.killAndReap(engine)
        launcher.finish()
        await launched.value

        let first = try XCTUnwrap(beats["run-command"]?.first, "a heartbeat of the adopted worker-owned run; events: \(fake.requests("POST", "/api/events").map(\.bodyText))")
        XCTAssertEqual(beats["run-command"]?.count, 1, "one as it is adopted; the next after 30 s")
        XCTAssertEqual(first["resource"]?["prefect.resource.name"]?.stringValue, "fake-run")
        let related = items(first["related"]).compactMap { $0["prefect.resource.id"]?.stringValue }
        XCTAssertEqual(related, ["prefect.flow.f-1", "prefect.deployment.d-1"], "related resources, as for a launched job")
        XCTAssertEqual(items(first["related"]).first?["prefect.resource.name"]?.stringValue, "etl", "the flow's name")
        XCTAssertNil(beats["run-engine"], "the engine heartbeats for an engine run, not the worker")
    }
}

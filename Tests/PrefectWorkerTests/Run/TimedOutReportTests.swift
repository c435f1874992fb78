import Foundation
import XCTest
@testable import PrefectWorker

/// How the outbox delivers a timeout: FAILED named `TimedOut`, also over the CRASHED an engine reports when
/// the worker's SIGTERM reaches it, but over no other final state.
final class TimedOutReportTests: XCTestCase {
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!
    private let serverState = FakeAPIBox("RUNNING")

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("timedout-tests-\(UUID().uuidString)").path
        let serverState = serverState
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            .json(200, fakeFlowRunJSON(id: String(path.split(separator: "/").last!), stateType: serverState.value))
        }
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let state = (try? JSON.decode(body))?["state"] ?? .null
            return .json(201, JSON.object(["status": .string("ACCEPT"), "details": .object(["type": .string("accept_details")]), "state": state]))
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    private func send(_ run: String, name: String?) async throws -> [JSON] {
        let outbox = Outbox(stateDirectory: stateDirectory, client: fake.client(), log: .console)
        try await outbox.prepare()
        let delivered = await outbox.send(run, .finalState(type: "FAILED", message: "Flow run exceeded timeout of 3 second(s)",
                                                           transitionID: "t-\(run)", force: true, name: name))
        XCTAssertTrue(delivered)
        return fake.requests("POST", "/api/flow_runs/\(run)/set_state").compactMap(\.json)
    }

    func testATimeoutIsReportedFailedNamedTimedOut() async throws {
        let proposals = try await send("run-t", name: "TimedOut")
        XCTAssertEqual(proposals.count, 1)
        XCTAssertEqual(proposals.first?["state"]?["type"], .string("FAILED"))
        XCTAssertEqual(proposals.first?["state"]?["name"], .string("TimedOut"))
        XCTAssertEqual(proposals.first?["force"], .bool(true))
    }

    func testATimeoutReplacesTheCrashedTheEngineReportedOnSIGTERM() async throws {
        serverState.value = "CRASHED"
        let proposals = try await send("run-c", name: "TimedOut")
        XCTAssertEqual(proposals.first?["state"]?["name"], .string("TimedOut"))
    }

    func testATimeoutNeverReplacesAnotherFinalState() async throws {
        serverState.value = "COMPLETED"
        let proposals = try await send("run-d", name: "TimedOut")
        XCTAssertEqual(proposals.count, 0, "a COMPLETED run stays COMPLETED")
        serverState.value = "CRASHED"
        let plain = try await send("run-e", name: nil)
        XCTAssertEqual(plain.count, 0, "only a timeout replaces CRASHED")
    }

    func testAnOutboxFileWithoutANameStillDecodes() throws {
        let old = #"[{"finalState":{"type":"FAILED","message":"m","transitionID":"t","force":false}}]"#
        let items = try JSONDecoder().decode([OutboxItem].self, from: Data(old.utf8))
        XCTAssertEqual(items, [.finalState(type: "FAILED", message: "m", transitionID: "t", force: false)])
    }
}

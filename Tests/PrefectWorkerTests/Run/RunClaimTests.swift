import Foundation
import XCTest
@testable import PrefectWorker

/// Claiming with PENDING against `FakePrefectAPI`: only a PENDING of ours makes the run ours.
final class RunClaimTests: XCTestCase {
    private var fake: FakePrefectAPI!
    /// The run's state on the server: its type and the transition id that put it there.
    private let server = FakeAPIBox((type: "SCHEDULED", transition: "t-0"))
    /// How the server answers a PENDING: ACCEPT, or REJECT with another worker's PENDING.
    private let answer = FakeAPIBox("ACCEPT")

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        let server = server, answer = answer
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            let (type, transition) = server.value
            let text = fakeFlowRunJSON(id: String(path.split(separator: "/").last!), stateType: type)
                .replacingOccurrences(of: "\"transition_id\": \"t-0\"", with: "\"transition_id\": \"\(transition)\"")
            return .json(200, text)
        }
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let proposed = (try? JSON.decode(body))?["state"] ?? .null
            if answer.value == "REJECT" {
                return .json(201, JSON.object(["status": "REJECT", "details": .object(["type": "reject_details", "reason": "taken"]),
                                               "state": .object(["type": "PENDING", "name": "Pending", "state_details": .object(["transition_id": "theirs"])])]))
            }
            server.value = ("PENDING", proposed["state_details"]?["transition_id"]?.stringValue ?? "")
            return .json(201, JSON.object(["status": "ACCEPT", "details": .object(["type": "accept_details"]), "state": proposed]))
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
    }

    private func claim(polledNow: Bool = true) async throws -> Bool {
        var run = try JSONDecoder().decode(FlowRun.self, from: Data(fakeFlowRunJSON(id: "run-c", stateType: "SCHEDULED").utf8))
        run.polledAt = polledNow ? Date() : nil
        return await RunClaim(client: fake.client(), shutdown: Shutdown(), log: .console, workerName: "w").claim(run)
    }

    func testAnAcceptedPendingMakesTheRunOursAndIsConfirmedByOneRead() async throws {
        let claimed = try await claim()
        XCTAssertTrue(claimed)
        XCTAssertEqual(fake.requests.map { "\($0.method) \($0.path)" },
                       ["POST /api/flow_runs/run-c/set_state", "GET /api/flow_runs/run-c"],
                       "a fresh poll answer needs no read before the proposal, one after it")
    }

    func testAnotherWorkersPendingIsNotOurs() async throws {
        answer.value = "REJECT"
        let claimed = try await claim()
        XCTAssertFalse(claimed)
    }

    func testARunThatIsNoLongerScheduledIsNotProposed() async throws {
        server.value = ("RUNNING", "t-9")
        let claimed = try await claim(polledNow: false)
        XCTAssertFalse(claimed)
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/run-c/set_state").count, 0)
    }
}

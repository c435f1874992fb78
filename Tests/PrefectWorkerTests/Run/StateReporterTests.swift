import Foundation
import XCTest
@testable import PrefectWorker

/// The one set_state loop against `FakePrefectAPI`: what each answer becomes.
final class StateReporterTests: XCTestCase {
    private var fake: FakePrefectAPI!
    /// The answers `set_state` gives, in order (the last one repeats).
    private let answers = FakeAPIBox<[String]>(["ACCEPT"])

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        let answers = answers
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let proposed = (try? JSON.decode(body))?["state"] ?? .null
            let answer = answers.update { $0.count > 1 ? $0.removeFirst() : $0[0] }
            switch answer {
            case "WAIT":
                return .json(201, JSON.object(["status": "WAIT", "details": .object(["type": "wait_details", "delay_seconds": .double(0.05)])]))
            case "REJECT-CANCELLING":
                return .json(201, JSON.object(["status": "REJECT", "details": .object(["type": "reject_details", "reason": "cancelling"]),
                                               "state": .object(["type": "CANCELLING", "name": "Cancelling"])]))
            case "ABORT":
                return .json(201, JSON.object(["status": "ABORT", "details": .object(["type": "abort_details", "reason": "gone"])]))
            default:
                return .json(201, JSON.object(["status": "ACCEPT", "details": .object(["type": "accept_details"]), "state": proposed]))
            }
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
    }

    private func reporter() -> StateReporter {
        StateReporter(runID: "run-1", client: fake.client(), shutdown: Shutdown(), log: .console)
    }

    private var proposals: [JSON] { fake.requests("POST", "/api/flow_runs/run-1/set_state").compactMap { $0.json } }

    func testAnAcceptedProposalIsTheRunsStateNow() async throws {
        let outcome = try await reporter().propose(StateProposal(.running))
        guard case .accepted(let proposal, _) = outcome else { return XCTFail("\(outcome)") }
        XCTAssertEqual(proposal.type, .running)
        XCTAssertEqual(proposals.count, 1)
    }

    func testAWaitIsWaitedOutAndProposedAgainWithAFreshTransitionIDUnlessToldToKeepIt() async throws {
        answers.value = ["WAIT", "ACCEPT"]
        _ = try await reporter().propose(StateProposal(.running))
        let ids = proposals.map { $0["state"]?["state_details"]?["transition_id"] }
        XCTAssertEqual(ids.count, 2)
        XCTAssertNotEqual(ids[0], ids[1])

        answers.value = ["WAIT", "ACCEPT"]
        var options = StateReporter.Options()
        options.freshAfterWait = false
        _ = try await reporter().propose(StateProposal(.completed), options)
        let kept = proposals.suffix(2).map { $0["state"]?["state_details"]?["transition_id"] }
        XCTAssertEqual(kept[0], kept[1], "the outbox's persisted transition id is kept")
    }

    func testTooManyWaitsAndADrainAreSaidApart() async throws {
        answers.value = ["WAIT"]
        var options = StateReporter.Options()
        options.maxWaits = 2
        let tooLong = try await reporter().propose(StateProposal(.running), options)
        guard case .waitedTooLong = tooLong else { return XCTFail("\(tooLong)") }
        XCTAssertEqual(proposals.count, 3)

        let shutdown = Shutdown()
        _ = shutdown.advance(to: .draining)
        let stopping = StateReporter(runID: "run-1", client: fake.client(), shutdown: shutdown, log: .console)
        let stopped = try await stopping.propose(StateProposal(.running))
        guard case .stopped = stopped else { return XCTFail("\(stopped)") }
    }

    func testAFinalStateRefusedForACancellingRunBecomesCancelledForcedWhenAsked() async throws {
        answers.value = ["REJECT-CANCELLING", "ACCEPT"]
        var options = StateReporter.Options()
        options.cancelledWhenCancelling = true
        let outcome = try await reporter().propose(StateProposal(.failed, message: "exit 1"), options)
        guard case .accepted(let landed, _) = outcome else { return XCTFail("\(outcome)") }
        XCTAssertEqual(landed.type, .cancelled)
        XCTAssertEqual(proposals.last?["force"], .bool(true))
        XCTAssertEqual(landed.message, "Flow run was cancelled. exit 1")

        answers.value = ["REJECT-CANCELLING"]
        let refused = try await reporter().propose(StateProposal(.failed))
        guard case .refused(let state, _, _) = refused else { return XCTFail("\(refused)") }
        XCTAssertEqual(state, .cancelling)
    }

    func testARefusalIsReported() async throws {
        answers.value = ["ABORT"]
        let outcome = try await reporter().propose(StateProposal(.scheduled))
        guard case .refused(_, let reason, _) = outcome else { return XCTFail("\(outcome)") }
        XCTAssertEqual(reason, "gone")
    }

    func testARetryableErrorIsProposedAgainWithTheSameTransitionIDWhileTheCallerSaysSo() async throws {
        fake.inject([.status(503), .status(503)], method: "POST", path: "/api/flow_runs/*/set_state")
        let tries = FakeAPIBox(0)
        var options = StateReporter.Options()
        options.policy = .once
        options.keepTrying = { _ in tries.update { $0 += 1 }; return true }
        let outcome = try await reporter().propose(StateProposal(.running), options)
        guard case .accepted = outcome else { return XCTFail("\(outcome)") }
        XCTAssertEqual(tries.value, 2)
        let ids = Set(fake.requests("POST", "/api/flow_runs/run-1/set_state").compactMap { $0.json?["state"]?["state_details"]?["transition_id"] })
        XCTAssertEqual(ids.count, 1, "a lost answer is recognised by the same transition id")

        fake.inject([.status(503)], method: "POST", path: "/api/flow_runs/*/set_state")
        options.keepTrying = { _ in false }
        do {
            _ = try await reporter().propose(StateProposal(.running), options)
            XCTFail("the error should be thrown when the caller gives up")
        } catch let error as APIError {
            XCTAssertTrue(error.isRetryable)
        }
    }
}

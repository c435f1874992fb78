import XCTest
@testable import PrefectWorker

/// `Orchestration.decide`: every answer the server can give, for each proposal the worker makes.
final class OrchestrationTests: XCTestCase {
    private struct Row {
        var proposed: StateType
        var status: OrchestrationResult.Status
        var returned: StateType?
        var transitionID: String? = nil
        var ours: Set<String>? = nil
        var delay: Double? = nil
        var expected: Orchestration.Decision
        var line: UInt
    }

    func testDecisionTable() {
        let mine: Set<String> = ["t-mine", "t-mine-2"]
        let rows: [Row] = [
            // Claim (PENDING): only our own PENDING makes the run ours.
            Row(proposed: .pending, status: .accept, returned: .pending, ours: mine, expected: .accepted, line: #line),
            Row(proposed: .pending, status: .reject, returned: .pending, transitionID: "t-mine-2", ours: mine, expected: .accepted, line: #line),
            Row(proposed: .pending, status: .reject, returned: .pending, transitionID: "t-other", ours: mine,
                expected: .refused(state: .pending, reason: "REJECT"), line: #line),
            Row(proposed: .pending, status: .reject, returned: .pending, transitionID: nil, ours: mine,
                expected: .refused(state: .pending, reason: "REJECT"), line: #line),
            Row(proposed: .pending, status: .reject, returned: .running, ours: mine, expected: .refused(state: .running, reason: "REJECT"), line: #line),
            Row(proposed: .pending, status: .abort, returned: .completed, ours: mine, expected: .refused(state: .completed, reason: "ABORT"), line: #line),
            Row(proposed: .pending, status: .abort, returned: nil, ours: mine, expected: .refused(state: nil, reason: "ABORT"), line: #line),
            Row(proposed: .pending, status: .reject, returned: .cancelling, ours: mine,
                expected: .refused(state: .cancelling, reason: "REJECT"), line: #line),
            Row(proposed: .pending, status: .wait, returned: nil, ours: mine, delay: 7, expected: .wait(seconds: 7), line: #line),
            // RUNNING: a RUNNING returned by a REJECT is our retried proposal.
            Row(proposed: .running, status: .accept, returned: .running, expected: .accepted, line: #line),
            Row(proposed: .running, status: .reject, returned: .running, transitionID: "t-any", expected: .accepted, line: #line),
            Row(proposed: .running, status: .reject, returned: .cancelling, expected: .refused(state: .cancelling, reason: "REJECT"), line: #line),
            Row(proposed: .running, status: .reject, returned: .cancelled, expected: .refused(state: .cancelled, reason: "REJECT"), line: #line),
            Row(proposed: .running, status: .abort, returned: .running, expected: .refused(state: .running, reason: "ABORT"), line: #line),
            Row(proposed: .running, status: .wait, returned: nil, delay: nil, expected: .wait(seconds: 1), line: #line),
            Row(proposed: .running, status: .wait, returned: nil, delay: 0, expected: .wait(seconds: 0.1), line: #line),
            // Final states.
            Row(proposed: .completed, status: .accept, returned: .completed, expected: .accepted, line: #line),
            Row(proposed: .completed, status: .reject, returned: .completed, expected: .accepted, line: #line),
            Row(proposed: .failed, status: .reject, returned: .cancelling, expected: .proposeCancelled, line: #line),
            Row(proposed: .crashed, status: .reject, returned: .cancelling, expected: .proposeCancelled, line: #line),
            Row(proposed: .cancelled, status: .reject, returned: .cancelling, expected: .refused(state: .cancelling, reason: "REJECT"), line: #line),
            Row(proposed: .failed, status: .reject, returned: .scheduled, expected: .refused(state: .scheduled, reason: "REJECT"), line: #line),
            Row(proposed: .crashed, status: .abort, returned: .completed, expected: .refused(state: .completed, reason: "ABORT"), line: #line),
            Row(proposed: .failed, status: .abort, returned: .cancelling, expected: .refused(state: .cancelling, reason: "ABORT"), line: #line),
            Row(proposed: .completed, status: .wait, returned: nil, delay: 2.5, expected: .wait(seconds: 2.5), line: #line),
        ]
        for row in rows {
            let decision = Orchestration.decide(proposed: row.proposed, status: row.status, returned: row.returned,
                                                returnedTransitionID: row.transitionID, reason: nil, delaySeconds: row.delay,
                                                ours: row.ours)
            XCTAssertEqual(decision, row.expected, "\(row.proposed.rawValue) answered \(row.status.rawValue) with \(row.returned?.rawValue ?? "no state")", line: row.line)
        }
    }

    func testTheReasonIsTheServersWhenItGivesOne() {
        let decision = Orchestration.decide(proposed: .pending, status: .abort, returned: .pending, returnedTransitionID: "x",
                                            reason: "This run is already PENDING.", delaySeconds: nil, ours: [])
        XCTAssertEqual(decision, .refused(state: .pending, reason: "This run is already PENDING."))
    }

    func testDecidingFromADecodedAnswer() throws {
        let json = #"{"status":"REJECT","details":{"type":"reject_details","reason":"dup"},"state":{"type":"PENDING","name":"Pending","state_details":{"transition_id":"t-1"}}}"#
        let result = try JSONDecoder().decode(OrchestrationResult.self, from: Data(json.utf8))
        XCTAssertEqual(Orchestration.decide(proposed: .pending, result, ours: ["t-1"]), .accepted)
        XCTAssertEqual(Orchestration.decide(proposed: .pending, result, ours: ["t-2"]), .refused(state: .pending, reason: "dup"))
    }
}

import XCTest

/// The parity suite's comparison itself, without a server: equal observations match, and each facet that
/// differs is reported (a comparison that never reports would make every parity scenario pass).
final class ParityComparisonTests: XCTestCase {
    private let reference = ParityObservation(
        stateType: "CANCELLED", stateName: "Cancelled", message: "Flow run was cancelled successfully.", runCount: 1,
        stateNames: ["Scheduled", "Pending", "Submitting", "Running", "Cancelling", "Cancelled"],
        markers: ["body": "body\n", "on_cancellation": "CANCELLING Cancelling\n"],
        environment: ["PREFECT__FLOW_RUN_ID", "PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN", "PREFECT_HOME"])

    func testEqualObservationsMatch() {
        var comparison = ParityComparison()
        var ours = reference
        ours.environment?.insert("PREFECT_WORKER_QUERY_SECONDS")  // outside the compared set
        ours.message = "another wording"                            // messages are shown, not compared
        comparison.compare("", reference: reference, ours: ours)
        XCTAssertEqual(comparison.differences, [])
    }

    func testEachFacetIsReported() {
        var ours = reference
        ours.stateType = "CRASHED"
        ours.stateName = "Crashed"
        ours.runCount = 2
        ours.stateNames = ["Scheduled", "Pending", "Running", "Cancelling", "Crashed"]
        ours.markers = ["body": "body\n", "on_crashed": "CRASHED Crashed\n"]
        ours.environment = ["PREFECT__FLOW_RUN_ID", "PREFECT_HOME"]
        var comparison = ParityComparison()
        comparison.compare("x", reference: reference, ours: ours)
        let text = comparison.differences.joined(separator: "\n")
        XCTAssertEqual(comparison.differences.count, 5, text)
        XCTAssertTrue(text.contains("x: final state CRASHED/Crashed"), text)
        XCTAssertTrue(text.contains("run_count 2, Prefect's worker 1"), text)
        XCTAssertTrue(text.contains("on_cancellation: absent vs [CANCELLING Cancelling]"), text)
        XCTAssertTrue(text.contains(#"missing ["PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN"]"#), text)
    }

    func testNormalisationAppliesToBothSides() {
        var ours = reference
        ours.stateNames = ["Scheduled", "Pending", "Running", "Submitting", "Cancelling", "Cancelled"]
        var strict = ParityComparison(), normalised = ParityComparison()
        strict.compare("", reference: reference, ours: ours)
        normalised.compare("", reference: reference, ours: ours, normalise: { $0.filter { $0 != "Running" && $0 != "Submitting" } })
        XCTAssertEqual(strict.differences.count, 1)
        XCTAssertEqual(normalised.differences, [])
    }

    func testOnlyMissingSubmittingIsRecognised() {
        var ours = reference
        ours.stateNames = ["Scheduled", "Pending", "Running", "Cancelling", "Cancelled"]
        var comparison = ParityComparison()
        comparison.compare("child 1", reference: reference, ours: ours)
        XCTAssertEqual(comparison.differences.count, 1)
        XCTAssertTrue(ParityReport.isOnlyMissingSubmitting(comparison.differences[0]), comparison.differences[0])
        ours.stateNames = ["Scheduled", "Pending", "Running", "Cancelling", "Crashed"]
        comparison = ParityComparison()
        comparison.compare("", reference: reference, ours: ours)
        XCTAssertFalse(comparison.differences.contains(where: ParityReport.isOnlyMissingSubmitting), "\(comparison.differences)")
    }
}

import XCTest
@testable import PrefectWorker

/// `FlowRunHeartbeat.seconds`: the heartbeat interval as the engine reads its setting.
final class FlowRunHeartbeatTests: XCTestCase {
    func testHeartbeatFrequencyAsTheEngineReadsIt() {
        typealias S = FlowRunHeartbeat
        XCTAssertEqual(S.seconds([:], log: .console), 180, "Prefect's default")
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"], log: .console), 30)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "45"], log: .console), 45)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "5"], log: .console), 30, "Prefect's minimum")
        XCTAssertEqual(S.seconds(["PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "60"], log: .console), 60, "the legacy name")
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "40", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "60"], log: .console), 40)
        XCTAssertEqual(S.seconds(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "often"], log: .console), 180)
    }
}

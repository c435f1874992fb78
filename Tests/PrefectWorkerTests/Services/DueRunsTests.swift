import Foundation
@testable import PrefectWorker
import XCTest

/// The autoscaling gauge: due runs from a complete poll, or nil when the poll may have been cut short.
final class DueRunsTests: XCTestCase {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func run(_ id: String, startsIn seconds: Double) -> FlowRun {
        FlowRun(id: id, nextScheduledStartTime: Timestamp.format(now.addingTimeInterval(seconds)))
    }

    func testFromPollCountsDueRunsLessTheOnesThisWorkerTook() {
        let runs = [run("a", startsIn: -30), run("b", startsIn: -1), run("c", startsIn: 0), run("d", startsIn: 5)]
        let table: [(limit: Int?, takenDue: Int, expected: Int?)] = [
            (nil, 0, 3),   // d is prefetched, not due yet
            (nil, 2, 1),
            (nil, 5, 0),   // never below zero
            (10, 1, 2),
            (4, 0, nil),   // as many as the limit: there may be more; count them instead
            (3, 0, nil),
        ]
        for row in table {
            XCTAssertEqual(DueRuns.fromPoll(runs, limit: row.limit, takenDue: row.takenDue, now: now), row.expected,
                           "limit \(String(describing: row.limit)), taken \(row.takenDue)")
        }
        // Without a limit, the server sends at most 200.
        let many = (0..<200).map { run("r\($0)", startsIn: -1) }
        XCTAssertNil(DueRuns.fromPoll(many, limit: nil, takenDue: 0, now: now))
        XCTAssertEqual(DueRuns.fromPoll(Array(many.prefix(199)), limit: nil, takenDue: 0, now: now), 199)
    }

    func testACountIsSentAtMostOncePerPollInterval() {
        XCTAssertTrue(DueRuns.mayCount(lastCount: nil, interval: 10, now: now))
        XCTAssertFalse(DueRuns.mayCount(lastCount: now.addingTimeInterval(-9.9), interval: 10, now: now))
        XCTAssertTrue(DueRuns.mayCount(lastCount: now.addingTimeInterval(-10), interval: 10, now: now))
    }

    func testTheGaugeIsServedOnceKnown() {
        let metrics = Metrics()
        XCTAssertFalse(metrics.render(lastHeartbeat: nil, lastPoll: nil).contains("prefect_worker_pool_runs_due"))
        metrics.setRunsDue(7)
        XCTAssertTrue(metrics.render(lastHeartbeat: nil, lastPoll: nil).contains("\nprefect_worker_pool_runs_due 7\n"))
        XCTAssertEqual(Metrics.endpointClass(method: "POST", path: "/flow_runs/count"), "count_flow_runs")
    }
}

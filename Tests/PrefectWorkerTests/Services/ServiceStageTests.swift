import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker

/// `ServiceStage` and `Latch`: how the worker's services start and stop in order.
final class ServiceStageTests: XCTestCase {
    /// Runs until cancelled, recording when it started and stopped.
    private struct Loop: Service {
        let name: String
        let events: FakeAPIBox<[String]>
        func run() async {
            events.update { $0.append("\(name) started") }
            while !Task.isCancelled { try? await Task.sleep(nanoseconds: 5_000_000) }
            events.update { $0.append("\(name) stopped") }
        }
    }

    /// Returns by itself after one pass.
    private struct OneShot: Service {
        let events: FakeAPIBox<[String]>
        func run() async { events.update { $0.append("one-shot done") } }
    }

    func testStagesStopInTheDeclaredOrderAndEachWaitsForItsServices() async {
        let events = FakeAPIBox<[String]>([])
        let finished = await finishes(within: 5) {
            await withDiscardingTaskGroup { group in
                let first = ServiceStage(), second = ServiceStage()
                first.start(Loop(name: "a", events: events), in: &group)
                second.start(Loop(name: "b", events: events), in: &group)
                second.start(Loop(name: "c", events: events), in: &group)
                while events.value.count < 3 { try? await Task.sleep(nanoseconds: 5_000_000) }
                await first.stop()
                events.update { $0.append("first stage stopped") }
                await second.stop()
                events.update { $0.append("second stage stopped") }
            }
        }
        XCTAssertTrue(finished, "the group returns once every stage is stopped")
        let order = events.value
        let index = { (event: String) in order.firstIndex(of: event) ?? -1 }
        XCTAssertLessThan(index("a stopped"), index("first stage stopped"), "stop() returns after its services: \(order)")
        XCTAssertLessThan(index("first stage stopped"), index("b stopped"), "the second stage runs until it is stopped: \(order)")
        XCTAssertLessThan(index("c stopped"), index("second stage stopped"), "\(order)")
        XCTAssertGreaterThanOrEqual(index("b stopped"), 0)
    }

    func testAServiceThatReturnsByItselfFinishesItsStage() async {
        let events = FakeAPIBox<[String]>([])
        let finished = await finishes(within: 5) {
            await withDiscardingTaskGroup { group in
                let stage = ServiceStage()
                stage.start(OneShot(events: events), in: &group)
                await stage.finished()
            }
        }
        XCTAssertTrue(finished)
        XCTAssertEqual(events.value, ["one-shot done"])
    }

    func testALatchWakesWaitersBeforeAndAfterItOpens() async {
        let latch = Latch()
        let early = Task { await latch.wait(); return latch.isOpen }
        let timedOut = await latch.wait(timeout: 0.05)
        XCTAssertFalse(timedOut, "not open yet")
        latch.open()
        let woken = await finishes(within: 2) { _ = await early.value }
        XCTAssertTrue(woken)
        let wasOpen = await early.value
        XCTAssertTrue(wasOpen)
        let late = await latch.wait(timeout: 0)
        XCTAssertTrue(late, "open: returns true at once")
    }

    /// Regression: the timed wait raced the latch against `Task.sleep`, so in a cancelled task it returned
    /// at once, and a teardown's deadline loop built on it would spin.
    func testATimedWaitInACancelledTaskStillWaits() async {
        let latch = Latch()
        let waited = Task { () -> (Bool, Double) in
            withUnsafeCurrentTask { $0?.cancel() }
            let start = Date()
            let opened = await latch.wait(timeout: 0.3)
            return (opened, Date().timeIntervalSince(start))
        }
        let (opened, elapsed) = await waited.value
        XCTAssertFalse(opened)
        XCTAssertGreaterThanOrEqual(elapsed, 0.29, "a cancelled task's timed wait returned after \(elapsed) s")

        let opener = Task { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            return await latch.wait(timeout: 10)
        }
        try? await Task.sleep(nanoseconds: 50_000_000)
        latch.open()
        let woken = await finishes(within: 2) { _ = await opener.value }
        XCTAssertTrue(woken, "opening the latch ends a timed wait at once")
        let result = await opener.value
        XCTAssertTrue(result)
    }
}

import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker

/// `Condition`, the one waiter list the worker's latches, semaphore, shutdown phases, doorbells, stages,
/// registry and outbox are built on.
final class ConditionTests: XCTestCase {
    /// Waits (up to 5 s) until `condition` has `count` waiters, so a test knows its tasks are suspended.
    private func waiters<State>(_ condition: Condition<State>, reach count: Int) async throws {
        let deadline = Date().addingTimeInterval(5)
        while condition.waiterCount != count {
            guard Date() < deadline else { return XCTFail("\(condition.waiterCount) waiters, expected \(count)") }
            try await Task.sleep(nanoseconds: 2_000_000)
        }
    }

    func testAnUpdateBeforeTheWaitIsSeenAtOnceEvenInACancelledTask() async {
        let condition = Condition(false)
        condition.update { $0 = true }
        let held = await condition.wait(until: { $0 })
        XCTAssertTrue(held)
        let zeroTimeout = await condition.wait(until: { $0 }, timeout: 0)
        XCTAssertTrue(zeroTimeout, "the test is tried before the timeout")
        let cancelled = Task { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            return await condition.wait(until: { $0 })
        }
        let cancelledHeld = await cancelled.value
        XCTAssertTrue(cancelledHeld, "the test is tried before the cancellation")
        XCTAssertEqual(condition.waiterCount, 0)
    }

    func testAnUpdateWakesEveryWaiterWhoseTestHoldsAndNoOther() async throws {
        let condition = Condition(0)
        let high = Task { await condition.wait(until: { $0 >= 2 }) }
        let lows = (0..<50).map { _ in Task { await condition.wait(until: { $0 >= 1 }) } }
        try await waiters(condition, reach: 51)
        condition.update { $0 = 1 }
        for low in lows {
            let held = await low.value
            XCTAssertTrue(held)
        }
        XCTAssertEqual(condition.waiterCount, 1, "the waiter for 2 still waits")
        condition.update { $0 = 2 }
        let highHeld = await high.value
        XCTAssertTrue(highHeld)
        XCTAssertEqual(condition.waiterCount, 0)
    }

    func testATestThatTakesWakesOneWaiterPerUnitInWaitingOrder() async throws {
        let permits = Condition(0)
        let order = Order()
        var tasks: [Task<Void, Never>] = []
        for i in 0..<3 {
            tasks.append(Task {
                await permits.wait(until: { permits in
                    guard permits > 0 else { return false }
                    permits -= 1
                    return true
                })
                order.append(i)
            })
            try await waiters(permits, reach: i + 1)
        }
        permits.update { $0 += 1 }
        await tasks[0].value
        try await Task.sleep(nanoseconds: 50_000_000)
        XCTAssertEqual(order.list, [0], "one permit wakes the first waiter only")
        XCTAssertEqual(permits.waiterCount, 2)
        permits.update { $0 += 2 }
        for task in tasks { await task.value }
        XCTAssertEqual(order.list, [0, 1, 2])
        XCTAssertEqual(permits.value, 0)
    }

    func testATimeoutEndsTheWaitAndRemovesTheWaiter() async {
        let condition = Condition(false)
        let start = Date()
        let held = await condition.wait(until: { $0 }, timeout: 0.2)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertFalse(held)
        XCTAssertGreaterThanOrEqual(elapsed, 0.19)
        XCTAssertLessThan(elapsed, 5)
        XCTAssertEqual(condition.waiterCount, 0)
        let immediate = await condition.wait(until: { $0 }, timeout: 0)
        XCTAssertFalse(immediate)
        XCTAssertEqual(condition.waiterCount, 0)

        // An update before the timeout ends the wait at once, and the late timer ends no later wait.
        let woken = Task { await condition.wait(until: { $0 }, timeout: 0.3) }
        try? await Task.sleep(nanoseconds: 50_000_000)
        condition.update { $0 = true }
        let wokenHeld = await woken.value
        XCTAssertTrue(wokenHeld)
        condition.update { $0 = false }
        let later = Task { await condition.wait(until: { $0 }, timeout: 2) }
        try? await Task.sleep(nanoseconds: 500_000_000)
        XCTAssertEqual(condition.waiterCount, 1, "the first wait's timer must not end the second wait")
        condition.update { $0 = true }
        let laterHeld = await later.value
        XCTAssertTrue(laterHeld)
    }

    func testCancellationEndsTheWaitAndRemovesTheWaiter() async throws {
        let condition = Condition(false)
        let waiting = Task { await condition.wait(until: { $0 }) }
        try await waiters(condition, reach: 1)
        waiting.cancel()
        let ended = await finishes(within: 2) { _ = await waiting.value }
        XCTAssertTrue(ended)
        let held = await waiting.value
        XCTAssertFalse(held)
        XCTAssertEqual(condition.waiterCount, 0, "a cancelled wait leaves no waiter behind")

        let alreadyCancelled = Task { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            return await condition.wait(until: { $0 }, timeout: 10)
        }
        let alreadyHeld = await alreadyCancelled.value
        XCTAssertFalse(alreadyHeld)
        XCTAssertEqual(condition.waiterCount, 0)
    }

    func testAWaitThatIgnoresCancellationGoesOnWaiting() async throws {
        let condition = Condition(false)
        let waiting = Task { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            return await condition.wait(until: { $0 }, cancellation: .ignored)
        }
        try await waiters(condition, reach: 1)
        waiting.cancel()
        try await Task.sleep(nanoseconds: 100_000_000)
        XCTAssertEqual(condition.waiterCount, 1, "still waiting in a cancelled task")
        condition.update { $0 = true }
        let held = await waiting.value
        XCTAssertTrue(held)
    }

    /// Many pairs of tasks playing ping-pong, each move waking only the other player: a lost wake-up leaves
    /// a pair waiting forever (the test times out). Beside them, producers and consumers of permits, and
    /// waits that end by cancellation or timeout while updates run: a double resume crashes.
    func testManyTasksLoseNoWakeUp() async {
        let pairs = 32, moves = 1000
        let permits = Condition(0)
        let tables = (0..<pairs).map { _ in Condition(0) }
        let finished = await finishes(within: 30) {
            await withTaskGroup(of: Void.self) { group in
                for table in tables {
                    for player in 0..<2 {
                        group.addTask {
                            for move in 0..<moves {
                                let turn = 2 * move + player
                                await table.wait(until: { $0 == turn }, cancellation: .ignored)
                                table.update { $0 += 1 }
                            }
                        }
                    }
                }
                for _ in 0..<8 {
                    group.addTask {
                        for _ in 0..<200 {
                            await permits.wait(until: { permits in
                                guard permits > 0 else { return false }
                                permits -= 1
                                return true
                            })
                        }
                    }
                    group.addTask {
                        for _ in 0..<200 {
                            permits.update { $0 += 1 }
                            await Task.yield()
                        }
                    }
                    group.addTask {
                        for round in 0..<50 {
                            if round.isMultiple(of: 2) {
                                await permits.wait(until: { _ in false }, timeout: 0.0005)
                            } else {
                                let waiter = Task { await permits.wait(until: { _ in false }) }
                                await Task.yield()
                                waiter.cancel()
                                await waiter.value
                            }
                        }
                    }
                }
            }
        }
        let stuck = tables.map(\.waiterCount).reduce(0, +) + permits.waiterCount
        XCTAssertTrue(finished, "a wake-up was lost: \(stuck) tasks still waiting")
        guard finished else { return }
        XCTAssertEqual(tables.map(\.value), Array(repeating: 2 * moves, count: pairs))
        XCTAssertEqual(permits.value, 0)
        XCTAssertEqual(stuck, 0)
    }
}

/// The order in which tasks got through.
final class Order: Sendable {
    private let items = Mutex<[Int]>([])
    func append(_ item: Int) { items.withLock { $0.append(item) } }
    var list: [Int] { items.withLock { $0 } }
}

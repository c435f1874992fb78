import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker

final class ShutdownTests: XCTestCase {
    func testPhasesAdvanceInOrderAndStopAtTerminating() {
        let shutdown = Shutdown()
        XCTAssertEqual(shutdown.phase, .running)
        XCTAssertEqual(shutdown.advance(), .draining)
        XCTAssertEqual(shutdown.phase, .draining)
        XCTAssertEqual(shutdown.advance(), .terminating)
        XCTAssertEqual(shutdown.advance(), .terminating)
        XCTAssertEqual(shutdown.phase, .terminating)
    }

    func testAdvanceToATargetNeverGoesBack() {
        let shutdown = Shutdown()
        XCTAssertEqual(shutdown.advance(to: .terminating), .terminating, "skips draining")
        XCTAssertEqual(shutdown.advance(to: .draining), .terminating)
        XCTAssertEqual(shutdown.advance(to: .running), .terminating)
        let other = Shutdown()
        XCTAssertEqual(other.advance(to: .running), .running)
        XCTAssertEqual(other.advance(to: .draining), .draining)
    }

    func testPhaseOrder() {
        XCTAssertLessThan(Shutdown.Phase.running, .draining)
        XCTAssertLessThan(Shutdown.Phase.draining, .terminating)
    }

    func testWaitReturnsWhenThePhaseIsReached() async {
        let shutdown = Shutdown()
        let reached = ExpectationFlag()
        let waiter = Task {
            await shutdown.wait(for: .terminating)
            reached.set()
        }
        try? await Task.sleep(nanoseconds: 50_000_000)
        XCTAssertFalse(reached.isSet)
        shutdown.advance()
        try? await Task.sleep(nanoseconds: 50_000_000)
        XCTAssertFalse(reached.isSet, "draining is not terminating")
        shutdown.advance()
        await waiter.value
        XCTAssertTrue(reached.isSet)
    }

    func testWaitForAPhaseAlreadyReachedReturnsAtOnce() async {
        let shutdown = Shutdown()
        shutdown.advance(to: .terminating)
        let start = Date()
        let returned = await finishes(within: 2) {
            await shutdown.wait(for: .draining)
            await shutdown.wait(for: .terminating)
            await shutdown.wait(for: .running)
        }
        XCTAssertTrue(returned, "waiting for a phase already reached must return, not hang")
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5, "and at once")
        XCTAssertEqual(shutdown.phase, .terminating)
    }

    func testManyWaitersAreAllWoken() async {
        let shutdown = Shutdown()
        let woken = FakeAPIBox<[Int: Shutdown.Phase]>([:])
        let tasks = (0..<20).map { i in
            Task {
                await shutdown.wait(for: i.isMultiple(of: 2) ? .draining : .terminating)
                let phase = shutdown.phase
                woken.update { $0[i] = phase }
            }
        }
        try? await Task.sleep(nanoseconds: 50_000_000)
        XCTAssertEqual(woken.value.count, 0, "nobody is woken before the shutdown starts")

        shutdown.advance(to: .draining)
        let evens = await finishes(within: 2) { for i in stride(from: 0, to: 20, by: 2) { await tasks[i].value } }
        XCTAssertTrue(evens, "every waiter for draining is woken")
        try? await Task.sleep(nanoseconds: 50_000_000)
        XCTAssertEqual(woken.value.keys.sorted(), Array(stride(from: 0, to: 20, by: 2)), "only the waiters for draining")

        shutdown.advance(to: .terminating)
        let all = await finishes(within: 2) { for task in tasks { await task.value } }
        XCTAssertTrue(all, "every waiter for terminating is woken")
        XCTAssertEqual(woken.value.keys.sorted(), Array(0..<20))
        for i in stride(from: 1, to: 20, by: 2) {
            XCTAssertEqual(woken.value[i], .terminating, "waiter \(i) woke before terminating")
        }
        for task in tasks { task.cancel() }
    }

    func testWaitIsCancellable() async {
        let shutdown = Shutdown()
        let waiter = Task { await shutdown.wait(for: .draining) }
        try? await Task.sleep(nanoseconds: 20_000_000)
        waiter.cancel()
        let finished = await finishes(within: 2) { await waiter.value }
        XCTAssertTrue(finished, "a cancelled wait returns")
        XCTAssertEqual(shutdown.phase, .running)
        // A task cancelled before it waits returns at once too.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            await shutdown.wait(for: .terminating)
        }
        let earlyFinished = await finishes(within: 2) { await early.value }
        XCTAssertTrue(earlyFinished)
    }

    func testSleepRunsToTheEndWithoutShutdown() async {
        let shutdown = Shutdown()
        let start = Date()
        let completed = await shutdown.sleep(0.1)
        XCTAssertTrue(completed)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.09)
    }

    func testSleepEndsEarlyOnShutdown() async {
        let shutdown = Shutdown()
        Task {
            try? await Task.sleep(nanoseconds: 50_000_000)
            shutdown.advance()
        }
        let start = Date()
        let completed = await shutdown.sleep(30)
        XCTAssertFalse(completed)
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)
    }

    func testSleepDuringShutdownReturnsFalseAtOnce() async {
        let shutdown = Shutdown()
        shutdown.advance()
        let start = Date()
        let completed = await shutdown.sleep(30)
        XCTAssertFalse(completed)
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5)
    }

    func testSleepUnlessTerminatingKeepsSleepingWhileDraining() async {
        let shutdown = Shutdown()
        shutdown.advance()
        let completed = await shutdown.sleep(0.1, unless: .terminating)
        XCTAssertTrue(completed, "draining does not interrupt a sleep that only yields to terminating")

        Task {
            try? await Task.sleep(nanoseconds: 50_000_000)
            shutdown.advance()
        }
        let start = Date()
        let interrupted = await shutdown.sleep(30, unless: .terminating)
        XCTAssertFalse(interrupted)
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)
    }

    func testSleepWithNegativeOrZeroDuration() async {
        let shutdown = Shutdown()
        let zero = await shutdown.sleep(0)
        XCTAssertTrue(zero)
        let negative = await shutdown.sleep(-5)
        XCTAssertTrue(negative)
    }

    func testFirstOf() async {
        let fast = await firstOf({ "a" }, { try? await Task.sleep(nanoseconds: 5_000_000_000); return "b" })
        XCTAssertEqual(fast, "a")
        let start = Date()
        let second = await firstOf({ try? await Task.sleep(nanoseconds: 5_000_000_000); return 1 }, { 2 })
        XCTAssertEqual(second, 2)
        XCTAssertLessThan(Date().timeIntervalSince(start), 2, "the loser is cancelled, not awaited to its end")
    }
}

/// A flag set from another task.
final class ExpectationFlag: Sendable {
    private let state = Mutex(false)
    func set() { state.withLock { $0 = true } }
    var isSet: Bool { state.withLock { $0 } }
}

/// Runs `body` and reports whether it finished within `seconds`. The body is not awaited past the deadline
/// (it keeps running), so a test fails instead of hanging when something never returns.
func finishes(within seconds: Double, _ body: @escaping @Sendable () async -> Void) async -> Bool {
    let outcome = FirstOutcome()
    return await withCheckedContinuation { continuation in
        outcome.install(continuation)
        Task { await body(); outcome.finish(true) }
        Task { try? await Task.sleep(nanoseconds: UInt64(seconds * 1_000_000_000)); outcome.finish(false) }
    }
}

/// Resumes a continuation with the first result only.
private final class FirstOutcome: Sendable {
    private let slot = Mutex<CheckedContinuation<Bool, Never>?>(nil)
    func install(_ continuation: CheckedContinuation<Bool, Never>) { slot.withLock { $0 = continuation } }
    func finish(_ result: Bool) { slot.withLock { $0.take() }?.resume(returning: result) }
}

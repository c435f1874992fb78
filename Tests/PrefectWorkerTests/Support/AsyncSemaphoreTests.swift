import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker

/// `AsyncSemaphore`: the client's cap on concurrent requests.
final class AsyncSemaphoreTests: XCTestCase {
    func testPermitsGoToWaitersFirstComeFirstServed() async throws {
        let semaphore = AsyncSemaphore(1)
        try await semaphore.acquire()
        let order = Order()
        var tasks: [Task<Void, Error>] = []
        for i in 0..<3 {
            tasks.append(Task {
                try await semaphore.acquire()
                order.append(i)
            })
            try await Task.sleep(nanoseconds: 50_000_000)  // each waits before the next starts
        }
        XCTAssertEqual(order.list, [], "no permit is free")
        // One permit at a time, each taken before the next is released: three at once wake three tasks whose
        // appends then race (a fresh-clone run saw [1, 0, 2]), which says nothing about who got a permit first.
        for granted in 1...3 {
            semaphore.release()
            for _ in 0..<200 where order.list.count < granted { try await Task.sleep(nanoseconds: 10_000_000) }
            XCTAssertEqual(order.list.count, granted, "one release, one waiter through")
        }
        for task in tasks { try await task.value }
        XCTAssertEqual(order.list, [0, 1, 2])
    }

    func testACancelledWaitThrowsAndTakesNoPermit() async throws {
        let semaphore = AsyncSemaphore(1)
        try await semaphore.acquire()
        let waiting = Task { try await semaphore.acquire() }
        try await Task.sleep(nanoseconds: 50_000_000)
        waiting.cancel()
        do {
            try await waiting.value
            XCTFail("a cancelled wait for a permit returned normally")
        } catch {
            XCTAssertTrue(error is CancellationError)
        }
        semaphore.release()
        let next = await finishes(within: 2) { try? await semaphore.acquire() }
        XCTAssertTrue(next, "the released permit went to the cancelled waiter")
        let free = Task { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            return (try? await semaphore.acquire()) != nil
        }
        let freeTaken = await free.value
        XCTAssertFalse(freeTaken, "no permit is free: a cancelled task gets none")
    }
}

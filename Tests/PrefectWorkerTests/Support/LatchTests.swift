import Foundation
import XCTest
@testable import PrefectWorker

/// `Latch` (its timed and untimed waits are tested in `ServiceStageTests`).
final class LatchTests: XCTestCase {
    func testAWaitThroughCancellationReturnsOnlyWhenOpened() async throws {
        let latch = Latch()
        let waiting = Task { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            await latch.waitThroughCancellation()
            return latch.isOpen
        }
        try await Task.sleep(nanoseconds: 200_000_000)
        let early = await finishes(within: 0.1) { _ = await waiting.value }
        XCTAssertFalse(early, "a cancelled task's wait returned before the latch opened")
        latch.open()
        let opened = await waiting.value
        XCTAssertTrue(opened)
    }

    func testACancelledWaitReturnsAtOnce() async {
        let latch = Latch()
        let waiting = Task { await latch.wait() }
        try? await Task.sleep(nanoseconds: 50_000_000)
        waiting.cancel()
        let ended = await finishes(within: 2) { await waiting.value }
        XCTAssertTrue(ended)
        XCTAssertFalse(latch.isOpen)
    }
}

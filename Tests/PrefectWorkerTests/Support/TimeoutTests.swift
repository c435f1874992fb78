import Foundation
import XCTest
@testable import PrefectWorker

/// `withTimeout`: the operation's result in time, else the caller's error, promptly and with the operation
/// cancelled; a cancelled caller gets `CancellationError`.
final class TimeoutTests: XCTestCase {
    struct NoAnswer: Error, Equatable {}
    struct Failed: Error, Equatable {}

    func testTheResultInTime() async throws {
        let value = try await withTimeout(seconds: 5, error: { NoAnswer() }) {
            try await Task.sleep(seconds: 0.05)
            return 42
        }
        XCTAssertEqual(value, 42)
        let none: String? = try await withTimeout(seconds: 5) { nil }
        XCTAssertNil(none, "an operation may return nil (an optional result is not a timeout)")
    }

    func testTooLateThrowsTheCallersErrorAtOnceAndCancelsTheOperation() async throws {
        let cancelled = Locked(false)
        let start = Date()
        do {
            _ = try await withTimeout(seconds: 0.2, error: { NoAnswer() }) { () -> Int in
                do { try await Task.sleep(seconds: 30) } catch { cancelled.withLock { $0 = true }; throw error }
                return 1
            }
            XCTFail("no timeout")
        } catch {
            XCTAssertEqual(error as? NoAnswer, NoAnswer())
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 2, "not the operation's 30 s")
        XCTAssertTrue(cancelled.withLock { $0 }, "the operation was cancelled, and ended before withTimeout returned")
    }

    func testWithoutAnErrorOfItsOwnATimeoutError() async {
        do {
            _ = try await withTimeout(seconds: 0.05) { try await Task.sleep(seconds: 30) }
            XCTFail("no timeout")
        } catch {
            XCTAssertEqual((error as? TimeoutError)?.seconds, 0.05)
        }
    }

    func testTheOperationsErrorIsThrownAsIs() async {
        do {
            _ = try await withTimeout(seconds: 5, error: { NoAnswer() }) { () -> Int in throw Failed() }
            XCTFail("no error")
        } catch {
            XCTAssertEqual(error as? Failed, Failed())
        }
    }

    func testACancelledCallerGetsCancellationNotTheTimeout() async {
        let task = Task {
            try await withTimeout(seconds: 30, error: { NoAnswer() }) { () -> Int? in
                // Like a stream's next(), this returns rather than throws when cancelled.
                try? await Task.sleep(seconds: 30)
                return nil
            }
        }
        try? await Task.sleep(seconds: 0.1)
        let start = Date()
        task.cancel()
        let result = await task.result
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)
        XCTAssertThrowsError(try result.get()) { XCTAssertTrue($0 is CancellationError, "\($0)") }
    }
}

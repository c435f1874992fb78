import Dispatch

/// Sleeps `seconds` whether or not the calling task is cancelled, for waits that must really wait: a
/// teardown that has started always completes. (`try? await Task.sleep` returns at once in a cancelled
/// task, so a deadline loop built on it spins.)
func sleepThroughCancellation(_ seconds: Double) async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        DispatchQueue.global().asyncAfter(deadline: .now() + max(0, seconds)) { continuation.resume() }
    }
}

enum Seconds {
    /// `seconds` as nanoseconds for `Task.sleep`, never trapping: negative and NaN become 0, and anything from
    /// about 292 years up becomes that (a job variable, a setting or a server's `Retry-After` can be huge).
    static func nanoseconds(_ seconds: Double) -> UInt64 {
        guard seconds > 0 else { return 0 }
        guard seconds < 9.2e9 else { return 9_200_000_000_000_000_000 }
        return UInt64(seconds * 1_000_000_000)
    }
}

extension Task where Success == Never, Failure == Never {
    /// `Task.sleep` for `seconds`, converted by `Seconds.nanoseconds` (so it never traps); throws
    /// `CancellationError` when the task is cancelled, as `Task.sleep` does.
    static func sleep(seconds: Double) async throws {
        try await sleep(nanoseconds: Seconds.nanoseconds(seconds))
    }
}

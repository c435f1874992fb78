/// Thrown by `withTimeout` when the caller names no error of its own.
struct TimeoutError: Error, CustomStringConvertible {
    var seconds: Double
    var description: String { "timed out after \(seconds) s" }
}

/// `operation`'s result, unless it takes longer than `seconds`: then `error()` is thrown (the caller says what
/// timed out). Structured: the operation and a timer race in one task group and the loser is cancelled, so
/// nothing outlives the call. The group waits for the cancelled operation to end, so `operation` must stop
/// when its task is cancelled (`Task.sleep`, a stream's `next()`, `WebSocket.ping()` do). A cancelled caller
/// gets `CancellationError`, not the timeout.
func withTimeout<T: Sendable>(seconds: Double, error: (@Sendable () -> Error)? = nil,
                              operation: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: TimeoutOutcome<T>.self) { group in
        group.addTask { .finished(try await operation()) }
        group.addTask {
            try await Task.sleep(seconds: seconds)  // throws CancellationError when the operation won or the caller was cancelled
            return .timedOut
        }
        defer { group.cancelAll() }
        guard let first = try await group.next() else { throw CancellationError() }
        // A cancelled operation may return rather than throw (a stream's `next()` returns nil).
        if Task.isCancelled { throw CancellationError() }
        switch first {
        case .finished(let value): return value
        case .timedOut: throw error?() ?? TimeoutError(seconds: seconds)
        }
    }
}

/// Which of `withTimeout`'s two tasks finished first.
private enum TimeoutOutcome<T: Sendable>: Sendable {
    case finished(T)
    case timedOut
}

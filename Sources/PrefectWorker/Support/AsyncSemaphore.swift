/// A counting semaphore for async code, FIFO, cancellable while waiting.
final class AsyncSemaphore: Sendable {
    /// Permits free now; a waiter's test takes one, so a release wakes the longest waiter only.
    private let available: Condition<Int>

    init(_ count: Int) { available = Condition(count) }

    /// Takes a permit, waiting for one if none is free; throws `CancellationError` if the task is cancelled
    /// while it waits.
    func acquire() async throws {
        let taken = await available.wait(until: { available in
            guard available > 0 else { return false }
            available -= 1
            return true
        })
        if !taken { throw CancellationError() }
    }

    func release() {
        available.update { $0 += 1 }
    }
}

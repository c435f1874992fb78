/// A one-way event: `open()` once, and every `wait()`, before or after, returns. A job's exit, a stage's stop
/// and a run's stop request are latches.
final class Latch: Sendable {
    private let opened = Condition(false)

    init() {}

    var isOpen: Bool { opened.value }

    /// Opens the latch and wakes every waiter. Opening it again does nothing.
    func open() {
        opened.update { $0 = true }
    }

    /// Waits at most `seconds` for the latch to open; true if it did. A real wait whether or not the calling
    /// task is cancelled (like `sleepThroughCancellation`), for a teardown's deadlines.
    func wait(timeout seconds: Double) async -> Bool {
        await opened.wait(until: { $0 }, timeout: seconds, cancellation: .ignored)
        return isOpen
    }

    /// Returns once the latch is open, or when the calling task is cancelled.
    func wait() async {
        await opened.wait(until: { $0 })
    }

    /// Returns once the latch is open, whether or not the calling task is cancelled.
    func waitThroughCancellation() async {
        await opened.wait(until: { $0 }, cancellation: .ignored)
    }
}

import Dispatch
import Synchronization

/// A value behind a lock that tasks wait on: `wait(until:)` returns once a test of the value holds, and
/// `update` changes the value and wakes every waiter whose test now holds, in the order they began to wait.
/// The worker's one waiter list: `Latch`, `AsyncSemaphore`, `Shutdown`, `Doorbell`, the service stages and
/// the registry's and the outbox's waits are built on it.
///
/// A test may change the value to take what it waited for (a permit, a ring, a turn): then one `update`
/// wakes only as many waiters as there is to take ("notify one"); a test that only reads wakes them all.
/// Waiting for "something happens after now" is a count: note it (`value`), wait until it differs.
final class Condition<State: Sendable>: Sendable {
    /// What a wait does when its task is cancelled: end (the default), or go on as if nothing happened (a
    /// teardown's waits, which must really wait).
    enum Cancellation: Sendable {
        case endsWait
        case ignored
    }

    private struct Waiter {
        let id: Int
        let test: @Sendable (inout State) -> Bool
        let continuation: CheckedContinuation<Bool, Never>
    }

    private struct Guarded {
        var value: State
        var waiters: [Waiter] = []
        var nextID = 0
    }

    private let guarded: Mutex<Guarded>

    init(_ value: State) { guarded = Mutex(Guarded(value: value)) }

    /// The value now.
    var value: State { guarded.withLock { $0.value } }

    /// How many tasks wait now (for tests: a wait that ended is no longer counted).
    var waiterCount: Int { guarded.withLock { $0.waiters.count } }

    /// Changes the value, then wakes (in waiting order) every waiter whose test holds for it. Returns what
    /// `change` returns.
    @discardableResult
    func update<Result: Sendable>(_ change: @Sendable (inout State) -> Result) -> Result {
        let (result, woken) = guarded.withLock { guarded -> (Result, [CheckedContinuation<Bool, Never>]) in
            let result = change(&guarded.value)
            var woken: [CheckedContinuation<Bool, Never>] = []
            var waiting: [Waiter] = []
            for waiter in guarded.waiters {
                if waiter.test(&guarded.value) {
                    woken.append(waiter.continuation)
                } else {
                    waiting.append(waiter)
                }
            }
            if !woken.isEmpty { guarded.waiters = waiting }
            return (result, woken)
        }
        for continuation in woken { continuation.resume(returning: true) }
        return result
    }

    /// Waits until `test` holds for the value, at most `timeout` seconds (nil: no limit). True if it held;
    /// false after the timeout, or when the task is cancelled and `cancellation` is `.endsWait`. The test is
    /// tried first: if it holds already, the wait returns true at once, even in a cancelled task.
    @discardableResult
    func wait(until test: @escaping @Sendable (inout State) -> Bool, timeout: Double? = nil,
              cancellation: Cancellation = .endsWait) async -> Bool {
        let id = guarded.withLock { guarded in
            guarded.nextID += 1
            return guarded.nextID
        }
        switch cancellation {
        case .ignored:
            return await suspend(id, test, timeout: timeout, cancellable: false)
        case .endsWait:
            return await withTaskCancellationHandler {
                await suspend(id, test, timeout: timeout, cancellable: true)
            } onCancel: {
                self.end(id)
            }
        }
    }

    private func suspend(_ id: Int, _ test: @escaping @Sendable (inout State) -> Bool, timeout: Double?,
                         cancellable: Bool) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let now = guarded.withLock { guarded -> Bool? in
                if test(&guarded.value) { return true }
                if let timeout, !(timeout > 0) { return false }
                if cancellable, Task.isCancelled { return false }
                guarded.waiters.append(Waiter(id: id, test: test, continuation: continuation))
                return nil
            }
            if let now {
                continuation.resume(returning: now)
            } else if let timeout {
                // Ids are never reused: if the wait has ended already, the timer finds nothing to end.
                let delay = DispatchTimeInterval.nanoseconds(Int(Seconds.nanoseconds(timeout)))
                DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [weak self] in self?.end(id) }
            }
        }
    }

    /// Ends the wait `id` without its test holding (a timeout, a cancellation), if it is still waiting.
    private func end(_ id: Int) {
        let continuation = guarded.withLock { guarded -> CheckedContinuation<Bool, Never>? in
            guard let index = guarded.waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return guarded.waiters.remove(at: index).continuation
        }
        continuation?.resume(returning: false)
    }
}

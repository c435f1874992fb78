import Foundation
import Synchronization

/// What the events subscription tells the loops that would otherwise poll: whether the socket is up (the
/// cancellation poll then rests), and two doorbells, "poll for runs now" and "check cancellations now".
final class PushSignals: Sendable {
    /// Rung when a run of the pool becomes due, and after every (re)connect (the catch-up poll).
    let pollNow = Doorbell()
    /// Rung after every (re)connect and every loss of the socket, so the cancellation watch catches up and
    /// changes its cadence.
    let checkCancellations = Doorbell()
    private let up = Atomic<Bool>(false)

    init() {}

    /// Whether the worker channel is open now: `PoolService` then skips its REST heartbeat and pool read.
    var isChannelUp: Bool { channel.load(ordering: .relaxed) }
    private let channel = Atomic<Bool>(false)

    func channelChanged(up isUp: Bool) { channel.store(isUp, ordering: .relaxed) }

    /// Whether the events socket is subscribed now.
    var isSocketUp: Bool { up.load(ordering: .relaxed) }

    /// After every connect: catch up on cancellations and due runs. After a loss: the cancellation watch
    /// changes to its fallback cadence (a failed reconnect while already down changes nothing).
    func socketChanged(up isUp: Bool) {
        let was = up.exchange(isUp, ordering: .relaxed)
        guard isUp || was else { return }
        checkCancellations.ring()
        if isUp { pollNow.ring() }
    }
}

/// A wake-up that is kept until taken: `ring()` wakes the waiter, or else the next `wait` returns at once.
/// Rings while nobody waits coalesce into one.
final class Doorbell: Sendable {
    private struct State {
        var rung = false
        var next = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    init() {}

    func ring() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            if state.waiters.isEmpty { state.rung = true }
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns when rung (or at once if rung since the last wait), after `timeout` seconds (nil: no limit), or
    /// when the task is cancelled.
    func wait(timeout: Double?) async {
        guard let timeout else { return await waitForRing() }
        await firstOf({ await self.waitForRing() }, { try? await Task.sleep(seconds: timeout) })
    }

    private func waitForRing() async {
        let id = state.withLock { state in
            state.next += 1
            return state.next
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    if state.rung {
                        state.rung = false
                        return true
                    }
                    state.waiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }
}

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

/// A wake-up that is kept until taken: `ring()` wakes every waiter, or else the next `wait` returns at once.
/// Rings while nobody waits coalesce into one.
final class Doorbell: Sendable {
    /// `rings` counts every ring, so a waiter wakes on any ring after it began to wait; `kept` is a ring
    /// nobody has taken yet (each woken waiter takes it).
    private struct Bell {
        var rings = 0
        var kept = false
    }
    private let bell = Condition(Bell())

    init() {}

    func ring() {
        bell.update { bell in
            bell.rings += 1
            bell.kept = true
        }
    }

    /// Returns when rung (or at once if rung since the last wait), after `timeout` seconds (nil: no limit), or
    /// when the task is cancelled.
    func wait(timeout: Double?) async {
        if Task.isCancelled { return }
        let seen = bell.update { bell -> Int? in
            if bell.kept {
                bell.kept = false
                return nil
            }
            return bell.rings
        }
        guard let seen else { return }
        await bell.wait(until: { bell in
            guard bell.rings != seen else { return false }
            bell.kept = false
            return true
        }, timeout: timeout)
    }
}

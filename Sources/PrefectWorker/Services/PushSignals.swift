import Foundation
import Synchronization

/// What the events subscription tells the loops that would otherwise poll: whether the socket is up (the
/// cancellation poll and the poll for runs then rest) or down (lost or refused: the poll's cadence differs),
/// when the pool or a deployment of it last changed, and two doorbells, "poll for runs now" and "check
/// cancellations now".
final class PushSignals: Sendable {
    /// Rung when a run of the pool becomes due, when the pool or a deployment of it changes, and after every
    /// change of the socket's state (after a connect: the catch-up poll; after a loss: the poll's cadence changes).
    let pollNow = Doorbell()
    /// Rung after every (re)connect and every change of the socket's state, so the cancellation watch
    /// catches up and changes its cadence.
    let checkCancellations = Doorbell()
    private let socket = Atomic<UInt8>(PushSignals.code(.lost))

    init() {}

    /// Whether the worker channel is open now: `PoolService` then skips its REST heartbeat and pool read.
    var isChannelUp: Bool { channel.load(ordering: .relaxed) }
    private let channel = Atomic<Bool>(false)

    func channelChanged(up isUp: Bool) { channel.store(isUp, ordering: .relaxed) }

    /// The events socket's state after its loop's last attempt (`.lost` before the first).
    var socketState: SocketLoop.State { Self.state(socket.load(ordering: .relaxed)) }

    /// After every connect: catch up on cancellations and due runs. After a loss, or a loss found to be a
    /// refusal: both polls change their cadence (a failed reconnect that changes nothing rings nothing).
    func socketChanged(_ state: SocketLoop.State) {
        let was = Self.state(socket.exchange(Self.code(state), ordering: .relaxed))
        guard state == .up || was != state else { return }
        checkCancellations.ring()
        pollNow.ring()
    }

    /// When a deployment of the pool, the pool or one of its queues last changed (nil: not since the start).
    var lastPoolChange: Date? { poolChange.withLock { $0 } }
    private let poolChange = Mutex<Date?>(nil)

    /// A deployment of the pool, the pool or one of its queues changed: poll now, and at `--query-seconds` for a
    /// while (`PollCadence.settleSeconds`), since the server schedules a new schedule's runs without events.
    func poolChanged(at date: Date = Date()) {
        poolChange.withLock { $0 = date }
        pollNow.ring()
    }

    private static func code(_ state: SocketLoop.State) -> UInt8 {
        switch state {
        case .up: 0
        case .lost: 1
        case .refused: 2
        }
    }

    private static func state(_ code: UInt8) -> SocketLoop.State {
        switch code {
        case 0: .up
        case 2: .refused
        default: .lost
        }
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

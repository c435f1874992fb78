import Synchronization

/// Graceful shutdown as a first-class signal that the worker's loops observe.
/// First SIGTERM/SIGINT: `draining` (stop claiming, let runs finish). Second: `terminating` (stop runs now).
final class Shutdown: Sendable {
    enum Phase: Int, Sendable, Comparable {
        case running, draining, terminating
        static func < (a: Phase, b: Phase) -> Bool { a.rawValue < b.rawValue }
    }

    private struct State {
        var phase = Phase.running
        var nextID = 0
        var waiters: [Int: (Phase, CheckedContinuation<Void, Never>)] = [:]
    }

    private let state = Mutex(State())

    init() {}

    var phase: Phase { state.withLock { $0.phase } }

    /// Moves to the next phase (or to `target`, if later) and wakes whoever waits for it. Returns the new phase.
    @discardableResult
    func advance(to target: Phase? = nil) -> Phase {
        let (phase, ready) = state.withLock { state -> (Phase, [CheckedContinuation<Void, Never>]) in
            let next = target ?? Phase(rawValue: min(state.phase.rawValue + 1, Phase.terminating.rawValue))!
            if next > state.phase { state.phase = next }
            let current = state.phase
            let ready = state.waiters.filter { $0.value.0 <= current }
            for id in ready.keys { state.waiters[id] = nil }
            return (current, ready.values.map(\.1))
        }
        for continuation in ready { continuation.resume() }
        return phase
    }

    /// Returns once the shutdown has reached `phase`, or when the calling task is cancelled.
    func wait(for phase: Phase) async {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = state.withLock { state in
                    if state.phase >= phase || Task.isCancelled { return true }
                    state.waiters[id] = (phase, continuation)
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { state in state.waiters.removeValue(forKey: id) }
            waiter?.1.resume()
        }
    }

    /// Sleeps `seconds`, or less if the shutdown reaches `phase` first. Returns false if it did.
    func sleep(_ seconds: Double, unless phase: Phase = .draining) async -> Bool {
        if self.phase >= phase { return false }
        return await firstOf(
            { try? await Task.sleep(seconds: seconds); return true },
            { await self.wait(for: phase); return false }
        )
    }
}

/// Graceful shutdown as a first-class signal that the worker's loops observe.
/// First SIGTERM/SIGINT: `draining` (stop claiming, let runs finish). Second: `terminating` (stop runs now).
final class Shutdown: Sendable {
    enum Phase: Int, Sendable, Comparable {
        case running, draining, terminating
        static func < (a: Phase, b: Phase) -> Bool { a.rawValue < b.rawValue }
    }

    private let current = Condition(Phase.running)

    init() {}

    var phase: Phase { current.value }

    /// Moves to the next phase (or to `target`, if later) and wakes whoever waits for it. Returns the new phase.
    @discardableResult
    func advance(to target: Phase? = nil) -> Phase {
        current.update { phase in
            let next = target ?? Phase(rawValue: min(phase.rawValue + 1, Phase.terminating.rawValue))!
            if next > phase { phase = next }
            return phase
        }
    }

    /// Returns once the shutdown has reached `phase`, or when the calling task is cancelled.
    func wait(for phase: Phase) async {
        await current.wait(until: { $0 >= phase })
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

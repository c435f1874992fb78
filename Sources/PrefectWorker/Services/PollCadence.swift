import Foundation

/// When `PollService` asks for scheduled runs, and how far ahead.
///
/// Polling every `--query-seconds` is how a worker learns of runs without push. While the events stream is up,
/// a run entering a SCHEDULED-type state arrives as an event and is polled for at once, so the poll *rests*: it
/// becomes a safety net every `restSeconds` that looks `restSeconds` + prefetch ahead, so every run is seen at
/// least once before it is due, and the worker wakes for each run it saw at its start minus the prefetch (the
/// claim, and the job's start, then come at the same moment as with a 10 s poll, or sooner).
///
/// It does not rest, and polls every `--query-seconds` with `--prefetch-seconds` ahead as Prefect's worker does:
/// - while the stream is down (lost, or refused by a proxy);
/// - when the user set `--query-seconds` (their interval holds);
/// - when the pool has a concurrency limit (the server holds due runs back, and nothing is pushed when a slot frees);
/// - for `settleSeconds` after a deployment of the pool, the pool or one of its queues changed: the server's
///   scheduler inserts a new schedule's first runs a few seconds later, without events.
struct PollCadence: Sendable {
    /// The safety net's interval while resting: well within the 60 s after which the server marks the pool's
    /// queues and deployments NOT_READY for want of a poll.
    static let restSeconds: Double = 30
    /// How long after a change of the pool or a deployment the poll keeps `--query-seconds`: the server's
    /// scheduler looks for changed deployments every 5 s.
    static let settleSeconds: Double = 30
    /// A run within this much of the prefetch horizon is taken now rather than woken for a moment later.
    static let tolerance: Double = 1
    /// The shortest wait for a known run, so a clock that runs a little fast never spins the loop.
    static let shortestWait: Double = 0.5

    let querySeconds: Double
    let prefetchSeconds: Double
    /// False when the user set `--query-seconds`.
    let mayRest: Bool
    /// The start of the earliest run seen beyond the prefetch horizon by the last poll.
    private(set) var nextKnownStart: Date?

    init(querySeconds: Double, prefetchSeconds: Double, mayRest: Bool) {
        self.querySeconds = querySeconds
        self.prefetchSeconds = prefetchSeconds
        self.mayRest = mayRest
    }

    init(settings: Settings) {
        self.init(querySeconds: settings.querySeconds, prefetchSeconds: settings.prefetchSeconds, mayRest: !settings.querySecondsIsSet)
    }

    /// Whether the poll rests now.
    func rests(socket: SocketLoop.State, poolHasLimit: Bool, lastChange: Date?, now: Date) -> Bool {
        guard mayRest, socket == .up, !poolHasLimit else { return false }
        guard let lastChange else { return true }
        return now.timeIntervalSince(lastChange) >= Self.settleSeconds
    }

    /// How far ahead the poll asks.
    func lookahead(resting: Bool) -> Double {
        resting ? Self.restSeconds + prefetchSeconds : prefetchSeconds
    }

    /// Of the runs a poll at `now` returned, those to offer now (due within the prefetch); the start of the
    /// earliest of the others is remembered for `wait`.
    mutating func polled(_ runs: [FlowRun], at now: Date) -> [FlowRun] {
        let horizon = now.addingTimeInterval(prefetchSeconds + Self.tolerance)
        var offered: [FlowRun] = []
        nextKnownStart = nil
        for run in runs {
            let start = run.scheduledStart ?? .distantPast
            if start <= horizon {
                offered.append(run)
            } else {
                nextKnownStart = min(nextKnownStart ?? start, start)
            }
        }
        return offered
    }

    /// The interval between polls when no known run is due sooner.
    func interval(resting: Bool) -> Double {
        resting ? Self.restSeconds : querySeconds
    }

    /// Seconds until the next poll: `--query-seconds` unless resting; resting, until the next known run is to
    /// be claimed, or the safety net. After a failed poll, `--query-seconds`, or the known run's claim if that
    /// is still ahead (a claim already past is what just failed: no faster retries than the interval).
    func wait(resting: Bool, polled: Bool = true, now: Date) -> Double {
        let untilClaim = nextKnownStart.map { $0.timeIntervalSince(now) - prefetchSeconds }
        guard polled else {
            guard resting, let untilClaim, untilClaim > Self.shortestWait else { return querySeconds }
            return min(untilClaim, querySeconds)
        }
        guard resting, let untilClaim else { return interval(resting: resting) }
        return min(Self.restSeconds, max(Self.shortestWait, untilClaim))
    }
}

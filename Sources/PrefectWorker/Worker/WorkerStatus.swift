import Foundation
import Synchronization

/// When the loops last succeeded: for logs now, for health checks later.
final class WorkerStatus: Sendable {
    private let times = Mutex<(heartbeat: Date?, poll: Date?)>((nil, nil))
    let started = Date()

    init() {}

    private let ticks = Mutex<(poll: Date, heartbeat: Date)>((Date(), Date()))

    var lastHeartbeat: Date? { times.withLock { $0.heartbeat } }
    /// Each loop ticks once per iteration, success or not; a loop that stops ticking is stuck.
    func pollLoopTicked() { ticks.withLock { $0.poll = Date() } }
    func heartbeatLoopTicked() { ticks.withLock { $0.heartbeat = Date() } }
    var loopTicks: (poll: Date, heartbeat: Date) { ticks.withLock { $0 } }
    var lastPoll: Date? { times.withLock { $0.poll } }
    func heartbeatSucceeded() { times.withLock { $0.heartbeat = Date() } }
    func pollSucceeded() { times.withLock { $0.poll = Date() } }
}

import Foundation
import Synchronization

/// When the loops last succeeded: for logs now, for health checks later.
public final class WorkerStatus: Sendable {
    private let times = Mutex<(heartbeat: Date?, poll: Date?)>((nil, nil))
    public let started = Date()

    public init() {}

    private let ticks = Mutex<(poll: Date, heartbeat: Date)>((Date(), Date()))

    public var lastHeartbeat: Date? { times.withLock { $0.heartbeat } }
    /// Each loop ticks once per iteration, success or not; a loop that stops ticking is stuck.
    public func pollLoopTicked() { ticks.withLock { $0.poll = Date() } }
    public func heartbeatLoopTicked() { ticks.withLock { $0.heartbeat = Date() } }
    public var loopTicks: (poll: Date, heartbeat: Date) { ticks.withLock { $0 } }
    public var lastPoll: Date? { times.withLock { $0.poll } }
    public func heartbeatSucceeded() { times.withLock { $0.heartbeat = Date() } }
    public func pollSucceeded() { times.withLock { $0.poll = Date() } }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How to stop a job, declared as data: signal the process group, allow a grace period, and always end
/// with SIGKILL. Used both for cancellation and for shutdown.
public struct Teardown: Sendable, Equatable {
    public struct Step: Sendable, Equatable {
        public var signal: Int32
        public var grace: Double
    }

    public var steps: [Step]

    /// SIGTERM to the group, `grace` seconds, then SIGKILL.
    public static func terminate(grace: Double) -> Teardown {
        Teardown(steps: [Step(signal: SIGTERM, grace: grace)])
    }

    /// How the job ended under a teardown.
    public enum Outcome: Sendable, Equatable, CustomStringConvertible {
        case alreadyExited
        case exitedAfter(signal: Int32)
        case killed

        public var description: String {
            switch self {
            case .alreadyExited: "had already exited"
            case .exitedAfter(let signal): "exited after \(ExitStatus.signalName(signal))"
            case .killed: "was killed with SIGKILL after the grace period"
            }
        }
    }

    /// Runs the steps against process group `pgid` until `exited` reports the leader gone.
    /// `exited` is polled (cheaply) every 50 ms during each grace period.
    public func run(processGroup pgid: pid_t, exited: @Sendable () async -> Bool) async -> Outcome {
        if await exited() { return .alreadyExited }
        for step in steps {
            _ = kill(-pgid, step.signal)
            let deadline = Date().addingTimeInterval(step.grace)
            while Date() < deadline {
                if await exited() { return .exitedAfter(signal: step.signal) }
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
            if await exited() { return .exitedAfter(signal: step.signal) }
        }
        _ = kill(-pgid, SIGKILL)
        return .killed
    }
}

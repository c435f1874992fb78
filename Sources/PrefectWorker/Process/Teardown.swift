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

    /// Runs the steps against process group `pgid` and against every process carrying the run's marker
    /// (descendants that left the group), until `leaderExited` reports the job gone and no marked process
    /// is left. The leader is checked every 50 ms, /proc every 500 ms. Its waits are real waits even when the
    /// calling task is cancelled: a teardown that has started always completes.
    public func run(processGroup pgid: pid_t, runID: String?, leaderExited: @Sendable () async -> Bool) async -> Outcome {
        func stragglers() -> [pid_t] { runID.map(ProcFS.processes(ofRun:)) ?? [] }
        func send(_ signal: Int32) {
            _ = kill(-pgid, signal)
            for pid in stragglers() { _ = kill(pid, signal) }
        }
        if await leaderExited(), stragglers().isEmpty { return .alreadyExited }
        for step in steps {
            send(step.signal)
            let deadline = Date().addingTimeInterval(step.grace)
            var nextScan = Date()
            while Date() < deadline {
                if await leaderExited() {
                    if Date() >= nextScan {
                        if stragglers().isEmpty { return .exitedAfter(signal: step.signal) }
                        nextScan = Date().addingTimeInterval(0.5)
                    }
                }
                await sleepThroughCancellation(0.05)
            }
            if await leaderExited(), stragglers().isEmpty { return .exitedAfter(signal: step.signal) }
        }
        send(SIGKILL)
        // SIGKILL cannot be ignored; wait (bounded) until the tree is gone and reaped.
        for _ in 0..<100 {
            if await leaderExited(), stragglers().isEmpty { break }
            await sleepThroughCancellation(0.05)
            send(SIGKILL)
        }
        return .killed
    }
}

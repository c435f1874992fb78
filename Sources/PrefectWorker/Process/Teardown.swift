import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How to stop a job, declared as data: signal the process group, allow a grace period, and always end
/// with SIGKILL. Used both for cancellation and for shutdown.
struct Teardown: Sendable, Equatable {
    struct Step: Sendable, Equatable {
        var signal: Int32
        var grace: Double
    }

    var steps: [Step]

    /// SIGTERM to the group, `grace` seconds, then SIGKILL.
    static func terminate(grace: Double) -> Teardown {
        Teardown(steps: [Step(signal: SIGTERM, grace: grace)])
    }

    /// How the job ended under a teardown.
    enum Outcome: Sendable, Equatable, CustomStringConvertible {
        case alreadyExited
        case exitedAfter(signal: Int32)
        case killed

        var description: String {
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
    ///
    /// Issue 13: with the run's `cgroup`, its members are the stragglers instead (nothing escapes it), the final
    /// step is `cgroup.kill`, and the tree is gone when `cgroup.events` says `populated 0`.
    func run(processGroup pgid: pid_t, runID: String?, cgroup: RunCgroup? = nil, leaderExited: @Sendable () async -> Bool) async -> Outcome {
        func stragglers() -> [pid_t] { cgroup?.processes() ?? runID.map(ProcFS.processes(ofRun:)) ?? [] }
        func treeGone() -> Bool { cgroup.map { !$0.isPopulated } ?? stragglers().isEmpty }
        func send(_ signal: Int32) {
            if signal == SIGKILL { cgroup?.kill() }
            _ = kill(-pgid, signal)
            for pid in stragglers() { _ = kill(pid, signal) }
        }
        if await leaderExited(), treeGone() { return .alreadyExited }
        for step in steps {
            send(step.signal)
            let deadline = Date().addingTimeInterval(step.grace)
            var nextScan = Date()
            while Date() < deadline {
                if await leaderExited() {
                    if Date() >= nextScan {
                        if treeGone() { return .exitedAfter(signal: step.signal) }
                        nextScan = Date().addingTimeInterval(0.5)
                    }
                }
                await sleepThroughCancellation(0.05)
            }
            if await leaderExited(), treeGone() { return .exitedAfter(signal: step.signal) }
        }
        send(SIGKILL)
        // SIGKILL cannot be ignored; wait (bounded) until the tree is gone and reaped.
        for _ in 0..<100 {
            if await leaderExited(), treeGone() { break }
            await sleepThroughCancellation(0.05)
            send(SIGKILL)
        }
        return .killed
    }
}

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
    /// (descendants that left the group), until `leaderExit` is open (the job has exited and been reaped) and
    /// no marked process is left. It waits on the exit itself, and scans /proc for stragglers every 500 ms once
    /// the leader is gone. It runs in a task of its own, which nobody can cancel: a teardown that has started
    /// always completes, with real waits, even when the calling task is cancelled.
    ///
    /// Per-job cgroups: with the run's `cgroup`, its members are the stragglers instead (nothing escapes it), the final
    /// step is `cgroup.kill`, and the tree is gone when `cgroup.events` says `populated 0` (checked every 50 ms).
    /// `signalGroup` sends a signal to the job's process group (`ProcessSpawner.signalGroup`).
    func run(processGroup pgid: pid_t, runID: String?, cgroup: RunCgroup? = nil, leaderExit: Latch,
             signalGroup: @escaping @Sendable (pid_t, Int32) -> Void = { _ = kill(-$0, $1) }) async -> Outcome {
        let steps = self.steps
        return await Task {
            await Self.execute(steps, pgid: pgid, runID: runID, cgroup: cgroup, leaderExit: leaderExit, signalGroup: signalGroup)
        }.value
    }

    private static func execute(_ steps: [Step], pgid: pid_t, runID: String?, cgroup: RunCgroup?, leaderExit: Latch,
                                signalGroup: @Sendable (pid_t, Int32) -> Void) async -> Outcome {
        func stragglers() -> [pid_t] { cgroup?.processes() ?? runID.map(ProcFS.processes(ofRun:)) ?? [] }
        func treeGone() -> Bool { cgroup.map { !$0.isPopulated } ?? stragglers().isEmpty }
        func send(_ signal: Int32) {
            if signal == SIGKILL { cgroup?.kill() }
            signalGroup(pgid, signal)
            for pid in stragglers() { _ = kill(pid, signal) }
        }
        let scanInterval = cgroup == nil ? 0.5 : 0.05
        /// Waits until `deadline` for the leader to exit and then for the tree to empty; true if both happened.
        func gone(by deadline: Date) async -> Bool {
            guard await leaderExit.wait(timeout: deadline.timeIntervalSinceNow) else { return false }
            while !treeGone() {
                let left = deadline.timeIntervalSinceNow
                if left <= 0 { return false }
                await sleepThroughCancellation(min(scanInterval, left))
            }
            return true
        }
        if leaderExit.isOpen, treeGone() { return .alreadyExited }
        for step in steps {
            send(step.signal)
            if await gone(by: Date().addingTimeInterval(step.grace)) { return .exitedAfter(signal: step.signal) }
        }
        // SIGKILL cannot be ignored; wait (bounded, 5 s) until the tree is gone and reaped, sending it again
        // to anything that appeared meanwhile.
        send(SIGKILL)
        for _ in 0..<50 {
            if await gone(by: Date().addingTimeInterval(0.1)) { break }
            send(SIGKILL)
        }
        return .killed
    }
}

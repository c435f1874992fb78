import Foundation
import Synchronization
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// Stands in for `ChildProcesses` in the supervisor's unit tests: no process is started. Each job gets a pid
/// above the kernel's `pid_max`, so no real process can ever have it, and ends when `behaviour` says so (at
/// once, on a signal, or when the test calls `end`). Signals are recorded, never sent.
final class FakeSpawner: ProcessSpawner, Sendable {
    /// What a job does when it starts and when its group is signalled.
    struct Behaviour: Sendable {
        /// Ends at once with this status (nil: keeps running).
        var exitAtStart: ExitStatus?
        /// The signals it dies of (others it ignores, as `trap '' TERM` does; SIGKILL always kills).
        var diesOf: Set<Int32> = [SIGTERM, SIGINT]

        static let exitsAtOnce = Behaviour(exitAtStart: .exited(0))
        static let runsUntilSignalled = Behaviour(exitAtStart: nil)
        static let ignoresSIGTERM = Behaviour(exitAtStart: nil, diesOf: [])
    }

    private struct Job {
        var request: SpawnRequest
        var behaviour: Behaviour
        var signals: [Int32] = []
        var end: JobEnd?
        var waiters: [CheckedContinuation<JobEnd, Never>] = []
    }

    private struct State {
        var nextPID: pid_t = 1 << 30
        var jobs: [pid_t: Job] = [:]
    }

    private let state = Mutex(State())
    private let behaviour: @Sendable (SpawnRequest) -> Behaviour

    init(_ behaviour: @escaping @Sendable (SpawnRequest) -> Behaviour = { _ in .exitsAtOnce }) {
        self.behaviour = behaviour
    }

    func spawn(_ request: SpawnRequest) throws(SpawnError) -> SpawnedProcess {
        let behaviour = self.behaviour(request)
        let pid = state.withLock { state -> pid_t in
            state.nextPID += 1
            state.jobs[state.nextPID] = Job(request: request, behaviour: behaviour)
            return state.nextPID
        }
        if let status = behaviour.exitAtStart { end(pid, status) }
        return SpawnedProcess(pid: pid, stdout: nil, stderr: nil)
    }

    func waitForEnd(_ pid: pid_t) async -> JobEnd {
        await withCheckedContinuation { continuation in
            let end = state.withLock { state -> JobEnd? in
                if let end = state.jobs[pid]?.end { return end }
                state.jobs[pid]?.waiters.append(continuation)
                return nil
            }
            if let end { continuation.resume(returning: end) }
        }
    }

    func signalGroup(_ pgid: pid_t, _ signal: Int32) {
        let dies = state.withLock { state -> Bool in
            guard var job = state.jobs[pgid], job.end == nil else { return false }
            job.signals.append(signal)
            state.jobs[pgid] = job
            return signal == SIGKILL || job.behaviour.diesOf.contains(signal)
        }
        if dies { end(pgid, .signaled(signal)) }
    }

    /// Ends the job (as if it exited with `status`) and wakes whoever waits for it.
    func end(_ pid: pid_t, _ status: ExitStatus) {
        let waiters = state.withLock { state -> [CheckedContinuation<JobEnd, Never>] in
            guard var job = state.jobs[pid], job.end == nil else { return [] }
            let end = JobEnd(status: status, usage: .unknown)
            job.end = end
            let waiters = job.waiters
            job.waiters = []
            state.jobs[pid] = job
            return waiters
        }
        let end = JobEnd(status: status, usage: .unknown)
        for waiter in waiters { waiter.resume(returning: end) }
    }

    /// The requests of every job started, in order.
    var spawned: [SpawnRequest] { state.withLock { $0.jobs.sorted { $0.key < $1.key }.map(\.value.request) } }

    /// The pids of every job started, in order.
    var pids: [pid_t] { state.withLock { $0.jobs.keys.sorted() } }

    /// The signals the job's group got, in order.
    func signals(_ pid: pid_t) -> [Int32] { state.withLock { $0.jobs[pid]?.signals ?? [] } }
}

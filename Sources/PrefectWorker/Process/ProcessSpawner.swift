import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starts jobs, signals their process groups and tells how each ended. Runs get it as
/// `RunDependencies.spawner`: `ChildProcesses.shared` in the worker, a fake in the supervisor's unit tests.
protocol ProcessSpawner: Sendable {
    /// Starts a job as the leader of a new process group.
    func spawn(_ request: SpawnRequest) throws(SpawnError) -> SpawnedProcess
    /// Returns once the job with this pid has exited (at once if it already has): its status and usage.
    func waitForEnd(_ pid: pid_t) async -> JobEnd
    /// Sends `signal` to the process group the job leads.
    func signalGroup(_ pgid: pid_t, _ signal: Int32)
}

extension ChildProcesses: ProcessSpawner {
    func signalGroup(_ pgid: pid_t, _ signal: Int32) {
        _ = kill(-pgid, signal)
    }
}

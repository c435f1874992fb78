import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A run's job while it runs: one process group (in the run's cgroup, if it has one), watched until it exits
/// and stopped with the declared teardown when its run asks. Its side tasks are children of one task group:
/// the wait for its end (its output read), its heartbeat (until the exit), its `timeout_seconds` timer, the
/// wait for a stop request and, once one comes, the teardown. The group ends when the job has exited and a
/// teardown that began has finished; what is left (the timer, the wait) is cancelled then.
///
/// The run's own state (why it is stopped, what the engine was told) stays with its `FlowRunSupervisor`, which
/// `Hooks` reach.
struct RunningJob: Sendable {
    /// How the job's end is observed.
    enum Process: Sendable {
        /// Started by this worker: its status and usage come from the spawner, then its output is read to the end.
        case spawned(SpawnedProcess, pumps: [OutputPump])
        /// Left running by a previous worker: only that it is gone can be known (its start time tells it from a
        /// reused pid).
        case adopted(pid: pid_t, startTime: UInt64?)
    }

    let process: Process
    let runID: String
    /// Seconds the job may run (`timeout_seconds`).
    let timeout: Double?
    let cgroup: RunCgroup?
    /// Beats for a worker-owned run until the job exits (nil: an engine sends its own).
    let heartbeat: (@Sendable () async -> Void)?
    let spawner: any ProcessSpawner
    /// SIGTERM to SIGKILL.
    let killGrace: Double
    let log: Logger

    var pid: pid_t {
        switch process {
        case .spawned(let spawned, _): spawned.pid
        case .adopted(let pid, _): pid
        }
    }

    /// What the run is told while its job runs.
    struct Hooks: Sendable {
        /// The job's process has exited (and its output was read).
        var exited: @Sendable () async -> Void
        /// The job ran past its `timeout`.
        var timedOut: @Sendable () async -> Void
        /// A stop was requested: the run tells an engine what it needs to know first, and says why the job is
        /// stopped (for the teardown's log line).
        var stopping: @Sendable () async -> String
    }

    /// How the job ended: its status and usage (nil for an adopted job), and the teardown's outcome if it was stopped.
    struct Ending: Sendable {
        var end: JobEnd?
        var teardown: Teardown.Outcome?
    }

    /// Watches the job until it has exited (and a teardown that began has finished). `exited` is opened when
    /// the job's process has exited; `stopRequested`, opened by the run, starts the teardown.
    func watch(stopRequested: Latch, exited: Latch, hooks: Hooks) async -> Ending {
        enum Event: Sendable { case exited(JobEnd?), timedOut, stopRequested, tornDown(Teardown.Outcome), ended }
        var ending = Ending()
        await withTaskGroup(of: Event.self) { group in
            group.addTask { .exited(await self.end()) }
            if let heartbeat {
                group.addTask {
                    await firstOf(heartbeat, { await exited.wait() })
                    return .ended
                }
            }
            if let timeout {
                group.addTask {
                    do { try await Task.sleep(seconds: timeout) } catch { return .ended }
                    return .timedOut
                }
            }
            group.addTask {
                await stopRequested.wait()
                return Task.isCancelled ? .ended : .stopRequested
            }
            var tearingDown = false, hasExited = false
            while let event = await group.next() {
                switch event {
                case .exited(let end):
                    ending.end = end
                    hasExited = true
                    exited.open()
                    await hooks.exited()
                case .timedOut:
                    await hooks.timedOut()
                case .stopRequested:
                    tearingDown = true
                    group.addTask { .tornDown(await self.tearDown(because: await hooks.stopping(), exited: exited)) }
                case .tornDown(let outcome):
                    ending.teardown = outcome
                    tearingDown = false
                case .ended:
                    break
                }
                // Done once the job has exited and no teardown is under way: the timer and the wait end here.
                if hasExited, !tearingDown { group.cancelAll() }
            }
        }
        return ending
    }

    /// The job's end: its status and usage once its output is read (at most 2 s more), or nil for an adopted job.
    private func end() async -> JobEnd? {
        switch process {
        case .spawned(let spawned, let pumps):
            let end = await spawner.waitForEnd(spawned.pid)
            for pump in pumps { await pump.finish(timeout: 2) }
            return end
        case .adopted(let pid, let startTime):
            await ProcFS.waitForExit(of: pid, startTime: startTime)
            return nil
        }
    }

    /// The declared teardown: SIGTERM to the job's process group, the grace, SIGKILL (and the whole cgroup).
    private func tearDown(because cause: String, exited: Latch) async -> Teardown.Outcome {
        log.info("\(cause): sending SIGTERM to the job's process group, SIGKILL in \(String(format: "%g", killGrace)) s")
        let spawner = self.spawner
        let outcome = await Teardown.terminate(grace: killGrace).run(processGroup: pid, runID: runID, cgroup: cgroup, leaderExit: exited) {
            spawner.signalGroup($0, $1)
        }
        log.info("job (pid \(pid)) \(outcome)")
        return outcome
    }
}

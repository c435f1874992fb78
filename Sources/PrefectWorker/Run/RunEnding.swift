import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How a run ends, once its job has: the closing line with what the job used, the final state (CANCELLED,
/// TimedOut, CRASHED by a stop, out of memory, the exit code's or the engine's), and the journal entry cleared.
extension FlowRunSupervisor {
    /// Reports how the run ended after `job` ended as `ending`; `limit` is the timeout's message.
    func finish(_ job: RunningJob, _ ending: RunningJob.Ending, owner: StateOwner, control: AttemptControlSession?,
                limit: String?, executed: @Sendable (ExitStatus?, JobUsage) -> Void) async {
        let end = ending.end, outcome = ending.teardown, cgroup = job.cgroup, pid = job.pid
        let exit = end?.status
        /// The closing line, the metrics and `executed`, with the whole tree's figures from its cgroup (more
        /// exact than rusage for trees that fork) once the cgroup is empty.
        func closing(_ cgroupUsage: CgroupUsage?) {
            var usage = end?.usage ?? .unknown
            if let cgroupUsage, end != nil { usage = usage.overridden(by: cgroupUsage.jobUsage) }
            log.info(JobUsage.closingLine(pid: pid, ending: exit?.description, usage: usage))
            if !usage.isUnknown { dependencies.metrics.runUsage(usage) }
            executed(exit, usage)
        }

        if cancelRequested || stopReason != nil {
            closing(await finishCgroup(cgroup))
            let how = outcome.map { "the job \($0)" } ?? "the job " + (exit.map { "\($0)" } ?? "exited")
            if timedOut, !cancelRequested {
                await report(FinalState(type: .failed, message: "\(limit ?? "Flow run timed out"); \(how).", name: "TimedOut"), force: true)
            } else if cancelRequested {
                await report(FinalState(type: .cancelled, message: "Flow run was cancelled: \(how)."), force: true)
            } else if let handedOver {
                log.info(handedOver == .reschedule
                    ? "\(how.prefix(1).uppercased() + how.dropFirst()); the run went back to its pool (AwaitingRetry) for another worker"
                    : "\(how.prefix(1).uppercased() + how.dropFirst()); the run's state is left to the infrastructure (PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR=relinquish)")
            } else {
                await report(FinalState(type: .crashed, message: "\(stopReason ?? "Worker shut down"): \(how)."))
            }
        } else {
            let usage = await finishCgroup(cgroup)
            closing(usage)
            if let exit {
                if let oom = FinalState.outOfMemory(usage: usage, limits: cgroup?.limits ?? .none, exit: exit) {
                    await report(oom)
                } else if let final = FinalState.decide(owner: owner, exit: exit, evidence: Self.evidence(control)) {
                    await report(final)
                } else if let state = try? await client.readFlowRun(runID, policy: .quick).currentStateType {
                    // The engine reported; count and log what it reported.
                    log.info("the engine reported \(state.rawValue)")
                    if state.isTerminal { dependencies.metrics.runFinished(state) }
                }
            } else {
                await reportAdoptedExit(owner: owner)
            }
        }
        await dependencies.journal.remove(runID)
    }

    /// Once the job has exited, empties and removes its cgroup and logs what its whole tree used.
    func finishCgroup(_ cgroup: RunCgroup?) async -> CgroupUsage? {
        guard let cgroup else { return nil }
        let usage = await cgroup.finish(log: log)
        log.info("cgroup usage: \(usage.summary)")
        return usage
    }

    /// An adopted job exited with a status we cannot know: a worker-owned run is CRASHED (saying why), an
    /// engine-owned run is left to the engine unless it is still not final.
    func reportAdoptedExit(owner: StateOwner) async {
        switch owner {
        case .worker:
            await report(FinalState(type: .crashed, message: "The worker restarted while the job ran; the job has exited, but its exit status could not be observed."))
        case .engine:
            await report(FinalState(type: .crashed, message: "The worker restarted while the flow run process ran; the process exited before the flow run reached a final state."))
        }
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Watching a running job: its exit, its timer and stop requests as child tasks of one group; the declared
/// teardown when the run is cancelled, times out or the worker stops; then the closing line, the final state
/// and the journal entry cleared.
extension FlowRunSupervisor {
    // MARK: - Watching

    /// Watches a running job until it exits, stopping it (the declared teardown) when the run is cancelled,
    /// runs past `timeout` seconds, or the worker shuts down, then reports the final state and clears the
    /// journal entry. `exitStatus` is nil for an adopted job, whose status and usage cannot be known.
    /// `executed` gets the job's exit status and its usage (rusage, with the cgroup's figures where it had one)
    /// once the job and everything it left behind are gone.
    func watch(pid: pid_t, owner: StateOwner, timeout: Double? = nil, cgroup: RunCgroup? = nil,
               control: AttemptControlSession? = nil, exitStatus: @escaping @Sendable () async -> JobEnd?,
               executed: @Sendable (ExitStatus?, JobUsage) -> Void = { _, _ in }) async {
        setJobPID(pid)
        let limit = timeout.map { "Flow run exceeded timeout of \(String(format: "%g", $0)) second(s) (job variable timeout_seconds)" }
        // The job's side tasks are children of one group: its exit, its timer, the wait for a stop request
        // and, once one comes, the teardown. It ends when the job has exited (and, after a stop request, the
        // teardown has finished); what is left (the timer, the wait) is cancelled then.
        enum Event: Sendable { case exited(JobEnd?), timedOut, stopRequested, tornDown(Teardown.Outcome), ended }
        let stopRequested = self.stopRequested
        var end: JobEnd?
        var outcome: Teardown.Outcome?
        await withTaskGroup(of: Event.self) { group in
            group.addTask { .exited(await exitStatus()) }
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
                case .exited(let ended):
                    end = ended
                    hasExited = true
                    setJobPID(nil)
                    exited.open()
                case .timedOut:
                    requestTimeout(reason: limit!)
                case .stopRequested:
                    tearingDown = true
                    group.addTask { .tornDown(await self.tearDown(pid: pid, cgroup: cgroup, control: control, timeout: timeout)) }
                case .tornDown(let result):
                    outcome = result
                    tearingDown = false
                case .ended:
                    break
                }
                // Done once the job has exited and no teardown is under way: the timer and the wait end here.
                if hasExited, !tearingDown { group.cancelAll() }
            }
        }
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

    /// Stops the job with the declared teardown (SIGTERM to its process group, the grace, SIGKILL), after
    /// telling an engine why over its control session.
    private func tearDown(pid: pid_t, cgroup: RunCgroup?, control: AttemptControlSession?, timeout: Double?) async -> Teardown.Outcome {
        let grace = settings.killGraceSeconds, spawner = dependencies.spawner
        if let control { handedOver = await tellEngine(control, grace: grace) }
        log.info("\(stopCause(timeout: timeout)): sending SIGTERM to the job's process group, SIGKILL in \(String(format: "%g", grace)) s")
        let outcome = await Teardown.terminate(grace: grace).run(processGroup: pid, runID: runID, cgroup: cgroup, leaderExit: exited) {
            spawner.signalGroup($0, $1)
        }
        log.info("job (pid \(pid)) \(outcome)")
        return outcome
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

    /// Why the job is being stopped, for the log line.
    func stopCause(timeout: Double?) -> String {
        cancelRequested ? "the run is being cancelled"
            : timedOut ? "it ran longer than timeout_seconds=\(String(format: "%g", timeout ?? 0))"
            : "the worker is shutting down"
    }
}

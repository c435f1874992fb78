import Foundation

/// What an engine job is told over its attempt control session before the worker stops it.
extension FlowRunSupervisor {
    /// The intent for the stop under way: `cancel` for a cancellation, the configured shutdown behaviour
    /// (`PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR`) for a shutdown, none for a timeout (the engine's CRASHED
    /// on our SIGTERM is then overruled by FAILED/TimedOut).
    func intentForStop() -> AttemptControl.Intent? {
        if cancelRequested { return .cancel }
        if timedOut { return nil }
        return settings.sigtermBehavior
    }

    /// Tells the engine why it is about to get SIGTERM, before it gets it: acknowledged, a `cancel` makes the
    /// engine report CANCELLED and run the flow's `on_cancellation` hooks; a `reschedule` lets the worker hand
    /// the run back to its pool (done here, before the SIGTERM, as `prefect flow-run execute` does). An engine
    /// that had already concluded is given the grace period to exit by itself. Returns the shutdown intent
    /// the engine took and the worker carried out, if any.
    func tellEngine(_ control: AttemptControlSession, grace: Double) async -> AttemptControl.Intent? {
        guard let intent = intentForStop() else { return nil }
        guard control.connected else {
            // A plain command, or an engine still starting: nothing to tell, the teardown alone stops it.
            log.debug("nothing connected to the job's attempt control session; stopping it without the '\(intent.rawValue)' intent")
            return nil
        }
        switch await control.signal(intent) {
        case .acknowledged:
            log.info("the engine acknowledged the '\(intent.rawValue)' intent on its attempt control session")
        case .alreadyConcluded:
            log.info("the engine has already reported the run's outcome; giving it \(String(format: "%g", grace)) s to exit by itself")
            _ = await exited.wait(timeout: grace)
            return nil
        case .notAcknowledged:
            log.info("the engine did not acknowledge the '\(intent.rawValue)' intent on its attempt control session; stopping it without it\(intent == .cancel ? "" : ", the run is reported CRASHED")")
            return nil
        }
        switch intent {
        case .cancel: return nil
        case .relinquish: return .relinquish
        case .reschedule: return await reschedule() ? .reschedule : nil
        }
    }

    /// Hands a running engine run back to its pool (AwaitingRetry), unless the server has already finished it
    /// (a CRASHED run may still be rescheduled, as `prefect flow-run execute` has it). True if the server took it.
    func reschedule() async -> Bool {
        if let current = try? await client.readFlowRun(runID, policy: .quick).currentStateType,
           current.isTerminal, current != .crashed {
            log.info("the run is already \(current.rawValue); not handing it back")
            return false
        }
        var proposal = StateProposal(.scheduled, name: "AwaitingRetry",
                                     message: "Worker '\(settings.workerName)' shut down; the flow run goes back to its work pool for another worker.")
        proposal.details = ["scheduled_time": .string(Timestamp.format(Date()))]
        do {
            switch try await reporter.propose(proposal, .init(policy: .quick, maxWaits: 0)) {
            case .accepted:
                return true
            case .refused(_, let reason, _):
                log.warning("the server did not take the run back (\(reason)); it is reported CRASHED")
            case .waitedTooLong, .stopped:
                log.warning("the server asked to wait before taking the run back; it is reported CRASHED")
            }
        } catch {
            log.warning("could not hand the run back to its pool: \(error); it is reported CRASHED")
        }
        return false
    }

    /// What the job's control session says about how its attempt ended.
    static func evidence(_ control: AttemptControlSession?) -> EngineEvidence {
        guard let control, control.connected, control.negotiatedReceipts else { return .none }
        return control.conclusion == nil ? .silent : .concluded
    }
}

import Foundation

/// PENDING/Submitting: the state Prefect's worker proposes right before it starts a run's job
/// (`BaseWorker._propose_submitting_state`, after the claim, the job configuration and the labels), so the UI
/// and automations see the same states under both workers. The server accepts it from the run's PENDING
/// (`PreventPendingTransitions` lets a PENDING take a new name other than "Pending") and carries the claim's
/// deployment-concurrency lease over to it.
extension FlowRunSupervisor {
    /// Proposes PENDING/Submitting; false (after reporting CANCELLED or handing the run back where that is
    /// due) if the job must not start.
    ///
    /// - ACCEPT (or a REJECT returning this proposal, a retried request whose first answer was lost): start,
    ///   after a last look for a cancel or a drain that came during the round trip.
    /// - REJECT/ABORT: the run left its PENDING since the claim (cancelled, rescheduled, run elsewhere), so the
    ///   job does not start; a run being cancelled is reported CANCELLED. Prefect's worker ignores the refusal
    ///   and starts the job anyway; this worker keeps its rule that a job starts only on a PENDING it holds.
    /// - WAIT: proposed again after the delay; a drain meanwhile hands the run back.
    /// - No answer after the ordinary retries: the job starts, as under Prefect's worker (the state is
    ///   informative; the claim made the run ours).
    func proposeSubmitting() async -> Bool {
        let id = runID
        let outcome: StateReporter.Outcome
        do {
            outcome = try await reporter.propose(StateProposal(.pending, name: "Submitting"), .init(matchTransition: true))
        } catch {
            log.warning("could not propose PENDING/Submitting (\(error)); starting the job anyway, as the run is claimed")
            return await startAllowed()
        }
        switch outcome {
        case .accepted:
            // The round trip may have taken a while: a cancel or a drain that came meanwhile wins.
            return await startAllowed()
        case .stopped, .waitedTooLong:
            await handBack()
            return false
        case .refused(var state, let reason, _):
            // An ABORT names no state: the run is read to tell a cancel from anything else.
            if state == nil { state = try? await client.readFlowRun(id, policy: .quick).currentStateType }
            let now = state.map { " (run is \($0.rawValue))" } ?? ""
            log.warning("server refused PENDING/Submitting: \(reason)\(now); not starting the job")
            if cancelRequested || state == .cancelling || state == .cancelled {
                await report(.cancelledBeforeStart)
            }
            return false
        }
    }
}

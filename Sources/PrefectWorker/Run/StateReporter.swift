import Foundation

/// The one set_state loop: every state the worker proposes for a run that it holds (Submitting, RUNNING, a
/// hand-back, a reschedule, and the final states the outbox delivers) goes through `propose`, which applies
/// the one decision rule (`Orchestration.decide`) to the server's answer. Claiming is not here: a PENDING
/// claim reads the run between attempts (`RunClaim`).
struct StateReporter: Sendable {
    let runID: String
    let client: PrefectClient
    /// WAIT answers are waited out unless the worker reaches `Options.waitUnless`; nil: always waited out.
    let shutdown: Shutdown?
    let log: Logger

    /// How one proposal is made.
    struct Options: Sendable {
        /// The request's own retries.
        var policy: RetryPolicy = .standard
        /// WAIT answers waited out in a row before giving up (`.waitedTooLong`); a new proposal follows each.
        var maxWaits = Int.max
        /// A WAIT is not waited out once the worker reaches this phase (`.stopped`).
        var waitUnless: Shutdown.Phase = .draining
        /// After a WAIT, propose with a fresh transition id; false keeps the one given (the outbox persists it).
        var freshAfterWait = true
        /// Each WAIT is logged (INFO) with the delay.
        var logWaits = true
        /// Only a returned state with one of our transition ids is ours (a REJECT returning another worker's
        /// state of the same type is not).
        var matchTransition = false
        /// A final state the server refuses because the run is CANCELLING becomes CANCELLED (forced).
        var cancelledWhenCancelling = false
        /// Asked after a retryable request error (the policy's retries spent): true proposes the same again
        /// (its transition id lets the server recognise it if only the answer was lost); false throws it.
        var keepTrying: (@Sendable (APIError) -> Bool)?
    }

    /// What the server decided.
    enum Outcome: Sendable {
        /// The proposal (the one given, or CANCELLED in its stead) is the run's state now.
        case accepted(StateProposal, OrchestrationResult)
        /// The server decided otherwise; `state` is the run's state if the answer says.
        case refused(state: StateType?, reason: String, OrchestrationResult)
        /// The server kept asking to wait (`maxWaits`).
        case waitedTooLong
        /// The worker began stopping while the server asked to wait.
        case stopped
    }

    /// Proposes `proposal` until the server decides. A proposal that is retried after a lost answer keeps its
    /// transition id, so the server recognises it; after a WAIT a fresh one (same state) is made. Request
    /// errors (after the policy's retries) are thrown to the caller, who knows what a failure means for it.
    func propose(_ proposal: StateProposal, _ options: Options = Options()) async throws -> Outcome {
        var proposal = proposal
        var ours: Set<String> = [proposal.transitionID]
        var waits = 0
        while true {
            let result: OrchestrationResult
            do {
                result = try await client.setState(runID, proposal, policy: options.policy)
            } catch let error as APIError where error.isRetryable && options.keepTrying?(error) == true {
                continue
            }
            switch Orchestration.decide(proposed: proposal.type, result, ours: options.matchTransition ? ours : nil) {
            case .accepted:
                return .accepted(proposal, result)
            case .wait(let seconds):
                waits += 1
                if waits > options.maxWaits { return .waitedTooLong }
                let what = proposal.type.rawValue + (proposal.name == proposal.type.defaultName ? "" : "/\(proposal.name)")
                if options.logWaits { log.info("server asked to wait \(String(format: "%.1f", seconds)) s before \(what)", run: runID) }
                guard await pause(seconds, unless: options.waitUnless) else { return .stopped }
                if options.freshAfterWait {
                    var again = StateProposal(proposal.type, name: proposal.name, message: proposal.message, force: proposal.force)
                    again.details = proposal.details
                    proposal = again
                    ours.insert(proposal.transitionID)
                }
            case .proposeCancelled where options.cancelledWhenCancelling:
                proposal = StateProposal(.cancelled, message: FinalState.cancelledInstead(of: proposal.message), force: true)
                ours.insert(proposal.transitionID)
            case .proposeCancelled:
                return .refused(state: .cancelling, reason: result.details?.reason ?? result.status.rawValue, result)
            case .refused(let state, let reason):
                return .refused(state: state, reason: reason, result)
            }
        }
    }

    /// Gives a claimed run that has not started back to its pool (SCHEDULED), so another worker can take it;
    /// a WAIT answer is not waited out.
    func handBack(because message: String) async {
        do {
            switch try await propose(StateProposal(.scheduled, message: message), Options(maxWaits: 0)) {
            case .accepted(_, let result), .refused(_, _, let result):
                log.info("handed back to the pool (\(result.status.rawValue))")
            case .waitedTooLong, .stopped:
                log.info("handed back to the pool (WAIT)")
            }
        } catch {
            log.error("could not hand the run back: \(error)")
        }
    }

    /// Waits as the server asked; false if the worker reached `phase` meanwhile.
    private func pause(_ seconds: Double, unless phase: Shutdown.Phase) async -> Bool {
        if let shutdown { return await shutdown.sleep(seconds, unless: phase) && !Task.isCancelled }
        try? await Task.sleep(seconds: seconds)
        return !Task.isCancelled
    }
}

/// What to do with the server's answer to a state proposal: one pure rule, used by the claim (PENDING),
/// RUNNING and the final report, so the three cannot drift apart.
enum Orchestration {
    enum Decision: Sendable, Equatable {
        /// The proposal is the run's state now: ACCEPT, or a REJECT that returns our own state (a retried
        /// request whose first answer was lost).
        case accepted
        /// The server asks to propose again after this many seconds.
        case wait(seconds: Double)
        /// The run is being cancelled: a final state can only be CANCELLED now (proposed with force).
        case proposeCancelled
        /// The server decided otherwise (another worker has the run, it is final, it was rescheduled for a
        /// retry, ...). `state` is the run's state if the answer says; proposing the same again cannot help.
        case refused(state: StateType?, reason: String)
    }

    /// - `ours`: the transition ids we proposed, when only those make a returned state of the proposed type
    ///   ours (a claim: another worker's PENDING is not ours); nil when any state of that type counts.
    static func decide(proposed: StateType, status: OrchestrationResult.Status, returned: StateType?,
                       returnedTransitionID: String?, reason: String?, delaySeconds: Double?,
                       ours: Set<String>? = nil) -> Decision {
        switch status {
        case .accept:
            return .accepted
        case .wait:
            return .wait(seconds: max(0.1, delaySeconds ?? 1))
        case .reject where returned == proposed && (ours == nil || returnedTransitionID.map { ours!.contains($0) } == true):
            return .accepted
        case .reject where returned == .cancelling && proposed.isTerminal && proposed != .cancelled:
            return .proposeCancelled
        case .reject, .abort:
            return .refused(state: returned, reason: reason ?? status.rawValue)
        }
    }

    static func decide(proposed: StateType, _ result: OrchestrationResult, ours: Set<String>? = nil) -> Decision {
        decide(proposed: proposed, status: result.status, returned: result.state?.type,
               returnedTransitionID: result.state?.transitionID, reason: result.details?.reason,
               delaySeconds: result.details?.delaySeconds, ours: ours)
    }
}

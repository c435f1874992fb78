import Foundation

/// Claiming a scheduled run: proposing PENDING, which makes the run this worker's only if the server ACCEPTs
/// it (or a REJECT returns our own PENDING after a retried request); ABORT or REJECT mean another worker has
/// it or it is no longer scheduled.
///
/// The server accepts PENDING from a final state (that is how a run is re-run), so a proposal that arrives
/// after another worker claimed, ran and finished the run would run it again. The run is therefore read
/// right before each proposal, and a proposal is never retried blindly: after a failed attempt the run is
/// read again, which also recognises our own PENDING if only the answer was lost. The first proposal of a
/// run the poll returned a moment ago goes without that read: the read after the claim
/// (`confirmFirstClaim`) catches a run that was finished in between, as it does after any read.
struct RunClaim: Sendable {
    let client: PrefectClient
    let shutdown: Shutdown
    /// Lines about the run.
    let log: Logger
    /// Named in the message of a final state restored after a duplicate claim.
    let workerName: String

    /// A poll answer younger than this is taken as the run's state for its first PENDING proposal.
    static let freshPollSeconds = 2.0

    func claim(_ run: FlowRun) async -> Bool {
        let id = run.id
        var ours: Set<String> = []  // every transition id we proposed: any of them may be the one that landed
        func isOurs(_ current: FlowRun) -> Bool {
            current.currentStateType == .pending && current.state?.transitionID.map(ours.contains) == true
        }
        let fresh = run.polledAt.map { Date().timeIntervalSince($0) < Self.freshPollSeconds } ?? false
        var attempt = 0
        var unanswered = false  // a proposal of ours got no answer: it may have landed, making the run ours
        var readFailures = 0
        while true {
            let current: FlowRun
            do {
                // The first proposal of a freshly polled run takes the poll's answer as the run's state.
                current = attempt == 0 && fresh ? run : try await client.readFlowRun(id, policy: .quick)
                readFailures = 0
            } catch {
                guard unanswered else {
                    log.warning("cannot read the run before claiming it: \(error); leaving it for the next poll")
                    return false
                }
                // Left now, a PENDING of ours that landed would stay PENDING with nobody to start it (a poll
                // returns only SCHEDULED runs): keep reading until we know, through a drain too.
                readFailures += 1
                let delay = RetryPolicy.standard.delay(afterAttempt: readFailures, retryAfter: nil)
                log.warning("cannot read the run after a claim attempt whose answer was lost (\(error)); it may be ours, reading it again in \(String(format: "%.1f", delay)) s")
                guard await shutdown.sleep(delay, unless: .terminating) else {
                    log.error("the worker is stopping before it could learn whether its claim landed; the run may stay PENDING")
                    return false
                }
                continue
            }
            if isOurs(current) { return await confirmFirstClaim(run) }
            guard current.currentStateType == .scheduled else {
                log.debug("no longer scheduled (\(current.currentStateType?.rawValue ?? "?")); not claiming it")
                return false
            }
            guard shutdown.phase < .draining else {
                log.info("the worker is stopping; not claiming it")
                return false
            }
            // Given up only here, right after a read that shows the run still SCHEDULED, not ours.
            guard attempt < 20 else {
                log.warning("not claimed after \(attempt) attempts (the server kept asking to wait, or failing); leaving it for the next poll")
                return false
            }
            attempt += 1
            let proposal = StateProposal(.pending)
            ours.insert(proposal.transitionID)
            let result: OrchestrationResult
            do {
                result = try await client.setState(id, proposal, policy: .once)
            } catch let error as APIError where error.isRetryable {
                unanswered = true
                let delay = RetryPolicy.quick.delay(afterAttempt: attempt, retryAfter: error.retryAfter)
                log.debug("claim attempt failed (\(error)); checking the run again in \(String(format: "%.1f", delay)) s")
                // Not cut short by a drain: the run is read once more in any case, as the proposal may have landed.
                _ = await shutdown.sleep(delay, unless: .terminating)
                continue
            } catch {
                log.warning("could not claim: \(error); leaving it for the next poll")
                return false
            }
            switch Orchestration.decide(proposed: .pending, result, ours: ours) {
            case .accepted:
                return await confirmFirstClaim(run)
            case .refused, .proposeCancelled:
                // An earlier attempt of ours may have landed late (its answer was lost): then the run is ours.
                if ours.count > 1, let again = try? await client.readFlowRun(id, policy: .quick), isOurs(again) {
                    return await confirmFirstClaim(run)
                }
                let now = result.state.map { " (run is \($0.type.rawValue))" } ?? ""
                log.info("not claimed: \(result.details?.reason ?? result.status.rawValue)\(now)")
                return false
            case .wait(let delay):
                log.info("server asked to wait \(String(format: "%.1f", delay)) s before PENDING")
                // After an unanswered proposal the run is read once more even if a drain starts meanwhile.
                if await !shutdown.sleep(delay, unless: unanswered ? .terminating : .draining) {
                    log.info("the worker is stopping; not claiming it")
                    return false
                }
            }
        }
    }

    /// The server accepts PENDING from a final state, so a slow PENDING can land after another worker ran the
    /// run to the end: it would reopen a finished run. After a claim the run is read once more; if it ran
    /// since it was polled (its run count or start time moved), its last final state is put back and the run
    /// is left alone.
    func confirmFirstClaim(_ polled: FlowRun) async -> Bool {
        let id = polled.id
        guard let now = try? await client.readFlowRun(id, policy: .quick) else { return true }
        let ranMeanwhile = (now.runCount ?? 0) > (polled.runCount ?? 0) || (now.startTime != nil && now.startTime != polled.startTime)
        guard ranMeanwhile else { return true }
        log.warning("claimed a run another worker finished meanwhile (run count \(polled.runCount ?? 0) → \(now.runCount ?? 0)); restoring its final state, not running it again")
        do {
            let states = try await client.flowRunStates(id)
            if let final = states.last(where: { $0.type.isTerminal }) {
                _ = try await client.restoreState(id, final, message: final.message ?? "Restored by worker '\(workerName)' after a duplicate claim.")
            }
        } catch {
            log.error("could not restore the run's final state: \(error)")
        }
        return false
    }
}

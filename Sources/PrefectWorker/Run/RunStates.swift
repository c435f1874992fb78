import Foundation

/// The states a supervisor proposes or reports for its run: RUNNING before a plain command starts, the last
/// look before a start, and final states through the outbox (`StateReporter` is the loop underneath).
extension FlowRunSupervisor {
    /// False (after reporting CANCELLED or handing the run back) if the run must not start any more.
    func startAllowed() async -> Bool {
        if cancelRequested {
            log.info("cancelled before it started; not starting it")
            await report(.cancelledBeforeStart)
            return false
        }
        if dependencies.shutdown.phase >= .draining {
            await handBack()
            return false
        }
        return true
    }

    /// For worker-owned runs: RUNNING before the job starts. A run the server will not let run is not started.
    /// While the server is away this keeps trying (the same proposal, so a lost answer is recognised), until
    /// the worker is told a second time to stop; the run is then left PENDING for a restarted worker to hand back.
    func proposeRunning() async -> Bool {
        let shutdown = dependencies.shutdown, log = self.log
        var options = StateReporter.Options()
        options.keepTrying = { error in
            guard shutdown.phase < .terminating else {
                log.error("could not propose RUNNING (\(error)) and the worker is stopping; the run stays PENDING")
                return false
            }
            log.warning("could not propose RUNNING yet (\(error)); trying again")
            return true
        }
        let outcome: StateReporter.Outcome
        do {
            outcome = try await reporter.propose(StateProposal(.running), options)
        } catch let error as APIError where error.isRetryable {
            return false  // the worker is stopping: said above
        } catch {
            log.error("could not propose RUNNING: \(error); reporting CRASHED")
            await report(FinalState(type: .crashed, message: "Flow run could not start: the server refused RUNNING: \(error)"))
            return false
        }
        switch outcome {
        case .accepted:
            return true
        case .stopped, .waitedTooLong:
            await handBack()
            return false
        case .refused(let state, _, let result):
            log.warning("server refused RUNNING (\(result.details?.reason ?? "no reason")); not starting the job")
            if state == .cancelling || state == .cancelled {
                await report(.cancelledBeforeStart)
            }
            return false
        }
    }

    // MARK: - Reporting

    /// Reports a final state through the outbox (`Outbox.send(_:_:secrets:force:)`).
    func report(_ final: FinalState, force: Bool = false) async {
        await dependencies.outbox.send(runID, final, secrets: dependencies.secrets, force: force)
    }
}

extension Outbox {
    /// Reports a final state: persisted first, then delivered (reading the run first, so a final state is never
    /// overwritten, and a run being cancelled becomes CANCELLED). If the server is away, the outbox keeps
    /// trying, also after a restart. The message is redacted with `secrets` before it is written anywhere.
    func send(_ id: String, _ final: FinalState, secrets: KnownSecrets, force: Bool = false) async {
        // The transition id is kept with the item, so a retry after a lost answer is recognised.
        await send(id, .finalState(type: final.type.rawValue, message: secrets.redact(final.message),
                                   transitionID: UUID().uuidString.lowercased(), force: force, name: final.name))
    }
}

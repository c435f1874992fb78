import Foundation

/// Watches the runs in flight for CANCELLING (or CANCELLED) and has their supervisors stop them.
///
/// While the events socket is up, cancellations arrive by push (`EventWatch`) and this loop asks the server
/// only when told to: once after every (re)connect, to catch up on what happened while it was down. While the
/// socket is down it asks every `pollSeconds(socket:settings:)`.
struct CancellationWatch: Service {
    let settings: Settings
    let client: PrefectClient
    /// The runs in flight, whose supervisors are told to cancel.
    let registry: RunRegistry
    let push: PushSignals
    let log: Logger

    /// The cadence before push, kept while a proxy refuses WebSockets so cancelling is no slower there.
    static let refusedPollSeconds = 0.5

    /// How often to ask while the events socket is in `socket` (nil: only when rung). Lost (the server
    /// restarting or away): `PREFECT_WORKER_CANCELLATION_POLL_SECONDS`, 10 s as Prefect's fallback, since the
    /// socket will soon be back. Refused: 0.5 s, as before push, since it may never come up; unless the user
    /// set the setting, which then holds in both cases.
    static func pollSeconds(socket: SocketLoop.State, settings: Settings) -> Double? {
        switch socket {
        case .up: nil
        case .lost: settings.cancellationPollSeconds
        case .refused: settings.cancellationPollIsSet ? settings.cancellationPollSeconds : refusedPollSeconds
        }
    }

    /// How soon a check that failed is asked again: at the socket's cadence, and with the socket up (the catch-up
    /// after a reconnect failed) within 2 s.
    static func retrySeconds(socket: SocketLoop.State, settings: Settings) -> Double {
        pollSeconds(socket: socket, settings: settings) ?? min(settings.cancellationPollSeconds, 2)
    }

    /// The runs a check could not ask about, and why.
    struct Unasked {
        var runs: Int
        var error: Error
    }

    func run() async {
        var answered = true
        while !Task.isCancelled {
            let push = self.push
            let wait = answered ? Self.pollSeconds(socket: push.socketState, settings: settings) : Self.retrySeconds(socket: push.socketState, settings: settings)
            await push.checkCancellations.wait(timeout: wait)
            if Task.isCancelled { return }
            let catchUp = answered && push.socketState == .up
            let failure = await check()
            if Task.isCancelled { return }
            guard let unasked = failure else {
                answered = true
                continue
            }
            answered = false
            // Quiet when healthy: DEBUG while the socket is down (the next poll is near, and the API client logs a
            // lasting outage itself); INFO when the catch-up after a (re)connect failed, the one check that finds a
            // cancellation made while the socket was down. Its retries are DEBUG again.
            let again = Self.retrySeconds(socket: push.socketState, settings: settings)
            log.log(catchUp ? .info : .debug, "could not check \(unasked.runs) run(s) in flight for cancellation (\(unasked.error)); asking again in \(String(format: "%g", again)) s")
        }
    }

    /// Asks the server which runs in flight are CANCELLING (or were CANCELLED) and has their supervisors stop
    /// them. An idle worker makes no request. Returns what could not be asked (nil: all of it was).
    @discardableResult
    func check() async -> Unasked? {
        var unasked: Unasked?
        let ids = await self.registry.runIDs
        for start in stride(from: 0, to: ids.count, by: 200) {
            let chunk = Array(ids[start..<min(start + 200, ids.count)])
            let filter = JSON.object([
                "flow_runs": .object([
                    "id": .object(["any_": .array(chunk.map(JSON.string))]),
                    "state": .object(["type": .object(["any_": .array(["CANCELLING", "CANCELLED"])])]),
                ]),
                "limit": .int(chunk.count),
            ])
            let runs: [FlowRun]
            do {
                runs = try await client.filterFlowRuns(filter, policy: .once)
            } catch {
                unasked = Unasked(runs: (unasked?.runs ?? 0) + chunk.count, error: error)
                continue
            }
            for run in runs where await self.registry.supervisor(run.id)?.requestCancel() == true {
                self.log.info("run is \(run.currentStateType?.rawValue ?? "being cancelled"); cancelling it", run: run.id)
            }
        }
        return unasked
    }
}

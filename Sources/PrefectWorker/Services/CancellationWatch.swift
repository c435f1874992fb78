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

    func run() async {
        var answered = true
        while !Task.isCancelled {
            let push = self.push
            // With the socket up, a check that failed (the catch-up after a reconnect) is asked again within 2 s.
            let wait = Self.pollSeconds(socket: push.socketState, settings: settings) ?? (answered ? nil : min(settings.cancellationPollSeconds, 2))
            await push.checkCancellations.wait(timeout: wait)
            if Task.isCancelled { return }
            answered = await check()
        }
    }

    /// Asks the server which runs in flight are CANCELLING (or were CANCELLED) and has their supervisors stop
    /// them. An idle worker makes no request. False if the server could not be asked.
    @discardableResult
    func check() async -> Bool {
        var answered = true
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
            guard let runs = try? await client.filterFlowRuns(filter, policy: .once) else {
                answered = false
                continue
            }
            for run in runs where await self.registry.supervisor(run.id)?.requestCancel() == true {
                self.log.info("run is \(run.currentStateType?.rawValue ?? "being cancelled"); cancelling it", run: run.id)
            }
        }
        return answered
    }
}

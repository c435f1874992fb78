import Foundation
import Synchronization

/// The pool's flow-run events, pushed over Prefect's events WebSocket (`/api/events/out`), so the worker need
/// not poll to learn of them: a run of ours CANCELLING (or CANCELLED) is stopped at once, and a run of the
/// pool becoming due, or a change of the pool or one of its deployments, is polled for at once (`PollCadence`).
/// Prefetch, `--limit` and claiming stay with `PollService`.
///
/// Nothing is missed while the socket is down: it reconnects with backoff and jitter, every (re)connect rings
/// a catch-up poll of cancellations and due runs, and meanwhile `CancellationWatch` polls at its fallback
/// cadence (`CancellationWatch.pollSeconds`: slow while the socket is lost, as before push while a proxy refuses
/// it). State changes are logged once each; a healthy stream is quiet.
struct EventWatch: Service {
    let settings: Settings
    let client: PrefectClient
    /// The pool's id names the events to subscribe to.
    let lookups: RunLookups
    /// The runs in flight, for a pushed cancellation.
    let registry: RunRegistry
    let push: PushSignals
    let metrics: Metrics
    let log: Logger

    /// The state-change events the worker acts on: cancellation, and the SCHEDULED-type names that make a
    /// run due (new, retried, late, resumed, released by a concurrency limit).
    static let eventNames = ["Cancelling", "Cancelled", "Scheduled", "Late", "AwaitingRetry", "AwaitingConcurrencySlot", "Resuming"]
        .map { "prefect.flow-run." + $0 } + poolChangeNames + pauseNames + resumeNames

    /// Changes after which the server may hold runs the worker has no event for: a new or changed deployment
    /// (the server's scheduler inserts a schedule's runs without events; a resumed deployment's too), a pool
    /// or queue given another limit (`updated`), or resumed (`resumeNames`).
    static let poolChangeNames = ["prefect.deployment.created", "prefect.deployment.updated",
                                  "prefect.work-pool.updated", "prefect.work-queue.updated"]

    /// A pool or queue resumed says so only by its status event, `ready` (or `not-ready` while no worker is
    /// online or the queue was not polled lately), which also comes when a worker's first heartbeat or poll
    /// makes it ready: so one counts as a change only for a pool or queue seen `paused` before.
    static let pauseNames = ["prefect.work-pool.paused", "prefect.work-queue.paused"]
    static let resumeNames = ["prefect.work-pool.ready", "prefect.work-pool.not-ready",
                              "prefect.work-queue.ready", "prefect.work-queue.not-ready"]

    /// The pools and queues seen paused (`prefect.work-pool.<id>`, `prefect.work-queue.<id>`).
    let paused = PausedResources()

    func run() async {
        let seen = EventIDs()
        let backfill = Backfill()
        let settings = settings
        await loop.run {
            guard let poolID = self.lookups.pool?.id else { throw WebSocketError(url: "/events/out", reason: "the work pool is not known yet") }
            // A pool paused before the stream began has sent its `paused` event already.
            if self.lookups.pool?.isPaused == true { self.paused.insert("prefect.work-pool.\(poolID)") }
            let since = backfill.since ?? Date().addingTimeInterval(-60)
            backfill.since = since
            let subscription = try await EventSubscription.open(
                client: self.client, token: settings.isCloud ? settings.apiKey : settings.authString,
                filter: EventSubscription.filter(names: Self.eventNames, anyResource: ["prefect.work-pool.\(poolID)"], since: since),
                timeout: min(settings.client.requestTimeout, 30), seen: seen)
            return Session(subscription: subscription, watch: self, backfill: backfill)
        }
    }

    /// The reconnect loop, in the events stream's words.
    var loop: SocketLoop {
        let settings = settings
        return SocketLoop(
            messages: Self.messages(settings: settings),
            isReady: { self.lookups.pool?.id != nil },
            onChange: { state in
                self.metrics.eventSocket(state)
                self.push.socketChanged(state)
                if state != .up { self.metrics.eventSocketReconnecting() }
            },
            emit: { self.log.log($0, $1) },
            apiAnswers: { self.client.failingSeconds == 0 })
    }

    /// The loop's lines; while the socket is down they say how often cancellations are polled.
    static func messages(settings: Settings) -> SocketLoop.Messages {
        let pool = settings.pool
        return SocketLoop.Messages(
            opened: { url in
                let rest = settings.querySecondsIsSet
                    ? "polling for runs every \(String(format: "%g", settings.querySeconds)) s (--query-seconds)"
                    : "polling for runs every \(String(format: "%g", PollCadence.restSeconds)) s as a safety net, and when a known run is due"
                return "subscribed to work pool '\(pool)' events at \(url): cancellations and new runs arrive by push; \(rest)"
            },
            reconnected: { String(format: "events stream reconnected after %.0f s; catching up on cancellations and due runs", $0) },
            name: "events stream",
            closedByServer: "the server closed the stream",
            stillDown: "events stream still down",
            meanwhile: { state in
                let seconds = CancellationWatch.pollSeconds(socket: state, settings: settings) ?? settings.cancellationPollSeconds
                return "polling for cancellations every \(String(format: "%g", seconds)) s (PREFECT_WORKER_CANCELLATION_POLL_SECONDS) and reconnecting with backoff"
            },
            refused: { problem in
                let seconds = CancellationWatch.pollSeconds(socket: .refused, settings: settings) ?? settings.cancellationPollSeconds
                let how = settings.cancellationPollIsSet
                    ? "as PREFECT_WORKER_CANCELLATION_POLL_SECONDS says"
                    : "the cadence before push; set PREFECT_WORKER_CANCELLATION_POLL_SECONDS (Prefect's fallback is 10) to ask less often"
                return "WebSockets are refused on the way to the server (\(problem)): a proxy or load balancer in between may not pass them. "
                    + "Cancellations are polled every \(String(format: "%g", seconds)) s meanwhile (about \(String(format: "%.3g", 60 / seconds)) requests/min while runs are in flight; \(how)); "
                    + "new runs wait for the next poll (--query-seconds); retrying the stream with backoff"
            })
    }

    /// One subscription, served: each event is handed to `handle`, and the backfill of the next connect
    /// starts a minute before the newest one seen.
    private struct Session: SocketSession {
        let subscription: EventSubscription
        let watch: EventWatch
        let backfill: Backfill
        var url: String { subscription.socket.url }

        func serve() async throws {
            while let event = try await subscription.next() {
                watch.metrics.eventReceived(event.name)
                if let occurred = event.occurred {
                    backfill.since = max(backfill.since ?? .distantPast, occurred.addingTimeInterval(-60))
                }
                await watch.handle(event)
            }
        }

        func close() async { await subscription.close() }
    }

    /// Acts on one event: a run of ours cancelled is stopped, a run of our queues due is polled for.
    func handle(_ event: EventSubscription.Event) async {
        let type = event.stateType ?? Self.stateType(ofName: event.name)
        let lag = event.occurred.map { String(format: ", %.3f s after it occurred", Date().timeIntervalSince($0)) } ?? ""
        self.log.debug("event \(event.name) for \(event.resourceID)\(lag)")
        if Self.pauseNames.contains(event.name) {
            paused.insert(event.resourceID)
            return
        }
        if Self.resumeNames.contains(event.name) {
            if paused.remove(event.resourceID) { self.push.poolChanged() }
            return
        }
        if Self.poolChangeNames.contains(event.name) {
            if event.name.hasPrefix("prefect.deployment."), isOfAnotherQueue(event) { return }
            self.push.poolChanged()
            return
        }
        switch type {
        case "CANCELLING", "CANCELLED":
            guard let id = event.flowRunID else { return }
            if await self.registry.supervisor(id)?.requestCancel() == true {
                self.log.info("run is \(type ?? "being cancelled") (pushed by the events stream); cancelling it", run: id)
            }
        case "SCHEDULED":
            // A worker serving some queues of the pool ignores runs of the others.
            if isOfAnotherQueue(event) { return }
            self.push.pollNow.ring()
        default:
            return
        }
    }

    /// Whether the event names a work queue this worker does not serve (a worker serving some queues of the
    /// pool ignores runs and deployments of the others).
    private func isOfAnotherQueue(_ event: EventSubscription.Event) -> Bool {
        guard !settings.workQueues.isEmpty, let queue = event.relatedNames["work-queue"] else { return false }
        return !settings.workQueues.contains(queue)
    }

    static func stateType(ofName name: String) -> String? {
        switch name {
        case "prefect.flow-run.Cancelling": "CANCELLING"
        case "prefect.flow-run.Cancelled": "CANCELLED"
        default: eventNames.contains(name) ? "SCHEDULED" : nil
        }
    }
}

/// The pools and queues seen paused, kept across reconnects.
final class PausedResources: Sendable {
    private let ids = Mutex<Set<String>>([])

    init() {}

    func insert(_ id: String) { ids.withLock { _ = $0.insert(id) } }

    /// Whether `id` was paused (it is not any more).
    func remove(_ id: String) -> Bool { ids.withLock { $0.remove(id) != nil } }
}

/// Where the next subscription's replay starts, kept across reconnects.
private final class Backfill: Sendable {
    private let value = Mutex<Date?>(nil)
    var since: Date? {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}

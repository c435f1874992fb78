import Foundation

/// The pool's flow-run events, pushed over Prefect's events WebSocket (`/api/events/out`), so the worker need
/// not poll to learn of them: a run of ours CANCELLING (or CANCELLED) is stopped at once, and a run of the
/// pool becoming due is polled for at once. Prefetch, `--limit` and claiming stay with `PollService`.
///
/// Nothing is missed while the socket is down: it reconnects with backoff and jitter, every (re)connect rings
/// a catch-up poll of cancellations and due runs, and meanwhile `CancellationWatch` polls at
/// `PREFECT_WORKER_CANCELLATION_POLL_SECONDS`. State changes are logged once each; a healthy stream is quiet.
struct EventWatch: Service {
    let context: WorkerContext
    var settings: Settings { context.settings }

    /// The state-change events the worker acts on: cancellation, and the SCHEDULED-type names that make a
    /// run due (new, retried, late, resumed, released by a concurrency limit).
    static let eventNames = ["Cancelling", "Cancelled", "Scheduled", "Late", "AwaitingRetry", "AwaitingConcurrencySlot", "Resuming"]
        .map { "prefect.flow-run." + $0 }

    /// Reconnects: 1, 2, 4 … 30 s apart, ±30 %.
    static let reconnectPolicy = RetryPolicy(maxAttempts: .max, baseDelay: 1, maxDelay: 30, jitter: 0.3)

    func run() async {
        let seen = EventIDs()
        var backfillSince: Date?
        var failures = 0
        var outage = OutageLog()
        var everUp = false
        while !Task.isCancelled {
            guard let poolID = context.pool?.id else {
                try? await Task.sleep(seconds: 1)
                continue
            }
            let since = backfillSince ?? Date().addingTimeInterval(-60)
            backfillSince = since
            let problem: String
            do {
                let subscription = try await EventSubscription.open(
                    client: context.client, token: settings.isCloud ? settings.apiKey : settings.authString,
                    filter: EventSubscription.filter(names: Self.eventNames, anyResource: ["prefect.work-pool.\(poolID)"], since: since),
                    timeout: min(settings.client.requestTimeout, 30), seen: seen)
                failures = 0
                context.metrics.eventSocket(up: true)
                context.push.socketChanged(up: true)
                let downFor = outage.recovered()
                if !everUp {
                    context.log.info("subscribed to work pool '\(settings.pool)' events at \(subscription.socket.url): cancellations and new runs arrive by push")
                } else if let downFor {
                    context.log.info(String(format: "events stream reconnected after %.0f s; catching up on cancellations and due runs", downFor))
                }
                everUp = true
                do {
                    while let event = try await subscription.next() {
                        context.metrics.eventReceived(event.name)
                        if let occurred = event.occurred {
                            backfillSince = max(backfillSince ?? .distantPast, occurred.addingTimeInterval(-60))
                        }
                        await handle(event)
                    }
                    problem = "the server closed the stream"
                } catch {
                    problem = "\(error)"
                }
                await subscription.close()
            } catch {
                problem = "\(error)"
            }
            if Task.isCancelled { return }
            context.metrics.eventSocket(up: false)
            context.push.socketChanged(up: false)
            context.metrics.eventSocketReconnecting()
            failures += 1
            let delay = Self.reconnectPolicy.delay(afterAttempt: failures, retryAfter: nil)
            // Quiet when healthy: a moment's loss (a busy server closing the socket) is INFO; a WARNING once the
            // stream has been down longer than the API client's quiet period.
            switch outage.failed() {
            case .debug:
                context.log.debug("events stream still down: \(problem); retrying in \(String(format: "%.1f", delay)) s")
            case let level:
                context.log.log(level, "events stream \(everUp ? "lost" : "unavailable")\(level == .warning ? " for over \(Int(PrefectClient.quietFailureSeconds)) s" : ""): \(problem); polling for cancellations every \(String(format: "%g", settings.cancellationPollSeconds)) s (PREFECT_WORKER_CANCELLATION_POLL_SECONDS) and reconnecting with backoff")
            }
            try? await Task.sleep(seconds: delay)
        }
    }

    /// Acts on one event: a run of ours cancelled is stopped, a run of our queues due is polled for.
    func handle(_ event: EventSubscription.Event) async {
        let type = event.stateType ?? Self.stateType(ofName: event.name)
        let lag = event.occurred.map { String(format: ", %.3f s after it occurred", Date().timeIntervalSince($0)) } ?? ""
        context.log.debug("event \(event.name) for \(event.resourceID)\(lag)")
        switch type {
        case "CANCELLING", "CANCELLED":
            guard let id = event.flowRunID else { return }
            if await context.registry.supervisor(id)?.requestCancel() == true {
                context.log.info("run is \(type ?? "being cancelled") (pushed by the events stream); cancelling it", run: id)
            }
        case "SCHEDULED":
            // A worker serving some queues of the pool ignores runs of the others.
            if !settings.workQueues.isEmpty, let queue = event.relatedNames["work-queue"], !settings.workQueues.contains(queue) { return }
            context.push.pollNow.ring()
        default:
            return
        }
    }

    static func stateType(ofName name: String) -> String? {
        switch name {
        case "prefect.flow-run.Cancelling": "CANCELLING"
        case "prefect.flow-run.Cancelled": "CANCELLED"
        default: eventNames.contains(name) ? "SCHEDULED" : nil
        }
    }
}

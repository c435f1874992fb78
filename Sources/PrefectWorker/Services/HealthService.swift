import Foundation

/// Serves `/health` and `/metrics` (`--with-healthcheck`) from a bound `HealthServer`. The server's thread
/// answers until the process exits, through the drain and the flush; stopping the service ends only its wait.
struct HealthService: Service {
    let server: HealthServer
    let settings: Settings
    let log: Logger

    /// What `/health` and `/metrics` read.
    struct Sources: Sendable {
        let settings: Settings
        let status: WorkerStatus
        let metrics: Metrics
        /// Whether the worker is waiting out a maintenance back-off.
        let client: PrefectClient
        let shutdown: Shutdown
    }

    /// Binds the server's socket now, so a port in use fails the start-up with a clear message.
    init(_ sources: Sources, log: Logger) throws {
        self.settings = sources.settings
        self.log = log
        self.server = try HealthServer(host: settings.webserverHost, port: settings.webserverPort) { method, path in
            Self.response(sources, method: method, path: path)
        }
    }

    func run() async {
        server.start()
        log.info("health and metrics on http://\(settings.webserverHost):\(server.port)/health and /metrics")
        await Latch().wait()  // until the stage is stopped
    }

    /// `/health` follows Prefect's rule: healthy while the last successful poll (or the start, before the
    /// first poll) is within 30 query intervals. `/metrics` is the Prometheus exposition.
    static func response(_ sources: Sources, method: String, path: String) -> HealthServer.Response {
        let settings = sources.settings
        guard method == "GET" || method == "HEAD" else {
            return HealthServer.Response(status: 405, body: #"{"message":"method not allowed"}"#)
        }
        let status = sources.status
        switch path {
        case "/health":
            // As Prefect's `_is_within_polling_window`: the window counts from the later of the last poll and
            // the end of the latest maintenance back-off, so waiting out maintenance is not being stuck.
            let last = max(status.lastPoll ?? status.started, sources.client.maintenanceBackoffEndsAt ?? .distantPast)
            let age = Date().timeIntervalSince(last)
            // A draining worker no longer polls, on purpose; it is healthy while it waits for its runs.
            let healthy = age < settings.querySeconds * 30 || sources.shutdown.phase >= .draining
            let body = JSON.object([
                "message": .string(healthy ? "OK" : "Worker may be unresponsive at this time"),
                "worker": .string(settings.workerName), "pool": .string(settings.pool),
                "runs_in_flight": .int(sources.metrics.inFlight),
                "last_poll": status.lastPoll.map { .string(Timestamp.format($0)) } ?? .null,
                "last_heartbeat": status.lastHeartbeat.map { .string(Timestamp.format($0)) } ?? .null,
            ])
            return HealthServer.Response(status: healthy ? 200 : 503, body: body.encoded())
        case "/metrics":
            return HealthServer.Response(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                                         body: sources.metrics.render(lastHeartbeat: status.lastHeartbeat, lastPoll: status.lastPoll))
        default:
            return HealthServer.Response(status: 404, body: #"{"message":"not found"}"#)
        }
    }
}

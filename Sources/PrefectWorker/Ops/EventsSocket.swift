import Foundation

/// Delivers the worker's events over Prefect's events WebSocket (`/api/events/in`), as Prefect's own events
/// client does (`PrefectEventsClient` in `prefect/events/clients.py`): subprotocol `prefect`, the auth message
/// `{"type":"auth","token":…}` answered by `auth_success` (on Prefect Cloud the API key header instead), then
/// one text message per event. A socket costs one API request to open, however many events it carries; each
/// event over REST is part of a `POST /events`.
///
/// - **Confirmed per batch:** after a batch, a ping; its pong shows the server has read every event before it
///   (Prefect's client pings every 700 events or 30 s and resends what is unconfirmed after reconnecting).
///   Only then is the batch delivered. Unconfirmed, the whole batch goes by `POST /events` instead: events
///   carry ids and the server stores an id once, so a resent event is at worst seen twice by the server's
///   live consumers, as it is after Prefect's client resends.
/// - **Opened when there is something to send, closed after `idleSeconds` without events** (300 s: a run in
///   flight sends a heartbeat event at least every 180 s, Prefect's default, so the socket stays open while
///   runs are in flight and is opened once per busy period, not once per run).
/// - **REST is the fallback:** a socket that cannot be opened or fails sends its batch, and every batch until
///   the next attempt (backoff from 5 s to 5 min), by `POST /events`.
actor EventsSocket {
    typealias Connect = @Sendable () async throws -> WebSocket

    private let client: PrefectClient
    private let log: Logger
    private let connect: Connect
    /// The auth message's token (the auth string, or null); nil on Prefect Cloud, which takes the API key header.
    private let authToken: String??
    let idleSeconds: Double
    /// How long the auth answer and a batch's pong may take.
    let answerTimeout: Double
    static let retryPolicy = RetryPolicy(maxAttempts: .max, baseDelay: 5, maxDelay: 300, jitter: 0.3)

    private var socket: WebSocket?
    private var failures = 0
    private var retryAt: Date?
    private var outage = OutageLog()
    private var idleCloser: Task<Void, Never>?
    private var lastUsed = Date()

    init(client: PrefectClient, log: Logger, connect: Connect? = nil, authToken: String??, idleSeconds: Double = 300, answerTimeout: Double = 10) {
        self.client = client
        self.log = log
        // A socket that cannot be opened within the answer timeout leaves the batch to REST rather than hold it.
        self.connect = connect ?? {
            try await client.webSocket(path: "/events/in", subprotocol: "prefect", limits: WebSocket.Limits(handshakeTimeout: answerTimeout))
        }
        self.authToken = authToken
        self.idleSeconds = idleSeconds
        self.answerTimeout = answerTimeout
    }

    /// As the worker's settings ask: the auth string (or none) on a server, the API key header on Prefect Cloud.
    init(client: PrefectClient, settings: Settings, log: Logger) {
        self.init(client: client, log: log, authToken: settings.isCloud ? nil : .some(settings.authString))
    }

    /// Whether a socket is open now.
    var isOpen: Bool { socket != nil }

    /// Delivers one batch: over the socket when it is open or can be opened, else by `POST /events`. Throws
    /// when neither took it (the shipper keeps the batch and tries again). One caller at a time, as the
    /// shipper's loop and then its flush call it (the actor's awaits would otherwise interleave two opens).
    func deliver(_ batch: JSON) async throws {
        guard case .array(let events) = batch, !events.isEmpty else { return }
        if retryAt.map({ Date() >= $0 }) ?? true {
            // A socket kept open may have been closed by the server meanwhile (a restart, a load balancer's idle
            // timeout): then the batch is sent again over a new one at once, as Prefect's client reconnects.
            for attempt in 1...2 {
                let reused = socket != nil
                do {
                    try await sendOverSocket(events)
                    return
                } catch is CancellationError {
                    throw CancellationError()
                } catch {
                    if reused, attempt == 1 {
                        log.debug("events socket closed since its last use (\(error)); opening a new one")
                        await dropSocket()
                        continue
                    }
                    await socketFailed(error)
                    break
                }
            }
        }
        try await client.send("POST", "/events", body: batch, what: "emitting worker events", policy: .quick)
    }

    /// Closes the socket (at shutdown, after the last events were delivered).
    func close() async {
        idleCloser?.cancel()
        idleCloser = nil
        let open = socket
        socket = nil
        await open?.close()
    }

    private func sendOverSocket(_ events: [JSON]) async throws {
        let socket = try await openSocket()
        for event in events { try await socket.send(text: event.encoded()) }
        try await withTimeout(seconds: answerTimeout, error: Self.noAnswer(socket, "the server did not confirm the events (no pong)", answerTimeout)) {
            try await socket.ping()
        }
        lastUsed = Date()
        scheduleIdleClose()
    }

    private func openSocket() async throws -> WebSocket {
        if let socket { return socket }
        let opened = try await connect()
        do {
            if case .some(let token) = authToken {
                try await opened.authenticate(token: token, within: answerTimeout) {
                    "the events socket refused our credentials (\($0)); check PREFECT_API_AUTH_STRING"
                }
            }
        } catch {
            await opened.close()
            throw error
        }
        socket = opened
        failures = 0
        retryAt = nil
        if let downFor = outage.recovered() {
            log.info(String(format: "worker events go over the events socket %@ again, after %.0f s by POST /events", opened.url, downFor))
        } else {
            log.debug("worker events go over the events socket \(opened.url)")
        }
        return opened
    }

    private func dropSocket() async {
        let broken = socket
        socket = nil
        idleCloser?.cancel()
        idleCloser = nil
        await broken?.close()
    }

    private func socketFailed(_ error: Error) async {
        await dropSocket()
        failures += 1
        let delay = Self.retryPolicy.delay(afterAttempt: failures, retryAfter: nil)
        retryAt = Date().addingTimeInterval(delay)
        let level = outage.failed()
        log.log(level == .warning ? .info : level, "worker events socket failed: \(error); sending worker events by POST /events, trying the socket again in \(String(format: "%.0f", delay)) s")
    }

    /// Closes the socket once it has carried nothing for `idleSeconds`.
    private func scheduleIdleClose() {
        guard idleCloser == nil else { return }
        idleCloser = Task { [idleSeconds] in
            while !Task.isCancelled {
                let wait = self.idleRemaining(idleSeconds)
                if wait <= 0 { break }
                do { try await Task.sleep(seconds: wait) } catch { return }
            }
            await self.closeIdle()
        }
    }

    private func idleRemaining(_ idle: Double) -> Double { idle - Date().timeIntervalSince(lastUsed) }

    private func closeIdle() async {
        idleCloser = nil
        guard let open = socket else { return }
        socket = nil
        log.debug("events socket idle for \(String(format: "%g", idleSeconds)) s; closing it until the next event")
        await open.close()
    }

    /// The error of an answer that did not come in time.
    private static func noAnswer(_ socket: WebSocket, _ what: String, _ seconds: Double) -> @Sendable () -> Error {
        { WebSocketError(url: socket.url, reason: String(format: "%@ within %g s", what, seconds)) }
    }
}

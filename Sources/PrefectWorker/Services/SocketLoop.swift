import Foundation

/// One WebSocket the worker keeps open (the events stream, the worker channel): waits until the pool is known,
/// connects, serves until the connection ends, and reconnects with backoff and jitter. It tells `onChange`
/// after every attempt whether the socket is up, lost or refused, and logs each state change once: the first
/// connect and every reconnect at INFO, an outage's first failure at INFO and a WARNING once it lasts
/// (`OutageLog`), the failed reconnects between them at DEBUG.
struct SocketLoop: Sendable {
    /// What the loop knows of its socket after an attempt.
    enum State: Sendable, Equatable {
        case up
        /// It dropped, or the connection (TCP, TLS, the upgrade's answer in time) failed: the server restarting
        /// or away. It will very likely come back.
        case lost
        /// The last `refusalsToClassify` attempts in a row were answered with an HTTP status instead of the
        /// upgrade (101) while REST calls went through: a proxy or load balancer on the way that does not pass
        /// WebSockets. It may never come up.
        case refused
    }

    /// The lines a loop writes, in its own words.
    struct Messages: Sendable {
        /// The first connect, given the socket's URL.
        var opened: @Sendable (_ url: String) -> String
        /// A reconnect, given how long the socket was down.
        var reconnected: @Sendable (_ downFor: Double) -> String
        /// The subject of the failure lines: "events stream", "worker channel".
        var name: String
        /// Why a session that ended without an error ended: "the server closed the stream".
        var closedByServer: String
        /// A failed reconnect logged at DEBUG: "events stream still down".
        var stillDown: String
        /// What the worker does while the socket is down, ending a failure line.
        var meanwhile: @Sendable (State) -> String
        /// Said once when the socket becomes refused (nil: nothing more than the failure lines).
        var refused: (@Sendable (_ problem: String) -> String)?
    }

    /// Thrown by `connect` when retrying is pointless (a server without the endpoint): the loop logs
    /// `message` at INFO and returns.
    struct GiveUp: Error {
        var message: String
    }

    /// Reconnects: 1, 2, 4 … 30 s apart, ±30 %.
    static let reconnectPolicy = RetryPolicy(maxAttempts: .max, baseDelay: 1, maxDelay: 30, jitter: 0.3)
    /// How long a session must last before the backoff starts over. A server that accepts the upgrade and drops
    /// it at once (auth then close, a 1011 from a busy server) would otherwise be reconnected every second for
    /// as long as it does so, and every upgrade is an API request (counted against Prefect Cloud's rate limit):
    /// a shorter session counts as a failed attempt, so such a server gets the backoff of one that is down
    /// (up to 30 s apart). 30 s: longer than any setup (auth, filter, the first frames), shorter than a session
    /// worth having.
    static let healthySessionSeconds = 30.0
    /// Two answers in a row, not one: a server restarting behind a load balancer may answer 502/503 for a
    /// moment, which is a loss; a second answer about 1 s later (the first backoff) shows a path that refuses
    /// the upgrade itself. It costs one backoff step before the refused cadence starts. An answer while the
    /// REST API is failing too (`apiAnswers`: a server away or in maintenance behind its load balancer) is a
    /// loss, however often it comes.
    static let refusalsToClassify = 2

    var messages: Messages
    /// Whether the loop may connect (the pool is known); asked every `readyCheckSeconds` until it is.
    var isReady: @Sendable () -> Bool
    /// Told after every attempt: `.up` after each connect, `.lost` or `.refused` after each failure.
    var onChange: @Sendable (State) -> Void
    var emit: @Sendable (Log.Level, String) -> Void
    /// Whether REST calls to the same server go through now (the API client is not failing).
    var apiAnswers: @Sendable () -> Bool = { true }
    var policy = SocketLoop.reconnectPolicy
    var quietSeconds = PrefectClient.quietFailureSeconds
    var readyCheckSeconds = 1.0
    /// The pause between attempts (tests record it instead of waiting).
    var sleep: @Sendable (Double) async -> Void = { try? await Task.sleep(seconds: $0) }
    /// Monotonic seconds, to time sessions (tests move it by hand).
    var now: @Sendable () -> Double = { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Connects with `connect` and serves each session until the task is cancelled (or `connect` gives up).
    func run(connect: () async throws -> any SocketSession) async {
        var failures = 0
        var refusals = 0
        var state = State.lost
        var everUp = false
        var outage = OutageLog()
        while !Task.isCancelled {
            guard isReady() else {
                await sleep(readyCheckSeconds)
                continue
            }
            let problem: String
            var refusedUpgrade = false
            do {
                let session = try await connect()
                let connectedAt = now()
                refusals = 0
                state = .up
                onChange(.up)
                let downFor = outage.recovered()
                if !everUp {
                    emit(.info, messages.opened(session.url))
                } else if let downFor {
                    emit(.info, messages.reconnected(downFor))
                }
                everUp = true
                do {
                    try await session.serve()
                    problem = messages.closedByServer
                } catch {
                    problem = "\(error)"
                }
                await session.close()
                if now() - connectedAt >= Self.healthySessionSeconds { failures = 0 }
            } catch let giveUp as GiveUp {
                emit(.info, giveUp.message)
                return
            } catch {
                problem = "\(error)"
                refusedUpgrade = (error as? WebSocketError)?.status != nil && apiAnswers()
            }
            if Task.isCancelled { return }
            refusals = refusedUpgrade ? refusals + 1 : 0
            let previous = state
            state = refusals >= Self.refusalsToClassify ? .refused : .lost
            onChange(state)
            failures += 1
            let delay = policy.delay(afterAttempt: failures, retryAfter: nil)
            if state == .refused, previous != .refused, let refused = messages.refused {
                emit(.info, refused(problem))
            }
            // Quiet when healthy: a moment's loss (a busy server closing the socket: 1011) is INFO; a WARNING
            // once it has been down longer than the API client's quiet period.
            switch outage.failed(quietSeconds: quietSeconds) {
            case .debug:
                emit(.debug, "\(messages.stillDown): \(problem); retrying in \(String(format: "%.1f", delay)) s")
            case let level:
                let over = level == .warning ? " for over \(Int(quietSeconds)) s" : ""
                emit(level, "\(messages.name) \(everUp ? "lost" : "unavailable")\(over): \(problem); \(messages.meanwhile(state))")
            }
            await sleep(delay)
        }
    }
}

/// One connected socket as `SocketLoop` serves it.
protocol SocketSession: Sendable {
    /// The URL (credentials redacted), for messages.
    var url: String { get }
    /// Serves until the connection ends: returns when the server closed it normally, throws when it failed.
    func serve() async throws
    func close() async
}

import CCurl
import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A WebSocket client connection (RFC 6455) on libcurl's connect-only mode: curl opens the connection exactly
/// as for REST calls (proxy CONNECT, TLS with the CA file, insecure mode, timeouts: `CurlTransport.Options`);
/// we write the upgrade and the framing. One thread per connection sleeps in poll(2) on the socket and a
/// wake-up pipe, so an idle connection costs no CPU; it answers pings, pings a quiet line to find a dead one,
/// and hands whole messages to `messages`. Call `close()` when done: the thread runs until the connection ends.
final class WebSocket: Sendable {
    /// Bounds and timers of one connection.
    struct Limits: Sendable {
        var maxFrameBytes = 4 << 20
        var maxMessageBytes = 16 << 20
        /// For the TCP/TLS connection and the upgrade's answer together.
        var handshakeTimeout: Double = 30
        /// A line quiet for this long gets a ping; no byte for `pingTimeout` after it ends the connection.
        var pingInterval: Double = 20
        var pingTimeout: Double = 20
        /// How long `close()` waits for the server's close frame.
        var closeTimeout: Double = 2
    }

    enum Message: Sendable, Equatable {
        case text(String)
        case binary(Data)
    }

    /// The URL (credentials redacted), for messages.
    let url: String
    /// The server's messages, in order. Ends without an error after a normal close (1000, 1001, none), and
    /// throws `WebSocketError` when the connection fails or the server closes it with another code.
    let messages: AsyncThrowingStream<Message, Error>

    private let connection: Connection
    private let outgoing = Mutex(Outgoing())
    private let ended = Latch()

    private struct Outgoing {
        var frames: [([UInt8], CheckedContinuation<Void, Error>)] = []
        /// Callers of `ping()` waiting for their ping to be sent.
        var pings: [PingWaiter] = []
        var closeCode: UInt16?
        var done = false
    }

    private init(url: String, connection: Connection) {
        self.url = url
        self.connection = connection
        messages = connection.stream
    }

    /// Opens `url` (ws:// or wss://), offering `subprotocol`, with `headers` ("Name: value") on the upgrade.
    static func connect(url: URL, options: CurlTransport.Options, headers: [String] = [], subprotocol: String? = nil,
                        limits: Limits = Limits()) async throws -> WebSocket {
        let shown = redactedURL(url)
        // Cancelling the calling task ends the wait for the upgrade's answer within a quarter second (a
        // stopping worker must not wait out the handshake timeout of a server that never answers).
        let abandoned = Atomic<Bool>(false)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                WorkerThread.start(name: "prefect-websocket", stackSize: 256 * 1024) {
                    let connection: Connection
                    do {
                        connection = try Connection.open(url: url, shown: shown, options: options, headers: headers,
                                                         subprotocol: subprotocol, limits: limits,
                                                         abandoned: { abandoned.load(ordering: .relaxed) })
                    } catch {
                        continuation.resume(throwing: abandoned.load(ordering: .relaxed) ? CancellationError() : error)
                        return
                    }
                    let socket = WebSocket(url: shown, connection: connection)
                    continuation.resume(returning: socket)
                    socket.run()
                }
            }
        } onCancel: {
            abandoned.store(true, ordering: .relaxed)
        }
    }

    /// Sends one text message; returns once curl has taken all of it.
    func send(text: String) async throws {
        let frame = WebSocketFrame.encode(.text, Array(text.utf8))
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            let accepted = outgoing.withLock { state -> Bool in
                guard !state.done, state.closeCode == nil else { return false }
                state.frames.append((frame, continuation))
                return true
            }
            guard accepted else {
                continuation.resume(throwing: WebSocketError(url: url, reason: "cannot send: the connection is closed"))
                return
            }
            connection.wake()
        }
    }

    /// Sends a ping and returns when the server has answered it: everything sent before has reached the
    /// server (how Prefect's events client confirms the events it sent). Throws when the connection ends first.
    /// Not bounded by itself: the keep-alive fails the connection only when nothing at all arrives for
    /// `Limits.pingTimeout` after a ping (any frame shows the line alive), so a server that sends frames but
    /// never this pong keeps it waiting. A caller that needs the answer in time bounds it (`withTimeout`):
    /// cancelling the caller ends the wait with `CancellationError` (the ping itself stays sent).
    func ping() async throws {
        let waiter = PingWaiter()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
                guard waiter.wait(continuation) else { return }
                let accepted = outgoing.withLock { state -> Bool in
                    guard !state.done, state.closeCode == nil else { return false }
                    state.pings.append(waiter)
                    return true
                }
                guard accepted else {
                    waiter.resume(throwing: WebSocketError(url: url, reason: "cannot ping: the connection is closed"))
                    return
                }
                connection.wake()
            }
        } onCancel: {
            waiter.resume(throwing: CancellationError())
        }
    }

    /// Starts the close handshake and waits (at most `Limits.closeTimeout`) for the connection to end.
    func close(code: UInt16 = 1000) async {
        outgoing.withLock { if $0.closeCode == nil { $0.closeCode = code } }
        connection.wake()
        await ended.wait()
    }

    /// The connection's thread: write what is queued, read what arrived, keep the line alive, sleep in poll.
    private func run() {
        let c = connection
        var pending: [UInt8] = []
        var written = 0
        var waiters: [(end: Int, continuation: CheckedContinuation<Void, Error>)] = []
        var pong: [UInt8]?  // only the latest ping is answered: a flood of pings cannot grow the queue
        var lastReceived = Connection.now()
        var pingSentAt: Double?
        // Callers' pings carry a sequence number, so the keep-alive's pong (empty) answers none of them.
        var pingSeq: UInt64 = 0
        var pongWaiters: [(seq: UInt64, waiter: PingWaiter)] = []
        var closeSentAt: Double?
        var failure: WebSocketError?
        var failureAfterEvents: WebSocketError?  // a read failed after frames arrived: deliver those first
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var events: [WebSocketEvent] = []
        do { events = try c.decoder.feed(c.leftover) } catch { failure = c.fail(error) }

        func queue(_ bytes: [UInt8]) { pending += bytes }

        loop: while failure == nil {
            // Take what callers queued.
            let (frames, pings, closeCode) = outgoing.withLock { state in
                defer { state.frames = []; state.pings = [] }
                return (state.frames, state.pings, state.closeCode)
            }
            for (frame, continuation) in frames {
                queue(frame)
                waiters.append((pending.count, continuation))
            }
            if !pings.isEmpty {
                pingSeq += 1
                queue(WebSocketFrame.encode(.ping, withUnsafeBytes(of: pingSeq.bigEndian, Array.init)))
                if pingSentAt == nil { pingSentAt = Connection.now() }  // unanswered, it fails the connection
                pongWaiters += pings.map { (pingSeq, $0) }
            }
            if let closeCode, closeSentAt == nil {
                queue(WebSocketFrame.encode(.close, WebSocketFrame.closePayload(code: closeCode)))
                closeSentAt = Connection.now()
            }

            // Handle what arrived (and what the handshake read past its answer).
            for event in events {
                lastReceived = Connection.now()
                pingSentAt = nil  // any frame shows the line is alive, not only the pong
                switch event {
                case .text(let text): if closeSentAt == nil { c.continuation.yield(.text(text)) }
                case .binary(let bytes): if closeSentAt == nil { c.continuation.yield(.binary(Data(bytes))) }
                case .ping(let payload): pong = WebSocketFrame.encode(.pong, payload)
                case .pong(let payload):
                    guard payload.count == 8 else { break }
                    let answered = payload.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                    while let first = pongWaiters.first, first.seq <= answered {
                        pongWaiters.removeFirst()
                        first.waiter.resume()
                    }
                case .close(let code, let reason):
                    if closeSentAt == nil {
                        queue(WebSocketFrame.encode(.close, WebSocketFrame.closePayload(code: code == 1005 ? 1000 : code)))
                        c.flush(pending, from: written)
                    }
                    if ![1000, 1001, 1005].contains(code) {
                        failure = WebSocketError(url: url, reason: "the server closed the connection with code \(code)" + (reason.isEmpty ? "" : " (\(reason))"), closeCode: code)
                    }
                    break loop
                }
            }
            events = []
            if let later = failureAfterEvents {
                failure = later
                break
            }
            if written == pending.count, let next = pong {
                queue(next)
                pong = nil
            }

            // Write.
            do {
                written = try c.write(pending, from: written)
            } catch {
                failure = error
                break
            }
            while let first = waiters.first, first.end <= written {
                waiters.removeFirst()
                first.continuation.resume()
            }
            if written == pending.count {
                pending = []
                written = 0
            }

            // Read until curl has nothing more (TLS may hold decrypted bytes the socket no longer shows).
            do {
                while let count = try c.read(into: &buffer) {
                    events += try c.decoder.feed(buffer[0..<count])
                }
            } catch let error as WebSocketError {
                failureAfterEvents = error
                continue
            } catch {
                failureAfterEvents = c.fail(error as! WebSocketProtocolError)
                continue
            }
            if !events.isEmpty { continue }

            // Timers: the close handshake's bound, the keep-alive ping and its answer.
            let now = Connection.now()
            if let sent = closeSentAt, now - sent >= c.limits.closeTimeout { break }
            if let sent = pingSentAt, now - sent >= c.limits.pingTimeout {
                failure = WebSocketError(url: url, reason: String(format: "no answer to a ping within %g s; the connection is dead", c.limits.pingTimeout))
                break
            }
            if pingSentAt == nil, closeSentAt == nil, now - lastReceived >= c.limits.pingInterval {
                queue(WebSocketFrame.encode(.ping, []))
                pingSentAt = now
                continue
            }
            var deadline = pingSentAt.map { $0 + c.limits.pingTimeout } ?? lastReceived + c.limits.pingInterval
            if let sent = closeSentAt { deadline = min(deadline, sent + c.limits.closeTimeout) }
            c.wait(writable: written < pending.count, seconds: deadline - now)
        }

        let (leftFrames, leftPings) = outgoing.withLock { state in
            state.done = true
            defer { state.frames = []; state.pings = [] }
            return (state.frames.map(\.1), state.pings)
        }
        let error = failure ?? WebSocketError(url: url, reason: "the connection is closed")
        for waiter in waiters.map(\.continuation) + leftFrames { waiter.resume(throwing: error) }
        for waiter in pongWaiters.map(\.waiter) + leftPings { waiter.resume(throwing: error) }
        c.close()
        if let failure { c.continuation.finish(throwing: failure) } else { c.continuation.finish() }
        ended.open()
    }
}

/// One caller of `ping()` waiting for its pong: resumed once, by the connection's thread (the pong, or the
/// connection ending) or by the caller's cancellation, whichever comes first.
private final class PingWaiter: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<Void, Error>?, early: Error?, done: Bool)>((nil, nil, false))

    /// Holds `continuation` until `resume`; false when it was resumed at once (the caller was cancelled already).
    func wait(_ continuation: CheckedContinuation<Void, Error>) -> Bool {
        let early = state.withLock { state -> Error? in
            guard !state.done else { return state.early ?? CancellationError() }
            state.continuation = continuation
            return nil
        }
        guard let early else { return true }
        continuation.resume(throwing: early)
        return false
    }

    /// Resumes the caller (with `error`, else returning); later calls do nothing.
    func resume(throwing error: Error? = nil) {
        let continuation = state.withLock { state -> CheckedContinuation<Void, Error>? in
            guard !state.done else { return nil }
            state.done = true
            state.early = error
            defer { state.continuation = nil }
            return state.continuation
        }
        if let error { continuation?.resume(throwing: error) } else { continuation?.resume() }
    }
}

/// A WebSocket failed: the URL, what went wrong, and (when the server answered) its HTTP status or close code.
struct WebSocketError: Error, Equatable, CustomStringConvertible {
    var url: String
    var reason: String
    var status: Int?
    var closeCode: UInt16?
    var description: String { "WebSocket \(url): \(reason)" }
}

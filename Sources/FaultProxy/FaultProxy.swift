import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A fault-injecting HTTP/1.1 proxy in front of the real Prefect server, for the resilience tests
/// (Tests/EndToEndTests) and the fault soak (`prefect-worker-bench soak`). (The push bench counts requests with
/// its own `CountingProxy`, which keeps connections alive as the server would.)
///
/// Listens on 127.0.0.1 (port chosen by the OS). Each connection carries one request: the request line, headers
/// and `Content-Length` (or chunked) body are read, forwarded to the upstream server with `Connection: close`,
/// the whole answer is relayed back and the connection is closed. Faults are chosen per request, at run time:
///
/// - `failRate`: answered `503 {"exception_message":"Service Unavailable"}` without forwarding;
/// - `resetRate`: the connection is reset (SO_LINGER 0), half of the time before forwarding, half of the time
///   *after* forwarding but before relaying the answer (the request took effect, the answer is lost);
/// - `down`: every connection is reset as soon as it is accepted.
///
/// Sockets and threads only (Glibc); every counter and setting is behind one lock. Every socket is close-on-exec,
/// so the workers a bench or test spawns after `start` do not hold the proxy's sockets open.
public final class FaultProxy: @unchecked Sendable {
    /// What the proxy did so far.
    public struct Counters: Sendable, CustomStringConvertible {
        /// Connections accepted.
        public var connections = 0
        /// Requests read.
        public var requests = 0
        /// Requests sent on to the server.
        public var forwarded = 0
        /// Requests answered 503 without reaching the server.
        public var injected503 = 0
        /// Connections reset before the request reached the server.
        public var resetsBeforeForward = 0
        /// Connections reset after the server answered (the answer is lost).
        public var resetsAfterForward = 0
        /// Connections reset while `down`.
        public var refusedWhileDown = 0
        /// Requests the server did not answer.
        public var upstreamErrors = 0
        /// "METHOD /path" of each request whose answer was lost after it took effect.
        public var lostAnswers: [String] = []
        /// WebSocket upgrades tunnelled to the server, and those refused (`blockWebSockets`).
        public var webSocketsTunnelled = 0
        public var webSocketsRefused = 0
        /// Requests by "METHOD /path" (no query), WebSocket upgrades included: where the requests go.
        public var byEndpoint: [String: Int] = [:]
        /// The WebSocket upgrades among `byEndpoint` (tunnelled or refused), by "METHOD /path".
        public var webSocketsByEndpoint: [String: Int] = [:]

        /// Resets before and after forwarding.
        public var resets: Int { resetsBeforeForward + resetsAfterForward }

        /// The counters on one line.
        public var description: String {
            "requests=\(requests) forwarded=\(forwarded) injected503=\(injected503) resetsBeforeForward=\(resetsBeforeForward) "
                + "resetsAfterForward=\(resetsAfterForward) refusedWhileDown=\(refusedWhileDown) upstreamErrors=\(upstreamErrors) "
                + "webSocketsTunnelled=\(webSocketsTunnelled) webSocketsRefused=\(webSocketsRefused)"
        }
    }

    /// The real server's host and port.
    public let upstreamHost: String
    /// The real server's port.
    public let upstreamPort: UInt16
    /// The port the proxy listens on (set by `start`).
    public private(set) var port: UInt16 = 0
    private var listenFD: Int32 = -1
    private let lock = NSLock()
    private var _failRate = 0.0
    private var _resetRate = 0.0
    private var _down = false
    private var _lostAnswerRate = 0.0
    private var _lostAnswerPath = ""
    /// "METHOD /path" -> how many more of those requests get a 503 (`failNext`).
    private var _targetedFailures: [String: Int] = [:]
    private var _stopped = false
    private var _blockWebSockets = false
    private var _resetWebSockets = false
    private var _maintenance = false
    /// Client and server sockets of the open WebSocket tunnels.
    private var _tunnels: [Int32: Int32] = [:]
    private var _counters = Counters()
    private var _timedPath = ""
    private var _requestTimes: [Date] = []

    /// `upstream` is the real API URL (`http://host:port/api`); only host and port are used.
    public init(upstream: URL) {
        upstreamHost = upstream.host ?? "127.0.0.1"
        upstreamPort = UInt16(upstream.port ?? 80)
    }

    private func locked<T>(_ body: () -> T) -> T {
        lock.lock()
        defer { lock.unlock() }
        return body()
    }

    /// Fraction of the requests answered 503 without forwarding.
    public var failRate: Double {
        get { locked { _failRate } }
        set { locked { _failRate = newValue } }
    }

    /// Fraction of the requests whose connection is reset (half before forwarding, half after).
    public var resetRate: Double {
        get { locked { _resetRate } }
        set { locked { _resetRate = newValue } }
    }

    /// Fraction of the requests whose path contains `lostAnswerPath` that are forwarded and then reset before
    /// the answer is relayed (on top of `resetRate`): aims the "request applied, answer lost" fault.
    public var lostAnswerRate: Double {
        get { locked { _lostAnswerRate } }
        set { locked { _lostAnswerRate = newValue } }
    }

    /// See `lostAnswerRate`.
    public var lostAnswerPath: String {
        get { locked { _lostAnswerPath } }
        set { locked { _lostAnswerPath = newValue } }
    }

    /// While true, every connection is reset on accept (nothing is read or forwarded), and the open WebSocket
    /// tunnels are cut.
    public var down: Bool {
        get { locked { _down } }
        set {
            locked { _down = newValue }
            if newValue { cutWebSockets() }
        }
    }

    /// While true, WebSocket upgrades are answered 503 (as by an intermediary that does not pass WebSockets);
    /// other requests are unaffected. Open tunnels stay.
    public var blockWebSockets: Bool {
        get { locked { _blockWebSockets } }
        set { locked { _blockWebSockets = newValue } }
    }

    /// While true, WebSocket upgrades are reset without an answer (counted in `webSocketsRefused`): the socket
    /// is lost rather than refused, while other requests are unaffected. Open tunnels stay.
    public var resetWebSockets: Bool {
        get { locked { _resetWebSockets } }
        set { locked { _resetWebSockets = newValue } }
    }

    /// While true, every request is answered 503 with `Prefect-Maintenance: true` and `Retry-After: 1`, as
    /// Prefect Cloud answers during maintenance (counted in `injected503`).
    public var maintenance: Bool {
        get { locked { _maintenance } }
        set { locked { _maintenance = newValue } }
    }

    /// Cuts every open WebSocket tunnel with a reset on both sides.
    public func cutWebSockets() {
        let tunnels = locked { _tunnels }
        for (client, server) in tunnels {
            shutdown(client, Int32(SHUT_RDWR))
            shutdown(server, Int32(SHUT_RDWR))
        }
    }

    /// Requests whose "METHOD /path" contains this (none when empty) have their arrival times kept in
    /// `requestTimes`: when a worker's loop sent them, not only how many.
    public var timedPath: String {
        get { locked { _timedPath } }
        set { locked { _timedPath = newValue } }
    }

    /// Arrival times of the requests matching `timedPath`, oldest first.
    public var requestTimes: [Date] { locked { _requestTimes } }

    /// A snapshot of the counters.
    public var counters: Counters { locked { _counters } }

    /// Answers 503 (without forwarding) to the next `count` requests whose method and path (no query) are
    /// exactly `summary`, e.g. `"GET /api/flow_runs/<id>"`; on top of `failRate`.
    public func failNext(_ count: Int, matching summary: String) {
        locked { _targetedFailures[summary, default: 0] += count }
    }

    /// Targeted failures (`failNext`) not used yet.
    public var unusedTargetedFailures: Int { locked { _targetedFailures.values.reduce(0, +) } }

    /// `http://127.0.0.1:<port>/api`: what the worker is pointed at.
    public var apiURL: String { "http://127.0.0.1:\(port)/api" }

    /// The proxy could not listen.
    public struct ProxyError: Error, CustomStringConvertible {
        /// What failed, with errno's text.
        public var description: String
    }

    /// Binds, listens and starts the accept thread.
    public func start() throws {
        let (fd, port) = try LoopbackSockets.listen(backlog: 256)
        self.port = port
        listenFD = fd
        let thread = Thread { [self] in acceptLoop(fd) }
        thread.name = "FaultProxy.accept"
        thread.start()
    }

    /// Stops listening (connections in flight finish on their own threads).
    public func stop() {
        let fd: Int32 = locked {
            if _stopped { return -1 }
            _stopped = true
            return listenFD
        }
        guard fd >= 0 else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    private func acceptLoop(_ fd: Int32) {
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                if locked({ _stopped }) { return }
                usleep(10_000)
                continue
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC)
            if locked({ _stopped }) {
                Self.reset(client)
                return
            }
            let thread = Thread { [self] in handle(client) }
            thread.name = "FaultProxy.connection"
            thread.start()
        }
    }

    // MARK: - One connection

    private enum Fault {
        case none, fail503, resetBefore, resetAfter
    }

    private func decideFault(_ summary: String) -> Fault {
        locked {
            _counters.requests += 1
            _counters.byEndpoint[summary, default: 0] += 1
            if !_timedPath.isEmpty, summary.contains(_timedPath) { _requestTimes.append(Date()) }
            if let left = _targetedFailures[summary], left > 0 {
                _targetedFailures[summary] = left - 1
                _counters.injected503 += 1
                return .fail503
            }
            if !_lostAnswerPath.isEmpty, summary.contains(_lostAnswerPath), Double.random(in: 0..<1) < _lostAnswerRate {
                return .resetAfter
            }
            if Double.random(in: 0..<1) < _failRate {
                _counters.injected503 += 1
                return .fail503
            }
            if Double.random(in: 0..<1) < _resetRate {
                if Bool.random() {
                    _counters.resetsBeforeForward += 1
                    return .resetBefore
                }
                return .resetAfter
            }
            return .none
        }
    }

    private func handle(_ client: Int32) {
        let isDown: Bool = locked {
            _counters.connections += 1
            if _down { _counters.refusedWhileDown += 1 }
            return _down
        }
        if isDown {
            Self.reset(client)
            return
        }
        Self.setTimeouts(client, seconds: 60)
        guard let request = readRequest(client) else {
            close(client)
            return
        }
        if request.isWebSocket {
            tunnel(client, request)
            return
        }
        let inMaintenance: Bool = locked {
            guard _maintenance else { return false }
            _counters.requests += 1
            _counters.byEndpoint[request.summary, default: 0] += 1
            _counters.injected503 += 1
            return true
        }
        if inMaintenance {
            let body = #"{"detail":"Prefect Cloud is undergoing maintenance"}"#
            Self.sendAll(client, Array("HTTP/1.1 503 Service Unavailable\r\nPrefect-Maintenance: true\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8))
            Self.finish(client)
            return
        }
        switch decideFault(request.summary) {
        case .fail503:
            let body = #"{"exception_message":"Service Unavailable"}"#
            let answer = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
            Self.sendAll(client, Array(answer.utf8))
            Self.finish(client)
        case .resetBefore:
            Self.reset(client)
        case .resetAfter:
            let answer = forward(request)
            locked {
                if answer != nil { _counters.forwarded += 1 }
                _counters.resetsAfterForward += 1
                _counters.lostAnswers.append(request.summary)
            }
            Self.reset(client)
        case .none:
            guard let answer = forward(request) else {
                locked { _counters.upstreamErrors += 1 }
                let body = #"{"exception_message":"Bad Gateway (fault proxy could not reach the server)"}"#
                let text = "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
                Self.sendAll(client, Array(text.utf8))
                Self.finish(client)
                return
            }
            locked { _counters.forwarded += 1 }
            Self.sendAll(client, answer)
            Self.finish(client)
        }
    }

    private struct Request {
        var head: [UInt8]
        var body: [UInt8]
        var summary: String
        var isWebSocket = false
    }

    /// A WebSocket upgrade: counted as a request, then (unless blocked) both directions are relayed until
    /// either side closes or the tunnel is cut.
    private func tunnel(_ client: Int32, _ request: Request) {
        let (blocked, reset): (Bool, Bool) = locked {
            _counters.requests += 1
            _counters.byEndpoint[request.summary, default: 0] += 1
            _counters.webSocketsByEndpoint[request.summary, default: 0] += 1
            if _blockWebSockets || _resetWebSockets { _counters.webSocketsRefused += 1 }
            return (_blockWebSockets, _resetWebSockets)
        }
        if reset {
            Self.reset(client)
            return
        }
        if blocked {
            let body = #"{"exception_message":"WebSockets are blocked by the fault proxy"}"#
            Self.sendAll(client, Array("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8))
            Self.finish(client)
            return
        }
        let server = LoopbackSockets.connect(host: upstreamHost, port: upstreamPort)
        guard server >= 0, Self.sendAll(server, request.head + request.body) else {
            locked { _counters.upstreamErrors += 1 }
            if server >= 0 { close(server) }
            Self.reset(client)
            return
        }
        for fd in [client, server] {
            var tv = timeval(tv_sec: 0, tv_usec: 0) // no timeout: a WebSocket idles for as long as it likes
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        locked {
            _counters.webSocketsTunnelled += 1
            _tunnels[client] = server
        }
        var fds = [pollfd(fd: client, events: Int16(POLLIN), revents: 0), pollfd(fd: server, events: Int16(POLLIN), revents: 0)]
        relay: while poll(&fds, 2, -1) > 0 {
            for (from, to) in [(0, server), (1, client)] where fds[from].revents != 0 {
                guard let chunk = Self.receive(fds[from].fd), !chunk.isEmpty, Self.sendAll(to, chunk) else { break relay }
            }
        }
        locked { _tunnels[client] = nil }
        Self.reset(server)
        Self.reset(client)
    }

    /// Reads one request; rewrites its head for the upstream (Host, Connection: close, no Expect/Keep-Alive).
    private func readRequest(_ fd: Int32) -> Request? {
        var buffer: [UInt8] = []
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        var headEnd: Int?
        while headEnd == nil {
            guard let chunk = Self.receive(fd), !chunk.isEmpty else { return nil }
            buffer += chunk
            headEnd = Self.find(separator, in: buffer)
            if headEnd == nil, buffer.count > 1 << 20 { return nil }
        }
        let end = headEnd!
        let headText = String(decoding: buffer[..<end], as: UTF8.self)
        var body = Array(buffer[(end + 4)...])
        var lines = headText.components(separatedBy: "\r\n")
        guard !lines.isEmpty else { return nil }
        let requestLine = lines.removeFirst()
        var headers: [(String, String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.append((String(line[..<colon]).trimmingCharacters(in: .whitespaces),
                            String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces)))
        }
        func header(_ name: String) -> String? {
            headers.first { $0.0.lowercased() == name }?.1
        }
        if header("expect")?.lowercased() == "100-continue" {
            Self.sendAll(fd, Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }
        if let length = header("content-length").flatMap({ Int($0) }) {
            while body.count < length {
                guard let chunk = Self.receive(fd), !chunk.isEmpty else { return nil }
                body += chunk
            }
            body = Array(body.prefix(length))
        } else if header("transfer-encoding")?.lowercased().contains("chunked") == true {
            let last: [UInt8] = Array("0\r\n\r\n".utf8)
            while !(body.count >= last.count && Array(body.suffix(last.count)) == last) {
                guard let chunk = Self.receive(fd), !chunk.isEmpty else { return nil }
                body += chunk
            }
        }
        let isWebSocket = header("upgrade")?.lowercased() == "websocket"
        let dropped: Set<String> = ["connection", "keep-alive", "expect", "host", "proxy-connection"]
        var head = requestLine + "\r\n"
        head += "Host: \(upstreamHost):\(upstreamPort)\r\n"
        for (name, value) in headers where !dropped.contains(name.lowercased()) {
            head += "\(name): \(value)\r\n"
        }
        head += isWebSocket ? "Connection: Upgrade\r\n\r\n" : "Connection: close\r\n\r\n"
        let parts = requestLine.split(separator: " ")
        let path = parts.count > 1 ? String(parts[1].split(separator: "?").first ?? parts[1]) : "?"
        let summary = (parts.first.map(String.init) ?? "?") + " " + path
        return Request(head: Array(head.utf8), body: body, summary: summary, isWebSocket: isWebSocket)
    }

    /// Sends the request upstream and reads the whole answer (until the server closes). Nil on any error.
    private func forward(_ request: Request) -> [UInt8]? {
        let fd = LoopbackSockets.connect(host: upstreamHost, port: upstreamPort, timeoutSeconds: 60)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard Self.sendAll(fd, request.head + request.body) else { return nil }
        var answer: [UInt8] = []
        while true {
            guard let chunk = Self.receive(fd) else { return nil }
            if chunk.isEmpty { break }
            answer += chunk
        }
        return answer.isEmpty ? nil : answer
    }

    // MARK: - Socket helpers

    private static func setTimeouts(_ fd: Int32, seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Some bytes, [] at end of stream, nil on error.
    private static func receive(_ fd: Int32) -> [UInt8]? {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            return Array(chunk.prefix(n))
        }
    }

    @discardableResult
    private static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        for i in 0...(haystack.count - needle.count) where haystack[i] == needle[0] {
            if Array(haystack[i..<(i + needle.count)]) == needle { return i }
        }
        return nil
    }

    /// Abrupt close: SO_LINGER 0, so the peer gets a RST.
    private static func reset(_ fd: Int32) {
        var option = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
        close(fd)
    }

    /// Orderly close after an answer: half-close, drain briefly, close.
    private static func finish(_ fd: Int32) {
        shutdown(fd, Int32(SHUT_WR))
        var tv = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var scratch = [UInt8](repeating: 0, count: 4096)
        while scratch.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 {}
        close(fd)
    }
}

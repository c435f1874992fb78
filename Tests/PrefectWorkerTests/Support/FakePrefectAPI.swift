import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker

/// A small in-process HTTP/1.1 server that plays the Prefect API for client-level tests, with scripted faults.
///
/// - Listens on 127.0.0.1 with an OS-assigned port; one thread accepts, one thread per connection answers.
/// - Every answer carries `Connection: close`, so each request is a fresh connection (no keep-alive), which
///   keeps faults such as a reset attached to exactly one request.
/// - Routes are closures `(method, path, body) -> Response`; `*` in a route pattern matches one path segment.
///   A request without a route gets 404 `{"detail":"Not Found"}`.
/// - Faults are consumed in order: first the script of the first matching route-specific script that is not
///   empty, then the global script; while `outage` is set, every request without a scripted fault gets it.
/// - Every request is recorded (method, path, query, headers, body, arrival time) before any fault applies.
final class FakePrefectAPI: @unchecked Sendable {
    typealias Handler = @Sendable (_ method: String, _ path: String, _ body: Data) -> Response

    struct Request: Sendable {
        let method: String
        /// The path without the query string, as sent (percent-encoded).
        let path: String
        let query: String?
        /// Header names lowercased.
        let headers: [String: String]
        let body: Data
        /// When the request had been read completely.
        let time: Date

        func header(_ name: String) -> String? { headers[name.lowercased()] }
        var json: JSON? { try? JSON.decode(body) }
        var bodyText: String { String(decoding: body, as: UTF8.self) }
    }

    struct Response: Sendable {
        var status: Int
        var headers: [String: String] = [:]
        var body: Data = Data()

        static func json(_ status: Int, _ text: String, headers: [String: String] = [:]) -> Response {
            var all = headers
            all["Content-Type"] = all["Content-Type"] ?? "application/json"
            return Response(status: status, headers: all, body: Data(text.utf8))
        }

        static func json(_ status: Int = 200, _ value: JSON) -> Response {
            json(status, value.encoded())
        }

        static let noContent = Response(status: 204)
    }

    enum Fault: Sendable {
        /// Answer this instead of the route's answer.
        case respond(Response)
        /// Answer the route's answer, but only after this many seconds.
        case delay(Double)
        /// Close the connection without answering, with a TCP reset (SO_LINGER 0).
        case reset
        /// Close the connection without answering, with an orderly FIN.
        case hangUp
        /// 200 with a body that is not JSON.
        case garbage
        /// 200 with a complete HTTP body holding a cut-off JSON document.
        case truncatedJSON
        /// 200 with an HTML page (what a proxy in front of the API may send).
        case html
        /// 200 with a body of this many bytes.
        case hugeBody(Int)
        /// 200 with a chunked body of this many bytes (no Content-Length announces its size).
        case hugeChunkedBody(Int)
        /// 200 whose `Content-Length` promises more than is sent before the connection closes.
        case truncatedTransfer

        static func status(_ code: Int, _ body: String = "", headers: [String: String] = [:]) -> Fault {
            .respond(.json(code, body, headers: headers))
        }

        /// What the Prefect server answers when SQLite is locked.
        static func unavailable(retryAfter: String? = nil) -> Fault {
            .status(503, #"{"exception_message":"Service Unavailable"}"#,
                    headers: retryAfter.map { ["Retry-After": $0] } ?? [:])
        }
    }

    private struct Route {
        let method: String
        let pattern: String
        let handler: Handler
    }

    private struct Script {
        let method: String?
        let pattern: String?
        var faults: [Fault]
    }

    private let listenFD: Int32
    let port: UInt16
    private let lock = NSLock()
    private var routes: [Route] = []
    private var scripts: [Script] = []
    private var globalFaults: [Fault] = []
    private var persistentFault: Fault?
    private var recorded: [Request] = []
    private var hugeBytesSent = 0
    private var stopped = false
    private var clientFDs: Set<Int32> = []
    private let connections = DispatchGroup()
    private let acceptDone = DispatchSemaphore(value: 0)
    private let wake = NSCondition()

    struct StartError: Error, CustomStringConvertible {
        let description: String
    }

    init() throws {
        // The worker ignores SIGPIPE process-wide (SignalListener), so a write to a socket its peer closed is an
        // EPIPE it handles; the test process does the same, or such a write (the client's, or this server's) kills it.
        signal(SIGPIPE, SIG_IGN)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw StartError(description: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 128) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw StartError(description: "bind/listen: \(reason)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listenFD = fd
        port = UInt16(bigEndian: address.sin_port)
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "FakePrefectAPI.accept"
        thread.start()
    }

    deinit { stop() }

    /// `http://127.0.0.1:<port>`.
    var url: String { "http://127.0.0.1:\(port)" }
    /// `http://127.0.0.1:<port>/api`, the base URL a `PrefectClient` is given.
    var apiURL: URL { URL(string: url + "/api")! }

    func client(apiKey: String? = nil, authString: String? = nil, requestTimeout: Double = 5) -> PrefectClient {
        PrefectClient(baseURL: apiURL, apiKey: apiKey, authString: authString, requestTimeout: requestTimeout)
    }

    // MARK: - Configuration

    /// Registers (or replaces) the answer for `method` on `pattern` (a full path such as `/api/flow_runs/*`).
    func route(_ method: String, _ pattern: String, _ handler: @escaping Handler) {
        lock.withLock {
            routes.removeAll { $0.method == method && $0.pattern == pattern }
            routes.append(Route(method: method, pattern: pattern, handler: handler))
        }
    }

    /// Appends faults for requests matching `method` and `pattern`, consumed one per request, in order.
    func inject(_ faults: [Fault], method: String, path pattern: String) {
        lock.withLock { scripts.append(Script(method: method, pattern: pattern, faults: faults)) }
    }

    /// Appends faults for any request, consumed one per request (after route-specific scripts), in order.
    func inject(_ faults: [Fault]) {
        lock.withLock { globalFaults.append(contentsOf: faults) }
    }

    /// While set, every request without a scripted fault gets this one (the server is "down").
    var outage: Fault? {
        get { lock.withLock { persistentFault } }
        set { lock.withLock { persistentFault = newValue } }
    }

    /// Faults scripted but not consumed yet.
    var unusedFaults: Int {
        lock.withLock { globalFaults.count + scripts.reduce(0) { $0 + $1.faults.count } }
    }

    // MARK: - Recorded requests

    var requests: [Request] { lock.withLock { recorded } }

    func requests(_ method: String, _ pattern: String) -> [Request] {
        requests.filter { $0.method == method && Self.matches(pattern, $0.path) }
    }

    func clearRequests() { lock.withLock { recorded.removeAll() } }

    /// Body bytes of the last `.hugeBody` answer that the client took before it closed the connection.
    var hugeBodyBytesSent: Int { lock.withLock { hugeBytesSent } }

    static func matches(_ pattern: String, _ path: String) -> Bool {
        let p = pattern.split(separator: "/", omittingEmptySubsequences: false)
        let s = path.split(separator: "/", omittingEmptySubsequences: false)
        guard p.count == s.count else { return false }
        return zip(p, s).allSatisfy { $0 == "*" || $0 == $1 }
    }

    // MARK: - Shutdown

    /// Stops accepting, unblocks delayed answers and waits (briefly) for connection threads to end.
    func stop() {
        let first: Bool = lock.withLock {
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        shutdown(listenFD, Int32(SHUT_RDWR))
        acceptDone.wait()
        close(listenFD)
        lock.withLock {
            for fd in clientFDs { shutdown(fd, Int32(SHUT_RDWR)) }
        }
        wake.lock()
        wake.broadcast()
        wake.unlock()
        _ = connections.wait(timeout: .now() + 5)
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    // MARK: - Serving

    private func acceptLoop() {
        defer { acceptDone.signal() }
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if isStopped { return }
                if errno == EINTR || errno == ECONNABORTED { continue }
                usleep(10_000)
                continue
            }
            let accepted: Bool = lock.withLock {
                if stopped { return false }
                clientFDs.insert(fd)
                connections.enter()
                return true
            }
            guard accepted else {
                close(fd)
                return
            }
            let thread = Thread { [self] in
                let reset = serve(fd)
                _ = lock.withLock { clientFDs.remove(fd) }
                if reset {
                    var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
                }
                close(fd)
                connections.leave()
            }
            thread.name = "FakePrefectAPI.connection"
            thread.start()
        }
    }

    /// Reads one request and answers it. Returns true if the connection must be reset rather than closed.
    private func serve(_ fd: Int32) -> Bool {
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard let request = readRequest(fd) else { return false }
        let (fault, handler): (Fault?, Handler?) = lock.withLock {
            recorded.append(request)
            var fault: Fault?
            if let index = scripts.firstIndex(where: { script in
                !script.faults.isEmpty && (script.method ?? request.method) == request.method
                    && script.pattern.map { Self.matches($0, request.path) } ?? true
            }) {
                fault = scripts[index].faults.removeFirst()
            } else if !globalFaults.isEmpty {
                fault = globalFaults.removeFirst()
            } else {
                fault = persistentFault
            }
            let handler = routes.last { $0.method == request.method && Self.matches($0.pattern, request.path) }?.handler
            return (fault, handler)
        }
        func routeAnswer() -> Response {
            handler?(request.method, request.path, request.body) ?? .json(404, #"{"detail":"Not Found"}"#)
        }
        switch fault {
        case nil:
            write(fd, routeAnswer())
        case .respond(let response):
            write(fd, response)
        case .delay(let seconds):
            let deadline = Date().addingTimeInterval(seconds)
            wake.lock()
            while !isStopped && Date() < deadline { _ = wake.wait(until: deadline) }
            wake.unlock()
            if isStopped { return false }
            write(fd, routeAnswer())
        case .reset:
            return true
        case .hangUp:
            return false
        case .garbage:
            write(fd, Response(status: 200, headers: ["Content-Type": "application/json"], body: Data("this is not JSON at all \u{1}\u{2}".utf8)))
        case .truncatedJSON:
            write(fd, .json(200, #"{"id": "abc", "name": "cut-off", "state": {"type": "RUNN"#))
        case .html:
            let page = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>"
            write(fd, Response(status: 200, headers: ["Content-Type": "text/html"], body: Data(page.utf8)))
        case .hugeBody(let bytes):
            streamHugeBody(fd, bytes, chunked: false)
        case .hugeChunkedBody(let bytes):
            streamHugeBody(fd, bytes, chunked: true)
        case .truncatedTransfer:
            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
            sendAll(fd, Data(head.utf8) + Data(#"{"id": "#.utf8))
        }
        return false
    }

    private func readRequest(_ fd: Int32) -> Request? {
        var buffer = Data()
        var chunk = [UInt8](repeating: 0, count: 65536)
        let separator = Data("\r\n\r\n".utf8)
        func receive() -> Bool {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { return false }
            buffer.append(contentsOf: chunk[0..<n])
            return true
        }
        var headerEnd: Range<Data.Index>?
        while true {
            headerEnd = buffer.range(of: separator)
            if headerEnd != nil { break }
            if buffer.count > 1 << 20 || !receive() { return nil }
        }
        let head = String(decoding: buffer[buffer.startIndex..<headerEnd!.lowerBound], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ")
        guard requestLine.count >= 2 else { return nil }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            headers[name] = headers[name].map { $0 + ", " + value } ?? value
        }
        if headers["expect"]?.lowercased() == "100-continue" {
            sendAll(fd, Data("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }
        let rest = Data(buffer[headerEnd!.upperBound...])
        var body = Data()
        if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            // Chunked upload: size line, data, CRLF ... until a zero-size chunk.
            buffer = rest
            while true {
                guard let lineEnd = buffer.range(of: Data("\r\n".utf8)) else {
                    if !receive() { return nil }
                    continue
                }
                let sizeText = String(decoding: buffer[buffer.startIndex..<lineEnd.lowerBound], as: UTF8.self)
                guard let size = Int(sizeText.split(separator: ";").first ?? "", radix: 16) else { return nil }
                let needed = lineEnd.upperBound - buffer.startIndex + size + 2
                while buffer.count < needed { if !receive() { return nil } }
                if size == 0 { break }
                body.append(buffer[lineEnd.upperBound..<(lineEnd.upperBound + size)])
                buffer = Data(buffer[(buffer.startIndex + needed)...])
            }
        } else {
            let length = Int(headers["content-length"] ?? "0") ?? 0
            buffer = rest
            while buffer.count < length { if !receive() { return nil } }
            body = Data(buffer.prefix(length))
        }
        let target = String(requestLine[1])
        let parts = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        return Request(method: String(requestLine[0]), path: String(parts[0]), query: parts.count > 1 ? String(parts[1]) : nil,
                       headers: headers, body: body, time: Date())
    }

    private func write(_ fd: Int32, _ response: Response) {
        var head = "HTTP/1.1 \(response.status) \(Self.reason(response.status))\r\n"
        for (name, value) in response.headers where name.lowercased() != "content-length" && name.lowercased() != "connection" {
            head += "\(name): \(value)\r\n"
        }
        head += "Content-Length: \(response.body.count)\r\nConnection: close\r\n\r\n"
        sendAll(fd, Data(head.utf8) + response.body)
    }

    /// Writes all of `data`; false if the peer went away first.
    /// A 200 with `bytes` of body, announced by Content-Length or sent chunked, streamed in 1 MiB pieces while
    /// counting what the client accepted before it hung up.
    private func streamHugeBody(_ fd: Int32, _ bytes: Int, chunked: Bool) {
        let framing = chunked ? "Transfer-Encoding: chunked" : "Content-Length: \(bytes)"
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\(framing)\r\nConnection: close\r\n\r\n"
        guard sendAll(fd, Data(head.utf8)) else { return }
        let piece = Data(repeating: UInt8(ascii: " "), count: 1 << 20)
        var sent = 0
        while sent < bytes {
            let n = min(piece.count, bytes - sent)
            let data = chunked ? Data(String(n, radix: 16).utf8) + Data("\r\n".utf8) + piece.prefix(n) + Data("\r\n".utf8) : piece.prefix(n)
            guard sendAll(fd, data) else { break }
            sent += n
            lock.withLock { hugeBytesSent = sent }
        }
        if chunked, sent == bytes { sendAll(fd, Data("0\r\n\r\n".utf8)) }
    }

    @discardableResult
    private func sendAll(_ fd: Int32, _ data: Data) -> Bool {
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> Bool in
            guard let base = raw.baseAddress else { return true }
            var offset = 0
            while offset < raw.count {
                let n = send(fd, base + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }

    private static func reason(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
        case 307: "Temporary Redirect"
        case 404: "Not Found"
        case 408: "Request Timeout"
        case 422: "Unprocessable Entity"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }
}

/// A value shared between a test and the fake's handler threads.
final class FakeAPIBox<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
    func update<R>(_ body: (inout Value) -> R) -> R { lock.withLock { body(&stored) } }
}

/// JSON for a flow run as `GET /flow_runs/{id}` returns it.
func fakeFlowRunJSON(id: String, stateType: String, stateName: String? = nil) -> String {
    let name = stateName ?? (stateType.prefix(1) + stateType.dropFirst().lowercased())
    return """
    {"id": "\(id)", "name": "fake-run", "flow_id": "f-1", "deployment_id": "d-1", "parameters": {}, "job_variables": {},
     "state_type": "\(stateType)", "state_name": "\(name)", "infrastructure_pid": null, "tags": [], "run_count": 0,
     "state": {"id": "s-1", "type": "\(stateType)", "name": "\(name)", "timestamp": "2026-11-23T08:53:40.364141Z",
               "message": null, "state_details": {"flow_run_id": "\(id)", "transition_id": "t-0"}}}
    """
}

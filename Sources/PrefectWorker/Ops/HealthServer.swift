import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A minimal HTTP/1.1 server on Glibc sockets for `/health` and `/metrics`. Each connection gets at most
/// 8 KiB of request and 3 seconds; at most 32 are served at once (more are answered 503 and closed), so a
/// slow or malformed client can neither stall nor crash it.
final class HealthServer: Sendable {
    struct Response: Sendable {
        var status: Int
        var contentType: String
        var body: String
        init(status: Int, contentType: String = "application/json", body: String) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    static let maxRequestBytes = 8 * 1024
    static let requestDeadline = 3.0
    static let maxConnections = 32

    private let listener: Int32
    private let handler: @Sendable (String, String) -> Response
    private let slots = DispatchSemaphore(value: HealthServer.maxConnections)
    let port: UInt16

    /// Binds and listens on `host:port` (port 0 picks a free one). Throws a message naming the address.
    init(host: String, port: UInt16, handler: @escaping @Sendable (_ method: String, _ path: String) -> Response) throws {
        self.handler = handler
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let info = result else {
            throw WorkerError(message: "health server: cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw WorkerError(message: "health server: socket(): \(errnoText())") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            let reason = errnoText()
            close(fd)
            throw WorkerError(message: "health server: cannot listen on \(host):\(port): \(reason); set PREFECT_WORKER_WEBSERVER_HOST/PORT")
        }
        guard listen(fd, 64) == 0 else {
            let reason = errnoText()
            close(fd)
            throw WorkerError(message: "health server: listen on \(host):\(port): \(reason)")
        }
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) } }
        let boundPort = withUnsafePointer(to: &address) { pointer -> UInt16 in
            pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
        self.listener = fd
        self.port = boundPort
    }

    /// Starts accepting on a dedicated thread.
    func start() {
        WorkerThread.start(name: "prefect-worker-health", stackSize: 128 * 1024) { [self] in acceptLoop() }
    }

    private func acceptLoop() {
        while true {
            // Jobs are spawned with every descriptor above 2 closed, so no CLOEXEC race matters here.
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                usleep(100_000) // EMFILE and the like: back off instead of spinning
                continue
            }
            guard slots.wait(timeout: .now()) == .success else {
                respond(client, Response(status: 503, body: #"{"message":"busy"}"#))
                close(client)
                continue
            }
            DispatchQueue.global().async { [self] in
                serve(client)
                close(client)
                slots.signal()
            }
        }
    }

    private func serve(_ fd: Int32) {
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let deadline = Date().addingTimeInterval(Self.requestDeadline)
        var request = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 2048)
        while Date() < deadline, request.count < Self.maxRequestBytes {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n > 0 {
                request.append(contentsOf: chunk[0..<n])
                if request.containsHeaderEnd() { break }
            } else if n < 0, errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK {
                continue
            } else {
                return // closed or failed before a full request: nothing to answer
            }
        }
        guard request.containsHeaderEnd() else {
            respond(fd, Response(status: request.count >= Self.maxRequestBytes ? 431 : 408, body: #"{"message":"bad request"}"#))
            return
        }
        let line = String(decoding: request.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
        let parts = line.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else {
            respond(fd, Response(status: 400, body: #"{"message":"bad request"}"#))
            return
        }
        let path = String(parts[1].prefix { $0 != "?" })
        respond(fd, handler(String(parts[0]), path), headOnly: parts[0] == "HEAD")
    }

    private func respond(_ fd: Int32, _ response: Response, headOnly: Bool = false) {
        let reasons = [200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
                       431: "Request Header Fields Too Large", 503: "Service Unavailable"]
        let body = Array(response.body.utf8)
        var text = "HTTP/1.1 \(response.status) \(reasons[response.status] ?? "Status")\r\n"
        text += "Content-Type: \(response.contentType)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        var bytes = Array(text.utf8)
        if !headOnly { bytes += body }
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            offset += n
        }
    }
}

private extension Collection where Element == UInt8 {
    func containsHeaderEnd() -> Bool {
        let bytes = Array(self)
        guard bytes.count >= 4 else { return false }
        for i in 0...(bytes.count - 4) where bytes[i] == 13 && bytes[i + 1] == 10 && bytes[i + 2] == 13 && bytes[i + 3] == 10 {
            return true
        }
        // Be lenient with bare-LF clients.
        for i in 0...(bytes.count - 2) where bytes[i] == 10 && bytes[i + 1] == 10 { return true }
        return false
    }
}

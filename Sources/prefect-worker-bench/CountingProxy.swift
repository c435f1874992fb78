import Foundation
import FaultProxy
#if canImport(Glibc)
import Glibc
#endif

/// A transparent TCP relay in front of the Prefect server that counts the HTTP requests passing through it,
/// by method and path, for the push benchmark. Unlike `FaultProxy` (one request per connection, answers
/// buffered), it relays bytes as they come, so keep-alive connections stay kept alive and WebSocket upgrades
/// simply continue as a tunnel: the workers behave exactly as they would against the server itself.
///
/// Each accepted connection gets two threads: client → server, which reads the request heads to count them
/// (skipping bodies by Content-Length or chunked framing; after an `Upgrade: websocket` request it stops
/// parsing and only relays), and server → client. With `blockWebSockets`, an upgrade is answered 503 and the
/// connection closed, as by an intermediary that does not pass WebSockets.
final class CountingProxy: @unchecked Sendable {
    let upstreamHost: String
    let upstreamPort: UInt16
    private(set) var port: UInt16 = 0
    private let lock = NSLock()
    private var listenFD: Int32 = -1
    private var stopped = false
    private var _blockWebSockets = false
    private var counts: [String: Int] = [:]
    private var upgrades = 0
    private var refused = 0
    /// Every open socket (both ends of every connection), so `stop` can cut them.
    private var open: Set<Int32> = []

    init(upstream: URL) {
        upstreamHost = upstream.host.map { $0 == "localhost" ? "127.0.0.1" : $0 } ?? "127.0.0.1"
        upstreamPort = UInt16(upstream.port ?? 80)
    }

    var apiURL: String { "http://127.0.0.1:\(port)/api" }

    var blockWebSockets: Bool {
        get { lock.withLock { _blockWebSockets } }
        set { lock.withLock { _blockWebSockets = newValue } }
    }

    /// What passed so far: requests by "METHOD /path" (ids replaced by `{id}`), WebSocket upgrades tunnelled
    /// and refused (both also counted as requests).
    struct Snapshot: Sendable {
        var byEndpoint: [String: Int]
        var webSockets: Int
        var refused: Int
        var requests: Int { byEndpoint.values.reduce(0, +) }

        /// What happened between `earlier` and this snapshot.
        func since(_ earlier: Snapshot) -> Snapshot {
            var delta: [String: Int] = [:]
            for (key, value) in byEndpoint where value - (earlier.byEndpoint[key] ?? 0) > 0 {
                delta[key] = value - (earlier.byEndpoint[key] ?? 0)
            }
            return Snapshot(byEndpoint: delta, webSockets: webSockets - earlier.webSockets, refused: refused - earlier.refused)
        }
    }

    var snapshot: Snapshot { lock.withLock { Snapshot(byEndpoint: counts, webSockets: upgrades, refused: refused) } }

    func start() throws {
        let listening: (fd: Int32, port: UInt16)
        do {
            listening = try LoopbackSockets.listen(backlog: 128)
        } catch {
            throw BenchError("counting proxy: \(error)")
        }
        port = listening.port
        listenFD = listening.fd
        let fd = listening.fd
        let thread = Thread { [self] in acceptLoop(fd) }
        thread.name = "CountingProxy.accept"
        thread.start()
    }

    /// Stops listening and cuts every open connection (their threads then end).
    func stop() {
        let (fd, sockets): (Int32, Set<Int32>) = lock.withLock {
            if stopped { return (-1, []) }
            stopped = true
            return (listenFD, open)
        }
        guard fd >= 0 else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        for socket in sockets { shutdown(socket, Int32(SHUT_RDWR)) }
    }

    private func acceptLoop(_ fd: Int32) {
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if lock.withLock({ stopped }) { return }
                if errno == EINTR || errno == ECONNABORTED { continue }
                usleep(10_000)
                continue
            }
            _ = fcntl(client, F_SETFD, FD_CLOEXEC) // the workers the bench starts later must not inherit it
            let server = connectUpstream()
            let accepted: Bool = lock.withLock {
                guard !stopped, server >= 0 else { return false }
                open.formUnion([client, server])
                return true
            }
            guard accepted else {
                close(client)
                if server >= 0 { close(server) }
                if lock.withLock({ stopped }) { return }
                continue
            }
            // Whichever direction ends last closes both sockets (so neither thread uses a closed, reused fd).
            let pending = Countdown(2)
            let finish: @Sendable () -> Void = { [self] in
                shutdown(server, Int32(SHUT_RDWR))
                shutdown(client, Int32(SHUT_RDWR))
                guard pending.tick() else { return }
                lock.withLock { open.subtract([client, server]) }
                close(client)
                close(server)
            }
            let down = Thread { [self] in
                relay(from: server, to: client)
                finish()
            }
            down.name = "CountingProxy.down"
            down.start()
            let up = Thread { [self] in
                upstream(client: client, server: server)
                finish()
            }
            up.name = "CountingProxy.up"
            up.start()
        }
    }

    private func connectUpstream() -> Int32 {
        LoopbackSockets.connect(host: upstreamHost, port: upstreamPort)
    }

    /// server → client, byte for byte, until either side ends.
    private func relay(from: Int32, to: Int32) {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            guard n > 0, Self.sendAll(to, chunk, count: n) else { return }
        }
    }

    /// client → server: counts each request head, relays everything; a blocked upgrade is answered here.
    private func upstream(client: Int32, server: Int32) {
        var parser = RequestStream()
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return }
            if parser.tunnelling {
                guard Self.sendAll(server, chunk, count: n) else { return }
                continue
            }
            // Heads are parsed from the buffered bytes; what is relayed is exactly what was read.
            let heads = parser.feed(chunk[0..<n])
            var blocked = false
            lock.withLock {
                for head in heads {
                    counts[Self.endpoint(head), default: 0] += 1
                    if head.isWebSocket {
                        if _blockWebSockets { refused += 1; blocked = true } else { upgrades += 1 }
                    }
                }
            }
            if blocked {
                let body = #"{"detail":"WebSockets are blocked by the bench's counting proxy"}"#
                let answer = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
                let bytes = Array(answer.utf8)
                Self.sendAll(client, bytes, count: bytes.count)
                return
            }
            guard Self.sendAll(server, chunk, count: n) else { return }
        }
    }

    /// "POST /api/work_pools/{pool}/get_scheduled_flow_runs": the pool's name and ids generalised.
    static func endpoint(_ head: RequestStream.Head) -> String {
        var path = String(head.path.split(separator: "?", maxSplits: 1).first ?? "")
        path = path.replacing(/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/, with: "{id}")
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        if let i = parts.firstIndex(of: "work_pools"), i + 1 < parts.count, !parts[i + 1].isEmpty, parts[i + 1] != "filter" {
            var generalised = parts
            generalised[i + 1] = "{pool}"
            path = generalised.joined(separator: "/")
        }
        return "\(head.method) \(path)" + (head.isWebSocket ? " (WebSocket)" : "")
    }

    @discardableResult
    private static func sendAll(_ fd: Int32, _ bytes: [UInt8], count: Int) -> Bool {
        var offset = 0
        while offset < count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += n
        }
        return true
    }
}

/// Finds request heads in an HTTP/1.1 client stream: head, then a body of Content-Length bytes or chunked
/// framing, then the next head. After a WebSocket upgrade the rest is frames (`tunnelling`).
struct RequestStream {
    struct Head: Sendable {
        var method: String
        var path: String
        var isWebSocket: Bool
    }

    private var buffer: [UInt8] = []
    /// Body bytes still to skip (Content-Length).
    private var skip = 0
    private var chunked = false
    private(set) var tunnelling = false

    /// Consumes bytes; returns the heads completed by them.
    mutating func feed(_ bytes: ArraySlice<UInt8>) -> [Head] {
        buffer += bytes
        var heads: [Head] = []
        while !tunnelling {
            if skip > 0 {
                let n = min(skip, buffer.count)
                buffer.removeFirst(n)
                skip -= n
                if skip > 0 { break }
            }
            if chunked {
                guard skipChunks() else { break }
                continue
            }
            guard let end = Self.find([13, 10, 13, 10], in: buffer) else {
                if buffer.count > 1 << 20 { buffer.removeAll() } // not HTTP: stop trying
                break
            }
            let text = String(decoding: buffer[..<end], as: UTF8.self)
            buffer.removeFirst(end + 4)
            var lines = text.components(separatedBy: "\r\n")
            let requestLine = lines.isEmpty ? "" : lines.removeFirst()
            let parts = requestLine.split(separator: " ")
            var headers: [String: String] = [:]
            for line in lines {
                guard let colon = line.firstIndex(of: ":") else { continue }
                headers[line[..<colon].lowercased().trimmingCharacters(in: .whitespaces)] =
                    line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            let isWebSocket = headers["upgrade"]?.lowercased() == "websocket"
            heads.append(Head(method: parts.first.map(String.init) ?? "?", path: parts.count > 1 ? String(parts[1]) : "?",
                              isWebSocket: isWebSocket))
            if isWebSocket {
                tunnelling = true
                buffer.removeAll()
            } else if headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
                chunked = true
            } else {
                skip = headers["content-length"].flatMap { Int($0) } ?? 0
            }
        }
        return heads
    }

    /// Skips whole chunks; true once the last (size 0) chunk and its trailer are gone, false if more bytes
    /// are needed.
    private mutating func skipChunks() -> Bool {
        while true {
            guard let lineEnd = Self.find([13, 10], in: buffer) else { return false }
            let sizeText = String(decoding: buffer[..<lineEnd], as: UTF8.self).split(separator: ";").first ?? ""
            let size = Int(sizeText.trimmingCharacters(in: .whitespaces), radix: 16) ?? 0
            if size == 0 {
                // The trailer (usually empty) ends with an empty line.
                guard let trailerEnd = Self.find([13, 10, 13, 10], in: buffer, from: lineEnd) else { return false }
                buffer.removeFirst(trailerEnd + 4)
                chunked = false
                return true
            }
            guard buffer.count >= lineEnd + 2 + size + 2 else { return false }
            buffer.removeFirst(lineEnd + 2 + size + 2)
        }
    }

    static func find(_ needle: [UInt8], in haystack: [UInt8], from start: Int = 0) -> Int? {
        guard haystack.count >= needle.count, start <= haystack.count - needle.count else { return nil }
        for i in start...(haystack.count - needle.count) where haystack[i] == needle[0] {
            if haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
        }
        return nil
    }
}

/// Counts down from `n`; `tick` is true for the call that reaches zero.
final class Countdown: @unchecked Sendable {
    private let lock = NSLock()
    private var left: Int

    init(_ n: Int) { left = n }

    func tick() -> Bool {
        lock.withLock {
            left -= 1
            return left == 0
        }
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker

/// A scripted WebSocket server for client tests: plain TCP on 127.0.0.1 (OS-assigned port), blocking I/O on a
/// thread per connection. Each accepted connection runs `script` with a `Peer` that reads the upgrade, answers
/// it (correctly or not) and reads and writes raw frames, so a test can break any rule it likes.
final class FakeWebSocketServer: @unchecked Sendable { // the listening fd is set once; scripts run on their own threads
    typealias Script = @Sendable (Peer) throws -> Void
    let port: UInt16
    private let listenFD: Int32
    private let script: Script
    private let done = DispatchGroup()
    /// Errors a script threw (a test asserts there are none, or the expected one).
    let errors = Locked<[String]>([])

    var url: URL { URL(string: "ws://127.0.0.1:\(port)/api/events/out")! }

    init(script: @escaping Script) throws {
        // The worker ignores SIGPIPE process-wide (SignalListener), so a write to a socket its peer closed is an
        // EPIPE it handles; the test process does the same, or such a write (the client's, or this server's) kills it.
        signal(SIGPIPE, SIG_IGN)
        self.script = script
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard fd >= 0, bound == 0, listen(fd, 16) == 0 else { throw Peer.Closed() }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listenFD = fd
        port = UInt16(bigEndian: address.sin_port)
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listenFD, nil, nil)
            guard fd >= 0 else { return }
            done.enter()
            let thread = Thread { [self] in
                defer { done.leave() }
                let peer = Peer(fd: fd)
                do { try script(peer) } catch is Peer.Closed {} catch { errors.withLock { $0.append("\(error)") } }
                peer.close()
            }
            thread.start()
        }
    }

    /// Stops accepting and waits (a few seconds at most) for the scripts to finish.
    func stop() {
        shutdown(listenFD, Int32(SHUT_RDWR))
        Glibc.close(listenFD)
        _ = done.wait(timeout: .now() + 5)
    }

    /// One client connection, from the server's side.
    final class Peer: @unchecked Sendable { // used by its script's thread only
        struct Closed: Error {}
        struct Frame: Equatable {
            var fin: Bool
            var opcode: UInt8
            var masked: Bool
            var payload: [UInt8]
            var text: String { String(decoding: payload, as: UTF8.self) }
        }
        let fd: Int32
        private var buffer: [UInt8] = []
        private var isClosed = false
        /// The upgrade request's head, once `readRequest` has read it.
        private(set) var request = ""

        init(fd: Int32) { self.fd = fd }

        func header(_ name: String) -> String? {
            for line in request.components(separatedBy: "\r\n") {
                let parts = line.split(separator: ":", maxSplits: 1)
                if parts.count == 2, parts[0].lowercased() == name.lowercased() { return parts[1].trimmingCharacters(in: .whitespaces) }
            }
            return nil
        }

        private func fill() throws {
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = recv(fd, &chunk, chunk.count, 0)
            guard n > 0 else { throw Closed() }
            buffer += chunk[0..<n]
        }

        private func take(_ count: Int) throws -> [UInt8] {
            while buffer.count < count { try fill() }
            defer { buffer.removeFirst(count) }
            return Array(buffer[0..<count])
        }

        func readRequest() throws {
            while buffer.firstRange(of: [13, 10, 13, 10]) == nil { try fill() }
            let end = buffer.firstRange(of: [13, 10, 13, 10])!.lowerBound
            request = String(decoding: buffer[..<end], as: UTF8.self)
            buffer.removeFirst(end + 4)
        }

        /// Reads the upgrade and agrees: the right accept, and `subprotocol` (by default the one offered).
        func accept(subprotocol: String?? = .none, accept: String? = nil, extra: [UInt8] = []) throws {
            try readRequest()
            let key = header("Sec-WebSocket-Key") ?? ""
            var head = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            head += "Sec-WebSocket-Accept: \(accept ?? WebSocketHandshake.accept(for: key))\r\n"
            if let chosen = subprotocol ?? header("Sec-WebSocket-Protocol") { head += "Sec-WebSocket-Protocol: \(chosen)\r\n" }
            try write(Array((head + "\r\n").utf8) + extra)
        }

        func write(_ bytes: [UInt8]) throws {
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { throw Closed() }
                offset += n
            }
        }

        /// A server frame (unmasked unless asked), with any length encoding.
        static func frame(_ opcode: UInt8, _ payload: [UInt8], fin: Bool = true, masked: Bool = false) -> [UInt8] {
            var out: [UInt8] = [(fin ? 0x80 : 0) | opcode]
            let maskBit: UInt8 = masked ? 0x80 : 0
            if payload.count < 126 {
                out.append(maskBit | UInt8(payload.count))
            } else if payload.count <= 0xFFFF {
                out += [maskBit | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
            } else {
                out.append(maskBit | 127)
                for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((payload.count >> shift) & 0xFF)) }
            }
            if masked { out += [1, 2, 3, 4]; out += payload.enumerated().map { $0.element ^ [1, 2, 3, 4][$0.offset & 3] } } else { out += payload }
            return out
        }

        func send(_ opcode: UInt8, _ payload: [UInt8] = [], fin: Bool = true, masked: Bool = false) throws {
            try write(Self.frame(opcode, payload, fin: fin, masked: masked))
        }

        func sendText(_ text: String) throws { try send(0x1, Array(text.utf8)) }

        /// Reads one client frame, unmasking it.
        func readFrame() throws -> Frame {
            let head = try take(2)
            var length = Int(head[1] & 0x7F)
            if length == 126 { let b = try take(2); length = Int(b[0]) << 8 | Int(b[1]) }
            else if length == 127 { length = try take(8).reduce(0) { $0 << 8 | Int($1) } }
            let masked = head[1] & 0x80 != 0
            let key = masked ? try take(4) : [0, 0, 0, 0]
            let payload = try take(length).enumerated().map { $0.element ^ key[$0.offset & 3] }
            return Frame(fin: head[0] & 0x80 != 0, opcode: head[0] & 0x0F, masked: masked, payload: payload)
        }

        /// Waits for the client's close frame (skipping others) and answers it.
        func expectClose() throws -> UInt16 {
            while true {
                let frame = try readFrame()
                guard frame.opcode == 0x8 else { continue }
                try send(0x8, Array(frame.payload.prefix(2)))
                return frame.payload.count >= 2 ? UInt16(frame.payload[0]) << 8 | UInt16(frame.payload[1]) : 1005
            }
        }

        func close() {
            guard !isClosed else { return }
            isClosed = true
            Glibc.close(fd)
        }
    }
}

/// A value behind a lock, for test bookkeeping across threads.
final class Locked<Value>: @unchecked Sendable { // every access holds the lock
    private var value: Value
    private let lock = NSLock()
    init(_ value: Value) { self.value = value }
    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A stand-in for systemd's notify socket: a Unix datagram socket (abstract `@name` or a filesystem path)
/// whose datagrams are recorded, with their arrival times, by a background thread.
final class NotifySocket: @unchecked Sendable {
    struct Datagram: Sendable {
        var at: Date
        var text: String
    }

    /// The value for `NOTIFY_SOCKET`.
    let address: String
    private let fd: Int32
    private let fsPath: String?
    private let lock = NSLock()
    private var datagrams: [Datagram] = []
    private var stopped = false
    private let done = DispatchSemaphore(value: 0)

    struct Failure: Error, CustomStringConvertible { var description: String }

    /// `@pw-test-<hex>` in the abstract namespace.
    static func abstract() throws -> NotifySocket {
        let hex = UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(12)
        return try NotifySocket(address: "@pw-test-\(hex)")
    }

    /// A socket file at `path`.
    static func file(_ path: String) throws -> NotifySocket { try NotifySocket(address: path) }

    private init(address: String) throws {
        self.address = address
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket(AF_UNIX, SOCK_DGRAM): errno \(errno)") }
        var sa = sockaddr_un()
        sa.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(address.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        guard bytes.count < MemoryLayout.size(ofValue: sa.sun_path) else {
            close(fd)
            throw Failure(description: "notify socket address too long: \(address)")
        }
        withUnsafeMutableBytes(of: &sa.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 0 : 1))
        let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard rc == 0 else {
            let e = errno
            close(fd)
            throw Failure(description: "bind(\(address)): errno \(e)")
        }
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        self.fd = fd
        self.fsPath = abstract ? nil : address
        let thread = Thread { [self] in receiveLoop() }
        thread.name = "notify-socket"
        thread.start()
    }

    private func receiveLoop() {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            lock.lock()
            let stop = stopped
            lock.unlock()
            if stop { break }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 {
                let text = String(decoding: buffer[0..<n], as: UTF8.self)
                lock.lock()
                datagrams.append(Datagram(at: Date(), text: text))
                lock.unlock()
            }
        }
        close(fd)
        if let fsPath { unlink(fsPath) }
        done.signal()
    }

    /// Every datagram so far, in arrival order.
    var received: [Datagram] {
        lock.lock()
        defer { lock.unlock() }
        return datagrams
    }

    /// Every `KEY=value` line so far, each with the arrival time of its datagram.
    var lines: [Datagram] {
        received.flatMap { d in d.text.split(separator: "\n").map { Datagram(at: d.at, text: String($0)) } }
    }

    func lines(withPrefix prefix: String) -> [Datagram] { lines.filter { $0.text.hasPrefix(prefix) } }

    /// Waits until a line starting with `prefix` arrived; returns the first such line.
    func waitForLine(withPrefix prefix: String, timeout: Double) async -> Datagram? {
        try? await E2E.eventually(timeout: timeout, interval: 0.05, "a '\(prefix)' notification") {
            self.lines(withPrefix: prefix).first
        }
    }

    /// Stops the receiver and closes (and unlinks) the socket.
    func shutdown() {
        lock.lock()
        let already = stopped
        stopped = true
        lock.unlock()
        if !already { _ = done.wait(timeout: .now() + 2) }
    }

    deinit { shutdown() }
}

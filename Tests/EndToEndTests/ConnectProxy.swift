import Foundation
import FaultProxy
#if canImport(Glibc)
import Glibc
#endif

/// An HTTP CONNECT proxy on 127.0.0.1 (port chosen by the OS), as `HTTPS_PROXY` points at: it answers
/// `CONNECT host:port` with 200, then relays bytes both ways until either side closes. It records every tunnel
/// it opened (target and whether `Proxy-Authorization` was sent); plain requests get 405.
final class ConnectProxy: @unchecked Sendable {
    struct Tunnel: Sendable {
        let target: String
        let proxyAuthorization: String?
    }

    private(set) var port: UInt16 = 0
    private var listenFD: Int32 = -1
    private let lock = NSLock()
    private var _tunnels: [Tunnel] = []
    private var _stopped = false

    var tunnels: [Tunnel] { lock.withLock { _tunnels } }

    func start() throws {
        let fd: Int32
        do {
            (fd, port) = try LoopbackSockets.listen(backlog: 64)
        } catch {
            throw E2E.Timeout(description: "ConnectProxy: \(error)")
        }
        listenFD = fd
        let thread = Thread { [self] in
            while true {
                let client = accept(fd, nil, nil)
                if client < 0 {
                    if errno == EINTR { continue }
                    return
                }
                let worker = Thread { [self] in handle(client) }
                worker.start()
            }
        }
        thread.start()
    }

    func stop() {
        let fd: Int32 = lock.withLock {
            if _stopped { return -1 }
            _stopped = true
            return listenFD
        }
        guard fd >= 0 else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    private func handle(_ client: Int32) {
        defer { close(client) }
        var head: [UInt8] = []
        var byte: UInt8 = 0
        while !head.ends(with: Array("\r\n\r\n".utf8)) {
            guard recv(client, &byte, 1, 0) == 1, head.count < 16_384 else { return }
            head.append(byte)
        }
        let lines = String(decoding: head, as: UTF8.self).components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ")
        guard parts.count == 3, parts[0] == "CONNECT" else {
            _ = send(client, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n", 56, Int32(MSG_NOSIGNAL))
            return
        }
        let target = String(parts[1])
        let auth = lines.first { $0.lowercased().hasPrefix("proxy-authorization:") }
            .map { String($0.drop(while: { $0 != ":" }).dropFirst()).trimmingCharacters(in: .whitespaces) }
        lock.withLock { _tunnels.append(Tunnel(target: target, proxyAuthorization: auth)) }

        guard let colon = target.lastIndex(of: ":"), let port = UInt16(target[target.index(after: colon)...]) else { return }
        let upstream = LoopbackSockets.connect(host: String(target[..<colon]), port: port)
        defer { if upstream >= 0 { close(upstream) } }
        let answer = upstream >= 0 ? "HTTP/1.1 200 Connection established\r\n\r\n" : "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
        _ = answer.withCString { send(client, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
        guard upstream >= 0 else { return }

        var fds = [pollfd(fd: client, events: Int16(POLLIN), revents: 0), pollfd(fd: upstream, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while poll(&fds, 2, 30_000) > 0 {
            for (index, entry) in fds.enumerated() where entry.revents != 0 {
                let n = recv(entry.fd, &buffer, buffer.count, 0)
                if n <= 0 { return }
                let other = fds[1 - index].fd
                var offset = 0
                while offset < n {
                    let sent = buffer.withUnsafeBytes { send(other, $0.baseAddress! + offset, n - offset, Int32(MSG_NOSIGNAL)) }
                    if sent <= 0 { return }
                    offset += sent
                }
            }
        }
    }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}

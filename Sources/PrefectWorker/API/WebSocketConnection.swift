import CCurl
import CLinux
import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension WebSocket {
    /// The socket under a `WebSocket`: curl's connect-only handle, the wake-up pipe, the decoder. Opened on the
    /// connection's thread and used only there, except `wake()` (a write to a pipe) and the stream's continuation.
    final class Connection: @unchecked Sendable { // see above: one thread owns it; wake() and the continuation are thread-safe
        let easy: UnsafeMutableRawPointer
        let socket: Int32
        let shown: String
        let limits: Limits
        var decoder: WebSocketDecoder
        /// Bytes the handshake read past the end of the server's answer (the first frames, perhaps).
        let leftover: [UInt8]
        let stream: AsyncThrowingStream<Message, Error>
        let continuation: AsyncThrowingStream<Message, Error>.Continuation
        private let errorBuffer: UnsafeMutablePointer<CChar>
        private let wakeRead: Int32
        private let wakeWrite: Int32

        static func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

        private init(easy: UnsafeMutableRawPointer, socket: Int32, shown: String, limits: Limits, leftover: [UInt8],
                     errorBuffer: UnsafeMutablePointer<CChar>) {
            self.easy = easy
            self.socket = socket
            self.shown = shown
            self.limits = limits
            self.leftover = leftover
            self.errorBuffer = errorBuffer
            decoder = WebSocketDecoder(maxFrameBytes: limits.maxFrameBytes, maxMessageBytes: limits.maxMessageBytes)
            (stream, continuation) = AsyncThrowingStream.makeStream(of: Message.self)
            var fds: [Int32] = [-1, -1]
            _ = cl_pipe_cloexec_nonblocking(&fds)
            (wakeRead, wakeWrite) = (fds[0], fds[1])
        }

        /// Connects (through curl, as a REST call would), writes the upgrade and checks the answer; blocks the
        /// calling thread for at most `limits.handshakeTimeout`.
        static func open(url: URL, shown: String, options: CurlTransport.Options, headers: [String],
                         subprotocol: String?, limits: Limits, abandoned: @escaping () -> Bool = { false }) throws -> Connection {
            guard let scheme = url.scheme?.lowercased(), ["ws", "wss", "http", "https"].contains(scheme),
                  var parts = URLComponents(url: url, resolvingAgainstBaseURL: false) else {
                throw WebSocketError(url: shown, reason: "not a ws:// or wss:// URL")
            }
            parts.scheme = scheme == "wss" || scheme == "https" ? "https" : "http"
            let httpURL = parts.url!
            _ = CurlTransport.globalInit
            let easy = curl_easy_init()!
            let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
            errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
            func fail(_ reason: String, status: Int? = nil) -> WebSocketError {
                curl_easy_cleanup(easy)
                errorBuffer.deallocate()
                return WebSocketError(url: shown, reason: reason, status: status)
            }
            var options = options
            options.timeoutSeconds = min(options.timeoutSeconds, limits.handshakeTimeout)
            options.configureConnection(easy, url: httpURL.absoluteString, errorBuffer: errorBuffer)
            _ = pw_easy_setopt_long(easy, CURLOPT_CONNECT_ONLY, 1)
            // Through a proxy, always a CONNECT tunnel: the upgrade then goes to the server itself.
            if options.proxy != nil { _ = pw_easy_setopt_long(easy, CURLOPT_HTTPPROXYTUNNEL, 1) }
            let deadline = now() + limits.handshakeTimeout
            let code = curl_easy_perform(easy)
            guard code == CURLE_OK else {
                let detail = String(cString: errorBuffer)
                throw fail("cannot connect: " + (detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail))
            }
            var socket: curl_socket_t = -1
            _ = pw_easy_getinfo_socket(easy, CURLINFO_ACTIVESOCKET, &socket)
            let handshake = WebSocketHandshake(subprotocol: subprotocol)
            let connection = Connection(easy: easy, socket: socket, shown: shown, limits: limits, leftover: [],
                                        errorBuffer: errorBuffer)
            do {
                var request = Array(handshake.request(url: httpURL, headers: headers).utf8)
                var sent = 0
                while sent < request.count {
                    sent = try connection.write(request, from: sent)
                    if sent < request.count { try connection.waitUntil(deadline, writable: true, what: "sending the upgrade", abandoned: abandoned) }
                }
                request = []
                // Read the answer's head; what follows it belongs to the frames.
                var received: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                var headEnd: Int?
                while headEnd == nil {
                    guard let count = try connection.read(into: &buffer) else {
                        try connection.waitUntil(deadline, writable: false, what: "waiting for the answer to the upgrade", abandoned: abandoned)
                        continue
                    }
                    received += buffer[0..<count]
                    headEnd = received.firstRange(of: [13, 10, 13, 10])?.lowerBound
                    if headEnd == nil, received.count > 16 * 1024 {
                        throw WebSocketError(url: shown, reason: "the answer to the upgrade has more than 16 KB of headers")
                    }
                }
                try handshake.verify(responseHead: String(decoding: received[..<headEnd!], as: UTF8.self))
                return Connection(moving: connection, leftover: Array(received[(headEnd! + 4)...]))
            } catch let error as WebSocketHandshakeError {
                connection.close()
                throw WebSocketError(url: shown, reason: "the server " + error.reason, status: error.status)
            } catch {
                connection.close()
                throw error
            }
        }

        /// The same connection with the bytes read past the handshake.
        private convenience init(moving other: Connection, leftover: [UInt8]) {
            self.init(easy: other.easy, socket: other.socket, shown: other.shown, limits: other.limits, leftover: leftover,
                      errorBuffer: other.errorBuffer)
            other.closePipes()
        }

        /// Writes from `offset` until curl would block; returns the new offset.
        func write(_ bytes: [UInt8], from offset: Int) throws(WebSocketError) -> Int {
            var offset = offset
            while offset < bytes.count {
                var sent = 0
                let code = bytes.withUnsafeBytes { curl_easy_send(easy, $0.baseAddress! + offset, bytes.count - offset, &sent) }
                if code == CURLE_AGAIN { break }
                guard code == CURLE_OK else { throw curlFailure(code, doing: "sending") }
                offset += sent
            }
            return offset
        }

        /// Best effort, for a close frame on the way out.
        func flush(_ bytes: [UInt8], from offset: Int) {
            _ = try? write(bytes, from: offset)
        }

        /// Reads what curl has; nil when it would block. A connection ended without a close frame throws.
        func read(into buffer: inout [UInt8]) throws(WebSocketError) -> Int? {
            var count = 0
            let code = buffer.withUnsafeMutableBytes { curl_easy_recv(easy, $0.baseAddress!, $0.count, &count) }
            if code == CURLE_AGAIN { return nil }
            guard code == CURLE_OK else { throw curlFailure(code, doing: "receiving") }
            guard count > 0 else {
                throw WebSocketError(url: shown, reason: "the server ended the connection without a close frame (1006)", closeCode: 1006)
            }
            return count
        }

        /// Sleeps in poll(2) until the socket is readable (or writable, when asked), a wake-up, or `seconds`.
        func wait(writable: Bool, seconds: Double) {
            var fds = [pollfd(fd: socket, events: Int16(POLLIN) | (writable ? Int16(POLLOUT) : 0), revents: 0),
                       pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            let millis = Int32(max(0, min(seconds, 3600)) * 1000) + 1
            _ = poll(&fds, 2, millis)
            var drain = [UInt8](repeating: 0, count: 64)
            if fds[1].revents != 0 { while Glibc.read(wakeRead, &drain, drain.count) > 0 {} }
        }

        /// Waits for the socket until `deadline`, in slices of a quarter second so an abandoned connect ends soon.
        private func waitUntil(_ deadline: Double, writable: Bool, what: String, abandoned: () -> Bool) throws(WebSocketError) {
            let left = deadline - Self.now()
            if abandoned() { throw WebSocketError(url: shown, reason: "connecting was cancelled") }
            guard left > 0 else {
                throw WebSocketError(url: shown, reason: String(format: "no answer from the server within %g s (%@)", limits.handshakeTimeout, what))
            }
            wait(writable: writable, seconds: min(left, 0.25))
        }

        func wake() {
            var byte: UInt8 = 1
            _ = Glibc.write(wakeWrite, &byte, 1)
        }

        /// The error for a breach by the server, after telling it why (best effort).
        func fail(_ error: WebSocketProtocolError) -> WebSocketError {
            flush(WebSocketFrame.encode(.close, WebSocketFrame.closePayload(code: error.code)), from: 0)
            return WebSocketError(url: shown, reason: error.description + "; closing the connection", closeCode: error.code)
        }

        private func curlFailure(_ code: CURLcode, doing: String) -> WebSocketError {
            let detail = String(cString: errorBuffer)
            return WebSocketError(url: shown, reason: "connection lost while \(doing) (\(detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail))", closeCode: 1006)
        }

        private func closePipes() {
            Glibc.close(wakeRead)
            Glibc.close(wakeWrite)
        }

        func close() {
            curl_easy_cleanup(easy)
            errorBuffer.deallocate()
            closePipes()
        }
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
import XCTest
@testable import PrefectWorker

/// The WebSocket client against a scripted in-process server: the handshake's checks, framing, limits, ping,
/// the close handshake, and the failures a real network produces.
final class WebSocketTests: XCTestCase {
    private let options = CurlTransport.Options(timeoutSeconds: 5)

    private func connect(_ server: FakeWebSocketServer, limits: WebSocket.Limits = WebSocket.Limits(),
                         headers: [String] = []) async throws -> WebSocket {
        try await WebSocket.connect(url: server.url, options: options, headers: headers, subprotocol: "prefect", limits: limits)
    }

    private func nextMessage(_ socket: WebSocket) async throws -> WebSocket.Message? {
        var iterator = socket.messages.makeAsyncIterator()
        return try await iterator.next()
    }

    func testAcceptKeyIsTheRFCExample() {
        XCTAssertEqual(WebSocketHandshake.accept(for: "dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        XCTAssertEqual(SHA1.hash(Array("abc".utf8)).map { String(format: "%02x", $0) }.joined(), "a9993e364706816aba3e25717850c26c9cd0d89d")
    }

    func testUpgradeCarriesHeadersAndMaskedTextRoundTrips() async throws {
        let seen = Locked<[FakeWebSocketServer.Peer.Frame]>([])
        let request = Locked("")
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            request.withLock { $0 = peer.request }
            let frame = try peer.readFrame()
            seen.withLock { $0.append(frame) }
            try peer.sendText("echo: " + frame.text)
            _ = try peer.expectClose()
        }
        defer { server.stop() }
        let socket = try await connect(server, headers: ["Authorization: Bearer k", "X-Custom: 1", "Connection: keep-alive"])
        try await socket.send(text: #"{"type":"auth","token":null}"#)
        let message = try await nextMessage(socket)
        XCTAssertEqual(message, .text(#"echo: {"type":"auth","token":null}"#))
        await socket.close()
        let frame = try XCTUnwrap(seen.withLock { $0.first })
        XCTAssertTrue(frame.masked, "client frames must be masked")
        XCTAssertTrue(frame.fin)
        let head = request.withLock { $0 }
        XCTAssertTrue(head.hasPrefix("GET /api/events/out HTTP/1.1\r\n"), head)
        XCTAssertTrue(head.contains("Sec-WebSocket-Protocol: prefect"))
        XCTAssertTrue(head.contains("Authorization: Bearer k"))
        XCTAssertTrue(head.contains("X-Custom: 1"))
        XCTAssertFalse(head.contains("keep-alive"), "the caller cannot override the upgrade's own headers")
        XCTAssertEqual(server.errors.withLock { $0 }, [])
    }

    func testMasksDifferPerFrame() {
        let a = WebSocketFrame.encode(.text, Array("same".utf8))
        let b = WebSocketFrame.encode(.text, Array("same".utf8))
        XCTAssertNotEqual(Array(a[2..<6]), Array(b[2..<6]), "a fresh mask per frame")
        XCTAssertEqual(WebSocketFrame.encode(.text, Array(repeating: 1, count: 70_000)).count, 70_000 + 14)
    }

    func testFragmentedMessageWithPingInBetweenIsReassembled() async throws {
        let pongs = Locked<[FakeWebSocketServer.Peer.Frame]>([])
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            try peer.send(0x1, Array("hel".utf8), fin: false)
            try peer.send(0x9, Array("p1".utf8))
            try peer.send(0x0, Array("lo ".utf8), fin: false)
            try peer.send(0x0, Array(String(repeating: "w", count: 300).utf8), fin: true)
            let pong = try peer.readFrame()
            pongs.withLock { $0.append(pong) }
            _ = try peer.expectClose()
        }
        defer { server.stop() }
        let socket = try await connect(server)
        let message = try await nextMessage(socket)
        XCTAssertEqual(message, .text("hello " + String(repeating: "w", count: 300)))
        await socket.close()
        let pong = try XCTUnwrap(pongs.withLock { $0.first })
        XCTAssertEqual(pong.opcode, 0xA)
        XCTAssertEqual(pong.text, "p1")
        XCTAssertTrue(pong.masked)
    }

    func testMaskedServerFrameIsAProtocolError() async throws {
        let closeCode = Locked<UInt16?>(nil)
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            try peer.send(0x1, Array("hi".utf8), masked: true)
            let frame = try peer.readFrame()
            closeCode.withLock { $0 = UInt16(frame.payload[0]) << 8 | UInt16(frame.payload[1]) }
        }
        defer { server.stop() }
        let socket = try await connect(server)
        do {
            _ = try await nextMessage(socket)
            XCTFail("a masked server frame must fail the connection")
        } catch let error as WebSocketError {
            XCTAssertTrue(error.description.contains("masked"), error.description)
        }
        await socket.close()
        server.stop()
        XCTAssertEqual(closeCode.withLock { $0 }, 1002)
    }

    func testOversizeMessageFailsNamingURLAndLimit() async throws {
        let closeCode = Locked<UInt16?>(nil)
        var limits = WebSocket.Limits()
        limits.maxMessageBytes = 1000
        let server2 = try FakeWebSocketServer { peer in
            try peer.accept()
            try peer.send(0x1, Array(repeating: 65, count: 600), fin: false)
            try peer.send(0x0, Array(repeating: 65, count: 600), fin: false)
            let frame = try peer.readFrame()
            closeCode.withLock { $0 = UInt16(frame.payload[0]) << 8 | UInt16(frame.payload[1]) }
        }
        defer { server2.stop() }
        let socket2 = try await connect(server2, limits: limits)
        do {
            _ = try await nextMessage(socket2)
            XCTFail("an oversize message must fail")
        } catch let error as WebSocketError {
            XCTAssertTrue(error.description.contains("ws://127.0.0.1:\(server2.port)/api/events/out"), error.description)
            XCTAssertTrue(error.description.contains("1000-byte message limit"), error.description)
        }
        await socket2.close()
        server2.stop()
        XCTAssertEqual(closeCode.withLock { $0 }, 1009)
    }

    func testOversizeFrameFailsBeforeItsPayloadArrives() async throws {
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            // The header alone announces 10 MB; no payload follows.
            try peer.write([0x82, 127, 0, 0, 0, 0, 0, 0xA0, 0, 0])
            _ = try? peer.readFrame()
        }
        defer { server.stop() }
        let socket = try await connect(server)
        do {
            _ = try await nextMessage(socket)
            XCTFail("an oversize frame must fail")
        } catch let error as WebSocketError {
            XCTAssertTrue(error.description.contains("4194304-byte frame limit"), error.description)
        }
        await socket.close()
    }

    func testPingFloodIsAnsweredWithoutLosingTheMessage() async throws {
        let pongs = Locked<[String]>([])
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            var flood: [UInt8] = []
            for i in 0..<5000 { flood += FakeWebSocketServer.Peer.frame(0x9, Array("\(i)".utf8)) }
            try peer.write(flood)
            try peer.sendText("after the flood")
            while true {
                let frame = try peer.readFrame()
                if frame.opcode == 0xA { pongs.withLock { $0.append(frame.text) } }
                if frame.opcode == 0x8 { try peer.send(0x8, Array(frame.payload.prefix(2))); return }
            }
        }
        defer { server.stop() }
        let socket = try await connect(server)
        let message = try await nextMessage(socket)
        XCTAssertEqual(message, .text("after the flood"))
        try await Task.sleep(seconds: 0.2)
        await socket.close()
        server.stop()
        let answered = pongs.withLock { $0 }
        XCTAssertGreaterThanOrEqual(answered.count, 1)
        XCTAssertLessThan(answered.count, 5000, "only the latest ping needs an answer; a flood must not queue thousands")
        XCTAssertEqual(answered.last, "4999")
    }

    func testAbruptCloseEndsTheStreamWithAnError() async throws {
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            try peer.sendText("one")
        }
        defer { server.stop() }
        let socket = try await connect(server)
        var received: [WebSocket.Message] = []
        do {
            for try await message in socket.messages { received.append(message) }
            XCTFail("a connection ended without a close frame must throw")
        } catch let error as WebSocketError {
            XCTAssertEqual(error.closeCode, 1006, error.description)
            XCTAssertTrue(error.description.contains("without a close frame"), error.description)
        }
        XCTAssertEqual(received, [.text("one")])
        await socket.close()
    }

    func testServerCloseIsEchoedAndEndsTheStreamCleanly() async throws {
        let echoed = Locked<FakeWebSocketServer.Peer.Frame?>(nil)
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            try peer.send(0x8, [0x03, 0xE9] + Array("going away".utf8))
            let frame = try peer.readFrame()
            echoed.withLock { $0 = frame }
        }
        defer { server.stop() }
        let socket = try await connect(server)
        var count = 0
        for try await _ in socket.messages { count += 1 }
        XCTAssertEqual(count, 0)
        await socket.close()
        server.stop()
        let frame = try XCTUnwrap(echoed.withLock { $0 })
        XCTAssertEqual(frame.opcode, 0x8)
        XCTAssertEqual(Array(frame.payload.prefix(2)), [0x03, 0xE9])
    }

    func testClientCloseWaitsForTheServersAnswer() async throws {
        let code = Locked<UInt16?>(nil)
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            let closing = try peer.expectClose()
            code.withLock { $0 = closing }
        }
        defer { server.stop() }
        let socket = try await connect(server)
        let start = Date()
        await socket.close()
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.5, "an answered close must not wait for the close timeout")
        server.stop()
        XCTAssertEqual(code.withLock { $0 }, 1000)
        do {
            try await socket.send(text: "late")
            XCTFail("sending on a closed connection must throw")
        } catch let error as WebSocketError {
            XCTAssertTrue(error.description.contains("closed"), error.description)
        }
    }

    func testBadAcceptIsRefused() async throws {
        let server = try FakeWebSocketServer { peer in try peer.accept(accept: "bm90IHRoZSByaWdodCBrZXk=") }
        defer { server.stop() }
        do {
            _ = try await connect(server)
            XCTFail("a wrong Sec-WebSocket-Accept must be refused")
        } catch let error as WebSocketError {
            XCTAssertTrue(error.description.contains("Sec-WebSocket-Accept"), error.description)
            XCTAssertTrue(error.description.contains("ws://127.0.0.1:\(server.port)"), error.description)
        }
    }

    func testHTTPRefusalCarriesTheStatus() async throws {
        let server = try FakeWebSocketServer { peer in
            try peer.readRequest()
            try peer.write(Array("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".utf8))
        }
        defer { server.stop() }
        do {
            _ = try await connect(server)
            XCTFail("a 403 must be refused")
        } catch let error as WebSocketError {
            XCTAssertEqual(error.status, 403)
            XCTAssertTrue(error.description.contains("HTTP 403"), error.description)
        }
    }

    func testWrongSubprotocolIsRefused() async throws {
        for answer: String? in ["graphql-ws", nil] {
            let server = try FakeWebSocketServer { peer in try peer.accept(subprotocol: .some(answer)) }
            defer { server.stop() }
            do {
                _ = try await connect(server)
                XCTFail("subprotocol \(answer ?? "none") must be refused")
            } catch let error as WebSocketError {
                XCTAssertTrue(error.description.contains("subprotocol"), error.description)
            }
        }
    }

    func testServerThatNeverAnswersTimesOut() async throws {
        let server = try FakeWebSocketServer { peer in
            try peer.readRequest()
            Thread.sleep(forTimeInterval: 3)
        }
        defer { server.stop() }
        var limits = WebSocket.Limits()
        limits.handshakeTimeout = 0.5
        let start = Date()
        do {
            _ = try await connect(server, limits: limits)
            XCTFail("a silent server must time out")
        } catch let error as WebSocketError {
            XCTAssertTrue(error.description.contains("no answer from the server within 0.5 s"), error.description)
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 2)
    }

    func testCancellingTheConnectEndsTheWaitForASilentServer() async throws {
        let server = try FakeWebSocketServer { peer in
            try peer.readRequest()
            Thread.sleep(forTimeInterval: 3)
        }
        defer { server.stop() }
        let options = self.options
        let url = server.url
        let connecting = Task { try await WebSocket.connect(url: url, options: options, subprotocol: "prefect") } // 30 s handshake bound
        try await Task.sleep(seconds: 0.3)
        let start = Date()
        connecting.cancel()
        do {
            _ = try await connecting.value
            XCTFail("a cancelled connect must not return a socket")
        } catch is CancellationError {}
        XCTAssertLessThan(Date().timeIntervalSince(start), 1, "cancelling must not wait out the handshake timeout")
    }

        func testSilentConnectionIsPingedAndDeclaredDead() async throws {
        let pinged = Locked(false)
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            let frame = try peer.readFrame()
            pinged.withLock { $0 = frame.opcode == 0x9 }
            Thread.sleep(forTimeInterval: 2) // never answers
        }
        defer { server.stop() }
        var limits = WebSocket.Limits()
        limits.pingInterval = 0.3
        limits.pingTimeout = 0.3
        let socket = try await connect(server, limits: limits)
        do {
            _ = try await nextMessage(socket)
            XCTFail("an unanswered ping must end the connection")
        } catch let error as WebSocketError {
            XCTAssertTrue(error.description.contains("no answer to a ping"), error.description)
        }
        XCTAssertTrue(pinged.withLock { $0 })
        await socket.close()
    }

    func testAnyFrameAnswersForALivePeerNotOnlyAPong() async throws {
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            for i in 0..<8 {
                Thread.sleep(forTimeInterval: 0.2)
                try peer.sendText("tick \(i)") // never a pong
            }
            _ = try peer.expectClose()
        }
        defer { server.stop() }
        var limits = WebSocket.Limits()
        limits.pingInterval = 0.15
        limits.pingTimeout = 0.3
        let socket = try await connect(server, limits: limits)
        var ticks = 0
        for try await _ in socket.messages {
            ticks += 1
            if ticks == 8 { break }
        }
        XCTAssertEqual(ticks, 8, "a peer that keeps sending is alive, whether or not it answers pings")
        await socket.close()
    }

        func testIdleConnectionCostsNoCPU() async throws {
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            _ = try peer.expectClose()
        }
        defer { server.stop() }
        let socket = try await connect(server)
        let before = Self.cpuSeconds()
        try await Task.sleep(seconds: 1)
        let used = Self.cpuSeconds() - before
        await socket.close()
        XCTAssertLessThan(used, 0.05, "an idle WebSocket must sleep in poll, not spin")
    }

    private static func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }
}

extension WebSocketTests {
    /// `ping()` returns on the pong to its own ping, after what was sent before it: an empty pong (as for the
    /// keep-alive ping) answers nothing, and a connection that ends fails the wait.
    func testPingReturnsOnItsOwnPongAfterWhatWasSentBefore() async throws {
        let order = Locked<[String]>([])
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            while true {
                let frame = try peer.readFrame()
                switch frame.opcode {
                case 0x1: order.withLock { $0.append("text " + frame.text) }
                case 0x9:
                    order.withLock { $0.append("ping") }
                    try peer.send(0xA, [])  // not its answer
                    Thread.sleep(forTimeInterval: 0.3)
                    order.withLock { $0.append("pong") }
                    try peer.send(0xA, frame.payload)
                    _ = try peer.readFrame()  // the client's close
                    peer.close()  // no close answer: the next ping fails with the connection
                    return
                default: break
                }
            }
        }
        defer { server.stop() }
        let socket = try await connect(server)
        try await socket.send(text: "a")
        try await socket.send(text: "b")
        let started = Date()
        try await socket.ping()
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 0.25, "the empty pong does not answer it")
        XCTAssertEqual(order.withLock { $0 }, ["text a", "text b", "ping", "pong"])
        await socket.close()
        do {
            try await socket.ping()
            XCTFail("a ping on a closed connection must fail")
        } catch let error as WebSocketError {
            XCTAssertTrue(error.description.contains("closed"), error.description)
        }
    }
}

extension WebSocketTests {
    /// A server that keeps sending but never answers our ping keeps the line alive (any frame does), so `ping()`
    /// alone would wait as long as it talks: a caller bounds it with `withTimeout`, which cancels the wait
    /// at once; the connection stays usable.
    func testACancelledPingStopsWaitingAndTheConnectionStaysUp() async throws {
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            while true {
                let frame = try peer.readFrame()
                if frame.opcode == 0x8 { try peer.send(0x8, Array(frame.payload.prefix(2))); return }
                if frame.opcode == 0x1 { try peer.sendText("echo: " + frame.text) }  // pings: never answered
            }
        }
        defer { server.stop() }
        let socket = try await connect(server)
        let started = Date()
        do {
            try await withTimeout(seconds: 0.3, error: { TimeoutError(seconds: 0.3) }) { try await socket.ping() }
            XCTFail("the ping was never answered")
        } catch {
            XCTAssertTrue(error is TimeoutError, "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 2, "not the 20 s ping timeout")
        try await socket.send(text: "still there")
        let echo = try await nextMessage(socket)
        XCTAssertEqual(echo, .text("echo: still there"))

        let cancelled = Task { try await socket.ping() }
        cancelled.cancel()
        let result = await cancelled.result
        XCTAssertThrowsError(try result.get()) { XCTAssertTrue($0 is CancellationError, "\($0)") }
        await socket.close()
    }
}

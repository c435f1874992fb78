import Foundation
import XCTest
@testable import PrefectWorker

/// `EventsSocket` against the in-process WebSocket server (playing `/api/events/in`) and `FakePrefectAPI` (the
/// REST fallback, `POST /api/events`).
final class EventsSocketTests: XCTestCase {
    private var rest: FakePrefectAPI!
    private var servers: [FakeWebSocketServer] = []

    override func setUpWithError() throws {
        rest = try FakePrefectAPI()
        rest.route("POST", "/api/events") { _, _, _ in .json(204, "") }
    }

    override func tearDown() {
        for server in servers { server.stop() }
        servers = []
        rest.stop()
        rest = nil
    }

    /// What the fake `/api/events/in` saw: connections, the first message of each, events, close frames.
    final class Seen: @unchecked Sendable {
        let connections = Locked(0)
        let firstMessages = Locked<[String]>([])
        let events = Locked<[String]>([])
        let closes = Locked(0)
    }

    /// Accepts, takes the auth message (when `auth`), answers `authAnswer`, then records text messages, answers
    /// pings (when `answerPings`) and the close handshake.
    private func server(_ seen: Seen, auth: Bool = true, authAnswer: String = #"{"type":"auth_success"}"#,
                        answerPings: Bool = true) throws -> FakeWebSocketServer {
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            seen.connections.withLock { $0 += 1 }
            if auth {
                let first = try peer.readFrame()
                seen.firstMessages.withLock { $0.append(first.text) }
                try peer.sendText(authAnswer)
            }
            while true {
                let frame = try peer.readFrame()
                switch frame.opcode {
                case 0x1: seen.events.withLock { $0.append(frame.text) }
                case 0x9: if answerPings { try peer.send(0xA, frame.payload) }
                case 0x8:
                    seen.closes.withLock { $0 += 1 }
                    try peer.send(0x8, frame.payload)
                    return
                default: break
                }
            }
        }
        servers.append(server)
        return server
    }

    private func socket(to server: FakeWebSocketServer, authToken: String?? = .some(nil), idleSeconds: Double = 300,
                        connects: Locked<Int> = Locked(0)) -> EventsSocket {
        EventsSocket(client: rest.client(), log: .console, connect: {
            connects.withLock { $0 += 1 }
            return try await WebSocket.connect(url: server.url, options: CurlTransport.Options(timeoutSeconds: 5), subprotocol: "prefect")
        }, authToken: authToken, idleSeconds: idleSeconds, answerTimeout: 1)
    }

    private func event(_ n: Int) -> JSON {
        .object(["id": .string("00000000-0000-0000-0000-00000000000\(n)"), "event": "prefect.worker.test", "payload": .object(["n": .int(n)])])
    }

    /// The ids in the REST fallback's batches, in order.
    private var restIDs: [String] {
        rest.requests("POST", "/api/events").flatMap { request -> [String] in
            guard case .array(let events)? = try? JSON.decode(request.body) else { return [] }
            return events.compactMap { $0["id"]?.stringValue }
        }
    }

    func testEventsGoOverOneAuthenticatedSocketOneMessageEach() async throws {
        let seen = Seen()
        let events = socket(to: try server(seen))
        try await events.deliver(.array([event(1), event(2)]))
        try await events.deliver(.array([event(3)]))
        let auth = try JSON.decode(Data(seen.firstMessages.withLock { $0 }[0].utf8))
        XCTAssertEqual(auth, .object(["type": "auth", "token": .null]), "Prefect's auth message, with no auth string")
        // Delivered means confirmed: every event has reached the server by the time `deliver` returns.
        XCTAssertEqual(seen.events.withLock { $0 }, [event(1), event(2), event(3)].map { $0.encoded() })
        XCTAssertEqual(seen.connections.withLock { $0 }, 1, "one socket for both batches")
        XCTAssertEqual(rest.requests("POST", "/api/events").count, 0, "no REST call while the socket works")
        let isOpen = await events.isOpen
        XCTAssertTrue(isOpen)
        await events.close()
        XCTAssertEqual(seen.closes.withLock { $0 }, 1, "closed with the close handshake")
    }

    func testTheAuthStringIsTheTokenAndPrefectCloudGetsNoAuthMessage() async throws {
        let seen = Seen()
        let events = socket(to: try server(seen), authToken: .some("user:secret"))
        try await events.deliver(.array([event(1)]))
        XCTAssertEqual(try JSON.decode(Data(seen.firstMessages.withLock { $0 }[0].utf8))["token"], .string("user:secret"))
        await events.close()

        let cloud = Seen()
        let cloudEvents = socket(to: try server(cloud, auth: false), authToken: nil)
        try await cloudEvents.deliver(.array([event(2)]))
        XCTAssertEqual(cloud.events.withLock { $0 }, [event(2).encoded()], "the first message is the event itself")
        await cloudEvents.close()
    }

    func testASocketTheServerClosedSinceItsLastUseIsReplacedAtOnce() async throws {
        // Each connection carries one batch, then the server goes away (as in a restart) without a close frame.
        let seen = Seen()
        let server = try FakeWebSocketServer { peer in
            try peer.accept()
            seen.connections.withLock { $0 += 1 }
            _ = try peer.readFrame()
            try peer.sendText(#"{"type":"auth_success"}"#)
            while true {
                let frame = try peer.readFrame()
                if frame.opcode == 0x1 { seen.events.withLock { $0.append(frame.text) } }
                if frame.opcode == 0x9 {
                    try peer.send(0xA, frame.payload)
                    peer.close()
                    return
                }
            }
        }
        servers.append(server)
        let events = socket(to: server)
        try await events.deliver(.array([event(1)]))
        try await Task.sleep(seconds: 0.2)
        try await events.deliver(.array([event(2)]))
        XCTAssertEqual(seen.connections.withLock { $0 }, 2)
        XCTAssertEqual(seen.events.withLock { $0 }, [event(1), event(2)].map { $0.encoded() })
        XCTAssertEqual(rest.requests("POST", "/api/events").count, 0, "a stale socket is no reason for REST")
        await events.close()
    }

    func testRefusedCredentialsSendTheBatchByREST() async throws {
        let seen = Seen()
        let events = socket(to: try server(seen, authAnswer: #"{"type":"auth_failure","reason":"bad token"}"#))
        try await events.deliver(.array([event(1)]))
        XCTAssertEqual(restIDs, [event(1)["id"]!.stringValue!])
        XCTAssertEqual(seen.events.withLock { $0 }, [])
        let isOpen = await events.isOpen
        XCTAssertFalse(isOpen)
    }

    func testAnUnconfirmedBatchGoesByRESTWholeAndTheSocketWaitsOutItsBackoff() async throws {
        let seen = Seen()
        let connects = Locked(0)
        let events = socket(to: try server(seen, answerPings: false), connects: connects)
        let started = Date()
        try await events.deliver(.array([event(1), event(2)]))
        XCTAssertLessThan(Date().timeIntervalSince(started), 4, "the pong is awaited for answerTimeout (1 s), not forever")
        // The server may have read them, but without the pong they are not known to be delivered: resent by
        // REST with the same ids (the server stores an id once).
        XCTAssertEqual(restIDs, [event(1), event(2)].map { $0["id"]!.stringValue! })
        try await events.deliver(.array([event(3)]))
        XCTAssertEqual(restIDs.last, event(3)["id"]!.stringValue!, "meanwhile, by REST")
        XCTAssertEqual(connects.withLock { $0 }, 1, "no new socket before the backoff (5 s and more) has passed")
    }

    func testASocketThatCannotBeOpenedLeavesEventsToREST() async throws {
        let connects = Locked(0)
        let lines = Locked<[String]>([])
        let log = Logger(output: Logger.Output(redact: { line in lines.withLock { $0.append(line) }; return line }, runLine: nil))
        let events = EventsSocket(client: rest.client(), log: log, connect: {
            connects.withLock { $0 += 1 }
            throw WebSocketError(url: "ws://127.0.0.1:1/api/events/in", reason: "refused", status: 404)
        }, authToken: .some(nil), answerTimeout: 1)
        try await events.deliver(.array([event(1)]))
        try await events.deliver(.array([event(2)]))
        XCTAssertEqual(restIDs, [event(1), event(2)].map { $0["id"]!.stringValue! })
        XCTAssertEqual(connects.withLock { $0 }, 1)
        XCTAssertEqual(lines.withLock { $0.filter { $0.hasPrefix("worker events socket failed") }.count }, 1, "through the logger it was given: \(lines.withLock { $0 })")
    }

    func testNeitherWayThrowsSoTheShipperKeepsTheBatch() async throws {
        rest.outage = .status(503)
        let events = EventsSocket(client: rest.client(), log: .console, connect: { throw WebSocketError(url: "ws://x/api/events/in", reason: "refused") },
                                  authToken: .some(nil), answerTimeout: 1)
        do {
            try await events.deliver(.array([event(1)]))
            XCTFail("delivered nowhere, yet no error")
        } catch {}
    }

    func testAnIdleSocketIsClosedAndTheNextEventOpensANewOne() async throws {
        let seen = Seen()
        let events = socket(to: try server(seen), idleSeconds: 0.3)
        try await events.deliver(.array([event(1)]))
        _ = try await waitUntil(timeout: 5) { seen.closes.withLock { $0 } == 1 }
        let isOpen = await events.isOpen
        XCTAssertFalse(isOpen, "closed after 0.3 s without events")
        try await events.deliver(.array([event(2)]))
        XCTAssertEqual(seen.connections.withLock { $0 }, 2)
        XCTAssertEqual(seen.events.withLock { $0 }, [event(1), event(2)].map { $0.encoded() })
        XCTAssertEqual(rest.requests("POST", "/api/events").count, 0)
        await events.close()
    }

    func testEventsKeepTheSocketOpenPastTheIdleTime() async throws {
        let seen = Seen()
        let events = socket(to: try server(seen), idleSeconds: 0.6)
        for n in 1...5 {
            try await events.deliver(.array([event(n)]))
            try await Task.sleep(seconds: 0.25)
        }
        XCTAssertEqual(seen.connections.withLock { $0 }, 1, "in use, the socket stays open")
        XCTAssertEqual(seen.closes.withLock { $0 }, 0)
        await events.close()
    }

    private func waitUntil(timeout: Double, _ condition: () -> Bool) async throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            if Date() > deadline { XCTFail("timed out"); return false }
            try await Task.sleep(seconds: 0.02)
        }
        return true
    }
}

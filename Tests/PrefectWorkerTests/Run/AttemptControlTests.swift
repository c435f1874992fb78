import Foundation
#if canImport(Glibc)
import Glibc
#endif
import XCTest
@testable import PrefectWorker

/// The session's rules, fed bytes as an engine sends them (no sockets).
final class ControlConnectionTests: XCTestCase {
    let v2Hello: [UInt8] = AttemptControl.negotiation(version: 2, capabilities: 1)

    func receipt(_ json: String, size: Int? = nil) -> [UInt8] {
        let payload = Array(json.utf8)
        let n = UInt32(size ?? payload.count)
        return [0x01, UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)] + payload
    }

    let reported = #"{"disposition":"STATE_REPORTED","state_id":"0f4c9c51-5a7b-4c49-9b0a-0d0e2c1a8f21","state_type":"COMPLETED","state_name":"Completed"}"#

    func testVersion2WithReceiptsIsChosenWhenOffered() {
        var connection = ControlConnection()
        XCTAssertEqual(connection.receive(v2Hello), [.reply(AttemptControl.negotiation(version: 2, capabilities: 1))])
        XCTAssertTrue(connection.receipts)
    }

    func testVersion1OrNoReceiptCapabilityFallsBackToVersion1() {
        for hello in [AttemptControl.negotiation(version: 1, capabilities: 1), AttemptControl.negotiation(version: 2, capabilities: 0)] {
            var connection = ControlConnection()
            XCTAssertEqual(connection.receive(hello), [.reply(AttemptControl.negotiation(version: 1, capabilities: 0))], "\(hello)")
            XCTAssertFalse(connection.receipts)
        }
        var newer = ControlConnection()
        XCTAssertEqual(newer.receive(AttemptControl.negotiation(version: 7, capabilities: 3)),
                       [.reply(AttemptControl.negotiation(version: 2, capabilities: 1))], "a newer engine gets the version we speak")
    }

    func testAReceiptConcludesTheAttemptIsAcknowledgedAndEndsTheSession() {
        var connection = ControlConnection()
        _ = connection.receive(v2Hello)
        XCTAssertEqual(connection.receive(receipt(reported)), [
            .concluded(.stateReported(type: "COMPLETED", name: "Completed")), .reply([0x02]), .close(reason: nil),
        ])
        XCTAssertEqual(connection.receive([0x61]), [], "nothing after the end")
    }

    func testBytesArrivingOneAtATimeAreReassembled() {
        var connection = ControlConnection()
        var events: [ControlConnection.Event] = []
        for byte in v2Hello + receipt(#"{"disposition":"ORCHESTRATION_ABORTED"}"#) { events += connection.receive([byte]) }
        XCTAssertEqual(events, [.reply(AttemptControl.negotiation(version: 2, capabilities: 1)),
                                .concluded(.orchestrationAborted), .reply([0x02]), .close(reason: nil)])
    }

    func testAnAcknowledgedIntentIsADelegation() {
        var connection = ControlConnection()
        connection.pendingIntent = .cancel
        XCTAssertEqual(connection.receive([UInt8(ascii: "a")]), [.concluded(.delegated(.cancel)), .close(reason: nil)])
    }

    func testWhatWeDoNotAcceptEndsTheSessionSayingWhy() {
        func reason(_ bytes: [UInt8], hello: Bool = true) -> String? {
            var connection = ControlConnection()
            if hello { _ = connection.receive(v2Hello) }
            guard case .close(let reason)? = connection.receive(bytes).last else { return "no close" }
            return reason
        }
        XCTAssertEqual(reason([UInt8(ascii: "a")]), "an acknowledgement of no intent")
        XCTAssertEqual(reason(Array("GET / HTTP/1.1\r\n".utf8)), "a malformed message (byte 71)")
        XCTAssertEqual(reason([0x00, UInt8(ascii: "X"), UInt8(ascii: "Y"), 2, 1]), "a malformed negotiation")
        XCTAssertEqual(reason(receipt(reported), hello: false), "a receipt that was not negotiated")
        XCTAssertEqual(reason(receipt("{}", size: 5000)), "a receipt of 5000 bytes (at most 4096)")
        XCTAssertEqual(reason(receipt("[1,2]")), "a malformed receipt")
    }

    func testReceiptsAreCheckedAsStrictlyAsPrefectDoes() {
        let valid = #""state_id":"0f4c9c51-5a7b-4c49-9b0a-0d0e2c1a8f21","state_type":"PAUSED","state_name":"Suspended""#
        XCTAssertEqual(AttemptControl.decodeReceipt(Array(#"{"disposition":"STATE_REPORTED",\#(valid)}"#.utf8)),
                       .stateReported(type: "PAUSED", name: "Suspended"))
        for bad in [
            #"{"disposition":"STATE_REPORTED",\#(valid),"extra":1}"#,
            #"{"disposition":"STATE_REPORTED","state_id":"nope","state_type":"PAUSED","state_name":"x"}"#,
            #"{"disposition":"STATE_REPORTED","state_id":"0f4c9c51-5a7b-4c49-9b0a-0d0e2c1a8f21","state_type":"","state_name":"x"}"#,
            #"{"disposition":"STATE_REPORTED","state_id":"0f4c9c51-5a7b-4c49-9b0a-0d0e2c1a8f21","state_type":"\#(String(repeating: "X", count: 65))","state_name":"x"}"#,
            #"{"disposition":"ORCHESTRATION_ABORTED","state_type":"X"}"#,
            #"{"disposition":"SOMETHING"}"#,
            "not json",
        ] {
            XCTAssertNil(AttemptControl.decodeReceipt(Array(bad.utf8)), bad)
        }
    }
}

/// The session over real loopback sockets, with a hand-written engine (and hostile clients).
final class AttemptControlSessionTests: XCTestCase {
    /// A blocking client socket with a receive timeout, standing in for the engine's control listener.
    /// Used by one task at a time (the test, or the engine side it hands it to).
    final class Peer: @unchecked Sendable {
        let fd: Int32
        init?(port: UInt16) {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
            address.sin_port = port.bigEndian
            var timeout = timeval(tv_sec: 3, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if connected != 0 { Glibc.close(fd); return nil }
        }
        deinit { Glibc.close(fd) }
        func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
        func send(_ text: String) { send(Array(text.utf8)) }
        /// Up to `count` bytes; empty at end of stream or timeout.
        func read(_ count: Int) -> [UInt8] {
            var result: [UInt8] = []
            while result.count < count {
                var buffer = [UInt8](repeating: 0, count: count - result.count)
                let n = recv(fd, &buffer, buffer.count, 0)
                if n <= 0 { break }
                result += buffer[0..<n]
            }
            return result
        }
        /// True when the other side closed the connection (and sent nothing more).
        var closedByPeer: Bool { read(1).isEmpty }
    }

    func makeSession() throws -> AttemptControlSession {
        try AttemptControlSession(log: .console)
    }

    /// An engine connected to `session`: the token sent, and with `version2` the hello sent and answered.
    func connectEngine(_ session: AttemptControlSession, version2: Bool = true) async throws -> Peer {
        let engine = try XCTUnwrap(Peer(port: session.port))
        engine.send(session.token + "\n")
        if version2 {
            engine.send(AttemptControl.negotiation(version: 2, capabilities: 1))
            XCTAssertEqual(engine.read(5), AttemptControl.negotiation(version: 2, capabilities: 1))
        }
        try await eventually("authenticated") { session.connected }
        return engine
    }

    /// The engine's side of an intent: it reads the intent byte and acknowledges it; the byte read.
    func acknowledging(_ engine: Peer) -> Task<[UInt8], Never> {
        Task.detached {
            let intent = engine.read(1)
            engine.send([UInt8(ascii: "a")])
            return intent
        }
    }

    /// Polls until `condition` holds (the session runs on the poller thread).
    func eventually(_ what: String, _ condition: () -> Bool) async throws {
        for _ in 0..<100 where !condition() { try await Task.sleep(seconds: 0.02) }
        XCTAssertTrue(condition(), what)
    }

    func testTheEnvironmentNamesThePortAndAFreshTokenPerJob() throws {
        let a = try makeSession(), b = try makeSession()
        defer { a.close(); b.close() }
        XCTAssertEqual(a.environment["PREFECT__CONTROL_PORT"], String(a.port))
        XCTAssertEqual(a.token.count, 32)
        XCTAssertNotEqual(a.token, b.token)
        XCTAssertNotEqual(a.port, b.port)
    }

    func testVersion2EngineNegotiatesReceiptsAndAcknowledgesACancel() async throws {
        let session = try makeSession()
        defer { session.close() }
        let engine = try await connectEngine(session)
        XCTAssertTrue(session.negotiatedReceipts)
        let engineSide = acknowledging(engine)
        let status = await session.signal(.cancel)
        XCTAssertEqual(status, .acknowledged)
        let intent = await engineSide.value
        XCTAssertEqual(intent, [UInt8(ascii: "c")])
        XCTAssertEqual(session.conclusion, .delegated(.cancel))
        XCTAssertTrue(engine.closedByPeer, "the session ends with the acknowledgement")
        let again = await session.signal(.cancel)
        XCTAssertEqual(again, .alreadyConcluded)
    }

    func testVersion1EngineThatSendsNoHelloStillGetsTheIntent() async throws {
        let session = try makeSession()
        defer { session.close() }
        let engine = try await connectEngine(session, version2: false)
        let engineSide = acknowledging(engine)
        let status = await session.signal(.reschedule)
        XCTAssertEqual(status, .acknowledged)
        let intent = await engineSide.value
        XCTAssertEqual(intent, [UInt8(ascii: "r")])
        XCTAssertFalse(session.negotiatedReceipts)
        XCTAssertEqual(FlowRunSupervisor.evidence(session), .none, "version 1 keeps today's exit-code rule")
    }

    func testAReceiptIsAcknowledgedAndMakesLaterIntentsAlreadyConcluded() async throws {
        let session = try makeSession()
        defer { session.close() }
        let engine = try await connectEngine(session)
        XCTAssertEqual(FlowRunSupervisor.evidence(session), .silent, "negotiated, not concluded yet")
        let json = Array(#"{"disposition":"STATE_REPORTED","state_id":"0f4c9c51-5a7b-4c49-9b0a-0d0e2c1a8f21","state_type":"COMPLETED","state_name":"Completed"}"#.utf8)
        engine.send([0x01, 0, 0, UInt8(json.count >> 8), UInt8(json.count & 0xff)] + json)
        XCTAssertEqual(engine.read(1), [0x02])
        XCTAssertEqual(session.conclusion, .stateReported(type: "COMPLETED", name: "Completed"))
        XCTAssertEqual(FlowRunSupervisor.evidence(session), .concluded)
        let status = await session.signal(.cancel)
        XCTAssertEqual(status, .alreadyConcluded)
    }

    func testAnOversizeReceiptEndsTheSessionWithoutAConclusion() async throws {
        let session = try makeSession()
        defer { session.close() }
        let engine = try await connectEngine(session)
        engine.send([0x01, 0, 0x10, 0, 0] + [UInt8](repeating: 0x20, count: 100))
        XCTAssertTrue(engine.closedByPeer)
        XCTAssertNil(session.conclusion)
        let status = await session.signal(.cancel)
        XCTAssertEqual(status, .notAcknowledged)
    }

    func testAJobThatNeverConnectedIsNotAcknowledgedAtOnce() async throws {
        let session = try makeSession()
        defer { session.close() }
        let started = Date()
        let status = await session.signal(.cancel)
        XCTAssertEqual(status, .notAcknowledged)
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.5)
        XCTAssertEqual(FlowRunSupervisor.evidence(session), .none)
    }

    func testAnEngineThatDoesNotAcknowledgeInTimeLosesItsSession() async throws {
        let session = try makeSession()
        defer { session.close() }
        let engine = try await connectEngine(session, version2: false)
        let status = await session.signal(.cancel, timeout: 0.2)
        XCTAssertEqual(status, .notAcknowledged)
        XCTAssertEqual(engine.read(1), [UInt8(ascii: "c")])
        XCTAssertTrue(engine.closedByPeer, "no acknowledgement in time ends the session")
        engine.send([UInt8(ascii: "a")])
        try await Task.sleep(seconds: 0.1)
        XCTAssertNil(session.conclusion, "a late acknowledgement counts for nothing")
    }

    func testAWrongTokenOrGarbageGetsNothingAndTheEngineStillConnects() async throws {
        let session = try makeSession()
        defer { session.close() }
        let wrong = try XCTUnwrap(Peer(port: session.port))
        wrong.send(String(repeating: "0", count: 32) + "\n")
        XCTAssertTrue(wrong.closedByPeer)
        let garbage = try XCTUnwrap(Peer(port: session.port))
        garbage.send([UInt8](repeating: 0x41, count: 300))
        XCTAssertTrue(garbage.closedByPeer, "a line longer than any token is cut off")
        let http = try XCTUnwrap(Peer(port: session.port))
        http.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        XCTAssertTrue(http.closedByPeer)
        XCTAssertFalse(session.connected)

        _ = try await connectEngine(session)
    }

    func testIdleHostileConnectionsCannotKeepTheEngineOut() async throws {
        let session = try makeSession()
        defer { session.close() }
        let idle = (0..<(AttemptControlSession.maxUnauthenticated * 3)).compactMap { _ in Peer(port: session.port) }
        XCTAssertEqual(idle.count, AttemptControlSession.maxUnauthenticated * 3)
        try await Task.sleep(seconds: 0.2)
        _ = try await connectEngine(session)
    }

    func testTheTokenIsUsedUpByTheFirstConnection() async throws {
        let session = try makeSession()
        defer { session.close() }
        let engine = try await connectEngine(session, version2: false)
        // The listener is closed: a second connection (even with the token) is refused or closed at once.
        if let replay = Peer(port: session.port) {
            replay.send(session.token + "\n")
            XCTAssertTrue(replay.closedByPeer)
        }
        let engineSide = acknowledging(engine)
        let status = await session.signal(.cancel)
        XCTAssertEqual(status, .acknowledged, "the first connection keeps the session")
        _ = await engineSide.value
    }

    func testAClosedSessionRefusesConnections() throws {
        let session = try makeSession()
        let port = session.port
        session.close()
        Thread.sleep(forTimeInterval: 0.1)
        XCTAssertNil(Peer(port: port), "nothing listens on \(port) any more")
    }
}

/// The report decisions the session's evidence feeds.
final class EngineEvidenceTests: XCTestCase {
    func testDecisionTableWithEvidence() {
        XCTAssertNil(FinalState.decide(owner: .engine, exit: .exited(0), evidence: .concluded))
        XCTAssertNil(FinalState.decide(owner: .engine, exit: .exited(1), evidence: .concluded), "the engine reported; its exit code does not matter")
        XCTAssertNil(FinalState.decide(owner: .engine, exit: .signaled(SIGKILL), evidence: .concluded))
        XCTAssertEqual(FinalState.decide(owner: .engine, exit: .exited(0), evidence: .silent)?.type, .crashed)
        XCTAssertTrue(FinalState.decide(owner: .engine, exit: .exited(0), evidence: .silent)!.message.contains("exited with code 0 without reporting"))
        XCTAssertEqual(FinalState.decide(owner: .engine, exit: .signaled(SIGKILL), evidence: .silent)?.type, .crashed)
        XCTAssertNil(FinalState.decide(owner: .engine, exit: .exited(0), evidence: .none), "no session: today's rule")
        XCTAssertEqual(FinalState.decide(owner: .engine, exit: .exited(3), evidence: .none), FinalState.decide(owner: .engine, exit: .exited(3)))
        XCTAssertEqual(FinalState.decide(owner: .worker, exit: .exited(0), evidence: .silent), FinalState.decide(owner: .worker, exit: .exited(0)))
    }

    func testDeliveryTable() {
        typealias D = FinalState.Delivery
        let cancelledForced = D.propose(type: .cancelled, force: true, copyDetails: true, cancelledInstead: false)
        let rows: [(StateType, String?, Bool, StateType?, D)] = [
            (.cancelled, nil, false, .cancelled, .skip(already: true)),
            (.cancelled, nil, false, .completed, .skip(already: false)),
            (.cancelled, nil, false, .failed, .skip(already: false)),
            (.cancelled, nil, false, .crashed, cancelledForced),
            (.cancelled, nil, false, .cancelling, cancelledForced),
            (.cancelled, nil, false, .running, cancelledForced),
            (.cancelled, nil, false, nil, cancelledForced),
            (.failed, "TimedOut", true, .crashed, .propose(type: .failed, force: true, copyDetails: false, cancelledInstead: false)),
            (.failed, "TimedOut", true, .completed, .skip(already: false)),
            (.crashed, nil, false, .crashed, .skip(already: true)),
            (.crashed, nil, false, .completed, .skip(already: false)),
            (.crashed, nil, false, .cancelled, .skip(already: false)),
            (.failed, nil, false, .cancelling, .propose(type: .cancelled, force: true, copyDetails: true, cancelledInstead: true)),
            (.completed, nil, false, .running, .propose(type: .completed, force: false, copyDetails: false, cancelledInstead: false)),
            (.crashed, nil, false, .pending, .propose(type: .crashed, force: false, copyDetails: false, cancelledInstead: false)),
        ]
        for (type, name, force, current, expected) in rows {
            XCTAssertEqual(FinalState.delivery(proposing: type, name: name, force: force, current: current), expected,
                           "\(type.rawValue)\(name.map { "/\($0)" } ?? "") over \(current?.rawValue ?? "no state")")
        }
    }
}

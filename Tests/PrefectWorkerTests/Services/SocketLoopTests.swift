import Foundation
import XCTest
@testable import PrefectWorker

/// The reconnect loop both sockets share: backoff with jitter, each state change logged once, the up and down
/// callbacks, and a refusal told apart from a loss; scripted here, then against a fake WebSocket server.
final class SocketLoopTests: XCTestCase {
    /// One scripted attempt: it fails with an error, or connects and then ends (normally, or with an error).
    enum Step {
        case fail(Error)
        /// Connects; the session lasts `lasting` seconds of the loop's clock.
        case up(endsWith: Error?, lasting: Double = 0)
    }

    struct TimedOut: Error { var seconds: Double }
    struct Lost: Error, CustomStringConvertible { var description: String { "connection refused" } }
    static let refused = WebSocketError(url: "ws://x/api/events/out", reason: "the server answered HTTP 503 instead of switching to WebSocket (101)", status: 503)

    private struct FakeSession: SocketSession {
        let error: Error?
        let lasting: Double
        let clock: Locked<Double>
        var url: String { "ws://fake/socket" }
        func serve() async throws {
            clock.withLock { $0 += lasting }
            if let error { throw error }
        }
        func close() async {}
    }

    /// What one run of a loop over `steps` did.
    struct Record {
        var states: [SocketLoop.State] = []
        var lines: [(Log.Level, String)] = []
        var delays: [Double] = []
        var attempts = 0
        func lines(containing text: String) -> [(Log.Level, String)] { lines.filter { $0.1.contains(text) } }
    }

    private static let messages = SocketLoop.Messages(
        opened: { "socket open at \($0)" },
        reconnected: { String(format: "socket reconnected after %.0f s", $0) },
        name: "socket", closedByServer: "the server closed it", stillDown: "socket still down",
        meanwhile: { "doing without it (\($0))" },
        refused: { "upgrades refused: \($0)" })

    /// Runs a loop over `steps` (no real waits), until they run out.
    private func run(_ steps: [Step], quietSeconds: Double = 60, readyAfter: Int = 0, apiAnswers: Bool = true) async -> Record {
        let record = Locked(Record())
        let script = Locked(steps)
        let checks = Locked(0)
        let clock = Locked(1000.0)
        var loop = SocketLoop(
            messages: Self.messages,
            isReady: { checks.withLock { $0 += 1; return $0 > readyAfter } },
            onChange: { state in record.withLock { $0.states.append(state) } },
            emit: { level, line in record.withLock { $0.lines.append((level, line)) } },
            apiAnswers: { apiAnswers },
            quietSeconds: quietSeconds,
            sleep: { seconds in record.withLock { $0.delays.append(seconds) } })
        loop.now = { clock.withLock { $0 } }
        await loop.run {
            record.withLock { $0.attempts += 1 }
            let step = script.withLock { $0.isEmpty ? nil : $0.removeFirst() }
            switch step {
            case nil: throw SocketLoop.GiveUp(message: "script done")
            case .fail(let error)?: throw error
            case .up(let ending, let lasting)?: return FakeSession(error: ending, lasting: lasting, clock: clock)
            }
        }
        return record.withLock { $0 }
    }

    func testBacksOffWithJitterAndStartsOverAfterASessionThatLasted() async {
        let record = await run([.fail(Lost()), .fail(Lost()), .fail(Lost()), .fail(Lost()),
                                .up(endsWith: Lost(), lasting: SocketLoop.healthySessionSeconds), .fail(Lost())], readyAfter: 2)
        XCTAssertEqual(record.attempts, 7, "no attempt before the pool is known, then one per step and the last one")
        XCTAssertEqual(Array(record.delays.prefix(2)), [1, 1], "waits for the pool a second at a time")
        let backoff = Array(record.delays.dropFirst(2))
        XCTAssertEqual(backoff.count, 6)
        for (delay, base) in zip(backoff, [1.0, 2, 4, 8, 1, 2]) {
            XCTAssertGreaterThanOrEqual(delay, base * 0.7, "\(backoff)")
            XCTAssertLessThanOrEqual(delay, base * 1.3, "\(backoff)")
        }
        XCTAssertEqual(record.states, [.lost, .lost, .lost, .lost, .up, .lost, .lost], "told after every attempt")
    }

    /// A server that accepts the upgrade and drops it at once (auth then close, 1011) is not asked every second:
    /// each upgrade is an API request. A session shorter than `healthySessionSeconds` is a failed attempt.
    func testShortSessionsBackOffLikeFailedConnects() async {
        let record = await run([.up(endsWith: nil), .up(endsWith: Lost(), lasting: 5), .up(endsWith: nil, lasting: 29),
                                .up(endsWith: nil), .fail(Lost()), .up(endsWith: nil),
                                .up(endsWith: nil, lasting: 31),  // a session worth having: the backoff starts over
                                .up(endsWith: nil)])
        XCTAssertEqual(record.delays.count, 8)
        for (delay, base) in zip(record.delays, [1.0, 2, 4, 8, 16, 30, 1, 2]) {
            XCTAssertGreaterThanOrEqual(delay, base * 0.7, "\(record.delays)")
            XCTAssertLessThanOrEqual(delay, base * 1.3, "\(record.delays)")
        }
        XCTAssertEqual(record.states, [.up, .lost, .up, .lost, .up, .lost, .up, .lost, .lost, .up, .lost, .up, .lost, .up, .lost],
                       "still told up and lost after each attempt")
        let loud = record.lines.filter { $0.0 >= .info }.map(\.1)
        XCTAssertEqual(loud.filter { $0.hasPrefix("socket reconnected") }.count, 6, "each reconnect logged once, as before")
    }

    func testEachStateChangeIsLoggedOnce() async {
        let record = await run([.fail(Lost()), .fail(Lost()), .up(endsWith: nil), .up(endsWith: Lost()), .fail(Lost()), .up(endsWith: nil)])
        let loud = record.lines.filter { $0.0 >= .info }.map(\.1)
        XCTAssertEqual(loud, [
            "socket unavailable: connection refused; doing without it (lost)",
            "socket open at ws://fake/socket",
            "socket lost: the server closed it; doing without it (lost)",
            "socket reconnected after 0 s",
            "socket lost: connection refused; doing without it (lost)",
            "socket reconnected after 0 s",
            "socket lost: the server closed it; doing without it (lost)",
            "script done",
        ], "one line per change; a failed reconnect while down is DEBUG")
        XCTAssertEqual(record.lines(containing: "socket still down").count, 2)
        XCTAssertTrue(record.lines(containing: "socket still down").allSatisfy { $0.0 == .debug })
    }

    func testALastingOutageWarnsOnce() async {
        let record = await run([.fail(Lost()), .fail(Lost()), .fail(Lost())], quietSeconds: 0)
        let levels = record.lines.filter { $0.1.hasPrefix("socket") }.map(\.0)
        XCTAssertEqual(levels, [.info, .warning, .debug])
        XCTAssertEqual(record.lines(containing: "socket unavailable for over 0 s").count, 1)
    }

    func testTwoRefusalsInARowAreRefusedAndAnythingElseIsALoss() async {
        let record = await run([
            .fail(Self.refused), .fail(Self.refused), .fail(Self.refused),   // lost, then refused
            .fail(Lost()),                                                   // a TCP failure breaks the run
            .fail(Self.refused), .fail(Self.refused),                        // refused again
            .up(endsWith: nil),
        ])
        XCTAssertEqual(record.states, [.lost, .refused, .refused, .lost, .lost, .refused, .up, .lost])
        let said = record.lines(containing: "upgrades refused")
        XCTAssertEqual(said.count, 2, "said once per change to refused: \(record.lines)")
        XCTAssertTrue(said.allSatisfy { $0.0 == .info && $0.1.contains("HTTP 503") })
        XCTAssertEqual(record.lines(containing: "socket unavailable").count, 1, "the outage itself is still logged once")
    }

    func testRefusalsWhileTheAPIIsFailingTooAreALoss() async {
        // A server away or in maintenance behind its load balancer: every request gets a 503, the upgrade too.
        let record = await run([.fail(Self.refused), .fail(Self.refused), .fail(Self.refused)], apiAnswers: false)
        XCTAssertEqual(record.states, [.lost, .lost, .lost])
        XCTAssertEqual(record.lines(containing: "upgrades refused").count, 0)
    }

    func testAConnectThatGivesUpEndsTheLoop() async {
        let record = await run([.fail(SocketLoop.GiveUp(message: "no such endpoint; doing without it for good"))])
        XCTAssertEqual(record.attempts, 1)
        XCTAssertEqual(record.states, [])
        XCTAssertEqual(record.lines.map(\.1), ["no such endpoint; doing without it for good"])
    }
}

/// The events stream's loop against a fake WebSocket server: an upgrade answered with an HTTP status twice is
/// refused (and the cancellation watch's cadence follows), a connection dropped is a loss.
extension SocketLoopTests {
    private func eventWatch(_ server: FakeWebSocketServer, _ configure: (inout Settings) -> Void = { _ in }) throws -> (WorkerContext, Task<Void, Never>) {
        var settings = Settings(apiURL: URL(string: "http://127.0.0.1:\(server.port)/api")!, pool: "pool", workerName: "worker")
        settings.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("loop-\(UUID().uuidString)").path
        configure(&settings)
        let context = WorkerContext(settings: settings, client: PrefectClient(baseURL: settings.apiURL, apiKey: nil, authString: nil, requestTimeout: 5))
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        return (context, Task { await EventWatch(context: context).run() })
    }

    func testAnUpgradeAnsweredWithAStatusIsRefusedAndADroppedConnectionIsLost() async throws {
        let upgrades = Locked(0)
        let refusing = try FakeWebSocketServer { peer in
            try peer.readRequest()
            upgrades.withLock { $0 += 1 }
            try peer.write(Array("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".utf8))
        }
        defer { refusing.stop() }
        let (context, watch) = try eventWatch(refusing)
        let refusedAt = try await Self.waitUntil(timeout: 6) { context.push.socketState == .refused }
        watch.cancel()
        await watch.value
        XCTAssertEqual(upgrades.withLock { $0 }, 2, "refused at the second answer")
        XCTAssertLessThan(refusedAt, 3, "the first backoff is about a second")
        XCTAssertEqual(CancellationWatch.pollSeconds(socket: context.push.socketState, settings: context.settings), 0.5)
        let refusedMetrics = context.metrics.render(lastHeartbeat: nil, lastPoll: nil)
        XCTAssertTrue(refusedMetrics.contains("prefect_worker_event_socket_state{state=\"refused\"} 1\n"), "/metrics tells refused from lost: \(refusedMetrics)")
        XCTAssertTrue(refusedMetrics.contains("prefect_worker_event_socket_state{state=\"lost\"} 0\n"), refusedMetrics)

        let dropping = try FakeWebSocketServer { peer in try peer.readRequest() }  // closes without an answer
        defer { dropping.stop() }
        let (lostContext, lostWatch) = try eventWatch(dropping)
        try await Task.sleep(seconds: 3.5)  // three attempts
        lostWatch.cancel()
        await lostWatch.value
        XCTAssertEqual(lostContext.push.socketState, .lost, "a connection that drops is a loss, however often")
        XCTAssertEqual(CancellationWatch.pollSeconds(socket: lostContext.push.socketState, settings: lostContext.settings), 10)
        let lostMetrics = lostContext.metrics.render(lastHeartbeat: nil, lastPoll: nil)
        XCTAssertTrue(lostMetrics.contains("prefect_worker_event_socket_state{state=\"lost\"} 1\n"), lostMetrics)
        XCTAssertTrue(lostMetrics.contains("prefect_worker_event_socket_state{state=\"refused\"} 0\n"), lostMetrics)
    }

    /// Polls `condition` every 50 ms; returns the seconds it took, or fails after `timeout`.
    private static func waitUntil(timeout: Double, _ condition: () -> Bool) async throws -> Double {
        let start = Date()
        while !condition() {
            guard Date().timeIntervalSince(start) < timeout else { throw TimedOut(seconds: timeout) }
            try await Task.sleep(seconds: 0.05)
        }
        return Date().timeIntervalSince(start)
    }

    func testTheRefusedLineSaysWhatTheWorkerDoesAndHowToChangeIt() {
        let settings = Settings(apiURL: URL(string: "http://127.0.0.1:1/api")!, pool: "pool", workerName: "worker")
        let messages = EventWatch.messages(settings: settings)
        let line = messages.refused?("WebSocket ws://h/api/events/out: the server answered HTTP 503") ?? ""
        XCTAssertTrue(line.contains("WebSockets are refused on the way to the server"), line)
        XCTAssertTrue(line.contains("HTTP 503"), line)
        XCTAssertTrue(line.contains("every 0.5 s"), line)
        XCTAssertTrue(line.contains("about 120 requests/min"), line)
        XCTAssertTrue(line.contains("set PREFECT_WORKER_CANCELLATION_POLL_SECONDS"), line)
        XCTAssertFalse(line.contains("events stream unavailable"), "not a second outage line")
        XCTAssertTrue(messages.meanwhile(.refused).contains("every 0.5 s"))
        XCTAssertTrue(messages.meanwhile(.lost).contains("every 10 s"))

        var explicit = settings
        explicit.cancellationPollSeconds = 3
        explicit.cancellationPollIsSet = true
        let set = EventWatch.messages(settings: explicit)
        let setLine = set.refused?("HTTP 503") ?? ""
        XCTAssertTrue(setLine.contains("every 3 s") && setLine.contains("about 20 requests/min"), setLine)
        XCTAssertTrue(set.meanwhile(.lost).contains("every 3 s"))
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Raw HTTP/1.1 over blocking sockets, for poking the worker's health server (well-behaved and not).
/// Every call is synchronous: run it through `OperationsTests.offload`.
enum RawHTTP {
    struct Reply: Sendable {
        var status: Int?
        var body: String
        /// The server closed (or reset) the connection without a byte of response.
        var closedSilently: Bool
        var seconds: Double
    }

    static func connect(port: UInt16, timeout: Double = 5) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        setTimeouts(fd, timeout)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = port.bigEndian
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            close(fd)
            return nil
        }
        return fd
    }

    static func setTimeouts(_ fd: Int32, _ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Sends everything; false if the peer closed or reset first.
    @discardableResult
    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    /// Reads until EOF, reset or `timeout`; returns the bytes and whether EOF/reset was seen.
    static func readToEnd(_ fd: Int32, timeout: Double) -> (bytes: [UInt8], ended: Bool) {
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 4096)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n > 0 {
                out.append(contentsOf: chunk[0..<n])
            } else if n == 0 {
                return (out, true)
            } else if errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK {
                continue
            } else {
                return (out, true) // ECONNRESET and the like
            }
        }
        return (out, false)
    }

    static func parse(_ bytes: [UInt8], seconds: Double) -> Reply {
        let text = String(decoding: bytes, as: UTF8.self)
        guard !bytes.isEmpty else { return Reply(status: nil, body: "", closedSilently: true, seconds: seconds) }
        let statusLine = text.prefix { $0 != "\r" && $0 != "\n" }
        let parts = statusLine.split(separator: " ")
        let status = parts.count >= 2 && parts[0].hasPrefix("HTTP/1.") ? Int(parts[1]) : nil
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return Reply(status: status, body: body, closedSilently: false, seconds: seconds)
    }

    /// Sends `raw` and reads the reply to the end.
    static func exchange(port: UInt16, _ raw: [UInt8], timeout: Double = 10) -> Reply? {
        let start = Date()
        guard let fd = connect(port: port, timeout: timeout) else { return nil }
        defer { close(fd) }
        _ = sendAll(fd, raw)
        let (bytes, _) = readToEnd(fd, timeout: timeout)
        return parse(bytes, seconds: Date().timeIntervalSince(start))
    }

    static func get(port: UInt16, _ path: String, timeout: Double = 10) -> Reply? {
        exchange(port: port, Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: e2e\r\n\r\n".utf8), timeout: timeout)
    }
}

/// systemd notification, health and metrics, the logs and events the worker sends to Prefect, and its own
/// log format, all against the real server and the real binary.
final class OperationsTests: E2ETestCase, @unchecked Sendable {
    let runTimeout = 30.0
    let engineTimeout = 90.0
    private var sockets: [NotifySocket] = []

    override func tearDownWithError() throws {
        try super.tearDownWithError() // stops the workers first
        for socket in sockets { socket.shutdown() }
        sockets.removeAll()
    }

    /// Runs blocking socket code off the cooperative pool.
    func offload<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: body()) }
        }
    }

    static let fastArguments = ["--query-seconds", "0.5", "--cancellation-poll-seconds", "0.5", "--kill-grace-seconds", "2"]

    /// A worker with short intervals and its own `--state-dir`.
    func startOpsWorker(pool: String, name: String? = nil, arguments: [String] = [],
                        environment: [String: String] = [:]) throws -> WorkerProcess {
        let stateDir = try temporaryDirectory("state")
        return try startWorker(pool: pool, name: name, arguments: Self.fastArguments + ["--state-dir", stateDir] + arguments,
                               environment: environment)
    }

    func waitOnline(pool: String, worker name: String, timeout: Double = 30) async throws {
        _ = try await E2E.eventually(timeout: timeout, "worker \(name) to be ONLINE in \(pool)") { () -> Bool? in
            try checkWorkersAlive()
            return try await api.workers(pool: pool).contains { $0["name"]?.asString == name && $0["status"]?.asString == "ONLINE" } ? true : nil
        }
    }

    // MARK: - sd_notify

    /// READY=1 once ONLINE, STATUS= lines, WATCHDOG=1 every ~0.5 s, STOPPING=1 on SIGTERM; jobs do not see
    /// NOTIFY_SOCKET. `socket` is bound by the caller.
    func checkNotifications(on socket: NotifySocket, runJob: Bool) async throws {
        sockets.append(socket)
        let pool = try await makeProcessPool()
        let workerName = uniqueName("-worker")
        let workdir = try temporaryDirectory("ns")
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(#"sh -c 'echo "ns=$NOTIFY_SOCKET ws=$WATCHDOG_USEC" > ns.txt'"#), "working_dir": .string(workdir),
        ]))
        let worker = try startOpsWorker(pool: pool, name: workerName, environment: [
            "NOTIFY_SOCKET": socket.address, "WATCHDOG_USEC": "1000000",
        ])

        let ready = await socket.waitForLine(withPrefix: "READY=1", timeout: 60)
        let readyAt = try XCTUnwrap(ready, "no READY=1 on \(socket.address) within 60 s; received: \(socket.received.map(\.text))").at
        // READY=1 follows a successful heartbeat, so the server shows the worker ONLINE by now.
        let workers = try await api.workers(pool: pool)
        let me = workers.first { $0["name"]?.asString == workerName }
        XCTAssertEqual(me?["status"]?.asString, "ONLINE", "READY=1 was sent before the worker was ONLINE: \(String(describing: me))")
        let poolNow = try await api.readPool(pool)
        XCTAssertNotNil(poolNow, "READY=1 before the pool exists")
        XCTAssertEqual(socket.lines(withPrefix: "READY=1").count, 1, "READY=1 should be sent once: \(socket.lines.map(\.text))")

        // STATUS= lines (with READY=1, and with later heartbeats).
        let status = socket.lines(withPrefix: "STATUS=")
        XCTAssertFalse(status.isEmpty, "no STATUS= line: \(socket.lines.map(\.text))")
        XCTAssertTrue(status.contains { $0.text.contains(pool) }, "STATUS= should name the pool: \(status.map(\.text))")

        // WATCHDOG=1 at half of WATCHDOG_USEC (0.5 s).
        let windowStart = Date()
        try await Task.sleep(nanoseconds: 3_000_000_000)
        let windowEnd = Date()
        let pings = socket.lines(withPrefix: "WATCHDOG=1").map(\.at)
        let inWindow = pings.filter { $0 >= windowStart && $0 <= windowEnd }
        XCTAssertGreaterThanOrEqual(inWindow.count, 3, "WATCHDOG=1 pings in 3 s: \(inWindow.count) (all: \(pings.count))")
        XCTAssertLessThanOrEqual(inWindow.count, 9, "WATCHDOG=1 far more often than every 0.5 s: \(inWindow.count) in 3 s")
        let gaps = zip(pings.dropFirst(), pings).map { $0.timeIntervalSince($1) }.sorted()
        if !gaps.isEmpty {
            let median = gaps[gaps.count / 2]
            XCTAssertTrue((0.3...1.0).contains(median), "median WATCHDOG=1 interval \(median) s, expected about 0.5 s; gaps \(gaps)")
        }
        XCTAssertTrue(pings.contains { $0 > readyAt }, "WATCHDOG=1 should keep coming after READY=1")
        XCTAssertTrue(socket.lines(withPrefix: "STOPPING=1").isEmpty, "STOPPING=1 before any signal")

        if runJob {
            let id = try await api.createFlowRun(deployment: deployment)
            let run = try await waitForFinalState(id, timeout: runTimeout)
            XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
            let seen = E2E.readText(workdir + "/ns.txt")
            XCTAssertEqual(seen, "ns= ws=\n", "the job inherited the worker's systemd variables: \(String(describing: seen))")
        }

        let code = worker.stop(grace: 20)
        XCTAssertEqual(code, 0, "exit after SIGTERM")
        let stopping = await socket.waitForLine(withPrefix: "STOPPING=1", timeout: 5)
        XCTAssertNotNil(stopping, "no STOPPING=1 after SIGTERM; received: \(socket.lines.map(\.text).suffix(10))")
        if let stopping { XCTAssertGreaterThan(stopping.at, readyAt) }
    }

    func testSystemdNotifyOnAbstractSocket() async throws {
        try await checkNotifications(on: try NotifySocket.abstract(), runJob: true)
    }

    func testSystemdNotifyOnSocketFile() async throws {
        let dir = try temporaryDirectory("sock")
        try await checkNotifications(on: try NotifySocket.file(dir + "/notify.sock"), runJob: false)
    }

    /// WATCHDOG_PID naming another process: the watchdog is not ours, so no WATCHDOG=1 (READY=1 still comes).
    func testNoWatchdogPingsWhenWatchdogPIDIsAnotherProcess() async throws {
        let socket = try NotifySocket.abstract()
        sockets.append(socket)
        let pool = try await makeProcessPool()
        let worker = try startOpsWorker(pool: pool, environment: [
            "NOTIFY_SOCKET": socket.address, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1",
        ])
        let ready = await socket.waitForLine(withPrefix: "READY=1", timeout: 60)
        XCTAssertNotNil(ready, "no READY=1; received: \(socket.received.map(\.text))")
        try await Task.sleep(nanoseconds: 2_500_000_000)
        XCTAssertTrue(socket.lines(withPrefix: "WATCHDOG=1").isEmpty,
                      "WATCHDOG=1 sent although WATCHDOG_PID=1 is not the worker: \(socket.lines.map(\.text))")
        XCTAssertTrue(worker.isRunning)
    }

    /// With the server unreachable: no READY=1 (the pool was never read, no heartbeat succeeded), and
    /// /health turns 503 once the last successful poll (here: the start) is 30 poll intervals old.
    func testNoReadyAndUnhealthyWhileTheServerIsUnreachable() async throws {
        let socket = try NotifySocket.abstract()
        sockets.append(socket)
        let port = E2E.closedLocalPort()
        let deadAPI = "http://127.0.0.1:\(E2E.closedLocalPort())/api"
        let started = Date()
        let worker = try startOpsWorker(pool: uniqueName("-nopool"), arguments: ["--with-healthcheck"], environment: [
            "NOTIFY_SOCKET": socket.address, "WATCHDOG_USEC": "1000000",
            "PREFECT_WORKER_WEBSERVER_PORT": String(port), "PREFECT_API_URL": deadAPI,
        ])
        let first = try await E2E.eventually(timeout: 20, "GET /health to answer") { () -> RawHTTP.Reply? in
            try checkWorkersAlive()
            let reply = await offload { RawHTTP.get(port: port, "/health", timeout: 3) }
            return reply?.status == nil ? nil : reply
        }
        if Date().timeIntervalSince(started) < 12 {
            XCTAssertEqual(first.status, 200, "a worker that just started is healthy: \(first)")
        }
        // 30 x 0.5 s after the start, with no successful poll: 503.
        var last: RawHTTP.Reply?
        do {
            _ = try await E2E.eventually(timeout: 40, interval: 1, "GET /health to answer 503 (last: \(String(describing: last)))") { () -> Bool? in
                try checkWorkersAlive()
                last = await offload { RawHTTP.get(port: port, "/health", timeout: 3) }
                return last?.status == 503 ? true : nil
            }
            XCTAssertGreaterThan(Date().timeIntervalSince(started), 14, "503 came before 30 poll intervals")
            XCTAssertEqual((try? JSON.decode(last?.body ?? ""))?["message"]?.asString, "Worker may be unresponsive at this time")
        } catch {
            XCTFail("\(error)")
        }
        XCTAssertTrue(socket.lines(withPrefix: "READY=1").isEmpty, "READY=1 without a reachable server: \(socket.lines.map(\.text))")
        XCTAssertTrue(worker.isRunning, "the worker should keep retrying: \(worker.exitDescription)")
    }

    // MARK: - Health and metrics

    func startHealthWorker(pool: String) async throws -> (WorkerProcess, UInt16) {
        let port = E2E.closedLocalPort()
        let worker = try startOpsWorker(pool: pool, arguments: ["--with-healthcheck"], environment: [
            "PREFECT_WORKER_WEBSERVER_PORT": String(port), "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
        ])
        _ = try await E2E.eventually(timeout: 30, "GET /health on port \(port) to answer") { () -> Bool? in
            try checkWorkersAlive()
            let reply = await offload { RawHTTP.get(port: port, "/health", timeout: 3) }
            return reply?.status == nil ? nil : true
        }
        return (worker, port)
    }

    func testHealthAndMetricsEndpoints() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": "sh -c 'echo metrics-job'",
        ]))
        let (worker, port) = try await startHealthWorker(pool: pool)

        let health = await offload { RawHTTP.get(port: port, "/health") }
        XCTAssertEqual(health?.status, 200, "GET /health: \(String(describing: health))")
        let healthJSON = try? JSON.decode(health?.body ?? "")
        XCTAssertEqual(healthJSON?["message"]?.asString, "OK", "GET /health body: \(health?.body ?? "")")

        let before = await offload { RawHTTP.get(port: port, "/metrics") }
        XCTAssertEqual(before?.status, 200)
        for name in ["prefect_worker_runs_claimed_total", "prefect_worker_runs_started_total", "prefect_worker_runs_finished_total",
                     "prefect_worker_runs_in_flight", "prefect_worker_api_requests_total", "process_resident_memory_bytes"] {
            XCTAssertTrue(before?.body.contains("# TYPE \(name) ") == true, "/metrics lacks \(name): \(before?.body ?? "")")
        }
        XCTAssertTrue(Self.metricLines(before?.body ?? "").contains("prefect_worker_runs_claimed_total 0"))

        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")

        var body = ""
        do {
            _ = try await E2E.eventually(timeout: 10, "the completed run in /metrics:\n\(body)") { () -> Bool? in
                body = await offload { RawHTTP.get(port: port, "/metrics") }?.body ?? ""
                return Self.metricLines(body).contains(#"prefect_worker_runs_finished_total{state="completed"} 1"#) ? true : nil
            }
        } catch {
            XCTFail("\(error)")
        }
        let lines = Self.metricLines(body)
        XCTAssertTrue(lines.contains(#"prefect_worker_runs_finished_total{state="completed"} 1"#), body)
        XCTAssertTrue(lines.contains(#"prefect_worker_runs_finished_total{state="failed"} 0"#), body)
        XCTAssertTrue(lines.contains("prefect_worker_runs_claimed_total 1"), body)
        XCTAssertTrue(lines.contains("prefect_worker_runs_started_total 1"), body)
        XCTAssertTrue(lines.contains("prefect_worker_runs_in_flight 0"), body)
        let rss = lines.first { $0.hasPrefix("process_resident_memory_bytes ") }.flatMap { Int($0.split(separator: " ").last ?? "") }
        XCTAssertNotNil(rss, body)
        XCTAssertGreaterThan(rss ?? 0, 1_000_000, "resident memory should be a real number of bytes")
        XCTAssertTrue(lines.contains { $0.hasPrefix(#"prefect_worker_api_requests_total{endpoint="poll"} "#) }, body)
        let heartbeat = lines.first { $0.hasPrefix("prefect_worker_last_heartbeat_timestamp_seconds ") }
            .flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        XCTAssertGreaterThan(heartbeat, Date().timeIntervalSince1970 - 60, "last heartbeat timestamp: \(heartbeat)")

        let missing = await offload { RawHTTP.get(port: port, "/nope") }
        XCTAssertEqual(missing?.status, 404, "unknown path: \(String(describing: missing))")
        XCTAssertTrue(worker.isRunning)
    }

    static func metricLines(_ body: String) -> [String] {
        body.split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") }
    }

    func testHealthServerSurvivesHostileClients() async throws {
        let pool = try await makeProcessPool()
        let (worker, port) = try await startHealthWorker(pool: pool)

        // Garbage bytes.
        let garbage = await offload { RawHTTP.exchange(port: port, [0, 0xff, 0xfe] + Array("garbage \u{1}\u{2}\r\n\r\n".utf8)) }
        XCTAssertNotNil(garbage, "could not connect")
        XCTAssertTrue(garbage?.closedSilently == true || [400, 408].contains(garbage?.status ?? -1),
                      "garbage request: \(String(describing: garbage))")

        // An over-long header (20 KiB).
        let long = Array(("GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + String(repeating: "a", count: 20 * 1024) + "\r\n\r\n").utf8)
        let tooLong = await offload { RawHTTP.exchange(port: port, long) }
        XCTAssertNotNil(tooLong, "could not connect")
        XCTAssertTrue(tooLong?.closedSilently == true || tooLong?.status == 431, "20 KiB header: \(String(describing: tooLong))")

        // A client that disconnects mid-request (several times).
        for _ in 0..<5 {
            await offload {
                if let fd = RawHTTP.connect(port: port) {
                    RawHTTP.sendAll(fd, Array("GET /hea".utf8))
                    close(fd)
                }
            }
        }

        // A slow client: connected, sending nothing for 5 s; others are answered promptly meanwhile.
        let slow = Task.detached { () -> (bytes: [UInt8], ended: Bool, seconds: Double)? in
            guard let fd = RawHTTP.connect(port: port, timeout: 8) else { return nil }
            defer { close(fd) }
            let start = Date()
            let (bytes, ended) = RawHTTP.readToEnd(fd, timeout: 6)
            return (bytes, ended, Date().timeIntervalSince(start))
        }
        try await Task.sleep(nanoseconds: 200_000_000)
        var slowest = 0.0
        for _ in 0..<8 {
            let reply = await offload { RawHTTP.get(port: port, "/health", timeout: 5) }
            XCTAssertEqual(reply?.status, 200, "GET /health while a slow client is connected: \(String(describing: reply))")
            slowest = max(slowest, reply?.seconds ?? 99)
            try await Task.sleep(nanoseconds: 500_000_000)
        }
        XCTAssertLessThan(slowest, 1.0, "GET /health took \(slowest) s while a slow client was connected")
        let slowResult = await slow.value
        XCTAssertNotNil(slowResult, "slow client could not connect")
        if let slowResult {
            // The server gives a request 3 s: it answers 408 (or closes) instead of waiting forever.
            XCTAssertTrue(slowResult.ended, "the server kept a silent connection open for \(slowResult.seconds) s")
            let reply = RawHTTP.parse(slowResult.bytes, seconds: slowResult.seconds)
            XCTAssertTrue(reply.closedSilently || reply.status == 408, "silent client got: \(reply)")
        }

        // 40 concurrent connections.
        let replies = await withTaskGroup(of: RawHTTP.Reply?.self) { group -> [RawHTTP.Reply?] in
            for _ in 0..<40 {
                group.addTask { await self.offload { RawHTTP.get(port: port, "/health", timeout: 15) } }
            }
            var all: [RawHTTP.Reply?] = []
            for await reply in group { all.append(reply) }
            return all
        }
        let statuses = replies.map { $0?.status }
        XCTAssertEqual(replies.count, 40)
        XCTAssertTrue(statuses.allSatisfy { $0 == 200 || $0 == 503 }, "40 concurrent GET /health: \(statuses)")
        XCTAssertGreaterThanOrEqual(statuses.filter { $0 == 200 }.count, 1, "40 concurrent GET /health: \(statuses)")
        print("40 concurrent GET /health: \(statuses.filter { $0 == 200 }.count) x 200, \(statuses.filter { $0 == 503 }.count) x 503")

        // 40 concurrent silent connections (more than the 32 slots), then a normal request.
        let silent: [Int32] = await offload { (0..<40).compactMap { _ in RawHTTP.connect(port: port, timeout: 8) } }
        let whileFull = await offload { RawHTTP.get(port: port, "/health", timeout: 8) }
        XCTAssertNotNil(whileFull?.status, "GET /health with 40 silent connections open: \(String(describing: whileFull))")
        for fd in silent { close(fd) }

        // Still alive and healthy.
        _ = try await E2E.eventually(timeout: 10, "GET /health to answer 200 after the abuse") { () -> Bool? in
            await offload { RawHTTP.get(port: port, "/health", timeout: 3) }?.status == 200 ? true : nil
        }
        let final = await offload { RawHTTP.get(port: port, "/health") }
        XCTAssertEqual(final?.status, 200)
        XCTAssertEqual((try? JSON.decode(final?.body ?? ""))?["message"]?.asString, "OK")
        XCTAssertTrue(worker.isRunning, "the worker died: \(worker.exitDescription)")
        try checkWorkersAlive()
    }

    // MARK: - Logs in Prefect

    func testCommandOutputAndWorkerLinesReachTheRunLogs() async throws {
        let pool = try await makeProcessPool()
        let tag = UUID().uuidString.lowercased().prefix(8)
        let command = "sh -c 'echo out-one-\(tag); sleep 0.3; echo out-two-\(tag); echo err-line-\(tag) >&2'"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(command),
        ]))
        let worker = try startOpsWorker(pool: pool)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")

        var messages: [String] = []
        do {
            _ = try await E2E.eventually(timeout: 15, "the job's lines in the run's logs: \(messages)") { () -> Bool? in
                messages = try await api.logMessages(id)
                let all = ["out-one-\(tag)", "out-two-\(tag)", "err-line-\(tag)"].allSatisfy { line in messages.contains(line) }
                return all && messages.contains { $0.contains("started") && $0.contains("as pid") } ? true : nil
            }
        } catch {
            XCTFail("\(error)")
        }
        for line in ["out-one-\(tag)", "out-two-\(tag)", "err-line-\(tag)"] {
            // Exactly the line (the worker's "started command [...]" line quotes the command, so match whole messages).
            XCTAssertEqual(messages.filter { $0 == line }.count, 1, "'\(line)' in the run's logs: \(messages)")
        }
        if let one = messages.firstIndex(of: "out-one-\(tag)"), let two = messages.firstIndex(of: "out-two-\(tag)") {
            XCTAssertLessThan(one, two, "stdout lines out of order: \(messages)")
        }
        let started = messages.filter { $0.contains("started command") && $0.contains("as pid") }
        XCTAssertEqual(started.count, 1, "the worker's 'started command ... as pid' line: \(messages)")
        if let pid = run["infrastructure_pid"]?.asString {
            XCTAssertTrue(started.first?.contains("as pid \(pid)") == true, "started line should name pid \(pid): \(started)")
        }
        XCTAssertTrue(worker.isRunning)
    }

    func testEngineLogsAreNotDuplicatedByTheWorker() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createEngineDeployment(pool: pool, name: uniqueName(), flow: "hello")
        let worker = try startOpsWorker(pool: pool)
        let parameters = try E2E.json(#"{"name": "ops-logs", "numbers": [7]}"#)
        let id = try await api.createFlowRun(deployment: deployment, parameters: parameters)
        let run = try await waitForFinalState(id, timeout: engineTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")

        var messages: [String] = []
        do {
            _ = try await E2E.eventually(timeout: 20, "the engine's and the worker's lines in the run's logs: \(messages)") { () -> Bool? in
                messages = try await api.logMessages(id)
                return messages.contains { $0.contains("Finished in state Completed()") }
                    && messages.contains { $0.contains("started engine") } ? true : nil
            }
        } catch {
            XCTFail("\(error)")
        }
        // Give the worker's 2 s batches (PREFECT_LOGGING_TO_API_BATCH_INTERVAL) time to deliver any duplicate.
        try await Task.sleep(nanoseconds: 3_000_000_000)
        messages = try await api.logMessages(id)
        let finished = messages.filter { $0.contains("Finished in state Completed()") }
        XCTAssertEqual(finished.count, 1, "the engine's 'Finished in state Completed()' line should appear once: \(messages)")
        let hello = messages.filter { $0.contains("hello, ops-logs!") }
        XCTAssertEqual(hello.count, 1, "the flow's own line should appear once: \(messages)")
        XCTAssertEqual(messages.filter { $0.contains("started engine") && $0.contains("as pid") }.count, 1,
                       "the worker's 'started engine ... as pid' line: \(messages)")
        XCTAssertTrue(worker.isRunning)
    }

    // MARK: - Events

    func testWorkerEventsReachTheServer() async throws {
        let pool = try await makeProcessPool()
        let poolRead = try await api.readPool(pool)
        let poolID = try XCTUnwrap(poolRead?["id"]?.asString)
        let flowID = try await api.createFlow("e2e-command-flow")
        let deploymentTag = "e2e-ops-\(UUID().uuidString.lowercased().prefix(6))"
        let deployment = try await api.createDeployment(name: uniqueName(), flowID: flowID, pool: pool,
                                                        jobVariables: .object(["command": "true"]),
                                                        extra: ["tags": .array([.string(deploymentTag)])])
        let workerName = uniqueName("-worker")
        let worker = try startOpsWorker(pool: pool, name: workerName)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        XCTAssertEqual(worker.stop(grace: 20), 0, "exit after SIGTERM")

        // The name is already a slug (lowercase letters, digits and dashes).
        let resourceID = "prefect.worker.process.\(workerName)"
        let wanted: Set<String> = ["prefect.worker.started", "prefect.worker.submitted-flow-run",
                                   "prefect.worker.executed-flow-run", "prefect.worker.stopped"]
        var events: [JSON] = []
        do {
            _ = try await E2E.eventually(timeout: 20, interval: 0.5, "events \(wanted.sorted()) for \(resourceID); got \(events.compactMap { $0["event"]?.asString })") { () -> Bool? in
                let reply = try await api.send("POST", "/events/filter", .object([
                    "filter": .object([
                        "event": .object(["prefix": .array([.string("prefect.worker.")])]),
                        "resource": .object(["id": .array([.string(resourceID)])]),
                    ]),
                    "limit": .int(50),
                ]))
                events = reply["events"]?.asArray ?? []
                return wanted.isSubset(of: Set(events.compactMap { $0["event"]?.asString })) ? true : nil
            }
        } catch {
            XCTFail("\(error)")
            return
        }
        func one(_ name: String) -> JSON? {
            let matching = events.filter { $0["event"]?.asString == name }
            XCTAssertEqual(matching.count, 1, "\(name) events: \(matching.count)")
            return matching.first
        }
        let started = try XCTUnwrap(one("prefect.worker.started"))
        let submitted = try XCTUnwrap(one("prefect.worker.submitted-flow-run"))
        let executed = try XCTUnwrap(one("prefect.worker.executed-flow-run"))
        let stopped = try XCTUnwrap(one("prefect.worker.stopped"))

        for event in [started, submitted, executed, stopped] {
            XCTAssertEqual(event["resource"]?["prefect.resource.id"]?.asString, resourceID)
            XCTAssertEqual(event["resource"]?["prefect.resource.name"]?.asString, workerName)
            XCTAssertEqual(event["resource"]?["prefect.worker-type"]?.asString, "process")
            let related = event["related"]?.asArray ?? []
            XCTAssertTrue(related.contains { $0["prefect.resource.id"]?.asString == "prefect.work-pool.\(poolID)"
                && $0["prefect.resource.role"]?.asString == "work-pool" }, "\(event["event"]?.asString ?? "") related: \(related)")
        }
        XCTAssertEqual(stopped["follows"]?.asString, started["id"]?.asString, "stopped should follow started")

        let deploymentResource = "prefect.deployment.\(deployment)"
        let flowResource = "prefect.flow.\(flowID)"
        let runResource = "prefect.flow-run.\(id)"
        for event in [submitted, executed] {
            let related = event["related"]?.asArray ?? []
            func role(_ r: String) -> [JSON] { related.filter { $0["prefect.resource.role"]?.asString == r } }
            let name = event["event"]?.asString ?? ""
            XCTAssertEqual(role("deployment").first?["prefect.resource.id"]?.asString, deploymentResource, "\(name): \(related)")
            XCTAssertEqual(role("flow").first?["prefect.resource.id"]?.asString, flowResource, "\(name): \(related)")
            XCTAssertEqual(role("flow-run").first?["prefect.resource.id"]?.asString, runResource, "\(name): \(related)")
            XCTAssertEqual(role("flow-run").first?["prefect.resource.name"]?.asString, run["name"]?.asString, "\(name): \(related)")
            XCTAssertEqual(role("work-pool").first?["prefect.resource.id"]?.asString, "prefect.work-pool.\(poolID)", "\(name): \(related)")
            XCTAssertTrue(role("tag").contains { $0["prefect.resource.id"]?.asString == "prefect.tag.\(deploymentTag)" },
                          "\(name) should carry the deployment's tag: \(related)")
        }
        XCTAssertEqual(executed["follows"]?.asString, submitted["id"]?.asString, "executed-flow-run should follow submitted-flow-run")
        let executedRun = (executed["related"]?.asArray ?? []).first { $0["prefect.resource.role"]?.asString == "flow-run" }
        let pid = run["infrastructure_pid"]?.asString
        XCTAssertNotNil(pid)
        XCTAssertEqual(executedRun?["prefect.infrastructure.identifier"]?.asString, pid, "executed flow-run resource: \(String(describing: executedRun))")
        XCTAssertEqual(executedRun?["prefect.infrastructure.status-code"]?.asString, "0", "executed flow-run resource: \(String(describing: executedRun))")
    }

    /// A failing job: counted as failed in /metrics, "reported FAILED" in the run's logs, and the exit code in
    /// the executed-flow-run event.
    func testFailedRunInMetricsLogsAndEvents() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": "sh -c 'echo failing-now; exit 3'",
        ]))
        let workerName = uniqueName("-worker")
        let port = E2E.closedLocalPort()
        let worker = try startOpsWorker(pool: pool, name: workerName, arguments: ["--with-healthcheck"], environment: [
            "PREFECT_WORKER_WEBSERVER_PORT": String(port),
        ])
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "FAILED", "final state: \(run.stateSummary)")

        var body = ""
        let counted = try? await E2E.eventually(timeout: 10, "the failed run in /metrics:\n\(body)") { () -> Bool? in
            body = await offload { RawHTTP.get(port: port, "/metrics") }?.body ?? ""
            return Self.metricLines(body).contains(#"prefect_worker_runs_finished_total{state="failed"} 1"#) ? true : nil
        }
        XCTAssertNotNil(counted, "/metrics after a failed run:\n\(body)")
        XCTAssertTrue(Self.metricLines(body).contains(#"prefect_worker_runs_finished_total{state="completed"} 0"#), body)

        var messages: [String] = []
        let logged = try? await E2E.eventually(timeout: 15, "'reported FAILED' and the job's line in the run's logs: \(messages)") { () -> Bool? in
            messages = try await api.logMessages(id)
            return messages.contains("failing-now") && messages.contains { $0.contains("reported FAILED") } ? true : nil
        }
        XCTAssertNotNil(logged, "the run's logs: \(messages)")

        XCTAssertEqual(worker.stop(grace: 20), 0)
        var events: [JSON] = []
        let executed = try? await E2E.eventually(timeout: 20, interval: 0.5, "executed-flow-run for \(workerName)") { () -> JSON? in
            let reply = try await api.send("POST", "/events/filter", .object([
                "filter": .object([
                    "event": .object(["name": .array([.string("prefect.worker.executed-flow-run")])]),
                    "resource": .object(["id": .array([.string("prefect.worker.process.\(workerName)")])]),
                ]),
                "limit": .int(10),
            ]))
            events = reply["events"]?.asArray ?? []
            return events.first
        }
        let flowRun = (executed?["related"]?.asArray ?? []).first { $0["prefect.resource.role"]?.asString == "flow-run" }
        XCTAssertNotNil(executed, "no executed-flow-run event: \(events)")
        XCTAssertEqual(flowRun?["prefect.resource.id"]?.asString, "prefect.flow-run.\(id)")
        XCTAssertEqual(flowRun?["prefect.infrastructure.status-code"]?.asString, "3", "executed flow-run resource: \(String(describing: flowRun))")
    }

    // MARK: - The worker's own log format

    func testJSONLogFormat() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "true"]))
        let workerName = uniqueName("-worker")
        let worker = try startOpsWorker(pool: pool, name: workerName, arguments: ["--log-format", "json"])
        try await waitOnline(pool: pool, worker: workerName)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        XCTAssertEqual(worker.stop(grace: 20), 0)

        let lines = worker.log.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        XCTAssertGreaterThan(lines.count, 2, worker.log)
        var aboutRun = 0
        for line in lines {
            guard let object = try? JSON.decode(line), case .object(let fields) = object else {
                XCTFail("not a JSON object: \(line)")
                continue
            }
            XCTAssertNotNil(fields["time"]?.asString, line)
            XCTAssertNotNil(fields["message"]?.asString, line)
            XCTAssertTrue(["DEBUG", "INFO", "WARNING", "ERROR"].contains(fields["level"]?.asString ?? ""), line)
            if fields["flow_run_id"]?.asString == id { aboutRun += 1 }
        }
        XCTAssertGreaterThan(aboutRun, 0, "no JSON line carries flow_run_id \(id):\n\(worker.log)")
    }

    func testLoggingLevelWarningSuppressesInfo() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "true"]))
        let workerName = uniqueName("-worker")
        let worker = try startOpsWorker(pool: pool, name: workerName, environment: ["PREFECT_LOGGING_LEVEL": "WARNING"])
        try await waitOnline(pool: pool, worker: workerName)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        XCTAssertEqual(worker.stop(grace: 20), 0)

        let info = worker.log.split(separator: "\n").filter { $0.contains(" INFO ") || $0.contains(" DEBUG ") }
        XCTAssertTrue(info.isEmpty, "PREFECT_LOGGING_LEVEL=WARNING, but the worker logged:\n\(info.joined(separator: "\n"))")
        // The run's own logs in Prefect still get the worker's lines about it.
        var messages: [String] = []
        let started = try? await E2E.eventually(timeout: 10, "the 'started ... as pid' line in the run's logs: \(messages)") { () -> Bool? in
            messages = try await api.logMessages(id)
            return messages.contains { $0.contains("started command") && $0.contains("as pid") } ? true : nil
        }
        XCTAssertNotNil(started, "the run's logs lack the worker's 'started command' line when stderr is at WARNING: \(messages)")
    }
}

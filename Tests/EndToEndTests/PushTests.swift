import FaultProxy
import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Cancellation and dispatch pushed over Prefect's events WebSocket (`/api/events/out`), against the real
/// server: fast with the polls slowed down, and nothing missed when the socket is cut or blocked.
final class PushTests: RunControlTestCase, @unchecked Sendable {
    private var proxies: [FaultProxy] = []

    override func tearDownWithError() throws {
        for proxy in proxies {
            proxy.down = false
            proxy.blockWebSockets = false
        }
        defer {
            for proxy in proxies { proxy.stop() }
            proxies.removeAll()
        }
        try super.tearDownWithError()
    }

    private func startProxy() throws -> FaultProxy {
        let proxy = FaultProxy(upstream: env.apiURL)
        try proxy.start()
        proxies.append(proxy)
        return proxy
    }

    /// A worker whose polls are all but off: what it learns fast, it learns by push.
    private func startPushWorker(pool: String, proxy: FaultProxy? = nil, querySeconds: Double = 600,
                                 cancellationPollSeconds: Double = 600) throws -> WorkerProcess {
        try startWorker(pool: pool, arguments: [
            "--query-seconds", String(format: "%g", querySeconds),
            "--cancellation-poll-seconds", String(format: "%g", cancellationPollSeconds),
            "--kill-grace-seconds", "2", "--state-dir", try stateDirectory(),
        ], apiURL: proxy?.apiURL)
    }

    private func waitForSubscription(_ worker: WorkerProcess) async throws {
        _ = try await E2E.eventually(timeout: 20, "the worker to subscribe to the events stream: \(worker.log.suffix(1500))") {
            try checkWorkersAlive()
            return worker.log.contains("subscribed to work pool") ? true : nil
        }
    }

    /// Seconds until the run's job processes are up (they carry its id in their environment).
    private func secondsUntilJobStarts(_ id: String, from start: Date, timeout: Double) async throws -> Double {
        _ = try await E2E.eventually(timeout: timeout, interval: 0.02, "the job of \(id) to start") {
            try checkWorkersAlive()
            return ProcScan.processes(ofRun: id).isEmpty ? nil : true
        }
        return Date().timeIntervalSince(start)
    }

    func testCancellationArrivesByPushWithCancellationPollingOff() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 300"]))
        let worker = try startPushWorker(pool: pool, querySeconds: 0.5)
        try await waitForSubscription(worker)
        var latencies: [Double] = []
        for _ in 0..<3 {
            let id = try await api.createFlowRun(deployment: deployment)
            track(id)
            _ = try await waitForJobPID(id, timeout: 30)
            let asked = Date()
            let result = try await setState(id, "CANCELLING")
            XCTAssertEqual(result["status"]?.asString, "ACCEPT", "set CANCELLING: \(result)")
            // The job is signalled (SIGTERM to its group) and `sleep` dies of it.
            _ = try await E2E.eventually(timeout: 20, interval: 0.02, "the job of \(id) to be stopped") {
                ProcScan.processes(ofRun: id).isEmpty ? true : nil
            }
            latencies.append(Date().timeIntervalSince(asked))
            let run = try await waitForFinalState(id, timeout: 20)
            XCTAssertEqual(run.stateType, "CANCELLED", run.stateSummary)
            let line = await waitForLogLine(worker, run: id, containing: "pushed by the events stream", timeout: 2)
            XCTAssertNotNil(line, "the cancellation should have come by push: \(Self.lines(of: worker.log, mentioning: id))")
        }
        let median = latencies.sorted()[1]
        print("PushTests: CANCELLING → job stopped, by push, with the cancellation poll at 600 s: \(latencies.map { String(format: "%.3f", $0) }) s, median \(String(format: "%.3f", median)) s")
        XCTAssertLessThan(median, 1.0, "cancellation by push should take well under a second: \(latencies)")
    }

    func testARunCreatedNowStartsWithinASecondAtTheDefaultPollInterval() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 300"]))
        // Prefect's default 10 s poll (the harness's own default is 0.5 s).
        let worker = try startWorker(pool: pool, arguments: ["--query-seconds", "10", "--state-dir", try stateDirectory()])
        try await waitForSubscription(worker)
        try await Task.sleep(seconds: 1) // past the catch-up poll of the connect
        var latencies: [Double] = []
        for _ in 0..<3 {
            try await Task.sleep(seconds: Double.random(in: 0.5...2))
            let created = Date()
            let id = try await api.createFlowRun(deployment: deployment)
            track(id)
            latencies.append(try await secondsUntilJobStarts(id, from: created, timeout: 15))
        }
        let median = latencies.sorted()[1]
        print("PushTests: run created → job started at the default 10 s poll: \(latencies.map { String(format: "%.3f", $0) }) s, median \(String(format: "%.3f", median)) s")
        XCTAssertLessThan(median, 1.0, "a run created now should start within a second, not at the next poll: \(latencies)")
        // Well before the next 10 s poll even on a loaded machine.
        XCTAssertLessThan(latencies.max()!, 5.0, "\(latencies)")
    }

    func testAnOutageWhileRunsAreInFlightIsCaughtUpAfterReconnecting() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 300"]))
        let proxy = try startProxy()
        let worker = try startPushWorker(pool: pool, proxy: proxy)
        try await waitForSubscription(worker)
        let a = try await api.createFlowRun(deployment: deployment)
        let b = try await api.createFlowRun(deployment: deployment)
        track(a, b)
        for id in [a, b] { _ = try await waitForJobPID(id, timeout: 15) } // dispatched by push: the poll is at 600 s

        // The server goes away (as in a restart): connections refused, the socket cut.
        proxy.down = true
        _ = try await E2E.eventually(timeout: 10, "the worker to notice the lost stream") {
            worker.log.contains("events stream lost") ? true : nil
        }
        let cancelled = try await setState(a, "CANCELLING")
        XCTAssertEqual(cancelled["status"]?.asString, "ACCEPT", "\(cancelled)")
        let c = try await api.createFlowRun(deployment: deployment)
        track(c)
        try await Task.sleep(seconds: 2)
        proxy.down = false
        let back = Date()

        let runA = try await waitForFinalState(a, timeout: 45)
        XCTAssertEqual(runA.stateType, "CANCELLED", "the cancellation made during the outage is caught up: \(runA.stateSummary)")
        _ = try await waitForJobPID(c, timeout: 45)
        print("PushTests: after the outage, caught up in \(String(format: "%.1f", Date().timeIntervalSince(back))) s")
        let runB = try await api.readFlowRun(b)
        XCTAssertEqual(runB.stateType, "RUNNING", "the untouched run keeps running: \(runB.stateSummary)")
        XCTAssertTrue(worker.log.contains("events stream reconnected"), worker.log.suffix(2000).description)
        XCTAssertGreaterThanOrEqual(proxy.counters.webSocketsTunnelled, 2, "\(proxy.counters)")
        let lost = worker.log.components(separatedBy: "events stream lost").count - 1
        XCTAssertEqual(lost, 1, "the loss is logged once, not once per failed reconnect")
    }

    func testHeartbeatsGoOverTheWorkerChannelAndOverRESTWhileItIsDown() async throws {
        let pool = try await makeProcessPool()
        let proxy = try startProxy()
        let port = E2E.closedLocalPort()
        let worker = try startWorker(pool: pool, arguments: ["--heartbeat-seconds", "1", "--with-healthcheck", "--state-dir", try stateDirectory()],
                                     environment: ["PREFECT_WORKER_WEBSERVER_PORT": String(port)], apiURL: proxy.apiURL)
        _ = try await E2E.eventually(timeout: 20, "the worker channel to open: \(worker.log.suffix(1500))") {
            worker.log.contains("worker channel open at ws://127.0.0.1:\(proxy.port)/api/work_pools/") ? true : nil
        }
        func restHeartbeats() async -> Int {
            let reply = await Task.detached { RawHTTP.get(port: port, "/metrics", timeout: 3) }.value
            let line = reply?.body.split(separator: "\n").first { $0.hasPrefix("prefect_worker_api_requests_total{endpoint=\"heartbeat\"}") }
            return line.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        }
        let before = await restHeartbeats()
        try await Task.sleep(seconds: 4)
        let during = await restHeartbeats()
        XCTAssertEqual(during, before, "no REST heartbeat while the channel is open")
        let workers = try await api.send("POST", "/work_pools/\(TestAPI.path(pool))/workers/filter", .object([:]))
        let last = workers.asArray?.first?["last_heartbeat_time"]?.asString.flatMap(Timestamp.parse)
        XCTAssertLessThan(Date().timeIntervalSince(try XCTUnwrap(last, "\(workers)")), 3, "the channel's heartbeats reach the server: \(workers)")

        proxy.blockWebSockets = true
        proxy.cutWebSockets()
        _ = try await E2E.eventually(timeout: 10, "the worker to notice the lost channel") {
            worker.log.contains("worker channel lost") ? true : nil
        }
        try await Task.sleep(seconds: 3)
        let after = await restHeartbeats()
        XCTAssertGreaterThan(after, before, "REST heartbeats resume while the channel is down")
    }

        func testAPoolChangeIsPushedOverTheWorkerChannelBeforeTheNextPoolRead() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'echo snapshot=$FROM_SNAPSHOT'"),
        ]))
        // The REST pool read comes only every 60 s here: a change seen sooner came over the channel.
        let worker = try startWorker(pool: pool, arguments: ["--heartbeat-seconds", "60", "--state-dir", try stateDirectory()])
        _ = try await E2E.eventually(timeout: 20, "the worker channel to open: \(worker.log.suffix(1500))") {
            worker.log.contains("worker channel open") ? true : nil
        }
        let read = try await api.send("GET", "/work_pools/\(TestAPI.path(pool))")
        guard case .object(var template)? = read["base_job_template"], case .object(var configuration)? = template["job_configuration"] else {
            return XCTFail("no base job template: \(read)")
        }
        configuration["env"] = .object(["FROM_SNAPSHOT": .string("pushed")])
        template["job_configuration"] = .object(configuration)
        _ = try await api.send("PATCH", "/work_pools/\(TestAPI.path(pool))", .object(["base_job_template": .object(template)]))
        try await Task.sleep(seconds: 1.5)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let logs = try await E2E.eventually(timeout: 10, "the job's output in the run's logs") { () -> [String]? in
            let messages = try await api.logMessages(id)
            return messages.contains { $0.contains("snapshot=") } ? messages : nil
        }
        XCTAssertTrue(logs.contains { $0.contains("snapshot=pushed") }, "the run used the pushed template: \(logs)")
    }

        func testWithTheSocketBlockedCancellationFallsBackToPolling() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 300"]))
        let proxy = try startProxy()
        proxy.blockWebSockets = true
        let worker = try startPushWorker(pool: pool, proxy: proxy, querySeconds: 0.5, cancellationPollSeconds: 1)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        _ = try await waitForJobPID(id, timeout: 30)
        XCTAssertTrue(worker.log.contains("events stream unavailable"), worker.log.suffix(2000).description)
        let asked = Date()
        _ = try await setState(id, "CANCELLING")
        let run = try await waitForFinalState(id, timeout: 20)
        XCTAssertEqual(run.stateType, "CANCELLED", run.stateSummary)
        XCTAssertLessThan(Date().timeIntervalSince(asked), 5, "the fallback poll (1 s here) finds the cancellation")
        XCTAssertGreaterThan(proxy.counters.webSocketsRefused, 0)
        XCTAssertEqual(worker.log.components(separatedBy: "events stream unavailable").count - 1, 1, "logged once")
    }

    /// A proxy that answers every WebSocket upgrade 503 (one that does not pass WebSockets): the worker calls
    /// the socket refused and, with the setting left at its default, polls cancellations every 0.5 s as before
    /// push, so cancelling is no slower there than it was.
    func testWithWebSocketsRefusedCancellationIsAsFastAsBeforePush() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 300"]))
        let proxy = try startProxy()
        proxy.blockWebSockets = true
        // PREFECT_WORKER_CANCELLATION_POLL_SECONDS not set: its 10 s default would hold for a lost socket.
        let worker = try startWorker(pool: pool, arguments: ["--query-seconds", "0.5", "--kill-grace-seconds", "2", "--state-dir", try stateDirectory()],
                                     apiURL: proxy.apiURL)
        _ = try await E2E.eventually(timeout: 20, "the worker to find WebSockets refused: \(worker.log.suffix(1500))") {
            try checkWorkersAlive()
            return worker.log.contains("WebSockets are refused on the way to the server") ? true : nil
        }
        var latencies: [Double] = []
        for _ in 0..<3 {
            let id = try await api.createFlowRun(deployment: deployment)
            track(id)
            _ = try await waitForJobPID(id, timeout: 30)
            try await Task.sleep(seconds: Double.random(in: 0...0.5))  // at a random moment of the poll's cycle
            let asked = Date()
            let result = try await setState(id, "CANCELLING")
            XCTAssertEqual(result["status"]?.asString, "ACCEPT", "set CANCELLING: \(result)")
            _ = try await E2E.eventually(timeout: 20, interval: 0.02, "the job of \(id) to be stopped") {
                ProcScan.processes(ofRun: id).isEmpty ? true : nil
            }
            latencies.append(Date().timeIntervalSince(asked))
            let run = try await waitForFinalState(id, timeout: 20)
            XCTAssertEqual(run.stateType, "CANCELLED", run.stateSummary)
        }
        let median = latencies.sorted()[1]
        print("PushTests: CANCELLING → job stopped, WebSockets refused by a proxy, default settings: \(latencies.map { String(format: "%.3f", $0) }) s, median \(String(format: "%.3f", median)) s")
        XCTAssertLessThan(median, 2.0, "refused: polled every 0.5 s, not every 10 s: \(latencies)")
        XCTAssertGreaterThan(proxy.counters.webSocketsRefused, 1)
        XCTAssertEqual(worker.log.components(separatedBy: "WebSockets are refused on the way").count - 1, 1, "said once: \(worker.log.suffix(3000))")
        XCTAssertTrue(worker.log.contains("Cancellations are polled every 0.5 s meanwhile (about 120 requests/min"), worker.log.suffix(3000).description)
    }
}

/// API requests per minute with three plain-command runs in flight, counted by a proxy in front of each worker:
/// with the events socket (the default) and without it at the old 0.5 s cancellation poll, side by side.
final class PushRequestRateTests: RunControlTestCase, @unchecked Sendable {
    private var proxies: [FaultProxy] = []

    override func tearDownWithError() throws {
        defer {
            for proxy in proxies { proxy.stop() }
            proxies.removeAll()
        }
        try super.tearDownWithError()
    }

    func testRequestsPerMinuteWithThreeRunsInFlight() async throws {
        struct Setup { var proxy: FaultProxy; var runs: [String] }
        var setups: [Setup] = []
        for pushed in [true, false] {
            let pool = try await makeProcessPool(pushed ? "-push" : "-poll")
            let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 300"]))
            let proxy = FaultProxy(upstream: env.apiURL)
            try proxy.start()
            proxies.append(proxy)
            proxy.blockWebSockets = !pushed
            // Defaults throughout, but for the old cancellation cadence on the socket-less worker.
            // (the harness's own defaults are a 0.5 s poll and a 2 s heartbeat).
            try startWorker(pool: pool, arguments: ["--state-dir", try stateDirectory(), "--query-seconds", "10", "--heartbeat-seconds", "30"]
                            + (pushed ? [] : ["--cancellation-poll-seconds", "0.5"]), apiURL: proxy.apiURL)
            var runs: [String] = []
            for _ in 0..<3 { runs.append(try await api.createFlowRun(deployment: deployment)) }
            track(runs)
            setups.append(Setup(proxy: proxy, runs: runs))
        }
        for setup in setups { for id in setup.runs { _ = try await waitForJobPID(id, timeout: 40) } }
        try await Task.sleep(seconds: 2)
        let before = setups.map { ($0.proxy.counters.requests, $0.proxy.counters.webSocketsRefused) }
        let window = 60.0
        try await Task.sleep(seconds: window)
        let perMinute = zip(setups, before).map { setup, start in
            Double(setup.proxy.counters.requests - start.0) * 60 / window
        }
        let upgrades = Double(setups[1].proxy.counters.webSocketsRefused - before[1].1) * 60 / window
        print(String(format: "PushTests: API requests per minute, 3 plain-command runs in flight: with the events socket %.0f; without it (0.5 s cancellation poll) %.0f, of which %.0f refused WebSocket upgrades", perMinute[0], perMinute[1], upgrades))
        // Six polls a minute at the 10 s interval (seven if the window catches one more), as Prefect's worker:
        // cancellations come by event, heartbeats and pool changes over the worker channel.
        XCTAssertLessThanOrEqual(perMinute[0], 7, "with both sockets up only the polls remain")
        XCTAssertLessThan(perMinute[0] * 4, perMinute[1] - upgrades)
    }
}

import FaultProxy
import Foundation
@testable import PrefectWorker
import XCTest

/// The worker's own events (submitted, executed, flow-run heartbeats, started/stopped) against the real server,
/// counted by a proxy: what each run costs in API requests, by endpoint.
final class EventsSocketTests: RunControlTestCase, @unchecked Sendable {
    private var proxies: [FaultProxy] = []

    override func tearDownWithError() throws {
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

    /// "METHOD /path" with ids replaced by `{id}`.
    static func endpoint(_ summary: String) -> String {
        summary.replacingOccurrences(of: "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", with: "{id}", options: .regularExpression)
    }

    struct Measured {
        var runs: [String]
        var perRun: [String: Double]
        var total: Double { perRun.values.reduce(0, +) }
        var table: String {
            perRun.sorted { $0.value == $1.value ? $0.key < $1.key : $0.value > $1.value }
                .map { String(format: "%6.2f  %@", $0.value, $0.key) }.joined(separator: "\n")
        }
    }

    /// `count` quick plain-command runs, created a few seconds apart as runs arrive in practice, through a
    /// counting proxy, with the worker's defaults (10 s poll, 30 s heartbeat): requests per run by endpoint,
    /// from the first run's creation until the last one's events have had time to leave.
    private func measure(count: Int) async throws -> (Measured, WorkerProcess, FaultProxy) {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 1"]))
        let proxy = try startProxy()
        let worker = try startWorker(pool: pool, arguments: ["--state-dir", try stateDirectory(), "--query-seconds", "10", "--heartbeat-seconds", "30"],
                                     apiURL: proxy.apiURL)
        _ = try await E2E.eventually(timeout: 30, "the worker to subscribe to the events stream: \(worker.log.suffix(1500))") {
            try checkWorkersAlive()
            return worker.log.contains("subscribed to work pool") ? true : nil
        }
        try await Task.sleep(seconds: 3) // past the start-up requests and the worker.started event
        let before = proxy.counters.byEndpoint
        var runs: [String] = []
        for _ in 0..<count {
            runs.append(try await api.createFlowRun(deployment: deployment))
            try await Task.sleep(seconds: 3)
        }
        track(runs)
        let finished = try await waitForFinalStates(runs, timeout: 60)
        for id in runs { XCTAssertEqual(finished[id]?.stateType, "COMPLETED", finished[id]?.stateSummary ?? id) }
        try await Task.sleep(seconds: 3) // the executed-flow-run events leave within the shipper's 1 s batching
        var perRun: [String: Double] = [:]
        for (summary, n) in proxy.counters.byEndpoint {
            let delta = n - (before[summary] ?? 0)
            if delta > 0 { perRun[Self.endpoint(summary), default: 0] += Double(delta) / Double(count) }
        }
        return (Measured(runs: runs, perRun: perRun), worker, proxy)
    }

    func testEventsGoOverTheEventsSocketAndCostNoRequestPerRun() async throws {
        let began = Date()
        let (measured, _, proxy) = try await measure(count: 5)
        print("EventsSocketTests: API requests per plain-command run, by endpoint (5 runs, 3 s apart, default intervals): \(String(format: "%.2f", measured.total)) in all\n\(measured.table)")
        let stored = try await waitForStoredEvents(about: measured.runs, since: began)
        for id in measured.runs {
            XCTAssertEqual(stored[id]?.filter { $0 == "prefect.worker.submitted-flow-run" }.count, 1, "\(id): \(stored[id] ?? [])")
            XCTAssertEqual(stored[id]?.filter { $0 == "prefect.worker.executed-flow-run" }.count, 1, "\(id): \(stored[id] ?? [])")
        }
        let all = proxy.counters.byEndpoint
        XCTAssertNil(all["POST /api/events"], "no event went by REST (the worker.started event included): \(all)")
        XCTAssertEqual(measured.perRun["POST /api/events"], nil)
        XCTAssertEqual(all["GET /api/events/in"], 1, "one socket carried every event: \(all)")
        // The proxy tells upgrades from plain requests (the push bench marks them so).
        let upgrades = proxy.counters.webSocketsByEndpoint
        XCTAssertEqual(upgrades["GET /api/events/in"], 1, "\(upgrades)")
        XCTAssertTrue(upgrades.keys.allSatisfy { $0.hasPrefix("GET ") }, "only GETs upgrade: \(upgrades)")
    }

    func testWithWebSocketsBlockedEventsGoByPOST() async throws {
        let began = Date()
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "true"]))
        let proxy = try startProxy()
        proxy.blockWebSockets = true
        try startWorker(pool: pool, arguments: ["--state-dir", try stateDirectory()], apiURL: proxy.apiURL)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 60)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let stored = try await waitForStoredEvents(about: [id], since: began)
        XCTAssertEqual(stored[id]?.filter { $0.hasPrefix("prefect.worker.") }.count, 2, "\(stored)")
        let all = proxy.counters.byEndpoint
        XCTAssertGreaterThan(all["POST /api/events"] ?? 0, 0, "the events went by REST: \(all)")
        XCTAssertEqual(all["GET /api/events/in"], 1, "one refused upgrade, then REST until the socket's backoff has passed: \(all)")
        // A refused upgrade is still an upgrade; the events' POSTs are not.
        let counters = proxy.counters
        let upgrades = counters.webSocketsByEndpoint
        XCTAssertEqual(upgrades["GET /api/events/in"], 1, "\(upgrades)")
        XCTAssertNil(upgrades["POST /api/events"], "\(upgrades)")
        XCTAssertEqual(upgrades.values.reduce(0, +), counters.webSocketsRefused, "every upgrade was refused: \(upgrades)")
    }
}

extension E2ETestCase {
    /// The worker's events about these runs, as the server stored them (`POST /events/filter`): names by run.
    func storedEvents(about runs: [String], since: Date) async throws -> [String: [String]] {
        let answer = try await api.send("POST", "/events/filter", .object([
            "filter": .object([
                "occurred": .object(["since": .string(Timestamp.format(since.addingTimeInterval(-60)))]),
                "any_resource": .object(["id": .array(runs.map { .string("prefect.flow-run.\($0)") })]),
                "event": .object(["prefix": .array(["prefect.worker."])]),
            ]),
            "limit": .int(50),  // the server's maximum
        ]))
        var names: [String: [String]] = [:]
        for event in answer["events"]?.asArray ?? [] {
            guard let name = event["event"]?.asString else { continue }
            for related in event["related"]?.asArray ?? [] {
                if let id = related["prefect.resource.id"]?.asString, id.hasPrefix("prefect.flow-run.") {
                    names[String(id.dropFirst("prefect.flow-run.".count)), default: []].append(name)
                }
            }
        }
        return names
    }

    /// Waits until the server has stored the submitted and executed events of every run.
    func waitForStoredEvents(about runs: [String], since: Date) async throws -> [String: [String]] {
        var last: [String: [String]] = [:]
        return try await E2E.eventually(timeout: 45, interval: 1, "the server to store the worker's events of \(runs) (so far: \(last))") {
            last = try await storedEvents(about: runs, since: since)
            let complete = runs.allSatisfy { Set(last[$0] ?? []).isSuperset(of: ["prefect.worker.submitted-flow-run", "prefect.worker.executed-flow-run"]) }
            return complete ? last : nil
        }
    }
}

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

    func testRequestsPerRunByEndpoint() async throws {
        let (measured, _, _) = try await measure(count: 5)
        print("EventsSocketTests: API requests per plain-command run, by endpoint (5 runs, 3 s apart, default intervals): \(String(format: "%.2f", measured.total)) in all\n\(measured.table)")
    }
}

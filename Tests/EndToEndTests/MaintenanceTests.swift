import FaultProxy
import Foundation
@testable import PrefectWorker
import XCTest

/// Prefect Cloud's maintenance answers (`503` + `Prefect-Maintenance: true` + `Retry-After`), served by a proxy
/// in front of the real server: ridden through past the retry budget, with `/health` healthy meanwhile.
final class MaintenanceTests: RunControlTestCase, @unchecked Sendable {
    private var proxy: FaultProxy?

    override func tearDownWithError() throws {
        proxy?.maintenance = false
        defer { proxy?.stop() }
        try super.tearDownWithError()
    }

    func testAMaintenanceWindowLongerThanTheRetryBudgetIsRiddenThroughWithHealthHealthy() async throws {
        let proxy = FaultProxy(upstream: env.apiURL)
        try proxy.start()
        self.proxy = proxy
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "true"]))
        let port = E2E.closedLocalPort()
        // One retry, and a 0.2 s poll: /health's window (30 polls) is 6 s, the maintenance 10 s.
        let worker = try startWorker(pool: pool, arguments: ["--query-seconds", "0.2", "--with-healthcheck", "--state-dir", try stateDirectory()],
                                     environment: ["PREFECT_CLIENT_MAX_RETRIES": "1", "PREFECT_WORKER_WEBSERVER_PORT": String(port)],
                                     apiURL: proxy.apiURL)
        _ = try await E2E.eventually(timeout: 20, "the worker to serve") { worker.log.contains("serving work pool") ? true : nil }

        let pollPath = "POST /api/work_pools/\(pool)/get_scheduled_flow_runs"
        let pollsBefore = proxy.counters.byEndpoint[pollPath] ?? 0
        proxy.maintenance = true
        let start = Date()
        let id = try await api.createFlowRun(deployment: deployment)
        var statuses: [Int] = []
        while Date().timeIntervalSince(start) < 10 {
            try checkWorkersAlive()
            let reply = await Task.detached { RawHTTP.get(port: port, "/health", timeout: 3) }.value
            statuses.append(reply?.status ?? -1)
            try await Task.sleep(seconds: 0.5)
        }
        // The poll kept asking, about once per Retry-After (1 s), well past its retry budget (the worker's events,
        // which used to add their own POST /events retries here, go over the events socket now).
        let polls = (proxy.counters.byEndpoint[pollPath] ?? 0) - pollsBefore
        XCTAssertGreaterThanOrEqual(polls, 7, "the worker kept polling through the maintenance: \(proxy.counters.byEndpoint)")
        XCTAssertEqual(Set(statuses), [200], "/health stays healthy while the worker waits out maintenance: \(statuses)")
        proxy.maintenance = false

        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", "the run created during maintenance runs after it: \(run.stateSummary)")
        XCTAssertTrue(worker.isRunning)
        XCTAssertTrue(worker.log.contains("in maintenance"), worker.log.suffix(2000).description)
    }
}

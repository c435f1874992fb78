import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// `prefect_worker_pool_runs_due` in /metrics: runs due in the pool that no worker has claimed, from the
/// poll when it shows them all, else from one `POST /flow_runs/count` per poll interval at most.
final class AutoscalingSignalTests: RunControlTestCase, @unchecked Sendable {
    func metrics(_ port: UInt16) async -> String {
        await Task.detached { RawHTTP.get(port: port, "/metrics", timeout: 3)?.body ?? "" }.value
    }

    /// The value of an unlabelled sample, or of `name{labels}`.
    static func sample(_ body: String, _ name: String) -> Double? {
        body.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    func startGaugeWorker(pool: String, arguments: [String]) async throws -> UInt16 {
        let port = E2E.closedLocalPort()
        try startWorker(pool: pool, arguments: Self.fastArguments + ["--state-dir", try stateDirectory(), "--with-healthcheck"] + arguments,
                        environment: ["PREFECT_WORKER_WEBSERVER_PORT": String(port), "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1"])
        _ = try await E2E.eventually(timeout: 30, "GET /health on port \(port)") { () -> Bool? in
            try checkWorkersAlive()
            return await Task.detached { RawHTTP.get(port: port, "/health", timeout: 3) }.value?.status == nil ? nil : true
        }
        return port
    }

    /// With --limit 1 and three runs due, the worker runs one; the other two are the backlog, counted by the
    /// server (the limited poll cannot show them), at most once per poll interval.
    func testTheBacklogBeyondTheLimitIsCountedOncePerPollInterval() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sleep 6"),
        ]))
        var ids: [String] = []
        for _ in 0..<3 { ids.append(try await api.createFlowRun(deployment: deployment)) }
        track(ids)
        let started = Date()
        let port = try await startGaugeWorker(pool: pool, arguments: ["--limit", "1"])
        _ = try await waitForState(ids[0], ["RUNNING", "PENDING"], timeout: 20)
        var body = ""
        _ = try await E2E.eventually(timeout: 10, "prefect_worker_pool_runs_due 2 in /metrics:\n\(body)") { () -> Bool? in
            body = await metrics(port)
            return Self.sample(body, "prefect_worker_pool_runs_due") == 2 ? true : nil
        }
        let counts = Self.sample(body, #"prefect_worker_api_requests_total{endpoint="count_flow_runs"}"#) ?? 0
        let intervals = Date().timeIntervalSince(started) / 0.5  // RunControlTestCase polls every 0.5 s
        XCTAssertGreaterThan(counts, 0)
        XCTAssertLessThanOrEqual(counts, intervals + 1, "at most one count per poll interval: \(counts) in \(intervals) intervals")
    }

    /// Without a limit the poll returns every due run: the gauge comes from it, with no extra request.
    func testAPollThatShowsEverythingCostsNoExtraRequest() async throws {
        let pool = try await makeProcessPool()
        let port = try await startGaugeWorker(pool: pool, arguments: [])
        var body = ""
        _ = try await E2E.eventually(timeout: 10, "prefect_worker_pool_runs_due 0 in /metrics:\n\(body)") { () -> Bool? in
            body = await metrics(port)
            return Self.sample(body, "prefect_worker_pool_runs_due") == 0 ? true : nil
        }
        try await Task.sleep(nanoseconds: 1_500_000_000)
        body = await metrics(port)
        XCTAssertNil(Self.sample(body, #"prefect_worker_api_requests_total{endpoint="count_flow_runs"}"#),
                     "no count request when the poll shows everything:\n\(body)")
        XCTAssertGreaterThan(Self.sample(body, #"prefect_worker_api_requests_total{endpoint="poll"}"#) ?? 0, 1)
    }
}

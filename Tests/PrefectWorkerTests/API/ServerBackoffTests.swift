import Foundation
import XCTest
@testable import PrefectWorker

/// Prefect Cloud's maintenance answers and 429 pauses, against `FakePrefectAPI`.
final class ServerBackoffTests: XCTestCase {
    private var fake: FakePrefectAPI!

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
    }

    override func tearDown() {
        fake.stop()
        fake = nil
    }

    private func client(maxRetries: Int) -> PrefectClient {
        var settings = ClientSettings()
        settings.requestTimeout = 5
        settings.maxRetries = maxRetries
        settings.retryJitterFactor = 0
        return PrefectClient(baseURL: fake.apiURL, apiKey: nil, authString: nil, settings: settings)
    }

    private static let maintenance = FakePrefectAPI.Fault.respond(.json(503, #"{"detail":"maintenance"}"#,
                                                                        headers: ["Prefect-Maintenance": "true", "Retry-After": "0.05"]))

    func testMaintenanceIsRetriedPastTheRetryBudgetAndRecordedForHealth() async throws {
        fake.route("GET", "/api/flow_runs/*") { _, _, _ in .json(200, fakeFlowRunJSON(id: "r1", stateType: "RUNNING")) }
        fake.inject(Array(repeating: Self.maintenance, count: 8), method: "GET", path: "/api/flow_runs/*")
        let client = client(maxRetries: 1)
        let run = try await client.readFlowRun("r1")
        XCTAssertEqual(run.id, "r1")
        XCTAssertEqual(fake.requests("GET", "/api/flow_runs/*").count, 9, "eight maintenance answers waited out, then the answer")
        let ends = try XCTUnwrap(client.maintenanceBackoffEndsAt)
        XCTAssertLessThan(abs(ends.timeIntervalSinceNow), 2)
    }

    func testAnOrdinary503StillCountsAgainstTheBudget() async throws {
        fake.route("GET", "/api/flow_runs/*") { _, _, _ in .json(200, fakeFlowRunJSON(id: "r1", stateType: "RUNNING")) }
        let plain = FakePrefectAPI.Fault.respond(.json(503, #"{"detail":"busy"}"#, headers: ["Retry-After": "0.05"]))
        fake.inject(Array(repeating: plain, count: 8), method: "GET", path: "/api/flow_runs/*")
        let client = client(maxRetries: 1)
        do {
            _ = try await client.readFlowRun("r1")
            XCTFail("two 503s without the maintenance header exhaust one retry")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 503)
        }
        XCTAssertEqual(fake.requests("GET", "/api/flow_runs/*").count, 2)
        XCTAssertNil(client.maintenanceBackoffEndsAt)
    }

    func testA429PausesEveryCallerOfThatEndpointGroupOnly() async throws {
        fake.route("GET", "/api/flow_runs/*") { _, _, _ in .json(200, fakeFlowRunJSON(id: "r1", stateType: "RUNNING")) }
        fake.route("GET", "/api/deployments/*") { _, _, _ in .json(404, #"{"detail":"gone"}"#) }
        fake.inject([.respond(.json(429, #"{"detail":"slow down"}"#, headers: ["Retry-After": "1"]))], method: "GET", path: "/api/flow_runs/*")
        let client = client(maxRetries: 0)
        do {
            _ = try await client.readFlowRun("r1", policy: .once)
            XCTFail("the 429 is the answer of a single attempt")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 429)
        }
        let start = Date()
        _ = try await client.readDeployment("d1")  // another group: not paused
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.5)
        _ = try await client.readFlowRun("r2", policy: .once) // same group, another caller: waits out the pause
        XCTAssertGreaterThan(Date().timeIntervalSince(start), 0.8, "a second caller of the group waited for Retry-After")
    }

    func testMaintenanceDelayHonoursRetryAfterAndJittersOnlyUpwards() {
        XCTAssertEqual(PrefectClient.maintenanceDelay(retryAfter: 10, jitter: 0.2, random: 0), 10)
        XCTAssertEqual(PrefectClient.maintenanceDelay(retryAfter: 10, jitter: 0.2, random: 1), 12, accuracy: 1e-9)
        XCTAssertEqual(PrefectClient.maintenanceDelay(retryAfter: nil, jitter: 0, random: 0.3), 30)
    }
}

extension ServerBackoffTests {
    func testHealthCountsItsWindowFromTheEndOfAMaintenanceBackoff() async throws {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.querySeconds = 0.01 // a 0.3 s window
        settings.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("health-\(UUID().uuidString)").path
        let context = WorkerContext(settings: settings, client: fake.client())
        try await Task.sleep(seconds: 0.4)
        XCTAssertEqual(HealthService.response(context: context, method: "GET", path: "/health").status, 503, "no poll for 40 intervals")
        context.client.noteMaintenance(until: Date().addingTimeInterval(5))
        XCTAssertEqual(HealthService.response(context: context, method: "GET", path: "/health").status, 200,
                       "waiting out maintenance is not being stuck")
    }
}

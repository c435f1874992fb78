import Foundation
import XCTest
@testable import PrefectWorker

/// How often the cancellation watch asks while the events socket is up, lost or refused, with the setting at
/// its default and set by the user.
final class CancellationCadenceTests: XCTestCase {
    private func settings(_ seconds: Double? = nil, environment: [String: String] = [:]) throws -> Settings {
        var arguments = ["start", "-p", "pool"]
        if let seconds { arguments += ["--cancellation-poll-seconds", String(format: "%g", seconds)] }
        guard case .start(let settings) = try CommandLineParser.parse(arguments, environment: environment.merging(["PREFECT_API_URL": "http://127.0.0.1:1/api"]) { a, _ in a }) else {
            throw XCTestError(.failureWhileWaiting)
        }
        return settings
    }

    func testTheCadenceForEachStateOfTheSocket() throws {
        let byDefault = try settings(), set = try settings(3), setToTen = try settings(10)
        XCTAssertFalse(byDefault.cancellationPollIsSet)
        XCTAssertTrue(set.cancellationPollIsSet)
        let table: [(SocketLoop.State, Settings, Double?, String)] = [
            (.up, byDefault, nil, "up: only when rung"),
            (.lost, byDefault, 10, "lost: Prefect's fallback"),
            (.refused, byDefault, 0.5, "refused: the cadence before push"),
            (.up, set, nil, "up, set: still only when rung"),
            (.lost, set, 3, "lost, set: the user's"),
            (.refused, set, 3, "refused, set: the user's"),
            (.refused, setToTen, 10, "set to the default value: still the user's"),
        ]
        for (state, settings, expected, why) in table {
            XCTAssertEqual(CancellationWatch.pollSeconds(socket: state, settings: settings), expected, why)
        }
    }

    func testTheSettingFromTheEnvironmentCountsAsSet() throws {
        let parsed = try settings(environment: ["PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "7"])
        XCTAssertTrue(parsed.cancellationPollIsSet)
        XCTAssertEqual(CancellationWatch.pollSeconds(socket: .refused, settings: parsed), 7)
    }

    /// The watch itself against a fake API, the socket's state set by hand: refused asks every 0.5 s, lost
    /// waits out the 10 s default, and a change to refused takes effect at once.
    func testTheWatchFollowsTheSocketsState() async throws {
        let fake = try FakePrefectAPI()
        defer { fake.stop() }
        fake.route("POST", "/api/flow_runs/filter") { _, _, _ in .json(200, "[]") }
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("cadence-\(UUID().uuidString)").path
        let context = WorkerContext(settings: settings, client: fake.client())
        let json = JSON.object(["id": "run-a", "state_id": "s-a", "run_count": .int(0),
                                "state": .object(["id": "s-a", "type": "RUNNING", "name": "Running"])])
        let reserved = await context.registry.reserve(try JSONDecoder().decode(FlowRun.self, from: Data(json.encoded().utf8)),
                                                      for: FlowRunSupervisor(context: context, runID: "run-a"))
        XCTAssertTrue(reserved)
        func asked() -> Int { fake.requests("POST", "/api/flow_runs/filter").count }

        context.push.socketChanged(.lost)  // as at start: no change, no ring
        let watch = Task { await CancellationWatch(context: context).run() }
        try await Task.sleep(seconds: 1.6)
        XCTAssertEqual(asked(), 0, "lost: the first ask waits for the 10 s default")

        context.push.socketChanged(.refused)
        try await Task.sleep(seconds: 1.6)
        let refused = asked()
        XCTAssertGreaterThanOrEqual(refused, 3, "refused: at once, then every 0.5 s")
        XCTAssertLessThanOrEqual(refused, 5)

        context.push.socketChanged(.lost)
        let atLoss = asked()
        try await Task.sleep(seconds: 1.6)
        XCTAssertLessThanOrEqual(asked() - atLoss, 1, "lost again: back to 10 s (one catch-up ask for the change)")
        watch.cancel()
        await watch.value
    }
}

import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker

/// When the poll for scheduled runs rests, how far it looks ahead, and when it wakes for a run it knows of:
/// the rule on its own, then `PollService` following it against the fake API.
final class PollCadenceTests: XCTestCase {
    private let now = Date(timeIntervalSince1970: 1_800_000_000)

    private func run(_ id: String, startsIn seconds: Double?) throws -> FlowRun {
        var fields: [String: JSON] = ["id": .string(id), "state_id": .string("s-" + id), "run_count": .int(0),
                                     "state": .object(["id": .string("s-" + id), "type": "SCHEDULED", "name": "Scheduled"])]
        if let seconds { fields["next_scheduled_start_time"] = .string(Timestamp.format(now.addingTimeInterval(seconds))) }
        return try JSONDecoder().decode(FlowRun.self, from: Data(JSON.object(fields).encoded().utf8))
    }

    func testItRestsOnlyWhileTheStreamIsUpTheSettingIsUnsetThePoolHasNoLimitAndNothingJustChanged() {
        let byDefault = PollCadence(querySeconds: 10, prefetchSeconds: 10, mayRest: true)
        let set = PollCadence(querySeconds: 10, prefetchSeconds: 10, mayRest: false)
        let table: [(PollCadence, SocketLoop.State, Bool, Date?, Bool, String)] = [
            (byDefault, .up, false, nil, true, "up: rests"),
            (byDefault, .lost, false, nil, false, "lost: every --query-seconds"),
            (byDefault, .refused, false, nil, false, "refused: every --query-seconds"),
            (set, .up, false, nil, false, "--query-seconds set: the user's interval holds"),
            (byDefault, .up, true, nil, false, "a pool with a concurrency limit: the server holds runs back without events"),
            (byDefault, .up, false, now.addingTimeInterval(-5), false, "a deployment changed 5 s ago: its first runs come without events"),
            (byDefault, .up, false, now.addingTimeInterval(-PollCadence.settleSeconds), true, "settled"),
        ]
        for (cadence, socket, limit, change, rests, why) in table {
            XCTAssertEqual(cadence.rests(socket: socket, poolHasLimit: limit, lastChange: change, now: now), rests, why)
        }
        XCTAssertEqual(byDefault.lookahead(resting: false), 10, "Prefect's worker asks --prefetch-seconds ahead")
        XCTAssertEqual(byDefault.lookahead(resting: true), PollCadence.restSeconds + 10,
                       "resting, it looks a whole rest ahead, so no run becomes due unseen between two polls")
        XCTAssertEqual(byDefault.wait(resting: false, now: now), 10)
        XCTAssertEqual(byDefault.wait(resting: true, now: now), PollCadence.restSeconds)
    }

    func testRunsBeyondThePrefetchAreWokenForAtTheirStartMinusThePrefetch() throws {
        var cadence = PollCadence(querySeconds: 10, prefetchSeconds: 10, mayRest: true)
        let runs = [try run("due", startsIn: -3), try run("unscheduled", startsIn: nil), try run("prefetched", startsIn: 10.5),
                    try run("later", startsIn: 25), try run("latest", startsIn: 39)]
        let offered = cadence.polled(runs, at: now)
        XCTAssertEqual(offered.map(\.id), ["due", "unscheduled", "prefetched"], "due, or within the prefetch (and a second's tolerance)")
        XCTAssertEqual(cadence.wait(resting: true, now: now), 15, accuracy: 0.001, "woken at 'later' minus the prefetch")
        XCTAssertEqual(cadence.wait(resting: true, now: now.addingTimeInterval(15.2)), PollCadence.shortestWait,
                       "a wake that comes a moment late never spins")
        XCTAssertEqual(cadence.wait(resting: false, now: now), 10, "not resting, the known run changes nothing")

        _ = cadence.polled([try run("later", startsIn: 9)], at: now.addingTimeInterval(16))
        XCTAssertEqual(cadence.wait(resting: true, now: now.addingTimeInterval(16)), PollCadence.restSeconds,
                       "once offered, a run is no longer waited for")
        _ = cadence.polled([try run("later", startsIn: 25)], at: now)
        XCTAssertEqual(cadence.wait(resting: true, polled: false, now: now), 10, accuracy: 0.001,
                       "after a failed poll, again within --query-seconds")
        XCTAssertEqual(cadence.wait(resting: true, polled: false, now: now.addingTimeInterval(12)), 3, accuracy: 0.001,
                       "or at the known run's claim, if sooner")
        XCTAssertEqual(cadence.wait(resting: true, polled: false, now: now.addingTimeInterval(15.2)), 10,
                       "a failed poll for a claim already due is retried at --query-seconds, not every half second")
        XCTAssertEqual(cadence.interval(resting: true), PollCadence.restSeconds,
                       "the interval of a busy worker's backlog count ignores known runs (it could not take them)")
        _ = cadence.polled([try run("far", startsIn: 3600)], at: now)
        XCTAssertEqual(cadence.wait(resting: true, now: now), PollCadence.restSeconds, "the safety net comes first")
    }

    // MARK: - PollService following the cadence

    private var fake: FakePrefectAPI!

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
    }

    override func tearDown() {
        fake?.stop()
        fake = nil
    }

    private let pollPath = "/api/work_pools/pool/get_scheduled_flow_runs"

    private func context(_ configure: (inout Settings) -> Void = { _ in }) throws -> WorkerContext {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("cadence-\(UUID().uuidString)").path
        settings.querySeconds = 0.2
        settings.prefetchSeconds = 0
        configure(&settings)
        let context = WorkerContext(settings: settings, client: fake.client())
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        return context
    }

    private func polls() -> Int { fake.requests("POST", pollPath).count }

    private func start(_ context: WorkerContext) -> Task<Void, Never> {
        let service = PollService(context: context, runs: RunLifecycle(context: context))
        return Task { await service.run() }
    }

    /// The poll on its own, the events stream up, every poll answered with no runs.
    private func startWithStreamUp(_ context: WorkerContext) -> Task<Void, Never> {
        fake.route("POST", pollPath) { _, _, _ in .json(200, "[]") }
        context.push.socketChanged(.up)
        return start(context)
    }

    private func stop(_ task: Task<Void, Never>) async {
        task.cancel()
        let stopped = await finishes(within: 5) { await task.value }
        XCTAssertTrue(stopped)
    }

    func testWhileTheStreamIsUpThePollRestsAndLooksFurtherAhead() async throws {
        let context = try context { $0.limit = 2 }
        let task = startWithStreamUp(context)
        try await Task.sleep(seconds: 0.4)
        let first = polls()
        XCTAssertGreaterThan(first, 0)
        try await Task.sleep(seconds: 1.2)
        XCTAssertEqual(polls(), first, "the first poll (and the catch-up the connect rang), then rest; a 0.2 s poll would have asked 6 times more")
        let body = fake.requests("POST", pollPath).first?.json
        let before = try XCTUnwrap(body?["scheduled_before"]?.stringValue.flatMap(Timestamp.parse))
        XCTAssertEqual(before.timeIntervalSinceNow, PollCadence.restSeconds, accuracy: 3, "it looks a whole rest ahead")
        XCTAssertNil(body?["limit"], "and asks for every run, so runs not yet due cannot fill a --limit batch and hide a due one")

        context.push.socketChanged(.lost)
        try await Task.sleep(seconds: 1.1)
        XCTAssertGreaterThanOrEqual(polls(), 5, "the stream lost: at once back to every --query-seconds")
        await stop(task)
    }

    func testASetQuerySecondsHoldsWhileTheStreamIsUp() async throws {
        let context = try context { $0.querySecondsIsSet = true }
        let task = startWithStreamUp(context)
        try await Task.sleep(seconds: 1.1)
        await stop(task)
        XCTAssertGreaterThanOrEqual(polls(), 4)
        let before = try XCTUnwrap(fake.requests("POST", pollPath).first?.json?["scheduled_before"]?.stringValue.flatMap(Timestamp.parse))
        XCTAssertEqual(before.timeIntervalSinceNow, 0, accuracy: 3, "--prefetch-seconds ahead, as before")
    }

    func testAPoolWithAConcurrencyLimitIsPolledAtTheQueryInterval() async throws {
        let context = try context()
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "concurrency_limit": 3}"#.utf8))
        let task = startWithStreamUp(context)
        try await Task.sleep(seconds: 1.1)
        await stop(task)
        XCTAssertGreaterThanOrEqual(polls(), 4, "the server may hold due runs back and pushes nothing when a slot frees")
    }

    func testAChangeOfThePoolPollsAtOnceAndThenAtTheQueryIntervalForAWhile() async throws {
        let context = try context()
        let task = startWithStreamUp(context)
        try await Task.sleep(seconds: 0.6)
        let resting = polls()
        context.push.poolChanged()
        try await Task.sleep(seconds: 1.1)
        XCTAssertGreaterThanOrEqual(polls() - resting, 5, "polled at once, then every --query-seconds while the server schedules the change's runs")
        // Settled long ago: rests again.
        context.push.poolChanged(at: Date().addingTimeInterval(-PollCadence.settleSeconds - 1))
        try await Task.sleep(seconds: 0.5)
        let settled = polls()
        try await Task.sleep(seconds: 1)
        XCTAssertEqual(polls(), settled, "settled: resting again")
        await stop(task)
    }

    func testAFailedPollForgetsNoKnownRun() async throws {
        let context = try context { $0.querySeconds = 3 }
        let startsAt = Date().addingTimeInterval(1.8)
        let answer = JSON.array([.object(["flow_run": .object([
            "id": "r-later", "state_id": "s-later", "run_count": .int(0), "next_scheduled_start_time": .string(Timestamp.format(startsAt)),
            "state": .object(["id": "s-later", "type": "SCHEDULED", "name": "Scheduled"]),
        ])])]).encoded()
        let calls = Mutex(0)
        fake.route("POST", pollPath) { _, _, _ in
            let call = calls.withLock { $0 += 1; return $0 }
            return call == 2 ? .json(422, #"{"detail": "refused, once"}"#) : .json(200, answer)
        }
        context.push.socketChanged(.up)
        _ = await context.push.pollNow.wait(timeout: 0)
        let task = start(context)
        try await Task.sleep(seconds: 0.3)
        XCTAssertEqual(polls(), 1)
        context.push.pollNow.ring()  // a poll that fails
        try await Task.sleep(seconds: 0.3)
        XCTAssertEqual(polls(), 2)
        try await Task.sleep(seconds: 1.6)
        let taken = await context.registry.runIDs
        XCTAssertEqual(taken, ["r-later"], "polled for at its claim (1.8 s), not at --query-seconds after the failure (3.3 s)")
        await stop(task)
    }

    func testAKnownRunIsPolledForWhenItsClaimIsDueAndOfferedThen() async throws {
        let context = try context()
        let startsAt = Date().addingTimeInterval(2.5)
        let answer = JSON.array([.object(["flow_run": .object([
            "id": "r-later", "state_id": "s-later", "run_count": .int(0), "next_scheduled_start_time": .string(Timestamp.format(startsAt)),
            "state": .object(["id": "s-later", "type": "SCHEDULED", "name": "Scheduled"]),
        ])])]).encoded()
        fake.route("POST", pollPath) { _, _, _ in .json(200, answer) }
        context.push.socketChanged(.up)
        let task = start(context)
        try await Task.sleep(seconds: 1)
        let first = polls()
        let early = await context.registry.runIDs
        XCTAssertEqual(early, [], "beyond the prefetch: remembered, not claimed")
        try await Task.sleep(seconds: 2.5)
        XCTAssertEqual(polls(), first + 1, "one more poll, when the run's claim was due")
        let taken = await context.registry.runIDs
        XCTAssertEqual(taken, ["r-later"])
        await stop(task)
    }
}

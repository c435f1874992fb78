import Foundation
import XCTest
@testable import PrefectWorker

final class RunRegistryTests: XCTestCase {
    /// Supervisors here are never run: they only fill slots and take requests.
    private static let context = WorkerContext(
        settings: Settings(apiURL: URL(string: "http://127.0.0.1:9/api")!, pool: "p", workerName: "w"),
        client: PrefectClient(baseURL: URL(string: "http://127.0.0.1:9/api")!, apiKey: nil, authString: nil))

    private func supervisor(_ id: String) -> FlowRunSupervisor { FlowRunSupervisor(context: Self.context, runID: id) }

    private func reserve(_ run: FlowRun, in registry: RunRegistry) async -> Bool {
        await registry.reserve(run, for: supervisor(run.id))
    }

    private func run(_ id: String, state: String? = "s1") throws -> FlowRun {
        var fields: [String: JSON] = ["id": .string(id)]
        if let state { fields["state_id"] = .string(state) }
        return try JSONDecoder().decode(FlowRun.self, from: Data(JSON.object(fields).encoded().utf8))
    }

    func testReserveAndRelease() async throws {
        let registry = RunRegistry(limit: nil, metrics: Metrics())
        let reservedA = await reserve(try run("a"), in: registry)
        let reservedB = await reserve(try run("b"), in: registry)
        XCTAssertTrue(reservedA)
        XCTAssertTrue(reservedB)
        let count = await registry.count
        let ids = await registry.runIDs
        let free = await registry.freeSlots
        XCTAssertEqual(count, 2)
        XCTAssertEqual(ids, ["a", "b"])
        XCTAssertNil(free, "no limit")
        await registry.release("a")
        let after = await registry.runIDs
        XCTAssertEqual(after, ["b"])
        let b = await registry.supervisor("b")
        XCTAssertEqual(b?.runID, "b")
        let gone = await registry.supervisor("a")
        XCTAssertNil(gone)
    }

    func testSameRunIsNotReservedTwice() async throws {
        let registry = RunRegistry(limit: nil, metrics: Metrics())
        let first = await reserve(try run("a"), in: registry)
        let again = await reserve(try run("a"), in: registry)
        let newStateWhileRunning = await reserve(try run("a", state: "s2"), in: registry)
        XCTAssertTrue(first)
        XCTAssertFalse(again, "already in flight")
        XCTAssertFalse(newStateWhileRunning, "still in flight, whatever its state")
    }

    func testDedupeByRunAndStateAfterRelease() async throws {
        let registry = RunRegistry(limit: nil, metrics: Metrics())
        let first = await reserve(try run("a", state: "s1"), in: registry)
        XCTAssertTrue(first)
        await registry.markClaimed("a")
        await registry.release("a")
        let sameState = await reserve(try run("a", state: "s1"), in: registry)
        XCTAssertFalse(sameState, "this scheduled state was claimed already")
        let newState = await reserve(try run("a", state: "s2"), in: registry)
        XCTAssertTrue(newState, "a re-run in a new SCHEDULED state may be taken again")
        await registry.release("a")
        let noState = await reserve(try run("b", state: nil), in: registry)
        XCTAssertTrue(noState)
        await registry.markClaimed("b")
        await registry.release("b")
        let noStateAgain = await reserve(try run("b", state: nil), in: registry)
        XCTAssertFalse(noStateAgain)
    }

    /// Regression: `reserve` remembered every run it reserved as submitted, and `release` never forgot it, so a
    /// run whose claim failed (and was left for the next poll) was never taken again in that scheduled state.
    func testARunReleasedWithoutAClaimMayBeReservedAgain() async throws {
        let registry = RunRegistry(limit: nil, metrics: Metrics())
        let first = await reserve(try run("a", state: "s1"), in: registry)
        XCTAssertTrue(first)
        await registry.release("a")
        let again = await reserve(try run("a", state: "s1"), in: registry)
        XCTAssertTrue(again, "not claimed: the next poll may take it")
        let twice = await reserve(try run("a", state: "s1"), in: registry)
        XCTAssertFalse(twice, "never two supervisors for one run")
        await registry.markClaimed("a")
        await registry.release("a")
        let claimed = await reserve(try run("a", state: "s1"), in: registry)
        XCTAssertFalse(claimed, "claimed in this state: never again")
        await registry.markClaimed("unknown") // harmless
    }

    func testLimit() async throws {
        let registry = RunRegistry(limit: 2, metrics: Metrics())
        var free = await registry.freeSlots
        XCTAssertEqual(free, 2)
        let a = await reserve(try run("a"), in: registry)
        let b = await reserve(try run("b"), in: registry)
        let c = await reserve(try run("c"), in: registry)
        XCTAssertTrue(a)
        XCTAssertTrue(b)
        XCTAssertFalse(c, "no slot")
        free = await registry.freeSlots
        XCTAssertEqual(free, 0)
        await registry.release("a")
        free = await registry.freeSlots
        XCTAssertEqual(free, 1)
        let cAgain = await reserve(try run("c"), in: registry)
        XCTAssertTrue(cAgain, "a refused reservation is not remembered as submitted")
    }

    func testReleasingAnUnknownRunIsHarmless() async throws {
        let registry = RunRegistry(limit: 1, metrics: Metrics())
        await registry.release("nope")
        let reserved = await reserve(try run("a"), in: registry)
        XCTAssertTrue(reserved)
        let count = await registry.count
        XCTAssertEqual(count, 1)
    }

    func testAdopt() async throws {
        let registry = RunRegistry(limit: 1, metrics: Metrics())
        let old = supervisor("old")
        await registry.adopt(old)
        let found = await registry.supervisor("old")
        XCTAssertTrue(found === old)
        let reserved = await reserve(try run("new"), in: registry)
        XCTAssertFalse(reserved, "an adopted run takes a slot")
    }

    func testWaitUntilEmpty() async throws {
        let registry = RunRegistry(limit: nil, metrics: Metrics())
        await registry.waitUntilEmpty() // empty: returns at once
        _ = await reserve(try run("a"), in: registry)
        _ = await reserve(try run("b"), in: registry)
        let emptied = ExpectationFlag()
        let waiter = Task {
            await registry.waitUntilEmpty()
            emptied.set()
        }
        try await Task.sleep(nanoseconds: 30_000_000)
        await registry.release("a")
        try await Task.sleep(nanoseconds: 30_000_000)
        XCTAssertFalse(emptied.isSet, "one run is still in flight")
        await registry.release("b")
        let finished = await finishes(within: 2) { await waiter.value }
        XCTAssertTrue(finished)
        XCTAssertTrue(emptied.isSet)
    }

    func testWaitUntilEmptyIsCancellable() async throws {
        let registry = RunRegistry(limit: nil, metrics: Metrics())
        _ = await reserve(try run("a"), in: registry)
        let waiter = Task { await registry.waitUntilEmpty() }
        try await Task.sleep(nanoseconds: 30_000_000)
        waiter.cancel()
        let finished = await finishes(within: 2) { await waiter.value }
        XCTAssertTrue(finished)
        let count = await registry.count
        XCTAssertEqual(count, 1)
    }

    func testWaitForRelease() async throws {
        let registry = RunRegistry(limit: 1, metrics: Metrics())
        _ = await reserve(try run("a"), in: registry)
        let released = ExpectationFlag()
        let waiter = Task {
            await registry.waitForRelease()
            released.set()
        }
        try await Task.sleep(nanoseconds: 30_000_000)
        XCTAssertFalse(released.isSet)
        await registry.release("a")
        let finished = await finishes(within: 2) { await waiter.value }
        XCTAssertTrue(finished)

        let cancelled = Task { await registry.waitForRelease() }
        try await Task.sleep(nanoseconds: 30_000_000)
        cancelled.cancel()
        let cancelledFinished = await finishes(within: 2) { await cancelled.value }
        XCTAssertTrue(cancelledFinished)
    }
}

/// The requests a run's supervisor takes from the cancellation watch, the drain and its timer.
final class FlowRunSupervisorRequestTests: XCTestCase {
    private func supervisor() -> FlowRunSupervisor {
        let url = URL(string: "http://127.0.0.1:9/api")!
        let context = WorkerContext(settings: Settings(apiURL: url, pool: "p", workerName: "w"),
                                    client: PrefectClient(baseURL: url, apiKey: nil, authString: nil))
        return FlowRunSupervisor(context: context, runID: "a")
    }

    func testACancelIsTakenOnce() async {
        let supervisor = supervisor()
        let before = await supervisor.cancelRequested
        XCTAssertFalse(before)
        let first = await supervisor.requestCancel()
        let second = await supervisor.requestCancel()
        XCTAssertTrue(first)
        XCTAssertFalse(second, "already being cancelled")
        let after = await supervisor.cancelRequested
        XCTAssertTrue(after)
    }

    func testTheFirstStopReasonIsKeptAndATimeoutDoesNotReplaceIt() async {
        let supervisor = supervisor()
        await supervisor.requestStop(reason: "first")
        await supervisor.requestStop(reason: "second")
        await supervisor.requestTimeout(reason: "too long")
        let reason = await supervisor.stopReason
        let timedOut = await supervisor.timedOut
        XCTAssertEqual(reason, "first")
        XCTAssertFalse(timedOut)
    }

    func testACancelDuringAStopStillCounts() async {
        let supervisor = supervisor()
        await supervisor.requestStop(reason: "shutdown")
        let taken = await supervisor.requestCancel()
        XCTAssertTrue(taken, "the final state is CANCELLED, not CRASHED")
        await supervisor.requestTimeout(reason: "too long")
        let timedOut = await supervisor.timedOut
        XCTAssertFalse(timedOut, "a run being cancelled does not time out")
    }
}

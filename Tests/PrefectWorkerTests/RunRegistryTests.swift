import Foundation
import XCTest
@testable import PrefectWorker

final class RunRegistryTests: XCTestCase {
    private func run(_ id: String, state: String? = "s1") throws -> FlowRun {
        var fields: [String: JSON] = ["id": .string(id)]
        if let state { fields["state_id"] = .string(state) }
        return try JSONDecoder().decode(FlowRun.self, from: Data(JSON.object(fields).encoded().utf8))
    }

    func testReserveAndRelease() async throws {
        let registry = RunRegistry(limit: nil)
        let reservedA = await registry.reserve(try run("a"))
        let reservedB = await registry.reserve(try run("b"))
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
        let entry = await registry.entry("b")
        XCTAssertEqual(entry?.runID, "b")
        XCTAssertNil(entry?.pid)
        let gone = await registry.entry("a")
        XCTAssertNil(gone)
    }

    func testSameRunIsNotReservedTwice() async throws {
        let registry = RunRegistry(limit: nil)
        let first = await registry.reserve(try run("a"))
        let again = await registry.reserve(try run("a"))
        let newStateWhileRunning = await registry.reserve(try run("a", state: "s2"))
        XCTAssertTrue(first)
        XCTAssertFalse(again, "already in flight")
        XCTAssertFalse(newStateWhileRunning, "still in flight, whatever its state")
    }

    func testDedupeByRunAndStateAfterRelease() async throws {
        let registry = RunRegistry(limit: nil)
        let first = await registry.reserve(try run("a", state: "s1"))
        XCTAssertTrue(first)
        await registry.markClaimed("a")
        await registry.release("a")
        let sameState = await registry.reserve(try run("a", state: "s1"))
        XCTAssertFalse(sameState, "this scheduled state was claimed already")
        let newState = await registry.reserve(try run("a", state: "s2"))
        XCTAssertTrue(newState, "a re-run in a new SCHEDULED state may be taken again")
        await registry.release("a")
        let noState = await registry.reserve(try run("b", state: nil))
        XCTAssertTrue(noState)
        await registry.markClaimed("b")
        await registry.release("b")
        let noStateAgain = await registry.reserve(try run("b", state: nil))
        XCTAssertFalse(noStateAgain)
    }

    /// Regression: `reserve` remembered every run it reserved as submitted, and `release` never forgot it, so a
    /// run whose claim failed (and was left for the next poll) was never taken again in that scheduled state.
    func testARunReleasedWithoutAClaimMayBeReservedAgain() async throws {
        let registry = RunRegistry(limit: nil)
        let first = await registry.reserve(try run("a", state: "s1"))
        XCTAssertTrue(first)
        await registry.release("a")
        let again = await registry.reserve(try run("a", state: "s1"))
        XCTAssertTrue(again, "not claimed: the next poll may take it")
        let twice = await registry.reserve(try run("a", state: "s1"))
        XCTAssertFalse(twice, "never two supervisors for one run")
        await registry.markClaimed("a")
        await registry.release("a")
        let claimed = await registry.reserve(try run("a", state: "s1"))
        XCTAssertFalse(claimed, "claimed in this state: never again")
        await registry.markClaimed("unknown") // harmless
    }

    func testLimit() async throws {
        let registry = RunRegistry(limit: 2)
        var free = await registry.freeSlots
        XCTAssertEqual(free, 2)
        let a = await registry.reserve(try run("a"))
        let b = await registry.reserve(try run("b"))
        let c = await registry.reserve(try run("c"))
        XCTAssertTrue(a)
        XCTAssertTrue(b)
        XCTAssertFalse(c, "no slot")
        free = await registry.freeSlots
        XCTAssertEqual(free, 0)
        await registry.release("a")
        free = await registry.freeSlots
        XCTAssertEqual(free, 1)
        let cAgain = await registry.reserve(try run("c"))
        XCTAssertTrue(cAgain, "a refused reservation is not remembered as submitted")
    }

    func testReleasingAnUnknownRunIsHarmless() async throws {
        let registry = RunRegistry(limit: 1)
        await registry.release("nope")
        let reserved = await registry.reserve(try run("a"))
        XCTAssertTrue(reserved)
        let count = await registry.count
        XCTAssertEqual(count, 1)
    }

    func testPIDs() async throws {
        let registry = RunRegistry(limit: nil)
        _ = await registry.reserve(try run("a"))
        await registry.setPID("a", 1234)
        var pid = await registry.entry("a")?.pid
        XCTAssertEqual(pid, 1234)
        await registry.setPID("a", nil)
        pid = await registry.entry("a")?.pid
        XCTAssertNil(pid)
        await registry.setPID("unknown", 1)
        let unknown = await registry.entry("unknown")
        XCTAssertNil(unknown, "setting a pid does not register a run")
    }

    func testAdopt() async throws {
        let registry = RunRegistry(limit: 1)
        await registry.adopt("old", pid: 42)
        let entry = await registry.entry("old")
        XCTAssertEqual(entry?.pid, 42)
        let reserved = await registry.reserve(try run("new"))
        XCTAssertFalse(reserved, "an adopted run takes a slot")
    }

    func testWaitUntilEmpty() async throws {
        let registry = RunRegistry(limit: nil)
        await registry.waitUntilEmpty() // empty: returns at once
        _ = await registry.reserve(try run("a"))
        _ = await registry.reserve(try run("b"))
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
        let registry = RunRegistry(limit: nil)
        _ = await registry.reserve(try run("a"))
        let waiter = Task { await registry.waitUntilEmpty() }
        try await Task.sleep(nanoseconds: 30_000_000)
        waiter.cancel()
        let finished = await finishes(within: 2) { await waiter.value }
        XCTAssertTrue(finished)
        let count = await registry.count
        XCTAssertEqual(count, 1)
    }

    func testWaitForRelease() async throws {
        let registry = RunRegistry(limit: 1)
        _ = await registry.reserve(try run("a"))
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

    func testRequestCancel() async throws {
        let registry = RunRegistry(limit: nil)
        let unknown = await registry.requestCancel("a")
        XCTAssertFalse(unknown)
        _ = await registry.reserve(try run("a"))
        var requested = await registry.isCancelRequested("a")
        XCTAssertFalse(requested)
        let first = await registry.requestCancel("a")
        let second = await registry.requestCancel("a")
        XCTAssertTrue(first)
        XCTAssertFalse(second, "already being cancelled")
        requested = await registry.isCancelRequested("a")
        XCTAssertTrue(requested)
        let entry = await registry.entry("a")
        XCTAssertEqual(entry?.cancelRequested, true)
    }

    func testRequestStopAll() async throws {
        let registry = RunRegistry(limit: nil)
        _ = await registry.reserve(try run("a"))
        _ = await registry.reserve(try run("b"))
        _ = await registry.reserve(try run("c"))
        await registry.setPID("a", 100)
        await registry.setPID("c", 300)
        let withJobs = await registry.requestStopAll(reason: "first")
        XCTAssertEqual(withJobs, ["a", "c"], "only runs with a job process")
        _ = await registry.requestStopAll(reason: "second")
        for id in ["a", "b", "c"] {
            let reason = await registry.entry(id)?.stopReason
            XCTAssertEqual(reason, "first", "the first reason is kept for \(id)")
        }
    }

    func testWaitForStopRequest() async throws {
        let registry = RunRegistry(limit: nil)
        _ = await registry.reserve(try run("a"))
        _ = await registry.reserve(try run("b"))
        await registry.waitForStopRequest("unknown") // a run that is gone: returns at once

        let cancelA = ExpectationFlag()
        let waiterA = Task {
            await registry.waitForStopRequest("a")
            cancelA.set()
        }
        let waiterB = Task { await registry.waitForStopRequest("b") }
        try await Task.sleep(nanoseconds: 30_000_000)
        XCTAssertFalse(cancelA.isSet)
        await registry.requestCancel("a")
        let aFinished = await finishes(within: 2) { await waiterA.value }
        XCTAssertTrue(aFinished, "cancel wakes the run's waiter")

        let bStillWaiting = await finishes(within: 0.1) { await waiterB.value }
        XCTAssertFalse(bStillWaiting, "another run's waiter is not woken")
        await registry.requestStopAll(reason: "shutdown")
        let bFinished = await finishes(within: 2) { await waiterB.value }
        XCTAssertTrue(bFinished, "stopping all wakes every waiter")

        // Already requested: returns at once.
        await registry.waitForStopRequest("a")
    }

    func testWaitForStopRequestEndsOnReleaseAndOnCancel() async throws {
        let registry = RunRegistry(limit: nil)
        _ = await registry.reserve(try run("a"))
        let waiter = Task { await registry.waitForStopRequest("a") }
        try await Task.sleep(nanoseconds: 30_000_000)
        await registry.release("a")
        let released = await finishes(within: 2) { await waiter.value }
        XCTAssertTrue(released)

        _ = await registry.reserve(try run("b"))
        let cancelled = Task { await registry.waitForStopRequest("b") }
        try await Task.sleep(nanoseconds: 30_000_000)
        cancelled.cancel()
        let finished = await finishes(within: 2) { await cancelled.value }
        XCTAssertTrue(finished)
    }
}

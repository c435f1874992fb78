import Foundation
import XCTest
@testable import PrefectWorker

/// `Outbox` against `FakePrefectAPI`: persistence across restarts, order, and the read-before-finalising rules.
final class OutboxTests: XCTestCase {
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!
    /// The state type `GET /flow_runs/{id}` reports.
    private let serverState = FakeAPIBox("RUNNING")

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("outbox-tests-\(UUID().uuidString)").path
        let serverState = serverState
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            .json(200, fakeFlowRunJSON(id: String(path.split(separator: "/").last!), stateType: serverState.value))
        }
        fake.route("PATCH", "/api/flow_runs/*") { _, _, _ in .noContent }
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let state = (try? JSON.decode(body))?["state"] ?? .null
            return .json(201, JSON.object(["status": .string("ACCEPT"), "details": .object(["type": .string("accept_details")]),
                                           "state": state]))
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    private func makeOutbox() throws -> Outbox {
        // A fresh client each time, as after a restart.
        Outbox(stateDirectory: stateDirectory, client: fake.client(), log: .console)
    }

    private func outboxFile(_ run: String) -> String { stateDirectory + "/outbox/" + run + ".json" }

    private func storedItems(_ run: String) throws -> [OutboxItem] {
        let data = try XCTUnwrap(FileManager.default.contents(atPath: outboxFile(run)), "no outbox file for \(run)")
        return try JSONDecoder().decode([OutboxItem].self, from: data)
    }

    // MARK: -

    func testUndeliveredFinalStateSurvivesARestartAndIsDeliveredInOrder() async throws {
        let run = "run-\(UUID().uuidString.lowercased())"
        // The server is down: 503 (Retry-After 0 so the client's retries do not slow the test down).
        fake.outage = .unavailable(retryAfter: "0")
        let first = try makeOutbox()
        try await first.prepare()
        let pidDelivered = await first.send(run, .infrastructurePID(pid: 4242))
        XCTAssertFalse(pidDelivered)
        let final = OutboxItem.finalState(type: "COMPLETED", message: "Process exited with code 0.", transitionID: "tid-final-1", force: false)
        let finalDelivered = await first.send(run, final)
        XCTAssertFalse(finalDelivered)
        XCTAssertTrue(FileManager.default.fileExists(atPath: outboxFile(run)))
        XCTAssertEqual(try storedItems(run), [.infrastructurePID(pid: 4242), final])
        XCTAssertGreaterThan(fake.requests.count, 0, "the outbox did not even try")
        XCTAssertTrue(fake.requests("POST", "/api/flow_runs/*/set_state").isEmpty, "set_state before the pid was recorded")

        // Still down: a delivery attempt by the background loop leaves everything in place.
        let stillDown = await first.deliver(run)
        XCTAssertFalse(stillDown)
        XCTAssertEqual(try storedItems(run), [.infrastructurePID(pid: 4242), final])

        // Restart: a new Outbox on the same directory finds the run; the server is back.
        fake.outage = nil
        fake.clearRequests()
        let second = try makeOutbox()
        try await second.prepare()
        let pending = await second.pendingRuns()
        XCTAssertEqual(pending, [run])
        await second.flush(timeout: 10)
        let left = await second.pendingRuns()
        XCTAssertEqual(left, [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: outboxFile(run)))

        let requests = fake.requests
        XCTAssertEqual(requests.map { "\($0.method) \($0.path)" }, [
            "PATCH /api/flow_runs/\(run)",
            "GET /api/flow_runs/\(run)",
            "POST /api/flow_runs/\(run)/set_state",
        ])
        XCTAssertEqual(requests[0].json, .object(["infrastructure_pid": .string("4242")]))
        let state = try XCTUnwrap(requests[2].json?["state"])
        XCTAssertEqual(state["type"], .string("COMPLETED"))
        XCTAssertEqual(state["message"], .string("Process exited with code 0."))
        XCTAssertEqual(state["state_details"]?["transition_id"], .string("tid-final-1"), "the transition id must survive the restart")
        XCTAssertEqual(requests[2].json?["force"], .bool(false))
    }

    func testItemsForSeveralRunsAreKeptApart() async throws {
        fake.outage = .unavailable(retryAfter: "0")
        let outbox = try makeOutbox()
        try await outbox.prepare()
        await outbox.send("run-a", .infrastructurePID(pid: 1))
        await outbox.send("run-b", .infrastructurePID(pid: 2))
        await outbox.send("run-a", .finalState(type: "FAILED", message: "a", transitionID: "ta", force: false))
        let pending = await outbox.pendingRuns()
        XCTAssertEqual(pending, ["run-a", "run-b"])
        XCTAssertEqual(try storedItems("run-a"), [.infrastructurePID(pid: 1),
                                                  .finalState(type: "FAILED", message: "a", transitionID: "ta", force: false)])
        XCTAssertEqual(try storedItems("run-b"), [.infrastructurePID(pid: 2)])
    }

    func testRunAlreadyTerminalOnTheServerIsNotProposedAgain() async throws {
        serverState.value = "COMPLETED"
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let delivered = await outbox.send("run-done", .finalState(type: "CRASHED", message: "worker lost it", transitionID: "t1", force: false))
        XCTAssertTrue(delivered)
        XCTAssertEqual(fake.requests.map { "\($0.method) \($0.path)" }, ["GET /api/flow_runs/run-done"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: outboxFile("run-done")))
    }

    func testCancellingRunIsForcedToCancelled() async throws {
        serverState.value = "CANCELLING"
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let delivered = await outbox.send("run-c", .finalState(type: "FAILED", message: "Process exited with code -15.", transitionID: "t-c", force: false))
        XCTAssertTrue(delivered)
        let proposals = fake.requests("POST", "/api/flow_runs/run-c/set_state")
        XCTAssertEqual(proposals.count, 1)
        let body = try XCTUnwrap(proposals.first?.json)
        XCTAssertEqual(body["state"]?["type"], .string("CANCELLED"))
        XCTAssertEqual(body["state"]?["name"], .string("Cancelled"))
        XCTAssertEqual(body["force"], .bool(true))
        XCTAssertEqual(body["state"]?["state_details"]?["transition_id"], .string("t-c"))
        XCTAssertTrue(body["state"]?["message"]?.stringValue?.hasPrefix("Flow run was cancelled.") == true, "\(body)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: outboxFile("run-c")))
    }

    func testACancelledRunIsForcedToCancelledOverAnEngineCrashWithTheStateDetailsCopied() async throws {
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            var run = (try! JSON.decode(fakeFlowRunJSON(id: String(path.split(separator: "/").last!), stateType: "CRASHED"))).objectValue!
            run["state"] = .object(["type": "CRASHED", "name": "Crashed", "message": "Execution was aborted by a termination signal.",
                                    "state_details": .object(["transition_id": "theirs", "deployment_concurrency_lease_id": "lease-1"])])
            return .json(200, .object(run))
        }
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let delivered = await outbox.send("run-x", .finalState(type: "CANCELLED", message: "Flow run was cancelled: the job exited after SIGTERM.", transitionID: "t-x", force: true))
        XCTAssertTrue(delivered)
        let body = try XCTUnwrap(fake.requests("POST", "/api/flow_runs/run-x/set_state").first?.json)
        XCTAssertEqual(body["state"]?["type"], .string("CANCELLED"))
        XCTAssertEqual(body["force"], .bool(true))
        XCTAssertEqual(body["state"]?["state_details"]?["deployment_concurrency_lease_id"], .string("lease-1"))
        XCTAssertEqual(body["state"]?["state_details"]?["transition_id"], .string("t-x"), "the transition id is ours")
    }

    func testACancelledRunThatCompletedOnItsOwnIsLeftCompleted() async throws {
        serverState.value = "COMPLETED"
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let delivered = await outbox.send("run-y", .finalState(type: "CANCELLED", message: "cancelled", transitionID: "t-y", force: true))
        XCTAssertTrue(delivered)
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/run-y/set_state").count, 0)
    }

    func testNotFoundDropsTheItemAndGoesOn() async throws {
        fake.route("GET", "/api/flow_runs/*") { _, _, _ in .json(404, #"{"detail":"Flow run not found"}"#) }
        fake.route("PATCH", "/api/flow_runs/*") { _, _, _ in .json(404, #"{"detail":"Flow run not found"}"#) }
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let pid = await outbox.send("run-gone", .infrastructurePID(pid: 7))
        XCTAssertTrue(pid)
        let final = await outbox.send("run-gone", .finalState(type: "COMPLETED", message: "", transitionID: "t", force: false))
        XCTAssertTrue(final)
        XCTAssertEqual(fake.requests.map { "\($0.method) \($0.path)" },
                       ["PATCH /api/flow_runs/run-gone", "GET /api/flow_runs/run-gone"], "404 must not be retried")
        XCTAssertFalse(FileManager.default.fileExists(atPath: outboxFile("run-gone")))
        let pending = await outbox.pendingRuns()
        XCTAssertEqual(pending, [])
    }

    func testConcurrentDeliveriesOfOneRunSendEachItemOnce() async throws {
        // A slow server, so the second delivery starts while the first is in flight.
        fake.inject([.delay(0.3)], method: "PATCH", path: "/api/flow_runs/*")
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let first = Task { await outbox.send("run-x", .infrastructurePID(pid: 11)) }
        let deadline = Date().addingTimeInterval(5)
        while fake.requests("PATCH", "/api/flow_runs/run-x").isEmpty && Date() < deadline {
            try await Task.sleep(nanoseconds: 5_000_000)
        }
        // The PATCH is now at the (slow) server: a second delivery and a new item arrive meanwhile.
        async let second = outbox.deliver("run-x")
        async let third = outbox.send("run-x", .finalState(type: "COMPLETED", message: "", transitionID: "t-x", force: false))
        let results = await [first.value, second, third]
        XCTAssertEqual(results, [true, true, true])
        XCTAssertEqual(fake.requests("PATCH", "/api/flow_runs/run-x").count, 1)
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/run-x/set_state").count, 1)
        let order = fake.requests.map(\.method)
        XCTAssertEqual(order.firstIndex(of: "PATCH").map { $0 < order.firstIndex(of: "POST")! }, true, "\(order)")
    }

    /// Regression: a delivery waiting for another delivery of the same run to end ignored cancellation, so
    /// stopping the outbox's loop (the worker's last stage) waited for a slow server's answer to the other.
    func testADeliveryWaitingForItsTurnEndsWhenItsTaskIsCancelled() async throws {
        fake.inject([.delay(3)], method: "PATCH", path: "/api/flow_runs/*")
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let first = Task { await outbox.send("run-y", .infrastructurePID(pid: 12)) }
        let deadline = Date().addingTimeInterval(5)
        while fake.requests("PATCH", "/api/flow_runs/run-y").isEmpty && Date() < deadline {
            try await Task.sleep(nanoseconds: 5_000_000)
        }
        let waiting = Task { await outbox.deliver("run-y") }
        try await Task.sleep(nanoseconds: 50_000_000)
        let cancelledAt = Date()
        waiting.cancel()
        let delivered = await waiting.value
        XCTAssertFalse(delivered, "a cancelled wait delivers nothing")
        XCTAssertLessThan(Date().timeIntervalSince(cancelledAt), 1, "the wait ended with its task, not with the other delivery")
        let firstDelivered = await first.value
        XCTAssertTrue(firstDelivered)
    }

    /// Bug probe: when the outbox file cannot be written (disk full, directory gone), `store` logs that "the
    /// report is kept in memory only", but nothing keeps it: `deliver` reads the items back from the file, finds
    /// none, and reports success, so the final state never reaches the server.
    func testReportIsNotLostWhenTheOutboxCannotBeWritten() async throws {
        let outbox = try makeOutbox()
        try await outbox.prepare()
        // Make every later write fail, even for root: the outbox directory becomes a regular file.
        let directory = stateDirectory + "/outbox"
        try FileManager.default.removeItem(atPath: directory)
        XCTAssertTrue(FileManager.default.createFile(atPath: directory, contents: Data("not a directory".utf8)))
        let delivered = await outbox.send("run-w", .finalState(type: "COMPLETED", message: "done", transitionID: "t-w", force: false))
        let proposals = fake.requests("POST", "/api/flow_runs/run-w/set_state")
        XCTAssertEqual(proposals.count, 1, "send returned \(delivered) but the final state never reached the server")
        XCTAssertEqual(proposals.first?.json?["state"]?["type"], .string("COMPLETED"))
    }

    func testLostSetStateAnswerIsRetriedWithTheSameTransitionID() async throws {
        // First set_state: recorded, then the connection is reset; the server did record the state, so the
        // retry is rejected as a duplicate with the same state type, which counts as delivered.
        fake.inject([.reset], method: "POST", path: "/api/flow_runs/*/set_state")
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, _ in
            .json(200, #"{"status":"REJECT","details":{"type":"reject_details","reason":"This run has already made this state transition."},"state":{"type":"COMPLETED","name":"Completed"}}"#)
        }
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let delivered = await outbox.send("run-r", .finalState(type: "COMPLETED", message: "ok", transitionID: "t-r", force: false))
        XCTAssertTrue(delivered)
        let proposals = fake.requests("POST", "/api/flow_runs/run-r/set_state")
        XCTAssertEqual(proposals.count, 2)
        XCTAssertEqual(proposals.map { $0.json?["state"]?["state_details"]?["transition_id"] }, [.string("t-r"), .string("t-r")])
        XCTAssertFalse(FileManager.default.fileExists(atPath: outboxFile("run-r")))
    }

    /// Regression: after 20 WAIT answers the delivery loop fell through and the final state was removed from
    /// the outbox as if delivered, with no log line. A WAIT never drops a report: it stays until accepted.
    func testManyWaitAnswersNeverDropTheFinalState() async throws {
        let answers = FakeAPIBox(0)
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let n = answers.update { count -> Int in
                count += 1
                return count
            }
            if n <= 25 {
                return .json(200, #"{"status":"WAIT","details":{"type":"wait_details","delay_seconds":0}}"#)
            }
            let state = (try? JSON.decode(body))?["state"] ?? .null
            return .json(201, JSON.object(["status": .string("ACCEPT"), "details": .object(["type": .string("accept_details")]),
                                           "state": state]))
        }
        let outbox = try makeOutbox()
        try await outbox.prepare()
        let final = OutboxItem.finalState(type: "COMPLETED", message: "done", transitionID: "t-wait", force: false)
        var delivered = await outbox.send("run-wait", final)
        if !delivered {
            let pending = await outbox.pendingRuns()
            XCTAssertEqual(pending, ["run-wait"], "not delivered yet: it must still be in the outbox")
            XCTAssertEqual(try storedItems("run-wait"), [final])
        }
        // The background loop delivers it later.
        for _ in 0..<5 where !delivered { delivered = await outbox.deliver("run-wait") }
        XCTAssertTrue(delivered)
        XCTAssertEqual(answers.value, 26, "delivered only once the server accepted it (after 25 WAITs)")
        let pending = await outbox.pendingRuns()
        XCTAssertEqual(pending, [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: outboxFile("run-wait")))
    }

    func testAReportKeptInTheOutboxIsAWarningOnlyOnceTheAPIHasFailedForAWhile() async throws {
        Log.configure(level: .info, format: .text)
        // 503s with Retry-After 0: each delivery gives up at once. The client calls the failure long after
        // 0.3 s here (10 s in the worker).
        fake.outage = .unavailable(retryAfter: "0")
        let client = PrefectClient(baseURL: fake.apiURL, apiKey: nil, authString: nil, settings: ClientSettings(),
                                   warnAfterFailingSeconds: 0.3)
        let outbox = Outbox(stateDirectory: stateDirectory, client: client, log: .console)
        try await outbox.prepare()
        let kept = "flow run run-q: cannot report to the server now"
        let early = await capturingStderr {
            let delivered = await outbox.send("run-q", .infrastructurePID(pid: 5))
            XCTAssertFalse(delivered)
        }
        let earlyLine = try XCTUnwrap(early.split(separator: "\n").first { $0.contains(kept) }, early)
        XCTAssertTrue(earlyLine.contains(" INFO "), "a young failure is not a WARNING: \(earlyLine)")
        XCTAssertFalse(early.contains("WARNING"), early)

        try await Task.sleep(nanoseconds: 400_000_000)
        let late = await capturingStderr {
            let delivered = await outbox.deliver("run-q")
            XCTAssertFalse(delivered)
        }
        let lateLine = try XCTUnwrap(late.split(separator: "\n").first { $0.contains(kept) }, late)
        XCTAssertTrue(lateLine.contains(" WARNING "), "the API has failed for more than 0.3 s: \(lateLine)")
        XCTAssertTrue(lateLine.contains("kept in the outbox, will retry"), "a WARNING must say what happens next: \(lateLine)")
        XCTAssertEqual(try storedItems("run-q"), [.infrastructurePID(pid: 5)])
    }
}

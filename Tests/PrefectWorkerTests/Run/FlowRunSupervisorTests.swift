import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker

/// `FlowRunSupervisor` against `FakePrefectAPI`: claiming, and what the registry remembers of a claim.
final class FlowRunSupervisorTests: XCTestCase {
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!
    /// The run as the fake server holds it: state type, state id and the transition id of its state.
    private let server = FakeAPIBox((type: "SCHEDULED", stateID: "s-1", transitionID: "t-0"))

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("supervisor-tests-\(UUID().uuidString)").path
        let server = server
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            let run = server.value
            let id = String(path.split(separator: "/").last!)
            return .json(200, """
                {"id": "\(id)", "name": "fake-run", "flow_id": "f-1", "deployment_id": null, "parameters": {}, "job_variables": {},
                 "state_type": "\(run.type)", "state_name": "x", "infrastructure_pid": null, "tags": [], "run_count": 0,
                 "state": {"id": "\(run.stateID)", "type": "\(run.type)", "name": "x", "timestamp": "2026-11-23T08:53:40.364141Z",
                           "message": null, "state_details": {"flow_run_id": "\(id)", "transition_id": "\(run.transitionID)"}}}
                """)
        }
        // Accepts every proposal and makes it the run's state.
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let state = (try? JSON.decode(body))?["state"] ?? .null
            server.update { run in
                run.type = state["type"]?.stringValue ?? run.type
                run.stateID = UUID().uuidString
                run.transitionID = state["state_details"]?["transition_id"]?.stringValue ?? ""
            }
            return .json(201, JSON.object(["status": .string("ACCEPT"), "details": .object(["type": .string("accept_details")]),
                                           "state": state]))
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    private func makeContext() -> WorkerContext {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        return WorkerContext(settings: settings, client: fake.client())
    }

    /// The run as a poll returns it: SCHEDULED, in scheduled state `stateID`.
    private func polledRun(_ id: String, stateID: String = "s-1") throws -> FlowRun {
        let json = JSON.object(["id": .string(id), "state_id": .string(stateID), "run_count": .int(0),
                                "state": .object(["id": .string(stateID), "type": .string("SCHEDULED"), "name": .string("Scheduled")])])
        return try JSONDecoder().decode(FlowRun.self, from: Data(json.encoded().utf8))
    }

    /// Regression: a claim that met a few failed reads left the run for "the next poll", but the registry kept
    /// its run id and state id as submitted, so this worker never took it again (until the server re-marked
    /// it Late, with a new state id; a run already Late stayed stranded until a restart).
    func testARunWhoseClaimMetFailedReadsIsTakenAgainOnTheNextPoll() async throws {
        let context = makeContext()
        let supervisor = FlowRunSupervisor(context: context, runID: "run-stranded")
        let registry = context.registry
        let run = try polledRun("run-stranded")
        // Every attempt of the read before the claim fails (the quick policy makes 4).
        fake.inject(Array(repeating: .unavailable(retryAfter: "0"), count: 4), method: "GET", path: "/api/flow_runs/*")

        let reserved = await registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        let first = await supervisor.claim(run)
        XCTAssertFalse(first, "no read succeeded: the run cannot be claimed now")
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/*/set_state").count, 0, "nothing was proposed")
        XCTAssertEqual(fake.unusedFaults, 0, "the claim should have used up the failed reads")
        await registry.release(run.id)

        // The next poll returns the same run in the same scheduled state: it must be taken again.
        let again = await registry.reserve(run, for: supervisor)
        XCTAssertTrue(again, "a run left for the next poll must be taken on the next poll")
        let second = await supervisor.claim(run)
        XCTAssertTrue(second, "the server is back: the claim succeeds")
        XCTAssertEqual(server.value.type, "PENDING")
        await registry.release(run.id)

        // Claimed once: a stale poll that still shows it SCHEDULED in that state never starts it a second time.
        let stale = await registry.reserve(run, for: supervisor)
        XCTAssertFalse(stale, "a run this worker claimed is never taken again in the same scheduled state")
        // A re-run (a new SCHEDULED state) may be taken again.
        let rerun = await registry.reserve(try polledRun("run-stranded", stateID: "s-2"), for: supervisor)
        XCTAssertTrue(rerun)
    }

    /// A PENDING whose answer was lost may have landed: the run may be ours. Left "for the next poll" then, it
    /// would stay PENDING with nobody to start it (a poll returns only SCHEDULED runs). So after an unanswered
    /// proposal the claim keeps reading the run until it knows.
    func testAClaimWhoseAnswerWasLostKeepsReadingUntilItKnows() async throws {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        let context = WorkerContext(settings: settings, client: fake.client(requestTimeout: 1))
        let supervisor = FlowRunSupervisor(context: context, runID: "run-lost-answer")
        let run = try polledRun("run-lost-answer")
        // The proposal is applied after 2 s, when the client has given up on its answer (1 s timeout)...
        fake.inject([.delay(2)], method: "POST", path: "/api/flow_runs/*/set_state")
        // ... and the reads after it fail for a while (the first read, before the proposal, passes).
        fake.inject([.delay(0)] + Array(repeating: .unavailable(retryAfter: "0"), count: 4), method: "GET", path: "/api/flow_runs/*")
        let reserved = await context.registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        let claimed = await supervisor.claim(run)
        XCTAssertEqual(server.value.type, "PENDING", "the lost proposal did land")
        XCTAssertTrue(claimed, "the run is ours (PENDING with our transition id): it must not be left PENDING with nobody to run it")
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/*/set_state").count, 1, "one proposal; the rest were reads")
    }

    /// The claim gives up after 20 WAIT answers, and only right after a read that shows the run still SCHEDULED,
    /// saying so; the run is then left for the next poll (and is taken there, as it was not claimed).
    func testAClaimThatIsToldToWaitAgainAndAgainGivesUpAfterAReadAndSaysSo() async throws {
        let context = makeContext()
        let supervisor = FlowRunSupervisor(context: context, runID: "run-waits")
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, _ in
            .json(200, #"{"status":"WAIT","details":{"type":"wait_details","delay_seconds":0}}"#)
        }
        let run = try polledRun("run-waits")
        _ = await context.registry.reserve(run, for: supervisor)
        let claimed = await supervisor.claim(run)
        XCTAssertFalse(claimed)
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/*/set_state").count, 20)
        XCTAssertEqual(fake.requests("GET", "/api/flow_runs/*").count, 21, "a read before each proposal, and one before giving up")
        await context.registry.release(run.id)
        let again = await context.registry.reserve(run, for: supervisor)
        XCTAssertTrue(again, "not claimed: taken again on the next poll")
    }

    /// The same when the claim was never tried because the deployment could not be read.
    func testARunLeftBecauseItsDeploymentCouldNotBeReadIsTakenAgain() async throws {
        let context = makeContext()
        let supervisor = FlowRunSupervisor(context: context, runID: "run-d")
        let registry = context.registry
        let fields = JSON.object(["id": "run-d", "state_id": "s-1", "deployment_id": "d-1"])
        let run = try JSONDecoder().decode(FlowRun.self, from: Data(fields.encoded().utf8))
        fake.outage = .unavailable(retryAfter: "0")
        let reserved = await registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        await supervisor.run(run)
        await registry.release(run.id)
        XCTAssertFalse(fake.requests("GET", "/api/deployments/d-1").isEmpty, "the deployment read was tried")
        let again = await registry.reserve(run, for: supervisor)
        XCTAssertTrue(again, "a run left for the next poll must be taken on the next poll")
    }

    /// Per-run order: the job's pid is queued before its final state, so it reaches the server first even
    /// for a job that ends at once. (It was handed to the outbox from an unstructured Task, which could run
    /// after the final state had been queued.)
    func testAFastJobsPidReachesTheServerBeforeItsFinalState() async throws {
        let context = try await makeLaunchingContext(spawner: FakeSpawner())  // each job exits as it starts
        // Before the fix about one run in fifteen came out in the wrong order here; twenty make a failure likely.
        for i in 0..<20 {
            let id = "run-fast-\(i)"
            let supervisor = FlowRunSupervisor(context: context, runID: id)
            server.value = (type: "SCHEDULED", stateID: "s-\(i)", transitionID: "t-0")
            let json = JSON.object(["id": .string(id), "state_id": .string("s-\(i)"), "run_count": .int(0),
                                    "job_variables": .object(["command": "true", "stream_output": .bool(false)]),
                                    "state": .object(["id": .string("s-\(i)"), "type": "SCHEDULED", "name": "Scheduled"])])
            let run = try JSONDecoder().decode(FlowRun.self, from: Data(json.encoded().utf8))
            let reserved = await context.registry.reserve(run, for: supervisor)
            XCTAssertTrue(reserved)
            let finished = await finishes(within: 30) { await supervisor.run(run) }
            XCTAssertTrue(finished, "the run should be supervised to its end")
            await context.registry.release(id)
            XCTAssertEqual(reports(id), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"], "run \(i)")
            XCTAssertEqual(server.value.type, "COMPLETED")
        }
    }

    // MARK: - A run from claim to final state (a real job, the fake API)

    /// A context ready to launch jobs: state directories prepared, a process pool with the default template.
    /// A context whose runs can launch jobs: real ones, or `spawner`'s.
    private func makeLaunchingContext(spawner: (any ProcessSpawner)? = nil, configure: (inout Settings) -> Void = { _ in }) async throws -> WorkerContext {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        settings.environment = ["PATH": "/usr/bin:/bin"]
        configure(&settings)
        let context = spawner.map { WorkerContext(settings: settings, client: fake.client(), spawner: $0) }
            ?? WorkerContext(settings: settings, client: fake.client())
        try context.journal.prepare()
        try await context.outbox.prepare()
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        fake.route("PATCH", "/api/flow_runs/*") { _, _, _ in .noContent }
        fake.route("PATCH", "/api/flow_runs/*/labels") { _, _, _ in .noContent }
        return context
    }

    private func commandRun(_ id: String, _ command: String, startingAt start: Date? = nil, timeout: Double? = nil) throws -> FlowRun {
        var variables: [String: JSON] = ["command": .string(command), "stream_output": .bool(false)]
        if let timeout { variables["timeout_seconds"] = .double(timeout) }
        var fields: [String: JSON] = [
            "id": .string(id), "state_id": "s-1", "run_count": .int(0),
            "job_variables": .object(variables),
            "state": .object(["id": "s-1", "type": "SCHEDULED", "name": "Scheduled"]),
        ]
        if let start { fields["next_scheduled_start_time"] = .string(Timestamp.format(start)) }
        return try JSONDecoder().decode(FlowRun.self, from: Data(JSON.object(fields).encoded().utf8))
    }

    /// What reached the server about the run, in order: proposed state types ("Submitting" for PENDING/Submitting),
    /// and "pid" for the pid.
    private func reports(_ id: String) -> [String] {
        fake.requests.filter { $0.path == "/api/flow_runs/\(id)" && $0.method == "PATCH" || $0.path == "/api/flow_runs/\(id)/set_state" }
            .map { request in
                guard request.method != "PATCH" else { return "pid" }
                let state = request.json?["state"]
                return state?["name"]?.stringValue == "Submitting" ? "Submitting" : (state?["type"]?.stringValue ?? "?")
            }
    }

    private func lastProposal(_ id: String) -> JSON? { fake.requests("POST", "/api/flow_runs/\(id)/set_state").last?.json }

    /// Requests per run: a run the poll returned a moment ago is proposed PENDING without a read before it;
    /// the read after the claim remains (it catches a run finished in between).
    func testAFreshlyPolledRunIsClaimedWithoutAReadBeforeItsFirstProposal() async throws {
        let context = makeContext()
        let supervisor = FlowRunSupervisor(context: context, runID: "run-fresh")
        var fresh = try polledRun("run-fresh")
        fresh.polledAt = Date()
        let claimed = await supervisor.claim(fresh)
        XCTAssertTrue(claimed)
        XCTAssertEqual(fake.requests.map { "\($0.method) \($0.path)" },
                       ["POST /api/flow_runs/run-fresh/set_state", "GET /api/flow_runs/run-fresh"])

        server.value = (type: "SCHEDULED", stateID: "s-2", transitionID: "t-0")
        var stale = try polledRun("run-stale", stateID: "s-2")
        stale.polledAt = Date().addingTimeInterval(-60)
        let claimedStale = await supervisor.claim(stale)
        XCTAssertTrue(claimedStale)
        XCTAssertEqual(fake.requests.suffix(3).map { "\($0.method) \($0.path)" },
                       ["GET /api/flow_runs/run-stale", "POST /api/flow_runs/run-stale/set_state", "GET /api/flow_runs/run-stale"],
                       "a poll answer a minute old is read again first")
    }

    /// Regression: labels were tried 4 times quickly; in a burst a SQLite server answered them 503 each time
    /// and most runs went unlabelled (with a WARNING each). They now get the ordinary retries.
    func testLabelsOutlastAFewBusyAnswers() async throws {
        let context = try await makeLaunchingContext()
        fake.inject(Array(repeating: .unavailable(retryAfter: "0"), count: 4), method: "PATCH", path: "/api/flow_runs/*/labels")
        let run = try commandRun("run-labels", "true")
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        let reserved = await context.registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        let finished = await finishes(within: 30) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        let fake = self.fake!
        let labelled = await finishes(within: 10) {
            while fake.requests("PATCH", "/api/flow_runs/run-labels/labels").count < 5 { try? await Task.sleep(nanoseconds: 50_000_000) }
        }
        XCTAssertTrue(labelled, "labels were given up after \(fake.requests("PATCH", "/api/flow_runs/run-labels/labels").count) attempts")
        XCTAssertEqual(fake.requests("PATCH", "/api/flow_runs/run-labels/labels").last?.json?["prefect.worker.name"], "worker")
    }

    func testLabelsAreAnsweredBeforeRUNNINGIsProposed() async throws {
        // Sent beside the RUNNING write, the labels write met a locked SQLite (503) nearly every time.
        let context = try await makeLaunchingContext(spawner: FakeSpawner())
        let fake = self.fake!
        let runningBeforeLabelsAnswered = Mutex<Bool?>(nil)
        fake.inject([.delay(0.4)], method: "PATCH", path: "/api/flow_runs/*/labels")
        fake.route("PATCH", "/api/flow_runs/*/labels") { _, _, _ in
            let running = fake.requests("POST", "/api/flow_runs/*/set_state").contains { $0.json?["state"]?["type"] == "RUNNING" }
            runningBeforeLabelsAnswered.withLock { $0 = running }
            return .noContent
        }
        let run = try commandRun("run-labels-first", "true")
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        _ = await context.registry.reserve(run, for: supervisor)
        let finished = await finishes(within: 10) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        XCTAssertEqual(runningBeforeLabelsAnswered.withLock { $0 }, false, "RUNNING was proposed while the labels write was in flight")
        XCTAssertEqual(fake.requests("PATCH", "/api/flow_runs/run-labels-first/labels").count, 1)
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"])
    }

    func testLabelsThatFailOnceAreWrittenBeforeTheJobStarts() async throws {
        // Under load the first labels write met a 503 and its retry ran beside the job, where the engine's own
        // labels write (its trace context) raced it and the server's read-merge-write lost ours.
        let context = try await makeLaunchingContext(spawner: FakeSpawner())
        // The retried write is answered only after 0.5 s: the job must not start before that answer.
        fake.inject([.status(503), .delay(0.5)], method: "PATCH", path: "/api/flow_runs/*/labels")
        let run = try commandRun("run-labels-retried", "true")
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        _ = await context.registry.reserve(run, for: supervisor)
        let finished = await finishes(within: 20) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"])
        let order = fake.requests.map { $0.path.hasSuffix("/labels") ? "labels" : $0.json?["state"]?["name"]?.stringValue ?? $0.method }
        let labelsWrites = order.indices.filter { order[$0] == "labels" }
        let submitting = try XCTUnwrap(order.firstIndex(of: "Submitting"), "\(order)")
        XCTAssertEqual(labelsWrites.count, 2, "\(order)")
        XCTAssertTrue(labelsWrites.allSatisfy { $0 < submitting }, "the labels retry is sent before the job starts: \(order)")
        let answeredFirst = fake.requests[submitting].time.timeIntervalSince(fake.requests[labelsWrites[1]].time)
        XCTAssertGreaterThanOrEqual(answeredFirst, 0.45, "Submitting waits for the labels retry's answer (0.5 s): \(order)")
    }

    func testLabelsStillFailingBeforeTheJobAreRetriedBesideTheRunAndGivenAGraceAfterIt() async throws {
        // The quick retries before the job spent (4 attempts), the ordinary retries go on beside the run; the
        // job exits at once, and the retry that lands after a 2 s backoff is waited for.
        let context = try await makeLaunchingContext(spawner: FakeSpawner())
        fake.inject(Array(repeating: .status(503), count: 5), method: "PATCH", path: "/api/flow_runs/*/labels")
        let run = try commandRun("run-labels-late", "true")
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        _ = await context.registry.reserve(run, for: supervisor)
        let finished = await finishes(within: 40) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"])
        XCTAssertEqual(fake.requests("PATCH", "/api/flow_runs/run-labels-late/labels").count, 6,
                       "4 quick attempts, the retry's failed first write, and its second, after the job ended")
    }

    func testClaimRaceAnotherWorkersPendingIsNotOurs() async throws {
        let context = makeContext()
        let supervisor = FlowRunSupervisor(context: context, runID: "run-race")
        // Another worker's PENDING landed first: the server rejects ours and returns theirs.
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, _ in
            .json(200, #"{"status":"REJECT","details":{"type":"reject_details","reason":"This run is already PENDING."},"state":{"type":"PENDING","name":"Pending","state_details":{"transition_id":"t-someone-else"}}}"#)
        }
        let run = try polledRun("run-race")
        let reserved = await context.registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        let claimed = await supervisor.claim(run)
        XCTAssertFalse(claimed, "another worker's PENDING is not ours")
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/*/set_state").count, 1, "not proposed again")
    }

    func testCancelledBeforeItStartsIsReportedCancelledAndNeverStarted() async throws {
        let spawner = FakeSpawner()
        let context = try await makeLaunchingContext(spawner: spawner)
        let supervisor = FlowRunSupervisor(context: context, runID: "run-cancel-early")
        let marker = stateDirectory + "/started"
        let run = try commandRun("run-cancel-early", "touch \(marker)")
        let reserved = await context.registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        await supervisor.requestCancel()
        let finished = await finishes(within: 30) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        XCTAssertEqual(reports(run.id), ["PENDING", "CANCELLED"])
        XCTAssertEqual(server.value.type, "CANCELLED")
        XCTAssertEqual(spawner.spawned.count, 0, "the job must not have started")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker))
    }

    func testWaitBeforeRunningIsWaitedOutThenTheJobRuns() async throws {
        let context = try await makeLaunchingContext(spawner: FakeSpawner())
        let supervisor = FlowRunSupervisor(context: context, runID: "run-wait-running")
        let server = server
        let waits = FakeAPIBox(0)
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let state = (try? JSON.decode(body))?["state"] ?? .null
            if state["type"]?.stringValue == "RUNNING", waits.update({ count -> Bool in count += 1; return count <= 2 }) {
                return .json(200, #"{"status":"WAIT","details":{"type":"wait_details","delay_seconds":0.2}}"#)
            }
            server.update { run in
                run.type = state["type"]?.stringValue ?? run.type
                run.transitionID = state["state_details"]?["transition_id"]?.stringValue ?? ""
            }
            return .json(201, JSON.object(["status": "ACCEPT", "details": .object(["type": "accept_details"]), "state": state]))
        }
        let run = try commandRun("run-wait-running", "true")
        _ = await context.registry.reserve(run, for: supervisor)
        let start = Date()
        let finished = await finishes(within: 30) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "RUNNING", "RUNNING", "pid", "COMPLETED"])
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.4, "both WAITs were waited out")
        XCTAssertEqual(server.value.type, "COMPLETED")
    }

    func testCancelWhileTheJobRunsStopsItAndReportsCancelled() async throws {
        let context = try await makeLaunchingContext()
        let supervisor = FlowRunSupervisor(context: context, runID: "run-cancel-running")
        let run = try commandRun("run-cancel-running", "sleep 30")
        _ = await context.registry.reserve(run, for: supervisor)
        let supervision = Task { await supervisor.run(run) }
        let deadline = Date().addingTimeInterval(20)
        while await supervisor.pid == nil, Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
        let pid = await supervisor.pid
        XCTAssertNotNil(pid, "the job should have started")
        let cancelledAt = Date()
        await supervisor.requestCancel()
        let finished = await finishes(within: 20) { await supervision.value }
        XCTAssertTrue(finished)
        XCTAssertLessThan(Date().timeIntervalSince(cancelledAt), 10, "SIGTERM ends sleep at once; no need for the grace period")
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "CANCELLED"])
        XCTAssertEqual(server.value.type, "CANCELLED")
        XCTAssertTrue(lastProposal(run.id)?["state"]?["message"]?.stringValue?.contains("SIGTERM") == true, "\(String(describing: lastProposal(run.id)))")
        if let pid { XCTAssertNotEqual(kill(pid, 0), 0, "the job is gone") }
    }

    func testADrainBeforeAScheduledStartHandsTheRunBack() async throws {
        let context = try await makeLaunchingContext()
        let supervisor = FlowRunSupervisor(context: context, runID: "run-drained")
        let marker = stateDirectory + "/started"
        let run = try commandRun("run-drained", "touch \(marker)", startingAt: Date().addingTimeInterval(60))
        _ = await context.registry.reserve(run, for: supervisor)
        let supervision = Task { await supervisor.run(run) }
        let deadline = Date().addingTimeInterval(10)
        while server.value.type != "PENDING", Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
        try await Task.sleep(nanoseconds: 100_000_000)
        context.shutdown.advance()  // draining: a run that has not started goes back to the pool
        let finished = await finishes(within: 20) { await supervision.value }
        XCTAssertTrue(finished, "a drain must not wait for a scheduled start a minute away")
        XCTAssertEqual(reports(run.id), ["PENDING", "SCHEDULED"])
        XCTAssertEqual(server.value.type, "SCHEDULED")
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the job must not have started")
    }

    // MARK: - With a fake spawner: stopping jobs

    /// Reserves and supervises a run of a `sleep 30` command, as the poll and the launcher do, until its job
    /// has started; the supervision ends with the slot's release.
    private func launch(_ id: String, in context: WorkerContext) async throws
        -> (FlowRun, FlowRunSupervisor, Task<Void, Never>, pid_t) {
        let run = try commandRun(id, "sleep 30")
        let supervisor = FlowRunSupervisor(context: context, runID: id)
        let reserved = await context.registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        let registry = context.registry
        let supervision = Task {
            await supervisor.run(run)
            await registry.release(id)
        }
        let deadline = Date().addingTimeInterval(20)
        while await supervisor.pid == nil, Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        let started = await supervisor.pid
        let pid = try XCTUnwrap(started, "the job should have started")
        return (run, supervisor, supervision, pid)
    }

    func testACancelDuringATeardownForShutdownMakesTheRunCancelled() async throws {
        let spawner = FakeSpawner { _ in .ignoresSIGTERM }
        let context = try await makeLaunchingContext(spawner: spawner) { $0.killGraceSeconds = 0.5 }
        let (run, supervisor, supervision, pid) = try await launch("run-cancel-in-teardown", in: context)
        await supervisor.requestStop(reason: "Worker 'worker' shut down")
        // The teardown has sent SIGTERM and waits out the grace; CANCELLING arrives meanwhile.
        let deadline = Date().addingTimeInterval(5)
        while spawner.signals(pid).isEmpty, Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        XCTAssertEqual(spawner.signals(pid), [SIGTERM])
        let taken = await supervisor.requestCancel()
        XCTAssertTrue(taken)
        let finished = await finishes(within: 10) { await supervision.value }
        XCTAssertTrue(finished)
        XCTAssertEqual(spawner.signals(pid), [SIGTERM, SIGKILL], "the teardown ran to its end: SIGKILL after the grace")
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "CANCELLED"], "cancelled, not crashed by the shutdown")
        let message = lastProposal(run.id)?["state"]?["message"]?.stringValue ?? ""
        XCTAssertTrue(message.contains("SIGKILL"), message)
    }

    func testACancelWhileTheJobRunsSendsSIGTERMToItsGroup() async throws {
        let spawner = FakeSpawner { _ in .runsUntilSignalled }
        let context = try await makeLaunchingContext(spawner: spawner)
        let (run, supervisor, supervision, pid) = try await launch("run-cancel-fake", in: context)
        await supervisor.requestCancel()
        let finished = await finishes(within: 10) { await supervision.value }
        XCTAssertTrue(finished)
        XCTAssertEqual(spawner.signals(pid), [SIGTERM])
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "CANCELLED"])
        let pidAfter = await supervisor.pid
        XCTAssertNil(pidAfter, "the supervisor knows its job is gone")
    }

    func testADrainWaitsForARunInFlightThenStopsItWhenTheDrainTimeoutPasses() async throws {
        let spawner = FakeSpawner { _ in .runsUntilSignalled }
        let context = try await makeLaunchingContext(spawner: spawner) { $0.drainTimeout = 0.5 }
        let (run, _, supervision, pid) = try await launch("run-in-flight", in: context)
        let registry = context.registry
        context.shutdown.advance()  // draining
        let start = Date()
        let drained = await finishes(within: 10) { await Worker(context: context).drain() }
        XCTAssertTrue(drained)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.5, "the run had its drain timeout to finish")
        XCTAssertEqual(spawner.signals(pid), [SIGTERM])
        _ = await supervision.value
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "CRASHED"])
        let message = lastProposal(run.id)?["state"]?["message"]?.stringValue ?? ""
        XCTAssertTrue(message.contains("drain timeout passed"), message)
        let left = await registry.count
        XCTAssertEqual(left, 0)
    }

    func testADrainLetsARunThatFinishesCompleteUntouched() async throws {
        let spawner = FakeSpawner { _ in .runsUntilSignalled }
        let context = try await makeLaunchingContext(spawner: spawner) { $0.drainTimeout = 30 }
        let (run, _, supervision, pid) = try await launch("run-finishes", in: context)
        let registry = context.registry
        context.shutdown.advance()  // draining
        let drain = Task { await Worker(context: context).drain() }
        try await Task.sleep(nanoseconds: 200_000_000)
        spawner.end(pid, .exited(0))
        let drained = await finishes(within: 10) { await drain.value }
        XCTAssertTrue(drained, "the drain ends when the last run does")
        _ = await supervision.value
        XCTAssertEqual(spawner.signals(pid), [], "never signalled")
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"])
    }

    // MARK: - The whole worker: its stop order

    /// The declared stop order, on the fake API and the fake spawner: after SIGTERM the worker stops polling
    /// at once but keeps its loops (heartbeats) going while it drains the run in flight; it exits 0 once the
    /// run's final state is delivered.
    func testOnSIGTERMPollingStopsWhileHeartbeatsGoOnUntilTheRunInFlightIsReported() async throws {
        let spawner = FakeSpawner { _ in .runsUntilSignalled }
        let context = try await makeLaunchingContext(spawner: spawner) {
            $0.heartbeatSeconds = 0.2
            $0.querySeconds = 0.1
        }
        let pool = JSON.object(["id": "p-1", "name": "pool", "type": "process", "base_job_template": JobTemplate.defaultProcessTemplate])
        fake.route("GET", "/api/work_pools/pool") { _, _, _ in .json(200, pool.encoded()) }
        fake.route("POST", "/api/work_pools/pool/workers/heartbeat") { _, _, _ in .noContent }
        fake.route("POST", "/api/flow_runs/filter") { _, _, _ in .json(200, "[]") }
        let run = JSON.object(["id": "run-whole", "state_id": "s-1", "run_count": .int(0),
                               "job_variables": .object(["command": "sleep 30", "stream_output": .bool(false)]),
                               "state": .object(["id": "s-1", "type": "SCHEDULED", "name": "Scheduled"])])
        let polled = FakeAPIBox(false)
        fake.route("POST", "/api/work_pools/pool/get_scheduled_flow_runs") { _, _, _ in
            let first = polled.update { (done: inout Bool) -> Bool in defer { done = true }; return !done }
            return .json(200, first ? JSON.array([.object(["flow_run": run])]).encoded() : "[]")
        }
        let worker = Worker(context: context)
        let running = Task { await worker.run() }
        let deadline = Date().addingTimeInterval(20)
        while spawner.spawned.isEmpty, Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        XCTAssertEqual(spawner.spawned.count, 1, "the worker should have started the run's job")

        let fake = self.fake!
        func count(_ path: String) -> Int { fake.requests("POST", path).count }
        context.shutdown.advance()  // SIGTERM: draining
        try await Task.sleep(nanoseconds: 200_000_000)  // a poll already under way may finish
        let polls = count("/api/work_pools/pool/get_scheduled_flow_runs")
        let beats = count("/api/work_pools/pool/workers/heartbeat")
        try await Task.sleep(nanoseconds: 700_000_000)
        XCTAssertEqual(count("/api/work_pools/pool/get_scheduled_flow_runs"), polls, "claiming stopped first: no poll while draining")
        XCTAssertGreaterThan(count("/api/work_pools/pool/workers/heartbeat"), beats, "the loops run through the drain: the worker stays ONLINE")
        XCTAssertNotNil(context.pool)

        let supervisor = await context.registry.supervisor("run-whole")
        let jobPID = await supervisor?.pid
        let pid = try XCTUnwrap(jobPID)
        spawner.end(pid, .exited(0))
        let stopped = await finishes(within: 15) { _ = await running.value }
        XCTAssertTrue(stopped, "the worker exits once its last run is reported")
        let code = await running.value
        XCTAssertEqual(code, 0)
        XCTAssertEqual(reports("run-whole"), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"], "the final state was flushed before the exit")
        XCTAssertEqual(server.value.type, "COMPLETED")
    }

    /// Regression: a cancel that arrived while RUNNING was being proposed (the server asking to wait) was not
    /// looked at again, so the job was started and then killed.
    func testACancelWhileRUNNINGIsProposedStartsNoJob() async throws {
        let spawner = FakeSpawner()
        let context = try await makeLaunchingContext(spawner: spawner)
        let run = try commandRun("run-cancel-during-running", "true")
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        let server = server
        let waits = FakeAPIBox(0)
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let state = (try? JSON.decode(body))?["state"] ?? .null
            if state["type"]?.stringValue == "RUNNING", waits.update({ count -> Bool in count += 1; return count == 1 }) {
                Task { await supervisor.requestCancel() }  // CANCELLING is seen while the worker waits
                return .json(200, #"{"status":"WAIT","details":{"type":"wait_details","delay_seconds":0.3}}"#)
            }
            server.update { run in
                run.type = state["type"]?.stringValue ?? run.type
                run.transitionID = state["state_details"]?["transition_id"]?.stringValue ?? ""
            }
            return .json(201, JSON.object(["status": "ACCEPT", "details": .object(["type": "accept_details"]), "state": state]))
        }
        _ = await context.registry.reserve(run, for: supervisor)
        let finished = await finishes(within: 20) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        XCTAssertEqual(spawner.spawned.count, 0, "the job must not have started")
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "RUNNING", "CANCELLED"])
    }

    /// A run claimed (PENDING) whose supervisor waits for its scheduled start, a minute away.
    private func claimedForAStartAMinuteAway(_ id: String) async throws
        -> (FakeSpawner, FlowRun, FlowRunSupervisor, Task<Void, Never>) {
        let spawner = FakeSpawner()
        let context = try await makeLaunchingContext(spawner: spawner)
        let run = try commandRun(id, "true", startingAt: Date().addingTimeInterval(60))
        let supervisor = FlowRunSupervisor(context: context, runID: id)
        _ = await context.registry.reserve(run, for: supervisor)
        let supervision = Task { await supervisor.run(run) }
        let deadline = Date().addingTimeInterval(10)
        while server.value.type != "PENDING", Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        try await Task.sleep(nanoseconds: 100_000_000)
        return (spawner, run, supervisor, supervision)
    }

    func testACancelDuringTheWaitForAScheduledStartEndsItCancelledAtOnce() async throws {
        let (spawner, run, supervisor, supervision) = try await claimedForAStartAMinuteAway("run-cancel-scheduled")
        await supervisor.requestCancel()
        let finished = await finishes(within: 5) { await supervision.value }
        XCTAssertTrue(finished, "a cancel does not wait for a start a minute away")
        XCTAssertEqual(spawner.spawned.count, 0)
        XCTAssertEqual(reports(run.id), ["PENDING", "CANCELLED"])
    }

    func testAStopDuringTheWaitForAScheduledStartHandsTheRunBack() async throws {
        let (spawner, run, supervisor, supervision) = try await claimedForAStartAMinuteAway("run-stop-scheduled")
        await supervisor.requestStop(reason: "Worker 'worker' shut down")
        let finished = await finishes(within: 5) { await supervision.value }
        XCTAssertTrue(finished)
        XCTAssertEqual(spawner.spawned.count, 0)
        XCTAssertEqual(reports(run.id), ["PENDING", "SCHEDULED"], "not started: back to the pool for another worker")
    }

    func testAJobPastItsTimeoutIsStoppedAndReportedFailedTimedOut() async throws {
        let spawner = FakeSpawner { _ in .runsUntilSignalled }
        let context = try await makeLaunchingContext(spawner: spawner)
        let run = try commandRun("run-timeout", "sleep 30", timeout: 0.3)
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        _ = await context.registry.reserve(run, for: supervisor)
        let start = Date()
        let finished = await finishes(within: 10) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.3)
        let pid = try XCTUnwrap(spawner.pids.first)
        XCTAssertEqual(spawner.signals(pid), [SIGTERM])
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "FAILED"])
        let state = lastProposal(run.id)?["state"]
        XCTAssertEqual(state?["name"]?.stringValue, "TimedOut")
        let timedOut = await supervisor.timedOut
        XCTAssertTrue(timedOut)
    }

    func testAHugeTimeoutIsNoLimitInPracticeAndDoesNotTrap() async throws {
        // 1e11 s overflowed the nanoseconds of the timer's sleep, which trapped and took the worker down.
        let context = try await makeLaunchingContext(spawner: FakeSpawner())
        let run = try commandRun("run-huge-timeout", "true", timeout: 1e11)
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        _ = await context.registry.reserve(run, for: supervisor)
        let finished = await finishes(within: 10) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"])
    }

    func testACancelAfterTheRunEndedChangesNothing() async throws {
        let context = try await makeLaunchingContext(spawner: FakeSpawner())
        let run = try commandRun("run-cancel-late", "true")
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        _ = await context.registry.reserve(run, for: supervisor)
        let finished = await finishes(within: 10) { await supervisor.run(run) }
        XCTAssertTrue(finished)
        await supervisor.requestCancel()
        try await Task.sleep(nanoseconds: 100_000_000)
        XCTAssertEqual(reports(run.id), ["PENDING", "Submitting", "RUNNING", "pid", "COMPLETED"], "no report after the final one")
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Flows submitted with `flow.submit_to_work_pool()` (Tests/fixtures/submitted.py) to a pool whose bundle
/// storage is a local directory (Tests/fixtures/local_bundles, steps with a `launcher`). Such a run has no
/// deployment; its command, built by the submitting client, runs the pool's bundle execution step, whose
/// executor reports RUNNING and the final state. Bundles need `uv` in the virtualenv (`uv pip freeze` when the
/// bundle is made, `uv pip install` of that list when it runs).
final class SubmittedFlowTests: RunControlTestCase, @unchecked Sendable {
    /// Submitting takes ~10 s (it freezes the virtualenv), running the bundle a few more.
    let runTimeout = 120.0
    /// What Prefect's worker produced for such a run (measured with prefect 3.8.8): the client's PENDING and
    /// SCHEDULED, the worker's claim and Submitting, then the bundle's engine.
    static let prefectStates = ["Pending", "Scheduled", "Pending", "Submitting", "Running", "Completed"]

    func testASubmittedFlowRunsOnceWithTheStatesPrefectsWorkerGivesIt() async throws {
        let bundles = try temporaryDirectory("bundles")
        let output = try temporaryDirectory("output") + "/runs.txt"
        let ours = try await makeBundlePool("-ours", bundles: bundles)
        let reference = try await makeBundlePool("-prefect", bundles: bundles)
        let worker = try startRunControlWorker(pool: ours, stateDir: try stateDirectory())
        try startPrefectWorker(pool: reference)
        try await waitForAWorker(of: ours)
        try await waitForAWorker(of: reference)

        let id = try await submit(pool: ours, output: output, x: 21)
        let referenceID = try await submit(pool: reference, output: output, x: 22)
        track(id, referenceID)
        let runs = try await waitForFinalStates([id, referenceID], timeout: runTimeout)

        var names: [String: [String]] = [:]
        for (run, who) in [(id, "prefect-worker"), (referenceID, "Prefect's worker")] {
            let final = try XCTUnwrap(runs[run])
            names[run] = try await api.states(run).compactMap { $0["name"]?.asString }
            print("SUBMITTED-FLOW: \(who): \(final.stateType ?? "?"), run_count \(final["run_count"]?.asInt ?? -1), states \(names[run]!)")
            XCTAssertEqual(final.stateType, "COMPLETED", "\(who): \(final.stateSummary)")
            XCTAssertEqual(final["run_count"]?.asInt, 1, "\(who): the bundle's engine proposes RUNNING once")
            XCTAssertNil(final["deployment_id"]?.asString, "a submitted flow has no deployment")
        }
        XCTAssertEqual(names[referenceID], Self.prefectStates, "Prefect's worker changed: update the expectation")
        XCTAssertEqual(names[id], names[referenceID], "the same states as under Prefect's worker")
        let executions = (E2E.readText(output) ?? "").split(separator: "\n").map(String.init)
        XCTAssertEqual(executions.filter { $0.hasPrefix(id) }, ["\(id) 1 21"], "ran once, as its first run")
        XCTAssertEqual(executions.filter { $0.hasPrefix(referenceID) }, ["\(referenceID) 1 22"])
        let started = await waitForLogLine(worker, run: id, containing: "started engine", timeout: 10)
        XCTAssertTrue(started?.contains("local_bundles.execute") == true, "the pool's execution step, left to the engine: \(started ?? worker.log)")
        let left = await waitForLogLine(worker, run: id, containing: "the engine reported COMPLETED", timeout: 10)
        XCTAssertNotNil(left, "the worker should leave the final state to the engine: \(Self.lines(of: worker.log, mentioning: id))")
    }

    /// The pool's storage configuration is what names the execution step; if it changed after the flow was
    /// submitted, a run of Prefect's own executor (`prefect.bundles.execute`) is still recognised.
    func testARunOfPrefectsOwnBundleExecutorIsLeftToTheEngineWhenThePoolNoLongerNamesTheStep() async throws {
        let bundles = try temporaryDirectory("bundles")
        let output = try temporaryDirectory("output") + "/runs.txt"
        let pool = try await makeBundlePool("-fallback", bundles: bundles, executeModule: "prefect.bundles.execute")
        // Prefect's executor reads the bundle key as a path relative to the job's working directory.
        let id = try await submit(pool: pool, output: output, x: 5, workingDirectory: bundles)
        _ = try await api.send("PATCH", "/work_pools/\(TestAPI.path(pool))", .object(["storage_configuration": .object([:])]))
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        track(id)

        let run = try await waitForFinalState(id, timeout: runTimeout)
        let names = try await api.states(id).compactMap { $0["name"]?.asString }
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        XCTAssertEqual(run["run_count"]?.asInt, 1, "states: \(names)")
        XCTAssertEqual(names.filter { $0 != "Late" }, Self.prefectStates)
        XCTAssertEqual((E2E.readText(output) ?? "").split(separator: "\n").map(String.init), ["\(id) 1 5"])
        let started = await waitForLogLine(worker, run: id, containing: "started engine", timeout: 10)
        XCTAssertTrue(started?.contains("prefect.bundles.execute") == true, started ?? worker.log)
    }

    // MARK: - Support

    /// A process pool (each worker installs its own default template) whose storage configuration keeps
    /// bundles in `bundles`: uploaded by `local_bundles.upload`, run by `executeModule`, both with the
    /// virtualenv's python as their launcher.
    private func makeBundlePool(_ suffix: String, bundles: String, executeModule: String = "local_bundles.execute") async throws -> String {
        let pool = uniqueName(suffix)
        let launcher = JSON.array([.string(env.venv + "/bin/python")])
        var execute: [String: JSON] = ["launcher": launcher]
        if executeModule == "local_bundles.execute" { execute["dir"] = .string(bundles) }
        _ = try await api.send("POST", "/work_pools/", .object([
            "name": .string(pool), "type": "process",
            "storage_configuration": .object([
                "bundle_upload_step": .object(["local_bundles.upload": .object(["launcher": launcher, "dir": .string(bundles)])]),
                "bundle_execution_step": .object([executeModule: .object(execute)]),
            ]),
        ]))
        return pool
    }

    /// Starts `prefect worker start --type process` from the test virtualenv, with the environment
    /// `WorkerProcess` gives prefect-worker (private PREFECT_HOME, the virtualenv first on PATH and active);
    /// stopped in tearDown. (`sh -c 'exec …'` ignores the prefect-worker arguments `startWorker` appends.)
    @discardableResult
    private func startPrefectWorker(pool: String) throws -> WorkerProcess {
        let name = uniqueName("-prefect-worker")
        let command = "exec '\(env.venv)/bin/prefect' worker start --type process --pool '\(pool)' --name '\(name)'"
        return try startWorker(pool: pool, name: name, environment: ["PREFECT_WORKER_QUERY_SECONDS": "1"],
                               launcher: ["/bin/sh", "-c", command, "prefect-worker-reference"])
    }

    /// Until the pool has a worker: a run submitted earlier could be marked Late before anyone polls.
    private func waitForAWorker(of pool: String) async throws {
        _ = try await E2E.eventually(timeout: 60, interval: 0.5, "a worker of pool \(pool)") { () -> Bool? in
            try checkWorkersAlive()
            return try await api.workers(pool: pool).isEmpty ? nil : true
        }
    }

    /// Runs Tests/fixtures/submitted.py, as a user would submit the flow; returns the new run's id.
    private func submit(pool: String, output: String, x: Int, workingDirectory: String? = nil) async throws -> String {
        let home = try temporaryDirectory("submit-home")
        let log = home + "/submit.log"
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        defer { try? handle.close() }
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PREFECT_") }
        environment["PATH"] = env.venv + "/bin:" + (environment["PATH"] ?? "/usr/bin:/bin")
        environment["VIRTUAL_ENV"] = env.venv  // `uv pip freeze` reads the active environment
        environment["PYTHONPATH"] = env.fixtures  // the upload step's module
        environment["PREFECT_API_URL"] = env.apiURL.absoluteString
        environment["PREFECT_HOME"] = home
        let process = Process()
        process.executableURL = URL(fileURLWithPath: env.venv + "/bin/python")
        process.arguments = [env.fixtures + "/submitted.py", "--pool", pool, "--output", output, "--x", String(x)]
            + (workingDirectory.map { ["--working-dir", $0] } ?? [])
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date().addingTimeInterval(90)
        while process.isRunning, Date() < deadline { try await Task.sleep(nanoseconds: 100_000_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            XCTFail("submitted.py did not finish within 90 s: \(E2E.readText(log) ?? "")")
        }
        let text = E2E.readText(log) ?? ""
        let line = text.split(separator: "\n").first { $0.hasPrefix("FLOW_RUN_ID=") }
        return try XCTUnwrap(line.map { String($0.dropFirst("FLOW_RUN_ID=".count)) }, "submitted.py printed no run id: \(text)")
    }
}

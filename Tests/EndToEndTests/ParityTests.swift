import Foundation
@testable import PrefectWorker
import XCTest

/// Parity with Prefect's own `process` worker, the oracle: each scenario runs under prefect-worker and under
/// `prefect worker start --type process` at the same time, each on its own pool, and compares what a user sees:
/// final state type and name, run_count, the state names in order, the flow's and hooks' side effects (marker
/// files from Tests/fixtures/parity/parity_flows.py) and which PREFECT* variables the job had.
/// The class writes a markdown parity table at its end (PREFECT_E2E_PARITY_REPORT, or stderr).
final class ParityTests: ParityTestCase, @unchecked Sendable {
    // MARK: - Cancellation

    func testCancelInTheMiddleOfATask() async throws {
        let deployments = try await deployBoth("sleeps_in_task")
        let seen = try await runBoth("cancel-mid-task", deployments: deployments) { _, run in
            _ = try await self.waitForType(run.id, ["RUNNING"], timeout: 90)
            try await Task.sleep(nanoseconds: 8_000_000_000)
            try await self.cancelAsTheUIDoes(run.id)
        }
        record("cancel in the middle of a task (8 s after RUNNING)", seen,
               note: Self.engineCancellingNote, normalise: Self.collapsingRepeatedCancelling)
    }

    /// Prefect's worker runs `on_cancellation` hooks itself (its jobs get
    /// `PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS=false`); prefect-worker cannot run Python hooks, so the
    /// engine owns the cancellation and, in `handle_cancellation`, forces Cancelling again before Cancelled.
    static let engineCancellingNote = "normalised: the engine's own second Cancelling (it runs the hooks itself under prefect-worker) is collapsed"

    /// The state names with a Cancelling that directly follows another Cancelling removed.
    static func collapsingRepeatedCancelling(_ names: [String]) -> [String] {
        names.enumerated().filter { $0.offset == 0 || !($0.element == "Cancelling" && names[$0.offset - 1] == "Cancelling") }.map(\.element)
    }

    func testCancelRightAfterRunning() async throws {
        let deployments = try await deployBoth("sleeps_in_task")
        let seen = try await runBoth("cancel-at-running", deployments: deployments) { _, run in
            _ = try await self.waitForType(run.id, ["RUNNING"], timeout: 90)
            try await self.cancelAsTheUIDoes(run.id)
        }
        // The flow's body may or may not have started when the cancel lands: that is timing, not behaviour.
        record("cancel right after RUNNING", seen.mapValues { observation in
            var o = observation
            o.markers.removeValue(forKey: "body")
            return o
        }, note: "whether the body started (marker `body`) is timing and not compared; " + Self.engineCancellingNote,
           normalise: Self.collapsingRepeatedCancelling)
    }

    func testCancelAPlainCommand() async throws {
        var deployments: [ParitySide: String] = [:]
        for side in ParitySide.allCases {
            deployments[side] = try await api.createCommandDeployment(pool: fixture.pools[side]!, name: uniqueName("-\(side.slug)"))
        }
        let seen = try await runBoth("cancel-command", deployments: deployments, drive: { _, run in
            _ = try await E2E.eventually(timeout: 60, interval: 0.1, "the command of \(run.id) to start") { () -> Bool? in
                try self.fixture.checkAlive()
                return FileManager.default.fileExists(atPath: run.markers + "/started") ? true : nil
            }
            // prefect-worker stops the job within a tenth of a second of CANCELLING: let the environment sampler
            // (which scans /proc every 0.1 s, slowly on a loaded machine) see the job first.
            _ = await Self.jobEnvironment(ofRun: run.id)
            try await Task.sleep(seconds: 0.5)
            try await self.cancelAsTheUIDoes(run.id)
        }, jobVariables: { _, markers in
            .object(["command": .string("sh -c 'touch \(markers)/started; exec sleep 60'")])
        })
        // A plain command has no engine to report RUNNING. Prefect's worker leaves such a run PENDING
        // ("Submitting", run_count 0); prefect-worker reports RUNNING on the command's behalf (run_count 1), by
        // design (README: plain commands). That one state and the run_count are not compared here.
        record("cancel a plain command (`sleep 60`)", seen,
               note: "normalised: `Running` and run_count, which prefect-worker reports for plain commands by design",
               compareRunCount: false, normalise: { $0.filter { $0 != "Running" } })
    }

    // MARK: - Pause, suspend, retries, sub-deployments, timeouts, hooks

    func testSuspendAndResume() async throws {
        let deployments = try await deployBoth("suspends")
        let seen = try await runBoth("suspend", deployments: deployments, timeout: 120) { _, run in
            try await self.resumeWhenPaused(run.id)
        }
        record("`suspend_flow_run`, resumed through the API", seen)
    }

    func testPauseResumedInProcess() async throws {
        let deployments = try await deployBoth("pauses")
        let seen = try await runBoth("pause", deployments: deployments) { _, run in
            try await self.resumeWhenPaused(run.id)
        }
        record("`pause_flow_run`, resumed in process", seen)
    }

    func testFlowRetries() async throws {
        let deployments = try await deployBoth("retries")
        record("flow retries (2 in process)", try await runBoth("retries", deployments: deployments))
    }

    func testRunDeploymentFanOut() async throws {
        var parents: [ParitySide: String] = [:]
        var children: [ParitySide: (id: String, fullName: String)] = [:]
        for side in ParitySide.allCases {
            children[side] = try await deploy("child", pool: fixture.pools[side]!)
            parents[side] = try await deploy("fan_out", pool: fixture.pools[side]!).id
        }
        let childNames = children.mapValues(\.fullName)
        // The child deployment differs per side, so each side's parent gets its own name as a job-independent
        // parameter: runBoth's parameters are shared, hence one run per side here.
        var seen: [ParitySide: ParityObservation] = [:]
        var childRuns: [ParitySide: [ParityObservation]] = [:]
        try await withThrowingTaskGroup(of: (ParitySide, ParityObservation, [ParityObservation]).self) { group in
            for side in ParitySide.allCases {
                let markers = try markerDirectory("fan-out", side)
                let id = try await api.createFlowRun(deployment: parents[side]!, parameters: .object([
                    "markers": .string(markers), "child_deployment": .string(childNames[side]!),
                ]))
                fixture.track(id)
                let childDeployment = children[side]!.id
                group.addTask {
                    _ = try await self.waitForFinalOrGiveUp(id, timeout: 180)
                    let parent = try await ParityObservation.collect(api: self.api, run: id, markers: markers)
                    var kids: [ParityObservation] = []
                    let runs = try await self.api.send("POST", "/flow_runs/filter", .object([
                        "flow_runs": .object(["deployment_id": .object(["any_": .array([.string(childDeployment)])])]),
                    ])).asArray ?? []
                    for run in runs.sorted(by: { ($0["parameters"]?["index"]?.asInt ?? 0) < ($1["parameters"]?["index"]?.asInt ?? 0) }) {
                        kids.append(try await ParityObservation.collect(api: self.api, run: run["id"]!.asString!,
                                                                        markers: markers + "/none", settle: 0))
                    }
                    return (side, parent, kids)
                }
            }
            for try await (side, parent, kids) in group {
                seen[side] = parent
                childRuns[side] = kids
            }
        }
        var comparison = ParityComparison()
        comparison.compare("parent", reference: seen[.reference]!, ours: seen[.ours]!)
        let referenceKids = childRuns[.reference] ?? [], ourKids = childRuns[.ours] ?? []
        if referenceKids.count != ourKids.count {
            comparison.differences.append("\(ourKids.count) children, Prefect's worker \(referenceKids.count)")
        }
        for (i, (reference, ours)) in zip(referenceKids, ourKids).enumerated() {
            comparison.compare("child \(i)", reference: reference, ours: ours)
        }
        func cell(_ side: ParitySide) -> String {
            "parent \(seen[side]!.summary); children: " + (childRuns[side] ?? []).map(\.finalState).joined(separator: " ")
                + " (run_count \((childRuns[side] ?? []).map { String($0.runCount) }.joined(separator: ",")))"
        }
        record("`run_deployment` fan-out (3 children, same pool)", reference: cell(.reference), ours: cell(.ours),
               comparison: comparison)
    }

    func testFlowLevelTimeout() async throws {
        let deployments = try await deployBoth("times_out")
        record("flow-level timeout (`timeout_seconds=3`)", try await runBoth("timeout", deployments: deployments))
    }

    func testCompletionAndFailureHooks() async throws {
        let completes = try await deployBoth("completes")
        let fails = try await deployBoth("fails")
        async let completed = runBoth("hooks-completes", deployments: completes)
        async let failed = runBoth("hooks-fails", deployments: fails)
        let (ok, bad) = try await (completed, failed)
        var comparison = ParityComparison()
        comparison.compare("completes", reference: ok[.reference]!, ours: ok[.ours]!)
        comparison.compare("fails", reference: bad[.reference]!, ours: bad[.ours]!)
        record("`on_completion` and `on_failure` hooks (+ job environment)",
               reference: "\(ok[.reference]!.summary); \(bad[.reference]!.summary)",
               ours: "\(ok[.ours]!.summary); \(bad[.ours]!.summary)", comparison: comparison)
    }

    // MARK: - Blocks, an engine that exits 0

    func testSecretAndJSONBlocksInEnvAndCommand() async throws {
        // Prefect 3.8.8 has no `json` block type any more: JSON goes in a Secret (its value may be an object),
        // reached with a field path. A non-secret block with a plain field (local-file-system's basepath) too.
        let secretName = uniqueName("-secret"), jsonName = uniqueName("-json"), fsName = uniqueName("-fs")
        let secretValue = "s3cr3t" + UUID().uuidString.prefix(8).lowercased()
        let documents = [
            try await createBlock("secret", name: secretName, data: .object(["value": .string(secretValue)])),
            try await createBlock("secret", name: jsonName, data: try E2E.json(#"{"value": {"user": {"name": "alice"}}}"#)),
            try await createBlock("local-file-system", name: fsName, data: try E2E.json(#"{"basepath": "/srv/parity-data"}"#)),
        ]
        let deployments = try await deployBoth("shows_blocks")
        let seen = try await runBoth("blocks", deployments: deployments, jobVariables: { _, markers in
            .object([
                "env": .object([
                    "DB_PASSWORD": .string("{{ prefect.blocks.secret.\(secretName) }}"),
                    "DB_USER": .string("{{ prefect.blocks.secret.\(jsonName).value.user.name }}"),
                    "DATA_DIR": .string("{{ prefect.blocks.local-file-system.\(fsName).basepath }}"),
                ]),
                // A wrapper around the engine, as users write to prepare a job: the secret is in the command.
                "command": .string("sh -c 'printf %s {{ prefect.blocks.secret.\(secretName) }} > \(markers)/command_secret; exec python -m prefect.engine'"),
            ])
        })
        for id in documents { _ = try? await api.send("DELETE", "/block_documents/\(id)") }
        // The oracle itself: if Prefect's worker did not resolve them, the scenario proves nothing.
        XCTAssertEqual(seen[.reference]?.markers["command_secret"], secretValue, "Prefect's worker: the Secret in the command")
        XCTAssertEqual(seen[.reference]?.markers["env_DB_USER"], "alice\n", "Prefect's worker: the Secret's JSON field in env")
        XCTAssertEqual(seen[.reference]?.markers["env_DATA_DIR"], "/srv/parity-data\n", "Prefect's worker: the block field in env")
        record("Secret blocks (a string, a JSON field) and a block field in `env`; a Secret in `command`", seen)
    }

    /// `POST /block_documents/` of a core block type (`secret`, `json`), registered by the server at start-up.
    private func createBlock(_ slug: String, name: String, data: JSON) async throws -> String {
        let type = try await api.send("GET", "/block_types/slug/\(slug)")
        let typeID = try XCTUnwrap(type["id"]?.asString, "block type \(slug): \(type)")
        let schemas = try await api.send("POST", "/block_schemas/filter", .object([
            "block_schemas": .object(["block_type_id": .object(["any_": .array([.string(typeID)])])]),
        ])).asArray ?? []
        let schemaID = try XCTUnwrap(schemas.first?["id"]?.asString, "no block schema for \(slug)")
        return try await api.send("POST", "/block_documents/", .object([
            "name": .string(name), "block_type_id": .string(typeID), "block_schema_id": .string(schemaID), "data": data,
        ]))["id"]!.asString!
    }

    func testEngineExitsZeroWithoutConcluding() async throws {
        // The realistic case: code in the flow (a library, a misguided cleanup) ends the engine's process with
        // os._exit(0) while the run is RUNNING; the process exits 0 but nobody reported a final state.
        let deployments = try await deployBoth("exits_zero")
        // Prefect 3.8.8's runner proposes nothing for an exit 0 without a conclusion receipt
        // (runner/_flow_run_executor.py, "Step 7"): the run stays RUNNING for its zombie detection to find.
        // prefect-worker departs from that on purpose: the engine negotiated outcome receipts, so its silent exit
        // means the attempt was lost, and the run is CRASHED at once (README: the attempt control session).
        // The 30 s bound is ample: both workers act when the process exits, seconds after RUNNING.
        let seen = try await runBoth("exits-zero", deployments: deployments, timeout: 30)
        let reference = try XCTUnwrap(seen[.reference]), ours = try XCTUnwrap(seen[.ours])
        XCTAssertEqual(reference.stateType, "RUNNING", "Prefect's worker leaves the run as it is: \(reference.summary)")
        XCTAssertEqual(ours.stateType, "CRASHED", "prefect-worker crashes it: \(ours.summary)")
        XCTAssertTrue(ours.message.contains("without reporting the flow run's outcome"), ours.message)
        XCTAssertEqual(ours.runCount, reference.runCount)
        record("engine exits 0 without concluding (`os._exit(0)` in the flow)", reference: reference.summary,
               ours: ours.summary, comparison: ParityComparison(),
               note: "an intended difference: Prefect's runner leaves the run RUNNING; prefect-worker reports CRASHED, as the engine had promised an outcome receipt")
    }
}

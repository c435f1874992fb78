import Foundation
@testable import PrefectWorker
import XCTest

/// How deployment and flow-run job variables, rendered through the pool's template, shape the job.
final class JobConfigurationTests: E2ETestCase, @unchecked Sendable {
    let runTimeout = 20.0

    func testEnvIsMergedRunOverDeploymentAndValuesAreStringified() async throws {
        // A pool whose `env` variable has no type: the server then stores numbers and booleans as given.
        let pool = try await makeProcessPool(template: TestAPI.permissiveEnvTemplate)
        let workdir = try temporaryDirectory("env")
        let deploymentName = uniqueName()
        let deployment = try await api.createCommandDeployment(pool: pool, name: deploymentName, jobVariables: try E2E.json("""
            {"command": "sh -c 'printf %s \\"$E2E_A|$E2E_B|$E2E_C|$E2E_NUM|$E2E_BOOL|$E2E_FLOAT\\" > env.txt; printf %s \\"$PREFECT__FLOW_ID|$PREFECT__FLOW_NAME|$PREFECT__DEPLOYMENT_ID|$PREFECT__DEPLOYMENT_NAME\\" > ids.txt'",
             "working_dir": \(JSON.string(workdir).encoded()),
             "env": {"E2E_A": "dep", "E2E_B": "dep", "E2E_NUM": 1, "E2E_BOOL": true}}
            """))
        let worker = try startWorker(pool: pool)
        let id = try await api.createFlowRun(deployment: deployment, jobVariables: try E2E.json(#"""
            {"env": {"E2E_B": "run", "E2E_C": "run", "E2E_FLOAT": 2.5}}
            """#))
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        XCTAssertEqual(E2E.readText(workdir + "/env.txt"), "dep|run|run|1|True|2.5",
                       "E2E_A|B|C|NUM|BOOL|FLOAT as the job saw them")
        // What identifies the run's flow and deployment, ids and names, as Prefect's worker sets them.
        let flowID = try XCTUnwrap(run["flow_id"]?.asString)
        XCTAssertEqual(E2E.readText(workdir + "/ids.txt"), "\(flowID)|e2e-command-flow|\(deployment)|\(deploymentName)",
                       "PREFECT__FLOW_ID|FLOW_NAME|DEPLOYMENT_ID|DEPLOYMENT_NAME as the job saw them")
        XCTAssertTrue(worker.isRunning)
    }

    func testStreamOutputControlsWhetherJobOutputReachesTheWorkerOutput() async throws {
        let pool = try await makeProcessPool()
        // The markers are computed by the shell, so they never appear in the command the worker logs.
        let command = #"sh -c 'echo "out-$((6*7))-$PREFECT__FLOW_RUN_ID"; echo "err-$((6*7))-$PREFECT__FLOW_RUN_ID" >&2'"#
        let quiet = try await api.createCommandDeployment(pool: pool, name: uniqueName("-quiet"), jobVariables: .object([
            "command": .string(command), "stream_output": .bool(false),
        ]))
        let loud = try await api.createCommandDeployment(pool: pool, name: uniqueName("-loud"), jobVariables: .object([
            "command": .string(command), "stream_output": .bool(true),
        ]))
        let worker = try startWorker(pool: pool)
        let quietID = try await api.createFlowRun(deployment: quiet)
        let loudID = try await api.createFlowRun(deployment: loud)
        let runs = try await waitForFinalStates([quietID, loudID], timeout: runTimeout)
        XCTAssertEqual(runs[quietID]?.stateType, "COMPLETED", runs[quietID]?.stateSummary ?? "")
        XCTAssertEqual(runs[loudID]?.stateType, "COMPLETED", runs[loudID]?.stateSummary ?? "")

        let log = worker.log
        let lines = log.split(separator: "\n").map(String.init)
        for stream in ["out", "err"] {
            let marker = "\(stream)-42-\(loudID)"
            let line = lines.first { $0.contains(marker) }
            XCTAssertNotNil(line, "stream_output true: the job's std\(stream) line should be in the worker output: \(log)")
            if let line, let idRange = line.range(of: loudID), let markerRange = line.range(of: marker) {
                XCTAssertLessThan(idRange.lowerBound, markerRange.lowerBound, "the line should be prefixed with the run id: \(line)")
            }
            XCTAssertFalse(log.contains("\(stream)-42-\(quietID)"), "stream_output false: the job's std\(stream) leaked: \(log)")
        }
    }

    func testNullWorkingDirRunsInATemporaryDirectoryRemovedAfterwards() async throws {
        let pool = try await makeProcessPool()
        let outdir = try temporaryDirectory("out")
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'pwd > \(outdir)/pwd.txt && touch scratch-file'"), "working_dir": .null,
        ]))
        let worker = try startWorker(pool: pool)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")

        let cwd = try XCTUnwrap(E2E.readText(outdir + "/pwd.txt")?.trimmingCharacters(in: .whitespacesAndNewlines),
                                "the job did not run")
        XCTAssertFalse(cwd.isEmpty)
        XCTAssertNotEqual(cwd, FileManager.default.currentDirectoryPath)
        XCTAssertFalse(cwd.hasPrefix(outdir))
        let removed = try? await E2E.eventually(timeout: 5, "the temporary working directory \(cwd) to be removed") {
            FileManager.default.fileExists(atPath: cwd) ? nil : true
        }
        XCTAssertEqual(removed, true, "\(cwd) still exists after the run")
        XCTAssertTrue(worker.isRunning)
    }

    func testStateOwnerOverridesWhoReports() async throws {
        let pool = try await makeProcessPool()
        let workdir = try temporaryDirectory("owner")
        // `prefect.engine` as an argument would make this an engine command; state_owner=worker overrides it.
        let workerOwned = try await api.createCommandDeployment(pool: pool, name: uniqueName("-worker"), jobVariables: .object([
            "command": "sh -c 'exit 0' prefect.engine", "state_owner": "worker",
        ]))
        // A plain command that exits 0, but the job is declared to report for itself.
        let engineOwned = try await api.createCommandDeployment(pool: pool, name: uniqueName("-engine"), jobVariables: .object([
            "command": "sh -c 'touch ran.txt'", "state_owner": "engine", "working_dir": .string(workdir),
        ]))
        // Control: the same `prefect.engine` command without state_owner is left to the engine.
        let byDefault = try await api.createCommandDeployment(pool: pool, name: uniqueName("-default"), jobVariables: .object([
            "command": .string("sh -c 'touch default-ran.txt' prefect.engine"), "working_dir": .string(workdir),
        ]))
        let worker = try startWorker(pool: pool)

        let workerID = try await api.createFlowRun(deployment: workerOwned)
        let engineID = try await api.createFlowRun(deployment: engineOwned)
        let defaultID = try await api.createFlowRun(deployment: byDefault)
        let run = try await waitForFinalState(workerID, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "state_owner worker: \(run.stateSummary)")
        XCTAssertEqual(run["run_count"]?.asInt, 1)

        for (id, marker) in [(engineID, "ran.txt"), (defaultID, "default-ran.txt")] {
            let ran = try? await E2E.eventually(timeout: runTimeout, "the job to run") { () throws -> Bool? in
                try checkWorkersAlive()
                return FileManager.default.fileExists(atPath: workdir + "/" + marker) ? true : nil
            }
            if ran == nil {
                let state = try await api.readFlowRun(id).stateSummary
                XCTFail("the job of \(id) never ran (no \(marker)); run is \(state); worker \(worker.exitDescription)")
            }
        }
        // Give the worker time to (wrongly) report after the jobs' exit.
        try await Task.sleep(nanoseconds: 3_000_000_000)
        for (id, what) in [(engineID, "state_owner engine, plain command"), (defaultID, "prefect.engine command, no state_owner")] {
            let left = try await api.readFlowRun(id)
            XCTAssertEqual(left.stateType, "PENDING", "\(what): the worker must leave reporting to the job: \(left.stateSummary)")
            XCTAssertEqual(left["run_count"]?.asInt, 0, "\(what): the worker must not propose RUNNING")
        }
        XCTAssertTrue(worker.isRunning)
    }

    func testBadJobConfigurationCrashesTheRunAndTheWorkerKeepsServing() async throws {
        let pool = try await makeProcessPool(template: TestAPI.permissiveEnvTemplate)
        let missingDir = "/nonexistent/e2e-dir-" + UUID().uuidString.prefix(8).lowercased()
        let cases: [(variables: JSON, cause: [String])] = [
            (.object(["command": "true", "env": "notanobject"]), ["env"]),
            (.object(["command": "sh -c 'unbalanced"]), ["command", "quote"]),
            (.object(["command": "true", "working_dir": .string(missingDir)]), [missingDir]),
            (.object(["command": "true", "state_owner": "nobody"]), ["state_owner"]),
        ]
        var ids: [(String, JSON, [String])] = []
        for (index, item) in cases.enumerated() {
            let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName("-\(index)"), jobVariables: item.variables)
            ids.append((deployment, item.variables, item.cause))
        }
        let workdir = try temporaryDirectory("good")
        let good = try await api.createCommandDeployment(pool: pool, name: uniqueName("-good"), jobVariables: .object([
            "command": "sh -c 'echo ok > ok.txt'", "working_dir": .string(workdir),
        ]))
        let worker = try startWorker(pool: pool)

        var runIDs: [String] = []
        for (deployment, _, _) in ids { runIDs.append(try await api.createFlowRun(deployment: deployment)) }
        let runs = try await waitForFinalStates(runIDs, timeout: runTimeout)
        for (runID, (_, variables, cause)) in zip(runIDs, ids) {
            let run = try XCTUnwrap(runs[runID])
            XCTAssertEqual(run.stateType, "CRASHED", "\(variables.encoded()): \(run.stateSummary)")
            for word in cause {
                XCTAssertTrue(run.stateMessage.contains(word), "\(variables.encoded()): the message should name '\(word)': \(run.stateMessage)")
            }
        }

        let goodID = try await api.createFlowRun(deployment: good)
        let after = try await waitForFinalState(goodID, timeout: runTimeout)
        XCTAssertEqual(after.stateType, "COMPLETED", "a good run after the bad ones: \(after.stateSummary)")
        XCTAssertEqual(E2E.readText(workdir + "/ok.txt"), "ok\n")
        XCTAssertTrue(worker.isRunning)
    }
}

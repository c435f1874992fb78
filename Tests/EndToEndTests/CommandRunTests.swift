import Foundation
@testable import PrefectWorker
import XCTest

/// Plain programs given as the `command` job variable: the worker reports RUNNING and the final state.
final class CommandRunTests: E2ETestCase, @unchecked Sendable {
    let runTimeout = 20.0

    func testCommandReceivesNestedUnicodeParametersThroughEnvAndFile() async throws {
        let pool = try await makeProcessPool()
        let workdir = try temporaryDirectory("params")
        let command = #"sh -c 'printf %s "$PREFECT_FLOW_RUN_PARAMETERS" > env.json; cat "$PREFECT_FLOW_RUN_PARAMETERS_FILE" > file.json; printf %s "$PREFECT_FLOW_RUN_PARAMETERS_FILE" > file-path.txt; echo $$ > pid.txt'"#
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(command), "working_dir": .string(workdir),
        ]))
        let worker = try startWorker(pool: pool)

        let parameters = try E2E.json(#"{"nested": {"list": [1, 2, {"deep": "ü✓"}]}, "emoji": "🚀", "text": "Zoë", "quote": "it's \"x\"\n"}"#)
        let id = try await api.createFlowRun(deployment: deployment, parameters: parameters)
        let run = try await waitForFinalState(id, timeout: runTimeout)

        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        XCTAssertEqual(run["run_count"]?.asInt, 1)
        let states = try await api.states(id).compactMap { $0["type"]?.asString }
        XCTAssertEqual(states.filter { $0 == "RUNNING" }.count, 1, "the worker proposes RUNNING once: \(states)")
        XCTAssertEqual(states.last, "COMPLETED", "state history: \(states)")

        let fromEnv = try XCTUnwrap(E2E.readText(workdir + "/env.json"), "the job did not write env.json")
        let fromFile = try XCTUnwrap(E2E.readText(workdir + "/file.json"), "the job did not write file.json")
        XCTAssertEqual(try? JSON.decode(fromEnv), parameters, "PREFECT_FLOW_RUN_PARAMETERS: \(fromEnv)")
        XCTAssertEqual(try? JSON.decode(fromFile), parameters, "PREFECT_FLOW_RUN_PARAMETERS_FILE: \(fromFile)")
        XCTAssertEqual(fromEnv, fromFile, "env var and file should carry the same JSON text")

        // infrastructure_pid is the pid of the spawned job (`sh -c` reports it as $$).
        let jobPID = E2E.readText(workdir + "/pid.txt")?.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertNotNil(jobPID)
        XCTAssertEqual(run["infrastructure_pid"]?.asString, jobPID)

        // The parameters file (and the worker's private directory around it) is removed after the run.
        let parametersFile = try XCTUnwrap(E2E.readText(workdir + "/file-path.txt"))
        XCTAssertTrue(parametersFile.hasPrefix("/"), "PREFECT_FLOW_RUN_PARAMETERS_FILE should be absolute: \(parametersFile)")
        let gone = try? await E2E.eventually(timeout: 5, "the parameters file to be removed") {
            FileManager.default.fileExists(atPath: parametersFile) ? nil : true
        }
        XCTAssertEqual(gone, true, "\(parametersFile) still exists after the run")
        let leftovers = try? await E2E.eventually(timeout: 5, "the worker's TMPDIR to be empty") {
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: worker.temporaryDirectory)) ?? []
            return entries.isEmpty ? entries : nil
        }
        XCTAssertNotNil(leftovers, "left behind in the worker's TMPDIR: \((try? FileManager.default.contentsOfDirectory(atPath: worker.temporaryDirectory)) ?? [])")
    }

    func testFailingCommandIsReportedFailedWithItsExitCode() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": "sh -c 'exit 7'",
        ]))
        let worker = try startWorker(pool: pool)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)

        XCTAssertEqual(run.stateType, "FAILED", "final state: \(run.stateSummary)")
        XCTAssertTrue(E2E.containsNumber(run.stateMessage, 7), "message should give exit code 7: \(run.stateMessage)")
        XCTAssertEqual(run["run_count"]?.asInt, 1)
        XCTAssertTrue(worker.isRunning)
    }

    func testMissingProgramCrashesTheRunAndTheWorkerKeepsServing() async throws {
        let pool = try await makeProcessPool()
        let absent = "/nonexistent/program"
        let unknown = "no-such-program-xyz"
        let absentDeployment = try await api.createCommandDeployment(pool: pool, name: uniqueName("-abs"), jobVariables: .object([
            "command": .string(absent + " --flag"),
        ]))
        let unknownDeployment = try await api.createCommandDeployment(pool: pool, name: uniqueName("-path"), jobVariables: .object([
            "command": .string(unknown),
        ]))
        let workdir = try temporaryDirectory("after")
        let goodDeployment = try await api.createCommandDeployment(pool: pool, name: uniqueName("-good"), jobVariables: .object([
            "command": "sh -c 'echo ok > ok.txt'", "working_dir": .string(workdir),
        ]))
        let worker = try startWorker(pool: pool)

        let absentID = try await api.createFlowRun(deployment: absentDeployment)
        let unknownID = try await api.createFlowRun(deployment: unknownDeployment)
        let runs = try await waitForFinalStates([absentID, unknownID], timeout: runTimeout)
        for (id, program) in [(absentID, absent), (unknownID, unknown)] {
            let run = try XCTUnwrap(runs[id])
            XCTAssertEqual(run.stateType, "CRASHED", "\(program): \(run.stateSummary)")
            XCTAssertTrue(run.stateMessage.contains(program), "message should name \(program): \(run.stateMessage)")
            XCTAssertEqual(run["run_count"]?.asInt, 0, "a job that never started never ran: \(program)")
        }

        let goodID = try await api.createFlowRun(deployment: goodDeployment)
        let good = try await waitForFinalState(goodID, timeout: runTimeout)
        XCTAssertEqual(good.stateType, "COMPLETED", "the next run on the same worker: \(good.stateSummary)")
        XCTAssertEqual(E2E.readText(workdir + "/ok.txt"), "ok\n")
        XCTAssertTrue(worker.isRunning)
    }

    func testTwoWorkersRunEachOfManyRunsExactlyOnce() async throws {
        let pool = try await makeProcessPool()
        let shared = try temporaryDirectory("shared") + "/ids.txt"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'echo $PREFECT__FLOW_RUN_ID >> \(shared)'"),
        ]))
        let first = try startWorker(pool: pool, name: uniqueName("-w1"))
        let second = try startWorker(pool: pool, name: uniqueName("-w2"))

        var ids: [String] = []
        for _ in 0..<30 { ids.append(try await api.createFlowRun(deployment: deployment)) }
        let runs = try await waitForFinalStates(ids, timeout: 90)

        let notCompleted = ids.filter { runs[$0]?.stateType != "COMPLETED" }.map { "\($0): \(runs[$0]?.stateSummary ?? "?")" }
        XCTAssertEqual(notCompleted, [], "runs not COMPLETED")
        let overcounted = ids.filter { (runs[$0]?["run_count"]?.asInt ?? 0) != 1 }
        XCTAssertEqual(overcounted, [], "runs whose run_count is not 1")

        let lines = (E2E.readText(shared) ?? "").split(separator: "\n").map(String.init)
        var counts: [String: Int] = [:]
        for line in lines { counts[line, default: 0] += 1 }
        let missing = ids.filter { counts[$0] == nil }
        let duplicated = counts.filter { $0.value > 1 }.map(\.key)
        let unexpected = counts.keys.filter { !ids.contains($0) }
        XCTAssertEqual(missing, [], "runs that never executed")
        XCTAssertEqual(duplicated, [], "runs executed more than once")
        XCTAssertEqual(unexpected, [], "unexpected lines in the shared file")
        XCTAssertEqual(lines.count, ids.count)

        let byWorker = Dictionary(grouping: ids, by: { runs[$0]?["labels"]?["prefect.worker.name"]?.asString ?? "?" }).mapValues(\.count)
        print("runs per worker: \(byWorker)")
        XCTAssertTrue(first.isRunning && second.isRunning)
    }
}

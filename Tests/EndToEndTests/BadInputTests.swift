import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Bad job configurations and awkward parameters, each followed by a good run on the same worker.
/// Complements `JobConfigurationTests.testBadJobConfigurationCrashesTheRunAndTheWorkerKeepsServing`, which
/// already covers: env not an object, unbalanced quotes, working_dir missing, state_owner not engine/worker.
final class BadInputTests: RunControlTestCase, @unchecked Sendable {
    let runTimeout = 45.0

    /// Prefect's default process template with the named variables declared without a type, so the server
    /// stores values its schema would refuse and the worker's own validation is what gets tested.
    static func untypedTemplate(_ names: [String]) -> JSON {
        guard case .object(var template) = JobTemplate.defaultProcessTemplate,
              case .object(var variables)? = template["variables"],
              case .object(var properties)? = variables["properties"] else { fatalError("default template changed shape") }
        for name in names { properties[name] = .object(["title": .string(name)]) }
        variables["properties"] = .object(properties)
        template["variables"] = .object(variables)
        return .object(template)
    }

    /// Runs a deployment with `variables`: the run must end CRASHED or FAILED with every word of `cause` in
    /// its message; then a good run on the same worker must complete.
    func assertBadRunThenGoodRun(_ variables: JSON, cause: [String], template: JSON? = nil,
                                 file: StaticString = #filePath, line: UInt = #line) async throws {
        let pool = try await makeProcessPool(template: template)
        let bad = try await api.createCommandDeployment(pool: pool, name: uniqueName("-bad"), jobVariables: variables)
        let workdir = try temporaryDirectory("good")
        let good = try await api.createCommandDeployment(pool: pool, name: uniqueName("-good"), jobVariables: .object([
            "command": "sh -c 'echo ok > ok.txt'", "working_dir": .string(workdir),
        ]))
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let badID = try await api.createFlowRun(deployment: bad)
        track(badID)
        let run = try await waitForFinalState(badID, timeout: runTimeout)
        print("bad input \(variables.encoded()) -> \(run.stateSummary)")
        XCTAssertTrue(["CRASHED", "FAILED"].contains(run.stateType ?? ""), "\(variables.encoded()): \(run.stateSummary)",
                      file: file, line: line)
        for word in cause {
            XCTAssertTrue(run.stateMessage.contains(word),
                          "\(variables.encoded()): the message should name '\(word)': \(run.stateMessage)", file: file, line: line)
        }
        let goodID = try await api.createFlowRun(deployment: good)
        track(goodID)
        let after = try await waitForFinalState(goodID, timeout: runTimeout)
        XCTAssertEqual(after.stateType, "COMPLETED", "a good run after the bad one: \(after.stateSummary)", file: file, line: line)
        XCTAssertEqual(E2E.readText(workdir + "/ok.txt"), "ok\n", file: file, line: line)
        XCTAssertTrue(worker.isRunning, "the worker should keep serving", file: file, line: line)
    }

    // MARK: - Job variables

    func testEnvWithAnObjectValue() async throws {
        try await assertBadRunThenGoodRun(try E2E.json(#"{"command": "true", "env": {"E2E_NESTED": {"a": 1}}}"#),
                                          cause: ["env", "E2E_NESTED"], template: TestAPI.permissiveEnvTemplate)
    }

    func testWorkingDirIsARegularFile() async throws {
        let dir = try temporaryDirectory("file")
        let path = dir + "/not-a-dir.txt"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data("x".utf8)))
        try await assertBadRunThenGoodRun(.object(["command": "true", "working_dir": .string(path)]),
                                          cause: [path, "not a directory"])
    }

    func testCommandThatSplitsToOneEmptyWord() async throws {
        // `''` is not blank (so not the default engine command) but splits to a single empty program name.
        try await assertBadRunThenGoodRun(.object(["command": "''"]), cause: ["''"])
    }

    func testProgramNotFound() async throws {
        try await assertBadRunThenGoodRun(.object(["command": "e2e-no-such-program-4711 --flag"]),
                                          cause: ["e2e-no-such-program-4711", "not found"])
    }

    func testProgramNotExecutable() async throws {
        let dir = try temporaryDirectory("noexec")
        let path = dir + "/script.sh"
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data("#!/bin/sh\nexit 0\n".utf8),
                                                     attributes: [.posixPermissions: 0o644]))
        try await assertBadRunThenGoodRun(.object(["command": .string(path)]), cause: [path, "not executable"])
    }

    func testStreamOutputOfTheWrongType() async throws {
        try await assertBadRunThenGoodRun(.object(["command": "true", "stream_output": "maybe"]),
                                          cause: ["stream_output", "maybe"], template: Self.untypedTemplate(["stream_output"]))
    }

    func testStateOwnerBogus() async throws {
        // JobConfigurationTests covers "nobody" on the permissive template; this is the default template.
        try await assertBadRunThenGoodRun(.object(["command": "true", "state_owner": "bogus"]),
                                          cause: ["state_owner", "bogus"])
    }

    // MARK: - Templates

    func testPlaceholderForAnUnknownVariable() async throws {
        guard case .object(var template) = JobTemplate.defaultProcessTemplate,
              case .object(var configuration)? = template["job_configuration"] else { fatalError("default template changed shape") }
        configuration["command"] = "{{ nope }}"
        template["job_configuration"] = .object(configuration)
        let pool = uniqueName()
        let body = JSON.object(["name": .string(pool), "type": "process", "base_job_template": .object(template)])
        let (status, text) = try await rawPost("work_pools/", body.encoded())
        if status == 422 {
            // Prefect refuses templates whose job configuration uses undeclared variables: the worker never
            // sees one. Unknown placeholders are then only reachable in the unit tests of the templating.
            print("the server refused the template with an unknown placeholder: \(status) \(text.prefix(400))")
            XCTAssertTrue(text.contains("undeclared variable(s): nope"), "the refusal should name the variable: \(text)")
            return
        }
        XCTFail("the server answered \(status) to a template with an undeclared placeholder (expected 422): \(text.prefix(400))")
    }

    // MARK: - Parameters

    func testParametersTooLargeForOneEnvironmentVariableGoThroughTheFile() async throws {
        let pool = try await makeProcessPool()
        let out = try temporaryDirectory("params")
        let command = #"sh -c 'if [ -n "${PREFECT_FLOW_RUN_PARAMETERS+x}" ]; then echo present > env.txt; else echo absent > env.txt; fi; cp "$PREFECT_FLOW_RUN_PARAMETERS_FILE" params.json'"#
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(command), "working_dir": .string(out),
        ]))
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let big = String(repeating: "p", count: 150 * 1024)
        let id = try await api.createFlowRun(deployment: deployment, parameters: .object(["big": .string(big), "n": .int(7)]))
        track(id)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        XCTAssertEqual(E2E.readText(out + "/env.txt"), "absent\n", "PREFECT_FLOW_RUN_PARAMETERS should not be set")
        let data = try XCTUnwrap(FileManager.default.contents(atPath: out + "/params.json"), "the job got no parameters file")
        let params = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        XCTAssertEqual((params["big"] as? String)?.count, big.count, "the file should hold the whole parameter")
        XCTAssertEqual(params["n"] as? Int, 7)
        XCTAssertTrue(worker.log.contains("too large for one environment variable"), "the worker should say so")
        XCTAssertTrue(worker.isRunning)
    }

    /// POST with a raw JSON text body (NaN is not JSON, so the JSON type cannot say it).
    func rawPost(_ path: String, _ body: String) async throws -> (Int, String) {
        var request = URLRequest(url: env.apiURL.appendingPathComponent(path))
        request.httpMethod = "POST"
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.httpBody = Data(body.utf8)
        // A busy SQLite server answers 503 now and then: ride through it, as the worker does.
        for attempt in 1...24 {
            let (data, response) = try await URLSession.shared.data(for: request)
            let status = (response as? HTTPURLResponse)?.statusCode ?? 0
            if status != 503 || attempt == 24 { return (status, String(decoding: data, as: UTF8.self)) }
            try await Task.sleep(seconds: min(Double(attempt), 5))
        }
        return (0, "")
    }

    func testParametersWithNaN() async throws {
        let pool = try await makeProcessPool()
        let out = try temporaryDirectory("nan")
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": #"sh -c 'cp "$PREFECT_FLOW_RUN_PARAMETERS_FILE" params.json'"#, "working_dir": .string(out),
        ]))
        let (status, text) = try await rawPost("deployments/\(deployment)/create_flow_run",
                                               #"{"parameters": {"x": NaN, "y": 1}, "idempotency_key": "\#(UUID().uuidString)"}"#)
        print("create_flow_run with NaN -> \(status): \(text.prefix(300))")
        guard (200..<300).contains(status) else {
            XCTAssertTrue([400, 422].contains(status), "the server should accept or refuse cleanly: \(status) \(text)")
            return
        }
        let id = try XCTUnwrap(try JSON.decode(Data(text.utf8))["id"]?.asString)
        track(id)
        let stored = try await api.readFlowRun(id)
        print("stored parameters: \(stored["parameters"]?.encoded() ?? "?")")
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let data = try XCTUnwrap(FileManager.default.contents(atPath: out + "/params.json"), "the job got no parameters file")
        print("the job's parameters file: \(String(decoding: data, as: UTF8.self))")
        let params = try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any], "the file should be JSON")
        XCTAssertTrue(params["x"] is NSNull, "NaN is stored as null: \(params)")
        XCTAssertEqual(params["y"] as? Int, 1)
        XCTAssertTrue(worker.isRunning)
    }
}

import Foundation
@testable import PrefectWorker
import XCTest

/// A Prefect user's set-up, unchanged: the active profile of `$PREFECT_HOME/profiles.toml` beneath the
/// environment, and `--base-job-template` for a pool the worker creates.
final class PrefectSettingsTests: E2ETestCase, @unchecked Sendable {
    let runTimeout = 30.0

    private func writeProfiles(_ text: String) throws -> String {
        let home = try temporaryDirectory("prefect-home")
        try text.write(toFile: home + "/profiles.toml", atomically: true, encoding: .utf8)
        return home
    }

    /// A command deployment whose job writes `$VAR` for each of `variables` to `<workdir>/<VAR>`.
    private func deploymentWritingVariables(pool: String, _ variables: [String], workdir: String) async throws -> String {
        let script = variables.map { "printf %s \"$\($0)\" > \($0)" }.joined(separator: "; ")
        return try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c '\(script)'"), "working_dir": .string(workdir),
        ]))
    }

    func testAPIURLOnlyInTheActiveProfileRunsComplete() async throws {
        let pool = try await makeProcessPool()
        let secret = "pnu_e2e_secret_never_logged"
        let home = try writeProfiles("""
        # as `prefect config set` leaves it
        active = "e2e"

        [profiles.default]
        PREFECT_API_URL = "http://127.0.0.1:\(E2E.closedLocalPort())/api"

        [profiles.e2e]
        PREFECT_API_URL = "\(env.apiURL.absoluteString)"
        PREFECT_API_KEY = "\(secret)"
        PREFECT_E2E_FROM_PROFILE = "inherited"
        """)
        let workdir = try temporaryDirectory("out")
        let deployment = try await deploymentWritingVariables(pool: pool, ["PREFECT_E2E_FROM_PROFILE", "PREFECT_API_URL"], workdir: workdir)
        let worker = try startWorker(pool: pool, environment: ["PREFECT_HOME": home], setAPIURL: false)

        let ids = [try await api.createFlowRun(deployment: deployment), try await api.createFlowRun(deployment: deployment)]
        let runs = try await waitForFinalStates(ids, timeout: runTimeout)
        for id in ids {
            XCTAssertEqual(runs[id]?.stateType, "COMPLETED", "final state: \(runs[id]?.stateSummary ?? "none")")
        }
        XCTAssertEqual(E2E.readText(workdir + "/PREFECT_E2E_FROM_PROFILE"), "inherited", "jobs inherit the profile's settings")
        XCTAssertEqual(E2E.readText(workdir + "/PREFECT_API_URL"), env.apiURL.absoluteString)
        XCTAssertTrue(worker.log.contains("settings: using profile 'e2e' (active) from \(home)/profiles.toml: PREFECT_API_KEY, PREFECT_API_URL, PREFECT_E2E_FROM_PROFILE"),
                      "the worker says which profile and file it read")
        XCTAssertFalse(worker.log.contains(secret), "the profile's API key must never be logged")
    }

    func testTheEnvironmentBeatsTheProfile() async throws {
        let pool = try await makeProcessPool()
        let home = try writeProfiles("""
        active = "stale"

        [profiles.stale]
        PREFECT_API_URL = "http://127.0.0.1:\(E2E.closedLocalPort())/api"
        PREFECT_E2E_ONLY_IN_PROFILE = "profile"
        PREFECT_E2E_IN_BOTH = "profile"
        """)
        let workdir = try temporaryDirectory("out")
        let deployment = try await deploymentWritingVariables(pool: pool, ["PREFECT_E2E_ONLY_IN_PROFILE", "PREFECT_E2E_IN_BOTH"], workdir: workdir)
        // The environment's PREFECT_API_URL (set by the harness) is the real server; the profile's is a closed port.
        let worker = try startWorker(pool: pool, environment: ["PREFECT_HOME": home, "PREFECT_E2E_IN_BOTH": "environment"])

        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        XCTAssertEqual(E2E.readText(workdir + "/PREFECT_E2E_IN_BOTH"), "environment")
        XCTAssertEqual(E2E.readText(workdir + "/PREFECT_E2E_ONLY_IN_PROFILE"), "profile")
        XCTAssertTrue(worker.log.contains("(the environment overrides PREFECT_API_URL, PREFECT_E2E_IN_BOTH)"), "the log says what the environment overrode")
    }

    func testBaseJobTemplateCreatesThePoolAndRunsGetItsDefaults() async throws {
        guard case .object(var template) = JobTemplate.defaultProcessTemplate,
              case .object(var variables)? = template["variables"],
              case .object(var properties)? = variables["properties"],
              case .object(var envProperty)? = properties["env"] else { return XCTFail("default template changed shape") }
        envProperty["default"] = .object(["FROM_TEMPLATE": "template-default"])
        properties["env"] = .object(envProperty)
        variables["properties"] = .object(properties)
        template["variables"] = .object(variables)
        let templateJSON = JSON.object(template)
        let directory = try temporaryDirectory("template")
        let templatePath = directory + "/base-job-template.json"
        try templateJSON.encoded().write(toFile: templatePath, atomically: true, encoding: .utf8)

        let pool = uniqueName("-created")
        let worker = try startWorker(pool: pool, arguments: ["--base-job-template", templatePath, "--install-policy", "if-not-present"])
        let created = try await E2E.eventually(timeout: 20, "work pool \(pool) to be created by the worker") {
            try checkWorkersAlive()
            return try await api.readPool(pool)
        }
        XCTAssertEqual(created["type"]?.asString, "process")
        XCTAssertEqual(created["base_job_template"], templateJSON, "the pool has the template from the file")

        let workdir = try temporaryDirectory("out")
        let deployment = try await deploymentWritingVariables(pool: pool, ["FROM_TEMPLATE"], workdir: workdir)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        XCTAssertEqual(E2E.readText(workdir + "/FROM_TEMPLATE"), "template-default", "the run gets the template's env default")
        XCTAssertTrue(worker.log.contains("created work pool '\(pool)' of type 'process' with the base job template in \(templatePath)"))
        XCTAssertTrue(worker.log.contains("--install-policy if-not-present: a process worker needs nothing installed"))

        // A second worker with a template, on the pool that now exists: the file is ignored, with a warning.
        let other = directory + "/other.json"
        try JobTemplate.defaultProcessTemplate.encoded().write(toFile: other, atomically: true, encoding: .utf8)
        let second = try startWorker(pool: pool, arguments: ["--base-job-template", other])
        _ = try await E2E.eventually(timeout: 20, "the second worker to warn that its template is ignored") {
            try checkWorkersAlive()
            return second.log.contains("ignoring the base job template in \(other) because work pool '\(pool)' already exists") ? true : nil
        }
        let after = try await api.readPool(pool)
        XCTAssertEqual(after?["base_job_template"], templateJSON, "an existing pool's template is left alone")
    }

    func testBadSettingsFilesAndTemplatesExitTwoNamingThem() async throws {
        let home = try writeProfiles("active = \"p\"\n[profiles.p]\nPREFECT_WORKER_QUERY_SECONDS = \"often\"\nPREFECT_API_URL = [1]\n")
        var result = try await runWorkerBinary(["start", "--pool", "p"], apiURL: nil, environment: ["PREFECT_HOME": home])
        XCTAssertEqual(result.code, 2, result.output)
        XCTAssertTrue(result.output.contains("prefect-worker: \(home)/profiles.toml:4: arrays are not supported"), result.output)

        let badValue = try writeProfiles("active = \"p\"\n[profiles.p]\nPREFECT_WORKER_QUERY_SECONDS = \"often\"\n")
        result = try await runWorkerBinary(["start", "--pool", "p"], apiURL: nil, environment: ["PREFECT_HOME": badValue])
        XCTAssertEqual(result.code, 2, result.output)
        XCTAssertTrue(result.output.contains("\(badValue)/profiles.toml, profile 'p': PREFECT_WORKER_QUERY_SECONDS: 'often' is not a number"), result.output)

        let missing = try temporaryDirectory("t") + "/missing.json"
        result = try await runWorkerBinary(["start", "--pool", "p", "--base-job-template", missing], apiURL: env.apiURL.absoluteString)
        XCTAssertEqual(result.code, 2, result.output)
        XCTAssertTrue(result.output.contains("--base-job-template: \(missing) does not exist"), result.output)
    }

    func testLoggingSettingsFromTheProfile() async throws {
        let pool = try await makeProcessPool()
        let home = try writeProfiles("""
        active = "logs"
        [profiles.logs]
        PREFECT_API_URL = "\(env.apiURL.absoluteString)"
        PREFECT_LOGGING_TO_API_MAX_LOG_SIZE = "400"
        PREFECT_LOGGING_TO_API_BATCH_INTERVAL = "0.5"
        PREFECT_WORKER_DEBUG_MODE = "true"
        """)
        let tag = UUID().uuidString.lowercased().prefix(8)
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'echo short-\(tag); printf \"long-\(tag)-%0900d\\n\" 0'"),
        ]))
        let worker = try startWorker(pool: pool, environment: ["PREFECT_HOME": home], setAPIURL: false)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")

        var messages: [String] = []
        do {
            _ = try await E2E.eventually(timeout: 15, "the job's lines in the run's logs: \(messages)") { () -> Bool? in
                messages = try await api.logMessages(id)
                return messages.contains("short-\(tag)") && messages.contains { $0.hasPrefix("long-\(tag)-") } ? true : nil
            }
        } catch {
            XCTFail("\(error)")
        }
        let long = try XCTUnwrap(messages.first { $0.hasPrefix("long-\(tag)-") })
        XCTAssertTrue(long.hasSuffix("... [truncated]"), "a line over PREFECT_LOGGING_TO_API_MAX_LOG_SIZE is cut: \(long.count) characters")
        XCTAssertLessThan(long.utf8.count, 400)
        XCTAssertTrue(worker.log.contains(" DEBUG "), "PREFECT_WORKER_DEBUG_MODE turns on the worker's debug lines")
    }

    func testLoggingToAPIDisabledKeepsRunLinesOutOfPrefect() async throws {
        let pool = try await makeProcessPool()
        let tag = UUID().uuidString.lowercased().prefix(8)
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'echo kept-local-\(tag)'"),
        ]))
        let worker = try startWorker(pool: pool, environment: ["PREFECT_LOGGING_TO_API_ENABLED": "false",
                                                               "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.2"])
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        // Batches would go every 0.2 s: after 3 s, anything shipped would be there.
        try await Task.sleep(nanoseconds: 3_000_000_000)
        let messages = try await api.logMessages(id)
        XCTAssertEqual(messages, [], "nothing about the run is shipped to Prefect")
        XCTAssertTrue(worker.log.contains("kept-local-\(tag)"), "the output still streams to the worker's log")
        XCTAssertTrue(worker.log.contains("PREFECT_LOGGING_TO_API_ENABLED is false"))
    }
}

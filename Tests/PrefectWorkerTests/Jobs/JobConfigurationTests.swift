import XCTest
@testable import PrefectWorker

/// `JobConfiguration`: typing and checking a rendered job configuration the way Prefect's
/// `ProcessJobConfiguration` (pydantic) does, plus the worker's own `state_owner` rule.
final class JobConfigurationTests: XCTestCase {
    private func job(_ configuration: [String: JSON], variables: [String: JSON] = [:]) throws -> JobConfiguration {
        try JobConfiguration(RenderedJob(configuration: configuration, variables: variables))
    }

    private func assertError(_ configuration: [String: JSON], variables: [String: JSON] = [:], _ expected: String,
                             file: StaticString = #filePath, line: UInt = #line) {
        do {
            let job = try self.job(configuration, variables: variables)
            XCTFail("expected \"\(expected)\", got \(job)", file: file, line: line)
        } catch let error as JobConfigurationError {
            XCTAssertEqual(error.message, expected, file: file, line: line)
            XCTAssertEqual(error.description, expected, file: file, line: line)
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }

    // MARK: - Defaults

    func testEmptyConfigurationGivesPrefectDefaults() throws {
        let job = try job([:])
        XCTAssertNil(job.command)
        XCTAssertEqual(job.arguments, ["python", "-m", "prefect.engine"])
        XCTAssertEqual(JobConfiguration.defaultCommand, "python -m prefect.engine")
        XCTAssertEqual(job.environment, [:])
        XCTAssertNil(job.workingDirectory)
        XCTAssertNil(job.name)
        XCTAssertEqual(job.labels, [:])
        XCTAssertTrue(job.streamOutput)
        XCTAssertEqual(job.stateOwner, .engine)
    }

    func testNullsMeanDefaults() throws {
        let job = try job(["command": .null, "env": .null, "working_dir": .null, "name": .null, "labels": .null, "state_owner": .null])
        XCTAssertEqual(job, try self.job([:]))
    }

    // MARK: - command

    func testCommand() throws {
        let job = try job(["command": "sh -c 'echo \"hi there\"; exit 3'"])
        XCTAssertEqual(job.command, "sh -c 'echo \"hi there\"; exit 3'")
        XCTAssertEqual(job.arguments, ["sh", "-c", "echo \"hi there\"; exit 3"])
        XCTAssertEqual(job.stateOwner, .worker)
    }

    func testEmptyCommandMeansTheEngineDefault() throws {
        for empty in ["", "   ", "\t\n"] {
            let job = try job(["command": .string(empty)])
            XCTAssertNil(job.command, "command \(empty.debugDescription)")
            XCTAssertEqual(job.arguments, ["python", "-m", "prefect.engine"])
            XCTAssertEqual(job.stateOwner, .engine)
        }
    }

    func testCommandMustBeAString() {
        assertError(["command": .int(5)], "job variable 'command' must be a string, got integer")
        assertError(["command": .bool(true)], "job variable 'command' must be a string, got boolean")
        assertError(["command": .array(["echo", "hi"])], "job variable 'command' must be a string, got array")
        assertError(["command": .object([:])], "job variable 'command' must be a string, got object")
        assertError(["command": .double(1.5)], "job variable 'command' must be a string, got number")
    }

    func testUnparsableCommand() {
        assertError(["command": "echo 'unbalanced"], #"cannot parse command "echo 'unbalanced": unbalanced quotes: no closing ' in command"#)
        assertError(["command": #"echo "unbalanced"#], #"cannot parse command "echo \"unbalanced": unbalanced quotes: no closing " in command"#)
        assertError(["command": #"echo \"#], #"cannot parse command "echo \\": command ends with a backslash that escapes nothing"#)
    }

    // MARK: - env

    func testEnvCoercions() throws {
        let job = try job(["env": .object([
            "S": "text", "EMPTY": "", "I": .int(1), "NEG": .int(-7), "T": .bool(true), "F": .bool(false),
            "D": .double(1.5), "WHOLE": .double(2.0), "N": .null,
        ])])
        XCTAssertEqual(job.environment, [
            "S": "text", "EMPTY": "", "I": "1", "NEG": "-7", "T": "True", "F": "False", "D": "1.5", "WHOLE": "2.0",
        ])
    }

    func testEnvMustBeAnObject() {
        assertError(["env": "A=1"], "job variable 'env' must be an object, got string")
        assertError(["env": .array(["A=1"])], "job variable 'env' must be an object, got array")
        assertError(["env": .int(1)], "job variable 'env' must be an object, got integer")
        assertError(["env": .bool(false)], "job variable 'env' must be an object, got boolean")
    }

    func testEnvValuesMustBeScalars() {
        assertError(["env": .object(["K": .object(["a": .int(1)])])],
                    "job variable 'env': value of K must be a string, number or boolean, got object")
        assertError(["env": .object(["K": .array([.int(1)])])],
                    "job variable 'env': value of K must be a string, number or boolean, got array")
    }

    func testEnvNamesMustBeUsable() {
        assertError(["env": .object(["A=B": "x"])], #"job variable 'env': "A=B" is not a valid environment variable name"#)
        assertError(["env": .object(["": "x"])], #"job variable 'env': "" is not a valid environment variable name"#)
        assertError(["env": .object(["A\u{0}B": "x"])], #"job variable 'env': "A\u0000B" is not a valid environment variable name"#)
    }

    // MARK: - working_dir, name, labels

    func testWorkingDirectory() throws {
        XCTAssertEqual(try job(["working_dir": "/srv/flows"]).workingDirectory, "/srv/flows")
        XCTAssertEqual(try job(["working_dir": "~/flows"]).workingDirectory, "~/flows", "no ~ expansion, as in Prefect")
        XCTAssertEqual(try job(["working_dir": "relative/dir"]).workingDirectory, "relative/dir")
        XCTAssertNil(try job(["working_dir": ""]).workingDirectory)
        assertError(["working_dir": .int(1)], "job variable 'working_dir' must be a path string, got integer")
        assertError(["working_dir": .object([:])], "job variable 'working_dir' must be a path string, got object")
        assertError(["working_dir": .bool(true)], "job variable 'working_dir' must be a path string, got boolean")
    }

    func testName() throws {
        XCTAssertEqual(try job(["name": "infra"]).name, "infra")
        assertError(["name": .int(1)], "job variable 'name' must be a string, got integer")
    }

    func testLabels() throws {
        XCTAssertEqual(try job(["labels": .object(["a": "1", "b": ""])]).labels, ["a": "1", "b": ""])
        XCTAssertEqual(try job(["labels": .object([:])]).labels, [:])
        assertError(["labels": .object(["k": .int(1)])], "job variable 'labels': value of k must be a string, got integer")
        assertError(["labels": .object(["k": .null])], "job variable 'labels': value of k must be a string, got null")
        assertError(["labels": .array([])], "job variable 'labels' must be an object, got array")
        assertError(["labels": "a=b"], "job variable 'labels' must be an object, got string")
    }

    // MARK: - stream_output

    func testStreamOutputLaxBooleans() throws {
        let truthy: [JSON] = [.bool(true), .int(1), "true", "True", "TRUE", "t", "yes", "Y", "on", "1"]
        let falsy: [JSON] = [.bool(false), .int(0), "false", "False", "f", "no", "N", "off", "OFF", "0"]
        for value in truthy { XCTAssertTrue(try job(["stream_output": value]).streamOutput, "\(value)") }
        for value in falsy { XCTAssertFalse(try job(["stream_output": value]).streamOutput, "\(value)") }
    }

    func testStreamOutputRejectsOtherValues() {
        assertError(["stream_output": "maybe"], #"job variable 'stream_output' must be a boolean, got string "maybe""#)
        assertError(["stream_output": ""], #"job variable 'stream_output' must be a boolean, got string """#)
        assertError(["stream_output": .int(2)], "job variable 'stream_output' must be a boolean, got integer 2")
        assertError(["stream_output": .null], "job variable 'stream_output' must be a boolean, got null null")
        assertError(["stream_output": .array([])], "job variable 'stream_output' must be a boolean, got array []")
    }

    // MARK: - timeout_seconds

    func testTimeoutSeconds() throws {
        XCTAssertNil(try job([:]).timeoutSeconds)
        XCTAssertNil(try job(["timeout_seconds": .null]).timeoutSeconds)
        XCTAssertEqual(try job(["timeout_seconds": .int(3)]).timeoutSeconds, 3)
        XCTAssertEqual(try job(["timeout_seconds": .double(0.5)]).timeoutSeconds, 0.5)
        XCTAssertEqual(try job(["timeout_seconds": " 90 "]).timeoutSeconds, 90, "a numeric string, as pydantic coerces it")
        XCTAssertNil(try job(["timeout_seconds": .int(0)]).timeoutSeconds, "0 means no limit, as for a flow's timeout_seconds")
        XCTAssertNil(try job(["timeout_seconds": ""]).timeoutSeconds)
    }

    func testTimeoutSecondsIsReadFromTheVariablesWhenThePoolTemplateLacksIt() throws {
        XCTAssertEqual(try job([:], variables: ["timeout_seconds": .int(7)]).timeoutSeconds, 7)
        XCTAssertEqual(try job(["timeout_seconds": .int(5)], variables: ["timeout_seconds": .int(7)]).timeoutSeconds, 5)
        // Rendered from a template with Prefect's own (timeout-less) job configuration.
        let template = try JobTemplate(.object(["job_configuration": .object(["command": "{{ command }}"]),
                                                "variables": .object(["properties": .object(["command": .object(["type": "string"])])])]))
        let rendered = try template.render(values: ["command": "sleep 9", "timeout_seconds": .int(2)], environment: [:])
        XCTAssertEqual(try JobConfiguration(rendered).timeoutSeconds, 2)
    }

    func testBadTimeoutSecondsNameTheVariable() {
        assertError(["timeout_seconds": .int(-1)], "job variable 'timeout_seconds' must be a number of seconds >= 0 or null, got -1")
        assertError([:], variables: ["timeout_seconds": .double(-0.5)], "job variable 'timeout_seconds' must be a number of seconds >= 0 or null, got -0.5")
        assertError(["timeout_seconds": "soon"], #"job variable 'timeout_seconds' must be a number of seconds or null, got string "soon""#)
        assertError(["timeout_seconds": .bool(true)], "job variable 'timeout_seconds' must be a number of seconds or null, got boolean true")
        assertError(["timeout_seconds": .array([.int(1)])], "job variable 'timeout_seconds' must be a number of seconds or null, got array [1]")
    }

    func testTheDefaultTemplateCarriesTimeoutSeconds() throws {
        let template = try JobTemplate(JobTemplate.defaultProcessTemplate)
        XCTAssertEqual(try JobConfiguration(template.render(values: ["timeout_seconds": .int(4)], environment: [:])).timeoutSeconds, 4)
        XCTAssertNil(try JobConfiguration(template.render(values: [:], environment: [:])).timeoutSeconds)
    }

    // MARK: - state_owner

    func testStateOwnerExplicit() throws {
        XCTAssertEqual(try job(["state_owner": "worker"]).stateOwner, .worker, "even with the default engine command")
        XCTAssertEqual(try job(["command": "echo hi", "state_owner": "engine"]).stateOwner, .engine)
        XCTAssertEqual(try job(["command": "echo hi", "state_owner": "ENGINE"]).stateOwner, .engine)
        XCTAssertEqual(try job(["command": "echo hi", "state_owner": "Worker"]).stateOwner, .worker)
    }

    func testStateOwnerFromVariablesWhenTheTemplateDoesNotMapIt() throws {
        XCTAssertEqual(try job(["command": "echo hi"], variables: ["state_owner": "engine"]).stateOwner, .engine)
        XCTAssertEqual(try job([:], variables: ["state_owner": "worker"]).stateOwner, .worker)
        // The configuration wins over the variables.
        XCTAssertEqual(try job(["state_owner": "engine"], variables: ["state_owner": "worker"]).stateOwner, .engine)
    }

    func testStateOwnerRejectsOtherValues() {
        assertError(["state_owner": "both"], #"job variable 'state_owner' must be 'engine' or 'worker', got "both""#)
        assertError(["state_owner": ""], #"job variable 'state_owner' must be 'engine' or 'worker', got """#)
        assertError(["state_owner": .bool(true)], "job variable 'state_owner' must be 'engine' or 'worker', got boolean")
        assertError([:], variables: ["state_owner": .int(1)], "job variable 'state_owner' must be 'engine' or 'worker', got integer")
    }

    func testDefaultOwnerRule() throws {
        let engine = [
            "python -m prefect.engine",
            "/usr/bin/python3 -m prefect.engine",
            "python3 -X dev -m prefect.engine --extra",
            "prefect flow-run execute",
            "prefect flow-run execute 0a1b2c3d",
            "/opt/venv/bin/prefect flow-run execute",
            "uv run prefect flow-run execute",
        ]
        let worker = [
            "echo hi",
            "python flow.py",
            "python -m prefect.engines",
            "prefect flow-run ls",
            "prefect deploy",
            "myprefect flow-run execute",
            "sh -c 'exit 0'",
        ]
        for command in engine {
            XCTAssertEqual(try job(["command": .string(command)]).stateOwner, .engine, command)
        }
        for command in worker {
            XCTAssertEqual(try job(["command": .string(command)]).stateOwner, .worker, command)
        }
    }

    /// The rule is "the command runs `prefect.engine` / `prefect flow-run execute`"; Prefect itself tests the
    /// command *string* (`"prefect flow-run execute" in self.command`). A shell wrapper around the engine
    /// must still be owned by the engine, or both the worker and the engine propose RUNNING.
    func testDefaultOwnerSeesTheEngineInsideAShellWrapper() throws {
        for command in [
            "sh -c 'cd /app && python -m prefect.engine'",
            "bash -lc \"source .venv/bin/activate && prefect flow-run execute\"",
        ] {
            XCTAssertEqual(try job(["command": .string(command)]).stateOwner, .engine, command)
        }
    }

    // MARK: - Submitted flows (bundle execution steps)

    /// A step as `prefect work-pool storage configure` writes it: one module, its arguments.
    private let step: JSON = .object(["prefect_aws.experimental.bundles.execute": .object(["requires": "prefect-aws", "bucket": "b"])])

    func testTheCommandOfThePoolsBundleExecutionStepIsEngineOwned() {
        // What `convert_step_to_command` builds from that step: `uv run` (or the launcher), `-m`, arguments, `--key`.
        let uvRun = "uv run --with prefect-aws --python 3.11 -m prefect_aws.experimental.bundles.execute --bucket b --key 9c1e"
        XCTAssertEqual(JobConfiguration.defaultOwner(command: uvRun, bundleExecutionStep: step), .engine)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: uvRun, bundleExecutionStep: nil), .worker, "recognised from the pool's step")
        let launcher = "/opt/venv/bin/python -m prefect_aws.experimental.bundles.execute --bucket b --key 9c1e"
        XCTAssertEqual(JobConfiguration.defaultOwner(command: launcher, bundleExecutionStep: step), .engine)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "sh -c 'cd /app && \(launcher)'", bundleExecutionStep: step), .engine, "behind a shell wrapper")
    }

    func testCommandsThatDoNotRunTheStepStayPlainCommands() {
        for command in [
            "python -m prefect_aws.experimental.bundles.execute_v2 --key k",  // another module
            "python -m prefect_aws.experimental.bundles.execute",  // no bundle key
            "python prefect_aws.experimental.bundles.execute --key k",  // a file, not the module
            "echo hi",
        ] {
            XCTAssertEqual(JobConfiguration.defaultOwner(command: command, bundleExecutionStep: step), .worker, command)
        }
        for bad: JSON in [.null, .object([:]), .string("x"), .object(["a": .object([:]), "b": .object([:])])] {
            XCTAssertEqual(JobConfiguration.defaultOwner(command: "python -m a --key k", bundleExecutionStep: bad), .worker, "step \(bad.encoded())")
        }
    }

    func testPrefectsOwnBundleExecutorIsEngineOwnedWithoutAConfiguredStep() {
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "uv run --python 3.11 -m prefect.bundles.execute --key 9c1e"), .engine)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "python -m prefect._experimental.bundles.execute --key 9c1e"), .engine)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "python -m prefect.bundles.execute --key k", bundleExecutionStep: step), .engine)
    }

    func testTheBundleStepReachesTheStateOwnerAndAnExplicitStateOwnerStillWins() throws {
        let command: JSON = "python -m prefect_aws.experimental.bundles.execute --bucket b --key 9c1e"
        let rendered = RenderedJob(configuration: ["command": command], variables: [:])
        XCTAssertEqual(try JobConfiguration(rendered, bundleExecutionStep: step).stateOwner, .engine)
        XCTAssertEqual(try JobConfiguration(rendered).stateOwner, .worker)
        let explicit = RenderedJob(configuration: ["command": command], variables: ["state_owner": "worker"])
        XCTAssertEqual(try JobConfiguration(explicit, bundleExecutionStep: step).stateOwner, .worker)
    }

    func testAWorkPoolReadsItsBundleExecutionStep() throws {
        func pool(_ storage: String) throws -> WorkPool {
            try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p", "name": "p", "type": "process", "storage_configuration": \#(storage)}"#.utf8))
        }
        let configured = try pool(#"{"bundle_upload_step": {"u": {}}, "bundle_execution_step": {"m.execute": {"launcher": ["python"]}}, "default_result_storage_block_id": null}"#)
        XCTAssertEqual(BundleExecution.module(ofStep: configured.bundleExecutionStep), "m.execute")
        XCTAssertNil(try pool(#"{"bundle_upload_step": null, "bundle_execution_step": null, "default_result_storage_block_id": null}"#).bundleExecutionStep)
        XCTAssertNil(try pool("null").bundleExecutionStep)
        XCTAssertNil(try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p", "name": "p", "type": "process"}"#.utf8)).bundleExecutionStep)
    }

    func testDefaultOwnerFunction() {
        XCTAssertEqual(JobConfiguration.defaultOwner(command: nil), .engine)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "echo"), .worker)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "prefect flow-run"), .worker)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "prefect flow-run execute"), .engine)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "x prefect.engine"), .engine)
        XCTAssertEqual(JobConfiguration.defaultOwner(command: "python -m prefect_engineering"), .worker)
    }
}

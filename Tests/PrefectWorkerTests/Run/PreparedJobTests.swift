import Foundation
import XCTest
@testable import PrefectWorker

/// A job made ready to start, and undone: workspace, environment, program, cgroup and control session.
final class PreparedJobTests: XCTestCase {
    private var root: String!

    override func setUpWithError() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("prepared-job-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: root)
    }

    private func prepare(_ configuration: [String: JSON]) throws(PreparedJob.Failure) -> PreparedJob {
        var settings = Settings(apiURL: URL(string: "http://127.0.0.1:1/api")!, pool: "pool", workerName: "worker")
        settings.environment = ["PATH": "/usr/local/bin:/usr/bin:/bin", "TMPDIR": root]
        let job = try! JobConfiguration(RenderedJob(configuration: configuration, variables: [:]))
        let run = try! JSONDecoder().decode(FlowRun.self, from: Data(#"{"id": "run-p", "parameters": {"x": 1}}"#.utf8))
        return try PreparedJob.prepare(run: run, job: job, deployment: nil, flowName: "flow", settings: settings, workerID: nil,
                                       cgroups: .unusable(reason: "tests"), log: .console)
    }

    private var leftovers: [String] { (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] }

    func testAnEngineJobGetsItsOwnControlSessionInItsEnvironment() throws {
        let prepared = try prepare(["command": .null])
        let control = try XCTUnwrap(prepared.control, "an engine job gets a session")
        XCTAssertEqual(prepared.environment["PREFECT__CONTROL_PORT"], String(control.port))
        XCTAssertEqual(prepared.environment["PREFECT__CONTROL_TOKEN"], control.token)
        XCTAssertEqual(prepared.environment["PREFECT__FLOW_RUN_ID"], "run-p")
        XCTAssertEqual(prepared.environment["PREFECT_FLOW_RUN_PARAMETERS"], #"{"x":1}"#)
        XCTAssertTrue(["python", "python3"].contains(prepared.arguments[0]), "\(prepared.arguments)")
        XCTAssertTrue(prepared.executable.hasSuffix("/" + prepared.arguments[0]))
        XCTAssertFalse(leftovers.isEmpty, "the workspace exists while the job is prepared")
        prepared.remove()
        XCTAssertEqual(leftovers, [], "remove() takes the workspace away")
    }

    func testAPlainCommandGetsASessionTooAsUnderPrefectsWorker() throws {
        let prepared = try prepare(["command": "true"])
        defer { prepared.remove() }
        let control = try XCTUnwrap(prepared.control)
        XCTAssertEqual(prepared.environment["PREFECT__CONTROL_TOKEN"], control.token)
        XCTAssertEqual(prepared.executable, "/usr/bin/true")
    }

    func testAProgramThatCannotBeFoundFailsToStartAndLeavesNothingBehind() {
        do {
            _ = try prepare(["command": "no-such-program-here --flag"])
            XCTFail("a missing program cannot be prepared")
        } catch {
            XCTAssertEqual(error.stage, "start")
            XCTAssertTrue(error.message.contains("no-such-program-here"), error.message)
        }
        XCTAssertEqual(leftovers, [], "the workspace made before the failure is removed")
    }

    func testAWorkingDirectoryThatDoesNotExistFailsToPrepare() {
        do {
            _ = try prepare(["command": "true", "working_dir": .string(root + "/missing")])
            XCTFail("a missing working_dir cannot be prepared")
        } catch {
            XCTAssertEqual(error.stage, "prepare")
            XCTAssertTrue(error.message.contains("/missing"), error.message)
        }
    }
}

import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

final class JobWorkspaceTests: XCTestCase {
    private typealias P = ProcessTestSupport
    private var root = ""

    override func setUpWithError() throws {
        root = try P.makeTemporaryDirectory()
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: root)
    }

    private func mode(_ path: String) -> Int? {
        (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int
    }

    private func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    private func error(_ body: () throws -> JobWorkspace, file: StaticString = #filePath, line: UInt = #line) -> String? {
        do {
            let workspace = try body()
            workspace.remove()
            XCTFail("expected an error, got \(workspace)", file: file, line: line)
        } catch let error as JobConfigurationError {
            return error.message
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
        return nil
    }

    func testTemporaryWorkspace() throws {
        let parameters = #"{"x": 1, "s": "ünï"}"#
        let workspace = try JobWorkspace.create(parameters: parameters, workingDirectory: nil, environment: ["TMPDIR": root])
        XCTAssertTrue(workspace.privateDirectory.hasPrefix(root + "/prefect-worker-"), workspace.privateDirectory)
        XCTAssertEqual(workspace.parametersFile, workspace.privateDirectory + "/parameters.json")
        XCTAssertTrue(workspace.workingDirectory.hasPrefix(root + "/prefect-run-"), workspace.workingDirectory)
        XCTAssertTrue(workspace.ownsWorkingDirectory)
        XCTAssertNotEqual(workspace.privateDirectory, workspace.workingDirectory)

        XCTAssertEqual(mode(workspace.privateDirectory), 0o700)
        XCTAssertEqual(mode(workspace.parametersFile), 0o600)
        XCTAssertEqual(mode(workspace.workingDirectory), 0o700)
        XCTAssertEqual(try String(contentsOfFile: workspace.parametersFile, encoding: .utf8), parameters)

        // Whatever the job left behind goes too.
        try "x".write(toFile: workspace.workingDirectory + "/output.txt", atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: workspace.workingDirectory + "/a/b", withIntermediateDirectories: true)
        workspace.remove()
        XCTAssertFalse(exists(workspace.privateDirectory))
        XCTAssertFalse(exists(workspace.workingDirectory))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: root), [])
    }

    func testEachWorkspaceIsFresh() throws {
        let a = try JobWorkspace.create(parameters: "{}", workingDirectory: nil, environment: ["TMPDIR": root])
        let b = try JobWorkspace.create(parameters: "{}", workingDirectory: nil, environment: ["TMPDIR": root])
        XCTAssertNotEqual(a.privateDirectory, b.privateDirectory)
        XCTAssertNotEqual(a.workingDirectory, b.workingDirectory)
        a.remove()
        XCTAssertTrue(exists(b.parametersFile), "removing one workspace leaves the other")
        b.remove()
    }

    func testGivenWorkingDirectoryIsUsedAndKept() throws {
        let work = root + "/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: false)
        try "keep".write(toFile: work + "/file", atomically: false, encoding: .utf8)
        let workspace = try JobWorkspace.create(parameters: "{}", workingDirectory: work, environment: ["TMPDIR": root])
        XCTAssertEqual(workspace.workingDirectory, work)
        XCTAssertFalse(workspace.ownsWorkingDirectory)
        workspace.remove()
        XCTAssertTrue(exists(work + "/file"), "a configured working_dir is never removed")
        XCTAssertFalse(exists(workspace.privateDirectory))
    }

    func testWorkingDirectoryErrors() throws {
        XCTAssertEqual(error { try JobWorkspace.create(parameters: "{}", workingDirectory: root + "/missing", environment: ["TMPDIR": root]) },
                       "working_dir '\(root)/missing' does not exist")
        try "x".write(toFile: root + "/plain", atomically: false, encoding: .utf8)
        XCTAssertEqual(error { try JobWorkspace.create(parameters: "{}", workingDirectory: root + "/plain", environment: ["TMPDIR": root]) },
                       "working_dir '\(root)/plain' is not a directory")
        // Nothing was left behind by the failures.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: root), ["plain"])
    }

    func testUnusableTemporaryRoot() {
        let message = error { try JobWorkspace.create(parameters: "{}", workingDirectory: nil, environment: ["TMPDIR": root + "/nope"]) }
        XCTAssertEqual(message, "cannot create a temporary directory from \(root)/nope/prefect-worker-XXXXXX: No such file or directory")
    }

    func testTemporaryRoot() {
        XCTAssertEqual(JobWorkspace.temporaryRoot([:]), "/tmp")
        XCTAssertEqual(JobWorkspace.temporaryRoot(["TMPDIR": ""]), "/tmp")
        XCTAssertEqual(JobWorkspace.temporaryRoot(["TMPDIR": "/var/tmp/"]), "/var/tmp")
        XCTAssertEqual(JobWorkspace.temporaryRoot(["TMPDIR": "/scratch"]), "/scratch")
    }

    func testLargeParametersAreWrittenCompletely() throws {
        let parameters = "[" + Array(repeating: "\"0123456789\"", count: 50_000).joined(separator: ",") + "]"
        let workspace = try JobWorkspace.create(parameters: parameters, workingDirectory: nil, environment: ["TMPDIR": root])
        defer { workspace.remove() }
        XCTAssertEqual(try String(contentsOfFile: workspace.parametersFile, encoding: .utf8), parameters)
    }
}

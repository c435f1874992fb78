import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

final class ExecutableLookupTests: XCTestCase {
    private typealias P = ProcessTestSupport
    private var dir = ""

    override func setUpWithError() throws {
        dir = try P.makeTemporaryDirectory()
        try FileManager.default.createDirectory(atPath: dir + "/bin1", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: dir + "/bin2", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: dir + "/work", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: dir + "/work/sub", withIntermediateDirectories: false)
        try P.writeFile(dir + "/bin1/tool", "#!/bin/sh\n", mode: 0o644)   // not executable
        try P.writeFile(dir + "/bin2/tool", "#!/bin/sh\n", mode: 0o755)
        try P.writeFile(dir + "/bin1/only-here", "#!/bin/sh\n", mode: 0o644)
        try FileManager.default.createDirectory(atPath: dir + "/bin1/adir", withIntermediateDirectories: false)
        try P.writeFile(dir + "/work/run.sh", "#!/bin/sh\n", mode: 0o755)
        try P.writeFile(dir + "/work/data", "x", mode: 0o644)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func error(_ body: () throws -> String, file: StaticString = #filePath, line: UInt = #line) -> String? {
        do {
            let result = try body()
            XCTFail("expected an error, got \(result)", file: file, line: line)
        } catch let error as SpawnError {
            return error.message
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
        return nil
    }

    func testSearchesThePathInOrder() throws {
        XCTAssertEqual(try ExecutableLookup.resolve("tool", path: "\(dir)/bin2:\(dir)/bin1", workingDirectory: dir), "\(dir)/bin2/tool")
        // Like execvp, a non-executable match is skipped for a later executable one.
        XCTAssertEqual(try ExecutableLookup.resolve("tool", path: "\(dir)/bin1:\(dir)/bin2", workingDirectory: dir), "\(dir)/bin2/tool")
        XCTAssertEqual(try ExecutableLookup.resolve("sh", path: "/nonexistent:/bin", workingDirectory: "/"), "/bin/sh")
    }

    func testDefaultPath() throws {
        XCTAssertEqual(ExecutableLookup.defaultPath, "/usr/local/bin:/usr/bin:/bin")
        let viaNil = try ExecutableLookup.resolve("sh", path: nil, workingDirectory: "/")
        let viaEmpty = try ExecutableLookup.resolve("sh", path: "", workingDirectory: "/")
        XCTAssertEqual(viaNil, viaEmpty)
        XCTAssertTrue(["/usr/local/bin/sh", "/usr/bin/sh", "/bin/sh"].contains(viaNil), viaNil)
    }

    func testEmptyPathEntryMeansTheWorkingDirectory() throws {
        XCTAssertEqual(try ExecutableLookup.resolve("run.sh", path: "/nonexistent:", workingDirectory: dir + "/work"), dir + "/work/run.sh")
        XCTAssertEqual(try ExecutableLookup.resolve("run.sh", path: ":/nonexistent", workingDirectory: dir + "/work"), dir + "/work/run.sh")
    }

    func testNotFound() {
        XCTAssertEqual(error { try ExecutableLookup.resolve("definitely-not-here", path: "/nonexistent:/also-not", workingDirectory: "/") },
                       "program 'definitely-not-here' was not found in PATH (/nonexistent:/also-not)")
        XCTAssertEqual(error { try ExecutableLookup.resolve("adir", path: "\(dir)/bin1", workingDirectory: "/") },
                       "program 'adir' was not found in PATH (\(dir)/bin1)", "a directory is not a program")
        XCTAssertEqual(error { try ExecutableLookup.resolve("nope", path: nil, workingDirectory: "/") },
                       "program 'nope' was not found in PATH (/usr/local/bin:/usr/bin:/bin)")
    }

    func testFoundButNotExecutable() {
        XCTAssertEqual(error { try ExecutableLookup.resolve("only-here", path: "\(dir)/bin1:\(dir)/bin2", workingDirectory: "/") },
                       "program 'only-here' was found at \(dir)/bin1/only-here but is not executable")
    }

    func testPathsWithASlash() throws {
        XCTAssertEqual(try ExecutableLookup.resolve("/bin/sh", path: "/nonexistent", workingDirectory: "/"), "/bin/sh")
        // Relative to the job's working directory, not the worker's, and never searched in PATH.
        let relative = try ExecutableLookup.resolve("./run.sh", path: "/bin", workingDirectory: dir + "/work")
        XCTAssertEqual(P.realpath(relative), dir + "/work/run.sh")
        let nested = try ExecutableLookup.resolve("work/run.sh", path: "/bin", workingDirectory: dir)
        XCTAssertEqual(P.realpath(nested), dir + "/work/run.sh")
    }

    func testPathsWithASlashErrors() {
        XCTAssertEqual(error { try ExecutableLookup.resolve("./nope", path: nil, workingDirectory: dir + "/work") },
                       "program './nope' was not found (No such file or directory)")
        XCTAssertEqual(error { try ExecutableLookup.resolve("./data", path: nil, workingDirectory: dir + "/work") },
                       "program './data' is not executable")
        XCTAssertEqual(error { try ExecutableLookup.resolve("./sub", path: nil, workingDirectory: dir + "/work") },
                       "program './sub' is not a regular file")
        XCTAssertEqual(error { try ExecutableLookup.resolve("/nonexistent/bin/x", path: nil, workingDirectory: "/") },
                       "program '/nonexistent/bin/x' was not found (No such file or directory)")
        // A program found relative to the worker's directory must not count.
        XCTAssertNotNil(error { try ExecutableLookup.resolve("./run.sh", path: nil, workingDirectory: dir) })
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// The state directory falls back to a writable place when the configured one is not writable.
final class StateDirectoryTests: XCTestCase {
    func testFallbacksAreXDGThenHomeThenTmp() {
        XCTAssertEqual(StateDirectory.fallbacks(environment: ["XDG_STATE_HOME": "/x", "HOME": "/home/prefect"], uid: 1001),
                       ["/x/prefect-worker", "/home/prefect/.local/state/prefect-worker", "/tmp/prefect-worker-1001"])
        XCTAssertEqual(StateDirectory.fallbacks(environment: ["XDG_STATE_HOME": "", "HOME": "/"], uid: 7),
                       ["/tmp/prefect-worker-7"])
    }

    func testResolveKeepsTheConfiguredDirectoryOrTakesTheFirstWritableFallback() {
        let table: [(writable: Set<String>, expected: String, warns: Bool)] = [
            (["/state", "/home"], "/state", false),
            (["/home", "/tmp"], "/home", true),
            (["/tmp"], "/tmp", true),
            // Nothing writable: keep the configured one, whose preparation then fails naming it.
            ([], "/state", false),
        ]
        for row in table {
            let resolved = StateDirectory.resolve("/state", fallbacks: ["/home", "/tmp"], isWritable: { row.writable.contains($0) })
            XCTAssertEqual(resolved.path, row.expected, "writable: \(row.writable)")
            XCTAssertEqual(resolved.warning != nil, row.warns, "writable: \(row.writable)")
            if let warning = resolved.warning {
                XCTAssertTrue(warning.contains("/state") && warning.contains(row.expected), warning)
            }
        }
    }

    func testAnUnwritableDirectoryFallsBackToAWritableOneOnDisk() throws {
        let root = NSTemporaryDirectory() + "state-dir-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: root) }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        // A path under a regular file can never be created, not even by root (the tests may run as root).
        let file = root + "/not-a-directory"
        XCTAssertTrue(FileManager.default.createFile(atPath: file, contents: Data()))
        let configured = file + "/state"
        XCTAssertFalse(StateDirectory.isWritable(configured))

        let home = root + "/home"
        let resolved = StateDirectory.resolve(configured, fallbacks: StateDirectory.fallbacks(environment: ["HOME": home], uid: getuid()))
        XCTAssertEqual(resolved.path, home + "/.local/state/prefect-worker")
        XCTAssertTrue(StateDirectory.isWritable(resolved.path), "the fallback is created")
        let warning = try XCTUnwrap(resolved.warning)
        XCTAssertTrue(warning.contains("the state directory \(configured) is not writable"), warning)
        XCTAssertTrue(warning.contains("in \(resolved.path) instead"), warning)
    }
}

import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

final class OutputPumpTests: XCTestCase {
    private typealias P = ProcessTestSupport

    private func pipePair() -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&fds), 0)
        return (fds[0], fds[1])
    }

    func testLinesArePrefixedAndAPartialLastLineIsFlushed() async throws {
        let source = pipePair()
        let destination = pipePair()
        let pump = OutputPump(fd: source.read, prefix: "run-1 | ", destination: destination.write)
        Log.writeAll(source.write, "line1\nline2\n")
        Log.writeAll(source.write, "par")
        Log.writeAll(source.write, "tial")
        close(source.write)
        await pump.finish(timeout: 5)
        close(destination.write)
        XCTAssertEqual(P.readAll(destination.read), "run-1 | line1\nrun-1 | line2\nrun-1 | partial\n")
        XCTAssertEqual(fcntl(source.read, F_GETFD), -1, "the pump closes the descriptor it owns")
    }

    func testOutputOfARealChild() async throws {
        let process = try P.shell("echo one; echo two >&2; printf three")
        let destination = pipePair()
        let pumps = [
            OutputPump(fd: try XCTUnwrap(process.stdout), prefix: "o ", destination: destination.write),
            OutputPump(fd: try XCTUnwrap(process.stderr), prefix: "e ", destination: destination.write),
        ]
        _ = await ChildProcesses.shared.waitForExit(process.pid)
        for pump in pumps { await pump.finish(timeout: 5) }
        close(destination.write)
        let lines = try XCTUnwrap(P.readAll(destination.read)).split(separator: "\n").map(String.init)
        XCTAssertEqual(Set(lines), ["o one", "e two", "o three"])
    }

    func testFinishGivesUpOnAPipeHeldOpen() async throws {
        let source = pipePair()
        let destination = pipePair()
        let pump = OutputPump(fd: source.read, prefix: "", destination: destination.write)
        Log.writeAll(source.write, "complete\nincomplete")
        let start = Date()
        await pump.finish(timeout: 0.3)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(elapsed, 0.25)
        XCTAssertLessThan(elapsed, 3)
        close(source.write)
        close(destination.write)
        let output = try XCTUnwrap(P.readAll(destination.read))
        XCTAssertTrue(output.hasPrefix("complete\n"), output)
    }

    func testVeryLongLinesAreSplit() async throws {
        let source = pipePair()
        let destination = pipePair()
        let pump = OutputPump(fd: source.read, prefix: "> ", destination: destination.write)
        let long = String(repeating: "x", count: 200_000)
        // Write from another thread: the pipe buffer is smaller than the line.
        let writer = Thread {
            Log.writeAll(source.write, long + "\nend\n")
            close(source.write)
        }
        writer.start()
        // Drain the destination concurrently too.
        let reader = Task.detached { P.readAll(destination.read, timeout: 10) }
        await pump.finish(timeout: 10)
        close(destination.write)
        let read = await reader.value
        let output = try XCTUnwrap(read)
        let lines = output.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.last, "", "output ends with a newline")
        XCTAssertEqual(lines.dropLast().last, "> end")
        let body = lines.dropLast(2).map { $0.dropFirst(2) }.joined()
        XCTAssertEqual(body.count, 200_000, "no byte lost")
        XCTAssertGreaterThan(lines.count - 2, 1, "the long line was cut into pieces")
        XCTAssertTrue(lines.dropLast().allSatisfy { $0.hasPrefix("> ") })
    }
}

import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

final class ExitStatusTests: XCTestCase {
    func testDecodesRawWaitStatuses() {
        let table: [(Int32, ExitStatus)] = [
            (0x0000, .exited(0)),
            (0x0100, .exited(1)),
            (0x0300, .exited(3)),
            (0x7F00, .exited(127)),
            (0xFF00, .exited(255)),
            (0x0009, .signaled(SIGKILL)),
            (0x000F, .signaled(SIGTERM)),
            (0x0002, .signaled(SIGINT)),
            (0x008B, .signaled(SIGSEGV)),   // core dumped flag (0x80) set
            (0x0086, .signaled(SIGABRT)),   // core dumped
            (0x0022, .signaled(34)),        // a real-time signal
        ]
        for (raw, expected) in table {
            XCTAssertEqual(ExitStatus(waitStatus: raw), expected, String(format: "0x%04x", raw))
        }
    }

    func testCodeUsesPythonReturncodeConvention() {
        XCTAssertEqual(ExitStatus.exited(0).code, 0)
        XCTAssertEqual(ExitStatus.exited(3).code, 3)
        XCTAssertEqual(ExitStatus.signaled(SIGTERM).code, -15)
        XCTAssertEqual(ExitStatus.signaled(SIGKILL).code, -9)
    }

    func testIsSuccess() {
        XCTAssertTrue(ExitStatus.exited(0).isSuccess)
        XCTAssertFalse(ExitStatus.exited(1).isSuccess)
        XCTAssertFalse(ExitStatus.signaled(SIGTERM).isSuccess)
    }

    func testDescriptions() {
        XCTAssertEqual(ExitStatus.exited(3).description, "exited with code 3")
        XCTAssertEqual(ExitStatus.signaled(SIGKILL).description, "was killed by signal 9 (SIGKILL)")
        XCTAssertEqual(ExitStatus.signaled(SIGTERM).description, "was killed by signal 15 (SIGTERM)")
        XCTAssertEqual(ExitStatus.signaled(64).description, "was killed by signal 64 (signal 64)")
    }

    func testSignalNames() {
        let table: [(Int32, String)] = [
            (SIGHUP, "SIGHUP"), (SIGINT, "SIGINT"), (SIGQUIT, "SIGQUIT"), (SIGILL, "SIGILL"), (SIGTRAP, "SIGTRAP"),
            (SIGABRT, "SIGABRT"), (SIGBUS, "SIGBUS"), (SIGFPE, "SIGFPE"), (SIGKILL, "SIGKILL"), (SIGUSR1, "SIGUSR1"),
            (SIGSEGV, "SIGSEGV"), (SIGUSR2, "SIGUSR2"), (SIGPIPE, "SIGPIPE"), (SIGALRM, "SIGALRM"), (SIGTERM, "SIGTERM"),
            (SIGXCPU, "SIGXCPU"), (SIGXFSZ, "SIGXFSZ"), (SIGSYS, "SIGSYS"), (40, "signal 40"),
        ]
        for (signal, name) in table {
            XCTAssertEqual(ExitStatus.signalName(signal), name)
        }
    }
}

import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// Real processes through `ChildProcesses.shared.spawn` and `waitForExit` (subclassed by `CgroupSpawnTests`).
class ProcessTests: XCTestCase {
    private typealias P = ProcessTestSupport
    private let children = ChildProcesses.shared

    // MARK: - Exit statuses

    func testExitCodes() async throws {
        for code in [0, 1, 3, 127, 255] {
            let process = try P.shell("exit \(code)", captureOutput: false)
            let status = await children.waitForExit(process.pid)
            XCTAssertEqual(status, .exited(Int32(code)))
        }
    }

    func testSignals() async throws {
        let selfKill = try P.shell("kill -USR1 $$", captureOutput: false)
        let status = await children.waitForExit(selfKill.pid)
        XCTAssertEqual(status, .signaled(SIGUSR1))

        let sleeper = try children.spawn(P.request(P.sleep, ["30"]))
        kill(sleeper.pid, SIGKILL)
        let killed = await children.waitForExit(sleeper.pid)
        XCTAssertEqual(killed, .signaled(SIGKILL))
        XCTAssertEqual(killed.code, -9)
    }

    func testWaitAfterTheChildHasAlreadyExited() async throws {
        let process = try children.spawn(P.request("/bin/true", []))
        XCTAssertTrue(P.waitUntilDead(process.pid), "the child should have exited")
        try await Task.sleep(nanoseconds: 100_000_000)
        let status = await children.waitForExit(process.pid)
        XCTAssertEqual(status, .exited(0))
        XCTAssertFalse(children.runningPIDs.contains(process.pid))
        XCTAssertNil(P.stat(process.pid), "the child has been reaped, not left a zombie")
    }

    func testConcurrentChildrenEachGetTheirOwnStatus() async throws {
        var pids: [(pid_t, Int32)] = []
        for code in Int32(10)..<Int32(16) {
            // Exit in reverse order of starting.
            let process = try P.shell("sleep 0.$((16 - \(code))); exit \(code)", captureOutput: false)
            pids.append((process.pid, code))
        }
        let results = await withTaskGroup(of: (Int32, ExitStatus).self) { group in
            for (pid, code) in pids {
                group.addTask { (code, await ChildProcesses.shared.waitForExit(pid)) }
            }
            var results: [(Int32, ExitStatus)] = []
            for await result in group { results.append(result) }
            return results
        }
        XCTAssertEqual(results.count, pids.count)
        for (code, status) in results {
            XCTAssertEqual(status, .exited(code))
        }
    }

    func testRunningPIDs() async throws {
        let process = try children.spawn(P.request(P.sleep, ["30"]))
        XCTAssertTrue(children.runningPIDs.contains(process.pid))
        await P.killAndReap(process.pid)
        XCTAssertFalse(children.runningPIDs.contains(process.pid))
    }

    // MARK: - What the child gets

    func testChildLeadsItsOwnProcessGroupInOurSession() async throws {
        let process = try children.spawn(P.request(P.sleep, ["30"]))
        XCTAssertEqual(getpgid(process.pid), process.pid, "the child is a process-group leader")
        XCTAssertNotEqual(getpgid(process.pid), getpgid(0), "not in the worker's group")
        let fields = try XCTUnwrap(P.stat(process.pid))
        XCTAssertEqual(fields[2], String(process.pid), "pgrp in /proc/<pid>/stat")
        XCTAssertEqual(fields[3], String(getsid(0)), "same session as the worker (no setsid)")
        XCTAssertEqual(fields[1], String(getpid()), "our child")
        await P.killAndReap(process.pid)
    }

    func testGrandchildrenShareTheGroup() async throws {
        let process = try P.shell("sleep 30 & echo $!; wait")
        let stdout = try XCTUnwrap(process.stdout)
        let line = try XCTUnwrap(P.readLine(stdout), "the grandchild pid")
        let grandchild = try XCTUnwrap(pid_t(line))
        XCTAssertEqual(getpgid(grandchild), process.pid)
        kill(-process.pid, SIGKILL)
        let status = await children.waitForExit(process.pid)
        XCTAssertEqual(status, .signaled(SIGKILL))
        XCTAssertTrue(P.waitUntilDead(grandchild), "signalling the group reaches the grandchild")
        close(stdout)
        if let stderr = process.stderr { close(stderr) }
    }

    func testShellSeesItsOwnGroup() async throws {
        let process = try P.shell("ps -o pgid= -p $$; ps -o sid= -p $$")
        let output = try XCTUnwrap(P.readAll(process.stdout))
        _ = P.readAll(process.stderr)
        let status = await children.waitForExit(process.pid)
        XCTAssertEqual(status, .exited(0))
        let lines = output.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        XCTAssertEqual(lines, [String(process.pid), String(getsid(0))])
    }

    func testStandardDescriptorsWithoutCapture() async throws {
        let process = try children.spawn(P.request(P.sleep, ["30"], captureOutput: false))
        XCTAssertNil(process.stdout)
        XCTAssertNil(process.stderr)
        XCTAssertEqual(P.link("/proc/\(process.pid)/fd/0"), "/dev/null", "stdin is /dev/null")
        XCTAssertEqual(P.link("/proc/\(process.pid)/fd/1"), "/dev/null")
        XCTAssertEqual(P.link("/proc/\(process.pid)/fd/2"), "/dev/null")
        await P.killAndReap(process.pid)
    }

    func testStandardDescriptorsWithCapture() async throws {
        let process = try children.spawn(P.request(P.sleep, ["30"], captureOutput: true))
        XCTAssertEqual(P.link("/proc/\(process.pid)/fd/0"), "/dev/null", "stdin is /dev/null")
        XCTAssertTrue(P.link("/proc/\(process.pid)/fd/1")?.hasPrefix("pipe:") == true)
        XCTAssertTrue(P.link("/proc/\(process.pid)/fd/2")?.hasPrefix("pipe:") == true)
        XCTAssertNotEqual(P.link("/proc/\(process.pid)/fd/1"), P.link("/proc/\(process.pid)/fd/2"), "separate pipes")
        await P.killAndReap(process.pid)
        XCTAssertEqual(P.readAll(process.stdout), "")
        XCTAssertEqual(P.readAll(process.stderr), "")
    }

    func testStdinReadsEndOfFileAtOnce() async throws {
        let process = try children.spawn(P.request("/bin/cat", [], captureOutput: true))
        XCTAssertEqual(P.readAll(process.stdout, timeout: 5), "")
        _ = P.readAll(process.stderr)
        let status = await children.waitForExit(process.pid)
        XCTAssertEqual(status, .exited(0))
    }

    func testNoInheritedDescriptorsBeyondTheStandardThree() async throws {
        // A descriptor without close-on-exec that a careless spawn would leak.
        let leaky = open("/dev/null", O_RDONLY)
        XCTAssertGreaterThan(leaky, 2)
        defer { close(leaky) }
        for capture in [false, true] {
            let process = try children.spawn(P.request(P.sleep, ["30"], captureOutput: capture))
            // The program may hold a descriptor briefly while it starts (sleep opens its locale files); a
            // leaked one stays, so look until the set settles (at most 2 s).
            var fds = P.openFDs(String(process.pid))
            for _ in 0..<40 where fds != ["0", "1", "2"] {
                usleep(50_000)
                fds = P.openFDs(String(process.pid))
            }
            XCTAssertEqual(fds, ["0", "1", "2"], "captureOutput: \(capture)")
            await P.killAndReap(process.pid)
            if capture {
                _ = P.readAll(process.stdout)
                _ = P.readAll(process.stderr)
            }
        }
    }

    func testShellListsOnlyTheStandardDescriptors() async throws {
        let leaky = open("/dev/null", O_RDONLY)
        defer { close(leaky) }
        // `ls` opens /proc/self/fd itself, so list the shell's descriptors from a child.
        let process = try P.shell("ls /proc/$$/fd")
        let output = try XCTUnwrap(P.readAll(process.stdout))
        _ = P.readAll(process.stderr)
        _ = await children.waitForExit(process.pid)
        XCTAssertEqual(output.split(separator: "\n").sorted(), ["0", "1", "2"])
    }

    func testEnvironmentIsExactlyWhatWasGiven() async throws {
        let environment = ["A": "1", "WITH_EQUALS": "x=y", "EMPTY": "", "UNICODE": "ünï 日本", "SPACES": " a b "]
        let process = try children.spawn(P.request(P.sleep, ["30"], environment: environment))
        XCTAssertTrue(P.waitForExec(process.pid))
        let raw = try XCTUnwrap(P.readFile("/proc/\(process.pid)/environ"))
        let entries = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        XCTAssertEqual(Set(entries), Set(environment.map { "\($0.key)=\($0.value)" }))
        XCTAssertEqual(entries.count, environment.count)
        await P.killAndReap(process.pid)
    }

    func testEmptyEnvironment() async throws {
        let process = try ChildProcesses.shared.spawn(P.request("/usr/bin/env", [], environment: [:], captureOutput: true))
        XCTAssertEqual(P.readAll(process.stdout), "")
        _ = P.readAll(process.stderr)
        let status = await children.waitForExit(process.pid)
        XCTAssertEqual(status, .exited(0))
    }

    func testArgumentsArePassedVerbatim() async throws {
        let args = ["a b", "", "$HOME", "'q'", "ünï", "*"]
        let process = try children.spawn(P.request("/usr/bin/printf", ["[%s]\\n"] + args, captureOutput: true))
        let output = P.readAll(process.stdout)
        _ = P.readAll(process.stderr)
        _ = await children.waitForExit(process.pid)
        XCTAssertEqual(output, args.map { "[\($0)]\n" }.joined())
    }

    func testWorkingDirectory() async throws {
        let dir = try P.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let process = try children.spawn(P.request(P.sleep, ["30"], workingDirectory: dir))
        XCTAssertEqual(P.link("/proc/\(process.pid)/cwd"), dir)
        await P.killAndReap(process.pid)

        let pwd = try P.shell("pwd", workingDirectory: dir)
        XCTAssertEqual(P.readAll(pwd.stdout), dir + "\n")
        _ = P.readAll(pwd.stderr)
        _ = await children.waitForExit(pwd.pid)
    }

    func testSignalMaskAndDispositionsAreReset() async throws {
        // Ignore one signal in this process and block another in this thread: the child must see neither.
        let previous = signal(SIGUSR2, SIG_IGN)
        let previousPipe = signal(SIGPIPE, SIG_IGN) // as the worker does
        var block = sigset_t()
        sigemptyset(&block)
        sigaddset(&block, SIGUSR1)
        var oldMask = sigset_t()
        pthread_sigmask(SIG_BLOCK, &block, &oldMask)
        let spawned = Result(catching: { try children.spawn(P.request(P.sleep, ["30"])) })
        pthread_sigmask(SIG_SETMASK, &oldMask, nil)
        signal(SIGUSR2, previous)
        signal(SIGPIPE, previousPipe)

        let process = try spawned.get()
        XCTAssertEqual(P.status(process.pid, "SigBlk"), "0000000000000000", "nothing blocked")
        // glibc's posix_spawn leaves its two internal signals (32, 33) ignored; every standard signal
        // (SIGPIPE, which the worker ignores, included) must be back to its default.
        let ignored = try XCTUnwrap(P.status(process.pid, "SigIgn").flatMap { UInt64($0, radix: 16) })
        XCTAssertEqual(ignored & ~UInt64(0x1_8000_0000), 0, "ignored signals: 0x" + String(ignored, radix: 16))
        await P.killAndReap(process.pid)
    }

    // MARK: - Output

    func testOutputIsCapturedSeparately() async throws {
        let process = try P.shell("printf 'out1\\nout2'; printf 'err' >&2; exit 4")
        let stdout = P.readAll(process.stdout)
        let stderr = P.readAll(process.stderr)
        let status = await children.waitForExit(process.pid)
        XCTAssertEqual(stdout, "out1\nout2")
        XCTAssertEqual(stderr, "err")
        XCTAssertEqual(status, .exited(4))
    }

    func testLargeOutputIsNotTruncated() async throws {
        let process = try P.shell("head -c 300000 /dev/zero | tr '\\0' x")
        let stdout = try XCTUnwrap(P.readAll(process.stdout))
        _ = P.readAll(process.stderr)
        let status = await children.waitForExit(process.pid)
        XCTAssertEqual(stdout.utf8.count, 300_000)
        XCTAssertEqual(status, .exited(0))
    }

    // MARK: - Failures

    func testSpawnFailures() throws {
        let before = P.openFDs("self").count
        XCTAssertThrowsError(try children.spawn(P.request("/nonexistent/program", [], captureOutput: true))) { error in
            let message = (error as? SpawnError)?.message ?? ""
            XCTAssertTrue(message.contains("/nonexistent/program"), message)
            XCTAssertTrue(message.contains("No such file or directory"), message)
        }
        XCTAssertThrowsError(try children.spawn(P.request(P.sleep, ["1"], workingDirectory: "/nonexistent-dir", captureOutput: true))) { error in
            XCTAssertTrue(error is SpawnError)
        }
        let dir = try P.makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try P.writeFile(dir + "/data", "#!/bin/sh\n", mode: 0o644)
        XCTAssertThrowsError(try children.spawn(P.request(dir + "/data", [], captureOutput: true))) { error in
            let message = (error as? SpawnError)?.message ?? ""
            XCTAssertTrue(message.contains("Permission denied"), message)
        }
        XCTAssertEqual(P.openFDs("self").count, before, "no pipe is leaked by a failed spawn")
    }
}

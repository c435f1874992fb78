import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// `Teardown` against real process groups.
final class TeardownTests: XCTestCase {
    private typealias P = ProcessTestSupport
    /// For a leader already known to be gone.
    private static let open: Latch = { let latch = Latch(); latch.open(); return latch }()

    /// Starts watching `pid`: the flag is set when it has been reaped.
    private func watch(_ pid: pid_t) -> (ExitFlag, Task<ExitStatus, Never>) {
        let flag = ExitFlag()
        let task = Task {
            let status = await ChildProcesses.shared.waitForExit(pid)
            flag.set(status)
            return status
        }
        return (flag, task)
    }

    func testTerminateIsSIGTERMThenSIGKILL() async throws {
        XCTAssertEqual(Teardown.terminate(grace: 3).steps, [Teardown.Step(signal: SIGTERM, grace: 3)])
        // A job that notes SIGTERM and carries on: it gets SIGTERM first, then SIGKILL once the grace is over.
        let process = try P.shell("trap 'echo TERM' TERM; echo ready; while :; do sleep 0.05; done")
        let stdout = try XCTUnwrap(process.stdout)
        defer {
            close(stdout)
            if let stderr = process.stderr { close(stderr) }
        }
        XCTAssertEqual(P.readLine(stdout), "ready")
        let (flag, task) = watch(process.pid)
        let start = Date()
        let result = FakeAPIBox<Teardown.Outcome?>(nil)
        let finished = await finishes(within: 10) {
            result.value = await Teardown.terminate(grace: 0.6).run(processGroup: process.pid, runID: nil, leaderExit: flag.latch)
        }
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertTrue(finished, "the teardown should end within 10 s")
        XCTAssertEqual(result.value, .killed)
        XCTAssertEqual(P.readLine(stdout, timeout: 2), "TERM", "SIGTERM came first, and the job saw it")
        XCTAssertGreaterThanOrEqual(elapsed, 0.6, "SIGKILL only after the grace period")
        XCTAssertLessThan(elapsed, 5)
        let reaped = await finishes(within: 5) { _ = await task.value }
        XCTAssertTrue(reaped)
        XCTAssertEqual(flag.status, .signaled(SIGKILL), "then SIGKILL")
    }

    /// Regression: the waits were `try? await Task.sleep`, which returns at once in a cancelled task, so a
    /// teardown whose task was cancelled spun through its grace period and gave up waiting for SIGKILL to
    /// take effect before the job was gone. A teardown that starts always completes, and its waits are real.
    func testATeardownInACancelledTaskStillWaitsForReal() async throws {
        let process = try P.shell("trap '' TERM; sleep 30", captureOutput: false)
        XCTAssertTrue(P.waitUntilIgnoring(process.pid, SIGTERM), "the shell should have set its trap")
        let (flag, task) = watch(process.pid)
        let signals = FakeAPIBox(0)
        let teardown = Task { () -> (Teardown.Outcome, Bool, Double) in
            withUnsafeCurrentTask { $0?.cancel() }
            let start = Date()
            let outcome = await Teardown.terminate(grace: 0.5).run(processGroup: process.pid, runID: nil, leaderExit: flag.latch) {
                signals.update { $0 += 1 }
                _ = kill(-$0, $1)
            }
            return (outcome, flag.isSet, Date().timeIntervalSince(start))
        }
        let (outcome, reapedWhenItReturned, elapsed) = await teardown.value
        XCTAssertEqual(outcome, .killed)
        XCTAssertGreaterThanOrEqual(elapsed, 0.5)
        XCTAssertTrue(reapedWhenItReturned, "the teardown returned before the killed job was gone")
        XCTAssertLessThan(signals.value, 10, "signalled the job \(signals.value) times in \(elapsed) s: the waits spin")
        _ = await task.value
    }

    func testOutcomeDescriptions() {
        XCTAssertEqual(Teardown.Outcome.alreadyExited.description, "had already exited")
        XCTAssertEqual(Teardown.Outcome.exitedAfter(signal: SIGTERM).description, "exited after SIGTERM")
        XCTAssertEqual(Teardown.Outcome.killed.description, "was killed with SIGKILL after the grace period")
    }

    func testChildThatHonoursSIGTERM() async throws {
        let process = try ChildProcesses.shared.spawn(P.request(P.sleep, ["30"]))
        let (flag, task) = watch(process.pid)
        let start = Date()
        let outcome = await Teardown.terminate(grace: 5).run(processGroup: process.pid, runID: nil, leaderExit: flag.latch)
        XCTAssertEqual(outcome, .exitedAfter(signal: SIGTERM))
        XCTAssertLessThan(Date().timeIntervalSince(start), 2, "no need to wait for the grace period")
        let status = await task.value
        XCTAssertEqual(status, .signaled(SIGTERM))
    }

    func testChildThatIgnoresSIGTERMIsKilledAfterTheGrace() async throws {
        let process = try P.shell("trap '' TERM; sleep 30", captureOutput: false)
        XCTAssertTrue(P.waitUntilIgnoring(process.pid, SIGTERM), "the shell should have set its trap")
        let (flag, task) = watch(process.pid)
        let start = Date()
        let outcome = await Teardown.terminate(grace: 0.5).run(processGroup: process.pid, runID: nil, leaderExit: flag.latch)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(outcome, .killed)
        XCTAssertGreaterThanOrEqual(elapsed, 0.5)
        XCTAssertLessThan(elapsed, 2)
        let status = await task.value
        XCTAssertEqual(status, .signaled(SIGKILL))
    }

    func testTheWholeGroupIsSignalled() async throws {
        // The shell waits for its background child; SIGTERM to the group must reach both.
        let process = try P.shell("sleep 30 & echo $!; wait")
        let stdout = try XCTUnwrap(process.stdout)
        let grandchild = try XCTUnwrap(P.readLine(stdout).flatMap { pid_t($0) })
        let (flag, task) = watch(process.pid)
        let outcome = await Teardown.terminate(grace: 5).run(processGroup: process.pid, runID: nil, leaderExit: flag.latch)
        XCTAssertEqual(outcome, .exitedAfter(signal: SIGTERM))
        _ = await task.value
        XCTAssertTrue(P.waitUntilDead(grandchild), "the background sleep got SIGTERM too")
        close(stdout)
        if let stderr = process.stderr { close(stderr) }
    }

    func testAlreadyExitedSendsNothing() async throws {
        let process = try ChildProcesses.shared.spawn(P.request(P.sleep, ["30"]))
        let outcome = await Teardown.terminate(grace: 0.1).run(processGroup: process.pid, runID: nil, leaderExit: Self.open)
        XCTAssertEqual(outcome, .alreadyExited)
        try await Task.sleep(nanoseconds: 100_000_000)
        XCTAssertFalse(P.isDead(process.pid), "no signal was sent")
        await P.killAndReap(process.pid)
    }

    func testCustomStepsEscalateInOrder() async throws {
        // A job that ignores TERM and INT: both steps run out, then SIGKILL.
        let process = try P.shell("trap '' TERM INT; sleep 30", captureOutput: false)
        XCTAssertTrue(P.waitUntilIgnoring(process.pid, SIGINT))
        let (flag, task) = watch(process.pid)
        let teardown = Teardown(steps: [Teardown.Step(signal: SIGINT, grace: 0.2), Teardown.Step(signal: SIGTERM, grace: 0.2)])
        let start = Date()
        let outcome = await teardown.run(processGroup: process.pid, runID: nil, leaderExit: flag.latch)
        XCTAssertEqual(outcome, .killed)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.4)
        let status = await task.value
        XCTAssertEqual(status, .signaled(SIGKILL))

        // A job that ignores INT but not TERM ends at the second step.
        let second = try P.shell("trap '' INT; sleep 30", captureOutput: false)
        XCTAssertTrue(P.waitUntilIgnoring(second.pid, SIGINT))
        let (flag2, task2) = watch(second.pid)
        let outcome2 = await teardown.run(processGroup: second.pid, runID: nil, leaderExit: flag2.latch)
        XCTAssertEqual(outcome2, .exitedAfter(signal: SIGTERM))
        _ = await task2.value
    }

    func testSecondsBecomeNanosecondsWithoutTrapping() {
        XCTAssertEqual(Seconds.nanoseconds(1.5), 1_500_000_000)
        XCTAssertEqual(Seconds.nanoseconds(0), 0)
        XCTAssertEqual(Seconds.nanoseconds(-3), 0, "a negative delay (a server's odd answer) is no delay")
        XCTAssertEqual(Seconds.nanoseconds(.nan), 0)
        XCTAssertEqual(Seconds.nanoseconds(1e11), 9_200_000_000_000_000_000, "a huge value is capped, not a trap")
        XCTAssertEqual(Seconds.nanoseconds(.infinity), 9_200_000_000_000_000_000)
    }

    func testSleepThroughCancellationWaitsInACancelledTask() async {
        let elapsed = await Task { () -> Double in
            withUnsafeCurrentTask { $0?.cancel() }
            let start = Date()
            await sleepThroughCancellation(0.2)
            return Date().timeIntervalSince(start)
        }.value
        XCTAssertGreaterThanOrEqual(elapsed, 0.19)
        XCTAssertLessThan(elapsed, 2)
    }

    // MARK: - Descendants that left the group (found by the run's environment marker)

    /// Starts `sh -c script` with `PREFECT__FLOW_RUN_ID` set and returns it with the pid it prints first.
    private func jobWithEscapee(_ script: String, runID: String) throws -> (SpawnedProcess, pid_t) {
        let process = try P.shell(script, environment: ["PATH": "/usr/bin:/bin", "PREFECT__FLOW_RUN_ID": runID])
        let stdout = try XCTUnwrap(process.stdout)
        let escapee = try XCTUnwrap(P.readLine(stdout).flatMap { pid_t($0) }, "the escaped descendant's pid")
        // `$!` is printed before the descendant has called setsid: wait until it has its own session.
        let deadline = Date().addingTimeInterval(5)
        while getsid(escapee) != escapee, Date() < deadline { usleep(5_000) }
        XCTAssertEqual(getsid(escapee), escapee, "the descendant is in a new session")
        return (process, escapee)
    }

    private func closeOutput(_ process: SpawnedProcess) {
        if let fd = process.stdout { close(fd) }
        if let fd = process.stderr { close(fd) }
    }

    func testDescendantInANewSessionIsSignalledToo() async throws {
        let runID = UUID().uuidString.lowercased()
        let (process, escapee) = try jobWithEscapee("setsid sleep 30 & echo $!; wait", runID: runID)
        defer { closeOutput(process) }
        XCTAssertNotEqual(getpgid(escapee), process.pid, "the descendant left the job's process group")
        XCTAssertEqual(ProcFS.processes(ofRun: runID).sorted(), [process.pid, escapee].sorted())
        let (flag, task) = watch(process.pid)
        let outcome = await Teardown.terminate(grace: 5).run(processGroup: process.pid, runID: runID, leaderExit: flag.latch)
        XCTAssertEqual(outcome, .exitedAfter(signal: SIGTERM))
        _ = await task.value
        XCTAssertTrue(P.waitUntilDead(escapee), "the escaped descendant got SIGTERM")
        XCTAssertEqual(ProcFS.processes(ofRun: runID), [])
    }

    func testDescendantThatIgnoresSIGTERMIsKilled() async throws {
        let runID = UUID().uuidString.lowercased()
        let (process, escapee) = try jobWithEscapee("setsid sh -c 'trap \"\" TERM; sleep 30' & echo $!; wait", runID: runID)
        defer { closeOutput(process) }
        XCTAssertTrue(P.waitUntilIgnoring(escapee, SIGTERM))
        let (flag, task) = watch(process.pid)
        let start = Date()
        let outcome = await Teardown.terminate(grace: 0.5).run(processGroup: process.pid, runID: runID, leaderExit: flag.latch)
        XCTAssertEqual(outcome, .killed, "the job's shell exited on SIGTERM, but its descendant did not")
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(start), 0.5)
        let status = await task.value
        XCTAssertEqual(status, .signaled(SIGTERM))
        XCTAssertTrue(P.waitUntilDead(escapee), "SIGKILL reached the escaped descendant")
    }

    func testAlreadyExitedLeaderWithALiveDescendantIsNotAlreadyExited() async throws {
        let runID = UUID().uuidString.lowercased()
        // The job's shell exits at once, leaving a descendant in its own session behind.
        let (process, escapee) = try jobWithEscapee("setsid sleep 30 & echo $!", runID: runID)
        defer { closeOutput(process) }
        let status = await ChildProcesses.shared.waitForExit(process.pid)
        XCTAssertEqual(status, .exited(0))
        let outcome = await Teardown.terminate(grace: 5).run(processGroup: process.pid, runID: runID, leaderExit: Self.open)
        XCTAssertEqual(outcome, .exitedAfter(signal: SIGTERM))
        XCTAssertTrue(P.waitUntilDead(escapee))
    }
}

import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// `RunningJob` on the fake spawner: the job's side tasks in one group (its end, heartbeat, timer, stop request
/// and teardown), and what it tells its run.
final class RunningJobTests: XCTestCase {
    /// What the hooks and the heartbeat saw.
    final class Seen: Sendable {
        let exits = Mutex(0), timeouts = Mutex(0), stops = Mutex(0)
        let beating = Mutex(false), beats = Mutex(0)
    }

    private func job(_ spawner: FakeSpawner, timeout: Double? = nil, heartbeat seen: Seen? = nil) throws -> RunningJob {
        let process = try spawner.spawn(SpawnRequest(executable: "/bin/true", arguments: ["true"], environment: [:],
                                                      workingDirectory: "/", captureOutput: false))
        var beat: (@Sendable () async -> Void)?
        if let seen {
            beat = {
                seen.beats.withLock { $0 += 1 }
                seen.beating.withLock { $0 = true }
                try? await Task.sleep(seconds: 3600)  // until cancelled
                seen.beating.withLock { $0 = false }
            }
        }
        return RunningJob(process: .spawned(process, pumps: []), runID: "run-\(UUID().uuidString)", timeout: timeout, cgroup: nil,
                          heartbeat: beat, spawner: spawner, killGrace: 0.3, log: .console)
    }

    private func hooks(_ seen: Seen, onTimeout: @escaping @Sendable () -> Void = {}) -> RunningJob.Hooks {
        RunningJob.Hooks(exited: { seen.exits.withLock { $0 += 1 } },
                         timedOut: { seen.timeouts.withLock { $0 += 1 }; onTimeout() },
                         stopping: { seen.stops.withLock { $0 += 1 }; return "a test stops it" })
    }

    /// A job that exits by itself: its status, the run told once, its heartbeat ended with the exit, no teardown.
    func testAJobThatExitsEndsItsHeartbeatAndNeedsNoTeardown() async throws {
        let spawner = FakeSpawner { _ in .runsUntilSignalled }
        let seen = Seen()
        let job = try job(spawner, timeout: 3600, heartbeat: seen)
        let exited = Latch(), told = hooks(seen)
        let watching = Task { await job.watch(stopRequested: Latch(), exited: exited, hooks: told) }
        for _ in 0..<200 where !seen.beating.withLock({ $0 }) { try await Task.sleep(seconds: 0.01) }
        XCTAssertTrue(seen.beating.withLock { $0 }, "the heartbeat runs while the job runs")
        spawner.end(job.pid, .exited(3))
        let ending = await watching.value
        XCTAssertEqual(ending.end?.status, .exited(3))
        XCTAssertNil(ending.teardown)
        XCTAssertTrue(exited.isOpen)
        XCTAssertEqual(seen.exits.withLock { $0 }, 1)
        XCTAssertFalse(seen.beating.withLock { $0 }, "the heartbeat ended with the job (and the timer with the group)")
        XCTAssertEqual(seen.beats.withLock { $0 }, 1)
        XCTAssertEqual(spawner.signals(job.pid), [], "nothing was signalled")
    }

    /// A stop request: the run is asked why, then SIGTERM, then SIGKILL after the grace for a job that ignores
    /// SIGTERM; the watch ends once the teardown has.
    func testAStopRequestTearsTheJobDownAfterAskingTheRun() async throws {
        let spawner = FakeSpawner { _ in .ignoresSIGTERM }
        let seen = Seen()
        let job = try job(spawner)
        let stop = Latch(), told = hooks(seen)
        let watching = Task { await job.watch(stopRequested: stop, exited: Latch(), hooks: told) }
        stop.open()
        let ending = await watching.value
        XCTAssertEqual(seen.stops.withLock { $0 }, 1, "the run was asked before the teardown")
        XCTAssertEqual(spawner.signals(job.pid), [SIGTERM, SIGKILL])
        XCTAssertEqual(ending.teardown, .killed)
        XCTAssertEqual(ending.end?.status, .signaled(SIGKILL))
    }

    /// Past its timeout the run is told; the run's answer (a stop request) tears the job down.
    func testATimeoutTellsTheRunWhichStopsTheJob() async throws {
        let spawner = FakeSpawner { _ in .runsUntilSignalled }
        let seen = Seen()
        let job = try job(spawner, timeout: 0.1)
        let stop = Latch()
        let ending = await job.watch(stopRequested: stop, exited: Latch(), hooks: hooks(seen) { stop.open() })
        XCTAssertEqual(seen.timeouts.withLock { $0 }, 1)
        XCTAssertEqual(spawner.signals(job.pid), [SIGTERM])
        XCTAssertEqual(ending.teardown, .exitedAfter(signal: SIGTERM))
    }
}

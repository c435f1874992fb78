import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// `JobUsage` formatting, `wait4` figures from real children, and the usage metrics.
final class JobUsageTests: XCTestCase {
    private typealias P = ProcessTestSupport

    func testClosingLines() {
        let full = JobUsage(wallSeconds: 2.14, userCPUSeconds: 0.4, systemCPUSeconds: 0.1, peakMemoryBytes: 45_200_000)
        XCTAssertEqual(JobUsage.closingLine(pid: 123, ending: "exited with code 0", usage: full),
                       "job (pid 123) exited with code 0 after 2.1 s; CPU 0.40 s user + 0.10 s system; peak memory 45.2 MB")
        XCTAssertEqual(JobUsage.closingLine(pid: 9, ending: ExitStatus.signaled(SIGKILL).description,
                                            usage: JobUsage(wallSeconds: 125, userCPUSeconds: 61.234, systemCPUSeconds: 0, peakMemoryBytes: 12_345_678_901)),
                       "job (pid 9) was killed by signal 9 (SIGKILL) after 2 min 5 s; CPU 61.23 s user + 0.00 s system; peak memory 12.3 GB")
        XCTAssertEqual(JobUsage.closingLine(pid: 9, ending: "exited with code 1", usage: JobUsage(wallSeconds: 3725, userCPUSeconds: 1)),
                       "job (pid 9) exited with code 1 after 1 h 2 min; CPU 1.00 s user; peak memory unknown")
    }

    func testAnAdoptedJobSaysItsUsageIsUnknownInsteadOfZeros() {
        let line = JobUsage.closingLine(pid: 77, ending: nil, usage: .unknown)
        XCTAssertEqual(line, "job (pid 77) exited; its exit status and resource usage are unknown (it was adopted after a worker restart)")
        XCTAssertFalse(line.contains("0.00"))
        XCTAssertEqual(JobUsage.closingLine(pid: 77, ending: "exited with code 0", usage: .unknown),
                       "job (pid 77) exited with code 0; its resource usage is unknown")
        XCTAssertEqual(JobUsage.unknown.payload, [:])
    }

    func testAnotherSourceOverridesOnlyWhatItKnows() {
        let rusage = JobUsage(wallSeconds: 10, userCPUSeconds: 1, systemCPUSeconds: 2, peakMemoryBytes: 100)
        let cgroup = JobUsage(userCPUSeconds: 1.5, peakMemoryBytes: 300)
        XCTAssertEqual(rusage.overridden(by: cgroup), JobUsage(wallSeconds: 10, userCPUSeconds: 1.5, systemCPUSeconds: 2, peakMemoryBytes: 300))
        XCTAssertEqual(rusage.payload, ["wall_seconds": .double(10), "cpu_user_seconds": .double(1), "cpu_system_seconds": .double(2),
                                        "peak_memory_bytes": .int(100)])
    }

    func testWait4ReportsCPUMemoryAndWallTimeOfARealJob() async throws {
        // A child that keeps ~40 MB resident (a shell variable) and burns some CPU, under a parent shell that
        // waits for it: the parent's rusage includes its waited-for descendants.
        let script = #"sh -c 'x=$(head -c 40000000 /dev/zero | tr "\0" a); i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo ${#x}'; sleep 0.3"#
        let process = try P.shell(script)
        let output = Task.detached { P.readAll(process.stdout, timeout: 30) }
        let end = await ChildProcesses.shared.waitForEnd(process.pid)
        _ = P.readAll(process.stderr)
        let printed = await output.value
        XCTAssertEqual(printed, "40000000\n")
        XCTAssertEqual(end.status, .exited(0))
        let usage = end.usage
        XCTAssertGreaterThan(try XCTUnwrap(usage.wallSeconds), 0.3)
        XCTAssertLessThan(try XCTUnwrap(usage.wallSeconds), 30)
        XCTAssertGreaterThan(try XCTUnwrap(usage.userCPUSeconds) + (usage.systemCPUSeconds ?? 0), 0.01)
        let peak = try XCTUnwrap(usage.peakMemoryBytes)
        XCTAssertGreaterThan(peak, 40_000_000, "peak memory \(peak)")
        XCTAssertLessThan(peak, 400_000_000, "peak memory \(peak)")
    }

    func testASmallJobsPeakIsOnlyAnUpperBound() async throws {
        // Linux folds the spawner's peak RSS (this test process's) into a child's ru_maxrss: a tiny job cannot
        // be told apart from it, so its figure is reported as an upper bound, not as its own.
        let own = try XCTUnwrap(JobUsage.ownPeakBytes())
        XCTAssertGreaterThan(own, 1_000_000)
        let process = try P.shell("true", captureOutput: false)
        let end = await ChildProcesses.shared.waitForEnd(process.pid)
        XCTAssertTrue(end.usage.peakMemoryIsUpperBound, "\(end.usage)")
        XCTAssertTrue(JobUsage.closingLine(pid: process.pid, ending: "exited with code 0", usage: end.usage).contains("peak memory at most "))
        XCTAssertNil(end.usage.payload["peak_memory_bytes"])
        XCTAssertNotNil(end.usage.payload["peak_memory_bytes_at_most"])
        XCTAssertEqual(JobUsage.closingLine(pid: 1, ending: "exited with code 0",
                                            usage: JobUsage(wallSeconds: 1, userCPUSeconds: 0, systemCPUSeconds: 0, peakMemoryBytes: 38_000_000, peakMemoryIsUpperBound: true)),
                       "job (pid 1) exited with code 0 after 1.0 s; CPU 0.00 s user + 0.00 s system; peak memory at most 38.0 MB")
        // A source that knows the exact figure (a cgroup) replaces the bound.
        XCTAssertFalse(end.usage.overridden(by: JobUsage(peakMemoryBytes: 123)).peakMemoryIsUpperBound)
    }

    func testAnIdleJobUsesAlmostNoCPU() async throws {
        let process = try P.shell("sleep 0.5", captureOutput: false)
        let end = await ChildProcesses.shared.waitForEnd(process.pid)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(end.usage.wallSeconds), 0.45)
        XCTAssertLessThan(try XCTUnwrap(end.usage.userCPUSeconds), 0.3)
    }

    func testUsageMetrics() {
        let metrics = Metrics()
        metrics.runUsage(JobUsage(wallSeconds: 2, userCPUSeconds: 0.5, systemCPUSeconds: 0.25, peakMemoryBytes: 1))
        metrics.runUsage(JobUsage(wallSeconds: 400, userCPUSeconds: 1, systemCPUSeconds: 0))
        let text = metrics.render(lastHeartbeat: nil, lastPoll: nil)
        for line in [
            "# TYPE prefect_worker_run_duration_seconds histogram",
            "prefect_worker_run_duration_seconds_bucket{le=\"1\"} 0",
            "prefect_worker_run_duration_seconds_bucket{le=\"5\"} 1",
            "prefect_worker_run_duration_seconds_bucket{le=\"300\"} 1",
            "prefect_worker_run_duration_seconds_bucket{le=\"900\"} 2",
            "prefect_worker_run_duration_seconds_bucket{le=\"+Inf\"} 2",
            "prefect_worker_run_duration_seconds_sum 402.000",
            "prefect_worker_run_duration_seconds_count 2",
            "# TYPE prefect_worker_run_cpu_seconds_total counter",
            "prefect_worker_run_cpu_seconds_total{mode=\"user\"} 1.500",
            "prefect_worker_run_cpu_seconds_total{mode=\"system\"} 0.250",
        ] {
            XCTAssertTrue(text.contains(line + "\n"), "missing '\(line)' in:\n\(text)")
        }
    }
}

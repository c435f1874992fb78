import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// What /proc says about the processes of the tests' jobs. Read directly, independently of the worker's own
/// `ProcFS`, so a bug there cannot hide itself.
enum ProcScan {
    struct Stat: Sendable {
        var pid: pid_t
        var state: Character
        var ppid: pid_t
        var pgrp: pid_t
        var session: pid_t
    }

    /// Fields of `/proc/PID/stat` after the command name: state, ppid, pgrp, session.
    static func stat(_ pid: pid_t) -> Stat? {
        guard let text = E2E.readText("/proc/\(pid)/stat"), let paren = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: paren)...].split(separator: " ")
        guard fields.count > 3, let state = fields[0].first, let ppid = pid_t(fields[1]), let pgrp = pid_t(fields[2]),
              let session = pid_t(fields[3]) else { return nil }
        return Stat(pid: pid, state: state, ppid: ppid, pgrp: pgrp, session: session)
    }

    static func allPIDs() -> [pid_t] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { pid_t($0) }
    }

    /// True if the process's environment holds exactly `entry` (`NAME=value`).
    static func environment(of pid: pid_t, contains entry: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
        let needle = Array(entry.utf8)
        return data.split(separator: 0).contains { $0.elementsEqual(needle) }
    }

    /// Live (non-zombie) processes carrying `PREFECT__FLOW_RUN_ID=<runID>`: a job and its descendants.
    static func processes(ofRun runID: String) -> [Stat] {
        let marker = "PREFECT__FLOW_RUN_ID=" + runID
        return allPIDs().compactMap { pid in
            guard let stat = stat(pid), stat.state != "Z", environment(of: pid, contains: marker) else { return nil }
            return stat
        }
    }

    /// Zombie children of `parent`: exited, never reaped.
    static func zombieChildren(of parent: pid_t) -> [Stat] {
        allPIDs().compactMap { stat($0) }.filter { $0.ppid == parent && $0.state == "Z" }
    }

    static func describe(_ stats: [Stat]) -> String {
        stats.map { s -> String in
            let cmd = (E2E.readText("/proc/\(s.pid)/cmdline") ?? "").replacingOccurrences(of: "\0", with: " ")
            return "pid \(s.pid) ppid \(s.ppid) pgrp \(s.pgrp) sid \(s.session) \(s.state) [\(cmd.trimmingCharacters(in: .whitespaces))]"
        }.joined(separator: "; ")
    }
}

/// Base for the run-control tests: every worker gets its own `--state-dir` and short intervals, and the jobs
/// of the runs a test tracks are killed (by pid/pgid, found by their run id) before the workers are stopped.
class RunControlTestCase: E2ETestCase, @unchecked Sendable {
    private var trackedRuns: [String] = []

    /// Short intervals, so the tests are quick: poll and cancellation checks every 0.5 s.
    static let fastArguments = ["--query-seconds", "0.5", "--cancellation-poll-seconds", "0.5"]

    override func tearDownWithError() throws {
        // Jobs left behind (a failed test, or on purpose) are killed first, so the workers stop at once.
        for id in trackedRuns { killJobs(ofRun: id) }
        trackedRuns.removeAll()
        try super.tearDownWithError()
    }

    /// The run's job processes are killed in tearDown if still there.
    func track(_ ids: String...) { trackedRuns += ids }
    func track(_ ids: [String]) { trackedRuns += ids }

    /// SIGKILL to every process carrying the run's id (and to their process groups when they lead them).
    func killJobs(ofRun id: String) {
        for _ in 0..<3 {
            let stats = ProcScan.processes(ofRun: id)
            if stats.isEmpty { return }
            for s in stats {
                if s.pgrp == s.pid { kill(-s.pid, SIGKILL) }
                kill(s.pid, SIGKILL)
            }
            usleep(100_000)
        }
    }

    /// A fresh state directory (removed in tearDown).
    func stateDirectory() throws -> String { try temporaryDirectory("state") }

    /// `startWorker` with the short intervals, `--kill-grace-seconds` (2 s unless given) and `--state-dir`,
    /// plus `arguments`.
    @discardableResult
    func startRunControlWorker(pool: String, stateDir: String, name: String? = nil, killGrace: Double = 2,
                               arguments: [String] = []) throws -> WorkerProcess {
        try startWorker(pool: pool, name: name, arguments: Self.fastArguments
                        + ["--kill-grace-seconds", String(format: "%g", killGrace), "--state-dir", stateDir] + arguments)
    }

    /// `POST /flow_runs/{id}/set_state` with `{"state": {"type": TYPE}}` (no force): the orchestration result.
    @discardableResult
    func setState(_ id: String, _ type: String) async throws -> JSON {
        try await api.send("POST", "/flow_runs/\(TestAPI.path(id))/set_state", .object([
            "state": .object(["type": .string(type)]),
        ]))
    }

    /// A run of `deployment` SCHEDULED at `date` (in the future: a prefetching worker claims it early).
    func createScheduledRun(deployment: String, at date: Date) async throws -> String {
        try await api.send("POST", "/deployments/\(TestAPI.path(deployment))/create_flow_run", .object([
            "parameters": .object([:]),
            "state": .object([
                "type": "SCHEDULED",
                "state_details": .object(["scheduled_time": .string(Timestamp.format(date))]),
            ]),
        ]))["id"]!.asString!
    }

    /// Waits until the run's state type is one of `types`; returns the run.
    func waitForState(_ id: String, _ types: Set<String>, timeout: Double) async throws -> JSON {
        var last = "nothing read yet"
        return try await E2E.eventually(timeout: timeout, "flow run \(id) to be \(types.sorted()) (last: \(last))") {
            try checkWorkersAlive()
            let run = try await api.readFlowRun(id)
            last = run.stateSummary
            return types.contains(run.stateType ?? "") ? run : nil
        }
    }

    /// Waits until the run has an `infrastructure_pid` that is a live process carrying the run's id; returns it.
    func waitForJobPID(_ id: String, timeout: Double) async throws -> pid_t {
        var last = "nothing read yet"
        return try await E2E.eventually(timeout: timeout, "flow run \(id) to record a live infrastructure_pid (last: \(last))") {
            try checkWorkersAlive()
            let run = try await api.readFlowRun(id)
            last = "\(run.stateSummary), infrastructure_pid \(run["infrastructure_pid"]?.asString ?? "none")"
            guard let pid = run["infrastructure_pid"]?.asString.flatMap({ pid_t($0) }),
                  ProcScan.processes(ofRun: id).contains(where: { $0.pid == pid }) else { return nil }
            return pid
        }
    }

    /// Like `waitForFinalStates`, but polling every `interval` s (many runs: keep the test's own load on the
    /// server low) and saying, on timeout, how many runs are in which state.
    func waitForFinalStates(_ ids: [String], timeout: Double, interval: Double) async throws -> [String: JSON] {
        var summary = "nothing read yet"
        return try await E2E.eventually(timeout: timeout, interval: interval, "\(ids.count) runs to finish (states: \(summary))") {
            try checkWorkersAlive()
            var runs: [String: JSON] = [:]
            for chunk in stride(from: 0, to: ids.count, by: 100) {
                for run in try await api.readFlowRuns(Array(ids[chunk..<min(chunk + 100, ids.count)])) {
                    runs[run["id"]?.asString ?? ""] = run
                }
            }
            let counts = Dictionary(grouping: ids, by: { runs[$0]?.stateType ?? "not found" }).mapValues(\.count)
            summary = counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            return ids.allSatisfy({ TestAPI.terminalTypes.contains(runs[$0]?.stateType ?? "") }) ? runs : nil
        }
    }

    /// Waits until no live process carries the run's id.
    func waitForNoJobProcesses(_ id: String, timeout: Double) async -> Bool {
        (try? await E2E.eventually(timeout: timeout, "no processes of run \(id)") {
            ProcScan.processes(ofRun: id).isEmpty ? true : nil
        }) ?? false
    }

    /// SIGKILL to a worker this test started; it no longer counts as serving. Returns once it has exited.
    func killWorker(_ worker: WorkerProcess) async {
        worker.isServing = false
        kill(worker.pid, SIGKILL)
        let code = await worker.waitForExit(timeout: 10)
        XCTAssertEqual(code, 128 + SIGKILL, "worker \(worker.label) should have died of SIGKILL")
    }

    /// The state types a run went through, oldest first.
    func stateHistory(_ id: String) async throws -> [String] {
        try await api.states(id).compactMap { $0["type"]?.asString }
    }

    /// Waits until a line of the worker's log mentions the run and contains `text`; returns that line.
    func waitForLogLine(_ worker: WorkerProcess, run id: String, containing text: String, timeout: Double) async -> String? {
        try? await E2E.eventually(timeout: timeout, interval: 0.1, "a log line about \(id) containing '\(text)'") { () -> String? in
            worker.log.split(separator: "\n").first { $0.contains(id) && $0.contains(text) }.map(String.init)
        }
    }

    /// A worker log's lines that mention the run.
    static func lines(of log: String, mentioning id: String) -> String {
        log.split(separator: "\n").filter { $0.contains(id) }.suffix(20).joined(separator: "\n")
    }
}

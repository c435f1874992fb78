import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker

/// Which worker ran a parity scenario: Prefect's own `process` worker (the oracle) or ours.
enum ParitySide: String, CaseIterable, Sendable {
    case reference = "Prefect's worker"
    case ours = "prefect-worker"

    var slug: String { self == .reference ? "ref" : "ours" }
}

/// One Prefect worker and one prefect-worker, each serving its own pool, started once for all of ParityTests
/// (starting Prefect's worker costs seconds; the scenarios only need a fresh deployment each).
final class ParityFixture: @unchecked Sendable {
    // Created and torn down by ParityTests' setUp and class tearDown, which XCTest runs one at a time.
    nonisolated(unsafe) private static var current: ParityFixture?
    nonisolated(unsafe) private static var startError: Error?

    let pools: [ParitySide: String]
    let workers: [ParitySide: WorkerProcess]
    /// Marker directories, the prefect-worker's state directory: removed at class teardown.
    let root: String
    private let lock = NSLock()
    private var runs: [String] = []

    private init(pools: [ParitySide: String], workers: [ParitySide: WorkerProcess], root: String) {
        self.pools = pools
        self.workers = workers
        self.root = root
    }

    /// The shared fixture, started by the first test that asks; a failed start fails every later test at once.
    static func shared(env: E2EEnvironment, api: TestAPI) async throws -> ParityFixture {
        if let current { return current }
        if let startError { throw startError }
        do {
            let fixture = try await start(env: env, api: api)
            current = fixture
            return fixture
        } catch {
            startError = error
            throw error
        }
    }

    private static func start(env: E2EEnvironment, api: TestAPI) async throws -> ParityFixture {
        let root = try E2E.makeTemporaryDirectory("parity")
        var pools: [ParitySide: String] = [:]
        for side in ParitySide.allCases {
            let pool = E2E.uniqueName("parity-\(side.slug)")
            try await api.createPool(pool, type: "process", baseJobTemplate: TestAPI.defaultProcessTemplate)
            pools[side] = pool
        }
        let state = root + "/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        var workers: [ParitySide: WorkerProcess] = [:]
        workers[.ours] = try WorkerProcess.start(
            env: env, arguments: ["start", "--pool", pools[.ours]!, "--name", E2E.uniqueName("parity-ours-worker"),
                                  "--state-dir", state] + RunControlTestCase.fastArguments,
            label: "prefect-worker (parity)", apiURL: env.apiURL.absoluteString, extraEnvironment: [:])
        workers[.reference] = try startReference(env: env, pool: pools[.reference]!, name: E2E.uniqueName("parity-ref-worker"))
        let fixture = ParityFixture(pools: pools, workers: workers, root: root)
        // Both must have registered with their pools before the first run, or the first scenario's timing
        // would include Prefect's start-up (several seconds).
        for side in ParitySide.allCases {
            _ = try await E2E.eventually(timeout: 60, "\(side.rawValue) to register on pool \(pools[side]!)") { () -> Bool? in
                try fixture.checkAlive()
                return try await api.workers(pool: pools[side]!).isEmpty ? nil : true
            }
        }
        return fixture
    }

    /// `prefect worker start --type process` from the test virtualenv, with WorkerProcess's environment (its own
    /// PREFECT_HOME, PREFECT_API_URL = the test server, PREFECT_WORKER_QUERY_SECONDS=0.5, which Prefect reads too).
    /// Foundation starts it as the leader of its own process group, which `stopReference` signals.
    static func startReference(env: E2EEnvironment, pool: String, name: String,
                               environment: [String: String] = [:]) throws -> WorkerProcess {
        // Through exec_unblocked.py: children of the test process inherit its blocked signal mask.
        try WorkerProcess.start(env: env, arguments: ["worker", "start", "--pool", pool, "--type", "process", "--name", name],
                                label: "Prefect's worker \(name)", apiURL: env.apiURL.absoluteString,
                                extraEnvironment: environment,
                                launcher: [env.venv + "/bin/python", env.fixtures + "/parity/exec_unblocked.py"],
                                executable: env.venv + "/bin/prefect")
    }

    /// Stops a Prefect worker as Ctrl-C or systemd's control-group stop would: SIGTERM to its process group
    /// (which holds the jobs it started without a session of their own), up to `grace` s, then SIGKILL to the group.
    /// Returns the exit code, or nil if it had to be killed.
    @discardableResult
    static func stopReference(_ worker: WorkerProcess, grace: Double) -> Int32? {
        worker.isServing = false
        guard worker.isRunning else { return nil }
        kill(-worker.pid, SIGTERM)
        let deadline = Date().addingTimeInterval(grace)
        while worker.isRunning, Date() < deadline { usleep(50_000) }
        let exited = !worker.isRunning
        kill(-worker.pid, SIGKILL)
        let hard = Date().addingTimeInterval(5)
        while worker.isRunning, Date() < hard { usleep(50_000) }
        return exited ? 0 : nil
    }

    /// Throws when a shared worker has died: waiting for runs is then pointless.
    func checkAlive() throws {
        for (side, worker) in workers where !worker.isRunning {
            let tail = worker.log.split(separator: "\n").suffix(15).joined(separator: "\n")
            throw E2ETestCase.WorkerDied(description: "\(side.rawValue) (pid \(worker.pid)) exited with \(worker.exitDescription); last log lines:\n\(tail)")
        }
    }

    /// The run's job processes are killed at class teardown if still there.
    func track(_ id: String) { lock.withLock { runs.append(id) } }

    /// Kills leftover jobs, stops both workers (ours by SIGTERM to its pid, Prefect's by its group), removes files.
    static func tearDownShared(printLogs: Bool) {
        startError = nil
        guard let fixture = current else { return }
        current = nil
        for id in fixture.lock.withLock({ fixture.runs }) {
            for s in ProcScan.processes(ofRun: id) {
                if s.pgrp == s.pid { kill(-s.pid, SIGKILL) }
                kill(s.pid, SIGKILL)
            }
        }
        fixture.workers[.ours]?.stop(grace: 15)
        if let reference = fixture.workers[.reference] { stopReference(reference, grace: 10) }
        for (side, worker) in fixture.workers {
            if printLogs {
                // Kept whole for the post-mortem, beside the base class's saved worker logs.
                let keep = (NSTemporaryDirectory() as NSString).appendingPathComponent("e2e-failed-worker-logs")
                let saved = keep + "/parity-\(side.slug)-\(worker.pid).log"
                try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
                try? FileManager.default.removeItem(atPath: saved)
                try? FileManager.default.copyItem(atPath: worker.logPath, toPath: saved)
                print("----- \(side.rawValue) log (pid \(worker.pid)), saved as \(saved) -----\n\(worker.log.suffix(6_000))\n----- end -----")
            }
            worker.cleanUp()
        }
        try? FileManager.default.removeItem(atPath: fixture.root)
    }
}

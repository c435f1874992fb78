import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Which worker is measured, and how it is started: the same pool type, the same API URL, and the same
/// poll interval and prefetch (as PREFECT_WORKER_QUERY_SECONDS / PREFECT_WORKER_PREFETCH_SECONDS) for both.
enum WorkerKind: String, Sendable, CaseIterable {
    case swift, python
    /// Ours again, built with `--static-swift-stdlib` (the release binary): start-up, idle memory and the
    /// command burst only (its memory is what differs).
    case swiftStatic = "swift-static"

    var title: String {
        switch self {
        case .swift: "prefect-worker (Swift)"
        case .python: "prefect worker (Python)"
        case .swiftStatic: "prefect-worker (static build)"
        }
    }

    var isOurs: Bool { self != .python }
}

struct WorkerLauncher: Sendable {
    let apiURL: String
    let workerBinary: String
    /// The static build of ours (`--static-worker`), measured as `.swiftStatic` when given.
    var staticWorkerBinary: String?
    let venv: String
    let work: String
    let querySeconds: Double
    let prefetchSeconds: Double

    /// The bench's environment without any PREFECT_* setting, with the venv first on PATH (engine runs of our
    /// worker need its `python`), plus the shared settings.
    func environment(for kind: WorkerKind) -> [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PREFECT_") }
        env["PATH"] = "\(venv)/bin:" + (env["PATH"] ?? "/usr/bin:/bin")
        env["PREFECT_API_URL"] = apiURL
        // Marks the bench's workers (and, inherited, their jobs) so scripts/bench can tell a pid it recorded from
        // a reused one before it signals it.
        env["BENCH_WORK_DIR"] = work
        env["PREFECT_WORKER_QUERY_SECONDS"] = String(querySeconds)
        env["PREFECT_WORKER_PREFETCH_SECONDS"] = String(prefetchSeconds)
        if kind == .python {
            // Its own profile directory, so no ~/.prefect profile changes what is measured.
            env["PREFECT_HOME"] = "\(work)/python-home"
        }
        return env
    }

    func commandLine(_ kind: WorkerKind, pool: String, name: String) -> (String, [String]) {
        switch kind {
        case .swift, .swiftStatic:
            return (kind == .swift ? workerBinary : staticWorkerBinary ?? workerBinary, ["start", "--pool", pool, "--name", name, "--state-dir", "\(work)/state/\(name)",
                                   "--drain-timeout", "10", "--kill-grace-seconds", "2"])
        case .python:
            return ("\(venv)/bin/prefect", ["worker", "start", "--pool", pool, "--type", "process", "--name", name])
        }
    }

    func start(_ kind: WorkerKind, pool: String, name: String) throws -> pid_t {
        let (program, arguments) = commandLine(kind, pool: pool, name: name)
        try FileManager.default.createDirectory(atPath: "\(work)/logs", withIntermediateDirectories: true)
        return try Launcher.shared.spawn(program, arguments, environment: environment(for: kind),
                                         log: "\(work)/logs/\(name).log", label: name)
    }

    /// Ours exits at once when idle and drains (then stops jobs) otherwise; Prefect's keeps running after the
    /// first SIGTERM and SIGKILLs itself on the second.
    func stop(_ kind: WorkerKind, _ pid: pid_t) async {
        await Launcher.shared.stop(pid, grace: kind.isOurs ? 15 : 3)
    }

    func log(_ name: String) -> String { "\(work)/logs/\(name).log" }

    /// The last lines of a worker's log, for error messages.
    func logTail(_ name: String, lines: Int = 5) -> String {
        let text = (try? String(contentsOfFile: log(name), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: " | ")
    }
}

extension BenchAPI {
    /// Polls the pool's workers every 50 ms until `names` are all ONLINE; false after `bound` s or when a
    /// worker has exited.
    func waitOnline(pool: String, names: [String], pids: [pid_t], bound: Double) async -> Bool {
        let deadline = Clock.now + bound
        while Clock.now < deadline {
            let tick = Clock.now
            if let statuses = try? await workers(pool: pool), names.allSatisfy({ statuses[$0] == "ONLINE" }) { return true }
            if pids.contains(where: { !Launcher.shared.isRunning($0) }) { return false }
            await Clock.sleep(tick + 0.05 - Clock.now)
        }
        return false
    }
}

/// Samples VmRSS of some processes every 100 ms until cancelled; the result is the peak of each.
func sampleRSS(_ pids: [pid_t], bound: Double) -> Task<(peaks: [Int], samples: Int), Never> {
    Task {
        var peaks = [Int](repeating: 0, count: pids.count)
        var samples = 0
        let deadline = Clock.now + bound
        while !Task.isCancelled, Clock.now < deadline {
            let tick = Clock.now
            for (i, pid) in pids.enumerated() {
                peaks[i] = max(peaks[i], Proc.status(pid)["VmRSS"] ?? 0)
            }
            samples += 1
            await Clock.sleep(tick + 0.1 - Clock.now)
        }
        return (peaks, samples)
    }
}

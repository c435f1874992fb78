import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One run of the real `prefect-worker` binary, with its stdout and stderr in a log file the test reads.
/// Only the pid this object spawned is ever signalled.
final class WorkerProcess: @unchecked Sendable {
    let label: String
    let logPath: String
    private let process: Process
    private let logHandle: FileHandle
    private let directory: String

    var pid: Int32 { process.processIdentifier }
    /// Set for workers meant to keep running: their death fails the waits early.
    var isServing = false

    private init(label: String, process: Process, logHandle: FileHandle, logPath: String, directory: String) {
        self.label = label
        self.process = process
        self.logHandle = logHandle
        self.logPath = logPath
        self.directory = directory
    }

    /// Starts the binary. The environment is the test's own without any PREFECT_* variable, plus:
    /// PREFECT_API_URL (unless nil), the virtualenv's bin/ first on PATH, a private PREFECT_HOME and TMPDIR,
    /// PREFECT_WORKER_QUERY_SECONDS=0.5, PREFECT_WORKER_HEARTBEAT_SECONDS=2 (less the names in `unsetting`, for a
    /// worker at its own defaults), then `extraEnvironment`.
    /// `launcher`, when given, is a command that ends by exec'ing the worker binary and `arguments` appended to it.
    /// `executable` replaces the worker binary (Prefect's own `prefect` CLI, the reference in the parity tests).
    static func start(env: E2EEnvironment, arguments: [String], label: String, apiURL: String?,
                      extraEnvironment: [String: String], unsetting: Set<String> = [], launcher: [String] = [],
                      executable: String? = nil) throws -> WorkerProcess {
        let directory = try E2E.makeTemporaryDirectory("worker")
        let home = directory + "/prefect-home"
        let tmp = directory + "/tmp"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: tmp, withIntermediateDirectories: true)
        let logPath = directory + "/worker.log"
        guard FileManager.default.createFile(atPath: logPath, contents: nil),
              let handle = FileHandle(forWritingAtPath: logPath) else {
            throw E2E.Timeout(description: "cannot create worker log \(logPath)")
        }

        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PREFECT_") }
        environment["PATH"] = env.venv + "/bin:" + (environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin")
        environment["VIRTUAL_ENV"] = env.venv
        environment["PREFECT_HOME"] = home
        environment["TMPDIR"] = tmp
        environment["PREFECT_WORKER_QUERY_SECONDS"] = "0.5"
        environment["PREFECT_WORKER_HEARTBEAT_SECONDS"] = "2"
        for name in unsetting { environment[name] = nil }
        if let apiURL { environment["PREFECT_API_URL"] = apiURL }
        environment.merge(extraEnvironment) { $1 }

        let process = Process()
        if let program = launcher.first {
            process.executableURL = URL(fileURLWithPath: program)
            process.arguments = launcher.dropFirst() + [executable ?? env.worker] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: executable ?? env.worker)
            process.arguments = arguments
        }
        process.environment = environment
        process.currentDirectoryURL = URL(fileURLWithPath: directory)
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return WorkerProcess(label: label, process: process, logHandle: handle, logPath: logPath, directory: directory)
    }

    /// The worker's TMPDIR: where it creates parameter files and temporary working directories.
    var temporaryDirectory: String { directory + "/tmp" }

    /// Everything the worker wrote so far (its log lines and streamed job output).
    var log: String { E2E.readText(logPath) ?? "" }

    var isRunning: Bool { process.isRunning }

    /// The exit code (or 128 + signal), or nil if it is still running after `timeout` seconds.
    func waitForExit(timeout: Double) async -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() >= deadline { return nil }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        // Foundation's Process can report !isRunning a moment before it has stored the termination status
        // (read as 0 meanwhile); waitUntilExit returns once the status is set.
        let process = self.process
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async {
                process.waitUntilExit()
                done.resume()
            }
        }
        return exitCode
    }

    /// "code N" or "signal N (crashed)", once it has exited.
    var exitDescription: String {
        if process.isRunning { return "still running" }
        return process.terminationReason == .uncaughtSignal ? "signal \(process.terminationStatus)" : "exit code \(process.terminationStatus)"
    }

    private var exitCode: Int32 {
        process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }

    /// Waits until the log contains `text`; returns the log, or nil after `timeout` seconds.
    func waitForLog(containing text: String, timeout: Double) async -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let current = log
            if current.contains(text) { return current }
            if Date() >= deadline { return nil }
            try? await Task.sleep(nanoseconds: 100_000_000)
        }
    }

    /// SIGTERM to the spawned pid, up to `grace` seconds to exit, then SIGKILL to that pid. Returns the exit code.
    @discardableResult
    func stop(grace: Double = 10) -> Int32 {
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(grace)
            while process.isRunning, Date() < deadline { usleep(50_000) }
            if process.isRunning {
                print("worker \(label) (pid \(pid)) did not exit \(grace) s after SIGTERM; sending SIGKILL")
                kill(process.processIdentifier, SIGKILL)
                let hardDeadline = Date().addingTimeInterval(5)
                while process.isRunning, Date() < hardDeadline { usleep(50_000) }
            }
        }
        return process.isRunning ? -1 : exitCode
    }

    /// Closes the log and removes the worker's directory (call after `stop`).
    func cleanUp() {
        try? logHandle.close()
        try? FileManager.default.removeItem(atPath: directory)
    }
}

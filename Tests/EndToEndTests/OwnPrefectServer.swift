import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A Prefect server of one test's own, started and stopped through `scripts/prefect-server` (SQLite, its own
/// PREFECT_HOME, in a folder of its own), on a fixed port so that starting it again is a restart: same URL,
/// same database. Only the server this object started is ever stopped (the script stops it by its pid).
final class OwnPrefectServer: @unchecked Sendable {
    /// The folder holding the server's home, database, log and pid; removed by `remove()`.
    let directory: String
    let port: UInt16
    var apiURL: URL { URL(string: "http://127.0.0.1:\(port)/api")! }
    private let venv: String

    struct Failed: Error, CustomStringConvertible {
        var description: String
    }

    /// `scripts/prefect-server`, found from this file's place in the repository.
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("scripts/prefect-server").path

    init(venv: String) throws {
        self.venv = venv
        directory = try E2E.makeTemporaryDirectory("own-server")
        port = E2E.closedLocalPort()
    }

    /// Starts the server (again) and returns once its /health answers; seconds it took.
    @discardableResult
    func start() async throws -> Double {
        let began = Date()
        let (code, output) = try await run("start")
        guard code == 0 else { throw Failed(description: "scripts/prefect-server start \(directory) \(port) failed (\(code)): \(output)") }
        return Date().timeIntervalSince(began)
    }

    /// Stops it (SIGTERM to its process group, SIGKILL after 10 s) and returns once it is gone.
    func stop() async throws {
        let (code, output) = try await run("stop")
        guard code == 0 else { throw Failed(description: "scripts/prefect-server stop \(directory) failed (\(code)): \(output)") }
    }

    /// Stops it if it runs, and removes its folder (blocking: for tearDown).
    func remove() {
        _ = try? runBlocking("stop")
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The end of the server's log, for failure messages.
    var logTail: String { String((E2E.readText(directory + "/server.log") ?? "").suffix(3000)) }

    private func run(_ command: String) async throws -> (Int32, String) {
        try await Task.detached { try self.runBlocking(command) }.value
    }

    /// Runs the script and waits for it (at most `timeout` s). Spawned and reaped with posix_spawn and waitpid,
    /// not with Foundation's Process: the server it leaves behind would inherit Process's end-of-child socket,
    /// and Process would never see the script exit.
    private func runBlocking(_ command: String, timeout: Double = 240) throws -> (Int32, String) {
        let outPath = directory + "/script-\(command).out"
        let out = open(outPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw Failed(description: "cannot create \(outPath): \(String(cString: strerror(errno)))") }
        defer { close(out) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, out, 1)
        posix_spawn_file_actions_adddup2(&actions, out, 2)
        let argv = [Self.script, command, directory] + (command == "start" ? [String(port)] : [])
        var environment = ProcessInfo.processInfo.environment
        environment["PREFECT_WORKER_VENV"] = venv
        var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        var cEnvironment: [UnsafeMutablePointer<CChar>?] = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in cArguments + cEnvironment { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, Self.script, &actions, nil, &cArguments, &cEnvironment)
        guard spawned == 0 else { throw Failed(description: "cannot run \(Self.script): \(String(cString: strerror(spawned)))") }
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while true {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { break }
            if reaped < 0, errno != EINTR { throw Failed(description: "waitpid(\(pid)) for \(Self.script): \(String(cString: strerror(errno)))") }
            if Date() >= deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                throw Failed(description: "\(Self.script) \(command) \(directory) did not finish within \(Int(timeout)) s: \(E2E.readText(outPath) ?? "")")
            }
            usleep(50_000)
        }
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (code, E2E.readText(outPath) ?? "")
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
import XCTest

/// The podman CLI as the container tests use it: always `--runtime runc` (crun refuses hosts with hybrid
/// cgroups), output captured in files (no pipe to fill up), a timeout after which the podman process is killed.
enum Podman {
    struct Result: Sendable {
        var code: Int32
        var output: String
        var error: String
    }

    struct Failed: Error, CustomStringConvertible {
        var description: String
    }

    static let runtimeArguments = ["--runtime", "runc"]

    /// Runs `podman --runtime runc ARGS`; returns its exit code and output, or throws if it outlives `timeout`.
    /// Spawned and reaped here with posix_spawn and waitpid, not with Foundation's Process: `podman run`
    /// leaves conmon behind, which inherits Process's end-of-child socket, so Process would never see podman exit.
    static func run(_ arguments: [String], timeout: Double = 120) throws -> Result {
        let directory = try E2E.makeTemporaryDirectory("podman")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let outPath = directory + "/out", errPath = directory + "/err"
        let out = open(outPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let err = open(errPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        defer { close(out); close(err) }
        guard out >= 0, err >= 0 else { throw Failed(description: "cannot create output files in \(directory)") }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, out, 1)
        posix_spawn_file_actions_adddup2(&actions, err, 2)
        let argv = ["podman"] + runtimeArguments + arguments
        var cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for pointer in cArguments { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawnp(&pid, "podman", &actions, nil, &cArguments, environ)
        guard spawned == 0 else {
            throw Failed(description: "cannot start podman: \(String(cString: strerror(spawned)))")
        }
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        while true {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { break }
            if reaped < 0, errno != EINTR { throw Failed(description: "waitpid(\(pid)) for podman: \(String(cString: strerror(errno)))") }
            if Date() >= deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                throw Failed(description: "podman \(arguments.joined(separator: " ")) did not finish within \(Int(timeout)) s; stderr: \(E2E.readText(errPath) ?? "")")
            }
            usleep(20_000)
        }
        // The exit code, or 128 + the signal that ended it.
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return Result(code: code, output: E2E.readText(outPath) ?? "", error: E2E.readText(errPath) ?? "")
    }

    /// Runs podman and returns its stdout (trimmed); a non-zero exit throws with its stderr.
    @discardableResult
    static func check(_ arguments: [String], timeout: Double = 120) throws -> String {
        let result = try run(arguments, timeout: timeout)
        guard result.code == 0 else {
            throw Failed(description: "podman \(arguments.joined(separator: " ")) exited with \(result.code): \(result.error.suffix(4000))")
        }
        return result.output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Why no OCI engine can run here, or nil when podman works.
    static func unavailableReason() -> String? {
        guard let result = try? run(["info", "--format", "{{.Host.OCIRuntime.Name}}"], timeout: 60) else {
            return "podman is not installed or does not answer (scripts/setup installs podman and runc as root)"
        }
        guard result.code == 0 else {
            return "podman cannot run containers here: \(result.error.split(separator: "\n").last ?? "")"
        }
        return nil
    }

    /// The container's exit code, from `podman inspect`.
    static func exitCode(_ container: String) throws -> Int32? {
        Int32(try check(["inspect", "--format", "{{.State.ExitCode}}", container]))
    }

    /// Whether the container is running.
    static func isRunning(_ container: String) -> Bool {
        (try? check(["inspect", "--format", "{{.State.Running}}", container])) == "true"
    }

    /// The container's log (stdout and stderr).
    static func logs(_ container: String) -> String {
        guard let result = try? run(["logs", container], timeout: 30) else { return "" }
        return result.output + result.error
    }

    /// The host pid of the container's first process.
    static func hostPID(_ container: String) throws -> pid_t? {
        pid_t(try check(["inspect", "--format", "{{.State.Pid}}", container]))
    }

    /// The image's size in bytes.
    static func imageSize(_ image: String) throws -> Int? {
        Int(try check(["image", "inspect", "--format", "{{.Size}}", image]))
    }
}

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
    static func run(_ arguments: [String], timeout: Double = 120) throws -> Result {
        let directory = try E2E.makeTemporaryDirectory("podman")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let outPath = directory + "/out", errPath = directory + "/err"
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        guard let out = FileHandle(forWritingAtPath: outPath), let err = FileHandle(forWritingAtPath: errPath) else {
            throw Failed(description: "cannot create output files in \(directory)")
        }
        defer { try? out.close(); try? err.close() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["podman"] + runtimeArguments + arguments
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(50_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            throw Failed(description: "podman \(arguments.joined(separator: " ")) did not finish within \(Int(timeout)) s; stderr: \(E2E.readText(errPath) ?? "")")
        }
        return Result(code: process.terminationStatus, output: E2E.readText(outPath) ?? "", error: E2E.readText(errPath) ?? "")
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

import Foundation
import Synchronization
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// Helpers for tests that start real processes. Every process is started with `ChildProcesses.shared`
/// (whose reaper waits for *any* child, so tests must not use Foundation's `Process`).
enum ProcessTestSupport {
    static let sh = "/bin/sh"
    static let sleep = "/bin/sleep"

    static func request(_ executable: String, _ arguments: [String], environment: [String: String] = ["PATH": "/usr/bin:/bin"],
                        workingDirectory: String = "/", captureOutput: Bool = false) -> SpawnRequest {
        var request = SpawnRequest(executable: executable, arguments: [executable] + arguments, environment: environment,
                                   workingDirectory: workingDirectory, captureOutput: captureOutput)
        request.cgroupFD = spawnCgroupFD.withLock { $0 }
        return request
    }

    /// Set by `CgroupSpawnTests`: every request then starts its child in that cgroup (clone3), so the same
    /// tests check both ways of spawning.
    static let spawnCgroupFD = Mutex<Int32?>(nil)

    /// Starts `sh -c script`.
    static func shell(_ script: String, environment: [String: String] = ["PATH": "/usr/bin:/bin"], workingDirectory: String = "/",
                      captureOutput: Bool = true) throws -> SpawnedProcess {
        try ChildProcesses.shared.spawn(request(sh, ["-c", script], environment: environment, workingDirectory: workingDirectory,
                                                captureOutput: captureOutput))
    }

    /// Reads `fd` to end of file, then closes it; fails (returns nil) after `timeout` seconds.
    static func readAll(_ fd: Int32?, timeout: Double = 5) -> String? {
        guard let fd else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&pfd, 1, Int32(remaining * 1000) + 1)
            if ready < 0 { if errno == EINTR { continue }; return nil }
            if ready == 0 { continue }
            let n = read(fd, &buffer, buffer.count)
            if n > 0 { bytes.append(contentsOf: buffer[0..<n]); continue }
            if n == 0 { return String(decoding: bytes, as: UTF8.self) }
            if errno != EINTR && errno != EAGAIN { return nil }
        }
    }

    /// Reads one line (without the newline) from `fd`, leaving it open.
    static func readLine(_ fd: Int32, timeout: Double = 5) -> String? {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 100) >= 0 || errno == EINTR else { return nil }
            if pfd.revents == 0 { continue }
            let n = read(fd, &byte, 1)
            if n <= 0 { return nil }
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
        return nil
    }

    /// Descriptor numbers open in process `pid` (or in this process for "self").
    static func openFDs(_ pid: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).sorted { Int($0)! < Int($1)! }
    }

    /// The bytes of a file read with read(2) (/proc files report a size of 0).
    static func readFile(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 { bytes.append(contentsOf: buffer[0..<n]) } else if n == 0 { return bytes } else if errno != EINTR { return nil }
        }
    }

    /// posix_spawn returns as soon as the child has released our memory, which is before the kernel has
    /// finished exec (its /proc cmdline and environ are still empty then). Waits until exec is done.
    static func waitForExec(_ pid: pid_t, timeout: Double = 5) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let cmdline = readFile("/proc/\(pid)/cmdline"), !cmdline.isEmpty { return true }
            usleep(2_000)
        }
        return false
    }

    static func link(_ path: String) -> String? {
        try? FileManager.default.destinationOfSymbolicLink(atPath: path)
    }

    /// A line of `/proc/<pid>/status`, e.g. `SigIgn`.
    static func status(_ pid: pid_t, _ key: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(key + ":") {
            return line.dropFirst(key.count + 1).trimmingCharacters(in: .whitespaces)
        }
        return nil
    }

    /// Fields of `/proc/<pid>/stat` after the command name: [state, ppid, pgrp, session, ...].
    static func stat(_ pid: pid_t) -> [String]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        return text[text.index(after: close)...].split(separator: " ").map(String.init)
    }

    /// True once `/proc/<pid>/status` shows `signal` as ignored.
    static func waitUntilIgnoring(_ pid: pid_t, _ signal: Int32, timeout: Double = 5) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let mask = status(pid, "SigIgn"), let bits = UInt64(mask, radix: 16), bits & (1 << UInt64(signal - 1)) != 0 {
                return true
            }
            usleep(10_000)
        }
        return false
    }

    /// A process that is gone or a zombie (already dead, waiting for its parent).
    static func isDead(_ pid: pid_t) -> Bool {
        guard let fields = stat(pid) else { return true }
        return fields.first == "Z" || fields.first == "X"
    }

    static func waitUntilDead(_ pid: pid_t, timeout: Double = 5) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if isDead(pid) { return true }
            usleep(10_000)
        }
        return isDead(pid)
    }

    /// A fresh directory under /tmp (resolved, so it compares equal to /proc's view).
    static func makeTemporaryDirectory() throws -> String {
        var template = Array("/tmp/prefect-worker-unit-XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw NSError(domain: "mkdtemp", code: Int(errno))
        }
        let path = String(cString: result)
        return realpath(path)
    }

    static func realpath(_ path: String) -> String {
        guard let resolved = Glibc.realpath(path, nil) else { return path }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, mode)
    }

    /// Kills a leftover test process and reaps it.
    static func killAndReap(_ pid: pid_t) async {
        kill(pid, SIGKILL)
        _ = await ChildProcesses.shared.waitForExit(pid)
    }
}

/// Set once, read from any task: "has this child exited?" for `Teardown.run`.
final class ExitFlag: Sendable {
    private let state = Mutex<ExitStatus?>(nil)
    /// Open once the status is set: what a teardown waits on.
    let latch = Latch()
    func set(_ status: ExitStatus) {
        state.withLock { $0 = status }
        latch.open()
    }
    var status: ExitStatus? { state.withLock { $0 } }
    var isSet: Bool { status != nil }
}


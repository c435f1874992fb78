import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The processes the bench starts (workers): each leads its own process group, so Ctrl-C in the terminal
/// reaches only the bench, which then stops them. The bench is a child subreaper, so the jobs a worker
/// leaves behind are re-parented to it and can be found and stopped too. Nothing is ever signalled by name:
/// only pids started here, their process groups and their descendants.
final class Launcher: Sendable {
    static let shared = Launcher()

    private struct Table {
        var live: [pid_t: String] = [:]   // pid → label, until reaped
        var exits: [pid_t: Int32] = [:]  // raw wait status of reaped children
        var pidFile: String?
    }
    private let table = Mutex(Table())

    /// Every started pid is also appended to this file, so the calling script can stop them if the bench
    /// itself is killed.
    func recordPIDs(in path: String) {
        table.withLock { $0.pidFile = path }
    }

    /// Starts `executable` in a new process group with stdin from /dev/null and stdout+stderr appended to `log`.
    func spawn(_ executable: String, _ arguments: [String], environment: [String: String], log: String, label: String) throws -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The bench blocks SIGINT/SIGTERM for its signal thread; children must not inherit that.
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }

        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw BenchError("cannot start \(executable): \(String(cString: strerror(rc)))") }
        let file = table.withLock { table -> String? in
            table.live[pid] = label
            return table.pidFile
        }
        if let file, let handle = FileHandle(forWritingAtPath: file) ?? (FileManager.default.createFile(atPath: file, contents: nil) ? FileHandle(forWritingAtPath: file) : nil) {
            handle.seekToEndOfFile()
            handle.write(Data("\(pid)\n".utf8))
            try? handle.close()
        }
        return pid
    }

    /// Reaps every exited child (ours, and orphans re-parented to us), without blocking.
    func reap() {
        table.withLock { table in
            while true {
                var status: Int32 = 0
                let pid = waitpid(-1, &status, WNOHANG)
                if pid <= 0 { break }
                if table.live.removeValue(forKey: pid) != nil { table.exits[pid] = status }
            }
        }
    }

    func isRunning(_ pid: pid_t) -> Bool {
        reap()
        return table.withLock { $0.live[pid] != nil }
    }

    /// How a started process ended ("exit 0", "signal 9"), once it has.
    func exitDescription(_ pid: pid_t) -> String? {
        reap()
        guard let status = table.withLock({ $0.exits[pid] }) else { return nil }
        let signal = status & 0x7f
        return signal == 0 ? "exit \((status >> 8) & 0xff)" : "signal \(signal)"
    }

    /// Waits up to `seconds` for the process to exit; true if it has.
    func waitForExit(_ pid: pid_t, seconds: Double) async -> Bool {
        let deadline = Clock.now + seconds
        while Clock.now < deadline {
            if !isRunning(pid) { return true }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        return !isRunning(pid)
    }

    /// Stops a started process: SIGTERM, and after `grace` s SIGTERM again (Prefect's worker SIGKILLs
    /// itself on the second one; ours stops its jobs), then SIGKILL to its process group. Finally every
    /// orphan it left behind (re-parented to the bench) is killed with its descendants.
    func stop(_ pid: pid_t, grace: Double) async {
        if isRunning(pid) {
            kill(pid, SIGTERM)
            if await !waitForExit(pid, seconds: grace) {
                kill(pid, SIGTERM)
                if await !waitForExit(pid, seconds: grace) {
                    kill(-pid, SIGKILL)
                    kill(pid, SIGKILL)
                    _ = await waitForExit(pid, seconds: 5)
                }
            }
        }
        killOrphans()
    }

    /// Kills (SIGKILL) the descendants of the bench that are not processes it started itself and still runs:
    /// jobs whose worker has exited.
    func killOrphans() {
        reap()
        let started = table.withLock { Set($0.live.keys) }
        let parents = Proc.parentMap()
        let me = getpid()
        let orphans = parents.filter { $0.value == me && !started.contains($0.key) }.map(\.key)
        for orphan in orphans {
            for pid in [orphan] + Proc.descendants(of: orphan, parents: parents) { kill(pid, SIGKILL) }
        }
        if !orphans.isEmpty {
            usleep(100_000)
            reap()
        }
    }

    /// On exit or a signal: stop everything started here, at once (no grace), and every descendant.
    func killEverything() {
        let started = table.withLock { Array($0.live.keys) }
        let parents = Proc.parentMap()
        for pid in started {
            for child in Proc.descendants(of: pid, parents: parents) { kill(child, SIGKILL) }
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
        }
        usleep(200_000)
        killOrphans()
        reap()
    }
}

/// Monotonic seconds, for durations measured here.
enum Clock {
    static var now: Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    static func sleep(_ seconds: Double) async {
        guard seconds > 0 else { return }
        try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

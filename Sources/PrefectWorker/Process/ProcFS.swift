import Foundation
#if canImport(Glibc)
import Glibc
#endif
import CLinux

/// What /proc says about processes: identity across pid reuse, and which processes belong to a job.
public enum ProcFS {
    /// The process's start time in clock ticks since boot (`/proc/PID/stat` field 22), which together with
    /// the pid identifies a process even after the pid is reused.
    static func startTime(of pid: pid_t) -> UInt64? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let paren = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command name start at field 3 (state); field 22 is index 19.
        let fields = stat[stat.index(after: paren)...].split(separator: " ")
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// The process state letter (R, S, Z, ...) from `/proc/PID/stat`.
    static func state(of pid: pid_t) -> Character? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let paren = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: paren)...].split(separator: " ").first?.first
    }

    /// True if `pid` is alive and, when given, started at `startTime` (so a reused pid does not count).
    static func isAlive(_ pid: pid_t, startTime: UInt64?) -> Bool {
        guard pid > 0, let actual = self.startTime(of: pid), state(of: pid) != "Z" else { return false }
        return startTime == nil || startTime == actual
    }

    /// True if the process's environment holds `NAME=value` (readable for our own user's processes).
    static func environment(of pid: pid_t, contains entry: String) -> Bool {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return false }
        let needle = Array(entry.utf8)
        return data.split(separator: 0, omittingEmptySubsequences: true).contains { $0.elementsEqual(needle) }
    }

    /// The process's environment as it was started (readable for our own user's processes); nil if unreadable.
    static func environment(of pid: pid_t) -> [String: String]? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/environ") else { return nil }
        var env: [String: String] = [:]
        for entry in data.split(separator: 0, omittingEmptySubsequences: true) {
            let text = String(decoding: entry, as: UTF8.self)
            guard let equals = text.firstIndex(of: "=") else { continue }
            env[String(text[..<equals])] = String(text[text.index(after: equals)...])
        }
        return env
    }

    /// Every live process (but us) whose environment carries `PREFECT__FLOW_RUN_ID=runID`: a job and all its
    /// descendants, including those that left its process group (setsid, double fork).
    static func processes(ofRun runID: String) -> [pid_t] {
        let me = getpid()
        let marker = "PREFECT__FLOW_RUN_ID=" + runID
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return names.compactMap { pid_t($0) }.filter { $0 != me && state(of: $0) != "Z" && environment(of: $0, contains: marker) }
    }

    /// Makes this process a child subreaper: orphaned descendants of its jobs are re-parented to it (and
    /// reaped by `ChildProcesses`) instead of escaping to init.
    public static func becomeSubreaper() {
        if cl_set_child_subreaper() != 0 {
            Log.warning("cannot become a child subreaper (\(errnoText())); descendants that leave a job's process group may outlive it")
        }
    }

    /// Waits until a process that is not our child exits (pidfd), or polls when pidfds are unavailable.
    static func waitForExit(of pid: pid_t, startTime: UInt64?) async {
        let fd = cl_pidfd_open(pid)
        if fd < 0 {
            // A real wait, like the pidfd's: a cancelled caller does not make this loop spin.
            while isAlive(pid, startTime: startTime) { await sleepThroughCancellation(0.5) }
            return
        }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            // A pidfd becomes readable when the process exits.
            FDPoller.shared.watch(fd) { fd in
                close(fd)
                continuation.resume()
                return false
            }
        }
    }
}

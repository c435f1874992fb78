import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What a job used: wall time, CPU time and peak resident memory. Each figure is optional, so a source that
/// knows more (a cgroup's `cpu.stat` and `memory.peak`) can fill in or override what `wait4` reported, and an
/// adopted job, whose rusage cannot be known, reports nothing rather than zeros.
struct JobUsage: Sendable, Equatable {
    var wallSeconds: Double?
    var userCPUSeconds: Double?
    var systemCPUSeconds: Double?
    var peakMemoryBytes: Int?
    /// `peakMemoryBytes` is only an upper bound (see `init(rusage:wallSeconds:spawnerPeakBytes:)`).
    var peakMemoryIsUpperBound = false

    init(wallSeconds: Double? = nil, userCPUSeconds: Double? = nil, systemCPUSeconds: Double? = nil, peakMemoryBytes: Int? = nil,
         peakMemoryIsUpperBound: Bool = false) {
        self.wallSeconds = wallSeconds
        self.userCPUSeconds = userCPUSeconds
        self.systemCPUSeconds = systemCPUSeconds
        self.peakMemoryBytes = peakMemoryBytes
        self.peakMemoryIsUpperBound = peakMemoryIsUpperBound
    }

    /// From `wait4`'s rusage (which covers the job and every descendant it waited for); `ru_maxrss` is in KiB.
    ///
    /// Linux folds the spawning process's peak RSS into the child's `ru_maxrss` (`exec` records the peak of
    /// the address space it replaces, which for a `posix_spawn`ed child is the worker's). So a figure not
    /// above `spawnerPeakBytes` (the worker's own peak right after the spawn) only says the job stayed below it.
    init(rusage usage: rusage, wallSeconds: Double, spawnerPeakBytes: Int?) {
        func seconds(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1_000_000 }
        let peak = Int(usage.ru_maxrss) * 1024
        self.init(wallSeconds: wallSeconds, userCPUSeconds: seconds(usage.ru_utime), systemCPUSeconds: seconds(usage.ru_stime),
                  peakMemoryBytes: peak, peakMemoryIsUpperBound: spawnerPeakBytes.map { peak <= $0 } ?? false)
    }

    /// Nothing is known (an adopted job).
    static let unknown = JobUsage()

    var isUnknown: Bool { self == .unknown }

    /// `other`'s figures where it has them, ours elsewhere.
    func overridden(by other: JobUsage) -> JobUsage {
        JobUsage(wallSeconds: other.wallSeconds ?? wallSeconds, userCPUSeconds: other.userCPUSeconds ?? userCPUSeconds,
                 systemCPUSeconds: other.systemCPUSeconds ?? systemCPUSeconds, peakMemoryBytes: other.peakMemoryBytes ?? peakMemoryBytes,
                 peakMemoryIsUpperBound: other.peakMemoryBytes != nil ? other.peakMemoryIsUpperBound : peakMemoryIsUpperBound)
    }

    /// The figures for an event payload (only those known).
    var payload: [String: JSON] {
        var out: [String: JSON] = [:]
        if let wallSeconds { out["wall_seconds"] = .double(Self.rounded(wallSeconds)) }
        if let userCPUSeconds { out["cpu_user_seconds"] = .double(Self.rounded(userCPUSeconds)) }
        if let systemCPUSeconds { out["cpu_system_seconds"] = .double(Self.rounded(systemCPUSeconds)) }
        if let peakMemoryBytes { out[peakMemoryIsUpperBound ? "peak_memory_bytes_at_most" : "peak_memory_bytes"] = .int(peakMemoryBytes) }
        return out
    }

    static func rounded(_ value: Double) -> Double { (value * 1000).rounded() / 1000 }

    /// The worker's closing line for a run, e.g. `job (pid 123) exited with code 0 after 2.1 s; CPU 0.40 s
    /// user + 0.10 s system; peak memory 45.2 MB` ("at most 38.0 MB" for a job that stayed below what rusage
    /// can tell). `ending` says how it ended ("exited with code 0"); nil
    /// when that is unknown too (an adopted job). MB are 10^6 bytes.
    static func closingLine(pid: pid_t, ending: String?, usage: JobUsage) -> String {
        var line = "job (pid \(pid)) " + (ending ?? "exited")
        if let wall = usage.wallSeconds { line += " after " + duration(wall) }
        if usage.isUnknown {
            return line + (ending == nil ? "; its exit status and resource usage are unknown (it was adopted after a worker restart)"
                                         : "; its resource usage is unknown")
        }
        switch (usage.userCPUSeconds, usage.systemCPUSeconds) {
        case let (user?, system?): line += String(format: "; CPU %.2f s user + %.2f s system", user, system)
        case let (user?, nil): line += String(format: "; CPU %.2f s user", user)
        case let (nil, system?): line += String(format: "; CPU %.2f s system", system)
        case (nil, nil): line += "; CPU unknown"
        }
        line += "; peak memory " + (usage.peakMemoryIsUpperBound ? "at most " : "") + (usage.peakMemoryBytes.map(megabytes) ?? "unknown")
        return line
    }

    /// `2.1 s`, `59.9 s`, `2 min 5 s`, `1 h 2 min`.
    static func duration(_ seconds: Double) -> String {
        if seconds < 60 { return String(format: "%.1f s", seconds) }
        let whole = Int(seconds.rounded())
        if whole < 3600 { return "\(whole / 60) min \(whole % 60) s" }
        return "\(whole / 3600) h \(whole % 3600 / 60) min"
    }

    /// The peak resident memory of this process so far (`VmHWM`), or nil if /proc cannot tell.
    static func ownPeakBytes() -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return nil }
        return kib * 1024
    }

    static func megabytes(_ bytes: Int) -> String {
        if bytes >= 10_000_000_000 { return String(format: "%.1f GB", Double(bytes) / 1e9) }
        return String(format: "%.1f MB", Double(bytes) / 1e6)
    }
}

/// How a job ended, and what it used.
struct JobEnd: Sendable, Equatable {
    var status: ExitStatus
    var usage: JobUsage
}

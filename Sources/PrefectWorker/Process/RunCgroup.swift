import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// What a job's cgroup used, read once the cgroup is empty: exact for a whole tree of processes, also for
/// descendants that forked away or were never waited for (rusage misses those).
struct CgroupUsage: Sendable, Equatable {
    /// `cpu.stat`: CPU time of every process that ran in the cgroup, in microseconds.
    var usageUsec: UInt64
    var userUsec: UInt64
    var systemUsec: UInt64
    /// `memory.peak` in bytes, when the memory controller is enabled (and the kernel has it, 5.19+).
    var memoryPeak: UInt64?
    /// `memory.events` `oom_kill`: processes the OOM killer killed in the cgroup (nil without the memory controller).
    var oomKills: UInt64?

    /// Reads `cpu.stat`, `memory.peak` and `memory.events` text.
    init(cpuStat: String, memoryPeak: String?, memoryEvents: String?) {
        let cpu = Self.keyed(cpuStat)
        usageUsec = cpu["usage_usec"] ?? 0
        userUsec = cpu["user_usec"] ?? 0
        systemUsec = cpu["system_usec"] ?? 0
        self.memoryPeak = memoryPeak.flatMap { UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        oomKills = memoryEvents.map { Self.keyed($0)["oom_kill"] ?? 0 }
    }

    /// The figures as the per-run usage report takes them (CPU of the whole tree; peak memory when known).
    var jobUsage: JobUsage {
        JobUsage(userCPUSeconds: Double(userUsec) / 1_000_000, systemCPUSeconds: Double(systemUsec) / 1_000_000,
                 peakMemoryBytes: memoryPeak.map { Int(clamping: $0) })
    }

    init(usageUsec: UInt64, userUsec: UInt64, systemUsec: UInt64, memoryPeak: UInt64? = nil, oomKills: UInt64? = nil) {
        self.usageUsec = usageUsec
        self.userUsec = userUsec
        self.systemUsec = systemUsec
        self.memoryPeak = memoryPeak
        self.oomKills = oomKills
    }

    /// "key value" lines.
    static func keyed(_ text: String) -> [String: UInt64] {
        var values: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let value = UInt64(parts[1]) { values[String(parts[0])] = value }
        }
        return values
    }

    /// The fragment for the run's usage line: `cpu 1.234 s (user 1.000 s, system 0.234 s), memory peak 12.5 MiB`.
    var summary: String {
        func seconds(_ usec: UInt64) -> String { String(format: "%.3f s", Double(usec) / 1e6) }
        var text = "cpu \(seconds(usageUsec)) (user \(seconds(userUsec)), system \(seconds(systemUsec)))"
        if let memoryPeak { text += String(format: ", memory peak %.1f MiB", Double(memoryPeak) / 1_048_576) }
        if let oomKills, oomKills > 0 { text += ", \(oomKills) OOM kill(s)" }
        return text
    }
}

/// One job's cgroup (`<worker's cgroup>/run-<flow run id>`): created with its limits before the job starts,
/// the job started inside it, killed as a whole, its usage read and the cgroup removed when it is empty.
final class RunCgroup: Sendable {
    let path: String
    /// The open directory, for clone3's CLONE_INTO_CGROUP.
    let fd: Int32
    let limits: CgroupLimits
    private let removed = Mutex(false)

    private init(path: String, fd: Int32, limits: CgroupLimits) {
        self.path = path
        self.fd = fd
        self.limits = limits
    }

    /// The run's cgroup when the worker has a delegated subtree, nil without one. Throws (the run is then
    /// CRASHED before it starts) when limits were asked for that cannot be applied, naming what is missing.
    static func prepare(host: CgroupHost?, whyNoHost: String, runID: String, limits: CgroupLimits) throws(SpawnError) -> RunCgroup? {
        if let reason = limits.unavailableReason(host: host, whyNoHost: whyNoHost) { throw SpawnError(message: reason) }
        guard let host else { return nil }
        let path = host.runDirectory(runID)
        // A cgroup of an earlier attempt of this run, empty, goes (its counters would add up); a populated one
        // still holds that attempt's processes.
        if rmdir(path) != 0 && errno == EBUSY {
            throw SpawnError(message: "the cgroup \(path) still holds processes of an earlier attempt of this run")
        }
        guard mkdir(path, 0o755) == 0 else { throw SpawnError(message: "cannot create the job's cgroup \(path): \(errnoText())") }
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else {
            let why = errnoText()
            _ = rmdir(path)
            throw SpawnError(message: "cannot open the job's cgroup \(path): \(why)")
        }
        let cgroup = RunCgroup(path: path, fd: fd, limits: limits)
        var writes: [(String, String)] = []
        if let memory = limits.memory {
            writes.append(("memory.max", memory.value))
            // On OOM the whole job goes, not one process of it: a half-killed tree helps nobody.
            writes.append(("memory.oom.group", "1"))
            // The limit means what it says: the job does not swap its way past it (where swap is accounted).
            if access(path + "/memory.swap.max", F_OK) == 0 { writes.append(("memory.swap.max", "0")) }
        }
        if let cpu = limits.cpu { writes.append(("cpu.max", cpu.value)) }
        for (file, value) in writes where !CgroupFile.write(path + "/" + file, value) {
            let why = errnoText()
            cgroup.remove()
            throw SpawnError(message: "cannot write \(value) to \(path)/\(file): \(why)")
        }
        return cgroup
    }

    /// The cgroup a previous worker created for this run, if it still exists (for an adopted job).
    static func existing(host: CgroupHost?, runID: String) -> RunCgroup? {
        guard let host else { return nil }
        let path = host.runDirectory(runID)
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        return RunCgroup(path: path, fd: fd, limits: .none)
    }

    /// The pids in the cgroup now.
    func processes() -> [pid_t] {
        CgroupHost.words(CgroupFile.read(path + "/cgroup.procs")).compactMap { pid_t($0) }
    }

    /// `cgroup.events` `populated`: some process is in the cgroup (or, if the file cannot be read, whether
    /// `cgroup.procs` lists one).
    var isPopulated: Bool {
        guard let events = CgroupFile.read(path + "/cgroup.events") else { return !processes().isEmpty }
        return CgroupUsage.keyed(events)["populated"] != 0
    }

    /// SIGKILL to every process in the cgroup at once (`cgroup.kill`, Linux 5.14), or to each listed pid.
    func kill() {
        if CgroupFile.write(path + "/cgroup.kill", "1") { return }
        for pid in processes() { _ = Glibc.kill(pid, SIGKILL) }
    }

    /// Waits until the cgroup is empty, up to `timeout` seconds; false if it is not.
    func waitUntilEmpty(timeout: Double) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while isPopulated {
            if Date() >= deadline { return false }
            // Not `try?`: a cancelled task must still wait, not spin.
            await withUnsafeContinuation { (done: UnsafeContinuation<Void, Never>) in
                DispatchQueue.global().asyncAfter(deadline: .now() + 0.02) { done.resume() }
            }
        }
        return true
    }

    /// What the cgroup's processes used so far (complete once it is empty).
    func usage() -> CgroupUsage {
        CgroupUsage(cpuStat: CgroupFile.read(path + "/cpu.stat") ?? "",
                    memoryPeak: CgroupFile.read(path + "/memory.peak"),
                    memoryEvents: CgroupFile.read(path + "/memory.events"))
    }

    /// Once the job has exited: kills what is left of its tree (a job's cgroup outlives no job), waits until the
    /// cgroup is empty, reads its usage and removes it. Logs what it had to do.
    func finish(log: Logger) async -> CgroupUsage {
        if isPopulated {
            let left = processes()
            log.info("the job exited, leaving \(left.count) process(es) in its cgroup (pid \(left.map(String.init).joined(separator: ", "))); killing them (cgroup.kill)")
            kill()
        }
        // A process stuck in the kernel (D state) can outlive SIGKILL for a while; a minute is enough to wait.
        for attempt in 1...12 {
            if await waitUntilEmpty(timeout: 5) { break }
            log.warning("the job's cgroup \(path) is still not empty \(attempt * 5) s after cgroup.kill; \(attempt < 12 ? "killing and waiting again" : "leaving it")")
            kill()
        }
        let usage = usage()
        remove()
        return usage
    }

    /// Removes the (empty) cgroup and closes its directory.
    func remove() {
        guard removed.withLock({ (done: inout Bool) -> Bool in defer { done = true }; return !done }) else { return }
        close(fd)
        if rmdir(path) != 0 && errno != ENOENT {
            Log.warning("cannot remove the job's cgroup \(path): \(errnoText())")
        }
    }
}

extension FinalState {
    /// Out of memory: a job that did not exit 0 after the OOM killer struck in its cgroup (`memory.events` `oom_kill`)
    /// is CRASHED for running out of memory, whoever owns its states; nil otherwise.
    static func outOfMemory(usage: CgroupUsage?, limits: CgroupLimits, exit: ExitStatus) -> FinalState? {
        guard let kills = usage?.oomKills, kills > 0, exit != .exited(0) else { return nil }
        let limit = limits.memory.map { "memory_max \($0.asWritten)" } ?? "no memory_max; a limit above the job's cgroup"
        return FinalState(type: .crashed, message: "Job ran out of memory (\(limit)): the kernel's OOM killer killed \(kills) process(es) in its cgroup and the job \(exit).")
    }
}

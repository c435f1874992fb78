#if canImport(Glibc)
import Glibc
#endif
import CLinux
import Synchronization

/// Starting a job inside its run's cgroup, with no moment in which it runs outside.
///
/// Choice: clone3 with CLONE_INTO_CGROUP (Linux 5.7). The kernel puts the child into the cgroup as part of
/// creating it, so even its first instruction is counted and limited there, and nothing of ours runs in the
/// child but a few async-signal-safe calls before execve. A trampoline (our binary in a helper mode writing its
/// pid to `cgroup.procs`, then exec) would cost a second exec of a large binary per job and run our start-up
/// code under the job's limits. Where clone3 is missing or filtered (older kernels; systemd's
/// RestrictNamespaces= makes it fail with ENOSYS), the same C child writes itself to the cgroup's
/// `cgroup.procs` as its first step, before execve: the job's program still never runs outside.
/// Without a cgroup, jobs are started with posix_spawn, exactly as before.
enum CgroupSpawn {
    /// Tests turn clone3 off to check the fallback.
    static let clone3Allowed = Mutex(true)
    private static let fallbackLogged = Mutex(false)

    /// `posix_spawn`'s contract for our jobs (see `ChildProcesses.spawn`), into the cgroup open at `cgroupFD`:
    /// 0 and `pid` set, or an errno value.
    static func spawn(_ pid: inout pid_t, executable: String, arguments: [UnsafeMutablePointer<CChar>?],
                      environment: [UnsafeMutablePointer<CChar>?], workingDirectory: String,
                      stdout: Int32, stderr: Int32, cgroupFD: Int32) -> Int32 {
        let allowed = clone3Allowed.withLock { $0 }
        var usedClone3: Int32 = 0
        let rc = cl_spawn_into_cgroup(&pid, executable, arguments, environment, workingDirectory, stdout, stderr, cgroupFD,
                                      allowed ? 1 : 0, &usedClone3)
        if rc == 0, usedClone3 == 0, allowed, fallbackLogged.withLock({ (done: inout Bool) in defer { done = true }; return !done }) {
            Log.info("cgroups: clone3 with CLONE_INTO_CGROUP is not available here (old kernel, or a seccomp filter such as systemd's RestrictNamespaces=); each job moves itself into its cgroup before it executes its program")
        }
        return rc
    }
}

#if canImport(Glibc)
import Glibc
#endif
import CLinux

/// Starting a job inside its run's cgroup, with no moment in which it runs outside.
///
/// Choice: clone3 with CLONE_INTO_CGROUP (Linux 5.7; `CgroupHost` requires it before it uses cgroups at all).
/// The kernel puts the child into the cgroup as part of creating it, so even its first instruction is counted
/// and limited there, and nothing of ours runs in the child but a few async-signal-safe calls before execve.
/// A trampoline (our binary in a helper mode writing its pid to `cgroup.procs`, then exec) would cost a second
/// exec of a large binary per job and run our own start-up code in the job's cgroup under its limits.
/// Without a cgroup, jobs are still started with posix_spawn, exactly as before.
enum CgroupSpawn {
    /// `posix_spawn`'s contract for our jobs (see `ChildProcesses.spawn`), into the cgroup open at `cgroupFD`:
    /// 0 and `pid` set, or an errno value.
    static func spawn(_ pid: inout pid_t, executable: String, arguments: [UnsafeMutablePointer<CChar>?],
                      environment: [UnsafeMutablePointer<CChar>?], workingDirectory: String,
                      stdout: Int32, stderr: Int32, cgroupFD: Int32) -> Int32 {
        cl_spawn_into_cgroup(&pid, executable, arguments, environment, workingDirectory, stdout, stderr, cgroupFD)
    }
}

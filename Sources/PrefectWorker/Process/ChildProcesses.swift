import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import CLinux

/// What to start: a program (already resolved to a path), its arguments, environment and directory.
struct SpawnRequest: Sendable {
    var executable: String
    var arguments: [String]
    var environment: [String: String]
    var workingDirectory: String
    /// Pipe stdout and stderr back to the worker; otherwise they go to /dev/null.
    var captureOutput: Bool
    /// Per-job cgroups: the open directory of the run's cgroup to start the job in (`CgroupSpawn`); nil: posix_spawn as before.
    var cgroupFD: Int32? = nil

    init(executable: String, arguments: [String], environment: [String: String], workingDirectory: String, captureOutput: Bool) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.captureOutput = captureOutput
    }
}

/// A started job: its pid (also its process group id) and the read ends of its output pipes.
struct SpawnedProcess: Sendable {
    var pid: pid_t
    var stdout: Int32?
    var stderr: Int32?
}

/// A job that could not be started.
struct SpawnError: Error, CustomStringConvertible, Sendable {
    var message: String
    var description: String { message }
}

/// Starts jobs and reaps them. Each job is the leader of a new process group, with stdin from /dev/null,
/// default signal dispositions, an empty signal mask and no inherited file descriptors but 0-2.
///
/// One thread waits for any child to exit (`waitid` with `WNOWAIT`) and then reaps with `wait4(-1)`, so
/// descendants re-parented to us as a subreaper are reaped too and no zombie stays behind, and each job's
/// rusage (CPU time, peak memory) is known. Spawning and reaping share a lock, so a child cannot be reaped
/// before it is registered.
final class ChildProcesses: Sendable {
    /// The one per process: its thread reaps every child (`wait4(-1)`), so a second one would steal reaps.
    /// Runs reach it through `RunDependencies.spawner`.
    static let shared = ChildProcesses()

    private enum Entry {
        case running(started: ContinuousClock.Instant, spawnerPeak: Int?, waiter: CheckedContinuation<JobEnd, Never>?)
        case exited(JobEnd)
    }

    private let table = Mutex<[pid_t: Entry]>([:])
    private let spawned = DispatchSemaphore(value: 0)

    private init() {
        WorkerThread.start(name: "prefect-worker-reaper", stackSize: 64 * 1024) { [self] in reapLoop() }
    }

    /// Starts a job in its own process group.
    func spawn(_ request: SpawnRequest) throws(SpawnError) -> SpawnedProcess {
        var outPipe: [Int32] = [-1, -1]
        var errPipe: [Int32] = [-1, -1]
        if request.captureOutput {
            guard cl_pipe_cloexec(&outPipe) == 0 else { throw SpawnError(message: "cannot create pipe: \(errnoText())") }
            guard cl_pipe_cloexec(&errPipe) == 0 else {
                close(outPipe[0]); close(outPipe[1])
                throw SpawnError(message: "cannot create pipe: \(errnoText())")
            }
        }
        func closePipes(readEnds: Bool) {
            for fd in [outPipe[1], errPipe[1]] + (readEnds ? [outPipe[0], errPipe[0]] : []) where fd >= 0 { close(fd) }
        }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if request.captureOutput {
            posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
            posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        cl_spawn_addclosefrom(&actions, 3)
        cl_spawn_addchdir(&actions, request.workingDirectory)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = CStringArray(request.arguments)
        let envp = CStringArray(request.environment.map { "\($0.key)=\($0.value)" }.sorted())
        defer { argv.free(); envp.free() }

        var pid: pid_t = 0
        // The worker's peak RSS, which Linux folds into the child's rusage (see `JobUsage`): read before the
        // spawn (a job may be reaped at once) and again after it (posix_spawn returns once the child exec'd).
        let peakBefore = JobUsage.ownPeakBytes()
        let result: Int32 = table.withLock { table in
            let rc = if let cgroupFD = request.cgroupFD {  // per-job cgroup: straight into the run's cgroup
                CgroupSpawn.spawn(&pid, executable: request.executable, arguments: argv.pointers, environment: envp.pointers,
                                  workingDirectory: request.workingDirectory, stdout: outPipe[1], stderr: errPipe[1], cgroupFD: cgroupFD)
            } else {
                posix_spawn(&pid, request.executable, &actions, &attributes, argv.pointers, envp.pointers)
            }
            if rc == 0 { table[pid] = .running(started: .now, spawnerPeak: peakBefore, waiter: nil) }
            return rc
        }
        guard result == 0 else {
            closePipes(readEnds: true)
            throw SpawnError(message: "cannot start \(request.executable): \(String(cString: strerror(result)))")
        }
        if let peakAfter = JobUsage.ownPeakBytes() {
            table.withLock { table in
                if case .running(let started, _, let waiter)? = table[pid] { table[pid] = .running(started: started, spawnerPeak: peakAfter, waiter: waiter) }
            }
        }
        spawned.signal()
        closePipes(readEnds: false)
        return SpawnedProcess(pid: pid, stdout: request.captureOutput ? outPipe[0] : nil,
                              stderr: request.captureOutput ? errPipe[0] : nil)
    }

    /// Waits until the job with this pid exits (returns at once if it already has).
    func waitForExit(_ pid: pid_t) async -> ExitStatus {
        await waitForEnd(pid).status
    }

    /// Waits until the job with this pid exits, and returns how it ended and what it used.
    func waitForEnd(_ pid: pid_t) async -> JobEnd {
        await withCheckedContinuation { continuation in
            let end: JobEnd? = table.withLock { table in
                switch table[pid] {
                case .exited(let end)?:
                    table[pid] = nil
                    return end
                case .running(let started, let peak, _)?:
                    table[pid] = .running(started: started, spawnerPeak: peak, waiter: continuation)
                    return nil
                case nil:
                    table[pid] = .running(started: .now, spawnerPeak: nil, waiter: continuation)
                    return nil
                }
            }
            if let end { continuation.resume(returning: end) }
        }
    }

    /// The pids of jobs started here that have not been reaped.
    var runningPIDs: [pid_t] {
        table.withLock { table in table.compactMap { if case .running = $0.value { $0.key } else { nil } } }
    }

    private func reapLoop() {
        while true {
            var info = siginfo_t()
            let rc = waitid(P_ALL, 0, &info, WEXITED | WNOWAIT)
            if rc == 0 {
                reapExited()
            } else if errno == ECHILD {
                // No children now. Wake at a spawn, or within a second anyway: as a subreaper (or PID 1 in a
                // container) we also inherit orphans we never spawned, and they must be reaped too.
                _ = spawned.wait(timeout: .now() + 1)
            } else if errno != EINTR {
                usleep(100_000)
            }
        }
    }

    private func reapExited() {
        var resumes: [(CheckedContinuation<JobEnd, Never>, JobEnd)] = []
        table.withLock { table in
            while true {
                var status: Int32 = 0
                var usage = rusage()
                let pid = wait4(-1, &status, WNOHANG, &usage)
                if pid <= 0 { break }
                guard case .running(let started, let spawnerPeak, let waiter)? = table[pid] else {
                    continue // a re-parented descendant: reaped, nothing to report
                }
                let end = JobEnd(status: ExitStatus(waitStatus: status),
                                 usage: JobUsage(rusage: usage, wallSeconds: Self.seconds(started.duration(to: .now)), spawnerPeakBytes: spawnerPeak))
                if let waiter {
                    table[pid] = nil
                    resumes.append((waiter, end))
                } else {
                    table[pid] = .exited(end)
                }
            }
        }
        for (continuation, end) in resumes { continuation.resume(returning: end) }
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}

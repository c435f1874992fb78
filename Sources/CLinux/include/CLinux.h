// Linux and GNU calls that Swift's Glibc module does not expose (it is imported without _GNU_SOURCE).
#ifndef PREFECT_WORKER_CLINUX_H
#define PREFECT_WORKER_CLINUX_H

#include <spawn.h>
#include <sys/types.h>

/// pipe2(fds, O_CLOEXEC): both ends close on exec, with no window in which another thread's spawn inherits them.
int cl_pipe_cloexec(int fds[2]);
/// pipe2(fds, O_CLOEXEC | O_NONBLOCK).
int cl_pipe_cloexec_nonblocking(int fds[2]);
/// posix_spawn_file_actions_addchdir_np (glibc 2.29).
int cl_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path);
/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34): close every descriptor >= from in the child.
int cl_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from);
/// prctl(PR_SET_CHILD_SUBREAPER, 1): orphaned descendants are re-parented to us, not to init.
int cl_set_child_subreaper(void);
/// pidfd_open(pid, 0): a descriptor that becomes readable when the process exits.
int cl_pidfd_open(pid_t pid);

/// Starts a job inside the cgroup open at `cgroup_fd`, with what our posix_spawn gives every job: a new process
/// group, stdin from /dev/null, stdout and stderr on `stdout_fd`/`stderr_fd` (or /dev/null when negative), no
/// descriptors but 0-2, `cwd` as its directory, default signal dispositions and an empty signal mask.
/// With clone3 and CLONE_INTO_CGROUP (Linux 5.7) the child is created inside the cgroup (`*used_clone3` = 1);
/// where clone3 is unavailable or `allow_clone3` is 0, the forked child writes itself to the cgroup's
/// cgroup.procs before anything else, so the program is never executed outside it.
/// Returns 0 and sets `*pid` once the program is executing, or an errno value (the child is then reaped here).
/// Call with the reaper's lock held, as for posix_spawn.
int cl_spawn_into_cgroup(pid_t *pid, const char *path, char *const argv[], char *const envp[], const char *cwd,
                         int stdout_fd, int stderr_fd, int cgroup_fd, int allow_clone3, int *used_clone3);

/// accept4(2) with SOCK_CLOEXEC | SOCK_NONBLOCK: a connection no job inherits and no read blocks on.
int cl_accept_cloexec_nonblocking(int listener);

#endif

#define _GNU_SOURCE
#include "CLinux.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int cl_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int cl_pipe_cloexec_nonblocking(int fds[2]) { return pipe2(fds, O_CLOEXEC | O_NONBLOCK); }

int cl_spawn_addchdir(posix_spawn_file_actions_t *actions, const char *path) {
    return posix_spawn_file_actions_addchdir_np(actions, path);
}

int cl_spawn_addclosefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int cl_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); }

int cl_pidfd_open(pid_t pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

// clone_args as in <linux/sched.h> (Linux 5.7 layout); declared here so <sched.h> and <linux/sched.h> need not meet.
struct cl_clone_args {
    unsigned long long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls, set_tid,
        set_tid_size, cgroup;
};
#define CL_CLONE_INTO_CGROUP 0x200000000ULL

// Runs in the child of clone3, a copy of a multithreaded process: only async-signal-safe calls until execve.
static void cl_child_exec(int error_fd, const char *path, char *const argv[], char *const envp[], const char *cwd,
                          int stdout_fd, int stderr_fd, int procs_fd) {
    int err = 0;
    // Without clone3 the child moves itself into the cgroup ("0" is the writer) before anything else.
    if (procs_fd >= 0 && write(procs_fd, "0", 1) != 1) goto fail;
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig != SIGKILL && sig != SIGSTOP) (void)sigaction(sig, &dfl, NULL);
    }
    if (setpgid(0, 0) != 0) goto fail;
    int null_in = open("/dev/null", O_RDONLY);
    if (null_in < 0 || dup2(null_in, 0) < 0) goto fail;
    if (stdout_fd >= 0) {
        if (dup2(stdout_fd, 1) < 0 || dup2(stderr_fd, 2) < 0) goto fail;
    } else {
        int null_out = open("/dev/null", O_WRONLY);
        if (null_out < 0 || dup2(null_out, 1) < 0 || dup2(null_out, 2) < 0) goto fail;
    }
    if (chdir(cwd) != 0) goto fail;
    // Every descriptor >= 3 but the error pipe (close-on-exec) goes.
    if (error_fd > 3) (void)syscall(SYS_close_range, 3, error_fd - 1, 0);
    (void)syscall(SYS_close_range, error_fd + 1, ~0U, 0);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(path, argv, envp);
fail:
    err = errno;
    while (write(error_fd, &err, sizeof err) < 0 && errno == EINTR) {}
    _exit(127);
}

int cl_spawn_into_cgroup(pid_t *pid, const char *path, char *const argv[], char *const envp[], const char *cwd,
                         int stdout_fd, int stderr_fd, int cgroup_fd, int allow_clone3, int *used_clone3) {
    int error_pipe[2];
    if (pipe2(error_pipe, O_CLOEXEC) != 0) return errno;
    long child = -1;
    int procs_fd = -1;
    *used_clone3 = 0;
    if (allow_clone3) {
        struct cl_clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CL_CLONE_INTO_CGROUP;
        args.exit_signal = SIGCHLD;
        args.cgroup = (unsigned long long)cgroup_fd;
        child = syscall(SYS_clone3, &args, sizeof args);
        if (child >= 0) *used_clone3 = 1;
    }
    // clone3 missing (Linux < 5.7: ENOSYS; E2BIG/EINVAL before CLONE_INTO_CGROUP) or filtered by seccomp
    // (systemd's RestrictNamespaces= makes it fail with ENOSYS so that callers fall back to clone).
    if (child < 0 && (!allow_clone3 || errno == ENOSYS || errno == E2BIG || errno == EINVAL || errno == EPERM)) {
        procs_fd = openat(cgroup_fd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
        if (procs_fd < 0) {
            int err = errno;
            close(error_pipe[0]);
            close(error_pipe[1]);
            return err;
        }
        child = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    }
    if (child < 0) {
        int err = errno;
        close(error_pipe[0]);
        close(error_pipe[1]);
        if (procs_fd >= 0) close(procs_fd);
        return err;
    }
    if (child == 0) cl_child_exec(error_pipe[1], path, argv, envp, cwd, stdout_fd, stderr_fd, procs_fd);
    close(error_pipe[1]);
    if (procs_fd >= 0) close(procs_fd);
    int child_errno = 0;
    ssize_t n;
    while ((n = read(error_pipe[0], &child_errno, sizeof child_errno)) < 0 && errno == EINTR) {}
    close(error_pipe[0]);
    if (n == (ssize_t)sizeof child_errno) {
        int status;
        while (waitpid((pid_t)child, &status, 0) < 0 && errno == EINTR) {}
        return child_errno ? child_errno : EIO;
    }
    *pid = (pid_t)child;
    return 0;
}

int cl_accept_cloexec_nonblocking(int listener) {
    return accept4(listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
}

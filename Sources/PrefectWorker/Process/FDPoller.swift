import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import CLinux

/// One thread that waits with `poll(2)` on every descriptor the worker watches (job output pipes, pidfds of
/// adopted jobs) and calls their handlers in turn. We use this instead of Dispatch read sources, which
/// crashed libdispatch's epoll backend when many were set up and torn down quickly (a known bug).
final class FDPoller: Sendable {
    static let shared = FDPoller()

    /// Called on the poller thread when the descriptor is readable, hung up or in error. Return false to stop
    /// watching it; the handler then owns closing it.
    typealias Handler = @Sendable (_ fd: Int32) -> Bool

    /// A watch: its handler, and a token so a late `remove` cannot hit a reused descriptor number.
    struct Watch: Sendable, Equatable {
        let fd: Int32
        let token: Int
    }

    private let watched = Mutex<(next: Int, handlers: [Int32: (token: Int, handler: Handler)])>((0, [:]))
    /// Watches to stop; their closures run on the poller thread (so a descriptor is never closed while
    /// `poll` may still be waiting on it).
    private let removals = Mutex<[(Watch, @Sendable () -> Void)]>([])
    private let wakeRead: Int32
    private let wakeWrite: Int32

    private init() {
        var fds: [Int32] = [-1, -1]
        _ = cl_pipe_cloexec_nonblocking(&fds)
        wakeRead = fds[0]
        wakeWrite = fds[1]
        WorkerThread.start(name: "prefect-worker-io", stackSize: 256 * 1024) { [self] in loop() }
    }

    @discardableResult
    func watch(_ fd: Int32, handler: @escaping Handler) -> Watch {
        let token = watched.withLock { state in
            state.next += 1
            state.handlers[fd] = (state.next, handler)
            return state.next
        }
        wake()
        return Watch(fd: fd, token: token)
    }

    /// Stops watching `fd` and then runs `done` (which typically closes it) on the poller thread.
    func remove(_ watch: Watch, then done: @escaping @Sendable () -> Void) {
        removals.withLock { $0.append((watch, done)) }
        wake()
    }

    private func wake() {
        var byte: UInt8 = 1
        _ = write(wakeWrite, &byte, 1)
    }

    private func loop() {
        while true {
            let current = watched.withLock { $0.handlers }
            var fds = [pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
            fds += current.keys.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), -1)
            if ready < 0 {
                if errno != EINTR { usleep(10_000) }
                continue
            }
            if fds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 256)
                while read(wakeRead, &drain, drain.count) > 0 {}
            }
            let removing = removals.withLock { pending -> [(Watch, @Sendable () -> Void)] in
                defer { pending = [] }
                return pending
            }
            let removingFDs = Set(removing.map(\.0.fd))
            for entry in fds.dropFirst() where entry.revents != 0 && !removingFDs.contains(entry.fd) {
                guard let (token, handler) = current[entry.fd] else { continue }
                if !handler(entry.fd) {
                    watched.withLock { state in
                        if state.handlers[entry.fd]?.token == token { state.handlers[entry.fd] = nil }
                    }
                }
            }
            for (watch, done) in removing {
                // Only if this very watch is still active: a handler that stopped watching closed it itself.
                let active = watched.withLock { state -> Bool in
                    guard state.handlers[watch.fd]?.token == watch.token else { return false }
                    state.handlers[watch.fd] = nil
                    return true
                }
                if active { done() }
            }
        }
    }
}

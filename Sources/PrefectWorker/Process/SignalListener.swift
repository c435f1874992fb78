import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Turns SIGTERM, SIGINT and SIGHUP into calls on a dedicated thread (`sigwaitinfo`), so no async-signal-safety
/// rules apply to what the handler does. `blockSignals()` must run before any other thread starts, so that
/// every thread inherits the blocked mask and only the listener receives them.
public enum SignalListener {
    static let handled: [Int32] = [SIGTERM, SIGINT, SIGHUP]

    /// Blocks the handled signals in the calling thread (and so in every thread it starts) and ignores SIGPIPE.
    public static func blockSignals() {
        var set = signalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Starts the listener thread; `handler` gets each signal number as it arrives.
    public static func start(_ handler: @escaping @Sendable (Int32) -> Void) {
        let thread = Thread {
            var set = signalSet()
            while true {
                var info = siginfo_t()
                let signo = sigwaitinfo(&set, &info)
                if signo > 0 { handler(signo) }
            }
        }
        thread.name = "prefect-worker-signals"
        thread.stackSize = 64 * 1024
        thread.start()
    }

    private static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        return set
    }
}

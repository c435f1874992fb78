import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Turns SIGTERM, SIGINT and SIGHUP into calls from an ordinary thread (`sigwaitinfo`), so no
/// async-signal-safety rules apply to what the handler does. `blockSignals()` must run first thing in `main`,
/// so every thread started later inherits the blocked mask; the main thread then waits for the signals in
/// `run`, and no other thread ever receives them.
public enum SignalListener {
    static let handled: [Int32] = [SIGTERM, SIGINT, SIGHUP]

    /// Blocks the handled signals in the calling thread (and so in every thread it starts) and ignores SIGPIPE.
    public static func blockSignals() {
        var set = signalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Waits for the handled signals on the calling thread forever, calling `handler` for each.
    public static func run(_ handler: @Sendable (Int32) -> Void) -> Never {
        var set = signalSet()
        pthread_sigmask(SIG_BLOCK, &set, nil)
        while true {
            var info = siginfo_t()
            let signo = sigwaitinfo(&set, &info)
            if signo > 0 { handler(signo) }
        }
    }
    static func signalSet() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        for s in handled { sigaddset(&set, s) }
        return set
    }
}

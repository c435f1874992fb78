import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The worker's own long-lived threads (reaper, I/O poller, HTTP, health server).
enum WorkerThread {
    /// Starts a thread with the handled signals blocked, so they always reach the main thread's
    /// `SignalListener.run`.
    static func start(name: String, stackSize: Int, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread {
            var signals = SignalListener.signalSet()
            pthread_sigmask(SIG_BLOCK, &signals, nil)
            body()
        }
        thread.name = name
        thread.stackSize = stackSize
        thread.start()
    }
}

import Foundation

/// The systemd watchdog (`WatchdogSec=`): pings while the worker's loops keep ticking.
struct Watchdog: Service {
    let settings: Settings
    let notifier: SystemdNotifier
    /// When the poll and heartbeat loops last ticked.
    let status: WorkerStatus
    let log: Logger

    /// Under systemd with `WatchdogSec=`: WATCHDOG=1 at half the interval, but only while the poll and
    /// heartbeat loops keep ticking, so a stuck loop gets the worker restarted.
    func run() async {
        guard let interval = notifier.watchdogInterval else { return }
        // A loop iteration may legitimately wait for its interval plus a request with its retries.
        let pollBound = settings.querySeconds * 2 + 180
        let heartbeatBound = settings.heartbeatSeconds * 2 + 180
        while !Task.isCancelled {
            let ticks = status.loopTicks
            let now = Date()
            if now.timeIntervalSince(ticks.poll) < pollBound, now.timeIntervalSince(ticks.heartbeat) < heartbeatBound {
                notifier.notify("WATCHDOG=1")
            } else {
                log.error("a worker loop has not run for too long (poll \(Int(now.timeIntervalSince(ticks.poll))) s, heartbeat \(Int(now.timeIntervalSince(ticks.heartbeat))) s ago); withholding the systemd watchdog ping")
            }
            try? await Task.sleep(seconds: interval)
        }
    }
}

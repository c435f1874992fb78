import Foundation
import Synchronization

/// The server's requests to back off, shared by every caller of the client: Prefect Cloud's maintenance
/// (`Prefect-Maintenance: true`, waited out for as long as it lasts, as `prefect/_internal/server_maintenance.py`
/// records it for the worker's health check) and a 429's `Retry-After`, which pauses every caller of that
/// endpoint group rather than only the one that got it.
struct ServerBackoff {
    /// When the latest maintenance back-off ends (concurrent ones: the latest end wins).
    var maintenanceEndsAt: Date?
    /// Endpoint group (`Metrics.endpointClass`) → when its rate-limit pause ends.
    var pausedUntil: [String: Date] = [:]
}

/// A maintenance answer, before `send` decides to wait it out.
struct MaintenanceAnswer: Error {
    let error: APIError
}

extension PrefectClient {
    /// Waiting out maintenance without a `Retry-After`: Prefect's exponential default would grow without
    /// bound, so a steady 30 s instead. With one, at least what it asks (plus jitter upwards only).
    static func maintenanceDelay(retryAfter: Double?, jitter: Double, random: Double = Double.random(in: 0...1)) -> Double {
        guard let retryAfter else { return 30 * (1 + jitter * (2 * random - 1)) }
        return min(retryAfter * (1 + jitter * random), 3600)
    }

    /// When the latest maintenance back-off ends, for `/health`.
    var maintenanceBackoffEndsAt: Date? { backoff.withLock { $0.maintenanceEndsAt } }

    func noteMaintenance(until end: Date) {
        backoff.withLock { state in
            if state.maintenanceEndsAt.map({ end > $0 }) ?? true { state.maintenanceEndsAt = end }
        }
    }

    /// Every caller of `group` waits until `seconds` from now (an earlier pause is never shortened).
    func pauseGroup(_ group: String, for seconds: Double, endpoint: String) {
        let end = Date().addingTimeInterval(min(seconds, 3600))
        let longer = backoff.withLock { state -> Bool in
            guard state.pausedUntil[group].map({ end > $0 }) ?? true else { return false }
            state.pausedUntil[group] = end
            return true
        }
        if longer {
            log.warning("\(endpoint): 429 Too Many Requests; pausing every '\(group)' request for \(String(format: "%.1f", seconds)) s as Retry-After asks")
        }
    }

    /// Sleeps while `group` is paused by a 429.
    func waitOutPause(of group: String) async throws {
        while let end = backoff.withLock({ $0.pausedUntil[group] }) {
            let left = end.timeIntervalSinceNow
            if left <= 0 {
                backoff.withLock { if $0.pausedUntil[group] == end { $0.pausedUntil[group] = nil } }
                return
            }
            try await Task.sleep(seconds: left)
        }
    }
}

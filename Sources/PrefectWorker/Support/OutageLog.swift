import Foundation

/// How loud to be about a connection that is down (the events stream, the worker channel), as the API client
/// is about failing requests: the outage's first failure at INFO, a WARNING once it has lasted longer than the
/// quiet period (once per outage), everything else at DEBUG. A server that drops a socket for a moment (its
/// SQLite busy: 1011) is routine and says so quietly.
struct OutageLog: Sendable {
    private var downSince: Date?
    private var warned = false

    /// The level for a failure at `now`.
    mutating func failed(now: Date = Date(), quietSeconds: Double = PrefectClient.quietFailureSeconds) -> Log.Level {
        guard let since = downSince else {
            downSince = now
            return .info
        }
        if !warned, now.timeIntervalSince(since) > quietSeconds {
            warned = true
            return .warning
        }
        return .debug
    }

    /// How long the outage lasted, when the connection is back; the next failure starts a new one.
    mutating func recovered(now: Date = Date()) -> Double? {
        defer { downSince = nil; warned = false }
        return downSince.map { now.timeIntervalSince($0) }
    }
}

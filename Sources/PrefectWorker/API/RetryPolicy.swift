import Foundation

/// How often and how long to retry a failed API request: exponential backoff with jitter, honouring
/// `Retry-After`, capped. A pure value so the schedule can be unit tested.
public struct RetryPolicy: Sendable, Equatable {
    /// Total attempts, the first included. `Int.max` retries until the task is cancelled.
    public var maxAttempts: Int
    var baseDelay: Double
    var maxDelay: Double
    /// Each delay is multiplied by a random factor in `1 ± jitter`.
    var jitter: Double

    init(maxAttempts: Int, baseDelay: Double = 1, maxDelay: Double = 30, jitter: Double = 0.2) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.jitter = jitter
    }

    /// For ordinary calls: about a minute of retries before the caller sees the error.
    public static let standard = RetryPolicy(maxAttempts: 7)
    /// For calls whose loss would lose a run (final states): retry until it lands.
    static let persistent = RetryPolicy(maxAttempts: .max)
    /// For calls that are repeated anyway on the next tick (heartbeat, poll): a few quick retries, so one
    /// 503 from a busy server does not cost a whole interval.
    public static let quick = RetryPolicy(maxAttempts: 4, baseDelay: 0.5, maxDelay: 5)
    /// A single attempt.
    public static let once = RetryPolicy(maxAttempts: 1)

    /// Delay before attempt `attempt + 1`, after `attempt` failed attempts (1-based). `retryAfter` is the
    /// server's `Retry-After` in seconds, which is never shortened (but is capped).
    public func delay(afterAttempt attempt: Int, retryAfter: Double?, random: Double = Double.random(in: 0...1)) -> Double {
        if let retryAfter, retryAfter >= 0 { return min(retryAfter, maxDelay * 4) }
        let exponent = Double(min(attempt - 1, 30))
        let raw = min(baseDelay * pow(2, exponent), maxDelay)
        let factor = 1 + jitter * (2 * random - 1)
        return min(raw * factor, maxDelay)
    }

    /// The pause of a background loop (the outbox, the shippers) after `failures` failed rounds in a row:
    /// `base` doubled per failure (at most five doublings), capped at `cap` seconds.
    static func backoff(base: Double, failures: Int, cap: Double = 30) -> Double {
        min(cap, base * pow(2, Double(min(max(failures, 0), 5))))
    }

    /// Whether an HTTP status is worth retrying: request timeout, too many requests, server errors.
    public static func isRetryable(status: Int) -> Bool {
        status == 408 || status == 429 || (500...599).contains(status)
    }

    /// Parses `Retry-After` as seconds or an HTTP date.
    public static func parseRetryAfter(_ value: String?, now: Date = Date()) -> Double? {
        guard let value = value?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
        if let seconds = Double(value) { return max(0, seconds) }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = formatter.date(from: value) else { return nil }
        return max(0, date.timeIntervalSince(now))
    }
}

import Foundation

/// A failed API call, with what the server or the network said.
enum APIError: Error, CustomStringConvertible, Sendable {
    /// The request never got an HTTP answer (refused, reset, timed out, DNS).
    case transport(endpoint: String, reason: String)
    /// The server answered with a status that is not 2xx.
    case http(endpoint: String, status: Int, detail: String, retryAfter: Double?)
    /// The server answered 2xx with a body we cannot use.
    case badResponse(endpoint: String, reason: String)

    var description: String {
        switch self {
        case .transport(let endpoint, let reason): "\(endpoint): \(reason)"
        case .http(let endpoint, let status, let detail, _): "\(status) from \(endpoint)" + (detail.isEmpty ? "" : ": \(detail)")
        case .badResponse(let endpoint, let reason): "unexpected response from \(endpoint): \(reason)"
        }
    }

    /// Worth trying again: the network, timeouts, rate limits and server errors.
    var isRetryable: Bool {
        switch self {
        case .transport: true
        case .http(_, let status, _, _): RetryPolicy.isRetryable(status: status)
        case .badResponse: true
        }
    }

    var status: Int? {
        if case .http(_, let status, _, _) = self { return status }
        return nil
    }

    var retryAfter: Double? {
        if case .http(_, _, _, let retryAfter) = self { return retryAfter }
        return nil
    }
}

/// Removes credentials from a URL before it is printed.
func redactedURL(_ url: URL) -> String {
    guard var components = URLComponents(url: url, resolvingAgainstBaseURL: false) else { return "<url>" }
    if components.user != nil || components.password != nil {
        components.user = "***"
        components.password = nil
    }
    // Query strings may carry tokens too.
    if components.queryItems?.isEmpty == false {
        components.queryItems = components.queryItems?.map { URLQueryItem(name: $0.name, value: "***") }
    }
    return components.string ?? "<url>"
}

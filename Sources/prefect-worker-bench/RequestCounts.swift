import FaultProxy
import Foundation

/// What one push worker's proxy (a `FaultProxy` without faults) counted so far: requests by endpoint, with pool
/// names and ids generalised and WebSocket upgrades marked, and the upgrades tunnelled and refused (both also
/// counted as requests; frames on an open socket are not requests).
struct RequestCounts: Sendable {
    var byEndpoint: [String: Int]
    var webSockets: Int
    var refused: Int
    var requests: Int { byEndpoint.values.reduce(0, +) }

    init(byEndpoint: [String: Int], webSockets: Int, refused: Int) {
        self.byEndpoint = byEndpoint
        self.webSockets = webSockets
        self.refused = refused
    }

    init(_ counters: FaultProxy.Counters) {
        var generalised: [String: Int] = [:]
        for (summary, count) in counters.byEndpoint {
            let upgrades = counters.webSocketsByEndpoint[summary] ?? 0
            if count > upgrades { generalised[Self.endpoint(summary), default: 0] += count - upgrades }
            if upgrades > 0 { generalised[Self.endpoint(summary) + " (WebSocket)", default: 0] += upgrades }
        }
        self.init(byEndpoint: generalised, webSockets: counters.webSocketsTunnelled, refused: counters.webSocketsRefused)
    }

    /// What happened between `earlier` and these counts.
    func since(_ earlier: RequestCounts) -> RequestCounts {
        var delta: [String: Int] = [:]
        for (key, value) in byEndpoint where value - (earlier.byEndpoint[key] ?? 0) > 0 {
            delta[key] = value - (earlier.byEndpoint[key] ?? 0)
        }
        return RequestCounts(byEndpoint: delta, webSockets: webSockets - earlier.webSockets, refused: refused - earlier.refused)
    }

    /// "POST /api/work_pools/{pool}/get_scheduled_flow_runs" for "POST /api/work_pools/push-after-1a2b3c/get_scheduled_flow_runs":
    /// ids and the pool's name generalised, so the workers' endpoints line up in the report.
    static func endpoint(_ summary: String) -> String {
        let method = summary.prefix { $0 != " " }
        var path = String(summary.dropFirst(method.count + 1))
        path = path.replacing(/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/, with: "{id}")
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        if let i = parts.firstIndex(of: "work_pools"), i + 1 < parts.count, !parts[i + 1].isEmpty, parts[i + 1] != "filter" {
            var generalised = parts
            generalised[i + 1] = "{pool}"
            path = generalised.joined(separator: "/")
        }
        return "\(method) \(path)"
    }
}

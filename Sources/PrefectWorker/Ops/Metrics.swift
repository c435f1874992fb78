import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// The worker's counters, rendered in the Prometheus text exposition format for `/metrics`.
final class Metrics: Sendable {

    private struct State {
        var claimed = 0
        var started = 0
        var finished: [String: Int] = ["completed": 0, "failed": 0, "crashed": 0, "cancelled": 0]
        var requests: [String: Int] = [:]
        var errors: [String: Int] = [:]
        var logLinesDropped = 0
        var eventsDropped = 0
        var inFlight = 0
        /// Runs due in the pool that no worker has claimed (`DueRuns`); nil until first known.
        var runsDue: Int?
        /// Wall time of finished jobs: cumulative counts per `durationBuckets` bound, sum, count.
        var durationCounts = [Int](repeating: 0, count: Metrics.durationBuckets.count)
        var durationSum = 0.0
        var durationCount = 0
        var cpuUser = 0.0
        var cpuSystem = 0.0
        var eventSocketUp = false
        /// The events socket's state after the last attempt; nil before the first.
        var eventSocketState: SocketLoop.State?
        var eventsReceived: [String: Int] = [:]
        var eventSocketReconnects = 0
    }

    /// Upper bounds (seconds) of the run duration histogram.
    static let durationBuckets: [Double] = [1, 5, 10, 30, 60, 300, 900, 3600, 14400]

    private let state = Mutex(State())

    func runClaimed() { state.withLock { $0.claimed += 1 } }
    func runStarted() { state.withLock { $0.started += 1 } }
    func runFinished(_ type: StateType) {
        state.withLock { $0.finished[type.rawValue.lowercased(), default: 0] += 1 }
    }
    /// Counts what a finished job used (figures that are unknown are left out).
    func runUsage(_ usage: JobUsage) {
        state.withLock { s in
            if let wall = usage.wallSeconds {
                for (i, bound) in Self.durationBuckets.enumerated() where wall <= bound { s.durationCounts[i] += 1 }
                s.durationSum += wall
                s.durationCount += 1
            }
            s.cpuUser += usage.userCPUSeconds ?? 0
            s.cpuSystem += usage.systemCPUSeconds ?? 0
        }
    }
    func request(_ endpoint: String, failed: Bool) {
        state.withLock {
            $0.requests[endpoint, default: 0] += 1
            if failed { $0.errors[endpoint, default: 0] += 1 }
        }
    }
    func logLinesDropped(_ count: Int) { state.withLock { $0.logLinesDropped += count } }
    func eventsDropped(_ count: Int) { state.withLock { $0.eventsDropped += count } }
    /// The events socket's state after an attempt (`prefect_worker_event_socket_up` and `…_state`).
    func eventSocket(_ socket: SocketLoop.State) {
        state.withLock {
            $0.eventSocketUp = socket == .up
            $0.eventSocketState = socket
        }
    }
    func eventReceived(_ name: String) { state.withLock { $0.eventsReceived[name, default: 0] += 1 } }
    func eventSocketReconnecting() { state.withLock { $0.eventSocketReconnects += 1 } }
    func setInFlight(_ count: Int) { state.withLock { $0.inFlight = count } }
    var inFlight: Int { state.withLock { $0.inFlight } }
    func setRunsDue(_ count: Int) { state.withLock { $0.runsDue = count } }
    var runsDue: Int? { state.withLock { $0.runsDue } }

    /// Groups API paths into a few classes, so label cardinality stays bounded.
    static func endpointClass(method: String, path: String) -> String {
        if path.hasSuffix("/workers/heartbeat") { return "heartbeat" }
        if path.hasSuffix("/get_scheduled_flow_runs") { return "poll" }
        if path.hasSuffix("/set_state") { return "set_state" }
        if path.hasPrefix("/flow_runs/filter") { return "filter_flow_runs" }
        if path.hasPrefix("/flow_runs/count") { return "count_flow_runs" }
        if path.hasSuffix("/labels") { return "labels" }
        if path.hasPrefix("/flow_runs/") { return method == "GET" ? "read_flow_run" : "update_flow_run" }
        if path.hasPrefix("/work_pools") { return "work_pool" }
        if path.hasPrefix("/deployments/") { return "deployment" }
        if path.hasPrefix("/flows/") { return "flow" }
        if path.hasPrefix("/logs") { return "logs" }
        if path.hasPrefix("/events") { return "events" }
        if path.hasPrefix("/variables") { return "variables" }
        return "other"
    }

    /// The exposition text. The loop timestamps and memory are read at scrape time.
    func render(lastHeartbeat: Date?, lastPoll: Date?) -> String {
        let s = state.withLock { $0 }
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, String)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for (labels, value) in samples { out += "\(name)\(labels) \(value)\n" }
        }
        metric("prefect_worker_runs_claimed_total", "counter", "Flow runs claimed with an accepted PENDING.", [("", "\(s.claimed)")])
        metric("prefect_worker_runs_started_total", "counter", "Job processes started.", [("", "\(s.started)")])
        metric("prefect_worker_runs_finished_total", "counter", "Flow runs finished, by the final state the worker saw or reported.",
               s.finished.keys.sorted().map { ("{state=\"\($0)\"}", "\(s.finished[$0]!)") })
        metric("prefect_worker_runs_in_flight", "gauge", "Flow runs claimed and not yet finished.", [("", "\(s.inFlight)")])
        if let due = s.runsDue {
            metric("prefect_worker_pool_runs_due", "gauge",
                   "Flow runs due in the work pool (the worker's queues, when it serves some) that no worker has claimed, as of the last poll.",
                   [("", "\(due)")])
        }
        metric("prefect_worker_api_requests_total", "counter", "Prefect API requests, by endpoint class.",
               s.requests.keys.sorted().map { ("{endpoint=\"\($0)\"}", "\(s.requests[$0]!)") })
        metric("prefect_worker_api_errors_total", "counter", "Prefect API requests that failed, by endpoint class.",
               s.errors.keys.sorted().map { ("{endpoint=\"\($0)\"}", "\(s.errors[$0]!)") })
        metric("prefect_worker_last_heartbeat_timestamp_seconds", "gauge", "Unix time of the last successful heartbeat.",
               [("", String(format: "%.3f", lastHeartbeat?.timeIntervalSince1970 ?? 0))])
        metric("prefect_worker_last_poll_timestamp_seconds", "gauge", "Unix time of the last successful poll.",
               [("", String(format: "%.3f", lastPoll?.timeIntervalSince1970 ?? 0))])
        metric("prefect_worker_log_lines_dropped_total", "counter", "Job output lines not shipped to the API because it was away too long.",
               [("", "\(s.logLinesDropped)")])
        metric("prefect_worker_events_dropped_total", "counter", "Worker events not emitted because the API was away too long (PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE).",
               [("", "\(s.eventsDropped)")])
        metric("prefect_worker_event_socket_up", "gauge", "1 while the events WebSocket (/api/events/out) is subscribed; 0 while the worker falls back to polling.",
               [("", s.eventSocketUp ? "1" : "0")])
        // One series per state, the current one 1 (Prometheus' "state set"): refused (a proxy that may never pass
        // WebSockets) told apart from lost (the server away for a moment). All 0 before the first attempt.
        metric("prefect_worker_event_socket_state", "gauge",
               "State of the events WebSocket: up (subscribed), lost (dropped or unreachable; reconnecting), refused (the upgrade answered with an HTTP status twice while the API answers: a proxy that may not pass WebSockets); 1 for the current state.",
               [SocketLoop.State.lost, .refused, .up].map { (state: SocketLoop.State) in ("{state=\"\(state)\"}", s.eventSocketState == state ? "1" : "0") })
        metric("prefect_worker_events_received_total", "counter", "Events received over the events WebSocket, by event name.",
               s.eventsReceived.keys.sorted().map { ("{event=\"\($0)\"}", "\(s.eventsReceived[$0]!)") })
        metric("prefect_worker_event_socket_reconnects_total", "counter", "Times the events WebSocket was lost or could not be opened, and was retried.",
               [("", "\(s.eventSocketReconnects)")])
        var buckets = Self.durationBuckets.enumerated().map { ("{le=\"\(String(format: "%g", $0.element))\"}", "\(s.durationCounts[$0.offset])") }
        buckets.append(("{le=\"+Inf\"}", "\(s.durationCount)"))
        out += "# HELP prefect_worker_run_duration_seconds Wall time of job processes, from start to exit.\n# TYPE prefect_worker_run_duration_seconds histogram\n"
        for (labels, value) in buckets { out += "prefect_worker_run_duration_seconds_bucket\(labels) \(value)\n" }
        out += "prefect_worker_run_duration_seconds_sum \(String(format: "%.3f", s.durationSum))\n"
        out += "prefect_worker_run_duration_seconds_count \(s.durationCount)\n"
        metric("prefect_worker_run_cpu_seconds_total", "counter", "CPU time used by job processes (and the descendants they waited for), by mode.",
               [("{mode=\"system\"}", String(format: "%.3f", s.cpuSystem)), ("{mode=\"user\"}", String(format: "%.3f", s.cpuUser))])
        metric("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", [("", "\(Self.residentBytes())")])
        return out
    }

    /// Resident set size from /proc/self/statm.
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}

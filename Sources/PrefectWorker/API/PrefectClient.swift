import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Synchronization

/// The Prefect REST API as the worker uses it: authenticated JSON requests with retries.
public final class PrefectClient: Sendable {
    public static let apiVersion = "0.8.4"

    public let baseURL: URL
    private let session: URLSession
    private let loader: ResponseLoader
    private let headers: [String: String]
    private let lastSuccess = Mutex<Date?>(nil)
    /// Requests in flight at once. More wait here, in Swift, rather than inside libcurl: curl's queue of
    /// handles waiting for a connection polls on a ~1 ms timer, which burned whole CPU seconds per burst.
    private let slots = AsyncSemaphore(8)
    /// Bodies larger than this are refused: a worker has no use for them and must not run out of memory.
    static let maxResponseBytes = 32 * 1024 * 1024

    public init(baseURL: URL, apiKey: String?, authString: String?, requestTimeout: Double = 30) {
        self.baseURL = baseURL
        var headers = [
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-PREFECT-API-VERSION": Self.apiVersion,
            // Deliberately not `prefect/x.y.z (API ...)`: the server then treats us as a non-Prefect client
            // and releases deployment-concurrency leases itself (see the protocol reference, section 5).
            "User-Agent": "prefect-worker/\(WorkerVersion.current) (Swift; API \(Self.apiVersion))",
        ]
        // Prefect sends the auth string in preference to the key.
        if let authString, !authString.isEmpty {
            headers["Authorization"] = "Basic " + Data(authString.utf8).base64EncodedString()
        } else if let apiKey, !apiKey.isEmpty {
            headers["Authorization"] = "Bearer " + apiKey
        }
        self.headers = headers
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = requestTimeout
        configuration.timeoutIntervalForResource = requestTimeout * 2
        configuration.httpMaximumConnectionsPerHost = 16
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        configuration.urlCache = nil
        configuration.httpCookieStorage = nil
        self.loader = ResponseLoader(limit: Self.maxResponseBytes)
        self.session = URLSession(configuration: configuration, delegate: loader, delegateQueue: nil)
    }

    /// When a request last got a 2xx answer.
    public var lastSuccessfulRequest: Date? { lastSuccess.withLock { $0 } }

    // MARK: - Sending

    /// Sends one request, retrying per `policy`. Returns the body of a 2xx answer.
    @discardableResult
    public func send(_ method: String, _ path: String, body: JSON? = nil, what: String,
                     policy: RetryPolicy = .standard) async throws -> Data {
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await sendOnce(method, path, body: body)
            } catch let error as APIError where error.isRetryable && attempt < policy.maxAttempts {
                let delay = policy.delay(afterAttempt: attempt, retryAfter: error.retryAfter)
                let since = lastSuccessfulRequest.map { String(format: "; last success %.0f s ago", Date().timeIntervalSince($0)) } ?? ""
                Log.warning("\(what) failed: \(error); retrying in \(String(format: "%.1f", delay)) s\(since)")
                try await Task.sleep(nanoseconds: UInt64(delay * 1_000_000_000))
            }
        }
    }

    func url(for path: String) -> URL {
        var base = baseURL.absoluteString
        while base.hasSuffix("/") { base.removeLast() }
        return URL(string: base + path)!
    }

    private func sendOnce(_ method: String, _ path: String, body: JSON?) async throws -> Data {
        let url = url(for: path)
        let endpoint = "\(method) \(redactedURL(url))"
        var request = URLRequest(url: url)
        request.httpMethod = method
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        if let body { request.httpBody = Data(body.encoded().utf8) }
        let data: Data
        let response: URLResponse
        let endpointClass = Metrics.endpointClass(method: method, path: path)
        do {
            try await slots.acquire()
            defer { slots.release() }
            (data, response) = try await loader.load(request, in: session)
        } catch is CancellationError {
            throw CancellationError()
        } catch let tooLarge as ResponseLoader.TooLarge {
            Metrics.shared.request(endpointClass, failed: true)
            throw APIError.badResponse(endpoint: endpoint, reason: "body too large: \(tooLarge.bytes) bytes or more, over the \(Self.maxResponseBytes)-byte limit")
        } catch {
            if Task.isCancelled { throw CancellationError() }
            Metrics.shared.request(endpointClass, failed: true)
            throw APIError.transport(endpoint: endpoint, reason: Self.describe(error))
        }
        let ok = (response as? HTTPURLResponse).map { (200..<300).contains($0.statusCode) } ?? false
        Metrics.shared.request(endpointClass, failed: !ok)
        guard let http = response as? HTTPURLResponse else {
            throw APIError.badResponse(endpoint: endpoint, reason: "not an HTTP response")
        }
        guard (200..<300).contains(http.statusCode) else {
            throw APIError.http(endpoint: endpoint, status: http.statusCode, detail: Self.detail(from: data),
                                retryAfter: RetryPolicy.parseRetryAfter(http.value(forHTTPHeaderField: "Retry-After")))
        }
        lastSuccess.withLock { $0 = Date() }
        return data
    }

    /// The server's explanation from an error body (`{"detail": ...}` or `{"exception_message": ...}`), shortened.
    static func detail(from data: Data) -> String {
        if let json = try? JSON.decode(data) {
            if let detail = json["detail"] {
                return String((detail.stringValue ?? detail.encoded()).prefix(500))
            }
            if let message = json["exception_message"]?.stringValue {
                let detail = json["exception_detail"].map { ": " + ($0.stringValue ?? $0.encoded()) } ?? ""
                return String((message + detail).prefix(500))
            }
        }
        let text = String(decoding: data.prefix(200), as: UTF8.self)
            .replacingOccurrences(of: "\n", with: " ")
            .trimmingCharacters(in: .whitespaces)
        return text
    }

    static func describe(_ error: Error) -> String {
        let ns = error as NSError
        if ns.domain == NSURLErrorDomain {
            switch ns.code {
            case NSURLErrorTimedOut: return "timed out"
            case NSURLErrorCannotConnectToHost: return "connection refused"
            case NSURLErrorNetworkConnectionLost: return "connection lost"
            case NSURLErrorCannotFindHost: return "host not found"
            case NSURLErrorNotConnectedToInternet: return "network unreachable"
            default: break
            }
        }
        return ns.localizedDescription
    }

    func decode<T: Decodable>(_ type: T.Type, from data: Data, what: String) throws -> T {
        do {
            return try JSONTreeDecoder.decode(T.self, from: data)
        } catch {
            let snippet = String(decoding: data.prefix(120), as: UTF8.self)
            throw APIError.badResponse(endpoint: what, reason: "cannot decode \(T.self) (\(error)) from \(snippet)")
        }
    }

    static func pathComponent(_ s: String) -> String {
        var allowed = CharacterSet.urlPathAllowed
        allowed.remove(charactersIn: "/?#%")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? s
    }
}

// MARK: - Endpoints

extension PrefectClient {
    /// `GET /work_pools/{name}`; nil when the pool does not exist.
    public func readWorkPool(_ name: String, policy: RetryPolicy = .standard) async throws -> WorkPool? {
        do {
            let data = try await send("GET", "/work_pools/\(Self.pathComponent(name))", what: "reading work pool '\(name)'", policy: policy)
            return try decode(WorkPool.self, from: data, what: "GET /work_pools/\(name)")
        } catch let error as APIError where error.status == 404 {
            return nil
        }
    }

    /// `POST /work_pools/`.
    public func createWorkPool(name: String, type: String, baseJobTemplate: JSON) async throws -> WorkPool {
        let body = JSON.object(["name": .string(name), "type": .string(type), "base_job_template": baseJobTemplate])
        let data = try await send("POST", "/work_pools/", body: body, what: "creating work pool '\(name)'")
        return try decode(WorkPool.self, from: data, what: "POST /work_pools/")
    }

    /// `PATCH /work_pools/{name}` with a new base job template.
    public func updateWorkPoolTemplate(name: String, baseJobTemplate: JSON) async throws {
        try await send("PATCH", "/work_pools/\(Self.pathComponent(name))",
                       body: .object(["base_job_template": baseJobTemplate]), what: "updating work pool '\(name)'")
    }

    /// `GET /work_pools/{pool}/queues/{name}`; nil when the queue does not exist.
    public func readWorkQueue(pool: String, name: String) async throws -> JSON? {
        do {
            let data = try await send("GET", "/work_pools/\(Self.pathComponent(pool))/queues/\(Self.pathComponent(name))",
                                      what: "reading work queue '\(name)'")
            return try decode(JSON.self, from: data, what: "GET queue")
        } catch let error as APIError where error.status == 404 {
            return nil
        }
    }

    /// `POST /work_pools/{pool}/queues` (no trailing slash: with one the server answers 307).
    public func createWorkQueue(pool: String, name: String) async throws {
        try await send("POST", "/work_pools/\(Self.pathComponent(pool))/queues",
                       body: .object(["name": .string(name)]), what: "creating work queue '\(name)'")
    }

    /// `POST /work_pools/{pool}/workers/heartbeat`: marks the worker ONLINE.
    public func heartbeat(pool: String, worker: String, intervalSeconds: Int, policy: RetryPolicy = .quick) async throws {
        let body = JSON.object(["name": .string(worker), "heartbeat_interval_seconds": .int(intervalSeconds)])
        try await send("POST", "/work_pools/\(Self.pathComponent(pool))/workers/heartbeat", body: body,
                       what: "heartbeat", policy: policy)
    }

    /// `POST /work_pools/{pool}/get_scheduled_flow_runs`.
    public func scheduledFlowRuns(pool: String, queues: [String], before: Date, limit: Int?,
                                  policy: RetryPolicy = .quick) async throws -> [FlowRun] {
        var body: [String: JSON] = [
            "work_queue_names": .array(queues.map(JSON.string)),
            "scheduled_before": .string(Timestamp.format(before)),
        ]
        if let limit { body["limit"] = .int(limit) }
        let data = try await send("POST", "/work_pools/\(Self.pathComponent(pool))/get_scheduled_flow_runs",
                                  body: .object(body), what: "polling for flow runs", policy: policy)
        // One malformed entry must not hide the others: decode each on its own and skip (and log) bad ones.
        let entries = try decode([Lenient<WorkerFlowRunResponse>].self, from: data, what: "get_scheduled_flow_runs")
        return entries.compactMap { entry in
            switch entry.result {
            case .success(let response): return response.flowRun
            case .failure(let error):
                Log.warning("skipping a malformed entry in the get_scheduled_flow_runs response: \(error)")
                return nil
            }
        }
    }

    /// `GET /flow_runs/{id}`.
    public func readFlowRun(_ id: String, policy: RetryPolicy = .standard) async throws -> FlowRun {
        let data = try await send("GET", "/flow_runs/\(Self.pathComponent(id))", what: "reading flow run \(id)", policy: policy)
        return try decode(FlowRun.self, from: data, what: "GET /flow_runs/\(id)")
    }

    /// `POST /flow_runs/filter`.
    public func filterFlowRuns(_ filter: JSON, policy: RetryPolicy = .standard) async throws -> [FlowRun] {
        let data = try await send("POST", "/flow_runs/filter", body: filter, what: "filtering flow runs", policy: policy)
        return try decode([FlowRun].self, from: data, what: "POST /flow_runs/filter")
    }

    /// `GET /deployments/{id}`; nil when the deployment is gone.
    public func readDeployment(_ id: String) async throws -> Deployment? {
        do {
            let data = try await send("GET", "/deployments/\(Self.pathComponent(id))", what: "reading deployment \(id)")
            return try decode(Deployment.self, from: data, what: "GET /deployments/\(id)")
        } catch let error as APIError where error.status == 404 {
            return nil
        }
    }

    /// `GET /flows/{id}`: the flow's name (for events).
    public func readFlowName(_ id: String) async throws -> String? {
        let data = try await send("GET", "/flows/\(Self.pathComponent(id))", what: "reading flow \(id)", policy: .quick)
        return try decode(JSON.self, from: data, what: "GET /flows/\(id)")["name"]?.stringValue
    }

    /// `GET /variables/name/{name}`; nil when the variable does not exist.
    public func readVariable(_ name: String) async throws -> PrefectVariable? {
        do {
            let data = try await send("GET", "/variables/name/\(Self.pathComponent(name))", what: "reading variable '\(name)'")
            return try decode(PrefectVariable.self, from: data, what: "GET /variables/name/\(name)")
        } catch let error as APIError where error.status == 404 {
            return nil
        }
    }

    /// `POST /flow_runs/{id}/set_state`. Retries reuse the proposal's transition id, so a retry after a lost
    /// response is recognised by the server (REJECT with the state we proposed) rather than applied twice.
    public func setState(_ id: String, _ proposal: StateProposal, policy: RetryPolicy = .standard) async throws -> OrchestrationResult {
        let data = try await send("POST", "/flow_runs/\(Self.pathComponent(id))/set_state", body: proposal.body,
                                  what: "proposing \(proposal.type.rawValue) for flow run \(id)", policy: policy)
        return try decode(OrchestrationResult.self, from: data, what: "set_state")
    }

    /// `GET /flow_run_states/?flow_run_id=`: the run's state history, oldest first.
    public func flowRunStates(_ id: String) async throws -> [FlowRunState] {
        let data = try await send("GET", "/flow_run_states/?flow_run_id=\(Self.pathComponent(id))", what: "reading the states of flow run \(id)")
        let states = try decode([FlowRunState].self, from: data, what: "GET /flow_run_states/")
        return states.sorted { ($0.timestamp ?? "") < ($1.timestamp ?? "") }
    }

    /// Puts back a state the run had (with its result reference), forcing it past the orchestration rules.
    public func restoreState(_ id: String, _ state: FlowRunState, message: String) async throws -> OrchestrationResult {
        let body = JSON.object([
            "state": .object([
                "type": .string(state.type.rawValue),
                "name": state.name.map(JSON.string) ?? .null,
                "message": .string(message),
                "data": state.data ?? .null,
                "state_details": .object(["transition_id": .string(UUID().uuidString.lowercased())]),
            ]),
            "force": .bool(true),
        ])
        let data = try await send("POST", "/flow_runs/\(Self.pathComponent(id))/set_state", body: body,
                                  what: "restoring the \(state.type.rawValue) state of flow run \(id)")
        return try decode(OrchestrationResult.self, from: data, what: "set_state")
    }

    /// `PATCH /flow_runs/{id}` with the infrastructure pid, as Prefect's process worker records it.
    public func setInfrastructurePID(_ id: String, pid: Int32, policy: RetryPolicy = .standard) async throws {
        try await send("PATCH", "/flow_runs/\(Self.pathComponent(id))", body: .object(["infrastructure_pid": .string(String(pid))]),
                       what: "recording pid of flow run \(id)", policy: policy)
    }

    /// `PATCH /flow_runs/{id}/labels`: merged into the run's labels.
    public func addLabels(_ id: String, _ labels: [String: String], policy: RetryPolicy = .standard) async throws {
        try await send("PATCH", "/flow_runs/\(Self.pathComponent(id))/labels", body: .object(labels.mapValues(JSON.string)),
                       what: "labelling flow run \(id)", policy: policy)
    }
}

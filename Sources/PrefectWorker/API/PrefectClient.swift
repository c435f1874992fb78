import CCurl
import Foundation
import Synchronization

/// The Prefect REST API as the worker uses it: authenticated JSON requests with retries, over libcurl.
public final class PrefectClient: Sendable {
    static let apiVersion = "0.8.4"

    let baseURL: URL
    private let transport: CurlTransport
    private let settings: ClientSettings
    private let headers: [String]
    /// Headers learnt at run time (the worker's name and id), sent with every later request.
    private let identityHeaders = Mutex<[String: String]>([:])
    private let health = Mutex<Health>(Health())
    /// Maintenance and rate-limit pauses the server asked for (see `ServerBackoff`).
    let backoff = Mutex(ServerBackoff())
    /// Requests in flight at once. More wait here, in Swift: curl's queue of transfers waiting for a
    /// connection is driven by a ~1 ms timer.
    private let slots = AsyncSemaphore(8)
    /// Bodies larger than this are refused (the transfer is cut short): a worker has no use for them and must
    /// not run out of memory. Lists (the poll, filters, a run's states) get the larger bound, as they may hold
    /// many runs with parameters (Prefect allows 512 KB of them per run); one object (a run, a deployment, a
    /// pool, a state change) stays far below the smaller one, so a huge answer costs a few MB at most.
    static let maxResponseBytes = 32 * 1024 * 1024
    static let maxObjectResponseBytes = 4 * 1024 * 1024

    static func responseLimit(path: String) -> Int {
        let route = path.split(separator: "?").first.map(String.init) ?? path
        let isList = route.hasSuffix("/get_scheduled_flow_runs") || route.hasSuffix("/filter") || route.hasPrefix("/flow_run_states")
        return isList ? maxResponseBytes : maxObjectResponseBytes
    }
    /// How long the API may fail before a retry is worth a WARNING rather than a DEBUG line.
    static let quietFailureSeconds = 10.0
    /// `quietFailureSeconds` for this client (tests make it shorter).
    let warnAfterFailingSeconds: Double

    private struct Health {
        var lastSuccess: Date?
        var failingSince: Date?
    }

    /// A client with default settings but for the request timeout.
    public convenience init(baseURL: URL, apiKey: String?, authString: String?, requestTimeout: Double = 60) {
        var settings = ClientSettings()
        settings.requestTimeout = requestTimeout
        self.init(baseURL: baseURL, apiKey: apiKey, authString: authString, settings: settings)
    }

    /// Counts every request and its failures for `/metrics`.
    let metrics: Metrics
    /// Where the client's own lines go (retries, skipped entries): the worker gives it a logger with its
    /// redaction (`Worker.init`). Its lines are the worker's, never about one run.
    let log: Logger

    init(baseURL: URL, apiKey: String?, authString: String?, settings: ClientSettings, metrics: Metrics = Metrics(),
         log: Logger = .console, warnAfterFailingSeconds: Double = PrefectClient.quietFailureSeconds) {
        self.log = log
        self.baseURL = baseURL
        self.warnAfterFailingSeconds = warnAfterFailingSeconds
        self.metrics = metrics
        self.settings = settings
        var headers = settings.customHeaders.map { "\($0.key): \($0.value)" }.sorted()
        headers += [
            "Content-Type: application/json",
            "Accept: application/json",
            "X-PREFECT-API-VERSION: \(Self.apiVersion)",
            // Deliberately not `prefect/x.y.z (API ...)`: the server then treats us as a non-Prefect client
            // and releases deployment-concurrency leases itself (see the protocol reference, section 5).
            "User-Agent: prefect-worker/\(WorkerVersion.current) (Swift; API \(Self.apiVersion))",
        ]
        // Prefect sends the auth string in preference to the key.
        if let authString, !authString.isEmpty {
            headers.append("Authorization: Basic " + Data(authString.utf8).base64EncodedString())
        } else if let apiKey, !apiKey.isEmpty {
            headers.append("Authorization: Bearer " + apiKey)
        }
        self.headers = headers
        transport = CurlTransport(options: CurlTransport.Options(
            timeoutSeconds: settings.requestTimeout, caFile: settings.caFile,
            insecureSkipVerify: settings.insecureSkipVerify, http2: settings.http2,
            proxy: settings.proxies.proxy(for: baseURL), noProxy: settings.proxies.noProxy,
            maxBodyBytes: Self.maxResponseBytes))
    }

    deinit { transport.close() }

    /// For how long the API has been failing (network errors, retryable statuses); 0 while it answers.
    var failingSeconds: Double {
        health.withLock { $0.failingSince.map { Date().timeIntervalSince($0) } ?? 0 }
    }

    /// Whether the API has been failing for longer than `warnAfterFailingSeconds`: a retry is then a WARNING.
    var hasBeenFailingLong: Bool { failingSeconds > warnAfterFailingSeconds }

    /// When a request last got a 2xx answer.
    var lastSuccessfulRequest: Date? { health.withLock { $0.lastSuccess } }

    /// The proxy requests go through (credentials redacted), or nil; for the start-up log line.
    var proxyDescription: String? {
        settings.proxies.proxy(for: baseURL).map { proxy in
            let shown = URL(string: proxy).map(redactedURL) ?? "<proxy>"
            return shown + (settings.proxies.noProxy.map { " (NO_PROXY: \($0))" } ?? "")
        }
    }

    /// Sets (or with nil removes) a header sent with every later request, such as the worker's id.
    func setHeader(_ name: String, _ value: String?) {
        identityHeaders.withLock { $0[name] = value }
    }

    // MARK: - Sending

    /// Sends one request, retrying per `policy`. Returns the body of a 2xx answer.
    ///
    /// `.standard` retries as `PREFECT_CLIENT_MAX_RETRIES` says. A retry is logged at DEBUG while the API
    /// has been failing for less than 10 s (a busy server's 503s are routine), at WARNING after that.
    @discardableResult
    func send(_ method: String, _ path: String, body: JSON? = nil, what: String,
              policy: RetryPolicy = .standard) async throws -> Data {
        // Prefect's schedule for ordinary calls: 2, 4, 8, 16, 32 s between its retries (±jitter).
        var policy = policy == .standard ? RetryPolicy(maxAttempts: settings.maxRetries + 1, baseDelay: 2, maxDelay: 32) : policy
        policy.jitter = settings.retryJitterFactor
        var attempt = 0
        while true {
            attempt += 1
            do {
                return try await sendOnce(method, path, body: body)
            } catch let answer as MaintenanceAnswer {
                // Prefect Cloud's maintenance: retried for as long as it lasts, not counted as an attempt.
                attempt -= 1
                let delay = Self.maintenanceDelay(retryAfter: answer.error.retryAfter, jitter: policy.jitter)
                let begins = (maintenanceBackoffEndsAt ?? .distantPast) < Date()
                noteMaintenance(until: Date().addingTimeInterval(delay))
                let line = "\(what): the Prefect API is in maintenance (\(answer.error)); retrying in \(String(format: "%.1f", delay)) s, for as long as it lasts"
                if hasBeenFailingLong { log.warning(line) } else if begins { log.info(line) } else { log.debug(line) }
                try await Task.sleep(seconds: delay)
            } catch let error as APIError where isRetryable(error) && attempt < policy.maxAttempts {
                let delay = policy.delay(afterAttempt: attempt, retryAfter: error.retryAfter)
                let since = lastSuccessfulRequest.map { String(format: "; last success %.0f s ago", Date().timeIntervalSince($0)) } ?? ""
                let line = "\(what) failed: \(error); retrying in \(String(format: "%.1f", delay)) s\(since)"
                if hasBeenFailingLong { log.warning(line) } else { log.debug(line) }
                try await Task.sleep(seconds: delay)
            }
        }
    }

    /// Retryable as `APIError` says, or one of `PREFECT_CLIENT_RETRY_EXTRA_CODES`.
    func isRetryable(_ error: APIError) -> Bool {
        error.isRetryable || error.status.map(settings.retryExtraCodes.contains) == true
    }

    func url(for path: String) -> URL {
        var base = baseURL.absoluteString
        while base.hasSuffix("/") { base.removeLast() }
        return URL(string: base + path)!
    }

    private func sendOnce(_ method: String, _ path: String, body: JSON?) async throws -> Data {
        let url = url(for: path)
        let endpoint = "\(method) \(redactedURL(url))"
        let endpointClass = Metrics.endpointClass(method: method, path: path)
        let limit = Self.responseLimit(path: path)
        let request = CurlTransport.Request(
            method: method, url: url.absoluteString,
            headers: headers + identityHeaders.withLock { $0.map { "\($0.key): \($0.value)" } },
            body: body.map { Data($0.encoded().utf8) }, maxBodyBytes: limit)
        let response: CurlTransport.Response
        do {
            try await waitOutPause(of: endpointClass)
            try await slots.acquire()
            defer { slots.release() }
            response = try await transport.perform(request)
        } catch is CancellationError {
            throw CancellationError()
        } catch let failure as CurlTransport.Failure {
            metrics.request(endpointClass, failed: true)
            noteFailure()
            switch failure {
            case .tooLarge(let bytes):
                throw APIError.badResponse(endpoint: endpoint, reason: "body too large: \(bytes) bytes or more, over the \(limit)-byte limit")
            case .curl(let code, let message):
                throw APIError.transport(endpoint: endpoint, reason: describe(code: code, message: message, url: url))
            }
        }
        let ok = (200..<300).contains(response.status)
        metrics.request(endpointClass, failed: !ok)
        let retryAfter = RetryPolicy.parseRetryAfter(response.retryAfter)
        if response.status == 429, let retryAfter {
            pauseGroup(endpointClass, for: retryAfter, endpoint: endpoint)
        }
        guard ok else {
            if RetryPolicy.isRetryable(status: response.status) {
                noteFailure()
            } else {
                health.withLock { $0.failingSince = nil } // the API answers; the request was refused
            }
            let error = APIError.http(endpoint: endpoint, status: response.status, detail: Self.detail(from: response.body),
                                      retryAfter: retryAfter)
            if response.maintenance, RetryPolicy.isRetryable(status: response.status) { throw MaintenanceAnswer(error: error) }
            throw error
        }
        health.withLock { $0 = Health(lastSuccess: Date(), failingSince: nil) }
        return response.body
    }

    /// Opens a WebSocket to `path` under the API URL (ws:// or wss://), with the same connection settings
    /// (proxy, TLS, CA file, timeouts) and headers (auth, custom headers, identity) as every REST call.
    func webSocket(path: String, subprotocol: String?, limits: WebSocket.Limits = WebSocket.Limits()) async throws -> WebSocket {
        var parts = URLComponents(url: url(for: path), resolvingAgainstBaseURL: false)!
        parts.scheme = parts.scheme == "https" ? "wss" : "ws"
        let all = headers + identityHeaders.withLock { $0.map { "\($0.key): \($0.value)" } }
        return try await WebSocket.connect(url: parts.url!, options: transport.options, headers: all,
                                           subprotocol: subprotocol, limits: limits)
    }

    private func noteFailure() {
        health.withLock { health in
            if health.failingSince == nil { health.failingSince = Date() }
        }
    }

    /// What went wrong, in words that name the host and, for TLS, the setting that fixes it.
    func describe(code: Int, message: String, url: URL) -> String {
        let host = url.host ?? "the server"
        switch code {
        case Int(CURLE_PEER_FAILED_VERIFICATION.rawValue) where message.contains("subject name") || message.contains("does not match"):
            return "TLS: the certificate of \(host) is not trusted: it was not issued for that name (\(message)); use the name the certificate was issued for in PREFECT_API_URL, or set PREFECT_API_TLS_INSECURE_SKIP_VERIFY=true to skip verification (not for production)"
        case Int(CURLE_PEER_FAILED_VERIFICATION.rawValue):
            let fix = settings.caFile.map { "the CA file \($0) (PREFECT_API_SSL_CERT_FILE) does not vouch for it; point PREFECT_API_SSL_CERT_FILE at the CA that signed it" }
                ?? "set PREFECT_API_SSL_CERT_FILE to the CA bundle that signed it"
            return "TLS: the certificate of \(host) is not trusted (\(message)); \(fix), or set PREFECT_API_TLS_INSECURE_SKIP_VERIFY=true to skip verification (not for production)"
        case Int(CURLE_SSL_CACERT_BADFILE.rawValue):
            return "TLS: cannot use the CA file \(settings.caFile ?? "?") given by PREFECT_API_SSL_CERT_FILE/SSL_CERT_FILE (\(message))"
        case Int(CURLE_SSL_CONNECT_ERROR.rawValue):
            return "TLS handshake with \(host) failed (\(message))"
        case Int(CURLE_OPERATION_TIMEDOUT.rawValue):
            return "timed out after \(String(format: "%g", settings.requestTimeout)) s (PREFECT_API_REQUEST_TIMEOUT)"
        case Int(CURLE_COULDNT_CONNECT.rawValue):
            return "connection refused (\(message))"
        case Int(CURLE_COULDNT_RESOLVE_HOST.rawValue):
            return "host not found (\(message))"
        case Int(CURLE_COULDNT_RESOLVE_PROXY.rawValue):
            return "proxy host not found (\(message)); check HTTPS_PROXY/HTTP_PROXY/ALL_PROXY"
        case Int(CURLE_GOT_NOTHING.rawValue), Int(CURLE_RECV_ERROR.rawValue), Int(CURLE_SEND_ERROR.rawValue):
            return "connection lost (\(message))"
        default:
            return message
        }
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
    func readWorkPool(_ name: String, policy: RetryPolicy = .standard) async throws -> WorkPool? {
        try await read(WorkPool.self, "/work_pools/\(Self.pathComponent(name))", what: "work pool '\(name)'", policy: policy)
    }

    /// `POST /work_pools/`.
    func createWorkPool(name: String, type: String, baseJobTemplate: JSON) async throws -> WorkPool {
        let body = JSON.object(["name": .string(name), "type": .string(type), "base_job_template": baseJobTemplate])
        let data = try await send("POST", "/work_pools/", body: body, what: "creating work pool '\(name)'")
        return try decode(WorkPool.self, from: data, what: "POST /work_pools/")
    }

    /// `PATCH /work_pools/{name}` with a new base job template.
    func updateWorkPoolTemplate(name: String, baseJobTemplate: JSON) async throws {
        try await send("PATCH", "/work_pools/\(Self.pathComponent(name))",
                       body: .object(["base_job_template": baseJobTemplate]), what: "updating work pool '\(name)'")
    }

    /// `GET /work_pools/{pool}/queues/{name}`; nil when the queue does not exist.
    func readWorkQueue(pool: String, name: String) async throws -> JSON? {
        try await read(JSON.self, "/work_pools/\(Self.pathComponent(pool))/queues/\(Self.pathComponent(name))", what: "work queue '\(name)'")
    }

    /// `POST /work_pools/{pool}/queues` (no trailing slash: with one the server answers 307).
    func createWorkQueue(pool: String, name: String) async throws {
        try await send("POST", "/work_pools/\(Self.pathComponent(pool))/queues",
                       body: .object(["name": .string(name)]), what: "creating work queue '\(name)'")
    }

    /// `POST /work_pools/{pool}/workers/heartbeat`: marks the worker ONLINE. With `returnID` (Prefect Cloud
    /// only, as Prefect's worker asks), the answer is the worker's id; nil if the body is not one.
    @discardableResult
    func heartbeat(pool: String, worker: String, intervalSeconds: Int, returnID: Bool = false,
                   policy: RetryPolicy = .quick) async throws -> String? {
        var body: [String: JSON] = ["name": .string(worker), "heartbeat_interval_seconds": .int(intervalSeconds)]
        if returnID { body["return_id"] = .bool(true) }
        let data = try await send("POST", "/work_pools/\(Self.pathComponent(pool))/workers/heartbeat", body: .object(body),
                                  what: "heartbeat", policy: policy)
        guard returnID else { return nil }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: CharacterSet(charactersIn: "\" \n\r\t"))
        return UUID(uuidString: text) == nil ? nil : text.lowercased()
    }

    /// `POST /work_pools/{pool}/get_scheduled_flow_runs`.
    func scheduledFlowRuns(pool: String, queues: [String], before: Date, limit: Int?,
                           policy: RetryPolicy = .quick) async throws -> [FlowRun] {
        var body: [String: JSON] = [
            "work_queue_names": .array(queues.map(JSON.string)),
            "scheduled_before": .string(Timestamp.format(before)),
        ]
        if let limit { body["limit"] = .int(limit) }
        let data = try await send("POST", "/work_pools/\(Self.pathComponent(pool))/get_scheduled_flow_runs",
                                  body: .object(body), what: "polling for flow runs", policy: policy)
        let polled = Date()
        // One malformed entry must not hide the others: decode each on its own and skip (and log) bad ones.
        let entries = try decode([Lenient<WorkerFlowRunResponse>].self, from: data, what: "get_scheduled_flow_runs")
        return entries.compactMap { entry in
            switch entry.result {
            case .success(let response):
                var run = response.flowRun
                run.polledAt = polled
                return run
            case .failure(let error):
                log.warning("skipping a malformed entry in the get_scheduled_flow_runs response: \(error)")
                return nil
            }
        }
    }

    /// `POST /flow_runs/count`: SCHEDULED runs of the pool (only `queues`, when given) due before `before`
    /// (the autoscaling signal, `DueRuns`).
    func countDueFlowRuns(pool: String, queues: [String], before: Date) async throws -> Int {
        var body: [String: JSON] = [
            "flow_runs": .object([
                "state": .object(["type": .object(["any_": .array([.string("SCHEDULED")])])]),
                "next_scheduled_start_time": .object(["before_": .string(Timestamp.format(before))]),
            ]),
            "work_pools": .object(["name": .object(["any_": .array([.string(pool)])])]),
        ]
        if !queues.isEmpty {
            body["work_pool_queues"] = .object(["name": .object(["any_": .array(queues.map(JSON.string))])])
        }
        let data = try await send("POST", "/flow_runs/count", body: .object(body), what: "counting due flow runs", policy: .quick)
        return try decode(Int.self, from: data, what: "POST /flow_runs/count")
    }

    /// `GET /flow_runs/{id}`.
    func readFlowRun(_ id: String, policy: RetryPolicy = .standard) async throws -> FlowRun {
        let data = try await send("GET", "/flow_runs/\(Self.pathComponent(id))", what: "reading flow run \(id)", policy: policy)
        return try decode(FlowRun.self, from: data, what: "GET /flow_runs/\(id)")
    }

    /// `POST /flow_runs/filter`.
    func filterFlowRuns(_ filter: JSON, policy: RetryPolicy = .standard) async throws -> [FlowRun] {
        let data = try await send("POST", "/flow_runs/filter", body: filter, what: "filtering flow runs", policy: policy)
        return try decode([FlowRun].self, from: data, what: "POST /flow_runs/filter")
    }

    /// `GET /deployments/{id}`; nil when the deployment is gone.
    func readDeployment(_ id: String) async throws -> Deployment? {
        try await read(Deployment.self, "/deployments/\(Self.pathComponent(id))", what: "deployment \(id)")
    }

    /// `GET /flows/{id}`: the flow's name (for events).
    func readFlowName(_ id: String) async throws -> String? {
        let data = try await send("GET", "/flows/\(Self.pathComponent(id))", what: "reading flow \(id)", policy: .quick)
        return try decode(JSON.self, from: data, what: "GET /flows/\(id)")["name"]?.stringValue
    }

    /// `GET /variables/name/{name}`; nil when the variable does not exist.
    func readVariable(_ name: String) async throws -> PrefectVariable? {
        try await read(PrefectVariable.self, "/variables/name/\(Self.pathComponent(name))", what: "variable '\(name)'")
    }

    /// `GET path` decoded as `T`; nil when the server answers 404 (the object does not exist).
    private func read<T: Decodable>(_ type: T.Type, _ path: String, what: String, policy: RetryPolicy = .standard) async throws -> T? {
        let data: Data
        do {
            data = try await send("GET", path, what: "reading \(what)", policy: policy)
        } catch let error as APIError where error.status == 404 {
            return nil
        }
        return try decode(T.self, from: data, what: "GET \(path)")
    }

    /// `GET /block_types/slug/{slug}/block_documents/name/{name}?include_secrets=true`; nil when there is no
    /// such block. Never cached: a block may change between two runs.
    func readBlockDocument(slug: String, name: String) async throws -> BlockDocument? {
        try await readBlockDocument("/block_types/slug/\(Self.pathComponent(slug))/block_documents/name/\(Self.pathComponent(name))",
                                    what: "block '\(slug)/\(name)'")
    }

    /// `GET /block_documents/{id}?include_secrets=true`; nil when there is no such block document.
    func readBlockDocument(id: String) async throws -> BlockDocument? {
        try await readBlockDocument("/block_documents/\(Self.pathComponent(id))", what: "block document '\(id)'")
    }

    private func readBlockDocument(_ path: String, what: String) async throws -> BlockDocument? {
        let data: Data
        do {
            data = try await send("GET", path + "?include_secrets=true", what: "reading \(what)")
        } catch let error as APIError where error.status == 404 {
            return nil
        }
        // Not `decode`: its error quotes the body, and this body holds secrets.
        guard let json = try? JSON.decode(data) else {
            throw APIError.badResponse(endpoint: "GET \(path)", reason: "\(what): the body is not JSON")
        }
        guard let document = BlockDocument(response: json) else {
            throw BlockDocument.Unusable(what: what)
        }
        return document
    }

    /// `POST /flow_runs/{id}/set_state`. Retries reuse the proposal's transition id, so a retry after a lost
    /// response is recognised by the server (REJECT with the state we proposed) rather than applied twice.
    public func setState(_ id: String, _ proposal: StateProposal, policy: RetryPolicy = .standard) async throws -> OrchestrationResult {
        let data = try await send("POST", "/flow_runs/\(Self.pathComponent(id))/set_state", body: proposal.body,
                                  what: "proposing \(proposal.type.rawValue) for flow run \(id)", policy: policy)
        return try decode(OrchestrationResult.self, from: data, what: "set_state")
    }

    /// `GET /flow_run_states/?flow_run_id=`: the run's state history, oldest first.
    func flowRunStates(_ id: String) async throws -> [FlowRunState] {
        let data = try await send("GET", "/flow_run_states/?flow_run_id=\(Self.pathComponent(id))", what: "reading the states of flow run \(id)")
        let states = try decode([FlowRunState].self, from: data, what: "GET /flow_run_states/")
        return states.sorted { ($0.timestamp ?? "") < ($1.timestamp ?? "") }
    }

    /// Puts back a state the run had (with its result reference), forcing it past the orchestration rules.
    func restoreState(_ id: String, _ state: FlowRunState, message: String) async throws -> OrchestrationResult {
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
    func setInfrastructurePID(_ id: String, pid: Int32, policy: RetryPolicy = .standard) async throws {
        try await send("PATCH", "/flow_runs/\(Self.pathComponent(id))", body: .object(["infrastructure_pid": .string(String(pid))]),
                       what: "recording pid of flow run \(id)", policy: policy)
    }

    /// `PATCH /flow_runs/{id}/labels`: merged into the run's labels.
    func addLabels(_ id: String, _ labels: [String: String], policy: RetryPolicy = .standard) async throws {
        try await send("PATCH", "/flow_runs/\(Self.pathComponent(id))/labels", body: .object(labels.mapValues(JSON.string)),
                       what: "labelling flow run \(id)", policy: policy)
    }
}

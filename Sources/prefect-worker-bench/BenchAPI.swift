import Foundation
import PrefectWorker

/// A flow run as the bench looks at it after a measurement.
struct RunRecord: Sendable {
    var id: String
    var stateType: String
    var stateName: String
    var stateTime: Date?
    var stateMessage: String?
    var startTime: Date?
    var infrastructurePID: String?

    init(_ json: JSON) {
        id = json["id"]?.stringValue ?? ""
        stateType = json["state_type"]?.stringValue ?? json["state"]?["type"]?.stringValue ?? "NONE"
        stateName = json["state_name"]?.stringValue ?? json["state"]?["name"]?.stringValue ?? ""
        stateTime = json["state"]?["timestamp"]?.stringValue.flatMap(Timestamp.parse)
        stateMessage = json["state"]?["message"]?.stringValue
        startTime = json["start_time"]?.stringValue.flatMap(Timestamp.parse)
        infrastructurePID = json["infrastructure_pid"]?.stringValue
    }

    var isTerminal: Bool { BenchAPI.terminal.contains(stateType) }
}

/// An HTTP answer that is not 2xx.
struct HTTPStatusError: Error, CustomStringConvertible {
    var method: String
    var path: String
    var status: Int
    var body: String
    var description: String { "\(status) from \(method) \(path): \(body.prefix(300))" }
}

/// The REST calls the bench makes. Its own calls go through `PlainHTTP` (see there why not URLSession), with
/// retries on connection errors, timeouts, 408, 429 and 5xx (Retry-After honoured); `client` is the worker's
/// own `PrefectClient`, used for the server ceiling.
struct BenchAPI: Sendable {
    static let terminal = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
    let client: PrefectClient
    let http: PlainHTTP
    /// How many runs are created at once: on SQLite more than 2 concurrent writers mostly buy 503s ("database
    /// is locked") and back-off (measured here: 20 runs/s with 2, 5 runs/s with 8).
    let createConcurrency: Int

    init(url: URL, createConcurrency: Int = 2) throws {
        client = PrefectClient(baseURL: url, apiKey: nil, authString: nil)
        http = try PlainHTTP(url: url)
        self.createConcurrency = createConcurrency
    }

    @discardableResult
    func call(_ method: String, _ path: String, _ body: JSON? = nil, policy: RetryPolicy = .standard) async throws -> JSON {
        let payload = body.map { Data($0.encoded().utf8) }
        var attempt = 0
        while true {
            attempt += 1
            var retryAfter: Double?
            let failure: Error
            do {
                let response = try await http.send(method, path, body: payload)
                if (200..<300).contains(response.status) {
                    return response.body.isEmpty ? .null : try JSON.decode(response.body)
                }
                let error = HTTPStatusError(method: method, path: path, status: response.status,
                                            body: String(decoding: response.body, as: UTF8.self))
                guard RetryPolicy.isRetryable(status: response.status) else { throw error }
                retryAfter = RetryPolicy.parseRetryAfter(response.headers["retry-after"])
                failure = error
            } catch let error as PlainHTTP.Failure {
                failure = error
            }
            guard attempt < policy.maxAttempts else { throw failure }
            await Clock.sleep(policy.delay(afterAttempt: attempt, retryAfter: retryAfter))
        }
    }

    /// A `process` pool with Prefect's default template (so neither worker has to install it).
    func createPool(_ name: String) async throws {
        do {
            try await call("POST", "/work_pools/", .object([
                "name": .string(name), "type": "process", "base_job_template": JobTemplate.defaultProcessTemplate,
            ]))
        } catch let error as HTTPStatusError where error.status == 409 {}
    }

    func createFlow(_ name: String) async throws -> String {
        guard let id = try await call("POST", "/flows/", .object(["name": .string(name)]))["id"]?.stringValue else {
            throw BenchError("POST /flows/ returned no id")
        }
        return id
    }

    func createDeployment(_ name: String, flow: String, pool: String, entrypoint: String? = nil,
                          pullSteps: JSON? = nil, jobVariables: [String: JSON] = [:]) async throws -> String {
        var body: [String: JSON] = [
            "name": .string(name), "flow_id": .string(flow), "work_pool_name": .string(pool),
            "job_variables": .object(jobVariables),
        ]
        if let entrypoint { body["entrypoint"] = .string(entrypoint) }
        if let pullSteps { body["pull_steps"] = pullSteps }
        guard let id = try await call("POST", "/deployments/", .object(body))["id"]?.stringValue else {
            throw BenchError("POST /deployments/ returned no id")
        }
        return id
    }

    /// Creates `count` runs of a deployment, `concurrency` requests at a time, SCHEDULED at `at` (now if nil).
    /// Each carries its own idempotency key, so a retried request (its answer lost to a timeout) cannot
    /// create a second run.
    func createRuns(_ deployment: String, count: Int, at: Date?) async throws -> [String] {
        var body: [String: JSON] = [:]
        if let at {
            body["state"] = .object(["type": "SCHEDULED", "name": "Scheduled",
                                     "state_details": .object(["scheduled_time": .string(Timestamp.format(at))])])
        }
        let template = body
        return try await concurrentMap(Array(0..<count), concurrency: createConcurrency) { _ in
            var request = template
            request["idempotency_key"] = .string(UUID().uuidString.lowercased())
            guard let id = try await call("POST", "/deployments/\(deployment)/create_flow_run", .object(request))["id"]?.stringValue else {
                throw BenchError("create_flow_run returned no id")
            }
            return id
        }
    }

    func countRuns(deployment: String, stateTypes: [String]? = nil, stateNames: [String]? = nil) async throws -> Int {
        var runFilter: [String: JSON] = ["deployment_id": .object(["any_": .array([.string(deployment)])])]
        var state: [String: JSON] = [:]
        if let stateTypes { state["type"] = .object(["any_": .array(stateTypes.map(JSON.string))]) }
        if let stateNames { state["name"] = .object(["any_": .array(stateNames.map(JSON.string))]) }
        if !state.isEmpty { runFilter["state"] = .object(state) }
        let result = try await call("POST", "/flow_runs/count", .object(["flow_runs": .object(runFilter)]), policy: .quick)
        if case .int(let n) = result { return n }
        throw BenchError("POST /flow_runs/count returned \(result.encoded())")
    }

    /// Every run of a deployment (paged by 200, the server's maximum).
    func readRuns(deployment: String, expected: Int) async throws -> [RunRecord] {
        var runs: [RunRecord] = []
        for offset in stride(from: 0, to: expected + 200, by: 200) {
            let page = try await call("POST", "/flow_runs/filter", .object([
                "flow_runs": .object(["deployment_id": .object(["any_": .array([.string(deployment)])])]),
                "sort": "ID_DESC", "limit": .int(200), "offset": .int(offset),
            ]))
            guard case .array(let items) = page else { break }
            runs += items.map(RunRecord.init)
            if items.count < 200 { break }
        }
        return runs
    }

    func readRun(_ id: String) async throws -> RunRecord {
        RunRecord(try await call("GET", "/flow_runs/\(id)", policy: .quick))
    }

    /// Name → status of the pool's workers.
    func workers(pool: String) async throws -> [String: String] {
        guard case .array(let items) = try await call("POST", "/work_pools/\(pool)/workers/filter", .object([:]), policy: .once) else { return [:] }
        var statuses: [String: String] = [:]
        for item in items {
            if let name = item["name"]?.stringValue { statuses[name] = item["status"]?.stringValue ?? "?" }
        }
        return statuses
    }
}

/// `transform` over `items` with at most `concurrency` running at once; results in input order.
func concurrentMap<T: Sendable, R: Sendable>(_ items: [T], concurrency: Int,
                                              _ transform: @escaping @Sendable (T) async throws -> R) async throws -> [R] {
    try await withThrowingTaskGroup(of: (Int, R).self) { group in
        var results = [R?](repeating: nil, count: items.count)
        var next = 0
        while next < min(concurrency, items.count) {
            let index = next
            group.addTask { (index, try await transform(items[index])) }
            next += 1
        }
        while let (index, result) = try await group.next() {
            results[index] = result
            if next < items.count {
                let index = next
                group.addTask { (index, try await transform(items[index])) }
                next += 1
            }
        }
        return results.map { $0! }
    }
}

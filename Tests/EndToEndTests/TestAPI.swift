import Foundation
@testable import PrefectWorker

/// What the tests do to the real Prefect server: create pools, flows, deployments and runs, and read back
/// what the worker did. Uses the worker's own `PrefectClient`, whose `send` retries the SQLite server's 503s.
struct TestAPI: Sendable {
    let client: PrefectClient
    let fixtures: String

    init(baseURL: URL, fixtures: String) {
        client = PrefectClient(baseURL: baseURL, apiKey: nil, authString: nil, requestTimeout: 30)
        self.fixtures = fixtures
    }

    static var defaultProcessTemplate: JSON { JobTemplate.defaultProcessTemplate }

    /// The default process template, but with `env` declared without a type, so the server lets values
    /// through that Prefect's schema would refuse (numbers, booleans, a string instead of an object) and the
    /// worker's own coercion and validation are what gets tested.
    static var permissiveEnvTemplate: JSON {
        guard case .object(var template) = JobTemplate.defaultProcessTemplate,
              case .object(var variables)? = template["variables"],
              case .object(var properties)? = variables["properties"] else { fatalError("default template changed shape") }
        properties["env"] = .object(["title": "Environment Variables"])
        variables["properties"] = .object(properties)
        template["variables"] = .object(variables)
        return .object(template)
    }

    /// The tests' own requests ride out a busy server for longer than a worker's ordinary call would (about
    /// five minutes of 503s): on a loaded machine the SQLite server refuses writes in bursts.
    static let patience = RetryPolicy(maxAttempts: 24, baseDelay: 1, maxDelay: 15)

    func send(_ method: String, _ path: String, _ body: JSON? = nil) async throws -> JSON {
        let data = try await client.send(method, path, body: body, what: "test: \(method) \(path)", policy: Self.patience)
        if data.isEmpty { return .null }
        return try JSON.decode(data)
    }

    static func path(_ s: String) -> String { PrefectClient.pathComponent(s) }

    // MARK: - Pools and workers

    @discardableResult
    func createPool(_ name: String, type: String, baseJobTemplate: JSON? = nil) async throws -> JSON {
        var body: [String: JSON] = ["name": .string(name), "type": .string(type)]
        if let baseJobTemplate { body["base_job_template"] = baseJobTemplate }
        return try await send("POST", "/work_pools/", .object(body))
    }

    /// `GET /work_pools/{name}`; nil when it does not exist.
    func readPool(_ name: String) async throws -> JSON? {
        do {
            return try await send("GET", "/work_pools/\(Self.path(name))")
        } catch let error as APIError where error.status == 404 {
            return nil
        }
    }

    /// `POST /work_pools/{pool}/workers/filter {}`.
    func workers(pool: String) async throws -> [JSON] {
        try await send("POST", "/work_pools/\(Self.path(pool))/workers/filter", .object([:])).asArray ?? []
    }

    // MARK: - Flows, deployments, runs

    /// `POST /flows/`: returns the id (of the existing flow when the name is taken).
    func createFlow(_ name: String) async throws -> String {
        try await send("POST", "/flows/", .object(["name": .string(name)]))["id"]!.asString!
    }

    /// A deployment of a plain command (the `command` job variable does the work; no entrypoint is needed).
    func createCommandDeployment(pool: String, name: String, jobVariables: JSON = .object([:])) async throws -> String {
        let flow = try await createFlow("e2e-command-flow")
        return try await createDeployment(name: name, flowID: flow, pool: pool, jobVariables: jobVariables)
    }

    /// A deployment of a fixture flow from `flows.py`, run by the default `python -m prefect.engine`.
    func createEngineDeployment(pool: String, name: String, flow function: String,
                                jobVariables: JSON = .object([:])) async throws -> String {
        let flow = try await createFlow(function.replacingOccurrences(of: "_", with: "-"))
        return try await createDeployment(name: name, flowID: flow, pool: pool, jobVariables: jobVariables, extra: [
            "entrypoint": .string("flows.py:\(function)"),
            "pull_steps": .array([.object([
                "prefect.deployments.steps.set_working_directory": .object(["directory": .string(fixtures)]),
            ])]),
        ])
    }

    func createDeployment(name: String, flowID: String, pool: String, jobVariables: JSON,
                          extra: [String: JSON] = [:]) async throws -> String {
        var body: [String: JSON] = [
            "name": .string(name), "flow_id": .string(flowID), "work_pool_name": .string(pool),
            "job_variables": jobVariables,
        ]
        body.merge(extra) { $1 }
        return try await send("POST", "/deployments/", .object(body))["id"]!.asString!
    }

    /// `POST /deployments/{id}/create_flow_run`: a SCHEDULED run due now.
    func createFlowRun(deployment: String, parameters: JSON = .object([:]), jobVariables: JSON? = nil) async throws -> String {
        // The idempotency key makes a retry after a lost answer (a 503 from a busy server that had already
        // created the run) return the same run instead of adding a second one.
        var body: [String: JSON] = ["parameters": parameters, "idempotency_key": .string(UUID().uuidString)]
        if let jobVariables { body["job_variables"] = jobVariables }
        return try await send("POST", "/deployments/\(Self.path(deployment))/create_flow_run", .object(body))["id"]!.asString!
    }

    func readFlowRun(_ id: String) async throws -> JSON {
        try await send("GET", "/flow_runs/\(Self.path(id))")
    }

    func readFlowRuns(_ ids: [String]) async throws -> [JSON] {
        try await send("POST", "/flow_runs/filter", .object([
            "flow_runs": .object(["id": .object(["any_": .array(ids.map(JSON.string))])]),
            "limit": .int(200),
        ])).asArray ?? []
    }

    /// Every state the run went through, oldest first.
    func states(_ id: String) async throws -> [JSON] {
        let states = try await send("GET", "/flow_run_states/?flow_run_id=\(Self.path(id))").asArray ?? []
        return states.sorted { ($0["timestamp"]?.asString ?? "") < ($1["timestamp"]?.asString ?? "") }
    }

    /// Log messages the run's processes sent to the API.
    func logMessages(_ id: String) async throws -> [String] {
        let logs = try await send("POST", "/logs/filter", .object([
            "logs": .object(["flow_run_id": .object(["any_": .array([.string(id)])])]),
            "limit": .int(200),
        ])).asArray ?? []
        return logs.compactMap { $0["message"]?.asString }
    }

    // MARK: - Waiting

    static let terminalTypes: Set<String> = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]

    /// Waits (polling every 0.25 s, at most `timeout` s) until the run is in a terminal state; returns the run.
    /// `check` runs before each poll and may throw to stop waiting early (a worker died).
    func waitForFinalState(_ id: String, timeout: Double, check: () throws -> Void = {}) async throws -> JSON {
        var last = "nothing read yet"
        return try await E2E.eventually(timeout: timeout, "flow run \(id) to reach a final state (last: \(last))") {
            try check()
            let run = try await readFlowRun(id)
            last = run.stateSummary
            return Self.terminalTypes.contains(run["state_type"]?.asString ?? "") ? run : nil
        }
    }

    /// Waits until every run is in a terminal state; returns them keyed by id.
    func waitForFinalStates(_ ids: [String], timeout: Double, check: () throws -> Void = {}) async throws -> [String: JSON] {
        var pending: [String: String] = [:]
        return try await E2E.eventually(timeout: timeout, "\(pending.count) of \(ids.count) runs to finish: \(pending.sorted { $0.key < $1.key }.prefix(5).map { "\($0.key): \($0.value)" })") {
            try check()
            var runs: [String: JSON] = [:]
            for chunk in stride(from: 0, to: ids.count, by: 100) {
                for run in try await readFlowRuns(Array(ids[chunk..<min(chunk + 100, ids.count)])) {
                    runs[run["id"]?.asString ?? ""] = run
                }
            }
            pending = [:]
            for id in ids where !Self.terminalTypes.contains(runs[id]?["state_type"]?.asString ?? "") {
                pending[id] = runs[id]?.stateSummary ?? "not found"
            }
            return pending.isEmpty ? runs : nil
        }
    }
}

// MARK: - Reading JSON in assertions

extension JSON {
    var asString: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    var asInt: Int? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d == d.rounded(): return Int(d)
        default: return nil
        }
    }

    var asArray: [JSON]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// `TYPE/Name: message` of a flow run, for failure messages.
    var stateSummary: String {
        let type = self["state"]?["type"]?.asString ?? self["state_type"]?.asString ?? "?"
        let name = self["state"]?["name"]?.asString ?? self["state_name"]?.asString ?? "?"
        let message = self["state"]?["message"]?.asString ?? ""
        return "\(type)/\(name)" + (message.isEmpty ? "" : ": \(message)")
    }

    var stateType: String? { self["state_type"]?.asString ?? self["state"]?["type"]?.asString }
    var stateMessage: String { self["state"]?["message"]?.asString ?? "" }
}

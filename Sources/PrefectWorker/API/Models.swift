import Foundation

/// The Prefect state types a flow run can be in. Unknown types decode as `.unknown` so a newer server
/// cannot break the worker.
public enum StateType: Sendable, Equatable, Hashable, Codable {
    case scheduled, pending, running, completed, failed, cancelled, crashed, paused, cancelling
    case unknown(String)

    init(rawValue: String) {
        switch rawValue {
        case "SCHEDULED": self = .scheduled
        case "PENDING": self = .pending
        case "RUNNING": self = .running
        case "COMPLETED": self = .completed
        case "FAILED": self = .failed
        case "CANCELLED": self = .cancelled
        case "CRASHED": self = .crashed
        case "PAUSED": self = .paused
        case "CANCELLING": self = .cancelling
        default: self = .unknown(rawValue)
        }
    }

    var rawValue: String {
        switch self {
        case .scheduled: "SCHEDULED"
        case .pending: "PENDING"
        case .running: "RUNNING"
        case .completed: "COMPLETED"
        case .failed: "FAILED"
        case .cancelled: "CANCELLED"
        case .crashed: "CRASHED"
        case .paused: "PAUSED"
        case .cancelling: "CANCELLING"
        case .unknown(let raw): raw
        }
    }

    /// The name Prefect gives a state of this type by default.
    var defaultName: String {
        switch self {
        case .unknown(let raw): raw.capitalized
        default: rawValue.prefix(1) + rawValue.dropFirst().lowercased()
        }
    }

    var isTerminal: Bool {
        switch self {
        case .completed, .failed, .cancelled, .crashed: true
        default: false
        }
    }

    /// Decodes a state type from its name; an unknown name is kept.
    public init(from decoder: Decoder) throws {
        self.init(rawValue: try decoder.singleValueContainer().decode(String.self))
    }

    /// Encodes the state type as its name.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A flow run state as the server returns it.
struct FlowRunState: Sendable, Decodable, Equatable {
    var type: StateType
    var name: String?
    var message: String?
    var timestamp: String?
    var stateDetails: JSON?
    /// The result reference of a final state, kept when a state has to be restored.
    var data: JSON?

    enum CodingKeys: String, CodingKey {
        case type, name, message, timestamp, data
        case stateDetails = "state_details"
    }

    init(type: StateType, name: String? = nil, message: String? = nil, stateDetails: JSON? = nil) {
        self.type = type
        self.name = name
        self.message = message
        self.stateDetails = stateDetails
    }

    var transitionID: String? { stateDetails?["transition_id"]?.stringValue }
}

/// A state the worker proposes through `set_state`.
public struct StateProposal: Sendable, Equatable {
    var type: StateType
    var name: String
    var message: String?
    /// Reused when the same proposal is retried, so the server recognises a duplicate.
    var transitionID: String
    var force: Bool
    /// More `state_details` (a copy of the current state's, a scheduled time); the transition id is always ours.
    var details: [String: JSON] = [:]

    /// A proposal of `type`, with a fresh transition id.
    public init(_ type: StateType, name: String? = nil, message: String? = nil, force: Bool = false) {
        self.type = type
        self.name = name ?? type.defaultName
        self.message = message
        self.transitionID = UUID().uuidString.lowercased()
        self.force = force
    }

    var body: JSON {
        .object([
            "state": .object([
                "type": .string(type.rawValue),
                "name": .string(name),
                "message": message.map(JSON.string) ?? .null,
                "state_details": .object(details.merging(["transition_id": .string(transitionID)]) { $1 }),
            ]),
            "force": .bool(force),
        ])
    }
}

/// What the server's orchestration rules decided about a proposal.
public struct OrchestrationResult: Sendable, Decodable {
    /// The server's verdict on a proposal.
    public enum Status: String, Sendable, Decodable {
        case accept = "ACCEPT", reject = "REJECT", abort = "ABORT", wait = "WAIT"
    }
    struct Details: Sendable, Decodable {
        var type: String?
        var reason: String?
        var delaySeconds: Double?
        enum CodingKeys: String, CodingKey {
            case type, reason
            case delaySeconds = "delay_seconds"
        }
    }
    /// ACCEPT, REJECT, ABORT or WAIT.
    public var status: Status
    var state: FlowRunState?
    var details: Details?
}

/// A flow run, with the fields the worker uses.
struct FlowRun: Sendable, Decodable, Identifiable {
    var id: String
    var name: String?
    var flowID: String?
    var deploymentID: String?
    var parameters: JSON?
    var jobVariables: JSON?
    var state: FlowRunState?
    var stateID: String?
    var stateType: StateType?
    var stateName: String?
    var nextScheduledStartTime: String?
    var expectedStartTime: String?
    var infrastructurePID: String?
    var labels: JSON?
    var tags: [String]?
    var workQueueName: String?
    var workQueueID: String?
    var runCount: Int?
    var startTime: String?
    /// When a poll returned this run (not part of the wire format).
    var polledAt: Date?

    enum CodingKeys: String, CodingKey {
        case id, name, parameters, state, labels, tags
        case startTime = "start_time"
        case flowID = "flow_id"
        case deploymentID = "deployment_id"
        case jobVariables = "job_variables"
        case stateID = "state_id"
        case stateType = "state_type"
        case stateName = "state_name"
        case nextScheduledStartTime = "next_scheduled_start_time"
        case expectedStartTime = "expected_start_time"
        case infrastructurePID = "infrastructure_pid"
        case workQueueName = "work_queue_name"
        case workQueueID = "work_queue_id"
        case runCount = "run_count"
    }

    /// The current state type: from the state when loaded (it is null in poll results), else `state_type`.
    var currentStateType: StateType? { state?.type ?? stateType }

    /// When the run should start.
    var scheduledStart: Date? {
        (nextScheduledStartTime ?? expectedStartTime).flatMap(Timestamp.parse)
    }
}

/// One entry of `get_scheduled_flow_runs`.
struct WorkerFlowRunResponse: Sendable, Decodable {
    var workPoolID: String?
    var workQueueID: String?
    var flowRun: FlowRun
    enum CodingKeys: String, CodingKey {
        case workPoolID = "work_pool_id"
        case workQueueID = "work_queue_id"
        case flowRun = "flow_run"
    }
}

/// A work pool, with the fields the worker uses.
struct WorkPool: Sendable, Decodable {
    var id: String
    var name: String
    var type: String
    var baseJobTemplate: JSON?
    var isPaused: Bool?
    var status: String?
    /// Where runs submitted with `flow.submit_to_work_pool()` keep their bundles: `bundle_upload_step`,
    /// `bundle_execution_step`, `default_result_storage_block_id`.
    var storageConfiguration: JSON?
    /// The pool's limit on runs in flight: the server then holds due runs back, without an event when a slot frees.
    var concurrencyLimit: Int?

    enum CodingKeys: String, CodingKey {
        case id, name, type, status
        case baseJobTemplate = "base_job_template"
        case isPaused = "is_paused"
        case concurrencyLimit = "concurrency_limit"
        case storageConfiguration = "storage_configuration"
    }

    /// The pool's configured `bundle_execution_step` (`{"module": {arguments}}`), if it has one.
    var bundleExecutionStep: JSON? {
        guard let step = storageConfiguration?["bundle_execution_step"], !step.isNull else { return nil }
        return step
    }

    /// True when the template is missing or `{}`: Prefect then installs the worker's default template.
    var hasEmptyTemplate: Bool {
        guard let template = baseJobTemplate, let fields = template.objectValue else { return true }
        return fields.isEmpty
    }
}

/// A deployment, with the fields the worker uses.
struct Deployment: Sendable, Decodable {
    var id: String
    var name: String?
    var jobVariables: JSON?
    var tags: [String]?

    enum CodingKeys: String, CodingKey {
        case id, name, tags
        case jobVariables = "job_variables"
    }
}

/// A Prefect variable (`{{ prefect.variables.NAME }}`).
struct PrefectVariable: Sendable, Decodable {
    var name: String
    var value: JSON?
}

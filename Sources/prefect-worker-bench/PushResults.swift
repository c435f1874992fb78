import Foundation

// What `prefect-worker-bench push` measures (bench/push.json; keys in snake_case).

struct PushSettings: Codable, Sendable {
    var idleSeconds: Double
    var busySeconds: Double
    var busyRuns: Int
    var busyJob: String
    var samples: Int
    /// The sample runs are created this many seconds apart at most (uniformly random), so they land at random
    /// moments of a 10 s poll.
    var sampleSpreadSeconds: Double
    var sampleJob: String
    var fanoutChildren: Int
    var fanoutChildSeconds: Double
    /// run_deployment's own wait for each child (its `poll_interval`; Prefect's default is 5 s).
    var fanoutPollSeconds: Double
    var fanoutSamples: Int
}

/// The requests one worker made in one window, as its counting proxy saw them.
struct RequestWindow: Codable, Sendable {
    var seconds: Double
    var requests: Int
    var perMinute: Double
    /// WebSocket upgrades tunnelled (included in `requests`).
    var webSockets: Int
    /// WebSocket upgrades refused by the proxy (socket refused; included in `requests`).
    var refusedWebSockets: Int
    /// Requests by "METHOD /path", most first.
    var byEndpoint: [EndpointCount]
}

struct EndpointCount: Codable, Sendable {
    var endpoint: String
    var count: Int
}

/// One run created at a random moment: created → its job started, then CANCELLING → CANCELLED.
struct PushSample: Codable, Sendable {
    var runId: String
    /// The run's `created` (server) → the time the job wrote into its start file (`date +%s.%N`, first thing).
    var dispatchSeconds: Double?
    /// CANCELLING → CANCELLED, the two states' timestamps as the server stored them.
    var cancelSeconds: Double?
    /// set_state CANCELLING sent → CANCELLED seen by the bench (polled every 100 ms).
    var cancelObservedSeconds: Double?
    var finalState: String
    /// The job's process is gone (or a zombie) once the run is CANCELLED.
    var jobGone: Bool
    var error: String?
}

/// A parent flow run that calls run_deployment for N children at once and waits for them.
struct FanoutSample: Codable, Sendable {
    var parentId: String
    /// Parent created → parent's final state (server timestamps).
    var seconds: Double?
    var finalState: String
    var children: Int
    var childrenCompleted: Int
    /// Each child: created → RUNNING (its start_time, set by the engine once it has started up).
    var childRunningSeconds: [Double]
}

struct PushVariantResult: Codable, Sendable {
    /// "after", "after-refused", "before", "prefect".
    var name: String
    var title: String
    var command: String
    var socketBlocked: Bool
    var idle: RequestWindow?
    var busy: RequestWindow?
    var samples: [PushSample]
    var dispatchMedianSeconds: Double?
    var cancelMedianSeconds: Double?
    var fanout: [FanoutSample]
    var fanoutMedianSeconds: Double?
    var errors: [String]
}

struct PushResult: Codable, Sendable {
    var settings: PushSettings
    var variants: [PushVariantResult]
}

/// bench/push.json: the measurement, where and when it ran, and the targets judged.
struct PushFile: Codable, Sendable {
    var date: String
    var command: String
    var machine: MachineInfo
    var versions: [String: String]
    var push: PushResult
    var targets: [Target]
}

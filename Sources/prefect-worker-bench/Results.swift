import Foundation

// What the bench measures, as written to bench/results.json (keys in snake_case).

struct MachineInfo: Codable, Sendable {
    var nproc: Int
    var cpuModel: String
    var memoryMib: Int
    var kernel: String
}

/// Memory of an idle worker, `idleSeconds` after it started.
struct IdleMemory: Codable, Sendable {
    var idleSeconds: Double
    var rssKb: Int
    var pssAnonKb: Int
    var privateDirtyKb: Int
    var children: Int
    var childrenCommands: [String]
}

/// One burst: `runs` runs scheduled at the same instant, worker already idle and ONLINE.
struct BurstResult: Codable, Sendable {
    var job: String                 // "command" or "engine"
    var runs: Int
    var boundSeconds: Double
    var creationSeconds: Double
    /// How far creation ran past the scheduled time (0 when it finished before, as intended).
    var creationOverrunSeconds: Double
    /// First scheduled time → last terminal state (server timestamps); nil unless every run is terminal.
    var seconds: Double?
    var runsPerSecond: Double?
    var states: [StateCount]        // at the end of the measurement
    /// The messages of runs that did not end COMPLETED ("CRASHED: Flow run could not start: …"), most common first.
    var otherMessages: [StateCount]?
    var completed: Int
    var notCompleted: Int
    /// Runs with an infrastructure pid (their job was started), and first scheduled time → last job start
    /// (start_time, or the Submitting state for Prefect's worker, which never proposes RUNNING for commands).
    var launched: Int
    var launchSeconds: Double?
    var launchesPerSecond: Double?
    var peakRssKb: Int              // max of VmRSS sampled every 100 ms during the burst
    var rssSamples: Int
    var vmHwmKb: Int                // VmHWM after the burst (peak since the worker started)
    var cpuSeconds: Double          // utime+stime of the worker process during the burst
    var cpuMsPerRun: Double
}

struct CancellationSample: Codable, Sendable {
    var seconds: Double?            // CANCELLING set → CANCELLED observed (polled every 50 ms)
    var serverSeconds: Double?      // CANCELLING → CANCELLED state timestamps
    var finalState: String
    var jobGone: Bool
}

struct Cancellation: Codable, Sendable {
    var samples: [CancellationSample]
    var medianSeconds: Double?
    var failed: Int
}

struct WorkerResult: Codable, Sendable {
    var kind: String                // "swift" or "python"
    var command: String
    var startupSeconds: [Double]
    var startupMedianSeconds: Double?
    var idle: IdleMemory?
    var commandBurst: BurstResult?
    var engineBurst: BurstResult?
    var cancellation: Cancellation?
    var errors: [String]
}

/// The server's own pace: PENDING → RUNNING → COMPLETED with set_state alone, one task per run on one
/// `PrefectClient` (8 connections, as in the worker).
struct CeilingResult: Codable, Sendable {
    var database: String
    var client: String              // "PrefectClient" (the worker's) or "PlainHTTP" (the bench's own)
    var runs: Int
    var seconds: Double
    var runsPerSecond: Double
    var notAccepted: Int
    var createRunsPerSecond: Double
    /// CPU (user+system) the client itself used for those set_state calls.
    var clientCpuSeconds: Double
}

/// How many runs ended in one state ("COMPLETED/Completed").
struct StateCount: Codable, Sendable {
    var state: String
    var count: Int

    static func tally(_ runs: [RunRecord]) -> [StateCount] {
        var counts: [String: Int] = [:]
        for run in runs { counts["\(run.stateType)/\(run.stateName)", default: 0] += 1 }
        return counts.sorted { $0.key < $1.key }.map { StateCount(state: $0.key, count: $0.value) }
    }

    /// The state messages of runs that are not COMPLETED, the 5 most common (messages cut at 200 characters).
    static func messages(_ runs: [RunRecord]) -> [StateCount] {
        var counts: [String: Int] = [:]
        let uuid = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/
        for run in runs where run.stateType != "COMPLETED" {
            // Run ids in messages (URLs) would make every message unique.
            let message = String((run.stateMessage ?? "").replacing(uuid, with: "<id>").prefix(200))
            counts["\(run.stateType)/\(run.stateName)" + (message.isEmpty ? "" : ": " + message), default: 0] += 1
        }
        return counts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }.prefix(5)
            .map { StateCount(state: $0.key, count: $0.value) }
    }
}

/// The knobs of a comparison run.
struct CompareSettings: Codable, Sendable {
    var runs: Int
    var engineRuns: Int
    var startupSamples: Int
    var cancelSamples: Int
    var idleSeconds: Double
    var querySeconds: Double
    var prefetchSeconds: Double
    var commandJob: String
    var cancelJob: String
}

struct CompareResult: Codable, Sendable {
    var database: String
    var settings: CompareSettings
    var ceiling: CeilingResult?
    var plainCeiling: CeilingResult?
    var workers: [WorkerResult]
}

struct ScaleCase: Codable, Sendable {
    var workers: Int
    var runs: Int
    var seconds: Double?
    var runsPerSecond: Double?
    var fractionOfCeiling: Double?
    var states: [StateCount]
    var completed: Int
    var notCompleted: Int
    var executions: Int             // lines in the shared file
    var missing: Int                // runs whose id is not in the file
    var duplicated: Int             // runs whose id is there more than once
    var unknown: Int                // lines that are no run of this case
    var exactlyOnce: Bool
    var extraRuns: Int              // runs of the deployment beyond those created (should be 0)
    var workerPeakRssKb: [Int]
    var workerCpuSeconds: [Double]
}

struct ScaleResult: Codable, Sendable {
    var database: String
    var ceiling: CeilingResult?
    var plainCeiling: CeilingResult?
    var cases: [ScaleCase]
}

struct Target: Codable, Sendable {
    var metric: String
    var target: String
    var value: String
    var met: Bool?
}

struct Results: Codable, Sendable {
    var date: String
    var mode: String
    var command: String
    var machine: MachineInfo
    var versions: [String: String]
    var compare: CompareResult?
    var scale: ScaleResult?
    var targets: [Target]
}

enum ResultFile {
    static func write<T: Encodable>(_ value: T, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try encoder.encode(value).write(to: URL(fileURLWithPath: path))
    }

    static func read<T: Decodable>(_ type: T.Type, from path: String) throws -> T {
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(T.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }
}

func median(_ values: [Double]) -> Double? {
    guard !values.isEmpty else { return nil }
    let sorted = values.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

import Foundation
@testable import PrefectWorker
import XCTest

/// Base of ParityTests: deploys a scenario's flow to both shared pools, runs it on both sides at once, collects
/// what a user sees, and records the comparison in the parity table.
class ParityTestCase: RunControlTestCase, @unchecked Sendable {
    private(set) var fixture: ParityFixture!
    nonisolated(unsafe) static var anyFailed = false

    override func setUp() async throws {
        try await super.setUp()
        // XCTest runs this before setUpWithError, where the base class loads `env`: load it here too.
        let env = try E2EEnvironment.load()
        fixture = try await ParityFixture.shared(env: env, api: TestAPI(baseURL: env.apiURL, fixtures: env.fixtures))
    }

    override func tearDownWithError() throws {
        if (testRun?.totalFailureCount ?? 0) > 0 { Self.anyFailed = true }
        try super.tearDownWithError()
    }

    override class func tearDown() {
        ParityFixture.tearDownShared(printLogs: anyFailed)
        ParityReport.flush()
        anyFailed = false
        super.tearDown()
    }

    var parityFixtures: String { env.fixtures + "/parity" }

    /// Deploys `function` of parity_flows.py to `pool`, run by the default command unless `jobVariables` set one.
    /// Returns the deployment's id and its `flow-name/deployment-name` (what `run_deployment` takes).
    func deploy(_ function: String, pool: String, jobVariables: JSON = .object([:])) async throws -> (id: String, fullName: String) {
        let flowName = function.replacingOccurrences(of: "_", with: "-")
        let flowID = try await api.createFlow(flowName)
        let name = uniqueName("-" + flowName.prefix(12))
        let id = try await api.createDeployment(name: name, flowID: flowID, pool: pool, jobVariables: jobVariables, extra: [
            "entrypoint": .string("parity_flows.py:\(function)"),
            "pull_steps": .array([.object([
                "prefect.deployments.steps.set_working_directory": .object(["directory": .string(parityFixtures)]),
            ])]),
        ])
        return (id, "\(flowName)/\(name)")
    }

    /// `deploy` on both pools.
    func deployBoth(_ function: String, jobVariables: JSON = .object([:])) async throws -> [ParitySide: String] {
        var ids: [ParitySide: String] = [:]
        for side in ParitySide.allCases {
            ids[side] = try await deploy(function, pool: fixture.pools[side]!, jobVariables: jobVariables).id
        }
        return ids
    }

    /// A fresh marker directory for one run of `label` on `side` (under the fixture's root).
    func markerDirectory(_ label: String, _ side: ParitySide) throws -> String {
        let path = fixture.root + "/" + E2E.uniqueName("\(label)-\(side.slug)")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    struct SideRun: Sendable {
        var id: String
        var markers: String
    }

    /// Runs `deployments[side]` on both sides at once: a run with the `markers` parameter (plus `parameters`)
    /// and the job variables `jobVariables(side, markers)`, then `drive(side, run)` (cancel, resume, ...), then
    /// waits up to `timeout` s for a final state. A run still not final is observed as it is (a stuck run is a
    /// result, not an error). Returns what each side showed.
    func runBoth(_ label: String, deployments: [ParitySide: String], parameters: [String: JSON] = [:],
                 timeout: Double = 90,
                 drive: @escaping @Sendable (ParitySide, SideRun) async throws -> Void = { _, _ in },
                 jobVariables: @escaping @Sendable (ParitySide, String) -> JSON? = { _, _ in nil })
    async throws -> [ParitySide: ParityObservation] {
        try await withThrowingTaskGroup(of: (ParitySide, ParityObservation).self) { group in
            for side in ParitySide.allCases {
                let markers = try markerDirectory(label, side)
                var parameters = parameters
                parameters["markers"] = .string(markers)
                let id = try await api.createFlowRun(deployment: deployments[side]!, parameters: .object(parameters),
                                                     jobVariables: jobVariables(side, markers))
                fixture.track(id)
                track(id)
                let run = SideRun(id: id, markers: markers)
                group.addTask {
                    let started = Date()
                    let sampler = Task { await Self.jobEnvironment(ofRun: run.id) }
                    defer { sampler.cancel() }
                    try await drive(side, run)
                    _ = try await self.waitForFinalOrGiveUp(run.id, timeout: timeout)
                    sampler.cancel()
                    var observation = try await ParityObservation.collect(api: self.api, run: run.id, markers: run.markers)
                    observation.environment = await sampler.value
                    print("parity \(label), \(side.rawValue): run \(run.id) \(observation.finalState) after \(Int(Date().timeIntervalSince(started))) s")
                    return (side, observation)
                }
            }
            var observations: [ParitySide: ParityObservation] = [:]
            for try await (side, observation) in group { observations[side] = observation }
            return observations
        }
    }

    /// The PREFECT* variable names of the run's first job process (the one whose parent is not of the run), read
    /// from /proc while it runs: the environment the worker gave it, before the engine pops anything (it removes
    /// PREFECT__CONTROL_PORT and _TOKEN from its own os.environ). Nil if no process was seen before cancellation.
    static func jobEnvironment(ofRun id: String) async -> Set<String>? {
        while !Task.isCancelled {
            let stats = ProcScan.processes(ofRun: id)
            let pids = Set(stats.map(\.pid))
            if let top = stats.first(where: { !pids.contains($0.ppid) }),
               let data = FileManager.default.contents(atPath: "/proc/\(top.pid)/environ") {
                let names = data.split(separator: 0).compactMap { entry -> String? in
                    let name = String(decoding: entry.prefix { $0 != UInt8(ascii: "=") }, as: UTF8.self)
                    return name.hasPrefix("PREFECT") ? name : nil
                }
                if !names.isEmpty { return Set(names) }
            }
            try? await Task.sleep(nanoseconds: 100_000_000)
        }
        return nil
    }

    /// Polls (every 0.1 s) until the run's state type is in `types`; throws after `timeout` s.
    func waitForType(_ id: String, _ types: Set<String>, timeout: Double) async throws -> JSON {
        var last = "nothing read yet"
        return try await E2E.eventually(timeout: timeout, interval: 0.1, "flow run \(id) to be \(types.sorted()) (last: \(last))") {
            try fixture.checkAlive()
            let run = try await api.readFlowRun(id)
            last = run.stateSummary
            return types.contains(run.stateType ?? "") ? run : nil
        }
    }

    /// Waits for a final state, at most `timeout` s; returns the run either way.
    @discardableResult
    func waitForFinalOrGiveUp(_ id: String, timeout: Double) async throws -> JSON {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            try fixture.checkAlive()
            let run = try await api.readFlowRun(id)
            if TestAPI.terminalTypes.contains(run.stateType ?? "") || Date() >= deadline { return run }
            try await Task.sleep(nanoseconds: 250_000_000)
        }
    }

    /// Sets CANCELLING as the UI's Cancel button does (`set_state`, not forced).
    func cancelAsTheUIDoes(_ id: String) async throws {
        let result = try await setState(id, "CANCELLING")
        XCTAssertEqual(result["status"]?.asString, "ACCEPT", "set CANCELLING on \(id): \(result)")
    }

    /// `POST /flow_runs/{id}/resume` once the run is PAUSED (suspended or paused).
    func resumeWhenPaused(_ id: String, timeout: Double = 90) async throws {
        _ = try await waitForType(id, ["PAUSED"], timeout: timeout)
        let result = try await api.send("POST", "/flow_runs/\(TestAPI.path(id))/resume", .object([:]))
        XCTAssertEqual(result["status"]?.asString, "ACCEPT", "resume \(id): \(result)")
    }

    /// Compares both sides of one run, records the table row, and fails the test on any difference.
    func record(_ scenario: String, _ observations: [ParitySide: ParityObservation], note: String = "",
                compareRunCount: Bool = true, normalise: @escaping ([String]) -> [String] = { $0 },
                file: StaticString = #filePath, line: UInt = #line) {
        guard let reference = observations[.reference], let ours = observations[.ours] else {
            XCTFail("\(scenario): a side has no observation", file: file, line: line)
            return
        }
        var comparison = ParityComparison()
        var adjusted = ours
        if !compareRunCount { adjusted.runCount = reference.runCount }
        comparison.compare("", reference: reference, ours: adjusted, normalise: normalise)
        record(scenario, reference: reference.summary, ours: ours.summary, comparison: comparison, note: note,
               file: file, line: line)
    }

    /// Records a row whose cells the scenario wrote itself (several runs per side).
    func record(_ scenario: String, reference: String, ours: String, comparison: ParityComparison, note: String = "",
                file: StaticString = #filePath, line: UInt = #line) {
        ParityReport.add(.init(scenario: scenario, reference: reference, ours: ours,
                               differences: comparison.differences, note: note))
        XCTAssertEqual(comparison.differences, [], "\(scenario): prefect-worker differs from Prefect's worker",
                       file: file, line: line)
    }
}

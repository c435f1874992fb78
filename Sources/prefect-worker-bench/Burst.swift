import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import PrefectWorker

/// How fast the server creates runs here, learnt from the first creations, so a burst can be scheduled just
/// far enough ahead that all its runs exist before the scheduled time.
let creationRate = Mutex<Double>(20)

/// A burst: `runs` runs of one deployment created with the same scheduled time T a few seconds ahead,
/// while the workers are idle and ONLINE (with prefetch 0 no worker may claim one before T). Measured from T
/// to the last terminal state (server timestamps), bounded by `bound` seconds after T.
struct Burst {
    let api: BenchAPI
    let deployment: String
    let runs: Int
    let bound: Double
    /// Prefect's worker leaves plain-command runs PENDING/Submitting for ever: the burst is over once every
    /// run is terminal or Submitting with a job started.
    let settleOnSubmitting: Bool

    struct Outcome {
        var ids: [String]
        var records: [RunRecord]
        var scheduled: Date
        var creationSeconds: Double
        var creationOverrunSeconds: Double
        var peaks: [Int]
        var samples: Int
        var cpuSeconds: [Double]
        var hwm: [Int]

        var completed: Int { records.filter { $0.stateType == "COMPLETED" }.count }
        var allTerminal: Bool { records.count >= ids.count && records.allSatisfy(\.isTerminal) }

        /// T → last terminal state, when every run is terminal.
        var seconds: Double? {
            guard allTerminal, let last = records.compactMap(\.stateTime).max() else { return nil }
            return last.timeIntervalSince(scheduled)
        }

        var launched: Int { records.filter { $0.infrastructurePID != nil }.count }

        /// T → the last job start (RUNNING's start_time, or the Submitting state of Prefect's worker).
        var launchSeconds: Double? {
            let starts = records.compactMap { $0.startTime ?? ($0.stateName == "Submitting" ? $0.stateTime : nil) }
            guard starts.count >= ids.count, let last = starts.max() else { return nil }
            return last.timeIntervalSince(scheduled)
        }
    }

    func run(workers pids: [pid_t]) async throws -> Outcome {
        let lead = max(4, 3 + 2 * Double(runs) / creationRate.withLock { $0 })
        let sampler = sampleRSS(pids, bound: lead + bound + 60)
        var cpuBefore = pids.map { Proc.cpuSeconds($0) ?? 0 }
        let scheduled = Date().addingTimeInterval(lead)
        let created = Clock.now
        let ids = try await api.createRuns(deployment, count: runs, at: scheduled)
        let creationSeconds = Clock.now - created
        creationRate.withLock { $0 = Double(runs) / max(creationSeconds, 0.001) }
        let overrun = max(0, -scheduled.timeIntervalSinceNow)
        if overrun > 0 {
            FileHandle.standardError.write(Data("bench: creating \(runs) runs took \(String(format: "%.1f", creationSeconds)) s, \(String(format: "%.1f", overrun)) s past their scheduled time\n".utf8))
        }

        // Nothing can be claimed before T (prefetch 0), so the CPU time is counted from T (from before the
        // creation if that ran late) until the burst is seen to be over; idle polling before T is not counted.
        if scheduled.timeIntervalSinceNow > 0 {
            await Clock.sleep(scheduled.timeIntervalSinceNow)
            cpuBefore = pids.map { Proc.cpuSeconds($0) ?? 0 }
        }
        // Watch the counts (cheap) every 250 ms. The bound counts from T, or from the end of creation if that
        // ran late.
        let deadline = Clock.now + max(0, scheduled.timeIntervalSinceNow) + bound
        var cpuAfter: [Double]?
        var settled = false
        while Clock.now < deadline {
            let tick = Clock.now
            if let terminal = try? await api.countRuns(deployment: deployment, stateTypes: BenchAPI.terminal),
               let total = try? await api.countRuns(deployment: deployment) {
                if terminal >= max(runs, total) { cpuAfter = pids.map { Proc.cpuSeconds($0) ?? 0 }; break }
                if settleOnSubmitting,
                   let submitting = try? await api.countRuns(deployment: deployment, stateTypes: ["PENDING"], stateNames: ["Submitting"]),
                   terminal + submitting >= max(runs, total) {
                    cpuAfter = pids.map { Proc.cpuSeconds($0) ?? 0 }
                    settled = true
                    break
                }
            }
            await Clock.sleep(tick + 0.25 - Clock.now)
        }
        let cpuEnd = cpuAfter ?? pids.map { Proc.cpuSeconds($0) ?? 0 }
        // Submitting is proposed just before the job starts and the pid is recorded after: let that land, and
        // confirm nothing else happens to the runs.
        if settled { await Clock.sleep(3) }
        sampler.cancel()
        let (peaks, samples) = await sampler.value
        let hwm = pids.map { Proc.status($0)["VmHWM"] ?? 0 }
        let records = try await api.readRuns(deployment: deployment, expected: runs)
        return Outcome(ids: ids, records: records, scheduled: scheduled, creationSeconds: creationSeconds,
                       creationOverrunSeconds: overrun, peaks: peaks, samples: samples,
                       cpuSeconds: zip(cpuEnd, cpuBefore).map { $0 - $1 }, hwm: hwm)
    }

    /// The result for a single worker.
    func result(_ outcome: Outcome, job: String) -> BurstResult {
        let cpu = outcome.cpuSeconds.first ?? 0
        return BurstResult(
            job: job, runs: runs, boundSeconds: bound, creationSeconds: outcome.creationSeconds,
            creationOverrunSeconds: outcome.creationOverrunSeconds,
            seconds: outcome.seconds, runsPerSecond: outcome.seconds.map { Double(runs) / max($0, 0.001) },
            states: StateCount.tally(outcome.records), otherMessages: StateCount.messages(outcome.records),
            completed: outcome.completed,
            notCompleted: runs - outcome.completed, launched: outcome.launched,
            launchSeconds: outcome.launchSeconds, launchesPerSecond: outcome.launchSeconds.map { Double(runs) / max($0, 0.001) },
            peakRssKb: outcome.peaks.first ?? 0, rssSamples: outcome.samples, vmHwmKb: outcome.hwm.first ?? 0,
            cpuSeconds: cpu, cpuMsPerRun: cpu * 1000 / Double(max(runs, 1)))
    }
}

/// The server's ceiling: pre-created SCHEDULED runs taken PENDING → RUNNING → COMPLETED with set_state
/// alone. With `PrefectClient` (the worker's client): one task per run on one client (at most 8 connections,
/// as in the worker). With `PlainHTTP`: 8 runs at a time, one connection per request.
func measureCeiling(api: BenchAPI, deployment: String, runs: Int, database: String, plain: Bool) async throws -> CeilingResult {
    let created = Clock.now
    let ids = try await api.createRuns(deployment, count: runs, at: nil)
    let createRate = Double(runs) / max(Clock.now - created, 0.001)
    creationRate.withLock { $0 = createRate }
    let start = Clock.now
    let cpuBefore = Proc.cpuSeconds(getpid()) ?? 0
    let deadline = start + 60 + Double(runs) * 0.5
    let notAccepted: Int
    if plain {
        notAccepted = try await concurrentMap(ids, concurrency: 8) { id in
            for type in ["PENDING", "RUNNING", "COMPLETED"] {
                guard Clock.now < deadline else { return 1 }
                let body = JSON.object(["state": .object([
                    "type": .string(type), "name": .string(type.prefix(1) + type.dropFirst().lowercased()),
                    "state_details": .object(["transition_id": .string(UUID().uuidString.lowercased())]),
                ]), "force": false])
                guard let result = try? await api.call("POST", "/flow_runs/\(id)/set_state", body),
                      result["status"]?.stringValue == "ACCEPT" else { return 1 }
            }
            return 0
        }.reduce(0, +)
    } else {
        notAccepted = await withTaskGroup(of: Int.self) { group in
            for id in ids {
                group.addTask {
                    for type in [StateType.pending, .running, .completed] {
                        guard Clock.now < deadline,
                              let result = try? await api.client.setState(id, StateProposal(type)),
                              result.status == .accept else { return 1 }
                    }
                    return 0
                }
            }
            return await group.reduce(0, +)
        }
    }
    let seconds = Clock.now - start
    return CeilingResult(database: database, client: plain ? "PlainHTTP" : "PrefectClient", runs: runs, seconds: seconds,
                         runsPerSecond: Double(runs) / seconds, notAccepted: notAccepted, createRunsPerSecond: createRate,
                         clientCpuSeconds: (Proc.cpuSeconds(getpid()) ?? 0) - cpuBefore)
}

/// Both ceilings on fresh runs of a new deployment: first with the worker's `PrefectClient`, then with the
/// bench's `PlainHTTP` (no busy-polling client competing with the server for CPU).
func measureCeilings(api: BenchAPI, flow: String, pool: String, runs: Int, database: String,
                     log: (String) -> Void) async throws -> (CeilingResult, CeilingResult) {
    try await api.createPool(pool)
    var results: [CeilingResult] = []
    for plain in [false, true] {
        let deployment = try await api.createDeployment("\(pool)-\(UUID().uuidString.prefix(6).lowercased())", flow: flow, pool: pool,
                                                        jobVariables: ["command": "true"])
        log("server ceiling on \(database), \(plain ? "PlainHTTP" : "PrefectClient") client: \(runs) runs PENDING → RUNNING → COMPLETED with set_state alone")
        let ceiling = try await measureCeiling(api: api, deployment: deployment, runs: runs, database: database, plain: plain)
        log(String(format: "server ceiling: %.1f runs/s (%d not accepted; client CPU %.2f s)", ceiling.runsPerSecond, ceiling.notAccepted, ceiling.clientCpuSeconds))
        results.append(ceiling)
    }
    return (results[0], results[1])
}

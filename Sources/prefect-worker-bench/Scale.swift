import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PrefectWorker

/// Several of our workers on one pool (the server on PostgreSQL): throughput, and whether every run was
/// executed exactly once. Each job appends its PREFECT__FLOW_RUN_ID to a file shared by the case.
struct Scale {
    let api: BenchAPI
    let launcher: WorkerLauncher
    let runs: Int
    let workerCounts: [Int]
    let database: String

    func log(_ message: String) {
        FileHandle.standardError.write(Data("bench: \(message)\n".utf8))
    }

    func run() async throws -> ScaleResult {
        let flow = try await api.createFlow("bench-scale")
        let (ceiling, plainCeiling) = try await measureCeilings(api: api, flow: flow, pool: "scale-ceiling", runs: runs,
                                                                database: database, log: log)
        var result = ScaleResult(database: database, ceiling: ceiling, plainCeiling: plainCeiling, cases: [])
        for count in workerCounts {
            result.cases.append(try await scaleCase(count, flow: flow, ceiling: ceiling.runsPerSecond))
        }
        return result
    }

    func scaleCase(_ count: Int, flow: String, ceiling: Double) async throws -> ScaleCase {
        let pool = "scale-\(count)"
        let file = "\(launcher.work)/scale-\(count).ids"
        guard FileManager.default.createFile(atPath: file, contents: nil) else { throw BenchError("cannot create \(file)") }
        try await api.createPool(pool)
        let deployment = try await api.createDeployment("scale-\(count)-\(UUID().uuidString.prefix(6).lowercased())", flow: flow, pool: pool, jobVariables: [
            "command": .string("sh -c 'echo \"$PREFECT__FLOW_RUN_ID\" >> \(file)'"),
        ])
        var pids: [pid_t] = []
        // If a step below throws, the workers are stopped when the bench exits (Launcher.killEverything).
        let names = (1...count).map { "scale-\(count)-\($0)" }
        for name in names { pids.append(try launcher.start(.swift, pool: pool, name: name)) }
        guard await api.waitOnline(pool: pool, names: names, pids: pids, bound: 60) else {
            throw BenchError("scale: \(count) worker(s) not ONLINE within 60 s; log: \(launcher.logTail(names[0]))")
        }
        log("scale: \(count) worker(s) ONLINE; burst of \(runs) runs")
        let burst = Burst(api: api, deployment: deployment, runs: runs, bound: 60 + Double(runs) * 0.5, settleOnSubmitting: false)
        let outcome = try await burst.run(workers: pids)
        for pid in pids { await launcher.stop(.swift, pid) }
        pids = []

        // Exactly once: every run's id in the file exactly once, and nothing else there.
        let lines = ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        var seen: [String: Int] = [:]
        for line in lines { seen[line, default: 0] += 1 }
        // Every run of the deployment counts, also one a retried creation might have added.
        let ids = Set(outcome.ids).union(outcome.records.map(\.id))
        let missing = ids.filter { seen[$0] == nil }.count
        let duplicated = ids.filter { (seen[$0] ?? 0) > 1 }.count
        let unknown = seen.keys.filter { !ids.contains($0) }.count
        let rate = outcome.seconds.map { Double(runs) / max($0, 0.001) }
        let result = ScaleCase(
            workers: count, runs: runs, seconds: outcome.seconds, runsPerSecond: rate,
            fractionOfCeiling: rate.map { $0 / ceiling }, states: StateCount.tally(outcome.records),
            completed: outcome.completed, notCompleted: runs - outcome.completed, executions: lines.count,
            missing: missing, duplicated: duplicated, unknown: unknown,
            exactlyOnce: missing == 0 && duplicated == 0 && unknown == 0 && lines.count == ids.count,
            extraRuns: ids.count - outcome.ids.count,
            workerPeakRssKb: zip(outcome.peaks, outcome.hwm).map { max($0, $1) }, workerCpuSeconds: outcome.cpuSeconds)
        log("scale: \(count) worker(s): \(rate.map { String(format: "%.1f runs/s", $0) } ?? "not all terminal"), \(result.completed) COMPLETED, exactly once: \(result.exactlyOnce) (missing \(missing), duplicated \(duplicated), unknown \(unknown))")
        return result
    }
}

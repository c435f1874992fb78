import FaultProxy
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PrefectWorker

/// The fault soak: several of our workers on one pool, all talking to the server through a `FaultProxy`
/// (503s and connection resets on every request, one total outage in the middle), while plain-command runs
/// arrive at a steady rate. Each job appends its PREFECT__FLOW_RUN_ID to a ledger file (`>>`, O_APPEND), so
/// executions are counted from the jobs themselves; states and state histories are read from the server
/// directly (the bench itself never goes through the proxy).
struct Soak {
    let api: BenchAPI
    let launcher: WorkerLauncher
    let settings: SoakSettings
    let database: String

    func log(_ message: String) {
        FileHandle.standardError.write(Data("bench: soak: \(message)\n".utf8))
    }

    var ledger: String { "\(launcher.work)/ledger" }

    func run() async throws -> SoakResult {
        guard let upstream = URL(string: launcher.apiURL) else { throw BenchError("bad API URL \(launcher.apiURL)") }
        let proxy = FaultProxy(upstream: upstream)
        try proxy.start()
        defer { proxy.stop() }
        proxy.failRate = settings.failRate
        proxy.resetRate = settings.resetRate
        log("fault proxy at \(proxy.apiURL): \(Int(settings.failRate * 100)) % 503s, \(Int(settings.resetRate * 100)) % resets")

        guard FileManager.default.createFile(atPath: ledger, contents: nil) else { throw BenchError("cannot create \(ledger)") }
        let flow = try await api.createFlow("bench-soak")
        let pool = "soak"
        try await api.createPool(pool)
        let deployment = try await api.createDeployment("soak-\(UUID().uuidString.prefix(6).lowercased())", flow: flow, pool: pool,
                                                        jobVariables: ["command": .string(settings.command(ledger: ledger))])
        // The workers reach the server only through the proxy.
        let proxied = WorkerLauncher(apiURL: proxy.apiURL, workerBinary: launcher.workerBinary, venv: launcher.venv,
                                     work: launcher.work, querySeconds: launcher.querySeconds, prefetchSeconds: launcher.prefetchSeconds)
        let names = (1...settings.workers).map { "soak-\($0)" }
        var pids: [pid_t] = []
        for name in names { pids.append(try proxied.start(.swift, pool: pool, name: name)) }
        guard await api.waitOnline(pool: pool, names: names, pids: pids, bound: 120) else {
            throw BenchError("soak: \(settings.workers) worker(s) not ONLINE within 120 s; log: \(launcher.logTail(names[0]))")
        }
        log("\(settings.workers) workers ONLINE; \(settings.runs) runs at \(settings.rate) runs/s, a \(Int(settings.outageSeconds)) s outage "
            + String(format: "%.0f s after the first", settings.outageAfterSeconds))

        let sampler = sampleRSS(pids, bound: settings.boundSeconds + Double(settings.runs) / settings.rate + 600)
        let cpuBefore = pids.map { Proc.cpuSeconds($0) ?? 0 }
        let start = Clock.now
        let startDate = Date()

        // The outage, on its own task, while the runs keep arriving (they are created directly, not proxied).
        let outage = Task { () -> SoakOutage in
            await Clock.sleep(start + settings.outageAfterSeconds - Clock.now)
            let inFlight = (try? await api.countRuns(deployment: deployment, stateTypes: ["PENDING", "RUNNING"])) ?? -1
            let began = Date()
            proxy.down = true
            log("outage: every connection to the proxy is reset for \(Int(settings.outageSeconds)) s (\(inFlight) runs PENDING or RUNNING)")
            await Clock.sleep(settings.outageSeconds)
            proxy.down = false
            let ended = Date()
            log("outage over")
            return SoakOutage(startOffsetSeconds: began.timeIntervalSince(startDate), seconds: ended.timeIntervalSince(began),
                              runsInFlightAtStart: inFlight, refusedConnections: proxy.counters.refusedWhileDown)
        }
        let progress = Task {
            while !Task.isCancelled {
                await Clock.sleep(15)
                if Task.isCancelled { break }
                let terminal = (try? await api.countRuns(deployment: deployment, stateTypes: BenchAPI.terminal)) ?? -1
                let total = (try? await api.countRuns(deployment: deployment)) ?? -1
                let executions = Self.readLedger(ledger).count
                log(String(format: "t=%.0f s: %d runs created, %d terminal, %d ledger lines%@", Clock.now - start, total, terminal,
                           executions, proxy.down ? " (outage)" : ""))
            }
        }

        let ids = try await createPaced(deployment)
        let creationSeconds = Clock.now - start
        log(String(format: "%d runs created in %.0f s; waiting for every run to be final (at most %.0f s)", ids.count,
                   creationSeconds, settings.boundSeconds))
        let outageResult = await outage.value

        let deadline = Clock.now + settings.boundSeconds
        var allFinal = false
        var cpuEnd: [Double]?
        while Clock.now < deadline {
            let tick = Clock.now
            if let terminal = try? await api.countRuns(deployment: deployment, stateTypes: BenchAPI.terminal),
               let total = try? await api.countRuns(deployment: deployment), terminal >= max(ids.count, total) {
                allFinal = true
                cpuEnd = pids.map { Proc.cpuSeconds($0) ?? 0 }
                break
            }
            await Clock.sleep(tick + 2 - Clock.now)
        }
        let settledSeconds = Clock.now - start
        cpuEnd = cpuEnd ?? pids.map { Proc.cpuSeconds($0) ?? 0 }
        log(allFinal ? String(format: "every run final after %.0f s; %.0f s more with the faults on, for late duplicates", settledSeconds, settings.graceSeconds)
                     : "not every run final within the bound; stopping")
        // Leave time for a late duplicate start or a late (wrong) report, with the faults still on.
        await Clock.sleep(settings.graceSeconds)
        progress.cancel()
        sampler.cancel()
        let (peaks, _) = await sampler.value
        let hwm = pids.map { Proc.status($0)["VmHWM"] ?? 0 }
        let exitedEarly = zip(names, pids).compactMap { name, pid in
            Launcher.shared.exitDescription(pid).map { "\(name): \($0)" }
        }
        let faults = proxy.counters
        // The workers stop with the faults off (a clean drain), and only then is the ledger read.
        proxy.failRate = 0
        proxy.resetRate = 0
        for pid in pids { await launcher.stop(.swift, pid) }

        let records = try await api.readRuns(deployment: deployment, expected: ids.count)
        let histories = try await concurrentMap(records.map(\.id), concurrency: 4) { id in
            (id, try await readHistory(id))
        }
        let result = analyse(ids: ids, records: records, histories: Dictionary(uniqueKeysWithValues: histories),
                             ledgerLines: Self.readLedger(ledger), startDate: startDate, creationSeconds: creationSeconds,
                             settledSeconds: allFinal ? settledSeconds : nil, outage: outageResult, faults: faults,
                             workerLogs: names.map { launcher.log($0) }, exitedEarly: exitedEarly,
                             peaks: zip(peaks, hwm).map { max($0, $1) }, cpu: zip(cpuEnd!, cpuBefore).map { $0 - $1 })
        log("\(result.completed) COMPLETED, \(result.lost.count) lost, \(result.duplicated.count) executed twice or more, "
            + "\(result.crashed.count) CRASHED (\(result.wronglyCrashedOrFailed.count) CRASHED/FAILED although executed), "
            + String(format: "longest wait %.1f s", result.wait.maxSeconds ?? -1))
        return result
    }

    /// Creates the runs at `settings.rate` per second (at most 4 requests in flight), each with its own
    /// idempotency key; scheduled now (the server's expected start time is its creation time).
    func createPaced(_ deployment: String) async throws -> [String] {
        let start = Clock.now
        let rate = settings.rate
        return try await withThrowingTaskGroup(of: String?.self) { group in
            var ids: [String] = []
            var inFlight = 0
            for i in 0..<settings.runs {
                await Clock.sleep(start + Double(i) / rate - Clock.now)
                if inFlight >= 4, let id = try await group.next() {
                    inFlight -= 1
                    if let id { ids.append(id) }
                }
                group.addTask {
                    let body = JSON.object(["idempotency_key": .string(UUID().uuidString.lowercased())])
                    return try await api.call("POST", "/deployments/\(deployment)/create_flow_run", body, policy: .persistentSoak)["id"]?.stringValue
                }
                inFlight += 1
            }
            for try await id in group { if let id { ids.append(id) } }
            return ids
        }
    }

    /// The run's states, oldest first.
    func readHistory(_ id: String) async throws -> [SoakState] {
        guard case .array(let items) = try await api.call("GET", "/flow_run_states/?flow_run_id=\(id)") else { return [] }
        return items.map { item in
            SoakState(type: item["type"]?.stringValue ?? "?", name: item["name"]?.stringValue ?? "",
                      timestamp: item["timestamp"]?.stringValue.flatMap(Timestamp.parse),
                      scheduledTime: item["state_details"]?["scheduled_time"]?.stringValue.flatMap(Timestamp.parse),
                      message: item["message"]?.stringValue)
        }.sorted { ($0.timestamp ?? .distantPast) < ($1.timestamp ?? .distantPast) }
    }

    static func readLedger(_ path: String) -> [String] {
        ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    func analyse(ids: [String], records: [RunRecord], histories: [String: [SoakState]], ledgerLines: [String],
                 startDate: Date, creationSeconds: Double, settledSeconds: Double?, outage: SoakOutage,
                 faults: FaultProxy.Counters, workerLogs: [String], exitedEarly: [String], peaks: [Int], cpu: [Double]) -> SoakResult {
        var executions: [String: Int] = [:]
        for line in ledgerLines { executions[line, default: 0] += 1 }
        let byID = Dictionary(records.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        // Every run of the deployment counts, also one a retried creation might have added.
        let all = Array(Set(ids).union(byID.keys)).sorted()
        let state = { (id: String) in byID[id]?.stateType ?? "MISSING" }
        let lost = all.filter { executions[$0] == nil && state($0) != "COMPLETED" }
        let duplicated = all.filter { (executions[$0] ?? 0) > 1 }
        let crashed = all.filter { state($0) == "CRASHED" }
        let failed = all.filter { state($0) == "FAILED" }
        let wrongly = all.filter { ["CRASHED", "FAILED"].contains(state($0)) && executions[$0] != nil }
        let everCrashed = all.filter { id in state(id) != "CRASHED" && (histories[id] ?? []).contains { $0.type == "CRASHED" } }
        let completedUnexecuted = all.filter { state($0) == "COMPLETED" && executions[$0] == nil }
        let notFinal = all.filter { !BenchAPI.terminal.contains(state($0)) }
        let unknown = executions.keys.filter { byID[$0] == nil && !ids.contains($0) }.count

        // Wait: the scheduled time (the first SCHEDULED state's scheduled_time) → the first PENDING state.
        var waits: [(String, Double)] = []
        var unclaimed: [String] = []
        for id in all {
            let history = histories[id] ?? []
            guard let scheduled = history.first(where: { $0.type == "SCHEDULED" }).flatMap({ $0.scheduledTime ?? $0.timestamp }),
                  let claimed = history.first(where: { $0.type == "PENDING" })?.timestamp else {
                unclaimed.append(id)
                continue
            }
            waits.append((id, claimed.timeIntervalSince(scheduled)))
        }
        let sortedWaits = waits.map(\.1).sorted()
        let longest = waits.max { $0.1 < $1.1 }
        let goalWait = settings.outageSeconds + 30
        let wait = SoakWait(maxSeconds: longest?.1, maxRunID: longest?.0, medianSeconds: median(sortedWaits),
                            p95Seconds: sortedWaits.isEmpty ? nil : sortedWaits[min(sortedWaits.count - 1, Int(Double(sortedWaits.count) * 0.95))],
                            goalSeconds: goalWait, over: waits.filter { $0.1 > goalWait }.count,
                            slowest: waits.sorted { $0.1 > $1.1 }.prefix(5).map { SoakRunWait(id: $0.0, seconds: $0.1) },
                            unclaimed: unclaimed.count)
        let lastFinal = records.filter(\.isTerminal).compactMap(\.stateTime).max()

        // Evidence for every run that went wrong: its states and the workers' log lines that name it.
        var problems: [(String, String)] = []
        for id in lost { problems.append((id, "lost")) }
        for id in duplicated { problems.append((id, "executed \(executions[id] ?? 0) times")) }
        for id in crashed where !lost.contains(id) { problems.append((id, "CRASHED")) }
        for id in failed where !lost.contains(id) { problems.append((id, "FAILED")) }
        for id in completedUnexecuted { problems.append((id, "COMPLETED without an execution in the ledger")) }
        for id in everCrashed { problems.append((id, "CRASHED on the way, then \(state(id))")) }
        for id in notFinal where !lost.contains(id) { problems.append((id, "not final: \(state(id))")) }
        if let longest, longest.1 > goalWait, !problems.contains(where: { $0.0 == longest.0 }) {
            problems.append((longest.0, String(format: "waited %.1f s to be claimed", longest.1)))
        }
        let logs = workerLogs.map { path -> (String, [String]) in
            let name = (path as NSString).lastPathComponent.replacingOccurrences(of: ".log", with: "")
            return (name, ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init))
        }
        let evidence = problems.prefix(20).map { id, problem -> SoakEvidence in
            var lines: [String] = []
            for (name, text) in logs {
                lines += text.filter { $0.contains(id) }.map { "\(name): \($0.prefix(400))" }
            }
            let history = (histories[id] ?? []).map { state in
                "\(state.timestamp.map(Timestamp.format) ?? "?") \(state.type)/\(state.name)" + (state.message.map { ": \($0.prefix(200))" } ?? "")
            }
            return SoakEvidence(id: id, problem: problem, executions: executions[id] ?? 0, history: history,
                                workerLogLines: Array(lines.prefix(40)))
        }

        return SoakResult(
            database: database, settings: settings, created: ids.count, extraRuns: all.count - ids.count,
            states: StateCount.tally(records), completed: all.filter { state($0) == "COMPLETED" }.count,
            executions: ledgerLines.count, executedRuns: executions.keys.filter { all.contains($0) }.count,
            lost: lost, duplicated: duplicated.map { SoakDuplicate(id: $0, executions: executions[$0] ?? 0) },
            crashed: crashed, failed: failed, wronglyCrashedOrFailed: wrongly, crashedOnTheWay: everCrashed,
            completedWithoutExecution: completedUnexecuted, notFinal: notFinal, unknownLedgerLines: unknown,
            allFinal: settledSeconds != nil,
            creationSeconds: creationSeconds, settledSeconds: settledSeconds,
            wallSeconds: lastFinal.map { $0.timeIntervalSince(startDate) },
            wait: wait, outage: outage,
            proxy: SoakProxyCounters(connections: faults.connections, requests: faults.requests, forwarded: faults.forwarded,
                                     injected503: faults.injected503, resetsBeforeForward: faults.resetsBeforeForward,
                                     resetsAfterForward: faults.resetsAfterForward, refusedWhileDown: faults.refusedWhileDown,
                                     upstreamErrors: faults.upstreamErrors),
            workerExitedEarly: exitedEarly, workerPeakRssKb: peaks, workerCpuSeconds: cpu,
            evidence: Array(evidence))
    }
}

extension RetryPolicy {
    /// The bench's creations outlast the server's bad moments (it is not behind the proxy, but the server is
    /// busy): the standard schedule, with 30 tries instead of 7.
    static var persistentSoak: RetryPolicy {
        var policy = RetryPolicy.standard
        policy.maxAttempts = 30
        return policy
    }
}

// MARK: - Results

struct SoakSettings: Codable, Sendable {
    var runs: Int
    var workers: Int
    /// Runs created per second (directly at the server, not through the proxy).
    var rate: Double
    var failRate: Double
    var resetRate: Double
    var outageSeconds: Double
    /// When the outage starts, counted from the first creation.
    var outageAfterSeconds: Double
    /// How long, after the last creation, the soak waits for every run to be final.
    var boundSeconds: Double
    /// How long it then waits with the faults still on, for late duplicates or late wrong reports.
    var graceSeconds: Double
    var querySeconds: Double
    var job: String

    func command(ledger: String) -> String { job.replacingOccurrences(of: "LEDGER", with: ledger) }
}

struct SoakState: Codable, Sendable {
    var type: String
    var name: String
    var timestamp: Date?
    var scheduledTime: Date?
    var message: String?
}

struct SoakOutage: Codable, Sendable {
    var startOffsetSeconds: Double
    var seconds: Double
    var runsInFlightAtStart: Int
    var refusedConnections: Int
}

struct SoakRunWait: Codable, Sendable {
    var id: String
    var seconds: Double
}

struct SoakWait: Codable, Sendable {
    /// Scheduled time → first PENDING state, the longest over all runs.
    var maxSeconds: Double?
    var maxRunID: String?
    var medianSeconds: Double?
    var p95Seconds: Double?
    /// The outage plus 30 s.
    var goalSeconds: Double
    var over: Int
    var slowest: [SoakRunWait]
    /// Runs with no PENDING state at all.
    var unclaimed: Int
}

struct SoakDuplicate: Codable, Sendable {
    var id: String
    var executions: Int
}

struct SoakProxyCounters: Codable, Sendable {
    var connections: Int
    var requests: Int
    var forwarded: Int
    var injected503: Int
    var resetsBeforeForward: Int
    var resetsAfterForward: Int
    var refusedWhileDown: Int
    var upstreamErrors: Int
}

struct SoakEvidence: Codable, Sendable {
    var id: String
    var problem: String
    var executions: Int
    var history: [String]
    var workerLogLines: [String]
}

struct SoakResult: Codable, Sendable {
    var database: String
    var settings: SoakSettings
    var created: Int
    var extraRuns: Int
    var states: [StateCount]
    var completed: Int
    /// Lines in the ledger, and distinct runs among them.
    var executions: Int
    var executedRuns: Int
    /// Never executed and not COMPLETED in the end.
    var lost: [String]
    var duplicated: [SoakDuplicate]
    var crashed: [String]
    var failed: [String]
    /// CRASHED or FAILED in the end although the ledger shows the job ran.
    var wronglyCrashedOrFailed: [String]
    /// Not CRASHED in the end, but CRASHED at some point of their history.
    var crashedOnTheWay: [String]
    var completedWithoutExecution: [String]
    var notFinal: [String]
    var unknownLedgerLines: Int
    var allFinal: Bool
    var creationSeconds: Double
    /// First creation → every run seen final (nil if not within the bound).
    var settledSeconds: Double?
    /// First creation → the last final state (server timestamps).
    var wallSeconds: Double?
    var wait: SoakWait
    var outage: SoakOutage
    var proxy: SoakProxyCounters
    var workerExitedEarly: [String]
    var workerPeakRssKb: [Int]
    var workerCpuSeconds: [Double]
    var evidence: [SoakEvidence]
}

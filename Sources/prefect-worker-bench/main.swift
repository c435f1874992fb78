// Benchmark driver for scripts/bench: measures prefect-worker beside Prefect's Python worker against a
// running Prefect server, and writes the results.
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PrefectWorker

let usage = """
Usage:
  prefect-worker-bench compare --api URL --worker BIN --venv DIR --fixtures DIR --work DIR --out FILE
                               [--runs 200] [--engine-runs 50] [--startup-samples 3] [--cancel-samples 5]
                               [--idle-seconds 30] [--query-seconds 1] [--prefetch-seconds 0]
                               [--no-python | --only swift|python] [--static-worker BIN]
                               [--database NAME]
  prefect-worker-bench scale   --api URL --worker BIN --venv DIR --work DIR --out FILE
                               [--runs 1000] [--workers 1,2,4] [--query-seconds 1] [--prefetch-seconds 0]
                               [--database NAME]
  prefect-worker-bench soak    --api URL --worker BIN --venv DIR --work DIR --out FILE
                               [--runs 1000] [--workers 3] [--rate 3] [--fail-rate 0.2] [--reset-rate 0.05]
                               [--outage 30] [--outage-after SECONDS] [--bound 1200] [--grace 10]
                               [--query-seconds 1] [--database NAME]
  prefect-worker-bench push    --api URL --worker BIN --venv DIR --flows DIR --work DIR --out FILE [--before BIN]
                               [--idle-seconds 60] [--busy-seconds 60] [--busy-runs 10] [--samples 9]
                               [--sample-spread 10] [--fanout-children 3] [--fanout-samples 1]
                               [--before-label TEXT] [--no-python] [--no-blocked]
                               [--worker-env KEY=VALUE]... (our workers only, for diagnosis)
  prefect-worker-bench report  --push FILE --json FILE --md FILE [--command TEXT] [--version KEY=VALUE]... [--check]
  prefect-worker-bench report  [--compare FILE] [--scale FILE] --json FILE --md FILE [--mode NAME]
                               [--command TEXT] [--version KEY=VALUE]... [--check]
  prefect-worker-bench report  --soak FILE --json FILE --md FILE [--command TEXT] [--version KEY=VALUE]... [--check]
  (--check: exit 3 if our worker had errors, runs not COMPLETED or a failed cancellation; with --soak: if a
   goal of the soak is not met; with --push: if a target of the push measurement is not met)
Workers started here are stopped on exit and on SIGINT/SIGTERM; their pids are also listed in WORK/pids.
"""

func fail(_ message: String, code: Int32 = 2) -> Never {
    FileHandle.standardError.write(Data("prefect-worker-bench: \(message)\n".utf8))
    exit(code)
}

/// `--flag value` pairs (a flag may repeat) and bare `--switch`es.
struct Arguments: Sendable {
    var values: [String: [String]] = [:]
    var switches: Set<String> = []

    init(_ args: ArraySlice<String>, switches known: Set<String>) {
        var args = args
        while let flag = args.popFirst() {
            guard flag.hasPrefix("--") else { fail("unexpected argument '\(flag)'\n\(usage)") }
            if known.contains(flag) { switches.insert(flag); continue }
            guard let value = args.popFirst() else { fail("\(flag) needs a value") }
            values[flag, default: []].append(value)
        }
    }

    func string(_ flag: String) -> String? { values[flag]?.last }
    func required(_ flag: String) -> String {
        guard let value = string(flag) else { fail("\(flag) is required\n\(usage)") }
        return value
    }
    func int(_ flag: String, _ fallback: Int) -> Int {
        guard let raw = string(flag) else { return fallback }
        guard let n = Int(raw), n >= 0 else { fail("\(flag) must be a whole number ≥ 0, not '\(raw)'") }
        return n
    }
    func double(_ flag: String, _ fallback: Double) -> Double {
        guard let raw = string(flag) else { return fallback }
        guard let x = Double(raw), x >= 0 else { fail("\(flag) must be a number ≥ 0, not '\(raw)'") }
        return x
    }
}

// Block SIGINT/SIGTERM/SIGHUP before any thread exists: the main thread waits for them (below) and stops
// every worker started here; the measurements run in a detached task.
SignalListener.blockSignals()
// Jobs orphaned by a stopped worker are re-parented to the bench, which then stops them too.
ProcFS.becomeSubreaper()

func launcher(_ args: Arguments, work: String) -> WorkerLauncher {
    WorkerLauncher(apiURL: args.required("--api"), workerBinary: args.required("--worker"),
                   staticWorkerBinary: args.string("--static-worker"), venv: args.required("--venv"),
                   work: work, querySeconds: args.double("--query-seconds", 1), prefetchSeconds: args.double("--prefetch-seconds", 0))
}

func apiClient(_ args: Arguments, createConcurrency: Int) -> BenchAPI {
    guard let url = URL(string: args.required("--api")), url.scheme != nil else { fail("--api must be a URL") }
    do {
        return try BenchAPI(url: url, createConcurrency: createConcurrency)
    } catch {
        fail("--api: \(error)")
    }
}

func prepareWork(_ args: Arguments) -> String {
    let work = args.required("--work")
    do {
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    } catch {
        fail("cannot create \(work): \(error)")
    }
    Launcher.shared.recordPIDs(in: "\(work)/pids")
    return work
}

/// Which workers `compare` measures: both, or `--no-python`, or `--only swift|python`.
func kinds(_ args: Arguments) -> [WorkerKind] {
    if let only = args.string("--only") {
        guard let kind = WorkerKind(rawValue: only) else { fail("--only wants swift or python, not '\(only)'") }
        return [kind]
    }
    let ours: [WorkerKind] = args.string("--static-worker") == nil ? [.swift] : [.swift, .swiftStatic]
    return args.switches.contains("--no-python") ? ours : ours + [.python]
}

/// Runs one command of the bench; returns the exit status.
func run(_ command: String, _ arguments: Arguments) async -> Int32 {
    var status: Int32 = 0
    switch command {
    case "compare":
        let work = prepareWork(arguments)
        let settings = CompareSettings(
            runs: arguments.int("--runs", 200), engineRuns: arguments.int("--engine-runs", 50),
            startupSamples: max(1, arguments.int("--startup-samples", 3)), cancelSamples: arguments.int("--cancel-samples", 5),
            idleSeconds: arguments.double("--idle-seconds", 30), querySeconds: arguments.double("--query-seconds", 1),
            prefetchSeconds: arguments.double("--prefetch-seconds", 0), commandJob: "sh -c 'true'", cancelJob: "sleep 300")
        let compare = Compare(api: apiClient(arguments, createConcurrency: 2), launcher: launcher(arguments, work: work), fixtures: arguments.required("--fixtures"),
                              settings: settings, kinds: kinds(arguments),
                              database: arguments.string("--database") ?? "SQLite")
        do {
            try ResultFile.write(try await compare.run(), to: arguments.required("--out"))
        } catch {
            FileHandle.standardError.write(Data("prefect-worker-bench: compare failed: \(error)\n".utf8))
            status = 1
        }
    case "scale":
        let work = prepareWork(arguments)
        let counts = (arguments.string("--workers") ?? "1,2,4").split(separator: ",").map { part -> Int in
            guard let n = Int(part), n > 0 else { fail("--workers: '\(part)' is not a positive number") }
            return n
        }
        let scale = Scale(api: apiClient(arguments, createConcurrency: 4), launcher: launcher(arguments, work: work), runs: arguments.int("--runs", 1000),
                          workerCounts: counts, database: arguments.string("--database") ?? "PostgreSQL")
        do {
            try ResultFile.write(try await scale.run(), to: arguments.required("--out"))
        } catch {
            FileHandle.standardError.write(Data("prefect-worker-bench: scale failed: \(error)\n".utf8))
            status = 1
        }
    case "soak":
        let work = prepareWork(arguments)
        let runs = arguments.int("--runs", 1000)
        let rate = arguments.double("--rate", 3)
        guard runs > 0, rate > 0 else { fail("soak: --runs and --rate must be above 0") }
        let outage = arguments.double("--outage", 30)
        let settings = SoakSettings(
            runs: runs, workers: max(1, arguments.int("--workers", 3)), rate: rate,
            failRate: arguments.double("--fail-rate", 0.2), resetRate: arguments.double("--reset-rate", 0.05),
            // In the middle of the arrivals by default: runs are in flight before, during and after it.
            outageSeconds: outage, outageAfterSeconds: arguments.double("--outage-after", max(0, (Double(runs) / rate - outage) / 2)),
            boundSeconds: arguments.double("--bound", 1200), graceSeconds: arguments.double("--grace", 10),
            querySeconds: arguments.double("--query-seconds", 1), job: "sh -c 'echo \"$PREFECT__FLOW_RUN_ID\" >> LEDGER'")
        let soak = Soak(api: apiClient(arguments, createConcurrency: 4), launcher: launcher(arguments, work: work), settings: settings,
                        database: arguments.string("--database") ?? "PostgreSQL")
        do {
            try ResultFile.write(try await soak.run(), to: arguments.required("--out"))
        } catch {
            FileHandle.standardError.write(Data("prefect-worker-bench: soak failed: \(error)\n".utf8))
            status = 1
        }
    case "push":
        let work = prepareWork(arguments)
        guard let url = URL(string: arguments.required("--api")) else { fail("--api must be a URL") }
        // Windows of several minutes: a 60 s window holds 5 or 6 polls at a 10 s interval, a sampling, not a rate.
        let busySeconds = arguments.double("--busy-seconds", 180)
        let settings = PushSettings(
            idleSeconds: arguments.double("--idle-seconds", 180), busySeconds: busySeconds,
            // Outlasts the wait for every job to start (≤ 60 s), the settling 10 s and the window.
            busyRuns: arguments.int("--busy-runs", 10), busyJob: "sleep \(Int(busySeconds) + 300)", samples: arguments.int("--samples", 9),
            sampleSpreadSeconds: arguments.double("--sample-spread", 10),
            sampleJob: #"sh -c 'echo "$(date +%s.%N) $$" > MARKS/"$PREFECT__FLOW_RUN_ID"; exec sleep 120'"#,
            fanoutChildren: arguments.int("--fanout-children", 3), fanoutChildSeconds: 1, fanoutPollSeconds: 1,
            fanoutSamples: arguments.int("--fanout-samples", 1))
        let worker = arguments.required("--worker")
        var variants = [PushVariant(name: "after", title: "prefect-worker (this build)", python: false, binary: worker, blockSocket: false, fanout: true)]
        if !arguments.switches.contains("--no-blocked") {
            variants.append(PushVariant(name: "after-refused", title: "prefect-worker, socket refused (proxy answers upgrades 503)", python: false, binary: worker,
                                        blockSocket: true, fanout: false))
        }
        if let before = arguments.string("--before") {
            variants.append(PushVariant(name: "before", title: "prefect-worker before (\(arguments.string("--before-label") ?? "older build"))",
                                        python: false, binary: before, blockSocket: false, fanout: true))
        }
        if !arguments.switches.contains("--no-python") {
            variants.append(PushVariant(name: "prefect", title: "Prefect's worker", python: true, binary: "", blockSocket: false, fanout: true))
        }
        var push = Push(api: apiClient(arguments, createConcurrency: 2), apiURL: url, venv: arguments.required("--venv"), work: work,
                        flows: arguments.required("--flows"), settings: settings, variants: variants)
        for pair in arguments.values["--worker-env"] ?? [] {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { fail("--worker-env wants KEY=VALUE, not '\(pair)'") }
            push.ourEnvironment[parts[0]] = parts[1]
        }
        do {
            try ResultFile.write(try await push.run(), to: arguments.required("--out"))
        } catch {
            FileHandle.standardError.write(Data("prefect-worker-bench: push failed: \(error)\n".utf8))
            status = 1
        }
    case "report":
        var versions: [String: String] = [:]
        for pair in arguments.values["--version"] ?? [] {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { fail("--version wants KEY=VALUE, not '\(pair)'") }
            versions[parts[0]] = parts[1]
        }
        if let pushFile = arguments.string("--push") {
            do {
                let report = PushReport(push: try ResultFile.read(PushResult.self, from: pushFile),
                                        command: arguments.string("--command") ?? "scripts/bench --push", versions: versions)
                try ResultFile.write(report.file, to: arguments.required("--json"))
                try report.markdown().write(toFile: arguments.required("--md"), atomically: true, encoding: .utf8)
                if arguments.switches.contains("--check"), !report.allMet {
                    for target in report.file.targets where target.met == false {
                        FileHandle.standardError.write(Data("prefect-worker-bench: push target not met: \(target.metric): \(target.value) (target \(target.target))\n".utf8))
                    }
                    status = 3
                }
            } catch {
                fail("report: \(error)", code: 1)
            }
            return status
        }
        if let soakFile = arguments.string("--soak") {
            do {
                let report = SoakReport(soak: try ResultFile.read(SoakResult.self, from: soakFile),
                                        command: arguments.string("--command") ?? "scripts/bench --soak", versions: versions)
                try ResultFile.write(report.file, to: arguments.required("--json"))
                try report.markdown().write(toFile: arguments.required("--md"), atomically: true, encoding: .utf8)
                if arguments.switches.contains("--check"), !report.allMet {
                    for goal in report.file.goals where goal.met != true {
                        FileHandle.standardError.write(Data("prefect-worker-bench: soak goal not met: \(goal.metric): \(goal.value) (goal \(goal.target))\n".utf8))
                    }
                    status = 3
                }
            } catch {
                fail("report: \(error)", code: 1)
            }
            return status
        }
        do {
            let compare = try arguments.string("--compare").map { try ResultFile.read(CompareResult.self, from: $0) }
            let scale = try arguments.string("--scale").map { try ResultFile.read(ScaleResult.self, from: $0) }
            guard compare != nil || scale != nil else { fail("report needs --compare and/or --scale") }
            let report = Report(compare: compare, scale: scale, mode: arguments.string("--mode") ?? "full",
                                command: arguments.string("--command") ?? "scripts/bench", versions: versions)
            try ResultFile.write(report.results, to: arguments.required("--json"))
            try report.markdown().write(toFile: arguments.required("--md"), atomically: true, encoding: .utf8)
            if arguments.switches.contains("--check") {
                let problems = report.smokeProblems()
                for problem in problems { FileHandle.standardError.write(Data("prefect-worker-bench: check: \(problem)\n".utf8)) }
                if !problems.isEmpty { status = 3 }
            }
        } catch {
            fail("report: \(error)", code: 1)
        }
    case "--help", "-h", "help":
        print(usage)
    default:
        fail("unknown command '\(command)'\n\(usage)")
    }
    return status
}

let command = CommandLine.arguments.dropFirst().first ?? "--help"
let arguments = Arguments(CommandLine.arguments.dropFirst(2), switches: ["--no-python", "--check", "--no-blocked"])
Task.detached {
    let status = await run(command, arguments)
    Launcher.shared.killEverything()
    exit(status)
}
SignalListener.run { signal in
    FileHandle.standardError.write(Data("prefect-worker-bench: signal \(signal): stopping the workers it started\n".utf8))
    Launcher.shared.killEverything()
    exit(128 + signal)
}

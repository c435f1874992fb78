import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PrefectWorker

/// Our worker and Prefect's side by side on one server: start-up, idle memory, a burst of plain commands,
/// a burst of engine flows, cancellation latency; plus the server's own ceiling.
struct Compare {
    let api: BenchAPI
    let launcher: WorkerLauncher
    let fixtures: String
    let settings: CompareSettings
    let kinds: [WorkerKind]
    let database: String

    func run() async throws -> CompareResult {
        let flow = try await api.createFlow("bench")
        let (ceiling, plainCeiling) = try await measureCeilings(api: api, flow: flow, pool: "bench-ceiling", runs: settings.runs,
                                                                database: database, log: log)
        var result = CompareResult(database: database, settings: settings, ceiling: ceiling, plainCeiling: plainCeiling, workers: [])

        for kind in kinds {
            result.workers.append(await measure(kind, flow: flow))
        }
        return result
    }

    func log(_ message: String) {
        FileHandle.standardError.write(Data("bench: \(message)\n".utf8))
    }

    func measure(_ kind: WorkerKind, flow: String) async -> WorkerResult {
        let (program, _) = launcher.commandLine(kind, pool: "P", name: "N")
        var result = WorkerResult(kind: kind.rawValue, command: program, startupSeconds: [], startupMedianSeconds: nil,
                                  idle: nil, commandBurst: nil, engineBurst: nil, cancellation: nil, errors: [])
        let pool = "bench-\(kind.rawValue)"
        var worker: (pid: pid_t, started: Double, name: String)?
        do {
            try await api.createPool(pool)
            // Fresh deployments each time, so runs of an earlier bench on the same server are never counted.
            let tag = "\(kind.rawValue)-\(UUID().uuidString.prefix(6).lowercased())"
            let commandDeployment = try await api.createDeployment("command-\(tag)", flow: flow, pool: pool,
                                                                   jobVariables: ["command": .string(settings.commandJob)])
            let pull = JSON.array([.object(["prefect.deployments.steps.set_working_directory": .object(["directory": .string(fixtures)])])])
            let engineDeployment = try await api.createDeployment("engine-\(tag)", flow: flow, pool: pool,
                                                                  entrypoint: "flows.py:hello", pullSteps: pull)
            let sleepDeployment = try await api.createDeployment("sleep-\(tag)", flow: flow, pool: pool,
                                                                 jobVariables: ["command": .string(settings.cancelJob)])

            // Start-up: process start → ONLINE in the pool; each sample a fresh process and name. The last one
            // stays up for the rest.
            for sample in 1...(kind == .swiftStatic ? 1 : max(1, settings.startupSamples)) {
                if let previous = worker { await launcher.stop(kind, previous.pid) }
                worker = nil
                let name = "bench-\(kind.rawValue)-\(sample)-\(UUID().uuidString.prefix(6).lowercased())"
                let started = Clock.now
                let pid = try launcher.start(kind, pool: pool, name: name)
                worker = (pid, started, name)
                let bound: Double = kind.isOurs ? 60 : 120
                guard await api.waitOnline(pool: pool, names: [name], pids: [pid], bound: bound) else {
                    throw BenchError("\(kind.title) '\(name)' was not ONLINE within \(Int(bound)) s (\(Launcher.shared.exitDescription(pid) ?? "still running")); log: \(launcher.logTail(name))")
                }
                let seconds = Clock.now - started
                result.startupSeconds.append(seconds)
                log("\(kind.title): ONLINE \(String(format: "%.3f", seconds)) s after process start")
            }
            result.startupMedianSeconds = median(result.startupSeconds)
            guard let (pid, started, name) = worker else { return result }

            // Idle memory, `idleSeconds` after the start.
            await Clock.sleep(started + settings.idleSeconds - Clock.now)
            result.idle = idleMemory(pid, idleSeconds: Clock.now - started)
            if let idle = result.idle {
                log("\(kind.title): idle after \(Int(idle.idleSeconds)) s: RSS \(idle.rssKb) kB, Pss_Anon \(idle.pssAnonKb) kB, Private_Dirty \(idle.privateDirtyKb) kB, \(idle.children) child process(es)")
            }

            // Burst of plain commands.
            log("\(kind.title): burst of \(settings.runs) runs of `\(settings.commandJob)`")
            let commandBurst = Burst(api: api, deployment: commandDeployment, runs: settings.runs,
                                     bound: 60 + Double(settings.runs) * 0.5, settleOnSubmitting: kind == .python)
            let commands = commandBurst.result(try await commandBurst.run(workers: [pid]), job: "command")
            result.commandBurst = commands
            log(describe(kind, commands))
            guard Launcher.shared.isRunning(pid) else { throw BenchError("\(kind.title) exited during the burst; log: \(launcher.logTail(name))") }

            // Burst of engine flows.
            if settings.engineRuns > 0, kind != .swiftStatic {
                log("\(kind.title): burst of \(settings.engineRuns) engine runs of flows.py:hello")
                let engineBurst = Burst(api: api, deployment: engineDeployment, runs: settings.engineRuns,
                                        bound: 120 + Double(settings.engineRuns) * 6, settleOnSubmitting: false)
                let engines = engineBurst.result(try await engineBurst.run(workers: [pid]), job: "engine")
                result.engineBurst = engines
                log(describe(kind, engines))
            }

            // Cancellation latency.
            if settings.cancelSamples > 0, kind != .swiftStatic {
                var samples: [CancellationSample] = []
                for _ in 1...settings.cancelSamples {
                    let sample = await cancellationSample(kind, deployment: sleepDeployment, workerPID: pid)
                    samples.append(sample)
                    log("\(kind.title): cancellation: \(sample.seconds.map { String(format: "%.3f s", $0) } ?? "no CANCELLED") (\(sample.finalState), job \(sample.jobGone ? "gone" : "STILL RUNNING"))")
                }
                let good = samples.filter { $0.finalState == "CANCELLED" && $0.jobGone }
                result.cancellation = Cancellation(samples: samples, medianSeconds: median(good.compactMap(\.seconds)),
                                                   failed: samples.count - good.count)
            }
            await launcher.stop(kind, pid)
            worker = nil
        } catch {
            log("\(kind.title): \(error)")
            result.errors.append("\(error)")
            if let worker { await launcher.stop(kind, worker.pid) }
            worker = nil
        }
        return result
    }

    func describe(_ kind: WorkerKind, _ burst: BurstResult) -> String {
        let rate = burst.runsPerSecond.map { String(format: "%.1f runs/s to terminal", $0) } ?? "not all terminal"
        let launches = burst.launchesPerSecond.map { String(format: ", %.1f job starts/s", $0) } ?? ""
        let states = burst.states.map { "\($0.state) \($0.count)" }.joined(separator: ", ")
        return "\(kind.title): \(burst.job) burst: \(rate)\(launches); \(states); peak RSS \(burst.peakRssKb) kB (VmHWM \(burst.vmHwmKb) kB); CPU \(String(format: "%.2f", burst.cpuSeconds)) s"
    }

    func idleMemory(_ pid: pid_t, idleSeconds: Double) -> IdleMemory {
        let status = Proc.status(pid)
        let rollup = Proc.smapsRollup(pid)
        let children = Proc.descendants(of: pid)
        return IdleMemory(idleSeconds: idleSeconds, rssKb: status["VmRSS"] ?? 0, pssAnonKb: rollup["Pss_Anon"] ?? 0,
                          privateDirtyKb: rollup["Private_Dirty"] ?? 0, children: children.count,
                          childrenCommands: children.map(Proc.commandLine))
    }

    /// One run of `sleep 300`: once its job runs (our worker: RUNNING with a pid; Prefect's: a pid, as it
    /// never proposes RUNNING for a command) and after a random 0.5–1.5 s, set CANCELLING and poll the run
    /// every 50 ms until it is CANCELLED (at most 60 s).
    func cancellationSample(_ kind: WorkerKind, deployment: String, workerPID: pid_t) async -> CancellationSample {
        var sample = CancellationSample(seconds: nil, serverSeconds: nil, finalState: "NOT STARTED", jobGone: false)
        guard let id = try? await api.createRuns(deployment, count: 1, at: nil).first else { return sample }
        var jobPID: pid_t?
        let startDeadline = Clock.now + 60
        while Clock.now < startDeadline {
            if let run = try? await api.readRun(id), let pid = run.infrastructurePID.flatMap(pid_t.init),
               kind == .python || run.stateType == "RUNNING" {
                jobPID = pid
                break
            }
            await Clock.sleep(0.1)
        }
        guard let jobPID else {
            _ = try? await api.call("POST", "/flow_runs/\(id)/set_state", .object(["state": .object(["type": "CANCELLED"]), "force": true]))
            return sample
        }
        await Clock.sleep(Double.random(in: 0.5...1.5))
        let start = Clock.now
        let cancelling = try? await api.call("POST", "/flow_runs/\(id)/set_state", .object(["state": .object(["type": "CANCELLING"])]))
        let cancellingAt = cancelling?["state"]?["timestamp"]?.stringValue.flatMap(Timestamp.parse)
        let deadline = start + 60
        var final: RunRecord?
        while Clock.now < deadline {
            let tick = Clock.now
            if let run = try? await api.readRun(id), run.isTerminal {
                sample.seconds = Clock.now - start
                final = run
                break
            }
            await Clock.sleep(tick + 0.05 - Clock.now)
        }
        if let final {
            sample.finalState = final.stateType
        } else {
            sample.finalState = (try? await api.readRun(id))?.stateType ?? "UNKNOWN"
        }
        if let end = final?.stateTime, let cancellingAt { sample.serverSeconds = end.timeIntervalSince(cancellingAt) }
        // The job is gone once it is no descendant of the worker any more (or only a zombie not yet reaped).
        sample.jobGone = !Proc.descendants(of: workerPID).contains(jobPID) || Proc.statFields(jobPID)?.first == "Z"
        if !sample.jobGone {
            kill(jobPID, SIGKILL) // a descendant of a worker we started, left running: do not let it outlive the bench
        }
        if final == nil {
            _ = try? await api.call("POST", "/flow_runs/\(id)/set_state", .object(["state": .object(["type": "CANCELLED"]), "force": true]))
        }
        return sample
    }
}

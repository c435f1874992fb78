import Foundation
#if canImport(Glibc)
import Glibc
#endif
import PrefectWorker

/// One worker measured by `push`: ours (this build, and optionally with WebSocket upgrades refused by its proxy, and an
/// older binary as "before") or Prefect's own, each with its defaults and behind its own counting proxy.
struct PushVariant: Sendable {
    var name: String
    var title: String
    var python: Bool
    var binary: String
    var blockSocket: Bool
    /// Whether the run_deployment fan-out is measured (engine flows; not with the socket refused, where the
    /// flows' own event sockets would be refused too).
    var fanout: Bool
}

/// Push versus poll, all workers side by side on one server: API requests per minute idle and with runs in
/// flight, run created → job started and CANCELLING → CANCELLED for runs created at random moments, and a
/// run_deployment fan-out. Every worker runs with its defaults (10 s poll, 10 s prefetch, 30 s heartbeat).
struct Push {
    let api: BenchAPI
    let apiURL: URL
    let venv: String
    let work: String
    let flows: String
    let settings: PushSettings
    let variants: [PushVariant]
    /// Extra environment for our workers (`--worker-env`, e.g. PREFECT_LOGGING_LEVEL=DEBUG to see when each event
    /// arrived); none in a measurement.
    var ourEnvironment: [String: String] = [:]

    /// A started worker and what belongs to it.
    final class Subject: @unchecked Sendable {
        let variant: PushVariant
        let proxy: CountingProxy
        let pool: String
        let name: String
        var pid: pid_t = 0
        var sampleDeployment = ""
        var busyDeployment = ""
        var parentDeployment = ""
        var childDeployment = ""
        var result: PushVariantResult

        init(_ variant: PushVariant, proxy: CountingProxy, pool: String, name: String, command: String) {
            self.variant = variant
            self.proxy = proxy
            self.pool = pool
            self.name = name
            result = PushVariantResult(name: variant.name, title: variant.title, command: command, socketBlocked: variant.blockSocket,
                                       idle: nil, busy: nil, samples: [], dispatchMedianSeconds: nil, cancelMedianSeconds: nil,
                                       fanout: [], fanoutMedianSeconds: nil, errors: [])
        }
    }

    func log(_ message: String) {
        FileHandle.standardError.write(Data("bench: push: \(message)\n".utf8))
    }

    func run() async throws -> PushResult {
        let marks = "\(work)/marks"
        try FileManager.default.createDirectory(atPath: marks, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "\(work)/logs", withIntermediateDirectories: true)
        let flow = try await api.createFlow("bench-push")
        let tag = UUID().uuidString.prefix(6).lowercased()
        var subjects: [Subject] = []
        defer { for subject in subjects { subject.proxy.stop() } }
        for variant in variants {
            let proxy = CountingProxy(upstream: apiURL)
            try proxy.start()
            proxy.blockWebSockets = variant.blockSocket
            let subject = Subject(variant, proxy: proxy, pool: "push-\(variant.name)-\(tag)", name: "push-\(variant.name)-\(tag)",
                                  command: commandLine(variant, pool: "P", name: "N").joined(separator: " "))
            subjects.append(subject)
            try await prepare(subject, flow: flow, marks: marks)
        }

        // Start every worker at once; measure from a settled state.
        for subject in subjects {
            let line = commandLine(subject.variant, pool: subject.pool, name: subject.name)
            subject.pid = try Launcher.shared.spawn(line[0], Array(line.dropFirst()), environment: environment(subject),
                                                    log: "\(work)/logs/\(subject.name).log", label: subject.name)
        }
        for subject in subjects {
            guard await api.waitOnline(pool: subject.pool, names: [subject.name], pids: [subject.pid], bound: 120) else {
                throw BenchError("\(subject.variant.title) was not ONLINE within 120 s (\(Launcher.shared.exitDescription(subject.pid) ?? "still running")); log: \(logTail(subject))")
            }
        }
        log("\(subjects.count) workers ONLINE; settling for 10 s")
        await Clock.sleep(10)

        log("idle: counting requests for \(Int(settings.idleSeconds)) s")
        let idle = await window(subjects, seconds: settings.idleSeconds)
        for (subject, counted) in zip(subjects, idle) {
            subject.result.idle = counted
            log("\(subject.variant.title): idle: \(String(format: "%.1f", counted.perMinute)) requests/min")
        }

        log("\(settings.samples) runs per worker at random moments: created → job started, then CANCELLING → CANCELLED")
        await withTaskGroup(of: Void.self) { group in
            for subject in subjects {
                group.addTask { await samples(subject, marks: marks) }
            }
        }
        for subject in subjects {
            let result = subject.result
            log("\(subject.variant.title): dispatch median \(seconds(result.dispatchMedianSeconds)), cancellation median \(seconds(result.cancelMedianSeconds))")
        }

        // One worker at a time: each fan-out starts 1 + N Python engines, which would slow the others'.
        for subject in subjects where subject.variant.fanout {
            for _ in 0..<settings.fanoutSamples {
                let sample = await fanout(subject)
                subject.result.fanout.append(sample)
                log("\(subject.variant.title): fan-out of \(settings.fanoutChildren): \(seconds(sample.seconds)) (\(sample.finalState), \(sample.childrenCompleted)/\(sample.children) children COMPLETED)")
            }
            subject.result.fanoutMedianSeconds = median(subject.result.fanout.filter { $0.finalState == "COMPLETED" }.compactMap(\.seconds))
        }

        try await busy(subjects)
        for subject in subjects {
            await Launcher.shared.stop(subject.pid, grace: subject.variant.python ? 3 : 15)
        }
        return PushResult(settings: settings, variants: subjects.map(\.result))
    }

    func seconds(_ value: Double?) -> String { value.map { String(format: "%.2f s", $0) } ?? "n/a" }

    func logTail(_ subject: Subject) -> String {
        let text = (try? String(contentsOfFile: "\(work)/logs/\(subject.name).log", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(5).joined(separator: " | ")
    }

    // MARK: - Workers

    func commandLine(_ variant: PushVariant, pool: String, name: String) -> [String] {
        if variant.python {
            return ["\(venv)/bin/prefect", "worker", "start", "--pool", pool, "--type", "process", "--name", name]
        }
        // Defaults, but for a shorter wait when the bench stops it with runs in flight.
        return [variant.binary, "start", "--pool", pool, "--name", name, "--state-dir", "\(work)/state/\(name)",
                "--drain-timeout", "10", "--kill-grace-seconds", "2"]
    }

    /// The bench's environment without PREFECT_* settings (so every worker runs with its defaults), the
    /// worker's proxy as the API, and the venv first on PATH (engine flows need its `python`).
    func environment(_ subject: Subject) -> [String: String] {
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PREFECT_") }
        env["PATH"] = "\(venv)/bin:" + (env["PATH"] ?? "/usr/bin:/bin")
        env["PREFECT_API_URL"] = subject.proxy.apiURL
        env["BENCH_WORK_DIR"] = work
        if subject.variant.python {
            env["PREFECT_HOME"] = "\(work)/python-home-\(subject.variant.name)"
        } else {
            env.merge(ourEnvironment) { _, new in new }
        }
        return env
    }

    func prepare(_ subject: Subject, flow: String, marks: String) async throws {
        try await api.createPool(subject.pool)
        let name = subject.pool
        // The job's first act: its start time and pid into a file named after its run.
        subject.sampleDeployment = try await api.createDeployment("sample-\(name)", flow: flow, pool: subject.pool, jobVariables: [
            "command": .string(settings.sampleJob.replacingOccurrences(of: "MARKS", with: marks)),
        ])
        subject.busyDeployment = try await api.createDeployment("busy-\(name)", flow: flow, pool: subject.pool,
                                                                jobVariables: ["command": .string(settings.busyJob)])
        guard subject.variant.fanout else { return }
        let pull = JSON.array([.object(["prefect.deployments.steps.set_working_directory": .object(["directory": .string(flows)])])])
        subject.childDeployment = try await api.createDeployment("child-\(name)", flow: flow, pool: subject.pool,
                                                                 entrypoint: "fanout.py:child", pullSteps: pull)
        subject.parentDeployment = try await api.createDeployment("parent-\(name)", flow: flow, pool: subject.pool,
                                                                  entrypoint: "fanout.py:fanout", pullSteps: pull)
    }

    // MARK: - Requests per minute

    /// Counts every worker's requests over the same `seconds`.
    func window(_ subjects: [Subject], seconds: Double) async -> [RequestWindow] {
        let before = subjects.map(\.proxy.snapshot)
        let start = Clock.now
        await Clock.sleep(seconds)
        let elapsed = Clock.now - start
        return zip(subjects, before).map { subject, earlier in
            let delta = subject.proxy.snapshot.since(earlier)
            return RequestWindow(seconds: elapsed, requests: delta.requests, perMinute: Double(delta.requests) * 60 / elapsed,
                                 webSockets: delta.webSockets, refusedWebSockets: delta.refused,
                                 byEndpoint: delta.byEndpoint.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
                                     .map { EndpointCount(endpoint: $0.key, count: $0.value) })
        }
    }

    /// `busyRuns` long runs per worker; once every job runs, the requests of the next `busySeconds`.
    func busy(_ subjects: [Subject]) async throws {
        var ids: [[String]] = []
        for subject in subjects {
            ids.append(try await api.createRuns(subject.busyDeployment, count: settings.busyRuns, at: nil))
        }
        log("busy: \(settings.busyRuns) runs of `\(settings.busyJob)` per worker; waiting for every job to start")
        let deadline = Clock.now + 60
        var started = [Bool](repeating: false, count: subjects.count)
        while Clock.now < deadline, started.contains(false) {
            let tick = Clock.now
            for (i, subject) in subjects.enumerated() where !started[i] {
                if let runs = try? await api.readRuns(deployment: subject.busyDeployment, expected: settings.busyRuns) {
                    started[i] = runs.filter { $0.infrastructurePID != nil }.count >= settings.busyRuns
                }
            }
            await Clock.sleep(tick + 0.5 - Clock.now)
        }
        for (i, subject) in subjects.enumerated() where !started[i] {
            subject.result.errors.append("busy: not every one of the \(settings.busyRuns) jobs started within 60 s")
        }
        // Past the start-up of the last jobs (labels, pid, RUNNING): the window sees runs in flight only.
        await Clock.sleep(10)
        log("busy: counting requests for \(Int(settings.busySeconds)) s")
        let counted = await window(subjects, seconds: settings.busySeconds)
        for (subject, counted) in zip(subjects, counted) {
            subject.result.busy = counted
            log("\(subject.variant.title): \(settings.busyRuns) runs in flight: \(String(format: "%.1f", counted.perMinute)) requests/min")
            // A run that ended inside the window put its final report, logs and events into the count.
            if let runs = try? await api.readRuns(deployment: subject.busyDeployment, expected: settings.busyRuns) {
                let ended = runs.filter(\.isTerminal).count
                if ended > 0 {
                    subject.result.errors.append("busy: \(ended) of the \(settings.busyRuns) runs ended before the window did; their ends are in its count")
                }
            }
        }
        _ = ids
    }

    // MARK: - Dispatch and cancellation

    func samples(_ subject: Subject, marks: String) async {
        for _ in 0..<settings.samples {
            await Clock.sleep(Double.random(in: 0...settings.sampleSpreadSeconds))
            let sample = await sample(subject, marks: marks)
            subject.result.samples.append(sample)
            log("\(subject.variant.title): created → job started \(seconds(sample.dispatchSeconds)); CANCELLING → CANCELLED \(seconds(sample.cancelSeconds)) (\(sample.finalState), job \(sample.jobGone ? "gone" : "STILL RUNNING"))\(sample.error.map { "; \($0)" } ?? "")")
        }
        let good = subject.result.samples.filter { $0.finalState == "CANCELLED" && $0.jobGone }
        subject.result.dispatchMedianSeconds = median(subject.result.samples.compactMap(\.dispatchSeconds))
        subject.result.cancelMedianSeconds = median(good.compactMap(\.cancelSeconds))
    }

    func sample(_ subject: Subject, marks: String) async -> PushSample {
        var sample = PushSample(runId: "", dispatchSeconds: nil, cancelSeconds: nil, cancelObservedSeconds: nil,
                                finalState: "NOT CREATED", jobGone: false, error: nil)
        let created: JSON
        do {
            created = try await api.call("POST", "/deployments/\(subject.sampleDeployment)/create_flow_run",
                                         .object(["idempotency_key": .string(UUID().uuidString.lowercased())]))
        } catch {
            sample.error = "create: \(error)"
            return sample
        }
        guard let id = created["id"]?.stringValue, let createdAt = created["created"]?.stringValue.flatMap(Timestamp.parse) else {
            sample.error = "create_flow_run answered without id or created"
            return sample
        }
        sample.runId = id
        sample.finalState = "NOT STARTED"
        // The job's start file, polled every 20 ms (bounded: two polls and more).
        let file = "\(marks)/\(id)"
        var mark: (time: Double, pid: pid_t)?
        let startDeadline = Clock.now + 40
        while Clock.now < startDeadline {
            if let text = try? String(contentsOfFile: file, encoding: .utf8), text.hasSuffix("\n") {
                let parts = text.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
                if parts.count == 2, let time = Double(parts[0]), let pid = pid_t(parts[1]) { mark = (time, pid) }
                break
            }
            await Clock.sleep(0.02)
        }
        guard let mark else {
            sample.error = "the job did not start within 40 s"
            await forceCancel(id)
            return sample
        }
        sample.dispatchSeconds = mark.time - createdAt.timeIntervalSince1970
        // Cancel once the worker knows the job's pid (Prefect's worker kills only what it has a pid for; ours
        // reports RUNNING once the pid is recorded).
        let pidDeadline = Clock.now + 30
        var ready = false
        while Clock.now < pidDeadline {
            if let run = try? await api.readRun(id), run.infrastructurePID != nil, subject.variant.python || run.stateType == "RUNNING" {
                ready = true
                break
            }
            await Clock.sleep(0.1)
        }
        guard ready else {
            sample.error = "no infrastructure pid (and RUNNING) within 30 s of the job's start"
            await forceCancel(id)
            killJob(mark.pid)
            return sample
        }
        await Clock.sleep(Double.random(in: 0.5...1.5))
        let asked = Clock.now
        let cancelling = try? await api.call("POST", "/flow_runs/\(id)/set_state", .object(["state": .object(["type": "CANCELLING"])]))
        let cancellingAt = cancelling?["state"]?["timestamp"]?.stringValue.flatMap(Timestamp.parse)
        let deadline = asked + 60
        var final: RunRecord?
        while Clock.now < deadline {
            let tick = Clock.now
            if let run = try? await api.readRun(id), run.isTerminal {
                sample.cancelObservedSeconds = Clock.now - asked
                final = run
                break
            }
            await Clock.sleep(tick + 0.1 - Clock.now)
        }
        if let final {
            sample.finalState = final.stateType
        } else {
            sample.finalState = (try? await api.readRun(id))?.stateType ?? "UNKNOWN"
        }
        if let end = final?.stateTime, let cancellingAt { sample.cancelSeconds = end.timeIntervalSince(cancellingAt) }
        // A worker may report CANCELLED just before its signal lands: give the job 2 s to go.
        let goneDeadline = Clock.now + 2
        while Clock.now < goneDeadline, jobAlive(mark.pid) { await Clock.sleep(0.05) }
        sample.jobGone = !jobAlive(mark.pid)
        if !sample.jobGone { killJob(mark.pid) }
        if final == nil { await forceCancel(id) }
        return sample
    }

    /// The job (`sleep`, exec'd by the start file's shell) still runs: its pid exists, is no zombie, and is a sleep.
    func jobAlive(_ pid: pid_t) -> Bool {
        guard let state = Proc.statFields(pid)?.first, state != "Z" else { return false }
        return Proc.commandLine(pid).hasPrefix("sleep")
    }

    func killJob(_ pid: pid_t) {
        if jobAlive(pid) { kill(pid, SIGKILL) }
    }

    func forceCancel(_ id: String) async {
        _ = try? await api.call("POST", "/flow_runs/\(id)/set_state", .object(["state": .object(["type": "CANCELLED"]), "force": true]))
    }

    // MARK: - Fan-out

    func fanout(_ subject: Subject) async -> FanoutSample {
        var sample = FanoutSample(parentId: "", seconds: nil, finalState: "NOT CREATED", children: 0, childrenCompleted: 0, childRunningSeconds: [])
        let parameters: JSON = .object([
            "deployment": .string(subject.childDeployment), "children": .int(settings.fanoutChildren),
            "seconds": .double(settings.fanoutChildSeconds), "poll_interval": .double(settings.fanoutPollSeconds),
        ])
        let childrenBefore = (try? await api.readRuns(deployment: subject.childDeployment, expected: 0))?.map(\.id) ?? []
        guard let created = try? await api.call("POST", "/deployments/\(subject.parentDeployment)/create_flow_run", .object([
            "parameters": parameters, "idempotency_key": .string(UUID().uuidString.lowercased()),
        ])), let id = created["id"]?.stringValue, let createdAt = created["created"]?.stringValue.flatMap(Timestamp.parse) else {
            return sample
        }
        sample.parentId = id
        let deadline = Clock.now + 240
        var final: RunRecord?
        while Clock.now < deadline {
            let tick = Clock.now
            if let run = try? await api.readRun(id), run.isTerminal {
                final = run
                break
            }
            await Clock.sleep(tick + 0.25 - Clock.now)
        }
        sample.finalState = final?.stateType ?? "NOT TERMINAL after 240 s"
        if let end = final?.stateTime { sample.seconds = end.timeIntervalSince(createdAt) }
        if final == nil { await forceCancel(id) }
        let known = Set(childrenBefore)
        let children = ((try? await api.call("POST", "/flow_runs/filter", .object([
            "flow_runs": .object(["deployment_id": .object(["any_": .array([.string(subject.childDeployment)])])]),
            "limit": .int(200),
        ]))).flatMap { json -> [JSON]? in if case .array(let items) = json { return items } else { return nil } }) ?? []
        let mine = children.filter { !known.contains($0["id"]?.stringValue ?? "") }
        sample.children = mine.count
        sample.childrenCompleted = mine.filter { RunRecord($0).stateType == "COMPLETED" }.count
        sample.childRunningSeconds = mine.compactMap { child -> Double? in
            guard let created = child["created"]?.stringValue.flatMap(Timestamp.parse) else { return nil }
            return child["start_time"]?.stringValue.flatMap(Timestamp.parse)?.timeIntervalSince(created)
        }.sorted()
        return sample
    }
}

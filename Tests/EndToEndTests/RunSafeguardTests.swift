import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Secret redaction, resource usage, `timeout_seconds` and flow-run heartbeats, against the real server.
final class RunSafeguardTests: RunControlTestCase, @unchecked Sendable {
    let runTimeout = 60.0
    let engineTimeout = 90.0

    private func offload<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: body()) }
        }
    }

    /// `startRunControlWorker` serving /health and /metrics on a free port; returns once /health answers.
    private func startMetricsWorker(pool: String, environment: [String: String] = [:]) async throws -> (WorkerProcess, UInt16) {
        let port = E2E.closedLocalPort()
        let worker = try startWorker(pool: pool, arguments: Self.fastArguments + ["--state-dir", try stateDirectory(), "--with-healthcheck",
                                                                                  "--kill-grace-seconds", "2"],
                                     environment: environment.merging([
                                         "PREFECT_WORKER_WEBSERVER_PORT": String(port), "PREFECT_WORKER_WEBSERVER_HOST": "127.0.0.1",
                                     ]) { $1 })
        _ = try await E2E.eventually(timeout: 30, "GET /health on port \(port) to answer") { () -> Bool? in
            try checkWorkersAlive()
            return await offload { RawHTTP.get(port: port, "/health", timeout: 3) }?.status == nil ? nil : true
        }
        return (worker, port)
    }

    /// Events whose resource or a related resource is the flow run.
    private func events(ofRun id: String, prefix: String...) async throws -> [JSON] {
        let reply = try await api.send("POST", "/events/filter", .object([
            "filter": .object([
                "event": .object(["prefix": .array(prefix.map(JSON.string))]),
                "any_resource": .object(["id": .array([.string("prefect.flow-run.\(id)")])]),
            ]),
            "limit": .int(50),
        ]))
        return reply["events"]?.asArray ?? []
    }

    /// The run's log lines, once one of them contains `text`.
    private func logs(_ id: String, containing text: String, timeout: Double = 20) async throws -> [String] {
        var messages: [String] = []
        do {
            _ = try await E2E.eventually(timeout: timeout, interval: 0.5, "a log line of \(id) containing '\(text)' in \(messages)") {
                messages = try await api.logMessages(id)
                return messages.contains { $0.contains(text) } ? true : nil
            }
        } catch {
            XCTFail("\(error)")
        }
        return messages
    }

    private static func random(_ prefix: String) -> String {
        prefix + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(16)
    }

    // MARK: - Redaction

    func testSecretsStayOutOfOutputLogsEventsMetricsAndCmdline() async throws {
        let apiKey = Self.random("pnu_e2ekey")
        let password = Self.random("pw-")
        let authString = "e2e-user:" + password
        let token = Self.random("tok-")
        let workerSecret = Self.random("ws-")
        let pool = try await makeProcessPool()
        // The token is in the job's env, and also literally in its command (so in the worker's "started" line).
        let command = #"sh -c 'echo "key=$PREFECT_API_KEY token=$DEPLOY_TOKEN auth=$PREFECT_API_AUTH_STRING pw=${PREFECT_API_AUTH_STRING#*:} ws=$WORKER_SIDE_PASSWORD end"; echo "stderr $DEPLOY_TOKEN tail" >&2; true literal="#
            + token + "'"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(command), "env": .object(["DEPLOY_TOKEN": .string(token)]),
        ]))
        // The local server ignores the key and the auth string, so the worker runs with test values.
        let (worker, port) = try await startMetricsWorker(pool: pool, environment: [
            "PREFECT_API_KEY": apiKey, "PREFECT_API_AUTH_STRING": authString, "WORKER_SIDE_PASSWORD": workerSecret,
        ])
        // The run's name carries the token too: it appears in the worker's events.
        let id = try await api.send("POST", "/deployments/\(TestAPI.path(deployment))/create_flow_run", .object([
            "parameters": .object([:]), "name": .string("e2e-redact-" + token),
        ]))["id"]!.asString!
        track(id)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
        let secrets = [apiKey, authString, password, token, workerSecret]
        func assertClean(_ text: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
            for secret in secrets {
                XCTAssertFalse(text.contains(secret), "\(what) contains the secret \(secret):\n\(text.suffix(3000))", file: file, line: line)
            }
        }

        // Streamed output and the worker's own lines.
        let expected = "key=[REDACTED] token=[REDACTED] auth=[REDACTED] pw=[REDACTED] ws=[REDACTED] end"
        _ = await waitForLogLine(worker, run: id, containing: "exited with code 0", timeout: 10)
        XCTAssertTrue(worker.log.contains("\(id) | \(expected)"), "streamed stdout:\n\(Self.lines(of: worker.log, mentioning: id))")
        XCTAssertTrue(worker.log.contains("\(id) | stderr [REDACTED] tail"), "streamed stderr:\n\(Self.lines(of: worker.log, mentioning: id))")
        XCTAssertTrue(worker.log.contains("literal=[REDACTED]"), "the worker's 'started' line:\n\(Self.lines(of: worker.log, mentioning: id))")
        assertClean(worker.log, "the worker's output")

        // Shipped logs.
        let messages = try await logs(id, containing: "exited with code 0")
        XCTAssertTrue(messages.contains(expected), "shipped job output: \(messages)")
        XCTAssertTrue(messages.contains("stderr [REDACTED] tail"), "shipped job stderr: \(messages)")
        assertClean(messages.joined(separator: "\n"), "the run's logs")

        // The worker's events (the run's name is in their resources). The server's own state-change events
        // name the run too: those are not the worker's to redact.
        var events: [JSON] = []
        let wanted: Set<String> = ["prefect.worker.submitted-flow-run", "prefect.worker.executed-flow-run", "prefect.flow-run.heartbeat"]
        _ = try? await E2E.eventually(timeout: 20, interval: 0.5, "the worker's events about the run") { () -> Bool? in
            events = try await self.events(ofRun: id, prefix: "prefect.worker.", "prefect.flow-run.heartbeat")
            return wanted.isSubset(of: Set(events.compactMap { $0["event"]?.asString })) ? true : nil
        }
        let names = Set(events.compactMap { $0["event"]?.asString })
        XCTAssertTrue(names.isSuperset(of: wanted), "events: \(names)")
        let encoded = events.map { $0.encoded() }.joined(separator: "\n")
        XCTAssertTrue(encoded.contains("e2e-redact-[REDACTED]"), "the run's name in events should be redacted: \(encoded.prefix(2000))")
        assertClean(encoded, "the worker's events")

        // /metrics and the worker's command line.
        let metrics = await offload { RawHTTP.get(port: port, "/metrics") }
        XCTAssertEqual(metrics?.status, 200)
        XCTAssertTrue(metrics?.body.contains("prefect_worker_run_duration_seconds_count 1") == true, metrics?.body ?? "")
        assertClean(metrics?.body ?? "", "/metrics")
        let cmdline = String(decoding: FileManager.default.contents(atPath: "/proc/\(worker.pid)/cmdline") ?? Data(), as: UTF8.self)
        XCTAssertTrue(cmdline.contains("--pool"), "read the worker's cmdline: \(cmdline)")
        assertClean(cmdline, "/proc/<worker>/cmdline")

        // The job kept the key in its environment: it needs it to talk to the API.
        XCTAssertTrue(worker.isRunning)
    }

    // MARK: - Usage

    func testUsageIsReportedForCommandsAndEngineRuns() async throws {
        let pool = try await makeProcessPool()
        // About 80 MB written (so resident), held for a moment.
        let command = #"python -c 'import time; b = b"x" * 80_000_000; sum(range(3_000_000)); time.sleep(0.5); print(len(b))'"#
        let commandDeployment = try await api.createCommandDeployment(pool: pool, name: uniqueName("-cmd"), jobVariables: .object([
            "command": .string(command),
        ]))
        let engineDeployment = try await api.createEngineDeployment(pool: pool, name: uniqueName("-engine"), flow: "hello")
        let (worker, port) = try await startMetricsWorker(pool: pool)
        let commandRun = try await api.createFlowRun(deployment: commandDeployment)
        let engineRun = try await api.createFlowRun(deployment: engineDeployment)
        track(commandRun, engineRun)
        let runs = try await waitForFinalStates([commandRun, engineRun], timeout: engineTimeout)
        XCTAssertEqual(runs[commandRun]?.stateType, "COMPLETED", "command: \(runs[commandRun]?.stateSummary ?? "")")
        XCTAssertEqual(runs[engineRun]?.stateType, "COMPLETED", "engine: \(runs[engineRun]?.stateSummary ?? "")")

        let pattern = #"job \(pid [0-9]+\) exited with code 0 after ([0-9.]+) s; CPU ([0-9.]+) s user \+ ([0-9.]+) s system; peak memory ([0-9.]+) MB"#
        func closing(_ messages: [String]) -> (wall: Double, user: Double, system: Double, peakMB: Double)? {
            for message in messages {
                guard let match = message.range(of: pattern, options: .regularExpression) else { continue }
                let numbers = message[match].split(whereSeparator: { !"0123456789.".contains($0) }).compactMap { Double($0) }
                // pid, wall, user, system, peak
                guard numbers.count >= 5 else { continue }
                return (numbers[numbers.count - 4], numbers[numbers.count - 3], numbers[numbers.count - 2], numbers[numbers.count - 1])
            }
            return nil
        }
        let commandLogs = try await logs(commandRun, containing: "peak memory")
        let commandUsage = try XCTUnwrap(closing(commandLogs), "the command run's closing line in \(commandLogs)")
        print("closing line of the 80 MB command: \(commandLogs.first { $0.contains("peak memory") } ?? "")")
        XCTAssertGreaterThan(commandUsage.peakMB, 78, "peak memory near 80 MB: \(commandUsage)")
        XCTAssertLessThan(commandUsage.peakMB, 140, "peak memory near 80 MB: \(commandUsage)")
        XCTAssertGreaterThan(commandUsage.user + commandUsage.system, 0.05, "CPU: \(commandUsage)")
        XCTAssertGreaterThan(commandUsage.wall, 0.5)
        XCTAssertTrue(worker.log.contains("peak memory"), "the closing line is streamed too")

        let engineLogs = try await logs(engineRun, containing: "peak memory")
        let engineUsage = try XCTUnwrap(closing(engineLogs), "the engine run's closing line in \(engineLogs)")
        print("closing line of the engine run: \(engineLogs.first { $0.contains("peak memory") } ?? "")")
        XCTAssertGreaterThan(engineUsage.peakMB, 20, "an engine imports Prefect: \(engineUsage)")
        XCTAssertGreaterThan(engineUsage.user, 0.1)

        // The executed-flow-run event carries the figures.
        var executed: JSON?
        _ = try? await E2E.eventually(timeout: 20, interval: 0.5, "the executed-flow-run event") { () -> Bool? in
            executed = try await self.events(ofRun: commandRun, prefix: "prefect.worker.executed-flow-run").first
            return executed == nil ? nil : true
        }
        let payload = try XCTUnwrap(executed?["payload"], "executed-flow-run event")
        let peak = try XCTUnwrap(payload["peak_memory_bytes"]?.asInt, "payload: \(payload.encoded())")
        XCTAssertEqual(Double(peak) / 1e6, commandUsage.peakMB, accuracy: 0.1)
        XCTAssertNotNil(payload["cpu_user_seconds"], "payload: \(payload.encoded())")
        XCTAssertNotNil(payload["cpu_system_seconds"], "payload: \(payload.encoded())")
        XCTAssertNotNil(payload["wall_seconds"], "payload: \(payload.encoded())")

        // And /metrics.
        let body = await offload { RawHTTP.get(port: port, "/metrics") }?.body ?? ""
        XCTAssertTrue(body.contains("prefect_worker_run_duration_seconds_count 2\n"), body)
        let user = body.split(separator: "\n").first { $0.hasPrefix(#"prefect_worker_run_cpu_seconds_total{mode="user"} "#) }
            .flatMap { Double($0.split(separator: " ").last ?? "") }
        XCTAssertGreaterThan(try XCTUnwrap(user, body), commandUsage.user)
    }

    /// Also: the adopted job of a worker-owned run goes on heartbeating (the new worker sends one as it adopts it).
    func testAnAdoptedJobSaysItsUsageIsUnknownAndHeartbeats() async throws {
        let pool = try await makeProcessPool()
        let stateDir = try stateDirectory()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": "sleep 20", "env": .object(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"]),
        ]))
        let first = try startRunControlWorker(pool: pool, stateDir: stateDir)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let pid = try await waitForJobPID(id, timeout: 19)
        await killWorker(first)
        let killed = Date()
        let second = try startRunControlWorker(pool: pool, stateDir: stateDir)
        var beats: [JSON] = []
        _ = try? await E2E.eventually(timeout: 15, interval: 0.5, "a heartbeat of the adopted run") { () -> Bool? in
            beats = try await self.events(ofRun: id, prefix: "prefect.flow-run.heartbeat")
            return beats.contains { ($0["occurred"]?.asString).flatMap(Timestamp.parse).map { $0 > killed } == true } ? true : nil
        }
        // The first worker was dead before `killed`: a later heartbeat is the new worker's. (The first worker's
        // own, as the job started, is usually lost: it is killed before its events go out.)
        let adopted = try XCTUnwrap(beats.first { ($0["occurred"]?.asString).flatMap(Timestamp.parse).map { $0 > killed } == true },
                                    "a heartbeat after the first worker was killed at \(killed): \(beats.map { $0.encoded() })")
        let flow = (adopted["related"]?.asArray ?? []).first { $0["prefect.resource.role"]?.asString == "flow" }
        XCTAssertEqual(flow?["prefect.resource.name"]?.asString, "e2e-command-flow", "related: \(adopted["related"]?.encoded() ?? "")")
        for event in beats {
            XCTAssertEqual(event["resource"]?["prefect.resource.id"]?.asString, "prefect.flow-run.\(id)")
        }
        let line = await waitForLogLine(second, run: id, containing: "job (pid \(pid))", timeout: 40)
        XCTAssertEqual(line.map { $0.contains("exit status and resource usage are unknown") }, true,
                       "closing line of the adopted job: \(line ?? Self.lines(of: second.log, mentioning: id))")
        XCTAssertEqual(line?.contains("0.00"), false, "no zeros for what is not known: \(line ?? "")")
        let messages = try await logs(id, containing: "resource usage are unknown")
        XCTAssertFalse(messages.contains { $0.contains("peak memory") }, "no usage figures for an adopted job: \(messages)")
    }

    // MARK: - Timeout

    func testTimeoutStopsTheJobTreeAndFailsTheRunTimedOut() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": "sh -c 'sleep 120 & sleep 120'", "timeout_seconds": .int(3),
        ]))
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), killGrace: 2)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        _ = try await waitForState(id, ["RUNNING"], timeout: runTimeout)
        let started = Date()
        // The tree is gone a few seconds after the limit (SIGTERM ends sleep at once) ...
        _ = try await waitForJobPID(id, timeout: 10)
        let gone = await waitForNoJobProcesses(id, timeout: 15)
        let stopped = Date().timeIntervalSince(started)
        XCTAssertTrue(gone, "left behind: \(ProcScan.describe(ProcScan.processes(ofRun: id)))")
        print("timeout_seconds=3: job tree gone \(String(format: "%.1f", stopped)) s after RUNNING was seen")
        XCTAssertLessThan(stopped, 12, "within a few seconds of the limit")
        // ... and the run is FAILED/TimedOut (delivery waits for the server, which may be busy).
        let run = try await waitForFinalState(id, timeout: 60)
        XCTAssertEqual(run.stateType, "FAILED", "final state: \(run.stateSummary)")
        XCTAssertEqual(run["state_name"]?.asString, "TimedOut")
        XCTAssertTrue(run.stateMessage.contains("timeout of 3 second(s)") && run.stateMessage.contains("timeout_seconds"),
                      "message should name the limit: \(run.stateMessage)")
        let line = await waitForLogLine(worker, run: id, containing: "ran longer than timeout_seconds=3", timeout: 5)
        XCTAssertNotNil(line, "the worker says why it stops the job")
        // Not before the limit: the job was signalled no earlier than 3 s after it started.
        let log = worker.log.split(separator: "\n")
        func time(_ fragment: String) -> Date? {
            log.first { $0.contains(id) && $0.contains(fragment) }.flatMap { Timestamp.parse(String($0.prefix { $0 != " " })) }
        }
        if let spawned = time("started command"), let signalled = time("ran longer than timeout_seconds") {
            XCTAssertGreaterThanOrEqual(signalled.timeIntervalSince(spawned), 2.95, "signalled before the limit")
        } else {
            XCTFail("no start/stop lines in the worker log: \(Self.lines(of: worker.log, mentioning: id))")
        }
        XCTAssertTrue(worker.isRunning)
    }

    func testTimeoutWorksOnAPoolWithPrefectsOwnTemplateAndBadValuesCrashBeforeStart() async throws {
        // Prefect's template has no timeout_seconds: it is read from the job variables, as state_owner is.
        guard case .object(var template) = JobTemplate.defaultProcessTemplate,
              case .object(var configuration)? = template["job_configuration"],
              case .object(var variables)? = template["variables"], case .object(var properties)? = variables["properties"]
        else { return XCTFail("default template changed shape") }
        configuration["timeout_seconds"] = nil
        properties["timeout_seconds"] = nil
        variables["properties"] = .object(properties)
        template["variables"] = .object(variables)
        template["job_configuration"] = .object(configuration)
        let pool = try await makeProcessPool(template: .object(template))
        let workdir = try temporaryDirectory("never")
        func deployment(_ suffix: String, _ timeout: JSON) async throws -> String {
            try await api.createCommandDeployment(pool: pool, name: uniqueName(suffix), jobVariables: .object([
                "command": .string("sh -c 'touch \(workdir)/started-\(suffix); sleep 60'"), "timeout_seconds": timeout,
            ]))
        }
        let timed = try await deployment("ok", .double(2.5))
        let negative = try await deployment("neg", .int(-5))
        let text = try await deployment("text", "soon")
        _ = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), killGrace: 1)
        let ids = [try await api.createFlowRun(deployment: timed), try await api.createFlowRun(deployment: negative),
                   try await api.createFlowRun(deployment: text)]
        track(ids)
        let runs = try await waitForFinalStates(ids, timeout: 90)
        let timedRun = try XCTUnwrap(runs[ids[0]])
        XCTAssertEqual(timedRun.stateType, "FAILED", timedRun.stateSummary)
        XCTAssertEqual(timedRun["state_name"]?.asString, "TimedOut")
        XCTAssertTrue(timedRun.stateMessage.contains("2.5 second(s)"), timedRun.stateMessage)
        for (id, suffix, value) in [(ids[1], "neg", "-5"), (ids[2], "text", "\"soon\"")] {
            let run = try XCTUnwrap(runs[id])
            XCTAssertEqual(run.stateType, "CRASHED", "\(suffix): \(run.stateSummary)")
            XCTAssertTrue(run.stateMessage.contains("timeout_seconds") && run.stateMessage.contains(value), "\(suffix): \(run.stateMessage)")
            XCTAssertEqual(run["run_count"]?.asInt, 0, "\(suffix) never started")
            XCTAssertFalse(FileManager.default.fileExists(atPath: "\(workdir)/started-\(suffix)"), "\(suffix) must not start")
        }
    }

    func testAnEngineRunThatTimesOutIsFailedTimedOut() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createEngineDeployment(pool: pool, name: uniqueName(), flow: "sleepy", jobVariables: .object([
            "timeout_seconds": .int(10),
        ]))
        _ = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), killGrace: 3)
        let id = try await api.createFlowRun(deployment: deployment, parameters: try E2E.json(#"{"seconds": 120}"#))
        track(id)
        _ = try await waitForFinalState(id, timeout: engineTimeout)
        // The engine may report CRASHED on the SIGTERM a moment before the worker's FAILED/TimedOut replaces it.
        let api = self.api!
        let failed = try? await E2E.eventually(timeout: 20, "FAILED/TimedOut to replace the engine's CRASHED") { () -> JSON? in
            let current = try await api.readFlowRun(id)
            return current.stateType == "FAILED" ? current : nil
        }
        var run = try await api.readFlowRun(id)
        if let failed { run = failed }
        let history = try await api.states(id).map { "\($0["type"]?.asString ?? "?")/\($0["name"]?.asString ?? "?")" }
        XCTAssertEqual(run.stateType, "FAILED", "final state: \(run.stateSummary); history: \(history)")
        XCTAssertEqual(run["state_name"]?.asString, "TimedOut")
        XCTAssertTrue(run.stateMessage.contains("timeout of 10 second(s)"), run.stateMessage)
        let gone = await waitForNoJobProcesses(id, timeout: 5)
        XCTAssertTrue(gone, "left behind: \(ProcScan.describe(ProcScan.processes(ofRun: id)))")
    }

    // MARK: - Heartbeats

    func testWorkerOwnedRunsHeartbeatLikeTheEngine() async throws {
        let pool = try await makeProcessPool()
        let flow = try await api.createFlow("e2e-command-flow")
        let tag = "e2e-hb-\(UUID().uuidString.lowercased().prefix(6))"
        let env: JSON = .object(["PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"])
        let commandDeployment = try await api.createDeployment(name: uniqueName("-cmd"), flowID: flow, pool: pool, jobVariables: .object([
            "command": "sleep 40", "env": env,
        ]), extra: ["tags": .array([.string(tag)])])
        let engineDeployment = try await api.createEngineDeployment(pool: pool, name: uniqueName("-engine"), flow: "hello", jobVariables: .object([
            "env": env,
        ]))
        _ = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let commandRun = try await api.createFlowRun(deployment: commandDeployment)
        let engineRun = try await api.createFlowRun(deployment: engineDeployment)
        track(commandRun, engineRun)
        let runs = try await waitForFinalStates([commandRun, engineRun], timeout: 90)
        XCTAssertEqual(runs[commandRun]?.stateType, "COMPLETED", runs[commandRun]?.stateSummary ?? "")
        XCTAssertEqual(runs[engineRun]?.stateType, "COMPLETED", runs[engineRun]?.stateSummary ?? "")

        var ours: [JSON] = []
        var engines: [JSON] = []
        _ = try? await E2E.eventually(timeout: 20, interval: 0.5, "heartbeat events of both runs") { () -> Bool? in
            ours = try await self.events(ofRun: commandRun, prefix: "prefect.flow-run.heartbeat")
            engines = try await self.events(ofRun: engineRun, prefix: "prefect.flow-run.heartbeat")
            return ours.count >= 2 && !engines.isEmpty ? true : nil
        }
        // One at the start, one 30 s later: a 40 s job gets two.
        XCTAssertGreaterThanOrEqual(ours.count, 2, "heartbeats of the 40 s command: \(ours.map { $0.encoded() })")
        let engine = try XCTUnwrap(engines.first, "the engine's own heartbeat, to compare with")
        // A short engine run heartbeats once, at its start: the worker adds none of its own.
        XCTAssertEqual(engines.count, 1, "heartbeats of the engine run: \(engines.map { $0.encoded() })")
        let mine = try XCTUnwrap(ours.first)
        for event in ours {
            XCTAssertEqual(event["event"]?.asString, "prefect.flow-run.heartbeat")
            XCTAssertEqual(event["resource"]?["prefect.resource.id"]?.asString, "prefect.flow-run.\(commandRun)")
        }
        if ours.count >= 2 {
            let times = ours.compactMap { $0["occurred"]?.asString }.compactMap(Timestamp.parse).sorted()
            if times.count >= 2 { XCTAssertEqual(times[1].timeIntervalSince(times[0]), 30, accuracy: 3, "heartbeat interval") }
        }

        // The same shape as the engine's: resource keys, and related resources by role, with the same keys.
        XCTAssertEqual(Set(mine["resource"]?.objectValue?.keys ?? [:].keys), Set(engine["resource"]?.objectValue?.keys ?? [:].keys),
                       "resource: ours \(mine["resource"]?.encoded() ?? "") engine \(engine["resource"]?.encoded() ?? "")")
        XCTAssertEqual(mine["resource"]?["prefect.resource.name"]?.asString, runs[commandRun]?["name"]?.asString)
        func shape(_ event: JSON) -> [String] {
            (event["related"]?.asArray ?? []).map { related in
                let role = related["prefect.resource.role"]?.asString ?? "?"
                return role + ":" + (related.objectValue?.keys.sorted() ?? []).joined(separator: ",")
            }.filter { !$0.hasPrefix("tag:") }
        }
        XCTAssertEqual(shape(mine), shape(engine), "related: ours \(mine["related"]?.encoded() ?? "") engine \(engine["related"]?.encoded() ?? "")")
        let related = mine["related"]?.asArray ?? []
        XCTAssertTrue(related.contains { $0["prefect.resource.id"]?.asString == "prefect.flow.\(flow)" && $0["prefect.resource.name"]?.asString == "e2e-command-flow" },
                      "related flow: \(related.map { $0.encoded() })")
        XCTAssertTrue(related.contains { $0["prefect.resource.id"]?.asString == "prefect.deployment.\(commandDeployment)" })
        XCTAssertTrue(related.contains { $0["prefect.resource.id"]?.asString == "prefect.tag.\(tag)" && $0["prefect.resource.role"]?.asString == "tag" })
    }
}

import FaultProxy
import Foundation
@testable import PrefectWorker
import XCTest

/// The poll for scheduled runs at its defaults (no `--query-seconds`), against the real server. While the events
/// stream is up the poll rests (a safety net every 30 s), and yet runs start on time: a run created now by push,
/// a run scheduled ahead at its start (the rest poll looks 30 + prefetch s ahead and wakes for it), a new
/// schedule's first run (inserted by the server's scheduler without an event) by the polls every 10 s that follow
/// the deployment's creation or update, and the due runs of a resumed queue or pool. Where push cannot say enough
/// (socket refused or lost, pool concurrency limit, interval set by the user) the poll keeps every `--query-seconds`.
/// Each worker has a proxy in front of it that times its polls.
final class RestingPollTests: RunControlTestCase, @unchecked Sendable {
    private var proxies: [FaultProxy] = []

    /// The worker's default `--query-seconds` and `--prefetch-seconds`.
    private static let querySeconds = 10.0
    private static let prefetchSeconds = 10.0

    override func tearDownWithError() throws {
        defer {
            for proxy in proxies { proxy.stop() }
            proxies.removeAll()
        }
        try super.tearDownWithError()
    }

    /// A proxy that keeps the arrival time of every poll for scheduled runs.
    private func startProxy(blockWebSockets: Bool = false) throws -> FaultProxy {
        let proxy = FaultProxy(upstream: env.apiURL)
        proxy.timedPath = "/get_scheduled_flow_runs"
        proxy.blockWebSockets = blockWebSockets
        try proxy.start()
        proxies.append(proxy)
        return proxy
    }

    /// A worker with the default poll interval: the harness's PREFECT_WORKER_QUERY_SECONDS=0.5 is dropped, or the
    /// worker would take it as set by the user and never rest.
    @discardableResult
    private func startDefaultWorker(pool: String, proxy: FaultProxy? = nil, arguments: [String] = []) throws -> WorkerProcess {
        try startWorker(pool: pool, arguments: ["--state-dir", try stateDirectory()] + arguments,
                        unsetting: ["PREFECT_WORKER_QUERY_SECONDS"], apiURL: proxy?.apiURL)
    }

    private func waitForLog(_ worker: WorkerProcess, _ text: String, what: String) async throws {
        // A minute: on a busy SQLite server the first pool read alone has taken 32 s.
        _ = try await E2E.eventually(timeout: 60, "\(what): \(worker.log.suffix(1500))") {
            try checkWorkersAlive()
            return worker.log.contains(text) ? true : nil
        }
    }

    private func waitForSubscription(_ worker: WorkerProcess) async throws {
        try await waitForLog(worker, "subscribed to work pool", what: "worker \(worker.label) to subscribe to the events stream")
    }

    /// When the run's first job process was seen (the job carries the run's id in its environment).
    private func jobStart(_ id: String, timeout: Double) async throws -> Date {
        try await E2E.eventually(timeout: timeout, interval: 0.02, "the job of \(id) to start") {
            try checkWorkersAlive()
            return ProcScan.processes(ofRun: id).isEmpty ? nil : Date()
        }
    }

    /// When each run's first job process was seen, watched together (a short job ends while another is awaited).
    private func jobStarts(_ ids: [String], timeout: Double) async throws -> [String: Date] {
        var seen: [String: Date] = [:]
        return try await E2E.eventually(timeout: timeout, interval: 0.02, "the jobs of \(ids.filter { seen[$0] == nil }) to start") {
            try checkWorkersAlive()
            for id in ids where seen[id] == nil && !ProcScan.processes(ofRun: id).isEmpty { seen[id] = Date() }
            return seen.count == ids.count ? seen : nil
        }
    }

    /// The time of the proxy's last poll once it is under 3 s old (waiting for the next one if need be): an action
    /// taken then is 27 s or more ahead of the next safety-net poll.
    private func freshPoll(_ proxy: FaultProxy) async throws -> Date {
        try await E2E.eventually(timeout: 35, interval: 0.05, "a poll for scheduled runs through proxy :\(proxy.port)") {
            try checkWorkersAlive()
            return proxy.requestTimes.last.flatMap { Date().timeIntervalSince($0) < 3 ? $0 : nil }
        }
    }

    /// The run ended COMPLETED and ran once (`run_count` 1: not handed back and claimed again).
    private func assertCompletedOnce(_ id: String, _ what: String) async throws {
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", "\(what) \(id): \(run.stateSummary)")
        XCTAssertEqual(run["run_count"]?.asInt, 1, "\(what) \(id) ran once: \(run)")
    }

    private static func gaps(_ times: [Date]) -> String {
        zip(times.dropFirst(), times).map { String(format: "%.1f", $0.timeIntervalSince($1)) }.joined(separator: ", ")
    }

    /// Fails if the worker never rests (more than 3 polls in 65 s, with push up), if the safety net is gone (fewer
    /// than 2), or if it rests where push cannot tell it enough: WebSockets refused, the stream lost, a pool with
    /// a concurrency limit (a freed slot sends no event), `--query-seconds` set by the user (fewer than 5 polls in
    /// 65 s each); or if a worker that loses its stream just after a resting poll waits out the rest of its 30 s.
    func testIdleWorkerRestsWhilePushIsUpAndPollsEveryQuerySecondsOtherwise() async throws {
        struct Case { var label: String; var proxy: FaultProxy; var worker: WorkerProcess; var ready: String }
        var cases: [Case] = []
        for label in ["resting", "socket refused", "socket lost", "pool limit", "interval set"] {
            let pool = try await makeProcessPool("-" + String(label.split(separator: " ").last!))
            if label == "pool limit" {
                _ = try await api.send("PATCH", "/work_pools/\(TestAPI.path(pool))", .object(["concurrency_limit": .int(5)]))
            }
            let proxy = try startProxy(blockWebSockets: label == "socket refused")
            let worker = try startDefaultWorker(pool: pool, proxy: proxy,
                                                arguments: label == "interval set" ? ["--query-seconds", "10"] : [])
            let ready = label == "socket refused" ? "WebSockets are refused on the way to the server" : "subscribed to work pool"
            cases.append(Case(label: label, proxy: proxy, worker: worker, ready: ready))
        }
        for c in cases { try await waitForLog(c.worker, c.ready, what: "the \(c.label) worker's events stream to settle") }
        try await Task.sleep(seconds: 1)  // past the catch-up poll of the connect
        // The stream lost (its reconnects reset, not refused): resting, the next poll would be up to 30 s away.
        let lost = cases.first { $0.label == "socket lost" }!
        lost.proxy.resetWebSockets = true
        lost.proxy.cutWebSockets()
        let start = Date()
        let window = 65.0
        try await Task.sleep(seconds: window)
        var counts: [String: Int] = [:]
        for c in cases {
            let polls = c.proxy.requestTimes.filter { $0 >= start && $0.timeIntervalSince(start) <= window }
            counts[c.label] = polls.count
            print("RestingPollTests: \(c.label): \(polls.count) polls for scheduled runs in \(Int(window)) s, gaps \(Self.gaps(c.proxy.requestTimes)) s")
        }
        XCTAssertLessThanOrEqual(counts["resting"]!, 3, "with push up and --query-seconds unset the poll rests to every 30 s")
        XCTAssertGreaterThanOrEqual(counts["resting"]!, 2, "resting, the poll still comes every 30 s (the safety net)")
        XCTAssertGreaterThanOrEqual(counts["socket refused"]!, 5, "without push the poll keeps every 10 s")
        XCTAssertGreaterThanOrEqual(counts["socket lost"]!, 5, "with the stream lost the poll keeps every 10 s")
        let afterLoss = lost.proxy.requestTimes.first { $0 > start }.map { $0.timeIntervalSince(start) }
        print("RestingPollTests: socket lost: first poll \(afterLoss.map { String(format: "%.1f", $0) } ?? "none") s after the cut")
        XCTAssertLessThanOrEqual(afterLoss ?? .infinity, Self.querySeconds + 0.5, "a lost stream ends the rest at once")
        XCTAssertTrue(lost.worker.log.contains("events stream lost") && !lost.worker.log.contains("WebSockets are refused"),
                      "the stream was lost, not refused: \(lost.worker.log.suffix(1500))")
        XCTAssertGreaterThanOrEqual(counts["pool limit"]!, 5, "with a pool concurrency limit the poll keeps every 10 s")
        XCTAssertGreaterThanOrEqual(counts["interval set"]!, 5, "--query-seconds set by the user holds with push up")
    }

    /// Fails if a run created now waits for a poll (push broken), if a run scheduled 50 s ahead is not woken for
    /// (it would start at the next safety net, ~11 s late), or if either is started before its time or run twice.
    /// 50 s: beyond the 40 s a resting poll looks ahead, so the poll its event rings does not see it, and past the
    /// 30 s of 10 s polls a worker's start may bring (its deployment's `created` event, made just before, comes
    /// back in the stream's replay when the server has stored it by then): either way the first resting poll sees
    /// it and the worker wakes for it 10 s (the prefetch) before its start.
    func testRunsCreatedNowAndAheadStartOnTimeWhileThePollRests() async throws {
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 1"]))
        let proxy = try startProxy()
        let worker = try startDefaultWorker(pool: pool, proxy: proxy)
        try await waitForSubscription(worker)
        let subscribed = Date()
        try await Task.sleep(seconds: 1)  // past the catch-up poll of the connect

        let created = Date()
        let now = try await api.createFlowRun(deployment: deployment)
        track(now)
        let latency = try await jobStart(now, timeout: 15).timeIntervalSince(created)

        let due = Date().addingTimeInterval(50)
        let ahead = try await createScheduledRun(deployment: deployment, at: due)
        track(ahead)
        let lateness = try await jobStart(ahead, timeout: 75).timeIntervalSince(due)
        let pending = try await api.states(ahead).first { $0["type"]?.asString == "PENDING" }?["timestamp"]?.asString.flatMap(Timestamp.parse)
        let claimedAhead = pending.map { due.timeIntervalSince($0) }
        print(String(format: "RestingPollTests: run created now → job started in %.3f s; run scheduled 50 s ahead → claimed %@ s ahead, job started %.3f s after its scheduled time",
                     latency, claimedAhead.map { String(format: "%.1f", $0) } ?? "?", lateness))
        XCTAssertLessThan(latency, 1.5, "a run created now starts by push, not at the next poll")
        XCTAssertLessThan(lateness, 2, "a run scheduled ahead starts at its time, not at the next safety-net poll")
        XCTAssertGreaterThan(lateness, -0.3, "the job does not start before the run's scheduled time")
        let claimed = try XCTUnwrap(claimedAhead, "no PENDING state in the history of \(ahead)")
        // The rest poll that saw it wakes for it at its start minus the prefetch; a 10 s poll claims it 0-10 s ahead.
        let polls = proxy.requestTimes.map { String(format: "%.1f", $0.timeIntervalSince(subscribed)) }.joined(separator: ", ")
        XCTAssertTrue((5...(Self.prefetchSeconds + 2)).contains(claimed),
                      "claimed about --prefetch-seconds ahead, not \(claimed) s (scheduled at +\(String(format: "%.1f", due.timeIntervalSince(subscribed))) s; polls at +[\(polls)] s after the subscription)")
        try await assertCompletedOnce(now, "the run created now")
        try await assertCompletedOnce(ahead, "the run scheduled ahead")
    }

    /// The server's scheduler inserts a new schedule's first runs without an event, within ~5 s of the deployment's
    /// creation or update (its recent-deployments loop), starting from its own "now": the first run is anchored 20 s
    /// after, so any insertion within 20 s schedules it there. With the deployment's `created` or `updated` event
    /// handled, the polls at +0, +10 and +20 s (prefetch 10 s) claim it by +20 s, and its job starts at its time.
    /// Without, the next poll is the safety net, 30 s after the one just before (at most 3 s before), so the job
    /// starts 7-10 s late (or at its Late event, 15 s late): the bound of 5 s fails that.
    func testTheFirstRunOfANewScheduleStartsOnTimeWhileThePollRests() async throws {
        struct Case { var label: String; var pool: String; var proxy: FaultProxy; var paused: String? }
        let flow = try await api.createFlow("e2e-command-flow")
        var cases: [Case] = []
        for label in ["created", "resumed"] {
            let pool = try await makeProcessPool("-" + label)
            // Resumed: a paused deployment without a schedule, resumed with one (a `prefect.deployment.updated`).
            let paused = label == "created" ? nil : try await api.createDeployment(
                name: uniqueName(), flowID: flow, pool: pool, jobVariables: .object(["command": "sleep 1"]), extra: ["paused": .bool(true)])
            let proxy = try startProxy()
            let worker = try startDefaultWorker(pool: pool, proxy: proxy)
            try await waitForSubscription(worker)
            cases.append(Case(label: label, pool: pool, proxy: proxy, paused: paused))
        }
        struct Scheduled { var label: String; var deployment: String; var due: Date; var acted: Date; var sincePoll: Double; var proxy: FaultProxy }
        var scheduled: [Scheduled] = []
        for c in cases {
            let lastPoll = try await freshPoll(c.proxy)
            let due = Date().addingTimeInterval(20)
            let schedules = JSON.array([.object([
                "schedule": .object(["interval": .int(3600), "anchor_date": .string(Timestamp.format(due)), "timezone": "UTC"]),
                "active": .bool(true),
            ])])
            let deployment: String
            if let paused = c.paused {
                _ = try await api.send("PATCH", "/deployments/\(TestAPI.path(paused))", .object(["paused": .bool(false), "schedules": schedules]))
                deployment = paused
            } else {
                deployment = try await api.createDeployment(name: uniqueName(), flowID: flow, pool: c.pool, jobVariables: .object(["command": "sleep 1"]),
                                                            extra: ["schedules": schedules])
            }
            let acted = Date()
            scheduled.append(Scheduled(label: c.label, deployment: deployment, due: due, acted: acted,
                                       sincePoll: acted.timeIntervalSince(lastPoll), proxy: c.proxy))
        }
        var runs: [String: String] = [:]
        for s in scheduled {
            let inserted = try? await E2E.eventually(timeout: 18, "the scheduler to insert the first run of deployment \(s.deployment)") { () -> JSON? in
                try checkWorkersAlive()
                return try await api.send("POST", "/flow_runs/filter", .object([
                    "flow_runs": .object(["deployment_id": .object(["any_": .array([.string(s.deployment)])])]),
                    "sort": "EXPECTED_START_TIME_ASC",  // it inserts a few: the first is at the anchor
                ])).asArray?.first
            }
            // The server's own scheduler, not the worker, inserts these runs. Prefect 3.8.8's fails on every loop
            // under SQLAlchemy 2.1 ("Can't evaluate bulk DML statement"): scripts/setup pins 2.0.36.
            guard let run = inserted else {
                return XCTFail("the server's scheduler inserted no run for deployment \(s.deployment) within 18 s: under SQLAlchemy 2.1 Prefect 3.8.8's scheduler fails on every loop (its log says \"Can't evaluate bulk DML statement\"); scripts/setup pins 2.0.36")
            }
            let id = try XCTUnwrap(run["id"]?.asString)
            track(id)
            runs[s.label] = id
            let start = run["next_scheduled_start_time"]?.asString.flatMap(Timestamp.parse) ?? .distantPast
            guard abs(start.timeIntervalSince(s.due)) < 1 else {
                // The scheduler ran after the anchor (a busy SQLite server): nothing to measure.
                return XCTFail("the server's scheduler put the first run of the \(s.label) deployment \(s.deployment) at \(Timestamp.format(start)) instead of the anchor \(Timestamp.format(s.due))")
            }
        }
        let started = try await jobStarts(scheduled.map { runs[$0.label]! }, timeout: 50)
        for s in scheduled {
            let id = runs[s.label]!
            let lateness = started[id]!.timeIntervalSince(s.due)
            let polls = s.proxy.requestTimes.filter { $0 > s.acted.addingTimeInterval(-s.sincePoll) }.map { String(format: "%.1f", $0.timeIntervalSince(s.acted)) }
            print(String(format: "RestingPollTests: schedule of a deployment %@ %.1f s after the last poll; polls at +[%@] s; first run's job started %.3f s after its scheduled time",
                         s.label, s.sincePoll, polls.joined(separator: ", "), lateness))
            XCTAssertLessThan(lateness, 5, "the first run of the schedule of a deployment \(s.label) starts at its time, not at the next safety-net poll")
            XCTAssertGreaterThan(lateness, -0.3, "the job does not start before the run's scheduled time")
            try await assertCompletedOnce(id, "the first run of the schedule of a deployment \(s.label)")
        }
    }

    /// Runs that wait in a paused queue or pool, already Late, get no event when it is resumed: the server emits
    /// `prefect.work-queue.ready|not-ready` or `prefect.work-pool.ready|not-ready` (a status change; `is_paused` is
    /// not among the fields of a `…updated` event). With a 10 s poll they started within 10 s of the resume. Fails
    /// if, resting, they wait for the safety net instead (resumed just after a poll: ~29 s).
    func testDueRunsStartWithinQuerySecondsOfTheirQueueOrPoolBeingResumed() async throws {
        struct Case { var label: String; var path: String; var proxy: FaultProxy; var run: String }
        var cases: [Case] = []
        for label in ["queue", "pool"] {
            let pool = try await makeProcessPool("-" + label)
            let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "sleep 1"]))
            let proxy = try startProxy()
            let worker = try startDefaultWorker(pool: pool, proxy: proxy)
            try await waitForSubscription(worker)
            let path = label == "queue" ? "/work_pools/\(TestAPI.path(pool))/queues/default" : "/work_pools/\(TestAPI.path(pool))"
            _ = try await api.send("PATCH", path, .object(["is_paused": .bool(true)]))
            let run = try await api.createFlowRun(deployment: deployment)
            track(run)
            cases.append(Case(label: label, path: path, proxy: proxy, run: run))
        }
        for c in cases {
            // Late (15 s after its time): its event rings a poll, which finds nothing while paused.
            let late = try await E2E.eventually(timeout: 60, "run \(c.run) to be marked Late") { () -> Date? in
                try checkWorkersAlive()
                let run = try await api.readFlowRun(c.run)
                guard run["state_name"]?.asString == "Late" else { return nil }
                return run["state"]?["timestamp"]?.asString.flatMap(Timestamp.parse)
            }
            _ = try await E2E.eventually(timeout: 35, interval: 0.05, "a poll after run \(c.run) became Late") {
                c.proxy.requestTimes.last.flatMap { $0 > late ? true : nil }
            }
        }
        var resumed: [String: Date] = [:]
        for c in cases {
            let held = try await api.readFlowRun(c.run)
            XCTAssertEqual(held.stateType, "SCHEDULED", "run \(c.run) is held while its \(c.label) is paused: \(held.stateSummary)")
            let lastPoll = c.proxy.requestTimes.last  // before the resume's own event rings one
            _ = try await api.send("PATCH", c.path, .object(["is_paused": .bool(false)]))
            resumed[c.run] = Date()
            let sincePoll = lastPoll.map { resumed[c.run]!.timeIntervalSince($0) } ?? -1
            print(String(format: "RestingPollTests: %@ resumed %.1f s after the last poll", c.label, sincePoll))
        }
        for c in cases {
            // The run's RUNNING time (its job is spawned just after): the resumes come one after the other, so a
            // 1 s job of the first may be over before the second is resumed.
            let run = try await waitForFinalState(c.run, timeout: 45)
            XCTAssertEqual(run.stateType, "COMPLETED", "the run of the resumed \(c.label) \(c.run): \(run.stateSummary)")
            XCTAssertEqual(run["run_count"]?.asInt, 1, "the run of the resumed \(c.label) \(c.run) ran once: \(run)")
            let running = try XCTUnwrap(run["start_time"]?.asString.flatMap(Timestamp.parse), "no start_time: \(run)")
            let latency = running.timeIntervalSince(resumed[c.run]!)
            print(String(format: "RestingPollTests: %@ resumed → its Late run RUNNING in %.3f s", c.label, latency))
            XCTAssertLessThan(latency, Self.querySeconds + 2, "a due run starts within --query-seconds of its \(c.label) being resumed, as with a 10 s poll")
        }
    }
}

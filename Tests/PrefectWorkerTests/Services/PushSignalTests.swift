import Foundation
import XCTest
@testable import PrefectWorker

/// What the events stream changes in the loops: the cancellation watch rests while the socket is up, events
/// become cancellations and polls, and the doorbell that carries them.
final class PushSignalTests: XCTestCase {
    private var fake: FakePrefectAPI!

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
    }

    override func tearDown() {
        fake.stop()
        fake = nil
    }

    private func context(_ configure: (inout Settings) -> Void = { _ in }) -> WorkerContext {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("push-\(UUID().uuidString)").path
        configure(&settings)
        return WorkerContext(settings: settings, client: fake.client())
    }

    private func reserve(_ id: String, in context: WorkerContext) async throws -> FlowRunSupervisor {
        let supervisor = FlowRunSupervisor(context: context, runID: id)
        let json = JSON.object(["id": .string(id), "state_id": .string("s-" + id), "run_count": .int(0),
                                "state": .object(["id": .string("s-" + id), "type": "RUNNING", "name": "Running"])])
        let run = try JSONDecoder().decode(FlowRun.self, from: Data(json.encoded().utf8))
        let reserved = await context.registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        return supervisor
    }

    private static func elapsed(_ body: () async -> Void) async -> Double {
        let start = Date()
        await body()
        return Date().timeIntervalSince(start)
    }

    func testDoorbellKeepsOneRingAndOtherwiseWaitsForItsTimeout() async {
        let bell = Doorbell()
        bell.ring()
        bell.ring()
        let rung = await Self.elapsed { await bell.wait(timeout: 5) }
        XCTAssertLessThan(rung, 0.5, "a ring before the wait returns at once")
        let quiet = await Self.elapsed { await bell.wait(timeout: 0.3) }
        XCTAssertGreaterThanOrEqual(quiet, 0.25, "two rings coalesce into one")
        Task { try? await Task.sleep(seconds: 0.1); bell.ring() }
        let woken = await Self.elapsed { await bell.wait(timeout: nil) }
        XCTAssertLessThan(woken, 2)
    }

    func testARingWakesEveryWaiterAndIsNotKeptThen() async throws {
        let bell = Doorbell()
        let first = Task { await bell.wait(timeout: nil) }
        let second = Task { await bell.wait(timeout: nil) }
        try await Task.sleep(seconds: 0.2)
        bell.ring()
        let woken = await finishes(within: 2) {
            _ = await first.value
            _ = await second.value
        }
        XCTAssertTrue(woken, "one ring wakes both waiters")
        let quiet = await Self.elapsed { await bell.wait(timeout: 0.3) }
        XCTAssertGreaterThanOrEqual(quiet, 0.25, "a ring that woke a waiter is taken")
        let cancelled = Task { () -> Double in
            withUnsafeCurrentTask { $0?.cancel() }
            let start = Date()
            await bell.wait(timeout: nil)
            return Date().timeIntervalSince(start)
        }
        let cancelledWait = await cancelled.value
        XCTAssertLessThan(cancelledWait, 0.5, "a cancelled task does not wait")
    }

    func testWhileTheSocketIsUpTheCancellationWatchAsksOnlyAfterAConnect() async throws {
        let context = context { $0.cancellationPollSeconds = 0.1 }
        fake.route("POST", "/api/flow_runs/filter") { _, _, _ in .json(200, "[]") }
        _ = try await reserve("run-a", in: context)
        context.push.socketChanged(up: true)
        let watch = Task { await CancellationWatch(context: context).run() }
        try await Task.sleep(seconds: 0.6)
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/filter").count, 1, "one catch-up check after the connect, then none while the socket is up")
        context.push.socketChanged(up: false)
        try await Task.sleep(seconds: 0.6)
        XCTAssertFalse(context.push.isSocketUp)
        XCTAssertGreaterThanOrEqual(fake.requests("POST", "/api/flow_runs/filter").count, 4, "the socket down: back to polling at the fallback cadence")
        watch.cancel()
        await watch.value
    }

    func testAFailedReconnectWhileDownRingsNothing() async {
        let push = PushSignals()
        push.socketChanged(up: false)
        let quiet = await Self.elapsed { await push.checkCancellations.wait(timeout: 0.3) }
        XCTAssertGreaterThanOrEqual(quiet, 0.25, "down to down is no change: no extra cancellation check per failed reconnect")
        push.socketChanged(up: true)
        let rung = await Self.elapsed { await push.pollNow.wait(timeout: 5) }
        XCTAssertLessThan(rung, 0.5, "every connect rings the catch-up poll")
        push.socketChanged(up: false)
        let lost = await Self.elapsed { await push.checkCancellations.wait(timeout: 5) }
        XCTAssertLessThan(lost, 0.5, "a loss rings the cancellation watch")
    }

    func testEventsBecomeCancellationsAndPolls() async throws {
        let context = context { $0.workQueues = ["default"] }
        let ours = try await reserve("run-a", in: context), other = try await reserve("run-b", in: context)
        let watch = EventWatch(context: context)
        func event(_ name: String, run: String, type: String?, queue: String = "default") -> EventSubscription.Event {
            EventSubscription.Event(id: UUID().uuidString, name: "prefect.flow-run." + name, occurred: Date(), resourceID: "prefect.flow-run." + run,
                                    stateType: type, relatedNames: ["work-queue": queue, "work-pool": "pool"])
        }
        await watch.handle(event("Cancelling", run: "run-a", type: "CANCELLING"))
        let cancelledA = await ours.cancelRequested, cancelledB = await other.cancelRequested
        XCTAssertTrue(cancelledA)
        XCTAssertFalse(cancelledB)

        await watch.handle(event("Scheduled", run: "run-x", type: "SCHEDULED", queue: "elsewhere"))
        let ignored = await Self.elapsed { await context.push.pollNow.wait(timeout: 0.3) }
        XCTAssertGreaterThanOrEqual(ignored, 0.25, "a run of a queue this worker does not serve is not polled for")
        await watch.handle(event("AwaitingRetry", run: "run-x", type: nil))
        let polled = await Self.elapsed { await context.push.pollNow.wait(timeout: 5) }
        XCTAssertLessThan(polled, 0.5, "a run becoming due rings for a poll (the type taken from the name when absent)")
    }

    func testAChangeOfThePoolOrADeploymentOfItRingsForAPollAndIsRemembered() async throws {
        let context = context { $0.workQueues = ["default"] }
        let watch = EventWatch(context: context)
        func event(_ name: String, queue: String?) -> EventSubscription.Event {
            EventSubscription.Event(id: UUID().uuidString, name: name, occurred: Date(), resourceID: "prefect.deployment.d-1",
                                    stateType: nil, relatedNames: queue.map { ["work-queue": $0, "work-pool": "pool"] } ?? ["work-pool": "pool"])
        }
        XCTAssertTrue(EventWatch.eventNames.contains("prefect.deployment.created"), "subscribed to")
        await watch.handle(event("prefect.deployment.updated", queue: "elsewhere"))
        let ignored = await Self.elapsed { await context.push.pollNow.wait(timeout: 0.3) }
        XCTAssertGreaterThanOrEqual(ignored, 0.25, "a deployment of a queue this worker does not serve changes nothing")
        XCTAssertNil(context.push.lastPoolChange)
        for name in EventWatch.poolChangeNames {
            context.push.poolChanged(at: .distantPast)
            _ = await Self.elapsed { await context.push.pollNow.wait(timeout: 0) }
            await watch.handle(event(name, queue: "default"))
            let polled = await Self.elapsed { await context.push.pollNow.wait(timeout: 5) }
            XCTAssertLessThan(polled, 0.5, "\(name) rings for a poll")
            XCTAssertEqual(context.push.lastPoolChange?.timeIntervalSinceNow ?? -99, 0, accuracy: 2, "\(name) is remembered for the cadence")
        }
    }

    func testAPoolOrQueueBecomingReadyIsAChangeOnlyWhenItWasPaused() async throws {
        let context = context()
        let watch = EventWatch(context: context)
        func event(_ name: String, _ resource: String) -> EventSubscription.Event {
            EventSubscription.Event(id: UUID().uuidString, name: name, occurred: Date(), resourceID: resource, stateType: nil,
                                    relatedNames: ["work-pool": "pool"])
        }
        // A worker's first heartbeat and first poll make the pool and its queue ready: no change.
        await watch.handle(event("prefect.work-pool.ready", "prefect.work-pool.p-1"))
        await watch.handle(event("prefect.work-queue.ready", "prefect.work-queue.q-1"))
        let quiet = await Self.elapsed { await context.push.pollNow.wait(timeout: 0.3) }
        XCTAssertGreaterThanOrEqual(quiet, 0.25, "ready without a pause before: no poll")
        XCTAssertNil(context.push.lastPoolChange, "and no 10 s polls for a while")

        for resource in ["prefect.work-queue.q-1", "prefect.work-pool.p-1"] {
            let kind = resource.contains("queue") ? "work-queue" : "work-pool"
            await watch.handle(event("prefect.\(kind).paused", resource))
            await watch.handle(event("prefect.\(kind).not-ready", resource))
            let resumed = await Self.elapsed { await context.push.pollNow.wait(timeout: 5) }
            XCTAssertLessThan(resumed, 0.5, "\(resource) resumed: the runs it held are polled for")
            XCTAssertNotNil(context.push.lastPoolChange)
        }
        await watch.handle(event("prefect.work-pool.ready", "prefect.work-pool.p-1"))
        let again = await Self.elapsed { await context.push.pollNow.wait(timeout: 0.3) }
        XCTAssertGreaterThanOrEqual(again, 0.25, "once resumed, the next ready is no resume")
    }

    func testALossRingsThePollToo() async {
        let push = PushSignals()
        push.socketChanged(.up)
        await push.pollNow.wait(timeout: 1)
        push.socketChanged(.refused)
        let rung = await Self.elapsed { await push.pollNow.wait(timeout: 5) }
        XCTAssertLessThan(rung, 0.5, "a resting poll goes back to --query-seconds at once")
    }

    func testEventMessagesParseAsTheServerSendsThem() throws {
        let text = #"""
        {"type":"event","event":{"id":"e-1","occurred":"2026-12-01T22:00:00.123456Z","event":"prefect.flow-run.Cancelling",
         "resource":{"prefect.resource.id":"prefect.flow-run.1234","prefect.state-type":"CANCELLING"},
         "related":[{"prefect.resource.id":"prefect.work-pool.p1","prefect.resource.role":"work-pool","prefect.resource.name":"pool"},
                    {"prefect.resource.id":"prefect.work-queue.q1","prefect.resource.role":"work-queue","prefect.resource.name":"default"}],
         "payload":{},"received":"2026-12-01T22:00:00.2Z"}}
        """#
        let event = try XCTUnwrap(EventSubscription.Event.parse(text))
        XCTAssertEqual(event.flowRunID, "1234")
        XCTAssertEqual(event.stateType, "CANCELLING")
        XCTAssertEqual(event.relatedNames["work-queue"], "default")
        XCTAssertNotNil(event.occurred)
        XCTAssertNil(EventSubscription.Event.parse(#"{"type":"auth_success"}"#))
        let filter = EventSubscription.filter(names: ["prefect.flow-run.Cancelling"], anyResource: ["prefect.work-pool.p1"], since: Date())
        XCTAssertEqual(filter["filter"]?["any_resource"]?["id"], .array(["prefect.work-pool.p1"]))
        XCTAssertEqual(filter["type"], .string("filter"))
    }

    func testMetricsShowTheSocket() {
        let metrics = Metrics()
        metrics.eventSocket(.up)
        metrics.eventReceived("prefect.flow-run.Cancelling")
        metrics.eventSocketReconnecting()
        let text = metrics.render(lastHeartbeat: nil, lastPoll: nil)
        XCTAssertTrue(text.contains("prefect_worker_event_socket_up 1\n"), text)
        XCTAssertTrue(text.contains("prefect_worker_events_received_total{event=\"prefect.flow-run.Cancelling\"} 1\n"), text)
        XCTAssertTrue(text.contains("prefect_worker_event_socket_reconnects_total 1\n"), text)
    }

    /// `/metrics` tells refused (a proxy that may never pass WebSockets) from lost: one series per state, the
    /// current one 1; none before the first attempt. The up gauge stays as it was.
    func testMetricsShowTheSocketsState() {
        let metrics = Metrics()
        func series() -> [String] {
            metrics.render(lastHeartbeat: nil, lastPoll: nil).split(separator: "\n").map(String.init)
                .filter { $0.hasPrefix("prefect_worker_event_socket_state") || $0.hasPrefix("prefect_worker_event_socket_up") }
        }
        XCTAssertEqual(series(), ["prefect_worker_event_socket_up 0", "prefect_worker_event_socket_state{state=\"lost\"} 0",
                                  "prefect_worker_event_socket_state{state=\"refused\"} 0", "prefect_worker_event_socket_state{state=\"up\"} 0"])
        metrics.eventSocket(.refused)
        XCTAssertEqual(series(), ["prefect_worker_event_socket_up 0", "prefect_worker_event_socket_state{state=\"lost\"} 0",
                                  "prefect_worker_event_socket_state{state=\"refused\"} 1", "prefect_worker_event_socket_state{state=\"up\"} 0"])
        metrics.eventSocket(.lost)
        XCTAssertEqual(series(), ["prefect_worker_event_socket_up 0", "prefect_worker_event_socket_state{state=\"lost\"} 1",
                                  "prefect_worker_event_socket_state{state=\"refused\"} 0", "prefect_worker_event_socket_state{state=\"up\"} 0"])
        metrics.eventSocket(.up)
        XCTAssertEqual(series(), ["prefect_worker_event_socket_up 1", "prefect_worker_event_socket_state{state=\"lost\"} 0",
                                  "prefect_worker_event_socket_state{state=\"refused\"} 0", "prefect_worker_event_socket_state{state=\"up\"} 1"])
        XCTAssertTrue(metrics.render(lastHeartbeat: nil, lastPoll: nil).contains("# TYPE prefect_worker_event_socket_state gauge\n"))
    }
}

extension PushSignalTests {
    /// The catch-up after a reconnect is what finds a cancellation made before the subscription (the stream
    /// replays only what the server has stored by then); right after a server restart it may get a 503. It is
    /// asked again soon, not left until the socket next drops.
    func testAFailedCatchUpCheckIsTriedAgainWhileTheSocketIsUp() async throws {
        let context = context { $0.cancellationPollSeconds = 600 }
        fake.route("POST", "/api/flow_runs/filter") { _, _, _ in .json(200, "[]") }
        fake.inject([.status(503, #"{"exception_message":"Service Unavailable"}"#)], method: "POST", path: "/api/flow_runs/filter")
        _ = try await reserve("run-a", in: context)
        context.push.socketChanged(up: true)
        let watch = Task { await CancellationWatch(context: context).run() }
        defer { watch.cancel() }
        let deadline = Date().addingTimeInterval(5)
        while fake.requests("POST", "/api/flow_runs/filter").count < 2, Date() < deadline { try await Task.sleep(seconds: 0.05) }
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/filter").count, 2, "the failed catch-up is asked again")
        try await Task.sleep(seconds: 0.5)
        XCTAssertEqual(fake.requests("POST", "/api/flow_runs/filter").count, 2, "then, caught up, the watch rests while the socket is up")
    }

    /// A check that failed says so, once and quietly: INFO when the catch-up after a (re)connect failed (push alone
    /// cannot find a cancellation made while the socket was down), DEBUG for its retries and for the polls while
    /// the socket is down; a check that went through says nothing.
    func testAFailedCheckIsLoggedWithWhenItIsAskedAgain() async throws {
        let context = context()
        fake.route("POST", "/api/flow_runs/filter") { _, _, _ in .json(200, "[]") }
        fake.inject([.status(503, "{}"), .status(503, "{}"), .status(503, "{}"), .status(503, "{}")], method: "POST", path: "/api/flow_runs/filter")
        _ = try await reserve("run-a", in: context)
        Log.configure(level: .debug, format: .text)
        defer { Log.configure(level: .info, format: .text) }
        func asked() -> Int { fake.requests("POST", "/api/flow_runs/filter").count }
        let output = try await capturingStderr {
            context.push.socketChanged(up: true)
            let watch = Task { await CancellationWatch(context: context).run() }
            defer { watch.cancel() }
            let deadline = Date().addingTimeInterval(8)
            while asked() < 2, Date() < deadline { try await Task.sleep(seconds: 0.05) }  // the catch-up and its retry 2 s later fail
            context.push.socketChanged(.refused)  // then polled every 0.5 s: two more fail, then they pass
            while asked() < 6, Date() < deadline { try await Task.sleep(seconds: 0.05) }
            try await Task.sleep(seconds: 0.2)
            watch.cancel()
            await watch.value
        }
        let lines = output.split(separator: "\n").map(String.init).filter { $0.contains("for cancellation") }
        XCTAssertEqual(lines.count, 4, "one line per failed check, none for the ones that went through: \(output)")
        XCTAssertTrue(lines.first?.contains("INFO could not check 1 run(s) in flight for cancellation (") == true, "\(lines)")
        XCTAssertTrue(lines.first?.hasSuffix("asking again in 2 s") == true, "\(lines)")
        XCTAssertTrue(lines.dropFirst().allSatisfy { $0.contains(" DEBUG could not check 1 run(s)") }, "\(lines)")
        XCTAssertTrue(lines.last?.hasSuffix("asking again in 0.5 s") == true, "\(lines)")
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// The real server restarted (stopped, then started again on the same port with the same database) while runs
/// are in flight: the worker reconnects its events stream, catches up on what happened around the restart, and
/// misses nothing. The test runs a server of its own, since restarting the shared one would upset other tests.
final class ServerRestartTests: RunControlTestCase, @unchecked Sendable {
    private var server: OwnPrefectServer?

    override func tearDownWithError() throws {
        // The workers and jobs go first (super), the server after them.
        defer {
            server?.remove()
            server = nil
        }
        try super.tearDownWithError()
    }

    /// A number from the worker's /metrics, nil if the line is not there.
    private func metric(_ name: String, port: UInt16) async -> Double? {
        let reply = await Task.detached { RawHTTP.get(port: port, "/metrics", timeout: 5) }.value
        let line = reply?.body.split(separator: "\n").first { $0.hasPrefix(name + " ") }
        return line.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    func testAfterAServerRestartTheWorkerReconnectsCatchesUpAndMissesNothing() async throws {
        let server = try OwnPrefectServer(venv: env.venv)
        self.server = server
        let firstStart = try await server.start()
        api = TestAPI(baseURL: server.apiURL, fixtures: env.fixtures)

        // The jobs wait for a file, so they are in flight for as long as the test needs, however slow the machine.
        let release = try temporaryDirectory("release") + "/release"
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'until [ -e \(release) ]; do sleep 0.5; done'"),
        ]))
        // Prefect's default 10 s poll; the cancellation poll all but off, so a cancellation is found by push or by
        // the catch-up after reconnecting, not by the fallback poll.
        let querySeconds = 10.0
        let metricsPort = E2E.closedLocalPort()
        let worker = try startWorker(pool: pool, arguments: [
            "--query-seconds", String(format: "%g", querySeconds), "--cancellation-poll-seconds", "600",
            "--kill-grace-seconds", "2", "--with-healthcheck", "--state-dir", try stateDirectory(),
        ], environment: ["PREFECT_WORKER_WEBSERVER_PORT": String(metricsPort)], apiURL: server.apiURL.absoluteString)
        _ = try await E2E.eventually(timeout: 30, "the worker to subscribe to the events stream: \(worker.log.suffix(1500))") {
            try checkWorkersAlive()
            return worker.log.contains("subscribed to work pool") ? true : nil
        }
        var inFlight: [String] = []
        for _ in 0..<3 { inFlight.append(try await api.createFlowRun(deployment: deployment)) }
        track(inFlight)
        for id in inFlight { _ = try await waitForJobPID(id, timeout: 45) }
        let (cancelled, kept) = (inFlight[0], Array(inFlight[1...]))

        // The restart.
        let stopped = Date()
        try await server.stop()
        _ = try await E2E.eventually(timeout: 30, "the worker to notice the lost events stream: \(worker.log.suffix(1500))") {
            try checkWorkersAlive()
            return worker.log.contains("events stream lost") ? true : nil
        }
        let secondStart = try await server.start()
        let back = Date()

        // At once, while the events stream is most likely still waiting out its reconnect backoff.
        let reconnectedBeforeCancel = worker.log.contains("events stream reconnected")
        let cancelling = try await setState(cancelled, "CANCELLING")
        XCTAssertEqual(cancelling["status"]?.asString, "ACCEPT", "\(cancelling)")
        let created = Date()
        let new = try await api.createFlowRun(deployment: deployment)
        track(new)

        // The new run starts within a poll.
        _ = try await E2E.eventually(timeout: 60, interval: 0.1, "the job of the run created after the restart, \(new), to start") {
            try checkWorkersAlive()
            return ProcScan.processes(ofRun: new).isEmpty ? nil : true
        }
        let startedAfter = Date().timeIntervalSince(created)
        XCTAssertLessThan(startedAfter, querySeconds + 10, "a run created after the restart starts within a poll (and some slack)")

        // The cancellation made after the restart is caught up: the run ends CANCELLED, its job is gone.
        let cancelledRun = try await waitForFinalState(cancelled, timeout: 60)
        let cancelledAfter = Date().timeIntervalSince(created)
        XCTAssertEqual(cancelledRun.stateType, "CANCELLED", cancelledRun.stateSummary)
        let gone = await waitForNoJobProcesses(cancelled, timeout: 15)
        XCTAssertTrue(gone, "the cancelled run's job is stopped: \(ProcScan.describe(ProcScan.processes(ofRun: cancelled)))")

        // The others kept running through the restart; released now, they complete.
        for id in kept {
            let run = try await api.readFlowRun(id)
            XCTAssertEqual(run.stateType, "RUNNING", "\(id) keeps running through the restart: \(run.stateSummary)")
            XCTAssertFalse(ProcScan.processes(ofRun: id).isEmpty, "the job of \(id) is still there")
        }
        _ = try await E2E.eventually(timeout: 30, "the events stream to be back: \(worker.log.suffix(1500))") {
            try checkWorkersAlive()
            return worker.log.contains("events stream reconnected") ? true : nil
        }
        FileManager.default.createFile(atPath: release, contents: nil)
        let finished = try await waitForFinalStates(kept + [new], timeout: 60)
        for id in kept + [new] {
            XCTAssertEqual(finished[id]?.stateType, "COMPLETED", "\(id): \(finished[id]?.stateSummary ?? "not found")")
        }

        // Nothing crashed, nothing ran twice, no run was created twice.
        for id in inFlight + [new] {
            let run = try await api.readFlowRun(id)
            XCTAssertEqual(run["run_count"]?.asInt, 1, "\(id) ran once: \(run.stateSummary)")
            let history = try await stateHistory(id)
            XCTAssertFalse(history.contains("CRASHED"), "\(id) never crashed: \(history)")
        }
        let runs = try await api.send("POST", "/flow_runs/filter", .object([
            "deployments": .object(["id": .object(["any_": .array([.string(deployment)])])]),
        ]))
        XCTAssertEqual(runs.asArray?.count, 4, "no run of the deployment was duplicated")

        // The worker's events of every run reached the server, those sent before the restart and after it.
        let stored = try await waitForStoredEvents(about: inFlight + [new], since: created.addingTimeInterval(-600))
        for id in inFlight + [new] {
            XCTAssertEqual(Set(stored[id] ?? []), ["prefect.worker.submitted-flow-run", "prefect.worker.executed-flow-run"], "\(id)")
        }

        // Said once in the log, and counted in /metrics.
        // (A busy server may drop the stream again later, 1011: only the restart's outage is counted here.)
        let untilBack = worker.log.components(separatedBy: "events stream reconnected").first ?? ""
        XCTAssertEqual(untilBack.components(separatedBy: "events stream lost").count - 1, 1, "the loss is logged once, not per failed reconnect")
        let reconnects = await metric("prefect_worker_event_socket_reconnects_total", port: metricsPort)
        XCTAssertGreaterThanOrEqual(reconnects ?? 0, 1, "/metrics counts the reconnects")
        _ = try await E2E.eventually(timeout: 30, "/metrics to show the events socket up") {
            await metric("prefect_worker_event_socket_up", port: metricsPort) == 1 ? true : nil
        }

        print(String(format: "ServerRestartTests: server started in %.1f s, restarted in %.1f s (down %.1f s); cancelled %@ the stream was back, CANCELLED %.1f s after; the new run started %.1f s after it was created; %.0f reconnect attempt(s)",
                     firstStart, secondStart, back.timeIntervalSince(stopped),
                     reconnectedBeforeCancel ? "after" : "before", cancelledAfter, startedAfter, reconnects ?? -1))
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Hand-back at shutdown, finished by a second worker. It needs workers of its own (the shared ones must keep
/// serving), so it uses two fresh pools.
///
/// What each side is, and what is comparable. Prefect's process worker hands a run back only through
/// `prefect flow-run execute` as the job's command: that per-run supervisor reads
/// PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR and, on SIGTERM, tells the engine `reschedule` over the control
/// session and proposes AwaitingRetry. Its worker has no hand-back of its own: stopped with SIGTERM to its process
/// group (Ctrl-C), the supervisor dies with it (its output pipe is gone) and the engine, in its own session,
/// runs on orphaned and completes the run (observed by hand against 3.8.8). So the reference side is what the
/// setting is for, an eviction: SIGTERM to the job (the run's infrastructure_pid, the supervisor), then the first
/// worker is stopped and a second one started. Its first worker polls every 30 s and starts after the run
/// exists, so it claims the run once and cannot take it back before it is stopped.
/// prefect-worker supervises its jobs itself: the default engine command, the variable in the worker's own
/// environment, SIGTERM to the worker alone (its units use KillMode=mixed), drain timeout 2 s; then a second
/// worker. Compared on both: final state, run_count, state names, the flow's and hooks' markers.
extension ParityTests {
    func testHandBackAtShutdownFinishedByASecondWorker() async throws {
        let reschedule = ["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule"]
        var deployments: [ParitySide: String] = [:]
        let pools: [ParitySide: String] = [.reference: try await makeProcessPool("-handback-ref"),
                                           .ours: try await makeProcessPool("-handback-ours")]
        deployments[.reference] = try await deploy("long_first_attempt", pool: pools[.reference]!, jobVariables: .object([
            "command": "prefect flow-run execute",
            "env": .object(reschedule.mapValues(JSON.string)),
        ])).id
        deployments[.ours] = try await deploy("long_first_attempt", pool: pools[.ours]!).id
        let state = try stateDirectory()

        let seen = try await runBoth("hand-back", deployments: deployments, timeout: 150) { side, run in
            let first = side == .reference
                ? try self.startReferenceWorker(pool: pools[side]!, name: self.uniqueName("-ref-first"),
                                                environment: ["PREFECT_WORKER_QUERY_SECONDS": "30"])
                : try self.startWorker(pool: pools[side]!, name: self.uniqueName("-ours-first"),
                                       arguments: Self.fastArguments + ["--state-dir", state, "--drain-timeout", "2"],
                                       environment: reschedule)
            // The first attempt is in its 60 s sleep: stop it.
            _ = try await E2E.eventually(timeout: 120, interval: 0.2, "the first attempt of \(run.id) (\(side.rawValue)) to start its body") { () -> Bool? in
                FileManager.default.fileExists(atPath: run.markers + "/body") ? true : nil
            }
            try await Task.sleep(nanoseconds: 1_000_000_000)
            if side == .reference {
                let job = try await self.waitForJobPID(run.id, timeout: 10)
                kill(job, SIGTERM)
                _ = try? await E2E.eventually(timeout: 30, "run \(run.id) to leave RUNNING") { () -> Bool? in
                    let type = try await self.api.readFlowRun(run.id).stateType ?? ""
                    return type == "RUNNING" ? nil : true
                }
                await Self.stopReferenceWorker(first, grace: 20)
            } else {
                await Self.stopWorker(first, grace: 45)
            }
            print("hand-back: \(side.rawValue): first worker stopped; run \(run.id): \(try await self.api.readFlowRun(run.id).stateSummary)")
            // Whatever the first worker left (AwaitingRetry, CRASHED, or a run stuck RUNNING) is what a second
            // worker finds; a stuck run gets 20 s.
            _ = try? await E2E.eventually(timeout: 20, "run \(run.id) to leave RUNNING") { () -> Bool? in
                let type = try await self.api.readFlowRun(run.id).stateType ?? ""
                return type == "RUNNING" || type == "CANCELLING" ? nil : true
            }
            _ = side == .reference
                ? try self.startReferenceWorker(pool: pools[side]!, name: self.uniqueName("-ref-second"))
                : try self.startWorker(pool: pools[side]!, name: self.uniqueName("-ours-second"),
                                       arguments: Self.fastArguments + ["--state-dir", state], environment: reschedule)
        }
        record("hand-back at shutdown, finished by a second worker", seen,
               note: "Prefect's: job command `prefect flow-run execute` with the variable in the job env, SIGTERM to that job (an eviction; Prefect's worker has no hand-back of its own); ours: engine command, the variable in the worker env, SIGTERM to the worker, drain 2 s")
    }

    /// A Prefect worker stopped by tearDown (by its process group) if the test has not stopped it.
    func startReferenceWorker(pool: String, name: String, environment: [String: String] = [:]) throws -> WorkerProcess {
        let worker = try ParityFixture.startReference(env: env, pool: pool, name: name, environment: environment)
        addTeardownBlock {
            ParityFixture.stopReference(worker, grace: 10)
            if (self.testRun?.totalFailureCount ?? 0) > 0 {
                print("----- \(worker.label) log -----\n\(worker.log.suffix(8_000))\n----- end -----")
            }
            worker.cleanUp()
        }
        return worker
    }

    /// SIGTERM to a Prefect worker's process group, then waits (without blocking a thread) up to `grace` s;
    /// SIGKILL to the group after that. The exit code, or nil when it had to be killed.
    @discardableResult
    static func stopReferenceWorker(_ worker: WorkerProcess, grace: Double) async -> Int32? {
        worker.isServing = false
        kill(-worker.pid, SIGTERM)
        if let code = await worker.waitForExit(timeout: grace) { return code }
        kill(-worker.pid, SIGKILL)
        _ = await worker.waitForExit(timeout: 5)
        return nil
    }

    /// SIGTERM to prefect-worker's pid only (systemd's KillMode=mixed); SIGKILL after `grace` s.
    @discardableResult
    static func stopWorker(_ worker: WorkerProcess, grace: Double) async -> Int32? {
        worker.isServing = false
        kill(worker.pid, SIGTERM)
        if let code = await worker.waitForExit(timeout: grace) { return code }
        kill(worker.pid, SIGKILL)
        _ = await worker.waitForExit(timeout: 5)
        return nil
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Hand-back at shutdown, finished by a second worker. It needs workers of its own (the shared ones must keep
/// serving), so it uses two fresh pools.
///
/// What each side is, and why they are comparable: Prefect's process worker hands a run back only when the job's
/// command is `prefect flow-run execute` (its per-run supervisor reads PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR
/// and, on SIGTERM, tells the engine `reschedule` over the control session and proposes AwaitingRetry). So the
/// reference deployment sets that command and that variable in the job's env, and the worker is stopped as Ctrl-C
/// or systemd's control-group stop would: SIGTERM to its process group, which holds that supervisor. prefect-worker
/// supervises its jobs itself: the default engine command, the variable in the worker's own environment,
/// SIGTERM to the worker alone (its units use KillMode=mixed) with a 2 s drain timeout. Both: a second worker on
/// the pool then gets the run. Compared: final state, run_count, state names, the flow's and hooks' markers.
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

        let startFirst: @Sendable (ParitySide) throws -> WorkerProcess = { side in
            side == .reference
                ? try self.startReferenceWorker(pool: pools[side]!, name: self.uniqueName("-ref-first"))
                : try self.startWorker(pool: pools[side]!, name: self.uniqueName("-ours-first"),
                                       arguments: Self.fastArguments + ["--state-dir", state, "--drain-timeout", "2"],
                                       environment: reschedule)
        }
        let startSecond: @Sendable (ParitySide) throws -> WorkerProcess = { side in
            side == .reference
                ? try self.startReferenceWorker(pool: pools[side]!, name: self.uniqueName("-ref-second"))
                : try self.startWorker(pool: pools[side]!, name: self.uniqueName("-ours-second"),
                                       arguments: Self.fastArguments + ["--state-dir", state], environment: reschedule)
        }
        var firsts: [ParitySide: WorkerProcess] = [:]
        for side in ParitySide.allCases { firsts[side] = try startFirst(side) }
        let first = firsts

        let seen = try await runBoth("hand-back", deployments: deployments, timeout: 150) { side, run in
            // The first attempt is in its 60 s sleep: stop the worker.
            _ = try await E2E.eventually(timeout: 120, interval: 0.2, "the first attempt of \(run.id) (\(side.rawValue)) to start its body") { () -> Bool? in
                FileManager.default.fileExists(atPath: run.markers + "/body") ? true : nil
            }
            try await Task.sleep(nanoseconds: 1_000_000_000)
            let worker = first[side]!
            let code = side == .reference
                ? await Self.stopReferenceWorker(worker, grace: 45)
                : await Self.stopWorker(worker, grace: 45)
            print("hand-back: \(side.rawValue) first worker stopped (\(code.map { "exit \($0)" } ?? "killed after 45 s")); run \(run.id): \(try await self.api.readFlowRun(run.id).stateSummary)")
            // Whatever the first worker left (AwaitingRetry, CRASHED, or a run stuck RUNNING) is what a second
            // worker finds; a final or scheduled run is settled at once, a stuck one gets 20 s.
            _ = try? await E2E.eventually(timeout: 20, "run \(run.id) to leave RUNNING") { () -> Bool? in
                let type = try await self.api.readFlowRun(run.id).stateType ?? ""
                return type == "RUNNING" || type == "CANCELLING" ? nil : true
            }
            _ = try startSecond(side)
        }
        record("hand-back at shutdown, finished by a second worker", seen,
               note: "Prefect's: command `prefect flow-run execute`, the variable in the job env, SIGTERM to the worker's process group; ours: engine command, the variable in the worker env, SIGTERM to the worker, drain 2 s")
    }

    /// A Prefect worker stopped by tearDown (by its process group) if the test has not stopped it.
    func startReferenceWorker(pool: String, name: String) throws -> WorkerProcess {
        let worker = try ParityFixture.startReference(env: env, pool: pool, name: name)
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
    static func stopReferenceWorker(_ worker: WorkerProcess, grace: Double) async -> Int32? {
        worker.isServing = false
        kill(-worker.pid, SIGTERM)
        if let code = await worker.waitForExit(timeout: grace) { return code }
        kill(-worker.pid, SIGKILL)
        _ = await worker.waitForExit(timeout: 5)
        return nil
    }

    /// SIGTERM to prefect-worker's pid only (systemd's KillMode=mixed); SIGKILL after `grace` s.
    static func stopWorker(_ worker: WorkerProcess, grace: Double) async -> Int32? {
        worker.isServing = false
        kill(worker.pid, SIGTERM)
        if let code = await worker.waitForExit(timeout: grace) { return code }
        kill(worker.pid, SIGKILL)
        _ = await worker.waitForExit(timeout: 5)
        return nil
    }
}

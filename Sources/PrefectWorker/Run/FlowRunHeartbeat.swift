import Foundation

/// `prefect.flow-run.heartbeat` events for a worker-owned run while its job runs: the engine sends them for
/// its own runs, and Prefect's zombie-run automation relies on them, so a plain command gets them from the
/// worker: one as the job starts (as the engine does), then one per interval until the job ends.
///
/// It runs as a child task of the run's task group (beside the job's watch) and ends when that task is
/// cancelled: the run races it against the job's exit (`FlowRunSupervisor.exited`).
struct FlowRunHeartbeat: Sendable {
    let events: WorkerEvents
    /// Seconds between heartbeats (`seconds(_:log:)`).
    let every: Double

    /// Beats for `run`: one at once, then one per interval until the task is cancelled.
    func beat(_ run: FlowRun, flowName: String?, pool: WorkPool?) async {
        events.flowRunHeartbeat(run: run, flowName: flowName, pool: pool)
        while true {
            do { try await Task.sleep(seconds: every) } catch { return }
            events.flowRunHeartbeat(run: run, flowName: flowName, pool: pool)
        }
    }

    /// For a job adopted after a worker restart: the run (and its flow's name) is read from the server first,
    /// so a slow or absent server holds up neither the watch nor the end. Until the run can be read it is read
    /// again every interval; then it beats as a launched job's heartbeat does, until the task is cancelled.
    func beat(adopting runID: String, client: PrefectClient, lookups: RunLookups, log: Logger) async {
        var run: FlowRun?
        while run == nil {
            do {
                run = try await client.readFlowRun(runID)
            } catch is CancellationError {
                return  // the job ended (or the worker stops) while the run was read
            } catch let error as APIError where !error.isRetryable {
                log.warning("cannot read the adopted run for its heartbeat: \(error); it gets no heartbeats from this worker")
                return
            } catch {
                if Task.isCancelled { return }
                log.warning("cannot read the adopted run for its heartbeat: \(error); trying again in \(String(format: "%g", every)) s")
                do { try await Task.sleep(seconds: every) } catch { return }
            }
        }
        guard let run else { return }
        let flowName = await lookups.flowName(run.flowID), pool = lookups.pool
        if Task.isCancelled { return }
        await beat(run, flowName: flowName, pool: pool)
    }

    /// The longest interval taken from the setting (a year): a larger one means "practically never", and the
    /// warning says what is used instead. (The sleep itself cannot overflow: `Task.sleep(seconds:)` saturates.)
    static let maximumSeconds = 86_400 * 365

    /// Seconds between heartbeats, from the job's `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` (or its legacy name
    /// `PREFECT_RUNNER_HEARTBEAT_FREQUENCY`) as the engine reads it: Prefect's default 180 when unset, at
    /// least 30 (Prefect's minimum), at most `maximumSeconds`.
    static func seconds(_ env: [String: String], log: Logger) -> Double {
        let name = env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] != nil ? "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" : "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"
        guard let raw = env[name]?.trimmingCharacters(in: .whitespaces), !raw.isEmpty else { return 180 }
        guard let seconds = Int(raw) else {
            log.warning("\(name)='\(raw)' is not a whole number of seconds; sending heartbeats every 180 s (Prefect's default)")
            return 180
        }
        if seconds < 30 {
            log.warning("\(name)=\(seconds) is below Prefect's minimum of 30; sending heartbeats every 30 s")
            return 30
        }
        if seconds > maximumSeconds {
            log.warning("\(name)=\(seconds) is more than a year; sending heartbeats every \(maximumSeconds) s")
            return Double(maximumSeconds)
        }
        return Double(seconds)
    }
}

import Foundation

/// `prefect.flow-run.heartbeat` events for a worker-owned run while its job runs: the engine sends them for
/// its own runs, and Prefect's zombie-run automation relies on them, so a plain command gets them from the
/// worker: one as the job starts (as the engine does), then one per interval until `stop`.
struct FlowRunHeartbeat: Sendable {
    private let task: Task<Void, Never>

    init(run: FlowRun, flowName: String?, pool: WorkPool?, events: WorkerEvents, every seconds: Double) {
        events.flowRunHeartbeat(run: run, flowName: flowName, pool: pool)
        task = Task { await Self.beat(run: run, flowName: flowName, pool: pool, events: events, every: seconds) }
    }

    /// For a job adopted after a worker restart: the run (and its flow's name) is read from the server first,
    /// in the heartbeat's own task, so a slow or absent server holds up neither the watch nor `stop`. Until
    /// the run can be read it is read again every interval; then it beats as a launched job's heartbeat does.
    init(adopting runID: String, context: WorkerContext, log: Logger, every seconds: Double) {
        task = Task {
            var run: FlowRun?
            while run == nil {
                do {
                    run = try await context.client.readFlowRun(runID)
                } catch is CancellationError {
                    return  // the job ended (or the worker stops) while the run was read
                } catch let error as APIError where !error.isRetryable {
                    log.warning("cannot read the adopted run for its heartbeat: \(error); it gets no heartbeats from this worker")
                    return
                } catch {
                    if Task.isCancelled { return }
                    log.warning("cannot read the adopted run for its heartbeat: \(error); trying again in \(String(format: "%g", seconds)) s")
                    do { try await Task.sleep(seconds: seconds) } catch { return }
                }
            }
            guard let run else { return }
            let flowName = await context.flowName(run.flowID), pool = context.pool
            if Task.isCancelled { return }
            context.events.flowRunHeartbeat(run: run, flowName: flowName, pool: pool)
            await Self.beat(run: run, flowName: flowName, pool: pool, events: context.events, every: seconds)
        }
    }

    /// One heartbeat per interval until cancelled.
    private static func beat(run: FlowRun, flowName: String?, pool: WorkPool?, events: WorkerEvents, every seconds: Double) async {
        while true {
            do { try await Task.sleep(seconds: seconds) } catch { return }
            events.flowRunHeartbeat(run: run, flowName: flowName, pool: pool)
        }
    }

    func stop() { task.cancel() }

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

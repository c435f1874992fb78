import Foundation

/// Where the runs' supervisors run: a child task each, in one task group, from the poll that reserved the run
/// (or the recovery that adopted its job) until its supervisor is done. `finish()` says no more runs come;
/// `run()` returns once the last one is done. It is not a stage's service: stopping loops never cancels a
/// run; runs end through their supervisors (cancel, drain, stop).
final class RunLauncher: Sendable {
    typealias Work = @Sendable () async -> Void
    private let work: AsyncStream<Work>
    private let continuation: AsyncStream<Work>.Continuation
    private let done = Latch()
    private let registry: RunRegistry

    init(context: WorkerContext) {
        registry = context.registry
        (work, continuation) = AsyncStream.makeStream(of: Work.self)
    }

    /// Runs `supervisor` for `run`, which the registry has reserved for it, and releases the slot afterwards.
    func submit(_ run: FlowRun, to supervisor: FlowRunSupervisor) {
        let registry = self.registry
        submit {
            await supervisor.run(run)
            await registry.release(run.id)
        }
    }

    /// Runs `work` beside the other runs. After `finish()` it runs at once in its own task, so it is never lost.
    func submit(_ work: @escaping Work) {
        if case .terminated = continuation.yield(work) {
            Task { await work() }
        }
    }

    /// No more runs are submitted; `run()` returns once the ones in flight are done.
    func finish() {
        continuation.finish()
    }

    /// Returns once `run()` has returned.
    func finished() async {
        await done.wait()
    }

    func run() async {
        await withDiscardingTaskGroup { group in
            for await work in self.work {
                group.addTask { await work() }
            }
        }
        done.open()
    }
}

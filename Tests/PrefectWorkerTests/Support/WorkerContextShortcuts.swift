import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker

// Shortcuts for the unit tests, which build a whole `WorkerContext` on the fake API and the fake spawner: the
// worker's code takes only what each type uses (`RunDependencies`, `RunLifecycle`, …); these build those
// parts from a context, wired as `Worker` wires them.

extension FlowRunSupervisor {
    /// A supervisor wired as `RunLifecycle` makes one: its claim is recorded in the context's registry.
    init(context: WorkerContext, runID: String) {
        let registry = context.registry
        self.init(runID: runID, dependencies: context.runDependencies) { await registry.markClaimed($0) }
    }
}

extension RunRegistry {
    /// Takes a slot for `run`, handled by `supervisor`.
    func reserve(_ run: FlowRun, for supervisor: FlowRunSupervisor) -> Bool {
        reserve(run, make: { supervisor }) != nil
    }
}

extension RunLifecycle {
    convenience init(context: WorkerContext) {
        self.init(registry: context.registry, dependencies: context.runDependencies)
    }
}

extension Recovery {
    init(context: WorkerContext, runs: RunLifecycle) {
        self.init(runs: runs, journal: context.journal, identity: context.identity, settings: context.settings,
                  client: context.client, outbox: context.outbox, secrets: context.secrets, log: context.log)
    }
}

extension PollService {
    init(context: WorkerContext, runs: RunLifecycle) {
        self.init(settings: context.settings, client: context.client, runs: runs, lookups: context.lookups, status: context.status,
                  metrics: context.metrics, push: context.push, log: context.log)
    }
}

extension PoolService {
    init(context: WorkerContext) {
        self.init(settings: context.settings, client: context.client, lookups: context.lookups, status: context.status,
                  metrics: context.metrics, push: context.push, notifier: context.notifier, log: context.log)
    }
}

extension HealthService {
    static func response(context: WorkerContext, method: String, path: String) -> HealthServer.Response {
        response(context.healthSources, method: method, path: path)
    }
}

extension CancellationWatch {
    init(context: WorkerContext) {
        self.init(settings: context.settings, client: context.client, registry: context.registry, push: context.push, log: context.log)
    }
}

extension EventWatch {
    init(context: WorkerContext) {
        self.init(settings: context.settings, client: context.client, lookups: context.lookups, registry: context.registry,
                  push: context.push, metrics: context.metrics, log: context.log)
    }
}

extension WorkerChannel {
    init(context: WorkerContext) {
        self.init(settings: context.settings, client: context.client, lookups: context.lookups, status: context.status,
                  push: context.push, log: context.log)
    }
}

extension PushSignals {
    /// Whether the events socket is subscribed now.
    var isSocketUp: Bool { socketState == .up }

    func socketChanged(up isUp: Bool) { socketChanged(isUp ? .up : .lost) }
}

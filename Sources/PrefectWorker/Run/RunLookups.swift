import Foundation
import Synchronization

/// What the worker knows that its runs read: the work pool as last read (each run freezes a copy when it is
/// submitted), the worker's id, the per-job cgroup host, and the deployments and flow names runs refer to,
/// read once and cached. The pool service, the worker channel and the start-up write it; runs only read.
final class RunLookups: Sendable {
    let client: PrefectClient
    private let poolSnapshot = Mutex<WorkPool?>(nil)
    private let workerIDValue = Mutex<String?>(nil)
    private let cgroupDetection = Mutex<CgroupHost.Detection>(.unusable(reason: "cgroups were not set up"))
    private let flowNames = Mutex<[String: String]>([:])
    private let deployments = Mutex<[String: (read: Task<Deployment?, Error>, at: Date)]>([:])
    /// How long a deployment read is reused: a burst of runs from one deployment costs one read, and an
    /// edit to its job variables applies to runs submitted after this.
    static let deploymentCacheSeconds = 10.0

    init(client: PrefectClient) {
        self.client = client
    }

    /// The work pool as last read.
    var pool: WorkPool? {
        get { poolSnapshot.withLock { $0 } }
        set { poolSnapshot.withLock { $0 = newValue } }
    }

    /// The worker's id, once Prefect Cloud has told us (a heartbeat with `return_id`); jobs get it as `PREFECT__WORKER_ID`.
    var workerID: String? {
        get { workerIDValue.withLock { $0 } }
        set { workerIDValue.withLock { $0 = newValue } }
    }

    /// Per-job cgroups: set once at start-up by `CgroupHost.setUp`.
    var cgroups: CgroupHost.Detection {
        get { cgroupDetection.withLock { $0 } }
        set { cgroupDetection.withLock { $0 = newValue } }
    }

    /// The deployment, read at most once per `deploymentCacheSeconds` (concurrent callers share one read);
    /// nil if it no longer exists.
    func deployment(_ id: String) async throws -> Deployment? {
        let now = Date()
        let client = self.client
        let read = deployments.withLock { cache -> Task<Deployment?, Error> in
            if let cached = cache[id], now.timeIntervalSince(cached.at) < Self.deploymentCacheSeconds { return cached.read }
            if cache.count > 1000 { cache = cache.filter { now.timeIntervalSince($0.value.at) < Self.deploymentCacheSeconds } }
            let read = Task { try await client.readDeployment(id) }
            cache[id] = (read, now)
            return read
        }
        do {
            return try await read.value
        } catch {
            deployments.withLock { cache in if cache[id]?.at == now { cache[id] = nil } } // do not cache failures
            throw error
        }
    }

    /// A flow's name, read once per flow (events name the flow).
    func flowName(_ id: String?) async -> String? {
        guard let id else { return nil }
        if let name = flowNames.withLock({ $0[id] }) { return name }
        guard let name = try? await client.readFlowName(id) else { return nil }
        flowNames.withLock { $0[id] = name }
        return name
    }
}

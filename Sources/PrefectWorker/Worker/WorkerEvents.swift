import Foundation

/// The events Prefect's worker emits, with the same names, resource and related-resource ids, so
/// automations written for Python workers fire for this one too (`POST /events`, batched).
struct WorkerEvents: Sendable {
    /// The Prefect release whose worker events these mirror.
    static let prefectVersion = "3.8.8"

    let settings: Settings
    let shipper: APIShipper
    /// Every event is redacted before it is shipped.
    let secrets: KnownSecrets
    /// The events WebSocket the shipper delivers through (REST when it cannot), closed at shutdown.
    var socket: EventsSocket?

    /// `prefect.worker.process.<slug of the name>`, slugged like python-slugify.
    static func slug(_ name: String) -> String {
        var out = ""
        var dash = false
        for scalar in name.lowercased().unicodeScalars {
            if scalar.isASCII, scalar.properties.isAlphabetic || ("0"..."9").contains(scalar) {
                if dash, !out.isEmpty { out += "-" }
                dash = false
                out.unicodeScalars.append(scalar)
            } else {
                dash = true
            }
        }
        return out
    }

    var resource: JSON {
        .object([
            "prefect.resource.id": .string("prefect.worker.process.\(Self.slug(settings.workerName))"),
            "prefect.resource.name": .string(settings.workerName),
            "prefect.version": .string(Self.prefectVersion),
            "prefect.worker-type": "process",
        ])
    }

    static func related(_ kind: String, id: String, name: String?, role: String? = nil) -> [String: JSON] {
        [
            "prefect.resource.id": .string("prefect.\(kind).\(id)"),
            "prefect.resource.role": .string(role ?? kind),
            "prefect.resource.name": .string(name ?? ""),
        ]
    }

    static func poolRelated(_ pool: WorkPool?) -> [JSON] {
        guard let pool else { return [] }
        return [.object(related("work-pool", id: pool.id, name: pool.name))]
    }

    /// Emits an event (about the worker, unless `resource` says otherwise) and returns its id (for `follows`).
    @discardableResult
    func emit(_ name: String, resource: JSON? = nil, related: [JSON], payload: [String: JSON] = [:],
              follows: (id: String, at: Date)? = nil) -> (id: String, at: Date) {
        let id = UUID().uuidString.lowercased()
        let now = Date()
        var body: [String: JSON] = [
            "id": .string(id), "occurred": .string(Timestamp.format(now)), "event": .string(name),
            "resource": resource ?? self.resource, "related": .array(related), "payload": .object(payload),
        ]
        // Prefect sets `follows` only when the followed event is recent.
        if let follows, now.timeIntervalSince(follows.at) < 300 { body["follows"] = .string(follows.id) }
        shipper.add(APIShipper.Record(body: secrets.redact(.object(body))))
        return (id, now)
    }

    /// `prefect.flow-run.heartbeat`, as the engine emits it: the flow run as resource; related, the flow, the
    /// deployment (without a name) and the run's tags (`FlowRunEngine._build_heartbeat_event_template`),
    /// then the work queue and work pool that Prefect's events worker adds from the run context
    /// (`related_resources_from_run_context`).
    func flowRunHeartbeat(run: FlowRun, flowName: String?, pool: WorkPool?) {
        let resource: JSON = .object([
            "prefect.resource.id": .string("prefect.flow-run.\(run.id)"),
            "prefect.resource.name": .string(run.name ?? ""),
            "prefect.version": .string(Self.prefectVersion),
        ])
        var related: [JSON] = []
        if let flowID = run.flowID { related.append(.object(Self.related("flow", id: flowID, name: flowName))) }
        if let deploymentID = run.deploymentID {
            related.append(.object(["prefect.resource.id": .string("prefect.deployment.\(deploymentID)"), "prefect.resource.role": "deployment"]))
        }
        for tag in Set(run.tags ?? []).sorted() {
            related.append(.object(["prefect.resource.id": .string("prefect.tag.\(tag)"), "prefect.resource.role": "tag"]))
        }
        if let queueID = run.workQueueID { related.append(.object(Self.related("work-queue", id: queueID, name: run.workQueueName))) }
        related += Self.poolRelated(pool)
        emit("prefect.flow-run.heartbeat", resource: resource, related: related)
    }

    func started(pool: WorkPool?) -> (id: String, at: Date) {
        emit("prefect.worker.started", related: Self.poolRelated(pool))
    }

    func stopped(pool: WorkPool?, follows: (id: String, at: Date)?) {
        emit("prefect.worker.stopped", related: Self.poolRelated(pool), follows: follows)
    }

    /// Related resources of a run, in Prefect's order: deployment, flow, flow-run, tags, work-pool.
    static func runRelated(run: FlowRun, deployment: Deployment?, flowName: String?, pool: WorkPool?,
                           pid: Int32? = nil, exitCode: Int32? = nil) -> [JSON] {
        var related: [JSON] = []
        var tags = Set(run.tags ?? [])
        if let deployment {
            related.append(.object(Self.related("deployment", id: deployment.id, name: deployment.name)))
            tags.formUnion(deployment.tags ?? [])
        }
        if let flowID = run.flowID {
            related.append(.object(Self.related("flow", id: flowID, name: flowName)))
        }
        var flowRun = Self.related("flow-run", id: run.id, name: run.name)
        if let pid { flowRun["prefect.infrastructure.identifier"] = .string(String(pid)) }
        if let exitCode { flowRun["prefect.infrastructure.status-code"] = .string(String(exitCode)) }
        related.append(.object(flowRun))
        for tag in tags.sorted() {
            related.append(.object(["prefect.resource.id": .string("prefect.tag.\(tag)"), "prefect.resource.role": "tag"]))
        }
        return related + poolRelated(pool)
    }
}

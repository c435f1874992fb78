import Foundation

/// Prefect's worker channel (`/work_pools/{pool}/workers/connect`, `prefect/workers/_worker_channel`): the
/// worker's heartbeats go over a WebSocket, and the server pushes the pool's snapshot when it changes, so the
/// REST heartbeat and pool read every heartbeat interval are not needed while it is up. `PoolService` skips
/// them then, and does them again (Prefect's REST fallback) while the channel is down.
struct WorkerChannel: Service {
    let settings: Settings
    let client: PrefectClient
    /// Where the pushed pool and the worker id go.
    let lookups: RunLookups
    let status: WorkerStatus
    let push: PushSignals
    let log: Logger
    static let version = "work_pool_worker_channel.v1"

    func run() async {
        let consumerID = UUID().uuidString.lowercased()
        await loop.run {
            let socket: WebSocket
            do {
                socket = try await self.client.webSocket(
                    path: "/work_pools/\(PrefectClient.pathComponent(settings.pool))/workers/connect", subprotocol: "prefect")
            } catch let error as WebSocketError where error.status == 404 {
                // A server without the channel (an older Prefect): REST for good, as Prefect's worker does.
                throw SocketLoop.GiveUp(message: "the server has no worker channel (\(error)); heartbeating over REST")
            }
            do {
                let interval = try await setUp(socket, consumerID: consumerID)
                return Session(channel: self, socket: socket, consumerID: consumerID, interval: interval)
            } catch {
                await socket.close()
                throw error
            }
        }
    }

    /// The reconnect loop, in the worker channel's words.
    var loop: SocketLoop {
        return SocketLoop(
            messages: SocketLoop.Messages(
                opened: { "worker channel open at \($0): heartbeats and pool updates go over it, REST only as the fallback" },
                reconnected: { String(format: "worker channel reconnected after %.0f s; heartbeats go over it again", $0) },
                name: "worker channel",
                closedByServer: "the server closed the channel",
                stillDown: "worker channel down",
                meanwhile: { _ in "heartbeating over REST meanwhile and reconnecting with backoff" },
                refused: nil),
            isReady: { self.lookups.pool != nil },
            onChange: { self.push.channelChanged(up: $0 == .up) },
            emit: { self.log.log($0, $1) },
            apiAnswers: { self.client.failingSeconds == 0 })
    }

    /// One open channel, served: heartbeats out, pool snapshots in.
    private struct Session: SocketSession {
        let channel: WorkerChannel
        let socket: WebSocket
        let consumerID: String
        let interval: Int
        var url: String { socket.url }
        func serve() async throws { try await channel.serve(socket, consumerID: consumerID, interval: interval) }
        func close() async { await socket.close() }
    }

    /// Auth, hello, ready: applies the pool snapshot and worker id the server sends; returns the heartbeat interval.
    private func setUp(_ socket: WebSocket, consumerID: String) async throws -> Int {
        let token = settings.isCloud ? settings.apiKey : settings.authString
        let timeout = Self.answerTimeout(settings)
        try await socket.authenticate(token: token, within: timeout) { "the worker channel refused our credentials (\($0))" }
        try await socket.send(text: Self.hello(consumerID: consumerID, settings: settings).encoded())
        guard let text = try await socket.nextText(within: timeout, "worker.ready.v1 from the worker channel after our hello"),
              let ready = try? JSON.decode(Data(text.utf8)),
              ready["type"]?.stringValue == "worker.ready.v1", let payload = ready["payload"],
              payload["consumer_id"]?.stringValue?.lowercased() == consumerID else {
            throw WebSocketError(url: socket.url, reason: "the worker channel did not answer our hello with worker.ready.v1")
        }
        if let id = payload["worker_id"]?.stringValue, self.lookups.workerID == nil, settings.isCloud {
            self.lookups.workerID = id
            self.client.setHeader("X-Prefect-Worker-Id", id)
        }
        try apply(snapshot: payload["initial_snapshot"], socket: socket)
        self.status.heartbeatSucceeded()  // the server recorded one with the ready frame
        guard case .int(let interval)? = payload["effective_heartbeat_interval_seconds"], interval > 0 else { return Self.interval(settings) }
        return interval
    }

    /// How long the server may take to answer the auth message, and then the hello: as long as the user lets a
    /// REST request take (`PREFECT_API_REQUEST_TIMEOUT`), since the same server answers, but at most 30 s (as
    /// for the events stream's auth answer), so a proxy that passes the upgrade and then nothing is left soon
    /// and the loop reconnects with backoff, heartbeating over REST meanwhile.
    static func answerTimeout(_ settings: Settings) -> Double { min(settings.client.requestTimeout, 30) }

    /// Heartbeats every `interval` while applying the snapshots the server pushes; returns when the channel ends.
    private func serve(_ socket: WebSocket, consumerID: String, interval: Int) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    try await Task.sleep(seconds: Double(interval))
                    try await socket.send(text: Self.heartbeat(consumerID: consumerID, settings: settings, interval: interval).encoded())
                    self.status.heartbeatSucceeded()
                }
            }
            group.addTask {
                for try await message in socket.messages {
                    guard case .text(let text) = message, let frame = try? JSON.decode(Data(text.utf8)) else { continue }
                    if frame["type"]?.stringValue == "work_pool.snapshot.v1" {
                        try apply(snapshot: frame["payload"], socket: socket)
                    }
                }
            }
            _ = try await group.next()
            group.cancelAll()
        }
    }

    /// A pushed pool replaces the worker's copy, as a REST read would; one it cannot use closes the channel and
    /// leaves the pool to `PoolService` (which creates, repairs or refuses it).
    private func apply(snapshot: JSON?, socket: WebSocket) throws {
        guard let object = snapshot?["work_pool"],
              let pool = try? JSONTreeDecoder.decode(WorkPool.self, from: Data(object.encoded().utf8)),
              pool.type == "process", !pool.hasEmptyTemplate else {
            throw WebSocketError(url: socket.url, reason: "the worker channel sent a pool snapshot this worker cannot use; reading the pool over REST")
        }
        self.lookups.pool = pool
    }

    static func interval(_ settings: Settings) -> Int { max(1, Int(settings.heartbeatSeconds.rounded())) }

    static func hello(consumerID: String, settings: Settings) -> JSON {
        frame("worker.hello.v1", [
            "consumer_id": .string(consumerID),
            "worker_name": .string(settings.workerName),
            "worker_type": .string("process"),
            "heartbeat_interval_seconds": .int(interval(settings)),
            "supported_channel_versions": .array([.string(version)]),
            "requested_capabilities": .array(["worker_heartbeat.v1", "work_pool_snapshot.v1"]),
            "work_queue_names": .array(settings.workQueues.map(JSON.string)),
            "handled_cleanup_kinds": .array([]),
            "max_cleanup_concurrency": .int(0),
            "create_pool_if_not_found": .bool(false),
            "default_base_job_template": .object([:]),
            "worker_metadata": .null,
        ])
    }

    static func heartbeat(consumerID: String, settings: Settings, interval: Int) -> JSON {
        frame("worker.heartbeat.v1", [
            "consumer_id": .string(consumerID),
            "worker_name": .string(settings.workerName),
            "heartbeat_interval_seconds": .int(interval),
        ])
    }

    private static func frame(_ type: String, _ payload: [String: JSON]) -> JSON {
        .object(["type": .string(type), "id": .string(UUID().uuidString.lowercased()),
                 "sent_at": .string(Timestamp.format(Date())), "payload": .object(payload)])
    }
}

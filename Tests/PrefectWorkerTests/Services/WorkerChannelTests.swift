import Foundation
import XCTest
@testable import PrefectWorker

/// The worker channel's frames carry exactly the fields of Prefect's v1 schema (its models forbid extras, so a
/// missing or extra field makes the server close the channel).
final class WorkerChannelTests: XCTestCase {
    private let settings: Settings = {
        var settings = Settings(apiURL: URL(string: "http://127.0.0.1:1/api")!, pool: "pool", workerName: "worker-1")
        settings.heartbeatSeconds = 30
        settings.workQueues = ["default"]
        return settings
    }()

    func testHelloMatchesPrefectsWorkerHelloPayload() throws {
        let hello = WorkerChannel.hello(consumerID: "c-1", settings: settings)
        XCTAssertEqual(hello["type"], .string("worker.hello.v1"))
        XCTAssertNotNil(hello["id"]?.stringValue.flatMap(UUID.init(uuidString:)))
        XCTAssertNotNil(hello["sent_at"]?.stringValue.flatMap(Timestamp.parse))
        let payload = try XCTUnwrap(hello["payload"]?.objectValue)
        XCTAssertEqual(Set(payload.keys), ["consumer_id", "worker_name", "worker_type", "heartbeat_interval_seconds",
                                           "supported_channel_versions", "requested_capabilities", "work_queue_names",
                                           "handled_cleanup_kinds", "max_cleanup_concurrency", "create_pool_if_not_found",
                                           "default_base_job_template", "worker_metadata"])
        XCTAssertEqual(payload["requested_capabilities"], .array(["worker_heartbeat.v1", "work_pool_snapshot.v1"]))
        XCTAssertEqual(payload["supported_channel_versions"], .array(["work_pool_worker_channel.v1"]))
        XCTAssertEqual(payload["heartbeat_interval_seconds"], .int(30))
        XCTAssertEqual(payload["work_queue_names"], .array(["default"]))
    }

    func testHeartbeatMatchesPrefectsWorkerHeartbeatPayload() throws {
        let beat = WorkerChannel.heartbeat(consumerID: "c-1", settings: settings, interval: 15)
        XCTAssertEqual(beat["type"], .string("worker.heartbeat.v1"))
        XCTAssertEqual(beat["payload"]?.objectValue, ["consumer_id": "c-1", "worker_name": "worker-1", "heartbeat_interval_seconds": .int(15)])
    }
}

extension WorkerChannelTests {
    func testAServerWithoutTheChannelLeavesHeartbeatsToRESTForGood() async throws {
        let fake = try FakePrefectAPI()  // answers the upgrade 404, as a server without the route does
        defer { fake.stop() }
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("channel-\(UUID().uuidString)").path
        let context = WorkerContext(settings: settings, client: fake.client())
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        let channel = Task { await WorkerChannel(context: context).run() }
        let ended = Task { try await Task.sleep(seconds: 5); channel.cancel() }
        await channel.value
        ended.cancel()
        XCTAssertFalse(channel.isCancelled, "the channel gave up by itself on a 404 instead of retrying")
        XCTAssertFalse(context.push.isChannelUp)
        XCTAssertEqual(fake.requests("GET", "/api/work_pools/pool/workers/connect").count, 1)
    }
}

extension WorkerChannelTests {
    /// A proxy or server that passes the upgrade and then says nothing: the auth answer is waited for at most
    /// `answerTimeout` (the request timeout, here 1 s), then the channel reconnects with backoff instead of
    /// stalling, and REST keeps the heartbeats meanwhile.
    func testASilentServerIsLeftAfterTheAnswerTimeoutAndReconnected() async throws {
        let upgrades = Locked(0)
        let silent = try FakeWebSocketServer { peer in
            try peer.accept()
            upgrades.withLock { $0 += 1 }
            _ = try peer.expectClose()  // reads the auth message and says nothing until the client closes
        }
        defer { silent.stop() }
        var settings = Settings(apiURL: URL(string: "http://127.0.0.1:\(silent.port)/api")!, pool: "pool", workerName: "worker")
        settings.stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("channel-\(UUID().uuidString)").path
        settings.client.requestTimeout = 1
        XCTAssertEqual(WorkerChannel.answerTimeout(settings), 1)
        let context = WorkerContext(settings: settings, client: PrefectClient(baseURL: settings.apiURL, apiKey: nil, authString: nil, requestTimeout: 5))
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        let channel = Task { await WorkerChannel(context: context).run() }
        let deadline = Date().addingTimeInterval(8)
        while upgrades.withLock({ $0 }) < 2, Date() < deadline { try await Task.sleep(seconds: 0.05) }
        channel.cancel()
        await channel.value
        XCTAssertGreaterThanOrEqual(upgrades.withLock { $0 }, 2, "the silent channel was left and opened again")
        XCTAssertFalse(context.push.isChannelUp)

        settings.client.requestTimeout = 60
        XCTAssertEqual(WorkerChannel.answerTimeout(settings), 30, "at most 30 s, however long REST requests may take")
    }
}

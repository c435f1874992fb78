import Foundation
import XCTest
@testable import PrefectWorker

/// Runs whose job variables refer to blocks, from claim to final state against `FakePrefectAPI` (jobs from
/// `FakeSpawner`): the job gets the blocks' values, their secrets are redacted while the run lives, a missing
/// block crashes the run before it starts, a server away hands it back, and a changed block is read again.
final class BlockReferenceRunTests: XCTestCase {
    private var fake: FakePrefectAPI!
    private var stateDirectory: String!
    private let server = FakeAPIBox("SCHEDULED")
    /// Block documents by "slug/name", as the fake server holds them.
    private let blocks = FakeAPIBox<[String: JSON]>([:])
    private let secret = "s3cr3t-pa55word"

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        stateDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("block-run-tests-\(UUID().uuidString)").path
        let server = server
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            let id = String(path.split(separator: "/").last!)
            return .json(200, fakeFlowRunJSON(id: id, stateType: server.value))
        }
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, body in
            let state = (try? JSON.decode(body))?["state"] ?? .null
            server.value = state["type"]?.stringValue ?? server.value
            return .json(201, JSON.object(["status": "ACCEPT", "details": .object(["type": "accept_details"]), "state": state]))
        }
        fake.route("PATCH", "/api/flow_runs/*") { _, _, _ in .noContent }
        fake.route("PATCH", "/api/flow_runs/*/labels") { _, _, _ in .noContent }
        let blocks = blocks
        fake.route("GET", "/api/block_types/slug/*/block_documents/name/*") { _, path, _ in
            let parts = path.split(separator: "/")
            let key = "\(parts[3])/\(parts[6])"
            guard let document = blocks.value[key] else { return .json(404, #"{"detail":"Block document not found"}"#) }
            return .json(200, document)
        }
        fake.route("GET", "/api/block_documents/*") { _, path, _ in
            let id = String(path.split(separator: "/").last!)
            guard let document = blocks.value.values.first(where: { $0["id"]?.stringValue == id }) else {
                return .json(404, #"{"detail":"Block document not found"}"#)
            }
            return .json(200, document)
        }
        setBlock("secret/db-password", id: "b-1", data: .object(["value": .string(secret)]), secretFields: ["value"])
        setBlock("json/cfg", id: "b-2", data: try JSON.decode(#"{"value": {"nested": {"key": "nested-value"}, "n": 5}}"#), secretFields: [])
    }

    override func tearDown() {
        fake.stop()
        fake = nil
        try? FileManager.default.removeItem(atPath: stateDirectory)
    }

    /// A block document as the server answers it with `include_secrets=true`.
    private func setBlock(_ key: String, id: String, data: JSON, secretFields: [String]) {
        blocks.update { $0[key] = .object([
            "id": .string(id), "name": .string(String(key.split(separator: "/")[1])), "data": data,
            "block_schema": .object(["fields": .object(["secret_fields": .array(secretFields.map(JSON.string))])]),
        ]) }
    }

    private func makeContext(spawner: FakeSpawner, maxRetries: Int = 5) async throws -> WorkerContext {
        var settings = Settings(apiURL: fake.apiURL, pool: "pool", workerName: "worker")
        settings.stateDirectory = stateDirectory
        settings.environment = ["PATH": "/usr/bin:/bin"]
        var clientSettings = ClientSettings()
        clientSettings.maxRetries = maxRetries
        clientSettings.requestTimeout = 5
        let client = PrefectClient(baseURL: fake.apiURL, apiKey: nil, authString: nil, settings: clientSettings)
        let context = WorkerContext(settings: settings, client: client, spawner: spawner)
        try context.journal.prepare()
        try await context.outbox.prepare()
        context.pool = try JSONDecoder().decode(WorkPool.self, from: Data(#"{"id": "p-1", "name": "pool", "type": "process", "base_job_template": {}}"#.utf8))
        return context
    }

    private func run(_ id: String, jobVariables: JSON) throws -> FlowRun {
        let fields: [String: JSON] = [
            "id": .string(id), "state_id": "s-1", "run_count": .int(0), "job_variables": jobVariables,
            "state": .object(["id": "s-1", "type": "SCHEDULED", "name": "Scheduled"]),
        ]
        return try JSONDecoder().decode(FlowRun.self, from: Data(JSON.object(fields).encoded().utf8))
    }

    private func supervise(_ run: FlowRun, _ context: WorkerContext) async {
        server.value = "SCHEDULED"
        let supervisor = FlowRunSupervisor(context: context, runID: run.id)
        let reserved = await context.registry.reserve(run, for: supervisor)
        XCTAssertTrue(reserved)
        let finished = await finishes(within: 30) { await supervisor.run(run) }
        XCTAssertTrue(finished, "the run should be supervised to its end")
        await context.registry.release(run.id)
    }

    private func lastProposal(_ id: String) -> JSON? { fake.requests("POST", "/api/flow_runs/\(id)/set_state").last?.json?["state"] }

    /// `DB_PASS` matches none of the redacted-variable patterns (`*_PASSWORD`, …): its value is redacted only
    /// because it comes from a block's secret field.
    private let usesBlocks: JSON = .object([
        "command": "echo {{ prefect.blocks.json.cfg.value.nested.key }} {{ prefect.blocks.secret.db-password }}",
        "env": .object(["DB_PASS": "{{ prefect.blocks.secret.db-password }}", "N": "{{ prefect.blocks.json.cfg.n }}"]),
        "stream_output": .bool(false),
    ])

    func testTheJobGetsTheBlocksValuesAndTheSecretIsRedactedWhileTheRunLives() async throws {
        let contextBox = FakeAPIBox<WorkerContext?>(nil)
        let redactedAtStart = FakeAPIBox<String?>(nil)
        let secret = secret
        let spawner = FakeSpawner { _ in
            redactedAtStart.value = contextBox.value?.secrets.redact("password=\(secret)")
            return .exitsAtOnce
        }
        let context = try await makeContext(spawner: spawner)
        contextBox.value = context
        let run = try run("run-blocks", jobVariables: usesBlocks)
        await supervise(run, context)

        XCTAssertEqual(server.value, "COMPLETED", "\(lastProposal(run.id)?.encoded() ?? "")")
        let request = try XCTUnwrap(spawner.spawned.first, "the job should have started")
        XCTAssertEqual(request.environment["DB_PASS"], secret)
        XCTAssertEqual(request.environment["N"], "5", "a whole-string number reaches env as Python's str()")
        XCTAssertEqual(Array(request.arguments.suffix(2)), ["nested-value", secret])
        XCTAssertEqual(redactedAtStart.value, "password=[REDACTED]", "the block's secret is in the redaction set while the job runs")
        XCTAssertEqual(context.secrets.redact("password=\(secret)"), "password=\(secret)", "and taken out when the run is done")
        XCTAssertEqual(context.secrets.redact("nested-value"), "nested-value")

        let reads = fake.requests("GET", "/api/block_types/slug/*/block_documents/name/*")
        XCTAssertEqual(Set(reads.map(\.path)), ["/api/block_types/slug/secret/block_documents/name/db-password",
                                                "/api/block_types/slug/json/block_documents/name/cfg"])
        XCTAssertEqual(reads.count, 2, "each block is read once for the run")
        XCTAssertTrue(reads.allSatisfy { $0.query == "include_secrets=true" }, "\(reads.map(\.query))")
    }

    func testASecretInAWorkingDirectoryThatCannotBeMadeIsRedactedFromTheCrashReport() async throws {
        let spawner = FakeSpawner { _ in .exitsAtOnce }
        let context = try await makeContext(spawner: spawner)
        let run = try run("run-bad-dir", jobVariables: .object([
            "command": "true", "working_dir": "/proc/no-such-{{ prefect.blocks.secret.db-password }}/dir",
        ]))
        await supervise(run, context)
        XCTAssertEqual(server.value, "CRASHED")
        XCTAssertTrue(spawner.spawned.isEmpty)
        let message = try XCTUnwrap(lastProposal(run.id)?["message"]?.stringValue)
        XCTAssertFalse(message.contains(secret), message)
        XCTAssertTrue(message.contains("[REDACTED]"), message)
    }

    func testARefInTheJobVariablesIsReplacedByTheBlockDocumentsData() async throws {
        let spawner = FakeSpawner()
        let context = try await makeContext(spawner: spawner)
        let run = try run("run-ref", jobVariables: .object([
            "command": "true", "stream_output": .bool(false),
            "env": .object(["$ref": .object(["block_document_id": "b-1"])]),
        ]))
        await supervise(run, context)
        XCTAssertEqual(server.value, "COMPLETED", "\(lastProposal(run.id)?.encoded() ?? "")")
        XCTAssertEqual(spawner.spawned.first?.environment["value"], secret, "env is the Secret block's data: {\"value\": …}")
        XCTAssertEqual(fake.requests("GET", "/api/block_documents/b-1").first?.query, "include_secrets=true")
    }

    func testAMissingBlockCrashesTheRunBeforeItStartsWithAMessageNamingIt() async throws {
        let spawner = FakeSpawner()
        let context = try await makeContext(spawner: spawner)
        let run = try run("run-missing", jobVariables: .object([
            "command": "true", "env": .object(["TOKEN": "{{ prefect.blocks.secret.gone }}"]),
        ]))
        await supervise(run, context)
        XCTAssertEqual(server.value, "CRASHED")
        let message = lastProposal(run.id)?["message"]?.stringValue ?? ""
        XCTAssertTrue(message.hasPrefix("Flow run could not start: block 'secret/gone' referenced by the job configuration was not found"), message)
        XCTAssertEqual(spawner.spawned.count, 0, "the job must not start")
    }

    func testTheServerAwayWhileABlockIsReadHandsTheRunBack() async throws {
        let spawner = FakeSpawner()
        let context = try await makeContext(spawner: spawner, maxRetries: 0)
        fake.inject([.unavailable()], method: "GET", path: "/api/block_types/slug/*/block_documents/name/*")
        let run = try run("run-away", jobVariables: usesBlocks)
        await supervise(run, context)
        XCTAssertEqual(server.value, "SCHEDULED", "handed back to the pool: \(lastProposal(run.id)?.encoded() ?? "")")
        XCTAssertTrue(lastProposal(run.id)?["message"]?.stringValue?.contains("could not reach the API") == true)
        XCTAssertEqual(spawner.spawned.count, 0)
    }

    func testAChangedBlockIsReadAgainForTheNextRun() async throws {
        let spawner = FakeSpawner()
        let context = try await makeContext(spawner: spawner)
        await supervise(try run("run-first", jobVariables: usesBlocks), context)
        setBlock("secret/db-password", id: "b-1", data: .object(["value": "rotated-pa55word"]), secretFields: ["value"])
        await supervise(try run("run-second", jobVariables: usesBlocks), context)
        XCTAssertEqual(spawner.spawned.map { $0.environment["DB_PASS"] }, [secret, "rotated-pa55word"])
        XCTAssertEqual(fake.requests("GET", "/api/block_types/slug/secret/block_documents/name/db-password").count, 2)
    }

    // MARK: - The client

    func testTheClientNeverQuotesABlockAnswerItCannotUse() async throws {
        let client = fake.client()
        fake.inject([.respond(.json(200, #"{"name": "db-password", "data": {"value": "\#(secret)""#))],
                    method: "GET", path: "/api/block_types/slug/*/block_documents/name/*")
        do {
            _ = try await client.readBlockDocument(slug: "secret", name: "db-password")
            XCTFail("a cut-off answer must be an error")
        } catch {
            XCTAssertFalse("\(error)".contains(secret), "\(error)")
            XCTAssertTrue("\(error)".contains("block 'secret/db-password'"), "\(error)")
        }
        fake.inject([.respond(.json(200, #"{"name": "db-password", "data": "\#(secret)"}"#))],
                    method: "GET", path: "/api/block_types/slug/*/block_documents/name/*")
        do {
            _ = try await client.readBlockDocument(slug: "secret", name: "db-password")
            XCTFail("an answer without a data object must be an error")
        } catch {
            XCTAssertTrue(error is BlockDocument.Unusable, "\(error)")
            XCTAssertFalse("\(error)".contains(secret), "\(error)")
        }
        let document = try await client.readBlockDocument(slug: "secret", name: "db-password")
        XCTAssertEqual(document, BlockDocument(data: ["value": .string(secret)], secretFields: ["value"]))
        let missing = try await client.readBlockDocument(slug: "secret", name: "nope")
        XCTAssertNil(missing)
        let missingID = try await client.readBlockDocument(id: "nope")
        XCTAssertNil(missingID)
    }
}

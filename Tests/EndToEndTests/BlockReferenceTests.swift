import Foundation
@testable import PrefectWorker
import XCTest

/// Block references in job variables and base job templates, against the real server: Prefect's own Secret
/// block type (its schema marks `value` secret) and a JSON-style block type made for the test (3.8.8 has no
/// JSON block).
final class BlockReferenceTests: E2ETestCase, @unchecked Sendable {
    let runTimeout = 30.0

    func testSecretAndJSONBlocksReachTheJobInEnvAndCommandAndTheSecretStaysOutOfTheWorkerOutput() async throws {
        let blocks = BlockFixtures(api: api)
        try await withCleanup(blocks) {
            let hex = String(UUID().uuidString.lowercased().filter(\.isHexDigit).prefix(12))
            let secret = "e2e-secret-\(hex)"
            let secretName = "e2e-db-password-\(hex)"
            _ = try await blocks.createSecret(name: secretName, value: secret)
            let jsonSlug = try await blocks.createJSONBlockType()
            _ = try await blocks.createDocument(typeSlug: jsonSlug, name: "cfg", data: try E2E.json("""
                {"value": {"nested": {"key": "nested-\(hex)"}, "n": 5}}
                """))

            let pool = try await makeProcessPool()
            let workdir = try temporaryDirectory("blocks")
            // DB_PASS matches no redacted-variable pattern: only the Secret block makes its value a secret.
            let script = #"printf "%s|%s|%s|%s|%s" "$DB_PASS" "$DB_PASSWORD" "$N" "$1" "$2" > got.txt; echo "job env $DB_PASS"; echo "job arg $2" >&2"#
            let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
                "command": .string("sh -c '\(script)' job {{ prefect.blocks.\(jsonSlug).cfg.value.nested.key }} {{ prefect.blocks.secret.\(secretName) }}"),
                "env": .object([
                    "DB_PASS": .string("{{ prefect.blocks.secret.\(secretName) }}"),
                    "DB_PASSWORD": .string("pw:{{ prefect.blocks.secret.\(secretName) }}"),
                    "N": .string("{{ prefect.blocks.\(jsonSlug).cfg.n }}"),
                ]),
                "working_dir": .string(workdir), "stream_output": .bool(true),
            ]))
            let worker = try startWorker(pool: pool)
            let id = try await api.createFlowRun(deployment: deployment)
            let run = try await waitForFinalState(id, timeout: runTimeout)
            XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
            XCTAssertEqual(E2E.readText(workdir + "/got.txt"), "\(secret)|pw:\(secret)|5|nested-\(hex)|\(secret)",
                           "DB_PASS|DB_PASSWORD|N|$1|$2 as the job got them")

            // The job printed the secret on stdout and stderr, and the worker logged the command line.
            let log = worker.log
            XCTAssertTrue(log.contains("job env [REDACTED]"), "the job's stdout line, redacted, should be in the worker output: \(log)")
            XCTAssertTrue(log.contains("job arg [REDACTED]"), "the job's stderr line, redacted, should be in the worker output: \(log)")
            XCTAssertFalse(log.contains(secret), "the Secret block's value leaked into the worker output: \(log)")
            XCTAssertTrue(log.contains("nested-\(hex)"), "a JSON block's value is configuration, not a secret: \(log)")
            XCTAssertTrue(worker.isRunning)
        }
    }

    func testARefInTheBaseJobTemplateIsReplacedByTheBlockDocumentsData() async throws {
        let blocks = BlockFixtures(api: api)
        try await withCleanup(blocks) {
            let hex = String(UUID().uuidString.lowercased().filter(\.isHexDigit).prefix(12))
            let secret = "e2e-ref-secret-\(hex)"
            let secretID = try await blocks.createSecret(name: "e2e-ref-\(hex)", value: secret)
            // The pool's env is the Secret block's whole data: {"value": "<secret>"}.
            guard case .object(var template) = TestAPI.defaultProcessTemplate,
                  case .object(var configuration)? = template["job_configuration"] else { return XCTFail("default template changed shape") }
            configuration["env"] = .object(["$ref": .object(["block_document_id": .string(secretID)])])
            template["job_configuration"] = .object(configuration)
            let pool = try await makeProcessPool(template: .object(template))
            let workdir = try temporaryDirectory("ref")
            let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
                "command": #"sh -c 'printf %s "$value" > got.txt; echo "job env $value"'"#,
                "working_dir": .string(workdir), "stream_output": .bool(true),
            ]))
            let worker = try startWorker(pool: pool)
            let id = try await api.createFlowRun(deployment: deployment)
            let run = try await waitForFinalState(id, timeout: runTimeout)
            XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary)")
            XCTAssertEqual(E2E.readText(workdir + "/got.txt"), secret)
            XCTAssertTrue(worker.log.contains("job env [REDACTED]"), worker.log)
            XCTAssertFalse(worker.log.contains(secret), "the block's secret leaked into the worker output: \(worker.log)")
        }
    }

    func testAMissingBlockCrashesTheRunBeforeItStartsAndTheWorkerKeepsServing() async throws {
        let pool = try await makeProcessPool()
        let workdir = try temporaryDirectory("missing")
        let missing = "e2e-gone-\(UUID().uuidString.prefix(8).lowercased())"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName("-missing"), jobVariables: .object([
            "command": "sh -c 'touch started.txt'", "working_dir": .string(workdir),
            "env": .object(["DB_PASSWORD": .string("{{ prefect.blocks.secret.\(missing) }}")]),
        ]))
        let good = try await api.createCommandDeployment(pool: pool, name: uniqueName("-good"), jobVariables: .object([
            "command": "true",
        ]))
        let worker = try startWorker(pool: pool)
        let id = try await api.createFlowRun(deployment: deployment)
        let run = try await waitForFinalState(id, timeout: runTimeout)
        XCTAssertEqual(run.stateType, "CRASHED", run.stateSummary)
        XCTAssertTrue(run.stateMessage.hasPrefix("Flow run could not start: block 'secret/\(missing)' referenced by the job configuration was not found"),
                      run.stateMessage)
        XCTAssertEqual(run["run_count"]?.asInt, 0, "the run never started")
        XCTAssertFalse(FileManager.default.fileExists(atPath: workdir + "/started.txt"), "the job must not start")
        let states = try await api.states(id).compactMap { $0["type"]?.asString }
        XCTAssertFalse(states.contains("RUNNING"), "\(states)")

        let after = try await waitForFinalState(try await api.createFlowRun(deployment: good), timeout: runTimeout)
        XCTAssertEqual(after.stateType, "COMPLETED", "a run after the crashed one: \(after.stateSummary)")
        XCTAssertTrue(worker.isRunning)
    }

    /// Runs `body`, then deletes the blocks it created, whether it threw or not.
    private func withCleanup(_ blocks: BlockFixtures, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            await blocks.remove()
            throw error
        }
        await blocks.remove()
    }
}

/// Blocks a test creates through the REST API, as `Block.save` would, and removes afterwards.
final class BlockFixtures: @unchecked Sendable {
    let api: TestAPI
    private var documents: [String] = []
    private var types: [String] = []

    init(api: TestAPI) { self.api = api }

    /// A document of Prefect's own Secret block type (registered by the server); returns its id.
    func createSecret(name: String, value: String) async throws -> String {
        try await createDocument(typeSlug: "secret", name: name, data: .object(["value": .string(value)]))
    }

    /// A block type like the JSON block of earlier Prefect versions (one field, `value`, not secret), under a
    /// slug unique to this test; returns the slug.
    func createJSONBlockType() async throws -> String {
        let slug = "e2e-json-" + UUID().uuidString.lowercased().prefix(8)
        let type = try await api.send("POST", "/block_types/", .object(["name": .string(slug), "slug": .string(slug)]))
        let typeID = try XCTUnwrap(type["id"]?.asString)
        types.append(typeID)
        _ = try await api.send("POST", "/block_schemas/", .object([
            "block_type_id": .string(typeID), "capabilities": .array([]),
            "fields": .object([
                "title": .string(slug), "type": "object", "properties": .object(["value": .object(["title": "Value"])]),
                "required": .array(["value"]), "block_type_slug": .string(slug), "secret_fields": .array([]),
                "block_schema_references": .object([:]),
            ]),
        ]))
        return slug
    }

    /// A block document of the type with `typeSlug` (its first schema); returns its id.
    func createDocument(typeSlug: String, name: String, data: JSON) async throws -> String {
        let type = try await api.send("GET", "/block_types/slug/\(TestAPI.path(typeSlug))")
        let typeID = try XCTUnwrap(type["id"]?.asString)
        let schemas = try await api.send("POST", "/block_schemas/filter", .object([
            "block_schemas": .object(["block_type_id": .object(["any_": .array([.string(typeID)])])]), "limit": .int(1),
        ]))
        let schemaID = try XCTUnwrap(schemas.asArray?.first?["id"]?.asString, "no schema for block type \(typeSlug)")
        let document = try await api.send("POST", "/block_documents/", .object([
            "name": .string(name), "data": data, "block_schema_id": .string(schemaID), "block_type_id": .string(typeID),
        ]))
        let id = try XCTUnwrap(document["id"]?.asString)
        documents.append(id)
        return id
    }

    /// Deletes what was created (documents first: a block type with documents cannot go).
    func remove() async {
        for id in documents { _ = try? await api.send("DELETE", "/block_documents/\(id)") }
        for id in types { _ = try? await api.send("DELETE", "/block_types/\(id)") }
        documents.removeAll()
        types.removeAll()
    }
}

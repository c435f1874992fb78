import Synchronization
import XCTest
@testable import PrefectWorker

/// `BlockReferences` against Prefect's `resolve_block_document_references`. The blocks are those a Prefect
/// 3.8.8 server returned (`include_secrets=true`) for a Secret (string and dict), a JSON-style block, a block
/// with a `SecretStr` and a `SecretDict`, and the expected values are what Prefect 3.8.8's function answered
/// for the same templates.
final class BlockReferencesTests: XCTestCase {
    static let secretID = "8318d0a7-d5d4-45a5-ba9c-5f214c06a150"

    /// Blocks by "slug/name" and by id, counting reads.
    final class Blocks: BlockDocumentSource {
        let byName: [String: BlockDocument]
        let byID: [String: BlockDocument]
        let reads = Mutex<[String]>([])

        init(byName: [String: BlockDocument], byID: [String: BlockDocument] = [:]) {
            self.byName = byName
            self.byID = byID
        }

        func readBlockDocument(slug: String, name: String) async throws -> BlockDocument? {
            reads.withLock { $0.append("\(slug)/\(name)") }
            return byName["\(slug)/\(name)"]
        }

        func readBlockDocument(id: String) async throws -> BlockDocument? {
            reads.withLock { $0.append(id) }
            return byID[id]
        }
    }

    static func document(_ data: String, secret: [String]?) -> BlockDocument {
        BlockDocument(data: try! JSON.decode(data).objectValue!, secretFields: secret)
    }

    static let secret = document(#"{"value": "s3cr3t-pa55word"}"#, secret: ["value", "value"])
    static let blocks = [
        "secret/db-password": secret,
        "secret/creds": document(#"{"value": {"user": "alice", "password": "dict-secret-xyz"}}"#, secret: ["value", "value"]),
        "json/cfg": document(#"{"value": {"nested": {"key": "nested-value"}, "list": [{"k": "lv"}, 1, 2], "n": 5}}"#, secret: []),
        "json/values": document(#"{"value": {"values": 7, "t": true, "z": null, "f": 2.5}}"#, secret: []),
        "probe-two/two": document(#"{"value": "v", "other": "o"}"#, secret: []),
        "probe-creds/creds": document(#"{"user": "bob", "password": "creds-pass-123", "extra": {"a": {"b": "deep-secret-1"}}}"#,
                                      secret: ["password", "extra.*"]),
    ]

    private func resolve(_ template: JSON, _ source: Blocks? = nil) async throws -> BlockReferences.Resolved {
        try await BlockReferences.resolve(template, from: source ?? Blocks(byName: Self.blocks, byID: [Self.secretID: Self.secret]))
    }

    private func json(_ text: String) -> JSON { try! JSON.decode(text) }

    // MARK: - What a reference stands for

    func testResolvesAsPrefectDoes() async throws {
        let cases: [(template: String, expected: String)] = [
            // A whole-string placeholder takes the value with its type; a Secret stands for its value.
            (#""{{ prefect.blocks.secret.db-password }}""#, #""s3cr3t-pa55word""#),
            (#""{{prefect.blocks.secret.db-password}}""#, #""s3cr3t-pa55word""#),
            (#""{{ prefect.blocks.secret.db-password.value }}""#, #""s3cr3t-pa55word""#),
            (#""{{ prefect.blocks.secret.creds }}""#, #"{"user": "alice", "password": "dict-secret-xyz"}"#),
            (#""{{ prefect.blocks.secret.creds.password }}""#, #""dict-secret-xyz""#),
            (#""{{ prefect.blocks.secret.creds.value.password }}""#, #""dict-secret-xyz""#),
            (#""{{ prefect.blocks.json.cfg }}""#, #"{"nested": {"key": "nested-value"}, "list": [{"k": "lv"}, 1, 2], "n": 5}"#),
            (#""{{ prefect.blocks.json.cfg.nested.key }}""#, #""nested-value""#),
            (#""{{ prefect.blocks.json.cfg.value.nested.key }}""#, #""nested-value""#),
            (#""{{ prefect.blocks.json.cfg.list[0].k }}""#, #""lv""#),
            (#""{{ prefect.blocks.json.cfg.list[1] }}""#, "1"),
            (#""{{ prefect.blocks.json.cfg.list[-1] }}""#, "2"),
            (#""{{ prefect.blocks.json.cfg.n }}""#, "5"),
            (#""{{ prefect.blocks.json.values.z }}""#, "null"),
            // "values" is a key inside `value`, not `value` itself.
            (#""{{ prefect.blocks.json.values.values }}""#, "7"),
            (#""{{ prefect.blocks.json.values.value.values }}""#, "7"),
            // A string indexes its characters.
            (#""{{ prefect.blocks.secret.db-password.0 }}""#, #""s""#),
            // Only a block holding nothing but `value` stands for it.
            (#""{{ prefect.blocks.probe-two.two }}""#, #"{"value": "v", "other": "o"}"#),
            (#""{{ prefect.blocks.probe-two.two.value }}""#, #""v""#),
            (#""{{ prefect.blocks.probe-creds.creds.extra.a }}""#, #"{"b": "deep-secret-1"}"#),
            // Inside a longer string: Python's str().
            (#""x-{{ prefect.blocks.secret.db-password }}-y""#, #""x-s3cr3t-pa55word-y""#),
            (#""n={{ prefect.blocks.json.cfg.n }}""#, #""n=5""#),
            (#""a={{ prefect.blocks.json.values.t }},{{ prefect.blocks.json.values.z }},{{ prefect.blocks.json.values.f }}""#, #""a=True,None,2.5""#),
            (#""{{ prefect.blocks.secret.db-password }}{{ prefect.blocks.secret.db-password }}""#, #""s3cr3t-pa55words3cr3t-pa55word""#),
            // Other placeholders are left for later.
            (#""{{ prefect.blocks.secret.db-password }} {{ other }}""#, #""s3cr3t-pa55word {{ other }}""#),
            (#""{{ prefect.blocks.secret.db-password }}-{{ prefect.variables.v }}""#, #""s3cr3t-pa55word-{{ prefect.variables.v }}""#),
            (#""{{ prefect.variables.v }}""#, #""{{ prefect.variables.v }}""#),
            // `$ref`: the whole object becomes the block document's data (no `value` unwrapping); other keys go.
            (#"{"$ref": {"block_document_id": "\#(Self.secretID)"}, "other": 1}"#, #"{"value": "s3cr3t-pa55word"}"#),
            (#"["a", {"$ref": {"block_document_id": "\#(Self.secretID)"}}, "{{ prefect.blocks.json.cfg.n }}"]"#,
             #"["a", {"value": "s3cr3t-pa55word"}, 5]"#),
            // A falsy id is no reference.
            (#"{"$ref": {"block_document_id": ""}, "k": "v"}"#, #"{"$ref": {"block_document_id": ""}, "k": "v"}"#),
            (#"{"$ref": {}}"#, #"{"$ref": {}}"#),
            (#"{"$ref": {"block_document_id": null}, "x": "{{ prefect.blocks.json.cfg.n }}"}"#, #"{"$ref": {"block_document_id": null}, "x": 5}"#),
            // Nested in a configuration.
            (#"{"env": {"A": "{{ prefect.blocks.secret.db-password }}", "B": 1}, "command": "run --n {{ prefect.blocks.json.cfg.n }}"}"#,
             #"{"env": {"A": "s3cr3t-pa55word", "B": 1}, "command": "run --n 5"}"#),
        ]
        for (template, expected) in cases {
            let resolved = try await resolve(json(template))
            XCTAssertEqual(resolved.configuration, json(expected), template)
        }
    }

    func testEachBlockIsReadOncePerConfigurationAndAgainForTheNext() async throws {
        let source = Blocks(byName: Self.blocks)
        let template = json(#"{"a": "{{ prefect.blocks.json.cfg.n }}", "b": ["{{ prefect.blocks.json.cfg.nested.key }}", "x{{ prefect.blocks.json.cfg.n }}"]}"#)
        _ = try await resolve(template, source)
        XCTAssertEqual(source.reads.withLock { $0 }, ["json/cfg"])
        _ = try await resolve(template, source)
        XCTAssertEqual(source.reads.withLock { $0 }, ["json/cfg", "json/cfg"], "nothing is kept from one configuration to the next")
    }

    // MARK: - Errors

    func testErrorsNameTheBlockAndTheRunCannotStart() async throws {
        let cases: [(template: String, words: [String])] = [
            (#""{{ prefect.blocks.secret.nope }}""#, ["block 'secret/nope'", "not found"]),
            (#""x-{{ prefect.blocks.secret.nope }}""#, ["block 'secret/nope'", "not found"]),
            (#"{"$ref": {"block_document_id": "00000000-0000-0000-0000-000000000000"}}"#, ["'00000000-0000-0000-0000-000000000000'", "not found"]),
            (#""{{ prefect.blocks.json.cfg.nope }}""#, ["block 'json/cfg'", "no field 'nope'"]),
            (#""{{ prefect.blocks.secret.db-password. }}""#, ["block 'secret/db-password'", "no field ''"]),
            (#""x-{{ prefect.blocks.json.cfg.nested }}""#, ["{{ prefect.blocks.json.cfg.nested }}", "an object", "cannot be put into a string"]),
            (#""x-{{ prefect.blocks.json.cfg.list }}""#, ["{{ prefect.blocks.json.cfg.list }}", "a list"]),
            (#""{{ prefect.blocks.secret }}""#, ["{{ prefect.blocks.secret }}", "not a block reference"]),
            (#"{"$ref": "x"}"#, ["'$ref'", "must be an object", "string"]),
            (#"{"$ref": {"block_document_id": 5}}"#, ["block_document_id", "integer"]),
        ]
        for (template, words) in cases {
            do {
                let resolved = try await resolve(json(template))
                XCTFail("\(template): expected an error, got \(resolved.configuration.encoded())")
            } catch let error as JobConfigurationError {
                for word in words { XCTAssertTrue(error.message.contains(word), "\(template): '\(word)' not in: \(error.message)") }
                XCTAssertFalse(error.message.contains("s3cr3t-pa55word"), error.message)
            }
        }
    }

    // MARK: - Secrets

    func testTheSecretFieldsOfEveryBlockReadAreReturnedForRedaction() async throws {
        let resolved = try await resolve(json(#"""
            {"a": "{{ prefect.blocks.secret.db-password }}", "b": "{{ prefect.blocks.probe-creds.creds.user }}",
             "c": "{{ prefect.blocks.json.cfg.nested.key }}", "d": "{{ prefect.blocks.secret.creds.user }}"}
            """#))
        // A SecretStr, a SecretDict's values, a Secret's dict (its values): all of them, used in the job or not.
        XCTAssertEqual(Set(resolved.secrets), ["s3cr3t-pa55word", "creds-pass-123", "deep-secret-1", "alice", "dict-secret-xyz"])
        // Plain fields (a JSON block, a user name) are configuration, as Prefect's UI shows them.
        XCTAssertFalse(resolved.secrets.contains("nested-value"))
        XCTAssertFalse(resolved.secrets.contains("bob"))
        let byRef = try await resolve(json(#"{"$ref": {"block_document_id": "\#(Self.secretID)"}}"#))
        XCTAssertEqual(byRef.secrets, ["s3cr3t-pa55word"])
        let none = try await resolve(json(#"{"a": "{{ x }}", "b": "plain"}"#))
        XCTAssertEqual(none.secrets, [])
    }

    func testWithoutSecretFieldsEveryValueOfTheBlockIsSecret() {
        let unknown = Self.document(#"{"token": "tok-123456", "n": 123456, "flag": true, "nested": [{"k": "deep-value"}]}"#, secret: nil)
        XCTAssertEqual(Set(unknown.secretValues), ["tok-123456", "123456", "deep-value"])
        // A secret field below a list (a list of nested models) is looked for in each item.
        let listed = Self.document(#"{"items": [{"password": "pw-one-1"}, {"password": "pw-two-2"}], "user": "u"}"#, secret: ["items.password"])
        XCTAssertEqual(Set(listed.secretValues), ["pw-one-1", "pw-two-2"])
    }

    func testAConfigurationErrorDoesNotQuoteABlocksSecret() throws {
        let rendered = RenderedJob(configuration: ["command": "sh -c 'echo s3cr3t-pa55word"], variables: [:])
        do {
            _ = try JobConfiguration(rendered, secrets: ["s3cr3t-pa55word"])
            XCTFail("an unbalanced quote must not parse")
        } catch {
            XCTAssertFalse(error.message.contains("s3cr3t-pa55word"), error.message)
            XCTAssertTrue(error.message.contains("[REDACTED]"), error.message)
        }
        let job = try JobConfiguration(RenderedJob(configuration: ["command": "true"], variables: [:]), secrets: ["s3cr3t-pa55word"])
        XCTAssertEqual(job.secrets, ["s3cr3t-pa55word"])
    }
}

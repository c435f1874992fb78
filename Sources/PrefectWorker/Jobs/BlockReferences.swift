/// Where block documents are read from: the API, or a table in tests.
protocol BlockDocumentSource: Sendable {
    /// nil when there is no such block.
    func readBlockDocument(slug: String, name: String) async throws -> BlockDocument?
    /// nil when there is no such block document.
    func readBlockDocument(id: String) async throws -> BlockDocument?
}

extension PrefectClient: BlockDocumentSource {}

/// Block references in a rendered job configuration, resolved as Prefect's `resolve_block_document_references`
/// does (after the job variables are applied, before `{{ prefect.variables.… }}`):
/// - `{{ prefect.blocks.TYPE-SLUG.NAME }}` is the block's data; a block whose data is only `value` (a Secret)
///   stands for that value. `…NAME.a.b[0]` is a field path into it (`value.…` paths work too).
/// - A string that is exactly one such placeholder takes the value with its JSON type; inside a longer string
///   the value is interpolated with Python's `str()`, and an object or list there is an error.
/// - An object with `"$ref": {"block_document_id": ID}` is replaced by that block document's whole data.
/// - A block that does not exist (or cannot be read) is an error naming it: the run cannot start. A server
///   that cannot be reached is the `APIError` itself, so the run is handed back.
/// Each block is read once per configuration and never kept longer: blocks change.
enum BlockReferences {
    struct Resolved: Sendable {
        var configuration: JSON
        /// The secret values of every block read (see `BlockDocument.secretValues`), to keep out of logs.
        var secrets: [String]
    }

    static func resolve(_ configuration: JSON, from source: some BlockDocumentSource) async throws -> Resolved {
        var resolver = Resolver(source: source)
        let resolved = try await resolver.resolve(configuration)
        return Resolved(configuration: resolved, secrets: resolver.secrets)
    }

    static let prefix = "prefect.blocks."
}

private struct Resolver<Source: BlockDocumentSource> {
    let source: Source
    var byName: [String: BlockDocument] = [:]
    var byID: [String: BlockDocument] = [:]
    var secrets: [String] = []

    mutating func resolve(_ template: JSON) async throws -> JSON {
        switch template {
        case .object(let fields):
            if let reference = fields["$ref"] {
                // Prefect calls `.get` on it: anything but an object fails there.
                guard case .object(let target) = reference else {
                    throw JobConfigurationError("'$ref' in the job configuration must be an object such as {\"block_document_id\": \"…\"}, got \(reference.typeName)")
                }
                // A falsy id (missing, null, "") is no reference: the object is kept and resolved as any other.
                if let id = target["block_document_id"], id.isTruthy {
                    guard case .string(let id) = id else {
                        throw JobConfigurationError("'$ref' in the job configuration: block_document_id must be a block document id, got \(id.typeName)")
                    }
                    return .object(try await document(id: id).data)
                }
            }
            var out: [String: JSON] = [:]
            for key in fields.keys.sorted() { out[key] = try await resolve(fields[key]!) }
            return .object(out)
        case .array(let items):
            var out: [JSON] = []
            for item in items { out.append(try await resolve(item)) }
            return .array(out)
        case .string(let text):
            return try await resolve(text)
        default:
            return template
        }
    }

    private mutating func resolve(_ text: String) async throws -> JSON {
        var found: [Templating.Placeholder] = []
        for placeholder in Templating.placeholders(in: text) where !found.contains(placeholder) { found.append(placeholder) }
        guard found.contains(where: { $0.kind == .block }) else { return .string(text) }
        if found.count == 1, found[0].fullMatch == text {
            return try await value(of: found[0])
        }
        // Other placeholders (variables) are left for later.
        var result = text
        for placeholder in found where placeholder.kind == .block {
            let value = try await value(of: placeholder)
            switch value {
            case .object, .array:
                throw JobConfigurationError("placeholder \(placeholder.fullMatch) inside the string \(JSON.string(text).encoded()) in the job configuration stands for \(value.typeName == "object" ? "an object" : "a list"), which cannot be put into a string; refer to one of its fields instead (e.g. '.value')")
            default:
                result = result.replacingOccurrences(of: placeholder.fullMatch, with: value.pythonString)
            }
        }
        return .string(result)
    }

    /// What one `{{ prefect.blocks.TYPE.NAME[.PATH] }}` stands for.
    private mutating func value(of placeholder: Templating.Placeholder) async throws -> JSON {
        // As Prefect: every "prefect.blocks." is removed, then the rest is split at the first two dots.
        let parts = placeholder.name.replacingOccurrences(of: BlockReferences.prefix, with: "")
            .split(separator: ".", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw JobConfigurationError("placeholder \(placeholder.fullMatch) in the job configuration is not a block reference: expected {{ prefect.blocks.<block-type-slug>.<block-name> }}, optionally followed by a field path")
        }
        let (slug, name) = (parts[0], parts[1])
        let path = parts.count == 3 ? parts[2] : nil
        let data = try await document(slug: slug, name: name).data

        var root = JSON.object(data)
        // A block that holds only `value` (Secret, and the like) stands for that value, unless the path names it.
        if data.count == 1, let value = data["value"] {
            let namesValue = path.map { $0 == "value" || $0.hasPrefix("value.") || $0.hasPrefix("value[") } ?? false
            if !namesValue { root = value }
        }
        guard let path else { return root }
        guard let value = Templating.lookup(path, in: root) else {
            throw JobConfigurationError("block '\(slug)/\(name)' has no field '\(path)' (placeholder \(placeholder.fullMatch) in the job configuration)")
        }
        return value
    }

    private mutating func document(slug: String, name: String) async throws -> BlockDocument {
        let key = slug + "/" + name
        if let known = byName[key] { return known }
        let source = self.source
        let document = try await Self.read("block '\(key)'") { try await source.readBlockDocument(slug: slug, name: name) }
        byName[key] = document
        remember(document)
        return document
    }

    private mutating func document(id: String) async throws -> BlockDocument {
        if let known = byID[id] { return known }
        let source = self.source
        let document = try await Self.read("block document '\(id)' (from '$ref')") { try await source.readBlockDocument(id: id) }
        byID[id] = document
        remember(document)
        return document
    }

    /// Reads a block, turning "missing" and "refused" into errors naming it; the server being away stays an
    /// `APIError` (the run is handed back, not crashed).
    private static func read(_ what: String, _ body: () async throws -> BlockDocument?) async throws -> BlockDocument {
        let document: BlockDocument?
        do {
            document = try await body()
        } catch let error as APIError where !error.isRetryable {
            throw JobConfigurationError("\(what) referenced by the job configuration could not be read: \(error)")
        } catch let error as BlockDocument.Unusable {
            throw JobConfigurationError("\(what) referenced by the job configuration could not be read: \(error)")
        }
        guard let document else {
            throw JobConfigurationError("\(what) referenced by the job configuration was not found; create it, or change the reference in the deployment's or work pool's job configuration")
        }
        return document
    }

    private mutating func remember(_ document: BlockDocument) {
        for secret in document.secretValues where !secrets.contains(secret) { secrets.append(secret) }
    }
}

extension JobConfiguration {
    /// The job, carrying the secrets of the blocks its configuration refers to. An error that quotes the
    /// configuration (a command that does not parse) has them redacted: it is logged and sent to the server.
    init(_ rendered: RenderedJob, secrets: [String], bundleExecutionStep: JSON? = nil) throws(JobConfigurationError) {
        do {
            try self.init(rendered, bundleExecutionStep: bundleExecutionStep)
        } catch {
            throw JobConfigurationError(Redactor(secrets: secrets).redact(error.message))
        }
        self.secrets = secrets
    }
}

private extension JSON {
    /// Python's truthiness.
    var isTruthy: Bool {
        switch self {
        case .null: false
        case .bool(let b): b
        case .int(let i): i != 0
        case .double(let d): d != 0
        case .string(let s): !s.isEmpty
        case .array(let items): !items.isEmpty
        case .object(let fields): !fields.isEmpty
        }
    }
}

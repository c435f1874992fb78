import Foundation

/// A block document as `GET …/block_documents/…?include_secrets=true` returns it: its data (secret fields in
/// clear), and which of its fields Prefect treats as secret.
struct BlockDocument: Sendable, Equatable {
    var data: [String: JSON]
    /// The schema's `secret_fields`: dotted paths into `data`, `*` standing for every key below (a
    /// `SecretDict`), nested blocks' fields prefixed with the field that holds them. nil when the answer did
    /// not say.
    var secretFields: [String]?

    /// The server answered with JSON that is not a block document (no `data` object).
    struct Unusable: Error, CustomStringConvertible {
        var what: String
        var description: String { "the server's answer for \(what) has no 'data' object" }
    }

    init(data: [String: JSON], secretFields: [String]?) {
        self.data = data
        self.secretFields = secretFields
    }

    /// Reads the answer without ever quoting it: it holds secrets. A missing or non-object `data` is `nil`.
    init?(response: JSON) {
        guard case .object(let data)? = response["data"] else { return nil }
        self.data = data
        if case .array(let fields)? = response["block_schema"]?["fields"]?["secret_fields"] {
            secretFields = fields.compactMap(\.stringValue)
        } else {
            secretFields = nil
        }
    }

    /// The text of every value under a secret field (every value, when the answer did not say which fields
    /// are secret): what must be kept out of logs once the block is used in a job.
    var secretValues: [String] {
        guard let secretFields else { return Self.scalarTexts(in: .object(data)) }
        var values: [String] = []
        for field in secretFields {
            // Everything below the part before a `*` is secret, as the server obfuscates it.
            let path = field.split(separator: ".", omittingEmptySubsequences: false).prefix { $0 != "*" }.map(String.init)
            for node in Self.nodes(at: path[...], in: .object(data)) { values += Self.scalarTexts(in: node) }
        }
        return values
    }

    /// The values at `path`; a list on the way is looked into item by item (a list of nested models).
    private static func nodes(at path: ArraySlice<String>, in json: JSON) -> [JSON] {
        guard let key = path.first else { return [json] }
        switch json {
        case .object(let fields): return fields[key].map { nodes(at: path.dropFirst(), in: $0) } ?? []
        case .array(let items): return items.flatMap { nodes(at: path, in: $0) }
        default: return []
        }
    }

    /// Strings and numbers below `json` as the job would get them (Python's `str()`); booleans and null are
    /// never secrets worth hiding.
    private static func scalarTexts(in json: JSON) -> [String] {
        switch json {
        case .string(let s): return s.isEmpty ? [] : [s]
        case .int, .double: return [json.pythonString]
        case .array(let items): return items.flatMap(scalarTexts)
        case .object(let fields): return fields.values.flatMap(scalarTexts)
        case .bool, .null: return []
        }
    }
}

/// Prefect's `{{ placeholder }}` semantics (`prefect/utilities/templating`), reimplemented:
/// a string that is exactly one placeholder takes the value with its JSON type; placeholders inside longer
/// strings are interpolated with Python's `str()`; a whole-string placeholder with no value removes its key
/// (or list item); `{{ $NAME }}` reads the environment; `{{ prefect.blocks.… }}` (`BlockReferences`) and then
/// `{{ prefect.variables.NAME }}` are resolved later.
enum Templating {
    enum Kind: Sendable, Equatable {
        case standard, environment, variable, block
    }

    struct Placeholder: Sendable, Hashable {
        /// The whole `{{ name }}` text.
        var fullMatch: String
        var name: String

        var kind: Kind {
            if name.hasPrefix("prefect.blocks.") { return .block }
            if name.hasPrefix("prefect.variables.") { return .variable }
            if name.hasPrefix("$") { return .environment }
            return .standard
        }
    }

    /// All placeholders in a string, as Python's `{{\s*([\w\.\-\[\]$]+)\s*}}` finds them, in order.
    static func placeholders(in text: String) -> [Placeholder] {
        let chars = Array(text)
        var found: [Placeholder] = []
        var i = 0
        while i + 1 < chars.count {
            guard chars[i] == "{", chars[i + 1] == "{" else { i += 1; continue }
            var j = i + 2
            while j < chars.count, chars[j].isWhitespace { j += 1 }
            let nameStart = j
            while j < chars.count, isNameCharacter(chars[j]) { j += 1 }
            let nameEnd = j
            while j < chars.count, chars[j].isWhitespace { j += 1 }
            if nameEnd > nameStart, j + 1 < chars.count, chars[j] == "}", chars[j + 1] == "}" {
                found.append(Placeholder(fullMatch: String(chars[i...(j + 1)]), name: String(chars[nameStart..<nameEnd])))
                i = j + 2
            } else {
                i += 1
            }
        }
        return found
    }

    private static func isNameCharacter(_ c: Character) -> Bool {
        c.isLetter || c.isNumber || c == "_" || c == "." || c == "-" || c == "[" || c == "]" || c == "$"
    }

    /// All placeholders anywhere in a JSON template.
    static func placeholders(in template: JSON) -> [Placeholder] {
        switch template {
        case .string(let s): return placeholders(in: s)
        case .array(let items): return items.flatMap { placeholders(in: $0) }
        case .object(let fields): return fields.keys.sorted().flatMap { placeholders(in: fields[$0]!) }
        default: return []
        }
    }

    /// Looks up `a.b[1].c` in nested objects and arrays, as Prefect's `get_from_dict`: a key that reads as a
    /// whole number is an index (negative counts from the end, strings index their characters) and never
    /// matches an object key.
    static func lookup(_ path: String, in values: [String: JSON]) -> JSON? {
        lookup(path, in: .object(values))
    }

    /// `lookup` from any value (a block's data may be a string or a list).
    static func lookup(_ path: String, in root: JSON) -> JSON? {
        let keys = path.replacingOccurrences(of: "[", with: ".").replacingOccurrences(of: "]", with: "")
            .split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        var current = root
        for key in keys {
            if let index = Int(key) {
                switch current {
                case .array(let items):
                    let i = index < 0 ? items.count + index : index
                    guard items.indices.contains(i) else { return nil }
                    current = items[i]
                case .string(let text):
                    let chars = Array(text)
                    let i = index < 0 ? chars.count + index : index
                    guard chars.indices.contains(i) else { return nil }
                    current = .string(String(chars[i]))
                default:
                    return nil
                }
            } else {
                guard case .object(let fields) = current, let next = fields[key] else { return nil }
                current = next
            }
        }
        return current
    }

    /// Applies `values` to `template`. Returns nil where Prefect returns `NotSet` (the caller drops the key).
    static func apply(_ template: JSON, values: [String: JSON], environment: [String: String]) -> JSON? {
        switch template {
        case .string(let text):
            let found = placeholders(in: text)
            if found.isEmpty { return template }
            if found.count == 1, found[0].fullMatch == text, found[0].kind == .standard {
                return lookup(found[0].name, in: values)
            }
            var result = text
            for placeholder in Set(found) {
                let value: String?
                switch placeholder.kind {
                case .standard: value = lookup(placeholder.name, in: values)?.pythonString
                case .environment: value = environment[String(placeholder.name.drop(while: { $0 == "$" }))]
                case .variable, .block: continue
                }
                result = result.replacingOccurrences(of: placeholder.fullMatch, with: value ?? "")
            }
            return .string(result)
        case .object(let fields):
            var out: [String: JSON] = [:]
            for (key, value) in fields {
                if let applied = apply(value, values: values, environment: environment) { out[key] = applied }
            }
            return .object(out)
        case .array(let items):
            return .array(items.compactMap { apply($0, values: values, environment: environment) })
        default:
            return template
        }
    }

    /// Replaces `{{ prefect.variables.NAME }}` with the variables' values (`nil` = the variable does not
    /// exist: a whole-string placeholder becomes "", an inline one is removed), as `resolve_variables` does.
    static func resolveVariables(_ template: JSON, _ variables: [String: JSON?]) -> JSON {
        switch template {
        case .string(let text):
            let found = placeholders(in: text).filter { $0.kind == .variable }
            if found.isEmpty { return template }
            func value(_ p: Placeholder) -> JSON? {
                variables[String(p.name.dropFirst("prefect.variables.".count))] ?? nil
            }
            if found.count == 1, found[0].fullMatch == text, placeholders(in: text).count == 1 {
                return value(found[0]) ?? .string("")
            }
            var result = text
            for placeholder in Set(found) {
                result = result.replacingOccurrences(of: placeholder.fullMatch, with: value(placeholder)?.pythonString ?? "")
            }
            return .string(result)
        case .object(let fields): return .object(fields.mapValues { resolveVariables($0, variables) })
        case .array(let items): return .array(items.map { resolveVariables($0, variables) })
        default: return template
        }
    }

    /// Names of the Prefect variables a template refers to.
    static func variableNames(in template: JSON) -> Set<String> {
        Set(placeholders(in: template).filter { $0.kind == .variable }.map { String($0.name.dropFirst("prefect.variables.".count)) })
    }
}

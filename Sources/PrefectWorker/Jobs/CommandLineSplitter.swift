/// Splits a command string into words as a POSIX shell does for quoting (and as Python's `shlex.split`,
/// which Prefect uses): single quotes are literal, double quotes allow `\"` and `\\`, a backslash outside
/// quotes escapes the next character. Nothing else is interpreted: no variables, globs or operators.
enum CommandLineSplitter {
    enum SplitError: Error, Equatable, CustomStringConvertible {
        case unbalancedQuote(Character)
        case trailingBackslash

        var description: String {
            switch self {
            case .unbalancedQuote(let q): "unbalanced quotes: no closing \(q) in command"
            case .trailingBackslash: "command ends with a backslash that escapes nothing"
            }
        }
    }

    static func split(_ command: String) throws(SplitError) -> [String] {
        enum Mode { case outside, single, double }
        var words: [String] = []
        var current = ""
        var inWord = false
        var mode = Mode.outside
        var iterator = command.makeIterator()

        while let c = iterator.next() {
            switch mode {
            case .outside:
                if c == " " || c == "\t" || c == "\n" || c == "\r" || c == "\r\n" { // shlex's whitespace, no more
                    if inWord { words.append(current); current = ""; inWord = false }
                } else if c == "'" {
                    mode = .single; inWord = true
                } else if c == "\"" {
                    mode = .double; inWord = true
                } else if c == "\\" {
                    guard let next = iterator.next() else { throw .trailingBackslash }
                    current.append(next); inWord = true
                } else {
                    current.append(c); inWord = true
                }
            case .single:
                if c == "'" { mode = .outside } else { current.append(c) }
            case .double:
                if c == "\"" {
                    mode = .outside
                } else if c == "\\" {
                    guard let next = iterator.next() else { throw .unbalancedQuote("\"") }
                    if next == "\"" || next == "\\" {
                        current.append(next)
                    } else {
                        current.append("\\")
                        current.append(next)
                    }
                } else {
                    current.append(c)
                }
            }
        }
        switch mode {
        case .single: throw .unbalancedQuote("'")
        case .double: throw .unbalancedQuote("\"")
        case .outside: break
        }
        if inWord { words.append(current) }
        return words
    }
}

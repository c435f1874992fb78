import XCTest
@testable import PrefectWorker

/// `CommandLineSplitter.split` against Python's `shlex.split` (which Prefect's `command_from_string` uses).
/// Every expected value below was produced by `shlex.split` on Python 3.11.
final class CommandLineSplitterTests: XCTestCase {
    func testMatchesPythonShlexSplit() throws {
        let table: [(String, [String])] = [
            ("", []),
            ("   ", []),
            ("a", ["a"]),
            ("a b  c", ["a", "b", "c"]),
            (" lead trail ", ["lead", "trail"]),
            ("a\tb\nc", ["a", "b", "c"]),
            ("a\rb", ["a", "b"]),
            ("'a b' c", ["a b", "c"]),
            ("\"a b\" c", ["a b", "c"]),
            ("''", [""]),
            ("\"\"", [""]),
            ("a '' b", ["a", "", "b"]),
            ("a \"\" b", ["a", "", "b"]),
            ("x''y", ["xy"]),
            ("''x", ["x"]),
            ("a\\ b", ["a b"]),
            ("a\\\\b", ["a\\b"]),
            ("\\'", ["'"]),
            ("\\\"", ["\""]),
            ("\\n", ["n"]),
            ("a\\\nb", ["a\nb"]),
            ("'a\\b'", ["a\\b"]),
            ("\"a\\b\"", ["a\\b"]),
            ("\"a\\\"b\"", ["a\"b"]),
            ("\"a\\\\b\"", ["a\\b"]),
            ("\"a\\$b\"", ["a\\$b"]),
            ("\"a\\`b\"", ["a\\`b"]),
            ("\"\\n\"", ["\\n"]),
            ("'it'\\''s'", ["it's"]),
            ("\"'\"", ["'"]),
            ("'\"'", ["\""]),
            ("\"a\nb\"", ["a\nb"]),
            ("'a\tb'", ["a\tb"]),
            ("a'b'c\"d\"e", ["abcde"]),
            ("'a'\"b\"c", ["abc"]),
            ("\"$HOME\"", ["$HOME"]),
            ("$HOME", ["$HOME"]),
            ("a*b", ["a*b"]),
            ("a|b;c&&d", ["a|b;c&&d"]),
            ("#c", ["#c"]),
            ("a #c", ["a", "#c"]),
            ("\u{fc}n\u{ef} c\u{f8}d\u{e9} \u{65e5}\u{672c}", ["\u{fc}n\u{ef}", "c\u{f8}d\u{e9}", "\u{65e5}\u{672c}"]),
            ("'\u{fc}n\u{ef}' \"\u{65e5}\u{672c}\"", ["\u{fc}n\u{ef}", "\u{65e5}\u{672c}"]),
            ("emoji 👩‍💻 'x 🎉'", ["emoji", "👩‍💻", "x 🎉"]),
            ("python -m prefect.engine", ["python", "-m", "prefect.engine"]),
            ("sh -c 'echo \"hi there\"; exit 3'", ["sh", "-c", "echo \"hi there\"; exit 3"]),
        ]
        for (input, expected) in table {
            XCTAssertEqual(try CommandLineSplitter.split(input), expected, "split(\(input.debugDescription))")
        }
    }

    /// `shlex` separates words only at its `whitespace` characters: space, tab, CR, LF. Other Unicode
    /// whitespace (no-break space, vertical tab, form feed) is part of a word.
    func testOnlyPythonWhitespaceSeparatesWords() throws {
        XCTAssertEqual(try CommandLineSplitter.split("a\u{a0}b"), ["a\u{a0}b"], "no-break space")
        XCTAssertEqual(try CommandLineSplitter.split("a\u{b}b\u{c}c"), ["a\u{b}b\u{c}c"], "vertical tab and form feed")
    }

    func testUnbalancedQuotes() {
        let table: [(String, Character)] = [
            ("'abc", "'"), ("\"abc", "\""), ("'", "'"), ("\"", "\""), ("a 'b\"c", "'"), ("a \"b'c", "\""),
            ("\"a\\\"", "\""), ("ok 'x' 'y", "'"),
        ]
        for (input, quote) in table {
            XCTAssertThrowsError(try CommandLineSplitter.split(input), input.debugDescription) { error in
                XCTAssertEqual(error as? CommandLineSplitter.SplitError, .unbalancedQuote(quote), input.debugDescription)
            }
        }
    }

    func testTrailingBackslash() {
        for input in ["a\\", "\\", "a b \\"] {
            XCTAssertThrowsError(try CommandLineSplitter.split(input), input.debugDescription) { error in
                XCTAssertEqual(error as? CommandLineSplitter.SplitError, .trailingBackslash, input.debugDescription)
            }
        }
        // An escaped backslash at the end is fine.
        XCTAssertEqual(try CommandLineSplitter.split("a\\\\"), ["a\\"])
    }

    func testErrorDescriptions() {
        XCTAssertEqual(CommandLineSplitter.SplitError.unbalancedQuote("'").description, "unbalanced quotes: no closing ' in command")
        XCTAssertEqual(CommandLineSplitter.SplitError.unbalancedQuote("\"").description, "unbalanced quotes: no closing \" in command")
        XCTAssertEqual(CommandLineSplitter.SplitError.trailingBackslash.description, "command ends with a backslash that escapes nothing")
    }
}

import XCTest
@testable import PrefectWorker

/// The TOML subset of Prefect's settings files: what it accepts, and the errors (file, line, what) for the rest.
final class TOMLSubsetTests: XCTestCase {
    private func parse(_ text: String) throws -> [String: TOMLValue] {
        try TOMLSubset.parse(text, path: "/x/profiles.toml")
    }

    private func assertError(_ text: String, line: Int, _ message: String, file: StaticString = #filePath, lineNo: UInt = #line) {
        do {
            let value = try parse(text)
            XCTFail("expected an error, got \(value)", file: file, line: lineNo)
        } catch let error as TOMLError {
            XCTAssertEqual(error.path, "/x/profiles.toml", file: file, line: lineNo)
            XCTAssertEqual(error.line, line, "\(error)", file: file, line: lineNo)
            XCTAssertEqual(error.message, message, file: file, line: lineNo)
            XCTAssertEqual(error.description, "/x/profiles.toml:\(line): \(message)", file: file, line: lineNo)
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: lineNo)
        }
    }

    func testProfilesFileAsPrefectWritesIt() throws {
        let root = try parse("""
        active = "local"

        [profiles.ephemeral]
        PREFECT_SERVER_EPHEMERAL_ENABLED = "true"

        [profiles.local]
        PREFECT_API_URL = "http://127.0.0.1:4200/api"
        PREFECT_WORKER_HEARTBEAT_SECONDS = "15"

        [profiles.cloud]
        """)
        XCTAssertEqual(root["active"], .string("local"))
        let profiles = try XCTUnwrap(root["profiles"]?.tableValue)
        XCTAssertEqual(Set(profiles.keys), ["ephemeral", "local", "cloud"])
        XCTAssertEqual(profiles["local"], .table([
            "PREFECT_API_URL": .string("http://127.0.0.1:4200/api"),
            "PREFECT_WORKER_HEARTBEAT_SECONDS": .string("15"),
        ]))
        XCTAssertEqual(profiles["cloud"], .table([:]))
    }

    func testScalarsAndTheirEnvironmentText() throws {
        let root = try parse("""
        a = 42
        b = -7
        c = 1_000_000
        d = 2.5
        e = 1e3
        f = true
        g = false
        h = 0x1F
        i = +3
        j = 'C:\\no\\escapes'
        k = "tab\\there \\"q\\" \\u00e9 \\U0001F680"
        l = ""
        m = inf
        """)
        XCTAssertEqual(root["a"], .integer(42))
        XCTAssertEqual(root["b"], .integer(-7))
        XCTAssertEqual(root["c"], .integer(1_000_000))
        XCTAssertEqual(root["d"]?.environmentText, "2.5")
        XCTAssertEqual(root["e"]?.environmentText, "1e3")
        XCTAssertEqual(root["f"], .boolean(true))
        XCTAssertEqual(root["g"]?.environmentText, "false")
        XCTAssertEqual(root["h"], .integer(31))
        XCTAssertEqual(root["i"], .integer(3))
        XCTAssertEqual(root["j"], .string(#"C:\no\escapes"#))
        XCTAssertEqual(root["k"], .string("tab\there \"q\" é 🚀"))
        XCTAssertEqual(root["l"], .string(""))
        XCTAssertEqual(root["m"]?.environmentText, "inf")
        XCTAssertEqual(root["c"]?.environmentText, "1000000")
    }

    func testCommentsQuotedAndDottedKeysAndCRLF() throws {
        let root = try parse("# a comment\r\n[profiles.\"my profile\"]  # trailing\r\n\"PREFECT_API_KEY\" = \"pnu_#notacomment\" # c\r\n  api.url = 'u' \r\n[ 'other' . x ]\r\ny=1\r\n")
        let profiles = try XCTUnwrap(root["profiles"]?.tableValue)
        let mine = try XCTUnwrap(profiles["my profile"]?.tableValue)
        XCTAssertEqual(mine["PREFECT_API_KEY"], .string("pnu_#notacomment"))
        XCTAssertEqual(mine["api"], .table(["url": .string("u")]))
        XCTAssertEqual(root["other"], .table(["x": .table(["y": .integer(1)])]))
    }

    func testUnsupportedSyntaxNamesTheLineAndWhat() {
        assertError("a = 1\nb = [1, 2]", line: 2, "arrays are not supported")
        assertError("x = { a = 1 }", line: 1, "inline tables are not supported")
        assertError("\n\n[[profiles]]", line: 3, "arrays of tables ([[...]]) are not supported")
        assertError("x = \"\"\"\nmulti\n\"\"\"", line: 1, "multi-line strings (\"\"\") are not supported")
        assertError("x = '''a'''", line: 1, "multi-line literal strings (''') are not supported")
        assertError("when = 1979-05-27T07:32:00Z", line: 1, "dates and times are not supported (quote the value to make it a string)")
    }

    func testBrokenFilesNameTheLineAndWhat() {
        assertError("PREFECT_API_URL = http://x", line: 1, "'http://x' is not a string, number or boolean (strings need quotes)")
        assertError("a = \"open", line: 1, "unterminated string (missing \")")
        assertError("a = 'open", line: 1, "unterminated string (missing ')")
        assertError("a = \"bad \\q\"", line: 1, "invalid escape '\\q' in a string")
        assertError("a = \"\\u12\"", line: 1, "invalid \\u escape in a string (4 hex digits of a Unicode scalar)")
        assertError("a 1", line: 1, "expected '=' after the key a")
        assertError("a =", line: 1, "expected a value")
        assertError("a = 1 2", line: 1, "unexpected text after the value of a: '2'")
        assertError("[profiles", line: 1, "expected ']' to close the table header")
        assertError("[x] y", line: 1, "unexpected text after the table header: 'y'")
        assertError("= 1", line: 1, "'=' cannot start a key (bare keys are A-Z a-z 0-9 _ -; quote others)")
        assertError("a = 1\na = 2", line: 2, "key a is defined twice")
        assertError("[p]\n[q]\n[p]", line: 3, "table [p] is defined twice")
        assertError("a = 1\n[a]", line: 2, "a is already a value, not a table")
        assertError("a = 1\na.b = 2", line: 2, "a is already a value, not a table")
        assertError("n = 1__0", line: 1, "'1__0' is not a string, number or boolean (strings need quotes)")
        assertError("n = 01", line: 1, "'01' is not a string, number or boolean (strings need quotes)")
    }
}

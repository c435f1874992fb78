import XCTest
@testable import PrefectWorker

/// `JSON`: decoding, stable encoding, and Python's `str()`/`repr()` spelling of decoded values
/// (expected strings produced by Python 3.11 on `json.loads` output).
final class JSONTests: XCTestCase {
    func testDecodeKeepsTypes() throws {
        let value = try JSON.decode(#"{"n": null, "t": true, "f": false, "i": -3, "d": 1.5, "s": "x", "a": [1, "b"], "o": {"k": {}}}"#)
        XCTAssertEqual(value, .object([
            "n": .null, "t": .bool(true), "f": .bool(false), "i": .int(-3), "d": .double(1.5), "s": "x",
            "a": .array([.int(1), "b"]), "o": .object(["k": .object([:])]),
        ]))
        XCTAssertEqual(try JSON.decode("0"), .int(0))
        XCTAssertEqual(try JSON.decode("1"), .int(1), "1 is a number, not true")
        XCTAssertEqual(try JSON.decode("\"true\""), "true")
        XCTAssertThrowsError(try JSON.decode("{"))
        XCTAssertThrowsError(try JSON.decode(""))
    }

    /// `json.loads("1.0")` is the float 1.0, which Prefect turns into the env string "1.0" (not "1").
    func testDecodedFloatStaysAFloat() throws {
        XCTAssertEqual(try JSON.decode("1.0"), .double(1.0))
        XCTAssertEqual(try JSON.decode("1e2"), .double(100))
        XCTAssertEqual(try JSON.decode(#"{"A": 1.0}"#)["A"]?.pythonString, "1.0")
    }

    func testEncodedIsCompactAndSorted() throws {
        let value: JSON = .object(["b": .int(1), "a": .array([.null, .bool(true), "x/y"]), "c": .double(0.5)])
        XCTAssertEqual(value.encoded(), #"{"a":[null,true,"x/y"],"b":1,"c":0.5}"#)
        XCTAssertEqual(JSON.double(.nan).encoded(), "null", "JSON has no NaN")
        XCTAssertEqual(try JSON.decode(value.encoded()), value)
    }

    func testAccessors() {
        let value: JSON = .object(["k": "v"])
        XCTAssertEqual(value["k"], "v")
        XCTAssertNil(value["missing"])
        XCTAssertNil(JSON.array([])["k"])
        XCTAssertEqual(value.objectValue, ["k": "v"])
        XCTAssertNil(JSON.string("s").objectValue)
        XCTAssertEqual(JSON.string("s").stringValue, "s")
        XCTAssertNil(JSON.int(1).stringValue)
        XCTAssertTrue(JSON.null.isNull)
        XCTAssertFalse(JSON.string("").isNull)
        XCTAssertEqual([JSON.null, .bool(true), .int(1), .double(1), .string(""), .array([]), .object([:])].map(\.typeName),
                       ["null", "boolean", "integer", "number", "string", "array", "object"])
    }

    func testPythonStr() {
        XCTAssertEqual(JSON.string("it's").pythonString, "it's", "str() of a string is the string itself")
        XCTAssertEqual(JSON.null.pythonString, "None")
        XCTAssertEqual(JSON.bool(true).pythonString, "True")
        XCTAssertEqual(JSON.bool(false).pythonString, "False")
        XCTAssertEqual(JSON.int(-12).pythonString, "-12")
        XCTAssertEqual(JSON.object(["k": .array(["a", .double(1.0), .null])]).pythonString, "{'k': ['a', 1.0, None]}")
        XCTAssertEqual(JSON.array([]).pythonString, "[]")
        XCTAssertEqual(JSON.object([:]).pythonString, "{}")
    }

    func testPythonFloatSpelling() {
        let table: [(Double, String)] = [
            (1.0, "1.0"), (1.5, "1.5"), (0.1, "0.1"), (-0.0, "-0.0"), (100.0, "100.0"), (3.14159, "3.14159"),
            (1e15, "1000000000000000.0"), (1e16, "1e+16"), (1e22, "1e+22"), (2.5e300, "2.5e+300"),
            (0.0001, "0.0001"), (1e-5, "1e-05"), (1.5e-7, "1.5e-07"),
            (12345678901234567.0, "1.2345678901234568e+16"), (0.30000000000000004, "0.30000000000000004"),
            (.infinity, "inf"), (-.infinity, "-inf"), (.nan, "nan"),
        ]
        for (value, python) in table {
            XCTAssertEqual(JSON.double(value).pythonString, python, "str(\(value))")
        }
    }

    func testPythonStringRepr() {
        XCTAssertEqual(JSON.string("plain").pythonRepr, "'plain'")
        XCTAssertEqual(JSON.string("it's").pythonRepr, "\"it's\"")
        XCTAssertEqual(JSON.string("a\"b").pythonRepr, "'a\"b'")
        XCTAssertEqual(JSON.string("both'\"").pythonRepr, "'both\\'\"'")
        XCTAssertEqual(JSON.string("tab\tnl\n\u{1}\u{7f}é").pythonRepr, "'tab\\tnl\\n\\x01\\x7fé'")
        XCTAssertEqual(JSON.string("back\\slash").pythonRepr, "'back\\\\slash'")
    }
}

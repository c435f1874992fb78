import XCTest
@testable import PrefectWorker

/// `Templating` against Prefect's `prefect.utilities.templating` (`apply_values`, `find_placeholders`,
/// `resolve_variables`, `get_from_dict`). Expected values were produced by running the installed Prefect 3.8.8.
final class TemplatingTests: XCTestCase {
    private let env = ["UT_HOME": "/home/u", "EMPTY": ""]

    private func apply(_ template: JSON, _ values: [String: JSON] = [:]) -> JSON? {
        Templating.apply(template, values: values, environment: env)
    }

    // MARK: - placeholders(in:)

    func testPlaceholdersFindsEveryKindInOrder() {
        let found = Templating.placeholders(in: "{{ a }} {{b}} {{ $C }} {{ prefect.variables.d }} {{ prefect.blocks.e.f }} {{{ g }}} {{ h i }}")
        XCTAssertEqual(found.map(\.fullMatch), ["{{ a }}", "{{b}}", "{{ $C }}", "{{ prefect.variables.d }}", "{{ prefect.blocks.e.f }}", "{{ g }}"])
        XCTAssertEqual(found.map(\.name), ["a", "b", "$C", "prefect.variables.d", "prefect.blocks.e.f", "g"])
        XCTAssertEqual(found.map(\.kind), [.standard, .standard, .environment, .variable, .block, .standard])
    }

    func testPlaceholderNameCharacters() {
        // Python's regex: {{\s*([\w\.\-\[\]$]+)\s*}}
        XCTAssertEqual(Templating.placeholders(in: "{{ a-b.c[0]_d$ }}").map(\.name), ["a-b.c[0]_d$"])
        XCTAssertEqual(Templating.placeholders(in: "{{\tx\n}}").map(\.name), ["x"])
        XCTAssertEqual(Templating.placeholders(in: "{{ é }}").map(\.name), ["é"])
        XCTAssertEqual(Templating.placeholders(in: "{{x}}{{y}}").map(\.fullMatch), ["{{x}}", "{{y}}"])
        for noMatch in ["{{ }}", "{{}}", "{{ a b }}", "{{ x }", "{ x }}", "{{ a/b }}", "{{ a:b }}", "{{ a+b }}", "no braces", "", "{{", "}}"] {
            XCTAssertEqual(Templating.placeholders(in: noMatch), [], noMatch)
        }
    }

    func testPlaceholderKinds() {
        func kind(_ name: String) -> Templating.Kind { Templating.Placeholder(fullMatch: "", name: name).kind }
        XCTAssertEqual(kind("x"), .standard)
        XCTAssertEqual(kind("prefect.variables.v"), .variable)
        XCTAssertEqual(kind("prefect.blocks.secret.s"), .block)
        XCTAssertEqual(kind("$HOME"), .environment)
        XCTAssertEqual(kind("prefect.other"), .standard)
        XCTAssertEqual(kind("prefect"), .standard)
    }

    func testPlaceholdersInJSONRecursesIntoObjectsAndArrays() {
        let template: JSON = .object([
            "b": .array(["{{ x }}", .int(1), .object(["c": "{{ y }}"])]),
            "a": "pre {{ z }}",
            "n": .null, "t": .bool(true), "d": .double(1.5),
        ])
        XCTAssertEqual(Set(Templating.placeholders(in: template).map(\.name)), ["x", "y", "z"])
        XCTAssertEqual(Templating.placeholders(in: .int(3)), [])
    }

    // MARK: - apply: the placeholder table of the protocol (section 6)

    func testWholeStringPlaceholderKeepsJSONType() {
        XCTAssertEqual(apply("{{ x }}", ["x": .int(5)]), .int(5))
        XCTAssertEqual(apply("{{x}}", ["x": .object(["a": .int(1)])]), .object(["a": .int(1)]))
        XCTAssertEqual(apply("{{ x }}", ["x": .null]), .null)
        XCTAssertEqual(apply("{{ x }}", ["x": .bool(false)]), .bool(false))
        XCTAssertEqual(apply("{{ x }}", ["x": .double(2.5)]), .double(2.5))
        XCTAssertEqual(apply("{{ x }}", ["x": .array([.int(1), "a"])]), .array([.int(1), "a"]))
        XCTAssertEqual(apply("{{ x }}", ["x": "text"]), "text")
        XCTAssertEqual(apply("{{\tx\n}}", ["x": .int(2)]), .int(2))
        XCTAssertEqual(apply("{{ a-b }}", ["a-b": .int(7)]), .int(7))
    }

    func testWholeStringValueIsNotRenderedAgain() {
        XCTAssertEqual(apply("{{ x }}", ["x": "{{ y }}", "y": .int(1)]), "{{ y }}")
    }

    func testMissingWholeStringPlaceholderRemovesKeyAndListItem() {
        XCTAssertNil(apply("{{ missing }}"))
        let template: JSON = .object([
            "k": "{{ missing }}", "j": "{{ x }}", "n": .int(1), "b": .bool(true), "z": .null,
            "l": .array(["{{ missing }}", "{{ x }}", .int(3)]),
        ])
        XCTAssertEqual(apply(template, ["x": "v"]), .object([
            "j": "v", "n": .int(1), "b": .bool(true), "z": .null, "l": .array(["v", .int(3)]),
        ]))
    }

    func testInlinePlaceholdersUsePythonStr() {
        XCTAssertEqual(apply("p-{{ x }}", ["x": .int(5)]), "p-5")
        XCTAssertEqual(apply("p-{{ x }}", ["x": .bool(true)]), "p-True")
        XCTAssertEqual(apply("p-{{ x }}", ["x": .bool(false)]), "p-False")
        XCTAssertEqual(apply("p-{{ x }}", ["x": .null]), "p-None")
        XCTAssertEqual(apply("p-{{ x }}", ["x": .object(["a": .int(1)])]), "p-{'a': 1}")
        XCTAssertEqual(apply("p-{{ x }}", ["x": .array([.int(1), "a", .null, .bool(false)])]), "p-[1, 'a', None, False]")
        XCTAssertEqual(apply("p-{{ x }}", ["x": .double(1.0)]), "p-1.0")
        XCTAssertEqual(apply("p-{{ x }}", ["x": .double(2.5)]), "p-2.5")
        XCTAssertEqual(apply("p-{{ x }}", ["x": "it's"]), "p-it's")
        XCTAssertEqual(apply("p-{{ x }}", ["x": .object(["a": "q", "b": .object(["c": .array([.int(1)])])])]),
                       "p-{'a': 'q', 'b': {'c': [1]}}")
    }

    func testInlineMissingPlaceholderBecomesEmpty() {
        XCTAssertEqual(apply("p-{{ missing }}-q"), "p--q")
        XCTAssertEqual(apply("{{ x }}{{ s }}", ["x": .int(5), "s": "str"]), "5str")
        XCTAssertEqual(apply("{{ x }}{{ missing }}", ["x": .int(5)]), "5")
    }

    func testRepeatedPlaceholdersAreAllReplaced() {
        XCTAssertEqual(apply("{{ x }} {{ x }}", ["x": "y"]), "y y")
        XCTAssertEqual(apply("{{x}}-{{ x }}", ["x": "y"]), "y-y")
    }

    func testNestedLookups() {
        XCTAssertEqual(apply("{{ d.a }}", ["d": .object(["a": .array([.int(1), .int(2)])])]), .array([.int(1), .int(2)]))
        XCTAssertEqual(apply("{{ l[1] }}", ["l": .array([.int(10), .object(["k": "v"])])]), .object(["k": "v"]))
        XCTAssertEqual(apply("{{ l[1].k }}", ["l": .array([.int(10), .object(["k": "v"])])]), "v")
        XCTAssertEqual(apply("x-{{ d.a.b }}", ["d": .object(["a": .object(["b": .int(3)])])]), "x-3")
        XCTAssertNil(apply("{{ l[5] }}", ["l": .array([.int(10)])]))
        XCTAssertNil(apply("{{ x.y }}", ["x": .int(5)]))
        XCTAssertNil(apply("{{ d.missing }}", ["d": .object([:])]))
    }

    func testEnvironmentPlaceholders() {
        XCTAssertEqual(apply("{{ $UT_HOME }}"), "/home/u")
        XCTAssertEqual(apply("{{ $UT_HOME }}/x"), "/home/u/x")
        XCTAssertEqual(apply("a{{ $NOPE }}b"), "ab")
        XCTAssertEqual(apply("{{ $NOPE }}"), "", "a missing env var as the whole string is an empty string, not a removed key")
        XCTAssertEqual(apply("a{{ $EMPTY }}b"), "ab")
        // Values never come from the job variables, only from the environment given.
        XCTAssertEqual(apply("{{ $x }}", ["x": .int(1), "$x": .int(2)]), "")
        XCTAssertEqual(apply(.object(["k": "{{ $UT_HOME }}"])), .object(["k": "/home/u"]))
    }

    func testPrefectVariablesAndBlocksAreLeftForLater() {
        XCTAssertEqual(apply("{{ prefect.variables.foo }}"), "{{ prefect.variables.foo }}")
        XCTAssertEqual(apply("a-{{ prefect.variables.foo }}-{{ x }}", ["x": .int(1)]), "a-{{ prefect.variables.foo }}-1")
        XCTAssertEqual(apply("{{ prefect.blocks.secret.tok }}"), "{{ prefect.blocks.secret.tok }}")
        XCTAssertEqual(apply(.object(["k": "{{ prefect.variables.foo }}"])), .object(["k": "{{ prefect.variables.foo }}"]))
    }

    func testNonStringsAreUnchanged() {
        for value: JSON in [.int(1), .double(1.5), .bool(true), .bool(false), .null] {
            XCTAssertEqual(apply(value, ["x": .int(1)]), value)
        }
        XCTAssertEqual(apply("plain text"), "plain text")
        XCTAssertEqual(apply(""), "")
        XCTAssertEqual(apply("{{ x }", ["x": .int(1)]), "{{ x }")
        XCTAssertEqual(apply("{{ }}"), "{{ }}")
        XCTAssertEqual(apply("{{ a b }}", ["a": .int(1)]), "{{ a b }}")
        XCTAssertEqual(apply("{{{ x }}}", ["x": .int(1)]), "{1}")
        XCTAssertEqual(apply(.array([])), .array([]))
        XCTAssertEqual(apply(.object([:])), .object([:]))
    }

    func testDeeplyNestedTemplate() {
        let template: JSON = .object(["a": .array([.object(["b": .array(["{{ x }}", "{{ missing }}", "n-{{ x }}"])])])])
        XCTAssertEqual(apply(template, ["x": .bool(true)]),
                       .object(["a": .array([.object(["b": .array([.bool(true), "n-True"])])])]))
    }

    // MARK: - lookup

    func testLookup() {
        let values: [String: JSON] = [
            "a": .object(["b": .object(["c": .array([.int(1), .int(2), .int(3), .int(4)])])]),
            "l": .array([.int(0), .object(["c": .array([.int(1), .int(2)])])]),
            "n": .null,
        ]
        XCTAssertEqual(Templating.lookup("a.b.c[1]", in: values), .int(2))
        XCTAssertEqual(Templating.lookup("a.b.c.1", in: values), .int(2))
        XCTAssertEqual(Templating.lookup("l[1].c[1]", in: values), .int(2))
        XCTAssertEqual(Templating.lookup("n", in: values), .null)
        XCTAssertNil(Templating.lookup("l.1.c.2", in: values))
        XCTAssertNil(Templating.lookup("missing", in: values))
        XCTAssertNil(Templating.lookup("a.", in: values))
        XCTAssertNil(Templating.lookup("n.x", in: values))
        XCTAssertNil(Templating.lookup("a.b.c[x]", in: values))
        XCTAssertNil(Templating.lookup("", in: values))
    }

    /// Corners where Python's `get_from_dict` (which does `value[int(key)]`) behaves differently from a
    /// naive lookup. Prefect is the reference.
    func testLookupMatchesPythonGetFromDictCorners() {
        // int("-1") indexes from the end of a list.
        XCTAssertEqual(Templating.lookup("l[-1]", in: ["l": .array([.int(10), .int(20)])]), .int(20),
                       "get_from_dict({'l': [10, 20]}, 'l[-1]') == 20")
        // A digit key is tried as an int, which a dict with string keys does not have.
        XCTAssertNil(Templating.lookup("d.1", in: ["d": .object(["1": "x"])]),
                     "get_from_dict({'d': {'1': 'x'}}, 'd.1') is the default")
        // Strings are indexable in Python.
        XCTAssertEqual(Templating.lookup("s[0]", in: ["s": "abc"]), "a", "get_from_dict({'s': 'abc'}, 's[0]') == 'a'")
    }

    // MARK: - resolveVariables

    func testResolveVariablesWholeStringKeepsType() {
        XCTAssertEqual(Templating.resolveVariables("{{ prefect.variables.n }}", ["n": .int(3)]), .int(3))
        XCTAssertEqual(Templating.resolveVariables("{{prefect.variables.o}}", ["o": .object(["a": .int(1)])]), .object(["a": .int(1)]))
        XCTAssertEqual(Templating.resolveVariables("{{ prefect.variables.s }}", ["s": "v"]), "v")
        XCTAssertEqual(Templating.resolveVariables("{{ prefect.variables.z }}", ["z": .some(.null)]), .null)
    }

    func testResolveVariablesMissing() {
        // Whole string: "" (not removed). Inline: removed.
        XCTAssertEqual(Templating.resolveVariables("{{ prefect.variables.gone }}", ["gone": nil]), "")
        XCTAssertEqual(Templating.resolveVariables("{{ prefect.variables.gone }}", [:]), "")
        XCTAssertEqual(Templating.resolveVariables("a-{{ prefect.variables.gone }}-b", [:]), "a--b")
    }

    func testResolveVariablesInline() {
        let vars: [String: JSON?] = ["n": .int(3), "b": .bool(true), "o": .object(["a": .int(1)]), "s": "x", "z": .some(.null)]
        XCTAssertEqual(Templating.resolveVariables("v{{ prefect.variables.n }}-{{ prefect.variables.b }}", vars), "v3-True")
        XCTAssertEqual(Templating.resolveVariables("o={{ prefect.variables.o }}", vars), "o={'a': 1}")
        XCTAssertEqual(Templating.resolveVariables("{{ prefect.variables.s }}{{ prefect.variables.s }}", vars), "xx")
        XCTAssertEqual(Templating.resolveVariables("z={{ prefect.variables.z }}", vars), "z=None")
    }

    func testResolveVariablesLeavesOtherPlaceholders() {
        let vars: [String: JSON?] = ["n": .int(3)]
        XCTAssertEqual(Templating.resolveVariables("{{ x }}", vars), "{{ x }}")
        XCTAssertEqual(Templating.resolveVariables("{{ x }}-{{ prefect.variables.n }}", vars), "{{ x }}-3")
        XCTAssertEqual(Templating.resolveVariables("{{ prefect.variables.n }} {{ $HOME }}", vars), "3 {{ $HOME }}")
        XCTAssertEqual(Templating.resolveVariables("plain", vars), "plain")
        XCTAssertEqual(Templating.resolveVariables(.int(1), vars), .int(1))
        XCTAssertEqual(Templating.resolveVariables(.null, vars), .null)
    }

    func testResolveVariablesRecursesAndNeverDropsKeys() {
        let template: JSON = .object([
            "a": "{{ prefect.variables.n }}",
            "b": .array(["{{ prefect.variables.gone }}", "k-{{ prefect.variables.n }}"]),
            "c": .object(["d": "{{ prefect.variables.gone }}"]),
        ])
        XCTAssertEqual(Templating.resolveVariables(template, ["n": .int(3)]), .object([
            "a": .int(3), "b": .array(["", "k-3"]), "c": .object(["d": ""]),
        ]))
    }

    func testVariableNames() {
        let template: JSON = .object([
            "a": "{{ prefect.variables.one }}", "b": .array(["x {{ prefect.variables.two }} {{ prefect.variables.one }}"]),
            "c": "{{ other }} {{ $ENV }} {{ prefect.blocks.t.n }}",
        ])
        XCTAssertEqual(Templating.variableNames(in: template), ["one", "two"])
        XCTAssertEqual(Templating.variableNames(in: "nothing"), [])
    }
}

import Foundation
import XCTest
@testable import PrefectWorker

/// The one table of settings: well formed, and every place that reads settings (the parser, `--help`, the files'
/// check, `prefect.toml`, `Settings`) covers every entry, so a setting cannot be added in only one of them.
final class SettingTableTests: XCTestCase {
    private let table = SettingTable.all
    private let apiURL = "http://127.0.0.1:4200/api"

    /// For each setting (by name): flags and variables that give it a value other than its default. Adding a
    /// setting means adding an example here, which the tests below then run through the parser and the files.
    private func examples(templatePath: String) -> [String: (args: [String], env: [String: String])] {
        [
            "PREFECT_WORKER_POOL": (["--pool", "other-pool"], [:]),
            "PREFECT_WORKER_NAME": (["--name", "other-name"], [:]),
            "PREFECT_WORKER_WORK_QUEUES": ([], ["PREFECT_WORKER_WORK_QUEUES": "a,b"]),
            "--type": (["--type", "process"], [:]),
            "PREFECT_WORKER_LIMIT": ([], ["PREFECT_WORKER_LIMIT": "3"]),
            "PREFECT_WORKER_PREFETCH_SECONDS": ([], ["PREFECT_WORKER_PREFETCH_SECONDS": "4"]),
            "PREFECT_WORKER_HEARTBEAT_SECONDS": ([], ["PREFECT_WORKER_HEARTBEAT_SECONDS": "5"]),
            "PREFECT_WORKER_QUERY_SECONDS": ([], ["PREFECT_WORKER_QUERY_SECONDS": "6"]),
            "PREFECT_WORKER_KILL_GRACE_SECONDS": ([], ["PREFECT_WORKER_KILL_GRACE_SECONDS": "7"]),
            "PREFECT_WORKER_DRAIN_TIMEOUT": ([], ["PREFECT_WORKER_DRAIN_TIMEOUT": "8"]),
            "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": ([], ["PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "9"]),
            "--run-once": (["--run-once"], [:]),
            "PREFECT_WORKER_STATE_DIR": ([], ["PREFECT_WORKER_STATE_DIR": "/srv/state"]),
            "--create-pool-if-not-found": (["--no-create-pool-if-not-found"], [:]),
            "PREFECT_WORKER_WITH_HEALTHCHECK": ([], ["PREFECT_WORKER_WITH_HEALTHCHECK": "true"]),
            "PREFECT_WORKER_WEBSERVER_HOST": ([], ["PREFECT_WORKER_WEBSERVER_HOST": "0.0.0.0"]),
            "PREFECT_WORKER_WEBSERVER_PORT": ([], ["PREFECT_WORKER_WEBSERVER_PORT": "9090"]),
            "PREFECT_WORKER_LOG_FORMAT": ([], ["PREFECT_WORKER_LOG_FORMAT": "json"]),
            "PREFECT_LOGGING_LEVEL": ([], ["PREFECT_LOGGING_LEVEL": "WARNING"]),
            "--base-job-template": (["--base-job-template", templatePath], [:]),
            "--install-policy": (["--install-policy", "never"], [:]),
            "PREFECT_API_URL": ([], ["PREFECT_API_URL": "http://other:4200/api"]),
            "PREFECT_API_KEY": ([], ["PREFECT_API_KEY": "key"]),
            "PREFECT_API_AUTH_STRING": ([], ["PREFECT_API_AUTH_STRING": "user:pass"]),
            "PREFECT_API_REQUEST_TIMEOUT": ([], ["PREFECT_API_REQUEST_TIMEOUT": "12"]),
            "PREFECT_CLIENT_MAX_RETRIES": ([], ["PREFECT_CLIENT_MAX_RETRIES": "2"]),
            "PREFECT_CLIENT_RETRY_JITTER_FACTOR": ([], ["PREFECT_CLIENT_RETRY_JITTER_FACTOR": "0.5"]),
            "PREFECT_CLIENT_RETRY_EXTRA_CODES": ([], ["PREFECT_CLIENT_RETRY_EXTRA_CODES": "404"]),
            "PREFECT_CLIENT_CUSTOM_HEADERS": ([], ["PREFECT_CLIENT_CUSTOM_HEADERS": #"{"X-Team": "data"}"#]),
            "PREFECT_API_SSL_CERT_FILE": ([], ["PREFECT_API_SSL_CERT_FILE": "/etc/ca.pem"]),
            "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": ([], ["PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true"]),
            "PREFECT_API_ENABLE_HTTP2": ([], ["PREFECT_API_ENABLE_HTTP2": "true"]),
            "HTTPS_PROXY": ([], ["HTTPS_PROXY": "http://s:3128", "HTTP_PROXY": "http://p:3128", "ALL_PROXY": "socks5://a:1080",
                                  "NO_PROXY": "localhost"]),
            "PREFECT_CLOUD_API_URL": ([], ["PREFECT_CLOUD_API_URL": "http://127.0.0.1:4200"]),
            // Only on Cloud: the worker's API URL is under the Cloud URL here.
            "PREFECT_CLOUD_MAX_LOG_SIZE": ([], ["PREFECT_CLOUD_MAX_LOG_SIZE": "200", "PREFECT_CLOUD_API_URL": apiURL]),
            "PREFECT_LOGGING_TO_API_ENABLED": ([], ["PREFECT_LOGGING_TO_API_ENABLED": "false"]),
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": ([], ["PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5"]),
            "PREFECT_LOGGING_TO_API_BATCH_SIZE": ([], ["PREFECT_LOGGING_TO_API_BATCH_SIZE": "1000"]),
            "PREFECT_LOGGING_TO_API_MAX_LOG_SIZE": ([], ["PREFECT_LOGGING_TO_API_MAX_LOG_SIZE": "800"]),
            "PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE": ([], ["PREFECT_EVENTS_WORKER_MAX_QUEUE_SIZE": "50"]),
            "PREFECT_SILENCE_API_URL_MISCONFIGURATION": ([], ["PREFECT_SILENCE_API_URL_MISCONFIGURATION": "true"]),
            "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": ([], ["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR": "reschedule"]),
            "PREFECT_WORKER_DEBUG_MODE": ([], ["PREFECT_WORKER_DEBUG_MODE": "true"]),
            "PREFECT_WORKER_ENABLE_CANCELLATION": ([], ["PREFECT_WORKER_ENABLE_CANCELLATION": "false"]),
            "PREFECT_PROFILES_PATH": ([], ["PREFECT_PROFILES_PATH": "/nowhere/profiles.toml"]),
            "PREFECT_HOME": ([], ["PREFECT_HOME": "/nowhere"]),
            "PREFECT_PROFILE": ([], ["PREFECT_PROFILE": "other"]),
            "PREFECT_WORKER_REDACTED_VARS": ([], ["PREFECT_WORKER_REDACTED_VARS": "*_PIN"]),
        ]
    }

    /// Settings that fill no field of `Settings`: `SettingSources` reads them before the parser, or (`--type`) they
    /// are only checked.
    private let readElsewhere: Set<String> = ["--type", "PREFECT_PROFILES_PATH", "PREFECT_HOME", "PREFECT_PROFILE"]

    /// Fields of `Settings` that no setting fills: the whole environment, which jobs inherit.
    private let notSettings: Set<String> = ["environment"]

    private var baseline: (args: [String], env: [String: String]) {
        (["start", "--pool", "p", "--name", "w"], ["PREFECT_API_URL": apiURL, "HOME": "/home/u"])
    }

    private func parse(_ args: [String], _ env: [String: String]) throws -> Settings {
        guard case .start(let settings) = try CommandLineParser.parse(args, environment: env) else {
            throw UsageError("not start")
        }
        return settings
    }

    /// The stored fields of `settings`, nested ones as `client.maxRetries`, with their values as text.
    private func fields(_ value: Any, prefix: String = "") -> [String: String] {
        var out: [String: String] = [:]
        for child in Mirror(reflecting: value).children {
            guard let label = child.label else { continue }
            let name = prefix + label
            if label == "client" || label == "logsToAPI" || label == "proxies" {
                out.merge(fields(child.value, prefix: name + ".")) { $1 }
            } else {
                out[name] = String(describing: child.value)
            }
        }
        return out
    }

    private func templateFile() throws -> String {
        let path = NSTemporaryDirectory() + "setting-table-template-\(getpid()).json"
        try Data(#"{"job_configuration": {}, "variables": {}}"#.utf8).write(to: URL(fileURLWithPath: path))
        addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
        return path
    }

    // MARK: - The table itself

    func testNamesFlagsVariablesAndTOMLKeysAreUnique() {
        func duplicates(_ names: [String]) -> [String] {
            Dictionary(grouping: names, by: { $0 }).filter { $0.value.count > 1 }.keys.sorted()
        }
        XCTAssertEqual(duplicates(table.map(\.name)), [])
        XCTAssertEqual(duplicates(table.flatMap { $0.flags + [$0.negation].compactMap { $0 } }), [])
        XCTAssertEqual(duplicates(table.flatMap(\.variables)), [])
        XCTAssertEqual(duplicates(table.compactMap(\.toml)), [])
        for setting in table {
            XCTAssertTrue(!setting.flags.isEmpty || !setting.variables.isEmpty, "\(setting.name): neither a flag nor a variable")
            XCTAssertTrue(setting.flags.first?.hasPrefix("--") ?? true, "\(setting.name): the long flag comes first")
            XCTAssertTrue(setting.negation == nil || !setting.takesValue, "\(setting.name): only a switch has a negation")
        }
    }

    func testEveryPrefectSettingHasATOMLKeyNamedAsPrefectNamesIt() {
        // Read from the environment only: the profile's name and where the files are (profiles_path, read from
        // prefect.toml, is the one exception), and what `prefect flow-run execute` reads.
        let environmentOnly: Set<String> = ["PREFECT_HOME", "PREFECT_PROFILE", "PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"]
        for setting in table {
            guard let variable = setting.variable, variable.hasPrefix("PREFECT_") else {
                XCTAssertNil(setting.toml, "\(setting.name) is not a PREFECT_* setting")
                continue
            }
            guard let key = setting.toml else {
                XCTAssertTrue(environmentOnly.contains(variable), "\(variable) has no prefect.toml key")
                continue
            }
            XCTAssertEqual("PREFECT_" + key.replacingOccurrences(of: ".", with: "_").uppercased(), variable, key)
        }
    }

    func testEverySettingIsInTheHelp() {
        let usage = CommandLineParser.usage
        for setting in table {
            for name in setting.flags + setting.variables + [setting.negation].compactMap({ $0 }) where name.count > 2 {
                XCTAssertTrue(usage.contains(name), "--help does not mention \(name)")
            }
            switch setting.help {
            case .option(let lines), .environment(let lines):
                XCTAssertTrue(lines.contains(setting.flags.first ?? setting.variables[0]), "\(setting.name)'s own lines name it")
                if case .option = setting.help {
                    XCTAssertFalse(setting.flags.isEmpty, "\(setting.name) is under the options but has no flag")
                } else {
                    XCTAssertTrue(setting.flags.isEmpty, "\(setting.name) has a flag but is not under the options")
                }
            case .within(let other):
                switch SettingTable.named(other)?.help {
                case .option(let lines)?, .environment(let lines)?:
                    XCTAssertTrue(lines.contains(setting.name), "\(other)'s lines name \(setting.name)")
                default:
                    XCTFail("\(setting.name) is described within \(other), which has no lines of its own")
                }
            }
        }
    }

    func testTheHelpNamesNoFlagOrSettingTheTableLacks() {
        // A line added to --help by hand, for a setting the table does not have, would show here.
        let known = Set(table.flatMap { $0.flags + $0.variables + [$0.negation].compactMap { $0 } })
        let body = CommandLineParser.usage.components(separatedBy: "Options for `start`")[1]
        let pattern = try! NSRegularExpression(pattern: #"--[a-z][a-z-]*[a-z]|PREFECT_[A-Z0-9_]*[A-Z0-9]"#)
        let names = pattern.matches(in: body, range: NSRange(body.startIndex..., in: body)).map { String(body[Range($0.range, in: body)!]) }
        XCTAssertGreaterThan(names.count, 40)
        for name in Set(names).sorted() { XCTAssertTrue(known.contains(name), "--help names \(name), which SettingTable lacks") }
    }

    func testTheFilesAreCheckedForTheKindOfEverySetting() {
        for setting in table {
            for variable in setting.variables where variable.hasPrefix("PREFECT_") {
                XCTAssertEqual(SettingKeys.used[variable], setting.kind, variable)
            }
        }
        XCTAssertEqual(SettingKeys.used["PREFECT_WORKER_QUERY_SECONDS"], .number)
        XCTAssertNil(SettingKeys.used["SSL_CERT_FILE"], "only PREFECT_* keys come from the files")
    }

    func testTheReadingOrderPutsTheEssentialsFirstAndDerivedSettingsAfterTheirSources() {
        let order = table.map(\.name)
        XCTAssertEqual(Array(order.prefix(2)), ["PREFECT_WORKER_POOL", "PREFECT_API_URL"], "a missing pool or API is reported first")
        func index(_ name: String) -> Int { order.firstIndex(of: name) ?? -1 }
        // Debug mode beats the logging level; the Cloud cap needs the API URL, the Cloud URL and the cap.
        XCTAssertGreaterThan(index("PREFECT_WORKER_DEBUG_MODE"), index("PREFECT_LOGGING_LEVEL"))
        for source in ["PREFECT_API_URL", "PREFECT_CLOUD_API_URL", "PREFECT_CLOUD_MAX_LOG_SIZE"] {
            XCTAssertGreaterThan(index("PREFECT_LOGGING_TO_API_MAX_LOG_SIZE"), index(source), source)
        }
    }

    // MARK: - Every entry reaches the parser, the files and Settings

    func testEverySettingHasAnExampleThatTheParserReads() throws {
        let examples = try examples(templatePath: templateFile())
        XCTAssertEqual(Set(examples.keys), Set(table.map(\.name)), "every setting needs an example here")
        let base = try parse(baseline.args, baseline.env)
        let baseFields = fields(base)
        var covered: Set<String> = []
        for setting in table {
            guard let example = examples[setting.name] else { continue }
            let settings = try parse(baseline.args + example.args, baseline.env.merging(example.env) { $1 })
            let changed = fields(settings).filter { baseFields[$0.key] != $0.value }.keys.filter { !notSettings.contains($0) }
            if readElsewhere.contains(setting.name) {
                XCTAssertEqual(changed, [], "\(setting.name) fills no field")
            } else {
                XCTAssertFalse(changed.isEmpty, "\(setting.name)'s example changes no field of Settings")
            }
            covered.formUnion(changed)
        }
        let unfilled = Set(baseFields.keys).subtracting(covered).subtracting(notSettings)
        XCTAssertEqual(unfilled.sorted(), [], "fields of Settings that no setting in SettingTable fills")
    }

    func testEveryFlagIsAcceptedByTheParser() throws {
        for setting in table {
            for flag in setting.flags + [setting.negation].compactMap({ $0 }) {
                do {
                    _ = try CommandLineParser.parse(["start", "-p", "p", flag] + (setting.takesValue ? ["x"] : []),
                                                    environment: ["PREFECT_API_URL": apiURL])
                } catch let error as UsageError {
                    XCTAssertFalse(error.message.contains("unknown option"), "\(flag): \(error.message)")
                }
            }
        }
    }

    func testDefaultsAreTheSettingsDefaults() throws {
        let base = fields(try parse(baseline.args, baseline.env))
        // Records that a value was given, whatever it is: giving the default sets it, by design.
        let givenMarks: Set<String> = ["cancellationPollIsSet", "querySecondsIsSet"]
        for setting in table {
            guard let value = setting.defaultValue, let variable = setting.variable else { continue }
            let settings = try parse(baseline.args, baseline.env.merging([variable: value]) { $1 })
            let changed = fields(settings).filter { base[$0.key] != $0.value && !notSettings.contains($0.key) && !givenMarks.contains($0.key) }
            XCTAssertEqual(changed.keys.sorted(), [], "\(variable)=\(value) is not the default")
        }
    }

    func testEveryPrefectSettingIsReadFromPrefectTomlAndProfiles() throws {
        let examples = try examples(templatePath: templateFile())
        for setting in table {
            guard let variable = setting.variable, variable.hasPrefix("PREFECT_"),
                  let value = examples[setting.name]?.env[variable] else { continue }
            let quoted = "\"" + value.replacingOccurrences(of: "\"", with: "\\\"") + "\""
            // The profile names the variable itself.
            let profiles = "active = \"t\"\n[profiles.t]\n\(variable) = \(quoted)\n"
            let fromProfile = try SettingSources.load(environment: ["PREFECT_HOME": "/h"], workingDirectory: "/w") {
                $0 == "/h/profiles.toml" ? profiles : nil
            }
            if variable != "PREFECT_HOME" && variable != "PREFECT_PROFILE" && variable != "PREFECT_PROFILES_PATH" {
                XCTAssertEqual(fromProfile.environment[variable], value, "\(variable) from a profile")
            }
            // prefect.toml, under the table's key.
            guard let key = setting.toml else { continue }
            var parts = key.split(separator: ".").map(String.init)
            let last = parts.removeLast()
            let toml = (parts.isEmpty ? "" : "[\(parts.joined(separator: "."))]\n") + "\(last) = \(quoted)\n"
            let fromToml = try SettingSources.load(environment: ["PREFECT_HOME": "/none"], workingDirectory: "/w") {
                $0 == "/w/prefect.toml" ? toml : nil
            }
            if variable == "PREFECT_PROFILES_PATH" {
                XCTAssertTrue(fromToml.summary.contains { $0.contains(value) }, "profiles_path in prefect.toml: \(fromToml.summary)")
            } else {
                XCTAssertEqual(fromToml.environment[variable], value, "\(key) in prefect.toml")
            }
        }
    }

    func testABadFileValueIsCaughtForEveryKindOfSetting() throws {
        for setting in table where setting.kind != .string {
            guard let variable = setting.variable else { continue }
            let profiles = "active = \"t\"\n[profiles.t]\n\(variable) = \"!bad!\"\n"
            XCTAssertThrowsError(try SettingSources.load(environment: ["PREFECT_HOME": "/h"], workingDirectory: "/w") {
                $0 == "/h/profiles.toml" ? profiles : nil
            }, variable) { error in
                XCTAssertTrue((error as? UsageError)?.message.hasPrefix("/h/profiles.toml, profile 't': \(variable): ") == true, "\(error)")
            }
        }
    }
}

import XCTest
@testable import PrefectWorker

/// Which profiles file and profile are read, and the precedence: flag > environment > prefect.toml > profile.
final class SettingSourcesTests: XCTestCase {
    private let cwd = "/work/dir"

    private func load(_ env: [String: String], files: [String: String]) throws -> SettingSources {
        try SettingSources.load(environment: env, workingDirectory: cwd) { files[$0] }
    }

    private func loadError(_ env: [String: String], files: [String: String], file: StaticString = #filePath, line: UInt = #line) -> String {
        do {
            let sources = try load(env, files: files)
            XCTFail("expected an error, got \(sources)", file: file, line: line)
        } catch let error as UsageError {
            return error.message
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
        return ""
    }

    private let profiles = """
    active = "local"

    [profiles.local]
    PREFECT_API_URL = "http://127.0.0.1:4200/api"
    PREFECT_WORKER_LIMIT = "3"
    PREFECT_SOMETHING_WE_DO_NOT_READ = "x"

    [profiles.other]
    PREFECT_API_URL = "http://other:4200/api"
    PREFECT_API_KEY = "pnu_secret_value"
    """

    func testActiveProfileOfPrefectHomeIsTheDefaultBeneathTheEnvironment() throws {
        let sources = try load(["PREFECT_HOME": "/h", "PREFECT_WORKER_LIMIT": "5"], files: ["/h/profiles.toml": profiles])
        XCTAssertEqual(sources.environment["PREFECT_API_URL"], "http://127.0.0.1:4200/api")
        XCTAssertEqual(sources.environment["PREFECT_WORKER_LIMIT"], "5", "the environment beats the profile")
        XCTAssertEqual(sources.environment["PREFECT_SOMETHING_WE_DO_NOT_READ"], "x", "unknown PREFECT_* keys are fine and passed on")
        XCTAssertEqual(sources.environment["PREFECT_HOME"], "/h")
        XCTAssertEqual(sources.origins["PREFECT_API_URL"], "/h/profiles.toml, profile 'local'")
        XCTAssertNil(sources.origins["PREFECT_WORKER_LIMIT"], "taken from the environment, not the file")
        XCTAssertEqual(sources.summary, ["using profile 'local' (active) from /h/profiles.toml: PREFECT_API_URL, PREFECT_SOMETHING_WE_DO_NOT_READ, PREFECT_WORKER_LIMIT (the environment overrides PREFECT_WORKER_LIMIT)"])
    }

    func testPrefectProfileBeatsActiveAndSecretsAreNeverInTheSummary() throws {
        let sources = try load(["PREFECT_HOME": "/h", "PREFECT_PROFILE": "other"], files: ["/h/profiles.toml": profiles])
        XCTAssertEqual(sources.environment["PREFECT_API_URL"], "http://other:4200/api")
        XCTAssertEqual(sources.environment["PREFECT_API_KEY"], "pnu_secret_value")
        XCTAssertNil(sources.environment["PREFECT_WORKER_LIMIT"])
        let summary = sources.summary.joined(separator: "\n")
        XCTAssertTrue(summary.contains("using profile 'other' (PREFECT_PROFILE) from /h/profiles.toml: PREFECT_API_KEY, PREFECT_API_URL"), summary)
        XCTAssertFalse(summary.contains("pnu_secret_value"), summary)
        XCTAssertFalse(summary.contains("other:4200"), "values are never logged: \(summary)")
    }

    func testWhichProfilesFile() throws {
        let file = "active = \"p\"\n[profiles.p]\nPREFECT_API_URL = \"http://from-file/api\"\n"
        // PREFECT_PROFILES_PATH beats PREFECT_HOME.
        var sources = try load(["PREFECT_PROFILES_PATH": "/custom/p.toml", "PREFECT_HOME": "/h"],
                               files: ["/custom/p.toml": file, "/h/profiles.toml": profiles])
        XCTAssertEqual(sources.environment["PREFECT_API_URL"], "http://from-file/api")
        // PREFECT_HOME defaults to ~/.prefect.
        sources = try load(["HOME": "/home/u"], files: ["/home/u/.prefect/profiles.toml": file])
        XCTAssertEqual(sources.environment["PREFECT_API_URL"], "http://from-file/api")
        // profiles_path in ./prefect.toml, relative to the working directory, beats PREFECT_HOME.
        sources = try load(["PREFECT_HOME": "/h"], files: ["/work/dir/prefect.toml": "profiles_path = \"conf/p.toml\"\n",
                                                           "/work/dir/conf/p.toml": file, "/h/profiles.toml": profiles])
        XCTAssertEqual(sources.environment["PREFECT_API_URL"], "http://from-file/api")
        // No file: nothing, and the summary says where it looked.
        sources = try load(["PREFECT_HOME": "/none"], files: [:])
        XCTAssertEqual(sources.environment, ["PREFECT_HOME": "/none"])
        XCTAssertEqual(sources.summary, ["no profiles file at /none/profiles.toml; using no profile"])
    }

    func testMissingProfileIsNoProfile() throws {
        let sources = try load(["PREFECT_HOME": "/h", "PREFECT_PROFILE": "gone"], files: ["/h/profiles.toml": profiles])
        XCTAssertNil(sources.environment["PREFECT_API_URL"])
        XCTAssertEqual(sources.summary, ["profile 'gone' (PREFECT_PROFILE) is not in /h/profiles.toml; using no profile"])
    }

    func testPrefectTomlBeatsTheProfileAndTheEnvironmentBeatsBoth() throws {
        let toml = """
        [api]
        url = "http://toml/api"

        [worker]
        heartbeat_seconds = 12
        query_seconds = 2.5

        [logging.to_api]
        enabled = false

        [client.custom_headers]
        "X-Team" = "data"
        """
        let sources = try load(["PREFECT_HOME": "/h", "PREFECT_WORKER_QUERY_SECONDS": "1"],
                               files: ["/h/profiles.toml": profiles, "/work/dir/prefect.toml": toml])
        XCTAssertEqual(sources.environment["PREFECT_API_URL"], "http://toml/api", "prefect.toml beats the profile")
        XCTAssertEqual(sources.environment["PREFECT_WORKER_LIMIT"], "3", "the profile still fills in the rest")
        XCTAssertEqual(sources.environment["PREFECT_WORKER_HEARTBEAT_SECONDS"], "12")
        XCTAssertEqual(sources.environment["PREFECT_WORKER_QUERY_SECONDS"], "1", "the environment beats prefect.toml")
        XCTAssertEqual(sources.environment["PREFECT_LOGGING_TO_API_ENABLED"], "false")
        XCTAssertEqual(sources.environment["PREFECT_CLIENT_CUSTOM_HEADERS"], #"{"X-Team":"data"}"#)
        XCTAssertEqual(sources.origins["PREFECT_API_URL"], "/work/dir/prefect.toml")
        XCTAssertEqual(sources.origins["PREFECT_WORKER_LIMIT"], "/h/profiles.toml, profile 'local'")
        XCTAssertTrue(sources.summary.contains { $0.hasPrefix("read /work/dir/prefect.toml: PREFECT_API_URL, ") }, "\(sources.summary)")
    }

    func testFlagBeatsEnvironmentBeatsProfile() throws {
        let sources = try load(["PREFECT_HOME": "/h"], files: ["/h/profiles.toml": profiles])
        func limit(_ args: [String], _ env: [String: String]) throws -> Int? {
            guard case .start(let settings) = try CommandLineParser.parse(["start", "-p", "pool"] + args, environment: env) else { return nil }
            return settings.limit
        }
        XCTAssertEqual(try limit([], sources.environment), 3, "the profile")
        let withEnv = try load(["PREFECT_HOME": "/h", "PREFECT_WORKER_LIMIT": "4"], files: ["/h/profiles.toml": profiles])
        XCTAssertEqual(try limit([], withEnv.environment), 4, "the environment beats the profile")
        XCTAssertEqual(try limit(["--limit", "9"], withEnv.environment), 9, "a flag beats both")
        // Jobs inherit the merged environment, as Prefect's worker passes its settings on.
        guard case .start(let settings) = try CommandLineParser.parse(["start", "-p", "pool"], environment: sources.environment) else {
            return XCTFail("not start")
        }
        XCTAssertEqual(settings.environment["PREFECT_SOMETHING_WE_DO_NOT_READ"], "x")
        XCTAssertEqual(settings.apiURL.absoluteString, "http://127.0.0.1:4200/api")
    }

    func testBadValueOfAKeyWeUseNamesTheFileAndTheKey() {
        let bad = "active = \"p\"\n[profiles.p]\nPREFECT_WORKER_HEARTBEAT_SECONDS = \"soon\"\n"
        XCTAssertEqual(loadError(["PREFECT_HOME": "/h"], files: ["/h/profiles.toml": bad]),
                       "/h/profiles.toml, profile 'p': PREFECT_WORKER_HEARTBEAT_SECONDS: 'soon' is not a number")
        let badURL = "active = \"p\"\n[profiles.p]\nPREFECT_API_URL = \"ftp://x\"\n"
        XCTAssertEqual(loadError(["PREFECT_HOME": "/h"], files: ["/h/profiles.toml": badURL]),
                       "/h/profiles.toml, profile 'p': PREFECT_API_URL: 'ftp://x' is not a valid http(s) URL")
        XCTAssertEqual(loadError([:], files: ["/work/dir/prefect.toml": "[client]\nmax_retries = \"many\"\n"]),
                       "/work/dir/prefect.toml: PREFECT_CLIENT_MAX_RETRIES: 'many' is not a whole number")
        XCTAssertEqual(loadError([:], files: ["/work/dir/prefect.toml": "[api]\ntls_insecure_skip_verify = 3\n"]),
                       "/work/dir/prefect.toml: PREFECT_API_TLS_INSECURE_SKIP_VERIFY: '3' is not true or false")
        XCTAssertEqual(loadError([:], files: ["/work/dir/prefect.toml": "[client]\nretry_extra_codes = \"404,abc\"\n"]),
                       "/work/dir/prefect.toml: PREFECT_CLIENT_RETRY_EXTRA_CODES: '404,abc' is not a comma-separated list of HTTP status codes")
        // A secret is never shown, even when it is the bad value.
        let message = loadError([:], files: ["/work/dir/prefect.toml": "[client]\ncustom_headers = \"Bearer xyz\"\n"])
        XCTAssertEqual(message, "/work/dir/prefect.toml: PREFECT_CLIENT_CUSTOM_HEADERS: the value is not a JSON object")
        // A bad value in a profile that is not active is not read, as in Prefect.
        let inactive = "active = \"p\"\n[profiles.p]\n[profiles.q]\nPREFECT_WORKER_LIMIT = \"x\"\n"
        XCTAssertNoThrow(try load(["PREFECT_HOME": "/h"], files: ["/h/profiles.toml": inactive]))
    }

    func testTheKeysWeUseIncludeTheClientSettings() {
        for key in ["PREFECT_API_REQUEST_TIMEOUT", "PREFECT_CLIENT_MAX_RETRIES", "PREFECT_CLIENT_RETRY_JITTER_FACTOR",
                    "PREFECT_CLIENT_RETRY_EXTRA_CODES", "PREFECT_CLIENT_CUSTOM_HEADERS", "PREFECT_API_SSL_CERT_FILE",
                    "PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "PREFECT_API_ENABLE_HTTP2"] {
            XCTAssertNotNil(SettingKeys.used[key], key)
        }
        XCTAssertNil(SettingKeys.problem(key: "PREFECT_API_REQUEST_TIMEOUT", value: "12.5"))
        XCTAssertNil(SettingKeys.problem(key: "PREFECT_CLIENT_CUSTOM_HEADERS", value: #"{"a": "b"}"#))
        XCTAssertNil(SettingKeys.problem(key: "PREFECT_UNKNOWN_THING", value: "anything"))
        XCTAssertEqual(SettingKeys.problem(key: "PREFECT_LOGGING_LEVEL", value: "LOUD"), "is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    }

    func testOutsideTheSubsetIsAnErrorNamingFileAndLine() {
        let file = "active = \"p\"\n[profiles.p]\nPREFECT_API_URL = [\"a\"]\n"
        XCTAssertEqual(loadError(["PREFECT_HOME": "/h"], files: ["/h/profiles.toml": file]), "/h/profiles.toml:3: arrays are not supported")
        XCTAssertEqual(loadError([:], files: ["/work/dir/prefect.toml": "[api]\nurl = {a = 1}\n"]),
                       "/work/dir/prefect.toml:2: inline tables are not supported")
    }

    func testParserErrorsAboutAFileValueNameTheFile() throws {
        // PREFECT_WORKER_LIMIT "0" is a whole number (so the file loads) but the parser wants >= 1.
        let file = "active = \"p\"\n[profiles.p]\nPREFECT_API_URL = \"http://x/api\"\nPREFECT_WORKER_LIMIT = \"0\"\n"
        let sources = try load(["PREFECT_HOME": "/h"], files: ["/h/profiles.toml": file])
        do {
            _ = try CommandLineParser.parse(["start", "-p", "pool"], environment: sources.environment)
            XCTFail("expected an error")
        } catch let error as UsageError {
            XCTAssertEqual(sources.explain(error).message,
                           "PREFECT_WORKER_LIMIT: '0' is not a whole number >= 1 (PREFECT_WORKER_LIMIT is set in /h/profiles.toml, profile 'p')")
        }
        let unrelated = UsageError("option '--pool' is required")
        XCTAssertEqual(sources.explain(unrelated), unrelated)
    }
}

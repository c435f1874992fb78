import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// `Redactor`, `KnownSecrets` and redaction in `OutputPump`.
final class RedactorTests: XCTestCase {
    private typealias P = ProcessTestSupport

    func testEverySecretIsReplacedAndTheRestOfTheLineKept() {
        let r = Redactor(secrets: ["hunter22", "s3cr3t-token"])
        XCTAssertEqual(r.redact("key=hunter22 token=s3cr3t-token end"), "key=[REDACTED] token=[REDACTED] end")
        XCTAssertEqual(r.redact("hunter22hunter22"), "[REDACTED][REDACTED]", "adjacent occurrences")
        XCTAssertEqual(r.redact("nothing here"), "nothing here")
        XCTAssertEqual(r.redact(""), "")
    }

    func testSecretsAtTheStartAndEndOfALine() {
        let r = Redactor(secrets: ["abcdef123"])
        XCTAssertEqual(r.redact("abcdef123"), "[REDACTED]")
        XCTAssertEqual(r.redact("abcdef123 tail"), "[REDACTED] tail")
        XCTAssertEqual(r.redact("head abcdef123"), "head [REDACTED]")
        XCTAssertEqual(r.redact("abcdef12"), "abcdef12", "a prefix of a secret is not the secret")
    }

    func testOverlappingAndNestedSecretsBecomeOneRedaction() {
        // "abcdefgh" and "efghijkl" overlap in "abcdefghijkl"; nothing of either may show.
        let overlapping = Redactor(secrets: ["abcdefgh", "efghijkl"])
        XCTAssertEqual(overlapping.redact("x abcdefghijkl y"), "x [REDACTED] y")
        // One secret inside another.
        let nested = Redactor(secrets: ["password123", "word12"])
        XCTAssertEqual(nested.redact("p=password123 w=word12"), "p=[REDACTED] w=[REDACTED]")
        // A secret that overlaps itself.
        let selfOverlap = Redactor(secrets: ["aaaaaa"])
        XCTAssertEqual(selfOverlap.redact("aaaaaaaa!"), "[REDACTED]!")
    }

    func testShortValuesAreNotRedacted() {
        let r = Redactor(secrets: ["12345", "abc", "", "123456"])
        XCTAssertEqual(r.redact("12345 abc 123456"), "12345 abc [REDACTED]")
        XCTAssertEqual(Redactor(secrets: ["short"]).isEmpty, true)
    }

    func testUnicodeSecretsAndText() {
        // Six characters, more bytes: counted in characters.
        let r = Redactor(secrets: ["pässwörd", "🔑🔑🔑🔑🔑🔑", "日本語のひみつ"])
        XCTAssertEqual(r.redact("Zoë: pässwörd ✓"), "Zoë: [REDACTED] ✓")
        // Seven keys hold the six-key secret twice, overlapping: one redaction covers both.
        XCTAssertEqual(r.redact("keys 🔑🔑🔑🔑🔑🔑🔑 ok"), "keys [REDACTED] ok")
        XCTAssertEqual(r.redact("「日本語のひみつ」"), "「[REDACTED]」")
        // Five emoji are five characters (20 bytes): too short to redact.
        XCTAssertEqual(Redactor(secrets: ["🔑🔑🔑🔑🔑"]).redact("🔑🔑🔑🔑🔑"), "🔑🔑🔑🔑🔑")
        // A secret that is a byte-prefix of a different character does not cut that character.
        XCTAssertEqual(Redactor(secrets: ["cafe12"]).redact("cafe12\u{301}"), "[REDACTED]\u{301}")
    }

    func testMultiLineSecretsAreAlsoRedactedLineByLine() {
        let pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END KEY-----"
        let r = Redactor(secrets: [pem])
        XCTAssertEqual(r.redact("MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu"), "[REDACTED]")
        XCTAssertEqual(r.redact("-----END KEY-----"), "[REDACTED]")
        XCTAssertEqual(r.redact(pem), "[REDACTED]")
    }

    func testSecretValuesFromTheEnvironment() {
        let env = [
            "PREFECT_API_KEY": "pnu_abcdefghij", "PREFECT_API_AUTH_STRING": "admin:pa55word!",
            "GITHUB_TOKEN": "ghp_123456789", "db_password": "lowercase-name", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI",
            "DATABASE_CONNECTION_STRING": "postgres://u:p@h/db", "STRIPE_API_KEY": "sk_live_42424242",
            "PATH": "/usr/bin:/bin", "TOKEN_COUNT": "12345678", "MY_SECRET": "topsecret",
        ]
        let values = Set(Redactor.secretValues(environment: env, patterns: Redactor.defaultPatterns))
        XCTAssertEqual(values, ["pnu_abcdefghij", "admin:pa55word!", "pa55word!", "ghp_123456789", "lowercase-name",
                                "wJalrXUtnFEMI", "postgres://u:p@h/db", "sk_live_42424242", "topsecret"])
        // A replaced list: only those names (and the Prefect credentials, always).
        let only = Set(Redactor.secretValues(environment: env, patterns: ["PATH", "TOKEN_*"]))
        XCTAssertEqual(only, ["pnu_abcdefghij", "admin:pa55word!", "pa55word!", "/usr/bin:/bin", "12345678"])
    }

    func testGlobs() {
        XCTAssertTrue(Redactor.globMatches("*_TOKEN", "GITHUB_TOKEN"))
        XCTAssertTrue(Redactor.globMatches("*_TOKEN", "github_token"))
        XCTAssertFalse(Redactor.globMatches("*_TOKEN", "TOKEN"))
        XCTAssertFalse(Redactor.globMatches("*_TOKEN", "GITHUB_TOKENS"))
        XCTAssertTrue(Redactor.globMatches("A?C*", "ABCDEF"))
        XCTAssertTrue(Redactor.globMatches("*A*B*", "xxAyyBzz"))
        XCTAssertFalse(Redactor.globMatches("*A*B*", "xxByyAzz"))
        XCTAssertTrue(Redactor.globMatches("EXACT", "exact"))
    }

    func testWorkerSettingsReadTheRedactedVariables() throws {
        let base = ["PREFECT_API_URL": "http://127.0.0.1:4200/api", "PREFECT_API_KEY": "the-api-key-1", "X_TOKEN": "x-token-value",
                    "CUSTOM": "custom-value"]
        guard case .start(let defaults) = try CommandLineParser.parse(["start", "-p", "p"], environment: base) else { return XCTFail() }
        XCTAssertEqual(defaults.redactedVariablePatterns, Redactor.defaultPatterns)
        XCTAssertEqual(Set(defaults.secretValues), ["the-api-key-1", "x-token-value"])
        var env = base
        env["PREFECT_WORKER_REDACTED_VARS"] = " CUSTOM , ,OTHER_*"
        guard case .start(let replaced) = try CommandLineParser.parse(["start", "-p", "p"], environment: env) else { return XCTFail() }
        XCTAssertEqual(replaced.redactedVariablePatterns, ["CUSTOM", "OTHER_*"])
        XCTAssertEqual(Set(replaced.secretValues), ["the-api-key-1", "custom-value"])
    }

    func testJSONIsRedactedEverywhere() throws {
        let r = Redactor(secrets: ["secret-value"])
        let json = try JSON.decode(#"{"a": "x secret-value y", "secret-value": [1, "secret-value", {"b": true}]}"#)
        XCTAssertEqual(r.redact(json), try JSON.decode(#"{"a": "x [REDACTED] y", "[REDACTED]": [1, "[REDACTED]", {"b": true}]}"#))
    }

    func testKnownSecretsCountRunsThatShareASecret() {
        let known = KnownSecrets(["worker-secret"])
        known.add(["run-secret-1"])
        known.add(["run-secret-1"])
        XCTAssertEqual(known.redact("worker-secret run-secret-1"), "[REDACTED] [REDACTED]")
        known.remove(["run-secret-1"])
        XCTAssertEqual(known.redact("run-secret-1"), "[REDACTED]", "another run still has it")
        known.remove(["run-secret-1"])
        XCTAssertEqual(known.redact("run-secret-1"), "run-secret-1")
        XCTAssertEqual(known.redact("worker-secret"), "[REDACTED]", "the worker's own secrets stay")
    }

    func testWorkerLogLinesAreRedacted() throws {
        // Log writes to stderr; swap in a pipe for the duration.
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&fds), 0)
        let saved = dup(STDERR_FILENO)
        dup2(fds[1], STDERR_FILENO)
        let shipped = FakeAPIBox<[String]>([])
        let log = Logger(output: Logger.Output(redact: { Redactor(secrets: ["log-secret-99"]).redact($0) },
                                               runLine: { _, runID, message in shipped.update { $0.append(runID + ": " + message) } }))
        log.info("the value is log-secret-99, really")
        log.forRun("r-1").info("and log-secret-99 about a run")
        dup2(saved, STDERR_FILENO)
        close(saved)
        close(fds[1])
        let text = try XCTUnwrap(P.readAll(fds[0]))
        XCTAssertTrue(text.contains("the value is [REDACTED], really"), text)
        XCTAssertTrue(text.contains("flow run r-1: and [REDACTED] about a run"), text)
        XCTAssertFalse(text.contains("log-secret-99"), text)
        XCTAssertEqual(shipped.value, ["r-1: and [REDACTED] about a run"], "only the line about the run is shipped, redacted")
    }

    /// Regression: with the static redaction gone, the client's own lines (retries quote the server's error
    /// detail) were written unredacted. The worker makes its client with its redacting logger.
    func testTheClientsLinesGoThroughTheWorkersRedaction() {
        var settings = Settings(apiURL: URL(string: "http://127.0.0.1:9/api")!, pool: "p", workerName: "w")
        settings.environment = ["DEPLOY_TOKEN": "tok-secret-77"]
        settings.apiKey = "pnu_key_secret_88"
        let client = PrefectClient(baseURL: settings.apiURL, apiKey: settings.apiKey, authString: nil)
        XCTAssertEqual(client.log.output.redact("tok-secret-77"), "tok-secret-77", "a bare client has no secrets to hide")
        let context = Worker(settings: settings).context
        XCTAssertEqual(context.client.log.output.redact("retry: detail tok-secret-77 with pnu_key_secret_88"),
                       "retry: detail [REDACTED] with [REDACTED]")
    }

    // MARK: - Job output

    private func pipePair() -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        XCTAssertEqual(pipe(&fds), 0)
        return (fds[0], fds[1])
    }

    private final class Lines: @unchecked Sendable { // appended to from the poller thread, read after finish
        let lock = NSLock()
        var items: [String] = []
        func add(_ s: String) { lock.lock(); items.append(s); lock.unlock() }
    }

    func testOutputIsRedactedBeforeItIsStreamedOrShipped() async throws {
        let source = pipePair()
        let destination = pipePair()
        let shipped = Lines()
        let pump = OutputPump(fd: source.read, prefix: "run | ", destination: destination.write,
                              redactor: Redactor(secrets: ["tok-1234567"]), onLine: { shipped.add($0) })
        // The secret arrives split over two writes, and at the very end without a newline.
        Log.writeAll(source.write, "a tok-123")
        usleep(50_000)
        Log.writeAll(source.write, "4567 b\ntok-1234567")
        close(source.write)
        await pump.finish(timeout: 5)
        close(destination.write)
        XCTAssertEqual(P.readAll(destination.read), "run | a [REDACTED] b\nrun | [REDACTED]\n")
        XCTAssertEqual(shipped.items, ["a [REDACTED] b", "[REDACTED]"])
    }

    func testAnOverLongLineIsNeverCutThroughASecret() async throws {
        let source = pipePair()
        let destination = pipePair()
        let secret = "SECRET-" + String(repeating: "z", count: 30)
        let pump = OutputPump(fd: source.read, prefix: "", destination: destination.write, redactor: Redactor(secrets: [secret]))
        // Secrets placed every 1000 bytes of a 200 KB line: some straddle any fixed cut point.
        var line = ""
        while line.utf8.count < 200_000 { line += String(repeating: "x", count: 1000 - secret.count) + secret }
        let text = line + "\n"
        let writer = Thread {
            Log.writeAll(source.write, text)
            close(source.write)
        }
        writer.start()
        let reader = Task.detached { P.readAll(destination.read, timeout: 10) }
        await pump.finish(timeout: 10)
        close(destination.write)
        let read = await reader.value
        let output = try XCTUnwrap(read)
        XCTAssertGreaterThan(output.split(separator: "\n").count, 1, "the line was cut into pieces")
        XCTAssertFalse(output.contains("SECRET"), "no part of a secret's start may show")
        XCTAssertFalse(output.contains("zzzz"), "no part of a secret's end may show")
        XCTAssertEqual(output.components(separatedBy: "[REDACTED]").count - 1, line.components(separatedBy: secret).count - 1)
    }

    func testARealJobsOutputIsRedacted() async throws {
        let process = try P.shell("echo \"key=$K ok\"; echo \"$K\" >&2", environment: ["PATH": "/usr/bin:/bin", "K": "abcdef-ghijkl"])
        let destination = pipePair()
        let redactor = Redactor(secrets: ["abcdef-ghijkl"])
        let pumps = [
            OutputPump(fd: try XCTUnwrap(process.stdout), prefix: "o ", destination: destination.write, redactor: redactor),
            OutputPump(fd: try XCTUnwrap(process.stderr), prefix: "e ", destination: destination.write, redactor: redactor),
        ]
        _ = await ChildProcesses.shared.waitForExit(process.pid)
        for pump in pumps { await pump.finish(timeout: 5) }
        close(destination.write)
        let lines = try XCTUnwrap(P.readAll(destination.read)).split(separator: "\n").map(String.init)
        XCTAssertEqual(Set(lines), ["o key=[REDACTED] ok", "e [REDACTED]"])
    }
}

import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// Where the end-to-end tests find the real Prefect server, the worker binary, the virtualenv and the
/// fixtures. `scripts/test` exports these; without them the tests skip, unless PREFECT_E2E_REQUIRED=1.
struct E2EEnvironment: Sendable {
    var apiURL: URL
    var worker: String
    var venv: String
    var fixtures: String

    struct Missing: Error, CustomStringConvertible {
        var description: String
    }

    static func load(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> E2EEnvironment {
        let required = env["PREFECT_E2E_REQUIRED"] == "1"
        func value(_ name: String) -> String? {
            guard let v = env[name], !v.isEmpty else { return nil }
            return v
        }
        guard let rawURL = value("PREFECT_E2E_API_URL") else {
            let why = "PREFECT_E2E_API_URL is not set (run the end-to-end tests through scripts/test)"
            if required { throw Missing(description: "\(why), but PREFECT_E2E_REQUIRED=1") }
            throw XCTSkip(why)
        }
        guard let apiURL = URL(string: rawURL) else {
            throw Missing(description: "PREFECT_E2E_API_URL '\(rawURL)' is not a URL")
        }
        var missing: [String] = []
        let worker = value("PREFECT_E2E_WORKER") ?? { missing.append("PREFECT_E2E_WORKER"); return "" }()
        let venv = value("PREFECT_E2E_VENV") ?? { missing.append("PREFECT_E2E_VENV"); return "" }()
        let fixtures = value("PREFECT_E2E_FIXTURES") ?? { missing.append("PREFECT_E2E_FIXTURES"); return "" }()
        if !missing.isEmpty {
            // The server is there, so a partial environment is a broken setup, not a reason to skip.
            throw Missing(description: "PREFECT_E2E_API_URL is set but \(missing.joined(separator: ", ")) is not")
        }
        let fm = FileManager.default
        guard fm.isExecutableFile(atPath: worker) else {
            throw Missing(description: "PREFECT_E2E_WORKER '\(worker)' is not an executable file (swift build first)")
        }
        guard fm.isExecutableFile(atPath: venv + "/bin/python") else {
            throw Missing(description: "PREFECT_E2E_VENV '\(venv)' has no bin/python")
        }
        guard fm.fileExists(atPath: fixtures + "/flows.py") else {
            throw Missing(description: "PREFECT_E2E_FIXTURES '\(fixtures)' has no flows.py")
        }
        return E2EEnvironment(apiURL: apiURL, worker: worker, venv: venv, fixtures: fixtures)
    }
}

enum E2E {
    /// `e2e-<test>-<8 hex>`: unique per call, readable in the server's UI and in worker logs.
    static func uniqueName(_ test: String) -> String {
        let slug = test.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }
        var name = String(slug)
        while name.contains("--") { name = name.replacingOccurrences(of: "--", with: "-") }
        name = name.trimmingCharacters(in: CharacterSet(charactersIn: "-"))
        let hex = UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(8)
        return "e2e-\(name.prefix(40))-\(hex)"
    }

    struct Timeout: Error, CustomStringConvertible {
        var description: String
    }

    /// Polls `probe` every `interval` seconds until it returns a value, for at most `timeout` seconds.
    /// `what` (called on timeout) explains what was awaited and what was last seen.
    static func eventually<T>(timeout: Double, interval: Double = 0.25, _ what: @autoclosure () -> String,
                              _ probe: () async throws -> T?) async throws -> T {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let value = try await probe() { return value }
            if Date() >= deadline {
                throw Timeout(description: "timed out after \(timeout) s waiting for \(what())")
            }
            try await Task.sleep(nanoseconds: UInt64(interval * 1_000_000_000))
        }
    }

    /// A port on 127.0.0.1 that nothing listens on (bound, then closed).
    static func closedLocalPort() -> UInt16 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    static func makeTemporaryDirectory(_ label: String) throws -> String {
        let path = (NSTemporaryDirectory() as NSString).appendingPathComponent(uniqueName(label))
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return (path as NSString).standardizingPath
    }

    static func readText(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Base class: loads the environment (skip or fail), owns the workers and temporary directories of one test,
/// and stops/removes them afterwards, printing the worker logs when the test failed.
class E2ETestCase: XCTestCase, @unchecked Sendable {
    private(set) var env: E2EEnvironment!
    /// The shared server's API; a test with a server of its own (`OwnPrefectServer`) points it there.
    var api: TestAPI!
    private var workers: [WorkerProcess] = []
    private var directories: [String] = []

    override func setUpWithError() throws {
        try super.setUpWithError()
        continueAfterFailure = true
        env = try E2EEnvironment.load()
        api = TestAPI(baseURL: env.apiURL, fixtures: env.fixtures)
    }

    override func tearDownWithError() throws {
        for worker in workers {
            worker.stop()
        }
        let failed = (testRun?.totalFailureCount ?? 0) > 0
        if failed {
            // Keep the whole logs for the post-mortem; print their ends.
            let keep = (NSTemporaryDirectory() as NSString).appendingPathComponent("e2e-failed-worker-logs")
            try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
            for worker in workers {
                let saved = keep + "/\(worker.label.filter { $0.isLetter || $0.isNumber || $0 == "-" })-\(worker.pid).log"
                try? FileManager.default.removeItem(atPath: saved)
                try? FileManager.default.copyItem(atPath: worker.logPath, toPath: saved)
                print("----- worker log (\(worker.label), pid \(worker.pid)), saved as \(saved) -----")
                print(worker.log.suffix(8_000))
                print("----- end of worker log -----")
            }
        }
        for worker in workers { worker.cleanUp() }
        workers.removeAll()
        for directory in directories { try? FileManager.default.removeItem(atPath: directory) }
        directories.removeAll()
        try super.tearDownWithError()
    }

    /// A unique name for this test: `e2e-<test>-<8 hex>`.
    func uniqueName(_ suffix: String = "") -> String {
        // XCTest names look like "-[Class testFoo]" or "Class.testFoo": keep "Foo".
        var test = String(name.split(whereSeparator: { $0 == " " || $0 == "." }).last ?? Substring(name))
        test = test.replacingOccurrences(of: "]", with: "")
        if test.hasPrefix("test") { test.removeFirst(4) }
        return E2E.uniqueName(test + suffix)
    }

    /// A temporary directory removed in tearDown.
    func temporaryDirectory(_ label: String = "dir") throws -> String {
        let path = try E2E.makeTemporaryDirectory(label)
        directories.append(path)
        return path
    }

    /// Starts `prefect-worker start --pool POOL --name NAME ARGS...`; stopped in tearDown. With
    /// `setAPIURL: false` the worker gets no PREFECT_API_URL in its environment (a profile must give it);
    /// `unsetting` drops some of the harness's fast defaults (`WorkerProcess.start`), so the worker's own apply.
    @discardableResult
    func startWorker(pool: String, name: String? = nil, arguments: [String] = [],
                     environment: [String: String] = [:], unsetting: Set<String> = [], apiURL: String? = nil,
                     setAPIURL: Bool = true, launcher: [String] = []) throws -> WorkerProcess {
        var args = ["start", "--pool", pool]
        let workerName = name ?? uniqueName("-worker")
        args += ["--name", workerName]
        args += arguments
        let worker = try WorkerProcess.start(env: env, arguments: args, label: workerName,
                                             apiURL: setAPIURL ? apiURL ?? env.apiURL.absoluteString : nil,
                                             extraEnvironment: environment, unsetting: unsetting, launcher: launcher)
        worker.isServing = true
        workers.append(worker)
        return worker
    }

    /// Runs the worker binary with `arguments` (no `start` added) and waits for it to exit.
    func runWorkerBinary(_ arguments: [String], apiURL: String?, environment: [String: String] = [:],
                         timeout: Double = 20) async throws -> (code: Int32, output: String) {
        let worker = try WorkerProcess.start(env: env, arguments: arguments, label: "cli \(arguments)",
                                             apiURL: apiURL, extraEnvironment: environment)
        workers.append(worker)
        guard let code = await worker.waitForExit(timeout: timeout) else {
            XCTFail("prefect-worker \(arguments) did not exit within \(timeout) s; output: \(worker.log)")
            return (-1, worker.log)
        }
        return (code, worker.log)
    }

    struct WorkerDied: Error, CustomStringConvertible {
        var description: String
    }

    /// Throws when a worker started with `startWorker` has exited: waiting for its runs is then pointless.
    func checkWorkersAlive() throws {
        for worker in workers where worker.isServing && !worker.isRunning {
            let tail = worker.log.split(separator: "\n").suffix(15).joined(separator: "\n")
            throw WorkerDied(description: "worker \(worker.label) (pid \(worker.pid)) exited unexpectedly with \(worker.exitDescription); last log lines:\n\(tail)")
        }
    }

    /// Waits for a run's final state, giving up early if a worker dies.
    func waitForFinalState(_ id: String, timeout: Double) async throws -> JSON {
        try await api.waitForFinalState(id, timeout: timeout, check: checkWorkersAlive)
    }

    /// Waits for the final states of `ids`, giving up early if a worker dies.
    func waitForFinalStates(_ ids: [String], timeout: Double) async throws -> [String: JSON] {
        try await api.waitForFinalStates(ids, timeout: timeout, check: checkWorkersAlive)
    }

    /// A process pool with Prefect's default template, created through the API.
    func makeProcessPool(_ suffix: String = "", template: JSON? = nil) async throws -> String {
        let pool = uniqueName(suffix)
        try await api.createPool(pool, type: "process", baseJobTemplate: template ?? TestAPI.defaultProcessTemplate)
        return pool
    }
}

extension E2E {
    /// A JSON value from JSON text (the JSON type has no array or dictionary literals).
    static func json(_ text: String) throws -> JSON { try JSON.decode(text) }

    /// Whether `text` contains `number` as a whole number (not as part of a longer number or a UUID).
    static func containsNumber(_ text: String, _ number: Int) -> Bool {
        text.range(of: #"(^|[^0-9A-Za-z])\#(number)([^0-9A-Za-z]|$)"#, options: .regularExpression) != nil
    }
}

import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker

/// The libcurl transport under `PrefectClient`, against `FakePrefectAPI`: bounded bodies (in resident memory,
/// not only in what is kept), cancellation of a request in flight, and Prefect's client settings.
final class CurlTransportTests: XCTestCase {
    private var fake: FakePrefectAPI!

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        fake.route("GET", "/api/flow_runs/*") { _, path, _ in
            .json(200, fakeFlowRunJSON(id: String(path.split(separator: "/").last!), stateType: "RUNNING"))
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
    }

    private func client(_ configure: (inout ClientSettings) -> Void = { _ in }) -> PrefectClient {
        var settings = ClientSettings()
        settings.requestTimeout = 10
        configure(&settings)
        return PrefectClient(baseURL: fake.apiURL, apiKey: nil, authString: nil, settings: settings)
    }

    /// This process's resident set, in bytes (as `/metrics` reads it).
    private func residentBytes() throws -> Int {
        let bytes = Metrics.residentBytes()  // 0 when /proc cannot tell
        return try XCTUnwrap(bytes > 0 ? bytes : nil, "cannot read this process's resident set")
    }

    // MARK: - Bounded bodies

    func testAnnounced256MBBodyIsRefusedBeforeItIsRead() async throws {
        let size = 256 << 20
        fake.inject([.hugeBody(size)], method: "GET", path: "/api/flow_runs/*")
        let before = try residentBytes()
        do {
            _ = try await client().readFlowRun("r-huge", policy: .once)
            XCTFail("expected the body to be refused")
        } catch let error as APIError {
            XCTAssertTrue(error.description.contains("too large: \(size) bytes"), error.description)
            XCTAssertTrue(error.description.contains("/api/flow_runs/r-huge"), error.description)
        }
        let grown = try residentBytes() - before
        XCTAssertLessThan(grown, 4 << 20, "resident memory grew by \(grown >> 20) MiB for a refused body")
        // The fake writes into socket buffers until the client hangs up: far less than the body.
        try await Task.sleep(nanoseconds: 200_000_000)
        XCTAssertLessThan(fake.hugeBodyBytesSent, 64 << 20, "the transfer was not cut short")
    }

    func testUnannounced256MBBodyOfOneObjectIsCutAtAFewMB() async throws {
        let size = 256 << 20
        fake.inject([.hugeChunkedBody(size)], method: "GET", path: "/api/flow_runs/*")
        let peak = PeakResidentSampler()
        do {
            _ = try await client().readFlowRun("r-chunked", policy: .once)
            XCTFail("expected the body to be refused")
        } catch let error as APIError {
            XCTAssertTrue(error.description.contains("body too large"), error.description)
            XCTAssertTrue(error.description.contains("over the \(PrefectClient.maxObjectResponseBytes)-byte limit"), error.description)
        }
        let grown = peak.stop()
        // A run is one object: cut at 4 MiB, so resident memory grows by a few MB at most, even at its peak
        // (the bound leaves room for the fake server's own buffers, in this same process: about 13 MiB in all
        // on a loaded machine; before the per-object limit the peak was over 40 MiB).
        XCTAssertLessThan(grown, 20 << 20, "resident memory grew by \(grown >> 20) MiB at its peak")
        try await Task.sleep(nanoseconds: 200_000_000)
        XCTAssertLessThan(fake.hugeBodyBytesSent, PrefectClient.maxObjectResponseBytes + (32 << 20), "the transfer was not cut short")
    }

    func testUnannouncedHugeBodyOfAListIsCutAtTheListLimit() async throws {
        fake.inject([.hugeChunkedBody(256 << 20)], method: "POST", path: "/api/flow_runs/filter")
        let before = try residentBytes()
        do {
            _ = try await client().filterFlowRuns(.object([:]), policy: .once)
            XCTFail("expected the body to be refused")
        } catch let error as APIError {
            XCTAssertTrue(error.description.contains("over the \(PrefectClient.maxResponseBytes)-byte limit"), error.description)
        }
        // What was kept (up to the 32 MiB limit of lists) is freed; growth is bounded by the limit, not by the body.
        let grown = try residentBytes() - before
        XCTAssertLessThan(grown, PrefectClient.maxResponseBytes + (8 << 20), "resident memory grew by \(grown >> 20) MiB")
    }

    func testTheLimitOfEachRequest() {
        XCTAssertEqual(PrefectClient.responseLimit(path: "/work_pools/p/get_scheduled_flow_runs"), PrefectClient.maxResponseBytes)
        XCTAssertEqual(PrefectClient.responseLimit(path: "/flow_runs/filter"), PrefectClient.maxResponseBytes)
        XCTAssertEqual(PrefectClient.responseLimit(path: "/flow_run_states/?flow_run_id=x"), PrefectClient.maxResponseBytes)
        XCTAssertEqual(PrefectClient.responseLimit(path: "/flow_runs/x"), PrefectClient.maxObjectResponseBytes)
        XCTAssertEqual(PrefectClient.responseLimit(path: "/flow_runs/x/set_state"), PrefectClient.maxObjectResponseBytes)
        XCTAssertEqual(PrefectClient.responseLimit(path: "/deployments/d"), PrefectClient.maxObjectResponseBytes)
    }

    func testBodyJustUnderTheLimitIsRead() async throws {
        let body = String(repeating: " ", count: 1 << 20) + fakeFlowRunJSON(id: "r-big", stateType: "RUNNING")
        fake.route("GET", "/api/flow_runs/r-big") { _, _, _ in .json(200, body) }
        let run = try await client().readFlowRun("r-big", policy: .once)
        XCTAssertEqual(run.id, "r-big")
    }

    // MARK: - Cancellation

    func testCancellingATaskEndsItsRequestInFlight() async throws {
        fake.inject([.delay(30)], method: "GET", path: "/api/flow_runs/*")
        let client = client()
        let started = Date()
        let task = Task { try await client.readFlowRun("r-slow", policy: .once) }
        for _ in 0..<100 where fake.requests.isEmpty { try await Task.sleep(nanoseconds: 50_000_000) }
        XCTAssertEqual(fake.requests.count, 1, "the request should be in flight")
        task.cancel()
        do {
            _ = try await task.value
            XCTFail("expected CancellationError")
        } catch {
            XCTAssertTrue(error is CancellationError, "\(error)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 8, "the cancelled request (30 s) was waited for")
        // The client still works afterwards.
        let run = try await client.readFlowRun("r-after", policy: .once)
        XCTAssertEqual(run.id, "r-after")
    }

    func testTaskCancelledBeforeItsRequestStartsSendsNothing() async throws {
        let client = client()
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await client.readFlowRun("r-never", policy: .once)
        }
        do {
            _ = try await task.value
            XCTFail("expected CancellationError")
        } catch {
            XCTAssertTrue(error is CancellationError, "\(error)")
        }
        try await Task.sleep(nanoseconds: 100_000_000)
        XCTAssertTrue(fake.requests.isEmpty, "\(fake.requests.map(\.path))")
    }

    /// Transports whose loop thread is running.
    private func transportThreads() -> Int { CurlTransport.runningLoops.load(ordering: .relaxed) }

    /// Regression: a transport's loop thread held it forever, so every client leaked a thread and a multi handle.
    func testAReleasedClientEndsItsThread() async throws {
        let before = transportThreads()
        for i in 0..<10 {
            let run = try await client().readFlowRun("r-\(i)", policy: .once)
            XCTAssertEqual(run.id, "r-\(i)")
        }
        for _ in 0..<100 where transportThreads() > before { try await Task.sleep(nanoseconds: 20_000_000) }
        XCTAssertLessThanOrEqual(transportThreads(), before, "threads of released clients are still running")
    }

    // MARK: - Prefect's client settings

    func testMaxRetriesSetsTheStandardPolicy() async throws {
        fake.inject([.unavailable(retryAfter: "0"), .unavailable(retryAfter: "0"), .unavailable(retryAfter: "0")], method: "GET", path: "/api/flow_runs/*")
        do {
            _ = try await client { $0.maxRetries = 1 }.readFlowRun("r1")
            XCTFail("expected the call to fail after 2 attempts")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 503)
        }
        XCTAssertEqual(fake.requests.count, 2)
    }

    func testZeroRetriesMeansOneAttempt() async throws {
        fake.inject([.unavailable(retryAfter: "0")], method: "GET", path: "/api/flow_runs/*")
        do {
            _ = try await client { $0.maxRetries = 0 }.readFlowRun("r1")
            XCTFail("expected the call to fail")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 503)
        }
        XCTAssertEqual(fake.requests.count, 1)
    }

    func testExtraRetryCodesAreRetried() async throws {
        fake.inject([.status(404, #"{"detail":"not yet"}"#, headers: ["Retry-After": "0"])], method: "GET", path: "/api/flow_runs/*")
        let run = try await client { $0.retryExtraCodes = [404] }.readFlowRun("r1")
        XCTAssertEqual(run.id, "r1")
        XCTAssertEqual(fake.requests.count, 2)

        fake.inject([.status(404, #"{"detail":"gone"}"#)], method: "GET", path: "/api/flow_runs/*")
        do {
            _ = try await client().readFlowRun("r2")
            XCTFail("404 is not retried without PREFECT_CLIENT_RETRY_EXTRA_CODES")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 404)
        }
        XCTAssertEqual(fake.requests.count, 3)
    }

    func testCustomHeadersAreSentButCannotReplaceProtectedOnes() async throws {
        let headers = try ClientSettings.customHeaders(
            #"{"X-Team": "data", "User-Agent": "evil", "authorization": "Bearer stolen", "X-PREFECT-API-VERSION": "0.1"}"#)
        XCTAssertEqual(headers, ["X-Team": "data"])
        var settings = ClientSettings()
        settings.customHeaders = headers
        _ = try await PrefectClient(baseURL: fake.apiURL, apiKey: "pnu_key", authString: nil, settings: settings).readFlowRun("r1", policy: .once)
        let request = try XCTUnwrap(fake.requests.first)
        XCTAssertEqual(request.header("X-Team"), "data")
        XCTAssertEqual(request.header("Authorization"), "Bearer pnu_key")
        XCTAssertEqual(request.header("X-PREFECT-API-VERSION"), PrefectClient.apiVersion)
        XCTAssertTrue(request.header("User-Agent")?.hasPrefix("prefect-worker/") == true)
        XCTAssertNil(request.header("Expect"), "no 100-continue round trip")
    }

    func testHeadersSetAtRunTimeAreSentWithLaterRequests() async throws {
        let client = client()
        client.setHeader("X-Prefect-Worker-Id", "w-123")
        _ = try await client.readFlowRun("r1", policy: .once)
        client.setHeader("X-Prefect-Worker-Id", nil)
        _ = try await client.readFlowRun("r2", policy: .once)
        XCTAssertEqual(fake.requests.map { $0.header("X-Prefect-Worker-Id") }, ["w-123", nil])
    }

    func testA503ThatSucceedsOnRetryIsNotAWarning() async throws {
        Log.configure(level: .info, format: .text)
        fake.inject([.unavailable(retryAfter: "0"), .unavailable(retryAfter: "0")], method: "GET", path: "/api/flow_runs/*")
        let client = client()
        let output = try await capturingStderr {
            let run = try await client.readFlowRun("r1")
            XCTAssertEqual(run.id, "r1")
        }
        XCTAssertEqual(fake.requests.count, 3)
        XCTAssertFalse(output.contains("WARNING"), output)
        XCTAssertEqual(client.failingSeconds, 0, "a success ends the failure")
    }

    func testRetriesBecomeWarningsSayingWhatHappensNextOnceTheAPIHasFailedForAWhile() async throws {
        Log.configure(level: .debug, format: .text)
        defer { Log.configure(level: .info, format: .text) }
        // The server keeps answering 503; the client retries every 0.2 s (Retry-After) for about 1.2 s, and
        // calls it a WARNING once the API has failed for more than 0.5 s (10 s in the worker).
        fake.outage = .unavailable(retryAfter: "0.2")
        var settings = ClientSettings()
        settings.requestTimeout = 10
        settings.maxRetries = 6
        let client = PrefectClient(baseURL: fake.apiURL, apiKey: nil, authString: nil, settings: settings, warnAfterFailingSeconds: 0.5)
        let output = try await capturingStderr {
            do {
                _ = try await client.readFlowRun("r-down")
                XCTFail("expected the call to fail after its retries")
            } catch let error as APIError {
                XCTAssertEqual(error.status, 503, error.description)
            }
        }
        XCTAssertEqual(fake.requests.count, 7)
        let retries = output.split(separator: "\n").filter { $0.contains("reading flow run r-down failed") }
        XCTAssertEqual(retries.count, 6, output)
        let levels = retries.map { $0.contains(" WARNING ") ? "WARNING" : $0.contains(" DEBUG ") ? "DEBUG" : "?" }
        // DEBUG while the failure is young, then WARNING for every later retry.
        let firstWarning = try XCTUnwrap(levels.firstIndex(of: "WARNING"), "no WARNING after 1 s of failures: \(output)")
        XCTAssertGreaterThan(firstWarning, 0, "a WARNING on the first retry: \(output)")
        XCTAssertEqual(Set(levels[..<firstWarning]), ["DEBUG"], output)
        XCTAssertEqual(Set(levels[firstWarning...]), ["WARNING"], output)
        let warning = try XCTUnwrap(retries.first { $0.contains(" WARNING ") })
        XCTAssertTrue(warning.contains("retrying in 0.2 s"), "a WARNING must say what happens next: \(warning)")
        XCTAssertTrue(warning.contains("503"), String(warning))
        XCTAssertGreaterThan(client.failingSeconds, 0.5)
    }

    func testAPIFailuresAreQuietForTenSecondsByDefault() {
        XCTAssertEqual(PrefectClient.quietFailureSeconds, 10)
        XCTAssertEqual(client().warnAfterFailingSeconds, 10)
        XCTAssertEqual(PrefectClient(baseURL: fake.apiURL, apiKey: nil, authString: nil).warnAfterFailingSeconds, 10)
        XCTAssertFalse(client().hasBeenFailingLong)
    }

    func testRequestTimeoutNamesTheSetting() async throws {
        fake.inject([.delay(5)], method: "GET", path: "/api/flow_runs/*")
        let started = Date()
        do {
            _ = try await client { $0.requestTimeout = 0.5 }.readFlowRun("r-slow", policy: .once)
            XCTFail("expected a timeout")
        } catch let error as APIError {
            XCTAssertTrue(error.description.contains("timed out after 0.5 s (PREFECT_API_REQUEST_TIMEOUT)"), error.description)
        }
        XCTAssertLessThan(Date().timeIntervalSince(started), 2.5)
    }

    func testRefusedConnectionIsARetryableTransportError() async throws {
        let port = fake.port
        fake.stop()
        let client = PrefectClient(baseURL: URL(string: "http://127.0.0.1:\(port)/api")!, apiKey: nil, authString: nil, settings: ClientSettings())
        do {
            _ = try await client.readFlowRun("r1", policy: .once)
            XCTFail("expected a transport error")
        } catch let error as APIError {
            guard case .transport(_, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(reason.hasPrefix("connection refused"), reason)
            XCTAssertTrue(error.isRetryable)
        }
    }
}

/// Samples this process's resident set every half millisecond on a thread of its own, so a test sees the
/// peak growth while a transfer runs, not only what is left after it (freed buffers go back to the system).
private final class PeakResidentSampler: @unchecked Sendable {
    private let lock = NSLock()
    private var running = true
    private var peak = 0
    private let baseline: Int
    private let done = DispatchSemaphore(value: 0)

    init() {
        baseline = Metrics.residentBytes()
        Thread.detachNewThread { [self] in
            while lock.withLock({ running }) {
                let now = Metrics.residentBytes()
                lock.withLock { peak = max(peak, now) }
                usleep(500)
            }
            done.signal()
        }
    }

    /// Stops sampling; the peak growth over the resident set at the start, in bytes.
    func stop() -> Int {
        lock.withLock { running = false }
        done.wait()
        return lock.withLock { max(0, peak - baseline) }
    }
}

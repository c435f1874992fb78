import Foundation
import XCTest
@testable import PrefectWorker

/// `PrefectClient` against `FakePrefectAPI`: headers, retries, timeouts, error descriptions, decoding.
final class PrefectClientTests: XCTestCase {
    private var fake: FakePrefectAPI!
    /// Fast retries: 50 ms, 100 ms, 200 ms, ... (±20 %).
    private func fast(_ attempts: Int) -> RetryPolicy { RetryPolicy(maxAttempts: attempts, baseDelay: 0.05, maxDelay: 0.2) }

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

    private func gaps(_ requests: [FakePrefectAPI.Request]) -> [Double] {
        zip(requests.dropFirst(), requests).map { $0.time.timeIntervalSince($1.time) }
    }

    // MARK: - Headers

    func testHeadersAuthStringWinsOverAPIKey() async throws {
        _ = try await fake.client(apiKey: "pnu_secret", authString: "admin:pass").readFlowRun("r1", policy: .once)
        let request = try XCTUnwrap(fake.requests.first)
        XCTAssertEqual(request.path, "/api/flow_runs/r1")
        XCTAssertEqual(request.header("Authorization"), "Basic " + Data("admin:pass".utf8).base64EncodedString())
        XCTAssertEqual(request.header("X-PREFECT-API-VERSION"), "0.8.4")
        let agent = try XCTUnwrap(request.header("User-Agent"))
        XCTAssertNil(agent.range(of: #"^prefect/\d"#, options: .regularExpression),
                     "a prefect/x.y.z User-Agent changes the server's deployment-concurrency behaviour: \(agent)")
        XCTAssertFalse(agent.isEmpty)
    }

    func testHeadersBearerAPIKeyAndNoAuth() async throws {
        _ = try await fake.client(apiKey: "pnu_secret").readFlowRun("r1", policy: .once)
        _ = try await fake.client(apiKey: "pnu_secret", authString: "").readFlowRun("r2", policy: .once)
        _ = try await fake.client().readFlowRun("r3", policy: .once)
        let requests = fake.requests
        XCTAssertEqual(requests.count, 3)
        XCTAssertEqual(requests[0].header("Authorization"), "Bearer pnu_secret")
        XCTAssertEqual(requests[1].header("Authorization"), "Bearer pnu_secret", "an empty auth string is no auth string")
        XCTAssertNil(requests[2].header("Authorization"))
        for request in requests {
            XCTAssertEqual(request.header("X-PREFECT-API-VERSION"), "0.8.4")
            XCTAssertNil(request.header("User-Agent")?.range(of: #"^prefect/\d"#, options: .regularExpression))
        }
    }

    func testPostSendsJSONBody() async throws {
        fake.route("POST", "/api/work_pools/pool-a/workers/heartbeat") { _, _, _ in .noContent }
        try await fake.client().heartbeat(pool: "pool-a", worker: "w1", intervalSeconds: 30, policy: .once)
        let request = try XCTUnwrap(fake.requests.first)
        XCTAssertEqual(request.header("Content-Type"), "application/json")
        XCTAssertEqual(request.json, .object(["name": .string("w1"), "heartbeat_interval_seconds": .int(30)]))
    }

    // MARK: - Retries

    func testRetriesTransientStatusesUntilSuccess() async throws {
        fake.inject([
            .unavailable(),
            .status(500, #"{"exception_message":"Internal Server Error"}"#),
            .status(502, "<html>bad gateway</html>"),
            .status(429, #"{"detail":"slow down"}"#),
            .status(408, ""),
        ], method: "GET", path: "/api/flow_runs/*")
        let client = fake.client()
        let run = try await client.readFlowRun("r1", policy: fast(6))
        XCTAssertEqual(run.id, "r1")
        let requests = fake.requests
        XCTAssertEqual(requests.count, 6)
        XCTAssertEqual(fake.unusedFaults, 0)
        // Backoff 0.05, 0.1, 0.2, 0.2, 0.2 s with jitter ±20 %: never less than 80 % of that.
        let minimum = [0.04, 0.08, 0.16, 0.16, 0.16]
        for (gap, least) in zip(gaps(requests), minimum) {
            XCTAssertGreaterThanOrEqual(gap, least - 0.005, "retry gaps \(gaps(requests))")
        }
        XCTAssertNotNil(client.lastSuccessfulRequest)
    }

    func testRetriesAfterConnectionResetAndHangUp() async throws {
        fake.inject([.reset, .hangUp, .truncatedTransfer], method: "GET", path: "/api/flow_runs/*")
        let run = try await fake.client().readFlowRun("r1", policy: fast(4))
        XCTAssertEqual(run.id, "r1")
        XCTAssertEqual(fake.requests.count, 4)
    }

    func testHonoursRetryAfter() async throws {
        fake.inject([.status(429, #"{"detail":"Too many requests"}"#, headers: ["Retry-After": "1"])],
                    method: "GET", path: "/api/flow_runs/*")
        // The backoff alone would wait about 0.05 s; the cap on Retry-After (4 × maxDelay = 2 s) is above 1 s.
        let run = try await fake.client().readFlowRun("r1", policy: RetryPolicy(maxAttempts: 3, baseDelay: 0.05, maxDelay: 0.5))
        XCTAssertEqual(run.id, "r1")
        let requests = fake.requests
        XCTAssertEqual(requests.count, 2)
        XCTAssertGreaterThanOrEqual(requests[1].time.timeIntervalSince(requests[0].time), 1.0,
                                    "the retry came before the server's Retry-After")
    }

    func testRetryAfterZeroRetriesAtOnce() async throws {
        // Retry-After takes the place of the backoff (2 s for attempt 2 with this policy).
        fake.inject([.unavailable(retryAfter: "0"), .unavailable(retryAfter: "0")], method: "GET", path: "/api/flow_runs/*")
        let started = Date()
        _ = try await fake.client().readFlowRun("r1", policy: RetryPolicy(maxAttempts: 3, baseDelay: 2, maxDelay: 4))
        XCTAssertEqual(fake.requests.count, 3)
        XCTAssertLessThan(Date().timeIntervalSince(started), 1.5)
    }

    func testGivesUpAfterMaxAttemptsNamingEndpointAndExceptionMessage() async throws {
        fake.outage = .unavailable()
        do {
            _ = try await fake.client().readFlowRun("r-missing", policy: fast(3))
            XCTFail("expected an error")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 503)
            XCTAssertTrue(error.isRetryable)
            let text = error.description
            XCTAssertTrue(text.contains("GET \(fake.url)/api/flow_runs/r-missing"), text)
            XCTAssertTrue(text.contains("Service Unavailable"), text)
            XCTAssertTrue(text.contains("503"), text)
        }
        XCTAssertEqual(fake.requests.count, 3)
    }

    func testGivesUpNamingTheServersDetail() async throws {
        fake.outage = .status(500, #"{"detail":"database exploded"}"#)
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, _ in .json(201, #"{"status":"ACCEPT"}"#) }
        do {
            _ = try await fake.client().setState("r9", StateProposal(.running), policy: fast(2))
            XCTFail("expected an error")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 500)
            XCTAssertTrue(error.description.contains("POST \(fake.url)/api/flow_runs/r9/set_state"), error.description)
            XCTAssertTrue(error.description.contains("database exploded"), error.description)
        }
        XCTAssertEqual(fake.requests.count, 2)
    }

    func testDoesNotRetry404() async throws {
        fake.outage = .status(404, #"{"detail":"Flow run not found"}"#)
        do {
            _ = try await fake.client().readFlowRun("r404", policy: fast(5))
            XCTFail("expected an error")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 404)
            XCTAssertFalse(error.isRetryable)
            XCTAssertTrue(error.description.contains("/api/flow_runs/r404"), error.description)
            XCTAssertTrue(error.description.contains("Flow run not found"), error.description)
        }
        XCTAssertEqual(fake.requests.count, 1)
    }

    func testNotFoundWorkPoolIsNilAfterOneRequest() async throws {
        fake.route("GET", "/api/work_pools/*") { _, _, _ in .json(404, #"{"detail":"Work pool \"x\" not found."}"#) }
        let pool = try await fake.client().readWorkPool("x", policy: fast(5))
        XCTAssertNil(pool)
        XCTAssertEqual(fake.requests.count, 1)
    }

    func testDoesNotRetry422() async throws {
        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, _ in
            .json(422, #"{"exception_message":"Invalid request received.","exception_detail":[{"loc":["body","state","type"]}]}"#)
        }
        do {
            _ = try await fake.client().setState("r1", StateProposal(.unknown("BOGUS")), policy: fast(5))
            XCTFail("expected an error")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 422)
            XCTAssertTrue(error.description.contains("Invalid request received."), error.description)
        }
        XCTAssertEqual(fake.requests.count, 1)
    }

    // MARK: - Timeouts

    func testTimesOutASlowAnswerAndRetries() async throws {
        fake.inject([.delay(4)], method: "GET", path: "/api/flow_runs/*")
        let started = Date()
        let run = try await fake.client(requestTimeout: 1).readFlowRun("r-slow", policy: fast(3))
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertEqual(run.id, "r-slow")
        XCTAssertEqual(fake.requests.count, 2)
        XCTAssertGreaterThanOrEqual(elapsed, 0.9)
        XCTAssertLessThan(elapsed, 3.5, "the slow answer was waited for instead of timing out")
    }

    func testTimeoutOnLastAttemptIsATransportError() async throws {
        fake.inject([.delay(4)], method: "GET", path: "/api/flow_runs/*")
        do {
            _ = try await fake.client(requestTimeout: 1).readFlowRun("r-slow", policy: .once)
            XCTFail("expected a timeout")
        } catch let error as APIError {
            guard case .transport(let endpoint, let reason) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(endpoint.contains("/api/flow_runs/r-slow"), endpoint)
            XCTAssertEqual(reason, "timed out after 1 s (PREFECT_API_REQUEST_TIMEOUT)")
        }
        XCTAssertEqual(fake.requests.count, 1)
    }

    // MARK: - Bad bodies

    func testGarbageBodiesAreBadResponsesNamingTheEndpoint() async throws {
        for fault in [FakePrefectAPI.Fault.garbage, .truncatedJSON, .html, .status(200, "[]"), .status(200, "")] {
            fake.inject([fault], method: "GET", path: "/api/flow_runs/*")
            do {
                let run = try await fake.client().readFlowRun("r-bad", policy: fast(2))
                XCTFail("\(fault): decoded \(run)")
            } catch let error as APIError {
                guard case .badResponse(let endpoint, _) = error else { XCTFail("\(fault): \(error)"); continue }
                XCTAssertTrue(endpoint.contains("/flow_runs/r-bad"), endpoint)
                XCTAssertTrue(error.description.contains("GET /flow_runs/r-bad"), error.description)
            }
        }
    }

    func testHugeBodyIsRefused() async throws {
        fake.inject([.hugeBody(PrefectClient.maxResponseBytes + 1)], method: "GET", path: "/api/flow_runs/*")
        do {
            _ = try await fake.client().readFlowRun("r-huge", policy: .once)
            XCTFail("expected an error")
        } catch let error as APIError {
            guard case .badResponse = error else { return XCTFail("\(error)") }
            XCTAssertTrue(error.description.contains("too large"), error.description)
            XCTAssertTrue(error.description.contains("/api/flow_runs/r-huge"), error.description)
        }
    }


    // MARK: - Decoding

    func testScheduledFlowRunsSkipsAMalformedEntry() async throws {
        fake.route("POST", "/api/work_pools/*/get_scheduled_flow_runs") { _, _, _ in
            .json(200, """
            [{"work_pool_id": "p", "work_queue_id": "q", "flow_run": \(fakeFlowRunJSON(id: "run-1", stateType: "SCHEDULED"))},
             {"work_pool_id": "p", "work_queue_id": "q", "flow_run": {"name": "no id here", "state": null}},
             {"work_pool_id": "p", "work_queue_id": "q", "flow_run": {"id": "run-3", "state": null, "state_type": "SCHEDULED",
              "state_name": "Scheduled", "next_scheduled_start_time": "2026-11-23T08:53:40.364141Z"}},
             {"work_pool_id": "p", "work_queue_id": "q", "flow_run": "not an object"}]
            """)
        }
        let before = Date()
        let runs = try await fake.client().scheduledFlowRuns(pool: "pool-a", queues: ["default", "q2"], before: before,
                                                             limit: 7, policy: .once)
        XCTAssertEqual(runs.map(\.id), ["run-1", "run-3"])
        XCTAssertEqual(runs[1].currentStateType, .scheduled)
        XCTAssertNotNil(runs[1].scheduledStart)
        let body = try XCTUnwrap(fake.requests.first?.json)
        XCTAssertEqual(body["work_queue_names"], .array([.string("default"), .string("q2")]))
        XCTAssertEqual(body["limit"], .int(7))
        XCTAssertNotNil(body["scheduled_before"]?.stringValue.flatMap(Timestamp.parse))
    }

    func testUnknownStateTypesDecodeAsUnknown() async throws {
        fake.route("GET", "/api/flow_runs/*") { _, _, _ in
            .json(200, fakeFlowRunJSON(id: "r1", stateType: "HIBERNATING", stateName: "Hibernating"))
        }
        let run = try await fake.client().readFlowRun("r1", policy: .once)
        XCTAssertEqual(run.state?.type, .unknown("HIBERNATING"))
        XCTAssertEqual(run.stateType, .unknown("HIBERNATING"))
        XCTAssertEqual(run.currentStateType?.rawValue, "HIBERNATING")
        XCTAssertEqual(run.currentStateType?.isTerminal, false)

        fake.route("POST", "/api/flow_runs/*/set_state") { _, _, _ in
            .json(200, #"{"status":"REJECT","details":{"type":"reject_details","reason":"no"},"state":{"type":"FROZEN","name":"Frozen"}}"#)
        }
        let result = try await fake.client().setState("r1", StateProposal(.running), policy: .once)
        XCTAssertEqual(result.status, .reject)
        XCTAssertEqual(result.state?.type, .unknown("FROZEN"))
    }

    // MARK: - set_state idempotency

    func testSetStateRetriedAfterALostAnswerReusesTheTransitionID() async throws {
        fake.inject([.reset], method: "POST", path: "/api/flow_runs/*/set_state")
        fake.route("POST", "/api/flow_runs/*/set_state") { _, path, _ in
            let id = path.split(separator: "/").dropLast().last!
            return .json(200, """
            {"status": "REJECT", "details": {"type": "reject_details", "reason": "This run has already made this state transition."},
             "state": {"id": "s-2", "type": "PENDING", "name": "Pending", "message": null,
                       "state_details": {"flow_run_id": "\(id)", "transition_id": "whatever"}}}
            """)
        }
        let proposal = StateProposal(.pending)
        let result = try await fake.client().setState("run-7", proposal, policy: fast(3))
        XCTAssertEqual(result.status, .reject)
        XCTAssertEqual(result.state?.type, .pending)
        XCTAssertEqual(result.details?.reason, "This run has already made this state transition.")

        let attempts = fake.requests("POST", "/api/flow_runs/run-7/set_state")
        XCTAssertEqual(attempts.count, 2)
        let ids = attempts.map { $0.json?["state"]?["state_details"]?["transition_id"]?.stringValue }
        XCTAssertEqual(ids, [proposal.transitionID, proposal.transitionID])
        XCTAssertEqual(attempts[0].json, attempts[1].json, "a retry must send the same proposal")
        XCTAssertEqual(attempts[0].json?["state"]?["type"], .string("PENDING"))
        XCTAssertEqual(attempts[0].json?["force"], .bool(false))
    }

    func testDistinctProposalsGetDistinctTransitionIDs() {
        let a = StateProposal(.pending), b = StateProposal(.pending)
        XCTAssertNotEqual(a.transitionID, b.transitionID)
        XCTAssertNotNil(UUID(uuidString: a.transitionID))
    }

    // MARK: - Concurrency

    func testConcurrentRequests() async throws {
        let client = fake.client()
        let ids = try await withThrowingTaskGroup(of: String.self) { group in
            for i in 0..<16 { group.addTask { try await client.readFlowRun("r\(i)", policy: .once).id } }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        XCTAssertEqual(Set(ids), Set((0..<16).map { "r\($0)" }))
        XCTAssertEqual(fake.requests.count, 16)
    }

    // MARK: - Redaction

    func testRedactedURLHidesCredentialsAndQueryValues() throws {
        let url = try XCTUnwrap(URL(string: "https://alice:s3cr3t@api.example.com:8443/api/flow_runs?token=abc123&key=k%20v"))
        let text = redactedURL(url)
        for secret in ["alice", "s3cr3t", "abc123", "k%20v", "k v"] {
            XCTAssertFalse(text.contains(secret), "\(secret) visible in \(text)")
        }
        XCTAssertTrue(text.contains("api.example.com:8443/api/flow_runs"), text)
        XCTAssertTrue(text.contains("token="), text)
        XCTAssertTrue(text.contains("key="), text)

        let passwordOnly = redactedURL(try XCTUnwrap(URL(string: "http://:hunter2@host/x")))
        XCTAssertFalse(passwordOnly.contains("hunter2"), passwordOnly)
        let userOnly = redactedURL(try XCTUnwrap(URL(string: "http://pnu_token@host/x")))
        XCTAssertFalse(userOnly.contains("pnu_token"), userOnly)
        XCTAssertEqual(redactedURL(try XCTUnwrap(URL(string: "http://127.0.0.1:4200/api/health"))), "http://127.0.0.1:4200/api/health")
    }

    func testErrorsDoNotShowCredentialsFromTheBaseURL() async throws {
        let base = try XCTUnwrap(URL(string: "http://bob:pa55word@127.0.0.1:\(fake.port)/api"))
        fake.outage = .status(404, #"{"detail":"Flow run not found"}"#)
        do {
            _ = try await PrefectClient(baseURL: base, apiKey: nil, authString: nil, requestTimeout: 5).readFlowRun("r1", policy: .once)
            XCTFail("expected an error")
        } catch let error as APIError {
            XCTAssertEqual(error.status, 404)
            XCTAssertFalse(error.description.contains("pa55word"), error.description)
            XCTAssertFalse(error.description.contains("bob"), error.description)
            XCTAssertTrue(error.description.contains("/api/flow_runs/r1"), error.description)
        }
    }
}

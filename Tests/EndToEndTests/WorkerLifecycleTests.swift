import Foundation
@testable import PrefectWorker
import XCTest

/// Start-up: the pool, the heartbeat, and what the worker does with bad configuration or no server.
final class WorkerLifecycleTests: E2ETestCase, @unchecked Sendable {
    func testCreatesMissingProcessPoolAndShowsOnline() async throws {
        let pool = uniqueName()
        let before = try await api.readPool(pool)
        XCTAssertNil(before, "the pool should not exist yet")
        let workerName = uniqueName("-worker")
        let worker = try startWorker(pool: pool, name: workerName)

        let created = try await E2E.eventually(timeout: 20, "the worker to create pool \(pool)") {
            try await api.readPool(pool)
        }
        XCTAssertEqual(created["type"]?.asString, "process")
        // The template may be installed by a PATCH right after the create: wait for it.
        let template = try await E2E.eventually(timeout: 10, "the default base job template on \(pool)") { () -> JSON? in
            let template = try await api.readPool(pool)?["base_job_template"]
            return template?["job_configuration"] == nil ? nil : template
        }
        let configuration = template["job_configuration"]
        XCTAssertEqual(configuration?["command"]?.asString, "{{ command }}")
        XCTAssertEqual(configuration?["env"]?.asString, "{{ env }}")
        XCTAssertEqual(configuration?["working_dir"]?.asString, "{{ working_dir }}")
        XCTAssertEqual(configuration?["stream_output"]?.asString, "{{ stream_output }}")
        XCTAssertEqual(template["variables"]?["properties"]?["stream_output"]?["default"], .bool(true))

        let online = try await E2E.eventually(timeout: 15, "worker \(workerName) to be ONLINE in \(pool)") { () -> JSON? in
            try await api.workers(pool: pool).first { $0["name"]?.asString == workerName && $0["status"]?.asString == "ONLINE" }
        }
        XCTAssertNotNil(online["last_heartbeat_time"]?.asString)
        XCTAssertNotNil(online["heartbeat_interval_seconds"]?.asInt)
        // A heartbeat also makes a NOT_READY pool READY.
        let ready = try? await E2E.eventually(timeout: 10, "pool \(pool) to be READY") {
            try await api.readPool(pool)?["status"]?.asString == "READY" ? true : nil
        }
        if ready == nil {
            let status = try await api.readPool(pool)?["status"]?.asString
            XCTFail("pool \(pool) is not READY after the worker's heartbeat: \(String(describing: status))")
        }
        XCTAssertTrue(worker.isRunning)
    }

    func testPoolOfAnotherTypeMakesTheWorkerExit1() async throws {
        let pool = uniqueName()
        try await api.createPool(pool, type: "docker")
        let worker = try startWorker(pool: pool)
        let code = await worker.waitForExit(timeout: 20)
        XCTAssertEqual(code, 1, "exit code for a 'docker' pool; log: \(worker.log)")
        let log = worker.log
        XCTAssertTrue(log.contains(pool) && log.contains("docker") && log.contains("process"),
                      "the error should name the pool, its type and the supported type: \(log)")
        // The worker must not have turned the pool into something else.
        let after = try await api.readPool(pool)
        XCTAssertEqual(after?["type"]?.asString, "docker")
    }

    func testBadFlagsExit2WithAOneLineErrorNamingTheFlag() async throws {
        let url = env.apiURL.absoluteString
        let pool = uniqueName()
        let cases: [(arguments: [String], flag: String)] = [
            (["start", "--pool", pool, "--limit", "0"], "--limit"),
            (["start", "--pool", pool, "--limit", "many"], "--limit"),
            (["start", "--pool", pool, "--query-seconds", "soon"], "--query-seconds"),
            (["start", "--pool", pool, "--heartbeat-seconds", "-5"], "--heartbeat-seconds"),
            (["start", "--pool", pool, "--prefetch-seconds", "x"], "--prefetch-seconds"),
            (["start", "--pool", pool, "--bogus-flag"], "--bogus-flag"),
            (["start", "--pool", pool, "--run-once=yes"], "--run-once"),
            (["start", "--pool"], "--pool"),
            (["start"], "--pool"),
        ]
        for (arguments, flag) in cases {
            let (code, output) = try await runWorkerBinary(arguments, apiURL: url)
            XCTAssertEqual(code, 2, "\(arguments): exit code; output: \(output)")
            let lines = output.split(separator: "\n", omittingEmptySubsequences: true).map(String.init)
            let first = lines.first ?? ""
            XCTAssertTrue(first.contains(flag), "\(arguments): the error line should name \(flag): \(output)")
            XCTAssertTrue(lines.count <= 2 && lines.dropFirst().allSatisfy { !$0.contains(flag) || $0.contains("--help") },
                          "\(arguments): expected a one-line error (plus at most a usage hint): \(output)")
        }
        // None of this may have created the pool.
        let created = try await api.readPool(pool)
        XCTAssertNil(created, "a rejected command line must not touch the server")
    }

    func testMalformedOrMissingAPIURLExits2() async throws {
        let pool = uniqueName()
        let malformed = ["not a url", "127.0.0.1:4200/api", "ftp://127.0.0.1/api", "http://", "htp://user:secret-pw@127.0.0.1:4200/api"]
        for url in malformed {
            let (code, output) = try await runWorkerBinary(["start", "--pool", pool], apiURL: url)
            XCTAssertEqual(code, 2, "PREFECT_API_URL=\(url): exit code; output: \(output)")
            XCTAssertTrue(output.contains("PREFECT_API_URL"), "PREFECT_API_URL=\(url): the error should name the variable: \(output)")
            XCTAssertFalse(output.contains("secret-pw"), "the error must not echo credentials: \(output)")
        }
        let (code, output) = try await runWorkerBinary(["start", "--pool", pool], apiURL: nil)
        XCTAssertEqual(code, 2, "without PREFECT_API_URL: exit code; output: \(output)")
        XCTAssertTrue(output.contains("PREFECT_API_URL"), output)
    }

    func testUnreachableServerKeepsRetryingAndNeverLogsTheSecret() async throws {
        let port = E2E.closedLocalPort()
        let url = "http://e2e-user:s3cr3t-token@127.0.0.1:\(port)/api"
        let worker = try startWorker(pool: uniqueName(), apiURL: url)

        let shown = await worker.waitForLog(containing: "127.0.0.1:\(port)", timeout: 15)
        XCTAssertNotNil(shown, "the worker should report which API it cannot reach; log: \(worker.log)")
        // Still alive and still trying: the start-up line names the URL too; after it, at least two failed
        // attempts. (Each attempt's quick retries are DEBUG lines now, so the second WARNING comes after
        // about 8 s rather than within 4.)
        let repeated = try? await E2E.eventually(timeout: 30, "two failed attempts in the log") { () -> Bool? in
            worker.log.split(separator: "\n").filter { $0.contains("127.0.0.1:\(port)") }.count >= 3 ? true : nil
        }
        XCTAssertTrue(worker.isRunning, "an unreachable server is not fatal; log: \(worker.log)")
        let log = worker.log
        XCTAssertEqual(repeated, true, "expected repeated attempts in the log: \(log)")
        XCTAssertFalse(log.contains("s3cr3t-token"), "the log leaks the password from PREFECT_API_URL: \(log)")
        let code = worker.stop()
        XCTAssertEqual(code, 0, "SIGTERM while retrying should end the worker cleanly; log: \(worker.log)")
    }
}

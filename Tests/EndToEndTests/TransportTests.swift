import Foundation
@testable import PrefectWorker
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A TLS-terminating proxy (socat) in front of the real server, with a certificate made here by openssl.
/// Only the socat process this object started is ever signalled.
final class TLSTerminator: @unchecked Sendable {
    let directory: String
    let certificate: String
    let port: UInt16
    private let process: Process

    /// `hosts` are the certificate's subject alternative names (`IP:127.0.0.1`, `DNS:localhost`).
    init(upstream: URL, directory: String, hosts: String = "IP:127.0.0.1,DNS:localhost") throws {
        self.directory = directory
        let key: String
        (certificate, key) = try Self.makeCertificate(directory: directory, hosts: hosts)
        port = E2E.closedLocalPort()
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/socat")
        process.arguments = ["OPENSSL-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork,backlog=128,cert=\(certificate),key=\(key),verify=0",
                             "TCP:\(upstream.host ?? "127.0.0.1"):\(upstream.port ?? 80)"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
    }

    /// `https://127.0.0.1:<port>/api`.
    var apiURL: String { "https://127.0.0.1:\(port)/api" }

    /// Waits until socat accepts connections.
    func waitUntilListening() async throws {
        _ = try await E2E.eventually(timeout: 10, "socat to listen on \(port)") { () -> Bool? in
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = port.bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let ok = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            return ok == 0 ? true : nil
        }
    }

    /// SIGKILL to the socat this object started (a SIGTERM may arrive blocked, as the test process blocks
    /// signals in some threads). The children it forked per connection end with their connections, once the
    /// workers are stopped. Polls, like `WorkerProcess`: `waitUntilExit` can hang in an async test.
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning, Date() < deadline { usleep(20_000) }
    }

    /// A self-signed certificate and its key, `cert.pem` and `key.pem` in `directory`, made by openssl for
    /// `hosts` (subject alternative names, as in `init`).
    static func makeCertificate(directory: String, hosts: String = "IP:127.0.0.1,DNS:localhost") throws -> (certificate: String, key: String) {
        let certificate = directory + "/cert.pem"
        let key = directory + "/key.pem"
        try run("/usr/bin/openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate,
                                     "-days", "2", "-subj", "/CN=prefect-worker-test", "-addext", "subjectAltName=\(hosts)"])
        return (certificate, key)
    }

    private static func run(_ program: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        guard !process.isRunning, process.terminationStatus == 0 else {
            throw E2E.Timeout(description: "\(program) \(arguments.joined(separator: " ")) exited \(process.terminationStatus)")
        }
    }
}

/// The API client's transport against the real server over https (through a TLS-terminating proxy with a
/// certificate made by the test) and through an HTTP CONNECT proxy.
final class TransportTests: E2ETestCase, @unchecked Sendable {
    private var terminator: TLSTerminator?
    private var proxy: ConnectProxy?

    override func tearDownWithError() throws {
        try super.tearDownWithError()  // stops the workers first
        terminator?.stop()
        proxy?.stop()
    }

    private func startTLS(hosts: String = "IP:127.0.0.1,DNS:localhost") async throws -> TLSTerminator {
        let tls = try TLSTerminator(upstream: env.apiURL, directory: try temporaryDirectory("tls"), hosts: hosts)
        terminator = tls
        try await tls.waitUntilListening()
        return tls
    }

    /// A pool with one command deployment, and one run of it.
    private func commandRun(_ pool: String) async throws -> String {
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object(["command": "true"]))
        return try await api.createFlowRun(deployment: deployment)
    }

    func testRunsCompleteOverHTTPSWithTheCAFile() async throws {
        let tls = try await startTLS()
        let pool = try await makeProcessPool()
        let id = try await commandRun(pool)
        let worker = try startWorker(pool: pool, environment: ["PREFECT_API_SSL_CERT_FILE": tls.certificate], apiURL: tls.apiURL)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        XCTAssertTrue(worker.log.contains("at https://127.0.0.1:\(tls.port)/api"), worker.log)
        // The events WebSocket goes over wss:// with the same CA file.
        let subscribed = await worker.waitForLog(containing: "events at wss://127.0.0.1:\(tls.port)/api/events/out", timeout: 20)
        XCTAssertNotNil(subscribed, worker.log)
        // Quiet when healthy, through shutdown too.
        worker.isServing = false
        XCTAssertEqual(worker.stop(), 0)
        XCTAssertFalse(worker.log.contains("WARNING"), worker.log)
    }

    func testUntrustedCertificateIsRetriedWithAMessageNamingTheFix() async throws {
        let tls = try await startTLS()
        let pool = try await makeProcessPool()
        let worker = try startWorker(pool: pool, apiURL: tls.apiURL)
        let line = await worker.waitForLog(containing: "TLS: the certificate of 127.0.0.1 is not trusted", timeout: 30)
        let text = try XCTUnwrap(line, "no TLS message in: \(worker.log)")
        XCTAssertTrue(text.contains("PREFECT_API_SSL_CERT_FILE"), text)
        XCTAssertTrue(text.contains("PREFECT_API_TLS_INSECURE_SKIP_VERIFY"), text)
        // It keeps trying (the message comes again) and does not exit.
        let again = try? await E2E.eventually(timeout: 30, "the TLS message a second time") { () -> Bool? in
            worker.log.components(separatedBy: "is not trusted").count - 1 >= 2 ? true : nil
        }
        XCTAssertEqual(again, true, worker.log)
        XCTAssertTrue(worker.isRunning, "the worker exited on an untrusted certificate: \(worker.log)")
        XCTAssertFalse(worker.log.contains("serving work pool"), worker.log)
    }

    func testMismatchedCertificateNamesTheHost() async throws {
        let tls = try await startTLS(hosts: "DNS:wrong.example")
        let pool = try await makeProcessPool()
        let worker = try startWorker(pool: pool, environment: ["PREFECT_API_SSL_CERT_FILE": tls.certificate], apiURL: tls.apiURL)
        let line = await worker.waitForLog(containing: "TLS: the certificate of 127.0.0.1 is not trusted", timeout: 30)
        let text = try XCTUnwrap(line, "no TLS message in: \(worker.log)")
        XCTAssertTrue(text.contains("it was not issued for that name"), text)
        XCTAssertTrue(text.contains("PREFECT_API_URL"), text)
        XCTAssertTrue(worker.isRunning)
    }

    func testInsecureSkipVerifyCompletesRuns() async throws {
        let tls = try await startTLS()
        let pool = try await makeProcessPool()
        let id = try await commandRun(pool)
        try startWorker(pool: pool, environment: ["PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true"], apiURL: tls.apiURL)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
    }

    func testHTTPSProxyCarriesTheTunnelsAndNoProxyBypassesIt() async throws {
        let tls = try await startTLS()
        let connect = ConnectProxy()
        try connect.start()
        proxy = connect
        let pool = try await makeProcessPool()

        let id = try await commandRun(pool)
        let proxied = try startWorker(pool: pool, environment: [
            "PREFECT_API_SSL_CERT_FILE": tls.certificate,
            "HTTPS_PROXY": "http://proxyuser:proxy-secret-123@127.0.0.1:\(connect.port)",
        ], apiURL: tls.apiURL)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let tunnels = connect.tunnels
        XCTAssertFalse(tunnels.isEmpty, "no CONNECT reached the proxy")
        XCTAssertTrue(tunnels.allSatisfy { $0.target == "127.0.0.1:\(tls.port)" }, "\(tunnels.map(\.target))")
        XCTAssertEqual(tunnels.first?.proxyAuthorization, "Basic " + Data("proxyuser:proxy-secret-123".utf8).base64EncodedString())
        XCTAssertTrue(proxied.log.contains("through proxy http://***@127.0.0.1:\(connect.port)"), proxied.log)
        // The events WebSocket takes the same tunnel route (CONNECT, then TLS with the CA file).
        let subscribed = await proxied.waitForLog(containing: "events at wss://127.0.0.1:\(tls.port)/api/events/out", timeout: 20)
        XCTAssertNotNil(subscribed, proxied.log)
        XCTAssertFalse(proxied.log.contains("proxy-secret-123"), "the proxy password was logged")
        XCTAssertLessThan(tunnels.count, 10, "connections are not reused: \(tunnels.count) tunnels for one run")
        proxied.isServing = false
        _ = proxied.stop()

        let before = connect.tunnels.count
        let second = try await commandRun(pool)
        try startWorker(pool: pool, environment: [
            "PREFECT_API_SSL_CERT_FILE": tls.certificate,
            "https_proxy": "http://127.0.0.1:\(connect.port)", "no_proxy": "localhost,127.0.0.1",
        ], apiURL: tls.apiURL)
        let bypassed = try await waitForFinalState(second, timeout: 30)
        XCTAssertEqual(bypassed.stateType, "COMPLETED", bypassed.stateSummary)
        XCTAssertEqual(connect.tunnels.count, before, "a host in NO_PROXY went through the proxy")
    }

    /// The ALPN protocol a worker started with `environment` chose on its connections to an `ALPNRecorder`,
    /// which offers h2 and http/1.1: "h2" when the worker offered h2, "http/1.1" when it offered HTTP/1.1 only.
    private func protocolChosen(_ environment: [String: String]) async throws -> String {
        let recorder = try ALPNRecorder(python: env.venv + "/bin/python", directory: try temporaryDirectory("alpn"))
        defer { recorder.stop() }
        var environment = environment
        environment["PREFECT_API_SSL_CERT_FILE"] = recorder.certificate
        // No pool is needed: the recorder closes every connection after the handshake, the worker retries.
        let worker = try startWorker(pool: uniqueName("-pool"), environment: environment, apiURL: recorder.apiURL)
        worker.isServing = false
        let first = try await E2E.eventually(timeout: 30, "a TLS connection from the worker; its log: \(worker.log)") {
            recorder.chosen.first
        }
        XCTAssertTrue(worker.isRunning, "the worker exited: \(worker.log)")
        _ = worker.stop()
        let all = recorder.chosen
        XCTAssertEqual(Set(all), [first], "connections chose different protocols: \(all)")
        return first
    }

    func testHTTP2IsOfferedOverTLSWhenEnabled() async throws {
        let chosen = try await protocolChosen(["PREFECT_API_ENABLE_HTTP2": "true"])
        XCTAssertEqual(chosen, "h2", "PREFECT_API_ENABLE_HTTP2=true, but the worker did not offer h2")
    }

    func testHTTP2IsNotOfferedWhenDisabledOrUnset() async throws {
        let disabled = try await protocolChosen(["PREFECT_API_ENABLE_HTTP2": "false"])
        XCTAssertEqual(disabled, "http/1.1", "PREFECT_API_ENABLE_HTTP2=false")
        let unset = try await protocolChosen([:])
        XCTAssertEqual(unset, "http/1.1", "PREFECT_API_ENABLE_HTTP2 unset (its default is false)")
    }

    func testHTTP2OverTLSCompletesRuns() async throws {
        // uvicorn speaks HTTP/1.1 only: with PREFECT_API_ENABLE_HTTP2 curl offers h2 in ALPN and falls back
        // (that h2 is offered at all is tested against ALPNRecorder above).
        let tls = try await startTLS()
        let pool = try await makeProcessPool()
        let id = try await commandRun(pool)
        try startWorker(pool: pool, environment: ["PREFECT_API_SSL_CERT_FILE": tls.certificate, "PREFECT_API_ENABLE_HTTP2": "true"],
                        apiURL: tls.apiURL)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
    }
}

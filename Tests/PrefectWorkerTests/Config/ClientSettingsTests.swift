import Foundation
import XCTest
@testable import PrefectWorker

/// Prefect's client settings: names, defaults, bad values.
final class ClientSettingsTests: XCTestCase {
    func testDefaultsArePrefects() throws {
        let settings = try ClientSettings.parse([:])
        XCTAssertEqual(settings.requestTimeout, 60)
        XCTAssertEqual(settings.maxRetries, 5)
        XCTAssertEqual(settings.retryJitterFactor, 0.2)
        XCTAssertEqual(settings.retryExtraCodes, [])
        XCTAssertEqual(settings.customHeaders, [:])
        XCTAssertNil(settings.caFile)
        XCTAssertFalse(settings.insecureSkipVerify)
        XCTAssertFalse(settings.http2)
        XCTAssertEqual(settings.proxies, ProxySettings())
    }

    func testEverySettingIsRead() throws {
        let settings = try ClientSettings.parse([
            "PREFECT_API_REQUEST_TIMEOUT": "12.5", "PREFECT_CLIENT_MAX_RETRIES": "0",
            "PREFECT_CLIENT_RETRY_JITTER_FACTOR": "0", "PREFECT_CLIENT_RETRY_EXTRA_CODES": "404, 421",
            "PREFECT_CLIENT_CUSTOM_HEADERS": #"{"X-Team": "data"}"#, "PREFECT_API_SSL_CERT_FILE": "/etc/ca.pem",
            "SSL_CERT_FILE": "/other.pem", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY": "true", "PREFECT_API_ENABLE_HTTP2": "1",
        ])
        XCTAssertEqual(settings.requestTimeout, 12.5)
        XCTAssertEqual(settings.maxRetries, 0)
        XCTAssertEqual(settings.retryJitterFactor, 0)
        XCTAssertEqual(settings.retryExtraCodes, [404, 421])
        XCTAssertEqual(settings.customHeaders, ["X-Team": "data"])
        XCTAssertEqual(settings.caFile, "/etc/ca.pem")
        XCTAssertTrue(settings.insecureSkipVerify)
        XCTAssertTrue(settings.http2)
    }

    func testSSLCertFileIsTheFallback() throws {
        XCTAssertEqual(try ClientSettings.parse(["SSL_CERT_FILE": "/other.pem"]).caFile, "/other.pem")
        XCTAssertEqual(try ClientSettings.parse(["SSL_CERT_FILE": "/other.pem", "PREFECT_API_SSL_CERT_FILE": ""]).caFile, "/other.pem")
    }

    func testBadValuesNameTheSetting() {
        let cases: [(String, String, String)] = [
            ("PREFECT_API_REQUEST_TIMEOUT", "soon", "PREFECT_API_REQUEST_TIMEOUT: 'soon' is not a number of seconds > 0 (at most 86400)"),
            ("PREFECT_API_REQUEST_TIMEOUT", "0", "PREFECT_API_REQUEST_TIMEOUT: '0' is not a number of seconds > 0 (at most 86400)"),
            ("PREFECT_API_REQUEST_TIMEOUT", "1e9", "PREFECT_API_REQUEST_TIMEOUT: '1e9' is not a number of seconds > 0 (at most 86400)"),
            ("PREFECT_CLIENT_MAX_RETRIES", "-1", "PREFECT_CLIENT_MAX_RETRIES: '-1' is not a whole number from 0 to 1000"),
            ("PREFECT_CLIENT_MAX_RETRIES", "9223372036854775807", "PREFECT_CLIENT_MAX_RETRIES: '9223372036854775807' is not a whole number from 0 to 1000"),
            ("PREFECT_CLIENT_RETRY_JITTER_FACTOR", "2", "PREFECT_CLIENT_RETRY_JITTER_FACTOR: '2' is not a number from 0 to below 1"),
            ("PREFECT_CLIENT_RETRY_EXTRA_CODES", "404,teapot", "PREFECT_CLIENT_RETRY_EXTRA_CODES: 'teapot' is not an HTTP status code (expected e.g. 404,421)"),
            ("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", "maybe", "PREFECT_API_TLS_INSECURE_SKIP_VERIFY: 'maybe' is not true or false"),
            ("PREFECT_API_ENABLE_HTTP2", "perhaps", "PREFECT_API_ENABLE_HTTP2: 'perhaps' is not true or false"),
        ]
        for (name, value, message) in cases {
            XCTAssertThrowsError(try ClientSettings.parse([name: value]), name) { error in
                XCTAssertEqual((error as? UsageError)?.message, message)
            }
        }
    }

    func testCustomHeadersMustBeAJSONObjectOfStrings() {
        for raw in ["{not json", #"["X-A"]"#, #"{"X-A": 1}"#, #"{"Bad Name": "v"}"#, #"{"X-A": "a\r\nX-B: b"}"#] {
            XCTAssertThrowsError(try ClientSettings.parse(["PREFECT_CLIENT_CUSTOM_HEADERS": raw]), raw) { error in
                XCTAssertTrue((error as? UsageError)?.message.hasPrefix("PREFECT_CLIENT_CUSTOM_HEADERS") == true, "\(error)")
            }
        }
    }

    func testProxiesInEitherCaseLowerCaseFirst() throws {
        let proxies = try ClientSettings.parse([
            "HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128", "HTTP_PROXY": "http://plain:3128",
            "NO_PROXY": "localhost,.internal",
        ]).proxies
        XCTAssertEqual(proxies.proxy(for: URL(string: "https://api.prefect.cloud/api")!), "http://lower:3128")
        XCTAssertEqual(proxies.proxy(for: URL(string: "http://10.0.0.1/api")!), "http://plain:3128")
        XCTAssertEqual(proxies.noProxy, "localhost,.internal")
        let all = try ClientSettings.parse(["ALL_PROXY": "socks5://s:1080"]).proxies
        XCTAssertEqual(all.proxy(for: URL(string: "https://x/api")!), "socks5://s:1080")
        XCTAssertNil(try ClientSettings.parse([:]).proxies.proxy(for: URL(string: "https://x/api")!))
    }

    func testCommandLineParserReadsTheClientSettings() throws {
        let env = ["PREFECT_API_URL": "http://127.0.0.1:4200/api", "PREFECT_API_REQUEST_TIMEOUT": "7"]
        guard case .start(let settings) = try CommandLineParser.parse(["start", "--pool", "p"], environment: env) else {
            return XCTFail("expected start")
        }
        XCTAssertEqual(settings.client.requestTimeout, 7)
        XCTAssertThrowsError(try CommandLineParser.parse(["start", "--pool", "p"],
                                                         environment: env.merging(["PREFECT_CLIENT_CUSTOM_HEADERS": "{"]) { $1 }))
    }
}

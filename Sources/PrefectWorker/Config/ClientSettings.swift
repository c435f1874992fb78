import Foundation

/// How the API client talks to the server: Prefect 3.8's client settings, with their names and defaults.
struct ClientSettings: Sendable, Equatable {
    /// `PREFECT_API_REQUEST_TIMEOUT`: seconds one request may take.
    var requestTimeout: Double = 60
    /// `PREFECT_CLIENT_MAX_RETRIES`: retries of an ordinary call after its first attempt.
    var maxRetries = 5
    /// `PREFECT_CLIENT_RETRY_JITTER_FACTOR`: each retry delay varies by up to this fraction.
    var retryJitterFactor = 0.2
    /// `PREFECT_CLIENT_RETRY_EXTRA_CODES`: statuses retried besides 408, 429 and 5xx.
    var retryExtraCodes: Set<Int> = []
    /// `PREFECT_CLIENT_CUSTOM_HEADERS`: extra headers sent with every request (never the protected ones).
    var customHeaders: [String: String] = [:]
    /// `PREFECT_API_SSL_CERT_FILE`, else `SSL_CERT_FILE`: the CA bundle to trust; nil = the system store.
    var caFile: String?
    /// `PREFECT_API_TLS_INSECURE_SKIP_VERIFY`: do not verify the server's certificate.
    var insecureSkipVerify = false
    /// `PREFECT_API_ENABLE_HTTP2`.
    var http2 = false
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY` (either case).
    var proxies = ProxySettings()

    init() {}

    /// Headers the worker sets itself; `PREFECT_CLIENT_CUSTOM_HEADERS` cannot replace them.
    static let protectedHeaders: Set<String> = [
        "user-agent", "authorization", "x-prefect-api-version", "content-type", "accept",
        "prefect-csrf-token", "prefect-csrf-client",
    ]

    /// Reads the settings from `environment`; a bad value is a `UsageError` naming the variable.
    static func parse(_ environment: [String: String]) throws -> ClientSettings {
        func value(_ name: String) -> String? {
            environment[name].map { $0.trimmingCharacters(in: .whitespaces) }.flatMap { $0.isEmpty ? nil : $0 }
        }
        var settings = ClientSettings()
        if let raw = value("PREFECT_API_REQUEST_TIMEOUT") {
            guard let seconds = Double(raw), seconds.isFinite, seconds > 0, seconds <= 86_400 else {
                throw UsageError("PREFECT_API_REQUEST_TIMEOUT: '\(raw)' is not a number of seconds > 0 (at most 86400)")
            }
            settings.requestTimeout = seconds
        }
        if let raw = value("PREFECT_CLIENT_MAX_RETRIES") {
            guard let retries = Int(raw), (0...1000).contains(retries) else {
                throw UsageError("PREFECT_CLIENT_MAX_RETRIES: '\(raw)' is not a whole number from 0 to 1000")
            }
            settings.maxRetries = retries
        }
        if let raw = value("PREFECT_CLIENT_RETRY_JITTER_FACTOR") {
            guard let factor = Double(raw), factor.isFinite, factor >= 0, factor < 1 else {
                throw UsageError("PREFECT_CLIENT_RETRY_JITTER_FACTOR: '\(raw)' is not a number from 0 to below 1")
            }
            settings.retryJitterFactor = factor
        }
        if let raw = value("PREFECT_CLIENT_RETRY_EXTRA_CODES") {
            for part in raw.split(separator: ",") {
                let code = part.trimmingCharacters(in: .whitespaces)
                guard let status = Int(code), (100...599).contains(status) else {
                    throw UsageError("PREFECT_CLIENT_RETRY_EXTRA_CODES: '\(code)' is not an HTTP status code (expected e.g. 404,421)")
                }
                settings.retryExtraCodes.insert(status)
            }
        }
        if let raw = value("PREFECT_CLIENT_CUSTOM_HEADERS") {
            settings.customHeaders = try customHeaders(raw)
        }
        settings.caFile = value("PREFECT_API_SSL_CERT_FILE") ?? value("SSL_CERT_FILE")
        settings.insecureSkipVerify = try boolean("PREFECT_API_TLS_INSECURE_SKIP_VERIFY", value("PREFECT_API_TLS_INSECURE_SKIP_VERIFY")) ?? false
        settings.http2 = try boolean("PREFECT_API_ENABLE_HTTP2", value("PREFECT_API_ENABLE_HTTP2")) ?? false
        settings.proxies = ProxySettings(environment: environment)
        return settings
    }

    private static func boolean(_ name: String, _ raw: String?) throws -> Bool? {
        guard let raw else { return nil }
        guard let value = JSONBoolean.parse(raw) else { throw UsageError("\(name): '\(raw)' is not true or false") }
        return value
    }

    /// A JSON object of string values; protected headers are dropped with a warning, as Prefect does.
    static func customHeaders(_ raw: String) throws -> [String: String] {
        let json: JSON
        do {
            json = try JSON.decode(Data(raw.utf8))
        } catch {
            throw UsageError("PREFECT_CLIENT_CUSTOM_HEADERS is not valid JSON (\(error)); expected an object like {\"X-Custom-Header\": \"value\"}")
        }
        guard let object = json.objectValue else {
            throw UsageError("PREFECT_CLIENT_CUSTOM_HEADERS must be a JSON object of header names to strings, like {\"X-Custom-Header\": \"value\"}")
        }
        var headers: [String: String] = [:]
        for (name, value) in object {
            guard let text = value.stringValue else {
                throw UsageError("PREFECT_CLIENT_CUSTOM_HEADERS: the value of '\(name)' must be a string")
            }
            let validName = !name.isEmpty && name.utf8.allSatisfy { $0 > 32 && $0 < 127 && $0 != UInt8(ascii: ":") }
            guard validName, !text.contains("\r"), !text.contains("\n") else {
                throw UsageError("PREFECT_CLIENT_CUSTOM_HEADERS: '\(name)' is not a valid header name and value")
            }
            if protectedHeaders.contains(name.lowercased()) {
                Log.warning("PREFECT_CLIENT_CUSTOM_HEADERS: header '\(name)' is ignored: the worker sets it itself")
                continue
            }
            headers[name] = text
        }
        return headers
    }
}

/// The proxy settings of the environment, read once the way curl reads them, in either case (lower case
/// first): `https_proxy` for https URLs, `http_proxy` for http URLs, else `all_proxy`; `no_proxy` lists hosts
/// reached directly.
struct ProxySettings: Sendable, Equatable {
    var httpsProxy: String?
    var httpProxy: String?
    var allProxy: String?
    var noProxy: String?

    init(httpsProxy: String? = nil, httpProxy: String? = nil, allProxy: String? = nil, noProxy: String? = nil) {
        self.httpsProxy = httpsProxy
        self.httpProxy = httpProxy
        self.allProxy = allProxy
        self.noProxy = noProxy
    }

    init(environment: [String: String]) {
        func either(_ name: String) -> String? {
            (environment[name] ?? environment[name.uppercased()]).flatMap { $0.isEmpty ? nil : $0 }
        }
        self.init(httpsProxy: either("https_proxy"), httpProxy: either("http_proxy"),
                  allProxy: either("all_proxy"), noProxy: either("no_proxy"))
    }

    /// The proxy for `url`'s scheme, if any (`noProxy` is applied by curl, per host).
    func proxy(for url: URL) -> String? {
        (url.scheme?.lowercased() == "https" ? httpsProxy : httpProxy) ?? allProxy
    }
}

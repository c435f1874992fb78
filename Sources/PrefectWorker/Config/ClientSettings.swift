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

    /// Reads the settings from `environment` (the client's part of `SettingTable`); a bad value is a `UsageError`
    /// naming the variable.
    static func parse(_ environment: [String: String]) throws -> ClientSettings {
        var draft = SettingsDraft(environment: environment)
        for setting in SettingTable.client {
            try setting.apply(setting.input(flagValues: [:], environment: environment), &draft)
        }
        return draft.settings.client
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

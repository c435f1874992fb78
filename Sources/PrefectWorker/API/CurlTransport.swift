import CCurl
import Foundation
import Synchronization

/// HTTP for the API client, on libcurl directly: one multi handle, driven by one thread of ours that sleeps
/// in `curl_multi_poll` until a socket is ready, a curl timer is due, or `curl_multi_wakeup` hands it work.
/// No dispatch sources and no timers spin while a request waits (URLSession's did: see shared/measurements.md).
/// Connections are kept alive in the multi handle and reused; http:// and https:// take the same path.
final class CurlTransport: @unchecked Sendable { // `multi` and `active` belong to the loop thread; the rest is in `queue`
    /// How every request is made.
    struct Options: Sendable, Equatable {
        var timeoutSeconds: Double = 60
        var caFile: String?
        var insecureSkipVerify = false
        var http2 = false
        /// The proxy to use, or nil for none (curl's own environment lookup is not used: see `ProxySettings`).
        var proxy: String?
        var noProxy: String?
        /// A body larger than this ends the transfer (unless the request sets its own limit).
        var maxBodyBytes = 32 * 1024 * 1024
    }

    struct Request: Sendable {
        var method: String
        var url: String
        var headers: [String]
        var body: Data?
        /// This request's bound on the answer's body, instead of `Options.maxBodyBytes`.
        var maxBodyBytes: Int?
    }

    struct Response: Sendable {
        var status: Int
        var retryAfter: String?
        var body: Data
        /// `Prefect-Maintenance: true`: Prefect Cloud is in maintenance; retry for as long as it lasts.
        var maintenance = false
    }

    /// A transfer that got no complete HTTP answer.
    enum Failure: Error, Equatable {
        /// curl's result code and its explanation.
        case curl(code: Int, message: String)
        /// The body passed `maxBodyBytes` (as announced by Content-Length, or as received).
        case tooLarge(bytes: Int64)
    }

    let options: Options
    private let multi: UnsafeMutableRawPointer
    private let queue = Mutex<Queue>(Queue())
    private var active: [UnsafeMutableRawPointer: Transfer] = [:]

    private struct Queue {
        var toAdd: [Transfer] = []
        var toCancel: [Transfer] = []
        var closed = false
    }

    /// Loop threads running now (one per transport not yet closed), for tests.
    static let runningLoops = Atomic<Int>(0)

    static let globalInit: Void = {
        // Before any transfer, once per process (not thread-safe in older libcurl, so done here, lazily).
        _ = curl_global_init(Int(CURL_GLOBAL_SSL | CURL_GLOBAL_WIN32))
    }()

    init(options: Options) {
        _ = Self.globalInit
        self.options = options
        multi = curl_multi_init()
        if options.http2 {
            _ = pw_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_MULTIPLEX))
        }
        // Keep enough idle connections for the requests the client lets run at once (8), for reuse.
        _ = pw_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, 16)
        SignalListener.startThread(name: "prefect-http", stackSize: 512 * 1024) { [self] in loop() }
    }

    /// Ends the loop thread: transfers in flight fail with `CancellationError`, the multi handle is freed.
    func close() {
        queue.withLock { $0.closed = true }
        curl_multi_wakeup(multi)
    }

    /// Performs one request. Cancelling the calling task removes the transfer and throws `CancellationError`.
    func perform(_ request: Request) async throws -> Response {
        let transfer = Transfer(request, options: options)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                transfer.continuation = continuation
                queue.withLock { $0.toAdd.append(transfer) }
                curl_multi_wakeup(multi)
            }
        } onCancel: {
            transfer.cancelled.store(true, ordering: .relaxed)
            queue.withLock { $0.toCancel.append(transfer) }
            curl_multi_wakeup(multi)
        }
    }

    // MARK: - The loop thread

    private func loop() {
        Self.runningLoops.add(1, ordering: .relaxed)
        defer { Self.runningLoops.subtract(1, ordering: .relaxed) }
        while true {
            var timeout = -1
            curl_multi_timeout(multi, &timeout)
            // Nothing due: sleep until a socket or a wakeup (the 60 s bound is only a safety net).
            let wait = timeout < 0 ? 60_000 : min(timeout, 60_000)
            var ready: Int32 = 0
            if wait > 0 { curl_multi_poll(multi, nil, 0, Int32(wait), &ready) }

            let (adds, cancels, closed) = queue.withLock { queue in
                defer { queue.toAdd = []; queue.toCancel = [] }
                return (queue.toAdd, queue.toCancel, queue.closed)
            }
            if closed {
                for transfer in adds { transfer.finish(.failure(CancellationError())) }
                for (easy, transfer) in active {
                    curl_multi_remove_handle(multi, easy)
                    transfer.finish(.failure(CancellationError()))
                }
                active = [:]
                curl_multi_cleanup(multi)
                return
            }
            for transfer in adds {
                if transfer.cancelled.load(ordering: .relaxed) {
                    transfer.finish(.failure(CancellationError()))
                } else if curl_multi_add_handle(multi, transfer.easy) == CURLM_OK {
                    active[transfer.easy] = transfer
                } else {
                    transfer.finish(.failure(Failure.curl(code: -1, message: "curl_multi_add_handle failed")))
                }
            }
            for transfer in cancels {
                guard active.removeValue(forKey: transfer.easy) != nil else { continue }
                curl_multi_remove_handle(multi, transfer.easy)
                transfer.finish(.failure(CancellationError()))
            }

            var running: Int32 = 0
            curl_multi_perform(multi, &running)
            var left: Int32 = 0
            while let message = curl_multi_info_read(multi, &left) {
                guard message.pointee.msg == CURLMSG_DONE, let easy = message.pointee.easy_handle,
                      let transfer = active.removeValue(forKey: easy) else { continue }
                let result = pw_msg_result(message)
                curl_multi_remove_handle(multi, easy)
                transfer.complete(result)
            }
        }
    }
}

extension CurlTransport.Options {
    /// How a connection is made, for a REST request and for a WebSocket alike: the URL, the connect timeout,
    /// the proxy, TLS (CA file, insecure mode) and keep-alive.
    func configureConnection(_ easy: UnsafeMutableRawPointer, url: String, errorBuffer: UnsafeMutablePointer<CChar>) {
        _ = pw_easy_setopt_string(easy, CURLOPT_URL, url)
        _ = pw_easy_setopt_long(easy, CURLOPT_NOSIGNAL, 1)
        _ = pw_easy_setopt_pointer(easy, CURLOPT_ERRORBUFFER, errorBuffer)
        _ = pw_easy_setopt_string(easy, CURLOPT_PROTOCOLS_STR, "http,https")
        let timeout = min(max(timeoutSeconds, 0.001), 86_400)
        _ = pw_easy_setopt_long(easy, CURLOPT_CONNECTTIMEOUT_MS, Int(min(timeout, 15) * 1000))
        // A transfer removed while its name is being resolved must not wait for the resolver thread: that
        // would block the loop thread, and every other request with it.
        _ = pw_easy_setopt_long(easy, CURLOPT_QUICK_EXIT, 1)
        _ = pw_easy_setopt_long(easy, CURLOPT_TCP_KEEPALIVE, 1)

        _ = pw_easy_setopt_string(easy, CURLOPT_PROXY, proxy ?? "")
        if let noProxy { _ = pw_easy_setopt_string(easy, CURLOPT_NOPROXY, noProxy) }
        if let caFile {
            _ = pw_easy_setopt_string(easy, CURLOPT_CAINFO, caFile)
            _ = pw_easy_setopt_string(easy, CURLOPT_PROXY_CAINFO, caFile)
        }
        if insecureSkipVerify {
            for option in [CURLOPT_SSL_VERIFYPEER, CURLOPT_SSL_VERIFYHOST, CURLOPT_PROXY_SSL_VERIFYPEER, CURLOPT_PROXY_SSL_VERIFYHOST] {
                _ = pw_easy_setopt_long(easy, option, 0)
            }
        }
    }
}

/// One request in flight: its easy handle, what it has received, and the continuation waiting for it.
/// Touched by the loop thread only, except `cancelled` and the continuation handed over through the queue lock.
private final class Transfer: @unchecked Sendable {
    let easy: UnsafeMutableRawPointer
    let limit: Int
    let cancelled = Atomic<Bool>(false)
    var continuation: CheckedContinuation<CurlTransport.Response, Error>?
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE) + 1)
    private var body = Data()
    private var retryAfter: String?
    private var maintenance = false
    private var tooLarge: Int64?

    init(_ request: CurlTransport.Request, options: CurlTransport.Options) {
        easy = curl_easy_init()
        limit = request.maxBodyBytes ?? options.maxBodyBytes
        errorBuffer.initialize(repeating: 0, count: Int(CURL_ERROR_SIZE) + 1)
        let context = Unmanaged.passUnretained(self).toOpaque()

        options.configureConnection(easy, url: request.url, errorBuffer: errorBuffer)
        // At least 1 ms (0 would mean no limit), at most a day.
        let timeout = min(max(options.timeoutSeconds, 0.001), 86_400)
        _ = pw_easy_setopt_long(easy, CURLOPT_TIMEOUT_MS, Int(timeout * 1000))
        _ = pw_easy_setopt_string(easy, CURLOPT_ACCEPT_ENCODING, "") // whatever this libcurl decodes
        _ = pw_easy_setopt_long(easy, CURLOPT_HTTP_VERSION, options.http2 ? Int(CURL_HTTP_VERSION_2TLS) : Int(CURL_HTTP_VERSION_1_1))
        // The server redirects some paths (a trailing slash, 307): follow as URLSession did; 307/308 keep the method.
        _ = pw_easy_setopt_long(easy, CURLOPT_FOLLOWLOCATION, 1)
        _ = pw_easy_setopt_long(easy, CURLOPT_MAXREDIRS, 5)

        // No `Expect: 100-continue`: it costs a round trip (or a second's wait) per larger POST.
        for header in request.headers + ["Expect:"] { headerList = curl_slist_append(headerList, header) }
        _ = pw_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, headerList)
        switch request.method {
        case "GET": break
        case "POST": _ = pw_easy_setopt_long(easy, CURLOPT_POST, 1)
        default: _ = pw_easy_setopt_string(easy, CURLOPT_CUSTOMREQUEST, request.method)
        }
        if request.body == nil, request.method != "GET" {
            // An empty body, so curl never reads one from stdin.
            _ = pw_easy_setopt_size(easy, CURLOPT_POSTFIELDSIZE_LARGE, 0)
            _ = pw_easy_setopt_string(easy, CURLOPT_COPYPOSTFIELDS, "")
        }
        if let body = request.body {
            _ = pw_easy_setopt_size(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
            body.withUnsafeBytes { bytes in
                // COPYPOSTFIELDS copies: the body need not outlive this call.
                _ = pw_easy_setopt_pointer(easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: bytes.baseAddress ?? UnsafeRawPointer(errorBuffer)))
            }
        }

        _ = pw_easy_setopt_callback(easy, CURLOPT_WRITEFUNCTION) { data, size, count, context in
            Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().received(data, size * count)
        }
        _ = pw_easy_setopt_pointer(easy, CURLOPT_WRITEDATA, context)
        _ = pw_easy_setopt_callback(easy, CURLOPT_HEADERFUNCTION) { data, size, count, context in
            Unmanaged<Transfer>.fromOpaque(context!).takeUnretainedValue().header(data, size * count)
        }
        _ = pw_easy_setopt_pointer(easy, CURLOPT_HEADERDATA, context)
    }

    deinit {
        curl_easy_cleanup(easy)
        curl_slist_free_all(headerList)
        errorBuffer.deallocate()
    }

    /// Body bytes: kept up to the limit; one byte past it ends the transfer (returning less than given).
    private func received(_ data: UnsafeMutablePointer<CChar>?, _ count: Int) -> Int {
        guard let data, tooLarge == nil else { return 0 }
        if body.count + count > limit {
            tooLarge = Int64(body.count + count)
            body = Data()
            return 0
        }
        body.append(UnsafeRawPointer(data).assumingMemoryBound(to: UInt8.self), count: count)
        return count
    }

    /// One header line. A status line starts a new response (after a redirect or a proxy's CONNECT answer).
    private func header(_ data: UnsafeMutablePointer<CChar>?, _ count: Int) -> Int {
        guard let data else { return 0 }
        let line = String(decoding: UnsafeRawBufferPointer(start: data, count: count), as: UTF8.self)
        guard let colon = line.firstIndex(of: ":") else {
            if line.hasPrefix("HTTP/") { retryAfter = nil; maintenance = false }
            return count
        }
        let name = line[..<colon].lowercased()
        let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
        if name == "retry-after" {
            retryAfter = value
        } else if name == "prefect-maintenance" {
            maintenance = value.lowercased() == "true"
        } else if name == "content-length", let length = Int64(value), length > Int64(limit) {
            tooLarge = length
            return 0 // ends the transfer before any of the body is read
        }
        return count
    }

    func complete(_ code: CURLcode) {
        if let tooLarge {
            finish(.failure(CurlTransport.Failure.tooLarge(bytes: tooLarge)))
            return
        }
        guard code == CURLE_OK else {
            let detail = String(cString: errorBuffer)
            let message = detail.isEmpty ? String(cString: curl_easy_strerror(code)) : detail
            finish(.failure(CurlTransport.Failure.curl(code: Int(code.rawValue), message: message)))
            return
        }
        var status = 0
        _ = pw_easy_getinfo_long(easy, CURLINFO_RESPONSE_CODE, &status)
        finish(.success(CurlTransport.Response(status: status, retryAfter: retryAfter, body: body, maintenance: maintenance)))
    }

    func finish(_ result: Result<CurlTransport.Response, Error>) {
        guard let continuation else { return }
        self.continuation = nil
        continuation.resume(with: result)
    }
}

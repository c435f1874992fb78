import Foundation

/// The HTTP/1.1 upgrade that opens a WebSocket (RFC 6455 section 4): the request we write, and the checks
/// on the server's answer. Pure, so each refusal is unit tested.
struct WebSocketHandshake {
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// The key this handshake sent (16 random bytes, base64).
    let key: String
    let subprotocol: String?

    init(subprotocol: String?, key: String = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()) {
        self.key = key
        self.subprotocol = subprotocol
    }

    /// The request for `url` (http or https form), with `headers` ("Name: value") after the upgrade's own.
    func request(url: URL, headers: [String]) -> String {
        var target = url.path.isEmpty ? "/" : url.path
        if let query = url.query { target += "?" + query }
        let defaultPort = url.scheme == "https" ? 443 : 80
        let host = (url.host ?? "localhost").contains(":") ? "[\(url.host!)]" : (url.host ?? "localhost")
        let hostHeader = url.port.map { $0 == defaultPort ? host : "\(host):\($0)" } ?? host
        var lines = [
            "GET \(target) HTTP/1.1", "Host: \(hostHeader)", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: \(key)", "Sec-WebSocket-Version: 13",
        ]
        if let subprotocol { lines.append("Sec-WebSocket-Protocol: \(subprotocol)") }
        // The upgrade's own headers are not the caller's to change.
        let own: Set<String> = ["host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
                                "sec-websocket-protocol", "sec-websocket-extensions", "content-type", "accept", "expect"]
        lines += headers.filter { header in
            !own.contains(header.split(separator: ":").first.map { $0.lowercased() } ?? "")
        }
        return lines.joined(separator: "\r\n") + "\r\n\r\n"
    }

    /// The Sec-WebSocket-Accept the server must answer for `key`.
    static func accept(for key: String) -> String {
        Data(SHA1.hash(Array((key + guid).utf8))).base64EncodedString()
    }

    /// Checks the response head (status line and headers, without the blank line). Throws a sentence that
    /// says what the server answered instead of agreeing.
    func verify(responseHead: String) throws(WebSocketHandshakeError) {
        let lines = responseHead.components(separatedBy: "\r\n")
        let status = lines.first.flatMap { line -> Int? in
            let parts = line.split(separator: " ")
            return parts.count >= 2 && parts[0].hasPrefix("HTTP/1.") ? Int(parts[1]) : nil
        }
        guard let status else { throw .init("answered with something that is not HTTP (\(lines.first?.prefix(80) ?? ""))") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        guard status == 101 else {
            throw .init("answered HTTP \(status) instead of switching to WebSocket (101)", status: status)
        }
        guard headers["upgrade"]?.lowercased() == "websocket",
              headers["connection"]?.lowercased().split(separator: ",").contains(where: { $0.trimmingCharacters(in: .whitespaces) == "upgrade" }) == true
        else { throw .init("answered 101 without `Upgrade: websocket` and `Connection: Upgrade`") }
        guard headers["sec-websocket-accept"] == Self.accept(for: key) else {
            throw .init("answered with a wrong Sec-WebSocket-Accept (\(headers["sec-websocket-accept"] ?? "none")): not a WebSocket server, or a proxy in the way")
        }
        if headers["sec-websocket-extensions"] != nil {
            throw .init("answered with extensions we did not offer (\(headers["sec-websocket-extensions"]!))")
        }
        let agreed = headers["sec-websocket-protocol"]
        if agreed != subprotocol {
            throw .init("agreed to subprotocol \(agreed.map { "'\($0)'" } ?? "none") instead of \(subprotocol.map { "'\($0)'" } ?? "none")")
        }
    }
}

/// The server refused or botched the upgrade. `status` is its HTTP status when it answered one.
struct WebSocketHandshakeError: Error, Equatable {
    var reason: String
    var status: Int?
    init(_ reason: String, status: Int? = nil) {
        self.reason = reason
        self.status = status
    }
}

/// SHA-1, for Sec-WebSocket-Accept only (Foundation on Linux has no digest; this is not used for security).
enum SHA1 {
    static func hash(_ message: [UInt8]) -> [UInt8] {
        var h: [UInt32] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
        var data = message
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        let bits = UInt64(message.count) * 8
        for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8((bits >> UInt64(shift)) & 0xFF)) }
        var w = [UInt32](repeating: 0, count: 80)
        for chunk in stride(from: 0, to: data.count, by: 64) {
            for i in 0..<16 {
                w[i] = (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(data[chunk + i * 4 + $1]) }
            }
            for i in 16..<80 {
                let x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]
                w[i] = x << 1 | x >> 31
            }
            var (a, b, c, d, e) = (h[0], h[1], h[2], h[3], h[4])
            for i in 0..<80 {
                let (f, k): (UInt32, UInt32)
                switch i {
                case ..<20: (f, k) = ((b & c) | (~b & d), 0x5A827999)
                case ..<40: (f, k) = (b ^ c ^ d, 0x6ED9EBA1)
                case ..<60: (f, k) = ((b & c) | (b & d) | (c & d), 0x8F1BBCDC)
                default: (f, k) = (b ^ c ^ d, 0xCA62C1D6)
                }
                let temp = (a << 5 | a >> 27) &+ f &+ e &+ k &+ w[i]
                (e, d, c, b, a) = (d, c, b << 30 | b >> 2, a, temp)
            }
            h[0] = h[0] &+ a; h[1] = h[1] &+ b; h[2] = h[2] &+ c; h[3] = h[3] &+ d; h[4] = h[4] &+ e
        }
        return h.flatMap { v in [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
    }
}

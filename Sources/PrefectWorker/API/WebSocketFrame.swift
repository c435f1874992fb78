import Foundation

/// RFC 6455 framing, as pure values: a client's frames (always masked) and a decoder of the server's frames
/// that reassembles fragmented messages within size bounds. No I/O here, so every rule is unit tested.
enum WebSocketFrame {
    enum Opcode: UInt8 {
        case continuation = 0x0, text = 0x1, binary = 0x2, close = 0x8, ping = 0x9, pong = 0xA
        var isControl: Bool { rawValue & 0x8 != 0 }
    }

    /// One frame from the client: FIN set, masked with `mask` (a fresh random key per frame, as the RFC
    /// requires of clients, so a proxy cannot be poisoned by chosen bytes).
    static func encode(_ opcode: Opcode, _ payload: [UInt8], fin: Bool = true,
                       mask: UInt32 = UInt32.random(in: .min ... .max)) -> [UInt8] {
        var out: [UInt8] = [(fin ? 0x80 : 0) | opcode.rawValue]
        out.reserveCapacity(payload.count + 14)
        switch payload.count {
        case ..<126: out.append(0x80 | UInt8(payload.count))
        case ...0xFFFF: out += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        default:
            out.append(0x80 | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((UInt64(payload.count) >> UInt64(shift)) & 0xFF)) }
        }
        let key = [UInt8(mask >> 24), UInt8((mask >> 16) & 0xFF), UInt8((mask >> 8) & 0xFF), UInt8(mask & 0xFF)]
        out += key
        for (i, byte) in payload.enumerated() { out.append(byte ^ key[i & 3]) }
        return out
    }

    /// A close frame's payload: the status code, then a reason of at most 123 bytes.
    static func closePayload(code: UInt16, reason: String = "") -> [UInt8] {
        [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8.prefix(123))
    }
}

/// What the decoder hands on: a whole message, or a control frame to act on.
enum WebSocketEvent: Equatable {
    case text(String)
    case binary([UInt8])
    case ping([UInt8])
    case pong([UInt8])
    /// The peer's close frame: its status code (1005 when it sent none) and reason.
    case close(code: UInt16, reason: String)
}

/// A breach of the protocol or of a size bound by the server; `code` is the close code to answer with.
struct WebSocketProtocolError: Error, Equatable, CustomStringConvertible {
    var code: UInt16
    var description: String
}

/// Decodes the server's byte stream into events. Fed whatever arrives; keeps only an incomplete frame and
/// the fragments of an unfinished message, each within its bound.
struct WebSocketDecoder {
    let maxFrameBytes: Int
    let maxMessageBytes: Int
    private var buffer: [UInt8] = []
    private var fragments: [UInt8] = []
    private var fragmentOpcode: WebSocketFrame.Opcode?

    init(maxFrameBytes: Int, maxMessageBytes: Int) {
        self.maxFrameBytes = maxFrameBytes
        self.maxMessageBytes = maxMessageBytes
    }

    /// Appends `bytes` and returns the events now complete, in order.
    mutating func feed(_ bytes: some Collection<UInt8>) throws(WebSocketProtocolError) -> [WebSocketEvent] {
        buffer.append(contentsOf: bytes)
        var events: [WebSocketEvent] = []
        var offset = 0
        defer { buffer.removeFirst(offset) }
        while let (header, length) = try parseHeader(at: offset) {
            guard buffer.count - offset >= header + length else { break }
            let first = buffer[offset]
            let payload = Array(buffer[(offset + header)..<(offset + header + length)])
            offset += header + length
            if let event = try handle(fin: first & 0x80 != 0, opcode: first & 0x0F, payload: payload) {
                events.append(event)
            }
        }
        return events
    }

    /// The header's length and the payload's, once the header is complete; checks what the header promises.
    private func parseHeader(at offset: Int) throws(WebSocketProtocolError) -> (Int, Int)? {
        let available = buffer.count - offset
        guard available >= 2 else { return nil }
        let first = buffer[offset], second = buffer[offset + 1]
        if first & 0x70 != 0 { throw WebSocketProtocolError(code: 1002, description: "the server set reserved bits (no extension was agreed)") }
        if second & 0x80 != 0 { throw WebSocketProtocolError(code: 1002, description: "the server sent a masked frame (servers must not mask)") }
        var header = 2
        var length = UInt64(second & 0x7F)
        if length == 126 {
            guard available >= 4 else { return nil }
            length = UInt64(buffer[offset + 2]) << 8 | UInt64(buffer[offset + 3])
            header = 4
        } else if length == 127 {
            guard available >= 10 else { return nil }
            length = (0..<8).reduce(UInt64(0)) { $0 << 8 | UInt64(buffer[offset + 2 + $1]) }
            header = 10
        }
        let opcode = first & 0x0F
        if opcode & 0x8 != 0, length > 125 || first & 0x80 == 0 {
            throw WebSocketProtocolError(code: 1002, description: "the server sent a control frame that is fragmented or longer than 125 bytes")
        }
        if length > UInt64(maxFrameBytes) {
            throw WebSocketProtocolError(code: 1009, description: "the server sent a frame of \(length) bytes, over the \(maxFrameBytes)-byte frame limit")
        }
        return (header, Int(length))
    }

    private mutating func handle(fin: Bool, opcode raw: UInt8, payload: [UInt8]) throws(WebSocketProtocolError) -> WebSocketEvent? {
        guard let opcode = WebSocketFrame.Opcode(rawValue: raw) else {
            throw WebSocketProtocolError(code: 1002, description: "the server sent an unknown opcode \(raw)")
        }
        switch opcode {
        case .ping: return .ping(payload)
        case .pong: return .pong(payload)
        case .close:
            guard payload.count >= 2 else { return .close(code: 1005, reason: "") }
            return .close(code: UInt16(payload[0]) << 8 | UInt16(payload[1]),
                          reason: String(decoding: payload[2...], as: UTF8.self))
        case .text, .binary:
            if fragmentOpcode != nil {
                throw WebSocketProtocolError(code: 1002, description: "the server started a new message inside a fragmented one")
            }
            try checkMessage(payload.count)
            if fin { return try message(opcode, payload) }
            fragmentOpcode = opcode
            fragments = payload
            return nil
        case .continuation:
            guard let started = fragmentOpcode else {
                throw WebSocketProtocolError(code: 1002, description: "the server sent a continuation frame outside a message")
            }
            try checkMessage(fragments.count + payload.count)
            fragments += payload
            guard fin else { return nil }
            defer { fragments = []; fragmentOpcode = nil }
            return try message(started, fragments)
        }
    }

    private func checkMessage(_ bytes: Int) throws(WebSocketProtocolError) {
        if bytes > maxMessageBytes {
            throw WebSocketProtocolError(code: 1009, description: "the server sent a message of \(bytes) bytes or more, over the \(maxMessageBytes)-byte message limit")
        }
    }

    private func message(_ opcode: WebSocketFrame.Opcode, _ payload: [UInt8]) throws(WebSocketProtocolError) -> WebSocketEvent {
        guard opcode == .text else { return .binary(payload) }
        guard let text = String(validating: payload, as: UTF8.self) else {
            throw WebSocketProtocolError(code: 1007, description: "the server sent a text message that is not UTF-8")
        }
        return .text(text)
    }
}

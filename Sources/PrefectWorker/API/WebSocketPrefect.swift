import Foundation

/// What every Prefect socket the worker opens shares (the events stream, the events socket, the worker channel):
/// an answer awaited within a bound, and Prefect's authentication message.
extension WebSocket {
    /// The next message if it is text (nil: another kind, or the connection closed), within `seconds`; after that
    /// a `WebSocketError` saying no `what` came.
    func nextText(within seconds: Double, _ what: String) async throws -> String? {
        try await withTimeout(seconds: seconds, error: {
            WebSocketError(url: self.url, reason: String(format: "no %@ within %g s", what, seconds))
        }) {
            var messages = self.messages.makeAsyncIterator()
            if case .text(let text)? = try await messages.next() { return text }
            return nil
        }
    }

    /// Prefect's socket authentication (`prefect/events/clients.py`, the worker channel): `{"type":"auth","token":…}`,
    /// answered by `auth_success` within `seconds`. Anything else throws `refused(reason)`, the reason being the
    /// server's, or what it sent, or that the connection closed.
    func authenticate(token: String?, within seconds: Double, refused: (String) -> String) async throws {
        try await send(text: JSON.object(["type": "auth", "token": token.map(JSON.string) ?? .null]).encoded())
        let answer = try await nextText(within: seconds, "answer to the auth message")
        let json = answer.flatMap { try? JSON.decode(Data($0.utf8)) }
        guard json?["type"]?.stringValue == "auth_success" else {
            throw WebSocketError(url: url, reason: refused(json?["reason"]?.stringValue ?? answer ?? "the connection closed"))
        }
    }
}

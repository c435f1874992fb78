import Foundation
import Synchronization

/// Prefect's event stream (`/api/events/out`), opened as Prefect's own `PrefectEventSubscriber` opens it
/// (`prefect/events/clients.py`): subprotocol `prefect`, `{"type":"auth","token":…}` answered by
/// `auth_success`, then a filter. Events replay from a minute before the last one seen (the server's
/// backfill), and an event seen twice is handed on once.
final class EventSubscription: Sendable {
    /// The parts of an event the worker acts on.
    struct Event: Sendable, Equatable {
        var id: String
        /// `prefect.flow-run.Cancelling`, `prefect.flow-run.Scheduled`, …
        var name: String
        var occurred: Date?
        /// `prefect.resource.id` of the resource, e.g. `prefect.flow-run.<id>`.
        var resourceID: String
        /// `prefect.state-type` of a state-change event (`SCHEDULED`, `CANCELLING`, …).
        var stateType: String?
        /// Related resources by role (`work-pool`, `work-queue`, …): their name.
        var relatedNames: [String: String]

        /// The flow run's id, for a flow-run event.
        var flowRunID: String? {
            resourceID.hasPrefix("prefect.flow-run.") ? String(resourceID.dropFirst("prefect.flow-run.".count)) : nil
        }

        /// Parses one `{"type":"event","event":{…}}` message; nil for anything else.
        static func parse(_ text: String) -> Event? {
            guard let message = try? JSON.decode(Data(text.utf8)), message["type"]?.stringValue == "event",
                  let event = message["event"], let id = event["id"]?.stringValue, let name = event["event"]?.stringValue,
                  let resource = event["resource"], let resourceID = resource["prefect.resource.id"]?.stringValue
            else { return nil }
            var related: [String: String] = [:]
            if case .array(let items)? = event["related"] {
                for item in items {
                    if let role = item["prefect.resource.role"]?.stringValue {
                        related[role] = item["prefect.resource.name"]?.stringValue ?? ""
                    }
                }
            }
            return Event(id: id, name: name, occurred: event["occurred"]?.stringValue.flatMap(Timestamp.parse),
                         resourceID: resourceID, stateType: resource["prefect.state-type"]?.stringValue, relatedNames: related)
        }
    }

    let socket: WebSocket
    private let seen: EventIDs

    private init(socket: WebSocket, seen: EventIDs) {
        self.socket = socket
        self.seen = seen
    }

    /// The filter message: events named `names`, about anything related to `resourceIDs`, that occurred since
    /// `since` (Prefect asks for a year ahead as the end).
    static func filter(names: [String], anyResource resourceIDs: [String], since: Date) -> JSON {
        .object([
            "type": .string("filter"),
            "filter": .object([
                "occurred": .object([
                    "since": .string(Timestamp.format(since)),
                    "until": .string(Timestamp.format(Date().addingTimeInterval(365 * 86_400))),
                ]),
                "event": .object(["name": .array(names.map(JSON.string))]),
                "any_resource": .object(["id": .array(resourceIDs.map(JSON.string))]),
            ]),
        ])
    }

    /// Connects, authenticates with `token` (the API key on Prefect Cloud, the auth string on a server, or
    /// none) and sends `filter`. The answer to the auth message must come within `timeout` seconds.
    static func open(client: PrefectClient, token: String?, filter: JSON, timeout: Double, seen: EventIDs,
                     limits: WebSocket.Limits = WebSocket.Limits()) async throws -> EventSubscription {
        let socket = try await client.webSocket(path: "/events/out", subprotocol: "prefect", limits: limits)
        do {
            try await socket.authenticate(token: token, within: timeout) {
                "the event stream refused our credentials (\($0)); check PREFECT_API_KEY / PREFECT_API_AUTH_STRING"
            }
            try await socket.send(text: filter.encoded())
        } catch {
            await socket.close()
            throw error
        }
        return EventSubscription(socket: socket, seen: seen)
    }

    /// The next event not seen before; nil when the server closed the stream normally.
    func next() async throws -> Event? {
        for try await message in socket.messages {
            guard case .text(let text) = message, let event = Event.parse(text), seen.insert(event.id) else { continue }
            return event
        }
        return nil
    }

    func close() async { await socket.close() }
}

/// Event ids already handed on (the newest few thousand), kept across reconnects: the server replays the
/// last minute after each one.
final class EventIDs: Sendable {
    private let ids = Mutex<(set: Set<String>, order: [String])>(([], []))
    /// True the first time `id` is seen.
    func insert(_ id: String) -> Bool {
        ids.withLock { ids in
            guard ids.set.insert(id).inserted else { return false }
            ids.order.append(id)
            if ids.order.count > 4096 {
                ids.set.subtract(ids.order.prefix(2048))
                ids.order.removeFirst(2048)
            }
            return true
        }
    }
}

import Foundation

/// Prefect's Attempt Control Session, supervisor side: the wire format and the rules of one session, with no
/// sockets (`AttemptControlSession` carries the bytes). Prefect 3.8's engine connects back to the port and
/// token it finds in `PREFECT__CONTROL_PORT`/`PREFECT__CONTROL_TOKEN` once it runs the flow, and then:
/// - learns a supervisor's intent (cancel, reschedule, relinquish) before the supervisor's SIGTERM, and
///   acknowledges it with `a`; a SIGTERM with a `cancel` intent is a cancellation (CANCELLED and the flow's
///   `on_cancellation` hooks), without one it is a crash;
/// - in protocol version 2, may instead conclude the attempt with an outcome receipt: evidence that it
///   reported the run's state itself.
/// Mirrors `prefect/_internal/attempt_control.py` and `prefect/runner/_control_channel.py`.
enum AttemptControl {
    /// What a supervisor asks the engine to let it do with the run.
    enum Intent: String, Sendable, Equatable {
        /// The run is being cancelled: the engine reports CANCELLED and runs `on_cancellation` hooks.
        case cancel
        /// The supervisor puts the run back in its pool (AwaitingRetry); the engine reports nothing.
        case reschedule
        /// The supervisor leaves the run to the infrastructure's retry; the engine reports nothing.
        case relinquish

        var byte: UInt8 {
            switch self {
            case .cancel: UInt8(ascii: "c")
            case .reschedule: UInt8(ascii: "r")
            case .relinquish: UInt8(ascii: "q")
            }
        }
    }

    /// How an engine concluded its attempt: the first of these wins and never changes.
    enum Conclusion: Sendable, Equatable {
        /// The engine reported this state itself (a final or paused state).
        case stateReported(type: String, name: String)
        /// The server aborted the engine's orchestration (the run was taken elsewhere or is gone).
        case orchestrationAborted
        /// The engine acknowledged our intent: the supervisor owns the run's next state (or, for `cancel`,
        /// the engine reports CANCELLED itself).
        case delegated(Intent)
    }

    static let legacyVersion: UInt8 = 1
    static let currentVersion: UInt8 = 2
    static let receiptCapability: UInt8 = 1
    static let negotiationPrefix: [UInt8] = [0x00, UInt8(ascii: "P"), UInt8(ascii: "F")]
    static let receiptPrefix: UInt8 = 0x01
    static let receiptAck: UInt8 = 0x02
    static let intentAck = UInt8(ascii: "a")
    static let maxReceiptSize = 4096
    /// The token line: 32 hex digits and a newline; anything much longer is not a client of ours.
    static let maxTokenLine = 256

    static func negotiation(version: UInt8, capabilities: UInt8) -> [UInt8] {
        negotiationPrefix + [version, capabilities]
    }

    /// The receipt's JSON, checked as strictly as Prefect's `decode_receipt`: nil if it is not a valid one.
    static func decodeReceipt(_ payload: [UInt8]) -> Conclusion? {
        guard payload.count <= maxReceiptSize,
              let fields = (try? JSONParser.parse(Data(payload)))?.objectValue,
              let disposition = fields["disposition"]?.stringValue
        else { return nil }
        switch disposition {
        case "ORCHESTRATION_ABORTED":
            return fields.count == 1 ? .orchestrationAborted : nil
        case "STATE_REPORTED":
            guard Set(fields.keys) == ["disposition", "state_id", "state_type", "state_name"],
                  let id = fields["state_id"]?.stringValue, UUID(uuidString: id) != nil,
                  let type = fields["state_type"]?.stringValue, !type.isEmpty, type.count <= 64,
                  let name = fields["state_name"]?.stringValue
            else { return nil }
            return .stateReported(type: type, name: name)
        default:
            return nil
        }
    }
}

/// One authenticated control connection's rules, fed the bytes the engine sends. Each step says what to
/// write back and whether the session is over; it never blocks and holds at most one receipt.
struct ControlConnection: Sendable {
    enum Event: Sendable, Equatable {
        /// Write these bytes to the engine.
        case reply([UInt8])
        /// The engine concluded the attempt (a receipt, or the acknowledgement of our intent).
        case concluded(AttemptControl.Conclusion)
        /// The session is over (a conclusion, or something we do not accept); close the connection.
        case close(reason: String?)
    }

    /// Receipts were negotiated (protocol version 2).
    private(set) var receipts = false
    /// The intent written to the engine, waiting for its `a`.
    var pendingIntent: AttemptControl.Intent?
    private var buffer: [UInt8] = []
    private var closed = false

    /// Consumes `bytes`; the events to act on, in order. After a `.close`, later bytes are ignored.
    mutating func receive(_ bytes: some Sequence<UInt8>) -> [Event] {
        guard !closed else { return [] }
        buffer.append(contentsOf: bytes)
        var events: [Event] = []
        while !closed, let first = buffer.first {
            switch first {
            case AttemptControl.intentAck:
                guard let intent = pendingIntent else { return events + finish("an acknowledgement of no intent") }
                buffer.removeFirst()
                events.append(.concluded(.delegated(intent)))
                return events + finish(nil)
            case AttemptControl.negotiationPrefix[0]:
                let size = AttemptControl.negotiationPrefix.count + 2
                guard buffer.count >= size else { return events }
                guard Array(buffer[0..<3]) == AttemptControl.negotiationPrefix else {
                    return events + finish("a malformed negotiation")
                }
                let version = buffer[3], capabilities = buffer[4]
                buffer.removeFirst(size)
                receipts = version >= AttemptControl.currentVersion && capabilities & AttemptControl.receiptCapability != 0
                events.append(.reply(receipts
                    ? AttemptControl.negotiation(version: AttemptControl.currentVersion, capabilities: AttemptControl.receiptCapability)
                    : AttemptControl.negotiation(version: AttemptControl.legacyVersion, capabilities: 0)))
            case AttemptControl.receiptPrefix:
                guard receipts else { return events + finish("a receipt that was not negotiated") }
                guard buffer.count >= 5 else { return events }
                let size = buffer[1..<5].reduce(0) { $0 << 8 | Int($1) }
                guard size <= AttemptControl.maxReceiptSize else {
                    return events + finish("a receipt of \(size) bytes (at most \(AttemptControl.maxReceiptSize))")
                }
                guard buffer.count >= 5 + size else { return events }
                guard let conclusion = AttemptControl.decodeReceipt(Array(buffer[5..<(5 + size)])) else {
                    return events + finish("a malformed receipt")
                }
                buffer.removeFirst(5 + size)
                events.append(.concluded(conclusion))
                events.append(.reply([AttemptControl.receiptAck]))
                return events + finish(nil)
            default:
                return events + finish("a malformed message (byte \(first))")
            }
        }
        return events
    }

    private mutating func finish(_ reason: String?) -> [Event] {
        closed = true
        buffer = []
        return [.close(reason: reason)]
    }
}

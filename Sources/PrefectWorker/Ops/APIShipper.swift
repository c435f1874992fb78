import Foundation
import Synchronization

/// Ships records (log lines, events) to a Prefect API endpoint in batches, in order, with bounded memory.
/// `add` is synchronous, so records keep the order in which they were produced; one loop delivers them.
/// When the server stays away and the buffer is full, the oldest records are dropped and counted; the
/// count is delivered as a record of its own once the server is back.
public final class APIShipper: Sendable {
    public struct Record: Sendable {
        public var body: JSON
        /// Records are counted per key when dropped (the flow run id for logs).
        public var key: String?
        public init(body: JSON, key: String? = nil) {
            self.body = body
            self.key = key
        }
    }

    private struct State {
        var buffer: [Record] = []
        var dropped: [String: Int] = [:]
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let client: PrefectClient
    private let path: String
    private let what: String
    private let capacity: Int
    private let batchSize: Int
    private let interval: Double
    private let droppedRecord: @Sendable (_ key: String, _ count: Int) -> Record?
    private let state = Mutex(State())

    public init(client: PrefectClient, path: String, what: String, capacity: Int, batchSize: Int = 200, interval: Double = 1,
                droppedRecord: @escaping @Sendable (String, Int) -> Record? = { _, _ in nil }) {
        self.client = client
        self.path = path
        self.what = what
        self.capacity = capacity
        self.batchSize = batchSize
        self.interval = interval
        self.droppedRecord = droppedRecord
    }

    public func add(_ record: Record) {
        let overflow = state.withLock { state -> Int in
            state.buffer.append(record)
            guard state.buffer.count > capacity else { return 0 }
            let extra = state.buffer.count - capacity
            for old in state.buffer.prefix(extra) { state.dropped[old.key ?? "", default: 0] += 1 }
            state.buffer.removeFirst(extra)
            return extra
        }
        if overflow > 0 { Metrics.shared.logLinesDropped(overflow) }
    }

    public var pending: Int { state.withLock { $0.buffer.count } }

    /// Delivers batches every `interval` until cancelled; a failed batch is kept and tried again.
    public func run() async {
        var failures = 0
        while !Task.isCancelled {
            let delay = failures == 0 ? interval : min(30, interval * pow(2, Double(min(failures, 5))))
            try? await Task.sleep(nanoseconds: UInt64(delay * 1_000_000_000))
            failures = await deliverAll() ? 0 : failures + 1
        }
    }

    /// Tries to deliver everything buffered now; returns false if a batch failed (it stays buffered).
    @discardableResult
    public func deliverAll() async -> Bool {
        while true {
            let batch: [Record] = state.withLock { state in
                var notes: [Record] = []
                for (key, count) in state.dropped.sorted(by: { $0.key < $1.key }) {
                    if let note = droppedRecord(key, count) { notes.append(note) }
                }
                state.dropped = [:]
                state.buffer.insert(contentsOf: notes, at: 0)
                return Array(state.buffer.prefix(batchSize))
            }
            if batch.isEmpty { return true }
            do {
                try await client.send("POST", path, body: .array(batch.map(\.body)), what: what, policy: .quick)
            } catch {
                Log.debug("\(what): \(error); \(pending) record(s) kept for the next attempt")
                return false
            }
            state.withLock { $0.buffer.removeFirst(min(batch.count, $0.buffer.count)) }
        }
    }

    /// Delivers what is buffered, for at most `timeout` seconds (at shutdown).
    public func flush(timeout: Double) async {
        _ = await firstOf({ await self.deliverAll(); return () }, { try? await Task.sleep(nanoseconds: UInt64(timeout * 1_000_000_000)) })
    }
}

import Foundation
import Synchronization

/// Ships records (log lines, events) to a Prefect API endpoint in batches, in order, with bounded memory.
/// `add` is synchronous, so records keep the order in which they were produced; one loop delivers them.
/// When the server stays away and the buffer is full, the oldest records are dropped and counted; the
/// count is delivered as a record of its own once the server is back.
final class APIShipper: Service {
    struct Record: Sendable {
        var body: JSON
        /// Records are counted per key when dropped (the flow run id for logs).
        var key: String?
        /// About how many bytes the record takes in a batch (0: not counted against `maxBatchBytes`).
        var size: Int
        init(body: JSON, key: String? = nil, size: Int = 0) {
            self.body = body
            self.key = key
            self.size = size
        }
    }

    private struct State {
        /// Records in order, numbered so a delivered batch can be removed exactly, however the buffer changed
        /// while it was in flight.
        var buffer: [(seq: Int, record: Record)] = []
        var nextSeq = 0
        /// Records dropped (oldest first) while the server was away, counted per key until a note about
        /// them has been delivered.
        var dropped: [String: Int] = [:]
        /// The last sequence number of the batch being sent, and the records of it evicted meanwhile: they
        /// count as dropped only if that send fails.
        var inFlightThrough: Int?
        var evictedInFlight: [String: Int] = [:]
    }

    private let client: PrefectClient
    /// Counts dropped records (`countDropped`).
    private let metrics: Metrics
    /// The shipper's own lines: the worker's, never shipped to a run's logs (no feedback through itself).
    private let log: Logger
    private let path: String
    private let what: String
    private let capacity: Int
    private let batchSize: Int
    private let maxBatchBytes: Int
    private let interval: Double
    private let droppedRecord: @Sendable (_ key: String, _ count: Int) -> Record?
    /// Counts records dropped because the buffer was full (log lines or events, in their own metric).
    private let countDropped: @Sendable (_ metrics: Metrics, _ count: Int) -> Void
    private let state = Mutex(State())
    /// Delivers a batch another way than `POST path` (the events socket, which falls back to REST itself).
    private let deliver: (@Sendable (JSON) async throws -> Void)?

    /// A batch holds at most `batchSize` records and, past its first record, at most `maxBatchBytes` of them.
    init(client: PrefectClient, metrics: Metrics = Metrics(), log: Logger = .console, path: String, what: String,
         capacity: Int, batchSize: Int = 200, maxBatchBytes: Int = .max, interval: Double = 1,
         droppedRecord: @escaping @Sendable (String, Int) -> Record? = { _, _ in nil },
         countDropped: @escaping @Sendable (Metrics, Int) -> Void = { $0.logLinesDropped($1) },
         deliver: (@Sendable (JSON) async throws -> Void)? = nil) {
        self.client = client
        self.metrics = metrics
        self.log = log
        self.path = path
        self.what = what
        self.capacity = capacity
        self.batchSize = batchSize
        self.maxBatchBytes = maxBatchBytes
        self.interval = interval
        self.droppedRecord = droppedRecord
        self.countDropped = countDropped
        self.deliver = deliver
    }

    func add(_ record: Record) {
        let overflow = state.withLock { state -> Int in
            state.buffer.append((state.nextSeq, record))
            state.nextSeq += 1
            guard state.buffer.count > capacity else { return 0 }
            let extra = state.buffer.count - capacity
            for old in state.buffer.prefix(extra) {
                if let through = state.inFlightThrough, old.seq <= through {
                    state.evictedInFlight[old.record.key ?? "", default: 0] += 1
                } else {
                    state.dropped[old.record.key ?? "", default: 0] += 1
                }
            }
            state.buffer.removeFirst(extra)
            return extra
        }
        if overflow > 0 { countDropped(metrics, overflow) }
    }

    var pending: Int { state.withLock { $0.buffer.count } }

    /// Delivers batches every `interval` until cancelled; a failed batch is kept and tried again.
    func run() async {
        var failures = 0
        while !Task.isCancelled {
            let delay = failures == 0 ? interval : RetryPolicy.backoff(base: interval, failures: failures)
            try? await Task.sleep(seconds: delay)
            failures = await deliverAll() ? 0 : failures + 1
        }
    }

    /// Tries to deliver everything buffered now; returns false if a batch failed (it stays buffered).
    @discardableResult
    func deliverAll() async -> Bool {
        while true {
            let (dropped, batch) = state.withLock { state in
                var bytes = 0
                var count = 0
                for entry in state.buffer.prefix(batchSize) {
                    bytes += entry.record.size
                    if count > 0 && bytes > maxBatchBytes { break }
                    count += 1
                }
                let batch = Array(state.buffer.prefix(count))
                state.inFlightThrough = batch.last?.seq
                state.evictedInFlight = [:]
                return (state.dropped, batch)
            }
            let notes = dropped.sorted { $0.key < $1.key }.compactMap { droppedRecord($0.key, $0.value) }
            if batch.isEmpty && notes.isEmpty { return true }
            do {
                let body = JSON.array((notes + batch.map(\.record)).map(\.body))
                if let deliver {
                    try await deliver(body)
                } else {
                    try await client.send("POST", path, body: body, what: what, policy: .quick)
                }
            } catch {
                state.withLock { state in
                    state.dropped.merge(state.evictedInFlight) { $0 + $1 }
                    state.evictedInFlight = [:]
                    state.inFlightThrough = nil
                }
                log.debug("\(what): \(error); \(pending) record(s) kept for the next attempt")
                return false
            }
            state.withLock { state in
                for (key, count) in dropped {
                    let left = (state.dropped[key] ?? 0) - count
                    state.dropped[key] = left > 0 ? left : nil
                }
                state.inFlightThrough = nil
                state.evictedInFlight = [:]
                if let last = batch.last?.seq {
                    // Some of the batch may already have been dropped by an overflow meanwhile: remove only what is left of it.
                    let delivered = state.buffer.prefix { $0.seq <= last }.count
                    state.buffer.removeFirst(delivered)
                }
            }
        }
    }

    /// Delivers what is buffered, for at most `timeout` seconds (at shutdown).
    func flush(timeout: Double) async {
        _ = await firstOf({ await self.deliverAll(); return () }, { try? await Task.sleep(seconds: timeout) })
    }
}

import Foundation
import XCTest
@testable import PrefectWorker

/// `APIShipper` against `FakePrefectAPI`: batching, order, bounded buffer and the "dropped" note.
final class APIShipperTests: XCTestCase {
    private var fake: FakePrefectAPI!
    /// Bodies of the batches the fake accepted (answered 201), in arrival order.
    private let accepted = FakeAPIBox<[[JSON]]>([])

    override func setUpWithError() throws {
        fake = try FakePrefectAPI()
        let accepted = accepted
        fake.route("POST", "/api/logs/") { _, _, body in
            guard case .array(let records)? = try? JSON.decode(body) else { return .json(422, #"{"detail":"not a list"}"#) }
            accepted.update { $0.append(records) }
            return .json(201, "null")
        }
    }

    override func tearDown() {
        fake.stop()
        fake = nil
    }

    private func shipper(capacity: Int, batchSize: Int = 200) -> APIShipper {
        APIShipper(client: fake.client(), path: "/logs/", what: "shipping test logs", capacity: capacity, batchSize: batchSize,
                   interval: 0.05) { key, count in
            APIShipper.Record(body: .object(["dropped": .int(count), "key": .string(key)]), key: key)
        }
    }

    private func record(_ i: Int, key: String = "run-1") -> APIShipper.Record {
        APIShipper.Record(body: .object(["i": .int(i)]), key: key)
    }

    /// The `i` of every accepted record, in delivery order (notes excluded).
    private var deliveredNumbers: [Int] {
        accepted.value.flatMap { $0 }.compactMap { if case .int(let i)? = $0["i"] { i } else { nil } }
    }

    private var deliveredNotes: [JSON] { accepted.value.flatMap { $0 }.filter { $0["dropped"] != nil } }

    // MARK: -

    func testOrderIsPreservedAcrossBatches() async throws {
        let shipper = shipper(capacity: 100, batchSize: 3)
        for i in 0..<10 { shipper.add(record(i)) }
        let delivered = await shipper.deliverAll()
        XCTAssertTrue(delivered)
        XCTAssertEqual(accepted.value.map(\.count), [3, 3, 3, 1])
        XCTAssertEqual(deliveredNumbers, Array(0..<10))
        XCTAssertEqual(shipper.pending, 0)
        XCTAssertEqual(fake.requests.map(\.path), Array(repeating: "/api/logs/", count: 4))
    }

    func testFailedBatchIsKeptAndOrderSurvivesAnOutage() async throws {
        let shipper = shipper(capacity: 100, batchSize: 4)
        for i in 0..<6 { shipper.add(record(i)) }
        // The second batch meets an outage (503 with Retry-After 0 keeps the client's retries instant).
        fake.inject([.respond(.json(201, "null"))], method: "POST", path: "/api/logs/")
        fake.outage = .unavailable(retryAfter: "0")
        // The first batch is answered by the scripted 201 without reaching the route: count it by hand.
        let firstRound = await shipper.deliverAll()
        XCTAssertFalse(firstRound)
        XCTAssertEqual(shipper.pending, 2, "the failed batch must stay buffered")
        for i in 6..<9 { shipper.add(record(i)) }
        fake.outage = nil
        let secondRound = await shipper.deliverAll()
        XCTAssertTrue(secondRound)
        XCTAssertEqual(deliveredNumbers, Array(4..<9))
        let firstBatch = try XCTUnwrap(fake.requests.first?.json)
        XCTAssertEqual(firstBatch, .array((0..<4).map { .object(["i": .int($0)]) }))
        XCTAssertTrue(deliveredNotes.isEmpty, "nothing was dropped")
    }

    func testOverflowKeepsTheNewestAndReportsTheDroppedCountFirst() async throws {
        let shipper = shipper(capacity: 10)
        fake.outage = .unavailable(retryAfter: "0")
        for i in 0..<25 { shipper.add(record(i)) }
        XCTAssertEqual(shipper.pending, 10)
        let whileDown = await shipper.deliverAll()
        XCTAssertFalse(whileDown)
        XCTAssertTrue(accepted.value.isEmpty)

        fake.outage = nil
        let back = await shipper.deliverAll()
        XCTAssertTrue(back)
        let records = accepted.value.flatMap { $0 }
        XCTAssertEqual(records.first, .object(["dropped": .int(15), "key": .string("run-1")]), "the note comes first")
        XCTAssertEqual(Array(records.dropFirst()), (15..<25).map { .object(["i": .int($0)]) })
        XCTAssertEqual(shipper.pending, 0)

        // The note is sent once.
        shipper.add(record(25))
        await shipper.deliverAll()
        XCTAssertEqual(deliveredNotes.count, 1)
        XCTAssertEqual(deliveredNumbers.last, 25)
    }

    func testDroppedCountsAreKeptPerKey() async throws {
        let shipper = shipper(capacity: 4)
        fake.outage = .unavailable(retryAfter: "0")
        for i in 0..<3 { shipper.add(record(i, key: "run-a")) }
        for i in 3..<8 { shipper.add(record(i, key: "run-b")) }
        fake.outage = nil
        await shipper.deliverAll()
        XCTAssertEqual(deliveredNotes, [.object(["dropped": .int(3), "key": .string("run-a")]),
                                        .object(["dropped": .int(1), "key": .string("run-b")])])
        XCTAssertEqual(deliveredNumbers, [4, 5, 6, 7])
    }

    /// Bug probe: the note is put into the bounded buffer before it is delivered; if the server is still away
    /// and more records arrive, the note is evicted like an ordinary record and the count it carried is lost.
    func testDroppedCountSurvivesAFailedDeliveryAndFurtherOverflow() async throws {
        let shipper = shipper(capacity: 10)
        fake.outage = .unavailable(retryAfter: "0")
        for i in 0..<25 { shipper.add(record(i)) }
        let firstTry = await shipper.deliverAll()
        XCTAssertFalse(firstTry)
        for i in 25..<30 { shipper.add(record(i)) }
        fake.outage = nil
        let back = await shipper.deliverAll()
        XCTAssertTrue(back)

        XCTAssertEqual(deliveredNumbers, Array(20..<30), "the newest records survive")
        // 30 records were produced; those not delivered must all be accounted for by the notes.
        let reported = deliveredNotes.compactMap { note -> Int? in if case .int(let n)? = note["dropped"] { n } else { nil } }
        XCTAssertEqual(reported.reduce(0, +), 30 - deliveredNumbers.count,
                       "notes \(deliveredNotes) do not account for the \(30 - deliveredNumbers.count) dropped records")
    }

    /// Bug probe: records added (with overflow) while a batch is in flight must not be removed in place of it.
    func testRecordsAddedWhileABatchIsInFlightAreNotLost() async throws {
        let shipper = shipper(capacity: 3, batchSize: 3)
        let arrived = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let accepted = accepted
        fake.route("POST", "/api/logs/") { _, _, body in
            arrived.signal()
            _ = release.wait(timeout: .now() + 5)
            if case .array(let records)? = try? JSON.decode(body) { accepted.update { $0.append(records) } }
            return .json(201, "null")
        }
        for i in 0..<3 { shipper.add(record(i)) }
        let delivery = Task { await shipper.deliverAll() }
        // Wait (off the cooperative pool) until the batch [0, 1, 2] is at the server, then add two more.
        let reached = await Task.detached { arrived.wait(timeout: .now() + 5) == .success }.value
        XCTAssertTrue(reached)
        shipper.add(record(3))
        shipper.add(record(4))
        // Later batches must not block.
        fake.route("POST", "/api/logs/") { _, _, body in
            if case .array(let records)? = try? JSON.decode(body) { accepted.update { $0.append(records) } }
            return .json(201, "null")
        }
        release.signal()
        _ = await delivery.value
        await shipper.deliverAll()
        XCTAssertEqual(Array(deliveredNumbers.suffix(2)), [3, 4], "the newest records were lost: delivered \(deliveredNumbers)")
        XCTAssertEqual(shipper.pending, 0)
    }

    func testRunLoopDeliversInTheBackground() async throws {
        let shipper = shipper(capacity: 100)
        let loop = Task { await shipper.run() }
        defer { loop.cancel() }
        for i in 0..<5 { shipper.add(record(i)) }
        let deadline = Date().addingTimeInterval(5)
        while deliveredNumbers.count < 5 && Date() < deadline { try await Task.sleep(nanoseconds: 20_000_000) }
        XCTAssertEqual(deliveredNumbers, Array(0..<5))
        loop.cancel()
        await loop.value
    }
}

extension APIShipperTests {
    /// With `deliver` (the events socket), batches go there instead of `POST path`; one it refuses stays buffered.
    func testADeliverHookTakesTheBatchesAndARefusedOneIsKept() async throws {
        let taken = FakeAPIBox<[JSON]>([])
        let refuseNext = FakeAPIBox(true)
        struct Refused: Error {}
        let shipper = APIShipper(client: fake.client(), path: "/logs/", what: "shipping test records", capacity: 100, batchSize: 2,
                                 interval: 0.05, deliver: { batch in
                                     if refuseNext.update({ let refuse = $0; $0 = false; return refuse }) { throw Refused() }
                                     taken.update { $0.append(batch) }
                                 })
        for i in 0..<3 { shipper.add(record(i)) }
        let first = await shipper.deliverAll()
        XCTAssertFalse(first)
        XCTAssertEqual(shipper.pending, 3, "the refused batch stays buffered")
        let second = await shipper.deliverAll()
        XCTAssertTrue(second)
        XCTAssertEqual(taken.value, [.array([record(0).body, record(1).body]), .array([record(2).body])])
        XCTAssertEqual(fake.requests.count, 0, "no POST /logs/ while a deliver hook is given")
    }
}

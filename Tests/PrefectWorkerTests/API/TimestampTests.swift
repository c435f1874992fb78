import XCTest
@testable import PrefectWorker

final class TimestampTests: XCTestCase {
    private func date(_ seconds: Double) -> Date { Date(timeIntervalSince1970: seconds) }

    func testFormat() {
        XCTAssertEqual(Timestamp.format(date(0)), "1970-01-01T00:00:00.000000Z")
        // 2026-11-23T08:53:40Z = 1795424020
        XCTAssertEqual(Timestamp.format(date(1_795_424_020.364141)), "2026-11-23T08:53:40.364141Z")
        XCTAssertEqual(Timestamp.format(date(1_795_424_020.5)), "2026-11-23T08:53:40.500000Z")
        XCTAssertEqual(Timestamp.format(date(951_782_400)), "2000-02-29T00:00:00.000000Z", "leap day")
        XCTAssertEqual(Timestamp.format(date(-0.5)), "1969-12-31T23:59:59.500000Z")
    }

    func testFormatRoundsMicrosecondsIntoTheNextSecond() {
        XCTAssertEqual(Timestamp.format(date(59.9999996)), "1970-01-01T00:01:00.000000Z")
        XCTAssertEqual(Timestamp.format(date(86_399.9999999)), "1970-01-02T00:00:00.000000Z")
    }

    func testParseServerFormats() throws {
        let expected = 1_795_424_020.364141
        for text in [
            "2026-11-23T08:53:40.364141Z", "2026-11-23T08:53:40.364141z", "2026-11-23T08:53:40.364141+00:00",
            "2026-11-23 08:53:40.364141+00:00", "2026-11-23t08:53:40.364141Z", "2026-11-23T08:53:40.364141",
            "2026-11-23T10:53:40.364141+02:00", "2026-11-23T03:23:40.364141-05:30", "2026-11-23T10:53:40.364141+0200",
        ] {
            let parsed = try XCTUnwrap(Timestamp.parse(text), text)
            XCTAssertEqual(parsed.timeIntervalSince1970, expected, accuracy: 1e-6, text)
        }
    }

    func testParseFractions() throws {
        XCTAssertEqual(try XCTUnwrap(Timestamp.parse("2026-11-23T08:53:40Z")).timeIntervalSince1970, 1_795_424_020)
        XCTAssertEqual(try XCTUnwrap(Timestamp.parse("2026-11-23T08:53:40.5Z")).timeIntervalSince1970, 1_795_424_020.5, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(Timestamp.parse("2026-11-23T08:53:40.123456789Z")).timeIntervalSince1970, 1_795_424_020.123456789, accuracy: 1e-6)
    }

    func testRoundTrip() throws {
        for seconds in [0, 1_795_424_020.364141, 1_700_000_000.000001, 4_102_444_799.999999] {
            let text = Timestamp.format(date(seconds))
            XCTAssertEqual(try XCTUnwrap(Timestamp.parse(text), text).timeIntervalSince1970, seconds, accuracy: 1e-6, text)
        }
    }

    func testRejectsMalformed() {
        for text in [
            "", "2026-11-23", "2026-11-23T08:53", "2026-11-23T08:53:40.Z", "2026-11-23T08:53:40ZZ", "2026-11-23X08:53:40Z",
            "26-11-23T08:53:40Z", "2026-13-01T00:00:00Z", "2026-00-01T00:00:00Z", "2026-11-32T00:00:00Z", "2026-11-00T00:00:00Z",
            "2026-11-23T24:00:00Z", "2026-11-23T23:60:00Z", "2026-11-23T23:59:61Z", "2026-11-23T08:53:40+2", "2026-11-23T08:53:40 UTC",
            "2026-1-23T08:53:40Z", "２０２６-11-23T08:53:40Z",
        ] {
            XCTAssertNil(Timestamp.parse(text), text)
        }
    }
}

import Foundation
import XCTest
@testable import PrefectWorker

/// How loud an outage of a socket is: quiet when it is a moment's, a WARNING once it lasts.
final class OutageLogTests: XCTestCase {
    func testAMomentsLossIsInfoAndALastingOneWarnsOnce() {
        var outage = OutageLog()
        let start = Date()
        XCTAssertEqual(outage.failed(now: start, quietSeconds: 10), .info, "the first failure says so, quietly")
        XCTAssertEqual(outage.failed(now: start.addingTimeInterval(3), quietSeconds: 10), .debug)
        XCTAssertEqual(outage.failed(now: start.addingTimeInterval(11), quietSeconds: 10), .warning, "down longer than the quiet period")
        XCTAssertEqual(outage.failed(now: start.addingTimeInterval(40), quietSeconds: 10), .debug, "one warning per outage")
        XCTAssertEqual(outage.recovered(now: start.addingTimeInterval(45)), 45)
        XCTAssertNil(outage.recovered(now: start.addingTimeInterval(46)), "no outage under way")
        XCTAssertEqual(outage.failed(now: start.addingTimeInterval(50), quietSeconds: 10), .info, "a new outage starts quietly again")
    }
}

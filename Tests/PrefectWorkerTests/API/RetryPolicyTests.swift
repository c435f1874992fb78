import XCTest
@testable import PrefectWorker

final class RetryPolicyTests: XCTestCase {
    func testExponentialScheduleWithoutJitter() {
        let policy = RetryPolicy(maxAttempts: 10, baseDelay: 1, maxDelay: 30, jitter: 0.2)
        // random 0.5 → factor 1.
        let delays = (1...8).map { policy.delay(afterAttempt: $0, retryAfter: nil, random: 0.5) }
        XCTAssertEqual(delays, [1, 2, 4, 8, 16, 30, 30, 30])
    }

    func testJitterBounds() {
        let policy = RetryPolicy(maxAttempts: 10, baseDelay: 1, maxDelay: 30, jitter: 0.2)
        XCTAssertEqual(policy.delay(afterAttempt: 3, retryAfter: nil, random: 0), 3.2, accuracy: 1e-9)
        XCTAssertEqual(policy.delay(afterAttempt: 3, retryAfter: nil, random: 1), 4.8, accuracy: 1e-9)
        XCTAssertEqual(policy.delay(afterAttempt: 3, retryAfter: nil, random: 0.25), 3.6, accuracy: 1e-9)
        // Never above the cap, even with jitter.
        XCTAssertEqual(policy.delay(afterAttempt: 6, retryAfter: nil, random: 1), 30)
        XCTAssertEqual(policy.delay(afterAttempt: 6, retryAfter: nil, random: 0), 24, accuracy: 1e-9)
        for attempt in 1...40 {
            for random in stride(from: 0.0, through: 1.0, by: 0.1) {
                let d = policy.delay(afterAttempt: attempt, retryAfter: nil, random: random)
                XCTAssertGreaterThan(d, 0)
                XCTAssertLessThanOrEqual(d, 30)
            }
        }
        // The default random source stays in bounds too.
        for _ in 0..<100 {
            let d = policy.delay(afterAttempt: 2, retryAfter: nil)
            XCTAssertTrue((1.6...2.4).contains(d), "\(d)")
        }
    }

    func testHugeAttemptNumbersDoNotOverflow() {
        let policy = RetryPolicy.persistent
        XCTAssertEqual(policy.delay(afterAttempt: 10_000, retryAfter: nil, random: 0.5), policy.maxDelay)
        XCTAssertEqual(policy.delay(afterAttempt: Int.max, retryAfter: nil, random: 0.5), policy.maxDelay)
    }

    func testRetryAfterIsHonouredAndCapped() {
        let policy = RetryPolicy(maxAttempts: 5, baseDelay: 1, maxDelay: 30, jitter: 0.2)
        XCTAssertEqual(policy.delay(afterAttempt: 1, retryAfter: 10, random: 0), 10, "never shortened, no jitter")
        XCTAssertEqual(policy.delay(afterAttempt: 1, retryAfter: 45, random: 1), 45, "longer than maxDelay is fine")
        XCTAssertEqual(policy.delay(afterAttempt: 1, retryAfter: 0, random: 1), 0)
        XCTAssertEqual(policy.delay(afterAttempt: 1, retryAfter: 1000, random: 0.5), 120, "capped at 4 × maxDelay")
        XCTAssertEqual(policy.delay(afterAttempt: 2, retryAfter: -1, random: 0.5), 2, "a negative value is ignored")
    }

    func testPresets() {
        XCTAssertEqual(RetryPolicy.once.maxAttempts, 1)
        XCTAssertEqual(RetryPolicy.persistent.maxAttempts, .max)
        XCTAssertGreaterThan(RetryPolicy.standard.maxAttempts, 1)
        XCTAssertLessThan(RetryPolicy.quick.maxDelay, RetryPolicy.standard.maxDelay)
        XCTAssertEqual(RetryPolicy.quick.delay(afterAttempt: 1, retryAfter: nil, random: 0.5), 0.5)
        XCTAssertEqual(RetryPolicy.quick.delay(afterAttempt: 10, retryAfter: nil, random: 1), 5)
    }

    func testParseRetryAfterSeconds() {
        XCTAssertEqual(RetryPolicy.parseRetryAfter("5"), 5)
        XCTAssertEqual(RetryPolicy.parseRetryAfter(" 7 "), 7)
        XCTAssertEqual(RetryPolicy.parseRetryAfter("1.5"), 1.5)
        XCTAssertEqual(RetryPolicy.parseRetryAfter("0"), 0)
        XCTAssertEqual(RetryPolicy.parseRetryAfter("-3"), 0)
        XCTAssertNil(RetryPolicy.parseRetryAfter(nil))
        XCTAssertNil(RetryPolicy.parseRetryAfter(""))
        XCTAssertNil(RetryPolicy.parseRetryAfter("   "))
        XCTAssertNil(RetryPolicy.parseRetryAfter("soon"))
    }

    func testParseRetryAfterHTTPDate() throws {
        // Wed, 21 Oct 2015 07:28:00 GMT = 1445412480
        let date = Date(timeIntervalSince1970: 1_445_412_480)
        let value = "Wed, 21 Oct 2015 07:28:00 GMT"
        XCTAssertEqual(try XCTUnwrap(RetryPolicy.parseRetryAfter(value, now: date.addingTimeInterval(-30))), 30, accuracy: 1e-6)
        XCTAssertEqual(RetryPolicy.parseRetryAfter(value, now: date.addingTimeInterval(60)), 0, "a date in the past means now")
        XCTAssertNil(RetryPolicy.parseRetryAfter("Wed, 32 Oct 2015 07:28:00 GMT", now: date))
    }

    func testRetryableStatuses() {
        for status in [408, 429, 500, 502, 503, 504, 599] {
            XCTAssertTrue(RetryPolicy.isRetryable(status: status), "\(status)")
        }
        for status in [200, 204, 301, 307, 400, 401, 403, 404, 409, 422, 600] {
            XCTAssertFalse(RetryPolicy.isRetryable(status: status), "\(status)")
        }
    }

    func testAPIErrorRetryability() {
        XCTAssertTrue(APIError.transport(endpoint: "GET /x", reason: "refused").isRetryable)
        XCTAssertTrue(APIError.http(endpoint: "GET /x", status: 503, detail: "", retryAfter: nil).isRetryable)
        XCTAssertFalse(APIError.http(endpoint: "GET /x", status: 404, detail: "", retryAfter: nil).isRetryable)
        XCTAssertTrue(APIError.badResponse(endpoint: "GET /x", reason: "bad").isRetryable)
        XCTAssertEqual(APIError.http(endpoint: "GET /x", status: 404, detail: "", retryAfter: nil).status, 404)
        XCTAssertNil(APIError.transport(endpoint: "GET /x", reason: "r").status)
        XCTAssertEqual(APIError.http(endpoint: "GET /x", status: 429, detail: "", retryAfter: 3).retryAfter, 3)
        XCTAssertEqual(APIError.http(endpoint: "GET /x", status: 404, detail: "nope", retryAfter: nil).description, "404 from GET /x: nope")
        XCTAssertEqual(APIError.http(endpoint: "GET /x", status: 500, detail: "", retryAfter: nil).description, "500 from GET /x")
    }

    func testRedactedURL() throws {
        XCTAssertEqual(redactedURL(try XCTUnwrap(URL(string: "http://user:pw@host:1/api"))), "http://***@host:1/api")
        XCTAssertEqual(redactedURL(try XCTUnwrap(URL(string: "http://host/api?token=abc&x=1"))), "http://host/api?token=***&x=***")
        XCTAssertEqual(redactedURL(try XCTUnwrap(URL(string: "http://host:4200/api"))), "http://host:4200/api")
    }

    func testBackgroundLoopBackoffDoublesFiveTimesAndIsCapped() {
        XCTAssertEqual((0...7).map { RetryPolicy.backoff(base: 1, failures: $0) }, [1, 2, 4, 8, 16, 30, 30, 30])
        XCTAssertEqual(RetryPolicy.backoff(base: 0.5, failures: 3), 4)
        XCTAssertEqual(RetryPolicy.backoff(base: 2, failures: 10, cap: 45), 45)
    }
}

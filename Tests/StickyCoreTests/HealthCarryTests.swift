import Foundation
import XCTest
@testable import StickyCore

/// Health across an upgrade (`HealthCarry`): the successor's tracker, on
/// its own clock, behaves as the predecessor's would have.
final class HealthCarryTests: XCTestCase {
    let address = SocketAddress("10.0.0.1:80")!

    func config(_ type: HealthCheckType = .tcp, reviveAfterMs: Millis = 10_000) -> HealthConfig {
        var c = HealthConfig()
        c.type = type
        c.rise = 2
        c.fall = 1
        c.reviveAfterMs = reviveAfterMs
        c.damping.holdDownMs = 4_000
        c.damping.holdDownMaxMs = 60_000
        c.damping.windowMs = 60_000
        return c
    }

    /// Down twice in the window: the second down holds 4 s.
    func flapped(_ c: HealthConfig, at now: Millis) -> HealthTracker {
        var t = HealthTracker(config: c)
        _ = t.probe(ok: false, reason: "refused", now: now - 3_000)
        _ = t.probe(ok: true, reason: "", now: now - 2_500)
        _ = t.probe(ok: true, reason: "", now: now - 2_000)
        XCTAssertEqual(t.status, .up)
        _ = t.probe(ok: false, reason: "refused", now: now - 1_000)
        XCTAssertEqual(t.status, .down)
        return t
    }

    /// Carried through JSON, as the takeover socket sends it.
    func overTheWire(_ c: HealthCarry) throws -> HealthCarry {
        try JSONDecoder().decode(HealthCarry.self, from: JSONEncoder().encode(c))
    }

    func testADownTargetStaysDownWithWhatIsLeftOfItsHold() throws {
        let c = config()
        let old = flapped(c, at: 1_000_000)
        XCTAssertEqual(old.holdRemainingMs(now: 1_000_000), 3_000)
        let carried = try overTheWire(old.carry(pool: "p", address: address, now: 1_000_000))
        XCTAssertTrue(carried.down)
        XCTAssertEqual(carried.downForMs, 1_000)
        XCTAssertEqual(carried.holdRemainingMs, 3_000)
        XCTAssertEqual(carried.recentDownAgesMs, [3_000, 1_000])

        // The successor's clock reads something else entirely.
        var new = HealthTracker(config: c)
        new.restore(carried, now: 50)
        XCTAssertEqual(new.status, .down)
        XCTAssertEqual(new.holdRemainingMs(now: 50), 3_000)
        XCTAssertEqual(new.transitions, old.transitions)
        XCTAssertEqual(new.lastReason, old.lastReason)
        // Rise is met, but not before the hold is over, as in the old one.
        XCTAssertNil(new.probe(ok: true, reason: "", now: 100))
        XCTAssertNil(new.probe(ok: true, reason: "", now: 200))
        XCTAssertEqual(new.status, .down)
        XCTAssertEqual(new.tick(now: 3_050)?.to, .up)
    }

    func testReviveAfterCountsFromTheOriginalDown() throws {
        let c = config(.none, reviveAfterMs: 10_000)
        var old = HealthTracker(config: c)
        _ = old.passiveFailures(1, now: 500_000)
        XCTAssertEqual(old.status, .down)
        let carried = try overTheWire(old.carry(pool: "p", address: address, now: 506_000))
        var new = HealthTracker(config: c)
        new.restore(carried, now: 1_000)
        // Down 6 s already: up 4 s later, not 10.
        XCTAssertNil(new.tick(now: 4_999))
        XCTAssertEqual(new.tick(now: 5_000)?.to, .up)
    }

    func testDampingHistoryMakesTheNextHoldLonger() throws {
        let c = config()
        var old = flapped(c, at: 1_000_000)
        _ = old.probe(ok: true, reason: "", now: 1_005_000)
        _ = old.probe(ok: true, reason: "", now: 1_005_100)
        XCTAssertEqual(old.status, .up)
        XCTAssertTrue(old.worthCarrying)
        var new = HealthTracker(config: c)
        new.restore(try overTheWire(old.carry(pool: "p", address: address, now: 1_006_000)), now: 20_000)
        XCTAssertEqual(new.status, .up)
        // The third down in the window holds twice the second's.
        _ = new.probe(ok: false, reason: "refused", now: 21_000)
        XCTAssertEqual(new.status, .down)
        XCTAssertEqual(new.holdRemainingMs(now: 21_000), 8_000)
    }

    func testAFreshTrackerIsNotCarried() {
        XCTAssertFalse(HealthTracker(config: config()).worthCarrying)
    }
}

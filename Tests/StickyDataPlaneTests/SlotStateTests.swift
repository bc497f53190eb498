import XCTest
@testable import StickyDataPlane

/// The life of a connection slot: the transitions `Slot.enter` accepts are
/// exactly these, and a fresh slot walks them in order.
final class SlotStateTests: XCTestCase {
    let all: [SlotState] = [.free, .proxyHeader, .connecting, .open, .closing]

    func testAllowedTransitionsAreExactlyTheLifeOfAConnection() {
        let allowed: Set<String> = [
            "free→proxyHeader", "free→connecting",
            "proxyHeader→connecting",
            "connecting→open",
            "proxyHeader→closing", "connecting→closing", "open→closing",
            "closing→free",
        ]
        for from in all {
            for to in all {
                XCTAssertEqual(SlotState.allows(from: from, to: to), allowed.contains("\(from)→\(to)"), "\(from) → \(to)")
            }
        }
    }

    func testNoStateReturnsToItself() {
        for s in all { XCTAssertFalse(SlotState.allows(from: s, to: s), "\(s) → \(s)") }
    }

    func testAFreeSlotCannotBeClosedOrOpenedDirectly() {
        XCTAssertFalse(SlotState.allows(from: .free, to: .closing))
        XCTAssertFalse(SlotState.allows(from: .free, to: .open))
        XCTAssertFalse(SlotState.allows(from: .closing, to: .open), "a closing slot never comes back to life")
    }

    func testEnterWalksTheProxyPathAndTheDirectPath() {
        var s = Slot()
        for next in [SlotState.proxyHeader, .connecting, .open, .closing, .free] {
            s.enter(next)
            XCTAssertEqual(s.state, next)
        }
        var d = Slot()
        for next in [SlotState.connecting, .closing, .free] {
            d.enter(next)
            XCTAssertEqual(d.state, next)
        }
    }

    func testLiveStatesHoldAClient() {
        XCTAssertEqual(all.filter(\.isLive), [.proxyHeader, .connecting, .open])
    }
}

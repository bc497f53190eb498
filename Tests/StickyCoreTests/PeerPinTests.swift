import XCTest
@testable import StickyCore

/// Two balancers standing for two instances with one key, driven by a
/// manual clock: pins travel between them as the peer service would carry
/// them (`outgoingPin` → `PeerPin` → `applyPeerPin`).
final class PeerPinTests: XCTestCase {
    typealias T = AffinityBalancerTests
    // Both instances' clocks: Unix second 1_800_000_000 at table second 0.
    let clock = PeerClock(epochSec: 1_800_000_000)

    func make() -> AffinityBalancer { try! AffinityBalancer(targets: T.specs(3), config: T.config()) }

    /// What the peer service sends for the pin `place` just made.
    func sent(_ b: AffinityBalancer, _ p: Placement, now: Millis, reason: PinReason = .new) -> PeerPin {
        let o = b.outgoingPin(entry: p.entry)!
        let nowSec = AffinityTable.seconds(now)
        return PeerPin(key: o.key, target: o.target, idleSec: nowSec &- o.seenSec,
                       pinnedAt: clock.unixSec(ofTableSec: o.pinnedSec, nowSec: nowSec), reason: reason)
    }

    func testClockRoundTripsExactly() {
        for now: UInt32 in [0, 5, 1_000_000] {
            for stamp: UInt64 in [1_799_000_000, 1_800_000_000 + UInt64(now)] {
                XCTAssertEqual(clock.unixSec(ofTableSec: clock.tableSec(ofUnix: stamp, nowSec: now), nowSec: now), stamp)
            }
        }
        // A stamp from a clock ahead of ours reads as now, not lapsed.
        XCTAssertEqual(clock.tableSec(ofUnix: 1_800_000_100, nowSec: 10), 10)
    }

    /// A pin made on A is stored on B, and B then sends the client to A's
    /// target even when B's own pick would differ (B's target there is down
    /// for new clients only in B's eyes: weight is the same, so we force a
    /// difference by excluding A's pick on A).
    func testPeerPinWinsOverAFreshPick() {
        var a = make(), b = make()
        let c = T.client(42)
        var excluded = TargetMask()
        let natural = a.place(client: T.client(42), now: 0, excluding: TargetMask())!
        a.closed(natural, client: c, now: 0)
        _ = a.clearAffinity(.all, now: 0)
        excluded.insert(Int(natural.target))
        let p = a.place(client: c, now: 1_000, excluding: excluded)!
        XCTAssertEqual(a.pinReason(since: PinTally(misses: 0, moves: MoveCounts())), .new)
        XCTAssertEqual(b.applyPeerPin(sent(a, p, now: 1_000), now: 1_050, clock: clock), .stored)
        XCTAssertEqual(T.visit(&b, c, now: 2_000), a.address(ofTarget: Int(p.target)))
        XCTAssertEqual(b.counters.misses, 0)
    }

    /// Both pinned one client at the same moment to different targets: each
    /// applies the other's pin and both end on the same one; one conflict
    /// is counted on each side, and sending the kept pin back changes nothing.
    func testSimultaneousPinsConverge() {
        for (atA, atB) in [(5_000, 5_000), (5_000, 7_000), (7_000, 5_000)] as [(Millis, Millis)] {
            var a = make(), b = make()
            let c = T.client(7)
            let pa = a.place(client: c, now: atA, excluding: TargetMask())!
            var ex = TargetMask()
            ex.insert(Int(pa.target))
            let pb = b.place(client: c, now: atB, excluding: ex)!
            let fromA = sent(a, pa, now: atA), fromB = sent(b, pb, now: atB)
            let now = max(atA, atB) + 50
            let onA = a.applyPeerPin(fromB, now: now, clock: clock)
            let onB = b.applyPeerPin(fromA, now: now, clock: clock)
            let pinA = a.pin(of: c, now: now)!.address, pinB = b.pin(of: c, now: now)!.address
            XCTAssertEqual(pinA, pinB, "A at \(atA), B at \(atB): \(onA) / \(onB)")
            // Exactly one side kept its own pin.
            let kept = [onA, onB].filter { if case .conflictKept = $0 { return true } else { return false } }
            XCTAssertEqual(kept.count, 1, "\(onA) / \(onB)")
            XCTAssertTrue([onA, onB].contains(.conflictTaken))
            if atA != atB { XCTAssertEqual(pinA, atA < atB ? fromA.target : fromB.target, "older wins") }
            // The open connections still close against the targets they were placed on.
            a.closed(pa, client: c, now: now)
            b.closed(pb, client: c, now: now)
            XCTAssertEqual(a.openConnections(target: Int(pa.target)), 0)
            XCTAssertEqual(b.openConnections(target: Int(pb.target)), 0)
        }
    }

    /// A move (the target drained on A) replaces the pin on B once B's
    /// target no longer takes pinned clients there: not a conflict.
    func testAMoveTravelsAsAReplacement() {
        var a = make(), b = make()
        let c = T.client(9)
        let first = a.place(client: c, now: 0, excluding: TargetMask())!
        XCTAssertEqual(b.applyPeerPin(sent(a, first, now: 0), now: 10, clock: clock), .stored)
        a.closed(first, client: c, now: 0)
        let old = a.address(ofTarget: Int(first.target))!
        a.setState(address: old, state: .draining(.strict))
        b.setState(address: old, state: .draining(.strict))
        let tally = a.pinTally
        let moved = a.place(client: c, now: 3_000, excluding: TargetMask())!
        XCTAssertEqual(a.pinReason(since: tally), .targetDrained)
        XCTAssertEqual(b.applyPeerPin(sent(a, moved, now: 3_000, reason: .targetDrained), now: 3_010, clock: clock), .replaced)
        XCTAssertEqual(T.visit(&b, c, now: 4_000), a.address(ofTarget: Int(moved.target)))
        XCTAssertEqual(b.counters.moves.total, 0, "B did not move the client itself")
    }

    func testPinsThatCannotBeUsedAreLeftOut() {
        var b = try! AffinityBalancer(targets: T.specs(3), config: T.config { $0.timeoutMs = 60_000 })
        var pin = PeerPin(key: AffinityKey(T.client(1), maskV4: 32, maskV6: 128), target: SocketAddress("192.0.2.99:1")!,
                          idleSec: 0, pinnedAt: 1_800_000_000, reason: .new)
        XCTAssertEqual(b.applyPeerPin(pin, now: 1_000, clock: clock), .unknownTarget)
        pin.target = T.specs(3)[0].address
        pin.idleSec = 10_000
        XCTAssertEqual(b.applyPeerPin(pin, now: 20_000_000, clock: clock), .expired)
        pin.idleSec = 1
        b.setState(address: pin.target, state: .down)
        XCTAssertEqual(b.applyPeerPin(pin, now: 20_000_000, clock: clock), .unknownTarget)
    }
}

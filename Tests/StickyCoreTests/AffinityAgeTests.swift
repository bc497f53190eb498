import XCTest
@testable import StickyCore

/// `AffinityBalancer.rebalanceForAge`: the age check of an h2c connection,
/// with a manual clock and connections held open the way the data plane
/// holds them (a Placement per connection, `closed` at the end).
final class AffinityAgeTests: XCTestCase {
    typealias T = AffinityBalancerTests

    func make(_ n: Int, _ change: (inout AffinityConfig) -> Void = { _ in }) -> AffinityBalancer {
        try! AffinityBalancer(targets: T.specs(n), config: T.config(change))
    }

    /// Opens a connection for `client` on `target` whatever Maglev and
    /// bounded load would say: every other target is excluded, so the walk
    /// ends at the least loaded candidate, which is the only one.
    func open(_ b: inout AffinityBalancer, _ client: IPAddress, on target: Int, now: Millis = 0) -> Placement {
        var others = TargetMask()
        for info in b.targets where info.index != target { others.insert(info.index) }
        let p = b.place(client: client, now: now, excluding: others)!
        XCTAssertEqual(Int(p.target), target)
        b.opened(p, client: client, now: now)
        return p
    }

    /// An age check of a placement the test does not close afterwards.
    func age(_ b: inout AffinityBalancer, _ placement: Placement, client: IPAddress, now: Millis) -> Bool {
        var p = placement
        return b.rebalanceForAge(&p, client: client, now: now)
    }

    func loads(_ b: AffinityBalancer) -> [Int] {
        b.targets.map(\.connections)
    }

    // MARK: who moves

    func testBalancedPoolMovesNobody() {
        var b = make(3)
        var placements: [Placement] = []
        for i in 0..<300 {
            placements.append(b.place(client: T.client(i), now: 0, excluding: TargetMask())!)
        }
        XCTAssertLessThanOrEqual(loads(b).max()!, 125)
        for (i, p) in placements.enumerated() {
            XCTAssertFalse(age(&b, p, client: T.client(i), now: 60_000), "client \(i)")
        }
        XCTAssertEqual(b.counters.moves.age, 0)
        XCTAssertEqual(b.counters.moves.total, 0)
    }

    /// 12 pinned gRPC clients on 3 targets; a 4th target joins. Bounded
    /// load alone would leave it idle (pinned clients are never spilled);
    /// age checks move clients off over-full targets until none is over.
    func testAddedTargetFillsFromOverloadedTargetsOnly() throws {
        var b = make(3)
        var placements: [Placement] = []
        for i in 0..<12 {
            placements.append(b.place(client: T.client(i), now: 0, excluding: TargetMask())!)
        }
        try b.updateTargets(T.specs(4))
        let added = b.targetIndex(of: T.specs(4)[3].address)!
        XCTAssertEqual(b.openConnections(target: added), 0)
        let bound = 1.25 * 12.0 / 4.0

        var now: Millis = 0
        var moved = 0
        for round in 0..<10 {
            var movedThisRound = 0
            for i in 0..<12 {
                now += 1000
                let before = loads(b)
                var old = placements[i]
                guard b.rebalanceForAge(&old, client: T.client(i), now: now) else { continue }
                XCTAssertGreaterThan(Double(b.openConnections(target: Int(old.target))), bound,
                                     "round \(round): client \(i) moved off a target within its bound, loads \(before)")
                XCTAssertEqual(loads(b), before, "a move changes no load until the client reconnects")
                // The client's GOAWAY: the old connection closes, the next one follows the pin.
                b.closed(old, client: T.client(i), now: now)
                let hits = b.counters.hits
                let new = b.place(client: T.client(i), now: now, excluding: TargetMask())!
                XCTAssertEqual(b.counters.hits, hits + 1, "the new connection is a hit on the moved pin")
                XCTAssertNotEqual(new.target, old.target)
                XCTAssertLessThanOrEqual(Double(b.openConnections(target: Int(new.target))), bound)
                placements[i] = new
                movedThisRound += 1
            }
            moved += movedThisRound
            if movedThisRound == 0 { break }
        }
        let final = loads(b)
        XCTAssertEqual(final.reduce(0, +), 12)
        XCTAssertLessThanOrEqual(Double(final.max()!), bound, "max <= 1.25 x mean: \(final)")
        XCTAssertGreaterThan(b.openConnections(target: added), 0)
        XCTAssertGreaterThan(moved, 0)
        XCTAssertEqual(b.counters.moves.age, UInt64(moved))
        XCTAssertEqual(b.counters.moves.total, UInt64(moved), "no other kind of move")
    }

    func testClientWithinItsTargetsBoundNeverMoves() {
        var b = make(4)
        // 6, 2, 2, 2: mean 3, bound 3.75; only target 0 is over.
        var conns: [(client: IPAddress, placement: Placement)] = []
        for i in 0..<12 {
            let c = T.client(i)
            conns.append((c, open(&b, c, on: i < 6 ? 0 : 1 + i % 3)))
        }
        XCTAssertEqual(loads(b), [6, 2, 2, 2])
        for (c, p) in conns where p.target != 0 {
            for k in 0..<5 {
                XCTAssertFalse(age(&b, p, client: c, now: Millis(k) * 60_000))
            }
            XCTAssertEqual(b.pin(of: c, now: 0)?.target, Int(p.target))
        }
        XCTAssertEqual(b.counters.moves.age, 0)
        let first = conns[0]
        XCTAssertTrue(age(&b, first.placement, client: first.client, now: 0))
        XCTAssertNotEqual(b.pin(of: first.client, now: 0)?.target, 0)
    }

    func testOffWithoutBalanceFactor() {
        var b = make(2) { $0.balanceFactor = nil }
        var conns: [(IPAddress, Placement)] = []
        for i in 0..<10 { conns.append((T.client(i), open(&b, T.client(i), on: 0))) }
        for (c, p) in conns { XCTAssertFalse(age(&b, p, client: c, now: 0)) }
        XCTAssertEqual(b.counters.moves.age, 0)
    }

    /// A sticky drain keeps its clients by the operator's choice; the drain
    /// (not load) decides when they leave.
    func testTargetThatTakesNoNewClientsKeepsItsClients() {
        var b = make(2)
        var conns: [(IPAddress, Placement)] = []
        for i in 0..<10 { conns.append((T.client(i), open(&b, T.client(i), on: 0))) }
        b.setState(target: 0, state: .draining(.sticky))
        for (c, p) in conns { XCTAssertFalse(age(&b, p, client: c, now: 0)) }
        b.setState(target: 0, state: .ready)
        XCTAssertTrue(age(&b, conns[0].1, client: conns[0].0, now: 0))
    }

    func testNoPinNoMove() {
        var b = make(2) { $0.timeoutMs = 10_000 }
        let p = Placement(target: 0)
        XCTAssertFalse(age(&b, p, client: T.client(1), now: 0))
        // A pin that lapsed after its connections closed is no pin either.
        var conns: [(IPAddress, Placement)] = []
        for i in 0..<4 { conns.append((T.client(i), open(&b, T.client(i), on: 0))) }
        for (c, q) in conns { b.closed(q, client: c, now: 0) }
        XCTAssertFalse(age(&b, conns[0].1, client: conns[0].0, now: 60_000))
    }

    // MARK: accounting

    /// The open connection stays counted on its old target until `closed`
    /// with its old Placement; the pin's connection count is the client's,
    /// across both targets, and keeps the entry safe from expiry meanwhile.
    func testLoadsAndPinAcrossAMove() throws {
        var b = make(2) { $0.timeoutMs = 10_000 }
        let x = T.client(0)
        let p = open(&b, x, on: 0)
        _ = open(&b, T.client(1), on: 0)
        _ = open(&b, T.client(2), on: 0)
        XCTAssertEqual(loads(b), [3, 0])

        XCTAssertTrue(age(&b, p, client: x, now: 5_000))
        XCTAssertEqual(loads(b), [3, 0], "nothing reconnected yet")
        var pin = try XCTUnwrap(b.pin(of: x, now: 5_000))
        XCTAssertEqual(pin.target, 1)
        XCTAssertTrue(pin.current)
        XCTAssertEqual(pin.connections, 1, "the open connection still holds the entry")
        XCTAssertEqual(pin.pinnedSec, 5)
        XCTAssertEqual(b.counters.moves.age, 1)

        // Asked again (the data plane's next check, before the GOAWAY took
        // effect): still true, and not counted twice.
        XCTAssertTrue(age(&b, p, client: x, now: 6_000))
        XCTAssertEqual(b.counters.moves.age, 1)

        // The connection lives on past the idle timeout: the entry does not
        // lapse while it is open.
        XCTAssertNotNil(b.pin(of: x, now: 60_000))

        let q = try XCTUnwrap(b.place(client: x, now: 60_000, excluding: TargetMask()))
        XCTAssertEqual(q.target, 1)
        XCTAssertEqual(q.entry, p.entry, "one entry per client")
        XCTAssertEqual(loads(b), [3, 1])
        XCTAssertEqual(b.pin(of: x, now: 60_000)?.connections, 2)

        b.closed(p, client: x, now: 61_000)
        XCTAssertEqual(loads(b), [2, 1])
        pin = try XCTUnwrap(b.pin(of: x, now: 61_000))
        XCTAssertEqual(pin.target, 1, "closing the old connection leaves the moved pin alone")
        XCTAssertEqual(pin.connections, 1)

        b.closed(q, client: x, now: 62_000)
        XCTAssertEqual(loads(b), [2, 0])
        XCTAssertEqual(b.pin(of: x, now: 62_000)?.connections, 0)
        XCTAssertEqual(b.counters.moves.total, 1)
    }

    /// The old target leaves the pool while the moved client's old
    /// connection is still open: its slot stays (counted, not present)
    /// until that `closed`, and the moved pin is untouched by it.
    func testOldTargetRemovedBeforeTheOldConnectionCloses() throws {
        var b = make(3)
        let x = T.client(0)
        let p = open(&b, x, on: 0)
        for i in 1..<6 { _ = open(&b, T.client(i), on: 0) }
        XCTAssertTrue(age(&b, p, client: x, now: 0))
        let to = try XCTUnwrap(b.pin(of: x, now: 0)).target
        try b.updateTargets(Array(T.specs(3)[1...]))
        XCTAssertEqual(b.targets.first { $0.index == 0 }?.present, false)
        XCTAssertEqual(b.openConnections(target: 0), 6)
        b.closed(p, client: x, now: 1_000)
        XCTAssertEqual(b.openConnections(target: 0), 5)
        let pin = try XCTUnwrap(b.pin(of: x, now: 1_000))
        XCTAssertEqual(pin.target, to)
        XCTAssertTrue(pin.current)
        XCTAssertEqual(b.place(client: x, now: 2_000, excluding: TargetMask())?.target, Int32(to))
        XCTAssertEqual(b.counters.moves.targetRemoved, 0, "the moved client was not on the removed target")
    }

    /// Two connections of one client on an over-full target: the first age
    /// check moves the pin, the second connection then follows it too.
    func testSiblingConnectionFollowsTheMovedPin() {
        var b = make(2)
        let x = T.client(0)
        let first = open(&b, x, on: 0)
        let second = b.place(client: x, now: 0, excluding: TargetMask())!
        XCTAssertEqual(second.target, 0, "a hit on the pin")
        for i in 1..<6 { _ = open(&b, T.client(i), on: 0) }
        XCTAssertTrue(age(&b, first, client: x, now: 0))
        XCTAssertTrue(age(&b, second, client: x, now: 0))
        XCTAssertEqual(b.counters.moves.age, 1)
    }

    /// Workers sharing a pool: the bound is checked against pool-wide
    /// loads, so a worker moves its client off a target that other
    /// workers filled.
    func testPoolWideLoadsDecide() throws {
        let shared = SharedLoads()
        var a = make(2)
        var other = make(2)
        a.sharedLoads = shared
        other.sharedLoads = shared
        let x = T.client(0)
        let p = open(&a, x, on: 0)
        XCTAssertFalse(age(&a, p, client: x, now: 0), "one connection: no other target would be within its bound with it")
        for i in 1..<6 { _ = open(&other, T.client(i), on: 0) }
        XCTAssertEqual(a.openConnections(target: 0), 1)
        XCTAssertEqual(shared[0], 6)
        XCTAssertTrue(age(&a, p, client: x, now: 0))
        XCTAssertEqual(a.pin(of: x, now: 0)?.target, 1)
    }

    /// A burst of age checks on one over-full target, before any of the
    /// moved clients has reconnected, sheds only what is over its bound:
    /// connections already told to leave do not count against it.
    func testBurstOfChecksMovesOnlyWhatIsOverTheBound() {
        var b = make(4)
        // 5, 4, 3, 0: mean 3, bound 3.75.
        var conns: [(client: IPAddress, placement: Placement)] = []
        let layout = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
        for (i, t) in layout.enumerated() { conns.append((T.client(i), open(&b, T.client(i), on: t))) }
        XCTAssertEqual(loads(b), [5, 4, 3, 0])
        var movedFrom = [0, 0, 0, 0]
        for k in conns.indices {
            var p = conns[k].placement
            if b.rebalanceForAge(&p, client: conns[k].client, now: 1_000) {
                XCTAssertTrue(p.leavingForAge)
                movedFrom[Int(p.target)] += 1
            }
            conns[k].placement = p
        }
        XCTAssertEqual(movedFrom[0], 2, "5 -> 3: two leave, not all five")
        XCTAssertEqual(movedFrom[1], 1, "4 -> 3: one leaves")
        XCTAssertEqual(movedFrom[2], 0, "3 is within the bound")
        XCTAssertEqual(b.counters.moves.age, 3)
        // A leaving connection is not checked again, and its close
        // settles the count.
        for k in conns.indices where conns[k].placement.leavingForAge {
            var p = conns[k].placement
            XCTAssertFalse(b.rebalanceForAge(&p, client: conns[k].client, now: 2_000))
            b.closed(p, client: conns[k].client, now: 2_000)
        }
        XCTAssertEqual(b.leavingForAge.reduce(0, +), 0)
    }

    /// Two workers checking one over-full target at the same moment: each
    /// claims its leave before it checks, so together they shed only the
    /// excess. (Checking first and counting after let both shed it: a
    /// pod over by one lost two clients in CI.)
    func testConcurrentChecksOnTwoWorkersShedTheExcessOnce() {
        for round in 0..<200 {
            let shared = SharedLoads()
            var workers = [make(4), make(4)]
            workers[0].sharedLoads = shared
            workers[1].sharedLoads = shared
            // Pool-wide 4, 4, 4, 0 on target 0..3; target 0 split 2 + 2.
            // Mean 3, bound 3.75: each of 0, 1 and 2 is over by one.
            var conns: [[(IPAddress, Placement)]] = [[], []]
            let layout = [(0, 0), (0, 0), (1, 0), (1, 0), (0, 1), (0, 1), (1, 1), (1, 1), (0, 2), (0, 2), (1, 2), (1, 2)]
            for (i, (w, t)) in layout.enumerated() {
                conns[w].append((T.client(i), open(&workers[w], T.client(i), on: t)))
            }
            let moved = UnsafeMutablePointer<Int>.allocate(capacity: 2 * 4)
            moved.initialize(repeating: 0, count: 8)
            defer { moved.deallocate() }
            nonisolated(unsafe) let box = (workers: UnsafeMutablePointer<AffinityBalancer>.allocate(capacity: 2), moved: moved)
            box.workers.initialize(from: workers, count: 2)
            defer { box.workers.deinitialize(count: 2); box.workers.deallocate() }
            let conns0 = conns
            DispatchQueue.concurrentPerform(iterations: 2) { w in
                for (client, placement) in conns0[w] {
                    var p = placement
                    if box.workers[w].rebalanceForAge(&p, client: client, now: 1_000) {
                        box.moved[w * 4 + Int(p.target)] += 1
                    }
                }
            }
            for t in 0..<3 {
                XCTAssertEqual(moved[t] + moved[4 + t], 1, "round \(round): target \(t) is over by one")
            }
        }
    }

    /// A moved client counts as arriving on its new target until its next
    /// connection lands there, and while it is between connections it
    /// counts in the pool's total: a late reconnect must not shrink the
    /// bound (and move clients of targets within it).
    func testAMovedClientHoldsItsPlaceUntilItsNextConnectionLands() {
        var b = make(4)
        var conns: [(client: IPAddress, placement: Placement)] = []
        let layout = [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
        for (i, t) in layout.enumerated() { conns.append((T.client(i), open(&b, T.client(i), on: t))) }
        var moved: [(client: IPAddress, placement: Placement)] = []
        for k in conns.indices {
            var p = conns[k].placement
            if b.rebalanceForAge(&p, client: conns[k].client, now: 1_000) { moved.append((conns[k].client, p)) }
        }
        XCTAssertEqual(moved.count, 3)
        for m in moved { b.closed(m.placement, client: m.client, now: 1_500) }
        XCTAssertEqual(b.leavingForAge.reduce(0, +), 0, "the old connections are gone")
        XCTAssertEqual(b.arrivingForAge[3], 3, "their places on target 3 are held")
        XCTAssertEqual(b.inTransitForAge, 3)
        // Between connections, target 1 (4 of 9 open, but 4 of 12 clients)
        // is still within the bound: no one else moves.
        for k in conns.indices where !moved.contains(where: { $0.client == conns[k].client }) {
            XCTAssertFalse(age(&b, conns[k].placement, client: conns[k].client, now: 1_600), "client \(k)")
        }
        // Two come back, on their new pins; the third never does.
        for m in moved.prefix(2) {
            let p = b.place(client: m.client, now: 2_000, excluding: TargetMask())!
            XCTAssertEqual(p.target, 3)
        }
        XCTAssertEqual(b.arrivingForAge[3], 1)
        XCTAssertEqual(b.inTransitForAge, 1)
        XCTAssertEqual(b.ageMoves.count, 1)
        // Its place is given up once the wait runs out.
        _ = b.place(client: T.client(99), now: 1_000 + Millis(AffinityBalancer.ageArrivalWaitSec) * 1_000, excluding: TargetMask())
        XCTAssertEqual(b.arrivingForAge[3], 0)
        XCTAssertEqual(b.inTransitForAge, 0)
        XCTAssertTrue(b.ageMoves.isEmpty)
    }

    /// The usual gRPC order: the client's next connection opens (on the
    /// GOAWAY) before the old one closes; the move settles at the close.
    func testANextConnectionBeforeTheCloseSettlesAtTheClose() {
        var b = make(2)
        let x = T.client(0)
        let first = open(&b, x, on: 0)
        for i in 1..<6 { _ = open(&b, T.client(i), on: 0) }
        var p = first
        XCTAssertTrue(b.rebalanceForAge(&p, client: x, now: 0))
        let next = b.place(client: x, now: 100, excluding: TargetMask())!
        XCTAssertEqual(next.target, 1)
        XCTAssertEqual(b.arrivingForAge[1], 0, "arrived")
        XCTAssertEqual(b.leavingForAge[0], 1, "the old one is still open")
        b.closed(p, client: x, now: 200)
        XCTAssertEqual(b.leavingForAge[0], 0)
        XCTAssertEqual(b.inTransitForAge, 0)
        XCTAssertTrue(b.ageMoves.isEmpty)
    }
}

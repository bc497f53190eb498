import XCTest
@testable import StickyCore

/// The affinity hand-over of a zero-downtime upgrade: what one process
/// exports, its successor imports, and every client keeps its target.
final class AffinityExportTests: XCTestCase {
    typealias T = AffinityBalancerTests

    func balancer(_ specs: [TargetSpec], capacity: Int = 10_000, timeoutMs: Int64 = 3_600_000,
                  mode: AffinityConfig.Mode = .idle) -> AffinityBalancer {
        try! AffinityBalancer(targets: specs, config: T.config {
            $0.capacity = capacity
            $0.timeoutMs = timeoutMs
            $0.mode = mode
        })
    }

    /// Placements that Maglev alone would not reproduce: a drained target's
    /// clients were re-pinned, then it came back, so only the table knows.
    func testRoundTripPreservesPlacements() throws {
        let specs = T.specs(4)
        var a = balancer(specs)
        var before: [IPAddress: SocketAddress] = [:]
        for i in 0..<2000 { before[T.client(i)] = T.visit(&a, T.client(i), now: 1000) }
        a.setState(address: specs[0].address, state: .draining(.strict))
        for i in 0..<2000 { before[T.client(i)] = T.visit(&a, T.client(i), now: 2000) }
        a.setState(address: specs[0].address, state: .ready)
        XCTAssertFalse(before.values.contains(specs[0].address), "strict drain moved every client off target 0")

        let blob = AffinityExport(pools: [.init(name: "p", pins: a.exportPins(now: 5000))]).encoded()
        let decoded = try AffinityExport.decode(blob)
        XCTAssertEqual(decoded.pinCount, 2000)

        // The successor lists the targets in another order: other slots.
        var b = balancer(specs.reversed())
        let result = b.importPins(decoded.pools[0].pins, now: 5000)
        XCTAssertEqual(result.imported, 2000)
        var moved = 0
        for i in 0..<2000 where T.visit(&b, T.client(i), now: 6000) != before[T.client(i)] { moved += 1 }
        XCTAssertEqual(moved, 0, "clients placed elsewhere after the import")
        XCTAssertEqual(b.counters.hits, 2000)
        XCTAssertEqual(b.counters.misses, 0)
    }

    /// Ages travel, not times: the successor's clock may have another
    /// origin, and an entry still lapses when the original would have.
    func testAgesCarryOverAndExpiredPinsAreNotImported() {
        let specs = T.specs(2)
        var a = balancer(specs, timeoutMs: 100_000)
        T.visit(&a, T.client(1), now: 1_000)   // idle 90 s at export
        T.visit(&a, T.client(2), now: 80_000)  // idle 11 s
        let pins = a.exportPins(now: 91_000)
        XCTAssertEqual(pins.map(\.idleSec), [11, 90], "most recently seen first")

        // A successor whose clock reads 7,000,000 s, with a 60 s timeout:
        // the 90 s idle pin has lapsed there.
        var b = balancer(specs, timeoutMs: 60_000)
        let result = b.importPins(pins, now: 7_000_000_000)
        XCTAssertEqual(result.imported, 1)
        XCTAssertEqual(result.expired, 1)
        XCTAssertNil(b.pin(of: T.client(1), now: 7_000_000_000))
        let kept = b.pin(of: T.client(2), now: 7_000_000_000)
        XCTAssertEqual(kept?.connections, 0, "connection counts stay with the old process")
        // 11 s idle at import, 60 s timeout: lapses 49 s later, not before.
        XCTAssertNotNil(b.pin(of: T.client(2), now: 7_000_048_000))
        XCTAssertNil(b.pin(of: T.client(2), now: 7_000_049_000))
    }

    func testExpiredEntriesAreNotExported() {
        var a = balancer(T.specs(2), timeoutMs: 10_000)
        T.visit(&a, T.client(1), now: 0)
        T.visit(&a, T.client(2), now: 20_000)
        XCTAssertEqual(a.exportPins(now: 25_000).count, 1)
    }

    /// A smaller successor table keeps the most recently seen clients, stays
    /// within its capacity, and counts the rest.
    func testImportIntoSmallerTableIsBounded() {
        let specs = T.specs(3)
        var a = balancer(specs)
        for i in 0..<1000 { T.visit(&a, T.client(i), now: Millis(i) * 1000) }
        let pins = a.exportPins(now: 1_000_000)
        XCTAssertEqual(pins.count, 1000)
        var b = balancer(specs, capacity: 100)
        let result = b.importPins(pins, now: 1_000_000)
        XCTAssertLessThanOrEqual(b.counters.size, 100)
        XCTAssertGreaterThan(result.imported, 80, "two-choice buckets with relocation fill most of the table")
        XCTAssertEqual(result.imported + result.overCapacity, 1000)
        XCTAssertNotNil(b.pin(of: T.client(999), now: 1_000_000), "the most recent client is kept")
        XCTAssertNil(b.pin(of: T.client(0), now: 1_000_000), "the least recent client is dropped")
        XCTAssertEqual(b.counters.evictions, 0, "an import never evicts")
    }

    func testPinsToUnknownTargetsAreSkipped() {
        let specs = T.specs(3)
        var a = balancer(specs)
        for i in 0..<300 { T.visit(&a, T.client(i), now: 0) }
        let pins = a.exportPins(now: 0)
        var b = balancer(Array(specs.prefix(2)))
        let result = b.importPins(pins, now: 0)
        let onThird = pins.filter { $0.target == specs[2].address }.count
        XCTAssertGreaterThan(onThird, 0)
        XCTAssertEqual(result.unknownTarget, onThird)
        XCTAssertEqual(result.imported, 300 - onThird)
    }

    func testIPv6AndManyPoolsRoundTrip() throws {
        let v6 = SocketAddress("[2001:db8::7]:443")!
        let export = AffinityExport(pools: [
            .init(name: "a", pins: [ExportedPin(key: AffinityKey(hi: .max, lo: 1), target: v6, idleSec: 3, pinnedAgeSec: 9)]),
            .init(name: "", pins: []),
        ])
        XCTAssertEqual(try AffinityExport.decode(export.encoded()), export)
    }

    func testTruncatedOrForeignBytesAreErrors() {
        let blob = AffinityExport(pools: [.init(name: "p", pins: [
            ExportedPin(key: AffinityKey(hi: 1, lo: 2), target: SocketAddress("10.0.0.1:80")!, idleSec: 0, pinnedAgeSec: 0),
        ])]).encoded()
        for cut in [0, 3, 5, blob.count - 1] {
            XCTAssertThrowsError(try AffinityExport.decode(Array(blob.prefix(cut))), "cut at \(cut)")
        }
        XCTAssertThrowsError(try AffinityExport.decode(blob + [0]))
        var other = blob
        other[4] = 9
        XCTAssertThrowsError(try AffinityExport.decode(other)) { error in
            XCTAssertTrue("\(error)".contains("version 9"), "\(error)")
        }
    }
}

import XCTest
@testable import StickyCore

final class AffinityTableTests: XCTestCase {
    let sipKey = SipKey(k0: 0x1234, k1: 0x5678)

    func k(_ i: Int) -> AffinityKey { AffinityKey(hi: AffinityKey.v4Tag, lo: UInt64(i)) }

    /// Inserts key i at `now` and closes its connection at once.
    @discardableResult
    func add(_ t: inout AffinityTable, _ i: Int, now: Millis, target: UInt16 = 0) -> Int32 {
        let key = k(i)
        let slot = t.insert(key, hash: key.hash(sipKey), target: target, generation: 0, now: now)
        if slot >= 0 { t[slot].connections = 0 }
        return slot
    }

    func has(_ t: AffinityTable, _ i: Int) -> Bool { t.find(k(i), hash: k(i).hash(sipKey)) >= 0 }

    func testEntryIsThirtyTwoBytesAndTableUnderBudget() {
        XCTAssertEqual(MemoryLayout<AffinityEntry>.stride, 32)
        let t = AffinityTable(capacity: 1_048_576, hashKey: sipKey)
        XCTAssertLessThanOrEqual(t.bytesPerEntry, 48)
        XCTAssertGreaterThanOrEqual(t.slotCount, t.capacity)
    }

    func testInsertFindRemove() {
        var t = AffinityTable(capacity: 100, hashKey: sipKey)
        for i in 0..<100 { XCTAssertGreaterThanOrEqual(add(&t, i, now: 0, target: UInt16(i % 7)), 0) }
        XCTAssertEqual(t.count, 100)
        for i in 0..<100 {
            let slot = t.find(k(i), hash: k(i).hash(sipKey))
            XCTAssertGreaterThanOrEqual(slot, 0)
            XCTAssertEqual(t[slot].key, k(i))
            XCTAssertEqual(t[slot].target, UInt16(i % 7))
        }
        XCTAssertFalse(has(t, 100))
        let slot = t.find(k(5), hash: k(5).hash(sipKey))
        t.remove(slot)
        XCTAssertFalse(has(t, 5))
        XCTAssertEqual(t.count, 99)
        // A freed way keeps its old bytes; the exact tag match must not
        // find them.
        XCTAssertFalse(t.isOccupied(slot))
        XCTAssertEqual(t.find(k(5), hash: k(5).hash(sipKey)), -1)
    }

    func testNeverHoldsMoreThanCapacity() {
        var t = AffinityTable(capacity: 1000, hashKey: sipKey)
        for i in 0..<5000 {
            add(&t, i, now: Millis(i) * 1000)
            XCTAssertLessThanOrEqual(t.count, 1000)
        }
        XCTAssertEqual(t.count, 1000)
        XCTAssertEqual(t.evictions + t.expirations, 4000)
        XCTAssertTrue(has(t, 4999))
    }

    func testExpiredEntriesGoBeforeLiveOnes() {
        // A small table: the full-table sweep covers all of it, so the
        // choice is exact here.
        var t = AffinityTable(capacity: 16, mode: .idle, timeoutMs: 10_000, hashKey: sipKey)
        add(&t, 0, now: 0)
        for i in 1..<16 { add(&t, i, now: 20_000) }
        add(&t, 16, now: 25_000)
        XCTAssertFalse(has(t, 0))
        XCTAssertEqual(t.expirations, 1)
        XCTAssertEqual(t.evictions, 0)
        // Nothing expired now: the least recently seen goes.
        add(&t, 17, now: 26_000)
        XCTAssertEqual(t.evictions, 1)
        XCTAssertEqual((1..<18).filter { !has(t, $0) }.count, 1)
        XCTAssertTrue(has(t, 16))
        XCTAssertTrue(has(t, 17))
    }

    func testEntriesWithConnectionsAreNeverDropped() {
        var t = AffinityTable(capacity: 16, mode: .idle, timeoutMs: 0, hashKey: sipKey)
        for i in 0..<16 {
            let key = k(i)
            XCTAssertGreaterThanOrEqual(t.insert(key, hash: key.hash(sipKey), target: 0, generation: 0, now: 0), 0)
        }
        // All have a connection: even with timeout 0 none may go.
        XCTAssertEqual(t.sweep(nowSec: 1_000, slots: 1_000), 0)
        let key = k(99)
        XCTAssertEqual(t.insert(key, hash: key.hash(sipKey), target: 0, generation: 0, now: 1_000_000), -1)
        XCTAssertEqual(t.insertFailures, 1)
        XCTAssertEqual(t.count, 16)
        for i in 0..<16 { XCTAssertTrue(has(t, i)) }
    }

    func testIdleAndAbsoluteExpiry() {
        var idle = AffinityTable(capacity: 8, mode: .idle, timeoutMs: 10_000, hashKey: sipKey)
        var abs = AffinityTable(capacity: 8, mode: .absolute, timeoutMs: 10_000, hashKey: sipKey)
        for var t in [idle, abs] {
            let s = add(&t, 1, now: 0)
            t[s].seenSec = 8 // activity at 8 s
            XCTAssertFalse(t.isExpired(t[s], nowSec: 9))
            if t.mode == .idle {
                XCTAssertFalse(t.isExpired(t[s], nowSec: 17))
                XCTAssertTrue(t.isExpired(t[s], nowSec: 18))
                idle = t
            } else {
                XCTAssertTrue(t.isExpired(t[s], nowSec: 10))
                abs = t
            }
            t[s].connections = 1
            XCTAssertFalse(t.isExpired(t[s], nowSec: 1_000_000))
        }
        // Timeouts round up to whole seconds.
        XCTAssertEqual(AffinityTable(capacity: 1, timeoutMs: 1, hashKey: sipKey).timeoutSec, 1)
        XCTAssertEqual(AffinityTable(capacity: 1, timeoutMs: 10_800_000, hashKey: sipKey).timeoutSec, 10_800)
    }

    func testSweepRemovesOnlyExpired() {
        var t = AffinityTable(capacity: 1000, mode: .idle, timeoutMs: 5_000, hashKey: sipKey)
        for i in 0..<500 { add(&t, i, now: 0) }
        for i in 500..<1000 { add(&t, i, now: 4_000) }
        let removed = t.sweep(nowSec: 6, slots: t.slotCount)
        XCTAssertEqual(removed, 500)
        XCTAssertEqual(t.count, 500)
        XCTAssertEqual(t.expirations, 500)
        for i in 500..<1000 { XCTAssertTrue(has(t, i)) }
    }

    /// Sampled LRU: the victims come from the oldest entries.
    func testEvictionPrefersTheLeastRecentlySeen() {
        let n = 4096
        var t = AffinityTable(capacity: n, hashKey: sipKey)
        for i in 0..<n { add(&t, i, now: Millis(i) * 1000) }
        XCTAssertEqual(t.evictions, 0, "slack should absorb a fill to capacity")
        for i in n..<(n + 1000) { add(&t, i, now: 10_000_000) }
        XCTAssertEqual(t.evictions, 1000)
        let evicted = (0..<n).filter { !has(t, $0) }
        XCTAssertEqual(evicted.count, 1000)
        let fromOldHalf = evicted.filter { $0 < n / 2 }.count
        XCTAssertGreaterThanOrEqual(Double(fromOldHalf) / 1000, 0.95)
    }

    /// Two-choice buckets with 1/8 slack fill to capacity with few early
    /// evictions (none before nearly full).
    func testFillsToCapacityWithFewEarlyEvictions() {
        let n = 100_000
        var t = AffinityTable(capacity: n, hashKey: sipKey)
        var firstEviction = -1
        for i in 0..<n {
            add(&t, i, now: 0)
            if firstEviction < 0 && t.evictions > 0 { firstEviction = i }
        }
        print("early evictions filling \(n): \(t.evictions), first at \(firstEviction)")
        XCTAssertLessThanOrEqual(t.evictions, UInt64(n / 1000))
    }
}

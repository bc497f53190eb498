import XCTest
@testable import StickyCore

final class MaglevTests: XCTestCase {
    let key = SipKey(k0: 0xDEAD_BEEF, k1: 0xFEED_FACE)

    static func targets(_ n: Int, weight: (Int) -> Int = { _ in 1 }) -> [TargetSpec] {
        (0..<n).map { TargetSpec(address: SocketAddress("10.0.\($0 / 250).\($0 % 250 + 1):50051")!, weight: weight($0)) }
    }

    /// The owner, by address, of each slot.
    func owners(_ t: MaglevTable) -> [SocketAddress] { t.slots.map { t.addresses[Int($0)] } }

    func testTableSizeIsAPrimeOfAtLeast100PerTarget() {
        XCTAssertEqual(MaglevTable.tableSize(targets: 1), 65_537)
        XCTAssertEqual(MaglevTable.tableSize(targets: 655), 65_537)
        let big = MaglevTable.tableSize(targets: 700)
        XCTAssertGreaterThanOrEqual(big, 70_000)
        XCTAssertTrue(MaglevTable.isPrime(big))
        XCTAssertFalse(MaglevTable.isPrime(65_535))
    }

    func testDeterministicAndIndependentOfListOrder() {
        let specs = MaglevTests.targets(7)
        let a = MaglevTable(targets: specs, key: key)
        let b = MaglevTable(targets: specs.reversed(), key: key)
        XCTAssertEqual(a.size, 65_537)
        XCTAssertEqual(owners(a), owners(b))
        XCTAssertEqual(a, MaglevTable(targets: specs, key: key))
        // Another key, another table.
        XCTAssertNotEqual(owners(a), owners(MaglevTable(targets: specs, key: SipKey(k0: 1, k1: 1))))
    }

    func testEqualWeightsGetEqualShares() {
        let t = MaglevTable(targets: MaglevTests.targets(10), key: key)
        let counts = t.slotCounts()
        XCTAssertEqual(counts.reduce(0, +), t.size)
        // Maglev hands out slots in turns: equal weights differ by at most one slot.
        XCTAssertLessThanOrEqual(counts.max()! - counts.min()!, 1)
    }

    func testWeightsAreHonoured() {
        let specs = MaglevTests.targets(4) { $0 + 1 } // weights 1, 2, 3, 4
        let t = MaglevTable(targets: specs, key: key)
        let counts = t.slotCounts()
        for (i, c) in counts.enumerated() {
            let ideal = Double(t.size) * Double(i + 1) / 10
            XCTAssertEqual(Double(c), ideal, accuracy: ideal * 0.01, "target \(i)")
        }
        // Weight 0 gets no slot.
        let zero = MaglevTable(targets: MaglevTests.targets(3) { $0 == 1 ? 0 : 5 }, key: key)
        XCTAssertEqual(zero.slotCounts()[1], 0)
        XCTAssertNil(MaglevTable(targets: MaglevTests.targets(2) { _ in 0 }, key: key).lookup(42))
        XCTAssertNil(MaglevTable(targets: [], key: key).lookup(42))
    }

    /// Removing one of N targets remaps little beyond that target's own
    /// slots: within 1.2 × 1/N of all slots, and in practice close to 1/N.
    func testRemovalMovesLittleMoreThanTheRemovedShare() {
        for n in [3, 5, 10, 30] {
            let specs = MaglevTests.targets(n)
            let before = owners(MaglevTable(targets: specs, key: key))
            var rest = specs
            let gone = rest.remove(at: n / 2).address
            let after = owners(MaglevTable(targets: rest, key: key))
            let changed = zip(before, after).filter { $0 != $1 }.count
            let fromOthers = zip(before, after).filter { $0 != $1 && $0 != gone }.count
            let fraction = Double(changed) / Double(before.count)
            XCTAssertLessThanOrEqual(fraction, 1.2 / Double(n), "n=\(n) changed \(fraction), \(fromOthers) from others")
        }
    }

    func testAddingATargetTakesRoughlyItsShare() {
        let specs = MaglevTests.targets(9)
        let before = owners(MaglevTable(targets: specs, key: key))
        let after = owners(MaglevTable(targets: MaglevTests.targets(10), key: key))
        let changed = Double(zip(before, after).filter { $0 != $1 }.count) / Double(before.count)
        XCTAssertLessThanOrEqual(changed, 1.2 / 10)
    }

    func testIdentityCoversFamilyAddressAndPort() {
        let a = MaglevTable.identity(SocketAddress("1.2.3.4:80")!)
        XCTAssertEqual(a, [4, 1, 2, 3, 4, 0, 80])
        XCTAssertNotEqual(a, MaglevTable.identity(SocketAddress("1.2.3.4:81")!))
        XCTAssertEqual(MaglevTable.identity(SocketAddress("[::1]:80")!).count, 19)
    }
}

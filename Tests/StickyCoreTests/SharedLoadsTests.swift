import Dispatch
import StickyCore
import XCTest

final class SharedLoadsTests: XCTestCase {
    func testReserveNeverPassesTheBound() {
        let loads = SharedLoads()
        XCTAssertTrue(loads.reserve(3, under: 2))
        XCTAssertTrue(loads.reserve(3, under: 2))
        XCTAssertFalse(loads.reserve(3, under: 2), "the bound is a ceiling")
        XCTAssertEqual(loads[3], 2)
        loads.add(3, -1)
        XCTAssertTrue(loads.reserve(3, under: 2))
    }

    func testConcurrentReservationsStopExactlyAtTheBound() {
        let loads = SharedLoads()
        // Each thread counts its successes in its own slot of a second
        // SharedLoads (atomics, so the closure may share it).
        let taken = SharedLoads()
        DispatchQueue.concurrentPerform(iterations: 4) { k in
            for _ in 0..<1000 where loads.reserve(0, under: 500) { taken.add(k, 1) }
        }
        XCTAssertEqual(loads[0], 500)
        XCTAssertEqual((0..<4).map { taken[$0] }.reduce(0, +), 500)
    }

    /// Two workers' balancers over one pool: together they never put more
    /// on a target than the pool-wide bound allows.
    func testTwoBalancersShareTheBound() throws {
        let targets = (1...3).map { TargetSpec(address: SocketAddress("10.0.0.\($0):80")!) }
        let config = AffinityConfig(hashKey: SipKey(k0: 1, k1: 2))
        let shared = SharedLoads()
        var a = try AffinityBalancer(targets: targets, config: config)
        var b = try AffinityBalancer(targets: targets, config: config)
        a.sharedLoads = shared
        b.sharedLoads = shared
        for i in 0..<120 {
            let client = IPAddress.v4(0x0B00_0000 | UInt32(i))
            if i % 2 == 0 { _ = a.place(client: client, now: 0, excluding: TargetMask()) }
            else { _ = b.place(client: client, now: 0, excluding: TargetMask()) }
        }
        let counts = (0..<3).map { shared[$0] }
        XCTAssertEqual(counts.reduce(0, +), 120)
        XCTAssertLessThanOrEqual(counts.max()!, 50, "1.25 x mean 40: \(counts)")
        XCTAssertEqual((0..<3).map { a.openConnections(target: $0) + b.openConnections(target: $0) }, counts,
                       "shared counts match the balancers' own")
    }
}

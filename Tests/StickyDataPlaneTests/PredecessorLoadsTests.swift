import StickyCore
import XCTest
@testable import StickyDataPlane

/// After an upgrade, the old daemon's open connections count in the
/// successor's pool-wide loads (`WorkerPool.predecessorLoads`), by the
/// slots as they are after every target change.
final class PredecessorLoadsTests: XCTestCase {
    let a = SocketAddress("10.0.0.1:80")!
    let b = SocketAddress("10.0.0.2:80")!
    let c = SocketAddress("10.0.0.3:80")!
    let key = SipKey.random()

    func setup(_ addresses: [SocketAddress], shared: SharedLoads) -> PoolSetup {
        let specs = addresses.map { TargetSpec(address: $0) }
        return PoolSetup(name: "p", targets: specs, states: specs.map { _ in .ready },
                         affinity: AffinityConfig(capacity: 1024, hashKey: key),
                         maglev: MaglevTable(targets: specs, key: key), sharedLoads: shared)
    }

    func testLoadsFollowTheirTargetsAndGoWhenTheOldDaemonDoes() throws {
        let shared = SharedLoads()
        let pool = try WorkerPool(setup([a, b], shared: shared), shareLoads: true)
        pool.setPredecessorLoads([a: 5, b: 2, c: 9])
        let sa = try XCTUnwrap(pool.balancer.targetIndex(of: a))
        let sb = try XCTUnwrap(pool.balancer.targetIndex(of: b))
        XCTAssertEqual(shared[sa], 5)
        XCTAssertEqual(shared[sb], 2)
        // A newer figure replaces the last one, it does not add to it.
        pool.setPredecessorLoads([a: 3, b: 2, c: 9])
        XCTAssertEqual(shared[sa], 3)

        // b leaves, c comes (the pool does not have c until now).
        let specs = [a, c].map { TargetSpec(address: $0) }
        pool.setTargets(specs, states: [.ready, .ready], maglev: MaglevTable(targets: specs, key: key))
        let sc = try XCTUnwrap(pool.balancer.targetIndex(of: c))
        XCTAssertEqual(shared[sa], 3)
        XCTAssertEqual(shared[sc], 9)
        if sb != sc { XCTAssertEqual(shared[sb], 0) }

        // The old daemon exited.
        pool.setPredecessorLoads([:])
        for s in 0..<SharedLoads.slots { XCTAssertEqual(shared[s], 0, "slot \(s)") }
    }
}

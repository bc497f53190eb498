import StickyCore
import XCTest

final class TargetRegistryTests: XCTestCase {
    func spec(_ a: String, _ w: Int = 1) -> TargetSpec { TargetSpec(address: SocketAddress(a)!, weight: w) }

    func config(_ targets: [TargetSpec]) -> StickyConfig {
        StickyConfig(listeners: [ListenerConfig(address: SocketAddress("127.0.0.1:7000")!, pool: "web")],
                     pools: [PoolConfig(name: "web", targets: targets)])
    }

    func testReloadAddsDrainsAndReweightsOnlyWhatTheConfigOwns() throws {
        var r = TargetRegistry(config: config([spec("10.0.0.1:80"), spec("10.0.0.2:80")]))
        _ = r.add(pool: nil, address: SocketAddress("10.0.0.9:80")!, weight: 1, name: nil)  // runtime
        let plan = try r.reload(config([spec("10.0.0.1:80", 3), spec("10.0.0.3:80")]), now: 1000).get()
        XCTAssertEqual(plan.added.map { "\($0.address)" }, ["10.0.0.3:80"])
        XCTAssertEqual(plan.draining.map { "\($0.address)" }, ["10.0.0.2:80"])
        XCTAssertEqual(plan.reweighted.map { $0.weight }, [3])
        let byAddress = Dictionary(uniqueKeysWithValues: r.pools[0].targets.map { ("\($0.spec.address)", $0) })
        XCTAssertEqual(byAddress["10.0.0.9:80"]?.state, .ready, "a runtime target is the operator's, not the file's")
        XCTAssertEqual(byAddress["10.0.0.2:80"]?.state, .draining(.strict))
        XCTAssertEqual(byAddress["10.0.0.2:80"]?.drain?.removeAtDeadline, true)

        // Past the deadline the drain expires; past the grace it leaves.
        XCTAssertEqual(r.expireDrains(now: 1000 + 60_000).count, 1)
        XCTAssertEqual(r.removeExpiredReloadDrains(now: 1000 + 60_000, graceMs: 5_000), [])
        XCTAssertEqual(r.removeExpiredReloadDrains(now: 1000 + 65_000, graceMs: 5_000), [0])
        XCTAssertNil(r.pools[0].targets.first { "\($0.spec.address)" == "10.0.0.2:80" })
    }

    func testReloadRefusesAChangedPoolSetAndChangesNothing() {
        var r = TargetRegistry(config: config([spec("10.0.0.1:80")]))
        var other = config([spec("10.0.0.1:80", 5)])
        other.pools.append(PoolConfig(name: "api", targets: [spec("10.0.0.7:80")]))
        let before = r
        guard case .failure(let e) = r.reload(other, now: 0) else { return XCTFail("accepted a new pool") }
        XCTAssertTrue(e.message.contains("needs a restart"), e.message)
        XCTAssertEqual(r, before)
    }

    /// Open connections were set up for their pool's protocol (engine,
    /// frame tracker) and cannot follow a change.
    func testReloadRefusesAChangedProtocolAndChangesNothing() throws {
        var r = TargetRegistry(config: config([spec("10.0.0.1:80")]))
        XCTAssertEqual(r.pools[0].wireProtocol, .tcp)
        var h2c = config([spec("10.0.0.1:80"), spec("10.0.0.2:80")])
        h2c.pools[0].wireProtocol = .h2c
        let before = r
        guard case .failure(let e) = r.reload(h2c, now: 0) else { return XCTFail("accepted a protocol change") }
        XCTAssertEqual(e.message, "pool 'web': protocol changed (running: tcp; file: h2c); open connections cannot change protocol, so this needs a restart or an upgrade (docs/OPERATIONS.md)")
        XCTAssertEqual(r, before, "not even the added target")

        var running = TargetRegistry(config: h2c)
        XCTAssertEqual(running.pools[0].wireProtocol, .h2c)
        h2c.pools[0].maxConnectionAgeMs = 60_000
        XCTAssertEqual(try running.reload(h2c, now: 0).get().added.count, 0, "the same protocol reloads")
    }
}

import StickyCore
import XCTest

/// applyDiscovery and removeGone: what a discovery source's view does to a
/// pool, and what it never overrides.
final class DiscoveryRegistryTests: XCTestCase {
    func a(_ s: String) -> SocketAddress { SocketAddress(s)! }
    func ready(_ s: String, _ name: String? = nil) -> DiscoveredEndpoint { DiscoveredEndpoint(address: a(s), ready: true, name: name) }
    func notReady(_ s: String) -> DiscoveredEndpoint { DiscoveredEndpoint(address: a(s), ready: false, reason: "terminating") }

    func registry(_ config: [String] = []) -> TargetRegistry {
        var r = TargetRegistry(pools: [PoolRecord(name: "g", targets: config.map {
            TargetRecord(spec: TargetSpec(address: SocketAddress($0)!), origin: .config)
        })])
        r.drainTimeoutMsDefault = 10_000
        return r
    }

    func record(_ r: TargetRegistry, _ s: String) -> TargetRecord? { r.pools[0].targets.first { $0.spec.address == a(s) } }

    func testReadyIsAddedNotReadyIsNotAndConditionsDriveTheState() {
        var r = registry()
        var out = r.applyDiscovery(pool: 0, endpoints: [ready("10.0.0.1:80", "pod-1"), notReady("10.0.0.2:80")], now: 0)
        XCTAssertEqual(out.added, [a("10.0.0.1:80")])
        XCTAssertEqual(out.changes, [.targets(pool: 0)])
        XCTAssertEqual(record(r, "10.0.0.1:80")?.origin, .discovery)
        XCTAssertEqual(record(r, "10.0.0.1:80")?.spec.name, "pod-1")
        XCTAssertNil(record(r, "10.0.0.2:80"), "a pod that is not ready yet gets nothing")

        // Terminating: a strict drain with the default timeout, started by discovery.
        out = r.applyDiscovery(pool: 0, endpoints: [notReady("10.0.0.1:80")], now: 1_000)
        XCTAssertEqual(out.drained, [a("10.0.0.1:80")])
        XCTAssertEqual(record(r, "10.0.0.1:80")?.state, .draining(.strict))
        XCTAssertEqual(record(r, "10.0.0.1:80")?.drain?.deadlineMs, 11_000)
        XCTAssertEqual(record(r, "10.0.0.1:80")?.drain?.byDiscovery, true)
        // The same view again changes nothing (the drain is not restarted).
        XCTAssertFalse(r.applyDiscovery(pool: 0, endpoints: [notReady("10.0.0.1:80")], now: 2_000).changedAnything)
        XCTAssertEqual(record(r, "10.0.0.1:80")?.drain?.deadlineMs, 11_000)
        // Ready again (a readiness probe that recovered): discovery ends its own drain.
        out = r.applyDiscovery(pool: 0, endpoints: [ready("10.0.0.1:80")], now: 3_000)
        XCTAssertEqual(out.readied, [a("10.0.0.1:80")])
        XCTAssertEqual(record(r, "10.0.0.1:80")?.state, .ready)
    }

    func testAnOperatorsDrainOrMaintWins() {
        var r = registry()
        _ = r.applyDiscovery(pool: 0, endpoints: [ready("10.0.0.1:80"), ready("10.0.0.2:80")], now: 0)
        _ = r.drain(pool: nil, address: a("10.0.0.1:80"), mode: .sticky, timeoutMs: 60_000, now: 10)
        _ = r.setState(pool: nil, address: a("10.0.0.2:80"), .maint)
        let out = r.applyDiscovery(pool: 0, endpoints: [ready("10.0.0.1:80"), notReady("10.0.0.2:80")], now: 20)
        XCTAssertFalse(out.changedAnything, "\(out)")
        XCTAssertEqual(record(r, "10.0.0.1:80")?.state, .draining(.sticky))
        XCTAssertEqual(record(r, "10.0.0.2:80")?.state, .maint)
    }

    func testGoneTargetsDrainThenLeaveWhenIdleOrCut() {
        var r = registry(["10.0.0.9:80"])
        _ = r.applyDiscovery(pool: 0, endpoints: [ready("10.0.0.1:80"), ready("10.0.0.2:80")], now: 0)
        let out = r.applyDiscovery(pool: 0, endpoints: [], now: 1_000)
        XCTAssertEqual(Set(out.drained), [a("10.0.0.1:80"), a("10.0.0.2:80")])
        XCTAssertEqual(record(r, "10.0.0.9:80")?.state, .ready, "a config target is the file's")
        XCTAssertEqual(Set(r.discoveryGone(pool: 0, current: [])), [a("10.0.0.1:80"), a("10.0.0.2:80")])
        // One still has a connection: it stays until the deadline and grace.
        var removed = r.removeGone(pool: 0, current: [], connections: [a("10.0.0.1:80"): 2], now: 1_100, graceMs: 5_000)
        XCTAssertEqual(removed, [a("10.0.0.2:80")])
        _ = r.expireDrains(now: 11_000)
        XCTAssertEqual(r.removeGone(pool: 0, current: [], connections: [a("10.0.0.1:80"): 2], now: 15_999, graceMs: 5_000), [])
        removed = r.removeGone(pool: 0, current: [], connections: [a("10.0.0.1:80"): 2], now: 16_000, graceMs: 5_000)
        XCTAssertEqual(removed, [a("10.0.0.1:80")])
        XCTAssertEqual(r.pools[0].targets.map(\.spec.address), [a("10.0.0.9:80")])
    }

    func testAFullPoolLeavesTheRestOutAndConfigAddressesStayTheFiles() {
        var r = registry(["10.0.0.1:80"])
        let many = (1...70).map { ready("10.1.0.\($0):80") } + [ready("10.0.0.1:80")]
        let out = r.applyDiscovery(pool: 0, endpoints: many, now: 0)
        XCTAssertEqual(r.pools[0].targets.count, TargetMask.capacity)
        XCTAssertEqual(out.added.count, TargetMask.capacity - 1)
        XCTAssertEqual(out.leftOut.count, 70 - (TargetMask.capacity - 1))
        XCTAssertEqual(out.conflicts, [a("10.0.0.1:80")])
        XCTAssertEqual(record(r, "10.0.0.1:80")?.origin, .config)
    }

    func testStateFileKeepsDiscoveryTargetsAndWhoDrained() throws {
        var r = registry()
        _ = r.applyDiscovery(pool: 0, endpoints: [ready("10.0.0.1:80")], now: 0)
        _ = r.applyDiscovery(pool: 0, endpoints: [notReady("10.0.0.1:80")], now: 0)
        let file = StateFile(registry: r, hashKey: nil, nowMs: 0, nowUnixMs: 1_000_000)
        let decoded = try StateFile.decode(try file.encoded(), file: "state.json")
        let (merged, warnings) = decoded.overlay(on: registry(), nowMs: 0, nowUnixMs: 1_000_000)
        XCTAssertEqual(warnings, [])
        XCTAssertEqual(record(merged, "10.0.0.1:80")?.origin, .discovery)
        XCTAssertEqual(record(merged, "10.0.0.1:80")?.drain?.byDiscovery, true)
    }
}

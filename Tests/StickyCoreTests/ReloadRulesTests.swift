import Foundation
import StickyCore
import XCTest

/// The table in docs/CONFIG.md ("Reload and restart: the rules"), row by
/// row: what a reload that lists or drops a config target, an admin
/// command, and a restart (the state file laid over the config) do to it.
/// Time is passed in; a restart goes through the state file's JSON.
final class ReloadRulesTests: XCTestCase {
    static let drainMs: Millis = 60_000
    static let graceMs: Millis = 5_000
    let a = SocketAddress("10.0.0.1:80")!
    let b = SocketAddress("10.0.0.2:80")!
    let c = SocketAddress("10.0.0.3:80")!

    func config(_ targets: [SocketAddress]) -> StickyConfig {
        StickyConfig(listeners: [ListenerConfig(address: SocketAddress("127.0.0.1:7000")!, pool: "web")],
                     pools: [PoolConfig(name: "web", targets: targets.map { TargetSpec(address: $0) })])
    }

    func registry(_ targets: [SocketAddress]) -> TargetRegistry {
        var r = TargetRegistry(config: config(targets))
        r.drainTimeoutMsDefault = ReloadRulesTests.drainMs
        return r
    }

    func record(_ r: TargetRegistry, _ address: SocketAddress) -> TargetRecord? {
        r.pools[0].targets.first { $0.spec.address == address }
    }

    @discardableResult
    func reload(_ r: inout TargetRegistry, _ targets: [SocketAddress], now: Millis) throws -> ReloadPlan {
        try r.reload(config(targets), now: now).get()
    }

    /// A restart at `now` (monotonic and wall clock alike) with `targets`
    /// in the config: the registry written, read back, and laid over it.
    func restart(_ r: TargetRegistry, _ targets: [SocketAddress], now: Millis) throws -> (TargetRegistry, [String]) {
        let data = try StateFile(registry: r, hashKey: nil, nowMs: now, nowUnixMs: now).encoded()
        let file = try StateFile.decode(data, file: "state.json")
        var base = registry(targets)
        base.drainModeDefault = r.drainModeDefault
        return file.overlay(on: base, nowMs: now, nowUnixMs: now)
    }

    /// Ticks as the control plane does: expire drains, then remove the
    /// targets the file dropped once their grace has passed.
    func tick(_ r: inout TargetRegistry, now: Millis) -> [Int] {
        _ = r.expireDrains(now: now)
        return r.removeExpiredReloadDrains(now: now, graceMs: ReloadRulesTests.graceMs)
    }

    // MARK: ready

    func testReadyListedStaysReadyAndTakesTheFilesWeight() throws {
        var r = registry([a, b])
        let plan = try r.reload(StickyConfig(listeners: config([a]).listeners,
                                             pools: [PoolConfig(name: "web", targets: [TargetSpec(address: a, weight: 3), TargetSpec(address: b)])]),
                                now: 0).get()
        XCTAssertEqual(record(r, a)?.state, .ready)
        XCTAssertEqual(record(r, a)?.spec.weight, 3)
        XCTAssertTrue(plan.restored.isEmpty && plan.held.isEmpty && plan.draining.isEmpty)
    }

    func testReadyDroppedDrainsByReloadAndLeavesAtTheDeadline() throws {
        var r = registry([a, b])
        let plan = try reload(&r, [a], now: 1_000)
        XCTAssertEqual(plan.draining.map { $0.address }, [b])
        XCTAssertEqual(plan.changes, [.state(pool: 0, address: b, state: .draining(.strict))])
        XCTAssertEqual(record(r, b)?.state, .draining(.strict))
        XCTAssertEqual(record(r, b)?.drain?.byReload, true)
        XCTAssertEqual(record(r, b)?.drain?.cause, .reload)
        XCTAssertEqual(record(r, b)?.leavingTheFile, true)
        XCTAssertEqual(tick(&r, now: 1_000 + ReloadRulesTests.drainMs), [])
        XCTAssertNotNil(record(r, b), "cut at the deadline, still there through the grace")
        XCTAssertEqual(tick(&r, now: 1_000 + ReloadRulesTests.drainMs + ReloadRulesTests.graceMs), [0])
        XCTAssertNil(record(r, b))
        // Once gone, listing it again adds it, ready.
        XCTAssertEqual(try reload(&r, [a, b], now: 100_000).added.map { $0.address }, [b])
        XCTAssertEqual(record(r, b)?.state, .ready)
    }

    // MARK: draining, by a reload

    func testReloadDrainListedAgainIsRestored() throws {
        var r = registry([a, b, c])
        try reload(&r, [a, b], now: 0)
        let plan = try reload(&r, [a, b, c], now: 10_000)
        XCTAssertEqual(plan.restored.map { $0.address }, [c])
        XCTAssertEqual(plan.added.count, 0)
        XCTAssertEqual(plan.changes, [.state(pool: 0, address: c, state: .ready)])
        XCTAssertEqual(record(r, c)?.state, .ready)
        XCTAssertNil(record(r, c)?.drain)
        XCTAssertEqual(tick(&r, now: 1_000_000), [], "no removal pending")
        XCTAssertNotNil(record(r, c))
    }

    /// The issue's failure: a few edits left every target draining.
    func testRepeatedEditsNeverLeaveEveryTargetDraining() throws {
        var r = registry([a, b, c])
        for (i, dropped) in [a, b, c, a, b, c].enumerated() {
            try reload(&r, [a, b, c].filter { $0 != dropped }, now: Millis(i) * 1_000)
            XCTAssertEqual(r.pools[0].targets.filter { $0.state == .ready }.count, 2)
            try reload(&r, [a, b, c], now: Millis(i) * 1_000 + 500)
            XCTAssertEqual(r.pools[0].targets.map(\.state), [.ready, .ready, .ready])
        }
    }

    func testReloadDrainDroppedAgainKeepsItsDeadline() throws {
        var r = registry([a, b])
        try reload(&r, [a], now: 0)
        let plan = try reload(&r, [a], now: 30_000)
        XCTAssertTrue(plan.draining.isEmpty && plan.changes.isEmpty)
        XCTAssertEqual(record(r, b)?.drain?.deadlineMs, ReloadRulesTests.drainMs)
    }

    func testReloadDrainPastItsDeadlineIsStillRestoredWithinTheGrace() throws {
        var r = registry([a, b])
        try reload(&r, [a], now: 0)
        XCTAssertEqual(tick(&r, now: ReloadRulesTests.drainMs), [])
        XCTAssertEqual(record(r, b)?.drain?.expired, true)
        XCTAssertEqual(try reload(&r, [a, b], now: ReloadRulesTests.drainMs + 1).restored.map { $0.address }, [b])
        XCTAssertEqual(record(r, b)?.state, .ready)
        XCTAssertEqual(tick(&r, now: ReloadRulesTests.drainMs + ReloadRulesTests.graceMs), [])
        XCTAssertNotNil(record(r, b))
    }

    // MARK: draining, by an admin command

    func testAdminDrainListedStaysDrained() throws {
        var r = registry([a, b])
        _ = r.drain(pool: nil, address: b, mode: .sticky, timeoutMs: 600_000, now: 0)
        let plan = try reload(&r, [a, b], now: 1_000)
        XCTAssertTrue(plan.changes.isEmpty && plan.restored.isEmpty && plan.held.isEmpty)
        XCTAssertEqual(record(r, b)?.state, .draining(.sticky))
        XCTAssertEqual(record(r, b)?.drain?.cause, .admin)
        XCTAssertEqual(record(r, b)?.leavingTheFile, false)
    }

    func testAdminDrainDroppedKeepsItsModeAndDeadlineThenLeaves() throws {
        var r = registry([a, b])
        _ = r.drain(pool: nil, address: b, mode: .sticky, timeoutMs: 120_000, now: 0)
        let plan = try reload(&r, [a], now: 1_000)
        XCTAssertEqual(plan.draining.map { $0.address }, [b])
        XCTAssertTrue(plan.changes.isEmpty, "the data path already has it draining")
        XCTAssertEqual(record(r, b)?.state, .draining(.sticky))
        XCTAssertEqual(record(r, b)?.drain?.deadlineMs, 120_000)
        XCTAssertEqual(record(r, b)?.drain?.removeAtDeadline, true)
        XCTAssertEqual(tick(&r, now: 120_000 + ReloadRulesTests.graceMs), [0])
        XCTAssertNil(record(r, b))
    }

    func testAdminDrainDroppedThenListedStaysTheOperatorsDrain() throws {
        var r = registry([a, b])
        _ = r.drain(pool: nil, address: b, mode: .strict, timeoutMs: 120_000, now: 0)
        try reload(&r, [a], now: 1_000)
        let plan = try reload(&r, [a, b], now: 2_000)
        XCTAssertEqual(plan.held.map { $0.address }, [b])
        XCTAssertTrue(plan.restored.isEmpty && plan.changes.isEmpty)
        XCTAssertEqual(record(r, b)?.state, .draining(.strict))
        XCTAssertEqual(record(r, b)?.drain?.removeAtDeadline, false)
        XCTAssertEqual(tick(&r, now: 1_000_000), [], "no longer leaves")
        XCTAssertEqual(record(r, b)?.state, .draining(.strict))
    }

    // MARK: maint

    func testMaintListedStaysInMaint() throws {
        var r = registry([a, b])
        _ = r.setState(pool: nil, address: b, .maint)
        XCTAssertTrue(try reload(&r, [a, b], now: 0).changes.isEmpty)
        XCTAssertEqual(record(r, b)?.state, .maint)
    }

    func testMaintDroppedStaysInMaintAndLeavesAtTheDefaultDeadline() throws {
        var r = registry([a, b])
        _ = r.setState(pool: nil, address: b, .maint)
        let plan = try reload(&r, [a], now: 1_000)
        XCTAssertEqual(plan.draining.map { $0.address }, [b])
        XCTAssertTrue(plan.changes.isEmpty)
        XCTAssertEqual(record(r, b)?.state, .maint)
        XCTAssertEqual(record(r, b)?.drain?.byReload, false)
        XCTAssertEqual(tick(&r, now: 1_000 + ReloadRulesTests.drainMs + ReloadRulesTests.graceMs), [0])
        XCTAssertNil(record(r, b))
    }

    func testMaintDroppedThenListedStaysInMaint() throws {
        var r = registry([a, b])
        _ = r.setState(pool: nil, address: b, .maint)
        try reload(&r, [a], now: 1_000)
        XCTAssertEqual(try reload(&r, [a, b], now: 2_000).held.map { $0.address }, [b])
        XCTAssertEqual(record(r, b)?.state, .maint)
        XCTAssertNil(record(r, b)?.drain)
        XCTAssertEqual(tick(&r, now: 1_000_000), [])
    }

    // MARK: removed by an admin command

    func testAdminRemovedStaysRemovedWhileListedAndIsForgottenWhenDropped() throws {
        var r = registry([a, b])
        _ = r.remove(pool: nil, address: b, force: false, openConnections: 0)
        XCTAssertTrue(try reload(&r, [a, b], now: 0).added.isEmpty, "the operator removed it")
        XCTAssertNil(record(r, b))
        try reload(&r, [a], now: 1_000)
        XCTAssertEqual(r.pools[0].removedConfigTargets, [])
        XCTAssertEqual(try reload(&r, [a, b], now: 2_000).added.map { $0.address }, [b], "the file adds it anew")
    }

    // MARK: admin commands on a target the file dropped

    func testAdminDrainOfADroppedTargetIsTheOperatorsAndStillLeaves() throws {
        var r = registry([a, b])
        try reload(&r, [a], now: 0)
        _ = r.drain(pool: nil, address: b, mode: .sticky, timeoutMs: 10_000, now: 1_000)
        XCTAssertEqual(record(r, b)?.drain?.byReload, false)
        XCTAssertEqual(record(r, b)?.drain?.removeAtDeadline, true)
        XCTAssertEqual(tick(&r, now: 11_000 + ReloadRulesTests.graceMs), [0], "leaves at the new deadline")
        XCTAssertNil(record(r, b))

        var listed = registry([a, b])
        try reload(&listed, [a], now: 0)
        _ = listed.drain(pool: nil, address: b, mode: .sticky, timeoutMs: 10_000, now: 1_000)
        XCTAssertEqual(try reload(&listed, [a, b], now: 2_000).held.map { $0.address }, [b])
        XCTAssertEqual(record(listed, b)?.state, .draining(.sticky), "listing it again keeps the operator's drain")
    }

    func testAdminMaintOfADroppedTargetStaysInMaintAndStillLeaves() throws {
        var r = registry([a, b])
        try reload(&r, [a], now: 0)
        XCTAssertEqual(try r.setState(pool: nil, address: b, .maint).get(), .state(pool: 0, address: b, state: .maint))
        XCTAssertEqual(record(r, b)?.drain?.deadlineMs, ReloadRulesTests.drainMs, "the removal keeps its deadline")
        var listed = r
        XCTAssertEqual(tick(&r, now: ReloadRulesTests.drainMs + ReloadRulesTests.graceMs), [0])
        XCTAssertNil(record(r, b))
        XCTAssertEqual(try reload(&listed, [a, b], now: 1_000).held.map { $0.address }, [b])
        XCTAssertEqual(record(listed, b)?.state, .maint)
    }

    func testAdminReadyOfADroppedTargetIsRefused() throws {
        var r = registry([a, b])
        try reload(&r, [a], now: 0)
        let before = r
        guard case .failure(let e) = r.setState(pool: nil, address: b, .ready) else { return XCTFail("made ready") }
        XCTAssertEqual(e.message, "10.0.0.2:80 is leaving pool 'web': the config file no longer lists it; list it again and reload (SIGHUP), or add it back once it has left")
        XCTAssertEqual(r, before)
    }

    func testAdminRemoveOfADroppedTargetIsNotTheOperatorsRemoval() throws {
        var r = registry([a, b])
        try reload(&r, [a], now: 0)
        _ = try r.remove(pool: nil, address: b, force: true, openConnections: 2).get()
        XCTAssertEqual(r.pools[0].removedConfigTargets, [])
        XCTAssertEqual(try reload(&r, [a, b], now: 1_000).added.map { $0.address }, [b])
    }

    // MARK: runtime and discovery targets

    func testRuntimeAndDiscoveryTargetsAreNotTheFiles() throws {
        var r = registry([a])
        _ = r.add(pool: nil, address: b, weight: 1, name: nil)
        _ = r.applyDiscovery(pool: 0, endpoints: [DiscoveredEndpoint(address: c, ready: true)], now: 0)
        try reload(&r, [a], now: 0)
        XCTAssertEqual(record(r, b)?.state, .ready)
        XCTAssertEqual(record(r, c)?.state, .ready)
        // Listing them does not make them the file's either.
        try reload(&r, [a, b, c], now: 1_000)
        XCTAssertEqual(record(r, b)?.origin, .runtime)
        XCTAssertEqual(record(r, c)?.origin, .discovery)
        let (after, _) = try restart(r, [a], now: 2_000)
        XCTAssertEqual(after.pools[0].targets.map(\.spec.address), [a, b, c], "a restart keeps them")
    }

    // MARK: restart

    func testRestartKeepsReadyAndDropsWhatTheConfigDropped() throws {
        let r = registry([a, b])
        let (after, warnings) = try restart(r, [a], now: 0)
        XCTAssertEqual(after.pools[0].targets.map(\.spec.address), [a])
        XCTAssertEqual(warnings, ["pool 'web': 10.0.0.2:80 was removed from the config; dropped"])
    }

    func testRestartWithAReloadDrainedTargetBackInTheConfigMakesItReady() throws {
        var r = registry([a, b])
        try reload(&r, [a], now: 0)
        let json = String(decoding: try StateFile(registry: r, hashKey: nil, nowMs: 0, nowUnixMs: 0).encoded(), as: UTF8.self)
        XCTAssertTrue(json.contains(#""drain_by_reload" : true"#), json)
        let (back, warnings) = try restart(r, [a, b], now: 1_000)
        XCTAssertEqual(record(back, b)?.state, .ready)
        XCTAssertNil(record(back, b)?.drain)
        XCTAssertEqual(warnings, ["pool 'web': 10.0.0.2:80 is in the config again; the drain a reload started is ended, and it is ready"])
        let (gone, _) = try restart(r, [a], now: 1_000)
        XCTAssertNil(record(gone, b), "still dropped: the config dropped it")
    }

    func testRestartKeepsAnAdminDrainWithTheTimeLeftAndMaint() throws {
        var r = registry([a, b, c])
        _ = r.drain(pool: nil, address: b, mode: .sticky, timeoutMs: 30_000, now: 0)
        _ = r.setState(pool: nil, address: c, .maint)
        let (after, warnings) = try restart(r, [a, b, c], now: 10_000)
        XCTAssertEqual(warnings, [])
        XCTAssertEqual(record(after, b)?.state, .draining(.sticky))
        XCTAssertEqual(record(after, b)?.drain?.deadlineMs, 30_000)
        XCTAssertEqual(record(after, b)?.drain?.byReload, false)
        XCTAssertEqual(record(after, b)?.drain?.removeAtDeadline, false)
        XCTAssertEqual(record(after, c)?.state, .maint)
        // An operator's drain or maint the file had dropped and lists again: the same.
        var dropped = r
        try reload(&dropped, [a], now: 1_000)
        let (relisted, _) = try restart(dropped, [a, b, c], now: 10_000)
        XCTAssertEqual(record(relisted, b)?.state, .draining(.sticky))
        XCTAssertEqual(record(relisted, b)?.drain?.removeAtDeadline, false)
        XCTAssertEqual(record(relisted, c)?.state, .maint)
        XCTAssertNil(record(relisted, c)?.drain)
    }

    func testRestartKeepsAnAdminRemoval() throws {
        var r = registry([a, b])
        _ = r.remove(pool: nil, address: b, force: false, openConnections: 0)
        let (after, _) = try restart(r, [a, b], now: 0)
        XCTAssertNil(record(after, b))
        XCTAssertEqual(after.pools[0].removedConfigTargets, [b])
    }

    /// A state file written before `drain_by_reload`: it loads, and a drain
    /// in it counts as the operator's (nothing it says is lost).
    func testAnOldStateFileLoadsAndItsDrainsStay() throws {
        let old = """
        {"version": 1, "written_at_unix_ms": 0, "pools": [{"name": "web", "removed_config_targets": [], "targets": [
          {"address": "10.0.0.1:80", "weight": 1, "state": "ready", "origin": "config"},
          {"address": "10.0.0.2:80", "weight": 1, "state": "draining", "drain_mode": "strict",
           "drain_deadline_unix_ms": 50000, "origin": "config"}]}]}
        """
        let file = try StateFile.decode(Data(old.utf8), file: "state.json")
        let (r, warnings) = file.overlay(on: registry([a, b]), nowMs: 0, nowUnixMs: 0)
        XCTAssertEqual(warnings, [])
        XCTAssertEqual(record(r, b)?.state, .draining(.strict))
        XCTAssertEqual(record(r, b)?.drain?.byReload, false)
    }
}

import XCTest
@testable import StickyCore

/// Panic mode (the health book decides it from the registry and health) and
/// the trial connects that revive a passively downed target sooner than
/// `revive_after` (docs/HEALTH.md). Time is a parameter throughout.
final class PanicModeTests: XCTestCase {
    static let addresses = (1...4).map { SocketAddress("127.0.0.1:900\($0)")! }

    /// A registry of one pool with `weights.count` targets, and a book over
    /// it with passive detection taking a target down at its first failure.
    func make(_ weights: [Int] = [1, 1, 1], threshold: Int = 50) -> (TargetRegistry, HealthBook) {
        let targets = weights.enumerated().map { TargetRecord(spec: TargetSpec(address: Self.addresses[$0], weight: $1), origin: .config) }
        let reg = TargetRegistry(pools: [PoolRecord(name: "p", targets: targets)])
        var c = HealthConfig()
        c.fall = 1
        c.damping.holdDownMs = 0
        c.panicThreshold = threshold
        var book = HealthBook(configs: [c])
        book.sync(reg)
        return (reg, book)
    }

    func down(_ book: inout HealthBook, _ i: Int, now: Millis = 0) {
        XCTAssertEqual(book.passiveFailures(pool: 0, address: Self.addresses[i], count: 1, now: now)?.to, .down)
    }

    func effective(_ book: HealthBook, _ reg: TargetRegistry) -> [TargetState] {
        reg.pools[0].targets.map { book.effectiveState(pool: 0, record: $0) }
    }

    // MARK: panic mode

    func testEntersBelowThresholdAndLeavesAtIt() {
        let (reg, initial) = make()
        var book = initial
        XCTAssertNil(book.updatePanic(pool: 0, reg), "all healthy: no panic")
        down(&book, 0)
        XCTAssertNil(book.updatePanic(pool: 0, reg), "2 of 3 healthy (66%) is not below 50%")
        XCTAssertEqual(effective(book, reg), [.down, .ready, .ready])

        down(&book, 1)
        let enter = book.updatePanic(pool: 0, reg)
        XCTAssertEqual(enter?.panic, true)
        XCTAssertEqual(enter?.share, PanicShare(healthyWeight: 1, readyWeight: 3))
        XCTAssertEqual(enter?.share.percent, 33)
        XCTAssertTrue(book.inPanic(pool: 0))
        XCTAssertEqual(book.panicEntered, [1])
        XCTAssertEqual(effective(book, reg), [.ready, .ready, .ready], "in panic, health-down targets take clients")
        XCTAssertEqual(book.panicked(pool: 0, reg.pools[0]), [Self.addresses[0], Self.addresses[1]])
        XCTAssertNil(book.updatePanic(pool: 0, reg), "no change, nothing to report")

        down(&book, 2)
        XCTAssertNil(book.updatePanic(pool: 0, reg), "all down is still the same panic")
        XCTAssertEqual(effective(book, reg), [.ready, .ready, .ready])

        XCTAssertNil(book.trialResult(pool: 0, address: Self.addresses[2], ok: true, reason: "", now: 1),
                     "a result for a trial never started is ignored")
        XCTAssertEqual(book.tick(now: 10_000).count, 3, "revive_after brings all three up")
        let leave = book.updatePanic(pool: 0, reg)
        XCTAssertEqual(leave?.panic, false)
        XCTAssertFalse(book.inPanic(pool: 0))
        XCTAssertEqual(book.panicEntered, [1], "leaving does not count an entry")
        XCTAssertEqual(book.panicked(pool: 0, reg.pools[0]), [])
    }

    func testExactlyAtTheThresholdIsNotPanic() {
        let (reg, initial) = make([1, 1])
        var book = initial
        down(&book, 0)
        XCTAssertNil(book.updatePanic(pool: 0, reg), "1 of 2 is 50%, not below it")
        XCTAssertEqual(effective(book, reg), [.down, .ready])
    }

    func testShareIsOfTheReadyWeight() {
        // A heavy target down is most of the capacity.
        let (reg, initial) = make([3, 1])
        var book = initial
        down(&book, 0)
        XCTAssertEqual(book.updatePanic(pool: 0, reg)?.share, PanicShare(healthyWeight: 1, readyWeight: 4))

        // Drained, maint and weight-0 targets are not ready weight: with
        // only the healthy one ready, the pool is 100% healthy.
        var (reg2, book2) = make([1, 1, 1, 0])
        _ = reg2.drain(pool: nil, address: Self.addresses[0], mode: .strict, timeoutMs: nil, now: 0)
        _ = reg2.setState(pool: nil, address: Self.addresses[1], .maint)
        down(&book2, 0)
        down(&book2, 1)
        down(&book2, 3)
        XCTAssertEqual(book2.share(pool: 0, reg2.pools[0]), PanicShare(healthyWeight: 1, readyWeight: 1))
        XCTAssertNil(book2.updatePanic(pool: 0, reg2))
    }

    func testDrainAndMaintAreNeverOverridden() {
        var (reg, book) = make([1, 1, 1, 1])
        _ = reg.drain(pool: nil, address: Self.addresses[0], mode: .sticky, timeoutMs: nil, now: 0)
        _ = reg.setState(pool: nil, address: Self.addresses[1], .maint)
        for i in 0..<4 { down(&book, i) }
        XCTAssertEqual(book.updatePanic(pool: 0, reg)?.panic, true, "nothing of the ready weight is healthy")
        XCTAssertEqual(effective(book, reg), [.draining(.sticky), .maint, .ready, .ready],
                       "panic gives back the operator's state: a drain stays a drain, maint stays maint")
        XCTAssertEqual(book.panicked(pool: 0, reg.pools[0]), [Self.addresses[0], Self.addresses[2], Self.addresses[3]],
                       "a target in maint is not put back by panic")
        // Out of panic, health's verdict is back over the drain.
        _ = book.tick(now: 10_000)
        XCTAssertEqual(book.updatePanic(pool: 0, reg)?.panic, false)
        XCTAssertEqual(effective(book, reg), [.draining(.sticky), .maint, .ready, .ready])
    }

    func testZeroThresholdTurnsPanicOff() {
        let (reg, initial) = make(threshold: 0)
        var book = initial
        for i in 0..<3 { down(&book, i) }
        XCTAssertNil(book.updatePanic(pool: 0, reg))
        XCTAssertEqual(effective(book, reg), [.down, .down, .down], "everything refused, as before panic mode")
    }

    func testThresholdHundredPanicsOnAnyDown() {
        let (reg, initial) = make(threshold: 100)
        var book = initial
        down(&book, 0)
        XCTAssertEqual(book.updatePanic(pool: 0, reg)?.panic, true)
    }

    func testConfigThreshold() throws {
        func parse(_ v: String) throws -> StickyConfig {
            try ConfigLoader.parse("""
            listeners:
              - address: 127.0.0.1:7001
            pools:
              - name: web
                targets:
                  - address: 127.0.0.1:8081
                health: { type: none, panic_threshold: \(v) }
            """, file: "test.yaml")
        }
        XCTAssertEqual(HealthConfig().panicThreshold, 50)
        XCTAssertEqual(try parse("30").pools[0].health.panicThreshold, 30)
        XCTAssertEqual(try parse("\"30%\"").pools[0].health.panicThreshold, 30)
        XCTAssertEqual(try parse("0").pools[0].health.panicThreshold, 0)
        for (bad, says) in [("101", "from 0 to 100"), ("-1", "from 0 to 100"), ("half", "whole percentage")] {
            XCTAssertThrowsError(try parse(bad), bad) { e in
                let message = (e as? ConfigError)?.message ?? "\(e)"
                XCTAssertTrue(message.contains("health.panic_threshold") && message.contains(says), message)
            }
        }
    }

    // MARK: the balancer in panic

    /// The workers get the operator's states in panic (all ready here) and
    /// the panicked targets for counting; connect failover still skips the
    /// target that just refused.
    func testBalancerCountsPanicPlacementsAndFailoverStillExcludes() throws {
        let specs = (0..<3).map { TargetSpec(address: Self.addresses[$0]) }
        var b = try AffinityBalancer(targets: specs, config: AffinityConfig(capacity: 1_000, hashKey: SipKey(k0: 1, k1: 2)))
        b.setPanicked([Self.addresses[0], Self.addresses[1], SocketAddress("127.0.0.9:1")!])
        var onPanicked = 0
        for i in 0..<300 {
            let client = IPAddress.v4(0x6440_0000 &+ UInt32(i))
            let p = try XCTUnwrap(b.place(client: client, now: 0, excluding: TargetMask()))
            if Int(p.target) != b.targetIndex(of: Self.addresses[2]) { onPanicked += 1 }
            b.closed(p, client: client, now: 0)
        }
        XCTAssertGreaterThan(onPanicked, 0)
        XCTAssertEqual(b.counters.panicPlacements, UInt64(onPanicked), "only placements on panicked targets count")

        var excluding = TargetMask()
        excluding.insert(b.targetIndex(of: Self.addresses[0])!)
        excluding.insert(b.targetIndex(of: Self.addresses[1])!)
        for i in 0..<50 {
            let client = IPAddress.v4(0x6440_0000 &+ UInt32(i))
            let p = try XCTUnwrap(b.place(client: client, now: 0, excluding: excluding))
            XCTAssertEqual(b.address(ofTarget: Int(p.target)), Self.addresses[2], "a target that just refused is skipped")
            b.closed(p, client: client, now: 0)
        }
        b.setPanicked([])
        let before = b.counters.panicPlacements
        let p = try XCTUnwrap(b.place(client: .v4(1), now: 0, excluding: TargetMask()))
        b.closed(p, client: .v4(1), now: 0)
        XCTAssertEqual(b.counters.panicPlacements, before, "out of panic nothing counts")
    }

    // MARK: trial connects

    func passiveTracker(reviveAfterMs: Millis = 10_000, holdDownMs: Millis = 0) -> HealthTracker {
        var c = HealthConfig()
        c.fall = 1
        c.reviveAfterMs = reviveAfterMs
        c.damping.holdDownMs = holdDownMs
        return HealthTracker(config: c)
    }

    func testTrialConnectRevivesAfterASecond() {
        var t = passiveTracker()
        XCTAssertFalse(t.trialDue(now: 0), "an up target gets no trial")
        XCTAssertEqual(t.passiveFailures(1, now: 5_000)?.to, .down)
        XCTAssertFalse(t.trialDue(now: 5_999))
        XCTAssertTrue(t.trialDue(now: 6_000), "the first trial a second after the down")
        t.trialStarted(now: 6_000)
        XCTAssertFalse(t.trialDue(now: 6_001), "one trial out at a time")
        let up = t.trialResult(ok: true, reason: "tcp connect ok", now: 6_002)
        XCTAssertEqual(up?.to, .up)
        XCTAssertTrue(up?.reason.contains("trial connect ok") ?? false, "\(String(describing: up))")
        XCTAssertEqual(t.status, .up)
        XCTAssertEqual(t.trials, 1)
        XCTAssertEqual(t.trialRevives, 1)
    }

    func testFailedTrialsBackOffUpToReviveAfter() {
        var t = passiveTracker()
        _ = t.passiveFailures(1, now: 0)
        var started: [Millis] = []
        for now in stride(from: Millis(0), through: 9_900, by: 100) where t.trialDue(now: now) {
            t.trialStarted(now: now)
            started.append(now)
            XCTAssertNil(t.trialResult(ok: false, reason: "connection refused", now: now + 50))
        }
        // 1 s after the down, then waits of 2 s and 4 s (each counted from
        // the failed trial); the next (8 s) would come after revive_after.
        XCTAssertEqual(started, [1_000, 3_100, 7_200])
        XCTAssertTrue(t.lastReason.contains("trial connect failed: connection refused"), t.lastReason)
        XCTAssertEqual(t.tick(now: 10_000)?.to, .up, "revive_after still revives, as before")
    }

    func testTrialBackoffIsCappedByReviveAfter() {
        var t = passiveTracker(reviveAfterMs: 500)
        _ = t.passiveFailures(1, now: 0)
        XCTAssertFalse(t.trialDue(now: 500), "revive_after under a second: no trial, the plain revive is first")
        XCTAssertEqual(t.tick(now: 500)?.to, .up)
    }

    func testTrialWaitsForHoldDown() {
        var t = passiveTracker(holdDownMs: 5_000)
        _ = t.passiveFailures(1, now: 0)
        XCTAssertTrue(t.trialDue(now: 1_000))
        t.trialStarted(now: 1_000)
        _ = t.trialResult(ok: true, reason: "", now: 1_000)
        XCTAssertEqual(t.status, .up, "first down in the window: no hold")
        _ = t.passiveFailures(1, now: 2_000)
        XCTAssertEqual(t.holdRemainingMs(now: 2_000), 5_000, "second down is held")
        XCTAssertFalse(t.trialDue(now: 3_000))
        XCTAssertFalse(t.trialDue(now: 6_999))
        XCTAssertTrue(t.trialDue(now: 7_000), "the first trial when the hold ends")
    }

    func testLostTrialCountsAsFailed() {
        var t = passiveTracker()
        _ = t.passiveFailures(1, now: 0)
        t.trialStarted(now: 1_000)
        XCTAssertNil(t.tick(now: 1_000 + t.trialLostMs - 1))
        XCTAssertNotNil(t.trialStartedMs)
        XCTAssertNil(t.tick(now: 1_000 + t.trialLostMs))
        XCTAssertNil(t.trialStartedMs, "a report that never came does not stop the trials")
        XCTAssertTrue(t.trialDue(now: 1_000 + t.trialLostMs + 2_000))
    }

    func testActiveChecksGetNoTrials() {
        var c = HealthConfig()
        c.type = .tcp
        c.fall = 1
        var t = HealthTracker(config: c)
        _ = t.probe(ok: false, reason: "refused", now: 0)
        XCTAssertFalse(t.trialDue(now: 100_000), "active checks are their own trials")
    }

    func testBookStartsEachDueTrialOnce() {
        let (_, initial) = make()
        var book = initial
        down(&book, 0, now: 0)
        down(&book, 1, now: 500)
        XCTAssertEqual(book.startDueTrials(now: 999).map(\.address), [])
        XCTAssertEqual(book.startDueTrials(now: 1_000).map(\.address), [Self.addresses[0]])
        XCTAssertEqual(book.startDueTrials(now: 1_500).map(\.address), [Self.addresses[1]])
        XCTAssertEqual(book.startDueTrials(now: 1_600).count, 0, "both out")
        XCTAssertEqual(book.trialResult(pool: 0, address: Self.addresses[1], ok: true, reason: "", now: 1_700)?.to, .up)
        XCTAssertEqual(book.status(pool: 0, address: Self.addresses[0]), .down)
    }
}

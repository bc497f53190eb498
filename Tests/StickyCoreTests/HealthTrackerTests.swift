import XCTest
@testable import StickyCore

final class HealthTrackerTests: XCTestCase {
    func config(_ type: HealthCheckType = .tcp, rise: Int = 2, fall: Int = 3, holdDownMs: Millis = 2_000,
                holdDownMaxMs: Millis = 8_000, windowMs: Millis = 60_000) -> HealthConfig {
        var c = HealthConfig()
        c.type = type
        c.rise = rise
        c.fall = fall
        c.damping.holdDownMs = holdDownMs
        c.damping.holdDownMaxMs = holdDownMaxMs
        c.damping.windowMs = windowMs
        return c
    }

    /// Fails `fall` times at `now`; returns the last transition.
    func takeDown(_ t: inout HealthTracker, now: Millis) -> HealthTransition? {
        var last: HealthTransition?
        for _ in 0..<t.config.fall { last = t.probe(ok: false, reason: "refused", now: now) }
        return last
    }

    func testStartsUp() {
        let t = HealthTracker(config: config())
        XCTAssertEqual(t.status, .up)
        XCTAssertEqual(t.transitions, 0)
    }

    func testFallNeedsConsecutiveFailures() {
        var t = HealthTracker(config: config(fall: 3))
        XCTAssertNil(t.probe(ok: false, reason: "refused", now: 0))
        XCTAssertNil(t.probe(ok: false, reason: "refused", now: 1))
        // A success resets the count.
        XCTAssertNil(t.probe(ok: true, reason: "", now: 2))
        XCTAssertNil(t.probe(ok: false, reason: "refused", now: 3))
        XCTAssertNil(t.probe(ok: false, reason: "refused", now: 4))
        XCTAssertEqual(t.status, .up)
        let down = t.probe(ok: false, reason: "refused", now: 5)
        XCTAssertEqual(down?.to, .down)
        XCTAssertTrue(down?.reason.contains("refused") ?? false, "\(String(describing: down))")
        XCTAssertEqual(t.status, .down)
        XCTAssertEqual(t.transitions, 1)
    }

    func testRiseNeedsConsecutiveSuccesses() {
        var t = HealthTracker(config: config(rise: 2, fall: 1))
        XCTAssertEqual(t.probe(ok: false, reason: "refused", now: 0)?.to, .down)
        XCTAssertNil(t.probe(ok: true, reason: "", now: 100))
        XCTAssertNil(t.probe(ok: false, reason: "timeout", now: 200))
        XCTAssertNil(t.probe(ok: true, reason: "", now: 300))
        XCTAssertEqual(t.status, .down)
        XCTAssertEqual(t.probe(ok: true, reason: "", now: 400)?.to, .up)
        XCTAssertEqual(t.status, .up)
        XCTAssertEqual(t.transitions, 2)
    }

    func testPassiveFailuresCountTowardFall() {
        var t = HealthTracker(config: config(fall: 3))
        XCTAssertNil(t.passiveFailures(2, now: 0))
        XCTAssertEqual(t.status, .up)
        // Probe failures and passive ones add up.
        let down = t.probe(ok: false, reason: "refused", now: 1)
        XCTAssertEqual(down?.to, .down)
        XCTAssertEqual(t.status, .down)
    }

    func testPassiveBurstTakesDownAtOnce() {
        var t = HealthTracker(config: config(fall: 3))
        let down = t.passiveFailures(5, now: 0)
        XCTAssertEqual(down?.to, .down)
        XCTAssertTrue(down?.reason.contains("data path") ?? false)
    }

    func testPassiveOffIgnoresConnectFailures() {
        var c = config(fall: 1)
        c.passive = false
        var t = HealthTracker(config: c)
        XCTAssertNil(t.passiveFailures(10, now: 0))
        XCTAssertEqual(t.status, .up)
    }

    func testSuccessfulProbeResetsPassiveCount() {
        var t = HealthTracker(config: config(fall: 3))
        XCTAssertNil(t.passiveFailures(2, now: 0))
        XCTAssertNil(t.probe(ok: true, reason: "", now: 1))
        XCTAssertNil(t.passiveFailures(2, now: 2))
        XCTAssertEqual(t.status, .up)
    }

    func testFirstDownInWindowHoldsNothing() {
        var t = HealthTracker(config: config(rise: 1, fall: 1))
        XCTAssertEqual(takeDown(&t, now: 1_000)?.to, .down)
        XCTAssertEqual(t.holdRemainingMs(now: 1_000), 0)
        XCTAssertEqual(t.probe(ok: true, reason: "", now: 1_001)?.to, .up)
    }

    func testFlappingIsDampedAndHoldDoubles() {
        var t = HealthTracker(config: config(rise: 1, fall: 1, holdDownMs: 2_000, holdDownMaxMs: 8_000))
        var now: Millis = 0
        // Down #1: no hold.
        _ = takeDown(&t, now: now)
        XCTAssertEqual(t.probe(ok: true, reason: "", now: now + 10)?.to, .up)
        // Down #2 in the window: held 2 s.
        now = 1_000
        _ = takeDown(&t, now: now)
        XCTAssertEqual(t.holdRemainingMs(now: now), 2_000)
        XCTAssertNil(t.probe(ok: true, reason: "", now: now + 500), "up while held down")
        XCTAssertNil(t.probe(ok: true, reason: "", now: now + 1_999), "up while held down")
        XCTAssertEqual(t.status, .down)
        // The hold ends with rise already met: the tick brings it up.
        XCTAssertEqual(t.tick(now: now + 2_000)?.to, .up)
        // Down #3: 4 s; down #4: 8 s; down #5: still 8 s (the ceiling).
        for (k, want) in [(3, Millis(4_000)), (4, 8_000), (5, 8_000)] {
            now += 10_000
            _ = takeDown(&t, now: now)
            XCTAssertEqual(t.holdRemainingMs(now: now), want, "down #\(k)")
            XCTAssertNil(t.probe(ok: true, reason: "", now: now + want - 1))
            XCTAssertEqual(t.probe(ok: true, reason: "", now: now + want)?.to, .up, "down #\(k)")
        }
        XCTAssertEqual(t.transitions, 10)
    }

    func testNeverUpWhileHeldEvenWithManySuccesses() {
        var t = HealthTracker(config: config(rise: 2, fall: 1, holdDownMs: 5_000, holdDownMaxMs: 5_000))
        _ = takeDown(&t, now: 0)
        _ = t.probe(ok: true, reason: "", now: 1)
        _ = t.probe(ok: true, reason: "", now: 2)
        _ = takeDown(&t, now: 10)
        for ms in stride(from: Millis(11), to: 5_010, by: 100) {
            XCTAssertNil(t.probe(ok: true, reason: "", now: ms))
            XCTAssertNil(t.tick(now: ms))
            XCTAssertEqual(t.status, .down, "at \(ms) ms")
        }
        XCTAssertEqual(t.tick(now: 5_010)?.to, .up)
    }

    func testFailureDuringHoldRestartsRise() {
        var t = HealthTracker(config: config(rise: 2, fall: 1, holdDownMs: 1_000))
        _ = takeDown(&t, now: 0)
        _ = t.probe(ok: true, reason: "", now: 1)
        _ = t.probe(ok: true, reason: "", now: 2)
        _ = takeDown(&t, now: 10)
        _ = t.probe(ok: true, reason: "", now: 100)
        _ = t.probe(ok: true, reason: "", now: 200)
        _ = t.probe(ok: false, reason: "refused", now: 300)
        XCTAssertNil(t.tick(now: 1_100), "rise was reset by the failure")
        XCTAssertNil(t.probe(ok: true, reason: "", now: 1_200))
        XCTAssertEqual(t.probe(ok: true, reason: "", now: 1_300)?.to, .up)
    }

    func testDownsOutsideTheWindowAreForgotten() {
        var t = HealthTracker(config: config(rise: 1, fall: 1, holdDownMs: 2_000, windowMs: 10_000))
        _ = takeDown(&t, now: 0)
        _ = t.probe(ok: true, reason: "", now: 1)
        _ = takeDown(&t, now: 20_000)
        XCTAssertEqual(t.holdRemainingMs(now: 20_000), 0, "the first down is outside the window")
    }

    func testZeroHoldDownTurnsDampingOff() {
        var t = HealthTracker(config: config(rise: 1, fall: 1, holdDownMs: 0))
        for k in 0..<5 {
            _ = takeDown(&t, now: Millis(k * 10))
            XCTAssertEqual(t.probe(ok: true, reason: "", now: Millis(k * 10 + 1))?.to, .up)
        }
    }

    func testWithoutChecksADownTargetIsRevived() {
        var c = config(.none, fall: 2, holdDownMs: 0)
        c.reviveAfterMs = 10_000
        var t = HealthTracker(config: c)
        XCTAssertFalse(t.isActive)
        XCTAssertEqual(t.passiveFailures(2, now: 1_000)?.to, .down)
        XCTAssertNil(t.tick(now: 10_999))
        let up = t.tick(now: 11_000)
        XCTAssertEqual(up?.to, .up)
        XCTAssertTrue(up?.reason.contains("no active checks") ?? false)
    }

    func testReviveWaitsForHoldDown() {
        var c = config(.none, fall: 1, holdDownMs: 30_000, holdDownMaxMs: 30_000)
        c.reviveAfterMs = 1_000
        var t = HealthTracker(config: c)
        _ = t.passiveFailures(1, now: 0)
        XCTAssertEqual(t.tick(now: 1_000)?.to, .up)
        _ = t.passiveFailures(1, now: 2_000)
        XCTAssertNil(t.tick(now: 3_000), "second down in the window is held")
        XCTAssertNil(t.tick(now: 31_999))
        XCTAssertEqual(t.tick(now: 32_000)?.to, .up)
    }

    func testActiveTrackerIgnoresTicksWithoutSuccesses() {
        var t = HealthTracker(config: config(fall: 1))
        _ = takeDown(&t, now: 0)
        XCTAssertNil(t.tick(now: 1_000_000), "an active tracker rises on probes, not on time")
    }

    func testDampingHoldSequence() {
        var d = HealthDamping()
        d.holdDownMs = 1_000
        d.holdDownMaxMs = 5_000
        XCTAssertEqual((1...6).map { d.holdMs(downsInWindow: $0) }, [0, 1_000, 2_000, 4_000, 5_000, 5_000])
    }

    // MARK: Precedence

    func testEffectiveStatePrecedence() {
        typealias B = HealthBook
        XCTAssertEqual(B.effectiveState(admin: .ready, health: .up), .ready)
        XCTAssertEqual(B.effectiveState(admin: .ready, health: .down), .down)
        XCTAssertEqual(B.effectiveState(admin: .maint, health: .down), .maint, "maint is the operator's word")
        XCTAssertEqual(B.effectiveState(admin: .draining(.sticky), health: .down), .down)
        XCTAssertEqual(B.effectiveState(admin: .draining(.strict), health: .up), .draining(.strict))
    }

    func testBookFollowsRegistryAndKeepsHealth() {
        let a = SocketAddress("127.0.0.1:9001")!, b = SocketAddress("127.0.0.1:9002")!
        var c = config(fall: 1)
        c.damping.holdDownMs = 0
        var reg = TargetRegistry(pools: [PoolRecord(name: "p", targets: [TargetRecord(spec: TargetSpec(address: a), origin: .config)])])
        var book = HealthBook(configs: [c])
        book.sync(reg)
        XCTAssertEqual(book.probe(pool: 0, address: a, ok: false, reason: "refused", now: 0)?.to, .down)
        XCTAssertNil(book.probe(pool: 0, address: b, ok: false, reason: "refused", now: 0), "unknown targets are ignored")
        _ = reg.add(pool: nil, address: b, weight: 1, name: nil)
        book.sync(reg)
        XCTAssertEqual(book.status(pool: 0, address: a), .down, "a sync keeps existing trackers")
        XCTAssertEqual(book.status(pool: 0, address: b), .up, "a new target starts up")
        XCTAssertEqual(book.effectiveState(pool: 0, record: reg.pools[0].targets[0]), .down)
        _ = reg.remove(pool: nil, address: a, force: true, openConnections: 0)
        book.sync(reg)
        XCTAssertNil(book.tracker(pool: 0, address: a))
    }
}

final class GRPCHealthMessageTests: XCTestCase {
    func testRequestEncoding() {
        XCTAssertEqual(GRPCHealth.encodeRequest(service: ""), [])
        XCTAssertEqual(GRPCHealth.encodeRequest(service: "a.B"), [0x0A, 3, 0x61, 0x2E, 0x42])
        let long = String(repeating: "x", count: 200)
        XCTAssertEqual(Array(GRPCHealth.encodeRequest(service: long).prefix(3)), [0x0A, 0xC8, 0x01], "two-byte varint length")
    }

    func testFrameAndUnframe() throws {
        let framed = GRPCHealth.frame([0x08, 0x01])
        XCTAssertEqual(framed, [0, 0, 0, 0, 2, 0x08, 0x01])
        let (m, n) = try XCTUnwrap(GRPCHealth.unframe(framed + [0xFF]))
        XCTAssertEqual(m, [0x08, 0x01])
        XCTAssertEqual(n, 7)
        XCTAssertNil(try GRPCHealth.unframe([0, 0, 0]))
        XCTAssertNil(try GRPCHealth.unframe([0, 0, 0, 0, 2, 0x08]), "incomplete message")
        XCTAssertEqual(GRPCHealth.frame([]), [0, 0, 0, 0, 0])
    }

    func testUnframeRefusesCompressedAndHuge() {
        XCTAssertThrowsError(try GRPCHealth.unframe([1, 0, 0, 0, 0])) { XCTAssertEqual($0 as? GRPCHealth.DecodeError, .compressed) }
        XCTAssertThrowsError(try GRPCHealth.unframe([0, 0, 1, 0, 0])) { XCTAssertEqual($0 as? GRPCHealth.DecodeError, .tooLarge(65536)) }
    }

    func testResponseDecoding() throws {
        XCTAssertEqual(try GRPCHealth.decodeResponse([0x08, 0x01]), .serving)
        XCTAssertEqual(try GRPCHealth.decodeResponse([0x08, 0x02]), .notServing)
        XCTAssertEqual(try GRPCHealth.decodeResponse([0x08, 0x03]), .serviceUnknown)
        XCTAssertEqual(try GRPCHealth.decodeResponse([]), .unknown, "proto3: absent means 0")
        XCTAssertEqual(try GRPCHealth.decodeResponse([0x08, 0x63]), .unknown, "a value this code does not know")
        for s in [GRPCHealth.ServingStatus.serving, .notServing, .serviceUnknown, .unknown] {
            XCTAssertEqual(try GRPCHealth.decodeResponse(GRPCHealth.encodeResponse(s)), s)
        }
    }

    func testResponseSkipsUnknownFields() throws {
        // field 2 string "hi", field 3 fixed64, field 4 fixed32, then status.
        let m: [UInt8] = [0x12, 2, 0x68, 0x69, 0x19] + [UInt8](repeating: 0, count: 8) + [0x25, 0, 0, 0, 0, 0x08, 0x01]
        XCTAssertEqual(try GRPCHealth.decodeResponse(m), .serving)
    }

    func testResponseRefusesMalformed() {
        XCTAssertThrowsError(try GRPCHealth.decodeResponse([0x08])) { XCTAssertEqual($0 as? GRPCHealth.DecodeError, .truncated) }
        XCTAssertThrowsError(try GRPCHealth.decodeResponse([0x12, 5, 1])) { XCTAssertEqual($0 as? GRPCHealth.DecodeError, .truncated) }
        XCTAssertThrowsError(try GRPCHealth.decodeResponse([0x0B])) { _ in }
        XCTAssertThrowsError(try GRPCHealth.decodeResponse([0x08] + [UInt8](repeating: 0xFF, count: 11))) { _ in }
    }
}

final class HealthConfigTests: XCTestCase {
    private func parse(_ health: String) throws -> StickyConfig {
        try ConfigLoader.parse("""
        listeners:
          - address: 127.0.0.1:7001
        pools:
          - name: web
            targets:
              - address: 127.0.0.1:8081
        \(health)
        """, file: "test.yaml")
    }

    private func error(_ health: String) -> ConfigError? {
        do {
            _ = try parse(health)
            XCTFail("expected a config error")
        } catch {
            return error as? ConfigError
        }
        return nil
    }

    func testNoHealthSectionMeansPassiveOnly() throws {
        let c = try parse("")
        XCTAssertEqual(c.pools[0].health.type, .none)
        XCTAssertTrue(c.pools[0].health.passive)
        XCTAssertEqual(c.timeouts.connectBudgetMs, 5_000)
    }

    func testHealthSectionParses() throws {
        let c = try parse("""
            health:
              type: grpc
              interval: 500ms
              timeout: 250ms
              rise: 1
              fall: 2
              service: helloworld.Greeter
              port: 9000
              passive: false
              damping: { window: 30s, hold_down: 1s, hold_down_max: 10s }
        timeouts: { connect_budget: 2s }
        """)
        let h = c.pools[0].health
        XCTAssertEqual(h.type, .grpc)
        XCTAssertEqual(h.intervalMs, 500)
        XCTAssertEqual(h.timeoutMs, 250)
        XCTAssertEqual(h.rise, 1)
        XCTAssertEqual(h.fall, 2)
        XCTAssertEqual(h.service, "helloworld.Greeter")
        XCTAssertEqual(h.port, 9000)
        XCTAssertFalse(h.passive)
        XCTAssertEqual(h.damping.windowMs, 30_000)
        XCTAssertEqual(h.damping.holdDownMs, 1_000)
        XCTAssertEqual(h.damping.holdDownMaxMs, 10_000)
        XCTAssertEqual(c.timeouts.connectBudgetMs, 2_000)
    }

    func testWrittenSectionDefaultsToTcp() throws {
        XCTAssertEqual(try parse("    health: { interval: 1s }").pools[0].health.type, .tcp)
    }

    func testErrorsCarryLineAndColumn() {
        let e = error("    health:\n      type: tcpp\n")
        XCTAssertEqual(e?.line, 8)
        XCTAssertEqual(e?.column, 13)
        XCTAssertTrue(e?.message.contains("did you mean 'tcp'") ?? false, "\(String(describing: e))")

        let f = error("    health:\n      rise: 0\n")
        XCTAssertEqual(f?.line, 8)
        XCTAssertTrue(f?.message.contains("health.rise must be from 1 to 100") ?? false, "\(String(describing: f))")

        let g = error("    health:\n      interval: 1s\n      timeout: 2s\n")
        XCTAssertEqual(g?.line, 9)
        XCTAssertTrue(g?.message.contains("must not exceed health.interval") ?? false, "\(String(describing: g))")

        let h = error("    health:\n      intreval: 1s\n")
        XCTAssertEqual(h?.line, 8)
        XCTAssertTrue(h?.message.contains("did you mean 'interval'") ?? false, "\(String(describing: h))")

        let s = error("    health:\n      service: x\n")
        XCTAssertTrue(s?.message.contains("applies to type grpc only") ?? false, "\(String(describing: s))")

        let p = error("    health:\n      passive: maybe\n")
        XCTAssertTrue(p?.message.contains("true or false") ?? false, "\(String(describing: p))")
    }

    func testTopLevelHealthPointsAtPools() {
        let e = error("health: { type: tcp }\n")
        XCTAssertEqual(e?.line, 7)
        XCTAssertTrue(e?.message.contains("per pool") ?? false, "\(String(describing: e))")
    }
}

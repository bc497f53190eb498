import Foundation
import Logging
import StickyCore
import Synchronization
import XCTest

@testable import StickyControlPlane
@testable import StickyDataPlane

/// Panic mode and trial connects through the control plane, on a manual
/// clock: passive failures from a worker's report take targets down, the
/// pool goes into panic, and what the workers are told follows
/// (docs/HEALTH.md, sections 2 and 7).
final class ControlPlanePanicTests: XCTestCase {
    let a = SocketAddress("127.0.0.1:9001")!
    let b = SocketAddress("127.0.0.1:9002")!
    let c = SocketAddress("127.0.0.1:9003")!

    func rig() throws -> (ControlPlane, ManualClock, WorkerChannel) {
        let config = try StickyConfig.quick(listen: ["127.0.0.1:7001"], targets: ["\(a)", "\(b)", "\(c)"])
        let clock = ManualClock()
        let control = ControlPlane(config: config, registry: TargetRegistry(config: config), hashKey: SipKey.random(),
                                   generatedKey: false, stateFilePath: nil,
                                   logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
                                   clock: clock, reportTimeoutMs: 20)
        let channel = try WorkerChannel()
        control.attach([channel])
        return (control, clock, channel)
    }

    func cmd(_ control: ControlPlane, _ line: String) -> String {
        control.handle(Substring(line), PeerCredentials(pid: 1, uid: 0, gid: 0)).text
    }

    func rows(_ control: ControlPlane) throws -> [SocketAddress: TargetRow] {
        let rows = try AdminJSON.decode(TargetsAnswer.self, from: cmd(control, "json show targets")).targets
        return Dictionary(uniqueKeysWithValues: rows.map { (SocketAddress($0.address)!, $0) })
    }

    func stat(_ control: ControlPlane, _ key: String) -> String? {
        cmd(control, "show stats").split(separator: "\n").first { $0.hasPrefix("\(key): ") }.map { String($0.split(separator: " ")[1]) }
    }

    /// Files a report with these cumulative connect failures and runs one
    /// passive round (`ControlPlane.passiveTicks` control ticks).
    func passiveRound(_ control: ControlPlane, _ channel: WorkerChannel, _ failures: [SocketAddress: UInt64]) {
        var r = WorkerReport()
        r.sequence = 1
        var pool = PoolReport()
        pool.targets = [a, b, c].map { TargetLoad(address: $0, connectFailures: failures[$0] ?? 0) }
        r.pools = [pool]
        channel.publish(r)
        for _ in 0..<ControlPlane.passiveTicks { control.tick() }
    }

    func states(_ commands: [WorkerCommand]) -> [SocketAddress: TargetState] {
        var out: [SocketAddress: TargetState] = [:]
        for case .setState(_, let address, let state) in commands { out[address] = state }
        return out
    }

    func panicked(_ commands: [WorkerCommand]) -> [[SocketAddress]] {
        commands.compactMap {
            if case .setPanicked(_, let targets) = $0 { return targets }
            return nil
        }
    }

    func testPanicFollowsHealthAndTheOperatorAndTrialsRevive() throws {
        let (control, _, channel) = try rig()
        passiveRound(control, channel, [:])  // the baseline
        _ = channel.take()

        // One of three down: 66% healthy, no panic.
        passiveRound(control, channel, [a: 3])
        var posted = channel.take()
        XCTAssertEqual(states(posted), [a: .down])
        XCTAssertEqual(panicked(posted), [])
        XCTAssertEqual(stat(control, "pools_in_panic"), "0")

        // Two of three: 33% healthy, in panic; every state is republished
        // as the operator's, and the workers learn which targets are back.
        passiveRound(control, channel, [a: 3, b: 3])
        posted = channel.take()
        XCTAssertEqual(states(posted), [a: .ready, b: .ready, c: .ready])
        XCTAssertEqual(panicked(posted).last.map(Set.init), [a, b])
        XCTAssertEqual(stat(control, "pools_in_panic"), "1")
        XCTAssertEqual(stat(control, "panic_entered"), "1")
        let r = try rows(control)
        XCTAssertEqual(r[a]?.health, .down)
        XCTAssertEqual(r[a]?.healthPanic, true)
        XCTAssertEqual(r[a]?.effectiveState, .ready)
        XCTAssertNil(r[c]?.healthPanic)
        XCTAssertTrue(cmd(control, "show targets").contains("down(panic)"))

        // The operator's maint holds in panic: the healthy one taken out
        // leaves nothing of the ready weight healthy, still panic.
        XCTAssertEqual(cmd(control, "maint target \(c)"), "ok: \(c) is in maintenance")
        posted = channel.take()
        XCTAssertEqual(states(posted), [c: .maint])
        XCTAssertEqual(panicked(posted).last.map(Set.init), [a, b])
        XCTAssertEqual(stat(control, "pools_in_panic"), "1")

        // Maint on a down one: it is not put back; the ready weight is b
        // alone, down, so still panic.
        XCTAssertEqual(cmd(control, "maint target \(a)"), "ok: \(a) is in maintenance")
        posted = channel.take()
        XCTAssertEqual(states(posted), [a: .maint])
        XCTAssertEqual(panicked(posted).last, [b], "maint is never put back by panic")

        // c ready again: 1 of 2 healthy is 50%, not below: out of panic,
        // and b is down for the workers again.
        XCTAssertEqual(cmd(control, "ready target \(c)"), "ok: \(c) is ready")
        posted = channel.take()
        XCTAssertEqual(states(posted), [a: .maint, b: .down, c: .ready])
        XCTAssertEqual(panicked(posted).last, [])
        XCTAssertEqual(stat(control, "pools_in_panic"), "0")
        XCTAssertEqual(stat(control, "panic_entered"), "1")
    }

    func testTrialConnectRevivesAndEndsPanic() throws {
        let (control, clock, channel) = try rig()
        let trials = Mutex<[ProbeTarget]>([])
        control.setTrialRunner { t in trials.withLock { $0 += t } }
        passiveRound(control, channel, [:])
        passiveRound(control, channel, [a: 3, b: 3])
        XCTAssertEqual(stat(control, "pools_in_panic"), "1")
        _ = channel.take()
        XCTAssertEqual(trials.withLock { $0 }.count, 0, "no trial before a second has passed")

        clock.advance(ms: 1_000)
        control.tick()
        let started = trials.withLock { $0 }
        XCTAssertEqual(Set(started.map(\.target)), [a, b])
        XCTAssertTrue(started.allSatisfy { $0.trial && $0.config.type == .tcp }, "a trial is a TCP connect")
        control.tick()
        XCTAssertEqual(trials.withLock { $0 }.count, 2, "one trial per target at a time")

        // a refuses, b connects: b is up, the pool is out of panic, and a
        // is down again for the workers.
        let ta = started.first { $0.target == a }!, tb = started.first { $0.target == b }!
        control.probeResult(ta, ok: false, reason: "connection refused")
        control.probeResult(tb, ok: true, reason: "tcp connect ok")
        let posted = channel.take()
        XCTAssertEqual(states(posted), [a: .down, b: .ready, c: .ready])
        XCTAssertEqual(panicked(posted).last, [], "out of panic: nothing put back")
        XCTAssertEqual(stat(control, "pools_in_panic"), "0")
        XCTAssertEqual(stat(control, "panic_entered"), "1")
        let r = try rows(control)
        XCTAssertEqual(r[b]?.health, .up)
        XCTAssertTrue(r[b]?.healthReason?.contains("trial connect ok") ?? false, "\(String(describing: r[b]))")
        XCTAssertTrue(r[a]?.healthReason?.contains("trial connect failed") ?? false, "\(String(describing: r[a]))")

        // a's next trial waits 2 s after its failed one.
        trials.withLock { $0 = [] }
        clock.advance(ms: 1_999)
        control.tick()
        XCTAssertEqual(trials.withLock { $0 }.count, 0)
        clock.advance(ms: 1)
        control.tick()
        XCTAssertEqual(trials.withLock { $0 }.map(\.target), [a])
    }
}

import Foundation
import Logging
import StickyCore
import XCTest

@testable import StickyControlPlane
@testable import StickyDataPlane

/// The control plane on a manual clock, without workers: its channels are
/// either absent or served by the test itself (it reads the commands the
/// control plane posts, and files the reports a worker would).
final class ControlPlaneTests: XCTestCase {
    let a = SocketAddress("127.0.0.1:9001")!
    let b = SocketAddress("127.0.0.1:9002")!
    let c = SocketAddress("127.0.0.1:9003")!

    struct Rig {
        var control: ControlPlane
        var clock: ManualClock
        var channels: [WorkerChannel]
    }

    /// `channels` worker channels that nobody serves: `collect` then waits
    /// its (short) bound and reads each channel's latest published report.
    func rig(targets: [String] = ["127.0.0.1:9001", "127.0.0.1:9002"], channels: Int = 0, stateFilePath: String? = nil,
             drainTimeoutMs: Millis = 60_000, reportTimeoutMs: Int = 20) throws -> Rig {
        var config = try StickyConfig.quick(listen: ["127.0.0.1:7001"], targets: targets)
        config.drain.timeoutMs = drainTimeoutMs
        let clock = ManualClock()
        let control = ControlPlane(config: config, registry: TargetRegistry(config: config), hashKey: SipKey.random(),
                                   generatedKey: false, stateFilePath: stateFilePath,
                                   logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
                                   clock: clock, reportTimeoutMs: reportTimeoutMs)
        let chans = try (0..<channels).map { _ in try WorkerChannel() }
        control.attach(chans)
        return Rig(control: control, clock: clock, channels: chans)
    }

    func cmd(_ control: ControlPlane, _ line: String) -> String {
        control.handle(Substring(line), PeerCredentials(pid: 1, uid: 0, gid: 0)).text
    }

    func targets(_ control: ControlPlane) throws -> [String: TargetRow] {
        let rows = try AdminJSON.decode(TargetsAnswer.self, from: cmd(control, "json show targets")).targets
        return Dictionary(uniqueKeysWithValues: rows.map { ($0.address, $0) })
    }

    /// A worker report with `connections` open to each given target.
    func report(_ connections: [SocketAddress: Int], sequence: UInt64 = 1) -> WorkerReport {
        var r = WorkerReport()
        r.sequence = sequence
        var pool = PoolReport()
        pool.targets = connections.map { TargetLoad(address: $0.key, connections: $0.value) }
        r.pools = [pool]
        return r
    }

    /// The commands posted to a channel since the last call.
    func posted(_ channel: WorkerChannel) -> [WorkerCommand] { channel.take() }

    func closeTargets(_ commands: [WorkerCommand]) -> [(SocketAddress, Millis)] {
        closeTargetsGraceful(commands).map { ($0.0, $0.1) }
    }

    /// With whether the end is graceful (a sticky drain's deadline).
    func closeTargetsGraceful(_ commands: [WorkerCommand]) -> [(SocketAddress, Millis, Bool)] {
        commands.compactMap {
            if case .closeTarget(_, let address, let graceMs, let graceful) = $0 { return (address, graceMs, graceful) }
            return nil
        }
    }

    // MARK: - Drains

    func testDrainDeadlineFiresOnTheTickThatReachesIt() throws {
        let r = try rig(channels: 1, drainTimeoutMs: 10_000)
        XCTAssertEqual(cmd(r.control, "drain target 127.0.0.1:9001"), "ok: draining 127.0.0.1:9001 (mode strict, deadline in 10s)")
        _ = posted(r.channels[0])
        r.clock.advance(ms: 9_999)
        r.control.tick()
        XCTAssertTrue(closeTargets(posted(r.channels[0])).isEmpty, "a millisecond early")
        XCTAssertEqual(try targets(r.control)["127.0.0.1:9001"]?.drainRemainingMs, 1)
        r.clock.advance(ms: 1)
        r.control.tick()
        let cuts = closeTargets(posted(r.channels[0]))
        XCTAssertEqual(cuts.map(\.0), [a])
        XCTAssertEqual(cuts.map(\.1), [DrainDefaults().graceMs], "FIN now, reset after the grace")
        XCTAssertEqual(closeTargetsGraceful([.closeTarget(pool: 0, address: a, graceMs: 1, graceful: false)]).map(\.2), [false])
        let t = try XCTUnwrap(try targets(r.control)["127.0.0.1:9001"])
        XCTAssertEqual(t.drainExpired, true)
        XCTAssertEqual(t.drainRemainingMs, 0)
        XCTAssertTrue(cmd(r.control, "show targets").contains("draining(strict)  1       0      0         0      0         0          expired"))
        r.clock.advance(ms: 60_000)
        r.control.tick()
        XCTAssertTrue(closeTargets(posted(r.channels[0])).isEmpty, "a deadline fires once")
    }

    /// A sticky drain kept its clients on purpose: at its deadline the
    /// workers are told to end its connections gracefully (pins dropped,
    /// GOAWAY on h2c); a strict drain's deadline is a plain cut.
    func testStickyDrainDeadlineEndsGracefullyAndStrictDoesNot() throws {
        let r = try rig(channels: 1, drainTimeoutMs: 10_000)
        XCTAssertTrue(cmd(r.control, "drain target 127.0.0.1:9001 mode sticky timeout 5s").hasPrefix("ok: "))
        XCTAssertTrue(cmd(r.control, "drain target 127.0.0.1:9002 mode strict timeout 5s").hasPrefix("ok: "))
        _ = posted(r.channels[0])
        r.clock.advance(ms: 5_000)
        r.control.tick()
        let cuts = closeTargetsGraceful(posted(r.channels[0]))
        XCTAssertEqual(cuts.first { $0.0 == a }?.2, true, "sticky: graceful")
        XCTAssertEqual(cuts.first { $0.0 == b }?.2, false, "strict: a cut")
    }

    /// What `stickyctl drain --wait` polls: connections left and the time
    /// to the deadline, until the connections reach 0.
    func testDrainWaitProgress() throws {
        let r = try rig(channels: 2)
        r.channels[0].publish(report([a: 2, b: 1]))
        r.channels[1].publish(report([a: 1]))
        XCTAssertEqual(cmd(r.control, "drain target 127.0.0.1:9001 mode sticky timeout 30s"),
                       "ok: draining 127.0.0.1:9001 (mode sticky, deadline in 30s)")
        var t = try XCTUnwrap(try targets(r.control)["127.0.0.1:9001"])
        XCTAssertEqual(t.state, .draining)
        XCTAssertEqual(t.drainMode, .sticky)
        XCTAssertEqual(t.connections, 3, "summed over the workers")
        XCTAssertEqual(t.drainRemainingMs, 30_000)
        XCTAssertEqual(t.drainExpired, false)

        r.clock.advance(ms: 12_400)
        r.channels[0].publish(report([a: 1, b: 1], sequence: 2))
        t = try XCTUnwrap(try targets(r.control)["127.0.0.1:9001"])
        XCTAssertEqual(t.connections, 2)
        XCTAssertEqual(t.drainRemainingMs, 17_600)
        let row = try XCTUnwrap(cmd(r.control, "show targets").split(separator: "\n").first { $0.contains("127.0.0.1:9001") })
        XCTAssertTrue(row.contains("draining(sticky)"), String(row))
        XCTAssertTrue(row.contains(" 18s "), "whole seconds, rounded up: \(row)")

        r.channels[0].publish(report([a: 0, b: 1], sequence: 3))
        r.channels[1].publish(report([a: 0], sequence: 2))
        XCTAssertEqual(try targets(r.control)["127.0.0.1:9001"]?.connections, 0, "drained: --wait returns")
        XCTAssertEqual(try targets(r.control)["127.0.0.1:9002"]?.connections, 1)
        XCTAssertEqual(cmd(r.control, "ready target 127.0.0.1:9001"), "ok: 127.0.0.1:9001 is ready")
        t = try XCTUnwrap(try targets(r.control)["127.0.0.1:9001"])
        XCTAssertEqual(t.state, .ready)
        XCTAssertNil(t.drainMode)
        XCTAssertNil(t.drainRemainingMs)
    }

    // MARK: - Reload

    func testReloadAddsAndDrainsThenRemovesTargets() throws {
        let r = try rig(channels: 1)
        var next = try StickyConfig.quick(listen: ["127.0.0.1:7001"], targets: ["127.0.0.1:9002", "127.0.0.1:9003"])
        next.drain = DrainDefaults()
        guard case .success(let summary) = r.control.reload(next) else { return XCTFail("reload refused") }
        XCTAssertTrue(summary.hasPrefix("added 1, draining 1, reweighted 0"), summary)
        var t = try targets(r.control)
        XCTAssertEqual(Set(t.keys), ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"])
        XCTAssertEqual(t["127.0.0.1:9003"]?.state, .ready)
        XCTAssertEqual(t["127.0.0.1:9003"]?.origin, .config)
        XCTAssertEqual(t["127.0.0.1:9001"]?.state, .draining, "a target the file dropped drains first")
        let commands = posted(r.channels[0])
        XCTAssertTrue(commands.contains { if case .setTargets(_, let specs, _, _) = $0 { return specs.map(\.address).contains(c) } else { return false } },
                      "the workers get the new target list")
        XCTAssertTrue(commands.contains { if case .setLimits = $0 { return true } else { return false } })
        XCTAssertTrue(commands.contains { if case .setTimeouts = $0 { return true } else { return false } })

        // At the drain deadline its connections are cut; a grace later it goes.
        r.clock.advance(ms: 60_000)
        r.control.tick()
        XCTAssertEqual(closeTargets(posted(r.channels[0])).map(\.0), [a])
        XCTAssertNotNil(try targets(r.control)["127.0.0.1:9001"])
        r.clock.advance(ms: DrainDefaults().graceMs)
        r.control.tick()
        t = try targets(r.control)
        XCTAssertEqual(Set(t.keys), ["127.0.0.1:9002", "127.0.0.1:9003"])
    }

    func testReloadThatChangesThePoolsIsRefused() throws {
        let r = try rig()
        var next = try StickyConfig.quick(listen: ["127.0.0.1:7001"], targets: ["127.0.0.1:9002"])
        next.pools[0].name = "other"
        guard case .failure(let e) = r.control.reload(next) else { return XCTFail("a pool rename needs a restart") }
        XCTAssertTrue(e.message.contains("needs a restart"), e.message)
        XCTAssertEqual(Set(try targets(r.control).keys), ["127.0.0.1:9001", "127.0.0.1:9002"], "nothing changed")
    }

    // MARK: - Persistence

    func testEveryChangeIsWrittenToTheStateFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stickyd-cp-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("state.json").path
        let r = try rig(stateFilePath: path)
        func file() throws -> StateFile { try StateFile.decode(try Data(contentsOf: URL(fileURLWithPath: path)), file: path) }

        XCTAssertEqual(cmd(r.control, "add target 127.0.0.1:9003 weight 4 name extra"), "ok: added 127.0.0.1:9003")
        var f = try file()
        let added = try XCTUnwrap(f.pools.first?.targets.first { $0.address == "127.0.0.1:9003" })
        XCTAssertEqual(added.weight, 4)
        XCTAssertEqual(added.name, "extra")
        XCTAssertEqual(added.origin, .runtime)
        XCTAssertEqual(f.writtenAtUnixMs, r.clock.unixMs())

        r.clock.advance(ms: 5_000)
        _ = cmd(r.control, "drain target 127.0.0.1:9001 timeout 2m")
        f = try file()
        let drained = try XCTUnwrap(f.pools.first?.targets.first { $0.address == "127.0.0.1:9001" })
        XCTAssertEqual(drained.state, "draining")
        XCTAssertEqual(drained.drainDeadlineUnixMs, r.clock.unixMs() + 120_000, "the deadline, in wall-clock time")

        _ = cmd(r.control, "remove target 127.0.0.1:9002")
        XCTAssertEqual(try file().pools.first?.removedConfigTargets, ["127.0.0.1:9002"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: path + ".tmp"), "the temporary file was renamed")
        let info = try AdminJSON.decode(InfoAnswer.self, from: cmd(r.control, "json show info"))
        XCTAssertEqual(info.stateFile, path)
        XCTAssertNil(info.stateFileError)
    }

    func testAFailedWriteIsReportedAndTheCommandStillTakesEffect() throws {
        let r = try rig(stateFilePath: "/nonexistent-stickyd-dir/state.json")
        XCTAssertEqual(cmd(r.control, "maint target 127.0.0.1:9001"), "ok: 127.0.0.1:9001 is in maintenance")
        XCTAssertEqual(try targets(r.control)["127.0.0.1:9001"]?.state, .maint)
        let info = try AdminJSON.decode(InfoAnswer.self, from: cmd(r.control, "json show info"))
        XCTAssertNotNil(info.stateFileError)
        XCTAssertTrue(cmd(r.control, "show info").contains("state_file: /nonexistent-stickyd-dir/state.json"))
    }

    // MARK: - Admin answers and errors

    func testAnswersAndErrors() throws {
        let r = try rig()
        XCTAssertEqual(cmd(r.control, "help"), AdminGrammar.synopsis.joined(separator: "\n"))
        XCTAssertEqual(try AdminJSON.decode(HelpAnswer.self, from: cmd(r.control, "json help")).commands, AdminGrammar.synopsis)
        let quit = r.control.handle("quit", PeerCredentials(pid: 1, uid: 0, gid: 0))
        XCTAssertEqual(quit.text, "bye")
        XCTAssertTrue(quit.close)
        XCTAssertEqual(cmd(r.control, "json exit"), #"{"result":"bye"}"#)
        XCTAssertEqual(cmd(r.control, "frobnicate"), "error: unknown command 'frobnicate'; try 'help'")
        XCTAssertEqual(cmd(r.control, "json frobnicate"), #"{"error":"unknown command 'frobnicate'; try 'help'"}"#)
        XCTAssertEqual(cmd(r.control, "json"), #"{"error":"'json' must be followed by a command"}"#)
        XCTAssertEqual(cmd(r.control, "show targets nopool"), "error: no pool named 'nopool'; pools: default")
        XCTAssertEqual(cmd(r.control, "add target 127.0.0.1:9001"), "error: 127.0.0.1:9001 is already in pool 'default'")
        XCTAssertEqual(cmd(r.control, "set target 127.0.0.1:9001 weight 3"), "ok: weight of 127.0.0.1:9001 set to 3")
        XCTAssertEqual(cmd(r.control, "json set target 127.0.0.1:9009 weight 3"), #"{"error":"no target 127.0.0.1:9009 in pool 'default'"}"#)
        XCTAssertEqual(cmd(r.control, "upgrade"), "error: upgrade is not available on this listener")
        XCTAssertEqual(cmd(r.control, "clear affinity all"), "ok: affinity cleared: 0 entries removed (entries with open connections stay until they close)")
        XCTAssertEqual(cmd(r.control, "json show affinity"), #"{"entries":[]}"#)

        r.clock.advance(ms: 61_500)
        let info = try AdminJSON.decode(InfoAnswer.self, from: cmd(r.control, "json show info"))
        XCTAssertEqual(info.uptimeS, 61, "uptime on the control plane's clock")
        XCTAssertEqual(info.workers, 0)
        XCTAssertEqual(info.targets, 2)
        XCTAssertNil(info.stateFile)
        XCTAssertEqual(info.version, StickyVersion.string)
    }

    func testRemoveIsRefusedWhileConnectionsAreOpenUnlessForced() throws {
        let r = try rig(channels: 1)
        r.channels[0].publish(report([a: 2]))
        XCTAssertEqual(cmd(r.control, "remove target 127.0.0.1:9001"),
                       "error: 127.0.0.1:9001 still has 2 connection(s); drain it and wait, or add 'force'")
        _ = posted(r.channels[0])
        XCTAssertEqual(cmd(r.control, "remove target 127.0.0.1:9001 force"), "ok: removed 127.0.0.1:9001; 2 connection(s) reset")
        XCTAssertEqual(closeTargets(posted(r.channels[0])).map(\.1), [0], "reset at once, no grace")
        XCTAssertEqual(Set(try targets(r.control).keys), ["127.0.0.1:9002"])
    }

    /// The keys and order of `show stats` that docs/ADMIN.md shows and the
    /// integration tests read.
    func testShowStatsKeys() throws {
        let r = try rig()
        let keys = cmd(r.control, "show stats").split(separator: "\n").map { String($0.split(separator: ":")[0]) }
        XCTAssertEqual(keys, [
            "connections_accepted", "connections_active", "connections_rejected_full", "accept_errors",
            "accept_pauses", "descriptor_exhaustion", "connect_errors", "connect_timeouts",
            "connect_retries", "bytes_client_to_target", "bytes_target_to_client", "pipe_waits",
            "buffer_starvations", "drain_deadline_cuts", "affinity_hits", "affinity_misses",
            "affinity_spills", "affinity_expirations", "affinity_evictions", "affinity_unrecorded",
            "affinity_no_target", "affinity_panic_placements", "pools_in_panic", "panic_entered", "affinity_entries", "affinity_moves_target_down", "affinity_moves_target_drained",
            "affinity_moves_target_maint", "affinity_moves_target_removed", "affinity_moves_connect_failed", "affinity_moves_age", "proxy_headers_received",
            "proxy_headers_sent", "proxy_send_failures", "proxy_rejected_not_allowed", "proxy_rejected_timeout",
            "proxy_rejected_truncated", "proxy_rejected_read_error", "proxy_rejected_bad_signature", "proxy_rejected_oversized",
            "proxy_rejected_bad_version", "proxy_rejected_bad_command", "proxy_rejected_bad_family", "proxy_rejected_bad_address",
            "proxy_rejected_bad_port", "proxy_rejected_bad_format", "closed_done", "closed_reset",
            "closed_idle_timeout", "closed_connect_failed", "closed_no_target", "closed_shutdown",
            "closed_resources", "closed_drain_deadline", "closed_proxy_header",
            "goaways_sent_drain", "goaways_sent_age", "h2_untracked_not_http2", "h2_untracked_malformed_header",
        ])
    }

    func testShowStatsSumsWorkersAndPools() throws {
        let r = try rig(channels: 2)
        var w0 = report([a: 1])
        w0.counters[.accepted] = 5
        w0.counters[.bytesUp] = 100
        w0.counters.closed[Int(CloseReason.done.rawValue)] = 4
        w0.pools[0].affinity.hits = 3
        w0.pools[0].affinity.moves[.targetDrained] = 2
        var w1 = report([a: 1])
        w1.counters[.accepted] = 7
        w1.counters.proxyRejected[Int(ProxyRejection.timeout.rawValue)] = 1
        w1.pools[0].affinity.hits = 1
        w1.pools[0].affinity.size = 9
        r.channels[0].publish(w0)
        r.channels[1].publish(w1)
        let stats = try AdminJSON.decode(StatsAnswer.self, from: cmd(r.control, "json show stats"))
        XCTAssertEqual(stats["connections_accepted"], 12)
        XCTAssertEqual(stats["bytes_client_to_target"], 100)
        XCTAssertEqual(stats["closed_done"], 4)
        XCTAssertEqual(stats["proxy_rejected_timeout"], 1)
        XCTAssertEqual(stats["affinity_hits"], 4)
        XCTAssertEqual(stats["affinity_entries"], 9)
        XCTAssertEqual(stats["affinity_moves_target_drained"], 2)
        XCTAssertEqual(stats["affinity_moves_target_down"], 0)
    }

    // MARK: - Reports

    func testCollectWithoutWorkersReturnsAtOnce() throws {
        let r = try rig(reportTimeoutMs: 60_000)
        let start = Date()
        XCTAssertTrue(r.control.collect().isEmpty)
        XCTAssertLessThan(Date().timeIntervalSince(start), 1)
    }

    func testCollectFromWorkersNobodyServesIsBounded() throws {
        let r = try rig(channels: 2, reportTimeoutMs: 100)
        r.channels[1].publish(report([b: 1], sequence: 42))
        let start = Date()
        let reports = r.control.collect()
        let took = Date().timeIntervalSince(start)
        XCTAssertGreaterThanOrEqual(took, 0.09, "it waited for the answers")
        XCTAssertLessThan(took, 5, "but within its bound")
        XCTAssertEqual(reports.map(\.sequence), [0, 42], "each worker's latest periodic report stands in")
    }

    /// A worker that answers wakes the waiting caller at once: `collect`
    /// does not sit out its bound, nor poll.
    func testCollectReturnsAsSoonAsEveryWorkerAnswered() throws {
        let r = try rig(channels: 2, reportTimeoutMs: 30_000)
        let workers = r.channels.enumerated().map { w, channel in
            let t = Thread {
                // A stand-in for the worker loop: wait on the wake eventfd,
                // answer report requests, stop on `.stop`.
                var value: UInt64 = 0
                while read(channel.wakeFD, &value, 8) == 8 {
                    for command in channel.take() {
                        switch command {
                        case .report(_, _, let request):
                            var answer = WorkerReport()
                            answer.sequence = UInt64(100 + w)
                            if request != 0 { channel.answer(request, answer) }
                        case .stop:
                            return
                        default:
                            break
                        }
                    }
                }
            }
            t.start()
            return t
        }
        defer { for c in r.channels { c.post(.stop) } }
        _ = workers
        for _ in 0..<20 {
            let start = Date()
            XCTAssertEqual(r.control.collect().map(\.sequence), [100, 101], "the answers to this request")
            XCTAssertLessThan(Date().timeIntervalSince(start), 5, "woken by the answers, not by the 30 s bound")
        }
    }

    /// `clear affinity` adds up what each worker removed from its shard; a
    /// worker that does not answer in time is named in the answer, not
    /// waited for beyond the bound.
    func testClearAffinityCountsWhatEveryWorkerRemoved() throws {
        let r = try rig(channels: 3, reportTimeoutMs: 300)
        let served = r.channels.prefix(2)
        let workers = served.enumerated().map { w, channel in
            let t = Thread {
                var value: UInt64 = 0
                while read(channel.wakeFD, &value, 8) == 8 {
                    for command in channel.take() {
                        switch command {
                        case .clearAffinity(let pool, let scope, let request):
                            guard pool == nil, case .all = scope else { continue }
                            var answer = WorkerReport()
                            answer.affinityCleared = 2 + w
                            if request != 0 { channel.answer(request, answer) }
                        case .stop:
                            return
                        default:
                            break
                        }
                    }
                }
            }
            t.start()
            return t
        }
        defer { for c in served { c.post(.stop) } }
        _ = workers
        let answer = try AdminJSON.decode(ClearAffinityAnswer.self, from: cmd(r.control, "json clear affinity all"))
        XCTAssertEqual(answer.removed, 5)
        XCTAssertEqual(answer.workersLate, 1, "the third channel is nobody's")
    }
}

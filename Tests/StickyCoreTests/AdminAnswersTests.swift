import XCTest

@testable import StickyCore

/// The admin answers' two forms. The JSON field names are the protocol the
/// integration tests and stickyctl read, so each type is checked against a
/// literal answer as well as round-tripped.
final class AdminAnswersTests: XCTestCase {
    func roundTrip<T: AdminAnswer & Equatable>(_ answer: T, file: StaticString = #filePath, line: UInt = #line) throws {
        let json = AdminJSON.encode(answer)
        XCTAssertFalse(json.contains("\n"), "a JSON answer is one line", file: file, line: line)
        XCTAssertEqual(try AdminJSON.decode(T.self, from: json), answer, json, file: file, line: line)
    }

    func testHelp() throws {
        let a = HelpAnswer(commands: ["help", "show info"])
        XCTAssertEqual(a.text, "help\nshow info")
        XCTAssertEqual(AdminJSON.encode(a), #"{"commands":["help","show info"]}"#)
        try roundTrip(a)
    }

    func testResultAndError() throws {
        XCTAssertEqual(ResultAnswer.ok("added 10.0.0.1:80").text, "ok: added 10.0.0.1:80")
        XCTAssertEqual(AdminJSON.encode(ResultAnswer.ok("added 10.0.0.1:80")), #"{"message":"added 10.0.0.1:80","result":"ok"}"#)
        XCTAssertEqual(ResultAnswer.bye.text, "bye")
        XCTAssertEqual(AdminJSON.encode(ResultAnswer.bye), #"{"result":"bye"}"#)
        XCTAssertEqual(ErrorAnswer("no pool named 'x'").text, "error: no pool named 'x'")
        XCTAssertEqual(AdminJSON.encode(ErrorAnswer("no pool named 'x'")), #"{"error":"no pool named 'x'"}"#)
        try roundTrip(ResultAnswer.ok("m"))
        try roundTrip(ResultAnswer.bye)
        try roundTrip(ErrorAnswer("e"))
        XCTAssertThrowsError(try AdminJSON.decode(ErrorAnswer.self, from: #"{"result":"ok"}"#),
                             "stickyctl tells errors apart by this failing")
    }

    /// `clear affinity` says how many pins it removed; a client that reads
    /// only `result` and `message` still reads it as a `ResultAnswer`.
    func testClearAffinityCount() throws {
        let a = ClearAffinityAnswer(removed: 3)
        XCTAssertEqual(a.text, "ok: affinity cleared: 3 entries removed (entries with open connections stay until they close)")
        XCTAssertEqual(AdminJSON.encode(a),
                       #"{"message":"affinity cleared: 3 entries removed (entries with open connections stay until they close)","removed":3,"result":"ok"}"#)
        try roundTrip(a)
        XCTAssertEqual(try AdminJSON.decode(ResultAnswer.self, from: AdminJSON.encode(a)).result, "ok")
        XCTAssertEqual(ClearAffinityAnswer(removed: 1).message,
                       "affinity cleared: 1 entry removed (entries with open connections stay until they close)")
        let late = ClearAffinityAnswer(removed: 0, workersLate: 2)
        XCTAssertEqual(late.text, "ok: affinity cleared: 0 entries removed (entries with open connections stay until they close); 2 worker(s) did not answer in time, so at least 0 entries: check with show affinity")
        XCTAssertEqual(late.workersLate, 2)
        XCTAssertTrue(AdminJSON.encode(late).contains(#""workers_late":2"#))
        try roundTrip(late)
    }

    func testUpgrade() throws {
        let a = UpgradeAnswer(message: "upgrade: pid 7 took over", successorPid: 7, pid: 5)
        XCTAssertEqual(a.text, "upgrade: pid 7 took over")
        XCTAssertEqual(AdminJSON.encode(a), #"{"message":"upgrade: pid 7 took over","pid":5,"result":"ok","successor_pid":7}"#)
        try roundTrip(a)
    }

    func testInfoIsStringsOnTheWire() throws {
        let a = InfoAnswer(version: "0.2.0", pid: 42, uptimeS: 3, workers: 2, engine: "copy", pools: 1, targets: 3,
                           connectionsActive: 4, connectionsAccepted: 12, maxConnections: 10000,
                           stateFile: nil, stateFileError: nil)
        XCTAssertEqual(a.text, """
            version: 0.2.0
            pid: 42
            uptime_s: 3
            workers: 2
            engine: copy
            pools: 1
            targets: 3
            connections_active: 4
            connections_accepted: 12
            max_connections: 10000
            state_file: none
            state_file_error: none
            """)
        XCTAssertEqual(AdminJSON.encode(a), #"{"connections_accepted":"12","connections_active":"4","engine":"copy","#
            + #""max_connections":"10000","pid":"42","pools":"1","state_file":"none","state_file_error":"none","#
            + #""targets":"3","uptime_s":"3","version":"0.2.0","workers":"2"}"#)
        try roundTrip(a)
        var b = a
        b.stateFile = "/var/lib/stickyd/state.json"
        b.stateFileError = "write: No space left on device"
        try roundTrip(b)
        XCTAssertThrowsError(try AdminJSON.decode(InfoAnswer.self, from: AdminJSON.encode(a).replacingOccurrences(of: #""42""#, with: #""x""#)))
    }

    func testStatsKeepsTheTableOrderInTextAndIntegersInJSON() throws {
        let a = StatsAnswer(entries: [.init("connections_accepted", 12), .init("bytes_client_to_target", 800), .init("closed_done", 8)])
        XCTAssertEqual(a.text, "connections_accepted: 12\nbytes_client_to_target: 800\nclosed_done: 8")
        XCTAssertEqual(AdminJSON.encode(a), #"{"bytes_client_to_target":800,"closed_done":8,"connections_accepted":12}"#)
        let back = try AdminJSON.decode(StatsAnswer.self, from: AdminJSON.encode(a))
        XCTAssertEqual(back.entries, a.entries.sorted { $0.key < $1.key }, "a JSON object has no order")
        XCTAssertEqual(back["closed_done"], 8)
        XCTAssertNil(back["nosuch"])
    }

    func testTargets() throws {
        var draining = TargetRow(pool: "greeter", address: "127.0.0.1:50062", name: "pod-2", state: .draining, weight: 1,
                                 origin: .config, connections: 2, affinityEntries: 4, connectionsTotal: 2, bytesIn: 200,
                                 bytesOut: 212, connectFailures: 0)
        draining.drainMode = .strict
        draining.drainRemainingMs = 59_996
        draining.drainExpired = false
        draining.healthCheck = HealthCheckType.none
        draining.healthTransitions = 0
        draining.healthHoldMs = 0
        draining.healthReason = "initial"
        draining.effectiveState = .draining
        let plain = TargetRow(pool: "greeter", address: "127.0.0.1:50061", name: nil, state: .ready, weight: 3, origin: .runtime)
        var held = plain
        held.state = .maint
        held.health = .down
        held.healthHoldMs = 3_001
        held.healthTransitions = 2
        held.drainRemainingMs = 0
        held.drainExpired = true
        let a = TargetsAnswer(targets: [plain, draining, held])
        XCTAssertEqual(a.text, """
            POOL     ADDRESS          NAME   STATE             WEIGHT  CONNS  AFFINITY  TOTAL  BYTES_IN  BYTES_OUT  DRAIN_LEFT  HEALTH         HEALTH_CHANGES
            greeter  127.0.0.1:50061  -      ready             3       0      0         0      0         0          -           up             0
            greeter  127.0.0.1:50062  pod-2  draining(strict)  1       2      4         2      200       212        60s         up             0
            greeter  127.0.0.1:50061  -      maint             3       0      0         0      0         0          expired     down(hold:4s)  2
            """)
        XCTAssertEqual(AdminJSON.encode(TargetsAnswer(targets: [plain])), #"{"targets":[{"address":"127.0.0.1:50061","#
            + #""affinity_entries":0,"bytes_in":0,"bytes_out":0,"connect_failures":0,"connections":0,"connections_total":0,"#
            + #""health":"up","origin":"runtime","pool":"greeter","state":"ready","weight":3}]}"#)
        // An h2c pool's rows carry the GOAWAY figures, and the table a column.
        var h2 = plain
        h2.goawaysSent = 5
        h2.goawayClosed = 4
        h2.openAtDeadline = 1
        let h2Answer = TargetsAnswer(targets: [h2, plain])
        XCTAssertEqual(h2Answer.text.split(separator: "\n").first.map { $0.hasSuffix("HEALTH_CHANGES  GOAWAYS") }, true)
        XCTAssertTrue(h2Answer.text.split(separator: "\n")[1].hasSuffix("  5"), h2Answer.text)
        XCTAssertTrue(h2Answer.text.split(separator: "\n")[2].hasSuffix("  -"), "a tcp pool's row has none")
        XCTAssertTrue(AdminJSON.encode(TargetsAnswer(targets: [h2])).contains(#""goaway_closed":4,"goaways_sent":5"#))
        XCTAssertTrue(AdminJSON.encode(TargetsAnswer(targets: [h2])).contains(#""open_at_deadline":1"#))
        let drainingJSON = AdminJSON.encode(draining)
        for field in [#""drain_mode":"strict""#, #""drain_remaining_ms":59996"#, #""drain_expired":false"#, #""name":"pod-2""#,
                      #""health_check":"none""#, #""health_transitions":0"#, #""health_hold_ms":0"#,
                      #""health_reason":"initial""#, #""effective_state":"draining""#] {
            XCTAssertTrue(drainingJSON.contains(field), "\(field) in \(drainingJSON)")
        }
        try roundTrip(a)
    }

    func testAffinity() throws {
        let a = AffinityAnswer(entries: [
            AffinityRow(pool: "greeter", client: "127.0.10.3", target: "127.0.0.1:50062", connections: 1, idleS: 0, worker: 1),
            AffinityRow(pool: "greeter", client: "127.0.10.12", target: AffinityRow.goneTarget, connections: 0, idleS: 17, worker: 0),
        ])
        XCTAssertEqual(a.text, """
            POOL     CLIENT       TARGET           CONNS  IDLE_S  WORKER
            greeter  127.0.10.3   127.0.0.1:50062  1      0       1
            greeter  127.0.10.12  (gone)           0      17      0
            """)
        XCTAssertEqual(AdminJSON.encode(AffinityAnswer(entries: [a.entries[0]])),
                       #"{"entries":[{"client":"127.0.10.3","connections":1,"idle_s":0,"pool":"greeter","target":"127.0.0.1:50062","worker":1}]}"#)
        XCTAssertEqual(AdminJSON.encode(AffinityAnswer(entries: [])), #"{"entries":[]}"#)
        try roundTrip(a)
    }
}

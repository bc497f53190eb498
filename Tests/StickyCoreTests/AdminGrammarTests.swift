import XCTest
@testable import StickyCore

final class AdminGrammarTests: XCTestCase {
    func command(_ line: String) -> AdminCommand? {
        if case .success(let r) = AdminGrammar.parse(line[...]) { return r.command }
        return nil
    }

    func error(_ line: String) -> String? {
        if case .failure(let e) = AdminGrammar.parse(line[...]) { return e.message }
        return nil
    }

    func testUpgradeWithoutBinaryUsesTheDaemonsOwn() {
        XCTAssertEqual(command("upgrade"), .upgrade(binary: nil))
    }

    func testUpgradeTakesAnAbsoluteBinaryPath() {
        XCTAssertEqual(command("upgrade /usr/local/sbin/stickyd"), .upgrade(binary: "/usr/local/sbin/stickyd"))
    }

    func testUpgradeInJSON() {
        guard case .success(let r) = AdminGrammar.parse("json upgrade /opt/stickyd"[...]) else {
            return XCTFail("json upgrade did not parse")
        }
        XCTAssertTrue(r.json)
        XCTAssertEqual(r.command, .upgrade(binary: "/opt/stickyd"))
    }

    func testUpgradeRefusesARelativePath() {
        let message = error("upgrade stickyd-new")
        XCTAssertNotNil(message)
        XCTAssertTrue(message?.contains("'stickyd-new' is not an absolute path") ?? false, message ?? "")
        XCTAssertTrue(message?.contains("upgrade [<binary>]") ?? false, message ?? "")
    }

    func testUpgradeRefusesAWordAfterTheBinary() {
        XCTAssertEqual(error("upgrade /usr/sbin/stickyd now"), "unexpected 'now' after the command")
    }

    func testUpgradeMutates() {
        XCTAssertTrue(AdminCommand.upgrade(binary: nil).mutates)
    }

    func testUpgradeIsInTheSynopsis() {
        XCTAssertEqual(AdminGrammar.synopsis.last, "quit")
        XCTAssertTrue(AdminGrammar.synopsis.contains("upgrade [<binary>]"))
    }

    func testSynopsisIndicesUsedInMessagesStillMatchTheirCommands() {
        XCTAssertTrue(AdminGrammar.synopsis[4].hasPrefix("add target"))
        XCTAssertTrue(AdminGrammar.synopsis[11].hasPrefix("clear affinity"))
        XCTAssertTrue(AdminGrammar.synopsis[12].hasPrefix("upgrade"))
    }
}

/// Cases the admin fuzzer (Fuzz/AdminGrammar) checks for, kept as tests.
final class AdminGrammarFuzzCaseTests: XCTestCase {
    /// A drain deadline is `now + timeout`: a timeout near `Int64.max`
    /// trapped the control plane on the addition. The grammar now stops at
    /// the config's 30-day ceiling for every timeout.
    func testDrainTimeoutIsBoundedSoTheDeadlineCannotOverflow() {
        let huge = AdminGrammar.parse("drain target 10.0.0.1:80 timeout 106751991167d"[...])
        guard case .failure(let e) = huge else { return XCTFail("an overflowing timeout parsed: \(huge)") }
        XCTAssertTrue(e.message.contains("less than 30d"), e.message)
        if case .success = AdminGrammar.parse("drain target 10.0.0.1:80 timeout 9223372036854775807ms"[...]) {
            XCTFail("Int64.max ms parsed")
        }
        if case .success = AdminGrammar.parse("drain target 10.0.0.1:80 timeout 30d"[...]) {
            XCTFail("the ceiling itself parsed; the config refuses it")
        }
        guard case .success(let r) = AdminGrammar.parse("drain target 10.0.0.1:80 timeout 29d"[...]) else {
            return XCTFail("29 days is refused")
        }
        // What the control plane then does with it, a few years after boot.
        var registry = TargetRegistry(pools: [PoolRecord(name: "p", targets: [
            TargetRecord(spec: TargetSpec(address: SocketAddress("10.0.0.1:80")!, weight: 1, name: nil), origin: .config),
        ])])
        guard case .drain(let pool, let address, let mode, let timeout) = r.command else { return XCTFail("\(r.command)") }
        XCTAssertEqual(timeout, 29 * 86_400_000)
        _ = registry.drain(pool: pool, address: address, mode: mode, timeoutMs: timeout, now: 100_000_000_000)
        XCTAssertEqual(registry.pools[0].targets[0].drain?.deadlineMs, 100_000_000_000 + 29 * 86_400_000)
    }

    /// The admin ceiling is the config's.
    func testDrainTimeoutCeilingIsTheConfigs() {
        XCTAssertEqual(AdminGrammar.drainTimeoutCeilingMs, Bounds.timeoutCeiling)
    }
}

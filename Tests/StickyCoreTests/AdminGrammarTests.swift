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

import Foundation
import XCTest
@testable import StickyCore

/// Inputs the state-file fuzzer (Fuzz/StateFile) found, kept as tests: each
/// failed before its fix.
final class StateFileFuzzCaseTests: XCTestCase {
    let file = "/var/lib/stickyd/state.json"
    let nowMs: Millis = 100_000_000_000
    let nowUnixMs: Int64 = 1_750_000_000_000

    func base() -> TargetRegistry {
        TargetRegistry(pools: [PoolRecord(name: "web", targets: [
            TargetRecord(spec: TargetSpec(address: SocketAddress("10.0.0.1:80")!, weight: 1, name: "a"), origin: .config),
        ])])
    }

    func state(_ targets: String, pools extra: String = "") -> Data {
        Data("""
        {"version": 1, "written_at_unix_ms": 0, "pools": [
          {"name": "web", "removed_config_targets": [], "targets": [\(targets)]}\(extra)]}
        """.utf8)
    }

    func target(_ address: String, name: String? = nil, state: String = "ready", deadline: Int64? = nil) -> String {
        var fields = ["\"address\": \"\(address)\"", "\"weight\": 1", "\"state\": \"\(state)\"", "\"origin\": \"runtime\""]
        if let name { fields.append("\"name\": \"\(name)\"") }
        if let deadline { fields.append("\"drain_deadline_unix_ms\": \(deadline)") }
        return "{" + fields.joined(separator: ", ") + "}"
    }

    func refusal(_ data: Data) -> String? {
        do {
            _ = try StateFile.decode(data, file: file)
            XCTFail("accepted")
        } catch {
            return "\(error)"
        }
        return nil
    }

    /// The fuzzer's input: one address twice (a hand edit). It was laid
    /// over the config as two targets, and the daemon then built a Maglev
    /// table from the duplicate, which asserts addresses are distinct.
    func testATargetListedTwiceIsRefused() {
        let twice = state(target("10.0.0.9:80") + ", " + target("10.0.0.9:80", state: "maint"))
        XCTAssertEqual(refusal(twice), "\(file): pool 'web': target 10.0.0.9:80 is listed twice")
        // The same address written another way is the same target.
        let v6 = state(target("[2001:db8::1]:443") + ", " + target("[2001:DB8:0::1]:443"))
        XCTAssertEqual(refusal(v6), "\(file): pool 'web': target [2001:db8::1]:443 is listed twice")
    }

    func testTheRegistrysOtherRulesAreKept() {
        XCTAssertEqual(refusal(state(target("10.0.0.8:80", name: "x") + ", " + target("10.0.0.9:80", name: "x"))),
                       "\(file): pool 'web': target name 'x' is used twice")
        XCTAssertTrue(refusal(state(target("10.0.0.8:80", name: "a b")))?.contains("target name 'a b' must be") ?? false)
        let many = (1...65).map { target("10.0.1.\($0):80") }.joined(separator: ", ")
        XCTAssertEqual(refusal(state(many)), "\(file): pool 'web': 65 targets; a pool holds at most 64")
        XCTAssertEqual(refusal(state("", pools: #", {"name": "web", "removed_config_targets": [], "targets": []}"#)),
                       "\(file): pool 'web' is listed twice")
    }

    /// A drain deadline far in the past or future overflowed `deadline -
    /// now` or `now + remaining` and trapped the daemon at start.
    func testAnyDrainDeadlineIsLaidOverWithoutOverflow() throws {
        for deadline in [Int64.min, -1, 0, nowUnixMs + 5_000, Int64.max] {
            let s = try StateFile.decode(state(target("10.0.0.9:80", state: "draining", deadline: deadline)), file: file)
            let (merged, _) = s.overlay(on: base(), nowMs: nowMs, nowUnixMs: nowUnixMs)
            let drain = try XCTUnwrap(merged.pools[0].targets.first { $0.spec.address == SocketAddress("10.0.0.9:80")! }?.drain)
            let left = drain.deadlineMs - nowMs
            XCTAssertTrue(left >= 0 && left <= AdminGrammar.drainTimeoutCeilingMs, "deadline \(deadline): \(left) ms left")
            if deadline == nowUnixMs + 5_000 { XCTAssertEqual(left, 5_000) }
        }
    }

    /// A file full of runtime targets leaves no room for a config target the
    /// file does not know: it is left out with a warning, not added as a
    /// 65th (a connect's failed-target mask holds 64).
    func testANewConfigTargetDoesNotOverfillAPool() throws {
        let full = state((1...64).map { target("10.0.1.\($0):80") }.joined(separator: ", "))
        let (merged, warnings) = try StateFile.decode(full, file: file).overlay(on: base(), nowMs: nowMs, nowUnixMs: nowUnixMs)
        XCTAssertEqual(merged.pools[0].targets.count, 64)
        XCTAssertEqual(warnings, ["pool 'web': 10.0.0.1:80 is new in the config, but the pool is full (64 targets); not added"])
    }
}

extension StateFileFuzzCaseTests {
    /// The fuzzer's input, as an operator gets there: the config moved the
    /// name 'a' from 10.0.0.1:80 to a new target. The state file, whose
    /// names win, still names 10.0.0.1:80 'a', and the new target was added
    /// as 'a' too: two targets of one name, which `add` never allows.
    func testANameTheStateFileGivesIsNotGivenTwice() throws {
        var config = base()
        config.pools[0].targets[0].spec.name = nil
        config.pools[0].targets.append(TargetRecord(spec: TargetSpec(address: SocketAddress("10.0.0.5:80")!, weight: 1, name: "a"),
                                                    origin: .config))
        let s = try StateFile.decode(state(#"{"address": "10.0.0.1:80", "weight": 1, "name": "a", "state": "ready", "origin": "config"}"#),
                                     file: file)
        let (merged, warnings) = s.overlay(on: config, nowMs: nowMs, nowUnixMs: nowUnixMs)
        XCTAssertEqual(merged.pools[0].targets.map(\.spec.name), ["a", nil])
        XCTAssertEqual(warnings, ["pool 'web': 10.0.0.5:80 is new in the config as 'a', a name the state file gives another target; added without a name"])
    }

    /// The fuzzer's input: a target both listed and removed. It was laid
    /// over as a live target that the daemon then saved as removed too, so
    /// the next start dropped a target the operator never removed.
    func testATargetListedAndRemovedIsRefused() {
        let data = Data("""
        {"version": 1, "written_at_unix_ms": 0, "pools": [
          {"name": "web", "removed_config_targets": ["10.0.0.1:80"], "targets": [\(target("10.0.0.1:80"))]}]}
        """.utf8)
        XCTAssertEqual(refusal(data), "\(file): pool 'web': target 10.0.0.1:80 is listed and also in removed_config_targets")
        let bad = Data("""
        {"version": 1, "written_at_unix_ms": 0, "pools": [
          {"name": "web", "removed_config_targets": ["nowhere"], "targets": []}]}
        """.utf8)
        XCTAssertEqual(refusal(bad), "\(file): pool 'web': bad address 'nowhere' in removed_config_targets")
    }
}

import Foundation
import XCTest
@testable import StickyCore

final class LogLineTests: XCTestCase {
    // MARK: The daemon's own lines

    func testLogfmtWithTimestamp() {
        let line = LogLine.logfmt(unixMs: 1_714_564_800_123, level: "info", message: "ready",
                                  metadata: [("listeners", "127.0.0.1:7001->web"), ("workers", "2")])
        XCTAssertEqual(line, #"ts=2024-05-01T12:00:00.123Z level=info msg="ready" listeners=127.0.0.1:7001->web workers=2"#)
    }

    func testLogfmtWithoutTimestampForTheJournal() {
        XCTAssertEqual(LogLine.logfmt(unixMs: nil, level: "notice", message: "reloaded", metadata: []),
                       #"level=notice msg="reloaded""#)
    }

    func testLogfmtQuotesValuesThatNeedIt() {
        XCTAssertEqual(LogLine.logfmtValue("plain"), "plain")
        XCTAssertEqual(LogLine.logfmtValue(""), #""""#)
        XCTAssertEqual(LogLine.logfmtValue("two words"), #""two words""#)
        XCTAssertEqual(LogLine.logfmtValue("a=b"), #""a=b""#)
        XCTAssertEqual(LogLine.logfmtValue(#"say "hi""#), #""say \"hi\"""#)
        XCTAssertEqual(LogLine.logfmtValue("back\\slash"), #""back\\slash""#)
    }

    func testLogfmtValueCannotEndTheLine() {
        let value = LogLine.logfmtValue("one\ntwo\r\u{1}")
        XCTAssertFalse(value.contains("\n"))
        XCTAssertFalse(value.contains("\r"))
        XCTAssertEqual(value, #""one\ntwo\r\u0001""#)
    }

    func testLogfmtKeysAreKeptPlain() {
        XCTAssertEqual(LogLine.logfmtKey("grace_ms"), "grace_ms")
        XCTAssertEqual(LogLine.logfmtKey("bad key=x"), "bad_key_x")
        XCTAssertEqual(LogLine.logfmtKey(""), "_")
    }

    func testJSONLineIsOneObject() throws {
        let line = LogLine.json(unixMs: 0, level: "error", message: "could not \"write\"\n",
                                metadata: [("path", "/tmp/x"), ("msg", "shadowed")])
        XCTAssertEqual(line, #"{"ts":"1970-01-01T00:00:00.000Z","level":"error","msg":"could not \"write\"\n","path":"/tmp/x"}"#)
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String]
        XCTAssertEqual(object?["msg"], "could not \"write\"\n")
        XCTAssertEqual(object?["path"], "/tmp/x")
    }

    func testJSONWithoutTimestamp() {
        XCTAssertEqual(LogLine.json(unixMs: nil, level: "info", message: "ready", metadata: []),
                       #"{"level":"info","msg":"ready"}"#)
    }

    // MARK: Timestamps

    func testTimestamps() {
        XCTAssertEqual(LogLine.timestamp(unixMs: 0), "1970-01-01T00:00:00.000Z")
        // A leap day, and the last millisecond of a year.
        XCTAssertEqual(LogLine.timestamp(unixMs: 951_782_400_000), "2000-02-29T00:00:00.000Z")
        XCTAssertEqual(LogLine.timestamp(unixMs: 1_735_689_599_999), "2024-12-31T23:59:59.999Z")
        XCTAssertEqual(LogLine.timestamp(unixMs: 4_102_444_800_005), "2100-01-01T00:00:00.005Z")
    }

    func testTimestampsAgreeWithTheCalendar() {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        // One sample a little over every 97 days across 1970-2200.
        var ms: Int64 = 0
        while ms < 7_258_118_400_000 {
            let d = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second],
                                            from: Date(timeIntervalSince1970: Double(ms / 1000)))
            let want = String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", d.year!, d.month!, d.day!, d.hour!, d.minute!,
                              d.second!, Int(ms % 1000))
            XCTAssertEqual(LogLine.timestamp(unixMs: ms), want)
            ms += 8_400_000_123
        }
    }

    // MARK: Bytes

    private func written(_ capacity: Int = 256, _ body: (inout ByteWriter) -> Void) -> (String, Bool) {
        let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        defer { buffer.deallocate() }
        var w = ByteWriter(buffer, capacity: capacity)
        body(&w)
        return (String(decoding: UnsafeBufferPointer(start: buffer, count: w.count), as: UTF8.self), w.overflowed)
    }

    func testDecimals() {
        XCTAssertEqual(written { $0.decimal(UInt64(0)) }.0, "0")
        XCTAssertEqual(written { $0.decimal(UInt64.max) }.0, "18446744073709551615")
        XCTAssertEqual(written { $0.decimal(Int64(-42)) }.0, "-42")
    }

    func testAddresses() {
        func text(_ s: String) -> String { written { $0.socketAddress(SocketAddress(s)!) }.0 }
        XCTAssertEqual(text("127.0.0.1:80"), "127.0.0.1:80")
        XCTAssertEqual(text("255.255.255.255:65535"), "255.255.255.255:65535")
        XCTAssertEqual(text("[::1]:7001"), "[::1]:7001")
        XCTAssertEqual(text("[::]:1"), "[::]:1")
        XCTAssertEqual(text("[2001:db8::1]:443"), "[2001:db8::1]:443")
        XCTAssertEqual(text("[2001:db8:0:1:0:0:0:1]:443"), "[2001:db8:0:1::1]:443")
        // One zero group is not compressed; the longest run wins.
        XCTAssertEqual(text("[2001:db8:0:1:1:1:1:1]:1"), "[2001:db8:0:1:1:1:1:1]:1")
        XCTAssertEqual(text("[1:0:0:2:0:0:0:3]:1"), "[1:0:0:2::3]:1")
        XCTAssertEqual(text("[fe80::]:9"), "[fe80::]:9")
    }

    func testAddressesMatchTheirDescription() {
        for s in ["10.1.2.3:5", "[::1]:5", "[2001:db8:0:1:0:0:0:1]:443", "[fe80::1:2]:9", "[1:2:3:4:5:6:7:8]:1"] {
            let a = SocketAddress(s)!
            XCTAssertEqual(written { $0.socketAddress(a) }.0, "\(a)")
        }
    }

    func testOverflowIsFlaggedNotWritten() {
        let (text, overflowed) = written(4) { $0.ascii("hello") }
        XCTAssertEqual(text, "hell")
        XCTAssertTrue(overflowed)
    }

    // MARK: Access log

    func testAccessLine() {
        var r = AccessRecord()
        r.closeUnixMs = 1_714_564_800_123
        r.durationMs = 42
        r.client = SocketAddress("127.0.0.2:40000")!
        r.target = SocketAddress("127.0.0.1:9001")!
        r.hasTarget = true
        r.bytesUp = 100
        r.bytesDown = 2000
        r.reason = "done"
        let (text, overflowed) = written { r.format(into: &$0, poolName: Array("web".utf8)) }
        XCTAssertFalse(overflowed)
        XCTAssertEqual(text, "ts=2024-05-01T12:00:00.123Z client=127.0.0.2:40000 target=127.0.0.1:9001 pool=web bytes_up=100 bytes_down=2000 duration_ms=42 reason=done\n")
    }

    func testAccessLineWithoutTarget() {
        var r = AccessRecord()
        r.client = SocketAddress("[::1]:5")!
        r.reason = "no_target"
        r.durationMs = -3  // a coarse clock never makes a negative duration
        let (text, _) = written { r.format(into: &$0, poolName: Array("p".utf8)) }
        XCTAssertEqual(text, "ts=1970-01-01T00:00:00.000Z client=[::1]:5 target=- pool=p bytes_up=0 bytes_down=0 duration_ms=0 reason=no_target\n")
    }

    func testAccessLinePlacement() {
        var r = AccessRecord()
        r.client = SocketAddress("127.0.0.2:40000")!
        r.target = SocketAddress("127.0.0.1:9001")!
        r.hasTarget = true
        r.reason = "done"
        let prefix = "ts=1970-01-01T00:00:00.000Z client=127.0.0.2:40000 target=127.0.0.1:9001 pool=p bytes_up=0 bytes_down=0 duration_ms=0 reason=done"
        // Off (the default): the line is the older line, byte for byte.
        r.placement = .hit
        XCTAssertEqual(written { r.format(into: &$0, poolName: Array("p".utf8)) }.0, prefix + "\n")
        r.withPlacement = true
        let cases: [(PlacementKind, MoveReason, String)] = [
            (.hit, .targetDown, "hit"), (.miss, .targetDown, "miss"), (.spill, .targetDown, "spill"),
            (.none, .targetDown, "-"),
            (.repin, .targetDown, "repin(target_down)"), (.repin, .targetDrained, "repin(target_drained)"),
            (.repin, .targetMaint, "repin(target_maint)"), (.repin, .targetRemoved, "repin(target_removed)"),
            (.repin, .connectFailed, "repin(connect_failed)"), (.repin, .age, "repin(age)"),
        ]
        for (kind, reason, word) in cases {
            r.placement = kind
            r.moveReason = reason
            XCTAssertEqual(written { r.format(into: &$0, poolName: Array("p".utf8)) }.0, prefix + " placement=\(word)\n")
        }
        // Every reason's StaticString is its description, one name each.
        for reason in MoveReason.allCases { XCTAssertEqual("\(reason.staticName)", reason.description) }
    }

    func testLongestAccessLineFits() {
        var r = AccessRecord()
        r.closeUnixMs = 253_402_300_799_999  // 9999-12-31T23:59:59.999Z
        r.durationMs = .max
        r.client = SocketAddress("[1111:2222:3333:4444:5555:6666:7777:8888]:65535")!
        r.target = r.client
        r.hasTarget = true
        r.bytesUp = .max
        r.bytesDown = .max
        r.reason = "drain_deadline"
        r.withPlacement = true
        r.placement = .repin
        r.moveReason = .connectFailed
        let pool = Array(repeating: UInt8(ascii: "p"), count: 64)
        let (text, overflowed) = written(AccessRecord.lineBytesMax) { r.format(into: &$0, poolName: pool) }
        XCTAssertFalse(overflowed, "\(text.utf8.count) bytes")
        XCTAssertTrue(text.hasPrefix("ts=9999-12-31T23:59:59.999Z "))
    }
}

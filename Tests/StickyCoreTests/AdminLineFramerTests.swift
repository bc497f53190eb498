import StickyCore
import XCTest

final class AdminLineFramerTests: XCTestCase {
    func events(_ chunks: [String], stopAfter: Int = .max) -> [AdminLineFramer.Event] {
        var f = AdminLineFramer()
        var out: [AdminLineFramer.Event] = []
        for c in chunks {
            let going = f.feed(Array(c.utf8)[...]) { e in
                out.append(e)
                return out.count < stopAfter
            }
            if !going { break }
        }
        return out
    }

    func testLinesAcrossChunksBlankLinesAndCRLF() {
        XCTAssertEqual(events(["show in", "fo\r\n\n  \r\nhelp\n", "show"]), [.line("show info\r"), .line("help")])
    }

    func testOverlongLineIsReportedOnceAndDroppedToItsNewline() {
        let long = String(repeating: "x", count: AdminGrammar.lineBytesMax + 10)
        XCTAssertEqual(events([long, "more of it\nhelp\n"]), [.tooLong, .line("help")])
        let exact = String(repeating: "y", count: AdminGrammar.lineBytesMax)
        XCTAssertEqual(events([exact + "\n"]), [.line(exact)])
    }

    func testStopsWhenAsked() {
        XCTAssertEqual(events(["quit\nhelp\n"], stopAfter: 1), [.line("quit")])
    }
}

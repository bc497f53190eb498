import XCTest
@testable import StickyCore

/// Inputs the config loader's fuzzer (Fuzz/ConfigLoader) found, kept as
/// tests: each failed before its fix.
final class ConfigFuzzCaseTests: XCTestCase {
    /// libyaml ends the stream with a line break of its own, so an error at
    /// the end of a text without a final newline was reported one line past
    /// the file ("fuzz.yaml:90:1" for an 89-line file).
    func testErrorAtTheEndOfATextWithoutNewlineIsOnItsLastLine() {
        let text = "listeners:\n  - address: 127.0.0.1:7001\nlistenerso"
        guard let error = configError(text) else { return }
        XCTAssertEqual(error.line, 3, "\(error)")
        XCTAssertEqual(error.column, 11, "\(error)")
        XCTAssertTrue(error.message.contains("could not find expected ':'"), error.message)
    }

    /// With the final newline, the same error is where libyaml puts it.
    func testErrorAtTheEndOfATextWithNewlineStaysPut() {
        guard let error = configError("listeners:\n  - address: 127.0.0.1:7001\nlistenerso\n") else { return }
        XCTAssertEqual(error.line, 4, "\(error)")
    }
}

extension ConfigFuzzCaseTests {
    /// YAML ends a line at CR and CRLF too, and so do libyaml's marks. The
    /// loader looked lines up by splitting on "\n", which in a `String` does
    /// not split "\r\n" (one `Character`): a CRLF file lost the tab hint.
    func testCRLFFileGetsTheTabHintOnTheRightLine() {
        guard let error = configError("listeners:\r\n\t- address: 127.0.0.1:7001\r\n") else { return }
        XCTAssertEqual(error.line, 2, "\(error)")
        XCTAssertTrue(error.message.contains("YAML does not allow tabs for indentation"), error.message)
    }

    /// The fuzzer's input: lines ended by CR alone. Here the harness was
    /// wrong (it counted LF only), but the end-of-text rule above must count
    /// lines as libyaml does, or it would move this error to line 2.
    func testErrorLinesCountCROnlyLineBreaks() {
        // 117 lines: 115 empty ones, a mapping, and a line that breaks it.
        let text = String(repeating: "\r", count: 115) + "proxy_protocol: [\"x\"]\n  tim 127.0.0.1/32"
        guard let error = configError(text) else { return }
        XCTAssertEqual(error.line, 117, "\(error)")
        guard let crlf = configError("listeners:\r\n  - address: 127.0.0.1:7001\r\nlistenerso") else { return }
        XCTAssertEqual(crlf.line, 3, "\(crlf)")
        XCTAssertEqual(crlf.column, 11, "\(crlf)")
    }
}

extension ConfigFuzzCaseTests {
    /// The fuzzer's next input: "---" alone. The empty document's node has
    /// libyaml's end-of-text mark too, so the reader's error named line 2
    /// of a one-line file.
    func testEmptyDocumentAfterAMarkerIsOnTheLastLine() {
        guard let error = configError("---") else { return }
        XCTAssertEqual(error.line, 1, "\(error)")
        XCTAssertEqual(error.column, 4, "\(error)")
        XCTAssertTrue(error.message.contains("the top level must be a mapping"), error.message)
    }
}

import Foundation
import StickyCore
import XCTest

@testable import StickyControlPlane

/// docs/METRICS.md lists the series from `CounterTable`. This fails when the
/// doc and the table disagree; STICKYD_UPDATE_DOCS=1 rewrites the doc.
final class MetricsDocTests: XCTestCase {
    static let docPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../docs/METRICS.md").standardized.path

    func testMetricsDocMatchesCounterTable() throws {
        let doc = try String(contentsOfFile: Self.docPath, encoding: .utf8)
        guard let begin = doc.range(of: MetricsDoc.begin), let end = doc.range(of: MetricsDoc.end),
              begin.lowerBound < end.lowerBound else {
            return XCTFail("\(Self.docPath) lacks the generated-tables markers:\n\(MetricsDoc.begin)\n\(MetricsDoc.end)")
        }
        let expected = MetricsDoc.tables()
        let found = String(doc[begin.lowerBound..<end.upperBound])
        if found == expected { return }
        if ProcessInfo.processInfo.environment["STICKYD_UPDATE_DOCS"] == "1" {
            try (doc.replacingCharacters(in: begin.lowerBound..<end.upperBound, with: expected))
                .write(toFile: Self.docPath, atomically: true, encoding: .utf8)
            return
        }
        XCTFail("docs/METRICS.md disagrees with CounterTable; run STICKYD_UPDATE_DOCS=1 swift test --filter MetricsDocTests, "
                + "or paste:\n\(expected)")
    }

    func testEveryFixedLabelHasValues() {
        for label in [CounterLabel.direction, .state, .moveReason, .closeReason, .proxyRejection] {
            XCTAssertFalse(label.values?.isEmpty ?? true, "\(label)")
        }
        XCTAssertFalse(CounterLabel.closeReason.values!.contains("none"), "`none` is no reason a connection closed")
    }
}

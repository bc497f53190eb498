import XCTest
@testable import StickyCore

/// The upgrade socket's framing, as the successor and the running daemon
/// read it from whatever the other end sends.
final class TakeoverFrameTests: XCTestCase {
    func testRoundTripEveryType() {
        for type in TakeoverFrame.allCases {
            let payload: [UInt8] = type == .affinity ? Array("SKAF".utf8) : []
            let bytes = TakeoverFrame.encode(type, payload)
            XCTAssertEqual(bytes.count, TakeoverFrame.headerBytes + payload.count)
            guard case .frame(let t, let range) = TakeoverFrame.decode(bytes[...]) else {
                return XCTFail("\(type) did not decode")
            }
            XCTAssertEqual(t, type)
            XCTAssertEqual(Array(bytes[range]), payload)
            XCTAssertEqual(range.upperBound, bytes.count)
        }
    }

    /// Any cut short of the whole frame asks for more, never for an error.
    func testEveryShortCutNeedsMore() {
        let bytes = TakeoverFrame.encode(.state, Array("{\"version\":1}".utf8))
        for cut in 0..<bytes.count {
            XCTAssertEqual(TakeoverFrame.decode(bytes[0..<cut]), .needMore, "cut at \(cut)")
        }
    }

    /// The channel decodes from an offset into its buffer: payload indices
    /// are the buffer's, and the second frame starts where the first ends.
    func testDecodesFromAnOffsetIntoTheBuffer() {
        let first = TakeoverFrame.encode(.fds, [])
        let second = TakeoverFrame.encode(.failed, Array("{}".utf8))
        let buffer = [9, 9] + first + second
        guard case .frame(.fds, let r1) = TakeoverFrame.decode(buffer[2...]) else { return XCTFail("first") }
        XCTAssertEqual(r1, 7..<7)
        guard case .frame(.failed, let r2) = TakeoverFrame.decode(buffer[r1.upperBound...]) else { return XCTFail("second") }
        XCTAssertEqual(Array(buffer[r2]), Array("{}".utf8))
        XCTAssertEqual(TakeoverFrame.decode(buffer[r2.upperBound...]), .needMore)
    }

    /// The messages the upgrade logs after "upgrade: ".
    func testForeignPeersAreInvalid() {
        XCTAssertEqual(TakeoverFrame.decode([0, 0, 0, 0, 1][...]),
                       .invalid("frame of 0 bytes; not a stickyd takeover peer"))
        // "GET /" from a confused HTTP client: a length of 1.2 GB.
        XCTAssertEqual(TakeoverFrame.decode(Array("GET / HTTP/1.1".utf8)[...]),
                       .invalid("frame of 1195725856 bytes; not a stickyd takeover peer"))
        XCTAssertEqual(TakeoverFrame.decode([0, 0, 0, 1, 0][...]), .invalid("unknown frame type 0"))
        XCTAssertEqual(TakeoverFrame.decode([0, 0, 0, 1, 10][...]), .invalid("unknown frame type 10"))
        // The largest length is allowed and waits for its payload.
        let max = TakeoverFrame.lengthMax
        XCTAssertEqual(TakeoverFrame.decode([UInt8(max >> 24), 0, 0, 0, 4][...]), .needMore)
    }
}

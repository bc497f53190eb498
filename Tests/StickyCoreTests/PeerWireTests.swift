import XCTest
@testable import StickyCore

final class PeerWireTests: XCTestCase {
    static let pin = PeerPin(key: AffinityKey(.v4(0xC000_0207), maskV4: 32, maskV6: 128),
                             target: SocketAddress("198.51.100.7:50051")!, idleSec: 12, pinnedAt: 1_800_000_000,
                             reason: .targetDrained)

    func roundTrip(_ m: PeerMessage) throws -> PeerMessage {
        var bytes = PeerWire.encode(m)
        let out = try PeerWire.decodeFrame(&bytes)
        XCTAssertTrue(bytes.isEmpty)
        return try XCTUnwrap(out)
    }

    func testEveryMessageRoundTrips() throws {
        let v6 = PeerPin(key: AffinityKey(.v6(hi: 0x2001_0db8_0000_0001, lo: 7), maskV4: 32, maskV6: 128),
                         target: SocketAddress("[2001:db8::9]:443")!, idleSec: 0, pinnedAt: 1, reason: .new)
        for m: PeerMessage in [.hello(name: "a", fingerprint: 42), .pins(pool: "greeter", sentAtMs: 99, pins: [Self.pin, v6]),
                               .pins(pool: "p", sentAtMs: 0, pins: []), .syncRequest, .syncEnd(count: 3), .heartbeat(sentAtMs: 5)] {
            XCTAssertEqual(try roundTrip(m), m)
        }
    }

    /// Frames arrive in pieces: nothing is taken until one is whole, and two
    /// in one read come out one at a time.
    func testPartialAndJoinedFrames() throws {
        let a = PeerWire.encode(.hello(name: "b", fingerprint: 1))
        let b = PeerWire.encode(.pins(pool: "x", sentAtMs: 1, pins: [Self.pin]))
        var buffer: [UInt8] = []
        for byte in a.dropLast() {
            buffer.append(byte)
            XCTAssertNil(try PeerWire.decodeFrame(&buffer))
        }
        buffer.append(a.last!)
        buffer += b
        XCTAssertEqual(try PeerWire.decodeFrame(&buffer), .hello(name: "b", fingerprint: 1))
        XCTAssertEqual(try PeerWire.decodeFrame(&buffer), .pins(pool: "x", sentAtMs: 1, pins: [Self.pin]))
        XCTAssertNil(try PeerWire.decodeFrame(&buffer))
    }

    /// A malformed message is an error that says what is wrong, never a crash.
    func testMalformedMessagesAreErrors() {
        func fails(_ bytes: [UInt8], _ expect: String, line: UInt = #line) {
            var b = bytes
            XCTAssertThrowsError(try PeerWire.decodeFrame(&b), line: line) { e in
                XCTAssertTrue("\(e)".contains(expect), "\(e)", line: line)
            }
        }
        fails([0, 0, 0, 0], "frame length 0")
        fails([0x7F, 0, 0, 0, 1], "frame length")
        fails([0, 0, 0, 1, 9], "unknown message type 9")
        fails([0, 0, 0, 2, 1, 2], "version 2")
        var truncated = PeerWire.encode(.pins(pool: "x", sentAtMs: 1, pins: [Self.pin]))
        truncated[3] -= 3
        truncated.removeLast(3)
        fails(truncated, "truncated")
        var trailing = PeerWire.encode(.syncEnd(count: 1))
        trailing[3] += 1
        trailing.append(0)
        fails(trailing, "trailing")
        var badReason = PeerWire.encode(.pins(pool: "x", sentAtMs: 1, pins: [Self.pin]))
        badReason[badReason.count - 1] = 200
        fails(badReason, "unknown pin reason 200")
        var badTarget = PeerWire.encode(.pins(pool: "x", sentAtMs: 1, pins: [Self.pin]))
        if let i = badTarget.firstIndex(of: UInt8(ascii: "1")) { badTarget[i] = UInt8(ascii: "z") }
        fails(badTarget, "bad target address")
    }

    func testConflictOrderIsTotalAndTheSameBothWays() {
        let a = SocketAddress("10.0.0.1:80")!, b = SocketAddress("10.0.0.2:80")!
        XCTAssertTrue(PeerPin.wins(pinnedAt: 5, target: b, over: 6, target: a), "older wins")
        XCTAssertFalse(PeerPin.wins(pinnedAt: 6, target: a, over: 5, target: b))
        XCTAssertTrue(PeerPin.wins(pinnedAt: 5, target: a, over: 5, target: b), "same second: lower address")
        XCTAssertFalse(PeerPin.wins(pinnedAt: 5, target: b, over: 5, target: a))
        let v6 = SocketAddress("[::1]:80")!
        XCTAssertNotEqual(PeerPin.wins(pinnedAt: 5, target: a, over: 5, target: v6),
                          PeerPin.wins(pinnedAt: 5, target: v6, over: 5, target: a))
    }

    func testKeyFingerprintDependsOnTheKey() {
        XCTAssertEqual(PeerWire.keyFingerprint(SipKey(k0: 1, k1: 2)), PeerWire.keyFingerprint(SipKey(k0: 1, k1: 2)))
        XCTAssertNotEqual(PeerWire.keyFingerprint(SipKey(k0: 1, k1: 2)), PeerWire.keyFingerprint(SipKey(k0: 1, k1: 3)))
    }
}

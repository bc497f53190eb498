import Foundation
import XCTest
@testable import StickyCore

/// Frames as a server writes them, for feeding the tracker.
enum H2Bytes {
    static func header(length: Int, type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0) -> [UInt8] {
        [UInt8(length >> 16 & 0xff), UInt8(length >> 8 & 0xff), UInt8(length & 0xff), type, flags,
         UInt8(stream >> 24), UInt8(stream >> 16 & 0xff), UInt8(stream >> 8 & 0xff), UInt8(stream & 0xff)]
    }

    static func frame(_ type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, _ payload: [UInt8] = []) -> [UInt8] {
        header(length: payload.count, type: type, flags: flags, stream: stream) + payload
    }

    static func u32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }

    /// A SETTINGS entry: 16-bit identifier, 32-bit value.
    static func setting(_ id: UInt16, _ value: UInt32) -> [UInt8] { [UInt8(id >> 8), UInt8(id & 0xff)] + u32(value) }

    /// The server preface of a gRPC server: MAX_CONCURRENT_STREAMS,
    /// INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE.
    static let serverSettings = frame(0x4, setting(0x3, 100) + setting(0x4, 1 << 20) + setting(0x5, 16_384))

    /// A payload that looks like frame headers (a GOAWAY's, a PING's): the
    /// tracker must skip it, not read it.
    static func decoy(_ count: Int) -> [UInt8] {
        let pattern = header(length: 8, type: 0x7) + header(length: 3, type: 0x6, stream: 5)
        return (0..<count).map { pattern[$0 % pattern.count] }
    }

    /// One connection's target→client bytes, frame by frame: the preface,
    /// SETTINGS ACK, WINDOW_UPDATE, a BDP PING, a response with a DATA
    /// frame far over 16 KiB and trailers, a PING ACK, an extension frame,
    /// the target's own GOAWAY, and a stream still finishing after it.
    static let serverFrames: [[UInt8]] = [
        serverSettings,
        frame(0x4, flags: 0x1),
        frame(0x8, u32(983_041)),
        frame(0x6, [1, 2, 3, 4, 5, 6, 7, 8]),
        frame(0x1, flags: 0x4, stream: 1, [0x88, 0x5f, 0x8b] + decoy(27)),
        frame(0x0, stream: 1, decoy(100_000)),
        frame(0x6, flags: 0x1, [8, 7, 6, 5, 4, 3, 2, 1]),
        frame(0x1, flags: 0x5, stream: 1, [0x40, 0x88] + decoy(14)),
        frame(0xfa, flags: 0xff, stream: 3, decoy(5)),
        frame(0x7, u32(1) + u32(0) + Array("graceful".utf8)),
        frame(0x0, flags: 0x1, stream: 3, decoy(1000)),
    ]
    static let serverStream = serverFrames.flatMap { $0 }
    static let goawayIndex = 9

    /// Where a GOAWAY may go in `serverStream`: every boundary from the end
    /// of the preface up to the start of the target's own GOAWAY.
    static var serverInjectPoints: [Int] {
        var ends: [Int] = []
        var at = 0
        for f in serverFrames {
            at += f.count
            ends.append(at)
        }
        return Array(ends[0..<goawayIndex])
    }
}

final class H2FrameTrackerTests: XCTestCase {
    /// Feeds `stream` in the pieces `cuts` makes, each with `stopAtBoundary`,
    /// stepping one byte past each stop, and returns every offset where a
    /// GOAWAY could have been written, with the tracker at the end.
    static func injectPoints(_ stream: [UInt8], cuts: [Int]) -> (points: [Int], tracker: H2FrameTracker) {
        var t = H2FrameTracker()
        var points: [Int] = []
        stream.withUnsafeBytes { all in
            var start = 0
            for end in cuts.sorted() + [stream.count] where end > start {
                var pos = start
                while pos < end {
                    let n = t.advance(UnsafeRawBufferPointer(rebasing: all[pos..<end]), stopAtBoundary: true)
                    XCTAssertLessThanOrEqual(n, end - pos)
                    if n == 0 {
                        XCTAssertTrue(t.mayInject, "0 consumed away from a boundary at \(pos)")
                        if points.last != pos { points.append(pos) }
                        // Past the boundary: a header's first byte.
                        pos += t.advance(UnsafeRawBufferPointer(rebasing: all[pos..<pos + 1]), stopAtBoundary: false)
                    } else {
                        pos += n
                        XCTAssertTrue(pos == end || t.mayInject, "stopped at \(pos), not a boundary")
                    }
                }
                start = end
            }
        }
        if t.mayInject && points.last != stream.count { points.append(stream.count) }
        return (points, t)
    }

    static func fedWhole(_ bytes: [UInt8]) -> H2FrameTracker {
        var t = H2FrameTracker()
        let n = bytes.withUnsafeBytes { t.advance($0, stopAtBoundary: false) }
        XCTAssertEqual(n, bytes.count)
        return t
    }

    // MARK: boundaries

    func testServerStreamWhole() {
        let t = Self.fedWhole(H2Bytes.serverStream)
        XCTAssertNil(t.stopReason)
        XCTAssertTrue(t.targetSentGoaway)
        XCTAssertFalse(t.mayInject, "the target sent its own GOAWAY")
    }

    func testSameBoundariesForEverySplit() {
        let stream = H2Bytes.serverStream
        let expected = H2Bytes.serverInjectPoints
        let whole = Self.fedWhole(stream)

        let unsplit = Self.injectPoints(stream, cuts: [])
        XCTAssertEqual(unsplit.points, expected)
        XCTAssertEqual(unsplit.tracker, whole)

        let byteByByte = Self.injectPoints(stream, cuts: Array(1..<stream.count))
        XCTAssertEqual(byteByByte.points, expected)
        XCTAssertEqual(byteByByte.tracker, whole)

        var rng = SplitMix64(seed: 0x4832_5f54_5241_434b)
        for round in 0..<300 {
            // Short pieces cut headers apart; long ones span several frames.
            let pieces = Int.random(in: 1...40, using: &rng)
            let cuts = (0..<pieces).map { _ in Int.random(in: 1..<stream.count, using: &rng) }
            let split = Self.injectPoints(stream, cuts: cuts)
            XCTAssertEqual(split.points, expected, "round \(round), cuts \(cuts.sorted())")
            XCTAssertEqual(split.tracker, whole, "round \(round)")
        }
    }

    func testStopAtBoundaryStopsAtTheEndOfThePreface() {
        let stream = H2Bytes.serverStream
        var t = H2FrameTracker()
        stream.withUnsafeBytes { all in
            // Inside the preface: nowhere to stop yet.
            XCTAssertEqual(t.advance(UnsafeRawBufferPointer(rebasing: all[0..<10]), stopAtBoundary: true), 10)
            XCTAssertFalse(t.mayInject)
            let n = t.advance(UnsafeRawBufferPointer(rebasing: all[10...]), stopAtBoundary: true)
            XCTAssertEqual(10 + n, H2Bytes.serverSettings.count)
            XCTAssertTrue(t.mayInject)
            // Already at a boundary: nothing consumed.
            XCTAssertEqual(t.advance(UnsafeRawBufferPointer(rebasing: all[(10 + n)...]), stopAtBoundary: true), 0)
        }
    }

    func testEmptyPrefaceIsABoundaryAtOnce() {
        var t = H2FrameTracker()
        let preface = H2Bytes.frame(0x4)
        XCTAssertEqual(preface.withUnsafeBytes { t.advance($0, stopAtBoundary: true) }, 9)
        XCTAssertTrue(t.mayInject)
        XCTAssertEqual(preface.withUnsafeBytes { t.advance(UnsafeRawBufferPointer(rebasing: $0[0..<0]), stopAtBoundary: true) }, 0)
    }

    func testNoInjectBeforeThePrefaceHasPassedWhole() {
        let preface = H2Bytes.serverSettings
        for end in 0..<preface.count {
            let t = Self.fedWhole(Array(preface[0..<end]))
            XCTAssertFalse(t.mayInject, "after \(end) bytes of the preface")
            XCTAssertNil(t.stopReason)
        }
        XCTAssertTrue(Self.fedWhole(preface).mayInject)
    }

    /// Payloads are skipped by length in one step however long they are.
    func testLargestFrameIsSkipped() {
        let length = (1 << 24) - 1
        let chunk = [UInt8](repeating: 0x07, count: 1 << 16)
        var t = Self.fedWhole(H2Bytes.serverSettings + H2Bytes.header(length: length, type: 0x0, stream: 1))
        XCTAssertFalse(t.mayInject)
        var left = length
        var calls = 0
        chunk.withUnsafeBytes { c in
            while left > 0 {
                let n = t.advance(UnsafeRawBufferPointer(rebasing: c[0..<min(c.count, left)]), stopAtBoundary: true)
                XCTAssertEqual(n, min(c.count, left))
                left -= n
                calls += 1
                XCTAssertEqual(t.mayInject, left == 0, "\(left) payload bytes left")
            }
            // The next frame is read as a frame again.
            XCTAssertEqual(t.advance(UnsafeRawBufferPointer(rebasing: c[0..<1]), stopAtBoundary: true), 0)
        }
        XCTAssertEqual(calls, 256)
        let ping = H2Bytes.frame(0x6, [UInt8](repeating: 0, count: 8))
        ping.withUnsafeBytes { XCTAssertEqual(t.advance($0, stopAtBoundary: false), ping.count) }
        XCTAssertNil(t.stopReason)
        XCTAssertTrue(t.mayInject)
    }

    func testAnyTypeAndLengthAfterThePreface() {
        var stream = H2Bytes.serverSettings
        for type in UInt8(0)...UInt8(255) where ![0x4, 0x6, 0x7].contains(type) {
            stream += H2Bytes.frame(type, flags: type, stream: UInt32(type) << 23, H2Bytes.decoy(Int(type)))
        }
        let t = Self.fedWhole(stream)
        XCTAssertNil(t.stopReason)
        XCTAssertTrue(t.mayInject)
    }

    // MARK: not HTTP/2

    func testHTTP1ResponseStopsTracking() {
        let response = Array("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".utf8)
        var t = H2FrameTracker()
        response.withUnsafeBytes { all in
            XCTAssertEqual(t.advance(UnsafeRawBufferPointer(rebasing: all[0..<8]), stopAtBoundary: true), 8)
            XCTAssertNil(t.stopReason, "eight bytes are not a header yet")
            XCTAssertEqual(t.advance(UnsafeRawBufferPointer(rebasing: all[8...]), stopAtBoundary: true), response.count - 8)
        }
        XCTAssertEqual(t.stopReason, .notHTTP2)
        XCTAssertEqual(t.stopReason?.metricName, "not_http2")
        XCTAssertFalse(t.mayInject)
        // Everything after is consumed unread, even a valid stream.
        H2Bytes.serverStream.withUnsafeBytes { XCTAssertEqual(t.advance($0, stopAtBoundary: true), $0.count) }
        XCTAssertEqual(t.stopReason, .notHTTP2)
        XCTAssertFalse(t.targetSentGoaway)
        XCTAssertFalse(t.mayInject)
    }

    func testFirstFrameMustBeTheSettingsPreface() {
        let cases: [(String, [UInt8])] = [
            ("TLS ServerHello", [0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03, 0x03]),
            ("HEADERS first", H2Bytes.frame(0x1, flags: 0x4, stream: 1, [0x88])),
            ("SETTINGS ACK first", H2Bytes.frame(0x4, flags: 0x1)),
            ("SETTINGS on stream 1", H2Bytes.frame(0x4, stream: 1, H2Bytes.setting(0x3, 100))),
            ("SETTINGS of 7 bytes", H2Bytes.frame(0x4, H2Bytes.setting(0x3, 100) + [0])),
            ("GOAWAY first", H2Bytes.frame(0x7, [UInt8](repeating: 0, count: 8))),
        ]
        for (name, bytes) in cases {
            let t = Self.fedWhole(bytes + H2Bytes.serverStream)
            XCTAssertEqual(t.stopReason, .notHTTP2, name)
            XCTAssertFalse(t.mayInject, name)
            XCTAssertFalse(t.targetSentGoaway, name)
        }
        // The reserved bit of the stream id is ignored (RFC 9113 §4.1).
        var reserved = H2Bytes.serverSettings
        reserved[5] |= 0x80
        XCTAssertNil(Self.fedWhole(reserved).stopReason)
    }

    func testRandomBytesAreNotHTTP2() {
        var rng = SplitMix64(seed: 7)
        for round in 0..<1000 {
            let bytes = (0..<Int.random(in: 9...200, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let t = Self.fedWhole(bytes)
            XCTAssertEqual(t.stopReason, .notHTTP2, "round \(round): \(bytes.prefix(9))")
            XCTAssertFalse(t.mayInject)
        }
    }

    // MARK: malformed headers

    func testMalformedHeadersStopTracking() {
        let eight = [UInt8](repeating: 0, count: 8)
        let cases: [(String, [UInt8])] = [
            ("SETTINGS on stream 1", H2Bytes.frame(0x4, stream: 1)),
            ("SETTINGS ACK with a payload", H2Bytes.frame(0x4, flags: 0x1, H2Bytes.setting(0x3, 1))),
            ("SETTINGS of 5 bytes", H2Bytes.frame(0x4, [0, 3, 0, 0, 0])),
            ("PING on stream 1", H2Bytes.frame(0x6, stream: 1, eight)),
            ("PING of 7 bytes", H2Bytes.frame(0x6, [0, 0, 0, 0, 0, 0, 0])),
            ("PING ACK of 9 bytes", H2Bytes.frame(0x6, flags: 0x1, eight + [0])),
            ("GOAWAY on stream 3", H2Bytes.frame(0x7, stream: 3, eight)),
            ("GOAWAY of 7 bytes", H2Bytes.frame(0x7, [0, 0, 0, 1, 0, 0, 0])),
        ]
        for (name, bad) in cases {
            var t = Self.fedWhole(H2Bytes.serverSettings + H2Bytes.frame(0x4, flags: 0x1))
            XCTAssertTrue(t.mayInject, name)
            var stream = bad + H2Bytes.serverStream
            stream.withUnsafeBytes { XCTAssertEqual(t.advance($0, stopAtBoundary: false), $0.count, name) }
            XCTAssertEqual(t.stopReason, .malformedHeader, name)
            XCTAssertEqual(t.stopReason?.metricName, "malformed_header")
            XCTAssertFalse(t.mayInject, name)
            XCTAssertFalse(t.targetSentGoaway, "\(name): a malformed GOAWAY is not a GOAWAY")
            // Split byte by byte, the same.
            stream = H2Bytes.serverSettings + stream
            XCTAssertEqual(Self.injectPoints(stream, cuts: Array(1..<stream.count)).points, [H2Bytes.serverSettings.count], name)
        }
    }

    func testWellFormedControlFramesPass() {
        let eight = [UInt8](repeating: 9, count: 8)
        let frames = [
            H2Bytes.frame(0x4), // SETTINGS with no settings
            H2Bytes.frame(0x4, H2Bytes.setting(0x1, 4096) + H2Bytes.setting(0x2, 0)),
            H2Bytes.frame(0x4, flags: 0x1),
            H2Bytes.frame(0x6, eight),
            H2Bytes.frame(0x6, flags: 0x1, eight),
            H2Bytes.frame(0x7, stream: 0x8000_0000, eight), // the reserved bit alone is stream 0
        ]
        var t = Self.fedWhole(H2Bytes.serverSettings)
        for f in frames.dropLast() {
            f.withUnsafeBytes { XCTAssertEqual(t.advance($0, stopAtBoundary: false), $0.count) }
            XCTAssertNil(t.stopReason)
            XCTAssertTrue(t.mayInject)
        }
        frames.last!.withUnsafeBytes { _ = t.advance($0, stopAtBoundary: false) }
        XCTAssertNil(t.stopReason)
        XCTAssertTrue(t.targetSentGoaway)
    }

    // MARK: GOAWAY

    func testTargetGoawayIsRecordedOnceItsHeaderIsWhole() {
        let before = H2Bytes.serverFrames[0..<H2Bytes.goawayIndex].flatMap { $0 }
        let goaway = H2Bytes.serverFrames[H2Bytes.goawayIndex]
        var t = Self.fedWhole(before)
        XCTAssertTrue(t.mayInject)
        goaway.withUnsafeBytes { g in
            for k in 0..<8 {
                // The first byte is at a boundary, where stopping would consume nothing.
                XCTAssertEqual(t.advance(UnsafeRawBufferPointer(rebasing: g[k..<k + 1]), stopAtBoundary: k > 0), 1)
                XCTAssertFalse(t.targetSentGoaway, "after \(k + 1) header bytes")
            }
            XCTAssertEqual(t.advance(UnsafeRawBufferPointer(rebasing: g[8...]), stopAtBoundary: true), g.count - 8)
        }
        XCTAssertTrue(t.targetSentGoaway)
        XCTAssertFalse(t.mayInject, "at a boundary, but the target sent its own GOAWAY")
        // Its streams go on finishing; stickyd stays out of the way.
        let tail = H2Bytes.serverFrames[H2Bytes.goawayIndex + 1]
        tail.withUnsafeBytes { XCTAssertEqual(t.advance($0, stopAtBoundary: true), $0.count) }
        XCTAssertNil(t.stopReason)
        XCTAssertFalse(t.mayInject)
    }

    func testNeverTwice() {
        var t = Self.fedWhole(H2Bytes.serverFrames[0..<3].flatMap { $0 })
        XCTAssertTrue(t.mayInject)
        t.recordGoawayWritten()
        XCTAssertTrue(t.goawayWritten)
        XCTAssertFalse(t.mayInject)
        let rest = H2Bytes.serverFrames[3..<H2Bytes.goawayIndex].flatMap { $0 }
        rest.withUnsafeBytes { XCTAssertEqual(t.advance($0, stopAtBoundary: true), $0.count, "no boundary stops it again") }
        XCTAssertFalse(t.mayInject)
        XCTAssertNil(t.stopReason)
    }

    func testEncoderBytes() {
        var out = [UInt8](repeating: 0xee, count: 64)
        let n = out.withUnsafeMutableBytes { H2Goaway.encode(debug: H2Goaway.drainingDebug, into: $0) }
        let debug = Array("stickyd: target draining".utf8)
        XCTAssertEqual(n, H2Goaway.frameBytes(debugBytes: debug.count))
        XCTAssertEqual(n, 41)
        let expected: [UInt8] = [0x00, 0x00, 0x20, // length 8 + 24
                                 0x07, 0x00, // GOAWAY, no flags
                                 0x00, 0x00, 0x00, 0x00, // stream 0
                                 0x7f, 0xff, 0xff, 0xff, // last-stream-id 2^31-1
                                 0x00, 0x00, 0x00, 0x00] // NO_ERROR
            + debug
        XCTAssertEqual(Array(out[0..<n]), expected)
        XCTAssertEqual(out[n], 0xee, "nothing written past the frame")
        XCTAssertLessThanOrEqual(n, H2Goaway.stickydFrameBytesMax)

        let m = out.withUnsafeMutableBytes {
            H2Goaway.encode(lastStreamID: 0x0102_0304, errorCode: 0x0b, debug: UnsafeRawBufferPointer(start: nil, count: 0), into: $0)
        }
        XCTAssertEqual(Array(out[0..<m]), [0, 0, 8, 7, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0x0b])

        let age = out.withUnsafeMutableBytes { H2Goaway.encode(debug: H2Goaway.connectionAgeDebug, into: $0) }
        XCTAssertEqual(Array(out[17..<age]), Array("stickyd: max connection age".utf8))
        XCTAssertEqual(age, H2Goaway.stickydFrameBytesMax)
    }

    func testEncoderRefusesATooSmallBuffer() {
        var out = [UInt8](repeating: 0, count: 40)
        XCTAssertEqual(out.withUnsafeMutableBytes { H2Goaway.encode(debug: H2Goaway.drainingDebug, into: $0) }, 0)
    }

    /// Our frame, written at a boundary, is a well-formed GOAWAY to anyone
    /// reading the stream, and leaves the target's frames readable after it.
    func testInjectedGoawayKeepsTheStreamWellFormed() {
        var frame = [UInt8](repeating: 0, count: H2Goaway.stickydFrameBytesMax)
        let n = frame.withUnsafeMutableBytes { H2Goaway.encode(debug: H2Goaway.drainingDebug, into: $0) }
        let at = H2Bytes.serverInjectPoints[3]
        let stream = Array(H2Bytes.serverStream[0..<at]) + frame[0..<n] + H2Bytes.serverStream[at...]
        let t = Self.fedWhole(stream)
        XCTAssertNil(t.stopReason)
        XCTAssertTrue(t.targetSentGoaway)
        XCTAssertEqual(Self.injectPoints(stream, cuts: []).points, Array(H2Bytes.serverInjectPoints[0...3]))
    }

    func testTrackerIsSmall() {
        XCTAssertLessThanOrEqual(MemoryLayout<H2FrameTracker>.stride, 20)
    }

    // MARK: fuzz seeds

    /// The fuzzer's committed seeds are these tests' streams (Makefile,
    /// `make fuzz`); a change to the streams should update them.
    func testFuzzSeedsAreTheTestStreams() throws {
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("../../Fuzz/H2Tracker/corpus").standardized
        for (name, bytes) in Self.seeds {
            let file = try Data(contentsOf: corpus.appendingPathComponent(name))
            XCTAssertEqual([UInt8](file), bytes, "Fuzz/H2Tracker/corpus/\(name)")
        }
    }

    static var seeds: [(String, [UInt8])] {
        let eight = [UInt8](repeating: 0, count: 8)
        return [
            // Without the 100 kB DATA frame: libFuzzer's inputs stay small.
            ("server-stream", H2Bytes.serverFrames.enumerated().filter { $0.offset != 5 }.flatMap { $0.element }),
            ("preface-only", H2Bytes.serverSettings),
            ("empty-preface", H2Bytes.frame(0x4)),
            ("http1-response", Array("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".utf8)),
            ("settings-ack-first", H2Bytes.frame(0x4, flags: 0x1)),
            ("malformed-ping", H2Bytes.serverSettings + H2Bytes.frame(0x6, [0, 0, 0])),
            ("malformed-goaway", H2Bytes.serverSettings + H2Bytes.frame(0x7, stream: 3, eight)),
            ("large-length", H2Bytes.serverSettings + H2Bytes.header(length: (1 << 24) - 1, type: 0x0, stream: 1) + H2Bytes.decoy(64)),
        ]
    }
}

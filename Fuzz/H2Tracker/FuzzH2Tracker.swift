// libFuzzer target for the HTTP/2 frame tracker (`make fuzz`).
//
// Compiled with the StickyCore files it needs into one module (see the
// Makefile's FUZZ_TARGETS):
//   swiftc -sanitize=fuzzer,address -parse-as-library -O \
//     Fuzz/H2Tracker/FuzzH2Tracker.swift Sources/StickyCore/HTTP2/*.swift \
//     Sources/StickyCore/ByteWriter.swift Sources/StickyCore/Address.swift \
//     Sources/StickyCore/SplitMix64.swift -o .build/fuzz/h2-tracker
//
// The input is a target's byte stream. Besides "never traps", it checks:
// - fed whole, everything is consumed;
// - fed one byte at a time, the points where a GOAWAY may go (`mayInject`)
//   are the reference; fed in pieces cut at points derived from the input,
//   stopping at each boundary, the same points are found, every stop is at
//   one of them, and the final state equals the whole feed's;
// - a stopped tracker stays stopped, and a recorded target GOAWAY stays;
// - our GOAWAY written at the first point leaves the stream as readable as
//   before (the same stop reason, if any) and is read as a GOAWAY.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzH2Tracker(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)

    var whole = H2FrameTracker()
    check(whole.advance(input, stopAtBoundary: false) == size, "the whole input was not consumed")

    // Reference: the state after every byte.
    var reference: [Int] = []
    var single = H2FrameTracker()
    for at in 0..<size {
        if single.mayInject { reference.append(at) }
        let stopped = single.stopReason
        let sawGoaway = single.targetSentGoaway
        check(single.advance(UnsafeRawBufferPointer(rebasing: input[at..<at + 1]), stopAtBoundary: false) == 1, "one byte")
        check(stopped == nil || single.stopReason == stopped, "a stop reason changed")
        check(!sawGoaway || single.targetSentGoaway, "a target GOAWAY was forgotten")
        check(!single.mayInject || single.stopReason == nil, "mayInject on a stopped tracker")
    }
    if single.mayInject { reference.append(size) }
    check(single == whole, "byte by byte ends in another state than whole")

    // Two splits: piece lengths drawn from a generator seeded with the
    // input's hash, and piece lengths read from the input's own bytes (so
    // the fuzzer can steer them).
    var rng = SplitMix64(seed: fnv1a(input))
    let drawn = splitAndStop(input) { _ in
        // Mostly short pieces, which cut headers apart; some that span frames.
        let r = rng.next()
        return 1 + Int((r >> 8) % (r & 1 == 0 ? 12 : 300))
    }
    check(drawn.points == reference, "drawn split: points \(drawn.points) != \(reference)")
    check(drawn.tracker == whole, "drawn split ends in another state than whole")
    let steered = splitAndStop(input) { at in 1 + Int(input[(size - 1 - at % size)] % 40) }
    check(steered.points == reference, "steered split: points \(steered.points) != \(reference)")
    check(steered.tracker == whole, "steered split ends in another state than whole")

    // Our GOAWAY at the first point where one may go.
    if let at = reference.first {
        var frame = [UInt8](repeating: 0, count: H2Goaway.stickydFrameBytesMax)
        let n = frame.withUnsafeMutableBytes { H2Goaway.encode(debug: H2Goaway.drainingDebug, into: $0) }
        check(n > 0, "the GOAWAY did not fit its own maximum")
        let injected = Array(input[0..<at]) + frame[0..<n] + Array(input[at...])
        var after = H2FrameTracker()
        injected.withUnsafeBytes { check(after.advance($0, stopAtBoundary: false) == injected.count, "injected stream not consumed") }
        check(after.stopReason == whole.stopReason, "our GOAWAY changed the stop reason to \(String(describing: after.stopReason))")
        check(after.targetSentGoaway, "our GOAWAY was not read as one")
        check(!after.mayInject, "a second GOAWAY would be allowed")
    }
    return 0
}

/// Feeds `input` in pieces of `nextLength(offset)` bytes with
/// `stopAtBoundary`, stepping one byte past each stop; returns where it
/// stopped (and where a piece ended on a boundary) and the final tracker.
func splitAndStop(_ input: UnsafeRawBufferPointer, _ nextLength: (Int) -> Int) -> (points: [Int], tracker: H2FrameTracker) {
    var t = H2FrameTracker()
    var points: [Int] = []
    var start = 0
    while start < input.count {
        let end = min(input.count, start + max(1, nextLength(start)))
        var pos = start
        while pos < end {
            let n = t.advance(UnsafeRawBufferPointer(rebasing: input[pos..<end]), stopAtBoundary: true)
            check(n <= end - pos, "consumed more than it was given")
            if n == 0 {
                check(t.mayInject, "consumed nothing away from a boundary")
                if points.last != pos { points.append(pos) }
                pos += t.advance(UnsafeRawBufferPointer(rebasing: input[pos..<pos + 1]), stopAtBoundary: false)
            } else {
                pos += n
                check(pos == end || t.mayInject, "stopped at \(pos), not a boundary")
            }
        }
        start = end
    }
    if t.mayInject && points.last != input.count { points.append(input.count) }
    return (points, t)
}

func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
    return h
}

@inline(__always)
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant: \(message())") }
}

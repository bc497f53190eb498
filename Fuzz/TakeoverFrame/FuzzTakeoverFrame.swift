// libFuzzer target for the upgrade socket's frame decoder and the affinity
// export inside it (`make fuzz-takeover-frame`).
//
// The input is what the other process sends on the takeover socket; it is
// also tried as one affinity export blob, so both decoders see every input
// (seeds of each kind steer to each). Besides "never traps", it checks:
// - frames read back to back from the whole input, the way
//   `TakeoverChannel` reads them, are the same when the bytes arrive in
//   pieces cut at points read from the input; a frame never claims more
//   than `lengthMax`, nor bytes it was not given; one byte short of its
//   end there is no frame yet; and re-encoding it gives back its bytes;
// - an `AffinityExport.decode` that succeeds gives an export whose
//   `encoded()` decodes to the same export (every affinity frame's payload
//   is tried too).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTakeoverFrame(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let input = Array(UnsafeBufferPointer(start: data, count: size))
    guard size > 0 else { return 0 }

    let whole = readFrames(input, pieces: { _ in size })
    let steered = readFrames(input, pieces: { at in 1 + Int(input[size - 1 - at % size] % 16) })
    check(steered.frames == whole.frames, "split: \(steered.frames.count) frames, whole: \(whole.frames.count)")
    check(steered.end == whole.end, "split ends \(steered.end), whole \(whole.end)")

    var at = 0
    for (type, payload) in whole.frames {
        let bytes = TakeoverFrame.encode(type, payload)
        check(Array(input[at..<(at + bytes.count)]) == bytes, "re-encoded frame differs at \(at)")
        check(TakeoverFrame.decode(input[at..<(at + bytes.count - 1)]) == .needMore, "a frame one byte short")
        at += bytes.count
        if type == .affinity { roundTripExport(payload) }
    }
    roundTripExport(input)
    return 0
}

/// How reading stopped: waiting for more at `offset`, or refused there.
enum End: Equatable {
    case needMore(Int)
    case invalid(Int, String)
}

/// Reads frames as the channel does: appends each piece to a buffer and
/// decodes from `start` while frames are complete, dropping what was read
/// before the next piece (`fill`'s `removeFirst`).
func readFrames(_ input: [UInt8], pieces: (Int) -> Int) -> (frames: [(TakeoverFrame, [UInt8])], end: End) {
    var buffer: [UInt8] = []
    var start = 0
    var consumed = 0
    var frames: [(TakeoverFrame, [UInt8])] = []
    var at = 0
    repeat {
        let end = min(input.count, at + max(1, pieces(at)))
        if start > 0 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer += input[at..<end]
        at = end
        while true {
            switch TakeoverFrame.decode(buffer[start...]) {
            case .needMore:
                break
            case .invalid(let reason):
                check(!reason.isEmpty, "an empty reason")
                return (frames, .invalid(consumed, reason))
            case .frame(let type, let payload):
                check(payload.lowerBound == start + TakeoverFrame.headerBytes, "payload starts at \(payload.lowerBound)")
                check(payload.upperBound <= buffer.count, "a frame past the bytes given")
                check(payload.count < TakeoverFrame.lengthMax, "a frame over the limit")
                frames.append((type, Array(buffer[payload])))
                consumed += payload.upperBound - start
                start = payload.upperBound
                continue
            }
            break
        }
    } while at < input.count
    return (frames, .needMore(consumed))
}

func roundTripExport(_ bytes: [UInt8]) {
    guard let export = try? AffinityExport.decode(bytes) else { return }
    let again: AffinityExport
    do {
        again = try AffinityExport.decode(export.encoded())
    } catch {
        fatalError("invariant: a decoded export, encoded again, does not decode: \(error)")
    }
    check(again == export, "a decoded export, encoded again, decodes to another")
}

extension Array where Element == (TakeoverFrame, [UInt8]) {
    static func == (a: Self, b: Self) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
    }
}

@inline(__always)
func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant: \(message())") }
}

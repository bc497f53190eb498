/// Reads big-endian integers and text off a byte array for the binary
/// formats (the takeover's affinity export, the peer protocol). Every read
/// checks its length against what is left, so a truncated or hostile
/// input is an error of the caller's type (`fail` makes it), never a trap.
public struct ByteReader<Failure: Error> {
    public let bytes: [UInt8]
    public private(set) var pos = 0
    let fail: (String) -> Failure

    public init(_ bytes: [UInt8], fail: @escaping (String) -> Failure) {
        self.bytes = bytes
        self.fail = fail
    }

    public var remaining: Int { bytes.count - pos }

    public func need(_ n: Int) throws(Failure) {
        guard n >= 0, remaining >= n else { throw fail("truncated at byte \(pos)") }
    }

    public mutating func skip(_ n: Int) throws(Failure) {
        try need(n)
        pos += n
    }

    public mutating func u8() throws(Failure) -> UInt8 {
        try need(1)
        pos += 1
        return bytes[pos - 1]
    }

    public mutating func u16() throws(Failure) -> Int {
        try need(2)
        pos += 2
        return Int(bytes[pos - 2]) << 8 | Int(bytes[pos - 1])
    }

    public mutating func u32() throws(Failure) -> UInt32 {
        UInt32(try uint(4))
    }

    public mutating func u64() throws(Failure) -> UInt64 {
        try uint(8)
    }

    mutating func uint(_ n: Int) throws(Failure) -> UInt64 {
        try need(n)
        var v: UInt64 = 0
        for _ in 0..<n {
            v = v << 8 | UInt64(bytes[pos])
            pos += 1
        }
        return v
    }

    /// `n` bytes as text: strictly UTF-8 (an error otherwise) when
    /// `validating`, else with bad sequences replaced.
    public mutating func text(_ n: Int, validating: Bool = false) throws(Failure) -> String {
        try need(n)
        pos += n
        let slice = bytes[(pos - n)..<pos]
        guard validating else { return String(decoding: slice, as: UTF8.self) }
        guard let s = String(validating: slice, as: UTF8.self) else { throw fail("text at byte \(pos - n) is not UTF-8") }
        return s
    }
}

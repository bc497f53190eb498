/// The few DNS messages discovery needs (RFC 1035, RFC 2782 for SRV, RFC
/// 3596 for AAAA): a one-question query, and an answer's records. Written
/// here, not taken from the C resolver, so that every lookup is bounded
/// (size, time, names, pointers) and testable without a network.
public enum DNSType: UInt16, Sendable {
    case a = 1
    case cname = 5
    case aaaa = 28
    case srv = 33
}

/// RCODEs the refresh tells apart.
public enum DNSRCode: UInt8, Sendable {
    case noError = 0
    case formErr = 1
    case servFail = 2
    case nxDomain = 3
    case notImp = 4
    case refused = 5
}

public struct DNSRecord: Sendable, Equatable {
    public enum Data: Sendable, Equatable {
        case address(IPAddress)
        case srv(priority: UInt16, weight: UInt16, port: UInt16, target: String)
        case cname(String)
        case other(type: UInt16)
    }
    /// Lower case, without the final dot.
    public var name: String
    public var ttl: UInt32
    public var data: Data
}

public struct DNSResponse: Sendable, Equatable {
    public var id: UInt16
    public var rcode: UInt8
    /// TC: the answer did not fit the UDP datagram; ask again over TCP.
    public var truncated: Bool
    public var answers: [DNSRecord]
    public var additionals: [DNSRecord]
}

public struct DNSError: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

public enum DNSMessage {
    /// UDP answers are read into a buffer this big (EDNS is not offered, so
    /// a server keeps to 512 bytes and sets TC for more); TCP answers are
    /// bounded by their 16-bit length.
    public static let udpBytesMax = 512
    /// Records read from one answer at most: far more than 64 targets need.
    public static let recordsMax = 512
    /// Compression pointers followed in one name at most (loops end here).
    static let pointersMax = 32

    /// A recursive query for `name`'s `type` records.
    public static func query(id: UInt16, name: String, type: DNSType) throws -> [UInt8] {
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        let trimmed = name.hasSuffix(".") ? String(name.dropLast()) : name
        for label in trimmed.split(separator: ".", omittingEmptySubsequences: false) {
            let bytes = Array(label.utf8)
            guard (1...63).contains(bytes.count) else { throw DNSError("bad label in '\(name)'") }
            out.append(UInt8(bytes.count))
            out += bytes
        }
        out.append(0)
        out += [UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xFF), 0, 1]
        guard out.count <= 12 + 255 + 4 else { throw DNSError("name '\(name)' longer than 255 bytes") }
        return out
    }

    public static func parse(_ bytes: [UInt8]) throws -> DNSResponse {
        var r = Reader(bytes: bytes)
        let id = try r.u16()
        let flags = try r.u16()
        guard flags & 0x8000 != 0 else { throw DNSError("not a response") }
        let qd = Int(try r.u16()), an = Int(try r.u16()), ns = Int(try r.u16()), ar = Int(try r.u16())
        guard qd <= 4, an + ns + ar <= recordsMax else { throw DNSError("too many records (\(an + ns + ar))") }
        for _ in 0..<qd {
            _ = try r.name()
            r.at += 4
        }
        var answers: [DNSRecord] = []
        var additionals: [DNSRecord] = []
        for i in 0..<(an + ns + ar) {
            let record = try r.record()
            if i < an { answers.append(record) } else if i >= an + ns { additionals.append(record) }
        }
        return DNSResponse(id: id, rcode: UInt8(flags & 0x000F), truncated: flags & 0x0200 != 0,
                           answers: answers, additionals: additionals)
    }

    struct Reader {
        let bytes: [UInt8]
        var at = 0

        mutating func u8() throws -> UInt8 {
            guard at < bytes.count else { throw DNSError("message cut short") }
            at += 1
            return bytes[at - 1]
        }

        mutating func u16() throws -> UInt16 { UInt16(try u8()) << 8 | UInt16(try u8()) }

        mutating func u32() throws -> UInt32 { UInt32(try u16()) << 16 | UInt32(try u16()) }

        /// A name, following compression pointers (each must point back,
        /// and at most `pointersMax` of them), at most 255 bytes.
        mutating func name() throws -> String {
            var labels: [String] = []
            var length = 0
            var pos = at
            var jumped = false
            var jumps = 0
            while true {
                guard pos < bytes.count else { throw DNSError("name runs past the message") }
                let len = Int(bytes[pos])
                if len & 0xC0 == 0xC0 {
                    guard pos + 1 < bytes.count else { throw DNSError("pointer cut short") }
                    let target = (len & 0x3F) << 8 | Int(bytes[pos + 1])
                    jumps += 1
                    guard jumps <= DNSMessage.pointersMax, target < pos else { throw DNSError("bad compression pointer") }
                    if !jumped { at = pos + 2 }
                    jumped = true
                    pos = target
                    continue
                }
                guard len & 0xC0 == 0 else { throw DNSError("unknown label type") }
                if len == 0 {
                    if !jumped { at = pos + 1 }
                    return labels.joined(separator: ".")
                }
                guard pos + 1 + len <= bytes.count else { throw DNSError("label runs past the message") }
                length += len + 1
                guard length <= 255 else { throw DNSError("name longer than 255 bytes") }
                labels.append(String(decoding: bytes[(pos + 1)..<(pos + 1 + len)], as: UTF8.self).lowercased())
                pos += 1 + len
            }
        }

        mutating func record() throws -> DNSRecord {
            let name = try name()
            let type = try u16()
            _ = try u16()
            let ttl = try u32()
            let length = Int(try u16())
            let end = at + length
            guard end <= bytes.count else { throw DNSError("record data runs past the message") }
            var data: DNSRecord.Data
            switch type {
            case DNSType.a.rawValue where length == 4:
                data = .address(.v4(try u32()))
            case DNSType.aaaa.rawValue where length == 16:
                let hi = UInt64(try u32()) << 32 | UInt64(try u32())
                let lo = UInt64(try u32()) << 32 | UInt64(try u32())
                data = .address(.v6(hi: hi, lo: lo))
            case DNSType.srv.rawValue where length >= 7:
                let priority = try u16(), weight = try u16(), port = try u16()
                data = .srv(priority: priority, weight: weight, port: port, target: try self.name())
            case DNSType.cname.rawValue:
                data = .cname(try self.name())
            default:
                data = .other(type: type)
            }
            guard at <= end else { throw DNSError("record data longer than its length") }
            at = end
            return DNSRecord(name: name, ttl: ttl, data: data)
        }
    }
}

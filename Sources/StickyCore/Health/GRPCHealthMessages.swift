/// The two messages of grpc.health.v1 and gRPC's message framing, by hand:
/// they are tiny, and grpc-swift is not a dependency.
///
///     message HealthCheckRequest  { string service = 1; }
///     message HealthCheckResponse { ServingStatus status = 1; }
///     enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
///
/// A gRPC message on the wire (gRPC over HTTP/2, "Length-Prefixed-Message"):
/// one byte compressed-flag, a 4-byte big-endian length, the message.
public enum GRPCHealth {
    public static let path = "/grpc.health.v1.Health/Check"
    /// Responses are a few bytes; anything larger is not a health answer.
    public static let messageBytesMax = 1024

    public enum ServingStatus: Int, Sendable, Equatable {
        case unknown = 0
        case serving = 1
        case notServing = 2
        case serviceUnknown = 3

        /// The proto's own name, as logs and grpcurl print it.
        public var name: String {
            switch self {
            case .unknown: return "UNKNOWN"
            case .serving: return "SERVING"
            case .notServing: return "NOT_SERVING"
            case .serviceUnknown: return "SERVICE_UNKNOWN"
            }
        }
    }

    public enum DecodeError: Error, Equatable, Sendable {
        case truncated
        case compressed
        case tooLarge(Int)
        case malformed(String)
    }

    /// HealthCheckRequest: field 1 (wire type 2) unless the service is ""
    /// (proto3 leaves default values out).
    public static func encodeRequest(service: String) -> [UInt8] {
        let bytes = Array(service.utf8)
        guard !bytes.isEmpty else { return [] }
        return [0x0A] + varint(UInt64(bytes.count)) + bytes
    }

    /// The 5-byte prefix and the message.
    public static func frame(_ message: [UInt8]) -> [UInt8] {
        let n = UInt32(message.count)
        return [0, UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)] + message
    }

    /// One whole framed message at the front of `bytes`: the message and
    /// how many bytes it took; nil if more bytes are needed.
    public static func unframe(_ bytes: [UInt8]) throws(DecodeError) -> (message: [UInt8], consumed: Int)? {
        guard bytes.count >= 5 else { return nil }
        guard bytes[0] == 0 else { throw .compressed }
        let n = Int(bytes[1]) << 24 | Int(bytes[2]) << 16 | Int(bytes[3]) << 8 | Int(bytes[4])
        guard n <= messageBytesMax else { throw .tooLarge(n) }
        guard bytes.count >= 5 + n else { return nil }
        return (Array(bytes[5..<(5 + n)]), 5 + n)
    }

    /// HealthCheckResponse's status; unknown fields are skipped, as
    /// protobuf requires; an absent status is UNKNOWN (0). A status value
    /// this code does not know reads as `.unknown`.
    public static func decodeResponse(_ m: [UInt8]) throws(DecodeError) -> ServingStatus {
        var i = 0
        var status: UInt64 = 0
        while i < m.count {
            let key = try readVarint(m, &i)
            let field = key >> 3
            switch key & 7 {
            case 0:
                let v = try readVarint(m, &i)
                if field == 1 { status = v }
            case 1:
                guard i + 8 <= m.count else { throw .truncated }
                i += 8
            case 2:
                let n = try readVarint(m, &i)
                guard n <= UInt64(m.count - i) else { throw .truncated }
                i += Int(n)
            case 5:
                guard i + 4 <= m.count else { throw .truncated }
                i += 4
            default:
                throw .malformed("wire type \(key & 7)")
            }
            if field == 0 { throw .malformed("field number 0") }
        }
        return ServingStatus(rawValue: Int(truncatingIfNeeded: status)) ?? .unknown
    }

    /// For tests and symmetry: a HealthCheckResponse.
    public static func encodeResponse(_ status: ServingStatus) -> [UInt8] {
        status == .unknown ? [] : [0x08] + varint(UInt64(status.rawValue))
    }

    static func varint(_ value: UInt64) -> [UInt8] {
        var v = value
        var out: [UInt8] = []
        while v >= 0x80 {
            out.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
        return out
    }

    static func readVarint(_ m: [UInt8], _ i: inout Int) throws(DecodeError) -> UInt64 {
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard i < m.count else { throw .truncated }
            let b = m[i]
            i += 1
            guard shift < 64 else { throw .malformed("varint longer than 10 bytes") }
            v |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return v }
            shift += 7
        }
    }
}

// Pure formatting for log lines: the daemon's own lines (logfmt or JSON)
// and the access log's one line per closed connection. No clocks and no
// I/O here: the caller passes the time, so every byte is unit-tested.

/// The daemon's own log lines.
public enum LogLine {
    /// `ts=... level=info msg="ready" key=value ...`. `ts` is left out
    /// when nil (journald stamps each line itself).
    public static func logfmt(unixMs: Int64?, level: String, message: String, metadata: [(String, String)]) -> String {
        var out = ""
        if let unixMs { out += "ts=\(timestamp(unixMs: unixMs)) " }
        // The message is always quoted: a line reads the same whether the
        // message is one word or many, and `msg="ready"` is easy to find.
        out += "level=\(level) msg=\(logfmtValue(message, quoted: true))"
        for (key, value) in metadata { out += " \(logfmtKey(key))=\(logfmtValue(value))" }
        return out
    }

    /// One JSON object: `{"ts":"...","level":"info","msg":"ready",...}`,
    /// metadata after the fixed keys, in the order given.
    public static func json(unixMs: Int64?, level: String, message: String, metadata: [(String, String)]) -> String {
        var out = "{"
        if let unixMs { out += "\"ts\":\"\(timestamp(unixMs: unixMs))\"," }
        out += "\"level\":\(jsonString(level)),\"msg\":\(jsonString(message))"
        for (key, value) in metadata where key != "ts" && key != "level" && key != "msg" {
            out += ",\(jsonString(key)):\(jsonString(value))"
        }
        return out + "}"
    }

    /// A logfmt value: bare when it is a plain word, else double-quoted with
    /// `"` and `\` escaped and control characters written as escapes, so a
    /// value can never end the line or forge a key.
    public static func logfmtValue(_ value: String, quoted: Bool = false) -> String {
        let bare = !quoted && !value.isEmpty && value.unicodeScalars.allSatisfy { c in
            c.value > 0x20 && c.value != 0x7F && c != "\"" && c != "=" && c != "\\"
        }
        return bare ? value : quote(value, escapingDelete: true)
    }

    /// Keys are the code's own words; anything outside [A-Za-z0-9_.-] is
    /// replaced so a key never needs quoting.
    static func logfmtKey(_ key: String) -> String {
        let plain = key.unicodeScalars.map { c -> Character in
            c.isASCII && (c.properties.isAlphabetic || ("0"..."9").contains(c) || c == "_" || c == "." || c == "-")
                ? Character(c) : "_"
        }
        return plain.isEmpty ? "_" : String(plain)
    }

    /// A JSON string literal.
    public static func jsonString(_ value: String) -> String {
        quote(value, escapingDelete: false)
    }

    /// Double-quoted with `"` and `\` escaped and control characters as
    /// escapes: the common ground of logfmt and JSON strings. logfmt also
    /// escapes DEL, which a terminal would act on.
    static func quote(_ value: String, escapingDelete: Bool) -> String {
        var out = "\""
        for c in value.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if c.value < 0x20 || (escapingDelete && c.value == 0x7F) {
                    out += "\\u" + hex4(c.value)
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        return out + "\""
    }

    static func hex4(_ v: UInt32) -> String {
        let digits = Array("0123456789abcdef")
        return String([digits[Int(v >> 12 & 0xF)], digits[Int(v >> 8 & 0xF)], digits[Int(v >> 4 & 0xF)], digits[Int(v & 0xF)]])
    }

    /// RFC 3339 in UTC with milliseconds: `2024-05-01T12:00:00.123Z`.
    public static func timestamp(unixMs: Int64) -> String {
        var bytes = [UInt8](repeating: 0, count: ByteWriter.timestampBytes)
        let n = bytes.withUnsafeMutableBufferPointer { buf -> Int in
            var w = ByteWriter(buf.baseAddress!, capacity: buf.count)
            w.timestamp(unixMs: unixMs)
            return w.count
        }
        return String(decoding: bytes[0..<n], as: UTF8.self)
    }
}

/// One closed connection, as the worker records it: fixed size and plain
/// data, so recording one is a store into a preallocated array.
public struct AccessRecord: Sendable {
    public var closeUnixMs: Int64 = 0
    public var durationMs: Int64 = 0
    public var client = SocketAddress(ip: .v4(0), port: 0)
    /// Valid when `hasTarget`: the target last tried (or used).
    public var target = SocketAddress(ip: .v4(0), port: 0)
    public var hasTarget = false
    public var pool: Int32 = 0
    public var bytesUp: UInt64 = 0
    public var bytesDown: UInt64 = 0
    /// The close reason's snake_case name (a `CloseReason.metricName`).
    public var reason: StaticString = "none"
    /// `log.access_placement`: write `placement=` too, from these two.
    public var withPlacement = false
    public var placement: PlacementKind = .none
    public var moveReason: MoveReason = .targetDown

    public init() {}

    /// The longest line `format` writes: two v6 socket addresses, a 64-byte
    /// pool name and four 20-digit numbers stay well below it.
    public static let lineBytesMax = 512

    /// `ts=... client=ip:port target=ip:port|- pool=NAME bytes_up=N
    /// bytes_down=N duration_ms=N reason=WORD\n`: logfmt whose values never
    /// need quoting (pool names are plain words, see `checkName`). With
    /// `withPlacement`, ` placement=hit|miss|spill|repin(REASON)|-` comes
    /// before the newline: last, so readers of the older line still parse.
    public func format(into w: inout ByteWriter, poolName: [UInt8]) {
        w.ascii("ts=")
        w.timestamp(unixMs: closeUnixMs)
        w.ascii(" client=")
        w.socketAddress(client)
        w.ascii(" target=")
        if hasTarget { w.socketAddress(target) } else { w.byte(UInt8(ascii: "-")) }
        w.ascii(" pool=")
        w.bytes(poolName)
        w.ascii(" bytes_up=")
        w.decimal(bytesUp)
        w.ascii(" bytes_down=")
        w.decimal(bytesDown)
        w.ascii(" duration_ms=")
        w.decimal(max(0, durationMs))
        w.ascii(" reason=")
        w.ascii(reason)
        if withPlacement {
            w.ascii(" placement=")
            w.ascii(placement.staticName)
            if placement == .repin {
                w.byte(UInt8(ascii: "("))
                w.ascii(moveReason.staticName)
                w.byte(UInt8(ascii: ")"))
            }
        }
        w.byte(UInt8(ascii: "\n"))
    }
}

extension PlacementKind {
    /// The access log's word (a StaticString: writing it allocates nothing).
    public var staticName: StaticString {
        switch self {
        case .none: return "-"
        case .hit: return "hit"
        case .miss: return "miss"
        case .spill: return "spill"
        case .repin: return "repin"
        }
    }
}


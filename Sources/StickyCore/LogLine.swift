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
        if bare { return value }
        var out = "\""
        for c in value.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if c.value < 0x20 || c.value == 0x7F { out += "\\u" + hex4(c.value) } else { out.unicodeScalars.append(c) }
            }
        }
        return out + "\""
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

    public static func jsonString(_ value: String) -> String {
        var out = "\""
        for c in value.unicodeScalars {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if c.value < 0x20 { out += "\\u" + hex4(c.value) } else { out.unicodeScalars.append(c) }
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

/// Appends ASCII into memory the caller owns: the access log formats into a
/// buffer allocated once per worker, so formatting never allocates.
/// Writes past `capacity` are dropped and flagged in `overflowed`.
public struct ByteWriter {
    public let base: UnsafeMutablePointer<UInt8>
    public let capacity: Int
    public private(set) var count = 0
    public private(set) var overflowed = false

    /// `2024-05-01T12:00:00.123Z`
    public static let timestampBytes = 24

    public init(_ base: UnsafeMutablePointer<UInt8>, capacity: Int) {
        self.base = base
        self.capacity = capacity
    }

    @inline(__always)
    public mutating func byte(_ b: UInt8) {
        guard count < capacity else {
            overflowed = true
            return
        }
        base[count] = b
        count += 1
    }

    public mutating func ascii(_ s: StaticString) {
        s.withUTF8Buffer { for b in $0 { byte(b) } }
    }

    public mutating func bytes(_ b: [UInt8]) {
        for x in b { byte(x) }
    }

    public mutating func decimal(_ value: UInt64) {
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                     UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var n = 0
        var v = value
        withUnsafeMutableBytes(of: &digits) { d in
            repeat {
                d[n] = UInt8(ascii: "0") + UInt8(v % 10)
                v /= 10
                n += 1
            } while v > 0
            while n > 0 {
                n -= 1
                byte(d[n])
            }
        }
    }

    public mutating func decimal(_ value: Int64) {
        if value < 0 {
            byte(UInt8(ascii: "-"))
            decimal(value.magnitude)
        } else {
            decimal(UInt64(value))
        }
    }

    /// Zero-padded to `width` digits.
    mutating func padded(_ value: Int64, width: Int) {
        var limit: Int64 = 10
        for _ in 1..<width {
            if value < limit { byte(UInt8(ascii: "0")) }
            limit *= 10
        }
        decimal(value)
    }

    mutating func hex(_ value: UInt16) {
        let digits: StaticString = "0123456789abcdef"
        var started = false
        for shift in stride(from: 12, through: 0, by: -4) {
            let d = Int(value >> UInt16(shift) & 0xF)
            if d != 0 || started || shift == 0 {
                started = true
                byte(digits.utf8Start[d])
            }
        }
    }

    /// RFC 3339 UTC with milliseconds, from Unix milliseconds (days to a
    /// civil date by Howard Hinnant's algorithm: no gmtime, no locale).
    public mutating func timestamp(unixMs: Int64) {
        let ms = ((unixMs % 1000) + 1000) % 1000
        let secs = (unixMs - ms) / 1000
        let sod = ((secs % 86_400) + 86_400) % 86_400
        let days = (secs - sod) / 86_400
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        padded(year, width: 4)
        byte(UInt8(ascii: "-"))
        padded(month, width: 2)
        byte(UInt8(ascii: "-"))
        padded(day, width: 2)
        byte(UInt8(ascii: "T"))
        padded(sod / 3600, width: 2)
        byte(UInt8(ascii: ":"))
        padded(sod / 60 % 60, width: 2)
        byte(UInt8(ascii: ":"))
        padded(sod % 60, width: 2)
        byte(UInt8(ascii: "."))
        padded(ms, width: 3)
        byte(UInt8(ascii: "Z"))
    }

    /// Dotted quad, or RFC 5952 text for v6 (lowercase, the longest run of
    /// two or more zero groups as `::`).
    public mutating func ip(_ address: IPAddress) {
        switch address {
        case .v4(let a):
            decimal(UInt64(a >> 24))
            byte(UInt8(ascii: "."))
            decimal(UInt64(a >> 16 & 0xFF))
            byte(UInt8(ascii: "."))
            decimal(UInt64(a >> 8 & 0xFF))
            byte(UInt8(ascii: "."))
            decimal(UInt64(a & 0xFF))
        case .v6(let hi, let lo):
            func group(_ g: Int) -> UInt16 {
                let half = g < 4 ? hi : lo
                return UInt16(truncatingIfNeeded: half >> UInt64((3 - g % 4) * 16))
            }
            var bestStart = -1, bestLength = 1
            var g = 0
            while g < 8 {
                if group(g) == 0 {
                    var e = g
                    while e < 8 && group(e) == 0 { e += 1 }
                    if e - g > bestLength {
                        bestStart = g
                        bestLength = e - g
                    }
                    g = e
                } else {
                    g += 1
                }
            }
            g = 0
            while g < 8 {
                if g == bestStart {
                    byte(UInt8(ascii: ":"))
                    if g == 0 { byte(UInt8(ascii: ":")) }
                    g += bestLength
                    continue
                }
                hex(group(g))
                if g < 7 { byte(UInt8(ascii: ":")) }
                g += 1
            }
        }
    }

    /// `1.2.3.4:80` or `[::1]:80`.
    public mutating func socketAddress(_ address: SocketAddress) {
        if address.ip.isV4 {
            ip(address.ip)
        } else {
            byte(UInt8(ascii: "["))
            ip(address.ip)
            byte(UInt8(ascii: "]"))
        }
        byte(UInt8(ascii: ":"))
        decimal(UInt64(address.port))
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

    public init() {}

    /// The longest line `format` writes: two v6 socket addresses, a 64-byte
    /// pool name and four 20-digit numbers stay well below it.
    public static let lineBytesMax = 512

    /// `ts=... client=ip:port target=ip:port|- pool=NAME bytes_up=N
    /// bytes_down=N duration_ms=N reason=WORD\n`: logfmt whose values never
    /// need quoting (pool names are plain words, see `checkName`).
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
        w.byte(UInt8(ascii: "\n"))
    }
}

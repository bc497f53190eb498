/// Appends bytes into memory the caller owns: the access log formats into a
/// buffer allocated once per worker, and the PROXY encoder into a slot's
/// fixed area, so neither allocates. Writes past `capacity` are dropped and
/// flagged in `overflowed` instead of trapping.
public struct ByteWriter {
    let out: UnsafeMutableBufferPointer<UInt8>
    public var capacity: Int { out.count }
    public private(set) var count = 0
    public private(set) var overflowed = false

    /// `2024-05-01T12:00:00.123Z`
    public static let timestampBytes = 24

    public init(_ base: UnsafeMutablePointer<UInt8>, capacity: Int) {
        out = UnsafeMutableBufferPointer(start: base, count: capacity)
    }

    /// Over raw memory (an empty buffer takes nothing).
    public init(_ raw: UnsafeMutableRawBufferPointer) {
        out = raw.bindMemory(to: UInt8.self)
    }

    // Big-endian integers, as the PROXY v2 header lays them out.
    public mutating func u16(_ v: UInt16) {
        byte(UInt8(v >> 8))
        byte(UInt8(truncatingIfNeeded: v))
    }

    public mutating func u32(_ v: UInt32) {
        u16(UInt16(v >> 16))
        u16(UInt16(truncatingIfNeeded: v))
    }

    public mutating func u64(_ v: UInt64) {
        u32(UInt32(v >> 32))
        u32(UInt32(truncatingIfNeeded: v))
    }

    @inline(__always)
    public mutating func byte(_ b: UInt8) {
        guard count < capacity else {
            overflowed = true
            return
        }
        out[count] = b
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


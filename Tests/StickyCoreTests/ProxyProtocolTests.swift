import XCTest
@testable import StickyCore

final class ProxyProtocolTests: XCTestCase {
    static let v2Sig: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    static func v2(command: UInt8 = 0x21, family: UInt8 = 0x11, body: [UInt8]) -> [UInt8] {
        v2Sig + [command, family, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
    }

    static let v4Body: [UInt8] = [192, 0, 2, 1, 198, 51, 100, 7, 0x30, 0x39, 0x00, 0x50]
    static var v6Body: [UInt8] {
        var b = [UInt8](repeating: 0, count: 36)
        b[0] = 0x20; b[1] = 0x01; b[2] = 0x0d; b[3] = 0xb8; b[15] = 0x01  // 2001:db8::1
        b[16] = 0x20; b[17] = 0x01; b[18] = 0x0d; b[19] = 0xb8; b[31] = 0x02 // 2001:db8::2
        b[32] = 0xD4; b[33] = 0x31; b[34] = 0x01; b[35] = 0xBB  // 54321, 443
        return b
    }

    func addr(_ s: String) -> SocketAddress { SocketAddress(s)! }

    // MARK: - Good headers

    func testGoodHeaders() {
        let payload: [UInt8] = Array("GET / HTTP/1.0\r\n".utf8)
        let cases: [(String, [UInt8], ProxyHeader)] = [
            ("v1 tcp4", Array("PROXY TCP4 192.0.2.1 198.51.100.7 12345 80\r\n".utf8),
             ProxyHeader(version: .v1, source: addr("192.0.2.1:12345"), destination: addr("198.51.100.7:80"), consumed: 44)),
            ("v1 tcp6", Array("PROXY TCP6 2001:db8::1 2001:db8::2 54321 443\r\n".utf8),
             ProxyHeader(version: .v1, source: addr("[2001:db8::1]:54321"), destination: addr("[2001:db8::2]:443"), consumed: 46)),
            ("v1 tcp6 v4-mapped comes out as v4", Array("PROXY TCP6 ::ffff:10.1.2.3 ::1 1 2\r\n".utf8),
             ProxyHeader(version: .v1, source: addr("10.1.2.3:1"), destination: addr("[::1]:2"), consumed: 36)),
            ("v1 port 0 and 65535", Array("PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n".utf8),
             ProxyHeader(version: .v1, source: SocketAddress(ip: .v4(0x0102_0304), port: 0), destination: addr("5.6.7.8:65535"), consumed: 36)),
            ("v1 unknown", Array("PROXY UNKNOWN\r\n".utf8),
             ProxyHeader(version: .v1, source: nil, destination: nil, consumed: 15)),
            ("v1 unknown with ignored fields", Array("PROXY UNKNOWN whatever  goes here\r\n".utf8),
             ProxyHeader(version: .v1, source: nil, destination: nil, consumed: 35)),
            ("v2 inet", Self.v2(body: Self.v4Body),
             ProxyHeader(version: .v2, source: addr("192.0.2.1:12345"), destination: addr("198.51.100.7:80"), consumed: 28)),
            ("v2 inet6", Self.v2(family: 0x21, body: Self.v6Body),
             ProxyHeader(version: .v2, source: addr("[2001:db8::1]:54321"), destination: addr("[2001:db8::2]:443"), consumed: 52)),
            ("v2 inet with TLVs skipped", Self.v2(body: Self.v4Body + [0x01, 0x00, 0x02, 0x68, 0x32, 0x04, 0x00, 0x00]),
             ProxyHeader(version: .v2, source: addr("192.0.2.1:12345"), destination: addr("198.51.100.7:80"), consumed: 36)),
            ("v2 local, any family, body ignored", Self.v2(command: 0x20, family: 0x11, body: Self.v4Body),
             ProxyHeader(version: .v2, source: nil, destination: nil, consumed: 28)),
            ("v2 local, empty", Self.v2(command: 0x20, family: 0x00, body: []),
             ProxyHeader(version: .v2, source: nil, destination: nil, consumed: 16)),
            ("v2 proxy unspec", Self.v2(command: 0x21, family: 0x00, body: [1, 2, 3]),
             ProxyHeader(version: .v2, source: nil, destination: nil, consumed: 19)),
            ("v2 at the size limit", Self.v2(body: Self.v4Body + [UInt8](repeating: 0, count: 520 - 12)),
             ProxyHeader(version: .v2, source: addr("192.0.2.1:12345"), destination: addr("198.51.100.7:80"), consumed: 536)),
        ]
        for (name, bytes, want) in cases {
            XCTAssertEqual(ProxyHeader.parse(bytes), .complete(want), name)
            // What follows the header is the client's and is left alone.
            XCTAssertEqual(ProxyHeader.parse(bytes + payload), .complete(want), "\(name) + payload")
        }
    }

    // MARK: - Bad headers, one per reason and then some

    func testBadHeaders() {
        var longV1 = Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2".utf8)
        longV1 += [UInt8](repeating: 0x20, count: 110 - longV1.count)
        let cases: [(String, [UInt8], ProxyError)] = [
            ("http request", Array("GET / HTTP/1.1\r\n".utf8), .badSignature),
            ("tls hello", [0x16, 0x03, 0x01, 0x00], .badSignature),
            ("lowercase proxy", Array("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8), .badSignature),
            ("PROXY without space", Array("PROXYTCP4\r\n".utf8), .badSignature),
            ("v2 signature broken late", Array(Self.v2Sig[0..<11]) + [0x0B, 0x21, 0x11, 0, 0], .badSignature),
            ("v1 no crlf in 107 bytes", longV1, .oversized),
            ("v1 crlf at 108", Array(("PROXY UNKNOWN " + String(repeating: "x", count: 92) + "\r\n").utf8), .oversized),
            ("v2 length over max", Self.v2Sig + [0x21, 0x11, 0x02, 0x09], .oversized),
            ("v2 length 0xffff", Self.v2Sig + [0x21, 0x11, 0xFF, 0xFF], .oversized),
            ("v2 version 1", Self.v2(command: 0x11, body: Self.v4Body), .badVersion),
            ("v2 version 3", Self.v2(command: 0x31, body: Self.v4Body), .badVersion),
            ("v2 command 2", Self.v2(command: 0x22, body: Self.v4Body), .badCommand),
            ("v2 command 0xf", Self.v2(command: 0x2F, body: Self.v4Body), .badCommand),
            ("v2 inet dgram", Self.v2(family: 0x12, body: Self.v4Body), .badFamily),
            ("v2 unix stream", Self.v2(family: 0x31, body: [UInt8](repeating: 0, count: 216)), .badFamily),
            ("v2 family 4", Self.v2(family: 0x41, body: Self.v4Body), .badFamily),
            ("v2 inet short", Self.v2(family: 0x11, body: Array(Self.v4Body[0..<11])), .badAddress),
            ("v2 inet6 short", Self.v2(family: 0x21, body: Self.v4Body), .badAddress),
            ("v1 udp4", Array("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8), .badFamily),
            ("v1 tcp4 with v6 address", Array("PROXY TCP4 ::1 ::1 1 2\r\n".utf8), .badAddress),
            ("v1 tcp6 with v4 address", Array("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n".utf8), .badAddress),
            ("v1 octet over 255", Array("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n".utf8), .badAddress),
            ("v1 octet leading zero", Array("PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n".utf8), .badAddress),
            ("v1 three octets", Array("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n".utf8), .badAddress),
            ("v1 host name", Array("PROXY TCP4 localhost 5.6.7.8 1 2\r\n".utf8), .badAddress),
            ("v1 two gaps", Array("PROXY TCP6 1::2::3 ::1 1 2\r\n".utf8), .badAddress),
            ("v1 zone id", Array("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n".utf8), .badAddress),
            ("v1 port over 65535", Array("PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".utf8), .badPort),
            ("v1 port leading zero", Array("PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n".utf8), .badPort),
            ("v1 port negative", Array("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n".utf8), .badPort),
            ("v1 port six digits", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 000080\r\n".utf8), .badPort),
            ("v1 port hex", Array("PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n".utf8), .badPort),
            ("v1 double space", Array("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n".utf8), .badFormat),
            ("v1 double space after PROXY", Array("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n".utf8), .badFormat),
            ("v1 trailing space", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n".utf8), .badFormat),
            ("v1 extra field", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".utf8), .badFormat),
            ("v1 missing port", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n".utf8), .badFormat),
            ("v1 bare LF", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".utf8), .badFormat),
            ("v1 CR without LF", Array("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX".utf8), .badFormat),
            ("v1 empty line", Array("PROXY \r\n".utf8), .badFormat),
            ("v1 tab separated", Array("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n".utf8), .badFamily),
        ]
        for (name, bytes, want) in cases {
            XCTAssertEqual(ProxyHeader.parse(bytes), .invalid(want), name)
        }
        // Every reason has a case above.
        let covered = Set(cases.map(\.2))
        for reason in ProxyError.allCases {
            XCTAssertTrue(covered.contains(reason), "no case for \(reason)")
        }
    }

    /// Every strict prefix of a good header asks for more; none is refused
    /// early and none is taken as complete.
    func testEveryPrefixNeedsMore() {
        let headers: [[UInt8]] = [
            Array("PROXY TCP4 192.0.2.1 198.51.100.7 12345 80\r\n".utf8),
            Array("PROXY TCP6 2001:db8::1 2001:db8::2 54321 443\r\n".utf8),
            Array("PROXY UNKNOWN\r\n".utf8),
            Self.v2(body: Self.v4Body),
            Self.v2(family: 0x21, body: Self.v6Body + [0x04, 0x00, 0x01, 0x00]),
            Self.v2(command: 0x20, family: 0x00, body: []),
        ]
        for header in headers {
            for cut in 0..<header.count {
                XCTAssertEqual(ProxyHeader.parse(Array(header[0..<cut])), .needMore, "cut at \(cut) of \(header.count)")
            }
            guard case .complete(let h) = ProxyHeader.parse(header) else {
                XCTFail("whole header not complete")
                continue
            }
            XCTAssertEqual(h.consumed, header.count)
        }
    }

    /// A bad first byte is refused at once, without waiting for the rest.
    func testGarbageIsRefusedEarly() {
        for first in UInt8.min...UInt8.max where first != UInt8(ascii: "P") && first != 0x0D {
            XCTAssertEqual(ProxyHeader.parse([first]), .invalid(.badSignature), "byte \(first)")
        }
        XCTAssertEqual(ProxyHeader.parse(Array("PRX".utf8)), .invalid(.badSignature))
        XCTAssertEqual(ProxyHeader.parse([0x0D, 0x0A, 0x0D, 0x0B]), .invalid(.badSignature))
        XCTAssertEqual(ProxyHeader.parse([]), .needMore)
    }

    /// Random bytes never trap, and a complete answer never claims more
    /// than it was given (the fuzz target checks the same at scale).
    func testRandomInputNeverTraps() {
        var rng = SplitMix64(seed: 42)
        for _ in 0..<20_000 {
            let count = Int(rng.next() % 600)
            var bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            // Half the time, a valid-looking start to get past the signature.
            if rng.next() & 1 == 0 && count > 16 {
                let start: [UInt8] = rng.next() & 1 == 0 ? Self.v2Sig + [0x21] : Array("PROXY TCP".utf8)
                for (k, b) in start.enumerated() { bytes[k] = b }
            }
            if case .complete(let h) = ProxyHeader.parse(bytes) {
                XCTAssertLessThanOrEqual(h.consumed, bytes.count)
            }
        }
    }

    // MARK: - Encoder

    func encode(_ version: ProxyVersion, _ source: SocketAddress?, _ destination: SocketAddress?, capacity: Int = ProxyHeader.encodedBytesMax) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: capacity)
        let n = out.withUnsafeMutableBytes { ProxyHeader.encode(version, source: source, destination: destination, into: $0) }
        return Array(out[0..<n])
    }

    func testEncodeExactBytes() {
        XCTAssertEqual(String(decoding: encode(.v1, addr("192.0.2.1:12345"), addr("198.51.100.7:80")), as: UTF8.self),
                       "PROXY TCP4 192.0.2.1 198.51.100.7 12345 80\r\n")
        XCTAssertEqual(String(decoding: encode(.v1, addr("[2001:db8::1]:1"), addr("[2001:db8:0:0:1:0:0:1]:2")), as: UTF8.self),
                       "PROXY TCP6 2001:db8::1 2001:db8::1:0:0:1 1 2\r\n")
        XCTAssertEqual(String(decoding: encode(.v1, addr("10.0.0.1:5"), addr("[::1]:6")), as: UTF8.self),
                       "PROXY TCP6 ::ffff:a00:1 ::1 5 6\r\n")
        XCTAssertEqual(String(decoding: encode(.v1, nil, nil), as: UTF8.self), "PROXY UNKNOWN\r\n")
        XCTAssertEqual(encode(.v2, addr("192.0.2.1:12345"), addr("198.51.100.7:80")), Self.v2(body: Self.v4Body))
        XCTAssertEqual(encode(.v2, addr("[2001:db8::1]:54321"), addr("[2001:db8::2]:443")), Self.v2(family: 0x21, body: Self.v6Body))
        XCTAssertEqual(encode(.v2, nil, addr("1.2.3.4:5")), Self.v2(command: 0x20, family: 0x00, body: []))
    }

    func testEncodeRefusesSmallBuffer() {
        XCTAssertEqual(encode(.v1, addr("192.0.2.1:12345"), addr("198.51.100.7:80"), capacity: 43), [])
        XCTAssertEqual(encode(.v2, addr("192.0.2.1:12345"), addr("198.51.100.7:80"), capacity: 27), [])
        XCTAssertEqual(encode(.v2, addr("192.0.2.1:12345"), addr("198.51.100.7:80"), capacity: 28).count, 28)
    }

    func testEncodeRoundTrips() {
        let longest = addr("[1111:2222:3333:4444:5555:6666:7777:8888]:65535")
        let pairs: [(SocketAddress?, SocketAddress?)] = [
            (addr("192.0.2.1:12345"), addr("198.51.100.7:80")),
            (addr("0.0.0.0:1"), addr("255.255.255.255:65535")),
            (addr("[::]:1"), addr("[::1]:2")),
            (addr("[2001:db8::1]:54321"), addr("[2001:db8:0:1::]:443")),
            (addr("[1:0:0:1:0:0:0:1]:7"), addr("[fe80::]:8")),
            (longest, longest),
            (addr("10.0.0.1:5"), addr("[::1]:6")),
            (addr("[::1]:6"), addr("10.0.0.1:5")),
            (SocketAddress(ip: .v4(1), port: 0), SocketAddress(ip: .v4(2), port: 0)),
            (nil, nil),
        ]
        for version in ProxyVersion.allCases {
            for (s, d) in pairs {
                let bytes = encode(version, s, d)
                XCTAssertLessThanOrEqual(bytes.count, ProxyHeader.encodedBytesMax)
                guard case .complete(let h) = ProxyHeader.parse(bytes) else {
                    XCTFail("\(version) \(String(describing: s)) -> \(String(describing: d)) does not parse: \(String(decoding: bytes, as: UTF8.self))")
                    continue
                }
                XCTAssertEqual(h.version, version)
                XCTAssertEqual(h.source, s, "\(version) source")
                XCTAssertEqual(h.destination, d, "\(version) destination")
                XCTAssertEqual(h.consumed, bytes.count)
            }
        }
    }

    /// The byte parser agrees with `IPAddress(parsing:)` on v6 text, and
    /// the encoder's text with `description`.
    func testTextAddressAgreesWithIPAddress() {
        let texts = ["::", "::1", "1::", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:1.2.3.4",
                     "::ffff:1.2.3.4", "1::1.2.3.4", "ABCD:ef01::", "1:2:3:4:5:6:7:8:9", "1::2::3", ":1::", "1:::2",
                     "12345::", "1:2:3:4:5:6:7", "::1.2.3", "1.2.3.4::", "g::", ":", "::0:0", "1:2:3:4:5:6:7:8::",
                     "::1:2:3:4:5:6:7:8", "0:0:0:0:0:0:0:0", "::+2:c", "+1::", "::-0"]
        // A sign is not a hex digit (found by the fuzz target).
        XCTAssertNil(IPAddress("::+2:c"))
        for text in texts {
            let want = IPAddress(parsing: text[...])
            let got = Array(text.utf8).withUnsafeBytes { TextAddress.parseV6($0, 0, $0.count) }
            switch want {
            case .v6(let hi, let lo)?:
                XCTAssertEqual(got?.hi, hi, text)
                XCTAssertEqual(got?.lo, lo, text)
            default:
                XCTAssertNil(got, text)
            }
            if case .v6? = want, let ip = want {
                var out = [UInt8](repeating: 0, count: 64)
                let n = out.withUnsafeMutableBytes { raw -> Int in
                    var w = ByteWriter(raw)
                    w.ip(ip)
                    return w.count
                }
                XCTAssertEqual(String(decoding: out[0..<n], as: UTF8.self), ip.description, text)
            }
        }
    }

    // MARK: - CIDR

    func testCIDRParsing() {
        XCTAssertEqual(CIDR("10.0.0.0/8")?.description, "10.0.0.0/8")
        XCTAssertEqual(CIDR("127.0.0.1")?.description, "127.0.0.1/32")
        XCTAssertEqual(CIDR("::1")?.description, "::1/128")
        XCTAssertEqual(CIDR("2001:db8::/32")?.description, "2001:db8::/32")
        XCTAssertEqual(CIDR("0.0.0.0/0")?.description, "0.0.0.0/0")
        // v4-mapped networks become the IPv4 network they name.
        XCTAssertEqual(CIDR("::ffff:10.0.0.0/104")?.description, "10.0.0.0/8")
        XCTAssertEqual(CIDR("::ffff:0:0/96")?.description, "0.0.0.0/0")
        let bad = ["10.0.0.1/8", "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/ 8", "host/8", "", "/8",
                   "10.0.0.0/8/8", "10.0.0.0/0008"]
        for text in bad { XCTAssertNil(CIDR(text), text) }
        guard case .failure(let e) = CIDR.parse("10.0.0.1/8") else { return XCTFail("host bits accepted") }
        XCTAssertTrue(e.description.contains("did you mean 10.0.0.0/8"), e.description)
    }

    func testCIDRMatching() {
        let cases: [(String, String, Bool)] = [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "::ffff:10.1.1.1", true),
            ("127.0.0.1/32", "127.0.0.1", true),
            ("127.0.0.1/32", "127.0.0.2", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "::1", false),
            ("::/0", "10.0.0.1", false),
            ("::/0", "2001:db8::1", true),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("2001:db8::/65", "2001:db8::7fff:ffff:ffff:ffff", true),
            ("2001:db8::/65", "2001:db8::8000:0:0:0", false),
            ("::1/128", "::1", true),
            ("::1/128", "::2", false),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
        ]
        for (network, ip, want) in cases {
            guard let c = CIDR(network), let a = IPAddress(ip) else { return XCTFail("bad case \(network) \(ip)") }
            XCTAssertEqual(c.contains(a), want, "\(network) contains \(ip)")
        }
        let list = ["10.0.0.0/8", "::1"].compactMap(CIDR.init)
        XCTAssertTrue(list.containsAddress(IPAddress("10.1.1.1")!))
        XCTAssertTrue(list.containsAddress(IPAddress("::1")!))
        XCTAssertFalse(list.containsAddress(IPAddress("127.0.0.1")!))
        XCTAssertFalse([CIDR]().containsAddress(IPAddress("127.0.0.1")!))
    }
}

/// The subject of an X.509 certificate, read from its DER bytes: enough to
/// match `CN=` entries of `admin.remote.allow` and to log who connected.
///
/// The TLS library has verified the certificate before this runs, but the
/// parser still treats the bytes as hostile: every length is checked
/// against what is left, and anything it does not understand makes it
/// return nil, which the caller treats as "no name" (refused unless a
/// `sha256:` entry names the certificate).
public struct CertificateSubject: Sendable, Equatable {
    public struct Attribute: Sendable, Equatable {
        /// `CN`, `O`, `OU`, `C`, `L`, `ST`, `emailAddress`, or the dotted OID.
        public var type: String
        public var value: String
        public init(type: String, value: String) {
            self.type = type
            self.value = value
        }
    }

    /// In certificate order (most significant first, as OpenSSL prints them).
    public var attributes: [Attribute]

    /// The first common name; nil when there is none, or when it holds a NUL
    /// (a name that could compare equal to a shorter one in C code).
    public var commonName: String? {
        guard let cn = attributes.first(where: { $0.type == "CN" })?.value, !cn.contains("\0") else { return nil }
        return cn
    }

    /// One line in OpenSSL's `X509_NAME_oneline` form (`/O=…/CN=…`), with
    /// control bytes escaped so that a name cannot forge log lines.
    public var oneLine: String {
        attributes.map { a in
            "/\(a.type)=" + a.value.unicodeScalars.map { s in
                s.value < 0x20 || s.value == 0x7F ? "\\x" + String(s.value, radix: 16, uppercase: true) : String(s)
            }.joined()
        }.joined()
    }

    public init(attributes: [Attribute]) { self.attributes = attributes }

    /// Parses the subject of a DER certificate; nil if the bytes are not one.
    public init?(certificateDER der: [UInt8]) {
        var r = DERReader(der[...])
        guard var cert = r.read(tag: 0x30), var tbs = cert.read(tag: 0x30) else { return nil }
        if tbs.peekTag == 0xA0 { _ = tbs.read(tag: 0xA0) }  // version [0] EXPLICIT
        guard tbs.read(tag: 0x02) != nil,  // serialNumber
              tbs.read(tag: 0x30) != nil,  // signature algorithm
              tbs.read(tag: 0x30) != nil,  // issuer
              tbs.read(tag: 0x30) != nil,  // validity
              var name = tbs.read(tag: 0x30) else { return nil }
        var attributes: [Attribute] = []
        while !name.isAtEnd {
            guard var rdn = name.read(tag: 0x31) else { return nil }
            while !rdn.isAtEnd {
                guard var pair = rdn.read(tag: 0x30), let oid = pair.read(tag: 0x06),
                      let (tag, value) = pair.readAny() else { return nil }
                attributes.append(Attribute(type: CertificateSubject.name(ofOID: oid.rest),
                                            value: CertificateSubject.text(tag: tag, value)))
            }
        }
        self.attributes = attributes
    }

    static func name(ofOID oid: ArraySlice<UInt8>) -> String {
        switch Array(oid) {
        case [0x55, 0x04, 0x03]: return "CN"
        case [0x55, 0x04, 0x06]: return "C"
        case [0x55, 0x04, 0x07]: return "L"
        case [0x55, 0x04, 0x08]: return "ST"
        case [0x55, 0x04, 0x0A]: return "O"
        case [0x55, 0x04, 0x0B]: return "OU"
        case [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x09, 0x01]: return "emailAddress"
        default: return dotted(oid)
        }
    }

    /// An OID's dotted form (the first byte holds two arcs; then base-128).
    static func dotted(_ oid: ArraySlice<UInt8>) -> String {
        guard let first = oid.first else { return "?" }
        var arcs = [UInt64(first / 40), UInt64(first % 40)]
        var value: UInt64 = 0
        for b in oid.dropFirst() {
            value = (value << 7) | UInt64(b & 0x7F)
            if b & 0x80 == 0 {
                arcs.append(value)
                value = 0
            }
        }
        return arcs.map(String.init).joined(separator: ".")
    }

    /// A directory string's text: UTF-8 and the ASCII types as they are,
    /// BMPString as UTF-16; any other type as `#` and hex, as RFC 4514 does.
    static func text(tag: UInt8, _ value: ArraySlice<UInt8>) -> String {
        switch tag {
        case 0x0C, 0x13, 0x14, 0x16:  // UTF8String, PrintableString, T61String, IA5String
            return String(decoding: value, as: UTF8.self)
        case 0x1E where value.count % 2 == 0:  // BMPString
            let units = stride(from: value.startIndex, to: value.endIndex, by: 2).map {
                UInt16(value[$0]) << 8 | UInt16(value[$0 + 1])
            }
            return String(decoding: units, as: UTF16.self)
        default:
            let digits = Array("0123456789ABCDEF")
            return "#" + String(value.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] })
        }
    }
}

/// A bounds-checked reader of DER tag-length-value items (one-byte tags,
/// definite lengths of up to four bytes: all an X.509 name needs).
struct DERReader {
    var rest: ArraySlice<UInt8>

    init(_ bytes: ArraySlice<UInt8>) { rest = bytes }

    var isAtEnd: Bool { rest.isEmpty }
    var peekTag: UInt8? { rest.first }

    /// The next item's tag and contents, or nil if it does not fit.
    mutating func readAny() -> (UInt8, ArraySlice<UInt8>)? {
        var p = rest.startIndex
        guard p < rest.endIndex else { return nil }
        let tag = rest[p]
        p += 1
        guard p < rest.endIndex else { return nil }
        var length = Int(rest[p])
        p += 1
        if length & 0x80 != 0 {
            let n = length & 0x7F
            guard n >= 1, n <= 4, rest.endIndex - p >= n else { return nil }
            length = 0
            for _ in 0..<n {
                length = length << 8 | Int(rest[p])
                p += 1
            }
        }
        guard length <= rest.endIndex - p else { return nil }
        let value = rest[p..<(p + length)]
        rest = rest[(p + length)...]
        return (tag, value)
    }

    /// The next item if it has `tag`, as a reader of its contents.
    mutating func read(tag: UInt8) -> DERReader? {
        let saved = rest
        guard let (t, value) = readAny(), t == tag else {
            rest = saved
            return nil
        }
        return DERReader(value)
    }
}

/// An IP network, such as `10.0.0.0/8` or `2001:db8::/32`: the entries of a
/// listener's `proxy_protocol.from`.
///
/// IPv4 and IPv6 stay apart, as they do everywhere in stickyd: an IPv4
/// network matches IPv4 peers and an IPv6 network IPv6 peers, so `::/0`
/// does not let in every IPv4 client. The one bridge is IPv4-mapped IPv6:
/// `::ffff:10.0.0.0/104` is read as `10.0.0.0/8`, and a peer given as
/// `::ffff:a.b.c.d` is matched as `a.b.c.d` (dual-stack sockets report
/// IPv4 clients that way; `Sockets.address` already unmaps them).
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    /// The network address, host bits zero.
    public let network: IPAddress
    public let prefixLength: Int

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    /// A network from its address and prefix; nil if host bits are set or
    /// the prefix is out of range for the family.
    public init?(network: IPAddress, prefixLength: Int) {
        switch network {
        case .v4:
            guard (0...32).contains(prefixLength) else { return nil }
        case .v6:
            guard (0...128).contains(prefixLength) else { return nil }
        }
        guard CIDR.masked(network, prefixLength) == network else { return nil }
        self.network = network
        self.prefixLength = prefixLength
    }

    /// `ADDRESS/PREFIX`, or a bare address for one host (`/32`, `/128`).
    public static func parse(_ text: String) -> Result<CIDR, ParseError> {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let ip = IPAddress(parsing: parts[0]) else {
            return .failure(ParseError(description: "'\(text)' is not a network; expected ADDRESS/PREFIX such as 10.0.0.0/8 or 2001:db8::/32"))
        }
        var prefix = ip.isV4 ? 32 : 128
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 3, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                  let p = Int(parts[1]), p <= prefix else {
                return .failure(ParseError(description: "'\(text)': the prefix length must be 0 to \(prefix)"))
            }
            prefix = p
        }
        var network = ip
        if case .v6(0, let lo) = ip, lo >> 32 == 0xFFFF, prefix >= 96 {
            network = .v4(UInt32(truncatingIfNeeded: lo))
            prefix -= 96
        }
        let masked = CIDR.masked(network, prefix)
        guard masked == network else {
            return .failure(ParseError(description: "'\(text)' has host bits set; did you mean \(masked)/\(prefix)?"))
        }
        return .success(CIDR(unchecked: masked, prefix))
    }

    public init?(_ text: String) {
        guard case .success(let c) = CIDR.parse(text) else { return nil }
        self = c
    }

    private init(unchecked network: IPAddress, _ prefixLength: Int) {
        self.network = network
        self.prefixLength = prefixLength
    }

    /// Whether `ip` is in this network (IPv4-mapped peers as IPv4).
    @inlinable
    public func contains(_ ip: IPAddress) -> Bool {
        var address = ip
        if case .v6(0, let lo) = ip, lo >> 32 == 0xFFFF { address = .v4(UInt32(truncatingIfNeeded: lo)) }
        switch (network, address) {
        case (.v4, .v4), (.v6, .v6):
            return CIDR.masked(address, prefixLength) == network
        default:
            return false
        }
    }

    @usableFromInline
    static func masked(_ ip: IPAddress, _ bits: Int) -> IPAddress {
        switch ip {
        case .v4(let v):
            let b = min(max(bits, 0), 32)
            let mask: UInt32 = b == 0 ? 0 : ~0 << UInt32(32 - b)
            return .v4(v & mask)
        case .v6(let hi, let lo):
            let b = min(max(bits, 0), 128)
            let hiMask: UInt64 = b >= 64 ? ~0 : (b == 0 ? 0 : ~0 << UInt64(64 - b))
            let loMask: UInt64 = b <= 64 ? 0 : (b == 128 ? ~0 : ~0 << UInt64(128 - b))
            return .v6(hi: hi & hiMask, lo: lo & loMask)
        }
    }

    public var description: String { "\(network)/\(prefixLength)" }
}

extension Array where Element == CIDR {
    /// Whether any network holds `ip`. A linear walk: allow-lists are short
    /// (the config bounds them) and this runs once per accepted connection.
    @inlinable
    public func containsAddress(_ ip: IPAddress) -> Bool {
        for network in self where network.contains(ip) { return true }
        return false
    }
}

/// What one DNS round found, as the refresh rules see it.
public enum DNSOutcome: Sendable, Equatable {
    /// The records, and the smallest TTL among those used.
    case found([DiscoveredEndpoint], ttlSeconds: UInt32)
    /// The name has no such records (NXDOMAIN, or NOERROR with none): the
    /// targets it had are drained, then removed.
    case missing(String)
    /// The lookup itself failed (SERVFAIL, REFUSED, a timeout, a bad
    /// answer): the last answer stays.
    case failed(String)
}

/// When the next lookup happens. `interval` is the longest wait; a record
/// whose TTL is shorter brings the next lookup forward, but never to less
/// than `floorMs` after this one (dnsmasq serves its own records with TTL
/// 0, which taken literally would mean asking without pause). A failure is
/// retried sooner than `interval`, backing off from the floor.
public struct DNSRefresh: Sendable, Equatable {
    public static let floorMs: Millis = 1_000
    public var intervalMs: Millis
    public private(set) var failures = 0
    public var backoff = Backoff(baseMs: DNSRefresh.floorMs, maxMs: 30_000)

    public init(intervalMs: Millis) { self.intervalMs = intervalMs }

    public mutating func next(after outcome: DNSOutcome, random: UInt64) -> Millis {
        switch outcome {
        case .found(_, let ttl):
            failures = 0
            return min(intervalMs, max(DNSRefresh.floorMs, Millis(ttl) * 1000))
        case .missing:
            failures = 0
            return intervalMs
        case .failed:
            failures += 1
            return max(DNSRefresh.floorMs, min(intervalMs, backoff.delayMs(failures: failures, random: random)))
        }
    }
}

public enum DNSTargets {
    /// At most this many SRV targets are resolved in one round (their own
    /// A/AAAA lookups): a pool holds 64 targets.
    public static let hostsMax = 64

    /// The SRV records that become targets (RFC 2782): those of the lowest
    /// priority number only. The others are backups, and stickyd has no
    /// backup targets: they take over when the lower numbers leave the
    /// answer. A target of "." means "no such service here".
    public static func preferred(_ answers: [DNSRecord]) -> [(weight: UInt16, port: UInt16, host: String, ttl: UInt32)] {
        let srv = answers.compactMap { r -> (UInt16, UInt16, UInt16, String, UInt32)? in
            guard case .srv(let priority, let weight, let port, let target) = r.data, !target.isEmpty, port != 0 else { return nil }
            return (priority, weight, port, target, r.ttl)
        }
        guard let best = srv.map(\.0).min() else { return [] }
        return srv.filter { $0.0 == best }.map { ($0.1, $0.2, $0.3, $0.4) }
    }

    /// SRV weight → target weight: the same number, within stickyd's
    /// 1...10000. Weight 0 ("rarely, when others have weight") becomes 1:
    /// placement has no "rarely", and 0 would take no clients at all.
    public static func weight(_ srv: UInt16) -> Int { max(1, min(10_000, Int(srv))) }

    /// Addresses of `host` among `records` (an answer's additional section,
    /// or the answers of its own A/AAAA lookups).
    public static func addresses(of host: String, in records: [DNSRecord]) -> [IPAddress] {
        records.compactMap { r in
            guard r.name == host, case .address(let ip) = r.data else { return nil }
            return ip
        }
    }

    /// The endpoints of the preferred SRV records, given each host's
    /// addresses; an address listed twice keeps the larger weight.
    public static func endpoints(_ preferred: [(weight: UInt16, port: UInt16, host: String, ttl: UInt32)],
                                 addresses: [String: [IPAddress]]) -> [DiscoveredEndpoint] {
        var out: [SocketAddress: DiscoveredEndpoint] = [:]
        var order: [SocketAddress] = []
        for r in preferred {
            let label = r.host.split(separator: ".").first.map(String.init)
            for ip in addresses[r.host] ?? [] {
                let a = SocketAddress(ip: ip, port: r.port)
                let e = DiscoveredEndpoint(address: a, ready: true, name: label.flatMap { checkName($0, what: "") == nil ? $0 : nil },
                                           weight: weight(r.weight))
                if let old = out[a] {
                    if e.weight > old.weight { out[a]!.weight = e.weight }
                } else {
                    out[a] = e
                    order.append(a)
                }
            }
        }
        return order.map { out[$0]! }
    }
}

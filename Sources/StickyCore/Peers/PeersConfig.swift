/// `peers:` — the instances this one shares pins with (docs/SCALING.md).
///
/// ```yaml
/// peers:
///   name: a                    # this instance; members know it by this
///   listen: 192.0.2.1:7700     # where members connect to push pins
///   members:
///     - {name: b, address: 192.0.2.2:7700}
///   sync_timeout: 3s           # how long a start waits for the table
///   queue: 65536               # pins queued per member before dropping
///   tls:                       # optional: mutual TLS between members
///     cert: /etc/stickyd/peer.crt   # this instance's; its CN is peers.name
///     key: /etc/stickyd/peer.key
///     ca: /etc/stickyd/peers-ca.crt # signs every member's certificate
/// ```
public struct PeersConfig: Sendable, Equatable {
    public struct Member: Sendable, Equatable {
        public var name: String
        public var address: SocketAddress
        public init(name: String, address: SocketAddress) {
            self.name = name
            self.address = address
        }
    }

    /// `peers.tls`: PEM files. Each member presents its certificate both
    /// ways (as server to those that connect, as client when it connects);
    /// it must chain to `ca` and its subject's CN must be the member's name.
    public struct TLS: Sendable, Equatable {
        public var certificate: String
        public var privateKey: String
        public var ca: String
        public init(certificate: String, privateKey: String, ca: String) {
            self.certificate = certificate
            self.privateKey = privateKey
            self.ca = ca
        }
    }

    public var name: String
    public var listen: SocketAddress
    public var members: [Member]
    /// nil: plain TCP (members are still checked by address and name).
    public var tls: TLS?
    /// A starting instance waits this long for a member's table, then
    /// starts without one (and logs it).
    public var syncTimeoutMs: Millis = 3_000
    /// Pins waiting for one member; more are dropped and counted, so a slow
    /// member costs memory up to here and never stalls a worker.
    public var queue = 65_536

    public static let membersMax = 32
    public static let queueRange = 1_024...4_194_304

    public init(name: String, listen: SocketAddress, members: [Member]) {
        self.name = name
        self.listen = listen
        self.members = members
    }

    func validate(_ failure: (String, String) -> ConfigError, trafficListeners: [SocketAddress]) throws {
        func check(name: String, path: String) throws {
            guard !name.isEmpty, name.utf8.count <= 64,
                  name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }) else {
                throw failure(path, "\(path) must be 1 to 64 letters, digits, '-', '_' or '.', got '\(name)'")
            }
        }
        try check(name: name, path: "peers.name")
        guard members.count <= PeersConfig.membersMax else {
            throw failure("peers.members", "peers.members has \(members.count) entries; at most \(PeersConfig.membersMax)")
        }
        var names: Set<String> = [name]
        var addresses: Set<SocketAddress> = [listen]
        for (i, m) in members.enumerated() {
            try check(name: m.name, path: "peers.members[\(i)].name")
            guard names.insert(m.name).inserted else {
                throw failure("peers.members[\(i)].name", "peers.members[\(i)].name '\(m.name)' is used twice (this instance is '\(name)')")
            }
            guard addresses.insert(m.address).inserted else {
                throw failure("peers.members[\(i)].address", "peers.members[\(i)].address \(m.address) is used twice (peers.listen is \(listen))")
            }
        }
        if trafficListeners.contains(listen) {
            throw failure("peers.listen", "peers.listen \(listen) is also a traffic listener; the peer listener needs an address of its own")
        }
        guard syncTimeoutMs >= 0 && syncTimeoutMs <= 60_000 else {
            throw failure("peers.sync_timeout", "peers.sync_timeout must be between 0s and 60s")
        }
        guard PeersConfig.queueRange.contains(queue) else {
            throw failure("peers.queue", "peers.queue must be between \(PeersConfig.queueRange.lowerBound) and \(PeersConfig.queueRange.upperBound)")
        }
        if let tls {
            for (key, value) in [("cert", tls.certificate), ("key", tls.privateKey), ("ca", tls.ca)] where value.isEmpty {
                throw failure("peers.tls.\(key)", "peers.tls.\(key) must be a file path, got an empty string")
            }
        }
    }
}

/// `vip:` — one service address the instance holds on a local interface
/// while it is ready, for a routing daemon (BIRD's `direct` protocol) to
/// announce. Top-level, not per listener: it says whether this *host* is in
/// the rotation, and `withdraw` takes the whole host out.
///
/// ```yaml
/// vip:
///   address: 198.51.100.10     # /32 (or /128 for IPv6)
///   interface: stickyvip0      # an existing interface, e.g. a dummy one
/// ```
public struct VIPConfig: Sendable, Equatable {
    public var address: IPAddress
    public var interface: String

    public init(address: IPAddress, interface: String) {
        self.address = address
        self.interface = interface
    }

    func validate(_ failure: (String, String) -> ConfigError) throws {
        // IFNAMSIZ is 16 with the NUL.
        guard !interface.isEmpty, interface.utf8.count < 16, !interface.contains("/"), !interface.contains(" ") else {
            throw failure("vip.interface", "vip.interface must be an interface name of 1 to 15 bytes, got '\(interface)'")
        }
    }
}

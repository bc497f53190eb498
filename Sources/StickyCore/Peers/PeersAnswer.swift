/// One member as `show peers` reports it.
public struct PeerStatus: Codable, Sendable, Equatable {
    public var name: String
    public var address: String
    /// The link this instance pushes on: connecting, up, or down (waiting
    /// out its backoff).
    public var state: String
    /// The member's own link to us is connected (its pushes arrive).
    public var inbound: Bool
    public var pinsSent: UInt64 = 0
    public var pinsReceived: UInt64 = 0
    /// Pins meant for this member lost to a full queue or a closed link.
    public var pinsDropped: UInt64 = 0
    public var queued: Int = 0
    /// Age of the oldest pin waiting for this member, ms.
    public var queueLagMs: Int64 = 0
    /// The last batch received: its sender's send time to now, ms.
    public var receiveLagMs: Int64 = 0
    public var connects: UInt64 = 0
    /// Whole tables sent because pins meant for the member were lost.
    public var resyncs: UInt64 = 0
    public var lastError: String?

    public init(name: String, address: String, state: String, inbound: Bool) {
        self.name = name
        self.address = address
        self.state = state
        self.inbound = inbound
    }
}

/// `show peers`: the peer links, and what workers did with peers' pins.
public struct PeersAnswer: AdminAnswer, Equatable {
    public var name: String
    public var listen: String
    public var members: [PeerStatus]
    /// Summed over workers (their counters).
    public var pinsApplied: UInt64
    public var conflicts: UInt64
    public var pinsIgnored: UInt64
    /// Pin changes the workers' outboxes had no room for.
    public var outboxDropped: UInt64
    /// What the start-up pull got: the member and pin count, or why none.
    public var sync: String
    /// Whether peer links are mutual TLS (`peers.tls`).
    public var tls: Bool
    /// Connections refused: not a member, the wrong address or hash key, a
    /// failed TLS handshake, a certificate for another name. The last
    /// reason, if any.
    public var refused: UInt64
    public var lastRefusal: String?

    public init(name: String, listen: String, members: [PeerStatus], pinsApplied: UInt64, conflicts: UInt64,
                pinsIgnored: UInt64, outboxDropped: UInt64, sync: String, tls: Bool = false,
                refused: (count: UInt64, last: String?) = (0, nil)) {
        self.name = name
        self.listen = listen
        self.members = members
        self.pinsApplied = pinsApplied
        self.conflicts = conflicts
        self.pinsIgnored = pinsIgnored
        self.outboxDropped = outboxDropped
        self.sync = sync
        self.tls = tls
        self.refused = refused.count
        self.lastRefusal = refused.last
    }

    public var text: String {
        var lines = ["peer \(name) listen \(listen) applied \(pinsApplied) conflicts \(conflicts) ignored \(pinsIgnored) outbox_dropped \(outboxDropped) tls \(tls ? "mutual" : "off") refused \(refused) sync \(sync)"]
        for m in members {
            lines.append("member \(m.name) \(m.address) state \(m.state) inbound \(m.inbound ? "up" : "down") sent \(m.pinsSent) received \(m.pinsReceived) dropped \(m.pinsDropped) queued \(m.queued) queue_lag_ms \(m.queueLagMs) receive_lag_ms \(m.receiveLagMs) connects \(m.connects) resyncs \(m.resyncs)" + (m.lastError.map { " error \($0)" } ?? ""))
        }
        return lines.joined(separator: "\n")
    }
}

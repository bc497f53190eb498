import Logging
import StickyCore
import StickyDataPlane

/// What runs for several instances (docs/SCALING.md): the peer service and
/// the VIP. Started after the workers and the start-up pull, before READY.
struct ClusterRun {
    var peers: PeerService?
    var vip: VIPAnnouncer?

    func stop(handedOver: Bool) {
        // After an upgrade the successor holds the VIP: leave it.
        if !handedOver, let vip, vip.announced.load(ordering: .acquiring) {
            try? vip.withdraw()
        }
        peers?.stop()
    }
}

extension Daemon {
    /// Pin changes a worker can queue for the peer service between two of
    /// its 10 ms ticks before it drops them.
    static let pinOutboxSize = 65_536

    struct PeerStart {
        var clock: PeerClock
        var summary: String
    }

    /// The start-up pull (PeerSync), its pins posted to the workers that
    /// own their clients. Nil without `peers:`.
    func pullPeerTable(channels: [WorkerChannel], control: ControlPlane, tls: PeerTLS?) -> PeerStart? {
        guard let peers = config.peers else { return nil }
        let clock = PeerClock(unixMs: ControlPlane.unixMs(), monotonicMs: ControlPlane.monotonicMs())
        guard !peers.members.isEmpty else { return PeerStart(clock: clock, summary: "no members") }
        guard let got = PeerSync.pull(peers, fingerprint: peerFingerprint(control), tls: tls, logger: logger) else {
            logger.warning("starting without a peer table: no member answered within peers.sync_timeout",
                           metadata: ["sync_timeout_ms": "\(peers.syncTimeoutMs)"])
            return PeerStart(clock: clock, summary: "none (no member answered)")
        }
        let service = PeerRouting(poolNames: config.pools.map(\.name),
                                  masks: config.pools.map { ($0.affinity.maskV4, $0.affinity.maskV6) }, channels: channels)
        for (pool, pins) in got.pins { service.deliver(pool: pool, pins: pins, clock: clock) }
        logger.info("peer table pulled", metadata: ["member": "\(got.member)", "pins": "\(got.count)"])
        return PeerStart(clock: clock, summary: "\(got.count) pins from \(got.member)")
    }

    /// Every pool's key (validation makes `peers:` require them), folded
    /// in pool order: members must place every pool's clients alike.
    func peerFingerprint(_ control: ControlPlane) -> UInt64 {
        config.pools.reduce(UInt64(0)) { $0 &* 31 &+ PeerWire.keyFingerprint($1.affinity.hashKey ?? control.hashKey) }
    }

    func startCluster(_ start: PeerStart?, control: ControlPlane, channels: [WorkerChannel], tls: PeerTLS?) throws -> ClusterRun {
        var run = ClusterRun()
        if let peers = config.peers, let start {
            let service = PeerService(config: peers, routing: PeerRouting(poolNames: config.pools.map(\.name),
                                                                          masks: config.pools.map { ($0.affinity.maskV4, $0.affinity.maskV6) },
                                                                          channels: channels),
                                      clock: start.clock, fingerprint: peerFingerprint(control), syncSummary: start.summary, tls: tls,
                                      logger: logger,
                                      exportTable: { control.collect(PinQuery(pool: nil, client: nil, limit: AffinityConfig.capacityMax)).flatMap(\.pins) })
            try service.start()
            control.cluster.peers.withLock { $0 = service }
            run.peers = service
        }
        if let v = config.vip {
            let vip = VIPAnnouncer(v, logger: logger)
            do {
                try vip.announce()
            } catch {
                run.peers?.stop()
                throw error
            }
            control.cluster.vip.withLock { $0 = vip }
            run.vip = vip
        }
        return run
    }
}

/// Which worker gets a peer's pin: the one the steering program sends the
/// client to, so the pin lands in the shard that will look it up.
struct PeerRouting: Sendable {
    let poolNames: [String]
    let masks: [(v4: Int, v6: Int)]
    let channels: [WorkerChannel]

    func deliver(pool name: String, pins: [PeerPin], clock: PeerClock) {
        guard let pool = poolNames.firstIndex(of: name) else { return }
        var perWorker = [[PeerPin]](repeating: [], count: channels.count)
        for pin in pins {
            let ip = pin.key.address
            let w = channels.count == 1 ? 0 : Sockets.steeredWorker(
                for: ip, prefixLength: ip.isV4 ? masks[pool].v4 : masks[pool].v6, workers: channels.count)
            perWorker[w].append(pin)
        }
        for (w, batch) in perWorker.enumerated() where !batch.isEmpty {
            channels[w].post(.peerPins(pool: pool, pins: batch, clock: clock))
        }
    }
}

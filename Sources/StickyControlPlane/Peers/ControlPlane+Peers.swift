import StickyCore
import StickyDataPlane
import Synchronization

/// What the control plane holds for several instances: the peer service
/// (for `show peers`) and the VIP (for `withdraw` and `announce`), set by
/// the daemon once they run.
final class ClusterHooks: Sendable {
    let peers = Mutex<PeerService?>(nil)
    let vip = Mutex<VIPAnnouncer?>(nil)
}

extension ControlPlane {
    /// `help` lists the cluster commands only where they do something.
    var helpCommands: [String] {
        AdminGrammar.synopsis + (config.peers != nil || config.vip != nil ? AdminGrammar.clusterSynopsis : [])
    }

    func peersAnswer() -> Result<any AdminAnswer, RegistryError> {
        guard let peers = config.peers else { return .failure(RegistryError("no peers: section in the config")) }
        let service = cluster.peers.withLock { $0 }
        var workers = WorkerCounters()
        for r in collect() { workers.add(r.counters) }
        let channels = self.channels.withLock { $0 }
        let dropped = channels.reduce(UInt64(0)) { $0 &+ ($1.pinOutbox?.dropped.load(ordering: .relaxed) ?? 0) }
        return .success(PeersAnswer(
            name: peers.name, listen: "\(peers.listen)",
            members: service?.status ?? peers.members.map { PeerStatus(name: $0.name, address: "\($0.address)", state: "not started", inbound: false) },
            pinsApplied: workers[.peerPinsApplied], conflicts: workers[.peerConflicts], pinsIgnored: workers[.peerPinsIgnored],
            outboxDropped: dropped, sync: service?.syncSummary ?? "not yet",
            tls: peers.tls != nil, refused: service?.refusals.withLock { $0 } ?? (0, nil)))
    }

    /// `withdraw` / `announce`: the VIP off the host (open connections stay
    /// and finish) or back on.
    func vipChange(announce: Bool) -> Result<String, RegistryError> {
        guard let vip = cluster.vip.withLock({ $0 }) else { return .failure(RegistryError("no vip: section in the config")) }
        do {
            if announce { try vip.announce() } else { try vip.withdraw() }
        } catch {
            return .failure(RegistryError("\(error)"))
        }
        return .success(announce ? "vip \(vip.address) announced on \(vip.interface)"
                                 : "vip \(vip.address) withdrawn from \(vip.interface); open connections continue")
    }
}

import Glibc
import StickyCore

/// Figures a worker keeps per target, for reports.
struct TargetFigures {
    var bytesUp: UInt64 = 0
    var bytesDown: UInt64 = 0
    /// Connections established to the target (counted when they open).
    var connections: UInt64 = 0
    /// Refused or timed-out connects, cumulative: metrics show them, and
    /// the control plane feeds the deltas to passive health detection.
    var connectFailures: UInt64 = 0
    /// h2c (docs/HTTP2.md): GOAWAYs written, connections the client closed
    /// after one, and connections still open at a drain's deadline.
    var goawaysSent: UInt64 = 0
    var goawayClosed: UInt64 = 0
    var openAtDeadline: UInt64 = 0
}

/// One pool as a worker holds it: the balancer that places its clients,
/// and, per target, what the data path needs beside it.
///
/// A target has one identity here, the balancer's target index: the
/// connect addresses and the figures below are indexed by it and are
/// re-read from the balancer in the same call that changes its targets
/// (`setTargets`), so the two can never disagree about which target an
/// index means.
final class WorkerPool {
    static let targetsMax = TargetMask.capacity

    let name: String
    var balancer: AffinityBalancer
    /// Connect addresses, in stable memory: a connect entry points at them
    /// until it is submitted.
    let addresses: UnsafeMutablePointer<sockaddr_storage>
    var addressLengths: [socklen_t]
    var figures: [TargetFigures]
    /// How many affinity slots the expiry sweep visits per tick.
    let expiryBudget: Int
    /// The pool speaks h2c (PoolSetup.h2c), and its connection age limit.
    let h2c: Bool
    let maxConnectionAgeMs: Millis

    init(_ setup: PoolSetup, shareLoads: Bool) throws {
        name = setup.name
        var b = try AffinityBalancer(targets: setup.targets, config: setup.affinity, maglev: setup.maglev)
        if shareLoads { b.sharedLoads = setup.sharedLoads }
        for (t, state) in zip(setup.targets, setup.states) where state != .ready {
            b.setState(address: t.address, state: state)
        }
        balancer = b
        addresses = .allocate(capacity: WorkerPool.targetsMax)
        addresses.initialize(repeating: sockaddr_storage(), count: WorkerPool.targetsMax)
        addressLengths = Array(repeating: 0, count: WorkerPool.targetsMax)
        figures = Array(repeating: TargetFigures(), count: WorkerPool.targetsMax)
        expiryBudget = max(1024, setup.affinity.capacity / 10)
        h2c = setup.h2c
        maxConnectionAgeMs = setup.h2c ? setup.maxConnectionAgeMs : 0
        syncAddresses()
    }

    deinit { addresses.deallocate() }

    /// After an upgrade, the old process's open connections per target
    /// (one worker holds them for the pool), and what of them is added to
    /// the pool-wide counts, by slot: bounded load then counts every
    /// connection a target has, in either process.
    var predecessorLoads: [SocketAddress: Int] = [:]
    var predecessorApplied: [(slot: Int, count: Int)] = []

    func setPredecessorLoads(_ loads: [SocketAddress: Int]) {
        predecessorLoads = loads.filter { $0.value > 0 }
        unapplyPredecessorLoads()
        applyPredecessorLoads()
    }

    private func unapplyPredecessorLoads() {
        guard let shared = balancer.sharedLoads else { return }
        for (slot, count) in predecessorApplied { shared.add(slot, -count) }
        predecessorApplied.removeAll(keepingCapacity: true)
    }

    /// By the slots as they are now: a target set change moves them, so it
    /// takes them out first and puts them back after.
    private func applyPredecessorLoads() {
        guard let shared = balancer.sharedLoads else { return }
        for (address, count) in predecessorLoads {
            guard let slot = balancer.targetIndex(of: address) else { continue }
            shared.add(slot, count)
            predecessorApplied.append((slot, count))
        }
    }

    /// A new target list from the control plane (membership or weights).
    func setTargets(_ targets: [TargetSpec], states: [TargetState], maglev: MaglevTable) {
        unapplyPredecessorLoads()
        defer { applyPredecessorLoads() }
        do {
            try balancer.updateTargets(targets, maglev: maglev)
        } catch {
            preconditionFailure("control plane sent a target set the balancer refuses: \(error)")
        }
        for (t, state) in zip(targets, states) { balancer.setState(address: t.address, state: state) }
        syncAddresses()
    }

    /// Re-reads each target index's address: indexes change hands when
    /// targets are added and removed, and an index handed to another target
    /// starts its figures anew (the old target's must not follow it).
    private func syncAddresses() {
        for t in 0..<WorkerPool.targetsMax {
            if let a = balancer.address(ofTarget: t) {
                if addressLengths[t] > 0 && Sockets.address(from: addresses[t]) != a {
                    figures[t] = TargetFigures()
                }
                let (ss, len) = Sockets.storage(for: a)
                addresses[t] = ss
                addressLengths[t] = len
            } else {
                addressLengths[t] = 0
            }
        }
    }

    /// Whether a client on target `t` must leave it: the target is gone,
    /// or in a state whose pinned clients are moved (strict drain, maint,
    /// down). Those are the connections an h2c GOAWAY ends.
    func mustLeave(target t: Int) -> Bool {
        guard let state = balancer.state(ofTarget: t) else { return true }
        return !state.acceptsPinned
    }

    /// The target index of `address`, also for a target the balancer keeps
    /// only until its last connection closes.
    func target(of address: SocketAddress) -> Int? {
        balancer.targetIndex(of: address) ?? (0..<WorkerPool.targetsMax).first { balancer.address(ofTarget: $0) == address }
    }
}

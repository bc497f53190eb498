import Logging
import StickyCore
import Synchronization

/// Where a worker leaves its affinity export for an upgrade's hand-over;
/// the takeover thread waits (bounded) for every worker's.
public final class HandoffBox: Sendable {
    let export = Mutex<AffinityExport?>(nil)
    public init() {}
    public var value: AffinityExport? { export.withLock { $0 } }
}

/// The worker's part of a zero-downtime upgrade (docs/OPERATIONS.md,
/// "Upgrade"). Cold paths only: each runs once per upgrade.
extension Worker {
    /// Holds accepting and cancels the armed accepts; the listening sockets
    /// stay open, so the kernel keeps completing handshakes into their
    /// queues for the successor. The export waits for the last accept to
    /// complete, so no client can be pinned here after it is taken.
    func beginHandoff(_ box: HandoffBox) {
        handoffHeld = true
        handoffBox = box
        if !acceptPaused {
            pauseAccepting()
        } else {
            // Already paused (full, or out of descriptors): the armed
            // accepts, if any, are already being cancelled.
        }
        completeHandoffExport()
    }

    /// Puts the export in the box once no accept is armed.
    func completeHandoffExport() {
        guard let box = handoffBox, !acceptArmed.contains(true) else { return }
        handoffBox = nil
        let exported = pools.map { AffinityExport.Pool(name: $0.name, pins: $0.balancer.exportPins(now: now)) }
        box.export.withLock { $0 = AffinityExport(pools: exported) }
    }

    /// The upgrade was rolled back: accept again (unless the worker is full
    /// or stopping; `resumeAccepting` knows).
    func endHandoff() {
        handoffHeld = false
        handoffBox = nil
        serveBacklog()
        resumeAccepting()
    }

    /// Takes the old process's pins into this worker's shards, by pool name.
    func importAffinity(_ imported: AffinityExport) {
        let now = Worker.clock()
        for pool in imported.pools {
            guard let target = pools.first(where: { $0.name == pool.name }) else {
                logger.warning("upgrade: affinity of a pool the config no longer has; dropped",
                               metadata: ["pool": "\(pool.name)", "entries": "\(pool.pins.count)"])
                continue
            }
            let r = target.balancer.importPins(pool.pins, now: now)
            if r.imported != pool.pins.count {
                logger.notice("upgrade: some affinity entries were not taken over", metadata: [
                    "worker": "\(settings.index)", "pool": "\(pool.name)", "imported": "\(r.imported)",
                    "unknown_target": "\(r.unknownTarget)", "expired": "\(r.expired)",
                    "over_capacity": "\(r.overCapacity)", "duplicate": "\(r.duplicate)",
                ])
            }
        }
    }
}

import StickyCore
import StickyDataPlane

extension ControlPlane {
    /// Called periodically: drains whose deadline passed get their
    /// remaining connections ended (FIN, or a GOAWAY on h2c after a sticky
    /// drain; reset after the grace).
    public func tick() {
        let now = clock.nowMs()
        let expired = state.withLock { $0.registry.expireDrains(now: now) }
        for (p, address, mode) in expired {
            logger.notice("drain deadline reached; closing remaining connections",
                          metadata: ["target": "\(address)", "grace_ms": "\(config.drain.graceMs)", "mode": "\(mode)"])
            // A sticky drain kept its clients on purpose: at its deadline
            // they are moved, and h2c ones are asked to leave with a GOAWAY.
            broadcast(.closeTarget(pool: p, address: address, graceMs: config.drain.graceMs, graceful: mode == .sticky))
        }
        // Targets a reload dropped leave once their cut connections are gone.
        let (removed, r) = state.withLock { s in
            (s.registry.removeExpiredReloadDrains(now: now, graceMs: config.drain.graceMs), s.registry)
        }
        for p in removed { publish(.targets(pool: p), r) }
        if !expired.isEmpty || !removed.isEmpty { persist() }
        healthTick(now: now)
    }
}

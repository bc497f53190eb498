import Glibc
import Logging
import StickyCore

// What a worker publishes for the control plane: counters, per-target
// loads and bytes, and pins on request.

extension Worker {
    /// Publishes a report, and files it as the answer to `request` when
    /// one asked. Cold: every fourth tick, and on demand.
    func publishReport(_ query: PinQuery?, entries countEntries: Bool, request: UInt64 = 0, cleared: Int = 0) {
        reportSequence += 1
        var r = WorkerReport()
        r.affinityCleared = cleared
        r.sequence = reportSequence
        r.counters = counters
        r.counters[.sqFullFlushes] = UInt64(clamping: ring.sqFullFlushes)
        r.counters[.descriptors] = UInt64(clamping: descriptors)
        r.counters[.descriptorBudget] = UInt64(clamping: settings.descriptorBudget)
        // Bytes of connections still open count too: a gRPC channel lives
        // for hours, and its bytes must not appear only when it closes.
        // Closed connections' bytes are in the pool's figures; a slot's move
        // there at `release`, so closed + open never goes down.
        var open = pools.map { _ in [TargetFigures](repeating: TargetFigures(), count: WorkerPool.targetsMax) }
        for i in 0..<slotCount where slots[i].state != .free && slots[i].placed {
            let t = Int(slots[i].placement.target)
            open[Int(slots[i].pool)][t].bytesUp &+= slots[i].up.bytes
            open[Int(slots[i].pool)][t].bytesDown &+= slots[i].down.bytes
            r.counters[.bytesUp] &+= slots[i].up.bytes
            r.counters[.bytesDown] &+= slots[i].down.bytes
        }
        for (p, pool) in pools.enumerated() {
            var pr = PoolReport()
            pr.affinity = pool.balancer.counters
            let entries = countEntries ? pool.balancer.entriesPerTarget(now: now) : []
            for t in 0..<WorkerPool.targetsMax {
                guard let a = pool.balancer.address(ofTarget: t) else { continue }
                let f = pool.figures[t]
                pr.targets.append(TargetLoad(address: a, connections: pool.balancer.openConnections(target: t),
                                             affinityEntries: countEntries ? entries[t] : 0,
                                             bytesUp: f.bytesUp &+ open[p][t].bytesUp,
                                             bytesDown: f.bytesDown &+ open[p][t].bytesDown,
                                             connectionsTotal: f.connections, connectFailures: f.connectFailures))
                pr.targets[pr.targets.count - 1].goawaysSent = f.goawaysSent
                pr.targets[pr.targets.count - 1].goawayClosed = f.goawayClosed
                pr.targets[pr.targets.count - 1].openAtDeadline = f.openAtDeadline
            }
            r.pools.append(pr)
        }
        if let q = query {
            for p in pools.indices where q.pool == nil || q.pool == p {
                if let c = q.client {
                    if let pin = pools[p].balancer.pin(of: c, now: now) { r.pins.append((p, pin)) }
                } else {
                    for pin in pools[p].balancer.pins(now: now, limit: q.limit - r.pins.count) { r.pins.append((p, pin)) }
                }
                if r.pins.count >= q.limit { break }
            }
        }
        if request != 0 { channel.answer(request, r) }
        channel.publish(r)
    }
}

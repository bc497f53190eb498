import Glibc
import StickyCore
import StickyDataPlane

extension ControlPlane {
    /// Asks every worker for a fresh report and waits (bounded) for them.
    /// Each caller gets the answers to its own request: `show affinity`, a
    /// metrics scrape and the health tick may ask at the same time, with
    /// different queries. A worker that does not answer in time is
    /// represented by its latest periodic report.
    public func collect(_ query: PinQuery? = nil, entries: Bool = false, timeoutMs: Int = 2000) -> [WorkerReport] {
        let chans = channels.withLock { $0 }
        let request = nextRequest.add(1, ordering: .relaxed).newValue
        for c in chans { c.post(.report(query, entries: entries, request: request)) }
        var out: [WorkerReport?] = Array(repeating: nil, count: chans.count)
        let deadline = ControlPlane.monotonicMs() + Millis(timeoutMs)
        while true {
            for (w, c) in chans.enumerated() where out[w] == nil { out[w] = c.takeAnswer(request) }
            if !out.contains(where: { $0 == nil }) || ControlPlane.monotonicMs() >= deadline { break }
            usleep(1000)
        }
        return zip(out, chans).map { $0 ?? $1.report }
    }

    /// Per pool and target address: loads summed over the workers.
    static func loads(_ reports: [WorkerReport]) -> [Int: [SocketAddress: TargetLoad]] {
        var out: [Int: [SocketAddress: TargetLoad]] = [:]
        for r in reports {
            for (p, pool) in r.pools.enumerated() {
                for t in pool.targets {
                    var sum = out[p, default: [:]][t.address] ?? TargetLoad(address: t.address)
                    sum.connections += t.connections
                    sum.affinityEntries += t.affinityEntries
                    sum.bytesUp &+= t.bytesUp
                    sum.bytesDown &+= t.bytesDown
                    sum.connectionsTotal &+= t.connectionsTotal
                    sum.connectFailures &+= t.connectFailures
                    out[p, default: [:]][t.address] = sum
                }
            }
        }
        return out
    }
}

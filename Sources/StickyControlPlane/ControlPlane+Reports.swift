import Dispatch
import StickyCore
import StickyDataPlane

extension ControlPlane {
    /// Asks every worker for a fresh report and waits (bounded by
    /// `reportTimeoutMs`) for them. Each caller gets the answers to its own
    /// request: `show affinity`, a metrics scrape and the health tick may
    /// ask at the same time, with different queries. A worker that does not
    /// answer in time is represented by its latest periodic report.
    ///
    /// The wait is real time, whatever clock the control plane was given:
    /// it bounds how long an admin session or a scrape can hang on a stuck
    /// worker.
    public func collect(_ query: PinQuery? = nil, entries: Bool = false) -> [WorkerReport] {
        ask { .report(query, entries: entries, request: $0) }.map { $0.answer ?? $0.channel.report }
    }

    /// Posts to every worker the command `make` builds around a fresh
    /// request id, and waits (bounded by `reportTimeoutMs`, real time) for
    /// each worker's answer to it: nil for a worker that did not answer in
    /// time.
    func ask(_ make: (UInt64) -> WorkerCommand) -> [(channel: WorkerChannel, answer: WorkerReport?)] {
        let chans = channels.withLock { $0 }
        guard !chans.isEmpty else { return [] }
        let request = nextRequest.add(1, ordering: .relaxed).newValue
        // Each worker's answer signals once; the wait sleeps until then.
        let arrived = DispatchSemaphore(value: 0)
        for c in chans {
            c.expect(request) { arrived.signal() }
            c.post(make(request))
        }
        let deadline = DispatchTime.now() + .milliseconds(reportTimeoutMs)
        var waiting = chans.count
        while waiting > 0, arrived.wait(timeout: deadline) == .success { waiting -= 1 }
        return chans.map { ($0, $0.takeAnswer(request)) }
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
                    sum.goawaysSent &+= t.goawaysSent
                    sum.goawayClosed &+= t.goawayClosed
                    sum.openAtDeadline &+= t.openAtDeadline
                    out[p, default: [:]][t.address] = sum
                }
            }
        }
        return out
    }
}

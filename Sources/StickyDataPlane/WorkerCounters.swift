import StickyCore

/// Counters a worker keeps; the control plane reads copies. Each scalar is
/// a `WorkerCounter` (StickyCore), named and described once in
/// `CounterTable`; the families are indexed by this module's reason enums.
public struct WorkerCounters: Sendable {
    public var values = CounterValues()
    /// Connections closed, by `CloseReason`.
    public var closed: [UInt64] = Array(repeating: 0, count: CloseReason.allCases.count)
    /// Connections closed for their PROXY header, by `ProxyRejection`.
    public var proxyRejected: [UInt64] = Array(repeating: 0, count: ProxyRejection.allCases.count)
    /// h2c: connections whose target→client stream stopped being tracked
    /// (and went on as plain TCP), by `H2TrackerStop`.
    public var h2Untracked: [UInt64] = Array(repeating: 0, count: H2TrackerStop.allCases.count)
    /// h2c: GOAWAY frames stickyd wrote, by `GoawayCause`.
    public var goawaysSent: [UInt64] = Array(repeating: 0, count: GoawayCause.allCases.count)
    public init() {}

    public subscript(_ counter: WorkerCounter) -> UInt64 {
        get { values[counter] }
        set { values[counter] = newValue }
    }

    /// Adds another worker's figures (the control plane's sums), wrapping.
    public mutating func add(_ other: WorkerCounters) {
        values.add(other.values)
        for k in closed.indices { closed[k] &+= other.closed[k] }
        for k in proxyRejected.indices { proxyRejected[k] &+= other.proxyRejected[k] }
        for k in h2Untracked.indices { h2Untracked[k] &+= other.h2Untracked[k] }
        for k in goawaysSent.indices { goawaysSent[k] &+= other.goawaysSent[k] }
    }
}

/// The scalar figures a worker keeps, one case each. The data path bumps
/// `counters[.accepted]`; `show stats`, the metrics endpoint and
/// docs/METRICS.md find each figure's name and meaning in `CounterTable`,
/// so a counter is defined once. Case names are the data path's names.
///
/// The two labelled families (connections closed and PROXY headers
/// rejected, by reason) sit beside these in `WorkerCounters`, indexed by
/// the data plane's reason enums (`WorkerCounterFamily`).
public enum WorkerCounter: Int, CaseIterable, Sendable {
    case accepted
    /// Client connections open now: a gauge.
    case active
    case rejectedFull
    case acceptErrors
    case acceptPauses
    case descriptorExhaustion
    case connectErrors
    case connectTimeouts
    case connectRetries
    case bytesUp
    case bytesDown
    case pipeWaits
    case bufferStarvations
    case sqFullFlushes
    /// Connections given FIN by a strict drain's deadline.
    case drainCuts
    // Loop figures for metrics: bumped once per loop turn or per batch of
    // completions, never per operation.
    /// Turns of the loop (one io_uring_enter wait each).
    case loopIterations
    /// Completions reaped.
    case completions
    /// Descriptors held now (set when a report is made) and the budget:
    /// gauges.
    case descriptors
    case descriptorBudget
    /// Access log lines written, and lines lost to a failed write.
    case accessLogLines
    case accessLogDrops
    /// PROXY headers received whole, and written to targets.
    case proxyHeadersReceived
    case proxyHeadersSent
    /// The header (and early payload) could not be written to the target
    /// in one non-blocking send.
    case proxySendFailures
    /// Pins from peer instances laid into this worker's table, conflicts
    /// settled (either way), and pins left out (target unknown or not
    /// taking pinned clients here, lapsed, or the table full).
    case peerPinsApplied
    case peerConflicts
    case peerPinsIgnored
}

/// A worker's labelled counter families, by their names in `WorkerCounters`.
public enum WorkerCounterFamily: Sendable, CaseIterable {
    /// Connections closed, by `CloseReason`.
    case closed
    /// Connections closed for their PROXY header, by `ProxyRejection`.
    case proxyRejected
    /// h2c connections whose target→client stream stopped being tracked,
    /// by `H2TrackerStop`.
    case h2Untracked
    /// GOAWAY frames stickyd wrote, by why (the data plane's `GoawayCause`).
    case goawaysSent
}

/// One figure per `WorkerCounter`, stored inline in the value: an
/// increment on the data path is a subscript on memory the worker already
/// holds (never an allocation), and copying the figures into a report is a
/// plain value copy that leaves no shared buffer to copy on the next write.
public struct CounterValues: Sendable {
    /// `WorkerCounter.allCases.count`, written out because an InlineArray's
    /// size is a literal; `init` and a unit test check that they agree.
    public static let count = 27
    @usableFromInline var storage: InlineArray<27, UInt64>

    public init() {
        assert(WorkerCounter.allCases.count == CounterValues.count, "CounterValues.count must match WorkerCounter")
        storage = InlineArray(repeating: 0)
    }

    @inlinable
    public subscript(_ counter: WorkerCounter) -> UInt64 {
        get { storage[counter.rawValue] }
        set { storage[counter.rawValue] = newValue }
    }

    /// Adds `other` figure by figure, wrapping: a sum is for a report and
    /// must never trap.
    public mutating func add(_ other: CounterValues) {
        for c in WorkerCounter.allCases { self[c] &+= other[c] }
    }
}

import StickyCore

/// Counters a worker keeps; the control plane reads copies.
public struct WorkerCounters: Sendable {
    public var accepted: UInt64 = 0
    public var active = 0
    public var rejectedFull: UInt64 = 0
    public var acceptErrors: UInt64 = 0
    public var acceptPauses: UInt64 = 0
    public var descriptorExhaustion: UInt64 = 0
    public var connectErrors: UInt64 = 0
    public var connectTimeouts: UInt64 = 0
    public var connectRetries: UInt64 = 0
    public var bytesUp: UInt64 = 0
    public var bytesDown: UInt64 = 0
    public var closed: [UInt64] = Array(repeating: 0, count: CloseReason.allCases.count)
    public var pipeWaits: UInt64 = 0
    public var bufferStarvations: UInt64 = 0
    public var sqFullFlushes = 0
    /// Connections given FIN by a strict drain's deadline.
    public var drainCuts: UInt64 = 0
    // Loop figures for metrics: plain counters, bumped once per loop turn
    // or per batch of completions, never per operation.
    /// Turns of the loop (one io_uring_enter wait each).
    public var loopIterations: UInt64 = 0
    /// Completions reaped.
    public var completions: UInt64 = 0
    /// Descriptors held now (set when a report is made) and the budget.
    public var descriptors = 0
    public var descriptorBudget = 0
    /// Access log lines written, and lines lost to a failed write.
    public var accessLogLines: UInt64 = 0
    public var accessLogDrops: UInt64 = 0
    /// PROXY headers received whole, and written to targets.
    public var proxyHeadersReceived: UInt64 = 0
    public var proxyHeadersSent: UInt64 = 0
    /// Connections closed for their PROXY header, by `ProxyRejection`.
    public var proxyRejected: [UInt64] = Array(repeating: 0, count: ProxyRejection.allCases.count)
    /// The header (and early payload) could not be written to the target
    /// in one non-blocking send.
    public var proxySendFailures: UInt64 = 0
    /// h2c: connections whose target→client stream stopped being tracked
    /// (and went on as plain TCP), by `H2TrackerStop`.
    public var h2Untracked: [UInt64] = Array(repeating: 0, count: H2TrackerStop.allCases.count)
    /// h2c: GOAWAY frames stickyd wrote, by why (`GoawayCause`).
    public var goawaysSent: [UInt64] = Array(repeating: 0, count: GoawayCause.allCases.count)
    public init() {}
}

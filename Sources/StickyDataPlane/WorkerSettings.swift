import StickyCore

/// What one worker needs to run. Built by the daemon from the config.
public struct WorkerSettings: Sendable {
    public struct Listener: Sendable {
        public var fd: Int32
        public var pool: Int
        /// Every connection must open with a PROXY header (docs/PROXY.md).
        public var proxy: ProxyAcceptConfig?
        // No default for `proxy`: every place that makes listeners must say,
        // or an adopted listener would silently stop requiring the header.
        public init(fd: Int32, pool: Int, proxy: ProxyAcceptConfig?) {
            self.fd = fd
            self.pool = pool
            self.proxy = proxy
        }
    }

    public var index = 0
    public var engine: ForwardingEngine = .splice
    public var listeners: [Listener] = []
    public var pools: [PoolSetup] = []
    public var connectionsMax = 1024
    // The engines' resources default to the config's `limits` defaults,
    // so each value is written once (Config.swift).
    public var pipePoolSize = Limits().pipePool
    public var pipeSizeBytes = Limits().pipeSize
    public var bufferCount = Limits().bufferCount
    public var bufferSizeBytes = Limits().bufferSize
    public var connectTimeoutMs: Millis = 3000
    public var idleTimeoutMs: Millis = 300_000
    public var shutdownTimeoutMs: Millis = 60_000
    public var connectRetries = 2
    /// Health: no further connect attempt starts this long after accept.
    public var connectBudgetMs: Millis = 5_000
    public var ringEntries: UInt32 = 1024
    /// Accepted connections held while every slot is busy, before the
    /// listener is paused; beyond it a connection is closed and counted.
    public var acceptBacklogMax = 256
    /// Bounded load over the pool's connections on every worker (true with
    /// more than one worker), rather than this worker's alone.
    public var sharePoolLoads = false
    /// Descriptors this worker may hold (its share of RLIMIT_NOFILE after
    /// what the process already uses); 0 means no budget is enforced.
    public var descriptorBudget = 0
    /// The largest listener backlog: how many connections one multishot
    /// accept can hand over at once.
    public var acceptQueueMax = 4096
    /// Access log: one line per closed connection, nil for none.
    public var accessLog: AccessLogSink?
    /// `log.access_placement`: each access log line says how its client
    /// was placed (hit, miss, spill, or re-pin and why).
    public var accessLogPlacement = false
    /// Per pool: the PROXY header written to its targets, or nil for none.
    public var poolSendProxy: [ProxyVersion?] = []
    /// Upgrade (successor): pins taken over from the old process, imported
    /// before the first accept; and whether to start with accepting held
    /// until the old process lets go of the listeners.
    public var affinityImport: AffinityExport?
    public var startHeld = false

    public init() {}

    /// The engines this worker's connections use: pipes and the buffer
    /// ring are made only for those.
    /// The engines this worker's pools use: pipes and the buffer ring are
    /// made only for those (an h2c pool uses the copy engine whatever
    /// `engine` says; docs/CONFIG.md, `protocol`).
    var enginesInUse: Set<ForwardingEngine> {
        Set(pools.map(\.engine)).union(pools.isEmpty ? [engine] : [])
    }
}

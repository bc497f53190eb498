/// The affinity settings of one pool.
///
/// YAML keys the config loader is expected to map (under a pool's
/// `affinity:`), with their defaults:
///
/// ```yaml
/// affinity:
///   mode: idle            # idle (sliding, refreshed by each connection) | absolute
///   timeout: 10800s       # -> timeoutMs; 0 keeps affinity only while connections are open
///   capacity: 1048576     # entries for the whole pool, split over the workers
///   mask_v4: 32           # prefix length of the IPv4 key, 0...32 (24 for client pools)
///   mask_v6: 128          # prefix length of the IPv6 key, 0...128 (64 for client pools)
///   balance_factor: 1.25  # bounded load c, >= 1.0; `off` (nil) disables the spill
///   hash_key: 000102030405060708090a0b0c0d0e0f   # 32 hex digits; unset: generated once
///                                                 # and kept in the state directory
/// ```
public struct AffinityConfig: Sendable, Equatable {
    /// How an entry's age is measured.
    public enum Mode: String, Sendable, Equatable, CaseIterable {
        /// From the last activity (a connection placed or closed): kube-proxy's
        /// ClientIP affinity. The default.
        case idle
        /// From when the client was pinned; activity does not extend it.
        case absolute
    }

    public var mode: Mode
    /// How long an entry with no open connection lives. Kept in whole
    /// seconds by the table (rounded up); 0 means affinity lasts only while
    /// the client has a connection open.
    public var timeoutMs: Int64
    /// Most entries the table holds. The table allocates about 1/8 more
    /// slots than this so that two-choice hashing rarely has to evict early.
    public var capacity: Int
    /// Prefix length of IPv4 keys.
    public var maskV4: Int
    /// Prefix length of IPv6 keys.
    public var maskV6: Int
    /// Bounded load: a target holding more than `balanceFactor` × its
    /// weighted share of the open connections gets no new client. nil turns
    /// the check off (pure Maglev).
    public var balanceFactor: Double?
    /// The SipHash key for the table and Maglev. nil: the control plane
    /// resolves one (state directory) before building balancers; a balancer
    /// given nil makes a random one, good for one process lifetime only.
    public var hashKey: SipKey?

    public static let timeoutMsDefault: Int64 = 10_800_000
    public static let capacityDefault = 1_048_576
    public static let balanceFactorDefault = 1.25
    /// Upper bounds: table handles are Int32 and times are 32-bit seconds;
    /// these keep both far from their limits.
    public static let capacityMax = 1 << 27
    public static let timeoutMsMax: Int64 = 366 * 86_400_000

    public init(
        mode: Mode = .idle,
        timeoutMs: Int64 = AffinityConfig.timeoutMsDefault,
        capacity: Int = AffinityConfig.capacityDefault,
        maskV4: Int = 32,
        maskV6: Int = 128,
        balanceFactor: Double? = AffinityConfig.balanceFactorDefault,
        hashKey: SipKey? = nil
    ) {
        self.mode = mode
        self.timeoutMs = timeoutMs
        self.capacity = capacity
        self.maskV4 = maskV4
        self.maskV6 = maskV6
        self.balanceFactor = balanceFactor
        self.hashKey = hashKey
    }

    /// The problems with this config, each naming its YAML key; empty when
    /// it is valid. The loader adds file and line.
    public func validate() -> [AffinityConfigError] {
        var errors: [AffinityConfigError] = []
        if timeoutMs < 0 || timeoutMs > AffinityConfig.timeoutMsMax {
            errors.append(.init(key: "timeout", reason: "must be between 0 and 366 days"))
        }
        if capacity < 1 || capacity > AffinityConfig.capacityMax {
            errors.append(.init(key: "capacity", reason: "must be between 1 and \(AffinityConfig.capacityMax)"))
        }
        if !(0...32).contains(maskV4) {
            errors.append(.init(key: "mask_v4", reason: "must be a prefix length between 0 and 32"))
        }
        if !(0...128).contains(maskV6) {
            errors.append(.init(key: "mask_v6", reason: "must be a prefix length between 0 and 128"))
        }
        if let c = balanceFactor, !(c.isFinite && c >= 1.0) {
            // Below 1 the per-target capacities could sum to less than the
            // load, and then no target would take a new client.
            errors.append(.init(key: "balance_factor", reason: "must be a number >= 1.0, or off"))
        }
        return errors
    }

    /// The config of one worker's shard: each worker owns the clients the
    /// reuseport BPF steers to it, so it gets its part of the capacity.
    public func perWorker(_ workers: Int) -> AffinityConfig {
        precondition(workers >= 1, "a pool has at least one worker")
        var copy = self
        copy.capacity = max(1, (capacity + workers - 1) / workers)
        return copy
    }
}

/// One invalid affinity setting.
public struct AffinityConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The YAML key, as in `affinity.<key>`.
    public var key: String
    public var reason: String
    public init(key: String, reason: String) {
        self.key = key
        self.reason = reason
    }
    public var description: String { "affinity.\(key): \(reason)" }
}

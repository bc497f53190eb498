/// Milliseconds on a monotonic clock. The core never reads a clock itself:
/// the event loop passes `now` in, and tests pass a manual one.
public typealias Millis = Int64

/// A small set of target indices, used to exclude targets that already
/// failed a connect for this client. Bounded at 64 targets per pool by design
/// (a pool larger than that wants a different failover strategy anyway).
public struct TargetMask: Sendable, Equatable {
    public private(set) var bits: UInt64 = 0
    public init() {}
    public static let capacity = 64
    public func contains(_ index: Int) -> Bool {
        index < 64 && bits & (1 << UInt64(index)) != 0
    }
    public mutating func insert(_ index: Int) {
        precondition(index >= 0 && index < 64, "target index out of mask range")
        bits |= 1 << UInt64(index)
    }
}

/// Where a connection was placed: the target index in the pool's current
/// target list and the slot of the client's affinity entry (-1 when none
/// was recorded), so closing the connection costs no lookup.
public struct Placement: Sendable, Equatable {
    public var target: Int32
    public var entry: Int32
    /// `AffinityBalancer.rebalanceForAge` told this connection to leave its
    /// target (its client's pin is elsewhere now); until it closes, bounded
    /// load no longer counts it against the target it is leaving.
    public var leavingForAge = false
    /// With `leavingForAge`: the target its client's pin moved to.
    public var ageMoveTarget: Int8 = -1
    /// How `place` chose the target, for the access log's `placement=`
    /// (`log.access_placement`): plain fields, so a placement stays a
    /// value that costs no allocation.
    public var kind: PlacementKind = .none
    /// With `kind == .repin`: why the client's pin moved.
    public var moveReason: MoveReason = .targetDown
    public init(target: Int32, entry: Int32 = -1, kind: PlacementKind = .none) {
        self.target = target
        self.entry = entry
        self.kind = kind
    }
}

/// How a placement came about. The access log writes it so that a run
/// (the chaos soak, an operator's audit) can tell a client sent to its pin
/// from one placed afresh or moved, and why, from the daemon's own record.
public enum PlacementKind: UInt8, Sendable {
    /// Not placed (no eligible target, or never got that far).
    case none
    /// Pinned, and sent to its pin.
    case hit
    /// No live pin (new, lapsed or evicted): placed by Maglev.
    case miss
    /// A miss, or a re-pin, where bounded load passed over the Maglev
    /// choice. A re-pin that spilled is still written as a re-pin: the
    /// move is what matters to whoever reads the line.
    case spill
    /// Pinned to a target it may no longer use: moved (see `moveReason`).
    case repin
}

/// What the data path needs from a placement policy. One instance per worker
/// thread and pool; not shared, so it takes no locks.
///
/// The event loop calls, for each accepted connection:
/// 1. `place` to choose a target (and `place` again, with the failed target
///    excluded, after a failed connect, then `connectFailed`);
/// 2. `opened` once the backend connect succeeded;
/// 3. `closed` when the proxied connection ends.
public protocol PlacementPolicy {
    mutating func place(client: IPAddress, now: Millis, excluding: TargetMask) -> Placement?
    mutating func opened(_ placement: Placement, client: IPAddress, now: Millis)
    mutating func connectFailed(_ placement: Placement, client: IPAddress, now: Millis)
    mutating func closed(_ placement: Placement, client: IPAddress, now: Millis)
}

/// A pool target as the data path sees it.
public struct TargetSpec: Sendable, Equatable {
    public var address: SocketAddress
    public var weight: Int
    public var name: String?
    public init(address: SocketAddress, weight: Int = 1, name: String? = nil) {
        self.address = address
        self.weight = weight
        self.name = name
    }
}

/// How a draining target treats the clients already pinned to it.
public enum DrainMode: String, Sendable, Equatable, CaseIterable {
    /// As an NLB deregistration: no new connections at all; pinned clients
    /// are re-pinned on their next connection.
    case strict
    /// As HAProxy's drain or IPVS weight 0: pinned clients still go there,
    /// new clients do not.
    case sticky
}

/// The state of one target, as the affinity engine sees it. Only `ready`
/// takes new clients; see `acceptsPinned` for clients already pinned.
public enum TargetState: Sendable, Equatable {
    case ready
    case draining(DrainMode)
    /// Failed health checks or connects.
    case down
    /// Taken out by an operator.
    case maint

    /// Whether a client pinned to this target may keep going there.
    @inlinable
    public var acceptsPinned: Bool {
        switch self {
        case .ready, .draining(.sticky): return true
        case .draining(.strict), .down, .maint: return false
        }
    }

    /// Why a client pinned to a target in this state is moved; nil when it
    /// is not.
    @inlinable
    public var moveReason: MoveReason? {
        switch self {
        case .ready, .draining(.sticky): return nil
        case .draining(.strict): return .targetDrained
        case .down: return .targetDown
        case .maint: return .targetMaint
        }
    }
}

/// A target state's name without the drain mode: what the JSON answers
/// and the metrics' `state` label say.
public enum TargetStateName: String, Sendable, CaseIterable, Codable {
    case ready
    case draining
    case down
    case maint
}

extension TargetState {
    public var name: TargetStateName {
        switch self {
        case .ready: return .ready
        case .draining: return .draining
        case .down: return .down
        case .maint: return .maint
        }
    }

    /// The name with the drain mode, as text answers and logs show it:
    /// `draining(strict)`.
    public var label: String {
        if case .draining(let mode) = self { return "draining(\(mode.rawValue))" }
        return name.rawValue
    }
}

/// Why a pinned client was moved to another target. A client whose entry
/// expired or was evicted is not "moved": its affinity had ended, and it is
/// placed afresh (counted as a miss, and the eviction as an eviction).
public enum MoveReason: Int, Sendable, CaseIterable, CustomStringConvertible {
    /// Its target is down (health checks or connect failures).
    case targetDown
    /// Its target is draining in strict mode.
    case targetDrained
    /// Its target is in maintenance.
    case targetMaint
    /// Its target was deleted from the pool.
    case targetRemoved
    /// The connect to its target failed just now, and the data path asked
    /// for another one.
    case connectFailed
    /// One of its h2c connections reached `max_connection_age` while its
    /// target held more than `balance_factor` × its share of the pool's
    /// connections (`AffinityBalancer.rebalanceForAge`): the one case where
    /// a pinned client is moved for load.
    case age

    /// The access log's name (`staticName`, LogLine.swift): one list.
    public var description: String { "\(staticName)" }
}

/// Moves counted per reason, in fixed fields: the data path bumps these,
/// and a dictionary would allocate.
public struct MoveCounts: Sendable, Equatable {
    public var targetDown: UInt64 = 0
    public var targetDrained: UInt64 = 0
    public var targetMaint: UInt64 = 0
    public var targetRemoved: UInt64 = 0
    public var connectFailed: UInt64 = 0
    public var age: UInt64 = 0

    public init() {}

    public subscript(reason: MoveReason) -> UInt64 {
        get {
            switch reason {
            case .targetDown: return targetDown
            case .targetDrained: return targetDrained
            case .targetMaint: return targetMaint
            case .targetRemoved: return targetRemoved
            case .connectFailed: return connectFailed
            case .age: return age
            }
        }
        set {
            switch reason {
            case .targetDown: targetDown = newValue
            case .targetDrained: targetDrained = newValue
            case .targetMaint: targetMaint = newValue
            case .targetRemoved: targetRemoved = newValue
            case .connectFailed: connectFailed = newValue
            case .age: age = newValue
            }
        }
    }

    public var total: UInt64 { targetDown + targetDrained + targetMaint + targetRemoved + connectFailed + age }
}

extension MoveReason {
    /// The reason's name as a StaticString, so the access log writes it
    /// without allocating.
    public var staticName: StaticString {
        switch self {
        case .targetDown: return "target_down"
        case .targetDrained: return "target_drained"
        case .targetMaint: return "target_maint"
        case .targetRemoved: return "target_removed"
        case .connectFailed: return "connect_failed"
        case .age: return "age"
        }
    }
}

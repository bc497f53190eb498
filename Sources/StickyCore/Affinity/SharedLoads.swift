import Synchronization

/// Open connections per target slot of one pool, summed over every worker.
///
/// Each worker owns its shard of clients, but bounded load is a pool-wide
/// promise: with per-worker counts, two workers could each put their share
/// on the same target and together exceed c × the mean. Workers add and
/// subtract here (one relaxed atomic per connection); the bound is checked
/// against the sum. Slots line up across workers because every worker
/// applies the same target updates in the same order.
public final class SharedLoads: @unchecked Sendable {
    public static let slots = TargetMask.capacity
    @usableFromInline let counts: UnsafeMutablePointer<Atomic<Int>>
    /// Age moves in flight, pool-wide (`AffinityBalancer.rebalanceForAge`):
    /// connections told to leave a slot, and clients whose pins moved to a
    /// slot, until the leaving connection closes. Pool-wide because each
    /// worker checks the pool-wide loads: a per-worker count would let two
    /// workers shed the same excess twice.
    @usableFromInline let leavingCounts: UnsafeMutablePointer<Atomic<Int>>
    @usableFromInline let arrivingCounts: UnsafeMutablePointer<Atomic<Int>>
    /// Age-moved clients between connections, pool-wide (one count).
    @usableFromInline let transitCount: UnsafeMutablePointer<Atomic<Int>>

    public init() {
        counts = .allocate(capacity: SharedLoads.slots)
        leavingCounts = .allocate(capacity: SharedLoads.slots)
        arrivingCounts = .allocate(capacity: SharedLoads.slots)
        transitCount = .allocate(capacity: 1)
        transitCount.initialize(to: Atomic(0))
        for i in 0..<SharedLoads.slots {
            (counts + i).initialize(to: Atomic(0))
            (leavingCounts + i).initialize(to: Atomic(0))
            (arrivingCounts + i).initialize(to: Atomic(0))
        }
    }

    deinit {
        for p in [counts, leavingCounts, arrivingCounts] {
            p.deinitialize(count: SharedLoads.slots)
            p.deallocate()
        }
        transitCount.deinitialize(count: 1)
        transitCount.deallocate()
    }

    /// Claims one more age move leaving `slot` (`delta` 1), or gives one
    /// back (-1); returns the count before. Claim first, then check against
    /// the count before: two workers checking the same excess at the same
    /// moment see different counts, so only one sheds it.
    @discardableResult
    public func addLeaving(_ slot: Int, _ delta: Int) -> Int {
        leavingCounts[slot].wrappingAdd(delta, ordering: .relaxed).oldValue
    }

    /// As `addLeaving`, for clients whose pins moved to `slot`.
    @discardableResult
    public func addArriving(_ slot: Int, _ delta: Int) -> Int {
        arrivingCounts[slot].wrappingAdd(delta, ordering: .relaxed).oldValue
    }

    /// As `addLeaving`, for age-moved clients between connections.
    @discardableResult
    public func addInTransit(_ delta: Int) -> Int {
        transitCount[0].wrappingAdd(delta, ordering: .relaxed).oldValue
    }

    public var inTransit: Int { transitCount[0].load(ordering: .relaxed) }

    @inlinable @inline(__always)
    public func add(_ slot: Int, _ delta: Int) {
        counts[slot].wrappingAdd(delta, ordering: .relaxed)
    }

    /// Takes one connection on `slot` if that keeps it at or under
    /// `bound`: the check and the increment are one atomic step, so two
    /// workers placing at the same moment cannot both take the last place.
    @inlinable
    public func reserve(_ slot: Int, under bound: Int) -> Bool {
        var current = counts[slot].load(ordering: .relaxed)
        while current < bound {
            let (exchanged, seen) = counts[slot].weakCompareExchange(
                expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = seen
        }
        return false
    }

    @inlinable @inline(__always)
    public subscript(slot: Int) -> Int {
        counts[slot].load(ordering: .relaxed)
    }
}

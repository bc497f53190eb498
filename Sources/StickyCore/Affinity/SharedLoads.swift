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

    public init() {
        counts = .allocate(capacity: SharedLoads.slots)
        for i in 0..<SharedLoads.slots { (counts + i).initialize(to: Atomic(0)) }
    }

    deinit {
        counts.deinitialize(count: SharedLoads.slots)
        counts.deallocate()
    }

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

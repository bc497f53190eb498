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

    @inlinable @inline(__always)
    public subscript(slot: Int) -> Int {
        counts[slot].load(ordering: .relaxed)
    }
}

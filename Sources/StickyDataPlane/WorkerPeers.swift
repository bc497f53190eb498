import StickyCore
import Synchronization

// The data plane's whole part in sharing pins with peer instances
// (docs/SCALING.md): after a placement that made or moved a pin, the worker
// puts the change in its outbox (a bounded queue the peer service drains);
// pins from peers arrive as a `peerPins` command and are laid into the
// pool's table when the worker wakes. The worker never waits on a peer: a
// full outbox drops the change, counted.

/// A pin a worker made or moved, for the peer service.
public struct PinChange: Sendable {
    public var pool: UInt16 = 0
    public var reason: PinReason = .new
    public var key = AffinityKey(hi: 0, lo: 0)
    public var target = SocketAddress(ip: .v4(0), port: 0)
    /// Table seconds (the monotonic clock's) of the pin and last activity.
    public var pinnedSec: UInt32 = 0
    public var seenSec: UInt32 = 0
    /// When the worker made it (monotonic ms): the peer link's lag.
    public var madeAtMs: Millis = 0
}

/// A bounded single-producer (one worker) single-consumer (the peer
/// service) ring of pin changes, allocated once: a push is two atomic
/// loads, a copy and a store, and never blocks.
public final class PinOutbox: @unchecked Sendable {
    public let capacity: Int
    let buffer: UnsafeMutablePointer<PinChange>
    /// Next slot to read (the consumer's) and to write (the worker's);
    /// both only grow.
    let head = Atomic<Int>(0)
    let tail = Atomic<Int>(0)
    /// Changes dropped because the ring was full.
    public let dropped = Atomic<UInt64>(0)

    public init(capacity: Int) {
        precondition(capacity > 0, "an outbox needs room")
        self.capacity = capacity
        buffer = .allocate(capacity: capacity)
        buffer.initialize(repeating: PinChange(), count: capacity)
    }

    deinit {
        buffer.deinitialize(count: capacity)
        buffer.deallocate()
    }

    /// The worker's side. False (and counted) when full.
    @discardableResult
    public func push(_ change: PinChange) -> Bool {
        let t = tail.load(ordering: .relaxed)
        guard t - head.load(ordering: .acquiring) < capacity else {
            dropped.wrappingAdd(1, ordering: .relaxed)
            return false
        }
        buffer[t % capacity] = change
        tail.store(t + 1, ordering: .releasing)
        return true
    }

    /// The consumer's side: takes up to `max` changes, oldest first.
    public func drain(max: Int, into out: inout [PinChange]) {
        let h = head.load(ordering: .relaxed)
        let n = min(tail.load(ordering: .acquiring) - h, max)
        guard n > 0 else { return }
        for i in 0..<n { out.append(buffer[(h + i) % capacity]) }
        head.store(h + n, ordering: .releasing)
    }
}

extension Worker {
    /// After `place`: if it made or moved a pin, queue the change for peers.
    @inline(__always)
    func notePinChange(pool: Int, _ p: Placement, since tally: PinTally) {
        guard let outbox = channel.pinOutbox,
              let reason = pools[pool].balancer.pinReason(since: tally),
              let pin = pools[pool].balancer.outgoingPin(entry: p.entry) else { return }
        outbox.push(PinChange(pool: UInt16(pool), reason: reason, key: pin.key, target: pin.target,
                              pinnedSec: pin.pinnedSec, seenSec: pin.seenSec, madeAtMs: now))
    }

    /// A batch of pins from a peer (a `peerPins` command). A conflict this
    /// instance's pin won goes back out, so the peer ends up with it too.
    func applyPeerPins(pool: Int, pins: [PeerPin], clock: PeerClock) {
        guard pool >= 0 && pool < pools.count else { return }
        for pin in pins {
            switch pools[pool].balancer.applyPeerPin(pin, now: now, clock: clock) {
            case .stored, .replaced, .same: counters[.peerPinsApplied] += 1
            case .conflictTaken: counters[.peerConflicts] += 1
            case .conflictKept(let entry):
                counters[.peerConflicts] += 1
                if let outbox = channel.pinOutbox, let mine = pools[pool].balancer.outgoingPin(entry: entry) {
                    outbox.push(PinChange(pool: UInt16(pool), reason: .conflict, key: mine.key, target: mine.target,
                                          pinnedSec: mine.pinnedSec, seenSec: mine.seenSec, madeAtMs: now))
                }
            case .unknownTarget, .expired, .full: counters[.peerPinsIgnored] += 1
            }
        }
    }
}

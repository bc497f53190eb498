import Glibc
import Logging
import StickyCore

// h2c pools (docs/HTTP2.md): the copy engine feeds each connection's
// target→client bytes to its H2FrameTracker before they are sent, and
// writes one GOAWAY to the client at a frame boundary when the target is
// leaving or the connection has reached max_connection_age. Nothing here
// reads a payload, and nothing touches the client→target direction.

/// Why stickyd wrote a GOAWAY, for counters.
public enum GoawayCause: Int, Sendable, CaseIterable {
    /// The connection's target is leaving: strict drain, maint, down,
    /// removed, or a sticky drain's deadline.
    case drain
    /// The connection reached `max_connection_age` and its client's pin
    /// moved to a less loaded target.
    case age

    public var metricName: String {
        switch self {
        case .drain: return "drain"
        case .age: return "age"
        }
    }
}

/// The two frames a worker ever writes, encoded once at start: a send in
/// flight needs its bytes to stay put, and no frame is built per connection.
final class GoawayFrames {
    let memory: UnsafeMutableRawBufferPointer
    let drainBytes: Int
    let ageBytes: Int

    init() {
        let stride = H2Goaway.stickydFrameBytesMax
        memory = .allocate(byteCount: 2 * stride, alignment: 8)
        drainBytes = H2Goaway.encode(debug: H2Goaway.drainingDebug,
                                     into: UnsafeMutableRawBufferPointer(rebasing: memory[0..<stride]))
        ageBytes = H2Goaway.encode(debug: H2Goaway.connectionAgeDebug,
                                   into: UnsafeMutableRawBufferPointer(rebasing: memory[stride..<2 * stride]))
        precondition(drainBytes > 0 && ageBytes > 0, "a GOAWAY frame did not fit its buffer")
    }

    deinit { memory.deallocate() }

    func frame(_ cause: GoawayCause) -> UnsafeRawBufferPointer {
        switch cause {
        case .drain: return UnsafeRawBufferPointer(rebasing: memory[0..<drainBytes])
        case .age:
            let stride = H2Goaway.stickydFrameBytesMax
            return UnsafeRawBufferPointer(rebasing: memory[stride..<stride + ageBytes])
        }
    }
}

extension Worker {
    /// Asks for a GOAWAY on an open h2c connection: it goes at the next
    /// frame boundary, at once if the direction is idle at one. Never a
    /// second time, and not after the target's own GOAWAY.
    func requestGoaway(_ i: Int, _ cause: GoawayCause) {
        guard slots[i].state == .open, slots[i].h2c, slots[i].goaway == .none,
              !slots[i].h2.targetSentGoaway else { return }
        slots[i].goaway = cause == .age ? .wantedAge : .wantedDrain
        flush(i, down: true)
    }

    /// The copy engine's send for an h2c connection's target→client
    /// direction. Bytes are fed to the tracker before they go out; with a
    /// GOAWAY wanted, feeding stops at the first frame boundary, the bytes
    /// up to it are sent, and the GOAWAY follows them. Returns with
    /// `d.sending` set when it submitted a send.
    @inline(__always)
    func sendTracked(_ i: Int, _ d: inout Direction, to dst: Int32, buffers: BufferRing) {
        if d.trackedEnd == d.headOffset {
            // Everything read so far has been sent: the stream stands here.
            // Once the target has closed its side there is nothing to end.
            let injecting = slots[i].goaway.wanted && !d.sourceEOF
            if injecting && slots[i].h2.mayInject {
                let cause: GoawayCause = slots[i].goaway == .wantedAge ? .age : .drain
                slots[i].h2.recordGoawayWritten()
                slots[i].goaway = .sending
                slots[i].goawaySent = 0
                sendGoawayRest(i, dst, cause)
                d.sending = true
                return
            }
            guard d.queueHead != Direction.noBuffer else { return }
            let bid = Int(d.queueHead)
            let start = Int(d.trackedEnd)
            let n = slots[i].h2.advance(UnsafeRawBufferPointer(start: buffers.address(d.queueHead) + start,
                                                               count: Int(bufferLength[bid]) - start),
                                        stopAtBoundary: injecting)
            d.trackedEnd += UInt32(n)
            if let stop = slots[i].h2.stopReason {
                // Not HTTP/2, or a header it cannot trust: plain TCP from
                // here on, never broken for it. The tracker consumed all.
                counters.h2Untracked[Int(stop.rawValue)] += 1
                slots[i].h2c = false
                if slots[i].goaway.wanted { slots[i].goaway = .none }
            }
        }
        guard d.queueHead != Direction.noBuffer, d.trackedEnd > d.headOffset else { return }
        ring.send(dst, from: buffers.address(d.queueHead) + Int(d.headOffset),
                  count: Int(d.trackedEnd - d.headOffset), userData: userData(.sendClient, i))
        slots[i].inflight += 1
        d.sending = true
    }

    func sendGoawayRest(_ i: Int, _ dst: Int32, _ cause: GoawayCause) {
        let frame = goawayFrames.frame(cause)
        let done = Int(slots[i].goawaySent)
        ring.send(dst, from: frame.baseAddress! + done, count: frame.count - done,
                  userData: UserData(op: .sendGoaway, generation: slots[i].generation,
                                     index: UInt32(i) | (cause == .age ? Worker.ageBit : 0)).raw)
        slots[i].inflight += 1
    }

    /// Marks an age GOAWAY in the send's `user_data` index, so its
    /// completion knows which frame it was (slot indexes stay far below).
    static let ageBit: UInt32 = 1 << 31

    func onGoawaySent(_ i: Int, _ res: Int32, cause: GoawayCause) {
        slots[i].down.sending = false
        if slots[i].state == .closing { return }
        precondition(slots[i].state == .open, "GOAWAY sent on a slot that is not open")
        precondition(slots[i].goaway == .sending, "a GOAWAY completion with none being sent")
        guard res > 0 else {
            beginClose(i, .reset, reset: true)
            return
        }
        slots[i].goawaySent += UInt8(res)
        if Int(slots[i].goawaySent) < goawayFrames.frame(cause).count {
            slots[i].down.sending = true
            sendGoawayRest(i, slots[i].clientFD, cause)
            return
        }
        slots[i].goaway = .sent
        counters.goawaysSent[cause.rawValue] += 1
        pools[Int(slots[i].pool)].figures[Int(slots[i].placement.target)].goawaysSent &+= 1
        touch(i)
        flush(i, down: true)
    }

    /// After a target's state or the pool's membership changed: every open
    /// h2c connection whose target must now be left gets its GOAWAY.
    func endLeavingConnections(pool p: Int) {
        let pool = pools[p]
        guard pool.h2c else { return }
        for i in 0..<slotCount where slots[i].state == .open && slots[i].h2c && slots[i].pool == Int32(p) {
            if pool.mustLeave(target: Int(slots[i].placement.target)) { requestGoaway(i, .drain) }
        }
    }

    // MARK: - max_connection_age

    /// When connection `i` is next checked for its age: the pool's
    /// `max_connection_age` with ±10% jitter (`PoolConfig.connectionAgeMs`,
    /// drawn from the worker's `SplitMix64`), so channels opened together
    /// do not all end together.
    func ageCheckTime(_ i: Int, pool: WorkerPool) -> Millis {
        let age = pool.maxConnectionAgeMs
        guard age > 0 else { return 0 }
        return now + PoolConfig.connectionAgeMs(age, random: jitter.next())
    }

    /// The tick's check: a connection past its age has its client's pin
    /// re-checked. Only a pin on an overloaded target moves (reason `age`);
    /// then the connection ends with a GOAWAY and the client's next one
    /// goes to its new pin. Otherwise it is checked again one age later.
    func checkConnectionAges() {
        guard pools.contains(where: { $0.maxConnectionAgeMs > 0 }) else { return }
        for i in 0..<slotCount where slots[i].state == .open && slots[i].h2c && slots[i].ageCheckAt > 0 {
            guard now >= slots[i].ageCheckAt else { continue }
            let pool = pools[Int(slots[i].pool)]
            slots[i].ageCheckAt = slots[i].goaway == .none ? ageCheckTime(i, pool: pool) : 0
            guard slots[i].goaway == .none else { continue }
            if pool.balancer.rebalanceForAge(&slots[i].placement, client: slots[i].client, now: now) {
                slots[i].ageCheckAt = 0
                requestGoaway(i, .age)
            }
        }
    }
}

import Glibc
import Logging
import StickyCore

// Step 7, copy engine: a multishot recv into the provided-buffer ring,
// a FIFO of buffers per direction, one send in flight per direction.

extension Worker {
    func armRecv(_ i: Int, client: Bool) {
        let fd = client ? slots[i].clientFD : slots[i].backendFD
        ring.recvMultishot(fd, bufferGroup: BufferRing.group, userData: userData(client ? .recvClient : .recvBackend, i))
        slots[i].inflight += 1
        if client { slots[i].up.receiving = true } else { slots[i].down.receiving = true }
    }

    /// Queued bytes above which a direction stops receiving: bounds what
    /// one slow reader can pin of the shared ring (128 KiB, whatever the
    /// buffer size), while a fast one always has a gathered send's worth.
    static let queuedBytesHighWater = 128 * 1024

    /// `queuedBytesHighWater` in buffers of `bufferSize` bytes: at least 2,
    /// so a send and a receive overlap; at most a gathered send's vectors.
    static func queueHighWater(bufferSize: Int) -> UInt16 {
        UInt16(max(2, min(GatherArea.vectorsMax, queuedBytesHighWater / max(1, bufferSize))))
    }

    func onRecv(_ i: Int, client: Bool, _ res: Int32, buffer: UInt16?, more: Bool) {
        guard let buffers else { preconditionFailure("recv completion on a worker without a buffer ring") }
        precondition(slots[i].state == .open || slots[i].state == .closing, "recv on a slot that is neither open nor closing")
        let down = !client
        var d = down ? slots[i].down : slots[i].up
        if !more { d.receiving = false }
        var outcome: CloseReason = .none
        if let bid = buffer {
            // A buffer taken is recycled or queued whatever the slot's
            // state, or the ring would lose it.
            buffers.taken()
            if res > 0 && slots[i].state == .open {
                bufferLength[Int(bid)] = UInt32(res)
                bufferNext[Int(bid)] = Direction.noBuffer
                if d.queueTail == Direction.noBuffer { d.queueHead = bid } else { bufferNext[Int(d.queueTail)] = bid }
                d.queueTail = bid
                d.queuedBuffers += 1
            } else {
                buffers.recycle(bid)
                resourcesFreed = true
            }
        } else if res == 0 {
            d.sourceEOF = true
        } else if res == -ENOBUFS {
            d.starved = true
            counters[.bufferStarvations] += 1
            waiting.append((Int32(i), slots[i].generation, down))
        } else if res < 0 && res != -ECANCELED {
            outcome = .reset
        }
        if down { slots[i].down = d } else { slots[i].up = d }
        guard slots[i].state == .open else { return }
        if outcome != .none {
            beginClose(i, outcome, reset: true)
            return
        }
        if res > 0 { touch(i) }
        flush(i, down: down)
    }

    /// Sends the head of a direction's queue if nothing is in flight, passes
    /// EOF on once the queue is empty, and applies receive backpressure.
    func flush(_ i: Int, down: Bool) {
        guard let buffers else { preconditionFailure("copy engine without a buffer ring") }
        guard slots[i].state == .open else { return }
        var d = down ? slots[i].down : slots[i].up
        let dst = down ? slots[i].clientFD : slots[i].backendFD
        if d.awaitingWritable {
            // A send waits for room (onSend); onWritable flushes again.
        } else if !d.sending && down && slots[i].h2c {
            sendTracked(i, &d, to: dst, buffers: buffers)
        } else if !d.sending && d.queueHead != Direction.noBuffer {
            let bid = d.queueHead
            let op: Op = down ? .sendClient : .sendBackend
            if bufferNext[Int(bid)] == Direction.noBuffer {
                ring.send(dst, from: buffers.address(bid) + Int(d.headOffset),
                          count: Int(bufferLength[Int(bid)] - d.headOffset), userData: userData(op, i))
            } else {
                sendGathered(i, down: down, d, to: dst, buffers: buffers, userData: userData(op, i))
            }
            slots[i].inflight += 1
            d.sending = true
        }
        if !d.sending && d.queueHead == Direction.noBuffer && d.sourceEOF && !d.finished {
            shutdown(dst, Int32(SHUT_WR))
            d.finished = true
        }
        // Backpressure: stop receiving while the queue is long; resume when
        // it has drained.
        if d.queuedBuffers >= queueHighWater && d.receiving && !d.recvPaused {
            d.recvPaused = true
            ring.cancel(userData(down ? .recvBackend : .recvClient, i), userData: userData(.cancel, i))
            slots[i].inflight += 1
        } else if !d.receiving && !d.sourceEOF && !d.starved && d.queuedBuffers == 0 {
            d.recvPaused = false
            if down { slots[i].down = d } else { slots[i].up = d }
            armRecv(i, client: !down)
            d = down ? slots[i].down : slots[i].up
        }
        if down { slots[i].down = d } else { slots[i].up = d }
        if slots[i].up.finished && slots[i].down.finished { beginClose(i, .done) }
    }

    /// One sendmsg over the queue from its head (up to
    /// `GatherArea.vectorsMax` buffers): several buffers queue up whenever
    /// more arrived in one loop turn than one send took.
    func sendGathered(_ i: Int, down: Bool, _ d: Direction, to dst: Int32, buffers: BufferRing, userData: UInt64) {
        guard let gather else { preconditionFailure("copy engine without a gather area") }
        let message = gather.message(i, down: down)
        let vectors = gather.vectors(i, down: down)
        var n = 0
        var bid = d.queueHead
        var offset = Int(d.headOffset)
        while bid != Direction.noBuffer && n < GatherArea.vectorsMax {
            vectors[n] = iovec(iov_base: buffers.address(bid) + offset, iov_len: Int(bufferLength[Int(bid)]) - offset)
            offset = 0
            n += 1
            bid = bufferNext[Int(bid)]
        }
        message.pointee = msghdr()
        message.pointee.msg_iov = vectors
        message.pointee.msg_iovlen = n
        ring.sendmsg(dst, message, userData: userData)
    }

    func onSend(_ i: Int, toClient: Bool, _ res: Int32) {
        guard let buffers else { preconditionFailure("send completion on a worker without a buffer ring") }
        precondition(slots[i].state == .open || slots[i].state == .closing, "send on a slot that is neither open nor closing")
        let down = toClient
        var d = down ? slots[i].down : slots[i].up
        d.sending = false
        if res > 0 {
            d.bytes += UInt64(res)
            // A gathered send may have taken several buffers, the last one
            // perhaps in part.
            var left = UInt32(res)
            while left > 0 {
                let bid = d.queueHead
                precondition(bid != Direction.noBuffer, "a send reported more bytes than were queued")
                let rest = bufferLength[Int(bid)] - d.headOffset
                if left < rest {
                    d.headOffset += left
                    break
                }
                left -= rest
                d.queueHead = bufferNext[Int(bid)]
                if d.queueHead == Direction.noBuffer { d.queueTail = Direction.noBuffer }
                d.queuedBuffers -= 1
                d.headOffset = 0
                d.trackedEnd = 0
                buffers.recycle(bid)
                resourcesFreed = true
            }
        }
        if down { slots[i].down = d } else { slots[i].up = d }
        guard slots[i].state == .open else { return }
        if res == -EAGAIN {
            // The ring gives up on a send whose poll fired but found the
            // socket still full (it then issues it blocking, and a
            // non-blocking socket says EAGAIN). Nothing was sent: wait for
            // room, then send again from where it stands.
            if down { slots[i].down.awaitingWritable = true } else { slots[i].up.awaitingWritable = true }
            armWritable(i, client: down)
            return
        }
        if res < 0 {
            beginClose(i, .reset, reset: true)
            return
        }
        touch(i)
        flush(i, down: down)
    }
}

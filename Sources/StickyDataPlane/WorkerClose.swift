import Glibc
import Logging
import StickyCore

// Steps 8 and 10: closing a connection, giving back its resources, the
// access log record, and the slot's return to the free list.

extension Worker {
    /// Starts closing a connection: cancels every operation on each of its
    /// descriptors, then closes them, each pair as one hard-linked chain.
    func beginClose(_ i: Int, _ reason: CloseReason, reset: Bool = false) {
        // Closing twice is allowed (an error on both sides in one batch);
        // a free slot has nothing to close and reaching one is a bug.
        precondition(slots[i].state != .free, "closing a free slot")
        if slots[i].state == .closing { return }
        slots[i].enter(.closing)
        slots[i].closeReason = reason
        idleRemove(i)
        // Nothing in flight for the slot means no operation in the ring holds
        // either socket (the common end of a copy-engine connection: both
        // recvs saw EOF and every send completed), so a plain close does; the
        // ASYNC_CANCEL would cost an SQE and a CQE a socket for nothing.
        let cancel = slots[i].inflight > 0
        if slots[i].clientFD >= 0 {
            cancelAndClose(slots[i].clientFD, i, reset: reset, cancel: cancel)
            slots[i].clientFD = -1
        }
        if slots[i].backendFD >= 0 {
            cancelAndClose(slots[i].backendFD, i, reset: reset, cancel: cancel)
            slots[i].backendFD = -1
        }
    }

    /// A pending poll or recv holds a reference to the socket, so close(2)
    /// alone would leave it open: cancel first, then close, hard-linked so
    /// the close runs even when there was nothing to cancel.
    func cancelAndClose(_ fd: Int32, _ i: Int, reset: Bool, cancel: Bool = true) {
        if reset { Sockets.setResetOnClose(fd) }
        descriptors -= 1
        if cancel {
            ring.cancelAndClose(fd, cancelUserData: userData(.cancel, i), closeUserData: userData(.close, i))
            slots[i].inflight += 2
        } else {
            ring.close(fd, userData: userData(.close, i))
            slots[i].inflight += 1
        }
    }

    /// Gives back a finished direction's pipe or queued buffers.
    func returnResources(_ d: Direction) {
        if let pipes, d.pipe >= 0 {
            if d.pipeBytes == 0 { pipes.release(d.pipe) } else { pipes.discard(d.pipe) }
            resourcesFreed = true
        }
        if let buffers, d.queueHead != Direction.noBuffer {
            var b = d.queueHead
            while b != Direction.noBuffer {
                let next = bufferNext[Int(b)]
                buffers.recycle(b)
                b = next
            }
            resourcesFreed = true
        }
    }

    // MARK: - Access log

    /// Appends the closing connection to the access log's array: a store of
    /// plain fields, no allocation.
    func recordAccess(_ i: Int) {
        guard let log = accessLog else { return }
        let r = log.next()
        let pool = Int(slots[i].pool)
        r.pointee.closeUnixMs = now
        r.pointee.durationMs = now - slots[i].acceptedMs
        r.pointee.client = SocketAddress(ip: slots[i].client, port: slots[i].clientPort)
        let t = Int(slots[i].logTarget)
        let target = t >= 0 ? pools[pool].balancer.address(ofTarget: t) : nil
        r.pointee.hasTarget = target != nil
        if let target { r.pointee.target = target }
        r.pointee.pool = slots[i].pool
        r.pointee.bytesUp = slots[i].up.bytes
        r.pointee.bytesDown = slots[i].down.bytes
        r.pointee.reason = slots[i].closeReason.staticName
        r.pointee.withPlacement = settings.accessLogPlacement
        r.pointee.placement = slots[i].logKind
        r.pointee.moveReason = slots[i].logMove
    }

    func flushAccessLog() {
        guard let log = accessLog else { return }
        log.flush()
        counters[.accessLogLines] = log.lines
        counters[.accessLogDrops] = log.dropped
    }

    /// Returns a slot whose every operation has completed to the free list.
    func release(_ i: Int) {
        precondition(slots[i].inflight == 0, "slot released with operations in flight")
        precondition(slots[i].clientFD < 0, "slot released with its client descriptor open")
        precondition(slots[i].backendFD < 0, "slot released with its backend descriptor open")
        let pool = Int(slots[i].pool)
        if slots[i].placed {
            pools[pool].balancer.closed(slots[i].placement, client: slots[i].client, now: now)
            let t = Int(slots[i].placement.target)
            pools[pool].figures[t].bytesUp &+= slots[i].up.bytes
            pools[pool].figures[t].bytesDown &+= slots[i].down.bytes
            // The client left after stickyd's GOAWAY, as asked (a cut at a
            // deadline or an idle timeout is counted apart).
            if slots[i].goaway == .sent && (slots[i].closeReason == .done || slots[i].closeReason == .reset) {
                pools[pool].figures[t].goawayClosed &+= 1
            }
        }
        if accessLog != nil { recordAccess(i) }
        counters[.bytesUp] &+= slots[i].up.bytes
        counters[.bytesDown] &+= slots[i].down.bytes
        counters.closed[Int(slots[i].closeReason.rawValue)] += 1
        returnResources(slots[i].up)
        returnResources(slots[i].down)
        slots[i].generation &+= 1
        slots[i].enter(.free)
        slots[i].next = freeHead
        freeHead = Int32(i)
        counters[.active] -= 1
        // Descriptors came back: parked connects first, they hold clients.
        retryParkedConnects()
        // A free slot: then serve connections accepted while full, oldest
        // first, until one takes the slot (a client that left or is refused
        // takes none). Also while stopping: they were accepted, so they are
        // served within the shutdown deadline like any open connection.
        serveBacklog()
        if acceptBacklog.isEmpty { resumeAccepting() }
    }
}

import Glibc
import Logging
import StickyCore

// Steps 5 and 6: placement, the connect to the target, and failover.

extension Worker {
    /// Places the client (step 5) and connects to its target (step 6).
    func connect(_ i: Int) {
        precondition(slots[i].state == .connecting, "connect from a slot that is not connecting")
        precondition(slots[i].backendFD < 0, "connect with a backend socket already open")
        let pool = pools[Int(slots[i].pool)]
        let tally = pool.balancer.pinTally
        guard let p = pool.balancer.place(client: slots[i].client, now: now, excluding: slots[i].excluded) else {
            beginClose(i, .noTarget)
            return
        }
        notePinChange(pool: Int(slots[i].pool), p, since: tally)
        slots[i].logTarget = p.target
        if p.kind != .hit || slots[i].logKind == .none {
            slots[i].logKind = p.kind
            slots[i].logMove = p.moveReason
        }
        let t = Int(p.target)
        precondition(pool.addressLengths[t] > 0, "placed on a target with no address")
        let family = pool.addresses[t].ss_family
        let fd = descriptorsLeft > 0 ? Sockets.stream(family: Int32(family)) : -1
        guard fd >= 0 else {
            // No descriptor for the backend: give back what place() counted
            // and park the client (it keeps its connection) until one frees,
            // up to the connect timeout; accepting pauses meanwhile.
            pool.balancer.connectFailed(p, client: slots[i].client, now: now)
            counters[.descriptorExhaustion] += 1
            if now - slots[i].lastActive >= settings.connectTimeoutMs {
                beginClose(i, .resources, reset: true)
                return
            }
            parkedConnects.append((Int32(i), slots[i].generation))
            pauseAccepting()
            armAcceptRetry()
            return
        }
        descriptors += 1
        Sockets.setNoDelay(fd)
        slots[i].placement = p
        slots[i].backendFD = fd
        slots[i].connectAttempts += 1
        ring.connect(fd, to: pool.addresses + t, length: pool.addressLengths[t], timeout: connectTimeout,
                     userData: userData(.connect, i), timeoutUserData: userData(.connectTimeout, i))
        slots[i].inflight += 2
    }

    func onConnect(_ i: Int, _ res: Int32) {
        // A connect cancelled by the close already under way.
        if slots[i].state == .closing { return }
        precondition(slots[i].state == .connecting, "connect completed on a slot that is not connecting")
        let pool = pools[Int(slots[i].pool)]
        if res == 0 {
            slots[i].enter(.open)
            slots[i].placed = true
            pool.figures[Int(slots[i].placement.target)].connections &+= 1
            pool.balancer.opened(slots[i].placement, client: slots[i].client, now: now)
            slots[i].lastActive = now
            guard sendProxyPreamble(i) else { return }
            startForwarding(i)
            return
        }
        // A refused or timed-out connect: this target failed this client.
        // -ECANCELED here means the linked timeout fired first.
        if res == -ECANCELED { counters[.connectTimeouts] += 1 } else { counters[.connectErrors] += 1 }
        close(slots[i].backendFD)
        slots[i].backendFD = -1
        descriptors -= 1
        pool.balancer.connectFailed(slots[i].placement, client: slots[i].client, now: now)
        let failed = Int(slots[i].placement.target)
        if failed < TargetMask.capacity { slots[i].excluded.insert(failed) }
        // Counted for metrics and passive detection (a preallocated array, no
        // allocation). The failover below is this connection's own remedy;
        // the budget runs from accept (PROXY header time included), so a
        // client is not kept waiting on a dead pool.
        if failed < TargetMask.capacity { pool.figures[failed].connectFailures &+= 1 }
        if slots[i].connectAttempts <= Int32(settings.connectRetries) && !stopping
            && now - slots[i].acceptedMs < settings.connectBudgetMs {
            counters[.connectRetries] += 1
            connect(i)
        } else {
            beginClose(i, .connectFailed)
        }
    }

    /// Step 7: both sides are connected and the preamble is written; the
    /// connection joins the idle list and its engine arms both directions.
    func startForwarding(_ i: Int) {
        precondition(slots[i].state == .open, "forwarding a slot that is not open")
        idleAppend(i)
        let pool = Int(slots[i].pool)
        slots[i].engine = settings.pools[pool].engine
        if pools[pool].h2c {
            slots[i].h2c = true
            slots[i].h2 = H2FrameTracker()
            slots[i].ageCheckAt = ageCheckTime(i, pool: pools[pool])
        }
        switch slots[i].engine {
        case .splice:
            armPoll(i, client: true)
            armPoll(i, client: false)
        case .copy:
            armRecv(i, client: true)
            armRecv(i, client: false)
        }
    }

    /// Connects parked for want of a descriptor try again, oldest first.
    func retryParkedConnects() {
        guard !parkedConnects.isEmpty else { return }
        let list = parkedConnects
        parkedConnects.removeAll(keepingCapacity: true)
        for (index, generation) in list {
            let i = Int(index)
            guard slots[i].generation == generation, slots[i].state == .connecting, slots[i].backendFD < 0 else { continue }
            connect(i)
        }
    }
}

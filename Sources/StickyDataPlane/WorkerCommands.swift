import Glibc
import Logging
import StickyCore

// Step 9 and the control channel: the tick (idle sweep, affinity expiry,
// drain cuts, reports) and the commands the control plane posts.

extension Worker {
    func onWake() {
        armWake()
        for command in channel.take() {
            switch command {
            case .stop:
                beginStop()
            case .setTargets(let pool, let targets, let states, let maglev):
                pools[pool].setTargets(targets, states: states, maglev: maglev)
                endLeavingConnections(pool: pool)
            case .setState(let pool, let address, let state):
                pools[pool].balancer.setState(address: address, state: state)
                endLeavingConnections(pool: pool)
            case .setPanicked(let pool, let targets):
                pools[pool].balancer.setPanicked(targets)
            case .closeTarget(let pool, let address, let graceMs, let graceful):
                cutTarget(pool: pool, address: address, graceMs: graceMs, graceful: graceful)
            case .clearAffinity(let pool, let scope, let request):
                var removed = 0
                for p in pools.indices where pool == nil || pool == p {
                    removed += pools[p].balancer.clearAffinity(scope, now: now)
                }
                if request != 0 { publishReport(nil, entries: false, request: request, cleared: removed) }
            case .setTimeouts(let connectMs, let idleMs, let shutdownMs, let connectBudgetMs):
                // The connect timespec is read at submission, so later
                // connects use the new value; the idle sweep reads settings.
                settings.connectTimeoutMs = connectMs
                settings.idleTimeoutMs = idleMs
                settings.shutdownTimeoutMs = shutdownMs
                settings.connectBudgetMs = connectBudgetMs
                connectTimeout.set(ms: connectMs)
            case .setLimits(let connectionsMax, let connectRetries):
                // Slots are made once, at start: a higher share waits for a
                // restart (the control plane says so). A lower one takes
                // effect as connections close; none is cut for it.
                admitMax = min(max(1, connectionsMax), slotCount)
                settings.connectRetries = connectRetries
                serveBacklog()
                resumeAccepting()
            case .setAffinityTimeout(let pool, let timeoutMs):
                pools[pool].balancer.setAffinityTimeout(ms: timeoutMs)
            case .report(let query, let entries, let request):
                publishReport(query, entries: entries, request: request)
            case .handoffPause(let box):
                beginHandoff(box)
            case .handoffResume:
                endHandoff()
            case .peerPins(let pool, let pins, let clock):
                applyPeerPins(pool: pool, pins: pins, clock: clock)
            case .predecessorLoads(let pool, let loads):
                pools[pool].setPredecessorLoads(loads)
            }
        }
    }

    func onTick() {
        armTick()
        channel.heartbeat.wrappingAdd(1, ordering: .relaxed)
        for pool in pools { pool.balancer.expire(now: now, slots: pool.expiryBudget) }
        checkConnectionAges()
        if !cutList.isEmpty {
            var keep: [(slot: Int32, generation: UInt32, deadline: Millis)] = []
            for c in cutList {
                let i = Int(c.slot)
                guard slots[i].generation == c.generation, slots[i].state == .open else { continue }
                if now >= c.deadline { beginClose(i, .drainDeadline, reset: true) } else { keep.append(c) }
            }
            cutList = keep
        }
        flushAccessLog()
        if tickCount % 4 == 0 { publishReport(nil, entries: false) }
        tickCount &+= 1
        var h = idleHead
        while h >= 0 {
            let i = Int(h)
            guard now - slots[i].lastActive >= settings.idleTimeoutMs else { break }
            h = slots[i].next
            beginClose(i, .idleTimeout)
        }
        if stopping && now >= stopDeadline {
            // Deadline passed: what is left is cut with a reset.
            var h = idleHead
            while h >= 0 {
                let i = Int(h)
                h = slots[i].next
                beginClose(i, .shutdown, reset: true)
            }
            for i in 0..<slotCount where slots[i].state == .connecting || slots[i].state == .proxyHeader {
                beginClose(i, .shutdown, reset: true)
            }
            closeBacklog()
        }
    }

    func beginStop() {
        guard !stopping else { return }
        stopping = true
        stopDeadline = now + settings.shutdownTimeoutMs
        for l in listenerFDs.indices where listenerFDs[l] >= 0 {
            // A pending accept holds the listening socket open too.
            let ignore = UserData(op: .ignore, generation: 0, index: 0).raw
            ring.cancelAndClose(listenerFDs[l], cancelUserData: ignore, closeUserData: ignore)
            listenerFDs[l] = -1
            acceptArmed[l] = false
        }
        // Clients in the backlog were accepted: they are served as slots
        // free up (`release`), and only what is left at the deadline is cut.
    }

    /// A drain deadline passed. Plain TCP gets FIN both ways now (clients
    /// see an orderly end, and HTTP/2 peers get to finish a frame). After a
    /// sticky drain (`graceful`), the target's pins are dropped, so its
    /// clients are placed elsewhere on their next connection, and an h2c
    /// connection gets a GOAWAY instead of a FIN. Whatever is still open
    /// `graceMs` later is reset.
    func cutTarget(pool p: Int, address: SocketAddress, graceMs: Millis, graceful: Bool) {
        let pool = pools[p]
        guard let t = pool.target(of: address) else { return }
        if graceful { pool.balancer.setState(address: address, state: .draining(.strict)) }
        for i in 0..<slotCount where slots[i].pool == Int32(p) && slots[i].placement.target == Int32(t) {
            switch slots[i].state {
            case .open:
                if slots[i].h2c { pool.figures[t].openAtDeadline &+= 1 }
                if graceful && slots[i].h2c {
                    requestGoaway(i, .drain)
                } else {
                    shutdown(slots[i].clientFD, Int32(SHUT_WR))
                    shutdown(slots[i].backendFD, Int32(SHUT_WR))
                }
                counters[.drainCuts] += 1
                cutList.append((Int32(i), slots[i].generation, now + graceMs))
            case .connecting:
                beginClose(i, .drainDeadline, reset: true)
            case .free, .closing, .proxyHeader:
                break
            }
        }
    }

}

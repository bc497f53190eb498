import Glibc
import Logging
import StickyCore

// Step 2 of docs/ARCHITECTURE.md: accept, the backlog of clients accepted
// while every slot was busy, and the descriptor budget that pauses it.

extension Worker {
    /// Descriptors a multishot accept may take in one go: it drains the
    /// whole accept queue, which the listener backlog bounds.
    var multishotHeadroom: Int { settings.acceptQueueMax + 64 }

    func armAccept(_ l: Int) {
        guard !acceptArmed[l], listenerFDs[l] >= 0 else { return }
        // Near the descriptor budget, one accept at a time: a multishot
        // accept would take the whole queue, and descriptors held by
        // clients we cannot yet serve leave none for backends or pipes.
        ring.accept(listenerFDs[l], multishot: descriptorsLeft > multishotHeadroom,
                    userData: UserData(op: .accept, generation: 0, index: UInt32(l)).raw)
        acceptArmed[l] = true
    }

    func onAccept(_ l: Int, _ res: Int32, more: Bool) {
        let last = !more
        if last { acceptArmed[l] = false }
        // A hand-over waits for the last accept; export only once this
        // completion's own client is placed, or its pin would be missed.
        defer { if last && handoffBox != nil { completeHandoffExport() } }
        if res >= 0 {
            counters[.accepted] += 1
            descriptors += 1
            admit(res, listener: l)
            if descriptorsLeft < Worker.descriptorReserve {
                // Near the budget: pause before the kernel hands us clients
                // we could not give a backend socket.
                if !acceptPaused { counters[.descriptorExhaustion] += 1 }
                pauseAccepting()
            }
        } else if res == -EMFILE || res == -ENFILE || res == -ENOBUFS || res == -ENOMEM {
            // Out of descriptors or memory: stop accepting for a while
            // instead of spinning on the error, and say so (rarely).
            counters[.descriptorExhaustion] += 1
            if counters[.descriptorExhaustion] & (counters[.descriptorExhaustion] - 1) == 0 {
                logger.warning("accept paused: out of descriptors or memory",
                               metadata: ["errno": "\(-res)", "times": "\(counters[.descriptorExhaustion])"])
            }
            pauseAccepting()
            armAcceptRetry()
            return
        } else if res != -ECANCELED {
            counters[.acceptErrors] += 1
        }
        if !acceptArmed[l] && !acceptPaused && !stopping { armAccept(l) }
    }

    func armAcceptRetry() {
        guard !acceptRetryArmed else { return }
        acceptRetryArmed = true
        ring.timeout(acceptRetryTimeout, userData: UserData(op: .acceptRetry, generation: 0, index: 0).raw)
    }

    func pauseAccepting() {
        guard !acceptPaused else { return }
        acceptPaused = true
        counters[.acceptPauses] += 1
        for l in listenerFDs.indices where acceptArmed[l] {
            ring.cancel(UserData(op: .accept, generation: 0, index: UInt32(l)).raw,
                        userData: UserData(op: .cancelAccept, generation: 0, index: UInt32(l)).raw)
        }
    }

    /// Descriptors left in this worker's budget for sockets (Int.max
    /// without a budget). A few pipes' worth is always held back: pipes are
    /// how bytes move, and if sockets could take every descriptor, all
    /// connections would wait for a pipe that can never be made.
    var descriptorsLeft: Int {
        guard settings.descriptorBudget > 0 else { return Int.max }
        let pipesHeld = max(pipes?.openCount ?? 0, pipes == nil ? 0 : Worker.pipesReserved)
        return settings.descriptorBudget - descriptors - 2 * pipesHeld
    }

    /// Descriptors left for a new pipe, which may use the held-back share.
    var pipeDescriptorsLeft: Int {
        guard settings.descriptorBudget > 0 else { return Int.max }
        return settings.descriptorBudget - descriptors - 2 * (pipes?.openCount ?? 0)
    }

    static let pipesReserved = 4

    func resumeAccepting() {
        // Hysteresis: resume only with twice the reserve free, so a worker at
        // its descriptor budget does not flap between pausing and accepting.
        // The backlog first: new clients must not overtake ones already waiting.
        guard acceptPaused, !handoffHeld, slotAvailable, !stopping, parkedConnects.isEmpty, acceptBacklog.isEmpty,
              descriptorsLeft >= 2 * Worker.descriptorReserve else { return }
        acceptPaused = false
        for l in listenerFDs.indices { armAccept(l) }
    }

    /// Takes an accepted descriptor into a slot, or holds it until a slot
    /// and a descriptor for its backend are free: a client admitted without
    /// room for its backend could only wait while holding a slot.
    func admit(_ fd: Int32, listener l: Int) {
        let pool = settings.listeners[l].pool
        guard let peer = Sockets.peer(of: fd) else {
            // The client already went away (ENOTCONN).
            close(fd)
            descriptors -= 1
            return
        }
        let proxy = settings.listeners[l].proxy
        if let proxy, !proxy.from.containsAddress(peer.ip) {
            // Its header could claim any client address: refuse it before
            // it costs a slot or a place in the backlog.
            close(fd)
            descriptors -= 1
            proxyRejected(.notAllowed, peer: peer.ip)
            return
        }
        guard slotAvailable, descriptorsLeft >= 1 else {
            if acceptBacklog.count < settings.acceptBacklogMax {
                acceptBacklog.append(fd)
                acceptBacklogListener.append(l)
            } else {
                counters[.rejectedFull] += 1
                Sockets.setResetOnClose(fd)
                close(fd)
                descriptors -= 1
            }
            pauseAccepting()
            return
        }
        let i = Int(freeHead)
        precondition(slots[i].state == .free, "a slot on the free list is in use")
        freeHead = slots[i].next
        let generation = slots[i].generation
        slots[i] = Slot()
        slots[i].generation = generation
        slots[i].enter(proxy != nil ? .proxyHeader : .connecting)
        slots[i].clientFD = fd
        slots[i].pool = Int32(pool)
        slots[i].client = peer.ip
        slots[i].clientPort = peer.port
        slots[i].acceptedMs = now
        slots[i].lastActive = now
        slots[i].listener = Int32(l)
        counters[.active] += 1
        if !slotAvailable { pauseAccepting() }
        if proxy != nil {
            armProxyRecv(i)
            return
        }
        connect(i)
    }

    /// Admits connections accepted while full, oldest first, while a slot
    /// and a descriptor are free.
    func serveBacklog() {
        while !acceptBacklog.isEmpty && slotAvailable && descriptorsLeft >= 1 {
            let fd = acceptBacklog.removeFirst()
            let listener = acceptBacklogListener.removeFirst()
            admit(fd, listener: listener)
        }
    }

    /// Resets the clients still waiting in the backlog (the shutdown deadline).
    func closeBacklog() {
        for fd in acceptBacklog {
            Sockets.setResetOnClose(fd)
            close(fd)
        }
        descriptors -= acceptBacklog.count
        acceptBacklog.removeAll()
        acceptBacklogListener.removeAll()
    }
}

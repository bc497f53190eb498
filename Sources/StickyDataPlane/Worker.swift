import CURing
import CURingShim
import Glibc
import Logging
import StickyCore

/// What one worker needs to run. Built by the daemon from the config.
public struct WorkerSettings: Sendable {
    public struct Listener: Sendable {
        public var fd: Int32
        public var pool: Int
        /// Every connection must open with a PROXY header (docs/PROXY.md).
        public var proxy: ProxyAcceptConfig?
        // No default for `proxy`: every place that makes listeners must say,
        // or an adopted listener would silently stop requiring the header.
        public init(fd: Int32, pool: Int, proxy: ProxyAcceptConfig?) {
            self.fd = fd
            self.pool = pool
            self.proxy = proxy
        }
    }

    public var index = 0
    public var engine: ForwardingEngine = .splice
    public var listeners: [Listener] = []
    public var pools: [PoolSetup] = []
    public var connectionsMax = 1024
    public var pipePoolSize = 256
    public var pipeSizeBytes = 65536
    public var bufferCount = 1024
    public var bufferSizeBytes = 16384
    public var connectTimeoutMs: Millis = 3000
    public var idleTimeoutMs: Millis = 300_000
    public var shutdownTimeoutMs: Millis = 60_000
    public var connectRetries = 2
    /// Health: no further connect attempt starts this long after accept.
    public var connectBudgetMs: Millis = 5_000
    public var ringEntries: UInt32 = 1024
    /// Accepted connections held while every slot is busy, before the
    /// listener is paused; beyond it a connection is closed and counted.
    public var acceptBacklogMax = 256
    /// Bounded load over the pool's connections on every worker (true with
    /// more than one worker), rather than this worker's alone.
    public var sharePoolLoads = false
    /// Descriptors this worker may hold (its share of RLIMIT_NOFILE after
    /// what the process already uses); 0 means no budget is enforced.
    public var descriptorBudget = 0
    /// The largest listener backlog: how many connections one multishot
    /// accept can hand over at once.
    public var acceptQueueMax = 4096
    /// Access log: one line per closed connection, nil for none.
    public var accessLog: AccessLogSink?
    /// Per pool: the PROXY header written to its targets, or nil for none.
    public var poolSendProxy: [ProxyVersion?] = []
    /// Upgrade (successor): pins taken over from the old process, imported
    /// before the first accept; and whether to start with accepting held
    /// until the old process lets go of the listeners.
    public var affinityImport: AffinityExport?
    public var startHeld = false

    public init() {}
}

/// Counters a worker keeps; the control plane reads copies. Each scalar is
/// a `WorkerCounter` (StickyCore), named and described once in
/// `CounterTable`; the families are indexed by this module's reason enums.
public struct WorkerCounters: Sendable {
    public var values = CounterValues()
    /// Connections closed, by `CloseReason`.
    public var closed: [UInt64] = Array(repeating: 0, count: CloseReason.allCases.count)
    /// Connections closed for their PROXY header, by `ProxyRejection`.
    public var proxyRejected: [UInt64] = Array(repeating: 0, count: ProxyRejection.allCases.count)
    public init() {}

    public subscript(_ counter: WorkerCounter) -> UInt64 {
        get { values[counter] }
        set { values[counter] = newValue }
    }

    /// Adds another worker's figures (the control plane's sums), wrapping.
    public mutating func add(_ other: WorkerCounters) {
        values.add(other.values)
        for k in closed.indices { closed[k] &+= other.closed[k] }
        for k in proxyRejected.indices { proxyRejected[k] &+= other.proxyRejected[k] }
    }
}

/// One event loop: one ring, one thread, its own listeners (one per
/// configured listener, in a SO_REUSEPORT group), its own connections.
///
/// The loop reaps a batch of completions into a local array and advances the
/// CQ first, then handles them: a handler may submit, but never runs another
/// handler, so nothing recurses.
public final class Worker {
    public typealias Policy = AffinityBalancer

    var settings: WorkerSettings
    let ring: Ring
    let logger: Logger
    let slots: UnsafeMutablePointer<Slot>
    let slotCount: Int
    var freeHead: Int32 = -1
    var idleHead: Int32 = -1
    var idleTail: Int32 = -1
    var policies: [Policy]
    /// Target addresses by pool and target slot (pool * 64 + slot), kept in
    /// stable memory so a connect SQE can point at them.
    let targetAddresses: UnsafeMutablePointer<sockaddr_storage>
    var targetAddressLengths: [socklen_t]
    /// Per pool and target slot, for reports.
    var targetBytesUp: [UInt64]
    var targetBytesDown: [UInt64]
    var targetConnections: [UInt64]
    /// Refused or timed-out connects, per pool and target slot, cumulative:
    /// metrics show them, and the control plane feeds the deltas to
    /// passive health detection.
    var targetConnectFailures: [UInt64]
    /// Scratch for reports: bytes of the connections still open, per pool
    /// and target slot (made once, refilled by each report).
    var openBytesUp: [UInt64]
    var openBytesDown: [UInt64]
    let accessLog: AccessLogBuffer?
    /// Connections told to finish by a drain deadline: reset if still open
    /// at `deadline`.
    var cutList: [(slot: Int32, generation: UInt32, deadline: Millis)] = []
    let channel: WorkerChannel
    var reportSequence: UInt64 = 0
    var tickCount = 0
    /// How many affinity slots each pool's expiry sweep visits per tick.
    var expiryBudget: [Int]
    static let targetSlots = TargetMask.capacity
    let pipes: PipePool?
    var buffers: BufferRing?
    /// Copy engine: FIFO links and lengths per buffer id.
    let bufferNext: UnsafeMutablePointer<UInt16>
    let bufferLength: UnsafeMutablePointer<UInt32>

    var listenerFDs: [Int32]
    var acceptArmed: [Bool]
    var acceptPaused = false
    /// Accepting is held for an upgrade's hand-over (WorkerHandoff.swift):
    /// nothing but a handoff command resumes it.
    var handoffHeld = false
    var handoffBox: HandoffBox?
    var acceptRetryArmed = false
    /// Sockets this worker holds open (clients, backends, held accepts);
    /// pipes are counted by the pool.
    var descriptors = 0
    /// Accepted connections whose backend socket could not be created for
    /// want of descriptors; retried on the accept-retry timer.
    var parkedConnects: [(slot: Int32, generation: UInt32)] = []
    /// Descriptors kept free before accepting more: room for the backend
    /// sockets of connections the kernel already accepted in one batch.
    static let descriptorReserve = 8
    /// Accepted descriptors waiting for a free slot.
    var acceptBacklog: [Int32] = []
    /// The listener each held descriptor came from (its pool, its PROXY rule).
    var acceptBacklogListener: [Int] = []

    /// Directions waiting for a pipe (splice) or buffers (copy), encoded as
    /// slot index << 1 | direction, with the generation alongside.
    var waiting: [(slot: Int32, generation: UInt32, down: Bool)] = []
    var resourcesFreed = false

    public private(set) var counters = WorkerCounters()
    var now: Millis = 0
    var stopping = false
    var stopDeadline: Millis = 0
    /// Connections this worker admits at once: `slotCount` until a reload
    /// lowers `limits.max_connections`.
    var admitMax = 0
    /// A slot is free and the limit allows one more connection.
    var slotAvailable: Bool { freeHead >= 0 && counters[.active] < admitMax }
    var running = true

    let wakeFD: Int32
    let wakeBuffer: UnsafeMutablePointer<UInt64>
    let connectTimeout: UnsafeMutablePointer<__kernel_timespec>
    let tickTimeout: UnsafeMutablePointer<__kernel_timespec>
    let acceptRetryTimeout: UnsafeMutablePointer<__kernel_timespec>
    let tickMs: Millis

    /// PROXY headers (see "PROXY protocol" below): one area of
    /// `ProxyHeader.headerBytesMax` bytes and one link-timeout timespec per
    /// slot, allocated only when a listener takes headers.
    let proxyAreas: UnsafeMutableRawPointer?
    let proxyTimeouts: UnsafeMutablePointer<__kernel_timespec>?
    /// The outgoing header and early payload, sent inline and at once, so
    /// one per worker serves every connection.
    let proxyScratch: UnsafeMutableRawBufferPointer
    /// Per listener: `proxy_protocol.timeout`, counted from the accept
    /// (`lastActive` until the header is whole), or 0 without one.
    let proxyTimeoutMs: [Millis]

    static let pollMask = UInt32(POLLIN) | UInt32(UInt16(bitPattern: sticky_pollrdhup)) | UInt32(POLLERR) | UInt32(POLLHUP)
    static let batchMax = 256

    public init(settings: WorkerSettings, channel: WorkerChannel, logger: Logger) throws {
        self.settings = settings
        self.logger = logger
        self.channel = channel
        // Multishot operations post many completions per submission; size
        // the CQ well above the SQ so bursts overflow rarely.
        ring = try Ring(entries: settings.ringEntries, cqEntries: max(settings.ringEntries * 8, 64))
        slotCount = settings.connectionsMax
        admitMax = slotCount
        slots = .allocate(capacity: slotCount)
        slots.initialize(repeating: Slot(), count: slotCount)
        for i in 0..<slotCount { slots[i].next = i + 1 < slotCount ? Int32(i + 1) : -1 }
        freeHead = slotCount > 0 ? 0 : -1
        var balancers: [Policy] = []
        for pool in settings.pools {
            var b = try Policy(targets: pool.targets, config: pool.affinity, maglev: pool.maglev)
            if settings.sharePoolLoads { b.sharedLoads = pool.sharedLoads }
            for (t, state) in zip(pool.targets, pool.states) where state != .ready {
                b.setState(address: t.address, state: state)
            }
            balancers.append(b)
        }
        policies = balancers
        let slotsTotal = settings.pools.count * Worker.targetSlots
        targetAddresses = .allocate(capacity: max(1, slotsTotal))
        targetAddresses.initialize(repeating: sockaddr_storage(), count: max(1, slotsTotal))
        targetAddressLengths = Array(repeating: 0, count: slotsTotal)
        targetBytesUp = Array(repeating: 0, count: slotsTotal)
        targetBytesDown = Array(repeating: 0, count: slotsTotal)
        targetConnections = Array(repeating: 0, count: slotsTotal)
        targetConnectFailures = Array(repeating: 0, count: slotsTotal)
        openBytesUp = Array(repeating: 0, count: slotsTotal)
        openBytesDown = Array(repeating: 0, count: slotsTotal)
        accessLog = settings.accessLog.map { AccessLogBuffer(sink: $0, poolNames: settings.pools.map(\.name)) }
        expiryBudget = settings.pools.map { max(1024, $0.affinity.capacity / 10) }

        switch settings.engine {
        case .splice:
            pipes = PipePool(capacity: settings.pipePoolSize, pipeSizeBytes: settings.pipeSizeBytes)
        case .copy:
            pipes = nil
        }
        let nbuf = settings.engine == .copy ? settings.bufferCount : 1
        bufferNext = .allocate(capacity: nbuf)
        bufferNext.initialize(repeating: Direction.noBuffer, count: nbuf)
        bufferLength = .allocate(capacity: nbuf)
        bufferLength.initialize(repeating: 0, count: nbuf)

        listenerFDs = settings.listeners.map(\.fd)
        acceptArmed = Array(repeating: false, count: settings.listeners.count)

        wakeFD = channel.wakeFD
        wakeBuffer = .allocate(capacity: 1)
        wakeBuffer.initialize(to: 0)
        func timespec(_ ms: Millis) -> UnsafeMutablePointer<__kernel_timespec> {
            let p = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: 1)
            p.initialize(to: __kernel_timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000))
            return p
        }
        connectTimeout = timespec(settings.connectTimeoutMs)
        // The idle sweep's resolution: a quarter of the idle timeout, kept
        // between 50 ms (cheap enough) and 1 s (prompt enough).
        tickMs = min(1000, max(50, settings.idleTimeoutMs / 4))
        tickTimeout = timespec(tickMs)
        // EMFILE backoff: long enough not to spin, short enough to recover fast.
        acceptRetryTimeout = timespec(100)

        if settings.listeners.contains(where: { $0.proxy != nil }) {
            let areas = UnsafeMutableRawPointer.allocate(byteCount: slotCount * ProxyHeader.headerBytesMax, alignment: 8)
            areas.initializeMemory(as: UInt8.self, repeating: 0, count: slotCount * ProxyHeader.headerBytesMax)
            proxyAreas = areas
            let timeouts = UnsafeMutablePointer<__kernel_timespec>.allocate(capacity: slotCount)
            timeouts.initialize(repeating: __kernel_timespec(), count: slotCount)
            proxyTimeouts = timeouts
        } else {
            proxyAreas = nil
            proxyTimeouts = nil
        }
        proxyScratch = .allocate(byteCount: ProxyHeader.encodedBytesMax + ProxyHeader.headerBytesMax, alignment: 8)
        proxyTimeoutMs = settings.listeners.map { $0.proxy?.timeoutMs ?? 0 }

        if settings.engine == .copy {
            buffers = try BufferRing(ring: ring, count: settings.bufferCount, size: settings.bufferSizeBytes)
        }
        for p in settings.pools.indices { refreshAddresses(pool: p) }
        if let imported = settings.affinityImport { importAffinity(imported) }
        if settings.startHeld {
            handoffHeld = true
            acceptPaused = true
        }
    }

    /// Re-reads the connect address of every target slot of a pool: slots
    /// change hands when targets are added and removed.
    func refreshAddresses(pool: Int) {
        for t in 0..<Worker.targetSlots {
            let k = pool * Worker.targetSlots + t
            if let a = policies[pool].address(ofTarget: t) {
                // A slot handed to another target starts its counters anew:
                // the old target's figures must not follow its slot.
                if targetAddressLengths[k] > 0 && Sockets.address(from: targetAddresses[k]) != a {
                    targetBytesUp[k] = 0
                    targetBytesDown[k] = 0
                    targetConnections[k] = 0
                    targetConnectFailures[k] = 0
                }
                let (ss, len) = Sockets.storage(for: a)
                targetAddresses[k] = ss
                targetAddressLengths[k] = len
            } else {
                targetAddressLengths[k] = 0
            }
        }
    }

    deinit {
        slots.deinitialize(count: slotCount)
        slots.deallocate()
        targetAddresses.deallocate()
        bufferNext.deallocate()
        bufferLength.deallocate()
        wakeBuffer.deallocate()
        connectTimeout.deallocate()
        tickTimeout.deallocate()
        acceptRetryTimeout.deallocate()
        proxyAreas?.deallocate()
        proxyTimeouts?.deallocate()
        proxyScratch.deallocate()
    }

    @inline(__always)
    static func clock() -> Millis {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return Millis(ts.tv_sec) * 1000 + Millis(ts.tv_nsec / 1_000_000)
    }

    // MARK: - Loop

    /// Runs until stopped and every connection has ended.
    public func run() {
        now = Worker.clock()
        if !handoffHeld { for i in listenerFDs.indices { armAccept(i) } }
        armWake()
        armTick()
        let cqes = UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>.allocate(capacity: Worker.batchMax)
        let batch = UnsafeMutablePointer<Ring.Completion>.allocate(capacity: Worker.batchMax)
        defer {
            cqes.deallocate()
            batch.deallocate()
        }
        while running {
            ring.submitAndWait(timeoutMs: nil)
            now = Worker.clock()
            counters[.loopIterations] &+= 1
            while true {
                let n = ring.reap(cqes, batch, max: Worker.batchMax) { c in
                    dispatch(UserData(raw: c.userData), c.res, c.flags)
                }
                if n == 0 { break }
                counters[.completions] &+= UInt64(n)
                if resourcesFreed { serveWaiting() }
            }
            if stopping && counters[.active] == 0 && acceptBacklog.isEmpty { running = false }
        }
        counters[.sqFullFlushes] = UInt64(clamping: ring.sqFullFlushes)
        flushAccessLog()
    }

    @inline(__always)
    func dispatch(_ ud: UserData, _ res: Int32, _ flags: UInt32) {
        switch ud.op {
        case .ignore, .cancelAccept:
            return
        case .accept:
            onAccept(Int(ud.index), res, flags)
        case .tick:
            onTick()
        case .wake:
            onWake(res)
        case .acceptRetry:
            acceptRetryArmed = false
            retryParkedConnects()
            serveBacklog()
            if !stopping { resumeAccepting() }
        default:
            let i = Int(ud.index)
            precondition(i < slotCount, "completion for a slot out of range")
            precondition(slots[i].generation & UserData.generationMask == ud.generation,
                         "completion for a reused slot: an operation outlived its connection")
            onSlotCompletion(i, ud.op, res, flags)
        }
    }

    func onSlotCompletion(_ i: Int, _ op: Op, _ res: Int32, _ flags: UInt32) {
        let more = flags & UInt32(IORING_CQE_F_MORE) != 0
        if !more { slots[i].inflight -= 1 }
        switch op {
        case .connect:
            onConnect(i, res)
        case .connectTimeout, .cancel, .close, .proxyTimeout:
            break
        case .proxyRecv:
            onProxyRecv(i, res)
        case .pollClient, .pollBackend:
            onPoll(i, client: op == .pollClient, res, more)
        case .writableClient, .writableBackend:
            onWritable(i, client: op == .writableClient)
        case .recvClient, .recvBackend:
            onRecv(i, client: op == .recvClient, res, flags, more)
        case .sendClient, .sendBackend:
            onSend(i, toClient: op == .sendClient, res)
        default:
            preconditionFailure("unexpected operation \(op) on a connection slot")
        }
        if slots[i].state == .closing && slots[i].inflight == 0 { release(i) }
    }

    // MARK: - Submission helpers

    @inline(__always)
    func userData(_ op: Op, _ i: Int) -> UInt64 {
        UserData(op: op, generation: slots[i].generation, index: UInt32(i)).raw
    }

    func armWake() {
        let s = ring.sqe()
        io_uring_prep_read(s, wakeFD, wakeBuffer, 8, 0)
        io_uring_sqe_set_data64(s, UserData(op: .wake, generation: 0, index: 0).raw)
    }

    func armTick() {
        let s = ring.sqe()
        io_uring_prep_timeout(s, tickTimeout, 0, 0)
        io_uring_sqe_set_data64(s, UserData(op: .tick, generation: 0, index: 0).raw)
    }

    /// Descriptors a multishot accept may take in one go: it drains the
    /// whole accept queue, which the listener backlog bounds.
    var multishotHeadroom: Int { settings.acceptQueueMax + 64 }

    func armAccept(_ l: Int) {
        guard !acceptArmed[l], listenerFDs[l] >= 0 else { return }
        let s = ring.sqe()
        let flags = Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if descriptorsLeft > multishotHeadroom {
            io_uring_prep_multishot_accept(s, listenerFDs[l], nil, nil, flags)
        } else {
            // Near the descriptor budget, one accept at a time: a multishot
            // accept would take the whole queue, and descriptors held by
            // clients we cannot yet serve leave none for backends or pipes.
            io_uring_prep_accept(s, listenerFDs[l], nil, nil, flags)
        }
        io_uring_sqe_set_data64(s, UserData(op: .accept, generation: 0, index: UInt32(l)).raw)
        acceptArmed[l] = true
    }

    // MARK: - Accept

    func onAccept(_ l: Int, _ res: Int32, _ flags: UInt32) {
        let last = flags & UInt32(IORING_CQE_F_MORE) == 0
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
        let s = ring.sqe()
        io_uring_prep_timeout(s, acceptRetryTimeout, 0, 0)
        io_uring_sqe_set_data64(s, UserData(op: .acceptRetry, generation: 0, index: 0).raw)
    }

    func pauseAccepting() {
        guard !acceptPaused else { return }
        acceptPaused = true
        counters[.acceptPauses] += 1
        for l in listenerFDs.indices where acceptArmed[l] {
            let s = ring.sqe()
            io_uring_prep_cancel64(s, UserData(op: .accept, generation: 0, index: UInt32(l)).raw, 0)
            io_uring_sqe_set_data64(s, UserData(op: .cancelAccept, generation: 0, index: UInt32(l)).raw)
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
        freeHead = slots[i].next
        let generation = slots[i].generation
        slots[i] = Slot()
        slots[i].generation = generation
        slots[i].state = .connecting
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
            slots[i].state = .proxyHeader
            armProxyRecv(i)
            return
        }
        connect(i)
    }

    // MARK: - Connect

    func connect(_ i: Int) {
        let pool = Int(slots[i].pool)
        guard let p = policies[pool].place(client: slots[i].client, now: now, excluding: slots[i].excluded) else {
            beginClose(i, .noTarget)
            return
        }
        let t = Int(p.target)
        let k = pool * Worker.targetSlots + t
        precondition(targetAddressLengths[k] > 0, "placed on a target slot with no address")
        let family = targetAddresses[k].ss_family
        let fd = descriptorsLeft > 0
            ? socket(Int32(family), Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            : -1
        guard fd >= 0 else {
            // No descriptor for the backend: give back what place() counted
            // and park the client (it keeps its connection) until one frees,
            // up to the connect timeout; accepting pauses meanwhile.
            policies[pool].connectFailed(p, client: slots[i].client, now: now)
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
        ring.reserve(2)
        let c = ring.sqe()
        (targetAddresses + k).withMemoryRebound(to: sockaddr.self, capacity: 1) {
            io_uring_prep_connect(c, fd, $0, targetAddressLengths[k])
        }
        c.pointee.flags |= UInt8(sticky_iosqe_io_link)
        io_uring_sqe_set_data64(c, userData(.connect, i))
        let tsq = ring.sqe()
        io_uring_prep_link_timeout(tsq, connectTimeout, 0)
        io_uring_sqe_set_data64(tsq, userData(.connectTimeout, i))
        slots[i].inflight += 2
    }

    func onConnect(_ i: Int, _ res: Int32) {
        guard slots[i].state == .connecting else { return }
        let pool = Int(slots[i].pool)
        if res == 0 {
            slots[i].state = .open
            slots[i].placed = true
            targetConnections[pool * Worker.targetSlots + Int(slots[i].placement.target)] &+= 1
            policies[pool].opened(slots[i].placement, client: slots[i].client, now: now)
            slots[i].lastActive = now
            guard sendProxyPreamble(i) else { return }
            idleAppend(i)
            switch settings.engine {
            case .splice:
                armPoll(i, client: true)
                armPoll(i, client: false)
            case .copy:
                armRecv(i, client: true)
                armRecv(i, client: false)
            }
            return
        }
        // A refused or timed-out connect: this target failed this client.
        // -ECANCELED here means the linked timeout fired first.
        if res == -ECANCELED { counters[.connectTimeouts] += 1 } else { counters[.connectErrors] += 1 }
        close(slots[i].backendFD)
        slots[i].backendFD = -1
        descriptors -= 1
        policies[pool].connectFailed(slots[i].placement, client: slots[i].client, now: now)
        let failed = Int(slots[i].placement.target)
        if failed < TargetMask.capacity { slots[i].excluded.insert(failed) }
        // Counted for metrics and passive detection (a preallocated array, no
        // allocation). The failover below is this connection's own remedy;
        // the budget runs from accept (PROXY header time included), so a
        // client is not kept waiting on a dead pool.
        if failed < TargetMask.capacity { targetConnectFailures[pool * Worker.targetSlots + failed] &+= 1 }
        if slots[i].connectAttempts <= Int32(settings.connectRetries) && !stopping
            && now - slots[i].acceptedMs < settings.connectBudgetMs {
            counters[.connectRetries] += 1
            connect(i)
        } else {
            beginClose(i, .connectFailed)
        }
    }

    // MARK: - Splice engine

    func armPoll(_ i: Int, client: Bool) {
        let fd = client ? slots[i].clientFD : slots[i].backendFD
        let s = ring.sqe()
        io_uring_prep_poll_multishot(s, fd, Worker.pollMask)
        io_uring_sqe_set_data64(s, userData(client ? .pollClient : .pollBackend, i))
        slots[i].inflight += 1
        if client { slots[i].clientPollArmed = true } else { slots[i].backendPollArmed = true }
    }

    func armWritable(_ i: Int, client: Bool) {
        let fd = client ? slots[i].clientFD : slots[i].backendFD
        let s = ring.sqe()
        io_uring_prep_poll_add(s, fd, UInt32(POLLOUT))
        io_uring_sqe_set_data64(s, userData(client ? .writableClient : .writableBackend, i))
        slots[i].inflight += 1
    }

    func onPoll(_ i: Int, client: Bool, _ res: Int32, _ more: Bool) {
        if !more {
            if client { slots[i].clientPollArmed = false } else { slots[i].backendPollArmed = false }
        }
        guard slots[i].state == .open else { return }
        // Readable client feeds `up`; readable backend feeds `down`.
        let down = !client
        if res >= 0 {
            switch settings.engine {
            case .splice: pump(i, down: down)
            case .copy: break
            }
        }
        guard slots[i].state == .open else { return }
        let stillReading = down ? !slots[i].down.sourceEOF : !slots[i].up.sourceEOF
        if !more && stillReading {
            if client { if !slots[i].clientPollArmed { armPoll(i, client: true) } }
            else if !slots[i].backendPollArmed { armPoll(i, client: false) }
        }
    }

    func onWritable(_ i: Int, client: Bool) {
        // A writable client drains `down`; a writable backend drains `up`.
        let down = client
        if down { slots[i].down.awaitingWritable = false } else { slots[i].up.awaitingWritable = false }
        guard slots[i].state == .open else { return }
        switch settings.engine {
        case .splice: pump(i, down: down)
        case .copy: break
        }
    }

    /// Moves bytes source → pipe → destination with non-blocking splice(2)
    /// until the source is empty or the destination is full.
    func pump(_ i: Int, down: Bool) {
        guard let pipes else { return }
        var d = down ? slots[i].down : slots[i].up
        if d.awaitingWritable || d.awaitingPipe || d.finished { return }
        let src = down ? slots[i].backendFD : slots[i].clientFD
        let dst = down ? slots[i].clientFD : slots[i].backendFD
        var moved = false
        var outcome: CloseReason = .none
        loop: while true {
            if d.pipeBytes > 0 {
                let n = sticky_splice(pipes.readFD(d.pipe), dst, Int(d.pipeBytes))
                if n > 0 {
                    d.pipeBytes -= Int32(n)
                    d.bytes += UInt64(n)
                    moved = true
                    continue
                }
                if n == -Int(EAGAIN) {
                    d.awaitingWritable = true
                    armWritable(i, client: down)
                    break loop
                }
                outcome = .reset
                break loop
            }
            if d.sourceEOF {
                if d.pipe >= 0 {
                    pipes.release(d.pipe)
                    d.pipe = -1
                    resourcesFreed = true
                }
                shutdown(dst, Int32(SHUT_WR))
                d.finished = true
                break loop
            }
            if d.pipe < 0 {
                guard let p = pipes.acquire(mayCreate: pipeDescriptorsLeft >= 2) else {
                    d.awaitingPipe = true
                    counters[.pipeWaits] += 1
                    waiting.append((Int32(i), slots[i].generation, down))
                    break loop
                }
                d.pipe = p
            }
            let n = sticky_splice(src, pipes.writeFD(d.pipe), Int(pipes.pipeSizeBytes))
            if n > 0 {
                d.pipeBytes = Int32(n)
                continue
            }
            if n == 0 {
                d.sourceEOF = true
                continue
            }
            if n == -Int(EAGAIN) {
                // Source drained: give the empty pipe back so idle
                // connections hold none.
                pipes.release(d.pipe)
                d.pipe = -1
                resourcesFreed = true
                break loop
            }
            outcome = .reset
            break loop
        }
        if down { slots[i].down = d } else { slots[i].up = d }
        if moved { touch(i) }
        if outcome != .none {
            beginClose(i, outcome, reset: true)
        } else if slots[i].up.finished && slots[i].down.finished {
            beginClose(i, .done)
        }
    }

    // MARK: - Copy engine

    func armRecv(_ i: Int, client: Bool) {
        let fd = client ? slots[i].clientFD : slots[i].backendFD
        let s = ring.sqe()
        io_uring_prep_recv_multishot(s, fd, nil, 0, 0)
        s.pointee.flags |= UInt8(sticky_iosqe_buffer_select)
        s.pointee.buf_group = BufferRing.group
        io_uring_sqe_set_data64(s, userData(client ? .recvClient : .recvBackend, i))
        slots[i].inflight += 1
        if client { slots[i].up.receiving = true } else { slots[i].down.receiving = true }
    }

    /// Queued buffers above which a direction stops receiving: bounds what
    /// one slow reader can pin of the shared ring.
    static let queueHighWater: UInt16 = 8

    func onRecv(_ i: Int, client: Bool, _ res: Int32, _ flags: UInt32, _ more: Bool) {
        guard let buffers else { return }
        let down = !client
        var d = down ? slots[i].down : slots[i].up
        if !more { d.receiving = false }
        var outcome: CloseReason = .none
        if flags & UInt32(IORING_CQE_F_BUFFER) != 0 {
            let bid = UInt16(truncatingIfNeeded: flags >> 16)
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
        guard let buffers, slots[i].state == .open else { return }
        var d = down ? slots[i].down : slots[i].up
        let dst = down ? slots[i].clientFD : slots[i].backendFD
        if !d.sending && d.queueHead != Direction.noBuffer {
            let bid = d.queueHead
            let s = ring.sqe()
            io_uring_prep_send(s, dst, buffers.address(bid) + Int(d.headOffset),
                               Int(bufferLength[Int(bid)] - d.headOffset), Int32(MSG_NOSIGNAL))
            io_uring_sqe_set_data64(s, userData(down ? .sendClient : .sendBackend, i))
            slots[i].inflight += 1
            d.sending = true
        }
        if !d.sending && d.queueHead == Direction.noBuffer && d.sourceEOF && !d.finished {
            shutdown(dst, Int32(SHUT_WR))
            d.finished = true
        }
        // Backpressure: stop receiving while the queue is long; resume when
        // it has drained.
        if d.queuedBuffers >= Worker.queueHighWater && d.receiving && !d.recvPaused {
            d.recvPaused = true
            let s = ring.sqe()
            io_uring_prep_cancel64(s, userData(down ? .recvBackend : .recvClient, i), 0)
            io_uring_sqe_set_data64(s, userData(.cancel, i))
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

    func onSend(_ i: Int, toClient: Bool, _ res: Int32) {
        guard let buffers else { return }
        let down = toClient
        var d = down ? slots[i].down : slots[i].up
        d.sending = false
        if res > 0 {
            d.headOffset += UInt32(res)
            d.bytes += UInt64(res)
            let bid = d.queueHead
            if d.headOffset >= bufferLength[Int(bid)] {
                d.queueHead = bufferNext[Int(bid)]
                if d.queueHead == Direction.noBuffer { d.queueTail = Direction.noBuffer }
                d.queuedBuffers -= 1
                d.headOffset = 0
                buffers.recycle(bid)
                resourcesFreed = true
            }
        }
        if down { slots[i].down = d } else { slots[i].up = d }
        guard slots[i].state == .open else { return }
        if res < 0 {
            beginClose(i, .reset, reset: true)
            return
        }
        touch(i)
        flush(i, down: down)
    }

    /// Wakes directions that waited for a pipe or for buffers.
    func serveWaiting() {
        resourcesFreed = false
        guard !waiting.isEmpty else { return }
        let list = waiting
        waiting.removeAll(keepingCapacity: true)
        for (index, generation, down) in list {
            let i = Int(index)
            guard slots[i].generation == generation, slots[i].state == .open else { continue }
            switch settings.engine {
            case .splice:
                if down { slots[i].down.awaitingPipe = false } else { slots[i].up.awaitingPipe = false }
                pump(i, down: down)
            case .copy:
                if down { slots[i].down.starved = false } else { slots[i].up.starved = false }
                flush(i, down: down)
            }
        }
    }

    // MARK: - Idle list

    func idleAppend(_ i: Int) {
        slots[i].prev = idleTail
        slots[i].next = -1
        if idleTail >= 0 { slots[Int(idleTail)].next = Int32(i) } else { idleHead = Int32(i) }
        idleTail = Int32(i)
        slots[i].onIdleList = true
    }

    func idleRemove(_ i: Int) {
        guard slots[i].onIdleList else { return }
        let p = slots[i].prev, n = slots[i].next
        if p >= 0 { slots[Int(p)].next = n } else { idleHead = n }
        if n >= 0 { slots[Int(n)].prev = p } else { idleTail = p }
        slots[i].onIdleList = false
        slots[i].prev = -1
        slots[i].next = -1
    }

    /// Marks activity: the list stays ordered by last activity, so the idle
    /// sweep only ever looks at its head.
    @inline(__always)
    func touch(_ i: Int) {
        slots[i].lastActive = now
        if idleTail != Int32(i) {
            idleRemove(i)
            idleAppend(i)
        }
    }

    func onTick() {
        armTick()
        channel.heartbeat.wrappingAdd(1, ordering: .relaxed)
        for p in policies.indices { policies[p].expire(now: now, slots: expiryBudget[p]) }
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

    func onWake(_ res: Int32) {
        armWake()
        for command in channel.take() {
            switch command {
            case .stop:
                beginStop()
            case .setTargets(let pool, let targets, let states, let maglev):
                do {
                    try policies[pool].updateTargets(targets, maglev: maglev)
                } catch {
                    preconditionFailure("control plane sent a target set the balancer refuses: \(error)")
                }
                for (t, state) in zip(targets, states) { policies[pool].setState(address: t.address, state: state) }
                refreshAddresses(pool: pool)
            case .setState(let pool, let address, let state):
                policies[pool].setState(address: address, state: state)
            case .closeTarget(let pool, let address, let graceMs):
                cutTarget(pool: pool, address: address, graceMs: graceMs)
            case .clearAffinity(let pool, let scope):
                for p in policies.indices where pool == nil || pool == p {
                    policies[p].clearAffinity(scope, now: now)
                }
            case .setTimeouts(let connectMs, let idleMs, let shutdownMs, let connectBudgetMs):
                // The connect timespec is read at submission, so later
                // connects use the new value; the idle sweep reads settings.
                settings.connectTimeoutMs = connectMs
                settings.idleTimeoutMs = idleMs
                settings.shutdownTimeoutMs = shutdownMs
                settings.connectBudgetMs = connectBudgetMs
                connectTimeout.pointee = __kernel_timespec(tv_sec: connectMs / 1000, tv_nsec: (connectMs % 1000) * 1_000_000)
            case .setLimits(let connectionsMax, let connectRetries):
                // Slots are made once, at start: a higher share waits for a
                // restart (the control plane says so). A lower one takes
                // effect as connections close; none is cut for it.
                admitMax = min(max(1, connectionsMax), slotCount)
                settings.connectRetries = connectRetries
                serveBacklog()
                resumeAccepting()
            case .report(let query, let entries, let request):
                publishReport(query, entries: entries, request: request)
            case .handoffPause(let box):
                beginHandoff(box)
            case .handoffResume:
                endHandoff()
            }
        }
    }

    func beginStop() {
        guard !stopping else { return }
        stopping = true
        stopDeadline = now + settings.shutdownTimeoutMs
        for l in listenerFDs.indices where listenerFDs[l] >= 0 {
            // A pending accept holds the listening socket open too.
            ring.reserve(2)
            let c = ring.sqe()
            io_uring_prep_cancel_fd(c, listenerFDs[l], UInt32(IORING_ASYNC_CANCEL_ALL))
            c.pointee.flags |= UInt8(sticky_iosqe_io_hardlink)
            io_uring_sqe_set_data64(c, 0)
            let s = ring.sqe()
            io_uring_prep_close(s, listenerFDs[l])
            io_uring_sqe_set_data64(s, 0)
            listenerFDs[l] = -1
            acceptArmed[l] = false
        }
        // Clients in the backlog were accepted: they are served as slots
        // free up (`release`), and only what is left at the deadline is cut.
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

    /// A drain deadline passed: FIN both ways now (clients see an orderly
    /// end, and HTTP/2 peers get to finish a frame), reset after the grace.
    func cutTarget(pool: Int, address: SocketAddress, graceMs: Millis) {
        guard let t = policies[pool].targetIndex(of: address) ?? (0..<Worker.targetSlots).first(where: {
            policies[pool].address(ofTarget: $0) == address
        }) else { return }
        for i in 0..<slotCount where slots[i].pool == Int32(pool) && slots[i].placement.target == Int32(t) {
            switch slots[i].state {
            case .open:
                shutdown(slots[i].clientFD, Int32(SHUT_WR))
                shutdown(slots[i].backendFD, Int32(SHUT_WR))
                counters[.drainCuts] += 1
                cutList.append((Int32(i), slots[i].generation, now + graceMs))
            case .connecting:
                beginClose(i, .drainDeadline, reset: true)
            case .free, .closing, .proxyHeader:
                break
            }
        }
    }

    func publishReport(_ query: PinQuery?, entries countEntries: Bool, request: UInt64 = 0) {
        reportSequence += 1
        var r = WorkerReport()
        r.sequence = reportSequence
        r.counters = counters
        r.counters[.sqFullFlushes] = UInt64(clamping: ring.sqFullFlushes)
        r.counters[.descriptors] = UInt64(clamping: descriptors)
        r.counters[.descriptorBudget] = UInt64(clamping: settings.descriptorBudget)
        // Bytes of connections still open count too: a gRPC channel lives
        // for hours, and its bytes must not appear only when it closes.
        // Closed connections' bytes are in targetBytesUp/Down; a slot's move
        // there at `release`, so closed + open never goes down.
        for k in openBytesUp.indices {
            openBytesUp[k] = 0
            openBytesDown[k] = 0
        }
        for i in 0..<slotCount where slots[i].state != .free && slots[i].placed {
            let k = Int(slots[i].pool) * Worker.targetSlots + Int(slots[i].placement.target)
            openBytesUp[k] &+= slots[i].up.bytes
            openBytesDown[k] &+= slots[i].down.bytes
            r.counters[.bytesUp] &+= slots[i].up.bytes
            r.counters[.bytesDown] &+= slots[i].down.bytes
        }
        for p in policies.indices {
            var pr = PoolReport()
            pr.affinity = policies[p].counters
            let entries = countEntries ? policies[p].entriesPerTarget(now: now) : []
            for t in 0..<Worker.targetSlots {
                guard let a = policies[p].address(ofTarget: t) else { continue }
                let k = p * Worker.targetSlots + t
                pr.targets.append(TargetLoad(address: a, connections: policies[p].openConnections(target: t),
                                             affinityEntries: countEntries ? entries[t] : 0,
                                             bytesUp: targetBytesUp[k] &+ openBytesUp[k],
                                             bytesDown: targetBytesDown[k] &+ openBytesDown[k], connectionsTotal: targetConnections[k],
                                             connectFailures: targetConnectFailures[k]))
            }
            r.pools.append(pr)
        }
        if let q = query {
            for p in policies.indices where q.pool == nil || q.pool == p {
                if let c = q.client {
                    if let pin = policies[p].pin(of: c, now: now) { r.pins.append((p, pin)) }
                } else {
                    for pin in policies[p].pins(now: now, limit: q.limit - r.pins.count) { r.pins.append((p, pin)) }
                }
                if r.pins.count >= q.limit { break }
            }
        }
        if request != 0 { channel.answer(request, r) }
        channel.publish(r)
    }

    // MARK: - PROXY protocol
    //
    // Accept side: a connection from a `proxy_protocol` listener starts in
    // `.proxyHeader`. One recv at a time, hard-linked to a timeout for the
    // time left until its deadline, fills the slot's header area; each
    // completion re-parses the area (at most 536 bytes) until the header is
    // whole, then the header's source becomes the client and placement runs
    // as for any connection. Send side: once the target is connected, the
    // pool's header and any payload that came with the client's header are
    // written with one non-blocking send(2), before either engine arms, so
    // no forwarded byte can overtake them.

    @inline(__always)
    func proxyArea(_ i: Int) -> UnsafeMutableRawPointer {
        guard let proxyAreas else { preconditionFailure("PROXY area used on a worker without proxy_protocol listeners") }
        return proxyAreas + i * ProxyHeader.headerBytesMax
    }

    func armProxyRecv(_ i: Int) {
        guard let proxyTimeouts else { preconditionFailure("PROXY recv on a worker without proxy_protocol listeners") }
        let received = Int(slots[i].proxyReceived)
        // `lastActive` holds the accept time until the header is whole.
        let leftMs = slots[i].lastActive + proxyTimeoutMs[Int(slots[i].listener)] - now
        guard leftMs > 0, received < ProxyHeader.headerBytesMax else {
            rejectProxy(i, received < ProxyHeader.headerBytesMax ? .timeout : .oversized)
            return
        }
        // Read when the SQE is submitted, so it lives in the slot until then.
        proxyTimeouts[i] = __kernel_timespec(tv_sec: leftMs / 1000, tv_nsec: (leftMs % 1000) * 1_000_000)
        ring.reserve(2)
        let r = ring.sqe()
        io_uring_prep_recv(r, slots[i].clientFD, proxyArea(i) + received, ProxyHeader.headerBytesMax - received, 0)
        r.pointee.flags |= UInt8(sticky_iosqe_io_link)
        io_uring_sqe_set_data64(r, userData(.proxyRecv, i))
        let t = ring.sqe()
        io_uring_prep_link_timeout(t, proxyTimeouts + i, 0)
        io_uring_sqe_set_data64(t, userData(.proxyTimeout, i))
        slots[i].inflight += 2
    }

    func onProxyRecv(_ i: Int, _ res: Int32) {
        guard slots[i].state == .proxyHeader else { return }
        if res == 0 {
            rejectProxy(i, .truncated)
            return
        }
        if res == -ECANCELED {
            // The linked timeout fired first.
            rejectProxy(i, .timeout)
            return
        }
        if res == -EAGAIN || res == -EINTR {
            armProxyRecv(i)
            return
        }
        guard res > 0 else {
            rejectProxy(i, .readError)
            return
        }
        let received = Int(slots[i].proxyReceived) + Int(res)
        precondition(received <= ProxyHeader.headerBytesMax, "recv wrote past the PROXY header area")
        slots[i].proxyReceived = UInt16(received)
        switch ProxyHeader.parse(UnsafeRawBufferPointer(start: proxyArea(i), count: received)) {
        case .needMore:
            armProxyRecv(i)
        case .invalid(let reason):
            rejectProxy(i, ProxyRejection(reason))
        case .complete(let header):
            counters[.proxyHeadersReceived] += 1
            slots[i].proxyConsumed = UInt16(header.consumed)
            // LOCAL, UNKNOWN and AF_UNSPEC carry no source: the socket's
            // peer (already in `client`) stands.
            // The access log names the client the header names, port included.
            if let source = header.source {
                slots[i].client = source.ip
                slots[i].clientPort = source.port
            }
            slots[i].state = .connecting
            slots[i].lastActive = now
            connect(i)
        }
    }

    func rejectProxy(_ i: Int, _ reason: ProxyRejection) {
        proxyRejected(reason, peer: slots[i].client)
        beginClose(i, .proxyHeader, reset: reason == .readError)
    }

    /// Counts a refused connection; debug-logs each and warns on the 1st,
    /// 2nd, 4th, 8th... so a scan or a misconfigured proxy cannot flood the log.
    func proxyRejected(_ reason: ProxyRejection, peer: IPAddress) {
        counters.proxyRejected[Int(reason.rawValue)] += 1
        logger.debug("PROXY header refused", metadata: ["reason": "\(reason.metricName)", "peer": "\(peer)"])
        let total = counters.proxyRejected.reduce(0, +)
        if total & (total - 1) == 0 {
            logger.warning("connections closed for their PROXY header (logged at 1, 2, 4, 8... times)",
                           metadata: ["reason": "\(reason.metricName)", "peer": "\(peer)", "times": "\(total)"])
        }
    }

    /// Writes the pool's PROXY header, then any payload that arrived with
    /// the client's own header, to a just-connected target. A fresh socket's
    /// send buffer holds far more than these at most 644 bytes, so one
    /// non-blocking send takes them whole; if it cannot, the connection is
    /// reset rather than forwarded with a gap. False when it was closed.
    func sendProxyPreamble(_ i: Int) -> Bool {
        let pool = Int(slots[i].pool)
        let version = pool < settings.poolSendProxy.count ? settings.poolSendProxy[pool] : nil
        let consumed = Int(slots[i].proxyConsumed)
        let early = Int(slots[i].proxyReceived) - consumed
        guard version != nil || early > 0 else { return true }
        let out = proxyScratch
        var length = 0
        if let version {
            var source: SocketAddress?
            var destination: SocketAddress?
            if consumed > 0, case .complete(let h) = ProxyHeader.parse(UnsafeRawBufferPointer(start: proxyArea(i), count: consumed)) {
                source = h.source
                destination = h.destination
            }
            if source == nil || destination == nil {
                source = Sockets.peer(of: slots[i].clientFD)
                destination = Sockets.local(of: slots[i].clientFD)
            }
            length = ProxyHeader.encode(version, source: source, destination: destination,
                                        into: UnsafeMutableRawBufferPointer(rebasing: out[0..<ProxyHeader.encodedBytesMax]))
            precondition(length > 0, "a PROXY header did not fit encodedBytesMax")
        }
        if early > 0 {
            (out.baseAddress! + length).copyMemory(from: proxyArea(i) + consumed, byteCount: early)
            length += early
        }
        let sent = send(slots[i].backendFD, out.baseAddress, length, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
        guard sent == length else {
            counters[.proxySendFailures] += 1
            beginClose(i, .reset, reset: true)
            return false
        }
        if version != nil { counters[.proxyHeadersSent] += 1 }
        slots[i].up.bytes += UInt64(early)
        return true
    }

    // MARK: - Close

    /// Starts closing a connection: cancels every operation on each of its
    /// descriptors, then closes them, each pair as one hard-linked chain.
    func beginClose(_ i: Int, _ reason: CloseReason, reset: Bool = false) {
        guard slots[i].state != .closing, slots[i].state != .free else { return }
        slots[i].state = .closing
        slots[i].closeReason = reason
        idleRemove(i)
        if slots[i].clientFD >= 0 {
            cancelAndClose(slots[i].clientFD, i, reset: reset)
            slots[i].clientFD = -1
        }
        if slots[i].backendFD >= 0 {
            cancelAndClose(slots[i].backendFD, i, reset: reset)
            slots[i].backendFD = -1
        }
    }

    /// A pending poll or recv holds a reference to the socket, so close(2)
    /// alone would leave it open: cancel first, then close, hard-linked so
    /// the close runs even when there was nothing to cancel.
    func cancelAndClose(_ fd: Int32, _ i: Int, reset: Bool) {
        if reset { Sockets.setResetOnClose(fd) }
        descriptors -= 1
        ring.reserve(2)
        let c = ring.sqe()
        io_uring_prep_cancel_fd(c, fd, UInt32(IORING_ASYNC_CANCEL_ALL))
        c.pointee.flags |= UInt8(sticky_iosqe_io_hardlink)
        io_uring_sqe_set_data64(c, userData(.cancel, i))
        let s = ring.sqe()
        io_uring_prep_close(s, fd)
        io_uring_sqe_set_data64(s, userData(.close, i))
        slots[i].inflight += 2
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
        let t = Int(slots[i].placement.target)
        let target = t >= 0 ? policies[pool].address(ofTarget: t) : nil
        r.pointee.hasTarget = target != nil
        if let target { r.pointee.target = target }
        r.pointee.pool = slots[i].pool
        r.pointee.bytesUp = slots[i].up.bytes
        r.pointee.bytesDown = slots[i].down.bytes
        r.pointee.reason = slots[i].closeReason.staticName
    }

    func flushAccessLog() {
        guard let log = accessLog else { return }
        log.flush()
        counters[.accessLogLines] = log.lines
        counters[.accessLogDrops] = log.dropped
    }

    /// Returns a slot whose every operation has completed to the free list.
    func serveBacklog() {
        while !acceptBacklog.isEmpty && slotAvailable && descriptorsLeft >= 1 {
            let fd = acceptBacklog.removeFirst()
            let listener = acceptBacklogListener.removeFirst()
            admit(fd, listener: listener)
        }
    }

    func release(_ i: Int) {
        precondition(slots[i].inflight == 0, "slot released with operations in flight")
        precondition(slots[i].clientFD < 0, "slot released with its client descriptor open")
        precondition(slots[i].backendFD < 0, "slot released with its backend descriptor open")
        let pool = Int(slots[i].pool)
        if slots[i].placed {
            policies[pool].closed(slots[i].placement, client: slots[i].client, now: now)
            let k = pool * Worker.targetSlots + Int(slots[i].placement.target)
            targetBytesUp[k] &+= slots[i].up.bytes
            targetBytesDown[k] &+= slots[i].down.bytes
        }
        if accessLog != nil { recordAccess(i) }
        counters[.bytesUp] &+= slots[i].up.bytes
        counters[.bytesDown] &+= slots[i].down.bytes
        counters.closed[Int(slots[i].closeReason.rawValue)] += 1
        returnResources(slots[i].up)
        returnResources(slots[i].down)
        slots[i].generation &+= 1
        slots[i].state = .free
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

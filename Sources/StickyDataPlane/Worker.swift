import Glibc
import Logging
import StickyCore

/// One event loop: one ring, one thread, its own listeners (one per
/// configured listener, in a SO_REUSEPORT group), its own connections.
///
/// The loop reaps a batch of completions into a local array and advances the
/// CQ first, then handles them: a handler may submit, but never runs another
/// handler, so nothing recurses.
public final class Worker {
    var settings: WorkerSettings
    let ring: Ring
    let logger: Logger
    let channel: WorkerChannel

    // Connections (Slot.swift): a fixed array, an intrusive free list, and
    // the idle list (IdleList.swift) ordered by last activity.
    let slots: UnsafeMutablePointer<Slot>
    let slotCount: Int
    var freeHead: Int32 = -1
    var idleHead: Int32 = -1
    var idleTail: Int32 = -1
    /// Connections this worker admits at once: `slotCount` until a reload
    /// lowers `limits.max_connections`.
    var admitMax = 0
    /// A slot is free and the limit allows one more connection.
    var slotAvailable: Bool { freeHead >= 0 && counters[.active] < UInt64(admitMax) }

    /// The pools, by config index (WorkerPool.swift).
    let pools: [WorkerPool]
    let accessLog: AccessLogBuffer?
    /// Connections told to finish by a drain deadline: reset if still open
    /// at `deadline`.
    var cutList: [(slot: Int32, generation: UInt32, deadline: Millis)] = []
    var reportSequence: UInt64 = 0
    var tickCount = 0

    // Engine resources: pipes for the splice engine, the provided-buffer
    // ring for the copy engine. A worker has the ones its connections use.
    let pipes: PipePool?
    var buffers: BufferRing?
    /// Copy engine: each direction's msghdr and iovecs for gathered sends.
    var gather: GatherArea?
    /// Copy engine: queued buffers at which a direction stops receiving.
    let queueHighWater: UInt16
    /// Copy engine: FIFO links and lengths per buffer id.
    let bufferNext: UnsafeMutablePointer<UInt16>
    let bufferLength: UnsafeMutablePointer<UInt32>
    /// Directions waiting for a pipe (splice) or buffers (copy).
    var waiting: [(slot: Int32, generation: UInt32, down: Bool)] = []
    var resourcesFreed = false

    // Accept (WorkerAccept.swift).
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

    public internal(set) var counters = WorkerCounters()
    var now: Millis = 0
    var stopping = false
    var stopDeadline: Millis = 0
    var running = true

    let wakeFD: Int32
    let wakeBuffer: UnsafeMutablePointer<UInt64>
    let connectTimeout: TimeoutTable
    let tickTimeout: TimeoutTable
    let acceptRetryTimeout: TimeoutTable
    let tickMs: Millis
    let completions = CompletionBatch(capacity: Worker.batchMax)

    /// PROXY headers (WorkerProxy.swift): one area of
    /// `ProxyHeader.headerBytesMax` bytes and one link-timeout duration per
    /// slot, allocated only when a listener takes headers.
    let proxyAreas: UnsafeMutableRawPointer?
    let proxyTimeouts: TimeoutTable?
    /// The outgoing header and early payload, sent inline and at once, so
    /// one per worker serves every connection.
    let proxyScratch: UnsafeMutableRawBufferPointer
    /// Per listener: `proxy_protocol.timeout`, counted from the accept
    /// (`lastActive` until the header is whole), or 0 without one.
    let proxyTimeoutMs: [Millis]
    /// h2c: the GOAWAY frames this worker writes (Http2Goaway.swift), and
    /// the generator that jitters each connection's `max_connection_age`
    /// (seeded once from the system generator; no syscall per draw).
    let goawayFrames = GoawayFrames()
    var jitter = SplitMix64(seed: UInt64.random(in: .min ... .max))

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
        pools = try settings.pools.map { try WorkerPool($0, shareLoads: settings.sharePoolLoads) }
        accessLog = settings.accessLog.map { AccessLogBuffer(sink: $0, poolNames: settings.pools.map(\.name)) }

        let engines = settings.enginesInUse
        pipes = engines.contains(.splice)
            ? PipePool(capacity: settings.pipePoolSize, pipeSizeBytes: settings.pipeSizeBytes) : nil
        let nbuf = engines.contains(.copy) ? settings.bufferCount : 1
        queueHighWater = Worker.queueHighWater(bufferSize: settings.bufferSizeBytes)
        bufferNext = .allocate(capacity: nbuf)
        bufferNext.initialize(repeating: Direction.noBuffer, count: nbuf)
        bufferLength = .allocate(capacity: nbuf)
        bufferLength.initialize(repeating: 0, count: nbuf)

        listenerFDs = settings.listeners.map(\.fd)
        acceptArmed = Array(repeating: false, count: settings.listeners.count)

        wakeFD = channel.wakeFD
        wakeBuffer = .allocate(capacity: 1)
        wakeBuffer.initialize(to: 0)
        connectTimeout = TimeoutTable(count: 1, ms: settings.connectTimeoutMs)
        // The idle sweep's resolution: a quarter of the idle timeout, kept
        // between 50 ms (cheap enough) and 1 s (prompt enough).
        tickMs = min(1000, max(50, settings.idleTimeoutMs / 4))
        tickTimeout = TimeoutTable(count: 1, ms: tickMs)
        // EMFILE backoff: long enough not to spin, short enough to recover fast.
        acceptRetryTimeout = TimeoutTable(count: 1, ms: 100)

        if settings.listeners.contains(where: { $0.proxy != nil }) {
            let areas = UnsafeMutableRawPointer.allocate(byteCount: slotCount * ProxyHeader.headerBytesMax, alignment: 8)
            areas.initializeMemory(as: UInt8.self, repeating: 0, count: slotCount * ProxyHeader.headerBytesMax)
            proxyAreas = areas
            proxyTimeouts = TimeoutTable(count: max(1, slotCount))
        } else {
            proxyAreas = nil
            proxyTimeouts = nil
        }
        proxyScratch = .allocate(byteCount: ProxyHeader.encodedBytesMax + ProxyHeader.headerBytesMax, alignment: 8)
        proxyTimeoutMs = settings.listeners.map { $0.proxy?.timeoutMs ?? 0 }

        if engines.contains(.copy) {
            buffers = try BufferRing(ring: ring, count: settings.bufferCount, size: settings.bufferSizeBytes)
            gather = try GatherArea(slots: slotCount)
        }
        if let imported = settings.affinityImport { importAffinity(imported) }
        if settings.startHeld {
            handoffHeld = true
            acceptPaused = true
        }
    }

    deinit {
        slots.deinitialize(count: slotCount)
        slots.deallocate()
        bufferNext.deallocate()
        bufferLength.deallocate()
        wakeBuffer.deallocate()
        proxyAreas?.deallocate()
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
        while running {
            ring.submitAndWait(timeoutMs: nil)
            now = Worker.clock()
            counters[.loopIterations] &+= 1
            while true {
                let n = completions.reap(ring) { c in dispatch(UserData(raw: c.userData), c) }
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
    func dispatch(_ ud: UserData, _ c: Ring.Completion) {
        switch ud.op {
        case .ignore, .cancelAccept:
            return
        case .accept:
            onAccept(Int(ud.index), c.res, more: c.more)
        case .tick:
            onTick()
        case .wake:
            onWake()
        case .acceptRetry:
            acceptRetryArmed = false
            retryParkedConnects()
            serveBacklog()
            if !stopping { resumeAccepting() }
        default:
            let i = Int(ud.index & ~Worker.ageBit)
            precondition(i < slotCount, "completion for a slot out of range")
            precondition(slots[i].generation & UserData.generationMask == ud.generation,
                         "completion for a reused slot: an operation outlived its connection")
            onSlotCompletion(i, ud.op, c, ageGoaway: ud.index & Worker.ageBit != 0)
        }
    }

    /// A connection's completion. The slot's state is checked by each
    /// handler on entry; a slot is released here once it is closing and
    /// its last operation has completed.
    func onSlotCompletion(_ i: Int, _ op: Op, _ c: Ring.Completion, ageGoaway: Bool = false) {
        let res = c.res, more = c.more
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
            onRecv(i, client: op == .recvClient, res, buffer: c.bufferID, more: more)
        case .sendClient, .sendBackend:
            onSend(i, toClient: op == .sendClient, res)
        case .sendGoaway:
            onGoawaySent(i, res, cause: ageGoaway ? .age : .drain)
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
        ring.read(wakeFD, into: wakeBuffer, count: 8, userData: UserData(op: .wake, generation: 0, index: 0).raw)
    }

    func armTick() {
        ring.timeout(tickTimeout, userData: UserData(op: .tick, generation: 0, index: 0).raw)
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
            switch slots[i].engine {
            case .splice:
                if down { slots[i].down.awaitingPipe = false } else { slots[i].up.awaitingPipe = false }
                pump(i, down: down)
            case .copy:
                if down { slots[i].down.starved = false } else { slots[i].up.starved = false }
                flush(i, down: down)
            }
        }
    }
}

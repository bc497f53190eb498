import CURing
import CURingShim
import Glibc
import StickyCore
import StickyDataPlane
import Synchronization

/// Set by SIGINT/SIGTERM: stop starting connections, finish those in flight,
/// then report. (An atomic store is async-signal-safe.)
let benchStopRequested = Atomic<Bool>(false)

/// What a client worker publishes for the once-a-second progress line.
/// One object per worker, so workers never write the same cache line.
final class BenchProgress: Sendable {
    let done = Atomic<Int>(0)        // successful connections, warmup included
    let errors = Atomic<Int>(0)      // failed connections, warmup included
    let violations = Atomic<Int>(0)
    let inFlight = Atomic<Int>(0)
    let finished = Atomic<Bool>(false)
}

/// Everything one client worker needs to know; built and checked by `BenchRun`.
struct BenchClientPlan {
    var targets: [SocketAddress]
    /// All client addresses; this worker uses indices threadIndex, +threadCount, ...
    var sources: [IPAddress]
    var threadIndex: Int
    var threadCount: Int
    /// Connection slots (this worker's share of --concurrency).
    var slots: Int
    /// Measured connections to start, after the warmup ones.
    var budget: UInt64
    var warmup: UInt64
    var durationNs: UInt64
    var timeoutNs: UInt64
}

/// One thread, one ring, `plan.slots` connection slots. Each slot runs
///
///     socket(2) + setsockopt(IP_BIND_ADDRESS_NO_PORT) + bind(2)   inline
///     CONNECT --hardlink--> RECV(MSG_WAITALL) --hardlink--> CLOSE  on the ring
///
/// as one chain. CONNECT and CLOSE post a completion only when they fail
/// (IOSQE_CQE_SKIP_SUCCESS), so a good connection costs one completion: the
/// RECV's, which holds the whole identity line and arrives at EOF. The links
/// are hard so that the close runs whatever happened before it; a failed
/// connect's completion always comes before its RECV's, which then fails
/// fast on the unconnected socket. A slot is reused when its RECV completes:
/// the pending CLOSE holds the old fd number, and the new socket gets a
/// different one, so nothing can be closed twice.
///
/// Nothing is allocated per connection: slots, receive buffers, the name
/// table and the per-client arrays are sized up front.
final class BenchClientWorker: @unchecked Sendable {
    // user_data: op (8 bits) | slot generation (24 bits) | slot index (32 bits).
    enum Op: UInt64 {
        case connect = 1, recv = 2, close = 3, cancel = 4
    }

    struct Slot {
        var fd: Int32 = -1
        var client: Int32 = 0
        var generation: UInt32 = 0
        var connectErrno: Int32 = 0
        var state: State = .idle
        var timedOut = false
        var cancelIssued = false
        var warm = false
        var startNs: UInt64 = 0

        enum State: UInt8 {
            case idle, active
            /// socket(2) or bind(2) failed: retried at the next tick so that
            /// EMFILE or EADDRNOTAVAIL cannot spin the loop.
            case parked
        }
    }

    /// Bytes of each slot's receive buffer: an identity line is at most
    /// 65 bytes with its '\n', so a full buffer means a bad reply.
    static let replyBytesMax = 128
    static let batchMax = 256
    static let tickNs: UInt64 = 100_000_000

    let plan: BenchClientPlan
    let progress = BenchProgress()
    /// Set when the worker could not start (its ring, say); the run fails.
    private(set) var setupError: String?
    private(set) var result = BenchWorkerResult()

    private let family: Int32
    private let localClients: Int
    private var slots: UnsafeMutablePointer<Slot>
    private var buffers: UnsafeMutableRawPointer
    private var targetAddrs: UnsafeMutablePointer<sockaddr_storage>
    private var targetLens: UnsafeMutablePointer<socklen_t>
    /// Per local client: the target index it last landed on (-1: none yet),
    /// and flags (bit 0: two or more connections, bit 1: violation counted).
    private var pins: UnsafeMutablePointer<Int16>
    private var clientFlags: UnsafeMutablePointer<UInt8>
    private var names = NameTable()
    private var targetCounts = [UInt64](repeating: 0, count: NameTable.namesMax)

    private var started: UInt64 = 0
    /// Warmup plus budget; an unlimited budget stays unlimited.
    private let startsMax: UInt64
    private var nextClient = 0
    private var active = 0
    private var parked = 0
    private var measuring = false
    private var deadlineNs: UInt64 = .max
    private var stopping = false
    private var closeFailures: UInt64 = 0

    init(plan: BenchClientPlan) {
        precondition(plan.slots >= 1, "a worker needs a slot")
        precondition(plan.threadIndex < plan.threadCount, "thread index out of range")
        precondition(plan.sources.count >= plan.threadCount, "every worker needs a client")
        self.plan = plan
        let (sum, overflow) = plan.warmup.addingReportingOverflow(plan.budget)
        startsMax = overflow ? .max : sum
        family = plan.targets[0].ip.isV4 ? AF_INET : AF_INET6
        localClients = (plan.sources.count - plan.threadIndex + plan.threadCount - 1) / plan.threadCount
        slots = .allocate(capacity: plan.slots)
        slots.initialize(repeating: Slot(), count: plan.slots)
        buffers = .allocate(byteCount: plan.slots * BenchClientWorker.replyBytesMax, alignment: 64)
        targetAddrs = .allocate(capacity: plan.targets.count)
        targetLens = .allocate(capacity: plan.targets.count)
        for (i, t) in plan.targets.enumerated() {
            let (ss, len) = Sockets.storage(for: t)
            targetAddrs[i] = ss
            targetLens[i] = len
        }
        pins = .allocate(capacity: localClients)
        pins.initialize(repeating: -1, count: localClients)
        clientFlags = .allocate(capacity: localClients)
        clientFlags.initialize(repeating: 0, count: localClients)
    }

    deinit {
        slots.deallocate()
        buffers.deallocate()
        targetAddrs.deallocate()
        targetLens.deallocate()
        pins.deallocate()
        clientFlags.deallocate()
    }

    // MARK: the loop

    /// Runs to completion on the calling thread, which must be the only one
    /// to touch this worker until `progress.finished` is set.
    func run() {
        defer { progress.finished.store(true, ordering: .releasing) }
        let sq = benchNextPowerOfTwo(min(max(3 * plan.slots, 16), 4096))
        let cq = benchNextPowerOfTwo(min(max(4 * plan.slots, 2 * sq), 65536))
        // Created here: a SINGLE_ISSUER ring belongs to the thread that made it.
        let ring: Ring
        do {
            ring = try Ring(entries: UInt32(sq), cqEntries: UInt32(cq))
        } catch {
            setupError = "\(error)"
            return
        }
        let cqes = UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>.allocate(capacity: BenchClientWorker.batchMax)
        defer { cqes.deallocate() }
        let batch = UnsafeMutablePointer<Ring.Completion>.allocate(capacity: BenchClientWorker.batchMax)
        defer { batch.deallocate() }

        var now = benchNowNs()
        if plan.warmup == 0 { beginMeasuring(now) }
        for s in 0..<plan.slots {
            guard canStart(now) else { break }
            start(s, now, ring)
        }
        var nextTickNs = now + BenchClientWorker.tickNs
        while active > 0 || (parked > 0 && canStart(now)) {
            let waitNs = nextTickNs > now ? nextTickNs - now : 0
            ring.submitAndWait(timeoutMs: Int64(max(1, waitNs / 1_000_000)))
            now = benchNowNs()
            if !stopping && benchStopRequested.load(ordering: .relaxed) {
                stopping = true
                result.interrupted = true
            }
            // Reap first, then handle: handling queues new work, and the
            // completion queue is never walked while it changes.
            while true {
                let n = ring.reap(cqes, batch, max: BenchClientWorker.batchMax) { c in
                    handle(c.userData, c.res, now, ring)
                }
                if n < BenchClientWorker.batchMax { break }
            }
            if now >= nextTickNs {
                tick(now, ring)
                nextTickNs = now + BenchClientWorker.tickNs
            }
            publish()
        }
        ring.submit()
        finishResult()
        publish()
    }

    @inline(__always)
    private func canStart(_ now: UInt64) -> Bool {
        !stopping && started < startsMax && now < deadlineNs
    }

    private func beginMeasuring(_ now: UInt64) {
        measuring = true
        result.measureStartNs = now
        let (d, overflow) = now.addingReportingOverflow(plan.durationNs)
        deadlineNs = overflow ? .max : d
    }

    @inline(__always)
    private func userData(_ op: Op, _ s: Int) -> UInt64 {
        op.rawValue << 56 | UInt64(slots[s].generation & 0xFF_FFFF) << 32 | UInt64(UInt32(s))
    }

    /// Opens the next client's connection on slot `s`.
    private func start(_ s: Int, _ now: UInt64, _ ring: Ring) {
        let warm = started < plan.warmup
        started += 1
        if !warm && !measuring { beginMeasuring(now) }
        let client = nextClient
        nextClient += 1
        if nextClient == localClients { nextClient = 0 }
        let global = plan.threadIndex + client * plan.threadCount
        let slot = slots + s
        slot.pointee.warm = warm

        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 {
            setupFailed(s, errno: errno, warm: warm, now)
            return
        }
        // The port is chosen at connect(2), per 4-tuple, so one source
        // address can have as many connections as there are destinations × ports.
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_IP), IP_BIND_ADDRESS_NO_PORT, &one, socklen_t(MemoryLayout<Int32>.size))
        var (src, srcLen) = Sockets.storage(for: SocketAddress(ip: plan.sources[global], port: 0))
        let rc = withUnsafePointer(to: &src) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, srcLen) }
        }
        if rc != 0 {
            let e = errno
            close(fd)
            setupFailed(s, errno: e, warm: warm, now)
            return
        }
        slot.pointee.fd = fd
        slot.pointee.client = Int32(client)
        slot.pointee.generation &+= 1
        slot.pointee.connectErrno = 0
        slot.pointee.state = .active
        slot.pointee.timedOut = false
        slot.pointee.cancelIssued = false
        slot.pointee.startNs = benchNowNs()
        active += 1

        let t = global % plan.targets.count
        ring.reserve(3)
        let c = ring.sqe()
        targetAddrs.advanced(by: t).withMemoryRebound(to: sockaddr.self, capacity: 1) {
            io_uring_prep_connect(c, fd, $0, targetLens[t])
        }
        c.pointee.flags |= UInt8(sticky_iosqe_io_hardlink | sticky_iosqe_cqe_skip_success)
        io_uring_sqe_set_data64(c, userData(.connect, s))
        let r = ring.sqe()
        io_uring_prep_recv(r, fd, buffers + s * BenchClientWorker.replyBytesMax, BenchClientWorker.replyBytesMax, Int32(MSG_WAITALL))
        r.pointee.flags |= UInt8(sticky_iosqe_io_hardlink)
        io_uring_sqe_set_data64(r, userData(.recv, s))
        let x = ring.sqe()
        io_uring_prep_close(x, fd)
        x.pointee.flags |= UInt8(sticky_iosqe_cqe_skip_success)
        io_uring_sqe_set_data64(x, userData(.close, s))
    }

    private func setupFailed(_ s: Int, errno e: Int32, warm: Bool, _ now: UInt64) {
        countFailure(BenchErrorKind.of(errno: e), errno: e, warm: warm, now)
        slots[s].state = .parked
        parked += 1
    }

    private func handle(_ ud: UInt64, _ res: Int32, _ now: UInt64, _ ring: Ring) {
        let s = Int(UInt32(truncatingIfNeeded: ud))
        let generation = UInt32(truncatingIfNeeded: ud >> 32) & 0xFF_FFFF
        switch Op(rawValue: ud >> 56) {
        case .connect:
            // Only failures post (CQE_SKIP_SUCCESS), always before the RECV's.
            precondition(s < plan.slots, "completion for a slot that does not exist")
            precondition(slots[s].state == .active, "connect completion on an idle slot")
            precondition(slots[s].generation & 0xFF_FFFF == generation, "connect completion from an older use of the slot")
            slots[s].connectErrno = -res
        case .recv:
            precondition(s < plan.slots, "completion for a slot that does not exist")
            precondition(slots[s].state == .active, "recv completion on an idle slot")
            precondition(slots[s].generation & 0xFF_FFFF == generation, "recv completion from an older use of the slot")
            complete(s, res, now)
            if canStart(now) { start(s, now, ring) }
        case .close:
            // The fd is gone either way; nothing to retry.
            closeFailures += 1
        case .cancel, .none:
            break
        }
    }

    /// Accounts for the connection on slot `s`, whose RECV returned `res`.
    private func complete(_ s: Int, _ res: Int32, _ now: UInt64) {
        let slot = slots + s
        slot.pointee.state = .idle
        active -= 1
        let warm = slot.pointee.warm
        if slot.pointee.timedOut {
            countFailure(.timeout, errno: 0, warm: warm, now)
            return
        }
        if slot.pointee.connectErrno != 0 {
            let e = slot.pointee.connectErrno
            countFailure(BenchErrorKind.of(errno: e), errno: e, warm: warm, now)
            return
        }
        if res < 0 {
            countFailure(BenchErrorKind.of(errno: -res), errno: -res, warm: warm, now)
            return
        }
        if res == 0 {
            countFailure(.noReply, errno: 0, warm: warm, now)
            return
        }
        // MSG_WAITALL: fewer bytes than the buffer means EOF came after them.
        let n = Int(res)
        guard n < BenchClientWorker.replyBytesMax else {
            countFailure(.badReply, errno: 0, warm: warm, now)
            return
        }
        let p = (buffers + s * BenchClientWorker.replyBytesMax).assumingMemoryBound(to: UInt8.self)
        var end = n
        guard p[end - 1] == UInt8(ascii: "\n") else {
            countFailure(.badReply, errno: 0, warm: warm, now)
            return
        }
        end -= 1
        if end > 0 && p[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        guard end >= 1, end <= NameTable.nameBytesMax, memchr(p, 0x0A, end) == nil,
              let target = names.intern(p, end) else {
            countFailure(.badReply, errno: 0, warm: warm, now)
            return
        }
        if warm {
            result.warmupSuccesses += 1
        } else {
            result.successes += 1
            result.histogram.record(now &- slot.pointee.startNs)
            targetCounts[target] += 1
            result.measureEndNs = now
        }
        track(client: Int(slot.pointee.client), target: target)
    }

    /// Stickiness: warmup connections count here too, since they are what
    /// pins a client in the first place.
    @inline(__always)
    private func track(client c: Int, target: Int) {
        let previous = Int(pins[c])
        if previous < 0 {
            pins[c] = Int16(target)
            result.clientsSeen += 1
            return
        }
        if clientFlags[c] & 1 == 0 {
            clientFlags[c] |= 1
            result.clientsMulti += 1
        }
        guard previous != target else { return }
        result.moves += 1
        pins[c] = Int16(target)
        if clientFlags[c] & 2 == 0 {
            clientFlags[c] |= 2
            result.violations += 1
            if result.examples.count < 5 {
                let ip = plan.sources[plan.threadIndex + c * plan.threadCount]
                result.examples.append(ViolationExample(client: "\(ip)", first: names.name(previous), then: names.name(target)))
            }
        }
    }

    private func countFailure(_ kind: BenchErrorKind, errno e: Int32, warm: Bool, _ now: UInt64) {
        if warm {
            result.warmupErrors += 1
        } else {
            result.errors.add(kind, errno: e)
            result.measureEndNs = now
        }
    }

    /// Ten times a second: give up on slow connections, retry parked slots.
    ///
    /// `shutdown(2)` on an active slot's fd is safe because its CLOSE only
    /// runs after its RECV completes, and with DEFER_TASKRUN completions and
    /// the linked CLOSE only happen inside `submitAndWait`, after which the
    /// loop reaps everything before it gets here. (Without DEFER_TASKRUN, on
    /// kernels before 6.1, a slot timing out in the same instant as it
    /// completes could shut down a reused fd number; the Ring falls back to
    /// that mode only there.)
    private func tick(_ now: UInt64, _ ring: Ring) {
        for s in 0..<plan.slots {
            let slot = slots + s
            switch slot.pointee.state {
            case .active:
                // A slot started while handling this batch began after `now`.
                guard now > slot.pointee.startNs else { continue }
                let age = now - slot.pointee.startNs
                guard age > plan.timeoutNs else { continue }
                if !slot.pointee.timedOut {
                    // Wakes a pending connect or recv with an error or EOF;
                    // the chain then closes the socket as usual.
                    slot.pointee.timedOut = true
                    shutdown(slot.pointee.fd, Int32(SHUT_RDWR))
                } else if !slot.pointee.cancelIssued && age > 2 * plan.timeoutNs {
                    slot.pointee.cancelIssued = true
                    let c = ring.sqe()
                    io_uring_prep_cancel_fd(c, slot.pointee.fd, UInt32(IORING_ASYNC_CANCEL_ALL))
                    io_uring_sqe_set_data64(c, userData(.cancel, s))
                }
            case .parked:
                slot.pointee.state = .idle
                parked -= 1
                if canStart(now) { start(s, now, ring) }
            case .idle:
                if canStart(now) { start(s, now, ring) }
            }
        }
    }

    private func publish() {
        progress.done.store(Int(result.successes + result.warmupSuccesses), ordering: .relaxed)
        progress.errors.store(Int(result.errors.total + result.warmupErrors), ordering: .relaxed)
        progress.violations.store(result.violations, ordering: .relaxed)
        progress.inFlight.store(active, ordering: .relaxed)
    }

    private func finishResult() {
        for i in 0..<names.count where targetCounts[i] > 0 {
            result.targetCounts[names.name(i), default: 0] += targetCounts[i]
        }
        result.closeFailures = closeFailures
    }
}

func benchNextPowerOfTwo(_ n: Int) -> Int {
    var p = 1
    while p < n { p <<= 1 }
    return p
}

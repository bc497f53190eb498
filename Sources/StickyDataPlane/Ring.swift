import CURing
import CURingShim
import Glibc

/// One io_uring, owned by one thread.
///
/// Submission never fails for lack of room: `sqe()` flushes the queue to the
/// kernel when it is full and tries again, and `reserve(_:)` makes sure a
/// linked chain lands in a single submission (a chain split across two
/// `io_uring_enter` calls loses its link, and a cancel would then race the
/// close it must precede).
public final class Ring {
    /// Heap-allocated so its address is stable: liburing is handed a pointer
    /// on every call, and an inout class property may be copied around.
    @usableFromInline let ring: UnsafeMutablePointer<io_uring>
    public let entries: UInt32
    /// Whether the kernel took SINGLE_ISSUER|DEFER_TASKRUN. Without it, task
    /// work runs at arbitrary points, which the loop tolerates but pays for.
    public let deferredTaskRun: Bool
    /// How often `sqe()` found the queue full and flushed it early.
    public private(set) var sqFullFlushes = 0

    public init(entries: UInt32, cqEntries: UInt32 = 0) throws {
        precondition(entries >= 1, "a ring needs at least one entry")
        self.entries = entries
        let r = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        r.initialize(to: io_uring())
        func setup(_ flags: UInt32) -> Int32 {
            var params = io_uring_params()
            params.flags = flags
            if cqEntries > 0 {
                params.flags |= UInt32(IORING_SETUP_CQSIZE)
                params.cq_entries = cqEntries
            }
            return io_uring_queue_init_params(entries, r, &params)
        }
        let preferred = UInt32(IORING_SETUP_SINGLE_ISSUER) | UInt32(IORING_SETUP_DEFER_TASKRUN)
        var rc = setup(preferred | UInt32(IORING_SETUP_SUBMIT_ALL))
        var deferred = true
        if rc == -EINVAL {
            // Kernels before 6.1 reject DEFER_TASKRUN; run without it.
            rc = setup(UInt32(IORING_SETUP_SUBMIT_ALL))
            deferred = false
        }
        if rc == -EINVAL { rc = setup(0) }
        guard rc == 0 else {
            r.deallocate()
            // EPERM and ENOSYS are the operator's to fix, not ours: say where.
            let hint = (rc == -EPERM || rc == -ENOSYS)
                ? "io_uring_queue_init_params (io_uring is disabled here: check the sysctl kernel.io_uring_disabled, a seccomp or container policy, or the unit's SystemCallFilter)"
                : (rc == -ENOMEM ? "io_uring_queue_init_params (out of locked memory for the ring: raise LimitMEMLOCK or lower the ring size)"
                                 : "io_uring_queue_init_params")
            throw SystemError(hint, errno: -rc)
        }
        ring = r
        deferredTaskRun = deferred
        // Registering the ring's own fd spares io_uring_enter an fd-table
        // lookup on every call; older kernels refuse it, which costs nothing.
        _ = io_uring_register_ring_fd(r)
    }

    deinit {
        io_uring_queue_exit(ring)
        ring.deallocate()
    }

    public var fd: Int32 { ring.pointee.ring_fd }

    /// A submission entry, flushing a full queue first.
    @inlinable
    public func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if let s = io_uring_get_sqe(ring) { return s }
        flushForRoom()
        guard let s = io_uring_get_sqe(ring) else {
            preconditionFailure("submission queue still full after a flush")
        }
        return s
    }

    /// Makes room for `count` entries that must go in one submission.
    @inlinable
    public func reserve(_ count: UInt32) {
        precondition(count <= entries, "a chain longer than the ring cannot be submitted whole")
        if io_uring_sq_space_left(ring) < count { flushForRoom() }
    }

    @usableFromInline
    func flushForRoom() {
        sqFullFlushes += 1
        _ = submit()
    }

    /// Hands queued entries to the kernel without waiting. Returns how many,
    /// or -errno. EBUSY (completions backed up) is the caller's cue to reap.
    @discardableResult
    public func submit() -> Int32 {
        while true {
            let r = io_uring_submit(ring)
            if r == -EINTR { continue }
            return r
        }
    }

    /// Submits and waits for at least one completion, or `timeoutMs`.
    /// With DEFER_TASKRUN this is also where the kernel runs our task work,
    /// so completions only appear here, never behind the loop's back.
    public func submitAndWait(timeoutMs: Int64?) {
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        if let ms = timeoutMs {
            var ts = __kernel_timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
            _ = io_uring_submit_and_wait_timeout(ring, &cqe, 1, &ts, nil)
        } else {
            _ = io_uring_submit_and_wait(ring, 1)
        }
    }

    /// Copies up to `max` ready completions into `into` and returns the
    /// count; the caller must call `advance` after handling them.
    @inlinable
    public func peekBatch(_ into: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>, max: UInt32) -> Int {
        Int(io_uring_peek_batch_cqe(ring, into, max))
    }

    @inlinable
    public func advance(_ count: Int) {
        io_uring_cq_advance(ring, UInt32(count))
    }

    /// One completion, copied out of the CQ, in the ring's terms: callers
    /// never read an `io_uring_cqe`.
    public struct Completion {
        public var userData: UInt64
        public var res: Int32
        public var flags: UInt32
        @inlinable
        public init(userData: UInt64, res: Int32, flags: UInt32) {
            self.userData = userData
            self.res = res
            self.flags = flags
        }
        /// More completions will come for this submission (a multishot
        /// operation still armed); the slot keeps it counted in flight.
        @inlinable public var more: Bool { flags & UInt32(IORING_CQE_F_MORE) != 0 }
        /// The provided buffer a recv filled, if it took one.
        @inlinable public var bufferID: UInt16? {
            flags & UInt32(IORING_CQE_F_BUFFER) != 0 ? UInt16(truncatingIfNeeded: flags >> 16) : nil
        }
    }

    /// Reaps up to `max` ready completions into `scratch`, advances the CQ,
    /// then calls `body` for each: completions are copied out first, so a
    /// handler that submits (or reaps) can never recurse into the CQ.
    /// Returns how many were handled. `scratch` must hold `max` entries and
    /// `cqes` as many pointers.
    @inlinable
    public func reap(_ cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>,
                     _ scratch: UnsafeMutablePointer<Completion>, max: Int,
                     _ body: (Completion) -> Void) -> Int {
        let n = peekBatch(cqes, max: UInt32(max))
        for i in 0..<n {
            let c = cqes[i]!.pointee
            scratch[i] = Completion(userData: c.user_data, res: c.res, flags: c.flags)
        }
        advance(n)
        for i in 0..<n { body(scratch[i]) }
        return n
    }

    /// Registers a provided-buffer ring (liburing 2.3 has no
    /// io_uring_setup_buf_ring, so map and register by hand).
    public func registerBufferRing(_ br: UnsafeMutablePointer<io_uring_buf_ring>, entries: UInt32, group: UInt16) throws {
        var reg = io_uring_buf_reg()
        reg.ring_addr = UInt64(UInt(bitPattern: br))
        reg.ring_entries = entries
        reg.bgid = group
        let rc = io_uring_register_buf_ring(ring, &reg, 0)
        guard rc == 0 else { throw SystemError("io_uring_register_buf_ring", errno: -rc) }
    }
}

/// Durations for timeout entries, in memory that outlives them: the kernel
/// reads a timespec when the entry is submitted, not when it is prepared.
public final class TimeoutTable {
    @usableFromInline let specs: UnsafeMutablePointer<__kernel_timespec>
    public let count: Int

    public init(count: Int, ms: Int64 = 0) {
        precondition(count >= 1, "a timeout table holds at least one duration")
        self.count = count
        specs = .allocate(capacity: count)
        specs.initialize(repeating: TimeoutTable.spec(ms), count: count)
    }

    deinit { specs.deallocate() }

    @inline(__always)
    static func spec(_ ms: Int64) -> __kernel_timespec {
        __kernel_timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    }

    /// Sets duration `i`; entries submitted from now on read the new value.
    @inline(__always)
    public func set(_ i: Int = 0, ms: Int64) {
        precondition(i >= 0 && i < count, "timeout index out of range")
        specs[i] = TimeoutTable.spec(ms)
    }

    @inline(__always)
    func pointer(_ i: Int) -> UnsafeMutablePointer<__kernel_timespec> {
        precondition(i >= 0 && i < count, "timeout index out of range")
        return specs + i
    }
}

/// A reaper that owns its scratch: the worker loop's view of the CQ.
public final class CompletionBatch {
    public let capacity: Int
    @usableFromInline let cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    @usableFromInline let scratch: UnsafeMutablePointer<Ring.Completion>

    public init(capacity: Int) {
        self.capacity = capacity
        cqes = .allocate(capacity: capacity)
        scratch = .allocate(capacity: capacity)
    }

    deinit {
        cqes.deallocate()
        scratch.deallocate()
    }

    /// Reaps one batch from `ring` and hands each completion to `body`.
    @inlinable
    public func reap(_ ring: Ring, _ body: (Ring.Completion) -> Void) -> Int {
        ring.reap(cqes, scratch, max: capacity, body)
    }
}

// MARK: - Typed submissions
//
// The only place that prepares SQEs. Each call names the operation, takes
// the user_data the completion will carry, and says how it links to the
// next entry; chains that must land whole reserve their room first, so a
// link is never split across two io_uring_enter calls.

extension Ring {
    /// How an entry is tied to the one after it.
    public enum Link {
        case none
        /// The next entry runs only if this one succeeds (IOSQE_IO_LINK).
        case soft
        /// The next entry runs whatever this one's result (IOSQE_IO_HARDLINK).
        case hard

        @usableFromInline var sqeFlags: UInt8 {
            switch self {
            case .none: return 0
            case .soft: return UInt8(sticky_iosqe_io_link)
            case .hard: return UInt8(sticky_iosqe_io_hardlink)
            }
        }
    }

    @inlinable
    func finish(_ s: UnsafeMutablePointer<io_uring_sqe>, _ userData: UInt64, _ link: Link) {
        if link != .none { s.pointee.flags |= link.sqeFlags }
        io_uring_sqe_set_data64(s, userData)
    }

    /// An 8-byte read (the worker's eventfd).
    public func read(_ fd: Int32, into buffer: UnsafeMutableRawPointer, count: UInt32, userData: UInt64) {
        let s = sqe()
        io_uring_prep_read(s, fd, buffer, count, 0)
        finish(s, userData, .none)
    }

    /// A relative timeout of duration `index` of `table`.
    public func timeout(_ table: TimeoutTable, _ index: Int = 0, userData: UInt64) {
        let s = sqe()
        io_uring_prep_timeout(s, table.pointer(index), 0, 0)
        finish(s, userData, .none)
    }

    /// An accept on a listening socket: multishot hands over the whole
    /// queue; a single accept takes one client.
    public func accept(_ fd: Int32, multishot: Bool, userData: UInt64) {
        let s = sqe()
        let flags = Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if multishot {
            io_uring_prep_multishot_accept(s, fd, nil, nil, flags)
        } else {
            io_uring_prep_accept(s, fd, nil, nil, flags)
        }
        finish(s, userData, .none)
    }

    /// An operation, hard-linked to a timeout that cancels it (the linked
    /// timeout's own completion carries `timeoutUserData`). Both land in one
    /// submission.
    @inlinable
    func withLinkedTimeout(_ timespec: UnsafeMutablePointer<__kernel_timespec>, timeoutUserData: UInt64,
                           _ prepare: (UnsafeMutablePointer<io_uring_sqe>) -> Void, userData: UInt64) {
        reserve(2)
        let s = sqe()
        prepare(s)
        finish(s, userData, .soft)
        let t = sqe()
        io_uring_prep_link_timeout(t, timespec, 0)
        finish(t, timeoutUserData, .none)
    }

    /// A connect bounded by a linked timeout.
    public func connect(_ fd: Int32, to address: UnsafePointer<sockaddr_storage>, length: UInt32,
                        timeout: TimeoutTable, _ index: Int = 0, userData: UInt64, timeoutUserData: UInt64) {
        withLinkedTimeout(timeout.pointer(index), timeoutUserData: timeoutUserData, { s in
            UnsafeRawPointer(address).withMemoryRebound(to: sockaddr.self, capacity: 1) {
                io_uring_prep_connect(s, fd, $0, length)
            }
        }, userData: userData)
    }

    /// A one-shot recv into caller memory, bounded by a linked timeout.
    public func recv(_ fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int,
                     timeout: TimeoutTable, _ index: Int = 0, userData: UInt64, timeoutUserData: UInt64) {
        withLinkedTimeout(timeout.pointer(index), timeoutUserData: timeoutUserData, { s in
            io_uring_prep_recv(s, fd, buffer, count, 0)
        }, userData: userData)
    }

    /// A multishot recv that takes its buffers from a provided-buffer ring.
    public func recvMultishot(_ fd: Int32, bufferGroup: UInt16, userData: UInt64) {
        let s = sqe()
        io_uring_prep_recv_multishot(s, fd, nil, 0, 0)
        s.pointee.flags |= UInt8(sticky_iosqe_buffer_select)
        s.pointee.buf_group = bufferGroup
        finish(s, userData, .none)
    }

    /// A send that never raises SIGPIPE.
    public func send(_ fd: Int32, from buffer: UnsafeRawPointer, count: Int, userData: UInt64) {
        let s = sqe()
        io_uring_prep_send(s, fd, buffer, count, Int32(MSG_NOSIGNAL))
        finish(s, userData, .none)
    }

    /// A gathered send (several buffers in one call) that never raises
    /// SIGPIPE. `message` and its iovecs must stay put until the completion:
    /// the kernel may read them after this loop turn.
    public func sendmsg(_ fd: Int32, _ message: UnsafePointer<msghdr>, userData: UInt64) {
        let s = sqe()
        io_uring_prep_sendmsg(s, fd, message, UInt32(MSG_NOSIGNAL))
        finish(s, userData, .none)
    }

    /// A readiness poll that stays armed (multishot).
    public func pollMultishot(_ fd: Int32, events: UInt32, userData: UInt64) {
        let s = sqe()
        io_uring_prep_poll_multishot(s, fd, events)
        finish(s, userData, .none)
    }

    /// A one-shot readiness poll.
    public func poll(_ fd: Int32, events: UInt32, userData: UInt64) {
        let s = sqe()
        io_uring_prep_poll_add(s, fd, events)
        finish(s, userData, .none)
    }

    /// Cancels the operation submitted with `target` as its user_data.
    public func cancel(_ target: UInt64, userData: UInt64) {
        let s = sqe()
        io_uring_prep_cancel64(s, target, 0)
        finish(s, userData, .none)
    }

    /// Cancels every operation on `fd`, then closes it. A pending poll or
    /// recv holds a reference to the socket, so close(2) alone would leave
    /// it open; the hard link runs the close even when nothing was pending.
    public func cancelAndClose(_ fd: Int32, cancelUserData: UInt64, closeUserData: UInt64) {
        reserve(2)
        let c = sqe()
        io_uring_prep_cancel_fd(c, fd, UInt32(IORING_ASYNC_CANCEL_ALL))
        finish(c, cancelUserData, .hard)
        let s = sqe()
        io_uring_prep_close(s, fd)
        finish(s, closeUserData, .none)
    }

    /// Closes `fd` with nothing to cancel first: for a socket no operation
    /// in the ring refers to any more.
    public func close(_ fd: Int32, userData: UInt64) {
        let s = sqe()
        io_uring_prep_close(s, fd)
        finish(s, userData, .none)
    }

    /// An operation that does nothing (tests, and waking the ring).
    public func nop(userData: UInt64) {
        let s = sqe()
        io_uring_prep_nop(s)
        finish(s, userData, .none)
    }
}

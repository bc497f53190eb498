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

    /// One completion, copied out of the CQ.
    public typealias Completion = (userData: UInt64, res: Int32, flags: UInt32)

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
            scratch[i] = (c.user_data, c.res, c.flags)
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

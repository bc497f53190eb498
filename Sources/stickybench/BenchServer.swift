import CURing
import CURingShim
import Glibc
import StickyCore
import StickyDataPlane
import Synchronization

/// Counters one serve worker publishes for `--stats` and the final summary.
final class BenchServeCounters: Sendable {
    /// One per listener (an Atomic cannot be an array element).
    final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    let accepted: [Counter]
    let failures = Atomic<Int>(0)
    let finished = Atomic<Bool>(false)

    init(listeners: Int) {
        accepted = (0..<listeners).map { _ in Counter() }
    }
}

/// One thread of `stickybench serve`: a ring with one multishot ACCEPT
/// per listener. Each accepted socket gets
///
///     SEND(name + "\n", MSG_NOSIGNAL) --hardlink--> CLOSE
///
/// with both completions skipped on success, so a connection costs the
/// kernel one accept, one send and one close, and this loop one completion.
/// The reply is each listener's fixed line: nothing is allocated per
/// connection.
final class BenchServeWorker: @unchecked Sendable {
    enum Op: UInt64 {
        case accept = 1, send = 2, close = 3
    }

    static let batchMax = 256
    /// Running out of fds or memory ends a multishot accept; wait this long
    /// before re-arming so that the loop does not spin on EMFILE.
    static let rearmDelayNs: UInt64 = 50_000_000

    let listenFDs: [Int32]
    let counters: BenchServeCounters
    private(set) var setupError: String?
    private let lines: UnsafeMutablePointer<UInt8>
    private let lineLengths: [Int]
    private static let lineStride = 72

    init(listenFDs: [Int32], names: [String]) {
        precondition(listenFDs.count == names.count, "one name per listener")
        self.listenFDs = listenFDs
        counters = BenchServeCounters(listeners: listenFDs.count)
        lines = .allocate(capacity: names.count * BenchServeWorker.lineStride)
        var lengths: [Int] = []
        for (i, name) in names.enumerated() {
            let bytes = Array(name.utf8) + [UInt8(ascii: "\n")]
            precondition(bytes.count <= BenchServeWorker.lineStride, "names are checked to be at most 64 bytes")
            for (j, b) in bytes.enumerated() { lines[i * BenchServeWorker.lineStride + j] = b }
            lengths.append(bytes.count)
        }
        lineLengths = lengths
    }

    deinit { lines.deallocate() }

    func run() {
        defer { counters.finished.store(true, ordering: .releasing) }
        let ring: Ring
        do {
            ring = try Ring(entries: 4096, cqEntries: 16384)
        } catch {
            setupError = "\(error)"
            return
        }
        let cqes = UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>.allocate(capacity: BenchServeWorker.batchMax)
        defer { cqes.deallocate() }
        let batch = UnsafeMutablePointer<Ring.Completion>.allocate(capacity: BenchServeWorker.batchMax)
        defer { batch.deallocate() }
        var accepted = [Int](repeating: 0, count: listenFDs.count)
        var failures = 0
        /// 0: armed; otherwise when to re-arm.
        var rearmAtNs = [UInt64](repeating: 0, count: listenFDs.count)

        for l in 0..<listenFDs.count { arm(l, ring) }
        while !benchStopRequested.load(ordering: .relaxed) {
            ring.submitAndWait(timeoutMs: 200)
            while true {
                let n = ring.reap(cqes, batch, max: BenchServeWorker.batchMax) { c in
                    let ud = c.userData, res = c.res, flags = c.flags
                    let l = Int(UInt32(truncatingIfNeeded: ud))
                    switch Op(rawValue: ud >> 56) {
                    case .accept:
                        if res >= 0 {
                            respond(fd: res, listener: l, ring)
                            accepted[l] += 1
                        } else {
                            failures += 1
                        }
                        if flags & UInt32(IORING_CQE_F_MORE) == 0 {
                            let backOff = res == -EMFILE || res == -ENFILE || res == -ENOMEM || res == -ENOBUFS
                            rearmAtNs[l] = backOff ? benchNowNs() + BenchServeWorker.rearmDelayNs : 1
                        }
                    case .send, .close:
                        // Failures only (CQE_SKIP_SUCCESS): the client left first.
                        failures += 1
                    case .none:
                        break
                    }
                }
                if n < BenchServeWorker.batchMax { break }
            }
            var now: UInt64 = 0
            for l in 0..<listenFDs.count where rearmAtNs[l] != 0 {
                if now == 0 { now = benchNowNs() }
                if rearmAtNs[l] <= now {
                    rearmAtNs[l] = 0
                    arm(l, ring)
                }
            }
            for l in 0..<listenFDs.count {
                counters.accepted[l].value.store(accepted[l], ordering: .relaxed)
            }
            counters.failures.store(failures, ordering: .relaxed)
        }
        // Ring teardown cancels the accepts; the sockets close with the process.
    }

    private func arm(_ l: Int, _ ring: Ring) {
        let s = ring.sqe()
        io_uring_prep_multishot_accept(s, listenFDs[l], nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        io_uring_sqe_set_data64(s, Op.accept.rawValue << 56 | UInt64(l))
    }

    @inline(__always)
    private func respond(fd: Int32, listener l: Int, _ ring: Ring) {
        ring.reserve(2)
        let s = ring.sqe()
        io_uring_prep_send(s, fd, lines + l * BenchServeWorker.lineStride, lineLengths[l], Int32(MSG_NOSIGNAL))
        s.pointee.flags |= UInt8(sticky_iosqe_io_hardlink | sticky_iosqe_cqe_skip_success)
        io_uring_sqe_set_data64(s, Op.send.rawValue << 56 | UInt64(l))
        let c = ring.sqe()
        io_uring_prep_close(c, fd)
        c.pointee.flags |= UInt8(sticky_iosqe_cqe_skip_success)
        io_uring_sqe_set_data64(c, Op.close.rawValue << 56 | UInt64(l))
    }
}

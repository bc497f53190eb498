import CURing
import CURingShim
import Glibc
import StickyCore
import XCTest

@testable import StickyDataPlane

final class RingTests: XCTestCase {
    /// A ring of one entry: every second `sqe()` finds the queue full and
    /// must flush, and every completion must still arrive exactly once.
    func testFullSubmissionQueueIsFlushedNotLost() throws {
        let ring = try Ring(entries: 1, cqEntries: 4)
        let total = 500
        var seen = Set<UInt64>()
        let cqes = UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>.allocate(capacity: 8)
        defer { cqes.deallocate() }
        func reap() {
            while true {
                let n = ring.peekBatch(cqes, max: 8)
                if n == 0 { return }
                for i in 0..<n {
                    XCTAssertEqual(cqes[i]!.pointee.res, 0)
                    XCTAssertTrue(seen.insert(cqes[i]!.pointee.user_data).inserted, "completion seen twice")
                }
                ring.advance(n)
            }
        }
        for k in 0..<total {
            let s = ring.sqe()
            io_uring_prep_nop(s)
            io_uring_sqe_set_data64(s, UInt64(k + 1))
            // Reap as we go: with a CQ of 4 the kernel would otherwise have
            // to hold the overflow (it does, with NODROP, but slower).
            if k % 3 == 0 { reap() }
        }
        var rounds = 0
        while seen.count < total && rounds < 1000 {
            ring.submitAndWait(timeoutMs: 10)
            reap()
            rounds += 1
        }
        XCTAssertEqual(seen.count, total)
        XCTAssertGreaterThan(ring.sqFullFlushes, total / 2, "a one-entry ring must have flushed on almost every entry")
    }

    /// A linked pair cannot be split across submissions: `reserve` flushes
    /// first when there is not room for both.
    func testReserveKeepsChainsInOneSubmission() throws {
        let ring = try Ring(entries: 2)
        let first = ring.sqe()
        io_uring_prep_nop(first)
        io_uring_sqe_set_data64(first, 1)
        let before = ring.sqFullFlushes
        ring.reserve(2)
        XCTAssertEqual(ring.sqFullFlushes, before + 1)
        let a = ring.sqe()
        io_uring_prep_nop(a)
        a.pointee.flags |= UInt8(sticky_iosqe_io_link)
        io_uring_sqe_set_data64(a, 2)
        let b = ring.sqe()
        io_uring_prep_nop(b)
        io_uring_sqe_set_data64(b, 3)
        XCTAssertEqual(ring.sqFullFlushes, before + 1, "the chain fitted without another flush")
        ring.submitAndWait(timeoutMs: 100)
    }

    func testUserDataLayoutRoundTrips() {
        let ud = UserData(op: .sendBackend, generation: 0x12_3456, index: 0xDEAD_BEEF)
        XCTAssertEqual(ud.op, .sendBackend)
        XCTAssertEqual(ud.generation, 0x12_3456)
        XCTAssertEqual(ud.index, 0xDEAD_BEEF)
        // Generations wrap at 24 bits; the op byte is untouched.
        let wrapped = UserData(op: .close, generation: 0x1FF_FFFF, index: 7)
        XCTAssertEqual(wrapped.generation, 0xFF_FFFF)
        XCTAssertEqual(wrapped.op, .close)
        XCTAssertEqual(UserData(raw: ud.raw), ud)
    }

    func testPipePoolIsBoundedAndReusesPipes() {
        let pool = PipePool(capacity: 2, pipeSizeBytes: 65536)
        let a = pool.acquire()
        let b = pool.acquire()
        XCTAssertNotNil(a)
        XCTAssertNotNil(b)
        XCTAssertNil(pool.acquire(), "the pool is bounded")
        pool.release(a!)
        let c = pool.acquire()
        XCTAssertEqual(c, a, "a released pipe is reused, not recreated")
        XCTAssertEqual(pool.openCount, 2)
        pool.discard(b!)
        XCTAssertEqual(pool.openCount, 1)
        XCTAssertNotNil(pool.acquire(), "a discarded pipe's place can be filled again")
    }

    func testSteeringHashMatchesForEveryWorkerCount() {
        // The user-space mirror must agree with itself across masks: all of a
        // /24 goes to one worker when the prefix is 24.
        for workers in 1...4 {
            let w = Sockets.steeredWorker(for: .v4(0x0A00_0100), prefixLength: 24, workers: workers)
            for host in 0..<256 {
                XCTAssertEqual(Sockets.steeredWorker(for: .v4(0x0A00_0100 | UInt32(host)), prefixLength: 24, workers: workers), w)
            }
        }
    }
}

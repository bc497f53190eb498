import CURing
import Glibc

/// A provided-buffer ring for the copy engine: the kernel picks a free
/// buffer for each multishot recv completion, and the loop hands it back
/// once the bytes in it have been sent on.
final class BufferRing {
    static let group: UInt16 = 0

    let count: Int
    let size: Int
    let mask: Int32
    private let ring: UnsafeMutablePointer<io_uring_buf_ring>
    private let ringBytes: Int
    private let memory: UnsafeMutableRawPointer
    /// Buffers the kernel may fill now.
    private(set) var freeCount: Int

    init(ring io: Ring, count: Int, size: Int) throws {
        precondition(count > 0 && count & (count - 1) == 0, "buffer count must be a power of two")
        precondition(count <= 32768, "buffer ids are 16 bits and the kernel caps rings at 32768")
        self.count = count
        self.size = size
        mask = Int32(count - 1)
        ringBytes = count * MemoryLayout<io_uring_buf>.stride
        // The ring must be page aligned; mmap gives that and zeroed memory.
        guard let r = mmap(nil, ringBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              r != MAP_FAILED else { throw SystemError("mmap(buffer ring)", errno: errno) }
        ring = r.assumingMemoryBound(to: io_uring_buf_ring.self)
        guard let m = mmap(nil, count * size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              m != MAP_FAILED else {
            munmap(r, ringBytes)
            throw SystemError("mmap(buffers)", errno: errno)
        }
        memory = m
        io_uring_buf_ring_init(ring)
        for i in 0..<count {
            io_uring_buf_ring_add(ring, memory + i * size, UInt32(size), UInt16(i), mask, Int32(i))
        }
        io_uring_buf_ring_advance(ring, Int32(count))
        freeCount = count
        do {
            try io.registerBufferRing(ring, entries: UInt32(count), group: BufferRing.group)
        } catch {
            munmap(m, count * size)
            munmap(r, ringBytes)
            throw error
        }
    }

    deinit {
        munmap(memory, count * size)
        munmap(UnsafeMutableRawPointer(ring), ringBytes)
    }

    @inline(__always)
    func address(_ bid: UInt16) -> UnsafeMutableRawPointer { memory + Int(bid) * size }

    /// The kernel took a buffer (a recv completion named it).
    @inline(__always)
    func taken() { freeCount -= 1 }

    /// Hands a buffer back to the kernel.
    @inline(__always)
    func recycle(_ bid: UInt16) {
        io_uring_buf_ring_add(ring, address(bid), UInt32(size), bid, mask, 0)
        io_uring_buf_ring_advance(ring, 1)
        freeCount += 1
    }
}

/// The copy engine's gathered sends: per slot and direction, one msghdr and
/// up to `vectorsMax` iovecs over the queued buffers, so a direction whose
/// queue holds several buffers sends them in one call (one trip through the
/// TCP stack, one larger segment on the wire) instead of one a loop turn.
///
/// The memory must stay put while a send is in flight, and there is at most
/// one per direction, so each direction owns its area. It is mapped, not
/// allocated: a page costs RSS only once a slot on it has gathered a send,
/// which an idle or small-message connection never does.
final class GatherArea {
    /// The most buffers one send gathers: the queue's high-water mark with
    /// the smallest usual buffers (16 KiB); more is rarely queued.
    static let vectorsMax = 8
    static let stride = (MemoryLayout<msghdr>.stride + vectorsMax * MemoryLayout<iovec>.stride + 63) & ~63

    private let base: UnsafeMutableRawPointer
    private let bytes: Int

    init(slots: Int) throws {
        bytes = max(1, slots * 2 * GatherArea.stride)
        guard let m = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
              m != MAP_FAILED else { throw SystemError("mmap(gather area)", errno: errno) }
        base = m
    }

    deinit { munmap(base, bytes) }

    @inline(__always)
    func message(_ slot: Int, down: Bool) -> UnsafeMutablePointer<msghdr> {
        (base + (slot * 2 + (down ? 1 : 0)) * GatherArea.stride).assumingMemoryBound(to: msghdr.self)
    }

    @inline(__always)
    func vectors(_ slot: Int, down: Bool) -> UnsafeMutablePointer<iovec> {
        (base + (slot * 2 + (down ? 1 : 0)) * GatherArea.stride + MemoryLayout<msghdr>.stride)
            .assumingMemoryBound(to: iovec.self)
    }
}

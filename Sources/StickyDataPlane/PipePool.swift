import CURingShim
import Glibc

/// A bounded pool of pipes for the splice engine.
///
/// A direction holds a pipe only while bytes are in flight through it and
/// gives it back as soon as it is empty, so an idle connection holds none:
/// the pool is sized for concurrent transfers, not for connections. The
/// bound matters because pipe-user-pages limits cap how many pipe pages a
/// user may have, and each pipe costs two descriptors.
final class PipePool {
    struct Pipe {
        var read: Int32 = -1
        var write: Int32 = -1
    }

    private let pipes: UnsafeMutablePointer<Pipe>
    private let free: UnsafeMutablePointer<Int32>
    private var freeCount: Int
    let capacity: Int
    let pipeSizeBytes: Int32
    /// Pipes currently open (in use or idle in the pool).
    private(set) var openCount = 0
    /// pipe2(2) failures (EMFILE, ENFILE, or the pipe-user-pages hard limit).
    private(set) var createFailures = 0

    init(capacity: Int, pipeSizeBytes: Int) {
        precondition(capacity > 0, "pipe pool capacity must be positive")
        self.capacity = capacity
        self.pipeSizeBytes = Int32(pipeSizeBytes)
        pipes = .allocate(capacity: capacity)
        pipes.initialize(repeating: Pipe(), count: capacity)
        free = .allocate(capacity: capacity)
        // Pop from the top: hand out low indices first so few pipes get created.
        for i in 0..<capacity { free[i] = Int32(capacity - 1 - i) }
        freeCount = capacity
    }

    deinit {
        for i in 0..<capacity where pipes[i].read >= 0 {
            close(pipes[i].read)
            close(pipes[i].write)
        }
        pipes.deallocate()
        free.deallocate()
    }

    var available: Int { freeCount }

    @inline(__always) func readFD(_ i: Int32) -> Int32 { pipes[Int(i)].read }
    @inline(__always) func writeFD(_ i: Int32) -> Int32 { pipes[Int(i)].write }

    /// An empty pipe, or nil when the pool is exhausted or pipe2 fails.
    /// `mayCreate` false: only a pipe already open will do (the worker is
    /// short of descriptors).
    func acquire(mayCreate: Bool = true) -> Int32? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        let i = free[freeCount]
        if pipes[Int(i)].read < 0 {
            guard mayCreate else {
                freeCount += 1
                return nil
            }
            var fds: (Int32, Int32) = (-1, -1)
            let rc = withUnsafeMutableBytes(of: &fds) {
                sticky_pipe_nonblocking($0.baseAddress!.assumingMemoryBound(to: Int32.self))
            }
            guard rc == 0 else {
                createFailures += 1
                freeCount += 1
                return nil
            }
            // A failed resize (pipe-max-size, or over the soft page limit)
            // leaves the default 64 KiB pipe, which still works.
            _ = sticky_set_pipe_size(fds.1, pipeSizeBytes)
            pipes[Int(i)] = Pipe(read: fds.0, write: fds.1)
            openCount += 1
        }
        return i
    }

    /// Returns an empty pipe to the pool.
    func release(_ i: Int32) {
        precondition(freeCount < capacity, "pipe released twice")
        free[freeCount] = i
        freeCount += 1
    }

    /// Closes a pipe that still holds bytes (its connection ended mid-flight):
    /// a pipe with stale bytes must never carry another connection's data.
    func discard(_ i: Int32) {
        close(pipes[Int(i)].read)
        close(pipes[Int(i)].write)
        pipes[Int(i)] = Pipe()
        openCount -= 1
        release(i)
    }
}

import Glibc
import StickyCore
import Synchronization

/// Where access log lines go, shared by every worker. Each worker writes
/// whole batches of lines with one write(2) on an O_APPEND descriptor, so
/// lines from different workers never interleave.
///
/// The descriptor number never changes: a reopen (SIGHUP, after logrotate
/// moved the file) opens the path again and dup2()s the new file onto it.
/// dup2 swaps the file atomically under any write in progress, and a
/// number that is never closed can never be reused by a socket that a
/// worker would then write log lines into.
public final class AccessLogSink: Sendable {
    public let destination: AccessLogDestination
    let fd: Int32
    /// stderr is a socket under systemd (JOURNAL_STREAM): send with
    /// MSG_DONTWAIT so a stalled journal drops lines instead of blocking a
    /// worker's loop. A regular file's write lands in the page cache.
    let isSocket: Bool

    public init(_ destination: AccessLogDestination) throws {
        self.destination = destination
        switch destination {
        case .none:
            throw SystemError("access log: nothing to open", errno: EINVAL)
        case .stderr:
            let d = dup(2)
            guard d >= 0 else { throw SystemError("dup(stderr) for the access log", errno: errno) }
            _ = fcntl(d, F_SETFD, FD_CLOEXEC)
            fd = d
        case .file(let path):
            fd = try AccessLogSink.open(path)
        }
        var st = stat()
        isSocket = fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }

    deinit { close(fd) }

    static func open(_ path: String) throws -> Int32 {
        let d = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard d >= 0 else { throw SystemError("cannot open access log \(path)", errno: errno) }
        return d
    }

    /// After logrotate: the path again, on the same descriptor number.
    /// A failure keeps the old file (lines still go somewhere).
    public func reopen() throws {
        guard case .file(let path) = destination else { return }
        let fresh = try AccessLogSink.open(path)
        defer { close(fresh) }
        guard dup2(fresh, fd) >= 0 else { throw SystemError("dup2 onto the access log", errno: errno) }
        // dup2 clears close-on-exec on `fd`; the daemon never execs, but keep it honest.
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    /// One write of a batch of whole lines. Returns false when not all of
    /// it was written (the caller counts the batch's lines as dropped).
    func write(_ bytes: UnsafeMutablePointer<UInt8>, count: Int) -> Bool {
        while true {
            let n = isSocket ? send(fd, bytes, count, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL)) : Glibc.write(fd, bytes, count)
            if n < 0 && errno == EINTR { continue }
            return n == count
        }
    }
}

/// A worker's side of the access log: closed connections are appended as
/// fixed-size records into an array allocated once, formatted into a byte
/// buffer allocated once, and written in one batch on the worker's tick or
/// when the array fills. Nothing here allocates per connection.
final class AccessLogBuffer {
    let sink: AccessLogSink
    let records: UnsafeMutablePointer<AccessRecord>
    let capacity: Int
    var count = 0
    let text: UnsafeMutablePointer<UInt8>
    let textCapacity: Int
    /// Pool names as bytes, prepared once.
    let poolNames: [[UInt8]]
    /// Wall-clock minus monotonic milliseconds, refreshed at each flush:
    /// records carry the loop's monotonic time, lines carry wall time.
    var wallOffsetMs: Int64 = 0
    var lines: UInt64 = 0
    var dropped: UInt64 = 0

    /// Records held before a flush is forced: a tick's worth of closes at
    /// a high connection rate, at 512 bytes of text each (128 KiB).
    static let recordsMax = 256

    init(sink: AccessLogSink, poolNames: [String]) {
        self.sink = sink
        capacity = AccessLogBuffer.recordsMax
        records = .allocate(capacity: capacity)
        records.initialize(repeating: AccessRecord(), count: capacity)
        textCapacity = capacity * AccessRecord.lineBytesMax
        text = .allocate(capacity: textCapacity)
        self.poolNames = poolNames.map { Array($0.utf8) }
        refreshClock()
    }

    deinit {
        records.deinitialize(count: capacity)
        records.deallocate()
        text.deallocate()
    }

    func refreshClock() {
        var wall = timespec()
        var mono = timespec()
        clock_gettime(CLOCK_REALTIME, &wall)
        clock_gettime(CLOCK_MONOTONIC_COARSE, &mono)
        wallOffsetMs = (Int64(wall.tv_sec) - Int64(mono.tv_sec)) * 1000 + (Int64(wall.tv_nsec) - Int64(mono.tv_nsec)) / 1_000_000
    }

    /// Takes the next record to fill; flushes first when the array is full.
    @inline(__always)
    func next() -> UnsafeMutablePointer<AccessRecord> {
        if count == capacity { flush() }
        let r = records + count
        count += 1
        return r
    }

    /// Formats every held record and writes them in one go.
    func flush() {
        guard count > 0 else { return }
        refreshClock()
        var w = ByteWriter(text, capacity: textCapacity)
        for k in 0..<count {
            records[k].closeUnixMs += wallOffsetMs
            let p = Int(records[k].pool)
            records[k].format(into: &w, poolName: p < poolNames.count ? poolNames[p] : [])
        }
        precondition(!w.overflowed, "access log lines longer than AccessRecord.lineBytesMax")
        if sink.write(text, count: w.count) { lines &+= UInt64(count) } else { dropped &+= UInt64(count) }
        count = 0
    }
}

import Glibc
import Synchronization

/// A pthread running `body`, joined by `join()`. The benchmark's rings are
/// SINGLE_ISSUER, so each must be made and driven by one thread for life.
final class BenchThread {
    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    private var tid = pthread_t()

    init(_ body: @escaping () -> Void) throws {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&tid, nil, { raw in
            Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            throw BenchFailure("pthread_create: \(String(cString: strerror(rc)))")
        }
    }

    func join() { pthread_join(tid, nil) }
}

/// A run-time failure of the benchmark (not a usage error): exit status 1.
struct BenchFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

enum BenchSignals {
    /// SIGINT and SIGTERM set `benchStopRequested`; a second one kills the
    /// process as usual, for when finishing up takes too long.
    static func install() {
        signal(SIGPIPE, SIG_IGN)
        let handler: @convention(c) (Int32) -> Void = { sig in
            benchStopRequested.store(true, ordering: .relaxed)
            signal(sig, SIG_DFL)
        }
        signal(SIGINT, handler)
        signal(SIGTERM, handler)
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit and returns the result:
/// each connection slot holds a socket, and a closing one may linger briefly.
func benchRaiseFileLimit() -> Int {
    var rl = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0 else { return 1024 }
    if rl.rlim_cur < rl.rlim_max {
        var raised = rl
        raised.rlim_cur = rl.rlim_max
        if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { rl = raised }
    }
    return rl.rlim_cur > UInt64(Int.max) ? Int.max : Int(rl.rlim_cur)
}

/// Sleeps `ms` milliseconds (nanosleep; EINTR only shortens it).
func benchSleep(ms: Int) {
    var ts = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    nanosleep(&ts, nil)
}

/// Writes a line to stderr in one write(2), so progress lines from a
/// reporting thread never interleave with anything mid-line.
func benchStderr(_ line: String) {
    var s = line
    if !s.hasSuffix("\n") { s += "\n" }
    s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func benchStdout(_ text: String) {
    var s = text
    s.withUTF8 { buf in
        var off = 0
        while off < buf.count {
            let n = write(1, buf.baseAddress! + off, buf.count - off)
            if n < 0 { if errno == EINTR { continue }; return }
            off += n
        }
    }
}

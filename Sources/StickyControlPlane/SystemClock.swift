import Glibc
import StickyCore

/// The machine's clocks, for the daemon (tests use `ManualClock`).
public struct SystemClock: MillisClock {
    public init() {}

    /// The coarse monotonic clock: a few milliseconds of resolution is
    /// plenty for deadlines counted in seconds, and it costs no syscall.
    public func nowMs() -> Millis {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return Millis(ts.tv_sec) * 1000 + Millis(ts.tv_nsec / 1_000_000)
    }

    public func unixMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec / 1_000_000)
    }
}

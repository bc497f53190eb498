import Synchronization

/// Where the control plane reads the time. The core never reads a clock of
/// its own (see `Millis`): the daemon hands the control plane the system's
/// clock, and tests a `ManualClock` they move by hand, so that a drain's
/// deadline or an uptime is a fact of the test, not of the machine's speed.
public protocol MillisClock: Sendable {
    /// Milliseconds on a monotonic clock: deadlines, uptime, ages.
    func nowMs() -> Millis
    /// Unix time in milliseconds (the wall clock): only for what outlives
    /// the process, such as a drain deadline written to the state file.
    func unixMs() -> Int64
}

/// A clock that moves only when told to. Both readings move together, as
/// they would on a machine whose wall clock nobody sets.
public final class ManualClock: MillisClock {
    private let monotonicMs: Atomic<Int64>
    /// Unix time minus monotonic time: fixed, so the two never disagree.
    private let unixOffsetMs: Int64

    /// Starts away from zero: a deadline computed as `now - x` must not
    /// look like "before the clock started".
    public init(nowMs: Millis = 1_000_000, unixMs: Int64 = 1_700_000_000_000) {
        monotonicMs = Atomic(nowMs)
        unixOffsetMs = unixMs - nowMs
    }

    public func nowMs() -> Millis { monotonicMs.load(ordering: .relaxed) }

    public func unixMs() -> Int64 { unixOffsetMs + nowMs() }

    /// Moves the clock forward (never back: it is monotonic).
    public func advance(ms: Millis) {
        precondition(ms >= 0, "a monotonic clock does not go back")
        monotonicMs.add(ms, ordering: .relaxed)
    }
}

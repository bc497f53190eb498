/// How a pool's targets are checked. See docs/HEALTH.md.
public enum HealthCheckType: String, Sendable, CaseIterable {
    /// No active checks: only passive detection (connect failures), with
    /// `reviveAfterMs` as the way back up.
    case none
    /// A TCP connect; success is an established connection.
    case tcp
    /// grpc.health.v1.Health/Check over HTTP/2; success is SERVING with
    /// grpc-status 0.
    case grpc
}

/// Flap damping: each `down` within `windowMs` of earlier ones makes the
/// next `up` wait longer. The first down in a window holds nothing; the
/// second holds `holdDownMs`; each further one doubles the hold, up to
/// `holdDownMaxMs`.
public struct HealthDamping: Sendable, Equatable {
    public var windowMs: Millis = 60_000
    public var holdDownMs: Millis = 2_000
    public var holdDownMaxMs: Millis = 60_000
    public init() {}

    /// The hold after a down that is the `downsInWindow`-th (1-based) in
    /// the window.
    public func holdMs(downsInWindow: Int) -> Millis {
        guard downsInWindow >= 2, holdDownMs > 0 else { return 0 }
        var hold = holdDownMs
        // Doubling stops at the ceiling; the loop is bounded by the
        // number of downs kept (`HealthTracker.downsKeptMax`).
        for _ in 2..<downsInWindow {
            hold = min(holdDownMaxMs, hold * 2)
            if hold >= holdDownMaxMs { break }
        }
        return min(holdDownMaxMs, hold)
    }
}

/// A pool's `health` section. Without one a pool gets `type: none` with
/// passive detection on.
public struct HealthConfig: Sendable, Equatable {
    public var type: HealthCheckType = .none
    public var intervalMs: Millis = 2_000
    public var timeoutMs: Millis = 1_000
    /// Consecutive successes that bring a down target up.
    public var rise = 2
    /// Consecutive failures (probes or, with `passive`, connects) that
    /// take an up target down.
    public var fall = 3
    /// grpc: the service name asked about ("" = the server as a whole).
    public var service = ""
    /// Probe this port instead of the target's (0 = the target's port).
    public var port = 0
    /// Data-path connect failures (refused, timed out) count toward `fall`.
    public var passive = true
    /// Without active checks, how long a target passive detection took
    /// down stays down before it gets traffic again.
    public var reviveAfterMs: Millis = 10_000
    public var damping = HealthDamping()
    /// Panic mode (docs/HEALTH.md): when the targets health has up hold
    /// less than this percentage of the pool's ready weight, placement
    /// ignores health and uses the down targets too. 50 as Envoy's: with
    /// less than half the capacity healthy, the health signal is more
    /// likely wrong (a shared dependency, a partition, passive detection
    /// counting one bad moment) than half the fleet truly dead, and if it
    /// is right the remaining half would be overrun anyway. 0 turns panic
    /// off (a pool with nothing healthy refuses clients).
    public var panicThreshold = 50

    public init() {}

    /// A problem with its key (relative to `health.`), or nil.
    public func validate() -> (key: String, message: String)? {
        func ms(_ key: String, _ v: Millis, max: Millis) -> (String, String)? {
            v > 0 && v <= max ? nil : (key, "health.\(key) must be more than 0 and at most \(formatDuration(max)), got \(formatDuration(v))")
        }
        if let e = ms("interval", intervalMs, max: 3_600_000) { return e }
        if let e = ms("timeout", timeoutMs, max: 600_000) { return e }
        if timeoutMs > intervalMs {
            return ("timeout", "health.timeout (\(formatDuration(timeoutMs))) must not exceed health.interval (\(formatDuration(intervalMs))): one probe per target at a time")
        }
        if !(1...100).contains(rise) { return ("rise", "health.rise must be from 1 to 100, got \(rise)") }
        if !(1...100).contains(fall) { return ("fall", "health.fall must be from 1 to 100, got \(fall)") }
        if !(0...65_535).contains(port) { return ("port", "health.port must be from 0 to 65535, got \(port)") }
        if service.utf8.count > 200 { return ("service", "health.service must be at most 200 bytes, got \(service.utf8.count)") }
        if type != .grpc && !service.isEmpty { return ("service", "health.service applies to type grpc only (type is \(type.rawValue))") }
        if let e = ms("revive_after", reviveAfterMs, max: 86_400_000) { return e }
        if !(0...100).contains(panicThreshold) {
            return ("panic_threshold", "health.panic_threshold must be a percentage from 0 to 100 (0 turns panic mode off), got \(panicThreshold)")
        }
        if let e = ms("damping.window", damping.windowMs, max: 86_400_000) { return e }
        if damping.holdDownMs < 0 || damping.holdDownMs > 86_400_000 {
            return ("damping.hold_down", "health.damping.hold_down must be from 0 to 1d, got \(formatDuration(damping.holdDownMs))")
        }
        if let e = ms("damping.hold_down_max", damping.holdDownMaxMs, max: 86_400_000) { return e }
        if damping.holdDownMaxMs < damping.holdDownMs {
            return ("damping.hold_down_max", "health.damping.hold_down_max (\(formatDuration(damping.holdDownMaxMs))) must be at least health.damping.hold_down (\(formatDuration(damping.holdDownMs)))")
        }
        return nil
    }
}

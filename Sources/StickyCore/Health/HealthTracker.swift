/// Whether a target's checks say it can serve.
public enum HealthStatus: String, Sendable, Equatable {
    case up
    case down
}

/// A change of `HealthStatus`, with why, for the log and `show targets`.
public struct HealthTransition: Sendable, Equatable {
    public var to: HealthStatus
    public var reason: String
    public init(to: HealthStatus, reason: String) {
        self.to = to
        self.reason = reason
    }
}

/// One target's health: rise/fall counting of probe results and passive
/// connect failures, and flap damping. Pure: time is a parameter.
///
/// Rules (docs/HEALTH.md):
/// - A target starts `up`: a restart must not black-hole a pool while the
///   first checks run; a dead target is found by its first failures.
/// - `up` → `down` after `fall` consecutive failures. A failure is a failed
///   probe or, with `passive`, a data-path connect failure; a successful
///   probe resets the count.
/// - `down` → `up` after `rise` consecutive successful probes, and not
///   before the hold-down has passed (damping): while held, successes keep
///   counting, and the first moment both hold, the target is up.
/// - With no active checks (`type: none`), a down target is up again
///   `revive_after` after it went down (or after its hold-down, if later);
///   passive detection takes it down again if it still fails.
/// - Before that, a down target without active checks is given trial
///   connects (half-open, as a circuit breaker): the first
///   `trialFirstMs` after it went down, then after each failed trial
///   twice the wait, up to `revive_after`. A trial that connects brings
///   it up (not before its hold-down); so a target back within a second
///   is back in service within about a second, not `revive_after`.
public struct HealthTracker: Sendable, Equatable {
    /// Downs remembered for damping; more in one window only keeps the
    /// hold at its ceiling.
    public static let downsKeptMax = 32
    /// The wait before the first trial connect of a passively downed
    /// target: a restarted process is usually listening again within a
    /// second, and one connect a second per down target costs nothing.
    public static let trialFirstMs: Millis = 1_000

    public let config: HealthConfig
    public private(set) var status: HealthStatus = .up
    /// Consecutive failures while up; consecutive successes while down.
    public private(set) var failures = 0
    public private(set) var successes = 0
    /// When the current down started.
    public private(set) var downSinceMs: Millis = 0
    /// An `up` is not believed before this.
    public private(set) var holdUntilMs: Millis = 0
    /// Every status change since the tracker was made.
    public private(set) var transitions: UInt64 = 0
    /// Downs within the damping window, oldest first.
    public private(set) var recentDownsMs: [Millis] = []
    public private(set) var lastReason = "initial"
    /// Trial connects (no active checks): when the next is due, the wait
    /// after it if it fails, and when the one out started (nil if none).
    public private(set) var trialDueMs: Millis = 0
    public private(set) var trialBackoffMs: Millis = 0
    public private(set) var trialStartedMs: Millis?
    /// Trials run, and trials that brought the target up.
    public private(set) var trials: UInt64 = 0
    public private(set) var trialRevives: UInt64 = 0

    public init(config: HealthConfig) {
        self.config = config
    }

    /// Whether this tracker runs probes at all.
    public var isActive: Bool { config.type != .none }

    /// How much longer a down target is held, at `now` (0 if not held).
    public func holdRemainingMs(now: Millis) -> Millis {
        status == .down ? max(0, holdUntilMs - now) : 0
    }

    /// An active probe's result.
    public mutating func probe(ok: Bool, reason: String, now: Millis) -> HealthTransition? {
        if ok {
            failures = 0
            guard status == .down else { return nil }
            successes += 1
            return riseIfDue(now: now, reason: "\(successes) successful check(s) (rise \(config.rise))")
        }
        successes = 0
        return fail(1, reason: reason, now: now)
    }

    /// `count` data-path connect failures since the last call.
    public mutating func passiveFailures(_ count: Int, now: Millis) -> HealthTransition? {
        guard config.passive, count > 0 else { return nil }
        successes = 0
        return fail(count, reason: "\(count) connect failure(s) on the data path", now: now)
    }

    /// Time passing: a hold-down that ran out with `rise` already met, or a
    /// revive for a pool without active checks.
    public mutating func tick(now: Millis) -> HealthTransition? {
        guard status == .down else { return nil }
        expireTrial(now: now)
        if isActive {
            return riseIfDue(now: now, reason: "hold-down over after \(successes) successful check(s)")
        }
        guard now >= downSinceMs + config.reviveAfterMs, now >= holdUntilMs else { return nil }
        return goUp(reason: "no active checks: retried after \(formatDuration(config.reviveAfterMs)) down", now: now)
    }

    /// Whether a trial connect should start now: a down target without
    /// active checks, none out, its wait over, and the plain revive not
    /// due first.
    public func trialDue(now: Millis) -> Bool {
        guard status == .down, !isActive, trialStartedMs == nil else { return false }
        return now >= trialDueMs && trialDueMs < downSinceMs + config.reviveAfterMs
    }

    /// A trial connect has started.
    public mutating func trialStarted(now: Millis) {
        trialStartedMs = now
        trials &+= 1
    }

    /// A trial out for longer than this is taken as failed (the probe
    /// reports within its timeout; this only guards a lost report, so the
    /// target is not left without trials).
    public var trialLostMs: Millis { config.timeoutMs + 1_000 }

    /// A trial connect's result. Success brings the target up unless a
    /// hold-down still runs (then the next trial is due when it ends);
    /// failure doubles the wait, up to `revive_after`.
    public mutating func trialResult(ok: Bool, reason: String, now: Millis) -> HealthTransition? {
        guard trialStartedMs != nil else { return nil }
        trialStartedMs = nil
        guard status == .down else { return nil }
        if ok {
            if now >= holdUntilMs {
                trialRevives &+= 1
                return goUp(reason: "trial connect ok after \(formatDuration(now - downSinceMs)) down", now: now)
            }
            trialDueMs = holdUntilMs
            return nil
        }
        lastReason = "trial connect failed: \(reason)"
        trialDueMs = now + trialBackoffMs
        trialBackoffMs = min(trialBackoffMs * 2, config.reviveAfterMs)
        return nil
    }

    /// Time passing for a trial whose report never came.
    mutating func expireTrial(now: Millis) {
        if let started = trialStartedMs, now - started >= trialLostMs {
            _ = trialResult(ok: false, reason: "no answer", now: now)
        }
    }

    mutating func riseIfDue(now: Millis, reason: String) -> HealthTransition? {
        guard successes >= config.rise, now >= holdUntilMs else { return nil }
        return goUp(reason: reason, now: now)
    }

    mutating func goUp(reason: String, now: Millis) -> HealthTransition {
        status = .up
        failures = 0
        successes = 0
        trialStartedMs = nil
        transitions &+= 1
        lastReason = reason
        return HealthTransition(to: .up, reason: reason)
    }

    mutating func fail(_ count: Int, reason: String, now: Millis) -> HealthTransition? {
        guard status == .up else {
            lastReason = reason
            return nil
        }
        failures += count
        guard failures >= config.fall else { return nil }
        status = .down
        failures = 0
        successes = 0
        downSinceMs = now
        transitions &+= 1
        recentDownsMs.removeAll { now - $0 >= config.damping.windowMs }
        if recentDownsMs.count == HealthTracker.downsKeptMax { recentDownsMs.removeFirst() }
        recentDownsMs.append(now)
        let hold = config.damping.holdMs(downsInWindow: recentDownsMs.count)
        holdUntilMs = now + hold
        // The first trial after `trialFirstMs`, or when the hold ends.
        trialBackoffMs = min(HealthTracker.trialFirstMs * 2, config.reviveAfterMs)
        trialDueMs = max(now + min(HealthTracker.trialFirstMs, config.reviveAfterMs), holdUntilMs)
        trialStartedMs = nil
        var why = "\(reason) (fall \(config.fall))"
        if hold > 0 { why += "; flapping: \(recentDownsMs.count) downs in \(formatDuration(config.damping.windowMs)), held down for \(formatDuration(hold))" }
        lastReason = why
        return HealthTransition(to: .down, reason: why)
    }
}

// MARK: - Across an upgrade

/// One target's health as it crosses an upgrade (the takeover state):
/// times travel as durations, since each process has its own monotonic
/// clock. A successor that measured health afresh would put a dead target
/// back in service for its first `fall` failures, and forget the damping
/// that holds a flapping one down.
public struct HealthCarry: Codable, Sendable, Equatable {
    public var pool: String
    public var address: String
    public var down: Bool
    /// Consecutive failures (while up) or successes (while down).
    public var failures: Int
    public var successes: Int
    /// While down: how long it has been, and how much hold-down is left.
    public var downForMs: Millis
    public var holdRemainingMs: Millis
    /// The downs in the damping window, as ages, oldest first.
    public var recentDownAgesMs: [Millis]
    public var transitions: UInt64
    public var reason: String

    enum CodingKeys: String, CodingKey {
        case pool, address, down, failures, successes, transitions, reason
        case downForMs = "down_for_ms"
        case holdRemainingMs = "hold_remaining_ms"
        case recentDownAgesMs = "recent_down_ages_ms"
    }
}

extension HealthTracker {
    /// Whether the tracker holds anything a fresh one would not: a down,
    /// a failure count, or damping history.
    public var worthCarrying: Bool { status == .down || failures > 0 || !recentDownsMs.isEmpty }

    public func carry(pool: String, address: SocketAddress, now: Millis) -> HealthCarry {
        HealthCarry(pool: pool, address: "\(address)", down: status == .down, failures: failures, successes: successes,
                    downForMs: status == .down ? max(0, now - downSinceMs) : 0, holdRemainingMs: holdRemainingMs(now: now),
                    recentDownAgesMs: recentDownsMs.map { max(0, now - $0) }, transitions: transitions, reason: lastReason)
    }

    /// Takes over what a predecessor measured, under this process's config
    /// (`revive_after` and damping apply from the carried times). Trials of
    /// a carried down start as after a fresh one: the predecessor's were
    /// its own.
    public mutating func restore(_ c: HealthCarry, now: Millis) {
        status = c.down ? .down : .up
        failures = max(0, c.failures)
        successes = max(0, c.successes)
        transitions = c.transitions
        recentDownsMs = c.recentDownAgesMs.suffix(HealthTracker.downsKeptMax).map { now - max(0, $0) }
        lastReason = c.reason
        trialStartedMs = nil
        guard c.down else { return }
        downSinceMs = now - max(0, c.downForMs)
        holdUntilMs = now + max(0, c.holdRemainingMs)
        trialBackoffMs = min(HealthTracker.trialFirstMs * 2, config.reviveAfterMs)
        trialDueMs = max(now + min(HealthTracker.trialFirstMs, config.reviveAfterMs), holdUntilMs)
    }
}

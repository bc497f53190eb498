/// Retry delays: doubling from `baseMs` to `maxMs`, each moved by up to
/// ±20% (`random`, any 64 bits) so that many daemons that lost the same
/// API server do not all come back in the same instant.
public struct Backoff: Sendable, Equatable {
    public var baseMs: Millis
    public var maxMs: Millis
    public init(baseMs: Millis = 500, maxMs: Millis = 30_000) {
        self.baseMs = baseMs
        self.maxMs = maxMs
    }

    /// The wait after the `failures`-th failure in a row (1-based).
    public func delayMs(failures: Int, random: UInt64) -> Millis {
        var d = baseMs
        for _ in 1..<max(1, min(failures, 32)) where d < maxMs { d *= 2 }
        d = min(d, maxMs)
        let spread = d / 5
        return spread > 0 ? d - spread + Millis(random % UInt64(2 * spread + 1)) : d
    }
}

/// The list-then-watch protocol of a Kubernetes informer, as a pure state
/// machine: the driver performs each `Step` and reports what came back.
///
/// - `list`: GET every slice (and the Service); its resourceVersion is where
///   the watch starts. The cache is replaced whole.
/// - `watch(rv)`: a stream of ADDED/MODIFIED/DELETED/BOOKMARK events, each
///   moving `resourceVersion` on; the server ends it after its timeout, and
///   the next watch starts where it stopped.
/// - 410 Gone (the version was compacted away), as an HTTP status or an
///   ERROR event: list again, at once the first time.
/// - Anything else that fails (connect, TLS, HTTP status, a bad line, the
///   stream breaking): wait (`Backoff`) and try again, watching from the
///   last version if there is one. The cache is kept all along: losing the
///   API never removes a target.
public struct KubeWatch: Sendable {
    public enum Step: Sendable, Equatable {
        case list
        case watch(resourceVersion: String)
        /// Wait this long, then call `resume`.
        case wait(ms: Millis)
    }

    /// Slices kept at most: the API's own limit of 1000 endpoints per slice
    /// times this is far past what a pool of 64 targets could use.
    public static let slicesMax = 1024
    /// A watch that ends sooner than this without an event counts as a
    /// failure: a server that closes at once would otherwise be asked again
    /// in a tight loop.
    public static let shortWatchMs: Millis = 1_000

    public private(set) var resourceVersion: String?
    public private(set) var slices: [String: EndpointSlice] = [:]
    /// A list has completed since start: until then, nothing is applied.
    public private(set) var synced = false
    /// Failures in a row, for the backoff and the `up` gauge.
    public private(set) var failures = 0
    /// 410s in a row: the second one backs off too.
    var gones = 0
    /// Slices dropped for `slicesMax`.
    public private(set) var slicesDropped = 0
    public var backoff = Backoff()

    public init() {}

    public var start: Step { .list }

    /// The list answered (every page): replace the cache, then watch.
    public mutating func listed(resourceVersion rv: String, items: [EndpointSlice]) -> Step {
        slices = [:]
        slicesDropped = 0
        for s in items { keep(s) }
        resourceVersion = rv
        synced = true
        failures = 0
        return .watch(resourceVersion: rv)
    }

    /// One event of the watch. Returns whether the slices changed, and a
    /// step when the watch must end here (410: list again).
    public mutating func received(_ event: KubeWatchEvent, random: UInt64) -> (changed: Bool, next: Step?) {
        switch event {
        case .added(let s), .modified(let s):
            moved(s.metadata.resourceVersion)
            keep(s)
            return (true, nil)
        case .deleted(let s):
            moved(s.metadata.resourceVersion)
            if let name = s.metadata.name { slices[name] = nil }
            return (true, nil)
        case .bookmark(let rv):
            moved(rv)
            return (false, nil)
        case .error(let code, _):
            return (false, code == 410 ? gone(random: random) : failed(random: random))
        }
    }

    /// The server ended the watch after `durationMs` having sent `events`.
    public mutating func watchEnded(durationMs: Millis, events: Int, random: UInt64) -> Step {
        if events == 0 && durationMs < KubeWatch.shortWatchMs { return failed(random: random) }
        guard let rv = resourceVersion else { return .list }
        return .watch(resourceVersion: rv)
    }

    /// HTTP 410 to a watch, or an ERROR event with code 410.
    public mutating func gone(random: UInt64) -> Step {
        gones += 1
        resourceVersion = nil
        if gones == 1 { return .list }
        failures += 1
        return .wait(ms: backoff.delayMs(failures: failures, random: random))
    }

    /// Anything else that failed: the cache stays; wait, then go on.
    public mutating func failed(random: UInt64) -> Step {
        failures += 1
        return .wait(ms: backoff.delayMs(failures: failures, random: random))
    }

    /// After a `wait`: watch from where the stream stopped, or list.
    public func resume() -> Step {
        guard synced, let rv = resourceVersion else { return .list }
        return .watch(resourceVersion: rv)
    }

    /// True while the last try failed: the daemon runs on the last known set.
    public var stale: Bool { failures > 0 || !synced }

    private mutating func moved(_ rv: String?) {
        if let rv { resourceVersion = rv }
        // An event got through: the stream works again.
        failures = 0
        gones = 0
    }

    private mutating func keep(_ s: EndpointSlice) {
        guard let name = s.metadata.name else { return }
        if slices[name] == nil && slices.count >= KubeWatch.slicesMax {
            slicesDropped += 1
            return
        }
        slices[name] = s
    }

    /// Every slice, in name order (a stable input for `KubeEndpoints.merge`).
    public var orderedSlices: [EndpointSlice] {
        slices.keys.sorted().map { slices[$0]! }
    }
}

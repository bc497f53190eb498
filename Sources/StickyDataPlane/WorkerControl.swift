import CURingShim
import Glibc
import StickyCore
import Synchronization

/// What a worker needs to place connections for one pool. Built once by the
/// control plane (Maglev included) and handed to every worker, so all
/// workers place a client the same way.
public struct PoolSetup: Sendable {
    public var name: String
    public var targets: [TargetSpec]
    public var states: [TargetState]
    /// Per-worker share: capacity already divided by the worker count.
    public var affinity: AffinityConfig
    public var maglev: MaglevTable
    /// One per pool, shared by every worker: bounded load is pool-wide.
    public var sharedLoads: SharedLoads
    /// The engine that forwards the pool's connections
    /// (`StickyConfig.engine(for:)`: the copy engine for h2c pools).
    public var engine: ForwardingEngine = .copy
    /// The pool's targets speak cleartext HTTP/2: follow the target→client
    /// frames, so a leaving target's connections can get a GOAWAY.
    public var h2c = false
    /// h2c: a connection this old has its pin re-checked for load (0: off).
    public var maxConnectionAgeMs: Millis = 0

    public init(name: String, targets: [TargetSpec], states: [TargetState], affinity: AffinityConfig,
                maglev: MaglevTable, sharedLoads: SharedLoads) {
        precondition(targets.count == states.count, "one state per target")
        self.name = name
        self.targets = targets
        self.states = states
        self.affinity = affinity
        self.maglev = maglev
        self.sharedLoads = sharedLoads
    }
}

/// A message from the control plane to one worker.
public enum WorkerCommand: Sendable {
    /// Stop accepting; let connections finish until the shutdown deadline.
    case stop
    /// New target list for a pool (membership or weights changed).
    case setTargets(pool: Int, targets: [TargetSpec], states: [TargetState], maglev: MaglevTable)
    case setState(pool: Int, address: SocketAddress, state: TargetState)
    /// The targets health has down that the pool's panic mode put back in
    /// service (their state is then the operator's); empty when the pool
    /// is not in panic. For counting placements made in panic.
    case setPanicked(pool: Int, targets: [SocketAddress])
    /// A drain's deadline passed: end the target's connections now and
    /// reset what is still open `graceMs` later. `graceful` (a sticky
    /// drain's deadline): its pins are dropped and h2c connections get a
    /// GOAWAY; otherwise, and for plain TCP, FIN both ways.
    case closeTarget(pool: Int, address: SocketAddress, graceMs: Millis, graceful: Bool)
    /// Forget pins. A non-zero `request` is answered with a report whose
    /// `affinityCleared` says how many this worker removed.
    case clearAffinity(pool: Int?, scope: AffinityScope, request: UInt64)
    /// A reload changed the timeouts.
    case setTimeouts(connectMs: Millis, idleMs: Millis, shutdownMs: Millis, connectBudgetMs: Millis)
    /// A reload changed the limits that can change at runtime: this
    /// worker's share of `limits.max_connections` (at most the slots made
    /// at start) and `connect_retries`.
    case setLimits(connectionsMax: Int, connectRetries: Int)
    /// Discovery read a pool's affinity timeout from its Kubernetes Service.
    case setAffinityTimeout(pool: Int, timeoutMs: Millis)
    /// Publish a fresh report: with affinity pins if a query asks for them,
    /// and with per-target entry counts (a walk of the table) if `entries`.
    /// A non-zero `request` also files it as that request's answer, so a
    /// caller never reads a report made for someone else's query.
    case report(PinQuery?, entries: Bool, request: UInt64)
    /// Upgrade: stop accepting (the listening sockets stay open, so the
    /// kernel keeps queueing clients), then put the affinity export in the
    /// box once no accept is armed (WorkerHandoff.swift).
    case handoffPause(HandoffBox)
    /// Upgrade rolled back: accept again.
    case handoffResume
    /// Pins from peer instances for this worker's shard (WorkerPeers.swift).
    case peerPins(pool: Int, pins: [PeerPin], clock: PeerClock)
    /// After an upgrade, the old process's open connections per target of
    /// a pool, until it exits (then empty). Sent to one worker only, which
    /// adds them to the pool-wide loads (`WorkerPool.predecessorLoads`).
    case predecessorLoads(pool: Int, loads: [SocketAddress: Int])
}

/// Which pins a `show affinity` wants.
public struct PinQuery: Sendable {
    public var pool: Int?
    public var client: IPAddress?
    public var limit: Int
    public init(pool: Int?, client: IPAddress?, limit: Int) {
        self.pool = pool
        self.client = client
        self.limit = limit
    }
}

/// One target as a worker sees it.
public struct TargetLoad: Sendable, Equatable {
    public var address: SocketAddress
    public var connections: Int = 0
    public var affinityEntries: Int = 0
    public var bytesUp: UInt64 = 0
    public var bytesDown: UInt64 = 0
    /// Connections established to the target (counted when they open).
    public var connectionsTotal: UInt64 = 0
    /// Refused or timed-out connects to the target, cumulative: metrics,
    /// and passive health detection.
    public var connectFailures: UInt64 = 0
    /// h2c: GOAWAYs stickyd wrote to the target's clients; connections the
    /// client then closed; connections still open at a drain's deadline.
    public var goawaysSent: UInt64 = 0
    public var goawayClosed: UInt64 = 0
    public var openAtDeadline: UInt64 = 0

    public init(address: SocketAddress, connections: Int = 0, affinityEntries: Int = 0, bytesUp: UInt64 = 0,
                bytesDown: UInt64 = 0, connectionsTotal: UInt64 = 0, connectFailures: UInt64 = 0) {
        self.address = address
        self.connections = connections
        self.affinityEntries = affinityEntries
        self.bytesUp = bytesUp
        self.bytesDown = bytesDown
        self.connectionsTotal = connectionsTotal
        self.connectFailures = connectFailures
    }
}

public struct PoolReport: Sendable {
    public var targets: [TargetLoad] = []
    public var affinity = AffinityCounters()
}

/// What a worker publishes: counters, per-target loads, and pins on demand.
public struct WorkerReport: Sendable {
    public var sequence: UInt64 = 0
    public var counters = WorkerCounters()
    public var pools: [PoolReport] = []
    public var pins: [(pool: Int, pin: AffinityPin)] = []
    /// In the answer to a `clearAffinity` request: the pins it removed.
    public var affinityCleared = 0
}

/// The worker's side of the control channel: a mailbox the control plane
/// fills, an eventfd that wakes the worker's ring, and the latest report.
/// The worker takes the lock only when woken or on its tick, never per
/// connection.
public final class WorkerChannel: Sendable {
    let inbox = Mutex<[WorkerCommand]>([])
    let latest = Mutex<WorkerReport>(WorkerReport())
    /// Bumped on every tick of the worker's loop (at least once a second):
    /// proof of life for the systemd watchdog.
    public let heartbeat = Atomic<UInt64>(0)
    public let wakeFD: Int32
    /// Pins this worker made or moved, for the peer service; nil without
    /// `peers:` (WorkerPeers.swift).
    public let pinOutbox: PinOutbox?

    public init(pinOutbox capacity: Int = 0) throws {
        pinOutbox = capacity > 0 ? PinOutbox(capacity: capacity) : nil
        let fd = eventfd(0, Int32(EFD_CLOEXEC))
        guard fd >= 0 else { throw SystemError("eventfd", errno: errno) }
        wakeFD = fd
    }

    deinit { close(wakeFD) }

    public func post(_ command: WorkerCommand) {
        inbox.withLock { $0.append(command) }
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    func take() -> [WorkerCommand] {
        inbox.withLock { box in
            let out = box
            box.removeAll()
            return out
        }
    }

    public var report: WorkerReport { latest.withLock { $0 } }

    func publish(_ r: WorkerReport) { latest.withLock { $0 = r } }

    /// Answers to `report` requests by request id, and who waits for them.
    struct Answers {
        /// Bounded: answers a caller gave up on (it timed out) are
        /// dropped, oldest first.
        var reports: [UInt64: WorkerReport] = [:]
        /// Called once when the request's answer is filed (`expect`). Each
        /// caller removes its own (`takeAnswer`), so there is one per
        /// request in flight.
        var waiters: [UInt64: @Sendable () -> Void] = [:]
    }

    let answers = Mutex(Answers())
    static let answersMax = 16

    /// Asks to be told when the worker has answered `request`, so that the
    /// caller can wait on something rather than poll. Call it before posting
    /// the request. `notify` runs once, on the worker's thread, outside any
    /// lock: it must only signal (a semaphore, a condition), never block.
    public func expect(_ request: UInt64, then notify: @escaping @Sendable () -> Void) {
        answers.withLock { $0.waiters[request] = notify }
    }

    func answer(_ request: UInt64, _ r: WorkerReport) {
        let notify = answers.withLock { box -> (@Sendable () -> Void)? in
            while box.reports.count >= WorkerChannel.answersMax, let oldest = box.reports.keys.min() { box.reports[oldest] = nil }
            box.reports[request] = r
            return box.waiters.removeValue(forKey: request)
        }
        notify?()
    }

    /// The answer to `request`, once; nil until the worker has made it.
    /// Also forgets the request's waiter: the caller has stopped waiting.
    public func takeAnswer(_ request: UInt64) -> WorkerReport? {
        answers.withLock { box in
            box.waiters[request] = nil
            return box.reports.removeValue(forKey: request)
        }
    }
}

import Foundation
import Glibc
import Logging
import StickyCore
import StickyDataPlane
import Synchronization

/// The control plane: owns the target registry, answers admin commands,
/// tells the workers what changed, persists runtime state, and runs drain
/// deadlines. It never touches a connection itself; workers do, on their
/// own threads, when told through their channels.
///
/// One job per file: state and publishing to the workers here; reports
/// (`+Reports`), drain deadlines (`+Drains`), reload (`+Reload`), the state
/// file (`+Persistence`), admin commands (`AdminDispatch`) and their
/// answers (`+Answers`), health (`Health/`).
public final class ControlPlane: Sendable {
    struct State {
        var registry: TargetRegistry
        /// Why the last state-file write failed; nil after one succeeded
        /// (`show info`'s `state_file_error`).
        var lastPersistError: String?
        /// Health checks and passive detection (Health/ControlPlane+Health.swift).
        var health: HealthState
    }

    let config: StickyConfig
    let hashKey: SipKey
    /// Generated (not configured) hash key, kept in the state file.
    let generatedKey: Bool
    let stateFilePath: String?
    let logger: Logger
    let state: Mutex<State>
    let channels: Mutex<[WorkerChannel]>
    /// The control plane's time: drain deadlines, uptime, health timers and
    /// the state file read it, and tests drive it by hand.
    let clock: any MillisClock
    /// How long `collect` waits for the workers' answers.
    let reportTimeoutMs: Int
    let startedWallSec: Int
    let startedMs: Millis
    /// Off while an upgrade hands over and after it did: the successor
    /// owns the state file from then on, and two writers would race.
    let persisting = Atomic<Bool>(true)
    /// Ids for `collect`'s report requests (0 means none).
    let nextRequest = Atomic<UInt64>(0)
    /// Held over a whole state-file write (`persist`).
    let persistLock = NSLock()
    /// The peer service and the VIP, once running (Peers/).
    let cluster = ClusterHooks()
    /// Each discovery pool's status and figures (Discovery/ControlPlane+Discovery.swift).
    let discovery: Mutex<DiscoveryBook>
    /// Starts trial connects to passively downed targets (the health
    /// prober, once running; Health/ControlPlane+Health.swift).
    let trialRunner = Mutex<(@Sendable ([ProbeTarget]) -> Void)?>(nil)

    public init(config: StickyConfig, registry: TargetRegistry, hashKey: SipKey, generatedKey: Bool,
                stateFilePath: String?, logger: Logger, clock: any MillisClock = SystemClock(), reportTimeoutMs: Int = 2000) {
        self.config = config
        self.hashKey = hashKey
        self.generatedKey = generatedKey
        self.stateFilePath = stateFilePath
        self.logger = logger
        self.clock = clock
        self.reportTimeoutMs = reportTimeoutMs
        var r = registry
        r.drainModeDefault = config.drain.mode
        r.drainTimeoutMsDefault = config.drain.timeoutMs
        state = Mutex(State(registry: r, health: HealthState(config: config, registry: r)))
        channels = Mutex([])
        discovery = Mutex(DiscoveryBook(config: config))
        startedWallSec = Int(clock.unixMs() / 1000)
        startedMs = clock.nowMs()
    }

    /// The system's monotonic clock, for code that keeps real deadlines
    /// whatever clock the control plane was given (the main loop, takeover,
    /// upgrade).
    public static func monotonicMs() -> Millis { SystemClock().nowMs() }

    static func unixMs() -> Int64 { SystemClock().unixMs() }

    public func attach(_ workerChannels: [WorkerChannel]) {
        channels.withLock { $0 = workerChannels }
    }

    var registry: TargetRegistry { state.withLock { $0.registry } }

    /// The registry and the health book read together, so a scrape never
    /// pairs one moment's targets with another's health.
    var registryAndHealth: (registry: TargetRegistry, health: HealthBook) {
        state.withLock { ($0.registry, $0.health.book) }
    }

    /// The affinity settings each worker gets for pool `p`.
    func affinity(pool p: Int, workers: Int) -> AffinityConfig {
        var a = config.pools[p].affinity.perWorker(workers)
        if a.hashKey == nil { a.hashKey = hashKey }
        return a
    }

    /// What every worker starts with: the registry (config plus state file)
    /// with one Maglev table per pool, built here once.
    public func poolSetups(workers: Int) -> [PoolSetup] {
        let r = registry
        return r.pools.indices.map { p in
            let a = affinity(pool: p, workers: workers)
            let specs = r.pools[p].targets.map(\.spec)
            let states = state.withLock { ControlPlane.effectiveStates(r, pool: p, $0.health) }
            var setup = PoolSetup(name: r.pools[p].name, targets: specs, states: states,
                                  affinity: a, maglev: MaglevTable(targets: specs, key: a.hashKey!), sharedLoads: SharedLoads())
            let pool = config.pools[p]
            setup.engine = config.engine(for: pool)
            setup.h2c = pool.wireProtocol == .h2c
            setup.maxConnectionAgeMs = pool.maxConnectionAgeMs ?? 0
            return setup
        }
    }

    func broadcast(_ command: WorkerCommand) {
        for c in channels.withLock({ $0 }) { c.post(command) }
    }

    /// Tells the workers about a change the registry accepted.
    func publish(_ change: RegistryChange, _ r: TargetRegistry) {
        switch change {
        case .targets(let p):
            let key = config.pools[p].affinity.hashKey ?? hashKey
            // Everything from the registry as it is now, under the lock, and
            // sent under it: a publisher holding an older snapshot (the tick,
            // a reload) must not overwrite a newer change an admin session
            // already published. States are the effective ones (health
            // combined with the operator's). Maglev is built once, off the
            // data path, and shared by every worker.
            // Panic mode is decided before the states are read, since it
            // changes them (targets added or weights changed move the
            // healthy share).
            state.withLock { s in
                s.health.book.sync(s.registry)
                let change = s.health.book.updatePanic(pool: p, s.registry)
                let specs = s.registry.pools[p].targets.map(\.spec)
                let maglev = MaglevTable(targets: specs, key: key)
                broadcast(.setTargets(pool: p, targets: specs, states: ControlPlane.effectiveStates(s.registry, pool: p, s.health),
                                      maglev: maglev))
                publishPanic(change, pool: p, &s, statesSent: true)
            }
        case .state(let p, let address, _):
            state.withLock { s in
                guard let record = s.registry.pools[p].targets.first(where: { $0.spec.address == address }) else { return }
                // A drain or maint changes the ready weight, and so maybe
                // the panic mode, which republishes every state.
                let change = s.health.book.updatePanic(pool: p, s.registry)
                if change == nil {
                    broadcast(.setState(pool: p, address: address, state: s.health.book.effectiveState(pool: p, record: record)))
                }
                publishPanic(change, pool: p, &s, statesSent: false)
            }
        }
    }
}

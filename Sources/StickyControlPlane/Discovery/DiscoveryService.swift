import Foundation
import Logging
import NIOCore
import NIOPosix
import StickyCore
import Synchronization

/// Follows every pool's discovery source: one thread per such pool, each
/// running its source's protocol as plain blocking steps (the Kubernetes
/// requests go through one shared NIO event loop thread). The protocol
/// rules are the core's (`KubeWatch`, `DNSRefresh`, `applyDiscovery`);
/// this is the I/O around them. Never a ring's thread.
public final class DiscoveryService: Sendable {
    let control: ControlPlane
    let logger: Logger
    let group: MultiThreadedEventLoopGroup?
    let runners: [DiscoveryRunner]

    /// Builds a runner per discovery pool. `access` holds each Kubernetes
    /// pool's credentials, read at start (`DiscoveryService.credentials`).
    public init(control: ControlPlane, access: [Int: KubeAccess], logger: Logger) throws {
        self.control = control
        self.logger = logger
        let pools = control.config.pools
        let group = access.isEmpty ? nil : MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        var runners: [DiscoveryRunner] = []
        do {
            for (p, pool) in pools.enumerated() {
                switch pool.discovery {
                case .kubernetes(let k)?:
                    guard let a = access[p], let group else { continue }
                    let client: KubeClient
                    do {
                        client = try KubeClient(access: a, group: group)
                    } catch {
                        throw DiscoveryStartError("pool '\(pool.name)': \(a.source): cannot use its TLS settings: \(TLSErrorText.reason("\(error)"))")
                    }
                    runners.append(KubeRunner(pool: p, config: k, client: client, control: control, logger: logger))
                case .dns(let d)?:
                    runners.append(DNSRunner(pool: p, config: d, control: control, logger: logger))
                case nil:
                    continue
                }
            }
        } catch {
            try? group?.syncShutdownGracefully()
            throw error
        }
        self.runners = runners
    }

    /// The credentials of every Kubernetes pool, read now: a kubeconfig
    /// that is missing or wrong stops the start (and `check-config`) with
    /// its file and line, rather than leaving a pool that never fills.
    /// `inCluster` false skips pools without a kubeconfig (check-config
    /// runs on hosts that are not pods).
    public static func credentials(_ config: StickyConfig, inCluster: Bool = true,
                                   environment: [String: String] = ProcessInfo.processInfo.environment) throws -> [Int: KubeAccess] {
        var out: [Int: KubeAccess] = [:]
        for (p, pool) in config.pools.enumerated() {
            guard case .kubernetes(let k)? = pool.discovery else { continue }
            if let path = k.kubeconfig {
                out[p] = try KubeAccess.kubeconfig(path: path, context: k.context)
            } else if inCluster {
                out[p] = try KubeAccess.inCluster(environment: environment)
            }
        }
        return out
    }

    public func start() {
        for r in runners { r.start() }
    }

    /// Stops every runner (bounded: each checks its flag at least every
    /// 200 ms, and a request in flight is closed).
    public func stop() {
        for r in runners { r.stopping.store(true, ordering: .releasing) }
        for r in runners { r.cancel() }
        for r in runners { r.join(timeoutMs: 5_000) }
        try? group?.syncShutdownGracefully()
    }
}

public struct DiscoveryStartError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ d: String) { description = d }
}

/// One pool's thread. Subclasses run the source's loop in `run`.
class DiscoveryRunner: @unchecked Sendable {
    let pool: Int
    let control: ControlPlane
    let logger: Logger
    let stopping = Atomic<Bool>(false)
    let done = DispatchSemaphore(value: 0)
    /// Some target of the pool is gone and waits for its drain to end.
    var gonePending = false
    var random = SystemRandomNumberGenerator()

    init(pool: Int, control: ControlPlane, logger: Logger) {
        self.pool = pool
        self.control = control
        self.logger = logger
    }

    var stopped: Bool { stopping.load(ordering: .acquiring) }
    var name: String { control.config.pools[pool].name }

    func start() {
        let t = Thread { [self] in
            run()
            done.signal()
        }
        t.name = "stickyd-disc\(pool)"
        t.start()
    }

    func run() {}
    func cancel() {}

    func join(timeoutMs: Int) {
        if done.wait(timeout: .now() + .milliseconds(timeoutMs)) == .timedOut {
            logger.warning("discovery: a thread did not stop in time", metadata: ["pool": "\(name)"])
        }
    }

    func apply(_ endpoints: [DiscoveredEndpoint]) {
        gonePending = control.discoveryApply(pool: pool, endpoints: endpoints)
    }

    /// Removes what has drained, when something waits to be.
    func sweep() {
        if gonePending { gonePending = control.discoverySweep(pool: pool) }
    }

    /// Waits `ms`, sweeping every 200 ms; returns early on stop.
    func pause(_ ms: Millis) {
        let until = ControlPlane.monotonicMs() + ms
        while !stopped {
            let left = until - ControlPlane.monotonicMs()
            if left <= 0 { return }
            usleep(UInt32(min(left, 200)) * 1000)
            sweep()
        }
    }
}

/// `discovery.dns`: a lookup round, then a pause as `DNSRefresh` says.
final class DNSRunner: DiscoveryRunner, @unchecked Sendable {
    let config: DNSDiscoveryConfig

    init(pool: Int, config: DNSDiscoveryConfig, control: ControlPlane, logger: Logger) {
        self.config = config
        super.init(pool: pool, control: control, logger: logger)
    }

    override func run() {
        var refresh = DNSRefresh(intervalMs: config.intervalMs)
        var wasMissing = false
        while !stopped {
            let outcome = DNSRound.run(config)
            switch outcome {
            case .found(let endpoints, _):
                control.discoveryReachable(pool: pool)
                wasMissing = false
                apply(endpoints)
            case .missing(let why):
                control.discoveryReachable(pool: pool)
                if !wasMissing {
                    logger.notice("discovery: the name has no records; its targets drain", metadata: ["pool": "\(name)", "answer": "\(why)"])
                }
                wasMissing = true
                apply([])
            case .failed:
                break
            }
            let next = refresh.next(after: outcome, random: random.next())
            if case .failed(let why) = outcome { control.discoveryFailed(pool: pool, error: why, retryMs: next) }
            pause(next)
        }
    }
}

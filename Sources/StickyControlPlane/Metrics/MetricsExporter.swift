import Glibc
import Prometheus
import StickyCore
import StickyDataPlane
import Synchronization

/// Turns the workers' reports and the target registry into Prometheus
/// series, at scrape time. The data path never calls a metrics API: each
/// worker keeps plain counters and publishes them in its report, and this
/// reads the reports (`ControlPlane.collect`) when asked for /metrics.
///
/// Counters: each worker's figure is monotonic, so the exporter keeps the
/// last value it saw per worker and series, and adds the difference to the
/// Prometheus counter. A figure that went down (a target slot handed to a
/// new target, or a target removed and added again) counts from zero
/// again, so the exported counter never goes down. A removed target's
/// counters stay at their last value for `retainedMs`, then go away.
/// Gauges: set to the value now; a gauge with no value now is removed
/// (a removed target has no state, a finished drain no deadline).
public final class MetricsExporter: Sendable {
    public let registry: PrometheusCollectorRegistry
    let control: ControlPlane
    let state = Mutex(State())
    /// How long a counter with no fresh figure (its target was removed) is
    /// still exported: long enough for several scrapes to see its last value.
    let retainedMs: Millis

    struct SeriesKey: Hashable {
        var name: String
        var labels: [String]
    }

    struct CounterSeries {
        var counter: Counter
        /// Last figure seen, per worker.
        var last: [Int: UInt64] = [:]
        var seenMs: Millis = 0
    }

    struct State {
        var counters: [SeriesKey: CounterSeries] = [:]
        var gauges: [SeriesKey: Gauge] = [:]
    }

    /// Series kept at most: far above 64 pools × 64 targets × a few
    /// dozen names, a bound on what a runaway label could cost.
    static let seriesMax = 200_000

    public init(control: ControlPlane, registry: PrometheusCollectorRegistry, retainedMs: Millis = 600_000) {
        self.control = control
        self.registry = registry
        self.retainedMs = retainedMs
        let info = CounterTable.field(.process(.buildInfo))
        registry.makeGauge(descriptor: Self.descriptor(info.metric!, info.help),
                           labels: Array(zip(info.labels, [StickyVersion.string]))).set(Double(1))
        let started = CounterTable.field(.process(.startTime))
        registry.makeGauge(descriptor: Self.descriptor(started.metric!, started.help)).set(Double(control.startedWallSec))
    }

    static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// Fresh reports from every worker, folded into the series, then the
    /// text exposition (format 0.0.4).
    public func scrape() -> [UInt8] {
        let reports = control.collect()
        let (targets, health) = control.registryAndHealth
        let now = control.clock.nowMs()
        state.withLock { s in update(&s, reports: reports, registry: targets, health: health, now: now) }
        return registry.emitToBuffer()
    }

    func update(_ s: inout State, reports: [WorkerReport], registry r: TargetRegistry, health: HealthBook, now: Millis) {
        // Gauges add up over the calls for one series (one per worker for
        // a pool's affinity entries) and are set once at the end.
        var gaugeValues: [SeriesKey: (field: CounterField, labels: [(String, String)], value: Double)] = [:]

        func labels(_ f: CounterField, _ values: [String]) -> [(String, String)] {
            precondition(values.count == f.labels.count, "\(f.metric ?? "?"): one value per label")
            return Array(zip(f.labels, values))
        }

        /// One worker's figure for a counter series (worker 0 for figures
        /// the control plane keeps).
        func count(_ f: CounterField, _ values: [String], worker: Int, _ value: UInt64) {
            guard let name = f.metric else { return }
            let labels = labels(f, values)
            let key = SeriesKey(name: name, labels: labels.flatMap { [$0.0, $0.1] })
            if s.counters[key] == nil {
                guard s.counters.count + s.gauges.count < Self.seriesMax else { return }
                s.counters[key] = CounterSeries(counter: registry.makeCounter(descriptor: Self.descriptor(name, f.help), labels: labels))
            }
            let last = s.counters[key]!.last[worker] ?? 0
            // Went down: the figure started again from zero.
            let delta = value >= last ? value - last : value
            if delta > 0 { s.counters[key]!.counter.increment(by: Int64(clamping: delta)) }
            s.counters[key]!.last[worker] = value
            s.counters[key]!.seenMs = now
        }

        func gauge(_ f: CounterField, _ values: [String], _ value: Double) {
            guard let name = f.metric else { return }
            let labels = labels(f, values)
            let key = SeriesKey(name: name, labels: labels.flatMap { [$0.0, $0.1] })
            gaugeValues[key, default: (f, labels, 0)].value += value
        }

        func figure(_ f: CounterField, _ values: [String], worker: Int, _ value: UInt64) {
            switch f.kind {
            case .counter: count(f, values, worker: worker, value)
            case .gauge: gauge(f, values, Double(value))
            }
        }

        func poolName(_ p: Int) -> String { r.pools.indices.contains(p) ? r.pools[p].name : "\(p)" }

        let workerFields = CounterTable.fields.filter { $0.scope == .worker }
        let poolFields = CounterTable.fields.filter {
            guard $0.scope == .pool else { return false }
            switch $0.source {
            case .discovery, .panic: return false
            default: return true
            }
        }
        for (w, report) in reports.enumerated() {
            // Per worker: the loop and the connections it took.
            let wl = ["\(w)"]
            for f in workerFields {
                switch f.source {
                case .worker(let c):
                    figure(f, wl, worker: w, report.counters[c])
                case .workerFamily(let family):
                    for (label, value) in report.counters.series(family) { figure(f, wl + [label], worker: w, value) }
                default:
                    preconditionFailure("a worker field reads the worker's counters")
                }
            }
            for (p, pool) in report.pools.enumerated() {
                // Per pool: affinity, summed over workers by the series.
                let pl = [poolName(p)]
                for f in poolFields {
                    switch f.source {
                    case .affinity(let a):
                        figure(f, pl, worker: w, a.value(in: pool.affinity))
                    case .affinityMoves:
                        for (label, value) in pool.affinity.moveSeries { figure(f, pl + [label], worker: w, value) }
                    default:
                        preconditionFailure("a pool field reads the pool's affinity counters")
                    }
                }
                // Per target: what this worker sent there.
                for t in pool.targets {
                    let tl = pl + ["\(t.address)"]
                    count(CounterTable.field(.target(.connectionsTotal)), tl, worker: w, t.connectionsTotal)
                    count(CounterTable.field(.target(.connectErrors)), tl, worker: w, t.connectFailures)
                    count(CounterTable.field(.target(.goawaysSent)), tl, worker: w, t.goawaysSent)
                    count(CounterTable.field(.target(.goawayClosed)), tl, worker: w, t.goawayClosed)
                    count(CounterTable.field(.target(.openAtDeadline)), tl, worker: w, t.openAtDeadline)
                    for d in ByteDirection.allCases {
                        count(CounterTable.field(.target(.bytes)), tl + [d.rawValue], worker: w,
                              d == .clientToTarget ? t.bytesUp : t.bytesDown)
                    }
                }
            }
        }

        // Discovery: one source, the control plane (worker 0).
        for p in r.pools.indices {
            guard let d = control.discoveryFigures(pool: p) else { continue }
            for f in CounterTable.fields {
                guard case .discovery(let which) = f.source else { continue }
                for (label, value) in d.series(which) {
                    figure(f, [poolName(p)] + (label.map { [$0] } ?? []), worker: 0, value)
                }
            }
        }

        // Panic mode: one source, the control plane's health book (worker 0).
        for p in r.pools.indices {
            for f in CounterTable.fields {
                guard case .panic(let which) = f.source else { continue }
                figure(f, [poolName(p)], worker: 0, which.value(pool: p, in: health))
            }
        }

        // Peers: one source, the peer service (worker 0), and per member
        // the `PeerStatus` that `show peers` gives.
        if let peers = control.cluster.peers.withLock({ $0 }) {
            count(CounterTable.field(.process(.peerConnectionsRefused)), [], worker: 0, peers.refusals.withLock { $0.count })
            let channels = control.channels.withLock { $0 }
            count(CounterTable.field(.process(.peerOutboxDropped)), [], worker: 0,
                  channels.reduce(UInt64(0)) { $0 &+ ($1.pinOutbox?.dropped.load(ordering: .relaxed) ?? 0) })
            let members = peers.status
            for f in CounterTable.fields {
                guard case .peer(let which) = f.source else { continue }
                for m in members {
                    let v = which.value(in: m)
                    switch f.kind {
                    case .counter: count(f, [m.name], worker: 0, UInt64(v))
                    case .gauge: gauge(f, [m.name], v)
                    }
                }
            }
        }

        let loads = ControlPlane.loads(reports)
        for (p, pool) in loads {
            for (address, load) in pool {
                gauge(CounterTable.field(.target(.connectionsActive)), [poolName(p), "\(address)"], Double(load.connections))
            }
        }

        // From the registry: state, weight and drain progress.
        for (p, pool) in r.pools.enumerated() {
            for t in pool.targets {
                let tl = [pool.name, "\(t.spec.address)"]
                // The state the workers act on: the operator's, unless
                // health has the target down (docs/HEALTH.md, precedence).
                let current = health.effectiveState(pool: p, record: t).name
                for name in TargetStateName.allCases {
                    gauge(CounterTable.field(.target(.state)), tl + [name.rawValue], name == current ? 1 : 0)
                }
                gauge(CounterTable.field(.target(.weight)), tl, Double(t.spec.weight))
                if let tracker = health.tracker(pool: p, address: t.spec.address) {
                    gauge(CounterTable.field(.target(.healthUp)), tl, tracker.status == .up ? 1 : 0)
                    gauge(CounterTable.field(.target(.healthHoldSeconds)), tl, Double(tracker.holdRemainingMs(now: now)) / 1000)
                    // One source, the control plane: worker 0.
                    count(CounterTable.field(.target(.healthTransitions)), tl, worker: 0, tracker.transitions)
                }
                if case .draining = t.state, let d = t.drain {
                    gauge(CounterTable.field(.target(.drainRemainingSeconds)), tl, Double(max(0, d.deadlineMs - now)) / 1000)
                    gauge(CounterTable.field(.target(.drainConnectionsLeft)), tl, Double(loads[p]?[t.spec.address]?.connections ?? 0))
                }
            }
        }

        for (key, g) in gaugeValues {
            if s.gauges[key] == nil {
                guard s.counters.count + s.gauges.count < Self.seriesMax else { continue }
                s.gauges[key] = registry.makeGauge(descriptor: Self.descriptor(key.name, g.field.help), labels: g.labels)
            }
            s.gauges[key]!.set(g.value)
        }
        for (key, g) in s.gauges where gaugeValues[key] == nil {
            registry.unregisterGauge(g)
            s.gauges[key] = nil
        }
        for (key, c) in s.counters where now - c.seenMs > retainedMs {
            registry.unregisterCounter(c.counter)
            s.counters[key] = nil
        }
    }
}

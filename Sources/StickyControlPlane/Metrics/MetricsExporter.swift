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
        registry.makeGauge(descriptor: Self.descriptor("stickyd_build_info", "Always 1; the version is a label."),
                           labels: [("version", StickyVersion.string)]).set(Double(1))
        registry.makeGauge(descriptor: Self.descriptor("stickyd_start_time_seconds", "When the daemon started, in Unix seconds."))
            .set(Double(control.startedWallSec))
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
        var gaugesSeen = Set<SeriesKey>()

        func count(_ name: String, _ help: String, _ labels: [(String, String)], worker: Int, _ value: UInt64) {
            let key = SeriesKey(name: name, labels: labels.flatMap { [$0.0, $0.1] })
            if s.counters[key] == nil {
                guard s.counters.count + s.gauges.count < Self.seriesMax else { return }
                s.counters[key] = CounterSeries(counter: registry.makeCounter(descriptor: Self.descriptor(name, help), labels: labels))
            }
            let last = s.counters[key]!.last[worker] ?? 0
            // Went down: the figure started again from zero.
            let delta = value >= last ? value - last : value
            if delta > 0 { s.counters[key]!.counter.increment(by: Int64(clamping: delta)) }
            s.counters[key]!.last[worker] = value
            s.counters[key]!.seenMs = now
        }

        func gauge(_ name: String, _ help: String, _ labels: [(String, String)], _ value: Double) {
            let key = SeriesKey(name: name, labels: labels.flatMap { [$0.0, $0.1] })
            if s.gauges[key] == nil {
                guard s.counters.count + s.gauges.count < Self.seriesMax else { return }
                s.gauges[key] = registry.makeGauge(descriptor: Self.descriptor(name, help), labels: labels)
            }
            s.gauges[key]!.set(value)
            gaugesSeen.insert(key)
        }

        func poolName(_ p: Int) -> String { r.pools.indices.contains(p) ? r.pools[p].name : "\(p)" }

        // Per worker: the loop and the connections it took.
        for (w, report) in reports.enumerated() {
            let c = report.counters
            let wl = [("worker", "\(w)")]
            count("stickyd_connections_accepted_total", "Client connections accepted.", wl, worker: w, c.accepted)
            gauge("stickyd_connections_active", "Client connections open now (connecting or forwarding).", wl, Double(c.active))
            count("stickyd_connections_rejected_full_total", "Accepted connections reset because every slot and the backlog were full.", wl, worker: w, c.rejectedFull)
            for reason in CloseReason.allCases where reason != .none {
                count("stickyd_connections_closed_total", "Connections closed, by reason.",
                      wl + [("reason", reason.metricName)], worker: w, c.closed[Int(reason.rawValue)])
            }
            count("stickyd_connect_errors_total", "Backend connects refused or failed (all targets).", wl, worker: w, c.connectErrors)
            count("stickyd_connect_timeouts_total", "Backend connects that timed out (timeouts.connect).", wl, worker: w, c.connectTimeouts)
            count("stickyd_connect_retries_total", "Backend connects tried again on another target.", wl, worker: w, c.connectRetries)
            count("stickyd_accept_errors_total", "Accept failures other than running out of descriptors.", wl, worker: w, c.acceptErrors)
            count("stickyd_accept_pauses_total", "Times accepting paused (slots, backlog or descriptors ran out).", wl, worker: w, c.acceptPauses)
            count("stickyd_descriptor_exhaustion_total", "Times the descriptor budget or EMFILE stopped an accept or a connect.", wl, worker: w, c.descriptorExhaustion)
            gauge("stickyd_descriptors_open", "Sockets the worker holds open now.", wl, Double(c.descriptors))
            gauge("stickyd_descriptor_budget", "Descriptors the worker may hold (0: no budget).", wl, Double(c.descriptorBudget))
            count("stickyd_pipe_waits_total", "Splice engine: directions that waited for a pipe.", wl, worker: w, c.pipeWaits)
            count("stickyd_buffer_starvations_total", "Copy engine: receives that found the buffer ring empty.", wl, worker: w, c.bufferStarvations)
            count("stickyd_drain_cuts_total", "Connections given a FIN at a strict drain's deadline.", wl, worker: w, c.drainCuts)
            count("stickyd_loop_iterations_total", "Turns of the worker's io_uring loop.", wl, worker: w, c.loopIterations)
            count("stickyd_loop_completions_total", "io_uring completions the worker reaped.", wl, worker: w, c.completions)
            count("stickyd_ring_sq_full_flushes_total", "Submissions forced early because the submission queue was full.", wl, worker: w, UInt64(max(0, c.sqFullFlushes)))
            count("stickyd_access_log_lines_total", "Access log lines written.", wl, worker: w, c.accessLogLines)
            count("stickyd_access_log_dropped_total", "Access log lines lost to a failed or blocked write.", wl, worker: w, c.accessLogDrops)
            count("stickyd_proxy_headers_received_total", "PROXY headers read whole from clients.", wl, worker: w, c.proxyHeadersReceived)
            count("stickyd_proxy_headers_sent_total", "PROXY headers written to targets.", wl, worker: w, c.proxyHeadersSent)
            count("stickyd_proxy_send_failures_total", "PROXY headers (with early payload) that did not fit one send to the target.", wl, worker: w, c.proxySendFailures)
            for reason in ProxyRejection.allCases {
                count("stickyd_proxy_rejected_total", "Client connections closed for their PROXY header, by reason.",
                      wl + [("reason", reason.metricName)], worker: w, c.proxyRejected[Int(reason.rawValue)])
            }

            // Per pool: affinity, summed over workers by the counters.
            for (p, pool) in report.pools.enumerated() {
                let pl = [("pool", poolName(p))]
                let a = pool.affinity
                count("stickyd_affinity_hits_total", "Pinned clients sent to their target.", pl, worker: w, a.hits)
                count("stickyd_affinity_misses_total", "Clients with no live pin, placed by Maglev.", pl, worker: w, a.misses)
                count("stickyd_affinity_spills_total", "Placements where bounded load passed over the Maglev choice.", pl, worker: w, a.spills)
                count("stickyd_affinity_expirations_total", "Pins that expired.", pl, worker: w, a.expirations)
                count("stickyd_affinity_evictions_total", "Live pins dropped to make room.", pl, worker: w, a.evictions)
                count("stickyd_affinity_unrecorded_total", "Placements not pinned: every candidate entry had open connections.", pl, worker: w, a.unrecorded)
                count("stickyd_affinity_no_target_total", "Placements that found no eligible target.", pl, worker: w, a.noTarget)
                for reason in MoveReason.allCases {
                    count("stickyd_affinity_moves_total", "Pinned clients re-pinned to another target, by reason.",
                          pl + [("reason", "\(reason)")], worker: w, a.moves[reason])
                }
                // Per target: what this worker sent there.
                for t in pool.targets {
                    let tl = pl + [("target", "\(t.address)")]
                    count("stickyd_target_connections_total", "Connections established to the target.", tl, worker: w, t.connectionsTotal)
                    count("stickyd_target_connect_errors_total", "Connects to the target refused, failed or timed out.", tl, worker: w, t.connectFailures)
                    count("stickyd_target_bytes_total", "Bytes forwarded, by direction; open connections included.",
                          tl + [("direction", "client_to_target")], worker: w, t.bytesUp)
                    count("stickyd_target_bytes_total", "Bytes forwarded, by direction; open connections included.",
                          tl + [("direction", "target_to_client")], worker: w, t.bytesDown)
                }
            }
        }

        // Gauges summed over workers.
        var entries: [Int: Int] = [:]
        for report in reports {
            for (p, pool) in report.pools.enumerated() { entries[p, default: 0] += pool.affinity.size }
        }
        for (p, n) in entries {
            gauge("stickyd_affinity_entries", "Pins in the pool's affinity table now.", [("pool", poolName(p))], Double(n))
        }
        let loads = ControlPlane.loads(reports)
        for (p, pool) in loads {
            for (address, load) in pool {
                gauge("stickyd_target_connections_active", "Connections open to the target now.",
                      [("pool", poolName(p)), ("target", "\(address)")], Double(load.connections))
            }
        }

        // From the registry: state, weight and drain progress.
        for (p, pool) in r.pools.enumerated() {
            for t in pool.targets {
                let tl = [("pool", pool.name), ("target", "\(t.spec.address)")]
                // The state the workers act on: the operator's, unless
                // health has the target down (docs/HEALTH.md, precedence).
                let current = MetricsExporter.stateName(health.effectiveState(pool: p, record: t))
                for name in MetricsExporter.stateNames {
                    gauge("stickyd_target_state", "1 for the target's state now, 0 for the others.",
                          tl + [("state", name)], name == current ? 1 : 0)
                }
                gauge("stickyd_target_weight", "The target's weight.", tl, Double(t.spec.weight))
                if let tracker = health.tracker(pool: p, address: t.spec.address) {
                    gauge("stickyd_target_health_up", "1 while health checks and passive detection have the target up, 0 while down.",
                          tl, tracker.status == .up ? 1 : 0)
                    gauge("stickyd_target_health_hold_seconds", "Seconds a down target is still held down by flap damping.",
                          tl, Double(tracker.holdRemainingMs(now: now)) / 1000)
                    count("stickyd_target_health_transitions_total", "Health status changes (up to down and back).",
                          tl, worker: 0, tracker.transitions) // one source: the control plane
                }
                if case .draining = t.state, let d = t.drain {
                    gauge("stickyd_target_drain_remaining_seconds", "Seconds until a draining target's deadline (0 once passed).",
                          tl, Double(max(0, d.deadlineMs - now)) / 1000)
                    gauge("stickyd_target_drain_connections_left", "Connections a draining target still has open.",
                          tl, Double(loads[p]?[t.spec.address]?.connections ?? 0))
                }
            }
        }

        for (key, g) in s.gauges where !gaugesSeen.contains(key) {
            registry.unregisterGauge(g)
            s.gauges[key] = nil
        }
        for (key, c) in s.counters where now - c.seenMs > retainedMs {
            registry.unregisterCounter(c.counter)
            s.counters[key] = nil
        }
    }

    static let stateNames = ["ready", "draining", "down", "maint"]

    static func stateName(_ s: TargetState) -> String {
        switch s {
        case .ready: return "ready"
        case .draining: return "draining"
        case .down: return "down"
        case .maint: return "maint"
        }
    }
}

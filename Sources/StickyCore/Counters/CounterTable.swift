/// Whether a figure only grows (a Prometheus counter) or is a level now (a
/// gauge).
public enum CounterKind: String, Sendable {
    case counter
    case gauge
}

/// What a series is about. It gives the labels every series of the field
/// starts with, and the section of docs/METRICS.md that lists it.
public enum CounterScope: Sendable, CaseIterable {
    case target
    case pool
    case worker
    /// A member of `peers:`, as this instance sees its link.
    case peer
    case process

    public var labels: [String] {
        switch self {
        case .target: return ["pool", "target"]
        case .pool: return ["pool"]
        case .worker: return ["worker"]
        case .peer: return ["peer"]
        case .process: return []
        }
    }
}

/// A label past the scope's own. Its values, when they are a fixed set,
/// come from the enum that names them (`CounterLabel.values` in the control
/// plane, which sees the data plane's reason enums too).
public enum CounterLabel: Sendable, CaseIterable {
    case direction
    case state
    case moveReason
    case closeReason
    case proxyRejection
    case h2TrackerStop
    case goawayCause
    case version
    case discoveryChange

    public var name: String {
        switch self {
        case .direction: return "direction"
        case .state: return "state"
        case .moveReason, .closeReason, .proxyRejection, .h2TrackerStop: return "reason"
        case .goawayCause: return "cause"
        case .version: return "version"
        case .discoveryChange: return "change"
        }
    }
}

/// Which way bytes went: the `direction` label.
public enum ByteDirection: String, Sendable, CaseIterable {
    case clientToTarget = "client_to_target"
    case targetToClient = "target_to_client"
}

/// A per-pool affinity figure the table reads from `AffinityCounters`.
public enum AffinityCounter: Sendable, CaseIterable {
    case hits
    case misses
    case spills
    case expirations
    case evictions
    case unrecorded
    case noTarget
    case panicPlacements
    /// Pins in the table now (`AffinityCounters.size`): a gauge.
    case entries

    public func value(in c: AffinityCounters) -> UInt64 {
        switch self {
        case .hits: return c.hits
        case .misses: return c.misses
        case .spills: return c.spills
        case .expirations: return c.expirations
        case .evictions: return c.evictions
        case .unrecorded: return c.unrecorded
        case .noTarget: return c.noTarget
        case .panicPlacements: return c.panicPlacements
        case .entries: return UInt64(clamping: c.size)
        }
    }
}

/// Per-target series: made at scrape time from the workers' loads, the
/// registry and health, not kept by the data path.
public enum TargetFigure: Sendable {
    case connectionsTotal
    case connectionsActive
    case bytes
    case connectErrors
    case state
    case healthUp
    case healthHoldSeconds
    case healthTransitions
    case weight
    case drainRemainingSeconds
    case drainConnectionsLeft
    /// h2c: GOAWAYs written to the target's clients; connections the client
    /// closed after one; h2c connections still open at a drain's deadline.
    case goawaysSent
    case goawayClosed
    case openAtDeadline
}

/// Per-pool discovery figures, kept by the control plane (docs/DISCOVERY.md).
public enum DiscoveryFigure: Sendable, CaseIterable {
    case up
    case endpoints
    case leftOut
    case failures
    case relists
    case changes
}

/// What discovery did to a target: the `change` label.
public enum DiscoveryChange: Int, Sendable, CaseIterable {
    case added
    case readied
    case drained
    case removed

    public var label: String {
        switch self {
        case .added: return "added"
        case .readied: return "readied"
        case .drained: return "drained"
        case .removed: return "removed"
        }
    }
}

/// Per-pool panic-mode figures, kept by the control plane's health book
/// (docs/HEALTH.md).
public enum PanicFigure: Sendable, CaseIterable {
    /// 1 while the pool is in panic: a gauge; `show stats` sums it over
    /// the pools.
    case inPanic
    case entered

    public func value(pool p: Int, in book: HealthBook) -> UInt64 {
        switch self {
        case .inPanic: return book.inPanic(pool: p) ? 1 : 0
        case .entered: return book.panicEntered.indices.contains(p) ? book.panicEntered[p] : 0
        }
    }
}

/// Per-member peer figures: the peer service's `PeerStatus`, the same
/// figures `show peers` gives, so the two cannot disagree.
public enum PeerFigure: Sendable, CaseIterable {
    case up
    case inboundUp
    case pinsSent
    case pinsReceived
    case pinsDropped
    case queued
    case queueLagSeconds
    case receiveLagSeconds
    case connects
    case resyncs

    /// As a sample value: counts are exact in a Double far past any
    /// figure a link reaches (2^53).
    public func value(in s: PeerStatus) -> Double {
        switch self {
        case .up: return s.state == "up" ? 1 : 0
        case .inboundUp: return s.inbound ? 1 : 0
        case .pinsSent: return Double(s.pinsSent)
        case .pinsReceived: return Double(s.pinsReceived)
        case .pinsDropped: return Double(s.pinsDropped)
        case .queued: return Double(s.queued)
        case .queueLagSeconds: return Double(s.queueLagMs) / 1000
        case .receiveLagSeconds: return Double(s.receiveLagMs) / 1000
        case .connects: return Double(s.connects)
        case .resyncs: return Double(s.resyncs)
        }
    }
}

public enum ProcessFigure: Sendable {
    case buildInfo
    case startTime
    /// Peer connections refused (PeerService.refuse): kept by the peer
    /// service, one figure for the process.
    case peerConnectionsRefused
    /// Pin changes the workers' outboxes had no room for (`PinOutbox`),
    /// summed over workers: `show peers`' outbox_dropped.
    case peerOutboxDropped
}

/// Where a field's figures come from.
public enum CounterSource: Sendable, Equatable {
    case worker(WorkerCounter)
    case workerFamily(WorkerCounterFamily)
    case affinity(AffinityCounter)
    /// `AffinityCounters.moves`, by `MoveReason`.
    case affinityMoves
    case target(TargetFigure)
    case process(ProcessFigure)
    case peer(PeerFigure)
    case discovery(DiscoveryFigure)
    case panic(PanicFigure)
}

/// One figure the daemon exposes: its Prometheus name, its `show stats`
/// key, its kind, labels and meaning. `CounterTable` lists them all, in
/// the manner of HAProxy's `stat_fields[]`.
public struct CounterField: Sendable {
    public var source: CounterSource
    public var scope: CounterScope
    public var kind: CounterKind
    /// The Prometheus series name; nil for a figure only `show stats` shows.
    public var metric: String?
    /// The `show stats` key; for a family, the prefix of `<stat>_<label
    /// value>`. Nil for a figure `show stats` does not show.
    public var stat: String?
    /// Labels past the scope's.
    public var extraLabels: [CounterLabel]
    /// The metric's HELP text and the meaning in docs/METRICS.md.
    public var help: String

    /// Every label name, in the order series carry them.
    public var labels: [String] { scope.labels + extraLabels.map(\.name) }
}

public enum CounterTable {
    /// The field with this source; every source is in the table once (a
    /// unit test checks).
    public static func field(_ source: CounterSource) -> CounterField {
        guard let f = fields.first(where: { $0.source == source }) else {
            preconditionFailure("no counter field for \(source)")
        }
        return f
    }

    // `show stats` lists the fields that have a `stat` key in this order;
    // docs/METRICS.md lists each scope's fields in this order.
    public static let fields: [CounterField] = [
        // Per target.
        CounterField(source: .target(.connectionsTotal), scope: .target, kind: .counter,
                     metric: "stickyd_target_connections_total", stat: nil, extraLabels: [],
                     help: "Connections established to the target (counted when the connect succeeds)."),
        CounterField(source: .target(.connectionsActive), scope: .target, kind: .gauge,
                     metric: "stickyd_target_connections_active", stat: nil, extraLabels: [],
                     help: "Connections open to the target now."),
        CounterField(source: .target(.bytes), scope: .target, kind: .counter,
                     metric: "stickyd_target_bytes_total", stat: nil, extraLabels: [.direction],
                     help: "Bytes forwarded, by direction. Open connections are included (each scrape asks every worker for a fresh report), so a long-lived gRPC channel shows its traffic while it lasts."),
        CounterField(source: .target(.connectErrors), scope: .target, kind: .counter,
                     metric: "stickyd_target_connect_errors_total", stat: nil, extraLabels: [],
                     help: "Connects to the target that were refused, failed or timed out. Each is retried on another target (`connect_retries`)."),
        CounterField(source: .target(.state), scope: .target, kind: .gauge,
                     metric: "stickyd_target_state", stat: nil, extraLabels: [.state],
                     help: "1 for the state the workers act on now, 0 for the others. `down` is health's verdict over `ready` or `draining`, and `maint` wins over it (docs/HEALTH.md)."),
        CounterField(source: .target(.healthUp), scope: .target, kind: .gauge,
                     metric: "stickyd_target_health_up", stat: nil, extraLabels: [],
                     help: "1 while health checks and passive detection have the target up, 0 while down."),
        CounterField(source: .target(.healthHoldSeconds), scope: .target, kind: .gauge,
                     metric: "stickyd_target_health_hold_seconds", stat: nil, extraLabels: [],
                     help: "Seconds flap damping still holds a down target down (0 when not held)."),
        CounterField(source: .target(.healthTransitions), scope: .target, kind: .counter,
                     metric: "stickyd_target_health_transitions_total", stat: nil, extraLabels: [],
                     help: "Health status changes, up to down and back. A rate well above the check interval's means flapping."),
        CounterField(source: .target(.weight), scope: .target, kind: .gauge,
                     metric: "stickyd_target_weight", stat: nil, extraLabels: [],
                     help: "The target's weight."),
        CounterField(source: .target(.drainRemainingSeconds), scope: .target, kind: .gauge,
                     metric: "stickyd_target_drain_remaining_seconds", stat: nil, extraLabels: [],
                     help: "While draining: seconds until the deadline (0 once it passed)."),
        CounterField(source: .target(.drainConnectionsLeft), scope: .target, kind: .gauge,
                     metric: "stickyd_target_drain_connections_left", stat: nil, extraLabels: [],
                     help: "While draining: connections the target still has open. 0 means the drain is done."),

        CounterField(source: .target(.goawaysSent), scope: .target, kind: .counter,
                     metric: "stickyd_target_goaways_sent_total", stat: nil, extraLabels: [],
                     help: "h2c pools: GOAWAY frames stickyd wrote to the target's clients, when the target was leaving or a connection reached `max_connection_age` (docs/HTTP2.md)."),
        CounterField(source: .target(.goawayClosed), scope: .target, kind: .counter,
                     metric: "stickyd_target_goaway_closed_total", stat: nil, extraLabels: [],
                     help: "h2c pools: connections to the target that the client closed after stickyd's GOAWAY, as asked."),
        CounterField(source: .target(.openAtDeadline), scope: .target, kind: .counter,
                     metric: "stickyd_target_open_at_deadline_total", stat: nil, extraLabels: [],
                     help: "h2c pools: connections to the target still open when a drain's deadline came (they are then closed as plain TCP is)."),

        // Per worker: connections and the data path.
        CounterField(source: .worker(.accepted), scope: .worker, kind: .counter,
                     metric: "stickyd_connections_accepted_total", stat: "connections_accepted", extraLabels: [],
                     help: "Client connections accepted."),
        CounterField(source: .worker(.active), scope: .worker, kind: .gauge,
                     metric: "stickyd_connections_active", stat: "connections_active", extraLabels: [],
                     help: "Client connections open now (connecting or forwarding)."),
        CounterField(source: .worker(.rejectedFull), scope: .worker, kind: .counter,
                     metric: "stickyd_connections_rejected_full_total", stat: "connections_rejected_full", extraLabels: [],
                     help: "Accepted connections reset because every slot and the accept backlog were full."),
        CounterField(source: .worker(.acceptErrors), scope: .worker, kind: .counter,
                     metric: "stickyd_accept_errors_total", stat: "accept_errors", extraLabels: [],
                     help: "Accept failures other than running out of descriptors."),
        CounterField(source: .worker(.acceptPauses), scope: .worker, kind: .counter,
                     metric: "stickyd_accept_pauses_total", stat: "accept_pauses", extraLabels: [],
                     help: "Times accepting paused (no free slot, backlog full, or the descriptor budget)."),
        CounterField(source: .worker(.descriptorExhaustion), scope: .worker, kind: .counter,
                     metric: "stickyd_descriptor_exhaustion_total", stat: "descriptor_exhaustion", extraLabels: [],
                     help: "Times the descriptor budget or `EMFILE` stopped an accept or a backend socket."),
        CounterField(source: .worker(.descriptors), scope: .worker, kind: .gauge,
                     metric: "stickyd_descriptors_open", stat: nil, extraLabels: [],
                     help: "Sockets the worker holds now."),
        CounterField(source: .worker(.descriptorBudget), scope: .worker, kind: .gauge,
                     metric: "stickyd_descriptor_budget", stat: nil, extraLabels: [],
                     help: "Sockets the worker may hold (its share of `RLIMIT_NOFILE`; 0 = no budget)."),
        CounterField(source: .worker(.connectErrors), scope: .worker, kind: .counter,
                     metric: "stickyd_connect_errors_total", stat: "connect_errors", extraLabels: [],
                     help: "Backend connects refused or failed, over all targets."),
        CounterField(source: .worker(.connectTimeouts), scope: .worker, kind: .counter,
                     metric: "stickyd_connect_timeouts_total", stat: "connect_timeouts", extraLabels: [],
                     help: "Backend connects that ran out of `timeouts.connect`."),
        CounterField(source: .worker(.connectRetries), scope: .worker, kind: .counter,
                     metric: "stickyd_connect_retries_total", stat: "connect_retries", extraLabels: [],
                     help: "Connects tried again on another target."),
        // Bytes per worker are in `show stats` only; the endpoint has them
        // per target (`stickyd_target_bytes_total`).
        CounterField(source: .worker(.bytesUp), scope: .worker, kind: .counter,
                     metric: nil, stat: "bytes_client_to_target", extraLabels: [],
                     help: "Bytes forwarded from clients to targets, open connections included."),
        CounterField(source: .worker(.bytesDown), scope: .worker, kind: .counter,
                     metric: nil, stat: "bytes_target_to_client", extraLabels: [],
                     help: "Bytes forwarded from targets to clients, open connections included."),
        CounterField(source: .worker(.pipeWaits), scope: .worker, kind: .counter,
                     metric: "stickyd_pipe_waits_total", stat: "pipe_waits", extraLabels: [],
                     help: "Splice engine: directions that waited for a pipe."),
        CounterField(source: .worker(.bufferStarvations), scope: .worker, kind: .counter,
                     metric: "stickyd_buffer_starvations_total", stat: "buffer_starvations", extraLabels: [],
                     help: "Copy engine: receives that found the buffer ring empty."),
        CounterField(source: .worker(.drainCuts), scope: .worker, kind: .counter,
                     metric: "stickyd_drain_cuts_total", stat: "drain_deadline_cuts", extraLabels: [],
                     help: "Connections given a FIN at a strict drain's deadline."),
        CounterField(source: .worker(.loopIterations), scope: .worker, kind: .counter,
                     metric: "stickyd_loop_iterations_total", stat: nil, extraLabels: [],
                     help: "Turns of the io_uring loop (one wait in `io_uring_enter` each)."),
        CounterField(source: .worker(.completions), scope: .worker, kind: .counter,
                     metric: "stickyd_loop_completions_total", stat: nil, extraLabels: [],
                     help: "Completions reaped. Completions per iteration is the loop's batch size."),
        CounterField(source: .worker(.sqFullFlushes), scope: .worker, kind: .counter,
                     metric: "stickyd_ring_sq_full_flushes_total", stat: nil, extraLabels: [],
                     help: "Submissions forced early because the submission queue was full."),
        CounterField(source: .worker(.accessLogLines), scope: .worker, kind: .counter,
                     metric: "stickyd_access_log_lines_total", stat: nil, extraLabels: [],
                     help: "Access log lines written."),
        CounterField(source: .worker(.accessLogDrops), scope: .worker, kind: .counter,
                     metric: "stickyd_access_log_dropped_total", stat: nil, extraLabels: [],
                     help: "Access log lines lost to a failed write (disk full, a stalled journal)."),

        // Per pool: affinity.
        CounterField(source: .affinity(.hits), scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_hits_total", stat: "affinity_hits", extraLabels: [],
                     help: "Pinned clients sent to their target."),
        CounterField(source: .affinity(.misses), scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_misses_total", stat: "affinity_misses", extraLabels: [],
                     help: "Clients with no live pin (new, expired or evicted), placed by Maglev."),
        CounterField(source: .affinity(.spills), scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_spills_total", stat: "affinity_spills", extraLabels: [],
                     help: "Placements where bounded load passed over the Maglev choice."),
        CounterField(source: .affinity(.expirations), scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_expirations_total", stat: "affinity_expirations", extraLabels: [],
                     help: "Pins that expired."),
        CounterField(source: .affinity(.evictions), scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_evictions_total", stat: "affinity_evictions", extraLabels: [],
                     help: "Live pins dropped to make room (`affinity.capacity`)."),
        CounterField(source: .affinity(.unrecorded), scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_unrecorded_total", stat: "affinity_unrecorded", extraLabels: [],
                     help: "Placements that could not be pinned (every candidate entry had open connections)."),
        CounterField(source: .affinity(.noTarget), scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_no_target_total", stat: "affinity_no_target", extraLabels: [],
                     help: "Placements that found no eligible target."),
        CounterField(source: .affinity(.panicPlacements), scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_panic_placements_total", stat: "affinity_panic_placements", extraLabels: [],
                     help: "Placements (new or pinned clients) on a target health has down, made because the pool was in panic mode (docs/HEALTH.md)."),
        CounterField(source: .panic(.inPanic), scope: .pool, kind: .gauge,
                     metric: "stickyd_pool_panic", stat: "pools_in_panic", extraLabels: [],
                     help: "1 while the pool is in panic mode: less than `health.panic_threshold` of its ready weight is healthy, so placement ignores health. `show stats` gives the number of pools in panic."),
        CounterField(source: .panic(.entered), scope: .pool, kind: .counter,
                     metric: "stickyd_pool_panic_entered_total", stat: "panic_entered", extraLabels: [],
                     help: "Times the pool went into panic mode."),
        CounterField(source: .affinity(.entries), scope: .pool, kind: .gauge,
                     metric: "stickyd_affinity_entries", stat: "affinity_entries", extraLabels: [],
                     help: "Pins in the table now."),
        CounterField(source: .affinityMoves, scope: .pool, kind: .counter,
                     metric: "stickyd_affinity_moves_total", stat: "affinity_moves", extraLabels: [.moveReason],
                     help: "Pinned clients re-pinned to another target, by reason."),

        // Per worker: PROXY headers and closes, last in `show stats`.
        CounterField(source: .worker(.proxyHeadersReceived), scope: .worker, kind: .counter,
                     metric: "stickyd_proxy_headers_received_total", stat: "proxy_headers_received", extraLabels: [],
                     help: "PROXY headers read whole from clients (docs/PROXY.md)."),
        CounterField(source: .worker(.proxyHeadersSent), scope: .worker, kind: .counter,
                     metric: "stickyd_proxy_headers_sent_total", stat: "proxy_headers_sent", extraLabels: [],
                     help: "PROXY headers written to targets (`send_proxy`)."),
        CounterField(source: .worker(.proxySendFailures), scope: .worker, kind: .counter,
                     metric: "stickyd_proxy_send_failures_total", stat: "proxy_send_failures", extraLabels: [],
                     help: "Headers (with the payload that came with the client's header) that did not fit one send to the target; the connection is reset."),
        CounterField(source: .workerFamily(.proxyRejected), scope: .worker, kind: .counter,
                     metric: "stickyd_proxy_rejected_total", stat: "proxy_rejected", extraLabels: [.proxyRejection],
                     help: "Client connections closed for their PROXY header, by reason."),
        CounterField(source: .workerFamily(.closed), scope: .worker, kind: .counter,
                     metric: "stickyd_connections_closed_total", stat: "closed", extraLabels: [.closeReason],
                     help: "Connections closed, by reason."),

        // Per worker: h2c pools (docs/HTTP2.md).
        CounterField(source: .workerFamily(.goawaysSent), scope: .worker, kind: .counter,
                     metric: "stickyd_goaways_sent_total", stat: "goaways_sent", extraLabels: [.goawayCause],
                     help: "GOAWAY frames written to h2c clients, by cause: `drain` (the target was leaving) or `age` (`max_connection_age` moved the client's pin)."),
        CounterField(source: .workerFamily(.h2Untracked), scope: .worker, kind: .counter,
                     metric: "stickyd_h2_untracked_total", stat: "h2_untracked", extraLabels: [.h2TrackerStop],
                     help: "h2c connections forwarded as plain TCP from some point on, by reason: `not_http2` (the target's first frame was not SETTINGS) or `malformed_header`."),

        // Per worker: pins from peer instances (docs/SCALING.md).
        CounterField(source: .worker(.peerPinsApplied), scope: .worker, kind: .counter,
                     metric: "stickyd_peer_pins_applied_total", stat: nil, extraLabels: [],
                     help: "Pins from peer instances laid into the affinity table (new here, the same target, or replacing a pin to a target that takes no pinned clients)."),
        CounterField(source: .worker(.peerConflicts), scope: .worker, kind: .counter,
                     metric: "stickyd_peer_conflicts_total", stat: nil, extraLabels: [],
                     help: "Pins from peers that disagreed with a live pin here, both targets usable: the older pin (then the lower target address) was kept on both instances."),
        CounterField(source: .worker(.peerPinsIgnored), scope: .worker, kind: .counter,
                     metric: "stickyd_peer_pins_ignored_total", stat: nil, extraLabels: [],
                     help: "Pins from peers left out: their target is not in the pool or takes no pinned clients here, they lapsed under this instance's timeout, or the table had no room."),

        // Per pool: discovery (docs/DISCOVERY.md), pools with a `discovery` section only.
        CounterField(source: .discovery(.up), scope: .pool, kind: .gauge,
                     metric: "stickyd_discovery_up", stat: nil, extraLabels: [],
                     help: "1 while the pool's discovery source answers (the Kubernetes watch runs, the last DNS lookup worked); 0 while the daemon keeps the last known targets and retries with backoff."),
        CounterField(source: .discovery(.endpoints), scope: .pool, kind: .gauge,
                     metric: "stickyd_discovery_endpoints", stat: nil, extraLabels: [],
                     help: "Endpoints in the source's last complete answer, ready or not, each address once."),
        CounterField(source: .discovery(.leftOut), scope: .pool, kind: .gauge,
                     metric: "stickyd_discovery_endpoints_left_out", stat: nil, extraLabels: [],
                     help: "Ready endpoints not added because the pool holds its 64 targets."),
        CounterField(source: .discovery(.failures), scope: .pool, kind: .counter,
                     metric: "stickyd_discovery_failures_total", stat: "discovery_failures", extraLabels: [],
                     help: "Failed requests to the source (a list, a watch, a lookup). The targets stay as last known."),
        CounterField(source: .discovery(.relists), scope: .pool, kind: .counter,
                     metric: "stickyd_discovery_relists_total", stat: "discovery_relists", extraLabels: [],
                     help: "Kubernetes: lists after the first, because the watch's version was gone (410) or the watch could not resume."),
        CounterField(source: .discovery(.changes), scope: .pool, kind: .counter,
                     metric: "stickyd_discovery_changes_total", stat: "discovery_changes", extraLabels: [.discoveryChange],
                     help: "Targets discovery changed, by change."),

        // Per peer member (docs/SCALING.md): the figures of `show peers`.
        CounterField(source: .peer(.up), scope: .peer, kind: .gauge,
                     metric: "stickyd_peer_up", stat: nil, extraLabels: [],
                     help: "1 while this instance's link to the member is up (pins can be pushed), 0 while connecting or down."),
        CounterField(source: .peer(.inboundUp), scope: .peer, kind: .gauge,
                     metric: "stickyd_peer_inbound_up", stat: nil, extraLabels: [],
                     help: "1 while the member's own link to this instance is connected (its pins arrive), 0 otherwise."),
        CounterField(source: .peer(.pinsSent), scope: .peer, kind: .counter,
                     metric: "stickyd_peer_pins_sent_total", stat: nil, extraLabels: [],
                     help: "Pins written to the member, resyncs included."),
        CounterField(source: .peer(.pinsReceived), scope: .peer, kind: .counter,
                     metric: "stickyd_peer_pins_received_total", stat: nil, extraLabels: [],
                     help: "Pins received from the member (what the workers did with them: stickyd_peer_pins_applied_total, stickyd_peer_conflicts_total, stickyd_peer_pins_ignored_total)."),
        CounterField(source: .peer(.pinsDropped), scope: .peer, kind: .counter,
                     metric: "stickyd_peer_pins_dropped_total", stat: nil, extraLabels: [],
                     help: "Pins meant for the member dropped because its queue held `peers.queue`. A resync sends the member the whole table once its link is up."),
        CounterField(source: .peer(.queued), scope: .peer, kind: .gauge,
                     metric: "stickyd_peer_queued", stat: nil, extraLabels: [],
                     help: "Pins waiting to be pushed to the member."),
        CounterField(source: .peer(.queueLagSeconds), scope: .peer, kind: .gauge,
                     metric: "stickyd_peer_queue_lag_seconds", stat: nil, extraLabels: [],
                     help: "Age of the oldest pin waiting for the member (0 with an empty queue): how far behind this instance's pushes are."),
        CounterField(source: .peer(.receiveLagSeconds), scope: .peer, kind: .gauge,
                     metric: "stickyd_peer_receive_lag_seconds", stat: nil, extraLabels: [],
                     help: "The last batch from the member: its send time to its arrival here, by the two hosts' wall clocks (clock skew shows in it)."),
        CounterField(source: .peer(.connects), scope: .peer, kind: .counter,
                     metric: "stickyd_peer_connects_total", stat: nil, extraLabels: [],
                     help: "Connection attempts to the member, the first included; more than one means reconnects (with backoff, 100 ms doubling to 5 s)."),
        CounterField(source: .peer(.resyncs), scope: .peer, kind: .counter,
                     metric: "stickyd_peer_resyncs_total", stat: nil, extraLabels: [],
                     help: "Whole tables sent to the member because pins meant for it were lost (its queue was full, a worker's outbox was full, or its link closed with pushes in flight), once its link was up again; at most one a second."),

        // The process.
        CounterField(source: .process(.buildInfo), scope: .process, kind: .gauge,
                     metric: "stickyd_build_info", stat: nil, extraLabels: [.version],
                     help: "Always 1; the version is a label."),
        CounterField(source: .process(.startTime), scope: .process, kind: .gauge,
                     metric: "stickyd_start_time_seconds", stat: nil, extraLabels: [],
                     help: "When the daemon started, in Unix seconds."),
        CounterField(source: .process(.peerConnectionsRefused), scope: .process, kind: .counter,
                     metric: "stickyd_peer_connections_refused_total", stat: nil, extraLabels: [],
                     help: "Peer connections refused: not from a member (name, address), another hash_key, a failed TLS handshake (a certificate peers.tls.ca did not sign, or none), or a certificate whose CN is not the member's name. The last reason is in show peers."),
        CounterField(source: .process(.peerOutboxDropped), scope: .process, kind: .counter,
                     metric: "stickyd_peer_outbox_dropped_total", stat: nil, extraLabels: [],
                     help: "Pin changes lost before the peer service saw them: a worker's outbox was full (the peer service drains it every 10 ms)."),
    ]
}

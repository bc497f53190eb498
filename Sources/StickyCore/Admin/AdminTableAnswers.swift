// The answers whose text form is a table: `show targets` and `show
// affinity`. Each row type is one JSON object of the answer's list, and its
// `cells` are one line of the table.

extension DrainMode: Codable {}
extension HealthStatus: Codable {}
extension HealthCheckType: Codable {}

/// Left-aligned columns, two spaces apart; no cell holds a blank, so a
/// script can split lines on blanks.
public enum AdminTable {
    public static func render(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}

/// `show targets`.
public struct TargetsAnswer: AdminAnswer, Equatable {
    public var targets: [TargetRow]
    public init(targets: [TargetRow]) { self.targets = targets }
    /// The GOAWAYS column only when an h2c pool is listed, and ORIGIN
    /// only when discovery added a target: a daemon without either keeps
    /// the table it always had.
    public var text: String {
        var header = TargetRow.header
        var rows = targets.map(\.cells)
        if targets.contains(where: { $0.goawaysSent != nil }) {
            header.append("GOAWAYS")
            for i in rows.indices { rows[i].append(targets[i].goawaysSent.map { "\($0)" } ?? "-") }
        }
        if targets.contains(where: { $0.origin == .discovery }) {
            header.append("ORIGIN")
            for i in rows.indices { rows[i].append(targets[i].origin.rawValue) }
        }
        return AdminTable.render(header, rows)
    }
}

/// One target of `show targets`. Optional fields are left out of the JSON
/// when nil: the drain fields while not draining, `name` when unset, the
/// health details for a target health does not track.
public struct TargetRow: Codable, Equatable, Sendable {
    public var pool: String
    public var address: String
    public var name: String?
    /// Without the drain mode, which is `drainMode`.
    public var state: TargetStateName
    public var weight: Int
    public var connections: Int
    public var affinityEntries: Int
    public var connectionsTotal: UInt64
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    public var origin: TargetOrigin
    public var drainMode: DrainMode?
    public var drainRemainingMs: Millis?
    public var drainExpired: Bool?
    /// Who started the drain (draining targets only).
    public var drainBy: DrainCause?
    /// Only when true: the config file no longer lists the target, and it
    /// leaves the pool at its drain's deadline (`drainRemainingMs`, also
    /// for a target in `maint`).
    public var leaving: Bool?
    /// Data-path connect failures to the target, cumulative.
    public var connectFailures: UInt64
    /// h2c pools only (nil, and left out, for tcp; docs/HTTP2.md): GOAWAYs
    /// stickyd wrote to the target's clients, connections the client closed
    /// after one, and h2c connections still open at a drain's deadline.
    public var goawaysSent: UInt64?
    public var goawayClosed: UInt64?
    public var openAtDeadline: UInt64?
    public var health: HealthStatus
    public var healthCheck: HealthCheckType?
    public var healthTransitions: UInt64?
    public var healthHoldMs: Millis?
    /// Why health last changed, or the last failure.
    public var healthReason: String?
    /// What placement uses: `state` combined with health.
    public var effectiveState: TargetStateName?
    /// True for a target health has down that its pool's panic mode put
    /// back in service (docs/HEALTH.md); left out otherwise.
    public var healthPanic: Bool?

    enum CodingKeys: String, CodingKey {
        case pool, address, name, state, weight, connections, origin, health
        case affinityEntries = "affinity_entries"
        case connectionsTotal = "connections_total"
        case bytesIn = "bytes_in"
        case bytesOut = "bytes_out"
        case drainMode = "drain_mode"
        case drainRemainingMs = "drain_remaining_ms"
        case drainExpired = "drain_expired"
        case drainBy = "drain_by"
        case leaving
        case connectFailures = "connect_failures"
        case goawaysSent = "goaways_sent"
        case goawayClosed = "goaway_closed"
        case openAtDeadline = "open_at_deadline"
        case healthCheck = "health_check"
        case healthTransitions = "health_transitions"
        case healthHoldMs = "health_hold_ms"
        case healthReason = "health_reason"
        case effectiveState = "effective_state"
        case healthPanic = "health_panic"
    }

    public init(pool: String, address: String, name: String?, state: TargetStateName, weight: Int, origin: TargetOrigin,
                connections: Int = 0, affinityEntries: Int = 0, connectionsTotal: UInt64 = 0, bytesIn: UInt64 = 0,
                bytesOut: UInt64 = 0, connectFailures: UInt64 = 0, health: HealthStatus = .up) {
        self.pool = pool
        self.address = address
        self.name = name
        self.state = state
        self.weight = weight
        self.origin = origin
        self.connections = connections
        self.affinityEntries = affinityEntries
        self.connectionsTotal = connectionsTotal
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.connectFailures = connectFailures
        self.health = health
    }

    public static let header = ["POOL", "ADDRESS", "NAME", "STATE", "WEIGHT", "CONNS", "AFFINITY", "TOTAL", "BYTES_IN",
                                "BYTES_OUT", "DRAIN_LEFT", "HEALTH", "HEALTH_CHANGES"]

    public var cells: [String] {
        let stateText = drainMode.map { "\(state.rawValue)(\($0.rawValue))" } ?? state.rawValue
        // Whole seconds, rounded up: "0s" only once it is over.
        let drainText = drainExpired == true ? "expired" : drainRemainingMs.map { "\(($0 + 999) / 1000)s" } ?? "-"
        var healthText = health.rawValue
        if healthPanic == true { healthText += "(panic)" }
        if let hold = healthHoldMs, hold > 0 { healthText += "(hold:\((hold + 999) / 1000)s)" }
        return [pool, address, name ?? "-", stateText, "\(weight)", "\(connections)", "\(affinityEntries)",
                "\(connectionsTotal)", "\(bytesIn)", "\(bytesOut)", drainText, healthText, "\(healthTransitions ?? 0)"]
    }
}

/// `show affinity`.
public struct AffinityAnswer: AdminAnswer, Equatable {
    public var entries: [AffinityRow]
    public init(entries: [AffinityRow]) { self.entries = entries }
    public var text: String { AdminTable.render(AffinityRow.header, entries.map(\.cells)) }
}

/// One pin of `show affinity`.
public struct AffinityRow: Codable, Equatable, Sendable {
    public var pool: String
    /// The affinity key: the client's IP, masked if the pool masks keys.
    public var client: String
    /// The pinned target's address, or `(gone)` once it was removed.
    public var target: String
    public var connections: Int
    public var idleS: UInt32
    public var worker: Int

    enum CodingKeys: String, CodingKey {
        case pool, client, target, connections, worker
        case idleS = "idle_s"
    }

    public init(pool: String, client: String, target: String, connections: Int, idleS: UInt32, worker: Int) {
        self.pool = pool
        self.client = client
        self.target = target
        self.connections = connections
        self.idleS = idleS
        self.worker = worker
    }

    public static let header = ["POOL", "CLIENT", "TARGET", "CONNS", "IDLE_S", "WORKER"]

    public var cells: [String] { [pool, client, target, "\(connections)", "\(idleS)", "\(worker)"] }

    /// What `show affinity` says for a pin whose target was removed.
    public static let goneTarget = "(gone)"
}

import Foundation

/// The runtime state a restart must keep: targets added, removed, reweighted,
/// drained or put in maintenance through the admin socket, and the affinity
/// hash key when the config does not set one.
///
/// How it is laid over the config on start (docs/ADMIN.md, "Persistence"):
/// - a pool in both: the state file's targets win (weights, names, states);
///   config targets the state file does not know are added (new in the
///   config); config targets removed at runtime stay removed; targets the
///   state file took from a config that no longer lists them are dropped
///   (the config removed them);
/// - a pool only in the config: as configured;
/// - a pool only in the state file: ignored, with a warning;
/// - a drain a reload started (`drain_by_reload`) on a target the config
///   lists again is ended: the config is the desired set (docs/CONFIG.md,
///   "Reload and restart: the rules"); an operator's drain or maint stays.
/// `down` is never persisted: health is measured afresh after a restart.
public struct StateFile: Codable, Equatable, Sendable {
    public static let currentVersion = 1

    public struct Target: Codable, Equatable, Sendable {
        public var address: String
        public var weight: Int
        public var name: String?
        /// ready, draining or maint.
        public var state: String
        public var drainMode: String?
        public var drainDeadlineUnixMs: Int64?
        public var origin: TargetOrigin
        /// Written only when true: discovery started the drain, and may end it.
        public var drainByDiscovery: Bool?
        /// Written only when true: a reload that dropped the target started
        /// the drain, so a config that lists the target again ends it. Files
        /// from before this field load as operators' drains, which stay.
        public var drainByReload: Bool?

        enum CodingKeys: String, CodingKey {
            case address, weight, name, state, origin
            case drainMode = "drain_mode"
            case drainDeadlineUnixMs = "drain_deadline_unix_ms"
            case drainByDiscovery = "drain_by_discovery"
            case drainByReload = "drain_by_reload"
        }
    }

    public struct Pool: Codable, Equatable, Sendable {
        public var name: String
        public var targets: [Target]
        public var removedConfigTargets: [String]
        enum CodingKeys: String, CodingKey {
            case name, targets
            case removedConfigTargets = "removed_config_targets"
        }
    }

    public var version: Int
    public var writtenAtUnixMs: Int64
    /// 32 hex digits; present when the key was generated rather than configured.
    public var hashKey: String?
    public var pools: [Pool]

    enum CodingKeys: String, CodingKey {
        case version, pools
        case writtenAtUnixMs = "written_at_unix_ms"
        case hashKey = "hash_key"
    }

    public init(registry: TargetRegistry, hashKey: String?, nowMs: Millis, nowUnixMs: Int64) {
        version = StateFile.currentVersion
        writtenAtUnixMs = nowUnixMs
        self.hashKey = hashKey
        pools = registry.pools.map { p in
            Pool(name: p.name, targets: p.targets.map { t in
                var state = "ready"
                var mode: String?
                var deadline: Int64?
                switch t.state {
                case .ready, .down: state = "ready"
                case .maint: state = "maint"
                case .draining(let m):
                    state = "draining"
                    mode = m.rawValue
                    if let d = t.drain { deadline = nowUnixMs + (d.deadlineMs - nowMs) }
                }
                return Target(address: "\(t.spec.address)", weight: t.spec.weight, name: t.spec.name,
                              state: state, drainMode: mode, drainDeadlineUnixMs: deadline, origin: t.origin,
                              drainByDiscovery: t.drain?.byDiscovery == true ? true : nil,
                              drainByReload: t.state.name == .draining && t.drain?.byReload == true ? true : nil)
            }, removedConfigTargets: p.removedConfigTargets.map { "\($0)" })
        }
    }

    public func encoded() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(self)
    }

    /// Decodes and checks a state file; the error says what is wrong in
    /// words an operator can act on.
    public static func decode(_ data: Data, file: String) throws -> StateFile {
        let s: StateFile
        do {
            s = try JSONDecoder().decode(StateFile.self, from: data)
        } catch {
            throw RegistryError("\(file): not a stickyd state file (\(error))")
        }
        guard s.version == currentVersion else {
            throw RegistryError("\(file): state file version \(s.version); this stickyd reads version \(currentVersion)")
        }
        // The registry's own rules (`TargetRegistry.add` keeps them): a file
        // that breaks one was edited by hand, and running on it would trap
        // later, where a Maglev table is built from the duplicate.
        var poolNames = Set<String>()
        for p in s.pools {
            guard poolNames.insert(p.name).inserted else { throw RegistryError("\(file): pool '\(p.name)' is listed twice") }
            guard p.targets.count <= TargetMask.capacity else {
                throw RegistryError("\(file): pool '\(p.name)': \(p.targets.count) targets; a pool holds at most \(TargetMask.capacity)")
            }
            var addresses = Set<SocketAddress>()
            var names = Set<String>()
            for t in p.targets {
                guard let address = SocketAddress(t.address) else { throw RegistryError("\(file): pool '\(p.name)': bad address '\(t.address)'") }
                guard addresses.insert(address).inserted else {
                    throw RegistryError("\(file): pool '\(p.name)': target \(address) is listed twice")
                }
                if let name = t.name {
                    if let problem = checkName(name, what: "target name") { throw RegistryError("\(file): pool '\(p.name)': \(problem)") }
                    guard names.insert(name).inserted else {
                        throw RegistryError("\(file): pool '\(p.name)': target name '\(name)' is used twice")
                    }
                }
                guard ["ready", "draining", "maint"].contains(t.state) else {
                    throw RegistryError("\(file): pool '\(p.name)': target \(t.address): unknown state '\(t.state)'")
                }
                guard t.weight >= 0 && t.weight <= 10_000 else {
                    throw RegistryError("\(file): pool '\(p.name)': target \(t.address): weight \(t.weight) out of range")
                }
            }
            // A target cannot be both in the pool and removed from it: laid
            // over, it would be served and also saved as removed, and the
            // next start would drop it.
            for r in p.removedConfigTargets {
                guard let address = SocketAddress(r) else {
                    throw RegistryError("\(file): pool '\(p.name)': bad address '\(r)' in removed_config_targets")
                }
                guard !addresses.contains(address) else {
                    throw RegistryError("\(file): pool '\(p.name)': target \(address) is listed and also in removed_config_targets")
                }
            }
        }
        return s
    }

    /// Lays this state over `base` (built from the config), as the type's
    /// doc describes. Returns warnings for what was ignored.
    public func overlay(on base: TargetRegistry, nowMs: Millis, nowUnixMs: Int64) -> (TargetRegistry, [String]) {
        var result = base
        var warnings: [String] = []
        for sp in pools {
            guard let p = result.pools.firstIndex(where: { $0.name == sp.name }) else {
                warnings.append("state file pool '\(sp.name)' is not in the config; ignored")
                continue
            }
            let configured = base.pools[p].targets
            let configuredAddresses = Set(configured.map(\.spec.address))
            var targets: [TargetRecord] = []
            for st in sp.targets {
                guard let address = SocketAddress(st.address) else { continue }
                if st.origin == .config && !configuredAddresses.contains(address) {
                    warnings.append("pool '\(sp.name)': \(address) was removed from the config; dropped")
                    continue
                }
                var state: TargetState = .ready
                var drain: DrainInfo?
                switch st.state {
                case "maint": state = .maint
                case "draining" where st.origin == .config && st.drainByReload == true:
                    // A reload's drain, and the config lists the target again
                    // (it is configured, or the check above dropped it): the
                    // file wants it, so it is ready, as a reload would make it.
                    warnings.append("pool '\(sp.name)': \(address) is in the config again; the drain a reload started is ended, and it is ready")
                case "draining":
                    let mode = st.drainMode.flatMap(DrainMode.init(rawValue:)) ?? .strict
                    state = .draining(mode)
                    // The deadline is the file's word, and a hand-edited one
                    // may be anything: what is left of it is kept within the
                    // longest drain an operator can ask for, so adding it to
                    // the clock cannot overflow.
                    let (left, overflow) = (st.drainDeadlineUnixMs ?? nowUnixMs).subtractingReportingOverflow(nowUnixMs)
                    let remaining = overflow ? (nowUnixMs > 0 ? 0 : AdminGrammar.drainTimeoutCeilingMs) : left
                    drain = DrainInfo(mode: mode, startedMs: nowMs,
                                      deadlineMs: nowMs + min(max(0, remaining), AdminGrammar.drainTimeoutCeilingMs))
                    drain?.byDiscovery = st.drainByDiscovery ?? false
                default: state = .ready
                }
                targets.append(TargetRecord(spec: TargetSpec(address: address, weight: st.weight, name: st.name),
                                            state: state, drain: drain, origin: st.origin))
            }
            let removed = Set(sp.removedConfigTargets.compactMap(SocketAddress.init))
            let known = Set(targets.map(\.spec.address))
            for c in configured where !known.contains(c.spec.address) && !removed.contains(c.spec.address) {
                // The file may already fill the pool with runtime targets.
                guard targets.count < TargetMask.capacity else {
                    warnings.append("pool '\(sp.name)': \(c.spec.address) is new in the config, but the pool is full (\(TargetMask.capacity) targets); not added")
                    continue
                }
                // The file's names win for the targets it lists (a config that
                // moved a name to a new target would otherwise name two).
                var c = c
                if let name = c.spec.name, targets.contains(where: { $0.spec.name == name }) {
                    warnings.append("pool '\(sp.name)': \(c.spec.address) is new in the config as '\(name)', a name the state file gives another target; added without a name")
                    c.spec.name = nil
                }
                targets.append(c)
            }
            result.pools[p].targets = targets
            result.pools[p].removedConfigTargets = removed.filter(configuredAddresses.contains).sorted { "\($0)" < "\($1)" }
        }
        return (result, warnings)
    }
}

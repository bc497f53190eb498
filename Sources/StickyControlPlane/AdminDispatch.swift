import StickyCore
import StickyDataPlane

extension ControlPlane {
    /// Answers one admin line. Never throws: every failure is an error line
    /// (or JSON object) and the session goes on.
    public func handle(_ line: Substring, _ peer: PeerCredentials) -> AdminReply {
        let request: AdminRequest
        switch AdminGrammar.parse(line) {
        case .success(let r): request = r
        case .failure(let e):
            let json = line.split(separator: " ").first == "json"
            return AdminReply(AdminFormat.render(ErrorAnswer(e.message), json: json))
        }
        switch execute(request.command) {
        case .success(let answer):
            return AdminReply(AdminFormat.render(answer, json: request.json), close: request.command == .quit)
        case .failure(let e):
            return AdminReply(AdminFormat.render(ErrorAnswer(e.message), json: request.json))
        }
    }

    func execute(_ command: AdminCommand) -> Result<any AdminAnswer, RegistryError> {
        let now = clock.nowMs()
        switch command {
        case .help:
            return .success(HelpAnswer(commands: helpCommands))
        case .quit:
            return .success(ResultAnswer.bye)
        case .upgrade:
            // The daemon answers it before the lock (DaemonUpgrade.swift):
            // it waits for a hand-over that itself needs the lock.
            return .failure(RegistryError("upgrade is not available on this listener"))
        case .showInfo:
            return .success(info(now: now))
        case .showStats:
            return .success(stats())
        case .showTargets(let pool):
            let r = registry
            switch r.poolIndex(pool) {
            case .success: return .success(targets(r, pool: pool, now: now))
            // Without a pool name, several pools are all listed.
            case .failure where pool == nil && r.pools.count > 1: return .success(targets(r, pool: nil, now: now))
            case .failure(let e): return .failure(e)
            }
        case .showAffinity(let pool, let client, let limit):
            let r = registry
            return ControlPlane.poolFilter(r, pool).map { pi in
                affinity(r, pool: pi, client: client, limit: limit ?? 100, now: now)
            }
        case .clearAffinity(let pool, let scope):
            return ControlPlane.poolFilter(registry, pool).map { pi in
                // Each worker clears its own shard and says how many it removed.
                let answers = ask { .clearAffinity(pool: pi, scope: scope, request: $0) }
                return ClearAffinityAnswer(removed: answers.reduce(0) { $0 + ($1.answer?.affinityCleared ?? 0) },
                                           workersLate: answers.filter { $0.answer == nil }.count)
            }
        case .addTarget, .setWeight, .drain, .ready, .maint, .remove:
            return change(command, now: now).map { ResultAnswer.ok($0) }
        case .showPeers:
            return peersAnswer()
        case .withdraw, .announce:
            return vipChange(announce: command == .announce).map { ResultAnswer.ok($0) }
        }
    }

    /// The commands that change something. Success is the `ok:` message.
    func change(_ command: AdminCommand, now: Millis) -> Result<String, RegistryError> {
        switch command {
        case .addTarget(let pool, let address, let weight, let name):
            return mutate { $0.add(pool: pool, address: address, weight: weight, name: name) }
                .map { _ in "added \(address)" }
        case .setWeight(let pool, let address, let weight):
            return mutate { $0.setWeight(pool: pool, address: address, weight: weight) }
                .map { _ in "weight of \(address) set to \(weight)" }
        case .drain(let pool, let address, let mode, let timeoutMs):
            return mutate { $0.drain(pool: pool, address: address, mode: mode, timeoutMs: timeoutMs, now: now) }
                .map { _ in
                    let m = mode ?? config.drain.mode
                    let t = timeoutMs ?? config.drain.timeoutMs
                    return "draining \(address) (mode \(m.rawValue), deadline in \(formatDuration(t)))"
                }
        case .ready(let pool, let address):
            return mutate { $0.setState(pool: pool, address: address, .ready) }.map { _ in "\(address) is ready" }
        case .maint(let pool, let address):
            return mutate { $0.setState(pool: pool, address: address, .maint) }.map { _ in "\(address) is in maintenance" }
        case .remove(let pool, let address, let force):
            let p: Int
            switch registry.locate(pool, address) {
            case .success(let found): p = found.0
            case .failure(let e): return .failure(e)
            }
            let open = ControlPlane.loads(collect())[p]?[address]?.connections ?? 0
            return mutate { $0.remove(pool: pool, address: address, force: force, openConnections: open) }
                .map { _ in
                    if force && open > 0 {
                        broadcast(.closeTarget(pool: p, address: address, graceMs: 0, graceful: false))
                        return "removed \(address); \(open) connection(s) reset"
                    }
                    return "removed \(address)"
                }
        case .help, .quit, .upgrade, .showInfo, .showStats, .showTargets, .showAffinity, .showPeers, .withdraw, .announce,
             .clearAffinity:
            preconditionFailure("\(command) changes nothing")
        }
    }

    /// A command's optional pool: nil means every pool; a name must exist.
    static func poolFilter(_ r: TargetRegistry, _ pool: String?) -> Result<Int?, RegistryError> {
        guard pool != nil else { return .success(nil) }
        return r.poolIndex(pool).map { Optional($0) }
    }

    /// Applies a registry change under the lock, then publishes and
    /// persists it (outside the lock: workers and disks can be slow).
    func mutate(_ body: (inout TargetRegistry) -> Result<RegistryChange, RegistryError>) -> Result<RegistryChange, RegistryError> {
        let outcome = state.withLock { s -> (Result<RegistryChange, RegistryError>, TargetRegistry) in
            (body(&s.registry), s.registry)
        }
        if case .success(let change) = outcome.0 {
            publish(change, outcome.1)
            persist()
        }
        return outcome.0
    }
}

/// Renders answers in the form the request asked for.
enum AdminFormat {
    static func render(_ answer: some AdminAnswer, json: Bool) -> String {
        json ? AdminJSON.encode(answer) : answer.text
    }

    static func jsonError(_ message: String) -> String { AdminJSON.encode(ErrorAnswer(message)) }
}

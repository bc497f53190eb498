import StickyCore
import StickyDataPlane

extension ControlPlane {
    /// Applies a reloaded config: target membership and weights (see
    /// `TargetRegistry.reload`) and timeouts. What needs a restart
    /// (listeners, pools, engine, workers, limits) is reported, not applied.
    public func reload(_ new: StickyConfig) -> Result<String, RegistryError> {
        let now = clock.nowMs()
        let outcome = state.withLock { s -> (Result<ReloadPlan, RegistryError>, TargetRegistry) in
            (s.registry.reload(new, now: now), s.registry)
        }
        guard case .success(let plan) = outcome.0 else { return outcome.0.map { _ in "" } }
        for change in plan.changes { publish(change, outcome.1) }
        // max_connections: each worker's share, within the slots it made
        // at start; connect_retries as is.
        let workers = max(1, channels.withLock { $0.count })
        let startShare = (config.limits.maxConnections + workers - 1) / workers
        let share = min((new.limits.maxConnections + workers - 1) / workers, startShare)
        broadcast(.setLimits(connectionsMax: share, connectRetries: new.connectRetries))
        broadcast(.setTimeouts(connectMs: new.timeouts.connectMs, idleMs: new.timeouts.idleMs,
                               shutdownMs: new.timeouts.shutdownMs, connectBudgetMs: new.timeouts.connectBudgetMs))
        persist()
        var ignored: [String] = []
        if new.listeners != config.listeners { ignored.append("listeners") }
        if new.engine != config.engine { ignored.append("engine") }
        if new.workers != config.workers { ignored.append("workers") }
        var fixedLimits = new.limits
        fixedLimits.maxConnections = config.limits.maxConnections
        if fixedLimits != config.limits { ignored.append("limits other than max_connections") }
        if new.limits.maxConnections > config.limits.maxConnections {
            ignored.append("max_connections above \(config.limits.maxConnections), the value at start")
        }
        if new.pools.map(\.affinity) != config.pools.map(\.affinity) { ignored.append("affinity") }
        if new.logLevel != config.logLevel || new.observability != config.observability { ignored.append("log, metrics") }
        if new.pools.map(\.sendProxy) != config.pools.map(\.sendProxy) { ignored.append("send_proxy") }
        if new.pools.map(\.health) != config.pools.map(\.health) { ignored.append("health") }
        if new.pools.map(\.discovery) != config.pools.map(\.discovery) { ignored.append("discovery") }
        // `restored` and `held` come last: the first three counts keep their
        // places for whoever reads these lines.
        var summary = "added \(plan.added.count), draining \(plan.draining.count), reweighted \(plan.reweighted.count), restored \(plan.restored.count)"
        if !plan.held.isEmpty {
            summary += " (\(plan.held.count) listed again but kept drained or in maint, as an admin command set them: \(plan.held.map { "\($0.address)" }.joined(separator: ", ")))"
        }
        summary += "; timeouts, max_connections and connect_retries applied"
        if !ignored.isEmpty { summary += "; needs a restart to change: \(ignored.joined(separator: ", "))" }
        return .success(summary)
    }
}

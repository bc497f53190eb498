import Foundation
import Glibc
import Logging
import StickyCore
import StickyDataPlane
import Synchronization

/// What an upgrade has done, shared by the main, admin and takeover threads.
final class HandoffFlags: Sendable {
    /// Old side: a successor is being handed the state; admin changes wait.
    let inProgress = Atomic<Bool>(false)
    /// Old side: committed; the main loop goes to the graceful stop.
    let handedOver = Atomic<Bool>(false)
    let successorPid = Atomic<Int32>(0)
    /// When accepting was paused (either side), for the log line.
    let pausedAtMs = Atomic<Int64>(0)
}

/// The daemon's part of the zero-downtime upgrade (docs/OPERATIONS.md,
/// "Upgrade"; the wire protocol is in Takeover.swift).
extension Daemon {
    // MARK: - Successor

    /// Connects to the running daemon and receives its sockets and state.
    func receiveTakeover() throws -> (client: TakeoverClient, received: TakeoverReceived) {
        guard let path = config.takeoverSocketPath else {
            throw SystemError("--takeover: no takeover socket (takeover_socket is none, or admin.socket is none and takeover_socket unset)", errno: EINVAL)
        }
        handoff.pausedAtMs.store(ControlPlane.monotonicMs(), ordering: .relaxed)
        let client = try TakeoverClient(path: path)
        let received = try client.receive()
        // systemd's watchdog names the old pid; with NotifyAccess=all the
        // successor's WATCHDOG=1 counts, so it must pet it too.
        unsetenv("WATCHDOG_PID")
        logger.notice("upgrade: received the running daemon's sockets and state", metadata: [
            "old_pid": "\(received.state.pid)", "workers": "\(received.state.workers)",
            "listeners": "\(received.state.listeners.count)",
            "affinity_entries": "\(received.affinity.reduce(0) { $0 + $1.pinCount })",
        ])
        return (client, received)
    }

    /// The old process's worker count: its steering program sends each
    /// client to socket hash % workers, and the shards follow the sockets.
    func adoptedWorkerCount(_ received: TakeoverReceived) -> Int {
        let old = received.state.workers
        if workerCount != old {
            logger.warning("upgrade: keeping the running daemon's worker count; the configured one applies at the next restart",
                           metadata: ["workers": "\(old)", "configured": "\(workerCount)"])
        }
        return old
    }

    /// Matches the config's listeners to the received sockets by address;
    /// a listener the old process did not have is bound afresh, and a
    /// received socket the config no longer lists is closed (its queued
    /// clients then go with the old process's last reference).
    func adoptListeners(_ received: TakeoverReceived, workers: Int) throws -> [[WorkerSettings.Listener]] {
        var perWorker: [[WorkerSettings.Listener]] = Array(repeating: [], count: workers)
        var used = Set<Int>()
        var opened: [Int32] = []
        do {
            for l in config.listeners {
                guard let pool = config.pools.firstIndex(where: { $0.name == l.pool }) else {
                    preconditionFailure("validated config names an unknown pool")
                }
                let a = config.pools[pool].affinity
                if let j = received.state.listeners.indices.first(where: {
                    !used.contains($0) && SocketAddress(received.state.listeners[$0].address) == l.address
                }) {
                    used.insert(j)
                    let old = received.state.listeners[j]
                    if (l.address.ip.isV4 ? old.maskV4 != a.maskV4 : old.maskV6 != a.maskV6) {
                        logger.warning("upgrade: the listener's steering keeps the old affinity mask until a restart",
                                       metadata: ["listener": "\(l.address)"])
                    }
                    for w in 0..<workers { perWorker[w].append(.init(fd: received.listenerFDs[j][w], pool: pool, proxy: l.proxyProtocol)) }
                    continue
                }
                logger.notice("upgrade: binding a listener the running daemon did not have", metadata: ["listener": "\(l.address)"])
                for w in 0..<workers {
                    let fd = try Sockets.listener(l.address, backlog: Int32(l.backlog))
                    opened.append(fd)
                    perWorker[w].append(.init(fd: fd, pool: pool, proxy: l.proxyProtocol))
                    if w == 0 && workers > 1 {
                        try Sockets.attachSteering(fd, ipv6: !l.address.ip.isV4,
                                                   prefixLength: l.address.ip.isV4 ? a.maskV4 : a.maskV6, workers: workers)
                    }
                }
            }
        } catch {
            for fd in opened { close(fd) }
            for fd in received.listenerFDs.joined() { close(fd) }
            throw error
        }
        for (j, l) in received.state.listeners.enumerated() where !used.contains(j) {
            logger.notice("upgrade: the config no longer lists a listener; its sockets close with the old daemon",
                          metadata: ["listener": "\(l.address)"])
            for fd in received.listenerFDs[j] { close(fd) }
        }
        return perWorker
    }

    /// Workers are up with accepting held: tell the old daemon, wait for it
    /// to let go, then take the socket paths and start accepting, and bind
    /// the remote admin listener now that the old one has closed it.
    func completeTakeover(_ client: TakeoverClient, received: TakeoverReceived, channels: [WorkerChannel], control: ControlPlane,
                          admin: AdminService, remoteTLS: RemoteAdminTLS?, takeoverServer: TakeoverServer?) throws {
        let confirmed: Bool
        do {
            confirmed = try client.ready(oldPid: received.state.pid)
        } catch {
            // Held workers have no connections: they stop at once.
            for c in channels { c.post(.stop) }
            admin.stop()
            takeoverServer?.stop()
            throw error
        }
        if !confirmed {
            // The old daemon rolls back only by closing the connection (or
            // it died): with it open, it committed and its message was lost.
            logger.warning("upgrade: no commit from the running daemon; serving anyway (it did not roll back)",
                           metadata: ["old_pid": "\(received.state.pid)", "waited_ms": "\(TakeoverLimits.commitMs)"])
        }
        for c in channels { c.post(.handoffResume) }
        let pausedMs = ControlPlane.monotonicMs() - handoff.pausedAtMs.load(ordering: .relaxed)
        do {
            try admin.install()
            try takeoverServer?.install()
        } catch {
            // Serving goes on; only the path is missing. Say so loudly.
            logger.error("upgrade: could not take over a socket path", metadata: ["error": "\(error)"])
        }
        // Now the old daemon lets go of its ports (bound below, with retries).
        if !client.serving() && !confirmed && TakeoverClient.alive(received.state.pid) {
            // Its wait for `ready` ran out in the same moment as ours for
            // `commit`: it rolled back as we started. Both serve now.
            logger.error("upgrade: the running daemon rolled back as this one started serving; both serve: stop one",
                         metadata: ["old_pid": "\(received.state.pid)"])
        }
        logger.notice("upgrade: took over; accepting", metadata: ["accept_paused_ms": "\(pausedMs)"])
        guard let remoteTLS else { return }
        _ = bindAfterHandover("remote admin listener") { try admin.listenRemote(remoteTLS) }
    }

    /// Counts the old daemon's connections in bounded load until it exits
    /// (ControlPlane+Predecessor.swift), on a thread of its own.
    func followPredecessorLoads(_ client: TakeoverClient, control: ControlPlane) {
        let logger = self.logger
        let t = Thread {
            var last: [TakeoverLoad]?
            client.followLoads { loads in
                guard loads != last else { return }
                // Applied first, so the line tells they count.
                control.setPredecessorLoads(loads)
                if last == nil {
                    logger.notice("upgrade: the old daemon's open connections count toward bounded load until it exits",
                                  metadata: ["connections": "\(loads.reduce(0) { $0 + $1.connections })"])
                }
                last = loads
            }
            logger.notice("upgrade: the old daemon's connections are gone; bounded load counts this process's own")
        }
        t.name = "stickyd-predecessor"
        t.start()
    }

    /// Old side, after the hand-over: this process's loads to the
    /// successor. False once it cannot take them (then no more are sent).
    func feedLoads(_ ch: TakeoverChannel, control: ControlPlane) -> Bool {
        do {
            try ch.sendJSON(.loads, control.openConnections(), deadline: ControlPlane.monotonicMs() + 100)
            return true
        } catch {
            logger.warning("upgrade: the successor no longer takes this process's loads", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// The old daemon closes its remote admin and metrics ports on commit;
    /// a few tries over 5 s cover the moment that takes. A port still not
    /// free is logged and the daemon serves on without that listener.
    func bindAfterHandover<T>(_ what: String, _ bind: () throws -> T) -> T? {
        for attempt in 1...50 {
            do {
                return try bind()
            } catch {
                if attempt == 50 {
                    logger.error("upgrade: \(what) not bound; running without it", metadata: ["error": "\(error)"])
                }
                usleep(100_000)
            }
        }
        return nil
    }

    // MARK: - Running daemon

    /// What the takeover socket's thread calls into.
    func takeoverHooks(control: ControlPlane, channels: [WorkerChannel], listeners: [[WorkerSettings.Listener]],
                       workers: Int, adminLock: NSLock, upgrader: Upgrader,
                       releasePorts: @escaping @Sendable () -> Void) -> TakeoverServer.Hooks {
        let logger = self.logger
        let config = self.config
        let flags = handoff
        @Sendable func rollback(_ reason: String) {
            for c in channels { c.post(.handoffResume) }
            control.setPersisting(true)
            control.persist()
            upgrader.rolledBack(reason)
            flags.inProgress.store(false, ordering: .releasing)
            logger.error("upgrade rolled back; accepting again", metadata: ["reason": "\(reason)"])
        }
        return TakeoverServer.Hooks(
            prepare: {
                // Under the admin lock: a change in flight lands before the
                // snapshot, and later ones are refused until the end.
                adminLock.withLock { flags.inProgress.store(true, ordering: .releasing) }
                control.setPersisting(false)
                flags.pausedAtMs.store(ControlPlane.monotonicMs(), ordering: .relaxed)
                let boxes = channels.map { _ in HandoffBox() }
                for (c, b) in zip(channels, boxes) { c.post(.handoffPause(b)) }
                let deadline = ControlPlane.monotonicMs() + TakeoverLimits.exportMs
                var exports: [AffinityExport?] = boxes.map(\.value)
                while exports.contains(where: { $0 == nil }) {
                    guard ControlPlane.monotonicMs() < deadline else {
                        rollback("a worker did not export its affinity table within \(TakeoverLimits.exportMs) ms")
                        throw SystemError("upgrade: worker export", errno: ETIMEDOUT)
                    }
                    usleep(1000)
                    exports = boxes.map(\.value)
                }
                let state = TakeoverState(
                    version: TakeoverLimits.protocolVersion, pid: getpid(), workers: workers,
                    listeners: config.listeners.map { l in
                        let a = config.pools.first { $0.name == l.pool }?.affinity ?? AffinityConfig()
                        return TakeoverState.Listener(address: "\(l.address)", pool: l.pool, maskV4: a.maskV4, maskV6: a.maskV6)
                    },
                    registry: StateFile(registry: control.registry, hashKey: control.hashKey.hex,
                                        nowMs: ControlPlane.monotonicMs(), nowUnixMs: ControlPlane.unixMs()),
                    hashKey: control.hashKey.hex, health: control.healthCarry())
                var fds: [Int32] = []
                for l in config.listeners.indices {
                    for w in 0..<workers { fds.append(listeners[w][l].fd) }
                }
                return TakeoverOffer(state: state, fds: fds, affinity: exports.map { $0! })
            },
            rollback: { reason in rollback(reason) },
            commit: { pid in
                flags.successorPid.store(pid, ordering: .relaxed)
                // The successor serves (it said so, or its word was lost);
                // it binds the metrics and remote admin ports, retrying
                // while these close.
                releasePorts()
                // `upgrade`'s answer first: the main loop stops the admin
                // socket once it sees the hand-over.
                upgrader.committed(successorPid: pid)
                flags.handedOver.store(true, ordering: .releasing)
                // This process is still the unit's main pid and may name
                // its successor (NotifyAccess=main would do for this).
                SystemdNotify.send("MAINPID=\(pid)\nSTATUS=handed over to pid \(pid); finishing open connections")
                logger.notice("upgrade: handed over; finishing open connections", metadata: [
                    "successor_pid": "\(pid)",
                    "accept_paused_ms": "\(ControlPlane.monotonicMs() - flags.pausedAtMs.load(ordering: .relaxed))",
                ])
            })
    }
}

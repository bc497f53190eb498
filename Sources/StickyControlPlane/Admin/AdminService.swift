import Glibc
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import StickyCore
import StickyDataPlane
import Synchronization

/// The admin service: one command language, one session type
/// (`AdminSessionHandler`), on two transports. The Unix socket checks
/// SO_PEERCRED; the TCP listener speaks mutual TLS (`RemoteAdminTLS`). Both
/// have the same limits, answers and pending replies.
///
/// It runs on a one-thread NIO event loop of its own, apart from the
/// workers' rings, so a misbehaving admin client can never stall the data
/// path. It does not share the health prober's or the metrics endpoint's
/// loop: a command runs on the loop and may wait for the workers' reports
/// (up to 2 s), and a probe's timeout must not wait behind it.
public final class AdminService: Sendable {
    public typealias Handler = @Sendable (Substring, PeerCredentials) -> AdminReply

    let logger: Logger
    /// Created with the first listener: a daemon without one has no thread for it.
    let group = Mutex<MultiThreadedEventLoopGroup?>(nil)
    let handler = Mutex<Handler?>(nil)
    struct Listeners {
        var unix: (file: UnixListener, channel: Channel)?
        var remote: Channel?
    }
    let listeners = Mutex(Listeners())
    /// Every open session, so that `stop` can close them.
    let sessions = Mutex<[ObjectIdentifier: Channel]>([:])
    let stopping = StopFlag()

    public init(logger: Logger) {
        self.logger = logger
    }

    var eventLoopGroup: MultiThreadedEventLoopGroup {
        group.withLock { g in
            if let g { return g }
            let new = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            g = new
            return new
        }
    }

    // MARK: - Listeners

    /// Binds the Unix socket (mode 0600, or 0666 when allow lists name
    /// others) at `path`, replacing a stale socket file but refusing to
    /// steal one another process is serving; or, for an upgrade's successor
    /// (`staged`), beside it until `install`. Accepting starts with `start`.
    public func listenUnix(path: String, allowedUIDs: Set<UInt32>, allowedGIDs: Set<UInt32>, staged: Bool) throws {
        // Open to all when allow lists name others, whom the kernel would
        // otherwise refuse before SO_PEERCRED is checked.
        let open = !allowedUIDs.isEmpty || !allowedGIDs.isEmpty
        let file = try UnixListener(path: path, what: "admin socket", openMode: open, staged: staged)
        let load = ListenerLoad(label: "admin", logger: logger)
        let logger = self.logger
        let channel: Channel
        do {
            channel = try bootstrap(load).childChannelInitializer { [self] child in
                guard let slot = load.take() else { return child.close() }
                track(child, slot: slot, load: load)
                return peerCredentials(child).flatMapThrowing { cred in
                    let admission: AdminAdmission
                    if let cred, AdminService.allowed(cred, uids: allowedUIDs, gids: allowedGIDs) {
                        admission = slot == .session ? .admitted(cred) : .refused(AdminLimits.tooManyMessage)
                    } else {
                        let who = cred.map { "uid \($0.uid)" } ?? "unknown peer"
                        logger.warning("admin connection refused", metadata: ["peer": "\(who)"])
                        admission = .refused("error: permission denied for \(who)")
                    }
                    try child.pipeline.syncOperations.addHandler(self.session(admission, label: "admin"))
                }
            }.withBoundSocket(file.fd).wait()
        } catch {
            // The channel owns the descriptor once adopted; only the file is ours.
            file.removeFile()
            throw SystemError("admin socket \(path): cannot serve it: \(error)", errno: (error as? IOError)?.errnoCode ?? EINVAL)
        }
        listeners.withLock { $0.unix = (file, channel) }
        if handler.withLock({ $0 }) != nil { channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in } }
    }

    /// Binds the TCP listener with mutual TLS. No SO_REUSEPORT, so that a
    /// second daemon on the same address fails to start instead of sharing
    /// the admin port.
    public func listenRemote(_ tls: RemoteAdminTLS) throws {
        let config = tls.config
        let load = ListenerLoad(label: "remote admin", logger: logger)
        let logger = self.logger
        let channel: Channel
        do {
            let address = try NIOCore.SocketAddress(ipAddress: "\(config.listen.ip)", port: Int(config.listen.port))
            channel = try bootstrap(load)
                // A restart must not wait for the old sessions' TIME_WAIT.
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { [self] child in
                    guard let slot = load.take() else { return child.close() }
                    track(child, slot: slot, load: load)
                    return child.eventLoop.makeCompletedFuture {
                        let sync = child.pipeline.syncOperations
                        try sync.addHandler(LingeringCloseHandler(stopping: self.stopping))
                        try sync.addHandler(NIOSSLServerHandler(context: tls.context))
                        try sync.addHandler(RemoteAdmissionHandler(allow: config.allow, overLimit: slot == .refusal, logger: logger))
                        try sync.addHandler(self.session(nil, label: "remote admin"))
                    }
                }.bind(to: address).wait()
        } catch {
            throw SystemError("bind(admin.remote.listen \(config.listen))", errno: (error as? IOError)?.errnoCode ?? EINVAL)
        }
        listeners.withLock { $0.remote = channel }
        if handler.withLock({ $0 }) != nil { channel.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in } }
        if config.allow.isEmpty {
            logger.warning("admin.remote.allow is empty: every remote admin client will be refused",
                           metadata: ["listen": "\(config.listen)"])
        }
        logger.info("remote admin listening", metadata: [
            "listen": "\(config.listen)", "allow": "\(config.allow.map(\.description).joined(separator: ","))",
        ])
    }

    /// What both listeners share: the loop, and sockets that accept nothing
    /// until `start` (the kernel queues clients meanwhile). A client's
    /// end of input is a half-close, answered before the session ends.
    func bootstrap(_ load: ListenerLoad) -> ServerBootstrap {
        ServerBootstrap(group: eventLoopGroup)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: AdminLimits.readBytesMax))
    }

    func session(_ admission: AdminAdmission?, label: String) -> AdminSessionHandler {
        guard let handler = handler.withLock({ $0 }) else { preconditionFailure("accepting before start") }
        return AdminSessionHandler(handler: handler, admission: admission, label: label, logger: logger)
    }

    func track(_ child: Channel, slot: ListenerLoad.Slot, load: ListenerLoad) {
        let id = ObjectIdentifier(child)
        sessions.withLock { $0[id] = child }
        child.closeFuture.whenComplete { [self] _ in
            sessions.withLock { $0[id] = nil }
            load.release(slot)
        }
    }

    /// SO_PEERCRED of an accepted Unix connection; nil if the kernel does not say.
    func peerCredentials(_ child: Channel) -> EventLoopFuture<PeerCredentials?> {
        guard let provider = child as? SocketOptionProvider else { return child.eventLoop.makeSucceededFuture(nil) }
        let cred: EventLoopFuture<UCred> = provider.unsafeGetSocketOption(
            level: NIOBSDSocket.OptionLevel(rawValue: SOL_SOCKET), name: NIOBSDSocket.Option(rawValue: SO_PEERCRED))
        return cred.map { Optional(PeerCredentials(pid: $0.pid, uid: $0.uid, gid: $0.gid)) }.recover { _ in nil }
    }

    /// Linux's `struct ucred`, which Swift's Glibc module leaves out (it
    /// needs _GNU_SOURCE); getsockopt(2) fills it by size and layout.
    struct UCred: Sendable {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }

    /// Root, the daemon's own uid, or one the allow lists name. Only the
    /// primary gid counts: it is all SO_PEERCRED reports.
    static func allowed(_ c: PeerCredentials, uids: Set<UInt32>, gids: Set<UInt32>) -> Bool {
        c.uid == 0 || c.uid == geteuid() || uids.contains(c.uid) || gids.contains(c.gid)
    }

    // MARK: - Life cycle

    /// Starts accepting on every listener, answering with `handler`.
    public func start(_ handler: @escaping Handler) {
        self.handler.withLock { $0 = handler }
        let channels = listeners.withLock { [$0.unix?.channel, $0.remote].compactMap { $0 } }
        for c in channels { c.setOption(ChannelOptions.autoRead, value: true).whenFailure { _ in } }
    }

    /// Upgrade: renames the staged socket file over the old process's.
    public func install() throws { try listeners.withLock { $0.unix?.file }?.install() }

    /// An upgrade committed: stopping must not remove the successor's socket.
    public func handOnPath() { listeners.withLock { $0.unix?.file }?.handOnPath() }

    /// An upgrade committed: the successor binds the remote admin port as
    /// soon as it hears so, so it is let go now. Open sessions stay until
    /// `stop`, so an `upgrade` asked remotely still gets its answer.
    public func closeRemoteListener() {
        guard let remote = listeners.withLock({ l in defer { l.remote = nil }; return l.remote }) else { return }
        try? remote.close().wait()
    }

    /// Stops accepting, closes every session and removes the socket file;
    /// returns once the loop has finished, so a process exiting right after
    /// leaves no stale socket behind. Bounded: a TLS session waits at most
    /// 2 s for the client's close_notify.
    public func stop() {
        let (unix, remote) = listeners.withLock { l in
            defer { l = Listeners() }
            return (l.unix, l.remote)
        }
        guard let group = group.withLock({ g in defer { g = nil }; return g }) else { return }
        stopping.set()
        // Answers already resolved were queued on the loop before these
        // closes, so they go out first (an upgrade's "took over").
        var closing = [unix?.channel, remote].compactMap { $0 }.map { $0.close() }
        closing += sessions.withLock { $0.values.map { $0.close() } }
        _ = try? EventLoopFuture.andAllComplete(closing, on: group.next()).wait()
        unix?.file.removeFile()
        try? group.syncShutdownGracefully()
    }
}

/// Sessions and refusals in flight on one listener (docs/ADMIN.md: 256
/// sessions per listener). Decided at accept, on the loop.
final class ListenerLoad: Sendable {
    enum Slot { case session, refusal }
    struct Counts {
        var sessions = 0
        var refusals = 0
        /// When "too many" was last logged: at most every 10 s.
        var warnedAtMs: Int64?
    }

    let label: String
    let logger: Logger
    let counts = Mutex(Counts())

    init(label: String, logger: Logger) {
        self.label = label
        self.logger = logger
    }

    /// A slot for a new connection: a session, a refusal (told "too
    /// many"), or nil (closed without a word).
    func take() -> Slot? {
        let now = ControlPlane.monotonicMs()
        let (slot, warn): (Slot?, Bool) = counts.withLock { c in
            if c.sessions < AdminLimits.sessionsMax {
                c.sessions += 1
                return (.session, false)
            }
            let warn = c.warnedAtMs.map { now - $0 >= 10_000 } ?? true
            if warn { c.warnedAtMs = now }
            if c.refusals < AdminLimits.refusalsMax {
                c.refusals += 1
                return (.refusal, warn)
            }
            return (nil, warn)
        }
        if warn {
            logger.warning("\(label) connection refused", metadata: ["reason": "too many \(label) connections (\(AdminLimits.sessionsMax))"])
        }
        return slot
    }

    func release(_ slot: Slot) {
        counts.withLock { c in
            switch slot {
            case .session: c.sessions -= 1
            case .refusal: c.refusals -= 1
            }
        }
    }
}

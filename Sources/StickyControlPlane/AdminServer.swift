import CURingShim
import Foundation
import Glibc
import Logging
import StickyCore
import StickyDataPlane
import Synchronization

/// Who is on the other end of an admin connection (SO_PEERCRED).
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

/// What the control plane answers to one admin line.
public struct AdminReply: Sendable {
    public var text: String
    /// End the session after this reply (`quit`).
    public var close: Bool
    /// The answer comes later (`upgrade` waits for its outcome): `text` is
    /// ignored, and the session's next lines wait for it.
    public var pending: AdminPendingReply?
    public init(_ text: String, close: Bool = false) {
        self.text = text
        self.close = close
    }

    public init(pending: AdminPendingReply) {
        self.text = ""
        self.close = false
        self.pending = pending
    }
}

/// An answer another thread gives once it knows it. The admin thread is
/// woken through its wake pipe and sends it; meanwhile it serves the other
/// sessions.
public final class AdminPendingReply: Sendable {
    struct State {
        var text: String?
        /// The admin server's wake pipe, once it has taken the reply on.
        var wakeFD: Int32 = -1
    }

    let state = Mutex(State())

    public init() {}

    /// Gives the answer; later calls are ignored.
    public func resolve(_ text: String) {
        let fd: Int32 = state.withLock { s in
            guard s.text == nil else { return -1 }
            s.text = text
            return s.wakeFD
        }
        guard fd >= 0 else { return }
        var one: UInt8 = 1
        _ = write(fd, &one, 1)
    }

    public var text: String? { state.withLock { $0.text } }

    /// Where to signal the answer; -1 detaches (the server is stopping).
    func attach(wakeFD: Int32) { state.withLock { $0.wakeFD = wakeFD } }
}

/// The admin socket: a Unix stream socket, one command per line, many
/// commands per connection, every answer followed by an empty line (so a
/// script can tell where it ends, as with HAProxy's CLI).
///
/// It runs on its own thread with poll(2): admin traffic is rare and small,
/// and keeping it off the workers' rings means a misbehaving admin client
/// can never stall the data path. Every per-client buffer is bounded.
public final class AdminServer: @unchecked Sendable {
    public typealias Handler = @Sendable (Substring, PeerCredentials) -> AdminReply

    public static let clientsMax = 256
    /// A client that does not read its answers is cut off past this much
    /// unsent output.
    public static let pendingOutputMax = 4 << 20
    /// A session that sends nothing for this long is closed.
    public static let sessionIdleMs: Int64 = 300_000

    let path: String
    let allowedUIDs: Set<UInt32>
    let allowedGIDs: Set<UInt32>
    let logger: Logger
    let listenFD: Int32
    let listener: UnixListener
    let stopPipe: (read: Int32, write: Int32)
    /// Written by a pending reply's resolver: some answer is ready.
    let wakePipe: (read: Int32, write: Int32)
    var thread: Thread?
    let finished = Mutex(false)
    /// Monotonic ms until which the listener is not polled (after EMFILE).
    var acceptPausedUntil: Int64 = 0

    /// Binds the socket (mode 0600) at `path`, replacing a stale socket
    /// file but refusing to steal one another process is serving; or, for
    /// an upgrade's successor (`staged`), beside it until `install`.
    public init(path: String, allowedUIDs: Set<UInt32> = [], allowedGIDs: Set<UInt32> = [], staged: Bool = false,
                logger: Logger) throws {
        self.path = path
        self.allowedUIDs = allowedUIDs
        self.allowedGIDs = allowedGIDs
        self.logger = logger
        // Open to all when allow lists name others, whom the kernel would
        // otherwise refuse before SO_PEERCRED is checked.
        let open = !allowedUIDs.isEmpty || !allowedGIDs.isEmpty
        listener = try UnixListener(path: path, what: "admin socket", openMode: open, staged: staged)
        let fd = listener.fd
        listenFD = fd
        var p: (Int32, Int32) = (-1, -1)
        // Close-on-exec: an upgrade's successor is spawned by this process.
        _ = withUnsafeMutableBytes(of: &p) { sticky_pipe_nonblocking($0.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        stopPipe = (p.0, p.1)
        var w: (Int32, Int32) = (-1, -1)
        _ = withUnsafeMutableBytes(of: &w) { sticky_pipe_nonblocking($0.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        wakePipe = (w.0, w.1)
    }

    deinit {
        close(stopPipe.read)
        close(stopPipe.write)
        close(wakePipe.read)
        close(wakePipe.write)
    }

    /// Upgrade: renames the staged socket file over the old process's.
    public func install() throws { try listener.install() }

    /// An upgrade committed: stopping must not remove the successor's socket.
    public func handOnPath() { listener.handOnPath() }

    public func start(_ handler: @escaping Handler) {
        let t = Thread { [self] in self.serve(handler) }
        t.name = "stickyd-admin"
        t.start()
        thread = t
    }

    /// Stops serving and removes the socket file; returns once the admin
    /// thread has finished (bounded: 2 s), so a process exiting right after
    /// leaves no stale socket behind.
    public func stop() {
        guard thread != nil else {
            // Never started (a start that failed later): just let go.
            listener.close()
            return
        }
        var one: UInt8 = 1
        _ = write(stopPipe.write, &one, 1)
        for _ in 0..<200 where !finished.withLock({ $0 }) { usleep(10_000) }
    }

    final class Client {
        let fd: Int32
        let credentials: PeerCredentials
        var framer = AdminLineFramer()
        var output: [UInt8] = []
        var closeAfterFlush = false
        var lastActive: Int64
        /// Lines read and not yet answered: they wait behind `waiting`, so
        /// answers keep the order of the commands. Reading stops meanwhile.
        var queued: [AdminLineFramer.Event] = []
        /// The answer this session waits for before its next line.
        var waiting: AdminPendingReply?
        /// Queues an answer: its text, then the empty line that ends it.
        func answer(_ text: String) {
            output.append(contentsOf: text.utf8)
            if !text.hasSuffix("\n") { output.append(UInt8(ascii: "\n")) }
            output.append(UInt8(ascii: "\n"))
        }

        init(fd: Int32, credentials: PeerCredentials, now: Int64) {
            self.fd = fd
            self.credentials = credentials
            lastActive = now
        }
    }

    static func monotonicMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec / 1_000_000)
    }

    func credentials(of fd: Int32) -> PeerCredentials? {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
        guard sticky_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return nil }
        return PeerCredentials(pid: pid, uid: uid, gid: gid)
    }

    func allowed(_ c: PeerCredentials) -> Bool {
        c.uid == 0 || c.uid == geteuid() || allowedUIDs.contains(c.uid) || allowedGIDs.contains(c.gid)
    }

    /// Writes what it can without blocking; false when the peer is gone.
    func flush(_ c: Client) -> Bool {
        while !c.output.isEmpty {
            let n = c.output.withUnsafeBytes { send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                c.output.removeFirst(n)
            } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                return true
            } else {
                return false
            }
        }
        return !c.closeAfterFlush
    }

    func serve(_ handler: Handler) {
        var clients: [Int32: Client] = [:]
        var fds: [pollfd] = []
        defer {
            for c in clients.values { close(c.fd) }
            listener.close()
            finished.withLock { $0 = true }
        }
        while true {
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0))
            let listening = AdminServer.monotonicMs() >= acceptPausedUntil
            fds.append(pollfd(fd: listening ? listenFD : -1, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: wakePipe.read, events: Int16(POLLIN), revents: 0))
            for c in clients.values {
                // A session waiting for an answer reads nothing more.
                var ev = c.waiting == nil ? Int16(POLLIN) : 0
                if !c.output.isEmpty { ev |= Int16(POLLOUT) }
                fds.append(pollfd(fd: c.fd, events: ev, revents: 0))
            }
            let n = poll(&fds, nfds_t(fds.count), listening ? 1000 : 100)
            let now = AdminServer.monotonicMs()
            if n < 0 && errno != EINTR { logger.error("admin poll failed: errno \(errno)") }
            // Answers that are ready go out before a stop: an upgrade's
            // "took over" is resolved just before this process stops.
            if fds[2].revents != 0 || fds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while read(wakePipe.read, &drain, drain.count) > 0 {}
                for (fd, c) in clients where c.waiting?.text != nil {
                    // A `quit` behind the answer marks the session to close
                    // once flushed; flush says when.
                    _ = answerQueued(c, handler)
                    if !flush(c) {
                        close(fd)
                        clients[fd] = nil
                    }
                }
            }
            if fds[0].revents != 0 {
                for c in clients.values { c.waiting?.attach(wakeFD: -1) }
                return
            }
            if fds[1].revents & Int16(POLLIN) != 0 {
                acceptClients(&clients, now: now)
            }
            for p in fds.dropFirst(3) where p.revents != 0 {
                guard let c = clients[p.fd] else { continue }
                var keep = true
                if c.waiting != nil && p.revents & Int16(POLLHUP | POLLERR) != 0 {
                    // Gone while waiting: nobody to answer (the command
                    // itself goes on).
                    keep = false
                } else if p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    keep = readLines(c, handler, now: now)
                }
                if keep { keep = flush(c) }
                if keep && c.output.count > AdminServer.pendingOutputMax { keep = false }
                if !keep {
                    close(c.fd)
                    clients[p.fd] = nil
                }
            }
            // Idle sessions go, so a stuck client cannot hold a slot forever.
            for (fd, c) in clients where c.waiting == nil && now - c.lastActive > AdminServer.sessionIdleMs {
                close(fd)
                clients[fd] = nil
            }
        }
    }

    func acceptClients(_ clients: inout [Int32: Client], now: Int64) {
        while true {
            let fd = sticky_accept_nonblocking(listenFD)
            if fd == -EMFILE || fd == -ENFILE {
                // The listener stays readable while we have no descriptor
                // to accept with: stop polling it for a moment, not spin.
                acceptPausedUntil = now + 100
                return
            }
            if fd < 0 { return }
            guard let cred = credentials(of: fd), allowed(cred) else {
                let who = credentials(of: fd).map { "uid \($0.uid)" } ?? "unknown peer"
                logger.warning("admin connection refused", metadata: ["peer": "\(who)"])
                let msg = "error: permission denied for \(who)\n\n"
                _ = msg.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                close(fd)
                continue
            }
            if clients.count >= AdminServer.clientsMax {
                let msg = "error: too many admin connections (\(AdminServer.clientsMax)); try again\n\n"
                _ = msg.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                close(fd)
                continue
            }
            clients[fd] = Client(fd: fd, credentials: cred, now: now)
        }
    }

    /// Reads what is there and answers each complete line. Returns false
    /// when the session should end.
    func readLines(_ c: Client, _ handler: Handler, now: Int64) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        while c.waiting == nil {
            let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n == 0 {
                // Half-closed by the client (socat at EOF): answer what
                // was asked, then end.
                c.closeAfterFlush = true
                return flush(c)
            }
            if n < 0 { return errno == EAGAIN || errno == EINTR }
            c.lastActive = now
            // At most one read's worth of lines (4 KiB) queues behind a
            // pending answer: reading stops until it comes.
            _ = c.framer.feed(buf[0..<n]) { event in
                c.queued.append(event)
                return true
            }
            if !answerQueued(c, handler) { return flush(c) }
        }
        return true
    }

    /// Answers queued lines in order until one is pending (or `quit`).
    /// Returns false when the session is to end after its output.
    func answerQueued(_ c: Client, _ handler: Handler) -> Bool {
        if let w = c.waiting {
            guard let text = w.text else { return true }
            c.answer(text)
            c.waiting = nil
        }
        while !c.queued.isEmpty {
            switch c.queued.removeFirst() {
            case .line(let line):
                let reply = handler(line[...], c.credentials)
                if let p = reply.pending {
                    c.waiting = p
                    p.attach(wakeFD: wakePipe.write)
                    // Resolved before it was attached: no wake will come.
                    guard let text = p.text else { return true }
                    c.answer(text)
                    c.waiting = nil
                    continue
                }
                c.answer(reply.text)
                if reply.close {
                    c.queued.removeAll()
                    c.closeAfterFlush = true
                    return false
                }
            case .tooLong:
                c.answer(AdminLineFramer.tooLongMessage)
            }
        }
        return true
    }
}

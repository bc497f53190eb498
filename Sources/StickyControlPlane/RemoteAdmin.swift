import CTLSShim
import CURingShim
import Foundation
import Glibc
import Logging
import StickyCore
import StickyDataPlane
import Synchronization

/// The remote admin listener: the admin socket's line protocol over TCP
/// with mutual TLS, for a controller on another host.
///
/// A client must present a certificate that `client_ca` verifies (else the
/// TLS handshake fails), and that certificate must then be on the allow
/// list (else it gets `error: certificate not allowed` and is closed).
/// Commands go to the same handler as the Unix socket's.
///
/// Like `AdminServer`, it runs on a thread of its own with poll(2), off the
/// workers' rings, and every per-client resource is bounded: the number of
/// clients, the line length, unread output, and the time a client may take
/// to finish its handshake or stay silent. Sockets are non-blocking; a TLS
/// call that cannot go on says which readiness it waits for, and that is
/// what the client is polled for next.
public final class RemoteAdminServer: @unchecked Sendable {
    public typealias Handler = AdminServer.Handler

    /// Remote controllers are few; a handshake costs CPU, so keep it small.
    public static let clientsMax = 64
    /// A client that has not finished its handshake by then is closed, so a
    /// silent connection cannot hold a slot.
    public static let handshakeTimeoutMs: Int64 = 10_000
    /// Bytes handed to one TLS write; OpenSSL cuts it into records.
    static let writeChunk = 1 << 18
    /// How long a closed session's leftover input is read and dropped.
    static let lingerMs: Int64 = 2_000

    let config: RemoteAdminConfig
    let logger: Logger
    let context: OpaquePointer
    var listenFD: Int32
    let stopPipe: (read: Int32, write: Int32)
    var thread: Thread?
    let finished = Mutex(false)
    /// Monotonic ms until which the listener is not polled (after EMFILE).
    var acceptPausedUntil: Int64 = 0
    /// Monotonic ms of the last "too many clients" warning (one per 10 s).
    var fullWarnedAt: Int64 = -1_000_000

    /// Loads the certificate, key and client CA, and binds the listener.
    /// Every failure names the config key and the file, and says why.
    public init(config: RemoteAdminConfig, logger: Logger) throws {
        self.config = config
        self.logger = logger
        let files = [("admin.remote.cert", config.certificate), ("admin.remote.key", config.privateKey),
                     ("admin.remote.client_ca", config.clientCA)]
        // OpenSSL's own words for a missing file are "system lib"; errno's are clearer.
        for (key, path) in files {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw SystemError("\(key) \(path): cannot open", errno: errno) }
            close(fd)
        }
        var which: Int32 = 0
        var why = [CChar](repeating: 0, count: 1024)
        guard let ctx = sticky_tls_server_context(config.certificate, config.privateKey, config.clientCA,
                                                  &which, &why, why.count) else {
            let reason = RemoteAdminServer.text(why)
            let message = switch which {
            case Int32(STICKY_TLS_BAD_CERT):
                "admin.remote.cert \(config.certificate): cannot load a PEM certificate: \(reason)"
            case Int32(STICKY_TLS_BAD_KEY):
                "admin.remote.key \(config.privateKey): cannot load a PEM private key: \(reason)"
                    + (reason.contains("password") || reason.contains("decrypt") ? "; an encrypted key is not supported" : "")
            case Int32(STICKY_TLS_KEY_MISMATCH):
                "admin.remote.key \(config.privateKey) is not the key of admin.remote.cert \(config.certificate): \(reason)"
            case Int32(STICKY_TLS_BAD_CLIENT_CA):
                "admin.remote.client_ca \(config.clientCA): cannot load PEM CA certificates: \(reason)"
            default:
                "admin.remote: cannot create a TLS context: \(reason)"
            }
            throw SystemError(message, errno: EINVAL)
        }
        context = ctx
        do {
            listenFD = try RemoteAdminServer.bindListener(config.listen)
        } catch {
            sticky_tls_context_free(ctx)
            throw error
        }
        var p: (Int32, Int32) = (-1, -1)
        // Close-on-exec: an upgrade's successor is spawned by this process.
        _ = withUnsafeMutableBytes(of: &p) { sticky_pipe_nonblocking($0.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        stopPipe = (p.0, p.1)
        if config.allow.isEmpty {
            logger.warning("admin.remote.allow is empty: every remote admin client will be refused",
                           metadata: ["listen": "\(config.listen)"])
        }
    }

    /// A NUL-terminated C buffer as a string.
    static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit {
        if listenFD >= 0 { close(listenFD) }
        close(stopPipe.read)
        close(stopPipe.write)
        sticky_tls_context_free(context)
    }

    /// A plain listener: no SO_REUSEPORT, so that a second daemon on the
    /// same address fails to start instead of sharing the admin port.
    static func bindListener(_ address: SocketAddress) throws -> Int32 {
        let family = address.ip.isV4 ? AF_INET : AF_INET6
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket(admin.remote.listen)", errno: errno) }
        func fail(_ call: String) -> SystemError {
            let e = SystemError(call, errno: errno)
            close(fd)
            return e
        }
        // A restart must not wait for the old sessions' TIME_WAIT.
        guard Sockets.setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1) else { throw fail("setsockopt(SO_REUSEADDR)") }
        if family == AF_INET6 {
            guard Sockets.setInt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) else { throw fail("setsockopt(IPV6_V6ONLY)") }
        }
        var (ss, len) = Sockets.storage(for: address)
        let rc = withUnsafePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        guard rc == 0 else { throw fail("bind(admin.remote.listen \(address))") }
        guard listen(fd, 64) == 0 else { throw fail("listen(admin.remote.listen \(address))") }
        return fd
    }

    public func start(_ handler: @escaping Handler) {
        let t = Thread { [self] in self.serve(handler) }
        t.name = "stickyd-radmin"
        t.start()
        thread = t
        logger.info("remote admin listening", metadata: [
            "listen": "\(config.listen)", "allow": "\(config.allow.map(\.description).joined(separator: ","))",
        ])
    }

    /// Stops serving and closes every session; returns once the thread has
    /// finished (bounded: 2 s).
    public func stop() {
        guard thread != nil else { return }
        var one: UInt8 = 1
        _ = write(stopPipe.write, &one, 1)
        for _ in 0..<200 where !finished.withLock({ $0 }) { usleep(10_000) }
    }

    final class Client {
        let fd: Int32
        let ssl: OpaquePointer
        let peer: String
        var handshaking = true
        let handshakeDeadline: Int64
        /// The readiness the handshake or the last read waits for.
        var readWaitsFor = Int32(STICKY_TLS_WANT_READ)
        /// The readiness a blocked write waits for; nil when none is blocked.
        var writeWaitsFor: Int32?
        /// The length of a blocked write, which OpenSSL wants repeated.
        var retryLength: Int?
        var framer = AdminLineFramer()
        /// Unsent output is `output[sent...]`; the front is dropped in bulk.
        var output: [UInt8] = []
        var sent = 0
        var closeAfterFlush = false
        var lastActive: Int64
        /// "CN=… sha256:…" once the handshake is done, for logs.
        var identity = ""
        /// The handshake failed; OpenSSL has written its alert.
        var handshakeFailed = false
        /// Set once the session is over and only the socket's close is left.
        var lingerUntil: Int64?

        init(fd: Int32, ssl: OpaquePointer, peer: String, now: Int64) {
            self.fd = fd
            self.ssl = ssl
            self.peer = peer
            handshakeDeadline = now + RemoteAdminServer.handshakeTimeoutMs
            lastActive = now
        }

        var pending: Int { output.count - sent }

        var events: Int16 {
            if lingerUntil != nil { return Int16(POLLIN) }
            // A session that is only finishing its answers reads no more,
            // so it must not be woken by input it will not take.
            var ev: Int16 = 0
            if !closeAfterFlush { ev = Int16(readWaitsFor == Int32(STICKY_TLS_WANT_WRITE) ? POLLOUT : POLLIN) }
            if pending > 0 {
                ev |= Int16(writeWaitsFor == Int32(STICKY_TLS_WANT_READ) ? POLLIN : POLLOUT)
            }
            return ev
        }

        func reply(_ text: String) {
            output.append(contentsOf: text.utf8)
            if !text.hasSuffix("\n") { output.append(UInt8(ascii: "\n")) }
            output.append(UInt8(ascii: "\n"))
        }
    }

    func serve(_ handler: Handler) {
        var clients: [Int32: Client] = [:]
        var fds: [pollfd] = []
        defer {
            for c in clients.values { end(c) }
            close(listenFD)
            listenFD = -1
            finished.withLock { $0 = true }
        }
        while true {
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0))
            let listening = AdminServer.monotonicMs() >= acceptPausedUntil
            fds.append(pollfd(fd: listening ? listenFD : -1, events: Int16(POLLIN), revents: 0))
            for c in clients.values { fds.append(pollfd(fd: c.fd, events: c.events, revents: 0)) }
            let n = poll(&fds, nfds_t(fds.count), listening ? 1000 : 100)
            let now = AdminServer.monotonicMs()
            if n < 0 && errno != EINTR { logger.error("remote admin poll failed: errno \(errno)") }
            if fds[0].revents != 0 { return }
            if fds[1].revents & Int16(POLLIN) != 0 { acceptClients(&clients, now: now) }
            for p in fds.dropFirst(2) where p.revents != 0 {
                guard let c = clients[p.fd] else { continue }
                if c.lingerUntil != nil {
                    if !discardInput(c) {
                        end(c)
                        clients[p.fd] = nil
                    }
                    continue
                }
                var keep = pump(c, handler, now: now)
                if keep && c.pending > AdminServer.pendingOutputMax {
                    logger.warning("remote admin client does not read its answers; closed",
                                   metadata: ["peer": "\(c.peer)", "client": "\(c.identity)"])
                    keep = false
                }
                if keep { continue }
                if c.handshakeFailed || (c.closeAfterFlush && c.pending == 0) {
                    linger(c, now: now)
                } else {
                    end(c)
                    clients[p.fd] = nil
                }
            }
            for (fd, c) in clients {
                if let until = c.lingerUntil {
                    if now < until { continue }
                } else if c.handshaking && now > c.handshakeDeadline {
                    logger.warning("remote admin connection refused",
                                   metadata: ["peer": "\(c.peer)", "reason": "no TLS handshake within \(RemoteAdminServer.handshakeTimeoutMs / 1000) s"])
                } else if now - c.lastActive > AdminServer.sessionIdleMs {
                    logger.info("remote admin session idle; closed", metadata: ["peer": "\(c.peer)", "client": "\(c.identity)"])
                } else {
                    continue
                }
                end(c)
                clients[fd] = nil
            }
        }
    }

    func end(_ c: Client) {
        sticky_tls_session_free(c.ssl)
        close(c.fd)
    }

    /// Ends a session without losing its last words (an alert, an error
    /// line, "bye"): close(2) with unread input sends a reset, and the
    /// client's stack may then drop what it had not yet read. So: FIN now,
    /// then read and drop what comes until the client closes too, for at
    /// most `lingerMs`.
    func linger(_ c: Client, now: Int64) {
        if !c.handshakeFailed { sticky_tls_close_notify(c.ssl) }
        shutdown(c.fd, Int32(SHUT_WR))
        c.lingerUntil = now + RemoteAdminServer.lingerMs
    }

    /// Reads and drops (64 KiB a wake, so a flood cannot hold the
    /// thread); false once the client has closed or failed.
    func discardInput(_ c: Client) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        for _ in 0..<16 {
            let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return n < 0 && (errno == EAGAIN || errno == EINTR) }
        }
        return true
    }

    func acceptClients(_ clients: inout [Int32: Client], now: Int64) {
        while true {
            let fd = sticky_accept_nonblocking(listenFD)
            if fd == -EMFILE || fd == -ENFILE {
                // As for the admin socket: pause polling the listener, not spin.
                acceptPausedUntil = now + 100
                return
            }
            if fd < 0 { return }
            let peer = Sockets.peer(of: fd).map { "\($0)" } ?? "unknown"
            // There is no TLS session yet to say why in, so a client over
            // the limit is just closed; the log says why.
            guard clients.count < RemoteAdminServer.clientsMax else {
                if now - fullWarnedAt >= 10_000 {
                    fullWarnedAt = now
                    logger.warning("remote admin connection refused",
                                   metadata: ["peer": "\(peer)", "reason": "too many remote admin connections (\(RemoteAdminServer.clientsMax))"])
                }
                close(fd)
                continue
            }
            guard let ssl = sticky_tls_session(context, fd) else {
                logger.error("remote admin: cannot create a TLS session", metadata: ["peer": "\(peer)"])
                close(fd)
                continue
            }
            clients[fd] = Client(fd: fd, ssl: ssl, peer: peer, now: now)
        }
    }

    /// Moves a session on as far as it goes without blocking: the
    /// handshake, then reading and answering lines, then writing. Returns
    /// false when the session should end.
    func pump(_ c: Client, _ handler: Handler, now: Int64) -> Bool {
        if c.handshaking {
            var why = [CChar](repeating: 0, count: 512)
            let r = sticky_tls_handshake(c.ssl, &why, why.count)
            if r == Int32(STICKY_TLS_WANT_READ) || r == Int32(STICKY_TLS_WANT_WRITE) {
                c.readWaitsFor = r
                return true
            }
            guard r == 1 else {
                logger.warning("remote admin connection refused",
                               metadata: ["peer": "\(c.peer)", "reason": "TLS handshake failed: \(RemoteAdminServer.text(why))"])
                c.handshakeFailed = true
                return false
            }
            c.handshaking = false
            c.readWaitsFor = Int32(STICKY_TLS_WANT_READ)
            c.lastActive = now
            if !admit(c) {
                c.reply("error: certificate not allowed")
                c.closeAfterFlush = true
                return flush(c)
            }
        }
        if !c.closeAfterFlush && !readLines(c, handler, now: now) { return false }
        return flush(c)
    }

    /// Checks the verified certificate against the allow list.
    func admit(_ c: Client) -> Bool {
        var digest = [UInt8](repeating: 0, count: 32)
        var cn = [CChar](repeating: 0, count: 256)
        var subject = [CChar](repeating: 0, count: 512)
        guard sticky_tls_peer(c.ssl, &digest, &cn, cn.count, &subject, subject.count) == 0 else {
            logger.warning("remote admin connection refused", metadata: ["peer": "\(c.peer)", "reason": "no peer certificate"])
            return false
        }
        let hex = digest.map { byte in
            let digits = Array("0123456789ABCDEF")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
        }.joined()
        let name = RemoteAdminServer.text(cn)
        let commonName = name.isEmpty ? nil : name
        c.identity = "CN=\(name) sha256:\(AllowedClient.fingerprint(hex))"
        let meta: Logger.Metadata = [
            "peer": "\(c.peer)", "subject": "\(RemoteAdminServer.text(subject))",
            "sha256": "\(AllowedClient.fingerprint(hex))",
        ]
        guard config.allow.contains(where: { $0.matches(sha256: hex, commonName: commonName) }) else {
            var m = meta
            m["reason"] = "certificate not on admin.remote.allow"
            logger.warning("remote admin connection refused", metadata: m)
            return false
        }
        logger.info("remote admin session", metadata: meta)
        return true
    }

    /// Reads what is there and answers each complete line, as the admin
    /// socket does (4 KiB lines, blank lines ignored). Returns false when
    /// the session should end at once.
    func readLines(_ c: Client, _ handler: Handler, now: Int64) -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { sticky_tls_read(c.ssl, $0.baseAddress, $0.count) }
            if n == Int(STICKY_TLS_WANT_READ) || n == Int(STICKY_TLS_WANT_WRITE) {
                c.readWaitsFor = Int32(n)
                return true
            }
            if n == Int(STICKY_TLS_CLOSED) {
                // The client is done sending (close_notify or end of
                // stream): answer what it asked, then end.
                c.closeAfterFlush = true
                return true
            }
            if n < 0 { return false }
            c.readWaitsFor = Int32(STICKY_TLS_WANT_READ)
            c.lastActive = now
            let going = c.framer.feed(buf[0..<n]) { event in
                switch event {
                case .line(let line):
                    // uid 0: a client on the allow list may run every
                    // command, as root may on the Unix socket.
                    let reply = handler(line[...], PeerCredentials(pid: 0, uid: 0, gid: 0))
                    c.reply(reply.text)
                    if reply.close { c.closeAfterFlush = true }
                    return !reply.close
                case .tooLong:
                    c.reply(AdminLineFramer.tooLongMessage)
                    return true
                }
            }
            if !going { return true }
        }
    }

    /// Writes what it can without blocking. Returns false when the session
    /// should end: the peer is gone, or everything is sent and it was to
    /// close.
    func flush(_ c: Client) -> Bool {
        // Drop what was sent once it is worth a copy; OpenSSL accepts the
        // moved buffer (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER).
        if c.sent >= 1 << 20 {
            c.output.removeFirst(c.sent)
            c.sent = 0
        }
        while c.pending > 0 {
            let len = c.retryLength ?? min(c.pending, RemoteAdminServer.writeChunk)
            let n = c.output.withUnsafeBytes { sticky_tls_write(c.ssl, $0.baseAddress! + c.sent, len) }
            if n == Int(STICKY_TLS_WANT_READ) || n == Int(STICKY_TLS_WANT_WRITE) {
                c.writeWaitsFor = Int32(n)
                c.retryLength = len
                return true
            }
            if n <= 0 { return false }
            c.sent += n
            c.retryLength = nil
            c.writeWaitsFor = nil
        }
        c.output.removeAll(keepingCapacity: c.output.capacity <= 1 << 16)
        c.sent = 0
        return !c.closeAfterFlush
    }
}

import ArgumentParser
import Foundation
import Glibc
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import StickyCore

/// `--remote HOST:PORT --cert FILE --key FILE --ca FILE`: the daemon's
/// remote admin listener over mutual TLS, in place of the Unix socket.
/// `--remote` may be repeated (several instances, docs/ADMIN.md section 7);
/// one certificate, key and CA serve them all.
struct RemoteOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Reach the daemon's remote admin listener (admin.remote) over mutual TLS instead of the Unix socket; needs --cert, --key and --ca. Repeat it to act on several instances.",
        valueName: "host:port"))
    var remote: [String] = []

    @Option(name: .long, help: ArgumentHelp("With --remote: this client's certificate (PEM).", valueName: "file"))
    var cert: String?

    @Option(name: .long, help: ArgumentHelp("With --remote: its private key (PEM, not encrypted).", valueName: "file"))
    var key: String?

    @Option(name: .long, help: ArgumentHelp("With --remote: the CA that signed the daemon's certificate (PEM).", valueName: "file"))
    var ca: String?

    /// Whether --cert, --key and --ca are all given.
    var hasCredentials: Bool { cert != nil && key != nil && ca != nil }

    func validate() throws {
        for r in remote where RemoteOptions.split(r) == nil {
            throw ValidationError("--remote '\(r)' is not HOST:PORT (an IPv6 address goes in brackets: [::1]:9443)")
        }
    }

    /// `host:port`, `[v6]:port`; nil if the port is not 1-65535.
    static func split(_ text: String) -> (host: String, port: Int)? {
        var host: Substring
        var rest: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            rest = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            rest = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(rest), (1...65535).contains(port) else { return nil }
        return (String(host), port)
    }
}

/// One connection to the admin service, on either transport. NIO does the
/// I/O on a loop thread; the command runs on the main thread and waits for
/// answer bytes on a condition, so the admin commands stay plain blocking
/// code.
final class AdminConnection: @unchecked Sendable {
    /// The CLI's one loop thread; it lives as long as the process.
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)

    let channel: Channel
    let inbox: Inbox

    /// Connects to the endpoint: a Unix socket, or a remote listener over
    /// TLS with the credentials in `remote`.
    init(_ endpoint: AdminEndpoint, remote: RemoteOptions) throws {
        let inbox = Inbox()
        self.inbox = inbox
        func unreachable(_ why: String) -> CtlFailure {
            CtlFailure(status: CtlExit.unreachable, message: "cannot reach stickyd at \(endpoint): \(why)")
        }
        let hostPort: (host: String, port: Int)?
        let path: String
        switch endpoint {
        case .unix(let p): (hostPort, path) = (nil, p)
        case .remote(let r): (hostPort, path) = (RemoteOptions.split(r), "")
        }
        let tls = hostPort == nil ? nil : try AdminConnection.clientTLS(remote)
        let bootstrap = ClientBootstrap(group: AdminConnection.group)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls, let (host, _) = hostPort {
                        // SNI takes a name, never an address; the server's
                        // certificate is checked against either.
                        let isAddress = (try? NIOCore.SocketAddress(ipAddress: host, port: 0)) != nil
                        try sync.addHandler(NIOSSLClientHandler(context: tls, serverHostname: isAddress ? nil : host))
                    }
                    try sync.addHandler(inbox)
                }
            }
        do {
            if let (host, port) = hostPort {
                channel = try bootstrap.connect(host: host, port: port).wait()
            } else {
                guard path.utf8.count < 108 else {
                    throw CtlFailure(status: CtlExit.usage, message: "admin socket path too long: \(path)")
                }
                channel = try bootstrap.connect(unixDomainSocketPath: path).wait()
            }
        } catch let f as CtlFailure {
            throw f
        } catch {
            throw unreachable(AdminConnection.describe(error))
        }
        // A handshake that fails is the daemon's certificate not verifying
        // (or the daemon refusing ours): say so before any command is sent.
        if tls != nil, !inbox.waitForHandshake(until: Date(timeIntervalSinceNow: 10)) {
            channel.close(promise: nil)
            throw unreachable("TLS handshake failed\(inbox.why)")
        }
    }

    deinit { channel.close(promise: nil) }

    /// The TLS client: this client's certificate and key, and the CA the
    /// daemon's certificate must verify against (hostname or address included).
    static func clientTLS(_ remote: RemoteOptions) throws -> NIOSSLContext {
        func load<T>(_ what: String, _ file: String, _ body: () throws -> T) throws -> T {
            guard access(file, R_OK) == 0 else {
                throw CtlFailure(status: CtlExit.usage, message: "\(what) \(file): \(String(cString: strerror(errno)))")
            }
            do {
                return try body()
            } catch {
                throw CtlFailure(status: CtlExit.usage, message: "\(what) \(file): cannot load it: \(TLSErrorText.reason("\(error)"))")
            }
        }
        let (certFile, keyFile, caFile) = (remote.cert ?? "", remote.key ?? "", remote.ca ?? "")
        let chain = try load("--cert", certFile) { try NIOSSLCertificate.fromPEMFile(certFile) }
        let key = try load("--key", keyFile) { try NIOSSLPrivateKey(file: keyFile, format: .pem) }
        let roots = try load("--ca", caFile) { try NIOSSLCertificate.fromPEMFile(caFile) }
        guard !chain.isEmpty else { throw CtlFailure(status: CtlExit.usage, message: "--cert \(certFile): no certificate in the file") }
        guard !roots.isEmpty else { throw CtlFailure(status: CtlExit.usage, message: "--ca \(caFile): no certificate in the file") }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateVerification = .fullVerification
        tls.trustRoots = .certificates(roots)
        tls.certificateChain = chain.map { .certificate($0) }
        tls.privateKey = .privateKey(key)
        do {
            return try NIOSSLContext(configuration: tls)
        } catch {
            throw CtlFailure(status: CtlExit.usage, message: "--cert \(certFile) with --key \(keyFile): \(TLSErrorText.reason("\(error)"))")
        }
    }

    /// errno's words for a failed connect, BoringSSL's for a failed handshake.
    static func describe(_ error: Error) -> String {
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)) }
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first {
            return describe(first.error)
        }
        if error is ChannelError, case ChannelError.connectTimeout = error { return "connection timed out" }
        return TLSErrorText.reason("\(error)")
    }

    func send(_ bytes: [UInt8]) throws {
        var buffer = channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        do {
            try channel.writeAndFlush(buffer).wait()
        } catch {
            // The daemon may have spoken first and closed (a refused
            // certificate's "error: certificate not allowed"): its words
            // are the answer, and `receive` hands them over.
            if inbox.hasBytes { return }
            throw CtlFailure(status: CtlExit.unreachable, message: "stickyd closed the admin session\(inbox.why)")
        }
    }

    /// What arrived within `timeoutSeconds`: bytes, [] once the daemon has
    /// closed the session, nil when nothing came in time.
    func receive(timeoutSeconds: Double) -> [UInt8]? {
        inbox.take(until: Date(timeIntervalSinceNow: timeoutSeconds))
    }

    /// Collects what the daemon sends, for the waiting command.
    final class Inbox: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer

        let condition = NSCondition()
        var bytes: [UInt8] = []
        var ended = false
        var handshaken = false
        /// Why the session ended, when it was an error (a TLS alert).
        var error: Error?

        var hasBytes: Bool { condition.withLock { !bytes.isEmpty } }

        /// ": <reason>" for a message, or nothing.
        var why: String {
            condition.withLock { error.map { ": \(AdminConnection.describe($0))" } ?? "" }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            condition.withLock {
                bytes += buffer.readableBytesView
                condition.broadcast()
            }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case TLSUserEvent.handshakeCompleted = event {
                condition.withLock {
                    handshaken = true
                    condition.broadcast()
                }
            }
            context.fireUserInboundEventTriggered(event)
        }

        func channelInactive(context: ChannelHandlerContext) {
            condition.withLock {
                ended = true
                condition.broadcast()
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            // A TLS close without close_notify is still an end of stream.
            if case NIOSSLError.uncleanShutdown = error { return }
            condition.withLock { self.error = self.error ?? error }
            context.close(promise: nil)
        }

        /// True once the TLS handshake is done; false if the connection
        /// ended first or the deadline passed.
        func waitForHandshake(until deadline: Date) -> Bool {
            condition.withLock {
                while !handshaken && !ended {
                    guard condition.wait(until: deadline) else { return false }
                }
                return handshaken
            }
        }

        func take(until deadline: Date) -> [UInt8]? {
            condition.withLock {
                while bytes.isEmpty && !ended {
                    guard condition.wait(until: deadline) else { return nil }
                }
                defer { bytes.removeAll() }
                return bytes
            }
        }
    }
}

/// Whether something accepts TCP connections at `address` (a bounded connect).
func acceptsConnections(_ address: StickyCore.SocketAddress, timeoutMs: Int64 = 1000) -> Bool {
    let connected = ClientBootstrap(group: AdminConnection.group)
        .connectTimeout(.milliseconds(timeoutMs))
        .connect(host: "\(address.ip)", port: Int(address.port))
    guard let channel = try? connected.wait() else { return false }
    channel.close(promise: nil)
    return true
}

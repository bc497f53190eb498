import Foundation
import Glibc
import Logging
import NIOCore
import NIOSSL
import NIOTLS
import StickyCore
import StickyDataPlane
import Synchronization

/// The remote admin listener's TLS (docs/ADMIN.md, section 8): the server's
/// certificate and key, and a client certificate required and verified
/// against `client_ca`, by swift-nio-ssl (BoringSSL). Loaded once, at start,
/// so that a bad file stops the daemon before it serves anything.
public final class RemoteAdminTLS: Sendable {
    public let config: RemoteAdminConfig
    let context: NIOSSLContext

    /// Every failure names the config key and the file, and says why.
    public init(config: RemoteAdminConfig) throws {
        self.config = config
        let (chain, key, authorities) = try TLSMaterial.load(
            cert: ("admin.remote.cert", config.certificate), key: ("admin.remote.key", config.privateKey),
            ca: ("admin.remote.client_ca", config.clientCA))
        var tls = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key),
            trustRoots: .certificates(authorities))
        tls.minimumTLSVersion = .tlsv12
        // How long a closing session waits for the client's close_notify:
        // its last answer must reach it before the socket closes.
        tls.shutdownTimeout = .seconds(2)
        do {
            context = try NIOSSLContext(configuration: tls)
        } catch NIOSSLError.failedToLoadPrivateKey {
            // The key was read above; BoringSSL refuses one that does not
            // match the certificate's public key.
            throw SystemError("admin.remote.key \(config.privateKey) is not the key of admin.remote.cert \(config.certificate)", errno: EINVAL)
        } catch {
            throw SystemError("admin.remote: cannot create a TLS context: \(RemoteAdminTLS.reason(error))", errno: EINVAL)
        }
    }

    /// BoringSSL's reasons for `error`, in words.
    static func reason(_ error: Error) -> String { TLSErrorText.reason("\(error)") }
}

/// A certificate chain, its key and the CAs that peers must chain to, read
/// from PEM files: the remote admin listener's and the peer links'. Every
/// failure names the config key and the file, and says why.
enum TLSMaterial {
    typealias File = (key: String, path: String)

    static func load(cert: File, key keyFile: File, ca: File) throws
        -> (chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, authorities: [NIOSSLCertificate]) {
        // BoringSSL's words for a missing file are "system lib"; errno's are clearer.
        for (key, path) in [cert, keyFile, ca] {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw SystemError("\(key) \(path): cannot open", errno: errno) }
            close(fd)
        }
        func invalid(_ message: String) -> SystemError { SystemError(message, errno: EINVAL) }
        let chain = (try? NIOSSLCertificate.fromPEMFile(cert.path)) ?? []
        guard !chain.isEmpty else {
            throw invalid("\(cert.key) \(cert.path): cannot load a PEM certificate: no certificate in the file")
        }
        // An encrypted key would need a passphrase at every start.
        if let text = try? String(contentsOfFile: keyFile.path, encoding: .utf8), text.contains("ENCRYPTED") {
            throw invalid("\(keyFile.key) \(keyFile.path): cannot load a PEM private key: an encrypted key is not supported")
        }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: keyFile.path, format: .pem)
        } catch {
            throw invalid("\(keyFile.key) \(keyFile.path): cannot load a PEM private key: \(RemoteAdminTLS.reason(error))")
        }
        let authorities = (try? NIOSSLCertificate.fromPEMFile(ca.path)) ?? []
        guard !authorities.isEmpty else {
            throw invalid("\(ca.key) \(ca.path): cannot load PEM CA certificates: no certificate in the file")
        }
        return (chain, key, authorities)
    }
}

/// Lets a TLS session in, between swift-nio-ssl's handler and the session:
/// it bounds the handshake's time, logs why a handshake failed, and checks
/// the verified certificate against `admin.remote.allow`.
final class RemoteAdmissionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    let allow: [AllowedClient]
    let logger: Logger
    /// This connection is over `AdminLimits.sessionsMax`: a client that is
    /// let in is told so, and closed.
    let overLimit: Bool
    var peer = "unknown"
    var deadline: Scheduled<Void>?
    var decided = false

    init(allow: [AllowedClient], overLimit: Bool, logger: Logger) {
        self.allow = allow
        self.overLimit = overLimit
        self.logger = logger
    }

    func channelActive(context: ChannelHandlerContext) {
        peer = context.channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "unknown"
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: .milliseconds(AdminLimits.handshakeTimeoutMs)) {
            bound.value.handler.handshakeTimedOut(bound.value.context)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        context.fireChannelInactive()
    }

    func handshakeTimedOut(_ context: ChannelHandlerContext) {
        guard !decided else { return }
        decided = true
        refused("no TLS handshake within \(AdminLimits.handshakeTimeoutMs / 1000) s")
        context.close(promise: nil)
    }

    func refused(_ reason: String, _ extra: Logger.Metadata = [:]) {
        var m = extra
        m["peer"] = "\(peer)"
        m["reason"] = "\(reason)"
        logger.warning("remote admin connection refused", metadata: m)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        switch error {
        case NIOSSLError.handshakeFailed:
            // swift-nio-ssl has queued its alert and closes the connection.
            if !decided { refused("TLS handshake failed: \(RemoteAdminTLS.reason(error))") }
            decided = true
        case NIOSSLError.uncleanShutdown:
            // End of stream without close_notify: a half-close like any
            // other; the session answers what was asked, then ends.
            break
        default:
            context.fireErrorCaught(error)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case TLSUserEvent.handshakeCompleted = event else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        deadline?.cancel()
        decided = true
        let certificate = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self).peerCertificate
        context.fireUserInboundEventTriggered(admission(certificate))
    }

    /// The allow list's verdict on the verified certificate.
    func admission(_ certificate: NIOSSLCertificate?) -> AdminAdmission {
        let notAllowed = AdminAdmission.refused("error: certificate not allowed")
        guard let der = try? certificate?.toDERBytes() else {
            refused("no peer certificate")
            return notAllowed
        }
        let hex = SHA256.hex(der)
        let subject = CertificateSubject(certificateDER: der)
        let meta: Logger.Metadata = [
            "subject": "\(subject?.oneLine ?? "unreadable")", "sha256": "\(AllowedClient.fingerprint(hex))",
        ]
        guard allow.contains(where: { $0.matches(sha256: hex, commonName: subject?.commonName) }) else {
            refused("certificate not on admin.remote.allow", meta)
            return notAllowed
        }
        if overLimit {
            refused("too many remote admin connections (\(AdminLimits.sessionsMax))", meta)
            return .refused(AdminLimits.tooManyMessage)
        }
        var m = meta
        m["peer"] = "\(peer)"
        logger.info("remote admin session", metadata: m)
        return .admitted(.remoteAllowed)
    }
}

/// Ends a TCP connection without losing its last words (an alert, an error
/// line): close(2) with unread input sends a reset instead of a FIN, and
/// the kernel then drops what it had not yet sent, so a refused client
/// could see its connection reset without the alert that says why. First
/// in the pipeline, it turns a full close into a FIN once everything
/// written is out, then reads and drops what still comes until the client
/// closes too, for at most `lingerMs`.
///
/// swift-nio-ssl closes this way after a failed handshake; after a
/// close_notify it has already waited for the client (`shutdownTimeout`),
/// and the client's end of input then makes this close at once.
final class LingeringCloseHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    static let lingerMs: Int64 = 2000

    /// Set while the service stops: no session is worth waiting for then.
    let stopping: StopFlag
    var inputClosed = false
    var lingering: (timer: Scheduled<Void>, promise: EventLoopPromise<Void>?)?

    init(stopping: StopFlag) { self.stopping = stopping }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, lingering == nil, !inputClosed, !stopping.isSet else {
            context.close(mode: mode, promise: promise)
            return
        }
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let timer = context.eventLoop.scheduleTask(in: .milliseconds(LingeringCloseHandler.lingerMs)) {
            bound.value.close(promise: nil)
        }
        lingering = (timer, promise)
        context.close(mode: .output, promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Once lingering, what the client sends is dropped unread.
        if lingering == nil { context.fireChannelRead(data) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            inputClosed = true
            if let (timer, promise) = lingering {
                timer.cancel()
                context.close(promise: promise)
                return
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let (timer, promise) = lingering {
            timer.cancel()
            promise?.succeed(())
            lingering = nil
        }
        context.fireChannelInactive()
    }
}

/// Whether the admin service is stopping, read from its loop's handlers.
final class StopFlag: Sendable {
    let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .relaxed) }
    func set() { value.store(true, ordering: .relaxed) }
}

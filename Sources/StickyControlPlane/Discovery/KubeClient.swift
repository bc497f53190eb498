import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import StickyCore

/// HTTP/1.1 GETs to the Kubernetes API over TLS, on the discovery event
/// loop; the answer is read by the discovery thread as blocking calls with
/// timeouts (`next`), so the watch protocol stays plain sequential code.
final class KubeClient: Sendable {
    let access: KubeAccess
    let tls: NIOSSLContext
    let group: EventLoopGroup
    static let connectTimeoutMs: Int64 = 5_000

    init(access: KubeAccess, group: EventLoopGroup) throws {
        self.access = access
        self.group = group
        var c = TLSConfiguration.makeClientConfiguration()
        c.minimumTLSVersion = .tlsv12
        if let ca = access.caPEM { c.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(ca)) }
        c.certificateVerification = access.insecure ? .none : .fullVerification
        if let cert = access.clientCertPEM, let key = access.clientKeyPEM {
            c.certificateChain = try NIOSSLCertificate.fromPEMBytes(cert).map { .certificate($0) }
            c.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: key, format: .pem))
        }
        tls = try NIOSSLContext(configuration: c)
    }

    /// Starts a GET of `path` (with the API's base path in front).
    func get(_ path: String) -> KubeResponse {
        let response = KubeResponse()
        var headers = HTTPHeaders([("Host", access.host), ("Accept", "application/json"), ("User-Agent", "stickyd/\(StickyVersion.string)")])
        do {
            // Read for every request: projected tokens are rotated.
            if let t = try access.bearerToken() { headers.add(name: "Authorization", value: "Bearer \(t)") }
        } catch {
            response.deliver(.failed("\(error)"))
            return response
        }
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: access.basePath + path, headers: headers)
        let host = access.host
        let isAddress = (try? NIOCore.SocketAddress(ipAddress: host, port: 0)) != nil
        let tls = self.tls
        // SNI takes a name, never an address; the certificate is checked
        // against either.
        let sni = access.serverName == host && isAddress ? nil : access.serverName
        ClientBootstrap(group: group)
            .connectTimeout(.milliseconds(KubeClient.connectTimeoutMs))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    try sync.addHandler(NIOSSLClientHandler(context: tls, serverHostname: sni))
                    try sync.addHTTPClientHandlers()
                    try sync.addHandler(KubeResponseHandler(head: head, response: response))
                }
            }
            .connect(host: host, port: access.port)
            .whenComplete { result in
                switch result {
                case .success(let channel): response.attach(channel)
                case .failure(let error): response.deliver(.failed("connect \(host):\(self.access.port): \(KubeClient.describe(error))"))
                }
            }
        return response
    }

    static func describe(_ error: Error) -> String {
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first { return describe(first.error) }
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)).lowercased() }
        if case ChannelError.connectTimeout = error { return "timed out" }
        // The server (or something between) went away mid-answer.
        if let e = error as? NIOSSLError, case .uncleanShutdown = e { return "the connection was cut (no TLS close_notify)" }
        return TLSErrorText.reason("\(error)")
    }
}

/// One answer, as parts queued for the reading thread. The queue is
/// bounded: a reader that fell behind by `queuedMax` bytes ends the request.
final class KubeResponse: @unchecked Sendable {
    enum Part: Sendable {
        case head(status: Int)
        case body([UInt8])
        case end
        case failed(String)
    }

    static let queuedMax = 64 << 20
    private let condition = NSCondition()
    private var parts: [Part] = []
    private var queued = 0
    private var finished = false
    private var channel: Channel?

    func attach(_ c: Channel) {
        condition.lock()
        let done = finished
        channel = c
        condition.unlock()
        if done { c.close(promise: nil) }
    }

    func deliver(_ part: Part) {
        condition.lock()
        defer { condition.unlock() }
        guard !finished else { return }
        if case .body(let b) = part {
            queued += b.count
            if queued > KubeResponse.queuedMax {
                parts.append(.failed("more than \(KubeResponse.queuedMax >> 20) MiB unread"))
                finished = true
                channel?.close(promise: nil)
                condition.broadcast()
                return
            }
        }
        parts.append(part)
        switch part {
        case .end, .failed: finished = true
        default: break
        }
        condition.broadcast()
    }

    /// The next part, or nil when none came within `timeoutMs`.
    func next(timeoutMs: Int64) -> Part? {
        condition.lock()
        defer { condition.unlock() }
        let deadline = Date(timeIntervalSinceNow: Double(timeoutMs) / 1000)
        while parts.isEmpty {
            if !condition.wait(until: deadline) && parts.isEmpty { return nil }
        }
        let p = parts.removeFirst()
        if case .body(let b) = p { queued -= b.count }
        return p
    }

    /// Ends the request (a stop, a watch given up); later parts are
    /// dropped, and a reader waiting in `next` is woken with `failed`.
    func close() {
        condition.lock()
        if !finished {
            finished = true
            parts.append(.failed("closed"))
            condition.broadcast()
        }
        let c = channel
        condition.unlock()
        c?.close(promise: nil)
    }

    /// The whole body of a non-streamed answer, within `timeoutMs` and
    /// `maxBytes`: (status, body), or the reason it failed.
    func collect(timeoutMs: Int64, maxBytes: Int) -> Result<(Int, [UInt8]), KubeDecodeError> {
        let deadline = ControlPlane.monotonicMs() + timeoutMs
        var status = 0
        var body: [UInt8] = []
        defer { close() }
        while true {
            let left = deadline - ControlPlane.monotonicMs()
            guard left > 0, let part = next(timeoutMs: left) else { return .failure(KubeDecodeError("no whole answer within \(timeoutMs / 1000) s")) }
            switch part {
            case .head(let s): status = s
            case .body(let b):
                body += b
                if body.count > maxBytes { return .failure(KubeDecodeError("answer larger than \(maxBytes >> 20) MiB")) }
            case .end: return .success((status, body))
            case .failed(let why): return .failure(KubeDecodeError(why))
            }
        }
    }
}

/// Sends the request once connected, and passes the answer's parts on.
final class KubeResponseHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    let head: HTTPRequestHead
    let response: KubeResponse

    init(head: HTTPRequestHead, response: KubeResponse) {
        self.head = head
        self.response = response
    }

    func channelActive(context: ChannelHandlerContext) {
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): response.deliver(.head(status: Int(h.status.code)))
        case .body(var b): response.deliver(.body(b.readBytes(length: b.readableBytes) ?? []))
        case .end:
            response.deliver(.end)
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        response.deliver(.failed("the API server closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        response.deliver(.failed(KubeClient.describe(error)))
        context.close(promise: nil)
    }
}

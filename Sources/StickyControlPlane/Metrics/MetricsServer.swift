import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import StickyCore
import StickyDataPlane
import Synchronization

/// The Prometheus endpoint: `GET /metrics` on its own one-thread NIO event
/// loop, apart from the workers' rings and the admin thread.
///
/// Bounded everywhere: 64 connections at once, 8 KiB of request per
/// connection, 10 s to send it, and one request per connection (the
/// answer says `Connection: close`), so a scraper can hold nothing for long.
/// A scrape gathers fresh worker reports (at most 2 s) on the loop thread:
/// scrapes are rare and serialized anyway.
public final class MetricsServer: Sendable {
    let group: MultiThreadedEventLoopGroup
    let channel: Channel
    /// The bound address (the port is known even after binding port 0).
    public let address: StickyCore.SocketAddress

    static let connectionsMax = 64
    static let requestBytesMax = 8192
    static let requestTimeout = TimeAmount.seconds(10)

    public init(listen: StickyCore.SocketAddress, exporter: MetricsExporter, logger: Logger) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let open = OpenCount()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                guard open.count.add(1, ordering: .relaxed).newValue <= MetricsServer.connectionsMax else {
                    open.count.subtract(1, ordering: .relaxed)
                    return child.close()
                }
                // A whole connection (one request, one answer) gets
                // `requestTimeout`, not an idle timer that each byte resets:
                // a client trickling bytes must not keep its place.
                let deadline = child.eventLoop.scheduleTask(in: MetricsServer.requestTimeout) { child.close(promise: nil) }
                child.closeFuture.whenComplete { _ in
                    deadline.cancel()
                    open.count.subtract(1, ordering: .relaxed)
                }
                return child.eventLoop.makeCompletedFuture {
                    let sync = child.pipeline.syncOperations
                    try sync.addHandler(RequestBytesLimit(MetricsServer.requestBytesMax))
                    try sync.configureHTTPServerPipeline(withErrorHandling: true)
                    try sync.addHandler(MetricsHTTPHandler(exporter: exporter))
                }
            }
        do {
            channel = try bootstrap.bind(host: "\(listen.ip)", port: Int(listen.port)).wait()
        } catch {
            try? group.syncShutdownGracefully()
            let code = (error as? IOError)?.errnoCode ?? EINVAL
            throw SystemError("metrics.listen \(listen): cannot listen", errno: code)
        }
        self.group = group
        let local = channel.localAddress
        address = StickyCore.SocketAddress(ip: listen.ip, port: UInt16(clamping: local?.port ?? Int(listen.port)))
        logger.info("metrics endpoint listening", metadata: ["address": "\(address)", "path": "/metrics"])
    }

    public func stop() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

final class OpenCount: Sendable {
    let count = Atomic<Int>(0)
}

/// Closes a connection that sends more than `limit` bytes: one scrape
/// request is a few hundred bytes.
final class RequestBytesLimit: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    let limit: Int
    var seen = 0

    init(_ limit: Int) { self.limit = limit }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        seen += unwrapInboundIn(data).readableBytes
        guard seen <= limit else {
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }
}

final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let exporter: MetricsExporter
    var head: HTTPRequestHead?
    var answered = false

    init(exporter: MetricsExporter) { self.exporter = exporter }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
        case .body:
            break
        case .end:
            guard let h = head, !answered else { return }
            answered = true
            let path = h.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? h.uri
            if path != "/metrics" {
                respond(context, .notFound, "text/plain; charset=utf-8", Array("not found; try /metrics\n".utf8))
            } else if h.method != .GET && h.method != .HEAD {
                respond(context, .methodNotAllowed, "text/plain; charset=utf-8", Array("only GET\n".utf8), allow: true)
            } else {
                let body = exporter.scrape()
                respond(context, .ok, "text/plain; version=0.0.4; charset=utf-8", h.method == .HEAD ? [] : body,
                        length: body.count)
            }
        }
    }

    func respond(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ type: String, _ body: [UInt8],
                 length: Int? = nil, allow: Bool = false) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: "\(length ?? body.count)")
        headers.add(name: "Connection", value: "close")
        if allow { headers.add(name: "Allow", value: "GET, HEAD") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if !body.isEmpty {
            var buffer = context.channel.allocator.buffer(capacity: body.count)
            buffer.writeBytes(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}

import Glibc
import NIOCore
import NIOPosix
import NIOSSL
import StickyCore
import StickyDataPlane

extension PeerSync {
    /// The start-up pull over `peers.tls`: as the plain one, through
    /// swift-nio-ssl on a loop made for it and shut down after, since no
    /// loop exists yet this early. The member's certificate must chain to
    /// the CA and its CN must be the member's name.
    static func pullTLS(from m: PeersConfig.Member, name: String, fingerprint: UInt64, tls: PeerTLS,
                        deadline: Millis) throws -> Result {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let loop = group.next()
        let promise = loop.makePromise(of: Result.self)
        let left = max(1, deadline - SystemClock().nowMs())
        let timer = loop.scheduleTask(in: .milliseconds(left)) {
            promise.fail(SystemError("no whole table before peers.sync_timeout", errno: ETIMEDOUT))
        }
        defer { timer.cancel() }
        let channel = try ClientBootstrap(group: loop)
            .connectTimeout(.milliseconds(left))
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls.client, serverHostname: nil))
                    try ch.pipeline.syncOperations.addHandler(
                        PullHandler(table: Table(member: m.name, fingerprint: fingerprint), promise: promise))
                }
            }
            .connect(host: "\(m.address.ip)", port: Int(m.address.port))
            .flatMapError { error in
                promise.fail(error)
                return loop.makeFailedFuture(error)
            }
            .wait()
        defer { channel.close(promise: nil) }
        var hello = ByteBuffer(bytes: PeerWire.encode(.hello(name: name, fingerprint: fingerprint)))
        hello.writeBytes(PeerWire.encode(.syncRequest))
        channel.writeAndFlush(hello, promise: nil)
        return try promise.futureResult.wait()
    }

    /// Frames in until the table ends; checks the certificate's CN first.
    final class PullHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        var table: Table
        let promise: EventLoopPromise<Result>
        var buffer: [UInt8] = []
        var checked = false

        init(table: Table, promise: EventLoopPromise<Result>) {
            self.table = table
            self.promise = promise
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            buffer += bytes.readBytes(length: bytes.readableBytes) ?? []
            do {
                if !checked {
                    switch PeerTLS.commonName(on: context.channel) {
                    case .failure(let f): throw SystemError(f.reason, errno: EPROTO)
                    case .success(let cn) where cn != table.member:
                        throw SystemError("certificate CN '\(cn)' is not '\(table.member)'", errno: EPROTO)
                    default: checked = true
                    }
                }
                if let done = try table.take(&buffer) { promise.succeed(done) }
            } catch {
                promise.fail(error)
                context.close(promise: nil)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            promise.fail(SystemError("closed before the table ended", errno: ECONNRESET))
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            if case NIOSSLError.uncleanShutdown = error { return }
            promise.fail(SystemError("TLS: \(RemoteAdminTLS.reason(error))", errno: EPROTO))
            context.close(promise: nil)
        }
    }
}

import Glibc
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import StickyCore
import StickyDataPlane
import Synchronization

/// One target to probe, as the control plane describes it each round.
public struct ProbeTarget: Sendable {
    public var pool: Int
    /// The target as the registry knows it (the tracker's key).
    public var target: StickyCore.SocketAddress
    /// Where the probe goes: the target, or its `health.port`.
    public var probeAddress: StickyCore.SocketAddress
    public var config: HealthConfig
    /// A trial connect to a passively downed target (docs/HEALTH.md): a
    /// TCP connect whatever the pool's check type, reported as a trial.
    public var trial: Bool

    public init(pool: Int, target: StickyCore.SocketAddress, config: HealthConfig, trial: Bool = false) {
        self.pool = pool
        self.target = target
        self.trial = trial
        var config = config
        if trial { config.type = .tcp }
        self.config = config
        var a = target
        if config.port != 0 { a.port = UInt16(config.port) }
        probeAddress = a
    }
}

/// Active health checks, on the control plane: one NIO event loop thread
/// of its own, never a worker's ring. Each pool with checks gets a repeated
/// task at its interval; each round probes every target of the pool
/// (asked afresh, so targets added or removed at runtime are followed),
/// skipping a target whose previous probe is still out. At most
/// `inFlightMax` probes run at once; the rest wait in a queue and start as
/// probes finish, so with many targets every one is still probed (a round
/// that skipped the overflow would starve the same targets every time).
public final class HealthProber: Sendable {
    public static let inFlightMax = 64

    let group: MultiThreadedEventLoopGroup
    let logger: Logger
    /// The targets of a pool right now.
    let plan: @Sendable (Int) -> [ProbeTarget]
    /// A probe's result: the target, ok, and why (for the transition log).
    let report: @Sendable (ProbeTarget, Bool, String) -> Void
    /// Probes out, by target key, and probes waiting for a place.
    struct Queue {
        var inFlight: Set<String> = []
        var waiting: [ProbeTarget] = []
        var waitingKeys: Set<String> = []
    }
    let queue = Mutex<Queue>(Queue())
    /// More than every target of every pool (64 × 64) could ask for.
    static let waitingMax = 4096
    let tasks = Mutex<[RepeatedTask]>([])
    /// Set by `stop`: no queued probe starts after it (the loop is going).
    let stopping = Atomic<Bool>(false)
    /// Probes dropped because the queue was full (never expected).
    public let skipped = Atomic<UInt64>(0)

    public init(logger: Logger, plan: @escaping @Sendable (Int) -> [ProbeTarget],
                report: @escaping @Sendable (ProbeTarget, Bool, String) -> Void) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.logger = logger
        self.plan = plan
        self.report = report
    }

    /// Starts one repeated round per pool with active checks: (pool, interval).
    public func start(pools: [(pool: Int, intervalMs: Millis)]) {
        let el = group.next()
        var started: [RepeatedTask] = []
        for (p, interval) in pools {
            // The first round soon after start, so a dead target is found
            // within about fall × interval of the daemon being ready.
            started.append(el.scheduleRepeatedTask(initialDelay: .milliseconds(100), delay: .milliseconds(interval)) { [self] _ in
                for t in plan(p) { probe(t) }
            })
        }
        tasks.withLock { $0 = started }
    }

    /// Stops the rounds and the event loop (bounded: probes in flight are
    /// closed with it).
    public func stop() {
        stopping.store(true, ordering: .releasing)
        for t in tasks.withLock({ $0 }) { t.cancel() }
        try? group.syncShutdownGracefully()
    }

    static func key(_ t: ProbeTarget) -> String { "\(t.pool) \(t.target)\(t.trial ? " trial" : "")" }

    /// Starts trial connects (the control tick's `startTrials`), through
    /// the same queue and `inFlightMax` as the checks.
    public func trial(_ targets: [ProbeTarget]) {
        guard !stopping.load(ordering: .acquiring) else { return }
        for t in targets { probe(t) }
    }

    /// Starts a probe of `t`, or queues it while `inFlightMax` are out. A
    /// target already out or already waiting is not probed twice.
    func probe(_ t: ProbeTarget) {
        let key = HealthProber.key(t)
        let admitted = queue.withLock { q -> Bool in
            guard !q.inFlight.contains(key), !q.waitingKeys.contains(key) else { return false }
            if q.inFlight.count < HealthProber.inFlightMax {
                q.inFlight.insert(key)
                return true
            }
            if q.waiting.count < HealthProber.waitingMax {
                q.waiting.append(t)
                q.waitingKeys.insert(key)
            } else {
                skipped.wrappingAdd(1, ordering: .relaxed)
            }
            return false
        }
        if admitted { start(t, key: key) }
    }

    /// A probe finished: its place goes to the longest-waiting one.
    func finished(_ key: String) {
        let next = queue.withLock { q -> ProbeTarget? in
            q.inFlight.remove(key)
            guard !q.waiting.isEmpty else { return nil }
            let t = q.waiting.removeFirst()
            let k = HealthProber.key(t)
            q.waitingKeys.remove(k)
            q.inFlight.insert(k)
            return t
        }
        if let next, !stopping.load(ordering: .acquiring) {
            // Not from inside the finished probe's callbacks: on the loop.
            group.next().execute { [self] in start(next, key: HealthProber.key(next)) }
        }
    }

    func start(_ t: ProbeTarget, key: String) {
        let el = group.next()
        let run = ProbeRun { [self] ok, reason in
            report(t, ok, reason)
            finished(key)
        }
        run.setTimeout(el.scheduleTask(in: .milliseconds(t.config.timeoutMs)) {
            run.finish(ok: false, reason: "\(t.config.type.rawValue) check timed out after \(formatDuration(t.config.timeoutMs))")
        })
        let address: NIOCore.SocketAddress
        do {
            address = try NIOCore.SocketAddress(ipAddress: "\(t.probeAddress.ip)", port: Int(t.probeAddress.port))
        } catch {
            run.finish(ok: false, reason: "bad probe address \(t.probeAddress): \(error)")
            return
        }
        let bootstrap = ClientBootstrap(group: el)
            .connectTimeout(.milliseconds(t.config.timeoutMs))
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
        switch t.config.type {
        case .none:
            run.finish(ok: true, reason: "no check")
        case .tcp:
            bootstrap.connect(to: address).whenComplete { result in
                switch result {
                case .success(let channel):
                    run.attach(channel)
                    run.finish(ok: true, reason: "tcp connect ok")
                case .failure(let error):
                    run.finish(ok: false, reason: "tcp connect: \(HealthProber.describe(error))")
                }
            }
        case .grpc:
            let service = t.config.service
            let authority = "\(t.probeAddress)"
            bootstrap.channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let mux = try channel.pipeline.syncOperations.configureHTTP2Pipeline(
                        mode: .client, connectionConfiguration: .init(), streamConfiguration: .init()
                    ) { inbound in
                        // The server never opens streams; refuse any it does.
                        inbound.close()
                    }
                    run.setMultiplexer(mux)
                }
            }.connect(to: address).whenComplete { result in
                switch result {
                case .success(let channel):
                    run.attach(channel)
                    guard let mux = run.multiplexer else {
                        run.finish(ok: false, reason: "grpc: no HTTP/2 multiplexer")
                        return
                    }
                    mux.createStreamChannel(promise: nil) { stream in
                        stream.eventLoop.makeCompletedFuture {
                            try stream.pipeline.syncOperations.addHandler(
                                GRPCHealthCheckHandler(service: service, authority: authority, run: run))
                        }
                    }
                case .failure(let error):
                    run.finish(ok: false, reason: "grpc connect: \(HealthProber.describe(error))")
                }
            }
        }
    }

    /// A short reason for the log: "connection refused", "timed out".
    static func describe(_ error: Error) -> String {
        if let e = error as? NIOConnectionError, let first = e.connectionErrors.first {
            return describe(first.error)
        }
        if let e = error as? IOError { return String(cString: strerror(e.errnoCode)).lowercased() }
        if let e = error as? ChannelError, e == .connectTimeout(.zero) { return "timed out" }
        if case ChannelError.connectTimeout = error { return "timed out" }
        return "\(error)"
    }
}

/// One probe's completion, once: whichever of the answer, the error or the
/// timeout comes first reports; the others find it done. Closes the
/// connection when done.
final class ProbeRun: Sendable {
    let done = Atomic<Bool>(false)
    let channel = Mutex<Channel?>(nil)
    let timeout = Mutex<Scheduled<Void>?>(nil)
    let mux = Mutex<NIOHTTP2Handler.StreamMultiplexer?>(nil)
    let completion: @Sendable (Bool, String) -> Void

    init(completion: @escaping @Sendable (Bool, String) -> Void) {
        self.completion = completion
    }

    var multiplexer: NIOHTTP2Handler.StreamMultiplexer? { mux.withLock { $0 } }
    func setMultiplexer(_ m: NIOHTTP2Handler.StreamMultiplexer) { mux.withLock { $0 = m } }

    func setTimeout(_ s: Scheduled<Void>) {
        timeout.withLock { $0 = s }
        if done.load(ordering: .acquiring) { s.cancel() }
    }

    func attach(_ c: Channel) {
        channel.withLock { $0 = c }
        if done.load(ordering: .acquiring) { ProbeRun.close(c) }
    }

    func finish(ok: Bool, reason: String) {
        guard !done.exchange(true, ordering: .acquiringAndReleasing) else { return }
        timeout.withLock { $0 }?.cancel()
        if let c = channel.withLock({ $0 }) { ProbeRun.close(c) }
        completion(ok, reason)
    }

    /// Closes the connection on the next turn of its loop, never inside the
    /// read that brought the answer. A grpc probe finishes from its stream's
    /// `channelRead`; closing the connection right there means the parent
    /// never sees `channelReadComplete`, so NIOHTTP2's inline multiplexer
    /// keeps the stream on its list of streams that read (swift-nio-http2
    /// 1.46 clears that list only on read complete, not on handler
    /// removal). The stream holds the multiplexer and the multiplexer the
    /// stream: the connection, its HTTP/2 handler and the stream (~27 KB)
    /// leaked on every probe. Deferred, the read completes first and the
    /// list is emptied.
    static func close(_ c: Channel) {
        c.eventLoop.execute { c.close(promise: nil) }
    }
}

/// One grpc.health.v1.Health/Check call on an HTTP/2 stream: request
/// headers and the framed HealthCheckRequest (end of stream), then the
/// response headers (:status 200), the framed HealthCheckResponse and the
/// trailers (grpc-status 0). Healthy means SERVING and grpc-status 0.
final class GRPCHealthCheckHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias OutboundOut = HTTP2Frame.FramePayload

    let service: String
    let authority: String
    let run: ProbeRun
    var sawHeaders = false
    var body: [UInt8] = []

    init(service: String, authority: String, run: ProbeRun) {
        self.service = service
        self.authority = authority
        self.run = run
    }

    func channelActive(context: ChannelHandlerContext) {
        let headers = HPACKHeaders([
            (":method", "POST"), (":scheme", "http"), (":path", GRPCHealth.path), (":authority", authority),
            ("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", "stickyd-health"),
        ])
        context.write(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        let message = GRPCHealth.frame(GRPCHealth.encodeRequest(service: service))
        var buffer = context.channel.allocator.buffer(capacity: message.count)
        buffer.writeBytes(message)
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(buffer), endStream: true))), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let h):
            if !sawHeaders {
                sawHeaders = true
                let status = h.headers.first(name: ":status") ?? "?"
                guard status == "200" else {
                    run.finish(ok: false, reason: "grpc: HTTP status \(status)")
                    return
                }
                // A trailers-only answer carries grpc-status here.
                if h.headers.first(name: "grpc-status") != nil || h.endStream { trailers(h.headers) }
            } else {
                trailers(h.headers)
            }
        case .data(let d):
            if case .byteBuffer(var b) = d.data {
                guard body.count + b.readableBytes <= GRPCHealth.messageBytesMax + 5 else {
                    run.finish(ok: false, reason: "grpc: answer larger than \(GRPCHealth.messageBytesMax) bytes")
                    return
                }
                body += b.readBytes(length: b.readableBytes) ?? []
            }
        case .rstStream(let code):
            run.finish(ok: false, reason: "grpc: stream reset (\(code))")
        default:
            break
        }
    }

    func trailers(_ h: HPACKHeaders) {
        let code = h.first(name: "grpc-status") ?? "missing"
        guard code == "0" else {
            let message = h.first(name: "grpc-message").map { ": \($0)" } ?? ""
            run.finish(ok: false, reason: "grpc-status \(code)\(message)")
            return
        }
        do {
            guard let (m, _) = try GRPCHealth.unframe(body) else {
                run.finish(ok: false, reason: "grpc: no complete HealthCheckResponse")
                return
            }
            let status = try GRPCHealth.decodeResponse(m)
            if status == .serving {
                run.finish(ok: true, reason: "grpc SERVING")
            } else {
                run.finish(ok: false, reason: "grpc \(status.name)")
            }
        } catch {
            run.finish(ok: false, reason: "grpc: bad HealthCheckResponse (\(error))")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        run.finish(ok: false, reason: "grpc: stream closed before an answer")
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        run.finish(ok: false, reason: "grpc: \(error)")
        context.close(promise: nil)
    }
}

import Dispatch
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import StickyCore
import StickyDataPlane
import Synchronization

/// Shares pins with the members of `peers:` (docs/SCALING.md), on a
/// one-thread NIO loop of its own: workers never wait on it, and it never
/// waits on a member.
///
/// - Every 10 ms it drains the workers' outboxes (`PinOutbox`), stamps each
///   change with its absolute pinned-at second, and queues it for every
///   member: at most `peers.queue` per member, then dropped and counted. A
///   member whose socket is not writable gets nothing more until it is.
/// - It connects to each member (backoff 100 ms doubling to 5 s) and pushes
///   batches of up to `PeerWire.pinsPerFrameMax` pins per frame.
/// - It accepts members' connections on `peers.listen`: only from a
///   member's address, and only after a hello naming that member with the
///   same hash key. Their pins go to the worker whose shard owns the
///   client (the steering hash), as one `peerPins` command per batch.
/// - A `syncRequest` (a member starting) is answered with the whole table.
/// - Resync: when pins meant for a member were lost (its queue was full, a
///   worker's outbox was full, or its link closed with pushes in flight),
///   the member gets the whole table, the same export, once its link is up
///   again; at most one every `resyncMinMs` per member, and its queue is
///   held back meanwhile so that no older value overtakes a newer one.
/// - With `peers.tls`, every connection is mutual TLS and the member's
///   certificate CN must be its name (PeerTLS). Every refused connection
///   is counted (`refusedCount`, in `show peers`).
///
/// State below `loop` is touched only on the loop.
final class PeerService: @unchecked Sendable {
    static let tickMs: Int64 = 10
    static let backoffMinMs: Int64 = 100
    static let backoffMaxMs: Int64 = 5_000
    static let heartbeatMs: Int64 = 1_000
    /// A connection that sends nothing for this long is closed.
    static let silenceMaxMs: Int64 = 5_000
    /// Unread bytes a connection may hold before it is closed.
    static let bufferMax = PeerWire.frameMax + 4
    /// Changes drained from one worker's outbox per tick.
    static let drainMax = 65_536
    /// Least time between two resyncs to one member: a member that keeps
    /// overflowing its queue gets the table once a second, not every tick.
    static let resyncMinMs: Int64 = 1_000

    let config: PeersConfig
    let routing: PeerRouting
    var poolNames: [String] { routing.poolNames }
    var channels: [WorkerChannel] { routing.channels }
    let clock: PeerClock
    let fingerprint: UInt64
    let tls: PeerTLS?
    let logger: Logger
    /// The whole table, for a starting member (`ControlPlane.collect`).
    let exportTable: @Sendable () -> [(pool: Int, pin: AffinityPin)]
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let loop: EventLoop

    struct Link {
        var member: PeersConfig.Member
        var out: Channel?
        var state = "connecting"
        var up = false
        var backoffMs = PeerService.backoffMinMs
        var queue: [(pool: Int, pin: PeerPin, madeAtMs: Millis)] = []
        var inbound: Channel?
        var status: PeerStatus
        /// Pins meant for this member were lost since it last had the
        /// whole table: a resync is due once the link is up.
        var lost = false
        /// A resync's table is being gathered or written: the queue waits.
        var resyncing = false
        var lastResyncMs: Int64 = 0
    }

    var links: [Link]
    var server: Channel?
    var tickTask: RepeatedTask?
    var stopped = false
    /// The workers' outbox drops last seen: a rise means every member
    /// missed pins.
    var outboxDroppedSeen: UInt64 = 0
    /// The start-up pull's outcome, for `show peers`.
    let syncSummary: String
    /// What `show peers` and metrics read, refreshed each tick.
    let published: Mutex<[PeerStatus]>
    /// Connections refused (not a member, wrong address or hash key, a
    /// failed TLS handshake, a certificate for another name), and the last
    /// reason: for `show peers`.
    let refusals = Mutex<(count: UInt64, last: String?)>((0, nil))

    init(config: PeersConfig, routing: PeerRouting, clock: PeerClock, fingerprint: UInt64, syncSummary: String, tls: PeerTLS?,
         logger: Logger, exportTable: @escaping @Sendable () -> [(pool: Int, pin: AffinityPin)]) {
        self.config = config
        self.routing = routing
        self.clock = clock
        self.fingerprint = fingerprint
        self.tls = tls
        self.syncSummary = syncSummary
        self.logger = logger
        self.exportTable = exportTable
        loop = group.next()
        links = config.members.map {
            Link(member: $0, status: PeerStatus(name: $0.name, address: "\($0.address)", state: "connecting", inbound: false))
        }
        published = Mutex(links.map(\.status))
    }

    /// Binds `peers.listen` (an error stops the start) and begins connecting.
    func start() throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [self] child in
                child.eventLoop.makeCompletedFuture {
                    if let tls { try child.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.server)) }
                    try child.pipeline.syncOperations.addHandler(PeerConnection(service: self, link: nil))
                }
            }
        do {
            server = try bootstrap.bind(host: "\(config.listen.ip)", port: Int(config.listen.port)).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw SystemError("peers.listen \(config.listen): cannot listen", errno: (error as? IOError)?.errnoCode ?? EINVAL)
        }
        loop.execute { [self] in
            for i in links.indices { connect(i) }
            tickTask = loop.scheduleRepeatedTask(initialDelay: .milliseconds(PeerService.tickMs),
                                                 delay: .milliseconds(PeerService.tickMs)) { [self] _ in tick() }
        }
        logger.info("peer listener up", metadata: ["listen": "\(config.listen)", "name": "\(config.name)",
                                                   "tls": "\(tls != nil ? "mutual" : "off")",
                                                   "members": "\(config.members.map(\.name).joined(separator: ","))"])
    }

    func stop() {
        let done: EventLoopFuture<Void> = loop.submit { [self] in
            stopped = true
            tickTask?.cancel()
            server?.close(promise: nil)
            for l in links {
                l.out?.close(promise: nil)
                l.inbound?.close(promise: nil)
            }
        }
        _ = try? done.wait()
        try? group.syncShutdownGracefully()
    }

    var status: [PeerStatus] { published.withLock { $0 } }

    // MARK: outbound links

    func connect(_ i: Int) {
        guard !stopped else { return }
        links[i].state = "connecting"
        links[i].status.connects &+= 1
        let member = links[i].member
        ClientBootstrap(group: loop)
            .connectTimeout(.seconds(2))
            .channelInitializer { [self] ch in
                ch.eventLoop.makeCompletedFuture {
                    if let tls {
                        try ch.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls.client, serverHostname: nil))
                    }
                    try ch.pipeline.syncOperations.addHandler(PeerConnection(service: self, link: i))
                }
            }
            .connect(host: "\(member.address.ip)", port: Int(member.address.port))
            .whenComplete { [self] result in
                switch result {
                case .success(let ch):
                    links[i].out = ch
                    ch.writeAndFlush(ByteBuffer(bytes: PeerWire.encode(.hello(name: config.name, fingerprint: fingerprint))),
                                     promise: nil)
                case .failure(let e):
                    linkDown(i, reason: "connect: \(e)")
                }
            }
    }

    /// The outbound link closed or never opened: try again after the backoff.
    func linkDown(_ i: Int, reason: String) {
        if links[i].up {
            logger.warning("peer link down", metadata: ["member": "\(links[i].member.name)", "reason": "\(reason)"])
        }
        // Pins written just before the close may never have arrived.
        if links[i].up { links[i].lost = true }
        links[i].out = nil
        links[i].up = false
        links[i].state = "down"
        links[i].status.lastError = reason
        guard !stopped else { return }
        let wait = links[i].backoffMs
        links[i].backoffMs = min(wait * 2, PeerService.backoffMaxMs)
        loop.scheduleTask(in: .milliseconds(wait)) { [self] in connect(i) }
    }

    // MARK: the tick: outboxes to queues to sockets

    func tick() {
        let nowMs = SystemClock().nowMs()
        let nowSec = AffinityTable.seconds(nowMs)
        var changes: [PinChange] = []
        for c in channels { c.pinOutbox?.drain(max: PeerService.drainMax, into: &changes) }
        if !changes.isEmpty {
            for i in links.indices {
                for c in changes {
                    guard links[i].queue.count < config.queue else {
                        links[i].status.pinsDropped &+= 1
                        links[i].lost = true
                        continue
                    }
                    let pin = PeerPin(key: c.key, target: c.target, idleSec: nowSec &- c.seenSec,
                                      pinnedAt: clock.unixSec(ofTableSec: c.pinnedSec, nowSec: nowSec), reason: c.reason)
                    links[i].queue.append((Int(c.pool), pin, c.madeAtMs))
                }
            }
        }
        let outboxDropped = channels.reduce(UInt64(0)) { $0 &+ ($1.pinOutbox?.dropped.load(ordering: .relaxed) ?? 0) }
        if outboxDropped != outboxDroppedSeen {
            outboxDroppedSeen = outboxDropped
            for i in links.indices { links[i].lost = true }
        }
        let unixMs = UInt64(max(0, ControlPlane.unixMs()))
        for i in links.indices {
            if links[i].up, links[i].lost, !links[i].resyncing, let ch = links[i].out,
               nowMs - links[i].lastResyncMs >= PeerService.resyncMinMs {
                resync(i, ch, nowMs: nowMs)
            }
            if links[i].up, !links[i].resyncing, let ch = links[i].out, ch.isWritable, !links[i].queue.isEmpty {
                send(i, ch, unixMs: unixMs)
            }
            if links[i].up, let ch = links[i].out, nowMs / PeerService.heartbeatMs != (nowMs - PeerService.tickMs) / PeerService.heartbeatMs {
                ch.writeAndFlush(ByteBuffer(bytes: PeerWire.encode(.heartbeat(sentAtMs: unixMs))), promise: nil)
            }
            links[i].status.state = links[i].state
            links[i].status.inbound = links[i].inbound != nil
            links[i].status.queued = links[i].queue.count
            links[i].status.queueLagMs = links[i].queue.first.map { Int64(nowMs - $0.madeAtMs) } ?? 0
        }
        let snapshot = links.map(\.status)
        published.withLock { $0 = snapshot }
    }

    /// Writes link `i`'s queue as pins frames, one pool at a time.
    func send(_ i: Int, _ ch: Channel, unixMs: UInt64) {
        let queue = links[i].queue
        links[i].queue.removeAll(keepingCapacity: true)
        var byPool: [Int: [PeerPin]] = [:]
        for q in queue { byPool[q.pool, default: []].append(q.pin) }
        _ = writeTable(byPool, on: ch, unixMs: unixMs)
        ch.flush()
        links[i].status.pinsSent &+= UInt64(queue.count)
    }

    // MARK: messages

    /// A connection's first message must be a hello from a member, from that
    /// member's address, with our hash key. Returns the member's link
    /// index, or nil after closing the connection.
    func accept(_ ch: Channel, hello name: String, fingerprint theirs: UInt64, outbound: Int?) -> Int? {
        let remote = ch.remoteAddress?.ipAddress
        guard let i = links.firstIndex(where: { $0.member.name == name }) else {
            refuse(ch, "not a member", ["name": "\(name)"])
            return nil
        }
        guard outbound != nil || remote == "\(links[i].member.address.ip)" else {
            refuse(ch, "not from the member's address", ["name": "\(name)", "expected": "\(links[i].member.address.ip)"])
            return nil
        }
        // The name said in the hello must be the one the CA vouched for:
        // a certificate for one member cannot speak as another.
        if tls != nil {
            switch PeerTLS.commonName(on: ch) {
            case .failure(let f):
                refuse(ch, f.reason, ["name": "\(name)"])
                return nil
            case .success(let cn) where cn != name:
                refuse(ch, "certificate CN '\(cn)' is not the member's name", ["name": "\(name)"])
                links[i].status.lastError = "certificate CN '\(cn)' is not '\(name)'"
                return nil
            default:
                break
            }
        }
        guard theirs == fingerprint else {
            refuse(ch, "a different hash_key (clients would be placed differently)", ["name": "\(name)"], level: .error)
            links[i].status.lastError = "different hash_key"
            return nil
        }
        if let o = outbound {
            links[o].up = true
            links[o].state = "up"
            links[o].backoffMs = PeerService.backoffMinMs
            logger.info("peer link up", metadata: ["member": "\(name)"])
        } else {
            links[i].inbound?.close(promise: nil)
            links[i].inbound = ch
            ch.writeAndFlush(ByteBuffer(bytes: PeerWire.encode(.hello(name: config.name, fingerprint: fingerprint))), promise: nil)
        }
        return i
    }

    /// Closes a connection that is not let in, logs why and counts it.
    func refuse(_ ch: Channel?, _ reason: String, _ extra: Logger.Metadata = [:], level: Logger.Level = .warning) {
        var m = extra
        m["from"] = "\(ch?.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?")"
        m["reason"] = "\(reason)"
        logger.log(level: level, "peer connection refused", metadata: m)
        refusals.withLock {
            $0.count &+= 1
            $0.last = reason
        }
        ch?.close(promise: nil)
    }

    func received(_ message: PeerMessage, from i: Int, on ch: Channel) {
        switch message {
        case .hello:
            break
        case .pins(let pool, let sentAtMs, let pins):
            links[i].status.pinsReceived &+= UInt64(pins.count)
            links[i].status.receiveLagMs = ControlPlane.unixMs() - Int64(clamping: sentAtMs)
            routing.deliver(pool: pool, pins: pins, clock: clock)
        case .syncRequest:
            answerSync(on: ch)
        case .heartbeat(let sentAtMs):
            // Answered on accepted connections, so the member's link hears
            // from us too and its silence check stays quiet.
            if links[i].inbound === ch {
                ch.writeAndFlush(ByteBuffer(bytes: PeerWire.encode(.heartbeat(sentAtMs: sentAtMs))), promise: nil)
            }
        case .syncEnd:
            break
        }
    }

    /// The whole table for a starting member: gathered off the loop (it
    /// waits for the workers' reports), written on it.
    func answerSync(on ch: Channel) {
        wholeTable { [self] byPool in
            let count = writeTable(byPool, on: ch)
            ch.writeAndFlush(ByteBuffer(bytes: PeerWire.encode(.syncEnd(count: UInt32(clamping: count)))), promise: nil)
            logger.info("peer table sent to a starting member", metadata: ["pins": "\(count)"])
        }
    }

    /// Link `i` is back after pins meant for its member were lost: the
    /// whole table goes to it. The queue is dropped (the table, taken
    /// later, holds every pin in it) and holds what comes next until the
    /// table is written, so nothing older overtakes a newer change.
    func resync(_ i: Int, _ ch: Channel, nowMs: Int64) {
        links[i].lost = false
        links[i].resyncing = true
        links[i].lastResyncMs = nowMs
        links[i].queue.removeAll(keepingCapacity: true)
        wholeTable { [self] byPool in
            links[i].resyncing = false
            guard links[i].up, links[i].out === ch else {
                // The link went again before the table was ready.
                links[i].lost = true
                return
            }
            let count = writeTable(byPool, on: ch)
            ch.flush()
            links[i].status.pinsSent &+= UInt64(count)
            links[i].status.resyncs &+= 1
            logger.info("peer table resent to a member that missed pins",
                        metadata: ["member": "\(links[i].member.name)", "pins": "\(count)"])
        }
    }

    /// Every pin of the table by pool, gathered off the loop (it waits for
    /// the workers' reports); `done` runs on the loop.
    func wholeTable(_ done: @escaping @Sendable ([Int: [PeerPin]]) -> Void) {
        let export = exportTable
        let clock = clock
        DispatchQueue.global().async { [self] in
            let all = export()
            let nowSec = AffinityTable.seconds(SystemClock().nowMs())
            var byPool: [Int: [PeerPin]] = [:]
            for (pool, p) in all {
                guard let target = p.address else { continue }
                byPool[pool, default: []].append(PeerPin(key: p.key, target: target, idleSec: nowSec &- p.seenSec,
                                                         pinnedAt: clock.unixSec(ofTableSec: p.pinnedSec, nowSec: nowSec),
                                                         reason: .sync))
            }
            loop.execute { done(byPool) }
        }
    }

    /// Writes pins, a pool at a time, as pins frames of at most
    /// `pinsPerFrameMax` (not flushed); returns the pin count. A queue's
    /// push and a whole table (pull answer, resync) go out the same way.
    func writeTable(_ byPool: [Int: [PeerPin]], on ch: Channel,
                    unixMs: UInt64 = UInt64(max(0, ControlPlane.unixMs()))) -> Int {
        var count = 0
        for (pool, pins) in byPool.sorted(by: { $0.key < $1.key }) {
            var start = 0
            while start < pins.count {
                let end = min(start + PeerWire.pinsPerFrameMax, pins.count)
                ch.write(ByteBuffer(bytes: PeerWire.encode(.pins(pool: poolNames[pool], sentAtMs: unixMs,
                                                                 pins: Array(pins[start..<end])))), promise: nil)
                start = end
            }
            count += pins.count
        }
        return count
    }

    func closed(_ ch: Channel, link: Int?, member: Int?, reason: String) {
        if let o = link, links[o].out === ch {
            linkDown(o, reason: reason)
        } else if let m = member, links[m].inbound === ch {
            links[m].inbound = nil
        }
    }
}

/// One peer connection, either way: frames in, `PeerService` decides.
final class PeerConnection: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let service: PeerService
    /// The outbound link this connection is, or nil for an accepted one.
    let link: Int?
    var member: Int?
    var buffer: [UInt8] = []
    var lastHeardMs: Int64 = 0
    var silenceTimer: RepeatedTask?
    var reason = "closed by the member"

    init(service: PeerService, link: Int?) {
        self.service = service
        self.link = link
    }

    func channelActive(context: ChannelHandlerContext) {
        lastHeardMs = SystemClock().nowMs()
        let ch = context.channel
        silenceTimer = ch.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { [self] _ in
            if SystemClock().nowMs() - lastHeardMs > PeerService.silenceMaxMs {
                reason = "silent for \(PeerService.silenceMaxMs) ms"
                ch.close(promise: nil)
            }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        buffer += bytes.readBytes(length: bytes.readableBytes) ?? []
        lastHeardMs = SystemClock().nowMs()
        while true {
            let message: PeerMessage?
            do {
                message = try PeerWire.decodeFrame(&buffer)
            } catch {
                service.logger.warning("peer connection closed: malformed message", metadata: ["error": "\(error)"])
                reason = "\(error)"
                context.close(promise: nil)
                return
            }
            guard let message else { break }
            if member == nil {
                guard case .hello(let name, let fp) = message else {
                    reason = "first message was not a hello"
                    context.close(promise: nil)
                    return
                }
                member = service.accept(context.channel, hello: name, fingerprint: fp, outbound: link)
                if member == nil { return }
                continue
            }
            service.received(message, from: member!, on: context.channel)
        }
        if buffer.count > PeerService.bufferMax {
            reason = "more than \(PeerService.bufferMax) unread bytes"
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        silenceTimer?.cancel()
        service.closed(context.channel, link: link, member: member, reason: reason)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if case NIOSSLError.handshakeFailed = error {
            // Not signed by peers.tls.ca, no certificate, an old TLS: the
            // other side is not a member (or we are not one to it).
            reason = "TLS handshake failed: \(RemoteAdminTLS.reason(error))"
            service.refuse(context.channel, reason)
            return
        }
        if case NIOSSLError.uncleanShutdown = error { return }
        reason = "\(error)"
        context.close(promise: nil)
    }
}

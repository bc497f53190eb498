import Logging
import NIOCore
import StickyCore

/// The limits every admin session has, on either transport.
public enum AdminLimits {
    /// Sessions open at once, per listener; on the TLS listener, sessions
    /// still in their handshake count.
    public static let sessionsMax = 256
    /// Connections over `sessionsMax` that are still told why they are
    /// refused (the "too many" line; over TLS that takes a handshake). Past
    /// this many more, a connection is closed without a word.
    public static let refusalsMax = 16
    /// A client that does not read its answers is cut off past this much
    /// unsent output.
    public static let pendingOutputBytesMax = 4 << 20
    /// A session that sends nothing for this long is closed.
    public static let sessionIdleMs: Int64 = 300_000
    /// A TLS client must have finished its handshake by then, so that a
    /// silent connection cannot hold a slot.
    public static let handshakeTimeoutMs: Int64 = 10_000
    /// Each read takes at most this much, so at most this many bytes of
    /// lines wait behind a pending answer.
    public static let readBytesMax = 4096

    public static let tooManyMessage = "error: too many admin connections (\(sessionsMax)); try again"
}

/// How the transport lets a session in: told to the session as a user
/// inbound event (the Unix socket knows at accept, the TLS listener once the
/// handshake is done and the certificate is checked).
enum AdminAdmission {
    /// Serve commands as this peer.
    case admitted(PeerCredentials)
    /// Send this one line, then close.
    case refused(String)
}

/// One admin session, the same on every transport: it frames lines, runs
/// each through the control plane's handler in order, waits for pending
/// answers (`upgrade`), and ends on `quit`, on the client's end of input
/// once everything asked is answered, on 5 minutes of silence, or when the
/// client leaves 4 MiB of answers unread.
///
/// A connection is a state, as in TigerBeetle's message bus: each entry
/// point checks the state it may run in, and `closed` comes first.
final class AdminSessionHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum State {
        /// Not yet let in (TLS: handshake or allow check under way). Input is not read as commands.
        case opening
        /// Reading and answering lines.
        case serving
        /// An answer is pending: reading stops; later lines wait in `queued`.
        case waiting
        /// The last answer is on its way; then the connection closes. Input is dropped.
        case closing
        case closed
    }

    let handler: AdminService.Handler
    let logger: Logger
    /// "admin" or "remote admin", for log lines.
    let label: String
    var state = State.opening
    var credentials = PeerCredentials(pid: 0, uid: 0, gid: 0)
    var framer = AdminLineFramer()
    /// Lines read and not yet answered: they wait behind a pending answer,
    /// so answers keep the order of the commands.
    var queued: [AdminLineFramer.Event] = []
    /// The client has sent its last byte: answer what it asked, then end.
    var inputClosed = false
    /// A read the channel asked for while an answer was pending.
    var readHeld = false
    /// Bytes handed to the channel and not yet written to the socket.
    var unsentBytes = 0
    var lastWrite: EventLoopFuture<Void>?
    /// On the loop's clock (a test's loop has a manual one).
    var lastActive = NIODeadline.uptimeNanoseconds(0)
    var idleTimer: Scheduled<Void>?
    var context: ChannelHandlerContext?
    /// What the transport knew at accept (the Unix socket); nil when it
    /// comes later as an event (TLS).
    var initialAdmission: AdminAdmission?

    init(handler: @escaping AdminService.Handler, admission: AdminAdmission?, label: String, logger: Logger) {
        self.handler = handler
        initialAdmission = admission
        self.label = label
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        idleTimer?.cancel()
        self.context = nil
    }

    // MARK: Inbound

    func channelActive(context: ChannelHandlerContext) {
        if let a = initialAdmission {
            initialAdmission = nil
            admit(a, context)
        }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .closed = state { return }
        if let admission = event as? AdminAdmission {
            admit(admission, context)
            return
        }
        if let e = event as? ChannelEvent, e == .inputClosed {
            // Half-closed by the client (socat at the end of its input).
            inputClosed = true
            if case .serving = state { answerQueued(context) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .closed, .closing, .opening:
            return
        case .serving, .waiting:
            break
        }
        let buffer = unwrapInboundIn(data)
        lastActive = context.eventLoop.now
        let bytes = buffer.getBytes(at: buffer.readerIndex, length: buffer.readableBytes) ?? []
        _ = framer.feed(bytes[...]) { event in
            queued.append(event)
            return true
        }
        if case .serving = state { answerQueued(context) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // A pending answer may still come; `resolved` finds the state closed.
        state = .closed
        queued.removeAll()
        idleTimer?.cancel()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if case .closed = state { return }
        // A reset or a broken pipe: the peer is gone, and so is the session.
        logger.debug("\(label) session error; closed", metadata: ["error": "\(error)"])
        state = .closed
        context.close(promise: nil)
    }

    func admit(_ admission: AdminAdmission, _ context: ChannelHandlerContext) {
        guard case .opening = state else { preconditionFailure("admitted in state \(state)") }
        switch admission {
        case .admitted(let c):
            credentials = c
            state = .serving
            lastActive = context.eventLoop.now
            armIdleTimer(context, after: .milliseconds(AdminLimits.sessionIdleMs))
        case .refused(let line):
            write(context, line)
            finish(context)
        }
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        // Backpressure: nothing more is read while an answer is pending.
        if case .waiting = state {
            readHeld = true
            return
        }
        context.read()
    }

    // MARK: Answers

    /// Answers queued lines in order until one is pending, `quit` comes,
    /// or none are left; then ends the session if the client has.
    func answerQueued(_ context: ChannelHandlerContext) {
        guard case .serving = state else { preconditionFailure("answering in state \(state)") }
        while case .serving = state, !queued.isEmpty {
            switch queued.removeFirst() {
            case .tooLong:
                write(context, AdminLineFramer.tooLongMessage)
            case .line(let line):
                let reply = handler(line[...], credentials)
                if let pending = reply.pending {
                    state = .waiting
                    let session = NIOLoopBound(self, eventLoop: context.eventLoop)
                    // Always through the loop, even when already resolved:
                    // the answer goes out in order, after what is written now.
                    pending.whenResolved { text in
                        session.eventLoop.execute { session.value.resolved(text) }
                    }
                } else {
                    write(context, reply.text)
                    if reply.close {
                        queued.removeAll()
                        finish(context)
                    }
                }
            }
        }
        context.flush()
        if case .serving = state, inputClosed {
            finish(context)
        } else if unsentBytes > AdminLimits.pendingOutputBytesMax {
            logger.warning("\(label) client does not read its answers; closed",
                           metadata: ["unsent_bytes": "\(unsentBytes)"])
            state = .closed
            context.close(promise: nil)
        }
    }

    /// A pending answer came (on the loop).
    func resolved(_ text: String) {
        guard case .waiting = state, let context else { return }
        write(context, text)
        state = .serving
        answerQueued(context)
        if readHeld, case .serving = state {
            readHeld = false
            context.read()
        }
    }

    /// Queues an answer: its text, then the empty line that ends it.
    func write(_ context: ChannelHandlerContext, _ text: String) {
        var buffer = context.channel.allocator.buffer(capacity: text.utf8.count + 2)
        buffer.writeString(text)
        if !text.hasSuffix("\n") { buffer.writeInteger(UInt8(ascii: "\n")) }
        buffer.writeInteger(UInt8(ascii: "\n"))
        let n = buffer.readableBytes
        unsentBytes += n
        let done = context.write(wrapOutboundOut(buffer))
        let session = NIOLoopBound(self, eventLoop: context.eventLoop)
        done.whenComplete { _ in session.value.unsentBytes -= n }
        lastWrite = done
    }

    /// Ends the session once everything written has gone out: close(2)
    /// would drop unsent answers. Over TLS the close then sends close_notify.
    func finish(_ context: ChannelHandlerContext) {
        state = .closing
        context.flush()
        guard let last = lastWrite else {
            context.close(promise: nil)
            return
        }
        let channel = NIOLoopBound(context, eventLoop: context.eventLoop)
        last.whenComplete { _ in channel.value.close(promise: nil) }
    }

    // MARK: Idle

    func armIdleTimer(_ context: ChannelHandlerContext, after delay: TimeAmount) {
        let session = NIOLoopBound(self, eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: delay) { session.value.idleCheck() }
    }

    /// Idle sessions go, so a stuck client cannot hold a slot forever; a
    /// session waiting for its answer is not idle.
    func idleCheck() {
        guard let context else { return }
        switch state {
        case .closed, .closing, .opening:
            // Opening: the TLS handshake has its own, shorter deadline.
            return
        case .waiting:
            armIdleTimer(context, after: .milliseconds(AdminLimits.sessionIdleMs))
        case .serving:
            let left = lastActive + .milliseconds(AdminLimits.sessionIdleMs) - context.eventLoop.now
            if left > .zero {
                armIdleTimer(context, after: left)
                return
            }
            logger.info("\(label) session idle; closed")
            state = .closed
            context.close(promise: nil)
        }
    }
}

import CURingShim
import Foundation
import Glibc
import Logging
import StickyCore
import StickyDataPlane
import Synchronization

/// The zero-downtime upgrade's wire protocol (docs/OPERATIONS.md,
/// "Upgrade"; docs/ARCHITECTURE.md, "Upgrade").
///
/// One Unix stream connection from the successor (new) to the running
/// daemon (old). Frames are `u32 length (big-endian) | u8 type | payload`,
/// `length` counting the type byte and the payload. Descriptors travel as
/// SCM_RIGHTS on `fds` frames (at most 253 a frame), sent before the frame
/// that refers to them:
///
///     new → old   hello      JSON {version, pid}
///     old → new   fds ...    listening sockets, listener-major, worker order
///     old → new   state      JSON TakeoverState
///     old → new   affinity   one AffinityExport blob per worker, in order
///     new → old   ready | failed (JSON {error})
///     old → new   commit
///     new → old   serving     (when hello said `confirms`)
///     old → new   loads ...   JSON [TakeoverLoad], every 500 ms until old exits
///
/// Old pauses accepting before it exports (the sockets stay open, so the
/// kernel keeps queueing clients); new starts with accepting held and
/// resumes on `commit`. Anything but `ready` before the deadline rolls old
/// back to accepting, and a rollback always closes the connection. So that
/// no lost message can leave both processes stopped, each side reads
/// silence as "the other one serves" and only a closed connection (or an
/// explicit `failed`) as "it does not": new, not hearing `commit` within
/// `commitMs` while the connection stays open, serves anyway and says
/// `serving`; old, after `commit`, keeps its listeners (paused) until
/// `serving`, takes the service back if the connection closes first (new
/// died), and lets go after `servingMs` of silence (new lives and was told
/// to serve). The table is in docs/OPERATIONS.md, "Commit".
// The frame types and their decoder are StickyCore's `TakeoverFrame`, pure
// so they can be fuzzed; this file owns the socket and the deadlines.

enum TakeoverLimits {
    static let protocolVersion = 1
    /// Largest frame (see `TakeoverFrame.lengthMax`).
    static let frameBytesMax = TakeoverFrame.lengthMax
    static let fdsPerFrame = 253
    /// Listening sockets in one hand-over (listeners × workers).
    static let fdsMax = 65_536
    /// The successor's hello after it connects.
    static let helloMs: Millis = 5_000
    /// After the hand-over, the old daemon sends its loads this often; a
    /// successor that hears none for `loadsSilenceMs` counts them as gone.
    static let loadsEveryMs: Millis = 500
    static let loadsSilenceMs: Millis = 10_000
    /// Every worker's affinity export (a walk of its table).
    static let exportMs: Millis = 10_000
    /// Sending or receiving the state and the affinity.
    static let transferMs: Millis = 60_000
    /// The successor building its workers and sockets, then `ready`.
    static let readyMs: Millis = 60_000
    /// `commit` after `ready`; past it the successor serves anyway.
    static let commitMs: Millis = 10_000
    /// `serving` after `commit`: longer than `commitMs`, so a successor
    /// whose `commit` was lost (and serves after `commitMs`) confirms first.
    static let servingMs: Millis = 20_000
    /// Test hook: frame types (comma-separated names, e.g. `commit`) this
    /// process skips sending, to show the protocol survives their loss.
    static let droppedFrames: Set<String> = {
        guard let v = getenv("STICKYD_TEST_TAKEOVER_DROP") else { return [] }
        return Set(String(cString: v).split(separator: ",").map(String.init))
    }()
}

/// The listening sockets and state a successor takes over.
struct TakeoverState: Codable {
    struct Listener: Codable {
        var address: String
        var pool: String
        /// The steering program's prefixes (the pool's affinity masks when
        /// the old process attached it).
        var maskV4: Int
        var maskV6: Int
        enum CodingKeys: String, CodingKey {
            case address, pool
            case maskV4 = "mask_v4"
            case maskV6 = "mask_v6"
        }
    }

    var version: Int
    var pid: Int32
    var workers: Int
    /// In config order; the descriptors are listener-major, worker order.
    var listeners: [Listener]
    var registry: StateFile
    /// The hash key of pools that do not configure one (32 hex digits).
    var hashKey: String
    /// Targets whose health differs from a fresh start's (absent from a
    /// predecessor built before it was carried).
    var health: [HealthCarry]?
    enum CodingKeys: String, CodingKey {
        case version, pid, workers, listeners, registry, health
        case hashKey = "hash_key"
    }
}

struct TakeoverHello: Codable {
    var version: Int
    var pid: Int32
    /// The successor sends `serving` once it accepts (absent from a
    /// successor built before that frame: the old daemon then lets go at
    /// `ready`, as those did).
    var confirms: Bool?
}

struct TakeoverFailure: Codable {
    var error: String
}

/// One target's open connections in the old daemon (`loads` frames).
struct TakeoverLoad: Codable, Equatable {
    var pool: String
    var address: String
    var connections: Int
}

/// A framed connection with descriptor passing, every wait bounded by a
/// deadline on the monotonic clock. Not thread-safe: one owner at a time
/// (after a hand-over the takeover thread passes it to the main thread).
final class TakeoverChannel: @unchecked Sendable {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    /// Descriptors received and not yet taken, in arrival order.
    private(set) var receivedFDs: [Int32] = []

    init(fd: Int32) {
        self.fd = fd
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    private var closed = false

    deinit { closeNow() }

    /// Closes the connection now rather than at deinit: a successor holds
    /// its `TakeoverClient` for as long as it runs, and without this kept
    /// the dead predecessor's socket open (one descriptor per upgrade).
    func closeNow() {
        guard !closed else { return }
        closed = true
        close(fd)
        for f in receivedFDs { close(f) }
        receivedFDs = []
    }

    static func deadline(_ ms: Millis) -> Millis { ControlPlane.monotonicMs() + ms }

    private func wait(_ events: Int16, until deadline: Millis, doing what: String) throws {
        while true {
            let left = deadline - ControlPlane.monotonicMs()
            guard left > 0 else { throw SystemError("upgrade: \(what): timed out", errno: ETIMEDOUT) }
            var p = pollfd(fd: fd, events: events, revents: 0)
            let n = poll(&p, 1, Int32(min(left, 1000)))
            if n > 0 { return }
            if n < 0 && errno != EINTR { throw SystemError("upgrade: \(what): poll", errno: errno) }
        }
    }

    /// Sends one frame; `fds` go first, on `fds` frames of their own.
    func send(_ type: TakeoverFrame, _ payload: [UInt8], fds: [Int32] = [], deadline: Millis) throws {
        if TakeoverLimits.droppedFrames.contains("\(type)") {
            Logger(label: "stickyd").warning("test hook STICKYD_TEST_TAKEOVER_DROP: not sending \(type)")
            return
        }
        var chunkStart = 0
        while chunkStart < fds.count {
            let chunk = Array(fds[chunkStart..<min(fds.count, chunkStart + TakeoverLimits.fdsPerFrame)])
            try sendBytes(TakeoverChannel.frame(.fds, []), fds: chunk, deadline: deadline, what: "sending sockets")
            chunkStart += chunk.count
        }
        try sendBytes(TakeoverChannel.frame(type, payload), fds: [], deadline: deadline, what: "sending \(type)")
    }

    static func frame(_ type: TakeoverFrame, _ payload: [UInt8]) -> [UInt8] {
        TakeoverFrame.encode(type, payload)
    }

    private func sendBytes(_ bytes: [UInt8], fds: [Int32], deadline: Millis, what: String) throws {
        var off = 0
        var pendingFDs = fds
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                pendingFDs.withUnsafeBufferPointer { f in
                    sticky_send_fds(fd, raw.baseAddress! + off, raw.count - off, f.baseAddress, Int32(f.count))
                }
            }
            if n >= 0 {
                off += n
                // The descriptors ride on the first byte sent.
                if n > 0 { pendingFDs = [] }
            } else if n == -Int(EAGAIN) {
                try wait(Int16(POLLOUT), until: deadline, doing: what)
            } else {
                throw SystemError("upgrade: \(what): sendmsg", errno: Int32(-n))
            }
        }
    }

    /// The next frame other than `fds` (whose descriptors are collected).
    func receive(deadline: Millis, doing what: String) throws -> (TakeoverFrame, [UInt8]) {
        while true {
            if let (type, payload) = try parse() {
                if type == .fds { continue }
                return (type, payload)
            }
            try fill(deadline: deadline, doing: what)
        }
    }

    private func parse() throws -> (TakeoverFrame, [UInt8])? {
        let type: TakeoverFrame
        let range: Range<Int>
        switch TakeoverFrame.decode(buffer[start...]) {
        case .needMore: return nil
        case .invalid(let reason): throw SystemError("upgrade: \(reason)", errno: EPROTO)
        case .frame(let t, let payload): (type, range) = (t, payload)
        }
        let payload = Array(buffer[range])
        start = range.upperBound
        if start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        }
        return (type, payload)
    }

    private func fill(deadline: Millis, doing what: String) throws {
        if start > 0 {
            buffer.removeFirst(start)
            start = 0
        }
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var fds = [Int32](repeating: -1, count: TakeoverLimits.fdsPerFrame)
        while true {
            var nfds: Int32 = 0
            let n = chunk.withUnsafeMutableBytes { raw in
                fds.withUnsafeMutableBufferPointer { f in
                    sticky_recv_fds(fd, raw.baseAddress, raw.count, f.baseAddress, Int32(f.count), &nfds)
                }
            }
            if n == -Int(EAGAIN) {
                try wait(Int16(POLLIN), until: deadline, doing: what)
                continue
            }
            if n < 0 { throw SystemError("upgrade: \(what): recvmsg", errno: Int32(-n)) }
            receivedFDs.append(contentsOf: fds.prefix(Int(nfds)))
            guard receivedFDs.count <= TakeoverLimits.fdsMax else {
                throw SystemError("upgrade: more than \(TakeoverLimits.fdsMax) descriptors received", errno: EMSGSIZE)
            }
            if n == 0 { throw SystemError("upgrade: \(what): the other process closed the connection", errno: ECONNRESET) }
            buffer.append(contentsOf: chunk[0..<n])
            return
        }
    }

    /// Hands the received descriptors over; the channel no longer closes them.
    func takeFDs() -> [Int32] {
        defer { receivedFDs = [] }
        return receivedFDs
    }

    func sendJSON<T: Encodable>(_ type: TakeoverFrame, _ value: T, fds: [Int32] = [], deadline: Millis) throws {
        try send(type, Array(try JSONEncoder().encode(value)), fds: fds, deadline: deadline)
    }

    static func decodeJSON<T: Decodable>(_ type: T.Type, _ payload: [UInt8], what: String) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(payload))
        } catch {
            throw SystemError("upgrade: malformed \(what) (\(error))", errno: EPROTO)
        }
    }
}

// MARK: - Old process: the takeover socket

/// What the running daemon offers a successor.
struct TakeoverOffer {
    var state: TakeoverState
    /// Listener-major, worker order, as `state.listeners` lists them.
    var fds: [Int32]
    /// One per worker.
    var affinity: [AffinityExport]
}

/// The running daemon's end: a Unix socket (0600, peer credentials
/// checked) on its own thread, serving one successor at a time.
final class TakeoverServer: @unchecked Sendable {
    struct Hooks: Sendable {
        /// Pauses accepting and gathers the offer; throws (after rolling
        /// back itself) if it cannot.
        var prepare: @Sendable () throws -> TakeoverOffer
        /// The successor failed or went away before `ready`: accept again.
        var rollback: @Sendable (_ reason: String) -> Void
        /// The successor is ready: let go (called before `commit` is sent).
        var commit: @Sendable (_ successorPid: Int32) -> Void
    }

    let listener: UnixListener
    let logger: Logger
    let stopPipe: (read: Int32, write: Int32)
    /// The connection to the successor, kept after the hand-over for the
    /// `loads` frames (only one that sends `serving` reads them).
    let handedChannel = Mutex<TakeoverChannel?>(nil)
    var thread: Thread?
    let done = DispatchSemaphore(value: 0)

    init(path: String, staged: Bool, logger: Logger) throws {
        listener = try UnixListener(path: path, what: "takeover socket", staged: staged, backlog: 4)
        self.logger = logger
        var p: (Int32, Int32) = (-1, -1)
        _ = withUnsafeMutableBytes(of: &p) { pipe($0.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        stopPipe = (p.0, p.1)
        // Not inherited by a successor this process spawns.
        for fd in [p.0, p.1] { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    }

    deinit {
        close(stopPipe.read)
        close(stopPipe.write)
    }

    var path: String { listener.path }

    /// The connection to the successor after a hand-over (for `loads`).
    func takeHandedChannel() -> TakeoverChannel? {
        handedChannel.withLock { c in
            defer { c = nil }
            return c
        }
    }

    func install() throws { try listener.install() }

    func start(_ hooks: Hooks) {
        let t = Thread { [self] in
            self.serve(hooks)
            self.done.signal()
        }
        t.name = "stickyd-takeover"
        t.start()
        thread = t
    }

    /// Stops serving and closes the socket (its file only if still ours).
    /// Bounded: a session in progress ends within its own deadlines.
    func stop() {
        guard thread != nil else {
            listener.close()
            return
        }
        var one: UInt8 = 1
        _ = write(stopPipe.write, &one, 1)
        _ = done.wait(timeout: .now() + .milliseconds(Int(TakeoverLimits.readyMs + TakeoverLimits.transferMs)))
    }

    private func serve(_ hooks: Hooks) {
        defer { listener.close() }
        while true {
            var fds = [pollfd(fd: stopPipe.read, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, 1000)
            if n < 0 && errno != EINTR {
                logger.error("takeover socket: poll failed", metadata: ["errno": "\(errno)"])
                usleep(100_000)
            }
            if fds[0].revents != 0 { return }
            guard fds[1].revents & Int16(POLLIN) != 0 else { continue }
            let c = sticky_accept_nonblocking(listener.fd)
            guard c >= 0 else { continue }
            var pid: Int32 = 0
            var uid: UInt32 = 0
            var gid: UInt32 = 0
            guard sticky_peer_credentials(c, &pid, &uid, &gid) == 0, uid == 0 || uid == geteuid() else {
                logger.warning("takeover connection refused: not root nor our user", metadata: ["uid": "\(uid)", "pid": "\(pid)"])
                close(c)
                continue
            }
            if session(TakeoverChannel(fd: c), peerPid: pid, hooks) { return }
        }
    }

    /// One successor. Returns true once handed over (the server is done).
    private func session(_ ch: TakeoverChannel, peerPid: Int32, _ hooks: Hooks) -> Bool {
        let hello: TakeoverHello
        do {
            let (type, payload) = try ch.receive(deadline: TakeoverChannel.deadline(TakeoverLimits.helloMs), doing: "waiting for hello")
            guard type == .hello else { throw SystemError("upgrade: expected hello, got \(type)", errno: EPROTO) }
            hello = try TakeoverChannel.decodeJSON(TakeoverHello.self, payload, what: "hello")
            guard hello.version == TakeoverLimits.protocolVersion else {
                let reason = "takeover protocol version \(hello.version); this stickyd speaks version \(TakeoverLimits.protocolVersion)"
                try? ch.sendJSON(.failed, TakeoverFailure(error: reason), deadline: TakeoverChannel.deadline(1000))
                throw SystemError("upgrade: \(reason)", errno: EPROTO)
            }
        } catch {
            logger.warning("takeover connection dropped before it started", metadata: ["pid": "\(peerPid)", "error": "\(error)"])
            return false
        }
        logger.notice("upgrade: successor connected; accepting paused for the hand-over", metadata: ["pid": "\(hello.pid)"])
        let offer: TakeoverOffer
        do {
            offer = try hooks.prepare()
        } catch {
            logger.error("upgrade: cannot prepare the hand-over; still serving", metadata: ["error": "\(error)"])
            try? ch.sendJSON(.failed, TakeoverFailure(error: "\(error)"), deadline: TakeoverChannel.deadline(1000))
            return false
        }
        // The successor already serves: its `ready` was lost and it waited
        // out `commitMs` (see below).
        var served = false
        do {
            let transfer = TakeoverChannel.deadline(TakeoverLimits.transferMs)
            try ch.sendJSON(.state, offer.state, fds: offer.fds, deadline: transfer)
            for shard in offer.affinity { try ch.send(.affinity, shard.encoded(), deadline: transfer) }
            let (type, payload) = try ch.receive(deadline: TakeoverChannel.deadline(TakeoverLimits.readyMs),
                                                 doing: "waiting for the successor to be ready")
            switch type {
            case .ready:
                break
            case .serving:
                logger.warning("upgrade: the successor serves without our commit (its ready was lost); letting go",
                               metadata: ["pid": "\(hello.pid)"])
                served = true
            case .failed:
                let f = try? TakeoverChannel.decodeJSON(TakeoverFailure.self, payload, what: "failure")
                throw SystemError("upgrade: the successor failed: \(f?.error ?? "no reason given")", errno: ECANCELED)
            default:
                throw SystemError("upgrade: expected ready, got \(type)", errno: EPROTO)
            }
        } catch {
            hooks.rollback("\(error)")
            return false
        }
        if !served {
            // Committed from here: this process never accepts again unless
            // the successor is gone before it serves.
            do {
                try ch.send(.commit, [], deadline: TakeoverChannel.deadline(TakeoverLimits.commitMs))
            } catch {
                logger.error("upgrade: could not send commit; the successor serves anyway once its wait is over",
                             metadata: ["error": "\(error)"])
            }
            if hello.confirms == true, let gone = awaitServing(ch, pid: hello.pid) {
                hooks.rollback(gone)
                return false
            }
        }
        hooks.commit(hello.pid)
        listener.handOnPath()
        if hello.confirms == true { handedChannel.withLock { $0 = ch } }
        return true
    }

    /// After `commit`: nil once the successor serves (it said so, or it
    /// lives and was silent for `servingMs`: its `serving` was lost);
    /// otherwise why it is gone (the connection closed first: it died
    /// before serving), and this process takes the service back.
    private func awaitServing(_ ch: TakeoverChannel, pid: Int32) -> String? {
        do {
            let (type, _) = try ch.receive(deadline: TakeoverChannel.deadline(TakeoverLimits.servingMs),
                                           doing: "waiting for the successor to serve")
            if type != .serving {
                logger.warning("upgrade: expected serving; taking the successor as serving", metadata: ["got": "\(type)"])
            }
            return nil
        } catch let e as SystemError where e.errno == ETIMEDOUT {
            logger.warning("upgrade: the successor did not confirm it serves; it lives and was told to, so letting go",
                           metadata: ["pid": "\(pid)", "waited_ms": "\(TakeoverLimits.servingMs)"])
            return nil
        } catch {
            return "the successor (pid \(pid)) went away after commit, before it served: \(error)"
        }
    }
}

// MARK: - New process: taking over

/// What a successor received from the running daemon.
struct TakeoverReceived {
    var state: TakeoverState
    /// Per listener of `state.listeners`, one descriptor per worker.
    var listenerFDs: [[Int32]]
    var affinity: [AffinityExport]
}

/// The successor's end. One user at a time: the main thread until the
/// hand-over, then the thread that follows the old daemon's loads.
final class TakeoverClient: @unchecked Sendable {
    let channel: TakeoverChannel
    let path: String

    /// Connects to the running daemon's takeover socket and receives its
    /// sockets and state. The old daemon pauses accepting from here on.
    init(path: String) throws {
        self.path = path
        let fd = UnixListener.connect(to: path)
        guard fd >= 0 else {
            throw SystemError("upgrade: cannot reach the running daemon's takeover socket \(path) (is stickyd running with takeover_socket set?)", errno: -fd)
        }
        channel = TakeoverChannel(fd: fd)
        try channel.sendJSON(.hello, TakeoverHello(version: TakeoverLimits.protocolVersion, pid: getpid(), confirms: true),
                             deadline: TakeoverChannel.deadline(TakeoverLimits.helloMs))
    }

    func receive() throws -> TakeoverReceived {
        let deadline = TakeoverChannel.deadline(TakeoverLimits.exportMs + TakeoverLimits.transferMs)
        let (type, payload) = try channel.receive(deadline: deadline, doing: "waiting for the running daemon's state")
        if type == .failed {
            let f = try? TakeoverChannel.decodeJSON(TakeoverFailure.self, payload, what: "failure")
            throw SystemError("upgrade: the running daemon refused: \(f?.error ?? "no reason given")", errno: ECANCELED)
        }
        guard type == .state else { throw SystemError("upgrade: expected state, got \(type)", errno: EPROTO) }
        let state = try TakeoverChannel.decodeJSON(TakeoverState.self, payload, what: "state")
        guard state.version == TakeoverLimits.protocolVersion else {
            throw SystemError("upgrade: running daemon speaks takeover version \(state.version); this stickyd speaks \(TakeoverLimits.protocolVersion)", errno: EPROTO)
        }
        guard state.workers >= 1, state.workers <= 4096 else {
            throw SystemError("upgrade: running daemon reports \(state.workers) workers", errno: EPROTO)
        }
        let fds = channel.takeFDs()
        guard fds.count == state.listeners.count * state.workers else {
            for f in fds { close(f) }
            throw SystemError("upgrade: received \(fds.count) sockets for \(state.listeners.count) listener(s) × \(state.workers) worker(s)", errno: EPROTO)
        }
        let perListener = state.listeners.indices.map { l in Array(fds[(l * state.workers)..<((l + 1) * state.workers)]) }
        var affinity: [AffinityExport] = []
        do {
            for _ in 0..<state.workers {
                let (t, blob) = try channel.receive(deadline: deadline, doing: "receiving the affinity table")
                guard t == .affinity else { throw SystemError("upgrade: expected affinity, got \(t)", errno: EPROTO) }
                do {
                    affinity.append(try AffinityExport.decode(blob))
                } catch {
                    throw SystemError("upgrade: \(error)", errno: EPROTO)
                }
            }
        } catch {
            for f in fds { close(f) }
            throw error
        }
        return TakeoverReceived(state: state, listenerFDs: perListener, affinity: affinity)
    }

    /// Tells the old daemon we are ready and waits for it to let go.
    /// Returns false when serving without its `commit`: it stayed silent
    /// for `commitMs` with the connection open (a rollback closes it, so
    /// it committed and the message was lost), or it died. Throws when it
    /// refused or rolled back: it serves, so we must not.
    func ready(oldPid: Int32) throws -> Bool {
        try channel.send(.ready, [], deadline: TakeoverChannel.deadline(TakeoverLimits.commitMs))
        do {
            let (type, payload) = try channel.receive(deadline: TakeoverChannel.deadline(TakeoverLimits.commitMs),
                                                      doing: "waiting for the running daemon to let go")
            switch type {
            case .commit:
                return true
            case .failed:
                let f = try? TakeoverChannel.decodeJSON(TakeoverFailure.self, payload, what: "failure")
                throw SystemError("upgrade: the running daemon refused: \(f?.error ?? "no reason given")", errno: ECANCELED)
            default:
                throw SystemError("upgrade: expected commit, got \(type)", errno: EPROTO)
            }
        } catch let e as SystemError where e.errno == ETIMEDOUT {
            return false
        } catch let e as SystemError where e.errno == ECONNRESET && !TakeoverClient.alive(oldPid) {
            return false
        }
    }

    /// Tells the old daemon we accept, so it lets go now. Best effort: an
    /// old daemon that does not wait for it has closed the connection.
    /// False if it could not be sent.
    @discardableResult
    func serving() -> Bool {
        (try? channel.send(.serving, [], deadline: TakeoverChannel.deadline(1000))) != nil
    }

    /// After the hand-over: the old daemon's loads, as they come, until it
    /// closes the connection (it exited); then `apply([])`, close, and
    /// return. A silence of `loadsSilenceMs` applies `[]` and reads on.
    /// Runs on its own thread.
    func followLoads(_ apply: ([TakeoverLoad]) -> Void) {
        while true {
            do {
                let (type, payload) = try channel.receive(deadline: TakeoverChannel.deadline(TakeoverLimits.loadsSilenceMs),
                                                          doing: "reading the old daemon's loads")
                guard type == .loads else { continue }
                apply(try TakeoverChannel.decodeJSON([TakeoverLoad].self, payload, what: "loads"))
            } catch let e as SystemError where e.errno == ETIMEDOUT {
                // Silent: count none of its connections, but keep reading.
                // Closing here would tell an old daemon still waiting for
                // `serving` (lost) that this successor went away.
                apply([])
            } catch {
                apply([])
                // The old daemon is gone (or spoke nonsense): nothing more
                // comes, and the descriptor would otherwise stay open.
                channel.closeNow()
                return
            }
        }
    }

    static func alive(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || errno == EPERM
    }

    /// Tells the old daemon we give up, so it accepts again at once.
    func fail(_ reason: String) {
        try? channel.sendJSON(.failed, TakeoverFailure(error: reason), deadline: TakeoverChannel.deadline(1000))
    }
}

import CURingShim
import Foundation
import Glibc
import Logging
import StickyCore
import StickyDataPlane
import Synchronization

/// `upgrade [BINARY]` (docs/ADMIN.md): the running daemon starts its own
/// successor with `--takeover` and answers once the hand-over is decided.
///
/// The successor is this process's child, so under systemd it is in the
/// unit's cgroup from its first instruction. The admin command waits
/// outside the admin lock: the hand-over's `prepare` takes that lock.
final class Upgrader: Sendable {
    /// How long the answer may take before the successor is stopped, unless
    /// a hand-over is under way then (its own deadlines bound it).
    static let outcomeMs: Millis = 90_000
    /// Hard ceiling, past every takeover deadline.
    static let outcomeCeilingMs: Millis = 180_000
    /// A successor told to stop has this long before SIGKILL.
    static let stopGraceMs: Millis = 5_000
    /// After the successor exits, how long its hand-over may take to roll back.
    static let rollbackSettleMs: Millis = 10_000

    /// This daemon's executable, resolved at start: after a package upgrade
    /// /proc/self/exe names the deleted old file, the path the new one.
    let executable: String?
    /// The daemon's arguments without `--takeover`; the successor gets them
    /// with `--takeover` added.
    let arguments: [String]
    let takeoverConfigured: Bool
    let logger: Logger
    let flags: HandoffFlags

    struct Attempt {
        var pid: Int32
        var reply: AdminPendingReply
        var json: Bool
        /// Why the hand-over was rolled back, if it was.
        var rollbackReason: String?
    }

    /// One upgrade at a time; set until the attempt fails (after success
    /// this process is finishing, and refuses a second one).
    let running = Atomic<Bool>(false)
    let attempt = Mutex<Attempt?>(nil)

    init(arguments: [String], takeoverConfigured: Bool, flags: HandoffFlags, logger: Logger) {
        executable = Upgrader.resolveExecutable(arguments.first ?? "")
        self.arguments = arguments.dropFirst().filter { $0 != "--takeover" }
        self.takeoverConfigured = takeoverConfigured
        self.flags = flags
        self.logger = logger
    }

    /// argv[0] as the shell found it: a path (made absolute against the
    /// working directory), else the first executable of that name on PATH;
    /// /proc/self/exe when neither works. A symlink is kept as such, so a
    /// package that repoints it is followed.
    static func resolveExecutable(_ argv0: String) -> String? {
        func executable(_ p: String) -> Bool {
            var st = stat()
            return stat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(p, X_OK) == 0
        }
        if argv0.contains("/") {
            let absolute = argv0.hasPrefix("/") ? argv0 : FileManager.default.currentDirectoryPath + "/" + argv0
            let p = URL(fileURLWithPath: absolute).standardized.path
            if executable(p) { return p }
        } else if !argv0.isEmpty {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            for dir in path.split(separator: ":") where dir.hasPrefix("/") {
                let p = "\(dir)/\(argv0)"
                if executable(p) { return p }
            }
        }
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func failure(_ reason: String, json: Bool) -> String {
        json ? AdminFormat.jsonError("upgrade failed: \(reason); still serving") : "error: upgrade failed: \(reason); still serving"
    }

    /// Checks, spawns and returns the pending answer (or an error at once).
    func start(binary: String?, json: Bool) -> AdminReply {
        guard running.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            let m = "an upgrade is already running"
            return AdminReply(json ? AdminFormat.jsonError(m) : "error: \(m)")
        }
        let reply: AdminReply
        switch launch(binary: binary, json: json) {
        case .success(let r): reply = r
        case .failure(let e):
            running.store(false, ordering: .releasing)
            logger.error("upgrade refused; still serving", metadata: ["error": "\(e.message)"])
            reply = AdminReply(Upgrader.failure(e.message, json: json))
        }
        return reply
    }

    func launch(binary: String?, json: Bool) -> Result<AdminReply, RegistryError> {
        guard takeoverConfigured else {
            return .failure(RegistryError("no takeover socket (takeover_socket is none), so no successor can take over"))
        }
        guard let path = binary ?? executable else {
            return .failure(RegistryError("this daemon's own executable could not be found at start; name the binary: upgrade /path/to/stickyd"))
        }
        var st = stat()
        if stat(path, &st) != 0 {
            return .failure(RegistryError("cannot use \(path): \(String(cString: strerror(errno)))"))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else { return .failure(RegistryError("\(path) is not a regular file")) }
        guard access(path, X_OK) == 0 else { return .failure(RegistryError("\(path) is not executable by this daemon's user")) }

        let argv = [path] + arguments + ["--takeover"]
        let reply = AdminPendingReply()
        // Under the attempt's lock: a successor quick enough to commit
        // before the record exists would find nothing to answer.
        let spawned: Result<Int32, RegistryError> = attempt.withLock { a in
            var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
            cArgs.append(nil)
            defer { for p in cArgs { free(p) } }
            var pid: Int32 = 0
            let rc = sticky_spawn(path, cArgs, &pid)
            guard rc == 0 else { return .failure(RegistryError("cannot start \(path): \(String(cString: strerror(-rc)))")) }
            a = Attempt(pid: pid, reply: reply, json: json, rollbackReason: nil)
            return .success(pid)
        }
        guard case .success(let pid) = spawned else {
            if case .failure(let e) = spawned { return .failure(e) }
            preconditionFailure("unreachable")
        }
        logger.notice("upgrade: started the successor", metadata: [
            "pid": "\(pid)", "executable": "\(path)", "arguments": "\(argv.dropFirst().joined(separator: " "))",
        ])
        let t = Thread { [self] in self.watch(pid: pid) }
        t.name = "stickyd-upgrade"
        t.start()
        return .success(AdminReply(pending: reply))
    }

    /// Takeover hook: the successor is serving. Runs before the main loop
    /// can see the hand-over, so the answer is out before the admin socket
    /// closes.
    func committed(successorPid: Int32) {
        let a = attempt.withLock { $0 }
        guard let a else { return }
        let text = "upgrade: pid \(successorPid) took over; this process (pid \(getpid())) is finishing its connections"
        a.reply.resolve(AdminFormat.render(UpgradeAnswer(message: text, successorPid: successorPid, pid: getpid()), json: a.json))
    }

    /// Takeover hook: kept for the answer, given once the successor exits.
    func rolledBack(_ reason: String) {
        attempt.withLock { $0?.rollbackReason = reason }
    }

    /// Waits for the outcome: a commit (answered by `committed`), the
    /// successor's exit (reaped here, so no zombie), or the deadline.
    func watch(pid: Int32) {
        let start = ControlPlane.monotonicMs()
        var reason: String?
        while true {
            // Handed over: the successor serves, but it is still our child
            // while this process finishes its connections; reap it if it
            // exits first, or it stays a zombie until we do.
            if flags.handedOver.load(ordering: .acquiring) || attempt.withLock({ $0?.reply.text != nil }) {
                reapAfterHandover(pid)
                return
            }
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid || (r < 0 && errno == ECHILD) {
                // A successor may commit and then die; the commit is what
                // counts, and the old daemon is already finishing.
                if flags.handedOver.load(ordering: .acquiring) { return }
                // A successor that took the sockets and failed sends its
                // reason, then exits: let the takeover thread read it and
                // roll back first (it sees the connection closed at once).
                let settle = ControlPlane.monotonicMs() + Upgrader.rollbackSettleMs
                while flags.inProgress.load(ordering: .acquiring) && ControlPlane.monotonicMs() < settle { usleep(10_000) }
                reason = "the successor (pid \(pid)) \(r == pid ? Upgrader.describe(status) : "is gone")"
                break
            }
            let elapsed = ControlPlane.monotonicMs() - start
            if elapsed >= Upgrader.outcomeCeilingMs || (elapsed >= Upgrader.outcomeMs && !flags.inProgress.load(ordering: .acquiring)) {
                stop(pid)
                reason = "the successor (pid \(pid)) did not take over within \(elapsed / 1000) s; it was stopped"
                break
            }
            usleep(20_000)
        }
        let a = attempt.withLock { a -> Attempt? in
            defer { a = nil }
            return a
        }
        var why = reason ?? "unknown"
        if let r = a?.rollbackReason { why += " (hand-over rolled back: \(r))" }
        logger.error("upgrade failed; still serving", metadata: ["reason": "\(why)"])
        running.store(false, ordering: .releasing)
        a?.reply.resolve(Upgrader.failure(why, json: a?.json ?? false))
    }

    /// Waits for a successor that took over (this thread has nothing else
    /// to do, and the process's exit ends it), and says how it ended: the
    /// service is gone with it, which the operator must hear of.
    func reapAfterHandover(_ pid: Int32) {
        var status: Int32 = 0
        var r: Int32
        repeat { r = waitpid(pid, &status, 0) } while r < 0 && errno == EINTR
        guard r == pid else { return }
        logger.error("upgrade: the successor that took over has ended; this process does not serve again, restart stickyd",
                     metadata: ["successor_pid": "\(pid)", "how": "\(Upgrader.describe(status))"])
    }

    /// SIGTERM, then SIGKILL after the grace; reaped either way.
    func stop(_ pid: Int32) {
        _ = kill(pid, SIGTERM)
        let deadline = ControlPlane.monotonicMs() + Upgrader.stopGraceMs
        var status: Int32 = 0
        while ControlPlane.monotonicMs() < deadline {
            if waitpid(pid, &status, WNOHANG) != 0 { return }
            usleep(20_000)
        }
        _ = kill(pid, SIGKILL)
        _ = waitpid(pid, &status, 0)
    }

    static func describe(_ status: Int32) -> String {
        let sig = status & 0x7F
        if sig == 0 { return "exited with status \((status >> 8) & 0xFF)" }
        return "was killed by signal \(sig)"
    }
}

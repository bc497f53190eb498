import ArgumentParser
import Foundation
import Glibc
import StickyCore

/// Exit statuses scripts can rely on (docs/ADMIN.md, "stickyctl").
enum CtlExit {
    /// The daemon refused the command (it answered with an error).
    static let refused: Int32 = 1
    /// Bad usage (ArgumentParser's errors are mapped to 2 too).
    static let usage: Int32 = 2
    /// The admin socket could not be reached.
    static let unreachable: Int32 = 3
    /// A wait (--wait, replace) ran out of time.
    static let timedOut: Int32 = 4
}

struct CtlFailure: Error {
    var status: Int32
    var message: String
}

/// Options every admin subcommand takes.
struct AdminOptions: ParsableArguments {
    @Option(name: .long, help: "Admin socket path (default $STICKYD_ADMIN_SOCKET or /run/stickyd/admin.sock). Repeat it to act on several instances.")
    var socket: [String] = []

    @OptionGroup var remote: RemoteOptions

    @Option(name: .long, help: ArgumentHelp(
        "Act on every instance listed in FILE: one per line, an admin socket path (starting with /) or HOST:PORT of a remote admin listener (with --cert, --key and --ca); # starts a comment.",
        valueName: "file"))
    var cluster: String?

    @Flag(name: .long, help: "Print the daemon's JSON answer instead of text.")
    var json = false

    /// The single socket used when no instance is named.
    static var defaultPath: String {
        ProcessInfo.processInfo.environment["STICKYD_ADMIN_SOCKET"] ?? StickyConfig.adminSocketDefault
    }

    func validate() throws {
        if !remote.remote.isEmpty && !remote.hasCredentials {
            throw ValidationError("--remote needs --cert, --key and --ca")
        }
        if remote.remote.isEmpty && cluster == nil && (remote.cert != nil || remote.key != nil || remote.ca != nil) {
            throw ValidationError("--cert, --key and --ca go with --remote (or a --cluster file that names remote instances)")
        }
    }

    /// The instances to act on, in the order given: the --cluster file's,
    /// then each --socket, then each --remote; the default socket when none
    /// is named. Usage errors (an unreadable file, a bad line, a name given
    /// twice) are thrown before any connection is made.
    func endpoints() throws -> [AdminEndpoint] {
        var list: [AdminEndpoint] = []
        if let cluster { list += try ClusterFile.load(cluster) }
        list += socket.map { .unix($0) }
        list += remote.remote.map { .remote($0) }
        if list.isEmpty { list = [.unix(AdminOptions.defaultPath)] }
        if list.contains(where: { if case .remote = $0 { return true } else { return false } }) && !remote.hasCredentials {
            throw CtlFailure(status: CtlExit.usage, message: "\(cluster ?? "--cluster") names remote instances: give --cert, --key and --ca")
        }
        var seen = Set<String>()
        for e in list where !seen.insert(e.description).inserted {
            throw CtlFailure(status: CtlExit.usage, message: "instance \(e) is named twice; each instance gets a command once")
        }
        return list
    }
}

/// One session on the admin socket: a line out, an answer (ended by an
/// empty line) back.
final class AdminSession {
    let connection: AdminConnection
    var buffer: [UInt8] = []
    /// The exit status when no answer comes in time: unreachable, unless
    /// the command itself is a wait (`upgrade`).
    var silenceStatus = CtlExit.unreachable
    /// How long `ask` waits for the next bytes of an answer. A daemon that
    /// stops answering must not hang a rollout script.
    var answerTimeoutSeconds = 30.0
    /// "INSTANCE: " before progress lines when several instances are at
    /// work, so that a wait's lines say whose they are.
    var label = ""

    /// Connects to one instance: a Unix socket, or a remote TLS listener.
    init(_ endpoint: AdminEndpoint, remote: RemoteOptions) throws {
        connection = try AdminConnection(endpoint, remote: remote)
    }

    /// How long `ask` waits for an answer (30 s unless changed).
    func setAnswerTimeout(seconds: Double) {
        answerTimeoutSeconds = seconds
    }

    /// Sends one command; returns the answer without its closing blank line.
    func ask(_ line: String) throws -> String {
        try connection.send(Array((line + "\n").utf8))
        while true {
            if let end = AdminSession.answerEnd(buffer) {
                let answer = String(decoding: buffer[..<end], as: UTF8.self)
                buffer.removeFirst(end + 2)
                return answer
            }
            guard let chunk = connection.receive(timeoutSeconds: answerTimeoutSeconds) else {
                throw CtlFailure(status: silenceStatus, message: "no answer from stickyd (timed out)")
            }
            guard !chunk.isEmpty else {
                throw CtlFailure(status: CtlExit.unreachable, message: "stickyd closed the admin session\(connection.inbox.why)")
            }
            buffer.append(contentsOf: chunk)
        }
    }

    /// Index of the "\n\n" that ends an answer.
    static func answerEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 2 else { return nil }
        for i in 0..<(b.count - 1) where b[i] == 10 && b[i + 1] == 10 { return i }
        return nil
    }

    /// Asks and fails on an error answer.
    func run(_ line: String, json: Bool) throws -> String {
        let answer = try ask(json ? "json " + line : line)
        if answer.hasPrefix("error: ") {
            throw CtlFailure(status: CtlExit.refused, message: String(answer.dropFirst(7)))
        }
        // Any other answer lacks the `error` field, so it does not decode.
        if json, let e = try? AdminJSON.decode(ErrorAnswer.self, from: answer) {
            throw CtlFailure(status: CtlExit.refused, message: e.error)
        }
        return answer
    }

    /// Asks with `json` and decodes the answer.
    func query<T: AdminAnswer>(_ line: String, as type: T.Type) throws -> T {
        try AdminSession.decode(try run(line, json: true), as: type, for: line)
    }

    static func decode<T: AdminAnswer>(_ answer: String, as type: T.Type, for line: String) throws -> T {
        do {
            return try AdminJSON.decode(type, from: answer)
        } catch {
            throw CtlFailure(status: CtlExit.refused, message: "unexpected answer to \(line): \(answer)")
        }
    }

    func target(_ address: String, pool: String?) throws -> TargetRow? {
        try query("show targets" + (pool.map { " \($0)" } ?? ""), as: TargetsAnswer.self).targets
            .first { $0.address == address && (pool == nil || $0.pool == pool) }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func poolPrefix(_ pool: String?) -> String { pool.map { "\($0) " } ?? "" }

// MARK: - Commands

struct Show: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show info, stats, targets or affinity.",
        discussion: "TOPIC is info, stats, targets [POOL], or affinity [POOL] [IP] [--limit N].")

    @OptionGroup var options: AdminOptions
    @Argument(help: "info, stats, targets or affinity, then its arguments.")
    var words: [String]
    @Option(name: .long, help: "For affinity: most entries to show.")
    var limit: Int?

    func run() throws {
        guard let topic = words.first, ["info", "stats", "targets", "affinity"].contains(topic) else {
            throw ValidationError("show takes info, stats, targets [POOL] or affinity [POOL] [IP]")
        }
        var line = "show " + words.joined(separator: " ")
        if let limit { line += " limit \(limit)" }
        try runAdmin(options, change: false) { try $0.run(line, json: options.json) }
    }
}

struct Add: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Add a target to a pool (it takes new clients at once).")
    @OptionGroup var options: AdminOptions
    @Argument(help: "Target address, ip:port.") var address: String
    @Option(help: "Pool (needed when there is more than one).") var pool: String?
    @Option(help: "Weight, 0-10000 (default 1).") var weight: Int?
    @Option(help: "Name shown in listings.") var name: String?

    func run() throws {
        var line = "add target \(poolPrefix(pool))\(address)"
        if let weight { line += " weight \(weight)" }
        if let name { line += " name \(name)" }
        try runAdmin(options, check: { try requireNoTarget($0, address, pool: pool) }) { try $0.run(line, json: options.json) }
    }
}

/// The target a per-target command acts on.
struct TargetArguments: ParsableArguments {
    @Argument(help: "Target address.") var address: String
    @Option(help: "Pool.") var pool: String?

    /// `<verb> target [<pool>] <address>`, the admin line's start.
    func line(_ verb: String) -> String { "\(verb) target \(poolPrefix(pool))\(address)" }

    /// The check before a change on several instances: the target is on it.
    func require(_ s: AdminSession) throws { try requireTarget(s, address, pool: pool) }
}

struct SetWeight: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set-weight", abstract: "Change a target's weight.")
    @OptionGroup var options: AdminOptions
    @OptionGroup var target: TargetArguments
    @Argument(help: "New weight, 0-10000.") var weight: Int

    func run() throws {
        try runAdmin(options, check: target.require) { try $0.run(target.line("set") + " weight \(weight)", json: options.json) }
    }
}

/// Polls until the target has no connections or its drain deadline has
/// passed and the cut is done; prints progress to stderr.
func waitDrained(_ s: AdminSession, address: String, pool: String?, waitTimeout: Double, quiet: Bool) throws -> String {
    let start = monotonicSeconds()
    var err = StandardErrorStream()
    var lastPrinted = -1.0
    while true {
        guard let t = try s.target(address, pool: pool) else {
            return "drained \(address): target is gone"
        }
        let conns = t.connections
        let left = t.drainRemainingMs.map { Double($0) / 1000 }
        // h2c pools: how the GOAWAYs stickyd sent are doing (docs/HTTP2.md).
        let goaways = t.goawaysSent.map { sent in
            "; GOAWAY sent to \(sent), \(t.goawayClosed ?? 0) closed after it" }
        if conns == 0 {
            if !quiet { print("", to: &err) }
            return "drained \(address): no connections left" + (goaways.map { " (\($0.dropFirst(2)))" } ?? "")
        }
        let elapsed = monotonicSeconds() - start
        if elapsed > waitTimeout {
            throw CtlFailure(status: CtlExit.timedOut, message: "\(address) still has \(conns) connection(s) after \(Int(waitTimeout))s of waiting")
        }
        if !quiet && elapsed - lastPrinted >= 1 {
            lastPrinted = elapsed
            let deadline = left.map { String(format: "deadline in %.0fs", $0) } ?? "no deadline"
            print("\(s.label)draining \(address): \(conns) connection(s) left, \(deadline)\(goaways ?? "")", to: &err)
        }
        // Every poll makes each worker count its pins per target (a table
        // walk), so ask twice a second, not more.
        usleep(500_000)
    }
}

struct Drain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drain a target: no new clients; with strict mode its pinned clients move too.",
        discussion: "With --wait, returns once the target has no connections (at the deadline the daemon closes what is left).")
    @OptionGroup var options: AdminOptions
    @OptionGroup var target: TargetArguments
    @Option(help: "strict (default) or sticky.") var mode: String?
    @Option(help: "Deadline, e.g. 60s.") var timeout: String?
    @Flag(help: "Wait until the target has no connections left.") var wait = false
    @Option(name: .customLong("wait-timeout"), help: "Give up waiting after this many seconds (default: drain deadline + 30).")
    var waitTimeout: Double?
    @Flag(help: "No progress lines.") var quiet = false

    func run() throws {
        var line = target.line("drain")
        if let mode { line += " mode \(mode)" }
        if let timeout { line += " timeout \(timeout)" }
        let deadlineS = Double(parseDuration(timeout ?? "") ?? 60_000) / 1000
        // The drain starts on every instance before the first wait, so
        // they drain together and the wait is the slowest one's.
        try withCluster(options, change: true) { c in
            try c.check(target.require)
            try c.step { try $0.run(line, json: options.json) }
            guard wait else { return }
            try c.step {
                try waitDrained($0, address: target.address, pool: target.pool, waitTimeout: waitTimeout ?? deadlineS + 30,
                                quiet: quiet)
            }
        }
    }
}

/// A command that is one admin verb on one target, nothing more: `ready`
/// and `maint` differ only in the verb and the help.
protocol TargetVerbCommand: ParsableCommand {
    /// The admin command's first word.
    static var verb: String { get }
    var options: AdminOptions { get }
    var target: TargetArguments { get }
}

extension TargetVerbCommand {
    func run() throws {
        try runAdmin(options, check: target.require) { try $0.run(target.line(Self.verb), json: options.json) }
    }
}

struct Ready: TargetVerbCommand {
    static let configuration = CommandConfiguration(abstract: "Put a target back in service (ends a drain or maintenance).")
    static let verb = "ready"
    @OptionGroup var options: AdminOptions
    @OptionGroup var target: TargetArguments
}

struct Maint: TargetVerbCommand {
    static let configuration = CommandConfiguration(abstract: "Take a target out of service at once (its clients move).")
    static let verb = "maint"
    @OptionGroup var options: AdminOptions
    @OptionGroup var target: TargetArguments
}

struct Remove: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a target (drain it first; --force cuts its connections).")
    @OptionGroup var options: AdminOptions
    @OptionGroup var target: TargetArguments
    @Flag(help: "Remove even with connections open (they are reset).") var force = false
    func run() throws {
        let force = force
        // Without --force the daemon refuses a target with connections;
        // with several instances, find that out before removing anywhere.
        let check = { (s: AdminSession) throws in
            guard let t = try s.target(target.address, pool: target.pool) else {
                throw CtlFailure(status: CtlExit.refused, message: "no target \(poolPrefix(target.pool))\(target.address)")
            }
            if !force && t.connections > 0 {
                throw CtlFailure(status: CtlExit.refused,
                                 message: "target \(target.address) still has \(t.connections) connection(s); drain it first or use --force")
            }
        }
        try runAdmin(options, check: check) { try $0.run(target.line("remove") + (force ? " force" : ""), json: options.json) }
    }
}

struct ClearAffinity: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "clear-affinity", abstract: "Forget pins: one client's, one target's, or all.")
    @OptionGroup var options: AdminOptions
    @Argument(help: "Client IP.") var client: String?
    @Option(help: "Pool.") var pool: String?
    @Option(help: "Forget every pin to this target.") var target: String?
    @Flag(help: "Forget every pin.") var all = false

    func run() throws {
        let scope: String
        switch (client, target, all) {
        case (let c?, nil, false): scope = c
        case (nil, let t?, false): scope = "target \(t)"
        case (nil, nil, true): scope = "all"
        default: throw ValidationError("give exactly one of CLIENT, --target ADDR or --all")
        }
        let line = "clear affinity \(poolPrefix(pool))\(scope)"
        // Decoded, so that a daemon whose answer lacks the count is an
        // error here rather than a count silently missing.
        try runAdmin(options) { options.json ? try $0.run(line, json: true) : try $0.query(line, as: ClearAffinityAnswer.self).text }
    }
}

struct Raw: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send one admin command line as it is (see `help`).")
    @OptionGroup var options: AdminOptions
    @Argument(help: "The command words.") var words: [String]
    func run() throws {
        // A `show` or `help` changes nothing: the instances that answer are
        // printed even if one does not. Anything else is a change.
        let read = ["show", "help"].contains(words.first ?? "")
        try runAdmin(options, change: !read) { try $0.run(words.joined(separator: " "), json: options.json) }
    }
}

struct Replace: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Roll one target over to another: add NEW, wait until it is ready, drain OLD and wait, remove OLD.",
        discussion: "Each step is printed; on failure the exit status says which kind (1 refused, 3 unreachable, 4 timed out) and nothing further is done.")
    @OptionGroup var options: AdminOptions
    @Argument(help: "Target to retire.") var old: String
    @Argument(help: "Target to bring in.") var new: String
    @Option(help: "Pool.") var pool: String?
    @Option(help: "Weight for NEW (default: OLD's).") var weight: Int?
    @Option(help: "Name for NEW.") var name: String?
    @Option(help: "Drain mode for OLD (default strict).") var mode: String?
    @Option(help: "Drain deadline for OLD, e.g. 60s.") var timeout: String?
    @Option(name: .customLong("ready-timeout"), help: "Seconds to wait for NEW to accept connections (default 30).")
    var readyTimeout: Double = 30
    @Flag(help: "No progress lines.") var quiet = false

    func run() throws {
        guard let newAddress = SocketAddress(new) else { throw ValidationError("NEW '\(new)' is not an address (ip:port)") }
        guard SocketAddress(old) != nil else { throw ValidationError("OLD '\(old)' is not an address (ip:port)") }
        // Each step runs on every instance before the next starts; a step
        // that fails anywhere stops the roll there (see `Cluster`).
        try withCluster(options, change: true) { c in
            // OLD on every instance, NEW on none: checked before anything
            // changes, also with one instance (nothing is added then).
            var pools: [String] = []
            var weights: [Int] = []
            let oneOnly = !c.labelled
            for (e, s) in zip(c.endpoints, c.sessions) {
                let at = oneOnly ? "" : "\(e): "
                guard let oldTarget = try s.target(old, pool: pool) else {
                    throw CtlFailure(status: CtlExit.refused, message: "\(at)no target \(old)")
                }
                let targetPool = pool ?? oldTarget.pool
                if !oneOnly { try requireNoTarget(s, new, pool: targetPool) }
                pools.append(targetPool)
                weights.append(weight ?? oldTarget.weight)
            }
            // 1. NEW must answer before it gets clients.
            let start = monotonicSeconds()
            while !acceptsConnections(newAddress) {
                if monotonicSeconds() - start > readyTimeout {
                    throw CtlFailure(status: CtlExit.timedOut, message: "\(new) did not accept connections within \(Int(readyTimeout))s; nothing changed")
                }
                usleep(200_000)
            }
            var i = 0
            func each(_ body: (AdminSession, String, Int) throws -> String) throws {
                i = 0
                try c.step { s in
                    defer { i += 1 }
                    return try body(s, pools[i], weights[i])
                }
            }
            try each { s, targetPool, w in
                var add = "add target \(poolPrefix(targetPool))\(new) weight \(w)"
                if let name { add += " name \(name)" }
                return try s.run(add, json: false)
            }
            // 2. Drain OLD everywhere, then wait for its last connection.
            try each { s, targetPool, _ in
                var drain = "drain target \(poolPrefix(targetPool))\(old)"
                if let mode { drain += " mode \(mode)" }
                if let timeout { drain += " timeout \(timeout)" }
                return try s.run(drain, json: false)
            }
            let deadlineS = Double(parseDuration(timeout ?? "") ?? 60_000) / 1000
            try each { s, targetPool, _ in
                try waitDrained(s, address: old, pool: targetPool, waitTimeout: deadlineS + 30, quiet: quiet)
            }
            // 3. Remove it.
            try each { s, targetPool, _ in try s.run("remove target \(poolPrefix(targetPool))\(old)", json: false) }
        }
    }
}

struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Upgrade the running daemon in place: it starts BINARY (default: its own executable) with --takeover, which takes over its sockets, targets and affinity without dropping a connection.",
        discussion: "Install the new binary first. Prints the outcome, then waits until the admin socket answers from the new pid. Exit status: 0 took over, 1 failed (the old daemon still serves), 3 unreachable, 4 no outcome or no answer from the new pid in time.")
    @OptionGroup var options: AdminOptions
    @Argument(help: "The new stickyd executable, an absolute path (default: the path the daemon was started from).")
    var binary: String?
    @Option(help: "Seconds to wait for the outcome and for the new daemon to answer (default 120).")
    var timeout: Double = 120

    func validate() throws {
        if let binary, !binary.hasPrefix("/") {
            throw ValidationError("BINARY '\(binary)' must be an absolute path (the daemon does not share this working directory)")
        }
        guard timeout > 0, timeout <= 3600 else { throw ValidationError("--timeout takes 1 to 3600 seconds") }
    }

    func run() throws {
        // One host at a time (docs/SCALING.md): each upgrade is watched to
        // its end, and a failed one should stop the rollout.
        let endpoints: [AdminEndpoint]
        do {
            endpoints = try options.endpoints()
        } catch let f as CtlFailure {
            Cluster.report(f)
            throw ExitCode(f.status)
        }
        guard endpoints.count == 1, let endpoint = endpoints.first else {
            throw ValidationError("upgrade acts on one instance; upgrade a cluster one host at a time (docs/SCALING.md)")
        }
        let start = monotonicSeconds()
        var successorPid: Int32 = 0
        try runAdmin(options) { s in
            s.setAnswerTimeout(seconds: timeout)
            s.silenceStatus = CtlExit.timedOut
            let line = "upgrade" + (binary.map { " \($0)" } ?? "")
            let answer = try s.run(line, json: true)
            let upgrade = try AdminSession.decode(answer, as: UpgradeAnswer.self, for: line)
            successorPid = upgrade.successorPid
            return options.json ? answer : upgrade.message
        }
        // The successor renames its admin socket over the old one once it
        // serves; until then the old daemon (or nobody) answers there.
        var lastSeen = "no answer"
        while monotonicSeconds() - start < timeout {
            if let session = try? AdminSession(endpoint, remote: options.remote) {
                session.setAnswerTimeout(seconds: 5)
                if let pid = try? session.query("show info", as: InfoAnswer.self).pid {
                    if pid == successorPid {
                        if !options.json { print("pid \(successorPid) answers on \(endpoint)") }
                        return
                    }
                    lastSeen = "pid \(pid) answers"
                }
            }
            usleep(100_000)
        }
        var err = StandardErrorStream()
        print("stickyctl: pid \(successorPid) took over but does not answer on \(endpoint) after \(Int(timeout))s (\(lastSeen))", to: &err)
        throw ExitCode(CtlExit.timedOut)
    }
}

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
    @Option(name: .long, help: "Admin socket path (default $STICKYD_ADMIN_SOCKET or /run/stickyd/admin.sock).")
    var socket: String?

    @OptionGroup var remote: RemoteOptions

    @Flag(name: .long, help: "Print the daemon's JSON answer instead of text.")
    var json = false

    var path: String {
        socket ?? ProcessInfo.processInfo.environment["STICKYD_ADMIN_SOCKET"] ?? StickyConfig.adminSocketDefault
    }

    /// Where the daemon is reached, for messages.
    var endpoint: String { remote.remote ?? path }

    func validate() throws {
        if remote.remote != nil && socket != nil { throw ValidationError("give --socket or --remote, not both") }
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

    /// Connects to the Unix socket, or with --remote to the TLS listener.
    init(_ options: AdminOptions) throws {
        connection = try AdminConnection(path: options.path, remote: options.remote)
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

/// Runs an admin subcommand body, turning failures into exit statuses.
func runAdmin(_ options: AdminOptions, _ body: (AdminSession) throws -> String?) throws {
    do {
        let session = try AdminSession(options)
        if let out = try body(session), !out.isEmpty { print(out) }
    } catch let f as CtlFailure {
        var err = StandardErrorStream()
        print("stickyctl: \(f.message)", to: &err)
        throw ExitCode(f.status)
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
        try runAdmin(options) { try $0.run(line, json: options.json) }
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
        try runAdmin(options) { try $0.run(line, json: options.json) }
    }
}

/// The target a per-target command acts on.
struct TargetArguments: ParsableArguments {
    @Argument(help: "Target address.") var address: String
    @Option(help: "Pool.") var pool: String?

    /// `<verb> target [<pool>] <address>`, the admin line's start.
    func line(_ verb: String) -> String { "\(verb) target \(poolPrefix(pool))\(address)" }
}

struct SetWeight: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "set-weight", abstract: "Change a target's weight.")
    @OptionGroup var options: AdminOptions
    @OptionGroup var target: TargetArguments
    @Argument(help: "New weight, 0-10000.") var weight: Int

    func run() throws {
        try runAdmin(options) { try $0.run(target.line("set") + " weight \(weight)", json: options.json) }
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
            print("draining \(address): \(conns) connection(s) left, \(deadline)\(goaways ?? "")", to: &err)
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
        try runAdmin(options) { s in
            let first = try s.run(line, json: options.json)
            guard wait else { return first }
            print(first)
            let deadlineS = Double(parseDuration(timeout ?? "") ?? 60_000) / 1000
            return try waitDrained(s, address: target.address, pool: target.pool, waitTimeout: waitTimeout ?? deadlineS + 30,
                                   quiet: quiet)
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
    func run() throws { try runAdmin(options) { try $0.run(target.line(Self.verb), json: options.json) } }
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
        try runAdmin(options) { try $0.run(target.line("remove") + (force ? " force" : ""), json: options.json) }
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
    func run() throws { try runAdmin(options) { try $0.run(words.joined(separator: " "), json: options.json) } }
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
        try runAdmin(options) { s in
            guard let oldTarget = try s.target(old, pool: pool) else {
                throw CtlFailure(status: CtlExit.refused, message: "no target \(old)")
            }
            let targetPool = pool ?? oldTarget.pool
            // 1. NEW must answer before it gets clients.
            let start = monotonicSeconds()
            while !acceptsConnections(newAddress) {
                if monotonicSeconds() - start > readyTimeout {
                    throw CtlFailure(status: CtlExit.timedOut, message: "\(new) did not accept connections within \(Int(readyTimeout))s; nothing changed")
                }
                usleep(200_000)
            }
            var add = "add target \(poolPrefix(targetPool))\(new) weight \(weight ?? oldTarget.weight)"
            if let name { add += " name \(name)" }
            print(try s.run(add, json: false))
            // 2. Drain OLD and wait for its last connection.
            var drain = "drain target \(poolPrefix(targetPool))\(old)"
            if let mode { drain += " mode \(mode)" }
            if let timeout { drain += " timeout \(timeout)" }
            print(try s.run(drain, json: false))
            let deadlineS = Double(parseDuration(timeout ?? "") ?? 60_000) / 1000
            print(try waitDrained(s, address: old, pool: targetPool, waitTimeout: deadlineS + 30, quiet: quiet))
            // 3. Remove it.
            return try s.run("remove target \(poolPrefix(targetPool))\(old)", json: false)
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
            if let session = try? AdminSession(options) {
                session.setAnswerTimeout(seconds: 5)
                if let pid = try? session.query("show info", as: InfoAnswer.self).pid {
                    if pid == successorPid {
                        if !options.json { print("pid \(successorPid) answers on \(options.endpoint)") }
                        return
                    }
                    lastSeen = "pid \(pid) answers"
                }
            }
            usleep(100_000)
        }
        var err = StandardErrorStream()
        print("stickyctl: pid \(successorPid) took over but does not answer on \(options.endpoint) after \(Int(timeout))s (\(lastSeen))", to: &err)
        throw ExitCode(CtlExit.timedOut)
    }
}

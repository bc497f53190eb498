/// One admin command, parsed. The grammar is one command per line, words
/// separated by blanks, as in HAProxy's runtime API; `docs/ADMIN.md` is the
/// reference for each command.
public enum AdminCommand: Equatable, Sendable {
    case help
    case quit
    case showInfo
    case showStats
    case showTargets(pool: String?)
    case addTarget(pool: String?, address: SocketAddress, weight: Int?, name: String?)
    case setWeight(pool: String?, address: SocketAddress, weight: Int)
    case drain(pool: String?, address: SocketAddress, mode: DrainMode?, timeoutMs: Millis?)
    case ready(pool: String?, address: SocketAddress)
    case maint(pool: String?, address: SocketAddress)
    case remove(pool: String?, address: SocketAddress, force: Bool)
    case showAffinity(pool: String?, client: IPAddress?, limit: Int?)
    case clearAffinity(pool: String?, scope: AffinityScope)
    /// Starts a successor (`binary`, else the daemon's own executable) that
    /// takes over; the daemon itself runs it (docs/OPERATIONS.md, "Upgrade").
    case upgrade(binary: String?)
    /// Several instances (docs/SCALING.md): the peer links, and the VIP.
    case showPeers
    case withdraw
    case announce

    /// Whether the command changes state (and so is persisted and needs the
    /// operator privilege rather than the read-only one).
    public var mutates: Bool {
        switch self {
        case .help, .quit, .showInfo, .showStats, .showTargets, .showAffinity, .showPeers: return false
        case .addTarget, .setWeight, .drain, .ready, .maint, .remove, .clearAffinity, .upgrade, .withdraw, .announce: return true
        }
    }
}

/// Which affinity entries `clear affinity` removes.
public enum AffinityScope: Equatable, Sendable {
    case client(IPAddress)
    case target(SocketAddress)
    case all
}

/// A command and how to answer it.
public struct AdminRequest: Equatable, Sendable {
    public var command: AdminCommand
    /// The line began with `json `: answer with one JSON document.
    public var json: Bool
    public init(command: AdminCommand, json: Bool) {
        self.command = command
        self.json = json
    }
}

/// Why a line is not a command. The message is meant for the operator and
/// ends up on the error line as it is.
public struct AdminParseError: Error, Equatable, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public enum AdminGrammar {
    /// Longest line accepted. Longer lines are answered with an error and
    /// discarded up to the next newline, so one bad client costs bounded
    /// memory.
    public static let lineBytesMax = 4096
    /// Ceiling for `limit` in `show affinity`: answers stay bounded.
    public static let affinityLimitMax = 100_000
    public static let weightMax = 10_000
    /// `drain ... timeout` is less than this: the config's ceiling for every
    /// timeout (30 days; past that a timer is a typo). The registry adds it
    /// to the clock, so an unbounded one (`timeout 106751991167d`) overflowed.
    public static let drainTimeoutCeilingMs: Millis = 30 * 86_400_000

    /// One line per command, in the order of the docs.
    public static let synopsis: [String] = [
        "help",
        "show info",
        "show stats",
        "show targets [<pool>]",
        "add target [<pool>] <addr:port> [weight <n>] [name <name>]",
        "set target [<pool>] <addr:port> weight <n>",
        "drain target [<pool>] <addr:port> [mode strict|sticky] [timeout <duration>]",
        "ready target [<pool>] <addr:port>",
        "maint target [<pool>] <addr:port>",
        "remove target [<pool>] <addr:port> [force]",
        "show affinity [<pool>] [<ip>] [limit <n>]",
        "clear affinity [<pool>] <ip> | target <addr:port> | all",
        "upgrade [<binary>]",
        "quit",
    ]

    /// Listed by `help` only on an instance with `peers:` or `vip:`.
    public static let clusterSynopsis: [String] = [
        "show peers",
        "withdraw",
        "announce",
    ]

    public static func parse(_ line: Substring) -> Result<AdminRequest, AdminParseError> {
        var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })[...]
        guard !words.isEmpty else { return .failure(AdminParseError("empty command; try 'help'")) }
        let printable = { (c: Character) -> Bool in
            guard let v = c.asciiValue else { return false }
            return v >= 0x20 && v < 0x7F
        }
        if words.contains(where: { !$0.allSatisfy(printable) }) {
            return .failure(AdminParseError("commands are printable ASCII; got a control or non-ASCII byte"))
        }
        var json = false
        if words.first == "json" {
            json = true
            words = words.dropFirst()
            guard !words.isEmpty else { return .failure(AdminParseError("'json' must be followed by a command")) }
        }
        return parseCommand(&words).map { AdminRequest(command: $0, json: json) }
    }

    static func parseCommand(_ w: inout ArraySlice<Substring>) -> Result<AdminCommand, AdminParseError> {
        let verb = w.popFirst()!
        switch verb {
        case "help":
            return finish(.help, w)
        case "quit", "exit":
            return finish(.quit, w)
        case "show":
            switch w.popFirst() {
            case "info": return finish(.showInfo, w)
            case "stats": return finish(.showStats, w)
            case "targets":
                let pool = w.popFirst().map(String.init)
                if let pool, let e = checkPoolName(pool) { return .failure(e) }
                return finish(.showTargets(pool: pool), w)
            case "affinity":
                return parseShowAffinity(&w)
            case "peers": return finish(.showPeers, w)
            case let other:
                return .failure(AdminParseError("unknown 'show' topic '\(other ?? "")'; expected info, stats, targets, affinity or peers"))
            }
        case "withdraw":
            return finish(.withdraw, w)
        case "announce":
            return finish(.announce, w)
        case "add":
            guard w.popFirst() == "target" else { return .failure(AdminParseError("expected 'add target'")) }
            return parseTarget(&w, usage: synopsis[4]).flatMap { pool, address in
                var weight: Int?
                var name: String?
                while let key = w.popFirst() {
                    switch key {
                    case "weight":
                        switch parseWeight(w.popFirst()) {
                        case .success(let n): weight = n
                        case .failure(let e): return .failure(e)
                        }
                    case "name":
                        guard let n = w.popFirst() else { return .failure(AdminParseError("'name' needs a value")) }
                        if let e = checkTargetName(String(n)) { return .failure(e) }
                        name = String(n)
                    default:
                        return .failure(AdminParseError("unexpected '\(key)'; usage: \(synopsis[4])"))
                    }
                }
                return .success(.addTarget(pool: pool, address: address, weight: weight, name: name))
            }
        case "set":
            guard w.popFirst() == "target" else { return .failure(AdminParseError("expected 'set target'")) }
            return parseTarget(&w, usage: synopsis[5]).flatMap { pool, address in
                guard w.popFirst() == "weight" else { return .failure(AdminParseError("usage: \(synopsis[5])")) }
                return parseWeight(w.popFirst()).flatMap { finish(.setWeight(pool: pool, address: address, weight: $0), w) }
            }
        case "drain":
            guard w.popFirst() == "target" else { return .failure(AdminParseError("expected 'drain target'")) }
            return parseTarget(&w, usage: synopsis[6]).flatMap { pool, address in
                var mode: DrainMode?
                var timeout: Millis?
                while let key = w.popFirst() {
                    switch key {
                    case "mode":
                        guard let v = w.popFirst(), let m = DrainMode(rawValue: String(v)) else {
                            return .failure(AdminParseError("'mode' takes strict or sticky"))
                        }
                        mode = m
                    case "timeout":
                        guard let v = w.popFirst(), let ms = parseDuration(String(v)), ms > 0, ms < drainTimeoutCeilingMs else {
                            return .failure(AdminParseError("'timeout' takes a duration such as 30s or 5m, less than \(formatDuration(drainTimeoutCeilingMs))"))
                        }
                        timeout = ms
                    default:
                        return .failure(AdminParseError("unexpected '\(key)'; usage: \(synopsis[6])"))
                    }
                }
                return .success(.drain(pool: pool, address: address, mode: mode, timeoutMs: timeout))
            }
        case "ready":
            guard w.popFirst() == "target" else { return .failure(AdminParseError("expected 'ready target'")) }
            return parseTarget(&w, usage: synopsis[7]).flatMap { finish(.ready(pool: $0, address: $1), w) }
        case "maint":
            guard w.popFirst() == "target" else { return .failure(AdminParseError("expected 'maint target'")) }
            return parseTarget(&w, usage: synopsis[8]).flatMap { finish(.maint(pool: $0, address: $1), w) }
        case "remove":
            guard w.popFirst() == "target" else { return .failure(AdminParseError("expected 'remove target'")) }
            return parseTarget(&w, usage: synopsis[9]).flatMap { pool, address in
                var force = false
                if w.first == "force" {
                    force = true
                    w = w.dropFirst()
                }
                return finish(.remove(pool: pool, address: address, force: force), w)
            }
        case "upgrade":
            guard let binary = w.popFirst() else { return .success(.upgrade(binary: nil)) }
            // Relative to what? The daemon's working directory is not the
            // operator's, so only an absolute path means one file.
            guard binary.hasPrefix("/") else {
                return .failure(AdminParseError("'\(binary)' is not an absolute path; usage: \(synopsis[12]) (the new stickyd executable)"))
            }
            return finish(.upgrade(binary: String(binary)), w)
        case "clear":
            guard w.popFirst() == "affinity" else { return .failure(AdminParseError("expected 'clear affinity'")) }
            return parseClearAffinity(&w)
        default:
            return .failure(AdminParseError("unknown command '\(verb)'; try 'help'"))
        }
    }

    /// Succeeds with `command` only if nothing is left on the line: a
    /// trailing word is a mistake worth pointing out, not ignoring.
    static func finish(_ command: AdminCommand, _ rest: ArraySlice<Substring>) -> Result<AdminCommand, AdminParseError> {
        if let extra = rest.first {
            return .failure(AdminParseError("unexpected '\(extra)' after the command"))
        }
        return .success(command)
    }

    /// `[<pool>] <addr:port>`: a word that parses as an address is the
    /// target; otherwise it is a pool name and the address follows.
    static func parseTarget(_ w: inout ArraySlice<Substring>, usage: String) -> Result<(String?, SocketAddress), AdminParseError> {
        guard let first = w.popFirst() else { return .failure(AdminParseError("missing target address; usage: \(usage)")) }
        if let a = SocketAddress(String(first)) { return .success((nil, a)) }
        // A word that looks like an address is a bad address, not a pool
        // name: say what is wrong with it.
        if first.contains(":") || first.contains("[") || IPAddress(parsing: first) != nil {
            return .failure(AdminParseError(badAddress(first)))
        }
        guard let second = w.popFirst() else {
            return .failure(AdminParseError("'\(first)' is not an address (ip:port, or [v6]:port); usage: \(usage)"))
        }
        if let e = checkPoolName(String(first)) { return .failure(e) }
        guard let a = SocketAddress(String(second)) else {
            return .failure(AdminParseError(badAddress(second)))
        }
        return .success((String(first), a))
    }

    static func badAddress(_ word: Substring) -> String {
        if IPAddress(parsing: word) != nil {
            return "'\(word)' is not an address: the port is missing (ip:port, or [v6]:port)"
        }
        return "'\(word)' is not an address (ip:port with port 1-65535, or [v6]:port)"
    }

    static func parseWeight(_ word: Substring?) -> Result<Int, AdminParseError> {
        guard let word, let n = Int(word), n >= 0, n <= weightMax else {
            return .failure(AdminParseError("'weight' takes an integer from 0 to \(weightMax)"))
        }
        return .success(n)
    }

    static func parseShowAffinity(_ w: inout ArraySlice<Substring>) -> Result<AdminCommand, AdminParseError> {
        var pool: String?
        var client: IPAddress?
        var limit: Int?
        while let word = w.popFirst() {
            if word == "limit" {
                guard let v = w.popFirst(), let n = Int(v), n > 0, n <= affinityLimitMax else {
                    return .failure(AdminParseError("'limit' takes an integer from 1 to \(affinityLimitMax)"))
                }
                limit = n
            } else if let ip = IPAddress(parsing: word) {
                client = ip
            } else if pool == nil && client == nil {
                if let e = checkPoolName(String(word)) { return .failure(e) }
                pool = String(word)
            } else {
                return .failure(AdminParseError("unexpected '\(word)'; usage: \(synopsis[10])"))
            }
        }
        return .success(.showAffinity(pool: pool, client: client, limit: limit))
    }

    static func parseClearAffinity(_ w: inout ArraySlice<Substring>) -> Result<AdminCommand, AdminParseError> {
        var pool: String?
        guard var word = w.popFirst() else { return .failure(AdminParseError("usage: \(synopsis[11])")) }
        if word != "all" && word != "target" && IPAddress(parsing: word) == nil {
            if let e = checkPoolName(String(word)) { return .failure(e) }
            pool = String(word)
            guard let next = w.popFirst() else { return .failure(AdminParseError("usage: \(synopsis[11])")) }
            word = next
        }
        if word == "all" { return finish(.clearAffinity(pool: pool, scope: .all), w) }
        if word == "target" {
            guard let v = w.popFirst(), let a = SocketAddress(String(v)) else {
                return .failure(AdminParseError("'clear affinity target' takes an address (ip:port)"))
            }
            return finish(.clearAffinity(pool: pool, scope: .target(a)), w)
        }
        guard let ip = IPAddress(parsing: word) else {
            return .failure(AdminParseError("'\(word)' is not an IP address; usage: \(synopsis[11])"))
        }
        return finish(.clearAffinity(pool: pool, scope: .client(ip)), w)
    }

    /// Names as the config allows them: letters, digits, '.', '_', '-'.
    static func isName(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 64 && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "_" || $0 == "-") }
    }

    static func checkPoolName(_ s: String) -> AdminParseError? {
        isName(s) ? nil : AdminParseError("'\(s)' is not a pool name (1-64 of letters, digits, '.', '_', '-')")
    }

    static func checkTargetName(_ s: String) -> AdminParseError? {
        isName(s) ? nil : AdminParseError("'\(s)' is not a target name (1-64 of letters, digits, '.', '_', '-')")
    }
}

import Foundation

/// One admin answer, in both of its forms: `text` for people and `socat`,
/// and its `Codable` form for `json` requests. The daemon encodes these and
/// stickyctl decodes them, so the JSON field names below are the protocol
/// (docs/ADMIN.md, section 3).
public protocol AdminAnswer: Codable, Sendable {
    var text: String { get }
}

/// The JSON form of admin answers: one line (an answer ends at the first
/// empty line), keys sorted so that answers diff well.
public enum AdminJSON {
    public static func encode(_ answer: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(answer), let line = String(data: data, encoding: .utf8) else {
            return #"{"error":"internal: unencodable answer"}"#
        }
        return line
    }

    public static func decode<T: Decodable>(_ type: T.Type, from line: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(line.utf8))
    }
}

/// A JSON key known only at run time (`show stats`, `show info`).
struct AnswerKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ name: String) { stringValue = name }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

/// `help`: one synopsis per command.
public struct HelpAnswer: AdminAnswer, Equatable {
    public var commands: [String]
    public init(commands: [String]) { self.commands = commands }
    public var text: String { commands.joined(separator: "\n") }
}

/// A command that was carried out: `ok: <message>`, or `bye` for `quit`.
public struct ResultAnswer: AdminAnswer, Equatable {
    public var result: String
    public var message: String?

    public init(result: String, message: String?) {
        self.result = result
        self.message = message
    }

    public static func ok(_ message: String) -> ResultAnswer { ResultAnswer(result: "ok", message: message) }
    public static let bye = ResultAnswer(result: "bye", message: nil)

    public var text: String { message.map { "\(result): \($0)" } ?? result }
}

/// `clear affinity`: a `ResultAnswer` (`result`, `message`) that also says
/// how many pins were removed, so a client that reads only those two keys
/// still understands it.
public struct ClearAffinityAnswer: AdminAnswer, Equatable {
    public var result = "ok"
    public var message: String
    /// Pins removed, summed over the workers that answered. Pins whose
    /// client has a connection open are not removed, and not counted.
    public var removed: Int
    /// Workers that did not answer within the report timeout (left out
    /// when none): they clear their share when they get to the command,
    /// and `removed` is then a lower bound.
    public var workersLate: Int?

    enum CodingKeys: String, CodingKey {
        case result, message, removed
        case workersLate = "workers_late"
    }

    public init(removed: Int, workersLate: Int = 0) {
        self.removed = removed
        self.workersLate = workersLate > 0 ? workersLate : nil
        let entries = removed == 1 ? "1 entry" : "\(removed) entries"
        var m = "affinity cleared: \(entries) removed (entries with open connections stay until they close)"
        if workersLate > 0 {
            m += "; \(workersLate) worker(s) did not answer in time, so at least \(entries): check with show affinity"
        }
        message = m
    }

    public var text: String { "\(result): \(message)" }
}

/// A refused or malformed command. One line; the session goes on.
public struct ErrorAnswer: AdminAnswer, Equatable {
    public var error: String
    public init(_ error: String) { self.error = error }
    public var text: String { "error: \(error)" }
}

/// `upgrade`, once the successor has taken over.
public struct UpgradeAnswer: AdminAnswer, Equatable {
    public var result = "ok"
    public var message: String
    public var successorPid: Int32
    /// The process that answers: the one that is now finishing its
    /// connections.
    public var pid: Int32

    enum CodingKeys: String, CodingKey {
        case result, message, pid
        case successorPid = "successor_pid"
    }

    public init(message: String, successorPid: Int32, pid: Int32) {
        self.message = message
        self.successorPid = successorPid
        self.pid = pid
    }

    public var text: String { message }
}

/// `show info`. Every value is a string on the wire (docs/ADMIN.md), as in
/// the text form, which lists the fields in `Key` order.
public struct InfoAnswer: AdminAnswer, Equatable {
    public var version: String
    public var pid: Int32
    public var uptimeS: Int64
    public var workers: Int
    public var engine: String
    public var pools: Int
    public var targets: Int
    public var connectionsActive: UInt64
    public var connectionsAccepted: UInt64
    public var maxConnections: Int
    /// nil when the daemon runs without a state directory (`none`).
    public var stateFile: String?
    /// nil while the state file is written fine (`none`).
    public var stateFileError: String?

    public init(version: String, pid: Int32, uptimeS: Int64, workers: Int, engine: String, pools: Int, targets: Int,
                connectionsActive: UInt64, connectionsAccepted: UInt64, maxConnections: Int,
                stateFile: String?, stateFileError: String?) {
        self.version = version
        self.pid = pid
        self.uptimeS = uptimeS
        self.workers = workers
        self.engine = engine
        self.pools = pools
        self.targets = targets
        self.connectionsActive = connectionsActive
        self.connectionsAccepted = connectionsAccepted
        self.maxConnections = maxConnections
        self.stateFile = stateFile
        self.stateFileError = stateFileError
    }

    enum Key: String, CodingKey {
        case version, pid, workers, engine, pools, targets
        case uptimeS = "uptime_s"
        case connectionsActive = "connections_active"
        case connectionsAccepted = "connections_accepted"
        case maxConnections = "max_connections"
        case stateFile = "state_file"
        case stateFileError = "state_file_error"
    }

    static let none = "none"

    /// The fields as the text answer lists them.
    var fields: [(Key, String)] {
        [
            (.version, version), (.pid, "\(pid)"), (.uptimeS, "\(uptimeS)"), (.workers, "\(workers)"),
            (.engine, engine), (.pools, "\(pools)"), (.targets, "\(targets)"),
            (.connectionsActive, "\(connectionsActive)"), (.connectionsAccepted, "\(connectionsAccepted)"),
            (.maxConnections, "\(maxConnections)"), (.stateFile, stateFile ?? Self.none),
            (.stateFileError, stateFileError ?? Self.none),
        ]
    }

    public var text: String { fields.map { "\($0.0.rawValue): \($0.1)" }.joined(separator: "\n") }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        for (key, value) in fields { try c.encode(value, forKey: key) }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        func number<T: LosslessStringConvertible>(_ key: Key) throws -> T {
            let s = try c.decode(String.self, forKey: key)
            guard let n = T(s) else {
                throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "'\(s)' is not a number")
            }
            return n
        }
        func optional(_ key: Key) throws -> String? {
            let s = try c.decode(String.self, forKey: key)
            return s == Self.none ? nil : s
        }
        version = try c.decode(String.self, forKey: .version)
        pid = try number(.pid)
        uptimeS = try number(.uptimeS)
        workers = try number(.workers)
        engine = try c.decode(String.self, forKey: .engine)
        pools = try number(.pools)
        targets = try number(.targets)
        connectionsActive = try number(.connectionsActive)
        connectionsAccepted = try number(.connectionsAccepted)
        maxConnections = try number(.maxConnections)
        stateFile = try optional(.stateFile)
        stateFileError = try optional(.stateFileError)
    }
}

/// `show stats`: `CounterTable`'s figures that have a `stat` key, in the
/// table's order. On the wire, one object of integers.
public struct StatsAnswer: AdminAnswer, Equatable {
    public struct Entry: Equatable, Sendable {
        public var key: String
        public var value: UInt64
        public init(_ key: String, _ value: UInt64) {
            self.key = key
            self.value = value
        }
    }

    public var entries: [Entry]
    public init(entries: [Entry]) { self.entries = entries }

    public subscript(key: String) -> UInt64? { entries.first { $0.key == key }?.value }

    public var text: String { entries.map { "\($0.key): \($0.value)" }.joined(separator: "\n") }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: AnswerKey.self)
        for e in entries { try c.encode(e.value, forKey: AnswerKey(e.key)) }
    }

    /// A JSON object has no order: decoded entries are sorted by key.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: AnswerKey.self)
        entries = try c.allKeys.map { Entry($0.stringValue, try c.decode(UInt64.self, forKey: $0)) }
            .sorted { $0.key < $1.key }
    }
}

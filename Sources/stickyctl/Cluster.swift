import ArgumentParser
import Foundation
import Glibc
import StickyCore

/// One instance stickyctl talks to: its admin socket, or its remote admin
/// listener (HOST:PORT, over mutual TLS).
enum AdminEndpoint: CustomStringConvertible, Equatable {
    case unix(String)
    case remote(String)

    var description: String {
        switch self {
        case .unix(let path): return path
        case .remote(let hostPort): return hostPort
        }
    }
}

/// `--cluster FILE`: the instances, one per line. A line that starts with
/// `/` is an admin socket path, anything else HOST:PORT of a remote admin
/// listener. Blank lines and `#` comments are skipped. Plain lines rather
/// than YAML, so that `ls /run/stickyd-*/admin.sock > cluster` or an
/// inventory tool's output is a cluster file as it is.
enum ClusterFile {
    /// Beyond this many instances a file is more likely a mistake (a log
    /// given by accident) than a cluster; each instance is one connection.
    static let maxInstances = 256

    static func load(_ file: String) throws -> [AdminEndpoint] {
        guard let data = FileManager.default.contents(atPath: file) else {
            let why = access(file, R_OK) == 0 ? "cannot read it" : String(cString: strerror(errno))
            throw CtlFailure(status: CtlExit.usage, message: "--cluster \(file): \(why)")
        }
        return try parse(String(decoding: data, as: UTF8.self), file: file)
    }

    static func parse(_ text: String, file: String) throws -> [AdminEndpoint] {
        var list: [AdminEndpoint] = []
        for (n, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = (raw.firstIndex(of: "#").map { raw[..<$0] } ?? raw[...]).trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            func bad(_ why: String) -> CtlFailure {
                CtlFailure(status: CtlExit.usage, message: "--cluster \(file) line \(n + 1): '\(line)' \(why)")
            }
            if line.contains(where: { $0 == " " || $0 == "\t" }) { throw bad("is more than one word; give one instance per line") }
            if line.hasPrefix("/") {
                list.append(.unix(line))
            } else if RemoteOptions.split(line) != nil {
                list.append(.remote(line))
            } else {
                throw bad("is neither a socket path (starting with /) nor HOST:PORT")
            }
            if list.count > maxInstances { throw bad("is past the limit of \(maxInstances) instances") }
        }
        guard !list.isEmpty else { throw CtlFailure(status: CtlExit.usage, message: "--cluster \(file): names no instance") }
        return list
    }
}

/// The instances one command acts on, connected. With one instance,
/// stickyctl behaves as it always has (unlabelled output, the daemon's own
/// error). With several:
/// - every instance is connected first; for a change, one that cannot be
///   reached means nothing is done anywhere;
/// - `check` runs read-only checks on every instance (the target exists,
///   ...) and, if any fails, nothing is changed anywhere;
/// - `step` then sends the change to every instance, including those after
///   one that refused it (the instances are independent; stopping halfway
///   would leave them differing for sure), prints each answer under a
///   `==> INSTANCE <==` header, and fails naming every instance that failed.
/// A multi-step command (replace, drain --wait) finishes a step on all
/// instances before the next, and does not start the next after a failure.
final class Cluster {
    let endpoints: [AdminEndpoint]
    var sessions: [AdminSession] = []
    let json: Bool
    /// How many instances were named, reached or not: several are labelled
    /// even when only one of them answers.
    let named: Int

    var labelled: Bool { named > 1 }

    private init(endpoints: [AdminEndpoint], named: Int, json: Bool) {
        self.endpoints = endpoints
        self.named = named
        self.json = json
    }

    /// Connects to every instance. A read goes ahead with those that
    /// answer; the rest are reported and make the exit status non-zero.
    static func connect(_ options: AdminOptions, change: Bool) throws -> (Cluster, [CtlFailure]) {
        let all = try options.endpoints()
        var reached: [AdminEndpoint] = []
        var sessions: [AdminSession] = []
        var failures: [CtlFailure] = []
        for e in all {
            do {
                sessions.append(try AdminSession(e, remote: options.remote))
                reached.append(e)
            } catch let f as CtlFailure {
                // A certificate that does not load fails every instance alike.
                if f.status == CtlExit.usage || all.count == 1 { throw f }
                report(f)
                failures.append(f)
            }
        }
        if change && !failures.isEmpty {
            throw CtlFailure(status: failures[0].status,
                             message: "nothing changed: \(failures.count) of \(all.count) instances cannot be reached")
        }
        if all.count > 1 { for (e, s) in zip(reached, sessions) { s.label = "\(e): " } }
        let c = Cluster(endpoints: reached, named: all.count, json: options.json)
        c.sessions = sessions
        return (c, failures)
    }

    static func report(_ f: CtlFailure) {
        var err = StandardErrorStream()
        print("stickyctl: \(f.message)", to: &err)
    }

    /// Read-only checks on every instance before any change; skipped with
    /// one instance, whose own answer to the change says the same.
    func check(_ body: (AdminSession) throws -> Void) throws {
        guard labelled else { return }
        var failed: [String] = []
        var first: CtlFailure?
        for (e, s) in zip(endpoints, sessions) {
            do {
                try body(s)
            } catch let f as CtlFailure {
                Cluster.report(CtlFailure(status: f.status, message: "\(e): \(f.message)"))
                failed.append(e.description)
                first = first ?? f
            }
        }
        if let first {
            throw CtlFailure(status: first.status, message:
                "nothing changed: the check failed on \(failed.count) of \(named) instances (\(failed.joined(separator: ", ")))")
        }
    }

    /// Runs `body` on every instance and prints each answer; throws after
    /// all have run if any failed. With one instance, its failure as it is.
    func step(_ body: (AdminSession) throws -> String?) throws {
        guard labelled else {
            if let out = try body(sessions[0]), !out.isEmpty { print(out) }
            return
        }
        var failed: [String] = []
        var first: CtlFailure?
        for (e, s) in zip(endpoints, sessions) {
            do {
                let out = try body(s) ?? ""
                emit(e, out)
            } catch let f as CtlFailure {
                Cluster.report(CtlFailure(status: f.status, message: "\(e): \(f.message)"))
                failed.append(e.description)
                first = first ?? f
            }
        }
        if let first {
            throw CtlFailure(status: first.status,
                             message: "failed on \(failed.count) of \(named) instances (\(failed.joined(separator: ", ")))")
        }
    }

    /// One instance's answer: under a header (as `tail` labels several
    /// files), or with --json as one object per line that names it.
    func emit(_ e: AdminEndpoint, _ out: String) {
        if json && out.hasPrefix("{") {
            let name = String(decoding: (try? JSONEncoder().encode(e.description)) ?? Data("\"\"".utf8), as: UTF8.self)
            print("{\"instance\":\(name),\"answer\":\(out)}")
        } else {
            print("==> \(e) <==")
            if !out.isEmpty { print(out) }
        }
    }
}

/// Connects to the instances and runs `body`, turning failures into exit
/// statuses. A failure's status is the first failing instance's
/// (CtlExit: 1 refused, 3 unreachable, 4 timed out).
func withCluster(_ options: AdminOptions, change: Bool, _ body: (Cluster) throws -> Void) throws {
    do {
        let (cluster, unreachable) = try Cluster.connect(options, change: change)
        try body(cluster)
        if let first = unreachable.first {
            throw CtlFailure(status: first.status, message: "\(unreachable.count) of \(cluster.named) instances did not answer")
        }
    } catch let f as CtlFailure {
        Cluster.report(f)
        throw ExitCode(f.status)
    }
}

/// The usual admin command: optional read-only `check`, then `body` on
/// every instance (see `Cluster`). A read (`change: false`) prints what the
/// reachable instances answer.
func runAdmin(_ options: AdminOptions, change: Bool = true, check: ((AdminSession) throws -> Void)? = nil,
              _ body: (AdminSession) throws -> String?) throws {
    try withCluster(options, change: change) { c in
        if change, let check { try c.check(check) }
        try c.step(body)
    }
}

/// A check: the target is on this instance.
func requireTarget(_ s: AdminSession, _ address: String, pool: String?) throws {
    guard try s.target(address, pool: pool) != nil else {
        throw CtlFailure(status: CtlExit.refused, message: "no target \(poolPrefix(pool))\(address)")
    }
}

/// A check: the target is not on this instance yet.
func requireNoTarget(_ s: AdminSession, _ address: String, pool: String?) throws {
    if let t = try s.target(address, pool: pool) {
        throw CtlFailure(status: CtlExit.refused, message: "target \(address) is already in pool \(t.pool)")
    }
}

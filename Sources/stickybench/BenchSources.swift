import CURing
import Glibc
import StickyCore
import StickyDataPlane

/// The client source addresses of `stickybench`: from `--sources`
/// (addresses and CIDR blocks, comma-separated), `--source-list FILE` (one
/// address or block a line, `#` comments), or the loopback default.
enum BenchSources {
    /// More clients than this would only measure the client's memory.
    static let clientsMax = 1 << 20
    /// The default block: all of 127.0.0.0/8 is local on Linux, and this
    /// part of it is never anybody's listener.
    static let defaultBlock = "127.1.0.0/16"

    struct ParseError: Error, CustomStringConvertible {
        var description: String
    }

    /// Appends the addresses of `text` ("10.0.0.5", "127.1.0.0/16",
    /// "fd00::/112") to `out`, stopping at `limit` addresses in all.
    static func expand(_ text: Substring, into out: inout [IPAddress], limit: Int) throws {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let ip = IPAddress(parsing: parts[0]) else {
            throw ParseError(description: "'\(text)' is not an IP address or CIDR block")
        }
        let bits = ip.isV4 ? 32 : 128
        var prefix = bits
        if parts.count == 2 {
            guard let p = Int(parts[1]), p >= 0, p <= bits else {
                throw ParseError(description: "'\(text)': the prefix length must be 0...\(bits)")
            }
            prefix = p
        }
        let hostBits = bits - prefix
        // Only the first `limit` addresses are ever used, so a /8 costs no more than a /16.
        let room = limit - out.count
        guard room > 0 else { return }
        let size = hostBits >= 62 ? Int.max : 1 << hostBits
        let n = min(size, room)
        switch ip {
        case .v4(let v):
            let mask: UInt32 = hostBits == 32 ? 0 : ~((UInt32(1) << UInt32(hostBits)) - 1)
            let base = v & mask
            for i in 0..<n { out.append(.v4(base &+ UInt32(i))) }
        case .v6(let hi, let lo):
            // Blocks wider than 64 host bits only ever use their low 64 bits here.
            let loMask: UInt64 = hostBits >= 64 ? 0 : ~((UInt64(1) << UInt64(hostBits)) - 1)
            let hiMask: UInt64 = hostBits <= 64 ? ~0 : (hostBits >= 128 ? 0 : ~((UInt64(1) << UInt64(hostBits - 64)) - 1))
            let baseHi = hi & hiMask
            let baseLo = lo & loMask
            for i in 0..<n { out.append(.v6(hi: baseHi, lo: baseLo &+ UInt64(i))) }
        }
    }

    /// Parses `--sources` values (each comma-separated).
    static func parse(list values: [String], limit: Int) throws -> [IPAddress] {
        var out: [IPAddress] = []
        for v in values {
            for item in v.split(separator: ",") {
                let t = item.trimmingSpaces
                if t.isEmpty { continue }
                try expand(t, into: &out, limit: limit)
            }
        }
        return out
    }

    /// Reads a `--source-list` file: one address or block a line, `#`
    /// starts a comment. Errors name the file and line.
    static func read(file path: String, limit: Int) throws -> [IPAddress] {
        guard let f = fopen(path, "r") else {
            throw ParseError(description: "\(path): \(String(cString: strerror(errno)))")
        }
        defer { fclose(f) }
        var out: [IPAddress] = []
        var lineNumber = 0
        var line: UnsafeMutablePointer<CChar>? = nil
        var cap = 0
        defer { free(line) }
        while getline(&line, &cap, f) >= 0 {
            lineNumber += 1
            var text = Substring(String(cString: line!))
            if let hash = text.firstIndex(of: "#") { text = text[..<hash] }
            let t = text.trimmingSpaces
            if t.isEmpty { continue }
            do {
                try expand(t, into: &out, limit: limit)
            } catch let e as ParseError {
                throw ParseError(description: "\(path):\(lineNumber): \(e.description)")
            }
            if out.count >= limit { break }
        }
        return out
    }

    /// Binds a throwaway socket to `ip` to learn early, with a clear message,
    /// that a source address is not local (rather than count a million
    /// EADDRNOTAVAIL errors).
    static func checkBindable(_ ip: IPAddress) -> String? {
        let fd = socket(ip.isV4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return "socket: \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_IP), IP_BIND_ADDRESS_NO_PORT, &one, socklen_t(MemoryLayout<Int32>.size))
        var (ss, len) = Sockets.storage(for: SocketAddress(ip: ip, port: 0))
        let rc = withUnsafePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        return rc == 0 ? nil : "cannot bind source address \(ip): \(String(cString: strerror(errno)))"
    }
}

fileprivate extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let c = s.first, c == " " || c == "\t" || c == "\r" || c == "\n" { s = s.dropFirst() }
        while let c = s.last, c == " " || c == "\t" || c == "\r" || c == "\n" { s = s.dropLast() }
        return s
    }
}

/// Whether `ip` is a loopback address (127.0.0.0/8 or ::1).
func benchIsLoopback(_ ip: IPAddress) -> Bool {
    switch ip {
    case .v4(let v): return v >> 24 == 127
    case .v6(let hi, let lo): return hi == 0 && lo == 1
    }
}

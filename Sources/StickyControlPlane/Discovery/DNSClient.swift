import Glibc
import StickyCore
import StickyDataPlane

/// A stub resolver for discovery: one question to each configured resolver
/// in turn, over UDP, and over TCP when the answer comes back truncated.
/// Plain blocking sockets on the discovery thread, each wait bounded by
/// `poll`, each answer by its size: no C resolver, no cache, no search list.
enum DNSClient {
    /// Per resolver and transport. A local resolver answers in
    /// milliseconds; a remote one that takes longer is treated as failing.
    static let timeoutMs: Int32 = 2_000

    /// The first answer a resolver gives that is not SERVFAIL or REFUSED
    /// (those ask the next resolver); the last error if none gives one.
    static func query(_ name: String, _ type: DNSType, resolvers: [StickyCore.SocketAddress]) -> Result<DNSResponse, DNSError> {
        var last = DNSError("no resolver")
        for r in resolvers {
            let id = UInt16.random(in: 0...UInt16.max)
            let message: [UInt8]
            do {
                message = try DNSMessage.query(id: id, name: name, type: type)
            } catch let e as DNSError {
                return .failure(e)
            } catch {
                return .failure(DNSError("\(error)"))
            }
            var result = udp(message, id: id, to: r)
            if case .success(let answer) = result, answer.truncated { result = tcp(message, id: id, to: r) }
            switch result {
            case .success(let answer) where answer.rcode == DNSRCode.servFail.rawValue || answer.rcode == DNSRCode.refused.rawValue:
                last = DNSError("\(r): \(answer.rcode == DNSRCode.servFail.rawValue ? "SERVFAIL" : "REFUSED")")
            case .success(let answer):
                return .success(answer)
            case .failure(let e):
                last = DNSError("\(r): \(e)")
            }
        }
        return .failure(last)
    }

    static func udp(_ message: [UInt8], id: UInt16, to resolver: StickyCore.SocketAddress) -> Result<DNSResponse, DNSError> {
        let fd = socket(resolver.ip.isV4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(DNSError("socket: \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        // Connected: only the resolver's own datagrams are delivered.
        var (ss, len) = Sockets.storage(for: resolver)
        let connected = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) } }
        guard connected == 0 else { return .failure(DNSError("connect: \(String(cString: strerror(errno)))")) }
        guard send(fd, message, message.count, 0) == message.count else {
            return .failure(DNSError("send: \(String(cString: strerror(errno)))"))
        }
        let deadline = ControlPlane.monotonicMs() + Millis(timeoutMs)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let left = deadline - ControlPlane.monotonicMs()
            guard left > 0, wait(fd, events: Int16(POLLIN), ms: Int32(left)) else { return .failure(DNSError("timed out (udp)")) }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return .failure(DNSError("recv: \(String(cString: strerror(errno)))"))
            }
            // A stray or forged datagram (wrong id, not a response) is
            // skipped; the wait goes on to the deadline.
            guard let answer = try? DNSMessage.parse(Array(buffer[0..<n])), answer.id == id else { continue }
            return .success(answer)
        }
    }

    static func tcp(_ message: [UInt8], id: UInt16, to resolver: StickyCore.SocketAddress) -> Result<DNSResponse, DNSError> {
        let fd = socket(resolver.ip.isV4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return .failure(DNSError("socket: \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        let deadline = ControlPlane.monotonicMs() + Millis(timeoutMs)
        func left() -> Int32 { Int32(max(0, deadline - ControlPlane.monotonicMs())) }
        var (ss, len) = Sockets.storage(for: resolver)
        let rc = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) } }
        if rc != 0 {
            guard errno == EINPROGRESS, wait(fd, events: Int16(POLLOUT), ms: left()) else { return .failure(DNSError("connect (tcp): timed out or refused")) }
            var err: Int32 = 0
            var errLen = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errLen)
            guard err == 0 else { return .failure(DNSError("connect (tcp): \(String(cString: strerror(err)))")) }
        }
        let framed = [UInt8(message.count >> 8), UInt8(message.count & 0xFF)] + message
        var sent = 0
        while sent < framed.count {
            guard wait(fd, events: Int16(POLLOUT), ms: left()) else { return .failure(DNSError("timed out (tcp send)")) }
            let n = framed[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno != EAGAIN && errno != EINTR { return .failure(DNSError("send (tcp): \(String(cString: strerror(errno)))")) }
            if n > 0 { sent += n }
        }
        // The length prefix bounds the answer to 65535 bytes.
        var got: [UInt8] = []
        var need = 2
        var buffer = [UInt8](repeating: 0, count: 65_537)
        while got.count < need {
            guard wait(fd, events: Int16(POLLIN), ms: left()) else { return .failure(DNSError("timed out (tcp)")) }
            let n = recv(fd, &buffer, need - got.count, 0)
            if n == 0 { return .failure(DNSError("closed before the whole answer (tcp)")) }
            if n < 0 {
                if errno == EAGAIN || errno == EINTR { continue }
                return .failure(DNSError("recv (tcp): \(String(cString: strerror(errno)))"))
            }
            got += buffer[0..<n]
            if got.count == 2 && need == 2 { need = 2 + (Int(got[0]) << 8 | Int(got[1])) }
        }
        do {
            let answer = try DNSMessage.parse(Array(got[2...]))
            guard answer.id == id else { return .failure(DNSError("answer for another query (tcp)")) }
            return .success(answer)
        } catch {
            return .failure(DNSError("bad answer (tcp): \(error)"))
        }
    }

    static func wait(_ fd: Int32, events: Int16, ms: Int32) -> Bool {
        guard ms > 0 else { return false }
        var p = pollfd(fd: fd, events: events, revents: 0)
        let n = poll(&p, 1, ms)
        return n > 0 && p.revents & (events | Int16(POLLERR) | Int16(POLLHUP)) != 0
    }
}

/// One round of a DNS discovery: SRV (and the addresses of its hosts), or
/// A and AAAA with the configured port. The outcome follows `DNSOutcome`.
enum DNSRound {
    static func run(_ d: DNSDiscoveryConfig) -> DNSOutcome {
        d.port == nil ? srv(d) : addresses(d)
    }

    static func srv(_ d: DNSDiscoveryConfig) -> DNSOutcome {
        let answer: DNSResponse
        switch DNSClient.query(d.name, .srv, resolvers: d.resolvers) {
        case .failure(let e): return .failed("SRV \(d.name): \(e)")
        case .success(let a): answer = a
        }
        if answer.rcode == DNSRCode.nxDomain.rawValue { return .missing("SRV \(d.name): NXDOMAIN") }
        guard answer.rcode == DNSRCode.noError.rawValue else { return .failed("SRV \(d.name): rcode \(answer.rcode)") }
        let preferred = DNSTargets.preferred(answer.answers)
        guard !preferred.isEmpty else { return .missing("SRV \(d.name): no records") }
        var ttl = preferred.map(\.ttl).min() ?? 0
        var hosts: [String: [IPAddress]] = [:]
        for host in Set(preferred.map(\.host)).sorted().prefix(DNSTargets.hostsMax) {
            // The resolver often sends the hosts' addresses along.
            var found = DNSTargets.addresses(of: host, in: answer.additionals)
            if found.isEmpty {
                for type in [DNSType.a, .aaaa] {
                    switch DNSClient.query(host, type, resolvers: d.resolvers) {
                    case .failure(let e):
                        // Half an answer would drain the rest: keep the last whole one.
                        return .failed("\(type == .a ? "A" : "AAAA") \(host): \(e)")
                    case .success(let a):
                        found += DNSTargets.addresses(of: host, in: a.answers)
                        ttl = min(ttl, a.answers.map(\.ttl).min() ?? ttl)
                    }
                }
            }
            hosts[host] = found
        }
        let endpoints = DNSTargets.endpoints(preferred, addresses: hosts)
        return endpoints.isEmpty ? .missing("SRV \(d.name): its hosts have no addresses") : .found(endpoints, ttlSeconds: ttl)
    }

    static func addresses(_ d: DNSDiscoveryConfig) -> DNSOutcome {
        var ips: [IPAddress] = []
        var ttl = UInt32.max
        var missing = 0
        for type in [DNSType.a, .aaaa] {
            switch DNSClient.query(d.name, type, resolvers: d.resolvers) {
            case .failure(let e): return .failed("\(type == .a ? "A" : "AAAA") \(d.name): \(e)")
            case .success(let a):
                if a.rcode == DNSRCode.nxDomain.rawValue { missing += 1; continue }
                guard a.rcode == DNSRCode.noError.rawValue else { return .failed("\(d.name): rcode \(a.rcode)") }
                // CNAMEs are followed by the resolver: the address records
                // carry the canonical name, so take every address answered.
                for r in a.answers { if case .address(let ip) = r.data { ips.append(ip); ttl = min(ttl, r.ttl) } }
            }
        }
        guard !ips.isEmpty, let port = d.port else { return .missing("\(d.name): \(missing > 0 ? "NXDOMAIN" : "no A or AAAA records")") }
        var seen = Set<IPAddress>()
        let endpoints = ips.filter { seen.insert($0).inserted }
            .map { DiscoveredEndpoint(address: StickyCore.SocketAddress(ip: $0, port: UInt16(port)), ready: true) }
        return .found(endpoints, ttlSeconds: ttl)
    }
}

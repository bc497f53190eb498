import Glibc
import Logging
import StickyCore
import StickyDataPlane

/// The start-up pull: before it says ready, an instance (a takeover
/// successor too) asks one member for its whole table, so that the clients
/// the others already placed keep their targets here. Blocking and plain
/// (it runs before any loop exists), and bounded by `peers.sync_timeout`
/// over all members: with every member down the instance starts without a
/// table, and says so.
enum PeerSync {
    struct Result {
        var member: String
        var pins: [String: [PeerPin]]
        var count: Int
    }

    /// The first member that answers in time; nil if none did.
    static func pull(_ config: PeersConfig, fingerprint: UInt64, tls: PeerTLS?, logger: Logger) -> Result? {
        let deadline = SystemClock().nowMs() + config.syncTimeoutMs
        for m in config.members {
            let left = deadline - SystemClock().nowMs()
            guard left > 0 else { break }
            do {
                if let tls {
                    return try pullTLS(from: m, name: config.name, fingerprint: fingerprint, tls: tls, deadline: deadline)
                }
                return try pull(from: m, name: config.name, fingerprint: fingerprint, deadline: deadline)
            } catch {
                logger.notice("peer table pull failed; trying the next member",
                              metadata: ["member": "\(m.name)", "address": "\(m.address)", "error": "\(error)"])
            }
        }
        return nil
    }

    static func pull(from m: PeersConfig.Member, name: String, fingerprint: UInt64, deadline: Millis) throws -> Result {
        let fd = socket(m.address.ip.isV4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SystemError("socket", errno: errno) }
        defer { close(fd) }
        func setTimeout() {
            let ms = max(1, deadline - SystemClock().nowMs())
            var tv = timeval(tv_sec: Int(ms / 1000), tv_usec: Int(ms % 1000) * 1000)
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        setTimeout()
        var (ss, len) = Sockets.storage(for: m.address)
        let rc = withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, len) } }
        guard rc == 0 else { throw SystemError("connect to \(m.address)", errno: errno) }
        var hello = PeerWire.encode(.hello(name: name, fingerprint: fingerprint)) + PeerWire.encode(.syncRequest)
        guard send(fd, &hello, hello.count, Int32(MSG_NOSIGNAL)) == hello.count else { throw SystemError("send", errno: errno) }
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        var table = Table(member: m.name, fingerprint: fingerprint)
        while true {
            guard SystemClock().nowMs() < deadline else { throw SystemError("no whole table before peers.sync_timeout", errno: ETIMEDOUT) }
            if let done = try table.take(&buffer) { return done }
            setTimeout()
            let n = recv(fd, &chunk, chunk.count, 0)
            if n == 0 { throw SystemError("closed before the table ended", errno: ECONNRESET) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError("recv", errno: errno)
            }
            buffer += chunk[0..<n]
        }
    }

    /// A member's answer to a sync request, as it arrives.
    struct Table {
        let member: String
        let fingerprint: UInt64
        var pins: [String: [PeerPin]] = [:]
        var count = 0
        var greeted = false

        /// Takes the whole frames in `buffer`; the result once the table has ended.
        mutating func take(_ buffer: inout [UInt8]) throws -> Result? {
            while let message = try PeerWire.decodeFrame(&buffer) {
                switch message {
                case .hello(let who, let fp):
                    guard who == member else { throw SystemError("answered as '\(who)', not '\(member)'", errno: EPROTO) }
                    guard fp == fingerprint else { throw SystemError("a different hash_key", errno: EPROTO) }
                    greeted = true
                case .pins(let pool, _, let batch) where greeted:
                    pins[pool, default: []] += batch
                    count += batch.count
                case .syncEnd where greeted:
                    return Result(member: member, pins: pins, count: count)
                default:
                    break
                }
            }
            return nil
        }
    }
}

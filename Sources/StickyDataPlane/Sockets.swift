import CURing
import CURingShim
import Glibc
import StickyCore

/// Socket helpers. Each names the system calls it makes; EINTR cannot occur
/// in any of them on non-blocking sockets, so none retries.
public enum Sockets {
    /// Fills a `sockaddr_storage` for `address`; returns its length.
    public static func storage(for address: SocketAddress) -> (sockaddr_storage, socklen_t) {
        var ss = sockaddr_storage()
        switch address.ip {
        case .v4(let v):
            return withUnsafeMutablePointer(to: &ss) { p in
                p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    sin.pointee.sin_family = sa_family_t(AF_INET)
                    sin.pointee.sin_port = address.port.bigEndian
                    sin.pointee.sin_addr.s_addr = v.bigEndian
                }
                return (p.pointee, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        case .v6(let hi, let lo):
            return withUnsafeMutablePointer(to: &ss) { p in
                p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    sin6.pointee.sin6_family = sa_family_t(AF_INET6)
                    sin6.pointee.sin6_port = address.port.bigEndian
                    withUnsafeMutableBytes(of: &sin6.pointee.sin6_addr) { raw in
                        raw.storeBytes(of: hi.bigEndian, toByteOffset: 0, as: UInt64.self)
                        raw.storeBytes(of: lo.bigEndian, toByteOffset: 8, as: UInt64.self)
                    }
                }
                return (p.pointee, socklen_t(MemoryLayout<sockaddr_in6>.size))
            }
        }
    }

    /// Decodes a kernel socket address; nil for families other than IP.
    public static func address(from ss: sockaddr_storage) -> SocketAddress? {
        var copy = ss
        return withUnsafePointer(to: &copy) { p -> SocketAddress? in
            switch Int32(p.pointee.ss_family) {
            case AF_INET:
                return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    SocketAddress(ip: .v4(UInt32(bigEndian: sin.pointee.sin_addr.s_addr)),
                                  port: UInt16(bigEndian: sin.pointee.sin_port))
                }
            case AF_INET6:
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin6 in
                    var a = sin6.pointee.sin6_addr
                    let (hi, lo) = withUnsafeBytes(of: &a) { raw in
                        (UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
                         UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
                    }
                    // Clients of a dual-stack socket show up v4-mapped; key
                    // them as the IPv4 clients they are.
                    if hi == 0 && lo >> 32 == 0xFFFF {
                        return SocketAddress(ip: .v4(UInt32(truncatingIfNeeded: lo)), port: UInt16(bigEndian: sin6.pointee.sin6_port))
                    }
                    return SocketAddress(ip: .v6(hi: hi, lo: lo), port: UInt16(bigEndian: sin6.pointee.sin6_port))
                }
            default:
                return nil
            }
        }
    }

    /// getpeername(2). Multishot accept cannot return addresses, so the
    /// loop asks once per connection.
    public static func peer(of fd: Int32) -> SocketAddress? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &len) }
        }
        return rc == 0 ? address(from: ss) : nil
    }

    /// getsockname(2): the address a socket is bound to (for port 0 binds).
    public static func local(of fd: Int32) -> SocketAddress? {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return rc == 0 ? address(from: ss) : nil
    }

    @inline(__always)
    public static func setInt(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) -> Bool {
        var v = value
        return setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) == 0
    }

    /// setsockopt(TCP_NODELAY). Proxied request/response traffic (gRPC) must
    /// not wait on Nagle; accepted sockets inherit it from the listener.
    @discardableResult
    public static func setNoDelay(_ fd: Int32) -> Bool {
        setInt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
    }

    /// setsockopt(SO_LINGER {1, 0}): the next close(2) sends RST instead of
    /// FIN. Used to pass a reset on to the other side.
    public static func setResetOnClose(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    /// socket(2) for a stream socket of `family`: non-blocking and
    /// close-on-exec. -1 (errno set) when none can be made.
    public static func stream(family: Int32) -> Int32 {
        socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    /// socket(2) + setsockopt + bind(2) + listen(2) for one worker's member
    /// of a SO_REUSEPORT group. Non-blocking and close-on-exec.
    /// `freebind`: the address may not be on the host yet (the VIP, added
    /// once the instance is ready), so bind with IP_FREEBIND.
    public static func listener(_ address: SocketAddress, backlog: Int32, freebind: Bool = false) throws -> Int32 {
        let family = address.ip.isV4 ? AF_INET : AF_INET6
        let fd = stream(family: family)
        guard fd >= 0 else { throw SystemError("socket", errno: errno) }
        func fail(_ call: String) -> SystemError {
            let e = SystemError(call, errno: errno)
            close(fd)
            return e
        }
        guard setInt(fd, SOL_SOCKET, SO_REUSEADDR, 1) else { throw fail("setsockopt(SO_REUSEADDR)") }
        guard setInt(fd, SOL_SOCKET, SO_REUSEPORT, 1) else { throw fail("setsockopt(SO_REUSEPORT)") }
        if family == AF_INET6 {
            // One family per socket keeps v4 clients on v4 listeners only.
            guard setInt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) else { throw fail("setsockopt(IPV6_V6ONLY)") }
        }
        setNoDelay(fd)
        if freebind && sticky_set_freebind(fd) != 0 { throw fail("setsockopt(IP_FREEBIND)") }
        var (ss, len) = storage(for: address)
        let rc = withUnsafePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        guard rc == 0 else { throw fail("bind(\(address))") }
        guard listen(fd, backlog) == 0 else { throw fail("listen(\(address))") }
        return fd
    }

    /// Attaches the classic-BPF steering program to a reuseport group, so
    /// a client IP always reaches the same worker and each worker's affinity
    /// shard is the only one that ever sees it.
    public static func attachSteering(_ fd: Int32, ipv6: Bool, prefixLength: Int, workers: Int) throws {
        let rc = sticky_attach_reuseport_steering(fd, ipv6 ? 1 : 0, UInt32(prefixLength), UInt32(workers))
        guard rc == 0 else { throw SystemError("setsockopt(SO_ATTACH_REUSEPORT_CBPF)", errno: -rc) }
    }

    /// Which worker the steering program sends `ip` to.
    public static func steeredWorker(for ip: IPAddress, prefixLength: Int, workers: Int) -> Int {
        switch ip {
        case .v4(let v):
            var w = v
            return Int(sticky_reuseport_worker(&w, 1, UInt32(prefixLength), UInt32(workers)))
        case .v6(let hi, let lo):
            var words: [UInt32] = [UInt32(hi >> 32), UInt32(truncatingIfNeeded: hi), UInt32(lo >> 32), UInt32(truncatingIfNeeded: lo)]
            return Int(sticky_reuseport_worker(&words, 4, UInt32(prefixLength), UInt32(workers)))
        }
    }
}

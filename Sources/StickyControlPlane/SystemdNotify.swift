import Foundation
import Glibc
import StickyDataPlane

/// The sd_notify protocol, spoken directly: one datagram to the Unix socket
/// named by $NOTIFY_SOCKET. Doing it by hand keeps libsystemd out of the
/// build; the protocol is small and stable (sd_notify(3)).
public enum SystemdNotify {
    /// Sends `state` (e.g. "READY=1"); false when not run by systemd with
    /// Type=notify, or when the send fails (which must never stop the daemon).
    @discardableResult
    public static func send(_ state: String) -> Bool {
        guard let path = ProcessInfo.processInfo.environment["NOTIFY_SOCKET"], !path.isEmpty,
              path.utf8.count < 108 else { return false }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        // "@name" is the abstract namespace: a leading NUL on the wire.
        if bytes.first == UInt8(ascii: "@") { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let len = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let sent = state.withCString { text in
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, text, strlen(text), Int32(MSG_NOSIGNAL), $0, len)
                }
            }
        }
        return sent >= 0
    }

    /// Half the watchdog timeout systemd set for this process, in ms, or
    /// nil when there is none (WatchdogSec unset, or meant for another pid).
    public static var watchdogPeriodMs: Int64? {
        let env = ProcessInfo.processInfo.environment
        guard let usecText = env["WATCHDOG_USEC"], let usec = Int64(usecText), usec > 0 else { return nil }
        if let pidText = env["WATCHDOG_PID"], let pid = Int32(pidText), pid != getpid() { return nil }
        return max(1, usec / 2000)
    }
}

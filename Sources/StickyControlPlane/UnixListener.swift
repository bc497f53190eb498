import Foundation
import Glibc
import StickyDataPlane
import Synchronization

/// A listening Unix stream socket file, bound either at its path or, for an
/// upgrade's successor, at a staged name beside it and renamed over the old
/// process's socket once the hand-over is committed: rename(2) is atomic, so
/// a client connecting meanwhile always finds one of the two processes.
///
/// The socket file is removed on close only while it is still ours (same
/// device and inode): after an upgrade the path names the successor's
/// socket, and the old process must not take it away.
final class UnixListener: @unchecked Sendable {
    let path: String
    let fd: Int32
    /// Where the socket file is now: the staged name until `install`.
    private(set) var boundPath: String
    private var identity: (dev: UInt64, ino: UInt64)?

    /// socket(2) + bind(2) + listen(2). `openMode` makes the file 0666
    /// (the caller then checks SO_PEERCRED itself) instead of 0600.
    /// `staged` binds at `path.<pid>.new` for `install` to rename later;
    /// otherwise a stale file at `path` is replaced, but one another
    /// process is serving is refused.
    init(path: String, what: String, openMode: Bool = false, staged: Bool = false, backlog: Int32 = 64) throws {
        self.path = path
        guard path.utf8.count < 108 else { throw SystemError("\(what) path \(path) longer than 107 bytes", errno: ENAMETOOLONG) }
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty {
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                     attributes: [.posixPermissions: 0o755])
        }
        boundPath = staged ? "\(path).\(getpid()).new" : path
        guard boundPath.utf8.count < 108 else {
            throw SystemError("\(what) path \(path) is too long to stage beside it for an upgrade (\(boundPath))", errno: ENAMETOOLONG)
        }
        if !staged && UnixListener.somebodyListens(at: path) {
            throw SystemError("\(what) \(path) is served by another process", errno: EADDRINUSE)
        }
        unlink(boundPath)
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw SystemError("socket(AF_UNIX)", errno: errno) }
        var addr = UnixListener.address(boundPath)
        // The file gets its final mode at creation (a chmod after bind
        // would leave a window).
        let oldMask = umask(openMode ? 0o111 : 0o177)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        let bindErrno = errno
        umask(oldMask)
        guard rc == 0 else {
            Glibc.close(s)
            throw SystemError("bind(\(boundPath))", errno: bindErrno)
        }
        guard listen(s, backlog) == 0 else {
            let e = errno
            Glibc.close(s)
            unlink(boundPath)
            throw SystemError("listen(\(boundPath))", errno: e)
        }
        fd = s
        identity = UnixListener.identity(of: boundPath)
    }

    /// Renames the staged socket file over `path`. No-op when not staged.
    func install() throws {
        guard boundPath != path else { return }
        guard rename(boundPath, path) == 0 else { throw SystemError("rename(\(boundPath), \(path))", errno: errno) }
        boundPath = path
    }

    /// Closes the socket and removes its file if the file is still ours
    /// and the path was not handed on.
    func close() {
        Glibc.close(fd)
        removeFile()
    }

    /// Removes the socket file if it is still ours and the path was not
    /// handed on. Alone, for a socket whose descriptor a NIO channel has
    /// adopted (and closes itself).
    func removeFile() {
        if !pathHandedOn.load(ordering: .acquiring), let id = identity,
           let now = UnixListener.identity(of: boundPath), now == id {
            unlink(boundPath)
        }
        identity = nil
    }

    /// An upgrade committed: the successor renames its own socket over the
    /// path, so closing must leave the file alone. The identity check alone
    /// would leave a window between the check and the unlink.
    let pathHandedOn = Atomic<Bool>(false)
    func handOnPath() { pathHandedOn.store(true, ordering: .releasing) }

    static func identity(of path: String) -> (dev: UInt64, ino: UInt64)? {
        var st = stat()
        guard lstat(path, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    static func address(_ path: String) -> sockaddr_un {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() where i < raw.count - 1 { raw[i] = b }
        }
        return addr
    }

    /// A blocking connect(2) to the socket at `path`; the fd or -errno.
    static func connect(to path: String) -> Int32 {
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { return -errno }
        var addr = address(path)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        if rc != 0 {
            let e = errno
            Glibc.close(s)
            return -e
        }
        return s
    }

    static func somebodyListens(at path: String) -> Bool {
        let s = connect(to: path)
        if s >= 0 { Glibc.close(s) }
        return s >= 0
    }
}

import Foundation
import Glibc
import StickyDataPlane

/// Writes a file so that a crash leaves either the old content or the
/// new, never a mix: a temporary file, fsync, rename, then fsync of the
/// directory so the rename itself survives a crash.
public enum AtomicFile {
    public static func write(_ data: Data, to path: String) throws {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError("open(\(tmp))", errno: errno) }
        var ok = true
        var err: Int32 = 0
        data.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + off, raw.count - off)
                if n < 0 {
                    if errno == EINTR { continue }
                    ok = false
                    err = errno
                    return
                }
                off += n
            }
        }
        if ok && fsync(fd) != 0 {
            ok = false
            err = errno
        }
        close(fd)
        guard ok else {
            unlink(tmp)
            throw SystemError("write(\(tmp))", errno: err)
        }
        guard rename(tmp, path) == 0 else {
            let e = errno
            unlink(tmp)
            throw SystemError("rename(\(tmp), \(path))", errno: e)
        }
        let dir = (path as NSString).deletingLastPathComponent
        let dfd = open(dir.isEmpty ? "." : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }
}

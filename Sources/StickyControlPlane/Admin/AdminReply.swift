import Synchronization

/// Who is on the other end of an admin session. On the Unix socket it is
/// what SO_PEERCRED says; a remote client that passed the allow list is
/// uid 0, since it may run every command, as root may on the Unix socket.
public struct PeerCredentials: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public init(pid: Int32, uid: UInt32, gid: UInt32) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }

    /// A remote client on `admin.remote.allow`.
    public static let remoteAllowed = PeerCredentials(pid: 0, uid: 0, gid: 0)
}

/// What the control plane answers to one admin line.
public struct AdminReply: Sendable {
    public var text: String
    /// End the session after this reply (`quit`).
    public var close: Bool
    /// The answer comes later (`upgrade` waits for its outcome): `text` is
    /// ignored, and the session's next lines wait for it.
    public var pending: AdminPendingReply?
    public init(_ text: String, close: Bool = false) {
        self.text = text
        self.close = close
    }

    public init(pending: AdminPendingReply) {
        self.text = ""
        self.close = false
        self.pending = pending
    }
}

/// An answer another thread gives once it knows it. The session that waits
/// for it is told through the callback it attached (which hops onto the
/// admin event loop); meanwhile the other sessions are served.
public final class AdminPendingReply: Sendable {
    struct State {
        var text: String?
        var onResolve: (@Sendable (String) -> Void)?
    }

    let state = Mutex(State())

    public init() {}

    /// Gives the answer; later calls are ignored.
    public func resolve(_ text: String) {
        let notify: (@Sendable (String) -> Void)? = state.withLock { s in
            guard s.text == nil else { return nil }
            s.text = text
            defer { s.onResolve = nil }
            return s.onResolve
        }
        notify?(text)
    }

    public var text: String? { state.withLock { $0.text } }

    /// Calls `onResolve` with the answer once it is given: at once (on this
    /// thread) if it already was, else on the resolving thread.
    func whenResolved(_ onResolve: @escaping @Sendable (String) -> Void) {
        let ready: String? = state.withLock { s in
            if s.text == nil { s.onResolve = onResolve }
            return s.text
        }
        if let ready { onResolve(ready) }
    }
}

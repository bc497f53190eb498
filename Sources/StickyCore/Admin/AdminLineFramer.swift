/// Splits an admin session's bytes into command lines, the same way for the
/// Unix socket and the TLS listener.
///
/// Memory is bounded: a line longer than `AdminGrammar.lineBytesMax` is
/// reported once as `.tooLong` and the rest of it, up to its newline, is
/// dropped. Blank lines (spaces, tabs, a CR) are skipped, so `\r\n` clients
/// and stray newlines cost nothing.
public struct AdminLineFramer: Sendable {
    public enum Event: Equatable, Sendable {
        case line(String)
        case tooLong
    }

    var input: [UInt8] = []
    var discarding = false

    public init() {}

    /// Feeds received bytes, calling `emit` for each event in order. `emit`
    /// returns false to stop (the session is ending); the unread rest of the
    /// bytes is then dropped. Returns false if it stopped.
    public mutating func feed(_ bytes: ArraySlice<UInt8>, _ emit: (Event) -> Bool) -> Bool {
        for b in bytes {
            if b == UInt8(ascii: "\n") {
                if discarding {
                    discarding = false
                    continue
                }
                let line = String(decoding: input, as: UTF8.self)
                input.removeAll(keepingCapacity: true)
                if line.allSatisfy({ $0 == " " || $0 == "\t" || $0 == "\r" }) { continue }
                if !emit(.line(line)) { return false }
            } else if discarding {
                continue
            } else if input.count >= AdminGrammar.lineBytesMax {
                input.removeAll(keepingCapacity: true)
                discarding = true
                if !emit(.tooLong) { return false }
            } else {
                input.append(b)
            }
        }
        return true
    }

    public static let tooLongMessage = "error: line longer than \(AdminGrammar.lineBytesMax) bytes; discarded"
}

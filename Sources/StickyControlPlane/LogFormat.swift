import Glibc
import Logging
import StickyCore
import StickyDataPlane

/// The daemon's own log lines on stderr, as logfmt or JSON, one write(2)
/// per line so lines from different threads never interleave.
///
/// Under systemd, stderr is a stream to the journal (JOURNAL_STREAM names
/// it): the journal stamps every line itself, so no timestamp is written,
/// and each line starts with a `<N>` syslog priority, which journald reads
/// as the line's priority (SyslogLevelPrefix=, on by default).
public struct StickyLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let format: LogFormat
    let journal: Bool

    public init(level: Logger.Level, format: LogFormat, journal: Bool) {
        self.logLevel = level
        self.format = format
        self.journal = journal
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let own = event.metadata { merged.merge(own) { _, new in new } }
        // Sorted: the same event always prints the same line.
        let pairs = merged.sorted { $0.key < $1.key }.map { ($0.key, "\($0.value)") }
        let unixMs: Int64? = journal ? nil : StickyLogHandler.unixMs()
        var line: String
        switch format {
        case .text: line = LogLine.logfmt(unixMs: unixMs, level: event.level.rawValue, message: "\(event.message)", metadata: pairs)
        case .json: line = LogLine.json(unixMs: unixMs, level: event.level.rawValue, message: "\(event.message)", metadata: pairs)
        }
        if journal { line = "<\(StickyLogHandler.syslogPriority(event.level))>" + line }
        line += "\n"
        line.withUTF8 { bytes in
            var off = 0
            while off < bytes.count {
                let n = write(2, bytes.baseAddress! + off, bytes.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                off += n
            }
        }
    }

    static func unixMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec / 1_000_000)
    }

    static func syslogPriority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// Whether stderr is the journal: JOURNAL_STREAM holds `DEV:INO` of the
    /// stream systemd connected, and it must be the stderr we have now (a
    /// child of a journald-logged shell inherits the variable, not the stream).
    public static func stderrIsJournal() -> Bool {
        guard let value = getenv("JOURNAL_STREAM").map({ String(cString: $0) }) else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }
}

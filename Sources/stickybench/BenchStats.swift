import Glibc

// Measurement state of `stickybench`: the latency histogram, the table
// of target names, the error kinds and the per-worker results that the
// report merges. Nothing here allocates per connection.

/// Nanoseconds on CLOCK_MONOTONIC (vDSO; no system call).
@inline(__always)
func benchNowNs() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// A log-linear histogram of nanosecond values, HdrHistogram-style: values
/// below 64 are exact, and each power-of-two range above is split into 64
/// buckets, so any recorded value is known to within 1/64 (1.6 %). Values
/// from 2^41 ns (about 37 minutes) up land in the last bucket.
struct LatencyHistogram {
    static let subBits = 6
    static let subCount = 1 << subBits            // 64
    static let maxExponent = 41
    static let bucketCount = subCount + (maxExponent - subBits + 1) * subCount

    private(set) var counts: [UInt64]
    private(set) var total: UInt64 = 0
    private(set) var sumNs: UInt64 = 0
    private(set) var maxNs: UInt64 = 0
    private(set) var minNs: UInt64 = .max

    init() { counts = [UInt64](repeating: 0, count: LatencyHistogram.bucketCount) }

    @inline(__always)
    static func index(_ v: UInt64) -> Int {
        if v < UInt64(subCount) { return Int(v) }
        let e = 63 - v.leadingZeroBitCount                 // >= subBits
        if e > maxExponent { return bucketCount - 1 }
        let sub = Int(v >> UInt64(e - subBits)) - subCount  // 0..<64
        return subCount + (e - subBits) * subCount + sub
    }

    /// The highest value that lands in bucket `i` (what HdrHistogram calls
    /// the highest equivalent value): percentiles err on the slow side.
    static func upperBound(_ i: Int) -> UInt64 {
        if i < subCount { return UInt64(i) }
        let e = (i - subCount) / subCount + subBits
        let sub = UInt64((i - subCount) % subCount + subCount)
        let width = UInt64(1) << UInt64(e - subBits)
        return sub * width + width - 1
    }

    @inline(__always)
    mutating func record(_ ns: UInt64) {
        counts.withUnsafeMutableBufferPointer { $0[LatencyHistogram.index(ns)] &+= 1 }
        total &+= 1
        sumNs &+= ns
        if ns > maxNs { maxNs = ns }
        if ns < minNs { minNs = ns }
    }

    mutating func merge(_ other: LatencyHistogram) {
        for i in 0..<counts.count { counts[i] += other.counts[i] }
        total += other.total
        sumNs += other.sumNs
        maxNs = max(maxNs, other.maxNs)
        minNs = min(minNs, other.minNs)
    }

    /// The value at quantile `q` (0...1), in ns; 0 when empty. Never above
    /// the largest recorded value.
    func quantile(_ q: Double) -> UInt64 {
        guard total > 0 else { return 0 }
        let rank = max(1, UInt64((q * Double(total)).rounded(.up)))
        var seen: UInt64 = 0
        for i in 0..<counts.count {
            seen += counts[i]
            if seen >= rank { return min(LatencyHistogram.upperBound(i), maxNs) }
        }
        return maxNs
    }

    var meanNs: Double { total == 0 ? 0 : Double(sumNs) / Double(total) }
}

/// How a connection failed. The raw values index `ErrorCounts.counts`.
enum BenchErrorKind: Int, CaseIterable {
    /// connect(2) got ECONNREFUSED: nothing listens, or a balancer with no
    /// target left refused the SYN.
    case refused = 0
    /// ECONNRESET or EPIPE at any point: a RST came back.
    case reset
    /// The connection did not reach EOF within --timeout (or connect(2)
    /// reported ETIMEDOUT).
    case timeout
    /// EOF before any byte: e.g. a balancer accepted the client, failed to
    /// reach a target and closed.
    case noReply
    /// Bytes arrived but not one identity line (no '\n', more than one
    /// line, longer than 64 bytes, or too many distinct names).
    case badReply
    /// Anything else; the errno is tallied for the text report.
    case other

    var key: String {
        switch self {
        case .refused: return "refused"
        case .reset: return "reset"
        case .timeout: return "timeout"
        case .noReply: return "no_reply"
        case .badReply: return "bad_reply"
        case .other: return "other"
        }
    }

    var label: String {
        switch self {
        case .noReply: return "no reply"
        case .badReply: return "bad reply"
        default: return key
        }
    }

    /// The kind of a failed connect, recv or setup call.
    static func of(errno e: Int32) -> BenchErrorKind {
        switch e {
        case ECONNREFUSED: return .refused
        case ECONNRESET, EPIPE, ECONNABORTED: return .reset
        case ETIMEDOUT, ECANCELED: return .timeout
        default: return .other
        }
    }
}

struct ErrorCounts {
    var counts = [UInt64](repeating: 0, count: BenchErrorKind.allCases.count)
    /// errno -> count, for `.other` only (errnos are below 256 on Linux).
    var otherErrnos = [UInt64](repeating: 0, count: 256)

    var total: UInt64 { counts.reduce(0, +) }

    @inline(__always)
    mutating func add(_ kind: BenchErrorKind, errno e: Int32 = 0) {
        counts[kind.rawValue] &+= 1
        if kind == .other { otherErrnos[Int(UInt8(truncatingIfNeeded: e))] &+= 1 }
    }

    subscript(kind: BenchErrorKind) -> UInt64 { counts[kind.rawValue] }

    mutating func merge(_ o: ErrorCounts) {
        for i in 0..<counts.count { counts[i] += o.counts[i] }
        for i in 0..<otherErrnos.count { otherErrnos[i] += o.otherErrnos[i] }
    }
}

/// Target names as the targets announce them, interned to small integers
/// without allocating on lookup: FNV-1a over the bytes, open addressing,
/// then a byte compare against the stored name.
struct NameTable {
    static let nameBytesMax = 64
    /// A bound on distinct names: a misbehaving target that sends a new name
    /// each time must not grow memory without limit.
    static let namesMax = 1024
    private static let slotsCount = 4096            // power of two, > 2 × namesMax

    private var slots = [Int16](repeating: -1, count: NameTable.slotsCount)
    private var hashes: [UInt64] = []
    private var lengths: [Int] = []
    private var bytes: [UInt8] = []                 // namesMax × nameBytesMax, filled lazily
    var count: Int { lengths.count }

    init() { bytes.reserveCapacity(NameTable.namesMax * NameTable.nameBytesMax) }

    /// The index of the name in `p[0..<n]`, interning it on first sight;
    /// nil when the table is full.
    mutating func intern(_ p: UnsafePointer<UInt8>, _ n: Int) -> Int? {
        precondition(n <= NameTable.nameBytesMax, "names are bounded by the reply parser")
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for i in 0..<n { h = (h ^ UInt64(p[i])) &* 0x100_0000_01b3 }
        var s = Int(truncatingIfNeeded: h) & (NameTable.slotsCount - 1)
        while true {
            let idx = Int(slots[s])
            if idx < 0 { break }
            if hashes[idx] == h && lengths[idx] == n &&
                bytes.withUnsafeBufferPointer({ memcmp($0.baseAddress! + idx * NameTable.nameBytesMax, p, n) == 0 }) {
                return idx
            }
            s = (s + 1) & (NameTable.slotsCount - 1)
        }
        guard count < NameTable.namesMax else { return nil }
        let idx = count
        hashes.append(h)
        lengths.append(n)
        for i in 0..<NameTable.nameBytesMax { bytes.append(i < n ? p[i] : 0) }
        slots[s] = Int16(idx)
        return idx
    }

    func name(_ idx: Int) -> String {
        let start = idx * NameTable.nameBytesMax
        return String(decoding: bytes[start..<(start + lengths[idx])], as: UTF8.self)
    }
}

/// A client seen on two targets, kept for the report (a few only).
struct ViolationExample {
    var client: String
    var first: String
    var then: String
}

/// What one client worker measured; the report merges these by name.
struct BenchWorkerResult {
    var histogram = LatencyHistogram()
    var errors = ErrorCounts()
    var successes: UInt64 = 0
    var warmupSuccesses: UInt64 = 0
    var warmupErrors: UInt64 = 0
    /// Connections per target name, measured ones only.
    var targetCounts: [String: UInt64] = [:]
    /// Clients with at least one successful connection, and with two or more
    /// (only those can show a violation).
    var clientsSeen = 0
    var clientsMulti = 0
    /// Clients seen on more than one target.
    var violations = 0
    /// Connections that landed on another target than the client's previous one.
    var moves: UInt64 = 0
    var examples: [ViolationExample] = []
    /// The measured window: first measured connection start to the last
    /// measured completion (0 when nothing was measured).
    var measureStartNs: UInt64 = 0
    var measureEndNs: UInt64 = 0
    var interrupted = false
    /// CLOSE operations that failed (the fd is gone either way).
    var closeFailures: UInt64 = 0

    /// Adds another worker's figures; the measured window spans them all
    /// (workers start together and end together).
    mutating func merge(_ r: BenchWorkerResult) {
        histogram.merge(r.histogram)
        errors.merge(r.errors)
        successes += r.successes
        warmupSuccesses += r.warmupSuccesses
        warmupErrors += r.warmupErrors
        for (name, n) in r.targetCounts { targetCounts[name, default: 0] += n }
        clientsSeen += r.clientsSeen
        clientsMulti += r.clientsMulti
        violations += r.violations
        moves += r.moves
        if examples.count < 5 { examples.append(contentsOf: r.examples.prefix(5 - examples.count)) }
        interrupted = interrupted || r.interrupted
        closeFailures += r.closeFailures
        if r.measureEndNs > r.measureStartNs {
            measureStartNs = min(measureStartNs, r.measureStartNs)
            measureEndNs = max(measureEndNs, r.measureEndNs)
        }
    }
}

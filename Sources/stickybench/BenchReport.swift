import Glibc
import StickyCore

/// The merged figures of one `stickybench` run, and their two renderings.
struct BenchReport {
    var targetAddresses: [SocketAddress]
    var clientsConfigured: Int
    var concurrency: Int
    var threads: Int
    var expectTargets: Int

    /// Every worker's figures, merged.
    var totals = BenchWorkerResult()
    var durationNs: UInt64 { totals.measureEndNs > totals.measureStartNs ? totals.measureEndNs - totals.measureStartNs : 0 }

    init(targetAddresses: [SocketAddress], clientsConfigured: Int, concurrency: Int, threads: Int,
         expectTargets: Int, results: [BenchWorkerResult]) {
        self.targetAddresses = targetAddresses
        self.clientsConfigured = clientsConfigured
        self.concurrency = concurrency
        self.threads = threads
        self.expectTargets = expectTargets
        totals.measureStartNs = UInt64.max
        for r in results { totals.merge(r) }
        if totals.measureEndNs <= totals.measureStartNs { totals.measureStartNs = 0; totals.measureEndNs = 0 }
    }

    var attempts: UInt64 { totals.successes + totals.errors.total }
    var durationS: Double { Double(durationNs) / 1e9 }
    var connPerS: Double { durationNs == 0 ? 0 : Double(totals.successes) / durationS }

    /// Names in a stable order: by name.
    var sortedTargets: [(String, UInt64)] { totals.targetCounts.sorted { $0.key < $1.key } }

    /// The busiest target's connections over the mean per target. The mean
    /// is over the names seen, or over --expect-targets when that is larger,
    /// so a target that got nothing still counts.
    var spreadMaxOverMean: Double {
        let n = max(totals.targetCounts.count, expectTargets)
        guard n > 0, let top = totals.targetCounts.values.max() else { return 0 }
        let mean = Double(totals.targetCounts.values.reduce(0, +)) / Double(n)
        return mean == 0 ? 0 : Double(top) / mean
    }

    func latencyUs(_ q: Double) -> Double { Double(totals.histogram.quantile(q)) / 1000 }

    /// Whether --strict should fail the run.
    var failedStrict: Bool {
        totals.violations > 0 || totals.errors.total > 0 || totals.warmupErrors > 0 || totals.successes == 0
    }

    // MARK: text

    func text() -> String {
        var out = ""
        let addrs = targetAddresses.map { "\($0)" }.joined(separator: ", ")
        out += "stickybench: \(addrs), \(clientsConfigured) clients, concurrency \(concurrency), \(threads) thread\(threads == 1 ? "" : "s")\(totals.interrupted ? " (interrupted)" : "")\n"
        out += pad("connections") + "\(totals.successes) in \(benchFixed(durationS, 3)) s: \(benchFixed(connPerS, 0)) conn/s\n"
        if totals.histogram.total > 0 {
            out += pad("latency") + "p50 \(duration(totals.histogram.quantile(0.5)))   p99 \(duration(totals.histogram.quantile(0.99)))   p999 \(duration(totals.histogram.quantile(0.999)))   max \(duration(totals.histogram.maxNs))   mean \(duration(UInt64(totals.histogram.meanNs)))\n"
        }
        var e = pad("errors") + "\(totals.errors.total)"
        if totals.errors.total > 0 {
            let kinds = BenchErrorKind.allCases.filter { totals.errors[$0] > 0 }.map { k -> String in
                var s = "\(k.label) \(totals.errors[k])"
                if k == .other {
                    let errnos = totals.errors.otherErrnos.enumerated().filter { $0.element > 0 }
                        .map { "\(benchErrnoName(Int32($0.offset))) \($0.element)" }
                    s += " [" + errnos.joined(separator: ", ") + "]"
                }
                return s
            }
            e += " (" + kinds.joined(separator: ", ") + ")"
        }
        out += e + "\n"
        if totals.warmupSuccesses + totals.warmupErrors > 0 {
            out += pad("warmup") + "\(totals.warmupSuccesses) connections, \(totals.warmupErrors) totals.errors (not in the figures above)\n"
        }
        out += pad("clients") + "\(totals.clientsSeen) seen, \(totals.clientsMulti) with 2 or more connections\n"
        out += pad("violations") + "\(totals.violations) clients seen on more than one target (\(totals.moves) moves)\n"
        for x in totals.examples {
            out += pad("") + "e.g. \(x.client): \(x.first) then \(x.then)\n"
        }
        if totals.clientsMulti == 0 && totals.successes > 0 {
            out += pad("") + "(no client connected twice: stickiness was not tested; raise --connections or lower --clients)\n"
        }
        let shown = max(totals.targetCounts.count, expectTargets)
        out += pad("targets") + "\(totals.targetCounts.count) seen\(expectTargets > totals.targetCounts.count ? " of \(shown) expected" : ""), spread max/mean \(benchFixed(spreadMaxOverMean, 3))\n"
        let total = Double(totals.targetCounts.values.reduce(0, +))
        let width = min(NameTable.nameBytesMax, totals.targetCounts.keys.map { $0.count }.max() ?? 0)
        for (name, n) in sortedTargets {
            let share = total == 0 ? 0 : Double(n) * 100 / total
            out += "  " + name.padding(to: width) + "  " + "\(n)".leftPadding(to: 10) + "  " + benchFixed(share, 1).leftPadding(to: 5) + " %\n"
        }
        if totals.closeFailures > 0 {
            out += pad("note") + "\(totals.closeFailures) close operations failed\n"
        }
        return out
    }

    private func pad(_ s: String) -> String { s.padding(to: 13) }

    private func duration(_ ns: UInt64) -> String {
        if ns < 10_000_000 { return benchFixed(Double(ns) / 1000, 1) + " µs" }
        if ns < 10_000_000_000 { return benchFixed(Double(ns) / 1e6, 2) + " ms" }
        return benchFixed(Double(ns) / 1e9, 2) + " s"
    }

    // MARK: JSON

    /// One JSON object, keys in a fixed order; the keys are a stable
    /// interface (docs/BENCH.md lists them).
    func json() -> String {
        var o = "{\n"
        o += "  \"connections\": \(totals.successes),\n"
        o += "  \"attempts\": \(attempts),\n"
        o += "  \"duration_s\": \(benchFixed(durationS, 3)),\n"
        o += "  \"conn_per_s\": \(benchFixed(connPerS, 1)),\n"
        o += "  \"latency_us\": {\"p50\": \(benchFixed(latencyUs(0.5), 1)), \"p99\": \(benchFixed(latencyUs(0.99), 1)), \"p999\": \(benchFixed(latencyUs(0.999), 1)), \"max\": \(benchFixed(Double(totals.histogram.maxNs) / 1000, 1)), \"mean\": \(benchFixed(totals.histogram.meanNs / 1000, 1))},\n"
        let kinds = BenchErrorKind.allCases.map { "\"\($0.key)\": \(totals.errors[$0])" }.joined(separator: ", ")
        o += "  \"errors\": {\"total\": \(totals.errors.total), \(kinds)},\n"
        o += "  \"clients\": \(totals.clientsSeen),\n"
        o += "  \"clients_multi\": \(totals.clientsMulti),\n"
        o += "  \"violations\": \(totals.violations),\n"
        o += "  \"moves\": \(totals.moves),\n"
        let t = sortedTargets.map { "\(LogLine.jsonString($0.0)): \($0.1)" }.joined(separator: ", ")
        o += "  \"targets\": {\(t)},\n"
        o += "  \"spread_max_over_mean\": \(benchFixed(spreadMaxOverMean, 4)),\n"
        o += "  \"warmup\": {\"connections\": \(totals.warmupSuccesses), \"errors\": \(totals.warmupErrors)},\n"
        o += "  \"concurrency\": \(concurrency),\n"
        o += "  \"threads\": \(threads),\n"
        o += "  \"interrupted\": \(totals.interrupted),\n"
        o += "  \"target_addresses\": [\(targetAddresses.map { LogLine.jsonString("\($0)") }.joined(separator: ", "))]\n"
        o += "}\n"
        return o
    }
}

/// `x` with `decimals` digits after the point, without Foundation. Values
/// that are not finite print as 0 (JSON has no infinity).
func benchFixed(_ x: Double, _ decimals: Int) -> String {
    guard x.isFinite else { return "0" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let negative = x < 0
    let v = (abs(x) * scale).rounded()
    guard v < 9e18 else { return "\(x)" }
    let n = UInt64(v)
    let s = UInt64(scale)
    var text = "\(n / s)"
    if decimals > 0 {
        let frac = "\(n % s)"
        text += "." + String(repeating: "0", count: decimals - frac.count) + frac
    }
    return negative && n != 0 ? "-" + text : text
}

func benchErrnoName(_ e: Int32) -> String {
    switch e {
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL"
    case EADDRINUSE: return "EADDRINUSE"
    case EMFILE: return "EMFILE"
    case ENFILE: return "ENFILE"
    case ENOBUFS: return "ENOBUFS"
    case ENOMEM: return "ENOMEM"
    case ENETUNREACH: return "ENETUNREACH"
    case EHOSTUNREACH: return "EHOSTUNREACH"
    case ENOTCONN: return "ENOTCONN"
    case EINVAL: return "EINVAL"
    case EAGAIN: return "EAGAIN"
    case EINTR: return "EINTR"
    default: return "errno \(e)"
    }
}

fileprivate extension String {
    func padding(to width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
    func leftPadding(to width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}

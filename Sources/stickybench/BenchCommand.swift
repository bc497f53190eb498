import ArgumentParser
import CURing
import Glibc
import StickyCore
import StickyDataPlane

struct BenchRun: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Open short connections from many client IPs and report rate, latency and stickiness (the default).",
        discussion: """
        Clients take turns (round-robin), so with --clients N each client makes about \
        connections/N connections: that is what makes stickiness measurable. The run \
        ends at --duration or --connections (or --per-client), whichever comes first, \
        then waits for the connections in flight. SIGINT stops it early and still reports.

        Exit status: 0 done; 1 a run-time failure, or with --strict any error or \
        violation; 2 a usage error.
        """
    )

    @Option(name: .long, help: ArgumentHelp(
        "Address to connect to: the balancer, or a backend for a direct baseline. Repeatable: client i then always uses target i mod count.",
        valueName: "addr"))
    var target: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "Distinct client source IPs (default: 10000 of \(BenchSources.defaultBlock), or all --sources).",
        valueName: "n"))
    var clients: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Client source addresses and CIDR blocks, comma-separated (repeatable), e.g. 127.1.0.0/16. They must be local.",
        valueName: "list"))
    var sources: [String] = []

    @Option(name: .customLong("source-list"), help: ArgumentHelp(
        "File of client source addresses or blocks, one a line ('#' comments).",
        valueName: "file"))
    var sourceList: String?

    @Option(name: .long, help: ArgumentHelp("Connections in flight at once.", valueName: "n"))
    var concurrency: Int = 64

    @Option(name: .long, help: ArgumentHelp("Stop starting connections after this long (e.g. 500ms, 10s, 2m).", valueName: "duration"))
    var duration: String = "10s"

    @Option(name: .long, help: ArgumentHelp("Stop after this many measured connections.", valueName: "n"))
    var connections: Int?

    @Option(name: .customLong("per-client"), help: ArgumentHelp(
        "Stop after each client has made this many measured connections (sets --connections to clients × n).",
        valueName: "n"))
    var perClient: Int?

    @Option(name: .long, help: ArgumentHelp(
        "Connections to make first and leave out of the figures (they do pin clients).",
        valueName: "n"))
    var warmup: Int = 0

    @Option(name: .long, help: ArgumentHelp("Give up a connection (connect to EOF) after this long.", valueName: "duration"))
    var timeout: String = "5s"

    @Option(name: .long, help: ArgumentHelp("Client threads, one io_uring each.", valueName: "n"))
    var threads: Int = 1

    @Option(name: .customLong("expect-targets"), help: ArgumentHelp(
        "How many backends there are, so that one which got nothing still counts in the spread.",
        valueName: "n"))
    var expectTargets: Int = 0

    @Flag(name: .long, help: "Print the report as JSON (stable keys; see docs/BENCH.md).")
    var json = false

    @Flag(name: .long, help: "No progress lines on stderr.")
    var quiet = false

    @Flag(name: .long, help: "Exit 1 if there was any error or violation, or no connection at all.")
    var strict = false

    static let concurrencyMax = 65536
    static let threadsMax = 64
    static let durationMaxMs: Millis = 86_400_000
    static let timeoutMaxMs: Millis = 600_000
    static let connectionsMax = 1_000_000_000_000

    /// What `validate()` works out, for `run()`.
    struct Setup {
        var targets: [SocketAddress]
        var sources: [IPAddress]
        var durationNs: UInt64
        var timeoutNs: UInt64
        var budget: UInt64
    }

    func setup() throws -> Setup {
        guard !target.isEmpty else { throw ValidationError("give at least one --target address") }
        var targets: [SocketAddress] = []
        for t in target {
            guard let a = SocketAddress(t) else {
                throw ValidationError("--target '\(t)' is not an address (1.2.3.4:80 or [::1]:80)")
            }
            targets.append(a)
        }
        guard targets.allSatisfy({ $0.ip.isV4 == targets[0].ip.isV4 }) else {
            throw ValidationError("--target addresses must all be IPv4 or all IPv6")
        }
        if let c = clients, c < 1 || c > BenchSources.clientsMax {
            throw ValidationError("--clients must be 1...\(BenchSources.clientsMax)")
        }
        let explicit = !sources.isEmpty || sourceList != nil
        let limit = clients ?? (explicit ? BenchSources.clientsMax : 10_000)
        var addrs: [IPAddress]
        do {
            if explicit {
                addrs = try BenchSources.parse(list: sources, limit: limit)
                if let file = sourceList, addrs.count < limit {
                    addrs += try BenchSources.read(file: file, limit: limit - addrs.count)
                }
            } else {
                guard targets.allSatisfy({ $0.ip.isV4 && benchIsLoopback($0.ip) }) else {
                    throw ValidationError("the default client addresses (\(BenchSources.defaultBlock)) only reach IPv4 loopback targets: give --sources or --source-list")
                }
                addrs = try BenchSources.parse(list: [BenchSources.defaultBlock], limit: limit)
            }
        } catch let e as BenchSources.ParseError {
            throw ValidationError(e.description)
        }
        guard !addrs.isEmpty else { throw ValidationError("no client source addresses") }
        if let c = clients, addrs.count < c {
            throw ValidationError("--clients \(c), but the sources hold only \(addrs.count) addresses")
        }
        guard addrs.allSatisfy({ $0.isV4 == targets[0].ip.isV4 }) else {
            throw ValidationError("client source addresses and targets must be the same IP version")
        }
        guard concurrency >= 1, concurrency <= BenchRun.concurrencyMax else {
            throw ValidationError("--concurrency must be 1...\(BenchRun.concurrencyMax)")
        }
        guard threads >= 1, threads <= BenchRun.threadsMax else {
            throw ValidationError("--threads must be 1...\(BenchRun.threadsMax)")
        }
        guard threads <= concurrency, threads <= addrs.count else {
            throw ValidationError("--threads must not exceed --concurrency or the number of clients")
        }
        guard let d = parseDuration(duration), d > 0, d <= BenchRun.durationMaxMs else {
            throw ValidationError("--duration '\(duration)' must be a duration such as 500ms, 10s or 2m, at most 1d")
        }
        guard let to = parseDuration(timeout), to > 0, to <= BenchRun.timeoutMaxMs else {
            throw ValidationError("--timeout '\(timeout)' must be a duration such as 2s, at most 10m")
        }
        if connections != nil && perClient != nil {
            throw ValidationError("give --connections or --per-client, not both")
        }
        var budget = UInt64.max
        if let n = connections {
            guard n >= 1, n <= BenchRun.connectionsMax else {
                throw ValidationError("--connections must be 1...\(BenchRun.connectionsMax)")
            }
            budget = UInt64(n)
        }
        if let n = perClient {
            guard n >= 1, n <= 1_000_000, n * addrs.count <= BenchRun.connectionsMax else {
                throw ValidationError("--per-client must be 1...1000000 (and clients × n at most \(BenchRun.connectionsMax))")
            }
            budget = UInt64(n * addrs.count)
        }
        guard warmup >= 0, warmup <= BenchRun.connectionsMax else {
            throw ValidationError("--warmup must be 0...\(BenchRun.connectionsMax)")
        }
        guard expectTargets >= 0, expectTargets <= NameTable.namesMax else {
            throw ValidationError("--expect-targets must be 0...\(NameTable.namesMax)")
        }
        return Setup(targets: targets, sources: addrs, durationNs: UInt64(d) * 1_000_000,
                     timeoutNs: UInt64(to) * 1_000_000, budget: budget)
    }

    func validate() throws { _ = try setup() }

    func run() throws {
        let s = try setup()
        let fdLimit = benchRaiseFileLimit()
        guard 2 * concurrency + 64 <= fdLimit else {
            throw ValidationError("--concurrency \(concurrency) needs about \(2 * concurrency + 64) file descriptors; the limit is \(fdLimit) (ulimit -n)")
        }
        for ip in [s.sources.first!, s.sources.last!] {
            if let problem = BenchSources.checkBindable(ip) {
                throw BenchFailure("\(problem) (client addresses must be local; on loopback use 127.0.0.0/8)")
            }
        }
        BenchSignals.install()

        // Client i belongs to thread i mod threads; budgets follow the clients.
        let clientsTotal = s.sources.count
        func share(_ total: UInt64, _ t: Int) -> UInt64 {
            if total == .max { return .max }
            func upTo(_ k: Int) -> UInt64 {
                // Clients of threads 0..<k: sum of ceil((C - j) / T).
                var c = 0
                for j in 0..<k { c += (clientsTotal - j + threads - 1) / threads }
                return total * UInt64(c) / UInt64(clientsTotal)
            }
            return upTo(t + 1) - upTo(t)
        }
        var workers: [BenchClientWorker] = []
        for t in 0..<threads {
            let plan = BenchClientPlan(
                targets: s.targets, sources: s.sources, threadIndex: t, threadCount: threads,
                slots: concurrency / threads + (t < concurrency % threads ? 1 : 0),
                budget: share(s.budget, t), warmup: share(UInt64(warmup), t),
                durationNs: s.durationNs, timeoutNs: s.timeoutNs)
            workers.append(BenchClientWorker(plan: plan))
        }
        let startNs = benchNowNs()
        var running: [BenchThread] = []
        for w in workers { running.append(try BenchThread { w.run() }) }

        var second: UInt64 = 1
        var lastDone = 0
        var lastNs = startNs
        while !workers.allSatisfy({ $0.progress.finished.load(ordering: .acquiring) }) {
            benchSleep(ms: 20)
            let now = benchNowNs()
            guard now >= startNs + second * 1_000_000_000 else { continue }
            second = (now - startNs) / 1_000_000_000 + 1
            var done = 0, errors = 0, violations = 0, inFlight = 0
            for w in workers {
                done += w.progress.done.load(ordering: .relaxed)
                errors += w.progress.errors.load(ordering: .relaxed)
                violations += w.progress.violations.load(ordering: .relaxed)
                inFlight += w.progress.inFlight.load(ordering: .relaxed)
            }
            let rate = Double(done - lastDone) * 1e9 / Double(max(1, now - lastNs))
            lastDone = done
            lastNs = now
            if !quiet {
                let elapsed = benchFixed(Double(now - startNs) / 1e9, 0)
                benchStderr("bench: \(elapsed)s  \(benchFixed(rate, 0)) conn/s  done \(done)  errors \(errors)  violations \(violations)  in flight \(inFlight)")
            }
        }
        for t in running { t.join() }
        if let e = workers.compactMap({ $0.setupError }).first {
            throw BenchFailure(e)
        }
        let report = BenchReport(
            targetAddresses: s.targets, clientsConfigured: clientsTotal, concurrency: concurrency,
            threads: threads, expectTargets: expectTargets, results: workers.map { $0.result })
        benchStdout(json ? report.json() : report.text())
        if strict && report.failedStrict { throw ExitCode(1) }
    }
}

struct BenchServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run identity backends: each accepted connection gets its listener's name and a '\\n', then a close.",
        discussion: """
        Pair each --listen with a --name, in order, e.g. \
        `--listen 127.0.0.1:9001 --name a --listen 127.0.0.1:9002 --name b`. \
        Without --name, each backend's name is its address. Runs until SIGINT or \
        SIGTERM, then prints what each listener accepted.
        """
    )

    @Option(name: .long, help: ArgumentHelp("Address to listen on (repeatable).", valueName: "addr"))
    var listen: [String] = []

    @Option(name: .long, help: ArgumentHelp("The name the matching --listen announces, at most 64 bytes (repeatable).", valueName: "name"))
    var name: [String] = []

    @Option(name: .long, help: ArgumentHelp("Threads, each with its own io_uring and SO_REUSEPORT listeners.", valueName: "n"))
    var threads: Int = 1

    @Flag(name: .long, help: "Print connections accepted per second to stderr.")
    var stats = false

    func resolved() throws -> [(SocketAddress, String)] {
        guard !listen.isEmpty else { throw ValidationError("give at least one --listen address") }
        guard name.isEmpty || name.count == listen.count else {
            throw ValidationError("give one --name per --listen (\(listen.count) addresses, \(name.count) names)")
        }
        guard threads >= 1, threads <= 64 else { throw ValidationError("--threads must be 1...64") }
        var out: [(SocketAddress, String)] = []
        for (i, l) in listen.enumerated() {
            guard let a = SocketAddress(l) else {
                throw ValidationError("--listen '\(l)' is not an address (1.2.3.4:80 or [::1]:80)")
            }
            let n = name.isEmpty ? "\(a)" : name[i]
            guard !n.isEmpty, n.utf8.count <= NameTable.nameBytesMax,
                  !n.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
                throw ValidationError("--name '\(n)' must be 1...\(NameTable.nameBytesMax) bytes with no control characters")
            }
            out.append((a, n))
        }
        return out
    }

    func validate() throws { _ = try resolved() }

    /// bind(2) without SO_REUSEPORT: the listeners below set it (one per
    /// thread), and would otherwise quietly join the group of another
    /// process on the same port, a stale serve or a balancer, and share
    /// its connections. Returns why the address cannot be used, or nil.
    static func probe(_ a: SocketAddress) -> String? {
        let fd = socket(a.ip.isV4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return String(cString: strerror(errno)) }
        defer { close(fd) }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if !a.ip.isV4 {
            _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        var (ss, len) = Sockets.storage(for: a)
        let rc = withUnsafePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        return rc == 0 ? nil : String(cString: strerror(errno))
    }

    func run() throws {
        let backends = try resolved()
        _ = benchRaiseFileLimit()
        BenchSignals.install()
        // Listeners are made here, so that a port in use is reported before
        // anything starts; each thread gets its own SO_REUSEPORT member.
        for (a, _) in backends {
            if let problem = BenchServe.probe(a) { throw BenchFailure("listen \(a): \(problem)") }
        }
        var workers: [BenchServeWorker] = []
        for _ in 0..<threads {
            var fds: [Int32] = []
            for (a, _) in backends {
                do {
                    fds.append(try Sockets.listener(a, backlog: 4096))
                } catch {
                    throw BenchFailure("listen \(a): \(error)")
                }
            }
            workers.append(BenchServeWorker(listenFDs: fds, names: backends.map { $0.1 }))
        }
        var running: [BenchThread] = []
        for w in workers { running.append(try BenchThread { w.run() }) }
        for (a, n) in backends { benchStdout("serving \(n) on \(a)\n") }

        func totals() -> [Int] {
            var t = [Int](repeating: 0, count: backends.count)
            for w in workers {
                for l in 0..<backends.count { t[l] += w.counters.accepted[l].value.load(ordering: .relaxed) }
            }
            return t
        }
        var second: UInt64 = 1
        let startNs = benchNowNs()
        var last = 0
        var lastNs = startNs
        while !workers.allSatisfy({ $0.counters.finished.load(ordering: .acquiring) }) {
            benchSleep(ms: 50)
            let now = benchNowNs()
            guard stats, now >= startNs + second * 1_000_000_000 else { continue }
            second = (now - startNs) / 1_000_000_000 + 1
            let sum = totals().reduce(0, +)
            let rate = Double(sum - last) * 1e9 / Double(max(1, now - lastNs))
            last = sum
            lastNs = now
            benchStderr("serve: \(benchFixed(rate, 0)) conn/s  total \(sum)")
        }
        for t in running { t.join() }
        for w in workers { for fd in w.listenFDs { close(fd) } }
        if let e = workers.compactMap({ $0.setupError }).first {
            throw BenchFailure(e)
        }
        let t = totals()
        let failures = workers.reduce(0) { $0 + $1.counters.failures.load(ordering: .relaxed) }
        for (i, (a, n)) in backends.enumerated() {
            benchStderr("serve: \(n) on \(a): \(t[i]) connections")
        }
        if failures > 0 { benchStderr("serve: \(failures) failed accepts, sends or closes") }
    }
}

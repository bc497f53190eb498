import XCTest
@testable import StickyCore

final class ConfigTests: XCTestCase {
    // MARK: Helpers

    /// Asserts that `text` fails at `line` (and `column`, when given) with a
    /// message containing every one of `fragments`.
    private func assertError(
        _ text: String, line expectedLine: Int?, column: Int? = nil, _ fragments: String...,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        guard let error = configError(text, file: file, line: line) else { return }
        XCTAssertEqual(error.file, "test.yaml", file: file, line: line)
        XCTAssertEqual(error.line, expectedLine, "\(error)", file: file, line: line)
        if let column { XCTAssertEqual(error.column, column, "\(error)", file: file, line: line) }
        for fragment in fragments {
            XCTAssertTrue(error.message.contains(fragment), "'\(error.message)' lacks '\(fragment)'", file: file, line: line)
        }
    }

    /// A valid config of one listener and one pool, with `extra` appended at
    /// line 7. Lines: 1 listeners, 2 listener, 3 pools, 4 pool name,
    /// 5 targets, 6 target.
    private func minimal(_ extra: String = "") -> String {
        """
        listeners:
          - address: 127.0.0.1:7001
        pools:
          - name: web
            targets:
              - address: 127.0.0.1:8081

        """ + extra
    }

    private static let defaultConfigPath = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("config/stickyd.yaml").path

    // MARK: Files that parse

    func testShippedConfigParses() throws {
        let config = try ConfigLoader.load(path: Self.defaultConfigPath)
        XCTAssertEqual(config.engine, .copy)
        XCTAssertEqual(config.workers, 0)
        XCTAssertEqual(config.listeners, [
            ListenerConfig(address: SocketAddress("127.0.0.1:50051")!, pool: "greeter", backlog: 4096),
        ])
        XCTAssertEqual(config.pools.count, 1)
        let pool = try XCTUnwrap(config.pool(named: "greeter"))
        XCTAssertEqual(pool.targets, (1...3).map {
            TargetSpec(address: SocketAddress("127.0.0.1:5006\($0)")!, weight: 1, name: "pod-\($0)")
        })
        XCTAssertEqual(config.limits, Limits())
        XCTAssertEqual(config.timeouts, Timeouts())
        XCTAssertEqual(config.connectRetries, 2)
        XCTAssertEqual(config.adminSocket, "/run/stickyd/admin.sock")
        XCTAssertEqual(config.logLevel, "info")
        XCTAssertNil(config.pool(named: "nope"))
    }

    func testShippedConfigStatesTheDefaults() throws {
        // The shipped file doubles as documentation of the defaults, so it
        // must say exactly what leaving every optional key out would mean.
        let shipped = try ConfigLoader.load(path: Self.defaultConfigPath)
        // Pools are taken from the file, so their affinity is checked apart.
        XCTAssertEqual(shipped.pools.map(\.affinity), [AffinityConfig()])
        var defaults = StickyConfig(listeners: shipped.listeners, pools: shipped.pools)
        defaults.adminSocket = shipped.adminSocket
        // The one deliberate departure: the example serves metrics on loopback.
        XCTAssertNil(defaults.observability.metricsListen)
        XCTAssertEqual(shipped.observability.metricsListen, SocketAddress("127.0.0.1:9900"))
        defaults.observability.metricsListen = shipped.observability.metricsListen
        XCTAssertEqual(shipped, defaults)
    }

    func testOmittedKeysTakeDefaults() throws {
        let config = try ConfigLoader.parse(minimal(), file: "test.yaml")
        XCTAssertEqual(config.listeners[0].pool, "web", "the only pool is implied")
        XCTAssertEqual(config.listeners[0].backlog, ListenerConfig.defaultBacklog)
        XCTAssertEqual(config.pools[0].targets[0], TargetSpec(address: SocketAddress("127.0.0.1:8081")!, weight: 1, name: nil))
        XCTAssertEqual(config.engine, .copy)
        XCTAssertEqual(config.limits, Limits())
        XCTAssertEqual(config.timeouts, Timeouts())
        XCTAssertEqual(config.adminSocket, StickyConfig.adminSocketDefault)
        XCTAssertEqual(config.stateDir, StickyConfig.stateDirDefault)
        XCTAssertEqual(config.drain, DrainDefaults())
        XCTAssertEqual(config.pools[0].affinity, AffinityConfig())
        XCTAssertEqual(config.logLevel, "info")
    }

    func testEveryValueIsRead() throws {
        let config = try ConfigLoader.parse(minimal("""
            engine: splice
            workers: 4
            limits: { max_connections: 500, pipe_pool: 8, pipe_size: 1MiB, buffer_count: 32, buffer_size: 2048 }
            timeouts: { connect: 250ms, idle: 2h, shutdown: 1d }
            connect_retries: 0
            admin: { socket: /tmp/a.sock }
            log: { level: debug }
            """), file: "test.yaml")
        XCTAssertEqual(config.engine, .splice)
        XCTAssertEqual(config.workers, 4)
        XCTAssertEqual(config.limits.maxConnections, 500)
        XCTAssertEqual(config.limits.pipePool, 8)
        XCTAssertEqual(config.limits.pipeSize, 1 << 20)
        XCTAssertEqual(config.limits.bufferCount, 32)
        XCTAssertEqual(config.limits.bufferSize, 2048)
        XCTAssertEqual(config.timeouts.connectMs, 250)
        XCTAssertEqual(config.timeouts.idleMs, 7_200_000)
        XCTAssertEqual(config.timeouts.shutdownMs, 86_400_000)
        XCTAssertEqual(config.connectRetries, 0)
        XCTAssertEqual(config.adminSocket, "/tmp/a.sock")
        XCTAssertEqual(config.logLevel, "debug")
    }

    func testIPv6AndSeveralPools() throws {
        let config = try ConfigLoader.parse("""
            listeners:
              - { address: "[::1]:7001", pool: b }
              - { address: 127.0.0.1:7001, pool: a }
            pools:
              - { name: a, targets: [ { address: 127.0.0.1:8081 } ] }
              - { name: b, targets: [ { address: "[::1]:8081", weight: 0 }, { address: "[::1]:8082", weight: 3 } ] }
            """, file: "test.yaml")
        XCTAssertEqual(config.listeners.map(\.pool), ["b", "a"])
        XCTAssertEqual(config.pool(named: "b")?.targets.map(\.weight), [0, 3])
        XCTAssertEqual(config.listeners[0].address.description, "[::1]:7001")
    }

    // MARK: Shape and syntax errors

    func testYAMLSyntaxErrorHasLine() {
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
            pools: [
            """, line: 3, "YAML syntax error")  // the end of the last line: the file has no line 4
        assertError("""
            workers: 1
            engine: "splice
            """, line: 2, "YAML syntax error", "while scanning a quoted scalar at line 2, column 9")
    }

    func testTabIndentationIsExplained() {
        assertError("listeners:\n\t- address: 127.0.0.1:7001\n", line: 2, column: 1,
                    "YAML syntax error", "tabs for indentation")
    }

    func testSecondDocumentIsRefused() {
        assertError(minimal("---\nworkers: 1\n"), line: 7,
                    "YAML syntax error: expected a single document in the stream, but found another document")
    }

    func testTargetMustBeAMapping() {
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                targets:
                  - 127.0.0.1:8081
            """, line: 5, column: 9, "target must be a mapping (keys: address, weight, name), got '127.0.0.1:8081'")
    }

    func testAnchorsAndAliasesWork() throws {
        let config = try ConfigLoader.parse("""
            listeners:
              - { address: 127.0.0.1:7001, pool: a }
              - { address: 127.0.0.1:7002, pool: b }
            pools:
              - name: a
                targets: &shared
                  - { address: 127.0.0.1:8081 }
              - name: b
                targets: *shared
            """, file: "test.yaml")
        XCTAssertEqual(config.pools[0].targets, config.pools[1].targets)
    }

    func testDuplicateYAMLKey() {
        assertError(minimal("workers: 1\nworkers: 2\n"), line: 7, column: 1, "'workers' appears more than once")
    }

    func testUnknownTopLevelKeySuggestsClosest() {
        assertError(minimal("conect_retries: 3\n"), line: 7, column: 1,
                    "unknown key 'conect_retries' in the top level", "did you mean 'connect_retries'?")
    }

    func testUnknownKeyInsideFlowMapping() {
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
            pools:
              - name: web
                targets:
                  - { address: 127.0.0.1:8081, wieght: 2 }
            """, line: 6, column: 36, "unknown key 'wieght' in target", "did you mean 'weight'?")
    }

    func testUnknownKeyWithNothingCloseListsKnownKeys() {
        assertError(minimal("limits: { colour: blue }\n"), line: 7, column: 11,
                    "unknown key 'colour' in limits", "known keys: max_connections, pipe_pool")
    }

    func testCamelCaseKeyFindsSnakeCase() {
        assertError(minimal("limits: { maxConnections: 5 }\n"), line: 7,
                    "did you mean 'max_connections'?")
    }

    func testTopLevelHealthSaysWhereItGoes() {
        assertError(minimal("health: { interval: 5s }\n"), line: 7, "'health' is set per pool", "pools[].health")
    }

    func testMetricsAndLogKeysAreRead() throws {
        let config = try ConfigLoader.parse(minimal("""
            metrics:
              listen: 127.0.0.1:9900
            log:
              level: notice
              format: json
              access: /var/log/stickyd/access.log
            """), file: "test.yaml")
        XCTAssertEqual(config.observability.metricsListen, SocketAddress("127.0.0.1:9900"))
        XCTAssertEqual(config.observability.logFormat, .json)
        XCTAssertEqual(config.observability.accessLog, .file("/var/log/stickyd/access.log"))
        XCTAssertEqual(config.logLevel, "notice")
    }

    func testMetricsAndAccessLogAreOffByDefault() throws {
        let config = try ConfigLoader.parse(minimal("metrics: {}\nlog: { access: none }\n"), file: "test.yaml")
        XCTAssertNil(config.observability.metricsListen)
        XCTAssertEqual(config.observability.accessLog, AccessLogDestination.none)
        XCTAssertEqual(config.observability.logFormat, .text)
        let stderr = try ConfigLoader.parse(minimal("log: { access: stderr }\n"), file: "test.yaml")
        XCTAssertEqual(stderr.observability.accessLog, .stderr)
        XCTAssertFalse(stderr.observability.accessLogPlacement)
        let placement = try ConfigLoader.parse(minimal("log: { access: stderr, access_placement: true }\n"), file: "test.yaml")
        XCTAssertTrue(placement.observability.accessLogPlacement)
        assertError(minimal("log: { access_placement: sometimes }\n"), line: 7, column: 26,
                    "log.access_placement must be true or false, got 'sometimes'")
    }

    func testBadMetricsAndLogValues() {
        assertError(minimal("metrics: { listen: localhost:9900 }\n"), line: 7, column: 20,
                    "metrics.listen 'localhost:9900' is not an address")
        assertError(minimal("metrics: { port: 9900 }\n"), line: 7, "unknown key 'port' in metrics")
        assertError(minimal("log: { format: jsonl }\n"), line: 7, column: 16,
                    "log.format must be one of text, json, got 'jsonl' (did you mean 'json'?)")
        assertError(minimal("log: { access: access.log }\n"), line: 7, column: 16,
                    "log.access must be none, stderr or an absolute file path, got 'access.log'")
        assertError(minimal("metrics: { listen: 127.0.0.1:7001 }\n"), line: 7, column: 20,
                    "metrics.listen 127.0.0.1:7001 is also a traffic listener (line 2)")
    }

    func testAffinityDrainAndAdminKeysAreRead() throws {
        let config = try ConfigLoader.parse("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                affinity:
                  mode: absolute
                  timeout: 3h
                  capacity: 5000
                  mask_v4: 24
                  mask_v6: 64
                  balance_factor: off
                  hash_key: 000102030405060708090a0b0c0d0e0f
                targets: [ { address: 127.0.0.1:8081 } ]
            drain: { mode: sticky, timeout: 30s, grace: 2s }
            admin: { socket: none, allow_uids: [1000], allow_gids: [50, 51] }
            state_dir: /tmp/stickyd-state
            """, file: "t.yaml")
        let a = config.pools[0].affinity
        XCTAssertEqual(a.mode, .absolute)
        XCTAssertEqual(a.timeoutMs, 3 * 3_600_000)
        XCTAssertEqual(a.capacity, 5000)
        XCTAssertEqual(a.maskV4, 24)
        XCTAssertEqual(a.maskV6, 64)
        XCTAssertNil(a.balanceFactor)
        XCTAssertEqual(a.hashKey, SipKey(hex: "000102030405060708090a0b0c0d0e0f"))
        XCTAssertEqual(config.drain.mode, .sticky)
        XCTAssertEqual(config.drain.timeoutMs, 30_000)
        XCTAssertEqual(config.drain.graceMs, 2_000)
        XCTAssertNil(config.adminSocket)
        XCTAssertEqual(config.adminAllowUIDs, [1000])
        XCTAssertEqual(config.adminAllowGIDs, [50, 51])
        XCTAssertEqual(config.stateDir, "/tmp/stickyd-state")
    }

    func testBadAffinityValuesNameTheirLine() {
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                affinity:
                  mask_v4: 33
                targets: [ { address: 127.0.0.1:8081 } ]
            """, line: 5, "mask_v4")
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                affinity: { hash_key: xyz }
                targets: [ { address: 127.0.0.1:8081 } ]
            """, line: 4, "hash_key must be 32 hex digits")
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                affinity: { balance_factor: 0.5 }
                targets: [ { address: 127.0.0.1:8081 } ]
            """, line: 4, "balance_factor")
        assertError(minimal("drain: { mode: gentle }\n"), line: 7, "drain.mode must be strict or sticky")
    }

    func testMissingRequiredKeyIsReportedAtItsMapping() {
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
            pools:
              - name: web
                targets:
                  - weight: 2
                    name: a
            """, line: 6, column: 9, "target is missing required key 'address'")
        assertError("""
            # comment
            listeners:
              - address: 127.0.0.1:7001
            """, line: 2, column: 1, "the top level is missing required key 'pools'")
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
            pools:
              - targets: [ { address: 127.0.0.1:8081 } ]
            """, line: 4, column: 5, "pool is missing required key 'name'")
    }

    func testWrongTypes() {
        assertError(minimal("workers: many\n"), line: 7, column: 10, "workers must be an integer, got 'many'")
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
            pools:
              - name: web
                targets:
                  - { address: 127.0.0.1:8081, weight: abc }
            """, line: 6, column: 44, "weight must be an integer, got 'abc'")
        assertError("""
            pools: [ { name: web, targets: [ { address: 127.0.0.1:8081 } ] } ]
            listeners: 3
            """, line: 2, column: 12, "listeners must be a list, got '3'")
        assertError(minimal("log: debug\n"), line: 7, column: 6, "log must be a mapping (keys: level, format, access, access_placement), got 'debug'")
        assertError(minimal("admin: { socket: }\n"), line: 7, "admin.socket must be a string, got nothing")
        assertError(minimal("log: { level: [info] }\n"), line: 7, column: 15, "log.level must be a string, got a list")
        assertError("- a\n- b\n", line: 1, "the top level must be a mapping (keys: engine, workers, listeners", "got a list")
    }

    func testEmptyFile() {
        guard let error = configError("# nothing here\n") else { return }
        XCTAssertNil(error.line)
        XCTAssertTrue(error.message.contains("needs at least 'listeners' and 'pools'"))
    }

    func testBadEngineSuggests() {
        assertError(minimal("engine: spice\n"), line: 7, column: 9,
                    "engine must be one of splice, copy, got 'spice'", "did you mean 'splice'?")
    }

    func testBadAddresses() {
        assertError("""
            listeners:
              - address: 127.0.0.1
            pools:
              - name: web
                targets: [ { address: 127.0.0.1:8081 } ]
            """, line: 2, column: 14, "address '127.0.0.1' is not an address", "IP:PORT")
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                targets: [ { address: "localhost:8081" } ]
            """, line: 4, column: 27, "'localhost:8081' is not an address", "host names are not resolved")
        assertError("""
            listeners: [ { address: "::1:7001" } ]
            pools: [ { name: web, targets: [ { address: 127.0.0.1:8081 } ] } ]
            """, line: 1, "is not an address")
    }

    func testBadDurationAndSize() {
        assertError(minimal("timeouts:\n  connect: 3000\n"), line: 8, column: 12,
                    "timeouts.connect must be a whole number with a unit", "got '3000'")
        assertError(minimal("timeouts: { idle: -5s }\n"), line: 7, "timeouts.idle must be a whole number with a unit")
        assertError(minimal("limits:\n  pipe_size: 64KB\n"), line: 8, column: 14,
                    "limits.pipe_size must be a size", "got '64KB'")
    }

    // MARK: Semantic errors, located

    func testDuplicatePoolName() {
        assertError("""
            listeners: [ { address: 127.0.0.1:7001, pool: web } ]
            pools:
              - name: web
                targets: [ { address: 127.0.0.1:8081 } ]
              - name: web
                targets: [ { address: 127.0.0.1:8082 } ]
            """, line: 5, column: 11, "pool name 'web' is used twice (first at line 3)")
    }

    func testDuplicateTargetAddressAndName() {
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                targets:
                  - { address: 127.0.0.1:8081 }
                  - { address: 127.0.0.1:8082 }
                  - { address: 127.0.0.1:8081 }
            """, line: 7, column: 20, "pool 'web' lists target 127.0.0.1:8081 twice (first at line 5)")
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                targets:
                  - { address: 127.0.0.1:8081, name: a }
                  - { address: 127.0.0.1:8082, name: a }
            """, line: 6, "two targets named 'a'")
    }

    func testDuplicateListener() {
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
              - address: 127.0.0.1:7001
            pools: [ { name: web, targets: [ { address: 127.0.0.1:8081 } ] } ]
            """, line: 3, column: 14, "listener 127.0.0.1:7001 is listed twice (first at line 2)")
    }

    func testListenerPoolMustExist() {
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
                pool: gretter
            pools: [ { name: greeter, targets: [ { address: 127.0.0.1:8081 } ] } ]
            """, line: 3, column: 11, "no pool named 'gretter'", "did you mean 'greeter'?")
        guard let error = configError("""
            listeners: [ { address: 127.0.0.1:7001, pool: x } ]
            pools: [ { name: a, targets: [ { address: 127.0.0.1:8081 } ] } ]
            """) else { return }
        XCTAssertEqual(error.message, "listener 127.0.0.1:7001: no pool named 'x'", "one letter is not a typo of another")
    }

    func testPoolMayBeOmittedOnlyWithOnePool() {
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
            pools:
              - { name: a, targets: [ { address: 127.0.0.1:8081 } ] }
              - { name: b, targets: [ { address: 127.0.0.1:8082 } ] }
            """, line: 2, column: 5, "names no pool", "there are 2: a, b")
    }

    func testAtLeastOneListenerAndPool() {
        assertError("""
            listeners: []
            pools: [ { name: web, targets: [ { address: 127.0.0.1:8081 } ] } ]
            """, line: 1, column: 12, "the number of listeners must be from 1 to 64, got 0")
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools: []
            """, line: 2, column: 8, "the number of pools must be from 1 to 64, got 0")
    }

    func testTargetCountAndWeights() {
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                targets: []
            """, line: 4, column: 14, "pool 'web': the number of targets must be from 1 to 64, got 0")
        let many = (1...65).map { "      - { address: 127.0.0.1:\(8000 + $0) }" }.joined(separator: "\n")
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                targets:
            \(many)
            """, line: 5, "got 65")
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                targets:
                  - { address: 127.0.0.1:8081, weight: 10001 }
            """, line: 5, column: 44, "weight must be from 0 to 10000, got 10001")
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools:
              - name: web
                targets:
                  - { address: 127.0.0.1:8081, weight: 0 }
                  - { address: 127.0.0.1:8082, weight: 0 }
            """, line: 5, column: 7, "no target with a weight above 0")
    }

    func testBadNames() {
        assertError("""
            listeners: [ { address: 127.0.0.1:7001 } ]
            pools: [ { name: "my pool", targets: [ { address: 127.0.0.1:8081 } ] } ]
            """, line: 2, column: 18, "pool name 'my pool' must be 1 to 64 characters")
    }

    func testRangesReportTheirLine() {
        let cases: [(String, Int, String)] = [
            ("workers: 257\n", 7, "workers must be from 0 to 256, got 257"),
            ("connect_retries: 17\n", 7, "connect_retries must be from 0 to 16, got 17"),
            ("limits:\n  max_connections: 0\n", 8, "limits.max_connections must be from 1 to 1000000, got 0"),
            ("limits:\n  pipe_pool: 65537\n", 8, "limits.pipe_pool must be from 1 to 65536"),
            ("limits:\n  pipe_size: 96KiB\n", 8, "limits.pipe_size must be a power of two from 4KiB to 1MiB, got 96KiB"),
            ("limits:\n  pipe_size: 2M\n", 8, "got 2MiB"),
            ("limits:\n  buffer_count: 1000\n", 8, "limits.buffer_count must be a power of two from 16 to 32768, got 1000"),
            ("limits:\n  buffer_size: 512\n", 8, "limits.buffer_size must be from 1KiB to 1MiB, got 512"),
            ("timeouts:\n  connect: 0s\n", 8, "timeouts.connect must be more than 0 and less than 30d, got 0ms"),
            ("timeouts:\n  idle: 30d\n", 8, "timeouts.idle must be more than 0 and less than 30d, got 30d"),
            ("admin:\n  socket: run/admin.sock\n", 8, "admin.socket must be an absolute path"),
            ("admin:\n  socket: /\(String(repeating: "a", count: 107))\n", 8, "a Unix socket path must be under 108 bytes"),
            ("log:\n  level: warn\n", 8, "log.level must be one of trace, debug, info, notice, warning, error, critical, got 'warn' (did you mean 'warning'?)"),
        ]
        for (extra, line, message) in cases {
            assertError(minimal(extra), line: line, message)
        }
        assertError("""
            listeners:
              - address: 127.0.0.1:7001
                backlog: 0
            pools: [ { name: web, targets: [ { address: 127.0.0.1:8081 } ] } ]
            """, line: 3, column: 14, "listener 127.0.0.1:7001: backlog must be from 1 to 65535, got 0")
    }

    func testBoundaryValuesAreAccepted() throws {
        let config = try ConfigLoader.parse(minimal("""
            workers: 256
            connect_retries: 16
            limits: { max_connections: 1000000, pipe_pool: 65536, pipe_size: 4KiB, buffer_count: 32768, buffer_size: 1MiB }
            timeouts: { connect: 1ms, idle: 29d, shutdown: 719h }
            admin: { socket: /\(String(repeating: "a", count: 106)) }
            takeover_socket: /\(String(repeating: "t", count: 106))
            log: { level: critical }
            """), file: "test.yaml")
        XCTAssertEqual(config.limits.pipeSize, 4096)
        XCTAssertEqual(config.adminSocket?.utf8.count, 107)
        XCTAssertEqual(config.takeoverSocketPath?.utf8.count, 107)
    }

    // MARK: admin.remote

    /// `minimal()` plus an admin.remote section, whose keys start at line 9.
    private func remote(_ keys: String) -> String {
        minimal("admin:\n  remote:\n" + keys.split(separator: "\n").map { "    \($0)\n" }.joined())
    }

    private static let remoteFiles = """
        cert: /etc/stickyd/admin.crt
        key: /etc/stickyd/admin.key
        client_ca: /etc/stickyd/clients-ca.crt
        """

    func testRemoteAdminIsOffByDefault() throws {
        XCTAssertNil(try ConfigLoader.parse(minimal(), file: "test.yaml").adminRemote)
    }

    func testRemoteAdminParses() throws {
        let fingerprint = (0..<32).map { String(format: "%02x", $0 * 7 % 256) }.joined(separator: ":")
        let config = try ConfigLoader.parse(remote("""
            listen: "[::1]:9443"
            \(Self.remoteFiles)
            allow: [ "sha256:\(fingerprint)", "CN=rollout-controller", "SHA256:\(fingerprint.uppercased().replacingOccurrences(of: ":", with: ""))" ]
            """), file: "test.yaml")
        let r = try XCTUnwrap(config.adminRemote)
        XCTAssertEqual(r.listen, SocketAddress("[::1]:9443"))
        XCTAssertEqual(r.certificate, "/etc/stickyd/admin.crt")
        XCTAssertEqual(r.privateKey, "/etc/stickyd/admin.key")
        XCTAssertEqual(r.clientCA, "/etc/stickyd/clients-ca.crt")
        let hex = fingerprint.uppercased().replacingOccurrences(of: ":", with: "")
        // Colons and case do not matter; the form is normalised.
        XCTAssertEqual(r.allow, [.sha256(hex), .commonName("rollout-controller"), .sha256(hex)])
        XCTAssertEqual(r.allow[0].description, "sha256:\(fingerprint.uppercased())")
        XCTAssertEqual(r.allow[1].description, "CN=rollout-controller")
        // The Unix socket's settings are untouched.
        XCTAssertEqual(config.adminSocket, StickyConfig.adminSocketDefault)
    }

    func testRemoteAdminEmptyAllowListIsAccepted() throws {
        let config = try ConfigLoader.parse(remote("listen: 127.0.0.1:9443\n\(Self.remoteFiles)\nallow: []"), file: "test.yaml")
        XCTAssertEqual(config.adminRemote?.allow, [])
    }

    func testAllowedClientMatching() {
        let hex = String(repeating: "AB", count: 32)
        XCTAssertTrue(AllowedClient.sha256(hex).matches(sha256: hex.lowercased(), commonName: nil))
        XCTAssertFalse(AllowedClient.sha256(hex).matches(sha256: String(repeating: "AC", count: 32), commonName: "x"))
        XCTAssertTrue(AllowedClient.commonName("ctl").matches(sha256: hex, commonName: "ctl"))
        // Exact: no case folding, no prefixes.
        XCTAssertFalse(AllowedClient.commonName("ctl").matches(sha256: hex, commonName: "CTL"))
        XCTAssertFalse(AllowedClient.commonName("ctl").matches(sha256: hex, commonName: "ctl2"))
        XCTAssertFalse(AllowedClient.commonName("ctl").matches(sha256: hex, commonName: nil))
        for bad in ["", "ctl", "CN=", "sha256:", "sha256:AB", "sha256:\(String(repeating: "G", count: 64))",
                    "sha1:\(String(repeating: "A", count: 40))", "md5:\(hex)", "sha256:\(hex)AB"] {
            XCTAssertNil(AllowedClient(bad), bad)
        }
    }

    func testRemoteAdminErrorsNameTheirLine() {
        // Lines: 7 admin, 8 remote, 9 onwards the keys in order.
        let files = Self.remoteFiles
        let cases: [(String, Int, String)] = [
            ("listen: 127.0.0.1\n\(files)\nallow: []", 9, "admin.remote.listen '127.0.0.1' is not an address"),
            ("listen: 127.0.0.1:0\n\(files)\nallow: []", 9, "admin.remote.listen '127.0.0.1:0' is not an address"),
            ("listen: 127.0.0.1:7001\n\(files)\nallow: []", 9, "admin.remote.listen 127.0.0.1:7001 is also a traffic listener (line 2)"),
            ("listen: 127.0.0.1:9443\ncert: admin.crt\nkey: /k\nclient_ca: /c\nallow: []", 10, "admin.remote.cert must be an absolute path, got 'admin.crt'"),
            ("listen: 127.0.0.1:9443\ncert: /c\nkey: k\nclient_ca: /c\nallow: []", 11, "admin.remote.key must be an absolute path"),
            ("listen: 127.0.0.1:9443\ncert: /c\nkey: /k\nclient_ca: ca.pem\nallow: []", 12, "admin.remote.client_ca must be an absolute path"),
            ("listen: 127.0.0.1:9443\n\(files)\nallow: [ CN=ok, rollout ]", 13, "admin.remote.allow[1] must be sha256:<fingerprint> (64 hex digits, colons allowed) or CN=<common name>, got 'rollout'"),
            ("listen: 127.0.0.1:9443\n\(files)\nallow: [ \"sha256:AB:CD\" ]", 13, "got 'sha256:AB:CD'"),
            ("listen: 127.0.0.1:9443\n\(files)\nallow: CN=ok", 13, "admin.remote.allow must be a list"),
            ("listen: 127.0.0.1:9443\n\(files)", 9, "admin.remote is missing required key 'admin.remote.allow'"),
            ("listen: 127.0.0.1:9443\ncert: /c\nkey: /k\nallow: []", 9, "admin.remote is missing required key 'admin.remote.client_ca'"),
            ("\(files)\nallow: []", 9, "admin.remote is missing required key 'admin.remote.listen'"),
            ("listen: 127.0.0.1:9443\n\(files)\nallow: []\nciphers: HIGH", 14, "unknown key 'ciphers' in admin.remote"),
            ("listen: 127.0.0.1:9443\ncert:\n\(files.split(separator: "\n").dropFirst().joined(separator: "\n"))\nallow: []", 10, "admin.remote.cert must be a string, got nothing"),
        ]
        for (keys, line, message) in cases {
            assertError(remote(keys), line: line, message)
        }
        assertError(minimal("admin:\n  remote: 127.0.0.1:9443\n"), line: 8, "admin.remote must be a mapping (keys: listen, cert, key, client_ca, allow)")
        assertError(minimal("admin:\n  remotes: {}\n"), line: 8, "unknown key 'remotes' in admin (did you mean 'remote'?)")
    }

    // MARK: Files

    func testLoadMissingFile() {
        XCTAssertThrowsError(try ConfigLoader.load(path: "/nonexistent/stickyd.yaml")) { error in
            let error = error as? ConfigError
            XCTAssertEqual(error?.file, "/nonexistent/stickyd.yaml")
            XCTAssertNil(error?.line)
            XCTAssertTrue(error?.message.contains("cannot open") ?? false, "\(String(describing: error))")
        }
    }

    func testLoadReportsThePathGiven() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stickyd-config-\(getpid()).yaml").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try minimal("workers: -1\n").write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try ConfigLoader.load(path: path)) { error in
            XCTAssertEqual("\(error)", "\(path):7:10: workers must be from 0 to 256, got -1")
        }
    }

    // MARK: validate() and quick mode

    func testValidateWithoutFileHasNoLine() {
        var config = StickyConfig(
            listeners: [ListenerConfig(address: SocketAddress("127.0.0.1:7001")!, pool: "web")],
            pools: [PoolConfig(name: "web", targets: [TargetSpec(address: SocketAddress("127.0.0.1:8081")!)])])
        XCTAssertNoThrow(try config.validate(file: "api"))
        config.limits.bufferCount = 100
        XCTAssertThrowsError(try config.validate(file: "api")) { error in
            XCTAssertEqual(error as? ConfigError, ConfigError(
                file: "api", message: "limits.buffer_count must be a power of two from 16 to 32768, got 100"))
        }
        config.limits.bufferCount = 16
        config.listeners[0].pool = "other"
        XCTAssertThrowsError(try config.validate(file: "api")) { error in
            XCTAssertEqual("\(error)", "api: listener 127.0.0.1:7001: no pool named 'other'")
        }
    }

    func testQuickMode() throws {
        let config = try StickyConfig.quick(
            listen: ["127.0.0.1:7001", "[::1]:7001"], targets: ["127.0.0.1:8081", "127.0.0.1:8082"])
        XCTAssertEqual(config.pools, [PoolConfig(name: "default", targets: [
            TargetSpec(address: SocketAddress("127.0.0.1:8081")!),
            TargetSpec(address: SocketAddress("127.0.0.1:8082")!),
        ])])
        XCTAssertEqual(config.listeners.map(\.pool), ["default", "default"])
        XCTAssertEqual(config.listeners.map(\.backlog), [4096, 4096])
        XCTAssertEqual(config.listeners[1].address.description, "[::1]:7001")
        // Two quick runs on one host must not share a state file or fight
        // over an admin socket: quick mode has neither unless flags name them.
        XCTAssertNil(config.adminSocket)
        XCTAssertNil(config.stateDir)
        XCTAssertNil(config.takeoverSocketPath)
        var defaults = StickyConfig(listeners: config.listeners, pools: config.pools)
        defaults.adminSocket = nil
        defaults.stateDir = nil
        XCTAssertEqual(config, defaults, "everything else is a default")
    }

    func testQuickModeErrors() {
        let cases: [([String], [String], String)] = [
            (["7001"], ["127.0.0.1:8081"], "<command line>: --listen '7001' is not an address; expected IP:PORT"),
            (["127.0.0.1:7001"], ["db:5432"], "<command line>: --target 'db:5432' is not an address"),
            (["127.0.0.1:7001"], [], "<command line>: pool 'default': the number of targets must be from 1 to 64, got 0"),
            ([], ["127.0.0.1:8081"], "<command line>: the number of listeners must be from 1 to 64, got 0"),
            (["127.0.0.1:7001"], ["127.0.0.1:8081", "127.0.0.1:8081"],
             "<command line>: pool 'default' lists target 127.0.0.1:8081 twice (first at pools[0].targets[0].address)"),
            (["127.0.0.1:7001", "127.0.0.1:7001"], ["127.0.0.1:8081"],
             "<command line>: listener 127.0.0.1:7001 is listed twice (first at listeners[0].address)"),
        ]
        for (listen, targets, expected) in cases {
            XCTAssertThrowsError(try StickyConfig.quick(listen: listen, targets: targets)) { error in
                XCTAssertTrue("\(error)".hasPrefix(expected), "'\(error)' does not start with '\(expected)'")
                XCTAssertNil((error as? ConfigError)?.line)
            }
        }
    }

    func testErrorDescription() {
        XCTAssertEqual(ConfigError(file: "f", line: 3, column: 7, message: "m").description, "f:3:7: m")
        XCTAssertEqual(ConfigError(file: "f", line: 3, message: "m").description, "f:3: m")
        XCTAssertEqual(ConfigError(file: "f", message: "m").description, "f: m")
    }

    // MARK: Durations and sizes

    func testParseDuration() {
        let cases: [(String, Millis?)] = [
            ("250ms", 250), ("5s", 5_000), ("2m", 120_000), ("3h", 10_800_000), ("1d", 86_400_000),
            ("0s", 0), ("300s", 300_000), ("007s", 7_000),
            ("", nil), ("5", nil), ("s", nil), ("-5s", nil), ("+5s", nil), ("1.5s", nil), ("5 s", nil),
            (" 5s", nil), ("5S", nil), ("5sec", nil), ("5us", nil), ("1m30s", nil), ("٣s", nil),
            ("9223372036854775807ms", Millis.max), ("9223372036854775807s", nil),
            ("106751991167d", 9_223_372_036_828_800_000), ("106751991168d", nil), ("99999999999999999999ms", nil),
        ]
        for (text, expected) in cases {
            XCTAssertEqual(parseDuration(text), expected, "'\(text)'")
        }
    }

    func testParseByteSize() {
        let cases: [(String, Int?)] = [
            ("65536", 65_536), ("0", 0), ("64KiB", 65_536), ("64K", 65_536), ("16k", 16_384),
            ("1MiB", 1 << 20), ("1M", 1 << 20), ("2m", 2 << 20), ("1GiB", 1 << 30), ("1G", 1 << 30), ("1g", 1 << 30),
            ("", nil), ("KiB", nil), ("64KB", nil), ("64kib", nil), ("64 KiB", nil), ("-1", nil), ("1.5M", nil),
            ("1T", nil), ("64B", nil), ("9223372036854775807", Int.max), ("9223372036854775807K", nil),
            ("8589934592G", nil),
        ]
        for (text, expected) in cases {
            XCTAssertEqual(parseByteSize(text), expected, "'\(text)'")
        }
    }

    func testFormatsRoundTrip() {
        for millis: Millis in [1, 999, 1_000, 90_000, 3_600_000, 86_400_000, 2_592_000_000] {
            XCTAssertEqual(parseDuration(formatDuration(millis)), millis)
        }
        for bytes in [1, 1000, 1024, 65_536, 1 << 20, 3 << 30] {
            XCTAssertEqual(parseByteSize(formatByteSize(bytes)), bytes)
        }
        XCTAssertEqual(formatDuration(Bounds.timeoutCeiling), "30d")
        XCTAssertEqual(formatByteSize(16_384), "16KiB")
    }
}

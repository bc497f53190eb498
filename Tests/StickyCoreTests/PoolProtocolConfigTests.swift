import XCTest
@testable import StickyCore

/// `pools[].protocol` and `pools[].max_connection_age` (docs/CONFIG.md,
/// docs/HTTP2.md).
final class PoolProtocolConfigTests: XCTestCase {
    /// Lines: 1 listeners, 2 listener, 3 pools, 4 name, 5 targets, 6 target,
    /// then `poolExtra` from line 7.
    func config(_ poolExtra: String = "") -> String {
        """
        listeners:
          - address: 127.0.0.1:7001
        pools:
          - name: greeter
            targets:
              - address: 127.0.0.1:50061
        \(poolExtra)
        """
    }

    func testDefaults() throws {
        let pool = try ConfigLoader.parse(config(), file: "test.yaml").pools[0]
        XCTAssertEqual(pool.wireProtocol, .tcp)
        XCTAssertNil(pool.maxConnectionAgeMs)
        XCTAssertNil(pool.connectionAgeMs(random: 12345))
    }

    func testKeysAreRead() throws {
        let on = try ConfigLoader.parse(config("    protocol: h2c\n    max_connection_age: 30m\n"), file: "test.yaml")
        XCTAssertEqual(on.pools[0].wireProtocol, .h2c)
        XCTAssertEqual(on.pools[0].maxConnectionAgeMs, 1_800_000)
        for off in ["off", "false"] {
            let c = try ConfigLoader.parse(config("    protocol: h2c\n    max_connection_age: \(off)\n"), file: "test.yaml")
            XCTAssertNil(c.pools[0].maxConnectionAgeMs, off)
        }
        let tcp = try ConfigLoader.parse(config("    protocol: tcp\n    max_connection_age: off\n"), file: "test.yaml")
        XCTAssertEqual(tcp.pools[0].wireProtocol, .tcp, "off is allowed on any pool: it is the default")
    }

    func testErrorsNameTheirPlace() {
        let cases: [(String, String, Int, Int, String)] = [
            ("misspelt protocol", config("    protocol: h2\n"), 7, 15,
             "protocol must be one of tcp, h2c, got 'h2' (did you mean 'h2c'?)"),
            ("unknown protocol", config("    protocol: grpc-tls\n"), 7, 15, "protocol must be one of tcp, h2c, got 'grpc-tls'"),
            ("age on a tcp pool", config("    max_connection_age: 30m\n"), 7, 25,
             "pool 'greeter': max_connection_age needs protocol: h2c; it ends a connection with an HTTP/2 GOAWAY, which a tcp pool cannot send"),
            ("age too short", config("    protocol: h2c\n    max_connection_age: 500ms\n"), 8, 25,
             "pool 'greeter': max_connection_age must be at least 1s and less than 30d, or off, got 500ms"),
            ("age too long", config("    protocol: h2c\n    max_connection_age: 30d\n"), 8, 25, "less than 30d"),
            ("age not a duration", config("    protocol: h2c\n    max_connection_age: soon\n"), 8, 25,
             "max_connection_age must be a whole number with a unit (250ms, 5s, 2m, 3h, 1d), got 'soon'"),
            ("age without a unit", config("    protocol: h2c\n    max_connection_age: 1800\n"), 8, 25, "a whole number with a unit"),
            ("age empty", config("    protocol: h2c\n    max_connection_age:\n"), 8, 24, "max_connection_age must be a duration or off, got nothing"),
            ("misspelt key", config("    max_conection_age: 30m\n"), 7, 5, "did you mean 'max_connection_age'"),
        ]
        for (name, text, line, column, fragment) in cases {
            guard let e = configError(text) else { continue }
            XCTAssertEqual(e.line, line, "\(name): \(e)")
            XCTAssertEqual(e.column, column, "\(name): \(e)")
            XCTAssertTrue(e.message.contains(fragment), "\(name): '\(e.message)' lacks '\(fragment)'")
        }
    }

    /// The same rule without a file: quick mode's `--protocol` and the
    /// flags are checked by `validate` with no line.
    func testValidateWithoutAFile() throws {
        var c = try StickyConfig.quick(listen: ["127.0.0.1:7001"], targets: ["127.0.0.1:50061"])
        c.pools[0].maxConnectionAgeMs = 60_000
        XCTAssertThrowsError(try c.validate(file: "<command line>")) {
            XCTAssertEqual(($0 as? ConfigError)?.message.contains("needs protocol: h2c"), true, "\($0)")
        }
        c.pools[0].wireProtocol = .h2c
        XCTAssertNoThrow(try c.validate(file: "<command line>"))
    }

    func testShippedGreeterPoolIsH2c() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("config/stickyd.yaml").path
        let pool = try XCTUnwrap(ConfigLoader.load(path: path).pool(named: "greeter"))
        XCTAssertEqual(pool.wireProtocol, .h2c)
    }

    // MARK: what the data plane reads

    func testConnectionAgeIsJitteredTenPercentEitherWay() {
        let pool = PoolConfig(name: "p", targets: [], wireProtocol: .h2c, maxConnectionAgeMs: 60_000)
        XCTAssertEqual(pool.connectionAgeMs(random: 0), 54_000)
        XCTAssertEqual(pool.connectionAgeMs(random: 12_000), 66_000)
        XCTAssertEqual(pool.connectionAgeMs(random: 12_001), 54_000)
        var rng = SplitMix64(seed: 15)
        var sum: Millis = 0
        var seen = Set<Millis>()
        for _ in 0..<10_000 {
            let age = pool.connectionAgeMs(random: rng.next())!
            XCTAssertTrue((54_000...66_000).contains(age), "\(age)")
            sum += age
            seen.insert(age / 1000)
        }
        XCTAssertEqual(Double(sum) / 10_000, 60_000, accuracy: 200)
        // Every whole second of the range is drawn (66 s is one value: 66,000).
        XCTAssertTrue(seen.isSuperset(of: Set(54...65)), "spread over the whole range: \(seen.sorted())")
        // The shortest age still has a spread.
        let short = PoolConfig(name: "p", targets: [], wireProtocol: .h2c, maxConnectionAgeMs: 1_000)
        XCTAssertEqual(short.connectionAgeMs(random: 0), 900)
        XCTAssertEqual(short.connectionAgeMs(random: 200), 1_100)
    }

    /// Under splice, h2c pools go through the copy engine: splice never
    /// shows the bytes to the frame tracker.
    func testH2cPoolsUseTheCopyEngine() {
        var c = StickyConfig(listeners: [], pools: [PoolConfig(name: "grpc", targets: [], wireProtocol: .h2c),
                                                    PoolConfig(name: "plain", targets: [])])
        c.engine = .splice
        XCTAssertEqual(c.engine(for: c.pools[0]), .copy)
        XCTAssertEqual(c.engine(for: c.pools[1]), .splice)
        XCTAssertTrue(c.needsBufferRing)
        c.pools[0].wireProtocol = .tcp
        XCTAssertFalse(c.needsBufferRing)
        c.engine = .copy
        XCTAssertTrue(c.needsBufferRing)
        XCTAssertEqual(c.engine(for: c.pools[1]), .copy)
    }
}

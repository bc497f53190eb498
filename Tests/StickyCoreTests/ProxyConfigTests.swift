import XCTest
@testable import StickyCore

/// `proxy_protocol` on listeners and `send_proxy` on pools.
final class ProxyConfigTests: XCTestCase {
    /// Lines: 1 listeners, 2 listener, 3.. `listenerExtra`, then pools.
    func config(listenerExtra: String = "", poolExtra: String = "") -> String {
        """
        listeners:
          - address: 127.0.0.1:7001
        \(listenerExtra)pools:
          - name: web
            targets:
              - address: 127.0.0.1:8081
        \(poolExtra)
        """
    }

    func testKeysAreRead() throws {
        let c = try ConfigLoader.parse(config(listenerExtra: """
                proxy_protocol:
                  from: [10.0.0.0/8, 127.0.0.1/32, "2001:db8::/32"]
                  timeout: 500ms

            """, poolExtra: "    send_proxy: v2\n"), file: "test.yaml")
        XCTAssertEqual(c.listeners[0].proxyProtocol?.from.map(\.description), ["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"])
        XCTAssertEqual(c.listeners[0].proxyProtocol?.timeoutMs, 500)
        XCTAssertEqual(c.pools[0].sendProxy, .v2)
    }

    func testDefaults() throws {
        let off = try ConfigLoader.parse(config(), file: "test.yaml")
        XCTAssertNil(off.listeners[0].proxyProtocol)
        XCTAssertNil(off.pools[0].sendProxy)
        let on = try ConfigLoader.parse(config(listenerExtra: "    proxy_protocol: {from: [127.0.0.1]}\n",
                                               poolExtra: "    send_proxy: none\n"), file: "test.yaml")
        XCTAssertEqual(on.listeners[0].proxyProtocol?.timeoutMs, ProxyAcceptConfig.defaultTimeoutMs)
        XCTAssertNil(on.pools[0].sendProxy)
    }

    func testErrorsNameTheirPlace() {
        let cases: [(String, String, Int, Int?, [String])] = [
            ("bad network", config(listenerExtra: "    proxy_protocol:\n      from: [10.0.0.0/8, 10.0.0.1/8]\n"),
             4, 26, ["proxy_protocol.from[1]", "host bits", "did you mean 10.0.0.0/8"]),
            ("not a network", config(listenerExtra: "    proxy_protocol:\n      from: [lb.example]\n"),
             4, 14, ["proxy_protocol.from[0]", "not a network"]),
            ("prefix too long", config(listenerExtra: "    proxy_protocol:\n      from: [\"::/129\"]\n"),
             4, 14, ["prefix length must be 0 to 128"]),
            ("empty list", config(listenerExtra: "    proxy_protocol:\n      from: []\n"),
             4, 13, ["proxy_protocol.from", "from 1 to 256"]),
            ("missing from", config(listenerExtra: "    proxy_protocol:\n      timeout: 3s\n"),
             4, 7, ["missing required key 'proxy_protocol.from'"]),
            ("unknown key", config(listenerExtra: "    proxy_protocol:\n      from: [127.0.0.1]\n      timout: 3s\n"),
             5, 7, ["timout", "did you mean 'timeout'"]),
            ("timeout too long", config(listenerExtra: "    proxy_protocol:\n      from: [127.0.0.1]\n      timeout: 2m\n"),
             5, 16, ["proxy_protocol.timeout", "at most 1m"]),
            ("bad send_proxy", config(poolExtra: "    send_proxy: v3\n"), 7, 17, ["send_proxy must be one of none, v1, v2"]),
        ]
        for (name, text, line, column, fragments) in cases {
            guard let e = configError(text) else { continue }
            XCTAssertEqual(e.line, line, "\(name): \(e)")
            if let column { XCTAssertEqual(e.column, column, "\(name): \(e)") }
            for f in fragments { XCTAssertTrue(e.message.contains(f), "\(name): '\(e.message)' lacks '\(f)'") }
        }
    }
}

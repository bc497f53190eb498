import XCTest
@testable import StickyCore

final class PeersConfigTests: XCTestCase {
    static func config(_ peers: String, key: Bool = true) -> String {
        """
        listeners:
          - address: 198.51.100.10:443
        pools:
          - name: web
            targets:
              - address: 192.0.2.21:8443
        \(key ? "    affinity: { hash_key: \"47b211c6be07be6e0111b87e1df74e98\" }" : "")
        \(peers)
        """
    }

    func testPeersAndVIPLoad() throws {
        let c = try ConfigLoader.parse(Self.config("""
            peers:
              name: a
              listen: 192.0.2.11:7700
              sync_timeout: 1500ms
              queue: 2048
              members:
                - {name: b, address: 192.0.2.12:7700}
            vip: {address: 198.51.100.10, interface: vip0}
            """), file: "t.yaml")
        XCTAssertEqual(c.peers?.name, "a")
        XCTAssertEqual(c.peers?.members, [.init(name: "b", address: SocketAddress("192.0.2.12:7700")!)])
        XCTAssertEqual(c.peers?.syncTimeoutMs, 1_500)
        XCTAssertEqual(c.peers?.queue, 2_048)
        XCTAssertEqual(c.vip, VIPConfig(address: IPAddress("198.51.100.10")!, interface: "vip0"))
        XCTAssertNil(c.peers?.tls, "plain TCP unless peers.tls says")
    }

    func testPeersTLSLoads() throws {
        let c = try ConfigLoader.parse(Self.config("""
            peers:
              name: a
              listen: 192.0.2.11:7700
              members: [{name: b, address: 192.0.2.12:7700}]
              tls: {cert: /etc/stickyd/a.crt, key: /etc/stickyd/a.key, ca: /etc/stickyd/peers-ca.crt}
            """), file: "t.yaml")
        XCTAssertEqual(c.peers?.tls, PeersConfig.TLS(certificate: "/etc/stickyd/a.crt", privateKey: "/etc/stickyd/a.key",
                                                     ca: "/etc/stickyd/peers-ca.crt"))
    }

    func testBadPeersConfigSaysWhy() {
        func fails(_ yaml: String, key: Bool = true, _ expect: String, line: UInt = #line) {
            XCTAssertThrowsError(try ConfigLoader.parse(Self.config(yaml, key: key), file: "t.yaml"), line: line) { e in
                XCTAssertTrue("\(e)".contains(expect), "\(e)", line: line)
            }
        }
        let member = "members: [{name: b, address: 192.0.2.12:7700}]"
        fails("peers: {name: a, listen: 192.0.2.11:7700, \(member)}", key: false, "needs affinity.hash_key with peers")
        fails("peers: {name: a, listen: 192.0.2.11:7700, members: [{name: a, address: 192.0.2.12:7700}]}", "used twice")
        fails("peers: {name: a, listen: 192.0.2.11:7700, members: [{name: b, address: 192.0.2.11:7700}]}", "used twice")
        fails("peers: {name: 'a b', listen: 192.0.2.11:7700, \(member)}", "peers.name must be")
        fails("peers: {name: a, listen: 198.51.100.10:443, \(member)}", "also a traffic listener")
        fails("peers: {name: a, listen: 192.0.2.11:7700, queue: 5, \(member)}", "peers.queue must be")
        fails("peers: {name: a, listen: 192.0.2.11:7700, membres: []}", "unknown key 'membres'")
        let peers = "peers: {name: a, listen: 192.0.2.11:7700, \(member)"
        fails(peers + ", tls: {cert: a.crt, key: a.key}}", "peers.tls.ca")
        fails(peers + ", tls: {cert: a.crt, key: a.key, ca: ca.crt, verify: none}}", "unknown key 'verify'")
        fails(peers + ", tls: {cert: '', key: a.key, ca: ca.crt}}", "peers.tls.cert must be a file path")
        fails(peers + ", tls: on}", "peers.tls")
        fails("vip: {address: 198.51.100.0/24, interface: vip0}", "vip.address must be one")
        fails("vip: {address: 198.51.100.10, interface: averyveryverylongname}", "vip.interface must be")
    }
}

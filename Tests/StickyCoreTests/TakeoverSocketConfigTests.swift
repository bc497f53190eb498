import XCTest
@testable import StickyCore

/// `takeover_socket` (the zero-downtime upgrade): beside the admin socket
/// unless set; `none` turns it off; a relative path is an error.
final class TakeoverSocketConfigTests: XCTestCase {
    static let base = """
        listeners: [ { address: 127.0.0.1:8080 } ]
        pools: [ { name: web, targets: [ { address: 127.0.0.1:8081 } ] } ]

        """

    func testDefaultIsBesideTheAdminSocket() throws {
        let config = try ConfigLoader.parse(Self.base, file: "t.yaml")
        XCTAssertEqual(config.takeoverSocketPath, "/run/stickyd/admin.takeover.sock")
        let moved = try ConfigLoader.parse(Self.base + "admin: { socket: /srv/x/a.sock }\n", file: "t.yaml")
        XCTAssertEqual(moved.takeoverSocketPath, "/srv/x/a.takeover.sock")
        // Two daemons with their own admin sockets in one directory get
        // their own takeover sockets too.
        let other = try ConfigLoader.parse(Self.base + "admin: { socket: /srv/x/b.sock }\n", file: "t.yaml")
        XCTAssertNotEqual(other.takeoverSocketPath, moved.takeoverSocketPath)
        let bare = try ConfigLoader.parse(Self.base + "admin: { socket: /srv/x/admin }\n", file: "t.yaml")
        XCTAssertEqual(bare.takeoverSocketPath, "/srv/x/admin.takeover.sock")
        let noAdmin = try ConfigLoader.parse(Self.base + "admin: { socket: none }\n", file: "t.yaml")
        XCTAssertNil(noAdmin.takeoverSocketPath)
    }

    func testDerivedPathTooLongIsRefused() {
        let admin = "/" + String(repeating: "d", count: 95) + ".sock"  // 101 bytes: fits; derived 110 does not
        XCTAssertThrowsError(try ConfigLoader.parse(Self.base + "admin: { socket: \(admin) }\n", file: "t.yaml")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("takeover socket derived from admin.socket"), text)
            XCTAssertTrue(text.contains("set takeover_socket"), text)
        }
        XCTAssertNoThrow(try ConfigLoader.parse(Self.base + "admin: { socket: \(admin) }\ntakeover_socket: /tmp/t.sock\n", file: "t.yaml"))
    }

    func testPathAndNone() throws {
        let set = try ConfigLoader.parse(Self.base + "takeover_socket: /tmp/t.sock\n", file: "t.yaml")
        XCTAssertEqual(set.takeoverSocketPath, "/tmp/t.sock")
        let off = try ConfigLoader.parse(Self.base + "takeover_socket: none\n", file: "t.yaml")
        XCTAssertNil(off.takeoverSocketPath)
    }

    func testRelativePathIsRefusedWithItsLine() {
        XCTAssertThrowsError(try ConfigLoader.parse(Self.base + "takeover_socket: t.sock\n", file: "t.yaml")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix("t.yaml:3:"), text)
            XCTAssertTrue(text.contains("takeover_socket must be an absolute path"), text)
        }
    }
}

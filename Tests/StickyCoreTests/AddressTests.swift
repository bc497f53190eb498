import StickyCore
import XCTest

final class AddressTests: XCTestCase {
    func testParsesAndPrintsIPv4() {
        XCTAssertEqual(SocketAddress("127.0.0.1:50051")?.description, "127.0.0.1:50051")
        XCTAssertEqual(IPAddress("10.1.2.3"), .v4(0x0A01_0203))
    }

    func testParsesAndPrintsIPv6() {
        XCTAssertEqual(SocketAddress("[::1]:80")?.description, "[::1]:80")
        XCTAssertEqual(IPAddress("2001:db8::1")?.description, "2001:db8::1")
        XCTAssertEqual(IPAddress("::ffff:1.2.3.4"), .v6(hi: 0, lo: 0x0000_FFFF_0102_0304))
        XCTAssertEqual(IPAddress("1:2:3:4:5:6:7:8")?.description, "1:2:3:4:5:6:7:8")
        XCTAssertEqual(IPAddress("::")?.description, "::")
    }

    func testRejectsBadInput() {
        for bad in ["", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:65536",
                    "::1:80", "[1.2.3.4]:80", "[::1]", "[::1]80", "1:::2", "1::2::3", "1:2:3:4:5:6:7:8:9", "x.y.z.w:1",
                    "[fe80::1%eth0]:80"] {
            XCTAssertNil(SocketAddress(bad), "accepted \(bad)")
        }
        XCTAssertNil(IPAddress(":::"))
        XCTAssertNil(IPAddress("1:2:3:4:5:6:7::8"), "'::' must stand for at least one group")
    }
}

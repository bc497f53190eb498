import XCTest
@testable import StickyCore

final class AffinityKeyTests: XCTestCase {
    func key(_ text: String, v4: Int = 32, v6: Int = 128) -> AffinityKey {
        AffinityKey(IPAddress(text)!, maskV4: v4, maskV6: v6)
    }

    func testV4MasksAndFoldsFamily() {
        XCTAssertEqual(key("10.1.2.3"), AffinityKey(hi: AffinityKey.v4Tag, lo: 0x0A01_0203))
        XCTAssertEqual(key("10.1.2.3", v4: 24), AffinityKey(hi: AffinityKey.v4Tag, lo: 0x0A01_0200))
        XCTAssertEqual(key("10.1.2.3", v4: 24), key("10.1.2.250", v4: 24))
        XCTAssertNotEqual(key("10.1.2.3", v4: 24), key("10.1.3.3", v4: 24))
        XCTAssertEqual(key("10.1.2.3", v4: 0), AffinityKey(hi: AffinityKey.v4Tag, lo: 0))
        XCTAssertEqual(key("10.1.2.3", v4: 1), AffinityKey(hi: AffinityKey.v4Tag, lo: 0))
        XCTAssertEqual(key("255.1.2.3", v4: 1), AffinityKey(hi: AffinityKey.v4Tag, lo: 0x8000_0000))
        XCTAssertEqual(key("10.1.2.3").address, IPAddress("10.1.2.3"))
    }

    func testV6Masks() {
        let full = key("2001:db8:1:2:3:4:5:6")
        XCTAssertEqual(full, AffinityKey(hi: 0x2001_0db8_0001_0002, lo: 0x0003_0004_0005_0006))
        XCTAssertEqual(key("2001:db8:1:2:3:4:5:6", v6: 64), AffinityKey(hi: 0x2001_0db8_0001_0002, lo: 0))
        XCTAssertEqual(key("2001:db8:1:2:3:4:5:6", v6: 48), AffinityKey(hi: 0x2001_0db8_0001_0000, lo: 0))
        XCTAssertEqual(key("2001:db8:1:2:3:4:5:6", v6: 80), AffinityKey(hi: 0x2001_0db8_0001_0002, lo: 0x0003_0000_0000_0000))
        XCTAssertEqual(key("2001:db8:1:2:3:4:5:6", v6: 127), AffinityKey(hi: 0x2001_0db8_0001_0002, lo: 0x0003_0004_0005_0006))
        XCTAssertEqual(key("2001:db8:1:2:3:4:5:7", v6: 127), AffinityKey(hi: 0x2001_0db8_0001_0002, lo: 0x0003_0004_0005_0006))
        XCTAssertEqual(key("2001:db8:1:2:3:4:5:6", v6: 0), AffinityKey(hi: 0, lo: 0))
    }

    /// v4 and v6 never share a key, IPv4-mapped v6 included: the listeners
    /// are different sockets (see Address.swift).
    func testFamiliesNeverCollide() {
        XCTAssertNotEqual(key("1.2.3.4"), key("::1.2.3.4"))
        XCTAssertNotEqual(key("1.2.3.4"), key("::ffff:1.2.3.4"))
        XCTAssertNotEqual(key("0.0.0.0", v4: 0), key("::", v6: 0))
        // Any unicast v6 address is outside ff00::/8, where v4 keys live.
        XCTAssertNotEqual(key("1.2.3.4").hi >> 56, key("2001:db8::1").hi >> 56)
    }

    func testHashIsKeyed() {
        let k = key("192.0.2.1")
        XCTAssertNotEqual(k.hash(SipKey(k0: 1, k1: 2)), k.hash(SipKey(k0: 1, k1: 3)))
        XCTAssertEqual(k.hash(SipKey(k0: 1, k1: 2)), k.hash(SipKey(k0: 1, k1: 2)))
    }

    func testConfigValidationNamesTheKey() {
        XCTAssertEqual(AffinityConfig().validate(), [])
        var c = AffinityConfig()
        c.maskV4 = 33
        c.maskV6 = -1
        c.capacity = 0
        c.balanceFactor = 0.9
        c.timeoutMs = -1
        XCTAssertEqual(Set(c.validate().map(\.key)), ["mask_v4", "mask_v6", "capacity", "balance_factor", "timeout"])
        c = AffinityConfig(balanceFactor: .nan)
        XCTAssertEqual(c.validate().map(\.key), ["balance_factor"])
        XCTAssertEqual(AffinityConfig(balanceFactor: nil).validate(), [])
        XCTAssertEqual(AffinityConfig(capacity: 10).perWorker(3).capacity, 4)
        XCTAssertEqual("\(AffinityConfigError(key: "mask_v4", reason: "bad"))", "affinity.mask_v4: bad")
    }
}

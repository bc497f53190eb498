import StickyCore
import XCTest

/// The DNS codec and the refresh rules, without a network.
final class DNSDiscoveryTests: XCTestCase {
    /// A response to `query` with the given answer records (already encoded).
    func response(to query: [UInt8], rcode: UInt8 = 0, truncated: Bool = false, answers: [[UInt8]], additionals: [[UInt8]] = []) -> [UInt8] {
        var out = query
        out[2] = 0x81 | (truncated ? 0x02 : 0)
        out[3] = 0x80 | rcode
        out[6] = 0; out[7] = UInt8(answers.count)
        out[10] = 0; out[11] = UInt8(additionals.count)
        for r in answers + additionals { out += r }
        return out
    }

    /// A record whose name is a pointer to the question's name (offset 12).
    func record(type: UInt16, ttl: UInt32, _ rdata: [UInt8], name: [UInt8] = [0xC0, 12]) -> [UInt8] {
        name + [UInt8(type >> 8), UInt8(type & 0xFF), 0, 1] + [UInt8(ttl >> 24), UInt8(ttl >> 16 & 0xFF), UInt8(ttl >> 8 & 0xFF), UInt8(ttl & 0xFF)]
            + [UInt8(rdata.count >> 8), UInt8(rdata.count & 0xFF)] + rdata
    }

    func labels(_ name: String) -> [UInt8] {
        name.split(separator: ".").flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) } + [0]
    }

    func srv(_ priority: UInt16, _ weight: UInt16, _ port: UInt16, _ target: String) -> [UInt8] {
        [UInt8(priority >> 8), UInt8(priority & 0xFF), UInt8(weight >> 8), UInt8(weight & 0xFF), UInt8(port >> 8), UInt8(port & 0xFF)] + labels(target)
    }

    func testQueryAndSRVAnswerWithCompressionAndAdditionals() throws {
        let q = try DNSMessage.query(id: 0xBEEF, name: "_grpc._tcp.greeter.example.", type: .srv)
        XCTAssertEqual(Array(q[0..<4]), [0xBE, 0xEF, 0x01, 0x00], "id, then RD")
        let bytes = response(to: q, answers: [
            record(type: 33, ttl: 30, srv(10, 5, 50051, "pod-a.example")),
            record(type: 33, ttl: 0, srv(10, 0, 50052, "pod-b.example")),
            record(type: 33, ttl: 30, srv(20, 5, 50053, "backup.example")),
        ], additionals: [record(type: 1, ttl: 30, [127, 0, 0, 7], name: labels("pod-a.example"))])
        let r = try DNSMessage.parse(bytes)
        XCTAssertEqual(r.id, 0xBEEF)
        XCTAssertEqual(r.answers.count, 3)
        XCTAssertEqual(r.answers[0].name, "_grpc._tcp.greeter.example")
        let preferred = DNSTargets.preferred(r.answers)
        XCTAssertEqual(preferred.map(\.host), ["pod-a.example", "pod-b.example"], "the lowest priority number only")
        XCTAssertEqual(DNSTargets.addresses(of: "pod-a.example", in: r.additionals), [IPAddress("127.0.0.7")!])
        let eps = DNSTargets.endpoints(preferred, addresses: ["pod-a.example": [IPAddress("127.0.0.7")!],
                                                               "pod-b.example": [IPAddress("127.0.0.8")!]])
        XCTAssertEqual(eps.map { "\($0.address)" }, ["127.0.0.7:50051", "127.0.0.8:50052"])
        XCTAssertEqual(eps.map(\.weight), [5, 1], "SRV weight 0 takes weight 1")
        XCTAssertEqual(eps.map(\.name), ["pod-a", "pod-b"])
    }

    func testBadMessagesAreRefusedNotTrusted() throws {
        let q = try DNSMessage.query(id: 1, name: "a.example", type: .a)
        XCTAssertThrowsError(try DNSMessage.parse(q), "a query is not a response")
        // A pointer to itself (a loop) and a record longer than the message.
        var loop = response(to: q, answers: [])
        loop[7] = 1
        loop += [0xC0, UInt8(loop.count)]
        XCTAssertThrowsError(try DNSMessage.parse(loop))
        var cut = response(to: q, answers: [record(type: 1, ttl: 1, [127, 0, 0, 1])])
        cut.removeLast(2)
        XCTAssertThrowsError(try DNSMessage.parse(cut))
        let tc = try DNSMessage.parse(response(to: q, truncated: true, answers: []))
        XCTAssertTrue(tc.truncated)
        let nx = try DNSMessage.parse(response(to: q, rcode: 3, answers: []))
        XCTAssertEqual(nx.rcode, DNSRCode.nxDomain.rawValue)
        let v6 = try DNSMessage.parse(response(to: q, answers: [record(type: 28, ttl: 5, [UInt8](repeating: 0, count: 15) + [1])]))
        XCTAssertEqual(v6.answers.first?.data, .address(IPAddress("::1")!))
    }

    func testIntervalTTLFloorAndFailures() {
        var r = DNSRefresh(intervalMs: 10_000)
        let found = DNSOutcome.found([], ttlSeconds: 0)
        XCTAssertEqual(r.next(after: found, random: 0), DNSRefresh.floorMs, "TTL 0 (dnsmasq) waits the floor")
        XCTAssertEqual(r.next(after: .found([], ttlSeconds: 4), random: 0), 4_000, "a short TTL brings the lookup forward")
        XCTAssertEqual(r.next(after: .found([], ttlSeconds: 3600), random: 0), 10_000, "interval is the longest wait")
        XCTAssertEqual(r.next(after: .missing("NXDOMAIN"), random: 0), 10_000)
        let first = r.next(after: .failed("timeout"), random: 0)
        XCTAssertEqual(first, DNSRefresh.floorMs)
        var last = first
        for _ in 0..<10 { last = r.next(after: .failed("timeout"), random: 0) }
        XCTAssertEqual(last, 10_000, "a failure is retried no later than the interval")
        XCTAssertEqual(r.failures, 11)
        _ = r.next(after: found, random: 0)
        XCTAssertEqual(r.failures, 0)
    }
}

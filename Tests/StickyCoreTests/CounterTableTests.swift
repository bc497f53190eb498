import XCTest

@testable import StickyCore

/// The table every output reads: each figure is in it once, and names never
/// collide.
final class CounterTableTests: XCTestCase {
    func testEveryWorkerCounterHasOneField() {
        for c in WorkerCounter.allCases {
            XCTAssertEqual(CounterTable.fields.filter { $0.source == .worker(c) }.count, 1, "\(c)")
        }
        for family in WorkerCounterFamily.allCases {
            XCTAssertEqual(CounterTable.fields.filter { $0.source == .workerFamily(family) }.count, 1, "\(family)")
        }
        for a in AffinityCounter.allCases {
            XCTAssertEqual(CounterTable.fields.filter { $0.source == .affinity(a) }.count, 1, "\(a)")
        }
        for f in PanicFigure.allCases {
            XCTAssertEqual(CounterTable.fields.filter { $0.source == .panic(f) }.count, 1, "\(f)")
        }
        for f in PeerFigure.allCases {
            XCTAssertEqual(CounterTable.fields.filter { $0.source == .peer(f) }.count, 1, "\(f)")
        }
    }

    func testPeerFigureReadsShowPeersStatus() {
        var s = PeerStatus(name: "b", address: "127.0.0.1:7701", state: "up", inbound: true)
        s.pinsSent = 1
        s.pinsReceived = 2
        s.pinsDropped = 3
        s.queued = 4
        s.queueLagMs = 1500
        s.receiveLagMs = 250
        s.connects = 7
        s.resyncs = 8
        XCTAssertEqual(PeerFigure.allCases.map { $0.value(in: s) }, [1, 1, 1, 2, 3, 4, 1.5, 0.25, 7, 8])
        s.state = "down"
        s.inbound = false
        XCTAssertEqual(PeerFigure.up.value(in: s), 0)
        XCTAssertEqual(PeerFigure.inboundUp.value(in: s), 0)
        for f in CounterTable.fields where f.scope == .peer {
            XCTAssertEqual(f.labels, ["peer"], f.metric ?? "?")
        }
    }

    func testNamesAreUnique() {
        let metrics = CounterTable.fields.compactMap(\.metric)
        XCTAssertEqual(Set(metrics).count, metrics.count, "a metric name is used twice")
        let stats = CounterTable.fields.compactMap(\.stat)
        XCTAssertEqual(Set(stats).count, stats.count, "a show stats key is used twice")
        for f in CounterTable.fields {
            XCTAssertTrue(f.metric != nil || f.stat != nil, "\(f.source) is shown nowhere")
            XCTAssertFalse(f.help.isEmpty, "\(f.source) has no help")
            XCTAssertEqual(Set(f.labels).count, f.labels.count, "\(f.source) repeats a label")
        }
    }

    func testPrometheusConventions() {
        for f in CounterTable.fields {
            guard let m = f.metric else { continue }
            XCTAssertTrue(m.hasPrefix("stickyd_"), m)
            // A counter's name ends in _total; a gauge's never does.
            XCTAssertEqual(m.hasSuffix("_total"), f.kind == .counter, m)
        }
    }

    func testCounterValuesHoldsOneFigurePerCounter() {
        XCTAssertEqual(CounterValues.count, WorkerCounter.allCases.count)
        var a = CounterValues()
        for c in WorkerCounter.allCases { a[c] = UInt64(c.rawValue + 1) }
        for c in WorkerCounter.allCases { XCTAssertEqual(a[c], UInt64(c.rawValue + 1), "\(c)") }
        var b = CounterValues()
        b[.accepted] = .max
        b.add(a)
        XCTAssertEqual(b[.accepted], 0, "a sum wraps rather than trapping")
        XCTAssertEqual(b[.proxySendFailures], a[.proxySendFailures])
    }

    func testAffinityCounterReadsItsField() {
        var c = AffinityCounters()
        c.hits = 1
        c.misses = 2
        c.spills = 3
        c.expirations = 4
        c.evictions = 5
        c.unrecorded = 6
        c.noTarget = 7
        c.panicPlacements = 9
        c.size = 8
        XCTAssertEqual(AffinityCounter.allCases.map { $0.value(in: c) }, [1, 2, 3, 4, 5, 6, 7, 9, 8])
    }
}

import Logging
import Prometheus
import StickyCore
import XCTest

@testable import StickyControlPlane
@testable import StickyDataPlane

/// The exporter's arithmetic, fed hand-made worker reports: no workers, no
/// sockets, the control plane only as the holder of the target registry.
final class MetricsExporterTests: XCTestCase {
    let target = SocketAddress("127.0.0.1:9001")!

    func makeExporter(retainedMs: Millis = 600_000) throws -> (MetricsExporter, PrometheusCollectorRegistry, TargetRegistry) {
        let config = try StickyConfig.quick(listen: ["127.0.0.1:7001"], targets: ["127.0.0.1:9001"])
        let registry = TargetRegistry(config: config)
        let control = ControlPlane(config: config, registry: registry, hashKey: SipKey.random(), generatedKey: false,
                                   stateFilePath: nil, logger: Logger(label: "test"))
        let prometheus = PrometheusCollectorRegistry()
        return (MetricsExporter(control: control, registry: prometheus, retainedMs: retainedMs), prometheus, registry)
    }

    func report(connections: UInt64, bytesUp: UInt64, active: Int = 0) -> WorkerReport {
        var r = WorkerReport()
        var pool = PoolReport()
        pool.targets = [TargetLoad(address: target, connections: active, bytesUp: bytesUp, connectionsTotal: connections)]
        r.pools = [pool]
        return r
    }

    /// The value of the one sample line starting with `prefix`.
    func value(_ registry: PrometheusCollectorRegistry, _ prefix: String) -> String? {
        registry.emitToString().split(separator: "\n").first { $0.hasPrefix(prefix) }.map { String($0.split(separator: " ").last!) }
    }

    let connections = #"stickyd_target_connections_total{pool="default",target="127.0.0.1:9001"}"#
    let bytesUp = #"stickyd_target_bytes_total{pool="default",target="127.0.0.1:9001",direction="client_to_target"}"#

    func testCountersSumWorkersAndAddOnlyTheDifference() throws {
        let (e, p, r) = try makeExporter()
        var s = MetricsExporter.State()
        e.update(&s, reports: [report(connections: 3, bytesUp: 100), report(connections: 2, bytesUp: 50)], registry: r, health: HealthBook(configs: []), now: 1000)
        XCTAssertEqual(value(p, connections), "5")
        XCTAssertEqual(value(p, bytesUp), "150")
        e.update(&s, reports: [report(connections: 4, bytesUp: 100), report(connections: 2, bytesUp: 70)], registry: r, health: HealthBook(configs: []), now: 2000)
        XCTAssertEqual(value(p, connections), "6")
        XCTAssertEqual(value(p, bytesUp), "170")
    }

    func testAFigureThatStartsAgainNeverLowersTheCounter() throws {
        let (e, p, r) = try makeExporter()
        var s = MetricsExporter.State()
        e.update(&s, reports: [report(connections: 10, bytesUp: 1000)], registry: r, health: HealthBook(configs: []), now: 1000)
        // The worker's slot went to a new target and back: its figure restarted.
        e.update(&s, reports: [report(connections: 2, bytesUp: 30)], registry: r, health: HealthBook(configs: []), now: 2000)
        XCTAssertEqual(value(p, connections), "12")
        XCTAssertEqual(value(p, bytesUp), "1030")
    }

    func testOneWorkerLosingATargetDoesNotCountTheOthersTwice() throws {
        let (e, p, r) = try makeExporter()
        var s = MetricsExporter.State()
        e.update(&s, reports: [report(connections: 3, bytesUp: 0), report(connections: 4, bytesUp: 0)], registry: r, health: HealthBook(configs: []), now: 1000)
        // Worker 0 already applied a removal, worker 1 not yet.
        e.update(&s, reports: [WorkerReport(), report(connections: 4, bytesUp: 0)], registry: r, health: HealthBook(configs: []), now: 2000)
        XCTAssertEqual(value(p, connections), "7")
    }

    func testGoneTargetKeepsItsCounterForAWhileAndLosesItsGauges() throws {
        let (e, p, r) = try makeExporter(retainedMs: 10_000)
        var s = MetricsExporter.State()
        e.update(&s, reports: [report(connections: 3, bytesUp: 9, active: 1)], registry: r, health: HealthBook(configs: []), now: 1000)
        let active = #"stickyd_target_connections_active{pool="default",target="127.0.0.1:9001"}"#
        XCTAssertEqual(value(p, active), "1.0")
        e.update(&s, reports: [WorkerReport()], registry: r, health: HealthBook(configs: []), now: 5000)
        XCTAssertNil(value(p, active), "a gauge without a value now is removed")
        XCTAssertEqual(value(p, connections), "3", "a counter stays within the retention")
        e.update(&s, reports: [WorkerReport()], registry: r, health: HealthBook(configs: []), now: 12_000)
        XCTAssertNil(value(p, connections), "and goes after it")
    }

    func testTargetStateIsOneGaugePerState() throws {
        let (e, p, r) = try makeExporter()
        var s = MetricsExporter.State()
        var registry = r
        _ = registry.setState(pool: nil, address: target, .maint)
        e.update(&s, reports: [], registry: registry, health: HealthBook(configs: []), now: 1000)
        let text = p.emitToString()
        XCTAssertTrue(text.contains(#"stickyd_target_state{pool="default",target="127.0.0.1:9001",state="maint"} 1.0"#), text)
        XCTAssertTrue(text.contains(#"stickyd_target_state{pool="default",target="127.0.0.1:9001",state="ready"} 0.0"#), text)
    }

    func testCloseReasonNamesAgree() {
        for reason in CloseReason.allCases {
            XCTAssertEqual("\(reason.staticName)", reason.metricName)
        }
    }
}

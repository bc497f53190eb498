import Foundation
import StickyCore
import XCTest

/// The Kubernetes side's pure parts: slices to endpoints, the watch state
/// machine, watch lines, kubeconfig files.
final class KubeDiscoveryTests: XCTestCase {
    func endpoint(_ ip: String, ready: Bool? = true, terminating: Bool? = nil, serving: Bool? = nil, pod: String? = nil) -> EndpointSlice.Endpoint {
        EndpointSlice.Endpoint(addresses: [ip], conditions: .init(ready: ready, serving: serving, terminating: terminating),
                               hostname: nil, targetRef: pod.map { .init(name: $0) })
    }

    func slice(_ name: String, _ eps: [EndpointSlice.Endpoint], port: Int = 50051, portName: String? = "grpc",
               type: String = "IPv4") -> EndpointSlice {
        EndpointSlice(name: name, addressType: type, endpoints: eps, ports: [.init(name: portName, port: port, protocol: "TCP")])
    }

    func testMergeCountsAnEndpointInTwoSlicesOnceAndTerminatingWins() {
        let a = slice("a", [endpoint("10.0.0.1", pod: "p1"), endpoint("10.0.0.2", pod: "p2")])
        let b = slice("b", [endpoint("10.0.0.1", ready: false, terminating: true, serving: true),
                            endpoint("10.0.0.3", ready: nil)])
        let out = KubeEndpoints.merge([a, b], port: .name("grpc"))
        XCTAssertEqual(out.map { "\($0.address)" }, ["10.0.0.1:50051", "10.0.0.2:50051", "10.0.0.3:50051"])
        XCTAssertEqual(out.map(\.ready), [false, true, true], "unset conditions mean ready")
        XCTAssertEqual(out[0].reason, "terminating")
        XCTAssertEqual(out[0].name, "p1")
        XCTAssertEqual(KubeEndpoints.merge([a], port: .number(50051)).count, 2)
        XCTAssertEqual(KubeEndpoints.merge([a], port: .name("http")).count, 0, "a slice without the port gives nothing")
        XCTAssertEqual(KubeEndpoints.merge([slice("f", [endpoint("x.example")], type: "FQDN")], port: .name("grpc")).count, 0)
    }

    func testListThenWatchBookmarksAndGone() {
        var w = KubeWatch()
        XCTAssertEqual(w.start, .list)
        XCTAssertTrue(w.stale)
        XCTAssertEqual(w.listed(resourceVersion: "10", items: [slice("a", [endpoint("10.0.0.1")])]), .watch(resourceVersion: "10"))
        XCTAssertFalse(w.stale)
        var s = slice("b", [endpoint("10.0.0.2")])
        s.metadata.resourceVersion = "12"
        XCTAssertTrue(w.received(.added(s), random: 0).changed)
        XCTAssertEqual(w.resourceVersion, "12")
        XCTAssertFalse(w.received(.bookmark(resourceVersion: "15"), random: 0).changed)
        XCTAssertEqual(w.resourceVersion, "15")
        XCTAssertEqual(w.watchEnded(durationMs: 240_000, events: 2, random: 0), .watch(resourceVersion: "15"))
        var d = slice("a", [])
        d.metadata.resourceVersion = "16"
        XCTAssertTrue(w.received(.deleted(d), random: 0).changed)
        XCTAssertEqual(w.orderedSlices.map(\.metadata.name), ["b"])
        // 410: list at once; a second 410 with nothing between backs off.
        XCTAssertEqual(w.received(.error(code: 410, message: "too old"), random: 0).next, .list)
        XCTAssertEqual(w.listed(resourceVersion: "20", items: []), .watch(resourceVersion: "20"))
        guard case .wait = w.gone(random: 0) else { return XCTFail("a second 410 in a row must back off") }
        XCTAssertEqual(w.resume(), .list)
    }

    func testFailuresBackOffAndKeepTheSet() {
        var w = KubeWatch()
        _ = w.listed(resourceVersion: "5", items: [slice("a", [endpoint("10.0.0.1")])])
        var waits: [Millis] = []
        for _ in 0..<10 {
            guard case .wait(let ms) = w.failed(random: 0) else { return XCTFail() }
            waits.append(ms)
        }
        XCTAssertEqual(waits.first, 400, "500 ms less 20%")
        XCTAssertEqual(waits.last, 24_000, "30 s less 20%, and no more")
        XCTAssertTrue(w.stale)
        XCTAssertEqual(w.slices.count, 1, "losing the API keeps the last known slices")
        XCTAssertEqual(w.resume(), .watch(resourceVersion: "5"))
        // A watch the server ends at once, with nothing, counts as failing.
        guard case .wait = w.watchEnded(durationMs: 10, events: 0, random: 0) else { return XCTFail() }
    }

    func testWatchLines() throws {
        let added = #"{"type":"ADDED","object":{"kind":"EndpointSlice","metadata":{"name":"g-1","resourceVersion":"7"},"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"],"conditions":{"ready":true}}],"ports":[{"name":"grpc","port":50051,"protocol":"TCP"}]}}"#
        guard case .added(let s) = try KubeWatchEvent.decode(Array(added.utf8)) else { return XCTFail() }
        XCTAssertEqual(s.metadata.resourceVersion, "7")
        let gone = #"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 1 (5)","reason":"Expired","code":410}}"#
        XCTAssertEqual(try KubeWatchEvent.decode(Array(gone.utf8)), .error(code: 410, message: "too old resource version: 1 (5)"))
        let bookmark = #"{"type":"BOOKMARK","object":{"kind":"EndpointSlice","metadata":{"resourceVersion":"99"}}}"#
        XCTAssertEqual(try KubeWatchEvent.decode(Array(bookmark.utf8)), .bookmark(resourceVersion: "99"))
        XCTAssertThrowsError(try KubeWatchEvent.decode(Array(#"{"type":"SURPRISE","object":{}}"#.utf8)))
        let service = #"{"spec":{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":600}}}}"#
        XCTAssertEqual(try KubeService.decode(Array(service.utf8)).affinityTimeoutSeconds, 600)
        XCTAssertNil(try KubeService.decode(Array(#"{"spec":{"sessionAffinity":"None"}}"#.utf8)).affinityTimeoutSeconds)
    }

    func write(_ text: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kubeconfig-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("config").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    let pem = Data("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".utf8).base64EncodedString()

    /// A kubeconfig with one context `ctx`, one cluster and one user.
    func kubeconfig(cluster: String, user: String) -> String {
        """
        apiVersion: v1
        kind: Config
        current-context: ctx
        contexts:
          - name: ctx
            context: { cluster: c, user: u }
        clusters:
          - name: c
            cluster: \(cluster)
        users:
          - name: u
            user: \(user)
        """
    }

    func testKubeconfigWithTokenAndCAData() throws {
        let path = try write(kubeconfig(cluster: #"{ server: "https://127.0.0.1:6443/prefix/", certificate-authority-data: \#(pem) }"#,
                                        user: "{ token: abc }"))
        let access = try KubeAccess.kubeconfig(path: path, context: nil)
        XCTAssertEqual(access.host, "127.0.0.1")
        XCTAssertEqual(access.port, 6443)
        XCTAssertEqual(access.basePath, "/prefix")
        XCTAssertEqual(try access.bearerToken(), "abc")
        XCTAssertNotNil(access.caPEM)
    }

    func testKubeconfigErrorsNameTheLine() throws {
        func error(_ text: String, context: String? = nil) throws -> ConfigError? {
            let path = try write(text)
            do {
                _ = try KubeAccess.kubeconfig(path: path, context: context)
                return nil
            } catch let e as ConfigError {
                XCTAssertEqual(e.file, path)
                return e
            }
        }
        let base = kubeconfig(cluster: #"{ server: "http://127.0.0.1:8080" }"#, user: "{ exec: { command: aws } }")
        let http = try error(base)
        XCTAssertEqual(http?.line, 9)
        XCTAssertTrue(http?.message.contains("https://") ?? false, "\(String(describing: http))")
        let exec = try error(base.replacingOccurrences(of: "http://", with: "https://"))
        XCTAssertEqual(exec?.line, 12)
        XCTAssertTrue(exec?.message.contains("'exec' credentials are not supported") ?? false)
        let noContext = try error(base, context: "other")
        XCTAssertTrue(noContext?.message.contains("no context named 'other' (there are: ctx)") ?? false, "\(String(describing: noContext))")
        let syntax = try error("clusters: [\n")
        XCTAssertNotNil(syntax?.line)
        XCTAssertTrue(syntax?.message.contains("YAML syntax error") ?? false)
    }

    func testConfigTakesEitherSourceAndTargetsBecomeOptional() throws {
        let ok = try ConfigLoader.parse("""
            listeners: [{ address: 127.0.0.1:7000, pool: k }]
            pools:
              - name: k
                protocol: h2c
                discovery: { kubernetes: { service: greeter, namespace: prod, port: grpc, kubeconfig: /etc/kube } }
              - name: d
                affinity: { timeout: 1h }
                discovery: { dns: { name: _grpc._tcp.greeter.service.consul, resolvers: ["127.0.0.1:8600"], interval: 5s } }
            """, file: "x.yaml")
        guard case .kubernetes(let k)? = ok.pools[0].discovery, case .dns(let d)? = ok.pools[1].discovery else { return XCTFail() }
        XCTAssertEqual(k.port, .name("grpc"))
        XCTAssertTrue(k.affinityFromService)
        XCTAssertEqual(d.intervalMs, 5_000)
        XCTAssertTrue(ok.pools[0].targets.isEmpty)
        let fileWins = try ConfigLoader.parse("""
            listeners: [{ address: 127.0.0.1:7000 }]
            pools:
              - name: k
                affinity: { timeout: 10m }
                discovery: { kubernetes: { service: greeter, port: 50051 } }
            """, file: "x.yaml")
        guard case .kubernetes(let k2)? = fileWins.pools[0].discovery else { return XCTFail() }
        XCTAssertFalse(k2.affinityFromService, "affinity.timeout in the file wins")
        XCTAssertEqual(k2.port, .number(50051))

        XCTAssertEqual(configError("""
            listeners: [{ address: 127.0.0.1:7000 }]
            pools:
              - name: k
                discovery: { kubernetes: { service: Greeter_1, port: grpc } }
            """)?.line, 4)
        XCTAssertTrue(configError("""
            listeners: [{ address: 127.0.0.1:7000 }]
            pools:
              - name: k
                discovery: { dns: { name: a.example, resolvers: [] } }
            """)?.message.contains("1 to 8") ?? false)
        XCTAssertTrue(configError("""
            listeners: [{ address: 127.0.0.1:7000 }]
            pools:
              - name: k
                discovery: { dns: { name: a.example, resolvers: ["127.0.0.1:53"] }, kubernetes: { service: a, port: 1 } }
            """)?.message.contains("not both") ?? false)
        XCTAssertTrue(configError("""
            listeners: [{ address: 127.0.0.1:7000 }]
            pools:
              - name: k
            """)?.message.contains("missing required key 'targets'") ?? false, "without discovery, targets stay required")
    }
}

import Foundation
import Logging
import StickyCore
import Synchronization

/// `discovery.kubernetes`: the list-then-watch loop of `KubeWatch` over
/// `KubeClient`, applying each complete view of the Service's slices.
final class KubeRunner: DiscoveryRunner, @unchecked Sendable {
    let config: KubernetesDiscoveryConfig
    let client: KubeClient
    let inFlight = Mutex<KubeResponse?>(nil)

    /// The API's own page size; pages are followed up to `pagesMax`.
    static let pageSize = 500
    static let pagesMax = 100
    /// A list page, or the Service: far above what a slice page holds.
    static let answerBytesMax = 32 << 20
    /// One watch line (one slice of up to 1000 endpoints).
    static let lineBytesMax = 8 << 20
    static let requestTimeoutMs: Int64 = 30_000
    /// A watch asks the server to end it after 4-5 minutes; with no byte
    /// for this long past that, the stream is taken as dead.
    static let watchSilenceMs: Int64 = 360_000

    init(pool: Int, config: KubernetesDiscoveryConfig, client: KubeClient, control: ControlPlane, logger: Logger) {
        self.config = config
        self.client = client
        super.init(pool: pool, control: control, logger: logger)
    }

    override func cancel() { inFlight.withLock { $0 }?.close() }

    var selector: String { "labelSelector=" + Self.escape("kubernetes.io/service-name=\(config.service)") }
    var slicesPath: String { "/apis/discovery.k8s.io/v1/namespaces/\(config.namespace)/endpointslices" }

    static func escape(_ s: String) -> String {
        s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? s
    }

    override func run() {
        logger.info("discovery: following a Kubernetes Service", metadata: [
            "pool": "\(name)", "service": "\(config.namespace)/\(config.service)", "port": "\(config.port)",
            "api": "\(client.access.host):\(client.access.port)", "credentials": "\(client.access.source)",
        ])
        var watch = KubeWatch()
        var step = watch.start
        var lists = 0
        while !stopped {
            switch step {
            case .list:
                lists += 1
                if lists > 1 { control.discoveryRelisted(pool: pool) }
                step = list(&watch)
            case .watch(let rv):
                // Not while retrying: the Service would fail the same way,
                // and say so twice.
                if !watch.stale { readService() }
                step = stream(from: rv, &watch)
            case .wait(let ms):
                pause(ms)
                step = watch.resume()
            }
        }
    }

    func request(_ path: String) -> KubeResponse {
        let r = client.get(path)
        inFlight.withLock { $0 = r }
        if stopped { r.close() }
        return r
    }

    func failed(_ why: String, _ watch: inout KubeWatch) -> KubeWatch.Step {
        // A request the stop closed is no failure of the API's.
        guard !stopped else { return .wait(ms: 0) }
        let next = watch.failed(random: random.next())
        if case .wait(let ms) = next { control.discoveryFailed(pool: pool, error: why, retryMs: ms) }
        return next
    }

    /// Every page of the list; on success the whole set is applied.
    func list(_ watch: inout KubeWatch) -> KubeWatch.Step {
        var items: [EndpointSlice] = []
        var token: String?
        var rv = ""
        for _ in 0..<KubeRunner.pagesMax {
            var path = "\(slicesPath)?\(selector)&limit=\(KubeRunner.pageSize)"
            if let token { path += "&continue=\(Self.escape(token))" }
            switch request(path).collect(timeoutMs: KubeRunner.requestTimeoutMs, maxBytes: KubeRunner.answerBytesMax) {
            case .failure(let e): return failed("list: \(e)", &watch)
            case .success(let (status, body)):
                guard status == 200 else { return failed("list: \(Self.statusText(status, body))", &watch) }
                do {
                    let page = try JSONDecoder().decode(EndpointSliceList.self, from: Data(body))
                    items += page.items
                    rv = page.metadata.resourceVersion ?? rv
                    token = page.metadata.continue.flatMap { $0.isEmpty ? nil : $0 }
                } catch {
                    return failed("list: not an EndpointSliceList (\(error))", &watch)
                }
            }
            if token == nil { break }
        }
        guard token == nil else { return failed("list: more than \(KubeRunner.pagesMax) pages", &watch) }
        let next = watch.listed(resourceVersion: rv, items: items)
        control.discoveryReachable(pool: pool)
        apply(KubeEndpoints.merge(watch.orderedSlices, port: config.port))
        return next
    }

    /// One watch, from `rv` until the server ends it, it fails, or 410.
    func stream(from rv: String, _ watch: inout KubeWatch) -> KubeWatch.Step {
        let seconds = 240 + Int(random.next() % 60)
        let path = "\(slicesPath)?\(selector)&watch=1&allowWatchBookmarks=true&resourceVersion=\(Self.escape(rv))&timeoutSeconds=\(seconds)"
        let r = request(path)
        defer { r.close() }
        let started = ControlPlane.monotonicMs()
        var lastByte = started
        var status = 0
        var line: [UInt8] = []
        var events = 0
        var errorBody: [UInt8] = []
        var lastSweep = started
        while !stopped {
            // On a clock, not only in silences: a watch that keeps talking
            // (bookmarks, other slices) must not hold up a gone target's
            // removal.
            if ControlPlane.monotonicMs() - lastSweep >= 500 {
                sweep()
                lastSweep = ControlPlane.monotonicMs()
            }
            guard let part = r.next(timeoutMs: 500) else {
                if ControlPlane.monotonicMs() - lastByte > KubeRunner.watchSilenceMs {
                    return failed("watch: no byte for \(KubeRunner.watchSilenceMs / 1000) s", &watch)
                }
                continue
            }
            lastByte = ControlPlane.monotonicMs()
            switch part {
            case .head(let s):
                status = s
                if s == 410 { return watch.gone(random: random.next()) }
                if s == 200 { control.discoveryReachable(pool: pool) }
            case .body(let bytes) where status != 200:
                errorBody += bytes.prefix(4096 - min(4096, errorBody.count))
            case .body(let bytes):
                var changed = false
                for b in bytes {
                    guard b == UInt8(ascii: "\n") else {
                        line.append(b)
                        if line.count > KubeRunner.lineBytesMax { return failed("watch: a line longer than \(KubeRunner.lineBytesMax >> 20) MiB", &watch) }
                        continue
                    }
                    defer { line.removeAll(keepingCapacity: true) }
                    guard !line.isEmpty else { continue }
                    let event: KubeWatchEvent
                    do {
                        event = try KubeWatchEvent.decode(line)
                    } catch {
                        return failed("watch: a line that is not a watch event (\(error))", &watch)
                    }
                    events += 1
                    let (c, next) = watch.received(event, random: random.next())
                    if case .error(let code, let message) = event {
                        logger.notice("discovery: the watch ended with an error event", metadata: ["pool": "\(name)", "code": "\(code)", "message": "\(message)"])
                    }
                    changed = changed || c
                    if let next {
                        if changed { apply(KubeEndpoints.merge(watch.orderedSlices, port: config.port)) }
                        if case .wait(let ms) = next { control.discoveryFailed(pool: pool, error: "watch: error event", retryMs: ms) }
                        return next
                    }
                }
                if changed { apply(KubeEndpoints.merge(watch.orderedSlices, port: config.port)) }
            case .end:
                guard status == 200 else { return failed("watch: \(Self.statusText(status, errorBody))", &watch) }
                return watch.watchEnded(durationMs: ControlPlane.monotonicMs() - started, events: events, random: random.next())
            case .failed(let why):
                return failed("watch: \(why)", &watch)
            }
        }
        return .wait(ms: 0)
    }

    /// The Service's affinity timeout (at each watch start: every few
    /// minutes). A failure here is logged, not fatal: the slices are what
    /// matters, and the pool keeps the timeout it has.
    func readService() {
        guard config.affinityFromService else { return }
        let path = "/api/v1/namespaces/\(config.namespace)/services/\(config.service)"
        switch request(path).collect(timeoutMs: KubeRunner.requestTimeoutMs, maxBytes: KubeRunner.answerBytesMax) {
        case .success(let (200, body)):
            if let s = try? KubeService.decode(body) { control.discoveryAffinity(pool: pool, timeoutSeconds: s.affinityTimeoutSeconds) }
        case .success(let (status, body)):
            logger.warning("discovery: cannot read the Service for its affinity timeout", metadata: [
                "pool": "\(name)", "error": "\(Self.statusText(status, body))",
            ])
        case .failure(let e):
            logger.warning("discovery: cannot read the Service for its affinity timeout", metadata: ["pool": "\(name)", "error": "\(e)"])
        }
    }

    /// "HTTP 403: <the Status's message>".
    static func statusText(_ status: Int, _ body: [UInt8]) -> String {
        struct Status: Decodable { var message: String? }
        let message = (try? JSONDecoder().decode(Status.self, from: Data(body)))?.message
        return "HTTP \(status)" + (message.map { ": \($0)" } ?? "")
    }
}

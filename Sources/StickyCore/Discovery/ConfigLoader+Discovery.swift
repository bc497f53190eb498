import Yams

// `pools[].discovery`: shapes and types here; ranges and name rules are
// `DiscoveryConfig.validate`'s, so that they are written once.

extension NodeReader {
    mutating func discovery(_ node: Node, path: String) throws -> DiscoveryConfig {
        let keys = try fields(node, path: path, what: "discovery", prefix: "discovery.", known: ["kubernetes", "dns"])
        switch (keys["kubernetes"], keys["dns"]) {
        case (let k?, nil): return .kubernetes(try kubernetes(k, path: "\(path).kubernetes"))
        case (nil, let d?): return .dns(try dns(d, path: "\(path).dns"))
        case (_?, _?):
            throw failure(node, "discovery takes one of 'kubernetes' or 'dns', not both: each would drain what the other adds")
        case (nil, nil):
            throw failure(node, "discovery must say where targets come from: 'kubernetes' or 'dns'")
        }
    }

    private mutating func kubernetes(_ node: Node, path: String) throws -> KubernetesDiscoveryConfig {
        let keys = try fields(node, path: path, what: "discovery.kubernetes", prefix: "discovery.kubernetes.",
                              known: ["service", "namespace", "port", "kubeconfig", "context"])
        let service = try string(required("service", in: keys), name: "discovery.kubernetes.service")
        let portNode = try required("port", in: keys)
        let portText = try scalar(portNode, name: "discovery.kubernetes.port", expected: "a port name or number")
        // A number is the pods' port; anything else is the port's name.
        let port: KubernetesPort = Int(portText).map { .number($0) } ?? .name(portText)
        var k = KubernetesDiscoveryConfig(service: service, port: port)
        if let n = keys["namespace"] { k.namespace = try string(n, name: "discovery.kubernetes.namespace") }
        if let n = keys["kubeconfig"] { k.kubeconfig = try string(n, name: "discovery.kubernetes.kubeconfig") }
        if let n = keys["context"] { k.context = try string(n, name: "discovery.kubernetes.context") }
        return k
    }

    private mutating func dns(_ node: Node, path: String) throws -> DNSDiscoveryConfig {
        let keys = try fields(node, path: path, what: "discovery.dns", prefix: "discovery.dns.",
                              known: ["name", "port", "resolvers", "interval"])
        let name = try string(required("name", in: keys), name: "discovery.dns.name")
        let resolverNodes = try list(required("resolvers", in: keys), path: "\(path).resolvers", name: "discovery.dns.resolvers")
        var resolvers: [SocketAddress] = []
        for (i, n) in resolverNodes.enumerated() {
            resolvers.append(try address(n, name: "discovery.dns.resolvers[\(i)]"))
        }
        var d = DNSDiscoveryConfig(name: name, resolvers: resolvers)
        if let n = keys["port"] { d.port = try int(n, name: "discovery.dns.port") }
        if let n = keys["interval"] { d.intervalMs = try duration(n, name: "discovery.dns.interval") }
        return d
    }
}

import Foundation
import Yams

/// How to reach and authenticate to the Kubernetes API: from a kubeconfig
/// file or the pod's service account. Everything is read at start, except a
/// token file, which is read again for every request: a projected service
/// account token is rotated about every hour.
public struct KubeAccess: Sendable, Equatable {
    public enum Token: Sendable, Equatable {
        case literal(String)
        case file(String)
    }

    public var host: String
    public var port: Int
    /// A path prefix of the server URL (an API proxy's), without a final '/'.
    public var basePath: String
    /// The name the server's certificate must carry: `tls-server-name`, else the host.
    public var serverName: String
    /// PEM: the CAs the server's certificate must chain to; nil: the system's.
    public var caPEM: [UInt8]?
    /// `insecure-skip-tls-verify`: the kubeconfig asked for no verification.
    public var insecure = false
    public var clientCertPEM: [UInt8]?
    public var clientKeyPEM: [UInt8]?
    public var token: Token?
    /// Where this came from, for the log: "kubeconfig FILE (context X)" or "in-cluster".
    public var source: String

    /// The token to send now: a token file is read afresh each time.
    public func bearerToken() throws -> String? {
        switch token {
        case .literal(let t)?: return t
        case .file(let f)?: return try ConfigLoader.readFile(f).trimmingCharacters(in: .whitespacesAndNewlines)
        case nil: return nil
        }
    }

    public static let serviceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// The service account's token and CA and the API's address, as every
    /// pod gets them (`KUBERNETES_SERVICE_HOST`, `_PORT`).
    public static func inCluster(environment: [String: String], dir: String = serviceAccountDir) throws -> KubeAccess {
        let hint = "set discovery.kubernetes.kubeconfig, or run stickyd in a pod with a service account"
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty,
              let portText = environment["KUBERNETES_SERVICE_PORT"], let port = Int(portText), (1...65_535).contains(port) else {
            throw ConfigError(file: "in-cluster credentials", message: "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (not in a pod?); \(hint)")
        }
        let ca = try ConfigLoader.readFile("\(dir)/ca.crt")
        // Checked now, read for each request.
        _ = try ConfigLoader.readFile("\(dir)/token")
        return KubeAccess(host: host, port: port, basePath: "", serverName: host, caPEM: Array(ca.utf8),
                          token: .file("\(dir)/token"), source: "in-cluster")
    }

    /// Reads a kubeconfig file. Errors name the file, and the line where
    /// there is one.
    public static func kubeconfig(path: String, context wanted: String?) throws -> KubeAccess {
        try KubeconfigReader(file: path).read(try ConfigLoader.readFile(path), context: wanted)
    }
}

/// A kubeconfig's YAML, walked as the config file is, so that an error can
/// point at its line. Supports what a static kubeconfig holds: a server,
/// CA, client certificate, token; not the `exec` or `auth-provider` plugins,
/// which would run programs.
struct KubeconfigReader {
    let file: String
    var dir: String { (file as NSString).deletingLastPathComponent }

    func failure(_ node: Node?, _ message: String) -> ConfigError {
        ConfigError(file: file, line: node?.mark?.line, column: node?.mark?.column, message: message)
    }

    func read(_ text: String, context wanted: String?) throws -> KubeAccess {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let e as YamlError {
            throw ConfigLoader.syntaxError(e, text: text, file: file)
        }
        guard let root, case .mapping(let top) = root else { throw failure(root, "not a kubeconfig: its top level must be a mapping") }
        guard let contextName = wanted ?? top["current-context"]?.string, !contextName.isEmpty else {
            throw failure(root, "no current-context; set discovery.kubernetes.context")
        }
        let context = try named(top, "contexts", contextName, field: "context")
        guard case .mapping(let ctx) = context else { throw failure(context, "context '\(contextName)' must be a mapping") }
        guard let clusterName = ctx["cluster"]?.string else { throw failure(context, "context '\(contextName)' names no cluster") }
        let clusterNode = try named(top, "clusters", clusterName, field: "cluster")
        guard case .mapping(let cluster) = clusterNode else { throw failure(clusterNode, "cluster '\(clusterName)' must be a mapping") }
        guard let serverNode = cluster["server"], let server = serverNode.string else {
            throw failure(clusterNode, "cluster '\(clusterName)' has no server")
        }
        var access = try url(server, node: serverNode)
        access.source = "kubeconfig \(file) (context \(contextName))"
        if let name = cluster["tls-server-name"]?.string { access.serverName = name }
        if cluster["insecure-skip-tls-verify"]?.string == "true" { access.insecure = true }
        access.caPEM = try pem(cluster, "certificate-authority", what: "cluster '\(clusterName)'")
        if let userName = ctx["user"]?.string {
            let userNode = try named(top, "users", userName, field: "user")
            guard case .mapping(let user) = userNode else { throw failure(userNode, "user '\(userName)' must be a mapping") }
            for plugin in ["exec", "auth-provider"] where user[plugin] != nil {
                throw failure(user[plugin], "user '\(userName)': '\(plugin)' credentials are not supported (stickyd runs no programs); use a client certificate or a token")
            }
            access.clientCertPEM = try pem(user, "client-certificate", what: "user '\(userName)'")
            access.clientKeyPEM = try pem(user, "client-key", what: "user '\(userName)'")
            if (access.clientCertPEM == nil) != (access.clientKeyPEM == nil) {
                throw failure(userNode, "user '\(userName)' needs both client-certificate and client-key, or neither")
            }
            if let token = user["token"]?.string {
                access.token = .literal(token)
            } else if let tokenFile = user["tokenFile"]?.string {
                let path = absolute(tokenFile)
                _ = try ConfigLoader.readFile(path)
                access.token = .file(path)
            }
        }
        return access
    }

    /// `https://HOST[:PORT][/PATH]`: the API is only spoken over TLS.
    func url(_ text: String, node: Node) throws -> KubeAccess {
        guard text.hasPrefix("https://") else {
            throw failure(node, "server '\(text)' must be an https:// URL: stickyd speaks to the API over TLS only")
        }
        var rest = Substring(text.dropFirst(8))
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[slash...])
            rest = rest[..<slash]
        }
        while path.hasSuffix("/") { path.removeLast() }
        var host = String(rest)
        var port = 443
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw failure(node, "server '\(text)': unclosed '['") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()), (1...65_535).contains(p) else { throw failure(node, "server '\(text)': bad port") }
                port = p
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            guard let p = Int(rest[rest.index(after: colon)...]), (1...65_535).contains(p) else { throw failure(node, "server '\(text)': bad port") }
            port = p
        }
        guard !host.isEmpty else { throw failure(node, "server '\(text)' has no host") }
        return KubeAccess(host: host, port: port, basePath: path, serverName: host, source: "")
    }

    /// The entry of list `key` whose `name` is `name`; its `field` mapping.
    func named(_ top: Node.Mapping, _ key: String, _ name: String, field: String) throws -> Node {
        guard let listNode = top[key], case .sequence(let list) = listNode else {
            throw failure(nil, "no '\(key)' list (looking for \(field) '\(name)')")
        }
        for item in list {
            guard case .mapping(let m) = item, m["name"]?.string == name else { continue }
            guard let value = m[field] else { throw failure(item, "\(field) '\(name)' has no '\(field)' mapping") }
            return value
        }
        let names = list.compactMap { item -> String? in
            if case .mapping(let m) = item { return m["name"]?.string }
            return nil
        }
        throw failure(listNode, "no \(field) named '\(name)' (there are: \(names.joined(separator: ", ")))")
    }

    /// `KEY` (a file, relative to the kubeconfig's directory) or `KEY-data`
    /// (base64), as PEM bytes; nil when neither is there.
    func pem(_ m: Node.Mapping, _ key: String, what: String) throws -> [UInt8]? {
        if let node = m["\(key)-data"] {
            guard let text = node.string, let data = Data(base64Encoded: text.filter { !$0.isWhitespace }) else {
                throw failure(node, "\(what): \(key)-data is not base64")
            }
            guard String(decoding: data, as: UTF8.self).contains("-----BEGIN") else {
                throw failure(node, "\(what): \(key)-data is not PEM")
            }
            return Array(data)
        }
        guard let node = m[key], let path = node.string else { return nil }
        let text = try ConfigLoader.readFile(absolute(path))
        guard text.contains("-----BEGIN") else { throw failure(node, "\(what): \(key) \(absolute(path)) is not PEM") }
        return Array(text.utf8)
    }

    func absolute(_ path: String) -> String { path.hasPrefix("/") ? path : "\(dir)/\(path)" }
}

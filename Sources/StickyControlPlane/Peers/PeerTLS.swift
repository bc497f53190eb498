import Glibc
import NIOCore
import NIOSSL
import StickyCore
import StickyDataPlane

/// `peers.tls` loaded (docs/SCALING.md, "Peers"): mutual TLS on every peer
/// connection, both ways. Each instance presents one certificate, as the
/// server to members that connect and as the client when it connects; the
/// other side's must chain to `peers.tls.ca`, and its subject's common name
/// must be the member's name (checked against the hello). A certificate the
/// CA did not sign fails the handshake; one it signed for another name is
/// refused after it. Both are counted (`show peers`, `refused`).
///
/// Loaded once, at start, before anything is bound, so that a bad file
/// stops the daemon with the key, the file and the reason.
final class PeerTLS: Sendable {
    let server: NIOSSLContext
    let client: NIOSSLContext

    init(_ config: PeersConfig.TLS) throws {
        let (chain, key, authorities) = try TLSMaterial.load(
            cert: ("peers.tls.cert", config.certificate), key: ("peers.tls.key", config.privateKey),
            ca: ("peers.tls.ca", config.ca))
        var serverTLS = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key),
            trustRoots: .certificates(authorities))
        serverTLS.minimumTLSVersion = .tlsv12
        var clientTLS = TLSConfiguration.makeClientConfiguration()
        clientTLS.minimumTLSVersion = .tlsv12
        // The member's identity is its certificate's CN, checked against
        // its name; its address need not be in the certificate.
        clientTLS.certificateVerification = .noHostnameVerification
        clientTLS.trustRoots = .certificates(authorities)
        clientTLS.certificateChain = chain.map { .certificate($0) }
        clientTLS.privateKey = .privateKey(key)
        do {
            server = try NIOSSLContext(configuration: serverTLS)
            client = try NIOSSLContext(configuration: clientTLS)
        } catch NIOSSLError.failedToLoadPrivateKey {
            throw SystemError("peers.tls.key \(config.privateKey) is not the key of peers.tls.cert \(config.certificate)", errno: EINVAL)
        } catch {
            throw SystemError("peers.tls: cannot create a TLS context: \(RemoteAdminTLS.reason(error))", errno: EINVAL)
        }
    }

    /// The verified certificate's subject CN on a TLS channel, or why there
    /// is none. Called on the channel's loop, after the handshake.
    static func commonName(on ch: Channel) -> Result<String, PeerRefusal> {
        guard let handler = try? ch.pipeline.syncOperations.handler(type: NIOSSLHandler.self),
              let der = try? handler.peerCertificate?.toDERBytes() else {
            return .failure(PeerRefusal("no peer certificate"))
        }
        guard let cn = CertificateSubject(certificateDER: der)?.commonName else {
            return .failure(PeerRefusal("the certificate's subject has no CN"))
        }
        return .success(cn)
    }
}

struct PeerRefusal: Error {
    var reason: String
    init(_ reason: String) { self.reason = reason }
}

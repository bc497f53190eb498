/// BoringSSL's reasons in words, for the daemon's log and stickyctl's
/// errors alike: swift-nio-ssl describes an error as, say,
/// `handshakeFailed(sslError([Error: 268435581 error:1000007d:SSL
/// routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at …]))`, and what
/// a reader wants from that is "certificate verify failed" (the words
/// OpenSSL's own messages use). Works on the description, so that this
/// module needs no TLS library.
public enum TLSErrorText {
    /// The reason codes in `description`, in order, lowercased with spaces
    /// ("peer did not return a certificate, …"); the description itself
    /// when it holds none.
    public static func reason(_ description: String) -> String {
        var codes: [String] = []
        var rest = description[...]
        while let r = rest.range(of: "OPENSSL_internal:") {
            let code = rest[r.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "_" }
            if !code.isEmpty { codes.append(code.lowercased().replacingOccurrences(of: "_", with: " ")) }
            rest = rest[r.upperBound...]
        }
        if !codes.isEmpty { return codes.joined(separator: ", ") }
        // swift-nio-ssl's own reasons, such as a connection that ended mid-handshake.
        for synthetic in ["EOF during handshake", "EOF during additional certificate chain validation"]
        where description.contains(synthetic) {
            return synthetic
        }
        return description
    }
}

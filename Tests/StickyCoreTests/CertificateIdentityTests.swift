import Foundation
import StickyCore
import XCTest

/// What the remote admin listener reads off a verified client certificate:
/// its SHA-256 fingerprint and its subject.
final class CertificateIdentityTests: XCTestCase {
    /// Made with `openssl req -x509 -subj "/C=DE/O=stickyd tests/OU=ops/CN=rollout-controller/emailAddress=ops@example.org"`;
    /// `openssl x509 -fingerprint -sha256` gives the digest below.
    static let der = Array(Data(base64Encoded: "MIICNjCCAdugAwIBAgIUaKU7L33V73dUKtCW268gP6LkKq0wCgYIKoZIzj0EAwIwcDELMAkGA1UEBhMCREUxFjAUBgNVBAoMDXN0aWNreWQgdGVzdHMxDDAKBgNVBAsMA29wczEbMBkGA1UEAwwScm9sbG91dC1jb250cm9sbGVyMR4wHAYJKoZIhvcNAQkBFg9vcHNAZXhhbXBsZS5vcmcwHhcNMjYxMjAyMDY0OTUzWhcNMzYxMTI5MDY0OTUzWjBwMQswCQYDVQQGEwJERTEWMBQGA1UECgwNc3RpY2t5ZCB0ZXN0czEMMAoGA1UECwwDb3BzMRswGQYDVQQDDBJyb2xsb3V0LWNvbnRyb2xsZXIxHjAcBgkqhkiG9w0BCQEWD29wc0BleGFtcGxlLm9yZzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABJmCwsBxqsTACZgXxbQNaE+HO3b+TNFTXDZ7hOVdsw4lW49D7gWlB/DsEZuGthirUT5guNjOFr+sb64r/JtJezujUzBRMB0GA1UdDgQWBBSLOMqHJzyfRnaDGBrVGSBf11fyIDAfBgNVHSMEGDAWgBSLOMqHJzyfRnaDGBrVGSBf11fyIDAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQDWORvEICzov+5+X0hwUpXGf21MKGhUc8gm9Da5z8gK+AIhAJhXLSs3j+VBpGCxvQrm84cv0VwpJstpeYFowJwWhK3u")!)
    static let fingerprint = "F3FC4F8754880D7A64983ACAF9046871113450FDC45882E08F870C2C8812CBFF"

    func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    func testSHA256KnownAnswers() {
        // FIPS 180-2, appendix B, and the empty message.
        XCTAssertEqual(hex(SHA256.hash([])), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(hex(SHA256.hash(Array("abc".utf8))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertEqual(hex(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(hex(SHA256.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000))),
                       "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // Lengths around the padding boundary (55, 56, 64 bytes) take one or two blocks.
        XCTAssertEqual(hex(SHA256.hash([UInt8](repeating: 0, count: 55))), "02779466cdec163811d078815c633f21901413081449002f24aa3e80f0b88ef7")
        XCTAssertEqual(hex(SHA256.hash([UInt8](repeating: 0, count: 56))), "d4817aa5497628e7c77e6b606107042bbba3130888c5f47a375e6179be789fbb")
        XCTAssertEqual(hex(SHA256.hash([UInt8](repeating: 0, count: 64))), "f5a5fd42d16a20302798ef6ed309979b43003d2320d9f0e8ea9831a92759fb4b")
    }

    func testFingerprintMatchesOpenSSL() {
        XCTAssertEqual(SHA256.hex(Self.der), Self.fingerprint)
        XCTAssertTrue(AllowedClient("sha256:" + AllowedClient.fingerprint(Self.fingerprint))!
            .matches(sha256: SHA256.hex(Self.der), commonName: nil))
    }

    func testSubjectOfACertificate() throws {
        let subject = try XCTUnwrap(CertificateSubject(certificateDER: Self.der))
        XCTAssertEqual(subject.commonName, "rollout-controller")
        XCTAssertEqual(subject.oneLine, "/C=DE/O=stickyd tests/OU=ops/CN=rollout-controller/emailAddress=ops@example.org")
    }

    func testTruncatedOrForeignBytesAreNoCertificate() {
        XCTAssertNil(CertificateSubject(certificateDER: []))
        XCTAssertNil(CertificateSubject(certificateDER: Array("not a certificate".utf8)))
        for cut in stride(from: 1, to: 300, by: 7) {
            XCTAssertNil(CertificateSubject(certificateDER: Array(Self.der.prefix(cut))), "cut at \(cut)")
        }
        // A length that claims more than there is.
        XCTAssertNil(CertificateSubject(certificateDER: [0x30, 0x84, 0x7F, 0xFF, 0xFF, 0xFF, 0x30, 0x00]))
    }

    func testCommonNameWithNULIsNoName() {
        let s = CertificateSubject(attributes: [.init(type: "CN", value: "admin\0.evil")])
        XCTAssertNil(s.commonName)
        XCTAssertEqual(s.oneLine, "/CN=admin\\x0.evil")
        XCTAssertEqual(CertificateSubject(attributes: [.init(type: "CN", value: "a\nb")]).oneLine, "/CN=a\\xAb")
    }

    func testTLSErrorsInWords() {
        let verify = "handshakeFailed(NIOSSL.BoringSSLError.sslError([Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at /x/handshake.cc:296]))"
        XCTAssertEqual(TLSErrorText.reason(verify), "certificate verify failed")
        let two = "sslError([Error: 1 error:100000c7:SSL routines:OPENSSL_internal:PEER_DID_NOT_RETURN_A_CERTIFICATE at a:1, Error: 2 error:1:SSL routines:OPENSSL_internal:TLSV1_ALERT_UNKNOWN_CA at b:2])"
        XCTAssertEqual(TLSErrorText.reason(two), "peer did not return a certificate, tlsv1 alert unknown ca")
        XCTAssertEqual(TLSErrorText.reason("handshakeFailed(sslError([Error:  EOF during handshake]))"), "EOF during handshake")
        XCTAssertEqual(TLSErrorText.reason("something else"), "something else")
    }
}

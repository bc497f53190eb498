// The few OpenSSL calls the remote admin listener needs, behind plain C
// functions. Swift never sees OpenSSL's headers: many of its calls are
// macros (SSL_CTX_set_min_proto_version, SSL_CTX_set_mode) that Swift cannot
// import, and its error queue is easier to turn into one message here.
#ifndef STICKY_TLS_SHIM_H
#define STICKY_TLS_SHIM_H

#include <stddef.h>
#include <stdint.h>

struct ssl_ctx_st;
struct ssl_st;

/// Which file `sticky_tls_server_context` failed on.
enum {
    STICKY_TLS_BAD_CERT = 1,
    STICKY_TLS_BAD_KEY = 2,
    STICKY_TLS_BAD_CLIENT_CA = 3,
    /// The key is not the certificate's.
    STICKY_TLS_KEY_MISMATCH = 4,
    STICKY_TLS_NO_MEMORY = 5,
};

/// Results of the non-blocking calls below, besides their successes.
enum {
    STICKY_TLS_CLOSED = 0,
    STICKY_TLS_FAILED = -1,
    STICKY_TLS_WANT_READ = -2,
    STICKY_TLS_WANT_WRITE = -3,
};

/// A server context: TLS 1.2 or later, `cert` (PEM, chain allowed) with
/// `key`, and a client certificate required and verified against
/// `client_ca`. No session resumption, no renegotiation. On failure returns
/// NULL, sets *which to a STICKY_TLS_BAD_* value and writes OpenSSL's
/// reason into `why`.
struct ssl_ctx_st *sticky_tls_server_context(const char *cert, const char *key, const char *client_ca,
                                             int *which, char *why, size_t why_len);
void sticky_tls_context_free(struct ssl_ctx_st *ctx);

/// A server session on the connected, non-blocking socket `fd`.
struct ssl_st *sticky_tls_session(struct ssl_ctx_st *ctx, int fd);
void sticky_tls_session_free(struct ssl_st *ssl);

/// One step of the handshake: 1 when it is done, or STICKY_TLS_WANT_*,
/// or STICKY_TLS_FAILED with the reason (a verify error, "peer did not
/// return a certificate") in `why`.
int sticky_tls_handshake(struct ssl_st *ssl, char *why, size_t why_len);

/// Bytes read (> 0), STICKY_TLS_CLOSED at the peer's close_notify or end
/// of stream, STICKY_TLS_WANT_*, or STICKY_TLS_FAILED.
long sticky_tls_read(struct ssl_st *ssl, void *buf, size_t len);

/// Bytes written (> 0), STICKY_TLS_WANT_*, or STICKY_TLS_FAILED. A call
/// that wanted to be retried must be retried with the same length.
long sticky_tls_write(struct ssl_st *ssl, const void *buf, size_t len);

/// Sends close_notify, once and without waiting for the peer's.
void sticky_tls_close_notify(struct ssl_st *ssl);

/// The verified peer certificate's SHA-256 digest (32 bytes), its subject
/// common name and its whole subject (one line, for logs). Returns 0, or -1
/// when there is no peer certificate. The subject is cut to fit; a CN that
/// does not fit, or holds a NUL byte, is returned empty.
int sticky_tls_peer(struct ssl_st *ssl, uint8_t digest[32], char *cn, size_t cn_len,
                    char *subject, size_t subject_len);

#endif

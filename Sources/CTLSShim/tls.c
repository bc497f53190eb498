#include "CTLSShim.h"

#include <stdio.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/// Everything on this thread's error queue, oldest first, as
/// "reason (library); reason (library)", then clears the queue.
static void drain_errors(char *why, size_t why_len) {
    size_t used = 0;
    if (why_len) why[0] = 0;
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        const char *reason = ERR_reason_error_string(e);
        const char *lib = ERR_lib_error_string(e);
        char one[256];
        snprintf(one, sizeof one, "%s%s (%s)", used ? "; " : "", reason ? reason : "unknown error",
                 lib ? lib : "OpenSSL");
        size_t n = strlen(one);
        if (used + n < why_len) {
            memcpy(why + used, one, n + 1);
            used += n;
        }
    }
    if (used == 0 && why_len) snprintf(why, why_len, "unknown OpenSSL error");
}

/// An encrypted key would otherwise make OpenSSL prompt on the terminal and
/// block the start; refusing gives a clear error instead.
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
    (void)buf; (void)size; (void)rwflag; (void)u;
    return 0;
}

struct ssl_ctx_st *sticky_tls_server_context(const char *cert, const char *key, const char *client_ca,
                                             int *which, char *why, size_t why_len) {
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        *which = STICKY_TLS_NO_MEMORY;
        drain_errors(why, why_len);
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    // Each session is verified afresh: no resumption to skip the client
    // certificate check, and no renegotiation for a client to abuse.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    // Writes come from a growing Swift array: let OpenSSL accept a retry
    // from a moved buffer, and report partial writes.
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);

    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        *which = STICKY_TLS_BAD_CERT;
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        // It compares the key with the certificate itself.
        unsigned long e = ERR_peek_last_error();
        int mismatch = ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH;
        *which = mismatch ? STICKY_TLS_KEY_MISMATCH : STICKY_TLS_BAD_KEY;
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        *which = STICKY_TLS_KEY_MISMATCH;
        goto fail;
    }
    if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
        *which = STICKY_TLS_BAD_CLIENT_CA;
        goto fail;
    }
    // Tell clients which CA to pick a certificate for.
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(client_ca);
    if (!names) {
        *which = STICKY_TLS_BAD_CLIENT_CA;
        goto fail;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    return ctx;

fail:
    drain_errors(why, why_len);
    SSL_CTX_free(ctx);
    return NULL;
}

void sticky_tls_context_free(struct ssl_ctx_st *ctx) { SSL_CTX_free(ctx); }

struct ssl_st *sticky_tls_session(struct ssl_ctx_st *ctx, int fd) {
    SSL *ssl = SSL_new(ctx);
    if (!ssl) return NULL;
    if (SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

void sticky_tls_session_free(struct ssl_st *ssl) { SSL_free(ssl); }

/// Maps SSL_get_error to the results above; the error queue is cleared.
static int outcome(SSL *ssl, int rc) {
    int e = SSL_get_error(ssl, rc);
    switch (e) {
    case SSL_ERROR_WANT_READ: return STICKY_TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE: return STICKY_TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN: return STICKY_TLS_CLOSED;
    default:
        ERR_clear_error();
        return STICKY_TLS_FAILED;
    }
}

int sticky_tls_handshake(struct ssl_st *ssl, char *why, size_t why_len) {
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl);
    if (rc == 1) return 1;
    int e = SSL_get_error(ssl, rc);
    if (e == SSL_ERROR_WANT_READ) return STICKY_TLS_WANT_READ;
    if (e == SSL_ERROR_WANT_WRITE) return STICKY_TLS_WANT_WRITE;
    long verify = SSL_get_verify_result(ssl);
    if (verify != X509_V_OK) {
        ERR_clear_error();
        snprintf(why, why_len, "certificate verify failed: %s", X509_verify_cert_error_string(verify));
    } else if ((e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN) && ERR_peek_error() == 0) {
        snprintf(why, why_len, "connection closed during the handshake");
    } else {
        drain_errors(why, why_len);
    }
    return STICKY_TLS_FAILED;
}

long sticky_tls_read(struct ssl_st *ssl, void *buf, size_t len) {
    ERR_clear_error();
    size_t n = 0;
    int rc = SSL_read_ex(ssl, buf, len, &n);
    return rc == 1 ? (long)n : outcome(ssl, rc);
}

long sticky_tls_write(struct ssl_st *ssl, const void *buf, size_t len) {
    ERR_clear_error();
    size_t n = 0;
    int rc = SSL_write_ex(ssl, buf, len, &n);
    if (rc == 1) return (long)n;
    int r = outcome(ssl, rc);
    return r == STICKY_TLS_CLOSED ? STICKY_TLS_FAILED : r;
}

void sticky_tls_close_notify(struct ssl_st *ssl) {
    ERR_clear_error();
    (void)SSL_shutdown(ssl);
    ERR_clear_error();
}

int sticky_tls_peer(struct ssl_st *ssl, uint8_t digest[32], char *cn, size_t cn_len,
                    char *subject, size_t subject_len) {
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (cn_len) cn[0] = 0;
    if (subject_len) subject[0] = 0;
    if (!cert) return -1;
    unsigned int n = 0;
    if (X509_digest(cert, EVP_sha256(), digest, &n) != 1 || n != 32) {
        ERR_clear_error();
        return -1;
    }
    X509_NAME *name = X509_get_subject_name(cert);
    if (subject_len) X509_NAME_oneline(name, subject, (int)subject_len);
    // The last CN is the most specific one, as in RFC 6125's reading.
    int at = -1, next;
    while ((next = X509_NAME_get_index_by_NID(name, NID_commonName, at)) >= 0) at = next;
    if (at >= 0 && cn_len) {
        unsigned char *utf8 = NULL;
        int len = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, at)));
        // A CN that does not fit, or hides a NUL, is left empty rather
        // than cut: a cut name could match a shorter allowed one.
        if (len > 0 && (size_t)len < cn_len && memchr(utf8, 0, (size_t)len) == NULL) {
            memcpy(cn, utf8, (size_t)len);
            cn[len] = 0;
        }
        OPENSSL_free(utf8);
    }
    ERR_clear_error();
    return 0;
}

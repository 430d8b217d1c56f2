#ifndef GATEWAY_COPENSSL_SHIM_H
#define GATEWAY_COPENSSL_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/rand.h>

#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/ecdsa.h>
#include <openssl/bn.h>
#include <openssl/hmac.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

/*
 * SHA-256 of `length` bytes into `out` (32 bytes), on a context on the stack. The EVP one-shot
 * (`EVP_Digest`) allocates a digest context per call, two mallocs in OpenSSL 3.0, and `SHA256()`
 * three; this allocates none. OpenSSL 3 deprecates the low-level digest functions (new code is to
 * reach algorithms through providers) but keeps them; SHA-256 itself never changes.
 */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static inline int gw_sha256(const void *data, size_t length, unsigned char *out) {
    SHA256_CTX context;
    return SHA256_Init(&context) && SHA256_Update(&context, data, length) && SHA256_Final(out, &context);
}
#pragma GCC diagnostic pop

/* EVP_PKEY_PUBLIC_KEY is a composite macro; selection for EVP_PKEY_fromdata. */
static inline int gw_EVP_PKEY_PUBLIC_KEY(void) { return EVP_PKEY_PUBLIC_KEY; }

/*
 * Static-inline wrappers for OpenSSL function-like macros and SSL_OP_BIT-based constants, which
 * Swift's Clang importer cannot call. Each wrapper only forwards; prefix `gw_`.
 */

/* ---- SSL_CTX configuration ---- */

static inline int gw_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}

static inline int gw_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}

static inline int gw_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_groups_list(ctx, list);
}

static inline long gw_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}

static inline long gw_SSL_CTX_set_tlsext_ticket_keys(SSL_CTX *ctx, void *keys, long length) {
    return SSL_CTX_set_tlsext_ticket_keys(ctx, keys, length);
}

static inline long gw_SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx,
                                                             int (*callback)(SSL *, int *, void *)) {
    return SSL_CTX_set_tlsext_servername_callback(ctx, callback);
}

static inline long gw_SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg) {
    return SSL_CTX_set_tlsext_servername_arg(ctx, arg);
}

/* The option set every server SSL_CTX of the gateway uses (SSL_OP_* are SSL_OP_BIT expressions). */
static inline uint64_t gw_server_options(void) {
    return SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION
        | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 | SSL_OP_NO_TLSv1_1;
}

static inline long gw_sess_cache_server(void) { return SSL_SESS_CACHE_SERVER; }

/* ---- per-connection ---- */

static inline int gw_SSL_set_app_data(SSL *ssl, void *data) { return SSL_set_app_data(ssl, data); }
static inline void *gw_SSL_get_app_data(const SSL *ssl) { return SSL_get_app_data(ssl); }

static inline int gw_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

static inline int gw_SSL_set_min_proto_version(SSL *ssl, int version) {
    return (int)SSL_set_min_proto_version(ssl, version);
}

static inline int gw_SSL_set_max_proto_version(SSL *ssl, int version) {
    return (int)SSL_set_max_proto_version(ssl, version);
}

/* ---- memory BIOs ---- */

static inline long gw_BIO_set_mem_eof_return(BIO *bio, int value) {
    return BIO_set_mem_eof_return(bio, value);
}

static inline size_t gw_BIO_pending(BIO *bio) { return (size_t)BIO_pending(bio); }

/* ---- the server's own BIO (TLSConnection): retry flags are macros over BIO_set_flags ---- */

static inline void gw_BIO_set_retry_read(BIO *bio) { BIO_set_retry_read(bio); }
static inline void gw_BIO_clear_retry_flags(BIO *bio) { BIO_clear_retry_flags(bio); }

/* ---- certificates ---- */

static inline int gw_general_names_count(const GENERAL_NAMES *names) {
    return sk_GENERAL_NAME_num(names);
}

/* The DNS name at `index`, or NULL (and *length 0) if that entry is not a dNSName. */
static inline const unsigned char *gw_general_name_dns(const GENERAL_NAMES *names, int index, int *length) {
    const GENERAL_NAME *name = sk_GENERAL_NAME_value(names, index);
    *length = 0;
    if (name == NULL || name->type != GEN_DNS || name->d.dNSName == NULL) return NULL;
    *length = ASN1_STRING_length(name->d.dNSName);
    return ASN1_STRING_get0_data(name->d.dNSName);
}

static inline void gw_general_names_free(GENERAL_NAMES *names) { GENERAL_NAMES_free(names); }

static inline void gw_OPENSSL_free(void *pointer) { OPENSSL_free(pointer); }

#endif

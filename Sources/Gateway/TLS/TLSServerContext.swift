import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
private import COpenSSL

/// Immutable TLS state shared by every connection of one listener, across event loops.
///
/// Holds one `SSL_CTX` per certificate pair, all configured identically (versions, ciphers, groups,
/// ALPN, ticket keys, session id context) so that a session established under one certificate
/// resumes under any other, and SNI can switch contexts mid-handshake without changing behaviour.
///
/// `@unchecked Sendable` because nothing is mutated after `init`; OpenSSL documents `SSL_CTX` as
/// safe to share between threads once configured (`SSL_new`, the session cache and ticket keys
/// take their own locks).
final class TLSServerContext: @unchecked Sendable {
    /// TLS 1.2 suites: ECDHE for forward secrecy, AEAD only (no CBC, no RSA key exchange).
    static let tls12CipherList =
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        + "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    /// TLS 1.3 suites (all AEAD), in the server's order of preference: AES-128-GCM first, as for
    /// TLS 1.2 above. OpenSSL's default puts AES-256-GCM-SHA384 first, whose key schedule runs on
    /// SHA-384, which has no CPU instructions where SHA-256 has (SHA-NI); both are 128-bit secure
    /// or better, and AES-128-GCM is what Mozilla's intermediate profile, Go and BoringSSL prefer.
    static let tls13CipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    static let groups = "X25519:P-256:P-384"
    /// Same on every SSL_CTX: OpenSSL refuses to resume a session whose id context differs.
    private static let sessionIDContext = Array("barberpro-gateway".utf8)

    let settings: TLSServerSettings
    /// Per certificate (same order as `settings.certificates`), the DNS names from its SAN
    /// (or its CN if it has no SAN), lower-cased.
    let serverNames: [[String]]
    /// Per certificate (same order), its notAfter as a Unix time (`gateway validate` warns about
    /// it and `gateway_tls_certificate_expiry_seconds` exports it).
    let notAfter: [Double]

    /// One `SSL_CTX*` per certificate pair; index 0 is the default and every `SSL` starts from it.
    let sslContexts: [OpaquePointer]

    /// ALPN protocols in wire format (length-prefixed). Owned here because the ALPN select callback
    /// hands OpenSSL a pointer *into* this list, which must outlive every connection.
    private let alpnWireFormat: UnsafeMutableBufferPointer<UInt8>?

    init(settings: TLSServerSettings) throws {
        guard !settings.certificates.isEmpty else {
            throw TLSConfigurationError(kind: .noCertificates, file: nil, detail: "TLS listener has no certificate configured")
        }
        let wire = try Self.alpnWireFormat(settings.alpnProtocols)
        var ticketKeys = [UInt8](repeating: 0, count: 80)
        guard RAND_bytes(&ticketKeys, Int32(ticketKeys.count)) == 1 else {
            throw TLSConfigurationError(kind: .invalidSetting, file: nil, detail: "cannot generate session ticket keys: \(drainOpenSSLErrors().joined(separator: "; "))")
        }

        var contexts: [OpaquePointer] = []
        var names: [[String]] = []
        var expiries: [Double] = []
        do {
            for pair in settings.certificates {
                let ctx = try Self.makeSSLContext(settings: settings, ticketKeys: &ticketKeys)
                contexts.append(ctx)
                try Self.loadCertificatePair(pair, into: ctx)
                names.append(Self.dnsNames(of: SSL_CTX_get0_certificate(ctx)))
                expiries.append(Self.notAfter(of: SSL_CTX_get0_certificate(ctx)))
            }
        } catch {
            contexts.forEach { SSL_CTX_free($0) }
            if let wire { wire.deallocate() }
            throw error
        }
        // Wipe our copy; OpenSSL keeps its own.
        for index in ticketKeys.indices { ticketKeys[index] = 0 }

        self.settings = settings
        self.serverNames = names
        self.notAfter = expiries
        self.sslContexts = contexts
        self.alpnWireFormat = wire

        // Callbacks go on every SSL_CTX: after SNI switches contexts, OpenSSL consults the new one.
        let unmanagedSelf = Unmanaged.passUnretained(self).toOpaque()
        for ctx in contexts {
            if wire != nil {
                SSL_CTX_set_alpn_select_cb(ctx, tlsALPNSelectThunk, unmanagedSelf)
            }
            gw_SSL_CTX_set_tlsext_servername_callback(ctx, tlsServerNameThunk)
        }
    }

    deinit {
        for ctx in self.sslContexts { SSL_CTX_free(ctx) }
        self.alpnWireFormat?.deallocate()
    }

    // MARK: - Used by callbacks

    /// The index of the certificate to serve for an SNI name: an exact SAN match, then a `*.` wildcard
    /// matching exactly one label (RFC 6125 §6.4.3); nil means "use the default".
    func certificateIndex(forServerName rawName: String) -> Int? {
        var name = rawName.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        guard !name.isEmpty else { return nil }
        for (index, names) in self.serverNames.enumerated() where names.contains(name) {
            return index
        }
        guard let dot = name.firstIndex(of: "."), dot != name.startIndex else { return nil }
        let wildcard = "*" + name[dot...]
        for (index, names) in self.serverNames.enumerated() where names.contains(wildcard) {
            return index
        }
        return nil
    }

    /// ALPN selection with *server* preference: the first of our protocols the client also offers.
    /// A client that offers ALPN but shares nothing with us gets a fatal no_application_protocol
    /// alert (RFC 7301 §3.2), as nginx and Envoy do, instead of silently falling back.
    fileprivate func selectALPN(
        out: UnsafeMutablePointer<UnsafePointer<UInt8>?>,
        outLength: UnsafeMutablePointer<UInt8>,
        client: UnsafeBufferPointer<UInt8>
    ) -> Int32 {
        guard let server = self.alpnWireFormat else { return SSL_TLSEXT_ERR_NOACK }
        var serverIndex = 0
        while serverIndex < server.count {
            let length = Int(server[serverIndex])
            let candidate = UnsafeBufferPointer(rebasing: server[(serverIndex + 1)..<(serverIndex + 1 + length)])
            var clientIndex = 0
            while clientIndex < client.count {
                let clientLength = Int(client[clientIndex])
                let end = clientIndex + 1 + clientLength
                guard end <= client.count else { break }  // malformed list: stop looking
                if clientLength == length
                    && candidate.elementsEqual(client[(clientIndex + 1)..<end])
                {
                    out.pointee = UnsafePointer(candidate.baseAddress)
                    outLength.pointee = UInt8(length)
                    return SSL_TLSEXT_ERR_OK
                }
                clientIndex = end
            }
            serverIndex += 1 + length
        }
        return SSL_TLSEXT_ERR_ALERT_FATAL
    }

    // MARK: - Construction

    private static func alpnWireFormat(_ protocols: [String]) throws -> UnsafeMutableBufferPointer<UInt8>? {
        guard !protocols.isEmpty else { return nil }
        var bytes: [UInt8] = []
        for name in protocols {
            let utf8 = Array(name.utf8)
            guard (1...255).contains(utf8.count) else {
                throw TLSConfigurationError(kind: .invalidSetting, file: nil, detail: "ALPN protocol name '\(name)' must be 1 to 255 bytes")
            }
            bytes.append(UInt8(utf8.count))
            bytes.append(contentsOf: utf8)
        }
        let storage = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: bytes.count)
        _ = storage.initialize(from: bytes)
        return storage
    }

    private static func makeSSLContext(settings: TLSServerSettings, ticketKeys: inout [UInt8]) throws -> OpaquePointer {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_server_method()) else {
            throw settingError("cannot create SSL_CTX")
        }
        func check(_ ok: Bool, _ what: String) throws {
            if !ok {
                SSL_CTX_free(ctx)
                throw settingError(what)
            }
        }
        let minimum = settings.minimumVersion == .v1_3 ? TLS1_3_VERSION : TLS1_2_VERSION
        try check(gw_SSL_CTX_set_min_proto_version(ctx, minimum) == 1, "cannot set minimum TLS version")
        try check(gw_SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) == 1, "cannot set maximum TLS version")
        _ = SSL_CTX_set_options(ctx, gw_server_options())
        try check(SSL_CTX_set_cipher_list(ctx, tls12CipherList) == 1, "cannot set TLS 1.2 cipher list")
        try check(SSL_CTX_set_ciphersuites(ctx, tls13CipherSuites) == 1, "cannot set TLS 1.3 cipher suites")
        try check(gw_SSL_CTX_set1_groups_list(ctx, groups) == 1, "cannot set key exchange groups")
        try check(
            sessionIDContext.withUnsafeBufferPointer {
                SSL_CTX_set_session_id_context(ctx, $0.baseAddress, UInt32($0.count))
            } == 1,
            "cannot set session id context"
        )
        _ = gw_SSL_CTX_set_session_cache_mode(ctx, gw_sess_cache_server())
        try check(gw_SSL_CTX_set_tlsext_ticket_keys(ctx, &ticketKeys, 80) == 1, "cannot set session ticket keys")
        return ctx
    }

    private static func settingError(_ what: String) -> TLSConfigurationError {
        let detail = ([what] + drainOpenSSLErrors()).joined(separator: ": ")
        return TLSConfigurationError(kind: .invalidSetting, file: nil, detail: detail)
    }

    /// Loads and cross-checks one pair, naming the file at fault in every error.
    private static func loadCertificatePair(_ pair: TLSCertificatePair, into ctx: OpaquePointer) throws {
        let cert = pair.certificatePath
        let key = pair.keyPath
        if let reason = unreadableReason(cert) {
            throw TLSConfigurationError(kind: .unreadableCertificate, file: cert, detail: "cannot read certificate: \(reason)")
        }
        ERR_clear_error()
        // Leaf first; any further certificates in the file become the chain sent to clients.
        guard SSL_CTX_use_certificate_chain_file(ctx, cert) == 1 else {
            throw TLSConfigurationError(kind: .invalidCertificate, file: cert, detail: "not a valid PEM certificate (\(openSSLReason()))")
        }
        if let reason = unreadableReason(key) {
            throw TLSConfigurationError(kind: .unreadableKey, file: key, detail: "cannot read private key: \(reason)")
        }
        // Parse the key on its own first, so "not a key" and "wrong key" are reported differently.
        ERR_clear_error()
        guard let bio = BIO_new_file(key, "r") else {
            throw TLSConfigurationError(kind: .unreadableKey, file: key, detail: "cannot read private key (\(openSSLReason()))")
        }
        defer { BIO_free(bio) }
        // The callback refuses to prompt: an encrypted key must not block start-up on a terminal read.
        guard let pkey = PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil) else {
            throw TLSConfigurationError(kind: .invalidKey, file: key, detail: "not a valid unencrypted PEM private key (\(openSSLReason()))")
        }
        defer { EVP_PKEY_free(pkey) }
        ERR_clear_error()
        guard SSL_CTX_use_PrivateKey(ctx, pkey) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
            ERR_clear_error()
            throw TLSConfigurationError(kind: .keyMismatch, file: key, detail: "private key does not match certificate \(cert)")
        }
    }

    /// The certificate's notAfter as a Unix time (0 when it cannot be read).
    private static func notAfter(of certificate: OpaquePointer?) -> Double {
        guard let certificate, let end = X509_get0_notAfter(certificate) else { return 0 }
        var days: Int32 = 0
        var seconds: Int32 = 0
        guard ASN1_TIME_diff(&days, &seconds, nil, end) == 1 else { return 0 }
        return (Date().timeIntervalSince1970 + Double(days) * 86_400 + Double(seconds)).rounded()
    }

    /// strerror text if the file cannot be opened for reading, so a missing file says so plainly.
    private static func unreadableReason(_ path: String) -> String? {
        guard let file = fopen(path, "r") else {
            return String(cString: strerror(errno))
        }
        fclose(file)
        return nil
    }

    private static func openSSLReason() -> String {
        let errors = drainOpenSSLErrors()
        return errors.isEmpty ? "unknown OpenSSL error" : errors.joined(separator: "; ")
    }

    /// SAN DNS names (lower-cased), or the subject CN if the certificate has no SAN DNS entry.
    private static func dnsNames(of certificate: OpaquePointer?) -> [String] {
        guard let certificate else { return [] }
        var names: [String] = []
        if let raw = X509_get_ext_d2i(certificate, NID_subject_alt_name, nil, nil) {
            let general = OpaquePointer(raw)
            defer { gw_general_names_free(general) }
            for index in 0..<gw_general_names_count(general) {
                var length: Int32 = 0
                if let bytes = gw_general_name_dns(general, index, &length), length > 0 {
                    let name = String(decoding: UnsafeBufferPointer(start: bytes, count: Int(length)), as: UTF8.self)
                    names.append(name.lowercased())
                }
            }
        }
        if names.isEmpty, let subject = X509_get_subject_name(certificate) {
            let position = X509_NAME_get_index_by_NID(subject, NID_commonName, -1)
            if position >= 0, let entry = X509_NAME_get_entry(subject, position),
               let data = X509_NAME_ENTRY_get_data(entry)
            {
                var utf8: UnsafeMutablePointer<UInt8>? = nil
                let length = ASN1_STRING_to_UTF8(&utf8, data)
                if length > 0, let utf8 {
                    names.append(String(decoding: UnsafeBufferPointer(start: utf8, count: Int(length)), as: UTF8.self).lowercased())
                    gw_OPENSSL_free(utf8)
                }
            }
        }
        return names
    }
}

/// Empties this thread's OpenSSL error queue into readable strings, oldest first.
func drainOpenSSLErrors() -> [String] {
    var messages: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        messages.append(String(decoding: bytes, as: UTF8.self))
    }
    return messages
}

// MARK: - C thunk: unwrap the unretained context and forward. The context owns the SSL_CTXs these
// are installed on, so it is alive whenever OpenSSL calls them.

private func tlsALPNSelectThunk(
    ssl: OpaquePointer?,
    out: UnsafeMutablePointer<UnsafePointer<UInt8>?>?,
    outLength: UnsafeMutablePointer<UInt8>?,
    clientList: UnsafePointer<UInt8>?,
    clientLength: UInt32,
    arg: UnsafeMutableRawPointer?
) -> Int32 {
    guard let out, let outLength, let clientList, let arg else { return SSL_TLSEXT_ERR_NOACK }
    let context = Unmanaged<TLSServerContext>.fromOpaque(arg).takeUnretainedValue()
    return context.selectALPN(out: out, outLength: outLength, client: UnsafeBufferPointer(start: clientList, count: Int(clientLength)))
}

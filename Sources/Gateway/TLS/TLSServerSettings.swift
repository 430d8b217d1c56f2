/// The lowest TLS version a listener accepts. The highest is always TLS 1.3; TLS 1.0 and 1.1 are
/// never offered (RFC 8996 deprecates them).
enum TLSProtocolVersion: String, Sendable {
    case v1_2 = "1.2"
    case v1_3 = "1.3"
}

/// A PEM certificate file (leaf first, then any chain certificates) and its PEM private key.
struct TLSCertificatePair: Sendable, Equatable {
    var certificatePath: String
    var keyPath: String
}

/// What one TLS listener serves. Turned into a ``TLSServerContext`` once at configuration load,
/// so every problem with files is reported before any socket binds.
struct TLSServerSettings: Sendable {
    var minimumVersion: TLSProtocolVersion
    /// The first pair is the default; the others are chosen by SNI against their SAN DNS names.
    var certificates: [TLSCertificatePair]
    /// Wire names in server preference order, e.g. `["h2", "http/1.1"]`. Empty disables ALPN.
    var alpnProtocols: [String]

    init(minimumVersion: TLSProtocolVersion = .v1_2, certificates: [TLSCertificatePair], alpnProtocols: [String] = ["h2", "http/1.1"]) {
        self.minimumVersion = minimumVersion
        self.certificates = certificates
        self.alpnProtocols = alpnProtocols
    }
}

/// Fired once per connection with `fireUserInboundEventTriggered` when the handshake completes,
/// strictly before the first decrypted byte is passed on, so the next handler can switch the pipeline
/// (HTTP/1 or h2, from ALPN) synchronously before it sees any request bytes.
struct TLSHandshakeCompleted: Sendable, Equatable {
    /// The ALPN protocol chosen, or nil if the client offered none (the caller treats that as http/1.1).
    var negotiatedProtocol: String?
    /// OpenSSL's name for the version, e.g. "TLSv1.3".
    var version: String
    /// The SNI host name the client sent, if any.
    var serverName: String?
    /// True if the session was resumed from a ticket or the session cache (abbreviated handshake).
    var resumed: Bool
}

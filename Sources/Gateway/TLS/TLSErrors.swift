/// A problem with a listener's TLS settings, found at start-up. The description names the file and the
/// problem, because the operator reading it has to know which file to fix.
struct TLSConfigurationError: Error, CustomStringConvertible, Sendable {
    /// What went wrong; compare against the static constants.
    struct Kind: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case noCertificates
            case unreadableCertificate
            case invalidCertificate
            case unreadableKey
            case invalidKey
            case keyMismatch
            case invalidSetting
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        static let noCertificates = Kind(.noCertificates)
        static let unreadableCertificate = Kind(.unreadableCertificate)
        static let invalidCertificate = Kind(.invalidCertificate)
        static let unreadableKey = Kind(.unreadableKey)
        static let invalidKey = Kind(.invalidKey)
        static let keyMismatch = Kind(.keyMismatch)
        static let invalidSetting = Kind(.invalidSetting)

        var description: String { String(describing: self.base) }
    }

    var kind: Kind
    /// The file the operator must fix (the key file for a mismatch), or nil for a non-file setting.
    var file: String?
    /// The rest of the message, e.g. "private key does not match certificate certs/dev.crt".
    var detail: String

    var description: String {
        if let file { return "\(file): \(self.detail)" }
        return self.detail
    }
}

/// A TLS failure on one connection, passed to `errorCaught` before the handler closes the channel.
/// Equality compares only the kind, so tests and callers can match `error == TLSError.handshakeFailed`.
struct TLSError: Error, CustomStringConvertible, Sendable, Hashable {
    private enum Base: Hashable, Sendable {
        case handshakeFailed
        case handshakeTimedOut
        case uncleanShutdown
        case readFailed
        case writeFailed
        case sslSetupFailed
    }

    private let base: Base
    /// OpenSSL's error queue at the time of failure, oldest first (e.g. "no shared cipher").
    private(set) var openSSLErrors: [String] = []

    private init(_ base: Base) { self.base = base }

    static let handshakeFailed = TLSError(.handshakeFailed)
    static let handshakeTimedOut = TLSError(.handshakeTimedOut)
    /// The peer closed TCP without sending close_notify (RFC 8446 §6.1): a truncation attack cannot
    /// be told apart from the end of the data, so the application is told.
    static let uncleanShutdown = TLSError(.uncleanShutdown)
    static let readFailed = TLSError(.readFailed)
    static let writeFailed = TLSError(.writeFailed)
    static let sslSetupFailed = TLSError(.sslSetupFailed)

    func with(openSSLErrors: [String]) -> TLSError {
        var copy = self
        copy.openSSLErrors = openSSLErrors
        return copy
    }

    var description: String {
        let name = String(describing: self.base)
        if self.openSSLErrors.isEmpty { return "TLSError.\(name)" }
        return "TLSError.\(name): \(self.openSSLErrors.joined(separator: "; "))"
    }

    static func == (lhs: TLSError, rhs: TLSError) -> Bool { lhs.base == rhs.base }
    func hash(into hasher: inout Hasher) { hasher.combine(self.base) }
}

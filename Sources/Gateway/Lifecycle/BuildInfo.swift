private import COpenSSL
private import CNGHTTP2
private import CHiredis

/// What `gateway --version` and `/health/detailed` report: this build and the C libraries it runs
/// with. OpenSSL and nghttp2 are asked at run time (a container may ship a newer patch release than
/// the one built against); hiredis only exposes its compile-time version.
public enum BuildInfo {
    public static let version = "0.1.0"

    /// `OpenSSL 3.0.x  <date>` as the loaded library reports it.
    public static var openSSL: String { String(cString: OpenSSL_version(OPENSSL_VERSION)) }

    public static var nghttp2: String {
        guard let info = nghttp2_version(0), let text = info.pointee.version_str else { return "unknown" }
        return String(cString: text)
    }

    public static var hiredis: String { "\(HIREDIS_MAJOR).\(HIREDIS_MINOR).\(HIREDIS_PATCH)" }

    /// One `name: value` per line, `commit` from the build (the CLI target owns that constant).
    public static func versionText(commit: String) -> String {
        """
        gateway \(version)
        commit: \(commit)
        openssl: \(openSSL)
        nghttp2: \(nghttp2)
        hiredis: \(hiredis)
        """
    }
}

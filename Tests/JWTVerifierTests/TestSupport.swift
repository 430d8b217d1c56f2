import Foundation
import Synchronization
import Testing
@testable import JWTVerifier

// MARK: - Token surgery

enum B64 {
    static func encode(_ bytes: [UInt8]) -> String { Base64URL.encode(bytes) }
    static func encode(_ string: String) -> String { Base64URL.encode(Array(string.utf8)) }
    static func decode(_ string: String) -> [UInt8] { Base64URL.decode(string)! }
}

func segments(_ token: String) -> [String] { token.split(separator: ".", omittingEmptySubsequences: false).map(String.init) }

/// Replaces the payload with `json` while keeping header and signature.
func replacingPayload(_ token: String, with json: String) -> String {
    let s = segments(token)
    return [s[0], B64.encode(json), s[2]].joined(separator: ".")
}

/// Re-encodes the header with its JSON text transformed.
func replacingHeader(_ token: String, _ transform: (String) -> String) -> String {
    let s = segments(token)
    let header = String(decoding: B64.decode(s[0]), as: UTF8.self)
    return [B64.encode(transform(header)), s[1], s[2]].joined(separator: ".")
}

/// Flips one bit in the middle of the signature.
func flippingSignatureByte(_ token: String) -> String {
    let s = segments(token)
    var signature = B64.decode(s[2])
    signature[signature.count / 2] ^= 0x01
    return [s[0], s[1], B64.encode(signature)].joined(separator: ".")
}

/// Swaps the header `alg` value for another, keeping everything else byte-equal in meaning.
func swappingAlg(_ token: String, from: String, to: String) -> String {
    replacingHeader(token) { $0.replacingOccurrences(of: "\"alg\":\"\(from)\"", with: "\"alg\":\"\(to)\"")
        .replacingOccurrences(of: "\"alg\": \"\(from)\"", with: "\"alg\": \"\(to)\"") }
}

/// Expects `body` to throw exactly `expected` (kind + claim), returning a readable failure otherwise.
func thrownError(_ body: () throws -> some Any, sourceLocation: SourceLocation = #_sourceLocation) -> JWTError? {
    do { _ = try body(); return nil } catch let error as JWTError { return error } catch {
        Issue.record("unexpected non-JWTError \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

func date(_ seconds: Double) -> Date { Date(timeIntervalSince1970: seconds) }

/// A settable clock for injection.
final class TestClock: Sendable {
    private let value: Mutex<Double>
    init(_ seconds: Double) { value = Mutex(seconds) }
    var now: Date { Date(timeIntervalSince1970: value.withLock { $0 }) }
    func set(_ seconds: Double) { value.withLock { $0 = seconds } }
}


// MARK: - Independent tokens from PyJWT

/// Everything minted by Python for one algorithm. Private keys never leave the Python process.
struct PyAlgorithmFixture: Sendable {
    let alg: String
    let kid: String
    let publicPEM: String?      // SPKI PEM for asymmetric algorithms
    let secret: [UInt8]?        // HMAC secret
    let jwk: String             // public JWK JSON (with kid and alg)
    let jwkWithoutAlg: String   // same JWK without alg (tests inference rules)
    let token: String           // with kid header
    let tokenWithoutKid: String
    let expiredToken: String
}

struct PyFixtures: Sendable {
    static let issuedAt: Double = 1_700_000_000
    static let expiresAt: Double = issuedAt + 600
    static var now: Date { Date(timeIntervalSince1970: issuedAt + 10) }

    let byAlg: [String: PyAlgorithmFixture]
    let rsaPKCS1PEM: String       // "RSA PUBLIC KEY" of the RS256 key
    let rsaCertificatePEM: String // self-signed certificate of the RS256 key
    let jwks: String              // all keys, kid+alg
    let tokenWithHostileHeader: String // RS256 with jku/x5u/jwk pointing at an attacker key, signed by the attacker

    static let script = #"""
import sys, json, os, base64, datetime
try:
    import jwt
    from jwt.algorithms import RSAAlgorithm, ECAlgorithm, OKPAlgorithm, HMACAlgorithm
    from cryptography.hazmat.primitives.asymmetric import rsa, ec, ed25519
    from cryptography.hazmat.primitives import serialization, hashes
    from cryptography import x509
    from cryptography.x509.oid import NameOID
except Exception as e:
    print("IMPORT-FAILED: %s" % e, file=sys.stderr); sys.exit(3)

IAT = 1700000000
claims = {"sub": "user-42", "iss": "https://issuer.example", "aud": ["gateway", "other"],
          "iat": IAT, "nbf": IAT - 5, "exp": IAT + 600, "roles": ["admin", "ops"], "scope": "read write"}
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def spki(pub): return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

rsa_keys = {}
out = {"algs": {}}
for alg in ["HS256","HS384","HS512","RS256","RS384","RS512","PS256","PS384","PS512","ES256","ES384","EdDSA"]:
    kid = "kid-" + alg
    entry = {"alg": alg, "kid": kid}
    if alg.startswith("HS"):
        secret = os.urandom(64)
        priv = secret
        jwk = json.loads(HMACAlgorithm.to_jwk(secret))
        entry["secret"] = b64(secret)
    else:
        if alg[0] in "RP":
            priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            rsa_keys[alg] = priv
            jwk = json.loads(RSAAlgorithm.to_jwk(priv.public_key()))
        elif alg == "ES256":
            priv = ec.generate_private_key(ec.SECP256R1()); jwk = json.loads(ECAlgorithm.to_jwk(priv.public_key()))
        elif alg == "ES384":
            priv = ec.generate_private_key(ec.SECP384R1()); jwk = json.loads(ECAlgorithm.to_jwk(priv.public_key()))
        else:
            priv = ed25519.Ed25519PrivateKey.generate(); jwk = json.loads(OKPAlgorithm.to_jwk(priv.public_key()))
        entry["pem"] = spki(priv.public_key())
    jwk_no_alg = dict(jwk); jwk_no_alg["kid"] = kid; jwk_no_alg.pop("alg", None)
    jwk["kid"] = kid; jwk["alg"] = alg; jwk["use"] = "sig"
    entry["jwk"] = json.dumps(jwk); entry["jwk_no_alg"] = json.dumps(jwk_no_alg)
    entry["token"] = jwt.encode(claims, priv, algorithm=alg, headers={"kid": kid})
    entry["token_nokid"] = jwt.encode(claims, priv, algorithm=alg)
    expired = dict(claims); expired["exp"] = IAT + 5
    entry["expired"] = jwt.encode(expired, priv, algorithm=alg, headers={"kid": kid})
    out["algs"][alg] = entry

k = rsa_keys["RS256"]
out["rsa_pkcs1_pem"] = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.example")])
now = datetime.datetime(2023, 1, 1, tzinfo=datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
        .sign(k, hashes.SHA256()))
out["rsa_cert_pem"] = cert.public_bytes(serialization.Encoding.PEM).decode()
out["jwks"] = json.dumps({"keys": [json.loads(out["algs"][a]["jwk"]) for a in out["algs"]]})
attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ajwk = json.loads(RSAAlgorithm.to_jwk(attacker.public_key()))
out["hostile"] = jwt.encode(claims, attacker, algorithm="RS256",
    headers={"jku": "https://evil.example/jwks", "x5u": "https://evil.example/cert", "jwk": ajwk})
print(json.dumps(out))
"""#

    /// `nil` (with the reason printed) when python3, PyJWT or cryptography is unavailable.
    static let shared: PyFixtures? = load()

    private static func load() -> PyFixtures? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", script]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        do { try process.run() } catch {
            print("PyJWT fixtures skipped: cannot run python3 (\(error))")
            return nil
        }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errData = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0,
              let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let algs = root["algs"] as? [String: [String: String]] else {
            print("PyJWT fixtures skipped (pip install pyjwt cryptography): \(String(decoding: errData, as: UTF8.self))")
            return nil
        }
        var byAlg = [String: PyAlgorithmFixture]()
        for (alg, e) in algs {
            byAlg[alg] = PyAlgorithmFixture(
                alg: alg, kid: e["kid"]!, publicPEM: e["pem"], secret: e["secret"].map(B64.decode),
                jwk: e["jwk"]!, jwkWithoutAlg: e["jwk_no_alg"]!, token: e["token"]!,
                tokenWithoutKid: e["token_nokid"]!, expiredToken: e["expired"]!)
        }
        return PyFixtures(byAlg: byAlg, rsaPKCS1PEM: root["rsa_pkcs1_pem"] as! String,
                          rsaCertificatePEM: root["rsa_cert_pem"] as! String, jwks: root["jwks"] as! String,
                          tokenWithHostileHeader: root["hostile"] as! String)
    }

    /// A key pinned to `fixture.alg` built from PEM or secret (not JWKS).
    func key(_ alg: String, kid: String? = nil) throws -> VerificationKey {
        let fixture = byAlg[alg]!
        let algorithm = JWTAlgorithm(rawValue: alg)!
        if let secret = fixture.secret { return try VerificationKey.hmac(kid: kid, algorithm: algorithm, secret: secret) }
        return try VerificationKey.publicKey(kid: kid, algorithm: algorithm, pem: fixture.publicPEM!)
    }
}

let pyAvailable = PyFixtures.shared != nil
let pySkipMessage: Comment = "python3 with PyJWT + cryptography not importable (pip install pyjwt cryptography)"

struct MissingPyJWT: Error, CustomStringConvertible {
    var description: String { "CI=true but python3 with PyJWT + cryptography is not importable (scripts/install-deps.sh test)" }
}

extension Trait where Self == ConditionTrait {
    /// Runs the suite when PyJWT can mint its fixtures; skips it otherwise, except under `CI=true`
    /// (`.ci/run`), where skipped tests would let a broken CI image pass while testing less.
    static var needsPyJWT: Self {
        .enabled(pySkipMessage) {
            if pyAvailable { return true }
            if ["true", "1"].contains(ProcessInfo.processInfo.environment["CI"]?.lowercased() ?? "") { throw MissingPyJWT() }
            return false
        }
    }
}

/// Configuration matching the PyJWT claims.
func pyConfiguration(cacheSize: Int = 0) -> JWTVerifierConfiguration {
    JWTVerifierConfiguration(issuer: "https://issuer.example", audiences: ["gateway"], cacheSize: cacheSize)
}

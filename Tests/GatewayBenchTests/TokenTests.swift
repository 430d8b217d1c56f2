import Foundation
import JWTVerifier
import Testing
@testable import GatewayBench

@Suite struct TokenTests {
    let secret = "bench-secret-at-least-32-bytes-long!"

    @Test func mintedTokensPassTheGatewaysVerifier() throws {
        let now = 1_800_000_000
        let verifier = JWTVerifier(
            configuration: JWTVerifierConfiguration(issuer: "barberpro-auth", audiences: ["barberpro-api"]),
            keys: KeySet(keys: [try VerificationKey.hmac(algorithm: .hs256, secret: Array(self.secret.utf8))])
        )
        let shared = try BenchToken.mint(secret: self.secret, connection: nil, now: now)
        let perConnection = try BenchToken.mint(secret: self.secret, connection: 7, now: now)
        let at = Date(timeIntervalSince1970: Double(now + 10))
        #expect(try verifier.verify(shared, now: at).subject == "bench-user")
        let claims = try verifier.verify(perConnection, now: at)
        #expect(claims.subject == "bench-user-7")
        #expect(claims.expiresAt == Date(timeIntervalSince1970: Double(now + 3600)))
        #expect(throws: JWTError.self) { try verifier.verify(shared, now: Date(timeIntervalSince1970: Double(now + 7200))) }
    }

    @Test func aShortSecretIsRefused() {
        #expect(throws: (any Error).self) { try BenchToken.mint(secret: "short", connection: nil, now: 0) }
    }
}

import Testing
@testable import Gateway

@Suite struct TLSConfigurationTests {
    let certs = TestCertificates.shared

    func load(_ pairs: [TLSCertificatePair]) throws {
        _ = try TLSServerContext(settings: TLSServerSettings(certificates: pairs))
    }

    @Test func missingCertificateNamesFile() throws {
        let path = "\(self.certs.directory)/missing.crt"
        let error = try #require(throws: TLSConfigurationError.self) {
            try load([TLSCertificatePair(certificatePath: path, keyPath: self.certs.defaultPair.keyPath)])
        }
        #expect(error.kind == .unreadableCertificate)
        #expect(error.description == "\(path): cannot read certificate: No such file or directory")
    }

    @Test func garbageCertificateNamesFile() throws {
        let error = try #require(throws: TLSConfigurationError.self) {
            try load([TLSCertificatePair(certificatePath: self.certs.garbagePath, keyPath: self.certs.defaultPair.keyPath)])
        }
        #expect(error.kind == .invalidCertificate)
        #expect(error.description.hasPrefix("\(self.certs.garbagePath): "))
    }

    @Test func missingKeyNamesKeyFile() throws {
        let path = "\(self.certs.directory)/missing.key"
        let error = try #require(throws: TLSConfigurationError.self) {
            try load([TLSCertificatePair(certificatePath: self.certs.defaultPair.certificatePath, keyPath: path)])
        }
        #expect(error.kind == .unreadableKey)
        #expect(error.description.hasPrefix("\(path): cannot read private key"))
    }

    @Test func garbageKeyNamesKeyFile() throws {
        let error = try #require(throws: TLSConfigurationError.self) {
            try load([TLSCertificatePair(certificatePath: self.certs.defaultPair.certificatePath, keyPath: self.certs.garbagePath)])
        }
        #expect(error.kind == .invalidKey)
        #expect(error.description.hasPrefix("\(self.certs.garbagePath): "))
    }

    @Test func mismatchedKeyNamesBothFiles() throws {
        let pair = TLSCertificatePair(certificatePath: self.certs.defaultPair.certificatePath, keyPath: self.certs.strayKeyPath)
        let error = try #require(throws: TLSConfigurationError.self) { try load([pair]) }
        #expect(error.kind == .keyMismatch)
        #expect(error.description == "\(pair.keyPath): private key does not match certificate \(pair.certificatePath)")
    }

    @Test func errorInSecondPairIsReported() throws {
        let pair = TLSCertificatePair(certificatePath: self.certs.apiPair.certificatePath, keyPath: self.certs.defaultPair.keyPath)
        let error = try #require(throws: TLSConfigurationError.self) { try load([self.certs.defaultPair, pair]) }
        #expect(error.kind == .keyMismatch)
    }

    @Test func emptyCertificatesRejected() throws {
        let error = try #require(throws: TLSConfigurationError.self) { try load([]) }
        #expect(error.kind == .noCertificates)
    }

    @Test func invalidALPNNameRejected() throws {
        #expect(throws: TLSConfigurationError.self) {
            _ = try TLSServerContext(settings: TLSServerSettings(certificates: [self.certs.defaultPair], alpnProtocols: [""]))
        }
    }

    @Test func certificateIndexMatching() throws {
        let context = try TLSServerContext(settings: TLSServerSettings(certificates: [self.certs.defaultPair, self.certs.apiPair]))
        #expect(context.certificateIndex(forServerName: "api.example.com") == 1)
        #expect(context.certificateIndex(forServerName: "API.EXAMPLE.COM.") == 1)
        #expect(context.certificateIndex(forServerName: "www.example.org") == 1)
        #expect(context.certificateIndex(forServerName: "example.org") == nil)
        #expect(context.certificateIndex(forServerName: "a.b.example.org") == nil)
        #expect(context.certificateIndex(forServerName: "localhost") == 0)
        #expect(context.certificateIndex(forServerName: "") == nil)
    }
}

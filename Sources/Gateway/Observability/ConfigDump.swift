/// The running config as JSON for `GET /config`, by reflection over the typed config values, with
/// the YAML key names (`client_ip`, `redirect_to_https`), not the Swift property names, so what an
/// SRE reads matches gateway.yaml; values derived for the hot path are left out. Secrets never appear: `ConfigSecret` and the Redis endpoint print themselves redacted, and a
/// value whose mirror hides its children is written as its description.
enum ConfigDump {
    static func json(_ value: Any) -> String {
        var out = ""
        write(value, into: &out)
        return out
    }

    /// Values resolved for the hot path (CORS header values, indices into other sections), not
    /// keys of the file.
    static func derived(_ label: String) -> Bool { label.hasSuffix("HeaderValue") || label.hasSuffix("Index") || label.hasSuffix("Indices") }

    /// Where the YAML key is not the property name in snake case.
    private static let renamed = ["consecutive5xx": "consecutive_5xx", "defaultInterval": "default"]

    /// `redirectToHTTPS` → `redirect_to_https`, `clientIP` → `client_ip`, `exemptCIDRs` →
    /// `exempt_cidrs`: the YAML spelling of a Swift property name.
    static func yamlKey(_ label: String) -> String {
        if let key = Self.renamed[label] { return key }
        let characters = Array(label)
        var out = ""
        for (index, character) in characters.enumerated() {
            if character.isUppercase, index > 0 {
                let previous = characters[index - 1]
                let next: Character? = index + 1 < characters.count ? characters[index + 1] : nil
                // A plural `s` after an acronym (`CIDRs`) belongs to it.
                let pluralEnd = next == "s" && (index + 2 == characters.count || characters[index + 2].isUppercase)
                if previous.isLowercase || previous.isNumber || (previous.isUppercase && next?.isLowercase == true && !pluralEnd) {
                    out += "_"
                }
            }
            out += character.lowercased()
        }
        return out
    }

    private static func write(_ value: Any, into out: inout String) {
        if let secret = value as? ConfigSecret {
            out += "\"" + JSON.escaped(secret.description) + "\""
            return
        }
        switch value {
        case let string as String: out += "\"" + JSON.escaped(string) + "\""; return
        case let bool as Bool: out += bool ? "true" : "false"; return
        case let int as Int: out += String(int); return
        case let double as Double: out += String(double); return
        case let duration as Duration: out += "\"" + JSON.escaped("\(duration)") + "\""; return
        default: break
        }
        let mirror = Mirror(reflecting: value)
        switch mirror.displayStyle {
        case .optional:
            if let child = mirror.children.first { write(child.value, into: &out) } else { out += "null" }
        case .collection, .set:
            out += "["
            for (index, child) in mirror.children.enumerated() {
                if index > 0 { out += "," }
                write(child.value, into: &out)
            }
            out += "]"
        case .dictionary:
            out += "{"
            for (index, child) in mirror.children.enumerated() {
                let pair = Array(Mirror(reflecting: child.value).children)
                if index > 0 { out += "," }
                out += "\"" + JSON.escaped("\(pair.first?.value ?? "")") + "\":"
                if pair.count > 1 { write(pair[1].value, into: &out) } else { out += "null" }
            }
            out += "}"
        case .struct, .class:
            if let described = value as? CustomStringConvertible, mirror.children.isEmpty || value is RedisEndpoint || value is HostPort {
                out += "\"" + JSON.escaped(described.description) + "\""
                return
            }
            out += "{"
            var first = true
            for child in mirror.children {
                guard let label = child.label, !Self.derived(label) else { continue }
                if !first { out += "," }
                first = false
                out += "\"" + JSON.escaped(Self.yamlKey(label)) + "\":"
                write(child.value, into: &out)
            }
            out += "}"
        case .enum:
            if let described = value as? CustomStringConvertible {
                out += "\"" + JSON.escaped(described.description) + "\""
            } else if let raw = (value as? any RawRepresentable)?.rawValue {
                out += "\"" + JSON.escaped("\(raw)") + "\""
            } else {
                out += "\"" + JSON.escaped("\(value)") + "\""
            }
        default:
            out += "\"" + JSON.escaped("\(value)") + "\""
        }
    }
}

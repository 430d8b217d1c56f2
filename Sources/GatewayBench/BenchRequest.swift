/// One kind of request a run sends: the single request of a plain `--url` run, or one weighted
/// target of a scenario. Every connection prepares all of them once (the token may differ per
/// connection), and each scheduled request picks one by weight.
public struct BenchRequest: Sendable, Equatable {
    /// Names the target in the report (`targets[].name` in the JSON).
    public var name: String
    public var method: String
    /// Origin-form request target (`/api/bookings?delay_ms=5`).
    public var path: String
    public var headers: [BenchHeader]
    public var body: [UInt8]
    public var token: BenchTokenShape
    /// Relative share of the requests (any positive integer; they need not add up to 100).
    public var weight: Int
    /// Statuses that count as success for this target.
    public var expect: BenchStatusSet

    public init(
        name: String, method: String = "GET", path: String, headers: [BenchHeader] = [], body: [UInt8] = [],
        token: BenchTokenShape = .runDefault, weight: Int = 1, expect: BenchStatusSet = .success
    ) {
        self.name = name
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.token = token
        self.weight = weight
        self.expect = expect
    }

    /// Methods whose requests carry a body by definition: they always get a `content-length`,
    /// `0` when empty, which some servers require (RFC 9110 §8.6).
    var sendsContentLength: Bool { !self.body.isEmpty || ["POST", "PUT", "PATCH"].contains(self.method) }
}

/// A request header field; a struct rather than a tuple so requests compare with `==`.
public struct BenchHeader: Sendable, Equatable {
    public var name: String
    public var value: String

    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }

    /// `name: value` as given to `--header`.
    public init(parsing text: String) throws(BenchError) {
        guard let colon = text.firstIndex(of: ":"), colon != text.startIndex else {
            throw BenchError.usage("--header: expected 'name: value', got \"\(text)\"")
        }
        let name = String(text[..<colon]).trimmingSpaces
        guard name.utf8.allSatisfy(isTokenByte) else { throw BenchError.usage("--header: \"\(name)\" is not a valid field name") }
        let value = String(text[text.index(after: colon)...]).trimmingSpaces
        guard isSendableFieldValue(value) else {
            throw BenchError.usage("--header: the value of \"\(name)\" cannot contain CR, LF or NUL")
        }
        self.init(name, value)
    }
}

/// Paths and field values go on the wire as given (the request is encoded once, not escaped): a
/// path with a space, control character or DEL would split the request line (RFC 9112 §3.2: the
/// target is visible ASCII, percent-encoded otherwise); a value with CR, LF or NUL would split or
/// end the head (RFC 9110 §5.5). `--url`, `--header` and scenario files all refuse them.
func isSendablePath(_ path: String) -> Bool {
    !path.utf8.contains { $0 <= 0x20 || $0 == 0x7F }
}

func isSendableFieldValue(_ value: String) -> Bool {
    !value.utf8.contains { $0 == 13 || $0 == 10 || $0 == 0 }
}

/// RFC 9110 §5.6.2 tchar.
func isTokenByte(_ byte: UInt8) -> Bool {
    switch byte {
    case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
    default: "!#$%&'*+-.^_`|~".utf8.contains(byte)
    }
}

extension String {
    var trimmingSpaces: String {
        var view = Substring(self)
        while view.first == " " || view.first == "\t" { view = view.dropFirst() }
        while view.last == " " || view.last == "\t" { view = view.dropLast() }
        return String(view)
    }
}

/// Which `Authorization` a target sends.
public enum BenchTokenShape: Sendable, Equatable {
    /// Whatever the run was given (`--token`, `--jwt-secret`, or nothing).
    case runDefault
    /// No `Authorization` field, whatever the run was given.
    case none
    /// An HS256 token minted with the run's secret (`--jwt-secret` or the scenario's `jwt_secret_env`).
    case minted(BenchTokenClaims)
}

/// The claims of a minted token; `iss`/`aud` are the ones `barberpro-auth` issues.
public struct BenchTokenClaims: Sendable, Equatable {
    public enum Subject: Sendable, Equatable {
        /// `bench-user` on every connection.
        case shared
        /// `bench-user-N` on connection N, so per-user limits see as many users as connections.
        case perConnection
        case fixed(String)
    }

    public var subject: Subject
    public var role: String?
    public var kid: String?
    public var lifetimeSeconds: Int
    /// `exp` in the past, for load on the 401 path.
    public var expired: Bool

    public init(subject: Subject = .shared, role: String? = nil, kid: String? = nil, lifetimeSeconds: Int = 3600, expired: Bool = false) {
        self.subject = subject
        self.role = role
        self.kid = kid
        self.lifetimeSeconds = lifetimeSeconds
        self.expired = expired
    }
}

/// Statuses that count as expected: exact codes and whole classes (`2xx`).
public struct BenchStatusSet: Sendable, Equatable, CustomStringConvertible {
    public var codes: Set<Int>
    /// Leading digits of the classes: 2 for `2xx`.
    public var classes: Set<Int>

    public init(codes: Set<Int> = [], classes: Set<Int> = []) {
        self.codes = codes
        self.classes = classes
    }

    /// Any 2xx: what counts as success when nothing else is said.
    public static let success = BenchStatusSet(classes: [2])

    public func contains(_ status: Int) -> Bool {
        self.codes.contains(status) || self.classes.contains(status / 100)
    }

    /// `200,429` or `2xx,404`.
    public init(parsing text: String) throws(BenchError) {
        var set = BenchStatusSet()
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            try set.add(String(item).trimmingSpaces)
        }
        self = set
    }

    mutating func add(_ item: String) throws(BenchError) {
        if item.count == 3, item.hasSuffix("xx"), let digit = Int(item.prefix(1)), (1...5).contains(digit) {
            self.classes.insert(digit)
        } else if let code = Int(item), (100...599).contains(code) {
            self.codes.insert(code)
        } else {
            throw BenchError.usage("expected a status code (100-599) or a class like 2xx, got \"\(item)\"")
        }
    }

    public var description: String {
        (self.classes.sorted().map { "\($0)xx" } + self.codes.sorted().map(String.init)).joined(separator: ",")
    }
}

/// Smooth weighted round robin (as nginx balances upstreams): over any `sum(weights)` consecutive
/// picks each index comes up exactly `weight` times, spread out rather than in runs, so even a
/// short run has the mix it asked for.
struct WeightedPicker {
    private let weights: [Int]
    private let total: Int
    private var current: [Int]

    init(weights: [Int]) {
        precondition(!weights.isEmpty && weights.allSatisfy { $0 > 0 })
        self.weights = weights
        self.total = weights.reduce(0, +)
        self.current = Array(repeating: 0, count: weights.count)
    }

    mutating func next() -> Int {
        if self.weights.count == 1 { return 0 }
        var best = 0
        for index in self.weights.indices {
            self.current[index] += self.weights[index]
            if self.current[index] > self.current[best] { best = index }
        }
        self.current[best] -= self.total
        return best
    }
}

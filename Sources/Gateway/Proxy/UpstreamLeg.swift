import NIOCore

/// The upstream side of one request: the cluster's endpoints in the order they are tried, the
/// pooled connection it goes out on, and what the access log and the endpoint's health learn from
/// it (which endpoint, how long it took, its status, the failures it is blamed for).
///
/// A value inside its `RequestExchange`, not an object of its own (one allocation per request is
/// the exchange's). It decides nothing: the exchange's state machine says when each step runs, and
/// the exchange carries what comes back to the client. Every method is `mutating`, even where it
/// changes nothing: the exchange then calls it in place, where a non-mutating call on a class's
/// stored struct first copies the whole value (a retain and a release per reference in it; ~10%
/// more instructions per HTTP/2 request, measured).
struct UpstreamLeg {
    let head: UpstreamRequestHead
    let cluster: UpstreamCluster
    let pool: UpstreamConnectionPool
    private var candidates: [UpstreamEndpoint] = []
    /// Body parts received before the upstream connection was ready (bounded: reads pause), kept
    /// until the request is upstream so that a request none of which was sent can go again.
    private var heldBody: [ByteBuffer] = []
    /// The endpoint this request counts against (`outstanding`, for least-request balancing).
    private var outstandingEndpoint: UpstreamEndpoint?
    private var start: NIODeadline?
    /// From writing the request head upstream to its response head (nil until then).
    private(set) var seconds: Double?
    /// The endpoint that served (or was last tried for) this request.
    private(set) var endpointKey: String?
    /// The upstream's response status, once its head arrived.
    var status: Int?
    /// The connection a whole request was written to, waiting for the end of the tick's flush.
    var unflushed: UpstreamConnection?

    init(head: UpstreamRequestHead, cluster: UpstreamCluster, pool: UpstreamConnectionPool) {
        self.head = head
        self.cluster = cluster
        self.pool = pool
    }

    /// Counts the request against the cluster and lists the endpoints to try; returns how many.
    mutating func begin(now: NIODeadline) -> Int {
        self.cluster.requestStarted()
        self.candidates = self.cluster.candidates(now: now)
        return self.candidates.count
    }

    mutating func endpoint(at index: Int) -> UpstreamEndpoint { self.candidates[index] }

    mutating func takeIdle(_ endpoint: UpstreamEndpoint, probeTCPState: Bool) -> UpstreamConnection? {
        self.pool.takeIdle(endpoint, probeTCPState: probeTCPState)
    }

    mutating func open(_ endpoint: UpstreamEndpoint) -> EventLoopFuture<UpstreamConnection> {
        self.pool.open(endpoint, settings: self.cluster.settings)
    }

    /// Hands `connection` back to the pool (closed and forgotten unless `reusable`).
    mutating func release(_ connection: UpstreamConnection, reusable: Bool) {
        self.pool.release(connection, reusable: reusable, timeouts: self.cluster.timeouts)
    }

    mutating func takeRetry() -> Bool { self.cluster.takeRetry() }

    mutating func hold(_ body: ByteBuffer) { self.heldBody.append(body) }

    mutating func dropHeldBody() {
        if !self.heldBody.isEmpty { self.heldBody.removeAll() }
    }

    /// Writes the head and the held body parts to `connection`, then the end when `endRequest`,
    /// unflushed. From here the request counts against the connection's endpoint, and the
    /// upstream's time runs from the loop iteration's stamp (both ends of it from the same clock).
    mutating func write(to connection: UpstreamConnection, endRequest: Bool) {
        self.releaseOutstanding()
        self.outstandingEndpoint = connection.endpoint
        connection.endpoint.outstanding.add(1, ordering: .relaxed)
        self.start = connection.handler.tickSlot.now()
        self.endpointKey = connection.endpoint.key
        connection.writeHead(self.head, flush: false)
        for body in self.heldBody { connection.write(.body(.byteBuffer(body)), flush: false) }
        if endRequest { connection.write(.end(nil), flush: false) }
    }

    mutating func releaseOutstanding() {
        // Taken, not read and then cleared: one release instead of a retain and two releases.
        self.outstandingEndpoint.take()?.outstanding.subtract(1, ordering: .relaxed)
    }

    /// `response_timeout` counts from the moment the whole request is upstream (as Envoy's route
    /// timeout does), so a long upload is not cut off by it.
    mutating func armResponseTimer(_ connection: UpstreamConnection) {
        connection.expectResponse(self.cluster.timeouts)
    }

    /// Until the loop iteration that read the head began: the gateway's own work in that iteration is not the upstream's.
    mutating func responseHeadArrived(on connection: UpstreamConnection) {
        guard let start = self.start else { return }
        self.seconds = Double(max(0, (connection.handler.tickSlot.now() - start).nanoseconds)) / 1e9
    }

    mutating func record5xx(_ endpoint: UpstreamEndpoint) {
        let settings = self.cluster.settings
        endpoint.record5xx(threshold: settings.consecutive5xxToEject, base: settings.baseEjectionTime, now: .now())
    }

    /// The endpoint failed this request: it counts towards ejecting it, and its error counter says how.
    mutating func blame(_ endpoint: UpstreamEndpoint, for error: GatewayError, requestSent: Bool) {
        self.record5xx(endpoint)
        endpoint.stats.error(error == .upstreamUnavailable ? (requestSent ? .reset : .connect) : .protocol)
    }
}

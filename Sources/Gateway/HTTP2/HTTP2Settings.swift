import NIOCore

/// Per-listener HTTP/2 limits with safe defaults (RFC 9113 §6.5.2; CVE-2023-44487 rapid reset;
/// CVE-2024-27316-style CONTINUATION floods).
struct HTTP2Settings: Sendable {
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    var maxConcurrentStreams = 128
    /// SETTINGS_INITIAL_WINDOW_SIZE: how much request body a stream may send before the upstream
    /// has taken it (window updates follow what the upstream consumed).
    var initialWindowSize = 256 * 1024
    /// SETTINGS_MAX_HEADER_LIST_SIZE, also enforced while decoding (431).
    var maxHeaderListSize = 16 * 1024
    /// RST_STREAM token bucket: a rapid-reset burst above this tears the connection down.
    var resetBurst: UInt64 = 200
    var resetRatePerSecond: UInt64 = 50
    /// CONTINUATION frames allowed after one HEADERS frame.
    var maxContinuations = 8
    /// Queued SETTINGS/PING ACKs before the peer is considered flooding (nghttp2: ERR_FLOODED).
    var maxOutboundAck = 1000
    /// SETTINGS entries accepted in one frame.
    var maxSettingsEntries = 32
    /// Zero-length DATA frames without END_STREAM tolerated in a row (they cost work, carry
    /// nothing); see `EmptyDataFrameGuard`.
    var maxEmptyFrames = 100
    /// Response bytes buffered per stream before upstream reads pause (slow reader backpressure).
    var streamBufferHighWater = 256 * 1024
    var streamBufferLowWater = 64 * 1024
    /// RFC 8441 `SETTINGS_ENABLE_CONNECT_PROTOCOL`: advertised when some route has `websocket: true`.
    var enableConnectProtocol = false
}

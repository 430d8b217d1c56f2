/// Counts DATA frames that carry nothing and do not end their stream: a flood of them is cheap for
/// a client and costs the gateway a callback and a wake-up each. As swift-nio-http2's
/// `DOSHeuristics` does, the count is of such frames in a row: a HEADERS frame or an END_STREAM
/// (work done) starts it over, so a long-lived connection whose client sometimes sends an empty
/// DATA frame is not torn down after its hundredth, while a flood still is.
struct EmptyDataFrameGuard {
    /// Empty DATA frames tolerated in a row.
    let limit: Int
    private(set) var inARow = 0

    init(limit: Int) {
        self.limit = limit
    }

    enum FrameKind {
        case data(length: Int, endStream: Bool)
        case headers
        case other
    }

    /// Records a frame; false once the client has sent more than `limit` empty DATA frames in a row.
    mutating func record(_ frame: FrameKind) -> Bool {
        switch frame {
        case .data(let length, let endStream):
            if endStream {
                self.inARow = 0
            } else if length == 0 {
                self.inARow += 1
            }
        case .headers:
            self.inARow = 0
        case .other:
            break
        }
        return self.inARow <= self.limit
    }
}

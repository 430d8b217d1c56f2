"""HTTP/2 through nghttp2: real clients (curl, nghttp, h2load, httpx) and a raw-frame suite."""
import socket
import ssl
import struct
import subprocess
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import hpack.huffman
import hpack.huffman_constants
import httpx
import pytest

from conftest import raw_request, status_of

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# RFC 9113 §7 error codes and §6 frame types.
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x2, 0xB
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x9


def tls_socket(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
    return s


class RawH2:
    """A deliberately permissive HTTP/2 client: it sends what we tell it, valid or not."""

    def __init__(self, port):
        self.sock = tls_socket(port)
        cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                        normalize_outbound_headers=False, validate_inbound_headers=False,
                                        header_encoding=None)
        self.conn = h2.connection.H2Connection(config=cfg)
        self.conn.initiate_connection()
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def events(self, until, timeout=5.0):
        """Reads until `until(events)` is true or the connection closes; returns all events."""
        seen = []
        deadline = time.time() + timeout
        self.sock.settimeout(0.5)
        while time.time() < deadline:
            if until(seen):
                break
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, ssl.SSLError, OSError):
                seen.append("closed")
                break
            if not data:
                seen.append("closed")
                break
            try:
                events = self.conn.receive_data(data)
            except Exception as e:  # a protocol violation by the server would land here
                seen.append(e)
                break
            seen.extend(events)
            # Give the flow-control window back, or the connection's 64 KiB stall every later stream.
            for e in events:
                if isinstance(e, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            self.flush()
        return seen

    def request(self, path, method="GET", headers=(), end_stream=True, authority="localhost"):
        sid = self.conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)] + list(headers)
        self.conn.send_headers(sid, hdrs, end_stream=end_stream)
        self.flush()
        return sid

    def close(self):
        self.sock.close()


def stream_outcome(events, sid):
    """The stream's status code, ("reset", code), ("goaway", code) or "closed"; None if nothing yet."""
    for e in events:
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
            return int(dict(e.headers)[b":status"])
        if isinstance(e, h2.events.StreamReset) and e.stream_id == sid:
            return ("reset", e.error_code)
        if isinstance(e, h2.events.ConnectionTerminated):
            return ("goaway", e.error_code)
        if e == "closed":
            return "closed"
    return None


def done(sid):
    return lambda evs: stream_outcome(evs, sid) is not None


def test_curl_http2_get_and_post(gateway):
    out = subprocess.run(["curl", "-sk", "--http2", "-i", gateway.url("/api/bookings")], capture_output=True, check=True).stdout
    assert out.startswith(b"HTTP/2 200")
    out = subprocess.run(["curl", "-sk", "--http2", "-X", "POST", "-H", "content-type: text/plain", "--data-binary", "ñandú",
                          gateway.url("/api/bookings")], capture_output=True, check=True).stdout
    assert out == "ñandú".encode()


def test_per_response_fields_are_never_indexed_but_their_names_are_and_repeated_fields_are(gateway):
    # The request id changes on every response: indexed, each response would insert one entry and
    # evict another in both sides' HPACK tables. It goes out never indexed, except on the first
    # response (and once every 10 s after), which puts its name in the table: the others refer to the
    # name by index instead of sending it again. The fields that repeat (HSTS, content type, the
    # upstream's server) are indexed once and then cost a byte each.
    raw = RawH2(gateway.ports["public"])
    blocks = []
    decode = raw.conn.decoder.decode

    def recording(data, *args, **kwargs):
        blocks.append(bytes(data))
        return decode(data, *args, **kwargs)
    raw.conn.decoder.decode = recording
    name_as_sent = hpack.huffman.HuffmanEncoder(hpack.huffman_constants.REQUEST_CODES,
                                                hpack.huffman_constants.REQUEST_CODES_LENGTH).encode(b"x-request-id")
    try:
        ids, table_sizes = set(), []
        for n in range(4):
            sid = raw.request("/api/bookings")
            events = raw.events(done(sid))
            assert stream_outcome(events, sid) == 200
            headers = next(e.headers for e in events if isinstance(e, h2.events.ResponseReceived))
            fields = dict(headers)
            ids.add(fields[b"x-request-id"])
            assert b"strict-transport-security" in fields and b"content-type" in fields
            request_id = next(h for h in headers if h[0] == b"x-request-id")
            entries = raw.conn.decoder.header_table.dynamic_entries
            assert sum(1 for name, _ in entries if name == b"x-request-id") == 1
            if n == 0:
                assert not isinstance(request_id, hpack.NeverIndexedHeaderTuple)
                assert name_as_sent in blocks[-1]
            else:
                assert isinstance(request_id, hpack.NeverIndexedHeaderTuple)
                assert name_as_sent not in blocks[-1], "the name was sent again, not referred to by index"
            # `date` is indexed too, and a new second adds its new value: not counted.
            table_sizes.append(sum(1 for name, _ in entries if name != b"date"))
        assert len(ids) == 4
        # Indexed by the first response, referenced by the next ones: the table stops growing.
        assert table_sizes[0] > 0 and table_sizes[1:] == [table_sizes[0]] * 3
    finally:
        raw.close()


def test_heads_queued_behind_a_client_that_stops_reading_keep_their_own_fields(gateway):
    """A slow reader: the client opens its windows wide, starts a download and stops reading, so
    the gateway's socket fills; the heads of the 40 requests it sends meanwhile wait inside
    nghttp2 (their fields kept in per-connection memory until sent, or copied once that is full).
    When the client reads again, every response carries its own request's id and nothing else's."""
    raw = RawH2(gateway.ports["public"])
    try:
        raw.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        raw.conn.increment_flow_control_window(2**31 - 1 - 65535)
        raw.flush()
        download = raw.request(f"/api/download?bytes={32 * 1024 * 1024}")
        time.sleep(1.0)  # nothing read: the download fills the sockets' buffers
        expected = {}
        for i in range(40):
            request_id = f"slow-reader-{i:02d}-" + "abcdefghij" * 9
            expected[raw.request("/api/bookings", headers=[("x-request-id", request_id)])] = request_id
        time.sleep(0.5)  # answered by the upstream, queued behind the download
        answered = lambda evs: set(expected) <= {e.stream_id for e in evs if isinstance(e, h2.events.ResponseReceived)}
        events = raw.events(answered, timeout=30)
        assert answered(events), [e for e in events if not isinstance(e, h2.events.DataReceived)][-5:]
        for e in events:
            if isinstance(e, h2.events.ResponseReceived) and e.stream_id in expected:
                fields = dict(e.headers)
                assert fields[b":status"] == b"200"
                assert fields[b"x-request-id"] == expected[e.stream_id].encode(), e.stream_id
        raw.conn.reset_stream(download)
        raw.flush()
    finally:
        raw.close()


def test_rfc7540_priorities_are_declined_and_requests_carrying_them_still_answered(gateway):
    """The gateway tells clients it does not use RFC 7540's priority tree (RFC 9218 §2.1,
    SETTINGS_NO_RFC7540_PRIORITIES = 1; nghttp2 then schedules without the tree, the cheaper path).
    A client that still sends priorities, in HEADERS or as PRIORITY frames for open and idle
    streams, gets every answer."""
    raw = RawH2(gateway.ports["public"])
    try:
        settings = raw.events(lambda evs: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in evs))
        changed = next(e.changed_settings for e in settings if isinstance(e, h2.events.RemoteSettingsChanged))
        assert 0x9 in changed and changed[0x9].new_value == 1, changed
        first = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(first, [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
                                      (":path", "/api/bookings")], end_stream=True,
                              priority_weight=200, priority_depends_on=0, priority_exclusive=True)
        second = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(second, [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
                                       (":path", "/api/bookings")], end_stream=True,
                              priority_weight=16, priority_depends_on=first, priority_exclusive=False)
        raw.conn.prioritize(first, weight=1, depends_on=second)
        raw.conn.prioritize(second + 20, weight=32, depends_on=first)  # an idle stream
        raw.flush()
        answered = {}

        def both(events):
            for e in events:
                if isinstance(e, h2.events.ResponseReceived):
                    answered[e.stream_id] = int(dict(e.headers)[b":status"])
                if isinstance(e, h2.events.ConnectionTerminated) or e == "closed":
                    return True
            return len(answered) == 2

        raw.events(both)
        assert answered == {first: 200, second: 200}, answered
    finally:
        raw.close()


def test_h1_and_h2_give_identical_bodies_and_statuses(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, extra_routes="  - name: admin-only\n    match: { path_prefix: /admin, methods: [GET] }\n    upstream: booking\n")
    cases = [("GET", "/api/bookings", {}, None), ("GET", "/nothing", {}, None), ("PUT", "/admin/x", {}, None),
             ("POST", "/api/upload", {}, b"x" * (3 * 1024 * 1024)), ("GET", "/api/bookings", {"x-big": "a" * 10000}, None),
             ("GET", "/api/status?code=418", {}, None), ("GET", "/api/bookings?delay_ms=3000", {}, None)]
    with httpx.Client(verify=False, timeout=10) as h1, httpx.Client(verify=False, timeout=10, http2=True) as h2c:
        for method, path, headers, body in cases:
            a = h1.request(method, gw.url(path), headers=headers, content=body)
            b = h2c.request(method, gw.url(path), headers=headers, content=body)
            assert b.http_version == "HTTP/2"
            assert a.status_code == b.status_code, path
            if a.headers.get("content-type") == "application/json" and b'"request_id"' in a.content:
                strip = lambda r: r.json()["error"]["code"]
                assert strip(a) == strip(b)
            else:
                assert a.content == b.content, path


def test_many_concurrent_streams_to_different_upstreams(gateway_factory, upstream):
    from conftest import Upstream
    other = Upstream()
    try:
        gw = gateway_factory(upstream.port, upstream_extra=f"  other:\n    endpoints: [127.0.0.1:{other.port}]\n",
                             extra_routes="  - name: other\n    match: { path_prefix: /other/ }\n    upstream: other\n")
        # /other/... reaches the second upstream (which answers 404 for unknown paths, from itself).
        out = subprocess.run(["h2load", "-n", "2000", "-c", "2", "-m", "50", gw.url("/api/bookings")],
                             capture_output=True, text=True, timeout=60).stdout
        assert "2000 succeeded" in out and "2000 2xx" in out, out
        before_other = other.stats()["requests"]
        out = subprocess.run(["nghttp", "-n", "-s", "-m", "20", gw.url("/api/barbers"), gw.url("/other/x")],
                             capture_output=True, text=True, timeout=60).stdout
        assert other.stats()["requests"] - before_other == 20
    finally:
        other.stop()


def test_large_bodies_both_ways_and_slow_reader(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, max_body="512MiB")
    chunk = b"z" * 262144
    with httpx.Client(verify=False, timeout=60, http2=True) as c:
        r = c.post(gw.url("/api/upload"), content=(chunk for _ in range(256)))  # 64 MiB, no length: chunked upstream
        assert r.http_version == "HTTP/2" and r.json()["bytes"] == 64 * 1024 * 1024
        baseline = gw.rss_kib()
        peak = baseline
        received = 0
        size = 256 * 1024 * 1024
        with c.stream("GET", gw.url(f"/api/download?bytes={size}")) as resp:
            start = time.time()
            for part in resp.iter_bytes(65536):
                received += len(part)
                if time.time() - start < 2:
                    time.sleep(0.002)
                    peak = max(peak, gw.rss_kib())
        assert received == size
        assert (peak - baseline) / 1024 < 64, f"RSS grew {(peak - baseline) / 1024:.0f} MiB"


def test_reset_mid_download_and_mid_upload_leaks_no_upstream_connection(gateway, upstream):
    with httpx.Client(verify=False, timeout=10, http2=True) as c:
        c.get(gateway.url("/api/bookings"))
    time.sleep(0.2)
    before = upstream.stats()["open_connections"]
    raw = RawH2(gateway.ports["public"])
    for _ in range(5):
        sid = raw.request(f"/api/download?bytes={64 * 1024 * 1024}")
        started = lambda evs: any(isinstance(e, h2.events.DataReceived) and e.stream_id == sid for e in evs)
        # Reset mid-download, not before the download started (which would leak nothing to find).
        assert started(raw.events(started, timeout=3)), sid
        raw.conn.reset_stream(sid)
        raw.flush()
    for _ in range(5):
        sid = raw.request("/api/upload", method="POST", end_stream=False)
        raw.conn.send_data(sid, b"u" * 16384)
        raw.flush()
        time.sleep(0.05)
        raw.conn.reset_stream(sid)
        raw.flush()
    time.sleep(1)
    after = upstream.stats()["open_connections"]
    raw.close()
    assert after <= before + 1, (before, after)  # at most one pooled connection more, never ten


def test_each_header_block_reaches_its_own_request(gateway, upstream):
    """Header blocks of many streams in one write, with an upload's trailers and a reset stream
    between them: the codec hands a block's fields to the stream being received (no lookup per
    field), so each forwarded request must carry its own fields and no other stream's."""
    import json
    raw = RawH2(gateway.ports["public"])
    upload = raw.request("/api/echo-headers", method="POST", headers=[("x-which", "upload")], end_stream=False)
    raw.conn.send_data(upload, b"abc")
    expected = {upload: "upload"}
    for i in range(8):
        sid = raw.conn.get_next_available_stream_id()
        raw.conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"), (":authority", "localhost"),
                                    (":path", "/api/echo-headers"), ("x-which", f"s{i}"),
                                    ("cookie", f"a={i}"), ("cookie", f"b={i}")], end_stream=True)
        expected[sid] = f"s{i}"
        if i == 2:
            raw.conn.send_headers(upload, [("x-trailer", "t")], end_stream=True)  # trailers between blocks
        if i == 4:
            doomed = raw.conn.get_next_available_stream_id()
            raw.conn.send_headers(doomed, [(":method", "POST"), (":scheme", "https"), (":authority", "localhost"),
                                           (":path", "/api/echo-headers"), ("x-which", "doomed")], end_stream=False)
            raw.conn.reset_stream(doomed)
    raw.flush()  # one write: the blocks arrive in one read
    bodies = {sid: b"" for sid in expected}
    ended = set()

    def all_ended(events):
        for e in events:
            if isinstance(e, h2.events.DataReceived) and e.stream_id in bodies:
                bodies[e.stream_id] += e.data
            if isinstance(e, h2.events.StreamEnded):
                ended.add(e.stream_id)
        events.clear()
        return ended >= set(expected)

    raw.events(all_ended, timeout=10)
    raw.close()
    assert ended >= set(expected), (sorted(ended), sorted(expected))
    for sid, which in expected.items():
        fields = json.loads(bodies[sid])["headers"]
        values = [v for n, v in fields if n.lower() == "x-which"]
        assert values == [which], (sid, fields)
        if which != "upload":
            i = which[1:]
            assert [v for n, v in fields if n.lower() == "cookie"] == [f"a={i}; b={i}"], (sid, fields)
        assert not any(n.lower() == "x-trailer" for n, _ in fields), (sid, fields)


def test_a_reused_stream_object_carries_nothing_of_its_last_request(gateway, upstream):
    """Streams one after another on one connection: the gateway reuses a closed stream's object
    for the next stream, so every request must reach the upstream with only its own fields (no
    earlier cookie, header, method or body framing) and get its own kind of answer."""
    import json
    raw = RawH2(gateway.ports["public"])

    def exchange(path, method="GET", headers=(), body=None):
        sid = raw.request(path, method=method, headers=headers, end_stream=body is None)
        if body is not None:
            raw.conn.send_data(sid, body, end_stream=True)
            raw.flush()
        status, data, ended = None, b"", False

        def finished(events):
            nonlocal status, data, ended
            for e in events:
                if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
                    status = int(dict(e.headers)[b":status"])
                if isinstance(e, h2.events.DataReceived) and e.stream_id == sid:
                    data += e.data
                if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)) and e.stream_id == sid:
                    ended = True
            events.clear()
            return ended

        raw.events(finished, timeout=5)
        assert ended, (path, method)
        return status, data

    def fields(data):
        return [(n.lower(), v) for n, v in json.loads(data)["headers"]]

    status, data = exchange("/api/echo-headers", headers=[("x-which", "first"), ("cookie", "a=1"), ("cookie", "b=2")])
    assert status == 200 and ("cookie", "a=1; b=2") in fields(data) and ("x-which", "first") in fields(data)
    for round in range(3):
        status, data = exchange("/api/echo-headers", headers=[("x-which", f"plain{round}")])
        got = fields(data)
        assert status == 200 and [v for n, v in got if n == "x-which"] == [f"plain{round}"], got
        assert not any(n == "cookie" for n, _ in got), got
        # HEAD then GET: the second is not answered as a HEAD.
        status, data = exchange("/api/echo-headers", method="HEAD")
        assert status == 200 and data == b""
        status, data = exchange("/api/echo-headers")
        assert status == 200 and json.loads(data)["method"] == "GET", data
        # Refused requests (too many fields, no route), then one that must be served.
        status, _ = exchange("/api/echo-headers", headers=[(f"x-{i}", "v") for i in range(2000)])
        assert status == 431, status
        status, _ = exchange("/nowhere")
        assert status == 404, status
        status, data = exchange("/api/echo-headers", method="POST", headers=[("x-which", "upload")], body=b"abcdef")
        assert status == 200 and json.loads(data)["body_bytes"] == 6, data
        status, data = exchange("/api/echo-headers")
        got = fields(data)
        assert status == 200 and not any(n in ("content-length", "transfer-encoding", "x-which") for n, _ in got), got
    raw.close()


# How the gateway may refuse a request it must not forward (RFC 9113 §8.1.1): a 400, a stream
# error, or a connection error; all of type PROTOCOL_ERROR. A NO_ERROR GOAWAY (the idle timeout)
# is not a refusal.
REFUSED = (400, ("reset", PROTOCOL_ERROR), ("goaway", PROTOCOL_ERROR))


@pytest.mark.parametrize("name,headers,end_stream", [
    ("uppercase_name", [("X-Upper", "a")], True),
    ("cr_in_value", [("x-a", "a\rb")], True),
    ("lf_in_value", [("x-a", "a\nb")], True),
    ("nul_in_value", [("x-a", "a\x00b")], True),
    # Deep in long values: nghttp2 refuses these before the gateway's own field-value check.
    ("del_deep_in_long_value", [("x-a", "a" * 13 + "\x7f" + "b" * 20)], True),
    ("ctl_deep_in_long_value", [("x-a", "a" * 21 + "\x01" + "b" * 10)], True),
    ("connection_header", [("connection", "keep-alive")], True),
    ("transfer_encoding", [("transfer-encoding", "chunked")], True),
    ("te_not_trailers", [("te", "gzip")], True),
    ("cl_with_end_stream", [("content-length", "5")], True),
])
def test_malformed_stream_is_refused_and_not_forwarded(name, headers, end_stream, gateway, upstream):
    before = upstream.stats()["requests"]
    raw = RawH2(gateway.ports["public"])
    sid = raw.request("/api/echo-headers", method="POST", headers=headers, end_stream=end_stream)
    outcome = stream_outcome(raw.events(done(sid)), sid)
    raw.close()
    assert outcome in REFUSED, outcome
    assert upstream.stats()["requests"] == before, f"{name} reached the upstream"


@pytest.mark.parametrize("path", ["api/relative", "", "/api/../admin", "/api/a\rb"])
def test_bad_path_never_forwarded(path, gateway, upstream):
    before = upstream.stats()["requests"]
    raw = RawH2(gateway.ports["public"])
    sid = raw.request(path)
    outcome = stream_outcome(raw.events(done(sid)), sid)
    raw.close()
    assert outcome in REFUSED, outcome
    assert upstream.stats()["requests"] == before


def test_content_length_mismatch_with_data(gateway, upstream):
    before = upstream.stats()["requests"]
    raw = RawH2(gateway.ports["public"])
    sid = raw.request("/api/upload", method="POST", headers=[("content-length", "5")], end_stream=False)
    raw.conn.send_data(sid, b"0123456789", end_stream=True)
    raw.flush()
    outcome = stream_outcome(raw.events(done(sid)), sid)
    raw.close()
    # RFC 9113 §8.1.1: a body longer than its content-length makes the request malformed.
    assert outcome in REFUSED, outcome


def test_many_tiny_headers_bounded(gateway):
    raw = RawH2(gateway.ports["public"])
    sid = raw.request("/api/bookings", headers=[(f"x-{i}", "v") for i in range(2000)])
    outcome = stream_outcome(raw.events(done(sid)), sid)
    raw.close()
    assert outcome == 431, outcome


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def header_block(method, path):
    return hpack.Encoder().encode([(":method", method), (":scheme", "https"), (":path", path),
                                   (":authority", "localhost")])


def raw_tls(port):
    s = tls_socket(port)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))  # preface + empty SETTINGS
    return s


def send_flood(s, data):
    """Sends `data` in one write; the gateway may hang up part way, which is the point."""
    try:
        s.sendall(data)
    except OSError:
        pass


def parse_frames(data):
    """(type, flags, stream id, payload) of each whole frame in a raw server byte stream."""
    frames, i = [], 0
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        if i + 9 + length > len(data):
            break
        sid = int.from_bytes(data[i + 5:i + 9], "big") & 0x7FFFFFFF
        frames.append((data[i + 3], data[i + 4], sid, data[i + 9:i + 9 + length]))
        i += 9 + length
    return frames


def read_frames(s, seconds, until=lambda frames: False):
    """The server's frames for at most `seconds` (or until `until(frames)`), and whether it closed
    the connection by then."""
    deadline = time.monotonic() + seconds
    s.settimeout(0.1)
    data, closed = b"", False
    while time.monotonic() < deadline and not until(parse_frames(data)):
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, ssl.SSLError, OSError):
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    return parse_frames(data), closed


def goaway_codes(frames):
    return [int.from_bytes(payload[4:8], "big") for ftype, _, _, payload in frames if ftype == GOAWAY]


def assert_cut_off(s, codes, within=2.0):
    """The connection ends with a GOAWAY whose error code is one of `codes`, within `within` seconds
    (the idle timeout's NO_ERROR GOAWAY comes after 5 s and does not count)."""
    frames, closed = read_frames(s, within)
    goaways = goaway_codes(frames)
    s.close()
    assert goaways, f"no GOAWAY within {within}s; frame types {[f[0] for f in frames]}, closed={closed}"
    assert goaways[0] in codes, f"GOAWAY error code {goaways[0]:#x}, expected one of {[hex(c) for c in codes]}"
    assert closed, "GOAWAY sent but the connection was kept open"


def test_bad_preface_gets_closed(gateway):
    s = tls_socket(gateway.ports["public"])
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"x" * 20)
    assert_cut_off(s, [PROTOCOL_ERROR])


def test_continuation_flood_is_cut_off(gateway):
    s = raw_tls(gateway.ports["public"])
    # HEADERS without END_HEADERS, then endless CONTINUATION frames (the limit is 8).
    block = header_block("GET", "/api/bookings")
    send_flood(s, frame(HEADERS, 0, 1, block[:2]) + frame(CONTINUATION, 0, 1, b"\x40\x01a\x01b") * 200)
    assert_cut_off(s, [PROTOCOL_ERROR, ENHANCE_YOUR_CALM])


def test_a_priority_flood_costs_no_answer(gateway):
    """PRIORITY frames are accepted and not acted on (the gateway declines RFC 7540 priorities):
    20,000 of them for idle streams, between two requests in one write, build no state and hold
    up nothing: both requests are answered 200 and the connection is not torn down."""
    PRIORITY = 0x2
    s = raw_tls(gateway.ports["public"])
    flood = b"".join(frame(PRIORITY, 0, sid, struct.pack(">IB", 1, 15)) for sid in range(3, 40003, 2))
    last = 40003
    send_flood(s, frame(HEADERS, 0x5, 1, header_block("GET", "/api/bookings")) + flood
               + frame(HEADERS, 0x5, last, header_block("GET", "/api/bookings")))
    answered = lambda frames: {1, last} <= {sid for ftype, _, sid, _ in frames if ftype == HEADERS}
    frames, closed = read_frames(s, 10, until=answered)
    s.close()
    assert answered(frames), f"frame types {[f[0] for f in frames]}, closed={closed}"
    assert not goaway_codes(frames) and not closed
    decoder = hpack.Decoder()
    statuses = [dict(decoder.decode(payload))[":status"] for ftype, _, _, payload in frames if ftype == HEADERS]
    assert statuses == ["200", "200"], statuses


RAPID_RESET_LISTENER = """\
  - name: guarded
    address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert: {cert}, key: {key} }}
    http2: {{ reset_burst: 20, reset_rate: 1 }}
"""


@pytest.fixture
def guarded(gateway_factory, upstream, certs):
    """A gateway whose `guarded` listener allows a burst of 20 resets, then 1 per second."""
    cert, key = certs["default"]
    return gateway_factory(upstream.port, listeners_extra=RAPID_RESET_LISTENER.format(cert=cert, key=key))


def rapid_resets(count, first_sid=1):
    block = header_block("GET", "/api/bookings")
    return b"".join(frame(HEADERS, 0x05, sid, block) + frame(RST_STREAM, 0, sid, struct.pack(">I", 0x8))  # CANCEL
                    for sid in range(first_sid, first_sid + 2 * count, 2))


def test_rapid_reset_is_cut_off(guarded):
    s = raw_tls(guarded.ports["guarded"])
    send_flood(s, rapid_resets(100))
    # nghttp2's CVE-2023-44487 limit answers INTERNAL_ERROR; ENHANCE_YOUR_CALM would do as well.
    assert_cut_off(s, [INTERNAL_ERROR, ENHANCE_YOUR_CALM])


def test_reset_limit_is_per_listener(guarded):
    # The same 100 resets stay within the public listener's default burst of 200: no GOAWAY, and
    # the connection still serves a request.
    s = raw_tls(guarded.ports["public"])
    s.sendall(rapid_resets(100) + frame(HEADERS, 0x05, 201, header_block("GET", "/api/bookings")))
    frames, closed = read_frames(s, 10, until=lambda fs: any(f[0] == DATA and f[1] & 0x1 and f[2] == 201 for f in fs))
    s.close()
    assert goaway_codes(frames) == [] and not closed, (goaway_codes(frames), closed)
    decoder = hpack.Decoder()  # one HPACK context per connection: decode every header block in order
    heads = {sid: dict(decoder.decode(payload)) for ftype, _, sid, payload in frames if ftype == HEADERS}
    assert heads.get(201, {}).get(":status") == "200", heads.get(201)


# Flood sizes: each is far above its built-in limit (1000 queued SETTINGS/PING ACKs, 100 empty
# DATA frames), sent in one write so that one read hands the gateway more than the limit.
FLOODS = {
    "settings": lambda: frame(SETTINGS, 0, 0) * 20000,
    "ping": lambda: frame(PING, 0, 0, b"12345678") * 20000,
    # A POST whose body is proxied to the upstream, then empty DATA frames without END_STREAM.
    "empty_data": lambda: frame(HEADERS, 0x04, 1, header_block("POST", "/api/upload")) + frame(DATA, 0, 1) * 2000,
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_control_frame_floods_are_cut_off(flood, gateway):
    s = raw_tls(gateway.ports["public"])
    send_flood(s, FLOODS[flood]())
    assert_cut_off(s, [PROTOCOL_ERROR, ENHANCE_YOUR_CALM])


def test_gateway_survives_abuse(guarded):
    test_rapid_reset_is_cut_off(guarded)
    test_continuation_flood_is_cut_off(guarded)
    for flood in FLOODS:
        test_control_frame_floods_are_cut_off(flood, guarded)
    with httpx.Client(verify=False, timeout=5, http2=True) as c:
        assert c.get(guarded.url("/api/bookings")).status_code == 200


def test_h2c_prior_knowledge_on_plain_listener(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, listeners_extra="  - name: cleartext\n    address: 127.0.0.1:0\n    protocols: [h2c, http/1.1]\n")
    port = gw.ports.get("cleartext")
    assert port, gw.ports
    out = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-i", f"http://127.0.0.1:{port}/api/bookings"],
                         capture_output=True, check=True).stdout
    assert out.startswith(b"HTTP/2 200")
    assert status_of(raw_request(port, b"GET /api/bookings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")) == 200


def test_goaway_on_sigterm_lets_streams_finish(gateway_factory, upstream):
    gw = gateway_factory(upstream.port)
    proc = subprocess.Popen(["curl", "-sk", "--http2", "-o", "-", "-w", "\n%{http_code} %{http_version}",
                             gw.url("/api/bookings?delay_ms=1500")], stdout=subprocess.PIPE)
    time.sleep(0.5)
    gw.proc.send_signal(15)
    out = proc.communicate(timeout=10)[0]
    assert out.endswith(b"200 2"), out[-200:]
    assert b"bk_1" in out
    assert gw.proc.wait(timeout=10) == 0

"""OTLP/HTTP span export (`tracing.otlp_endpoint`): the real gateway and demo upstream, and a small
OTLP collector on 127.0.0.1 that checks every body against the OTLP protobuf schema
(opentelemetry-proto's ExportTraceServiceRequest through protobuf's json_format, strict field names)."""
import base64
import json
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from conftest import GATEWAY, free_port, metric, scrape_metrics

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{PARENT}-01"


def proto_from_otlp_json(body: bytes) -> ExportTraceServiceRequest:
    """OTLP/JSON differs from protobuf's canonical JSON only in ids (hex, not base64): convert them
    as a collector does, then parse strictly (unknown or misspelt fields raise)."""
    doc = json.loads(body)
    for resource_spans in doc["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        raw = bytes.fromhex(span[key])
                        assert span[key] == raw.hex(), f"{key} must be lowercase hex: {span[key]}"
                        span[key] = base64.b64encode(raw).decode()
    request = ExportTraceServiceRequest()
    json_format.Parse(json.dumps(doc), request, ignore_unknown_fields=False)
    return request


class Collector:
    """Answers POST /v1/traces with 200 and keeps every request (path, headers, parsed spans)."""

    def __init__(self):
        self.requests = []
        self.errors = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    parsed = proto_from_otlp_json(body)
                    collector.requests.append((self.path, dict(self.headers), parsed))
                except Exception as error:  # recorded for the test to fail on, not swallowed
                    collector.errors.append(f"{error!r}: {body[:500]!r}")
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self):
        out = []
        for _, _, request in list(self.requests):
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    out.extend(scope_spans.spans)
        return out

    def wait_for(self, predicate, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert not self.errors, self.errors
            spans = self.spans()
            if predicate(spans):
                return spans
            time.sleep(0.05)
        raise AssertionError(f"collector never saw the expected spans; got {[s.trace_id.hex() for s in self.spans()]}")

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.stop()


def tracing_block(endpoint, ratio=None, interval="100ms"):
    lines = ["tracing:", f"  otlp_endpoint: {endpoint}", f"  flush_interval: {interval}",
             "  service_name: edge-test", "  headers: { x-api-key: test-key-1 }"]
    if ratio is not None:
        lines.append(f"  sample_ratio: {ratio}")
    return "\n".join(lines) + "\n"


def attributes(span):
    out = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, kind)
    return out


def echoed_traceparent(response):
    headers = {name.lower(): value for name, value in response.json()["headers"]}
    return headers["traceparent"]


def test_sampled_traceparent_is_exported_with_its_trace_and_parent(gateway_factory, upstream, collector):
    gw = gateway_factory(upstream.port, top_extra=tracing_block(f"http://127.0.0.1:{collector.port}"))
    r = httpx.get(gw.url("/api/echo-headers?secret=1", listener="plain"), timeout=10,
                  headers={"traceparent": SAMPLED, "User-Agent": "t"})
    assert r.status_code == 200
    # The gateway's span id is the parent-id it forwarded upstream.
    _, _, gateway_span, flags = echoed_traceparent(r).split("-")
    assert flags == "01"
    spans = collector.wait_for(lambda s: len(s) >= 1)
    assert len(spans) == 1
    span = spans[0]
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT
    assert span.span_id.hex() == gateway_span
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.name == "GET api"
    assert 0 < span.start_time_unix_nano <= span.end_time_unix_nano
    assert abs(span.end_time_unix_nano / 1e9 - time.time()) < 120
    assert span.status.code == Status.STATUS_CODE_UNSET
    attrs = attributes(span)
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/api/echo-headers"  # no query string
    assert attrs["http.response.status_code"] == 200
    assert attrs["http.route"] == "api"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["server.port"] == gw.ports["plain"]
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["gateway.source"] == "upstream"
    assert attrs["gateway.upstream.endpoint"] == f"127.0.0.1:{upstream.port}"
    path, headers, request = collector.requests[0]
    assert path == "/v1/traces"
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["x-api-key"] == "test-key-1"
    resource = {kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "edge-test"
    samples = scrape_metrics(gw)
    assert metric(samples, "gateway_spans_exported_total") >= 1


def test_unsampled_and_new_traces_are_not_exported_by_default(gateway_factory, upstream, collector):
    gw = gateway_factory(upstream.port, top_extra=tracing_block(f"http://127.0.0.1:{collector.port}"))
    with httpx.Client(timeout=10) as c:
        for _ in range(5):
            assert c.get(gw.url("/api/bookings", listener="plain"), headers={"traceparent": SAMPLED[:-2] + "00"}).status_code == 200
            assert c.get(gw.url("/api/bookings", listener="plain")).status_code == 200
            # A gateway-made error of an unsampled trace is not exported either.
            assert c.get(gw.url("/nope", listener="plain")).status_code == 404
        marker = f"00-{'ab' * 16}-{PARENT}-01"
        assert c.get(gw.url("/nope", listener="plain"), headers={"traceparent": marker}).status_code == 404
    # Spans leave in order: once the marker arrived, anything exported before it has too.
    spans = collector.wait_for(lambda s: any(x.trace_id.hex() == "ab" * 16 for x in s))
    assert [s.trace_id.hex() for s in spans] == ["ab" * 16]
    assert attributes(spans[0])["gateway.source"] == "gateway:no_route"
    assert spans[0].name == "GET" and "http.route" not in attributes(spans[0])


def test_sample_ratio_one_exports_every_request(gateway_factory, upstream, collector):
    gw = gateway_factory(upstream.port, top_extra=tracing_block(f"http://127.0.0.1:{collector.port}", ratio=1))
    forwarded = set()
    with httpx.Client(timeout=10) as c:
        for _ in range(20):
            r = c.get(gw.url("/api/echo-headers", listener="plain"))
            _, trace_id, _, flags = echoed_traceparent(r).split("-")
            assert flags == "01"
            forwarded.add(trace_id)
        r = c.get(gw.url("/api/status?code=503", listener="plain"))
    assert len(forwarded) == 20
    spans = collector.wait_for(lambda s: len(s) >= 21)
    assert len(spans) == 21
    assert {s.trace_id.hex() for s in spans[:20]} == forwarded
    assert all(len(s.parent_span_id) == 0 for s in spans)
    assert r.status_code == 503
    last = spans[20]
    assert last.status.code == Status.STATUS_CODE_ERROR
    assert attributes(last)["http.response.status_code"] == 503


def test_collector_down_leaves_requests_alone_and_counts_drops(gateway_factory, upstream):
    dead = free_port()
    gw = gateway_factory(upstream.port, top_extra=tracing_block(f"http://127.0.0.1:{dead}", ratio=1))
    with httpx.Client(timeout=10) as c:
        for _ in range(30):
            assert c.get(gw.url("/api/bookings", listener="plain")).status_code == 200
    deadline = time.time() + 15
    dropped = 0
    while time.time() < deadline:
        samples = scrape_metrics(gw)
        key = ("gateway_spans_dropped_total", frozenset({("reason", "export_failed")}))
        dropped = samples.get(key, 0)
        if dropped >= 30:
            break
        time.sleep(0.1)
    # At least the 30 proxied requests; the /metrics scrapes are sampled too (ratio 1).
    assert dropped >= 30
    assert metric(samples, "gateway_spans_exported_total") == 0
    # Still serving.
    assert httpx.get(gw.url("/api/bookings", listener="plain"), timeout=10).status_code == 200


def test_shutdown_flushes_what_is_queued(gateway_factory, upstream, collector):
    gw = gateway_factory(upstream.port, top_extra=tracing_block(f"http://127.0.0.1:{collector.port}", interval="60s"))
    assert httpx.get(gw.url("/api/bookings", listener="plain"), headers={"traceparent": SAMPLED}, timeout=10).status_code == 200
    # The interval is a minute: only the shutdown flush can deliver it.
    assert collector.spans() == []
    gw.stop()
    assert gw.proc.returncode == 0
    spans = collector.wait_for(lambda s: len(s) >= 1, timeout=5)
    assert [s.trace_id.hex() for s in spans] == [TRACE_ID]


def test_validate_refuses_bad_tracing_keys(tmp_path):
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("listeners:\n  - name: main\n    address: 127.0.0.1:0\n"
                   "tracing:\n  otlp_endpoint: grpc://127.0.0.1:4317\n  sample_ratio: 2\n")
    r = subprocess.run([str(GATEWAY), "validate", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "tracing.otlp_endpoint: the scheme must be http or https, got 'grpc'" in out
    assert "tracing.sample_ratio: expected a number between 0 and 1, got '2'" in out

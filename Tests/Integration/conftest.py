"""Integration fixtures: the real gateway binary, the real demo upstream, real TLS certificates.

Everything listens on 127.0.0.1 ephemeral ports and is stopped by PID at the end of each test.
"""
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def bin_path() -> Path:
    # GATEWAY_BIN_DIR runs the suite against other builds (e.g. `scripts/release-build.sh`'s, to
    # check what the release flags change); by default the debug build `make test` makes.
    if os.environ.get("GATEWAY_BIN_DIR"):
        return Path(os.environ["GATEWAY_BIN_DIR"])
    out = subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


BIN = bin_path()
GATEWAY = BIN / "gateway"
DEMO = BIN / "demo-upstream"


def make_cert(directory: Path, name: str, sans: str, cn: str) -> tuple[Path, Path]:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", f"/CN={cn}", "-addext", f"subjectAltName={sans}", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True)
    return crt, key


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    default = make_cert(d, "default", "DNS:localhost,IP:127.0.0.1", "gateway-default")
    other = make_cert(d, "other", "DNS:api.barberpro.test,DNS:*.shops.barberpro.test", "gateway-other")
    return {"default": default, "other": other, "dir": d}


class Upstream:
    def __init__(self, port=0):
        self.proc = subprocess.Popen([str(DEMO), "--port", str(port)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r":(\d+)$", line.strip())
        assert m, f"demo upstream did not start: {line!r}"
        self.port = int(m.group(1))

    def stats(self):
        with socket.create_connection(("127.0.0.1", self.port)) as s:
            s.sendall(b"GET /__stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class RawGetUpstream:
    """A raw-socket HTTP/1.1 upstream for bodiless GETs that answers each request head with
    `answer(conn, head)`: for responses no well-behaved server would send. Counts connections."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def answer(self, conn, head: bytes):
        raise NotImplementedError

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buffered = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffered += chunk
                while b"\r\n\r\n" in buffered:
                    head, buffered = buffered.split(b"\r\n\r\n", 1)
                    self.answer(conn, head)

    def stop(self):
        self.listener.close()


@pytest.fixture
def upstream():
    u = Upstream()
    yield u
    u.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listener_names(config: str) -> set:
    """Every listener a generated config declares, the admin listener included."""
    section = re.search(r"^listeners:\n((?:[ -].*\n)*)", config, re.M)
    return set(re.findall(r"^  - name: (\S+)", section.group(1) if section else "", re.M)) | {"admin"}


class Gateway:
    """A running `gateway run` with a generated config. Listener ports are read from its output."""

    def __init__(self, config_text: str, directory: Path, env=None):
        self.config_path = directory / "gateway.yaml"
        self.config_path.write_text(config_text)
        self.proc = subprocess.Popen(
            [str(GATEWAY), "run", "--config", str(self.config_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.ports = {}
        expected = listener_names(config_text)
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("gateway exited: " + self.proc.stderr.read())
            m = re.match(r"gateway: listener (\S+) on .*:(\d+)$", line.strip())
            if m:
                self.ports[m.group(1)] = int(m.group(2))
            if expected <= self.ports.keys():
                break
        assert expected <= self.ports.keys(), f"listeners {expected - self.ports.keys()} never reported a port"
        # Keep draining stdout (the access log) so the gateway never blocks on a full pipe.
        self.lines = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def access_log(self, wait=1.0):
        """Parsed access-log lines so far (waits a little: the writer flushes every 20 ms)."""
        time.sleep(wait)
        out = []
        for line in list(self.lines):
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def url(self, path="/", listener="public"):
        scheme = "https" if listener == "public" else "http"
        return f"{scheme}://127.0.0.1:{self.ports[listener]}{path}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def config_text(certs, upstream_port, extra_routes="", upstream_extra="", listeners_extra="", top_extra="",
                endpoints=None, min_version="1.2", max_body="2MiB", booking_extra=""):
    crt, key = certs["default"]
    crt2, key2 = certs["other"]
    endpoints = endpoints or [f"127.0.0.1:{upstream_port}"]
    text = textwrap.dedent(f"""\
        workers: 2
        listeners:
          - name: public
            address: 127.0.0.1:0
            tls:
              min_version: "{min_version}"
              certificates:
                - {{ cert: {crt}, key: {key} }}
                - {{ cert: {crt2}, key: {key2} }}
          - name: plain
            address: 127.0.0.1:0
          - name: http
            address: 127.0.0.1:0
            redirect_to_https: true
        @LISTENERS_EXTRA@admin:
          address: 127.0.0.1:0
        limits: {{ max_header_bytes: 8KiB, max_body_bytes: {max_body} }}
        timeouts: {{ client_header: 1s, idle: 5s, drain: 5s }}
        @TOP_EXTRA@upstreams:
          booking:
            endpoints: [{", ".join(endpoints)}]
            connect_timeout: 500ms
            response_timeout: 2s
            max_connections: 64
        @BOOKING_EXTRA@@UPSTREAM_EXTRA@routes:
          - name: login
            match: {{ path_prefix: /api/auth/login, methods: [POST] }}
            upstream: booking
          - name: api
            match: {{ path_prefix: /api/ }}
            upstream: booking
        @EXTRA_ROUTES@""")
    # Extras are inserted after dedent so their own indentation stays as written.
    for token, value in (("@LISTENERS_EXTRA@", listeners_extra), ("@TOP_EXTRA@", top_extra),
                         ("@BOOKING_EXTRA@", booking_extra),
                         ("@UPSTREAM_EXTRA@", upstream_extra), ("@EXTRA_ROUTES@", extra_routes)):
        text = text.replace(token, value)
    return text


@pytest.fixture
def gateway_factory(certs, tmp_path):
    started = []

    def start(upstream_port, **kwargs):
        d = tmp_path / f"gw{len(started)}"
        d.mkdir()
        gw = Gateway(config_text(certs, upstream_port, **kwargs), d)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(gateway_factory, upstream):
    return gateway_factory(upstream.port)


def raw_request(port: int, data: bytes, tls=False, timeout=5.0, server_name=None) -> bytes:
    """Sends raw bytes and returns everything the server answers until it closes or goes quiet."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname=server_name or "localhost")
    sock.sendall(data)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (socket.timeout, ConnectionResetError, ssl.SSLError):
        pass
    sock.close()
    return out


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape_metrics(gw) -> dict:
    """The admin listener's /metrics samples as {(name, frozenset of (label, value)): value}."""
    import httpx
    text = httpx.get(gw.url("/metrics", listener="admin"), timeout=5).text
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def metric(samples: dict, name: str, **labels) -> float:
    """The value of the series `name{labels}`; fails naming the series that do exist when it is absent."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no {name}{labels} in /metrics; {name} has {[dict(k[1]) for k in samples if k[0] == name]}"
    return samples[key]


def status_of(response: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", response)
    assert m, f"no HTTP status in {response[:200]!r}"
    return int(m.group(1))


class RedisServer:
    """A throwaway redis-server on a free loopback port (no persistence), stopped by PID."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--enable-debug-command", "local"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True).stdout

    def stop(self):
        self.proc.kill()
        self.proc.wait()

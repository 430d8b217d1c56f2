"""Issue 15, operations: deploy artefacts, `--version`, the operator log, strict `validate`,
process and certificate metrics, `GET /config` key names, rollouts (drain_delay, /health/fail,
endpoint drains) and the dashboards/alerts checked against a real /metrics scrape."""
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import GATEWAY, ROOT, Gateway, Upstream, config_text, free_port, make_cert, scrape_metrics

yaml = pytest.importorskip("yaml")


# ---------------------------------------------------------------------------------------------
# Helpers

def write_cert(directory: Path, name: str, not_before: datetime.datetime, not_after: datetime.datetime):
    """A self-signed P-256 certificate with the validity window given (openssl req cannot backdate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return crt, key_path


def tls_config(crt, key, extra=""):
    return textwrap.dedent(f"""\
        listeners:
          - name: public
            address: 127.0.0.1:0
            tls:
              certificates:
                - cert: {crt}
                  key: {key}
        admin:
          address: 127.0.0.1:0
        upstreams:
          booking:
            endpoints: [127.0.0.1:9]
        routes:
          - name: api
            match: {{ path_prefix: /api/ }}
            upstream: booking
        """) + extra


def validate(path: Path, *extra):
    return subprocess.run([str(GATEWAY), "validate", "--config", str(path), *extra], capture_output=True, text=True,
                          timeout=30)


def line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in config")


def start_gateway(directory: Path, text: str, env=None) -> Gateway:
    directory.mkdir(exist_ok=True)
    return Gateway(text, directory, env=env)


def wait_for(predicate, timeout=15.0, interval=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached before the deadline")


def stop_and_stderr(gw: Gateway, sig=signal.SIGTERM) -> str:
    gw.proc.send_signal(sig)
    assert gw.proc.wait(timeout=30) == 0
    return gw.proc.stderr.read()


@pytest.fixture
def gateways():
    started = []
    yield started
    for gw in started:
        gw.stop()


# ---------------------------------------------------------------------------------------------
# Item 1: artefacts and --version

def test_version_reports_build_and_libraries():
    r = subprocess.run([str(GATEWAY), "--version"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    fields = dict(line.split(": ", 1) for line in r.stdout.strip().splitlines()[1:])
    assert re.fullmatch(r"gateway \d+\.\d+\.\d+", r.stdout.splitlines()[0])
    assert re.fullmatch(r"[0-9a-f]{7,40}|unknown", fields["commit"])
    assert fields["openssl"].startswith("OpenSSL 3.")
    installed = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libnghttp2-14"], capture_output=True,
                               text=True).stdout
    assert re.fullmatch(r"1\.\d+\.\d+", fields["nghttp2"])
    if installed:
        assert installed.startswith(fields["nghttp2"]), (installed, fields["nghttp2"])
    assert fields["hiredis"].startswith("0.14.")


def dockerfile_stages():
    """[(base image, stage name, [(instruction, argument)])] of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    args = {}
    stages = []
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, argument = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and not stages:
            name, _, default = argument.partition("=")
            args[name] = default
        elif instruction == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", argument.strip(), re.I)
            image = re.sub(r"\$\{(\w+)\}", lambda v: args.get(v.group(1), ""), m.group(1))
            stages.append((image, m.group(2), []))
        else:
            stages[-1][2].append((instruction, argument.strip()))
    return stages


def test_dockerfile_lint():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    build_image, _, build = stages[0]
    runtime_image, _, runtime = stages[-1]
    assert re.fullmatch(r"swift:6\.\d+(\.\d+)?-bookworm", build_image), build_image
    assert runtime_image == "debian:bookworm-slim"
    build_runs = " ".join(a for i, a in build if i == "RUN")
    assert "--static-swift-stdlib" in build_runs
    # The project's release build (its flags are in one script every release build shares).
    assert "scripts/release-build.sh" in build_runs
    assert "-c release" in (ROOT / "scripts/release-build.sh").read_text()
    assert any(i == "COPY" and "scripts/release-build.sh" in a for i, a in build)
    # The profile the release build optimizes with travels with the script.
    assert any(i == "COPY" and "scripts/gateway.profdata" in a for i, a in build)
    instructions = dict((i, a) for i, a in runtime)
    user = instructions.get("USER", "")
    assert user and user.split(":")[0] not in ("root", "0"), f"runtime must not run as root: USER {user!r}"
    assert "/health/live" in instructions.get("HEALTHCHECK", "")
    assert instructions.get("STOPSIGNAL") == "SIGTERM"
    assert "gateway" in instructions.get("ENTRYPOINT", "")
    # The only packages the runtime installs: the C libraries the binary loads (and nothing else).
    installed = set()
    for instruction, argument in runtime:
        for m in re.finditer(r"apt-get install ([^&;]+)", argument):
            installed |= {w for w in m.group(1).split() if not w.startswith("-")}
    assert installed == {"libssl3", "libnghttp2-14", "libhiredis0.14"}, installed
    # Every library the binary links, outside the Swift runtime (static in the release image) and
    # what debian:bookworm-slim already has, comes from one of those packages.
    base = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}
    ldd = subprocess.run(["ldd", str(GATEWAY)], capture_output=True, text=True, check=True).stdout
    needed = set()
    for line in ldd.splitlines():
        m = re.search(r"=>\s+(\S+)", line)
        if not m or m.group(1).startswith("/opt/swift") or "/swift/" in m.group(1):
            continue
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(m.group(1))], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", m.group(1)], capture_output=True, text=True)
        assert owner.returncode == 0, f"no Debian package owns {m.group(1)}"
        needed.add(owner.stdout.split(":")[0])
    assert {"libssl3", "libnghttp2-14", "libhiredis0.14"} <= needed, needed
    assert needed - base <= installed, f"linked but not installed in the runtime image: {needed - base - installed}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".build" in ignored and ".git" in ignored and "*.key" in ignored


def test_release_build_uses_the_committed_profile(tmp_path):
    """scripts/release-build.sh hands swift the committed PGO profile under a name made of its
    hash (so a new profile rebuilds), with objects always rewritten; the profile itself is a
    valid indexed profile that counts the request path (a truncated or empty one would build a
    slower binary without a word)."""
    fake = tmp_path / "swift"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    args = subprocess.run(
        [ROOT / "scripts/release-build.sh", "--product", "gateway"], env={**os.environ, "SWIFT": str(fake)},
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert args[:3] == ["build", "-c", "release"], args
    assert "-disable-incremental-llvm-codegen" in args
    uses = [a.split("=", 1)[1] for a in args if a.startswith("-ir-profile-use=")]
    assert len(uses) == 1, args
    profile = Path(uses[0])
    committed = ROOT / "scripts/gateway.profdata"
    assert profile.read_bytes() == committed.read_bytes()
    assert hashlib.sha256(committed.read_bytes()).hexdigest()[:16] == profile.stem
    # PGO_FLAGS (the instrumented build of scripts/pgo-train.sh) replaces the profile.
    args = subprocess.run(
        [ROOT / "scripts/release-build.sh"], env={**os.environ, "SWIFT": str(fake), "PGO_FLAGS": "-Xswiftc -DX"},
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    assert not any(a.startswith("-ir-profile-use") for a in args) and "-DX" in args
    profdata = Path(shutil.which("swift") or "/opt/swift/usr/bin/swift").resolve().parent / "llvm-profdata"
    if not profdata.exists():
        pytest.skip("llvm-profdata is not next to swift")
    shown = subprocess.run([profdata, "show", "--all-functions", committed], capture_output=True, text=True, check=True).stdout
    counted = [line for line in shown.splitlines() if "RequestExchange" in line or "HTTP2Stream" in line]
    assert len(counted) > 20, shown[-2000:]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_serves_and_proxies_as_an_unprivileged_user(certs, upstream):
    """The image and the systemd unit run the gateway as a plain user: accepting, TLS and upstream
    connections must not need a capability (a SOL_SOCKET option that needs CAP_NET_ADMIN once
    closed every accepted connection of a non-root gateway)."""
    import tempfile
    directory = Path(tempfile.mkdtemp(prefix="gateway-nobody-"))
    try:
        os.chmod(directory, 0o755)
        for name in ("crt", "key"):
            source = certs["default"][0 if name == "crt" else 1]
            shutil.copy(source, directory / f"default.{name}")
            os.chmod(directory / f"default.{name}", 0o644)
        text = tls_config(directory / "default.crt", directory / "default.key").replace(
            "127.0.0.1:9]", f"127.0.0.1:{upstream.port}]").replace(
            "admin:\n", "  - name: plain\n    address: 127.0.0.1:0\nadmin:\n")
        (directory / "gateway.yaml").write_text(text)
        os.chmod(directory / "gateway.yaml", 0o644)
        proc = subprocess.Popen(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", str(GATEWAY),
                                 "run", "--config", str(directory / "gateway.yaml")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            ports = {}
            while len(ports) < 3:
                line = proc.stdout.readline()
                assert line, "gateway exited: " + proc.stderr.read()
                m = re.match(r"gateway: listener (\S+) on .*:(\d+)$", line.strip())
                if m:
                    ports[m.group(1)] = int(m.group(2))
            status = Path(f"/proc/{proc.pid}/status").read_text()
            assert re.search(r"^Uid:\s+65534\s", status, re.M) and re.search(r"^CapEff:\s+0+$", status, re.M)
            assert plain_get(ports["plain"]) == 200
            assert httpx.get(f"http://127.0.0.1:{ports['admin']}/health/live", timeout=5).status_code == 200
            r = httpx.get(f"https://127.0.0.1:{ports['public']}/api/bookings", verify=False, timeout=5)
            assert r.status_code == 200 and r.http_version in ("HTTP/1.1", "HTTP/2")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("podman", "runc", "debootstrap")),
                    reason="container smoke needs root, podman, runc and debootstrap (Debian packages)")
def test_container_image_smoke():
    """deploy/container-smoke.sh: the runtime stage built by podman on a debootstrapped Debian 12,
    run as uid 10001, answering /health/live, its HEALTHCHECK and a listener, exiting 0 on SIGTERM.
    A cold run builds a release binary (minutes on 2 cores)."""
    r = subprocess.run([str(ROOT / "deploy/container-smoke.sh")], capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0 and "container smoke: passed" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]


def test_railway_json():
    railway = json.loads((ROOT / "deploy/railway.json").read_text())
    assert railway["build"]["builder"] == "DOCKERFILE"
    assert railway["deploy"]["healthcheckPath"] == "/health/ready"
    assert railway["deploy"]["restartPolicyType"] in ("ON_FAILURE", "ALWAYS")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    unit = (ROOT / "deploy/systemd/gateway.service").read_text()
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert re.search(r"^LimitNOFILE=\d+$", unit, re.M)
    for option in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes"):
        assert option in unit
    # verify insists the executables exist: point them at the binary under test.
    checked = tmp_path / "gateway.service"
    checked.write_text(unit.replace("/usr/local/bin/gateway", str(GATEWAY)))
    r = subprocess.run(["systemd-analyze", "verify", str(checked)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (r.stdout + r.stderr).splitlines() if "gateway.service" in line]
    assert r.returncode == 0 and not complaints, complaints
    # The same check catches a key systemd does not know (so the pass above means something).
    broken = tmp_path / "broken.service"
    broken.write_text(checked.read_text().replace("LimitNOFILE=", "LimitNOFILES="))
    r = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True, timeout=60)
    assert "Unknown key" in r.stderr and "LimitNOFILES" in r.stderr


# ---------------------------------------------------------------------------------------------
# Item 2: the operator log, process_* metrics

def test_operator_log_json_and_levels(certs, upstream, tmp_path, gateways):
    base = config_text(certs, upstream.port)
    gw = start_gateway(tmp_path / "json", base + "log: { access: false, level: info, format: json }\n")
    gateways.append(gw)
    lines = [json.loads(line) for line in stop_and_stderr(gw).splitlines() if line.strip()]
    messages = {line["message"]: line for line in lines}
    assert "shutdown requested, draining" in messages and "stopped" in messages, lines
    assert all(line["logger"] == "gateway" and line["time"].endswith("Z") for line in lines)
    assert messages["stopped"]["level"] == "info"
    # The session's certificates are valid for 2 days: start-up warns about each, as JSON too.
    warnings = [line["message"] for line in lines if line["level"] == "warning"]
    assert len(warnings) == 2 and all("expires in 1 day" in w or "expires in 2" in w for w in warnings), warnings
    assert {line["level"] for line in lines} == {"info", "warning"}

    # --log-level warning hides info; text format otherwise.
    quiet = tmp_path / "quiet"
    quiet.mkdir()
    (quiet / "gateway.yaml").write_text(base + "log: { access: false, level: debug }\n")
    proc = subprocess.Popen([str(GATEWAY), "run", "--config", str(quiet / "gateway.yaml"), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "listener admin" in proc.stdout.readline())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "draining" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()

    # Text format with level info names the messages plainly.
    gw = start_gateway(tmp_path / "text", base + "log: { access: false }\n")
    gateways.append(gw)
    assert "gateway: shutdown requested, draining" in stop_and_stderr(gw)


def test_log_level_is_validated(certs, upstream, tmp_path):
    cfg = tmp_path / "gateway.yaml"
    text = config_text(certs, upstream.port) + "log: { level: verbos, format: yaml }\n"
    cfg.write_text(text)
    r = validate(cfg)
    assert r.returncode == 1
    line = line_of(text, "level: verbos")
    assert re.search(rf"^log\.level: .*'verbos'.* \(line {line}\)$", r.stderr, re.M), r.stderr
    assert f"log.format: expected one of text, json, got 'yaml' (line {line})" in r.stderr.splitlines(), r.stderr
    r = subprocess.run([str(GATEWAY), "validate", "--config", str(cfg), "--log-level", "loud"], capture_output=True,
                       text=True)
    assert r.returncode != 0 and "--log-level" in r.stderr


def test_process_metrics(gateway):
    samples = scrape_metrics(gateway)
    values = {name: value for (name, labels), value in samples.items() if name.startswith("process_")}
    assert values["process_open_fds"] >= 5
    assert values["process_max_fds"] >= values["process_open_fds"]
    rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{gateway.proc.pid}/status").read_text()).group(1)) * 1024
    assert 0.5 * rss <= values["process_resident_memory_bytes"] <= 2 * rss
    assert values["process_virtual_memory_bytes"] >= values["process_resident_memory_bytes"]
    assert abs(values["process_start_time_seconds"] - Path(f"/proc/{gateway.proc.pid}").stat().st_mtime) < 120
    assert values["process_start_time_seconds"] <= time.time()
    assert values["process_cpu_seconds_total"] >= 0


# ---------------------------------------------------------------------------------------------
# Item 3: validate as strict as run

def test_validate_catches_mismatched_key(certs, tmp_path):
    crt, _ = certs["default"]
    _, other_key = certs["other"]
    cfg = tmp_path / "gateway.yaml"
    text = tls_config(crt, other_key)
    cfg.write_text(text)
    r = validate(cfg)
    assert r.returncode == 1
    m = re.search(r"^listeners\[0\]\.tls\.certificates\[0\]: .*does not match.* \(line (\d+)\)$", r.stderr, re.M)
    assert m, r.stderr
    assert int(m.group(1)) == line_of(text, "- cert:")
    # run refuses the same file the same way, before binding anything.
    r = subprocess.run([str(GATEWAY), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "does not match" in r.stderr


def test_validate_expired_and_expiring_certificates(tmp_path):
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = write_cert(tmp_path, "expired.test", now - datetime.timedelta(days=30), now - datetime.timedelta(days=2))
    cfg = tmp_path / "expired.yaml"
    text = tls_config(*expired)
    cfg.write_text(text)
    r = validate(cfg)
    assert r.returncode == 1
    assert re.search(rf"^listeners\[0\]\.tls\.certificates\[0\]\.cert: certificate .*expired\.test\.crt expired 2 days ago "
                     rf"\(line {line_of(text, 'cert: ')}\)$", r.stderr, re.M), r.stderr

    soon = write_cert(tmp_path, "soon.test", now - datetime.timedelta(days=1), now + datetime.timedelta(days=3, hours=1))
    cfg = tmp_path / "soon.yaml"
    cfg.write_text(tls_config(*soon))
    r = validate(cfg)
    assert r.returncode == 0, r.stderr
    assert re.search(r"warning: listeners\[0\]\.tls\.certificates\[0\]\.cert: certificate .*soon\.test\.crt expires in 3 days",
                     r.stderr), r.stderr

    fine = write_cert(tmp_path, "fine.test", now - datetime.timedelta(days=1), now + datetime.timedelta(days=90))
    cfg = tmp_path / "fine.yaml"
    cfg.write_text(tls_config(*fine))
    r = validate(cfg)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


def test_validate_reports_line_numbers_for_unknown_keys(certs, upstream, tmp_path):
    text = config_text(certs, upstream.port).replace("    response_timeout: 2s\n", "    response_timeot: 2s\n")
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(text)
    r = validate(cfg)
    assert r.returncode == 1
    assert (f"upstreams.booking.response_timeot: unknown key (did you mean 'response_timeout'?) "
            f"(line {line_of(text, 'response_timeot')})") in r.stderr, r.stderr


def test_validate_parses_jwt_pem_keys(certs, upstream, tmp_path):
    pem = tmp_path / "broken.pem"
    pem.write_text("-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
    text = config_text(certs, upstream.port) + textwrap.dedent(f"""\
        jwt:
          issuer: barberpro-auth
          audiences: [barberpro-api]
          keys:
            - kid: broken
              algorithm: ES256
              public_key: {pem}
        """)
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(text)
    r = validate(cfg)
    assert r.returncode == 1
    assert re.search(rf"^jwt\.keys\[0\]\S*: .*\(line ({line_of(text, '- kid: broken')}|{line_of(text, 'public_key:')})\)$",
                     r.stderr, re.M), r.stderr


def test_certificate_expiry_metric(certs, gateway):
    samples = scrape_metrics(gateway)
    series = {dict(labels)["name"]: value for (name, labels), value in samples.items()
              if name == "gateway_tls_certificate_expiry_seconds" and dict(labels)["listener"] == "public"}
    for pair, name in ((certs["default"], "localhost"), (certs["other"], "api.barberpro.test")):
        cert = x509.load_pem_x509_certificate(pair[0].read_bytes())
        assert abs(series[name] - cert.not_valid_after_utc.timestamp()) <= 2, (name, series)


def test_certificate_expiry_metric_follows_reloads(certs, gateway):
    # The second certificate dropped from the public listener: its series goes with it.
    text = gateway.config_path.read_text()
    crt2, key2 = certs["other"]
    gateway.config_path.write_text(text.replace(f"        - {{ cert: {crt2}, key: {key2} }}\n", ""))
    assert httpx.post(gateway.url("/config/reload", listener="admin"), timeout=10).status_code == 200

    def names():
        return {dict(labels)["name"] for (name, labels) in scrape_metrics(gateway)
                if name == "gateway_tls_certificate_expiry_seconds"}
    wait_for(lambda: names() == {"localhost"})


def test_config_dump_uses_yaml_key_names(gateway):
    dump = httpx.get(gateway.url("/config", listener="admin"), timeout=5).json()["config"]

    def keys(value, path=""):
        if isinstance(value, dict):
            for key, child in value.items():
                yield f"{path}.{key}", key
                yield from keys(child, f"{path}.{key}")
        elif isinstance(value, list):
            for index, child in enumerate(value):
                yield from keys(child, f"{path}[{index}]")

    camel = [path for path, key in keys(dump) if re.search(r"[A-Z]", key)]
    assert not camel, camel
    assert dump["client_ip"]["header"] == "cf-connecting-ip"
    assert dump["timeouts"]["drain_delay"] == "5.0 seconds"
    assert dump["limits"]["max_header_bytes"] == 8192
    assert [listener["redirect_to_https"] for listener in dump["listeners"]] == [False, False, True]
    assert dump["upstreams"][0]["connect_timeout"] == "0.5 seconds"


# ---------------------------------------------------------------------------------------------
# Item 6: rollouts that refuse nothing

def plain_get(port, path="/api/bookings", timeout=5.0):
    """A request on a new connection: raises ConnectionRefusedError once the listener is closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def ready_status(gw):
    return httpx.get(gw.url("/health/ready", listener="admin"), timeout=5)


def test_drain_delay_keeps_accepting_while_readiness_fails(certs, upstream, tmp_path, gateways):
    text = config_text(certs, upstream.port).replace("drain: 5s }", "drain: 5s, drain_delay: 3s }")
    gw = start_gateway(tmp_path / "gw", text)
    gateways.append(gw)
    assert ready_status(gw).status_code == 200  # a load balancer is polling
    plain = gw.ports["plain"]
    assert plain_get(plain) == 200
    signalled = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    not_ready = wait_for(lambda: (r := ready_status(gw)).status_code == 503 and r)
    assert "draining" in not_ready.json()["reasons"]
    # Readiness is red, yet a new connection is still accepted and proxied.
    served = plain_get(plain)
    accepted_at = time.monotonic()
    assert served == 200
    assert accepted_at - signalled < 3, "the check ran too late to mean anything"

    def refused():
        try:
            plain_get(plain, timeout=1)
            return False
        except (ConnectionRefusedError, ConnectionResetError):
            return True
    wait_for(refused, timeout=20)
    assert time.monotonic() - signalled >= 3, "listeners closed before timeouts.drain_delay"
    assert gw.proc.wait(timeout=20) == 0
    assert "timeouts.drain_delay" in gw.proc.stderr.read()


def test_drain_delay_skipped_when_nobody_polls_readiness(certs, upstream, tmp_path, gateways):
    gw = start_gateway(tmp_path / "gw", config_text(certs, upstream.port))
    gateways.append(gw)
    assert plain_get(gw.ports["plain"]) == 200
    stderr = stop_and_stderr(gw)
    assert "timeouts.drain_delay" not in stderr and "stopped" in stderr


def test_drain_delay_is_validated(certs, upstream, tmp_path):
    cfg = tmp_path / "gateway.yaml"
    text = config_text(certs, upstream.port).replace("drain: 5s }", "drain: 5s, drain_delay: 10m }")
    cfg.write_text(text)
    r = validate(cfg)
    assert r.returncode == 1
    assert f"timeouts.drain_delay: must be at most 5m, got '10m' (line {line_of(text, 'drain_delay')})" in r.stderr, r.stderr


def test_health_fail_and_ok(gateway):
    admin = lambda path: gateway.url(path, listener="admin")
    assert ready_status(gateway).status_code == 200
    r = httpx.post(admin("/health/fail"), timeout=5)
    assert r.status_code == 200
    r = ready_status(gateway)
    assert r.status_code == 503 and r.json()["reasons"] == ["failed by POST /health/fail"]
    assert httpx.get(admin("/health/live"), timeout=5).status_code == 200
    # Traffic still flows: only the balancer's view changes.
    assert plain_get(gateway.ports["plain"]) == 200
    # Not on a public listener.
    assert httpx.post(gateway.url("/health/ok", listener="plain"), timeout=5).status_code == 404
    assert ready_status(gateway).status_code == 503
    assert httpx.post(admin("/health/ok"), timeout=5).status_code == 200
    assert ready_status(gateway).status_code == 200


def test_endpoint_drain_takes_an_endpoint_out_of_rotation(certs, tmp_path, gateways):
    first, second = Upstream(), Upstream()
    try:
        endpoints = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        gw = start_gateway(tmp_path / "gw", config_text(certs, first.port, endpoints=endpoints))
        gateways.append(gw)
        admin = lambda path: gw.url(path, listener="admin")
        r = httpx.post(admin(f"/upstreams/booking/endpoints/127.0.0.1:{first.port}/drain"), timeout=5)
        assert r.status_code == 200 and r.json() == {"upstream": "booking", "endpoint": endpoints[0], "drained": True}
        before = (first.stats()["requests"], second.stats()["requests"])
        for _ in range(20):
            assert plain_get(gw.ports["plain"]) == 200
        after = (first.stats()["requests"], second.stats()["requests"])
        assert after[0] == before[0] and after[1] - before[1] == 20
        detailed = httpx.get(admin("/health/detailed"), timeout=5).json()
        states = {e["endpoint"]: e["state"] for e in detailed["upstreams"]["booking"]}
        assert states == {endpoints[0]: "down", endpoints[1]: "up"}
        # Percent-encoded address, and the undo.
        r = httpx.delete(admin(f"/upstreams/booking/endpoints/127.0.0.1%3A{first.port}/drain"), timeout=5)
        assert r.status_code == 200 and r.json()["drained"] is False
        for _ in range(20):
            assert plain_get(gw.ports["plain"]) == 200
        assert first.stats()["requests"] > after[0]
        r = httpx.post(admin("/upstreams/booking/endpoints/10.9.9.9:1/drain"), timeout=5)
        assert r.status_code == 404 and r.json()["endpoints"] == endpoints
        assert httpx.post(admin("/upstreams/nope/endpoints/127.0.0.1:1/drain"), timeout=5).status_code == 404
    finally:
        first.stop()
        second.stop()


# ---------------------------------------------------------------------------------------------
# Item 7: dashboards and alerts name only metrics the gateway exports

PROMQL_WORDS = {
    "sum", "by", "rate", "increase", "histogram_quantile", "label_replace", "min", "max", "count", "time", "without",
    "avg", "and", "or", "unless", "on", "ignoring", "group_left", "group_right", "le", "offset", "bool", "topk",
}


def metric_names(expr: str) -> set:
    """Identifiers used as series selectors: followed by `{`, `[`, or standing alone in the expression."""
    expr = re.sub(r'"[^"]*"', '""', expr)                       # label values
    expr = re.sub(r"\{[^}]*\}", "{}", expr)                      # label matchers
    expr = re.sub(r"\$\w+|\$\{\w+\}", "", expr)                  # dashboard variables
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", expr):
        if m.group(2) or m.group(1) in PROMQL_WORDS or re.fullmatch(r"\d+[smhd]?", m.group(1)):
            continue
        names.add(m.group(1))
    return names


def exposed_families(samples: dict, text: str) -> set:
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    histograms = set(re.findall(r"^# TYPE (\S+) histogram", text, re.M))
    return families | {h + suffix for h in histograms for suffix in ("_bucket", "_sum", "_count")}


def test_dashboard_and_alerts_name_existing_metrics(gateway):
    dashboard = json.loads((ROOT / "deploy/grafana/gateway.json").read_text())
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())
    panel_exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    alert_exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert len(panel_exprs) >= 10 and {"GatewayDown", "GatewayHighResponseTime", "GatewayElevatedErrorRate",
                                       "GatewayRedisUnavailable", "GatewayCertificateExpiringSoon"} <= alert_exprs.keys()
    # Traffic first, so per-route series exist; then a real scrape.
    assert plain_get(gateway.ports["plain"]) == 200
    text = httpx.get(gateway.url("/metrics", listener="admin"), timeout=5).text
    exposed = exposed_families(scrape_metrics(gateway), text)
    named = set().union(*(metric_names(e) for e in panel_exprs + list(alert_exprs.values())))
    # `up` is Prometheus' own series for a scrape target.
    missing = named - exposed - {"up"}
    assert not missing, f"named but not exported: {missing}"
    assert {"gateway_requests_total", "gateway_request_duration_seconds_bucket", "gateway_tls_certificate_expiry_seconds",
            "gateway_redis_errors_total", "gateway_upstream_endpoint_up"} <= named
    # The checker itself notices a name that does not exist.
    assert metric_names('sum(rate(gateway_made_up_total{job="x"}[5m]))') == {"gateway_made_up_total"}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_alert_rules_pass_promtool():
    r = subprocess.run(["promtool", "check", "rules", str(ROOT / "deploy/prometheus/alerts.yaml")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

"""`gateway bench` scenarios, thresholds, expected statuses, .hgrm output and `bench compare`,
against the real demo upstream and the real gateway. Runs are a second or two each."""
import json
import os
import re
import subprocess
import textwrap

import pytest

from conftest import GATEWAY, ROOT, Gateway, config_text

SECRET = "bench-secret-at-least-32-bytes-long!"


def run_bench(*args, env=None, timeout=60):
    return subprocess.run([str(GATEWAY), "bench", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def verdict(proc):
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("verdict: "), (proc.stdout, proc.stderr)
    return lines[-1]


LIMITS = """rate_limits:
  policies:
    tight: { limit: 5, window: 60s, key: client_ip, algorithm: sliding_window }
    login_burst: { limit: 5, window: 60s, key: client_ip, algorithm: sliding_log }
"""
LIMITED_ROUTE = """  - name: limited
    match: { path_prefix: /api/barbers }
    upstream: booking
    rate_limits: [tight]
"""
LOGIN_ROUTE = "    match: { path_prefix: /api/auth/login, methods: [POST] }\n    upstream: booking\n"


@pytest.fixture
def limited_gateway(certs, upstream, tmp_path):
    """The test gateway with a 5-a-minute limit on GET /api/barbers and on POST /api/auth/login (as
    gateway.yaml limits login)."""
    text = config_text(certs, upstream.port, top_extra=LIMITS, extra_routes=LIMITED_ROUTE)
    assert LOGIN_ROUTE in text
    text = text.replace(LOGIN_ROUTE, LOGIN_ROUTE + "    rate_limits: [login_burst]\n")
    directory = tmp_path / "limited"
    directory.mkdir()
    gw = Gateway(text, directory)
    yield gw
    gw.stop()


def test_weighted_mix_through_the_gateway_over_h2(tmp_path, gateway, upstream):
    scenario = tmp_path / "mix.yaml"
    scenario.write_text(textwrap.dedent(f"""\
        url: {gateway.url("/")}
        insecure: true
        http2: true
        connections: 2
        streams: 8
        rate: 200
        duration: 2s
        thresholds: ["errors<0.1%"]
        targets:
          - {{ name: list, weight: 50, path: /api/bookings }}
          - {{ name: create, weight: 30, method: POST, path: /api/bookings, body: '{{"barber":"Luca"}}',
              headers: {{ content-type: application/json }}, expect: [201] }}
          - {{ name: barbers, weight: 20, path: /api/barbers }}
        """))
    before = upstream.stats()
    out = tmp_path / "mix.json"
    proc = run_bench("--scenario", str(scenario), "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verdict(proc).startswith("verdict: PASS (1/1 thresholds hold")
    report = json.loads(out.read_text())
    assert report["protocol"] == "h2" and report["errors"]["total"] == 0
    assert report["requests"]["scheduled"] == 400
    # A stall of the loaded test machine near the end may leave a few unsent; all sent were answered.
    sent = report["requests"]["sent"]
    assert sent >= 360 and report["requests"]["completed"] == sent
    targets = {t["name"]: t for t in report["targets"]}
    assert list(targets) == ["list", "create", "barbers"]
    assert sum(t["scheduled"] for t in targets.values()) == sent
    for name, weight in (("list", 0.5), ("create", 0.3), ("barbers", 0.2)):
        assert abs(targets[name]["scheduled"] / sent - weight) <= 0.03, (name, targets[name]["scheduled"])
        assert targets[name]["completed"] == targets[name]["scheduled"]
        assert targets[name]["errors"]["total"] == 0
    assert targets["list"]["status_counts"] == {"200": targets["list"]["completed"]}
    assert targets["barbers"]["status_counts"] == {"200": targets["barbers"]["completed"]}
    # The POSTs carried their body through the gateway: the demo upstream answers 201 only to a
    # POST, and counted each one.
    assert targets["create"]["status_counts"] == {"201": targets["create"]["completed"]}
    assert targets["create"]["method"] == "POST" and targets["create"]["expect"] == "201"
    after = upstream.stats()
    assert after["requests"] - before["requests"] == sent
    posts = after["posts"].get("/api/bookings", 0) - before["posts"].get("/api/bookings", 0)
    assert posts == targets["create"]["completed"]
    # One stage without a ramp, with the whole run in it.
    assert [(s["name"], s["scheduled"], s["completed"]) for s in report["stages"]] == [("stage 1", 400, sent)]


def test_method_and_body_file_on_http1(tmp_path, upstream):
    body = tmp_path / "booking.json"
    body.write_text('{"barber":"Martin","service":"corte"}')
    out = tmp_path / "post.json"
    before = upstream.stats()["posts"].get("/api/bookings", 0)
    proc = run_bench("--url", f"http://127.0.0.1:{upstream.port}/api/bookings", "--method", "POST",
                     "--body-file", str(body), "--header", "content-type: application/json", "--expect-status", "201",
                     "--rate", "50", "--duration", "1s", "--connections", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["status_counts"] == {"201": 50} and report["errors"]["total"] == 0
    assert upstream.stats()["posts"].get("/api/bookings", 0) - before == 50


def test_a_failing_threshold_exits_1_and_a_holding_one_0(tmp_path, upstream):
    url = f"http://127.0.0.1:{upstream.port}/api/bookings?delay_ms=20"
    common = ["--url", url, "--rate", "40", "--duration", "1s", "--connections", "4"]
    out = tmp_path / "slow.json"
    proc = run_bench(*common, "--threshold", "p99<5ms", "--threshold", "errors<0.1%", "--json", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = verdict(proc)
    assert line.startswith("verdict: FAIL (1 of 2 thresholds failed: p99<5ms ("), line
    assert "FAILED" in line and "errors<0.1%" not in line
    report = json.loads(out.read_text())
    assert report["passed"] is False
    checks = {c["threshold"]: c for c in report["checks"]}
    assert checks["p99<5ms"]["holds"] is False and checks["p99<5ms"]["observed"] >= 20
    assert checks["errors<0.1%"]["holds"] is True

    # The server's 20 ms delay is well inside 1 s: the same run passes.
    proc = run_bench(*common, "--threshold", "p99<1s", "--threshold", "rate>=0.99")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verdict(proc).startswith("verdict: PASS (2/2 thresholds hold")


def test_expect_status_429_on_a_limited_route_counts_no_errors(tmp_path, limited_gateway):
    url = limited_gateway.url("/api/barbers")
    common = ["--url", url, "--insecure", "--rate", "30", "--duration", "1s", "--connections", "1",
              "--threshold", "errors<0.1%"]
    out = tmp_path / "limited.json"
    proc = run_bench(*common, "--expect-status", "200,429", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    # The limit lets 5 through; the other 25 are answered 429, and none of them is an error.
    assert report["status_counts"] == {"200": 5, "429": 25}
    assert report["errors"] == {"total": 0, "by_status": {}, "by_kind": {"connect": 0, "timeout": 0, "reset": 0}}
    assert report["targets"][0]["expect"] == "200,429"

    # Without it, the same 429s are errors and the threshold fails.
    out = tmp_path / "unexpected.json"
    proc = run_bench(*common, "--json", str(out))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["status_counts"] == {"429": 30}
    assert report["errors"]["total"] == 30 and report["errors"]["by_status"] == {"429": 30}


HGRM_ROW = re.compile(r"^\s*(\d+\.\d{3}) (\d\.\d{12}) +(\d+)(?: +(\d+\.\d{2}|Infinity))?$")


def parse_hgrm(text):
    """Reads an .hgrm file as HdrHistogram's plotter (plotFiles.html) does: every line that does not
    start with '#' and splits into four numbers is a point (value, percentile, count, 1/(1-p)); the
    header and the 100% line (three fields) are skipped. Returns the points and the footer."""
    lines = text.split("\n")
    assert lines[0].split() == ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"], lines[0]
    assert re.fullmatch(r" {7}Value {5}Percentile TotalCount 1/\(1-Percentile\)", lines[0]), repr(lines[0])
    assert lines[1] == ""
    points, last = [], None
    for line in lines[2:]:
        if not line or line.startswith("#"):
            continue
        m = HGRM_ROW.match(line)
        assert m, f"not an HdrHistogram percentile line: {line!r}"
        fields = line.split()
        if len(fields) == 4:
            points.append(tuple(float(f) for f in fields))
        else:
            last = (float(fields[0]), float(fields[1]), int(fields[2]))
    # hdr-plot (the wrk2/HdrHistogram plotting script) takes every line its regex matches at the start.
    hdr_plot = re.compile(r"\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)\s+([0-9.]+)")
    assert [tuple(float(f) for f in m.groups()) for m in map(hdr_plot.match, lines) if m] == points
    footer = {}
    for line in lines:
        for m in re.finditer(r"(\w[\w ]*?)\s*=\s*([\d.]+)", line[2:-1] if line.startswith("#[") else ""):
            footer[m.group(1).strip()] = float(m.group(2))
    return points, last, footer


def test_hgrm_parses_as_hdrhistograms_format(tmp_path, upstream):
    out, hgrm = tmp_path / "run.json", tmp_path / "run.hgrm"
    proc = run_bench("--url", f"http://127.0.0.1:{upstream.port}/api/bookings?delay_ms=2", "--rate", "200",
                     "--duration", "1s", "--connections", "4", "--json", str(out), "--hgrm", str(hgrm))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    points, last, footer = parse_hgrm(hgrm.read_text())
    total = report["requests"]["completed"]
    assert total == 200
    assert len(points) >= 10
    values = [p[0] for p in points]
    percentiles = [p[1] for p in points]
    counts = [p[2] for p in points]
    assert percentiles[0] == 0.0 and all(a < b for a, b in zip(percentiles, percentiles[1:]))
    assert all(a <= b for a, b in zip(values, values[1:])) and all(a <= b for a, b in zip(counts, counts[1:]))
    for value, percentile, count, inverse in points:
        assert inverse == pytest.approx(1 / (1 - percentile), rel=0.01, abs=0.01)
        assert count <= total
    # The 100% line closes the table with the whole count at the maximum, in milliseconds.
    assert last[1] == 1.0 and last[2] == total
    assert last[0] == pytest.approx(report["latency_ms"]["max"], abs=0.001)
    median = next(p for p in points if p[1] >= 0.5)
    assert median[0] == pytest.approx(report["latency_ms"]["p50"], rel=0.01, abs=0.002)
    assert median[0] >= 2.0  # the server's delay, in ms
    assert footer["Total count"] == total
    assert footer["Max"] == pytest.approx(report["latency_ms"]["max"], abs=0.001)
    assert footer["Mean"] == pytest.approx(report["latency_ms"]["mean"], abs=0.001)
    assert {"StdDeviation", "Buckets", "SubBuckets"} <= footer.keys()


def test_compare_two_runs(tmp_path, upstream):
    base = f"http://127.0.0.1:{upstream.port}/api/bookings"
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path, url in ((a, base), (b, base + "?delay_ms=10")):
        proc = run_bench("--url", url, "--rate", "50", "--duration", "1s", "--connections", "2", "--json", str(path))
        assert proc.returncode == 0, proc.stderr
    svg = tmp_path / "both.svg"
    proc = run_bench("compare", str(a), str(b), "--plot", str(svg))
    assert proc.returncode == 0, proc.stderr
    rows = {re.split(r"\s{2,}", line.strip())[0]: line for line in proc.stdout.splitlines()}
    for metric in ("throughput req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "errors"):
        assert metric in rows, proc.stdout
    # b waited 10 ms more per request: its median is several times a's, and said to be worse.
    ratio = float(re.search(r"(\d+\.\d+)x", rows["p50 ms"]).group(1))
    assert ratio > 2 and rows["p50 ms"].endswith("worse"), rows["p50 ms"]
    picture = svg.read_text()
    assert picture.startswith("<svg") and picture.count('<path d="M') == 2
    assert f">a: {a}<" in picture and f">b: {b}<" in picture

    proc = run_bench("compare", str(a), str(tmp_path / "missing.json"))
    assert proc.returncode == 64 and "cannot read" in proc.stderr


def test_bad_scenario_files_are_usage_errors_with_paths(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("url: http://127.0.0.1:9\nrate: 10\ntargets:\n  - { path: /a, wieght: 2 }\n  - { path: b }\n")
    proc = run_bench("--scenario", str(bad))
    assert proc.returncode == 64
    assert f"gateway bench: {bad}: targets[0].wieght: unknown key (did you mean 'weight'?)" in proc.stderr
    assert f"gateway bench: {bad}: targets[1].path: expected an origin-form path" in proc.stderr
    # A target that mints tokens needs a secret; the example names its variable, which is unset here.
    minted = tmp_path / "minted.yaml"
    minted.write_text("url: http://127.0.0.1:9\nrate: 10\ntargets: [{ path: /a, token: per_connection }]\n")
    proc = run_bench("--scenario", str(minted))
    assert proc.returncode == 64 and "a target mints tokens: give --jwt-secret" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "BENCH_JWT_SECRET"}
    proc = subprocess.run([str(GATEWAY), "bench", "--scenario", str(ROOT / "benchmarks/scenarios/booking-api.yaml")],
                          capture_output=True, text=True, timeout=30, env=env)
    assert proc.returncode == 64 and "BENCH_JWT_SECRET is not set" in proc.stderr


def test_the_example_scenario_through_a_rate_limited_gateway(tmp_path, limited_gateway):
    # The CI recipe's scenario, shortened on the command line (--rate wins over its ramp) and
    # on one event loop, so the weighted mix is exact: 300 requests, 30 of them logins.
    out, hgrm = tmp_path / "example.json", tmp_path / "example.hgrm"
    proc = run_bench("--scenario", str(ROOT / "benchmarks/scenarios/booking-api.yaml"),
                     "--url", limited_gateway.url("/"), "--rate", "150", "--duration", "2s", "--warmup", "0",
                     "--threads", "1", "--json", str(out), "--hgrm", str(hgrm), env={"BENCH_JWT_SECRET": SECRET})
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    line = verdict(proc)
    report = json.loads(out.read_text())
    assert report["passed"] is (proc.returncode == 0) and line.startswith("verdict: PASS" if report["passed"] else "verdict: FAIL")
    checks = {(c.get("scope"), c["threshold"]): c for c in report["checks"]}
    assert set(checks) == {(None, "p99<100ms"), (None, "errors<0.1%"), (None, "rate>=0.99"),
                           ("target login-burst", "status:429>=80%")}
    assert checks[(None, "errors<0.1%")]["holds"], report["checks"]
    sent = report["requests"]["sent"]
    assert report["requests"]["scheduled"] == 300 and sent >= 270 and report["requests"]["completed"] == sent
    assert checks[(None, "rate>=0.99")]["observed"] == pytest.approx(sent / 300)
    targets = {t["name"]: t for t in report["targets"]}
    # One event loop, smooth weighted round robin: any prefix of the sequence has the 70/20/10 mix.
    counts = [targets[n]["scheduled"] for n in ("list-bookings", "create-booking", "login-burst")]
    assert sum(counts) == sent
    assert all(abs(count - sent * weight) <= 1 for count, weight in zip(counts, (0.7, 0.2, 0.1))), counts
    assert targets["create-booking"]["status_counts"] == {"201": counts[1]}
    # Five logins reach the upstream (which has no login route: 404), the rest are limited.
    logins = counts[2]
    assert targets["login-burst"]["status_counts"] == {"404": 5, "429": logins - 5}
    assert checks[("target login-burst", "status:429>=80%")]["holds"] is (logins - 5 >= 0.8 * logins)
    parse_hgrm(hgrm.read_text())


def test_ramp_stages_and_warmup(tmp_path, upstream):
    scenario = tmp_path / "ramp.yaml"
    scenario.write_text(textwrap.dedent(f"""\
        url: http://127.0.0.1:{upstream.port}/api/bookings
        connections: 4
        warmup: 500ms
        ramp: [{{rate: 50, for: 1s}}, {{rate: 150, for: 1s}}]
        """))
    before = upstream.stats()["requests"]
    out = tmp_path / "ramp.json"
    proc = run_bench("--scenario", str(scenario), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "ramp 50/s for 1s, 150/s for 1s" in proc.stdout
    report = json.loads(out.read_text())
    stages = report["stages"]
    assert [(s["name"], s["target_rate"], s["duration_s"], s["scheduled"]) for s in stages] == [
        ("stage 1", 50, 1, 50), ("stage 2", 150, 1, 150)]
    assert report["requests"]["scheduled"] == 200 and report["warmup_s"] == 0.5
    assert report["target_rate"] == 100  # the mean over the stages
    for stage in stages:
        assert stage["completed"] >= 0.9 * stage["scheduled"] and stage["errors"]["total"] == 0
    # The warm-up's 25 requests reached the server but no figure: the totals are the stages'.
    sent = report["requests"]["sent"]
    assert report["requests"]["completed"] == sent == sum(s["completed"] for s in stages)
    assert upstream.stats()["requests"] - before == 25 + sent
    # The timeline counts seconds from the end of the warm-up.
    assert [t["second"] for t in report["timeline"]][:2] == [1, 2]

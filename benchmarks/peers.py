#!/usr/bin/env python3
"""The gateway against HAProxy and nginx in ONE run on one machine (SPEC "Benchmarks").

Driven by benchmarks/peers.sh (which installs the tools and builds the release binary). Every server
under test terminates TLS with the same generated certificate, runs one worker pinned to CPU 0, and
proxies to the same upstream; the load generators, the upstream and Redis share CPU 1.

Scenarios (each a row of the result, medians over ROUNDS rounds, servers taking turns):
  A   TLS HTTP/1.1 keep-alive proxy                 wrk -t1 -c64
  B   TLS HTTP/2 proxy                              h2load -c16 -m10
  C   B + HS256 JWT verified                        (HAProxy: jwt_verify)
  D   C + per-IP sliding window, in-process         (HAProxy: a stick table)
  F   D + CORS                                      (HAProxy: hand-written CORS rules)
  Fr  F with the gateway's window in Redis          (compared with HAProxy's F: its table is local)
  E   a new TCP + TLS connection per request        wrk -t1 -c16 -H 'Connection: close'
  h1@rate / h2@rate  p50/p99 at a fixed rate, open loop (`gateway bench --rate`, after a 1 s warm-up at that
                     rate so the client's connections and TLS handshakes are not in the window), on the A/B set-up

The harness is honest only if nothing but the server under test is the limit, so each row reports the
server's CPU % (utime+stime of the process over the run: ~100% means the server was the bottleneck)
and requests per CPU-second, and the upstream's own direct rate is measured and printed first.

Environment: DUR (s, default 10), ROUNDS (default 3), RATE (fixed-rate target, default: half of
HAProxy's A throughput from a calibration run), SCENARIOS (default "A B C D F Fr E rate"), PEERS
(default "gateway haproxy nginx": the servers run),
UPSTREAM (nginx: Debian's nginx answering `return 200` with the 226-byte booking body — the default;
demo: the project's demo-upstream), PEER_SUITES (default: each peer keeps its own TLS 1.3 suite order,
OpenSSL's, which negotiates TLS_AES_256_GCM_SHA384; `gateway`: HAProxy and nginx are given the
gateway's order, AES-128-GCM first, so a row compares the servers' work on the same cipher suite).
"""
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(os.environ["BIN"])
DUR = int(os.environ.get("DUR", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
SCENARIOS = os.environ.get("SCENARIOS", "A B C D F Fr E rate").split()
UPSTREAM_KIND = os.environ.get("UPSTREAM", "nginx")
SAVE = "--save" in sys.argv[1:]
# The gateway's TLS 1.3 order (TLSServerContext.tls13CipherSuites), given to the peers on request.
GATEWAY_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
PEER_SUITES = os.environ.get("PEER_SUITES", "own")
if PEER_SUITES not in ("own", "gateway"):
    sys.exit("PEER_SUITES: own or gateway")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

UP_PORT, REDIS_PORT, GW_PORT, NGINX_PORT, HAPROXY_PORT, ADMIN_PORT = 23101, 26391, 28443, 28444, 28445, 29911
SECRET = "bench-secret-0123456789abcdef0123456789"
ORIGIN = "https://barberpro.com.ar"
PATH_ = "/api/bookings"
# The demo upstream's /api/bookings body (226 bytes), so every upstream answers the same bytes.
BODY = ('{"bookings":[{"id":"bk_1","barber":"Martin","service":"corte","starts_at":"2026-11-27T10:00-03:00",'
        '"status":"confirmed"},{"id":"bk_2","barber":"Luca","service":"barba","starts_at":"2026-11-27T11:30-03:00",'
        '"status":"pending"}]}')
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What each server set-up serves. A set-up is started once per round and faces the scenarios listed.
SETUPS = {
    "base": ["A", "B", "E", "rate"],
    "jwt": ["C"],
    "limit": ["D"],
    "cors": ["F"],
    "cors-redis": ["Fr"],
}
SERVERS = {
    "gateway": ["base", "jwt", "limit", "cors", "cors-redis"],
    "haproxy": ["base", "jwt", "limit", "cors"],
    "nginx": ["base"],
}
# PEERS="gateway haproxy" runs only those servers (e.g. more rounds of the fixed-rate tails in the same time).
SERVERS = {name: setups for name, setups in SERVERS.items() if name in os.environ.get("PEERS", " ".join(SERVERS)).split()}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def save_result(kind, title, text):
    """Writes `results/DATE-kind.md`: a dated title, then `text` (the command, the machine, the table)."""
    day = time.strftime("%Y-%m-%d")
    out = ROOT / f"benchmarks/results/{day}-{kind}.md"
    out.write_text(f"# {day} — {title}\n\n{text}\n")
    log(f"wrote {out}")


def wait_port(port, proc=None, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def cpu_ticks(pid):
    """utime+stime of a process and its descendants (nginx's worker is a child of its master)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime+stime
    total, frontier = 0, [pid]
    while frontier:
        current = frontier.pop()
        total += stats.get(current, (0, 0))[1]
        frontier += [child for child, (ppid, _) in stats.items() if ppid == current]
    return total


def core_ticks(core):
    """(busy, total) jiffies of one CPU since boot, from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            values = [int(v) for v in line.split()[1:]]
            return sum(values) - values[3] - values[4], sum(values)  # idle and iowait are not busy
    raise RuntimeError(f"no cpu{core} in /proc/stat")


def run_load(pid, cmd):
    """Runs one load-generator command on CPU 1 and returns (its stdout+stderr, server CPU seconds, wall s)."""
    text, cpu, wall, _ = run_load_measured(pid, cmd)
    return text, cpu, wall


def run_load_measured(pid, cmd):
    """`run_load`, plus how busy the load core was (%): everything but the server under test runs
    there (load generator, upstream, Redis), so near 100% the run was capped by that core."""
    before, start, core_before = cpu_ticks(pid), time.monotonic(), core_ticks(1)
    out = subprocess.run(["taskset", "-c", "1", *cmd], capture_output=True, text=True)
    wall, cpu = time.monotonic() - start, (cpu_ticks(pid) - before) / CLK_TCK
    core_after = core_ticks(1)
    busy = core_after[0] - core_before[0], core_after[1] - core_before[1]
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({out.returncode}): {out.stderr[-500:]}")
    return out.stdout + out.stderr, cpu, wall, 100 * busy[0] / busy[1] if busy[1] else None


def parse_wrk(text):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, total, errors + (int(non2xx.group(1)) if non2xx else 0)


def parse_h2load(text):
    proto = re.search(r"Application protocol: (\S+)", text)
    if not proto or proto.group(1) != "h2":
        raise RuntimeError(f"h2load did not negotiate h2 ({proto.group(1) if proto else 'no protocol line'})")
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", text)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    bad = int(status.group(3)) + int(status.group(4)) if status else 0
    return rps, int(m.group(1)), int(m.group(2)) + int(m.group(3)) + bad


# --- configurations -------------------------------------------------------------------------------

def gateway_yaml(d, setup):
    jwt = setup != "base"
    lines = [
        "workers: 1",
        "log: { access: false }",
        "listeners:",
        "  - name: public",
        f"    address: 127.0.0.1:{GW_PORT}",
        "    protocols: [h2, http/1.1]",
        f"    tls: {{ certificates: [{{ cert: {d}/dev.crt, key: {d}/dev.key }}] }}",
        f"admin: {{ address: 127.0.0.1:{ADMIN_PORT} }}",
        f"upstreams: {{ booking: {{ endpoints: [127.0.0.1:{UP_PORT}], max_connections: 256 }} }}",
    ]
    if jwt:
        lines += ["jwt:", "  issuer: barberpro-auth", "  audiences: [barberpro-api]",
                  f"  keys: [{{ kid: hs-1, algorithm: HS256, secret: \"{SECRET}\" }}]"]
    if setup in ("limit", "cors", "cors-redis"):
        # A limit no load here reaches: the cost of counting, not of refusing, is measured.
        lines += ["rate_limits:", "  policies:",
                  "    per_ip: { limit: 1000000000, window: 15m, key: client_ip, algorithm: sliding_window }"]
    if setup == "cors-redis":
        lines += [f"redis: {{ url: 'redis://127.0.0.1:{REDIS_PORT}', timeout: 20ms }}"]
    if setup in ("cors", "cors-redis"):
        lines += [f"cors: {{ allowed_origins: [{ORIGIN}], allow_credentials: true,",
                  "        exposed_headers: [ratelimit-limit, ratelimit-remaining, ratelimit-reset, x-request-id] }"]
    route = "  - { name: api, match: { path_prefix: /api/ }, upstream: booking"
    if jwt:
        route += ", auth: required"
    if setup in ("limit", "cors", "cors-redis"):
        route += ", rate_limits: [per_ip]"
    route += ", cors: " + ("true" if setup.startswith("cors") else "false") + " }"
    lines += ["routes:", route]
    return "\n".join(lines) + "\n"


def haproxy_cfg(d, setup):
    rules = []
    if setup in ("jwt", "limit", "cors"):
        rules += [
            "    http-request deny deny_status 401 unless { req.hdr(authorization) -m beg -i \"bearer \" }",
            "    http-request set-var(txn.alg) http_auth_bearer,jwt_header_query('$.alg')",
            "    http-request set-var(txn.iss) http_auth_bearer,jwt_payload_query('$.iss')",
            "    http-request set-var(txn.aud) http_auth_bearer,jwt_payload_query('$.aud')",
            "    http-request set-var(txn.exp) http_auth_bearer,jwt_payload_query('$.exp','int')",
            "    http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }",
            "    http-request deny deny_status 401 unless { var(txn.iss) -m str barberpro-auth }",
            "    http-request deny deny_status 401 unless { var(txn.aud) -m str barberpro-api }",
            "    http-request set-var(txn.now) date()",
            "    http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }",
            f"    http-request deny deny_status 401 unless {{ http_auth_bearer,jwt_verify(txn.alg,\"{SECRET}\") -m int 1 }}",
            "    http-request set-header x-user-id %[http_auth_bearer,jwt_payload_query('$.sub')]",
        ]
    table = ""
    if setup in ("limit", "cors"):
        table = "    stick-table type ip size 100k expire 15m store http_req_rate(15m)\n"
        rules = ["    http-request track-sc0 src",
                 "    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 1000000000 }"] + rules
        rules += ["    http-response set-header ratelimit-limit 1000000000",
                  "    http-response set-header ratelimit-remaining %[sc_http_req_rate(0),neg,add(1000000000)]"]
    if setup == "cors":
        rules += [
            "    http-request set-var(txn.origin) req.hdr(origin)",
            f"    http-response set-header access-control-allow-origin %[var(txn.origin)] if {{ var(txn.origin) -m str {ORIGIN} }}",
            f"    http-response set-header access-control-allow-credentials true if {{ var(txn.origin) -m str {ORIGIN} }}",
            "    http-response set-header access-control-expose-headers \"ratelimit-limit, ratelimit-remaining, ratelimit-reset, x-request-id\"",
            "    http-response add-header vary origin",
        ]
    suites = f"    ssl-default-bind-ciphersuites {GATEWAY_SUITES}\n" if PEER_SUITES == "gateway" else ""
    return f"""global
    nbthread 1
{suites}    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    http-reuse always
frontend fe
    bind 127.0.0.1:{HAPROXY_PORT} ssl crt {d}/haproxy.pem alpn h2,http/1.1
{table}    option forwardfor
    http-request set-header X-Forwarded-Proto https
{chr(10).join(rules)}
    default_backend be
backend be
    server up 127.0.0.1:{UP_PORT}
"""


def nginx_temp_paths(d, name):
    base = f"{d}/{name}"
    os.makedirs(base, exist_ok=True)
    return "\n".join(f"    {k}_temp_path {base}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def nginx_proxy_conf(d):
    return f"""worker_processes 1;
daemon off;
pid {d}/nginx-proxy.pid;
error_log {d}/nginx-proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{nginx_temp_paths(d, "nginx-proxy")}
    keepalive_requests 1000000;
    upstream up {{ server 127.0.0.1:{UP_PORT}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{NGINX_PORT} ssl http2;
        ssl_certificate {d}/dev.crt;
        ssl_certificate_key {d}/dev.key;
        ssl_protocols TLSv1.2 TLSv1.3;
{f"        ssl_conf_command Ciphersuites {GATEWAY_SUITES}; ssl_prefer_server_ciphers on;" if PEER_SUITES == "gateway" else ""}
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
"""


def nginx_upstream_conf(d):
    body = BODY.replace("'", "\\'")
    return f"""worker_processes 1;
daemon off;
pid {d}/nginx-up.pid;
error_log {d}/nginx-up-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{nginx_temp_paths(d, "nginx-up")}
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{UP_PORT} backlog=4096;
        location / {{ default_type application/json; return 200 '{body}'; }}
    }}
}}
"""


# --- the run --------------------------------------------------------------------------------------

def with_loops(config, one_loop, wanted):
    """`config` with its one-loop line replaced; an error if the line is not there, so a changed
    template cannot silently measure one loop as two."""
    if one_loop == wanted:
        return config
    if one_loop not in config:
        raise RuntimeError(f"the server config has no {one_loop!r} line to change")
    return config.replace(one_loop, wanted)


class Run:
    def __init__(self, d):
        self.d = d
        self.procs = []
        # Extra environment for the servers under test (the budget's allocation counter).
        self.server_env = {}
        self.token = subprocess.run([str(BIN / "gateway"), "token", "--secret", SECRET, "--sub", "bench-user",
                                     "--ttl", "2h"], capture_output=True, text=True, check=True).stdout.strip()

    def spawn(self, cpu, cmd, port, env=None):
        proc = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                stderr=open(f"{self.d}/{Path(cmd[0]).name}.{port}.log", "ab"))
        self.procs.append(proc)
        wait_port(port, proc)
        return proc

    def stop(self, proc):
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.procs.remove(proc)

    def stop_all(self):
        for proc in list(self.procs):
            self.stop(proc)

    def start_server(self, server, setup, cpus=0, loops=1):
        """The server under test on `cpus`; `loops` event loops (the gateway's `workers`, HAProxy's
        `nbthread`; nginx keeps its one worker)."""
        d = self.d
        if server == "gateway":
            Path(f"{d}/gw-{setup}.yaml").write_text(with_loops(gateway_yaml(d, setup), "workers: 1", f"workers: {loops}"))
            return self.spawn(cpus, [str(BIN / "gateway"), "run", "--config", f"{d}/gw-{setup}.yaml"], GW_PORT,
                              self.server_env), GW_PORT
        if server == "haproxy":
            Path(f"{d}/haproxy-{setup}.cfg").write_text(with_loops(haproxy_cfg(d, setup), "nbthread 1", f"nbthread {loops}"))
            return self.spawn(cpus, [HAPROXY, "-db", "-f", f"{d}/haproxy-{setup}.cfg"], HAPROXY_PORT,
                              self.server_env), HAPROXY_PORT
        Path(f"{d}/nginx-proxy.conf").write_text(nginx_proxy_conf(d))
        return self.spawn(cpus, [NGINX, "-p", d, "-c", f"{d}/nginx-proxy.conf", "-e", f"{d}/nginx-proxy-error.log"],
                          NGINX_PORT, self.server_env), NGINX_PORT

    def headers(self, scenario):
        h = []
        if scenario in ("C", "D", "F", "Fr"):
            h += ["-H", f"authorization: Bearer {self.token}"]
        if scenario in ("F", "Fr"):
            h += ["-H", f"origin: {ORIGIN}"]
        return h

    def load(self, pid, port, scenario, rate):
        """One scenario against a running server: a dict of the row's numbers."""
        url = f"https://127.0.0.1:{port}{PATH_}"
        if scenario == "A":
            text, cpu, wall, load_core = run_load_measured(pid, ["wrk", "-t1", "-c64", f"-d{DUR}s", url])
            rps, total, errors = parse_wrk(text)
        elif scenario == "E":
            text, cpu, wall, load_core = run_load_measured(pid, ["wrk", "-t1", "-c16", f"-d{DUR}s", "-H", "Connection: close", url])
            rps, total, errors = parse_wrk(text)
        elif scenario == "rate":
            row = {}
            for proto, extra in (("h1", ["--connections", "64"]), ("h2", ["--http2", "--connections", "4", "--streams", "16"])):
                out = f"{self.d}/rate.json"
                _, cpu, wall, load_core = run_load_measured(pid, [str(BIN / "gateway"), "bench", "--url", url, "--rate", str(rate),
                                                                  "--duration", f"{DUR}s", "--warmup", "1s", "--threads", "1",
                                                                  "--insecure", "--quiet", "--json", out, *extra])
                r = json.load(open(out))
                row[proto] = {"rps": r["throughput_rps"], "p50": r["latency_ms"]["p50"], "p99": r["latency_ms"]["p99"],
                              "errors": r["errors"]["total"], "cpu": 100 * cpu / wall, "load_core": load_core}
            return row
        else:
            text, cpu, wall, load_core = run_load_measured(pid, ["h2load", "-c16", "-m10", "-D", str(DUR), *self.headers(scenario), url])
            rps, total, errors = parse_h2load(text)
        return {"rps": rps, "errors": errors, "cpu": 100 * cpu / wall, "per_cpu_s": total / cpu if cpu else None,
                "load_core": load_core}

    def warm(self, port, scenario):
        url = f"https://127.0.0.1:{port}{PATH_}"
        subprocess.run(["taskset", "-c", "1", "h2load", "-c16", "-m10", "-D", "2", *self.headers(scenario), url],
                       capture_output=True)
        subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", "-d2s", *self.headers(scenario), url],
                       capture_output=True)


def set_up(run, d, upstream="nginx"):
    """The throwaway certificate (and HAProxy's PEM of it) in `d`, the upstream started on CPU 1."""
    subprocess.run([str(ROOT / "scripts/dev-cert.sh"), d], check=True, capture_output=True)
    Path(f"{d}/haproxy.pem").write_text(Path(f"{d}/dev.crt").read_text() + Path(f"{d}/dev.key").read_text())
    if upstream == "nginx":
        Path(f"{d}/nginx-up.conf").write_text(nginx_upstream_conf(d))
        run.spawn(1, [NGINX, "-p", d, "-c", f"{d}/nginx-up.conf", "-e", f"{d}/nginx-up-error.log"], UP_PORT)
    else:
        run.spawn(1, [str(BIN / "demo-upstream"), "--port", str(UP_PORT)], UP_PORT)


NEGOTIATED = {}  # server -> the TLS version and suite a default OpenSSL client gets


def negotiated_suite(port):
    """What `openssl s_client` (the load tools' library, defaults) negotiates with a server."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost"],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"New, (TLSv[\d.]+), Cipher is (\S+)", out)
    return f"{match.group(1)} {match.group(2)}" if match else "unknown"


def main():
    d = tempfile.mkdtemp(prefix="peers-")
    run = Run(d)
    try:
        set_up(run, d, UPSTREAM_KIND)
        if "Fr" in SCENARIOS:
            run.spawn(1, ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no"], REDIS_PORT)
        direct = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", "-d3s", f"http://127.0.0.1:{UP_PORT}{PATH_}"],
                                capture_output=True, text=True, check=True).stdout
        upstream_rps = parse_wrk(direct)[0]
        log(f"upstream ({UPSTREAM_KIND}) direct: {upstream_rps:,.0f} req/s (wrk -t1 -c64, plain HTTP, CPU 1)")

        rate = os.environ.get("RATE")
        if not rate and "rate" in SCENARIOS:
            proc, port = run.start_server("haproxy", "base")
            run.warm(port, "A")
            rate = str(int(run.load(proc.pid, port, "A", None)["rps"] / 2))
            run.stop(proc)
            log(f"fixed rate: {rate}/s (half of HAProxy's A in a calibration run)")

        results = {}  # (server, scenario) -> [row per round]
        for rnd in range(1, ROUNDS + 1):
            for setup, scenarios in SETUPS.items():
                wanted = [s for s in scenarios if s in SCENARIOS]
                if not wanted:
                    continue
                for server, setups in SERVERS.items():
                    if setup not in setups:
                        continue
                    proc, port = run.start_server(server, setup)
                    log(f"== round {rnd}: {server} {setup} (pid {proc.pid} on CPU 0): {' '.join(wanted)}")
                    if server not in NEGOTIATED:
                        NEGOTIATED[server] = negotiated_suite(port)
                        log(f"{server} negotiates {NEGOTIATED[server]}")
                    run.warm(port, wanted[0])
                    for scenario in wanted:
                        results.setdefault((server, scenario), []).append(run.load(proc.pid, port, scenario, rate))
                    run.stop(proc)
    finally:
        run.stop_all()
        shutil.rmtree(d, ignore_errors=True)

    report(results, upstream_rps, rate)


def med(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def report(results, upstream_rps, rate):
    labels = {"A": "A: TLS h1 keep-alive (`wrk -t1 -c64`)", "B": "B: TLS h2 (`h2load -c16 -m10`)",
              "C": "C: B + HS256 JWT", "D": "D: C + per-IP limit (in-process / stick table)",
              "F": "F: D + CORS", "Fr": "F with the gateway's window in Redis (HAProxy: F, local table)",
              "E": "E: new TLS connection per request (conn/s)"}
    lines = [f"Upstream: {UPSTREAM_KIND}, {upstream_rps:,.0f} req/s direct (plain h1, `wrk -t1 -c64` on CPU 1).",
             "TLS negotiated (PEER_SUITES=" + PEER_SUITES + "): "
             + "; ".join(f"{server} {suite}" for server, suite in NEGOTIATED.items()) + ".",
             f"Medians of {ROUNDS} rounds, {DUR} s each; CPU % is the server process's utime+stime over the load "
             "(≈100% = the server was the limit); req/CPU-s = requests served per second of server CPU; "
             "load core % = how busy CPU 1 was in the gateway's / HAProxy's runs (load generator, upstream and, "
             "for Fr, Redis: ≈100% = that core was the limit, not the server).", "",
             "| scenario | gateway req/s | CPU % | req/CPU-s | HAProxy req/s | CPU % | req/CPU-s | ratio | nginx req/s | CPU % | load core % g/h | errors g/h/n | ratio per round |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"]

    def core_cell(server, scenario):
        busy = med(results.get((server, scenario), []), "load_core")
        return f"{busy:.0f}" if busy is not None else "—"

    def cell(server, scenario):
        rows = results.get((server, scenario))
        if not rows:
            return ["—", "—", "—"], None, 0
        rps, cpu, per = med(rows, "rps"), med(rows, "cpu"), med(rows, "per_cpu_s")
        return [f"{rps:,.0f}", f"{cpu:.0f}", f"{per:,.0f}" if per else "—"], rps, sum(r["errors"] for r in rows)

    for scenario in ["A", "B", "C", "D", "F", "Fr", "E"]:
        if ("gateway", scenario) not in results:
            continue
        g, g_rps, g_err = cell("gateway", scenario)
        h, h_rps, h_err = cell("haproxy", "F" if scenario == "Fr" else scenario)
        n, _, n_err = cell("nginx", scenario)
        ratio = f"{g_rps / h_rps:.2f}" if g_rps and h_rps else "—"
        load = "/".join(core_cell(server, "F" if server == "haproxy" and scenario == "Fr" else scenario)
                        for server in ("gateway", "haproxy"))
        # Rounds run the servers one after the other, so a round's pair shares the machine's speed
        # of the moment: a median ratio carried by one odd round shows here.
        pairs = zip(results.get(("gateway", scenario), []), results.get(("haproxy", "F" if scenario == "Fr" else scenario), []))
        per_round = ", ".join(f"{g_row['rps'] / h_row['rps']:.2f}" for g_row, h_row in pairs if g_row["rps"] and h_row["rps"]) or "—"
        lines.append(f"| {labels[scenario]} | {' | '.join(g)} | {' | '.join(h)} | {ratio} | {n[0]} | {n[1]} | {load} | {g_err}/{h_err}/{n_err} | {per_round} |")

    if ("gateway", "A") in results and ("gateway", "B") in results:
        a, b = med(results[("gateway", "A")], "rps"), med(results[("gateway", "B")], "rps")
        lines += ["", f"Gateway HTTP/2 over HTTP/1.1 (B/A): {b / a:.2f} (target ≥ 1.3)."]

    if ("gateway", "rate") in results:
        lines += ["", f"Fixed rate {rate}/s, open loop (`gateway bench`, 1 s warm-up; h1: 64 connections, h2: 4 × 16 streams), latency µs:", "",
                  "| server | h1 p50 | h1 p99 | h1 CPU % | h2 p50 | h2 p99 | h2 CPU % | load core % h1/h2 | p99 per round h1; h2 | errors |",
                  "|---|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
        p99 = {}
        for server in SERVERS:
            rows = results.get((server, "rate"))
            if not rows:
                continue
            h1, h2 = ([r[proto] for r in rows] for proto in ("h1", "h2"))
            p99[server] = (med(h1, "p99") * 1000, med(h2, "p99") * 1000)
            per_round = "; ".join(", ".join(f"{r['p99'] * 1000:.0f}" for r in sub) for sub in (h1, h2))
            errors = sum(r["errors"] for r in h1 + h2)
            lines.append(f"| {server} | {med(h1, 'p50') * 1000:.0f} | {p99[server][0]:.0f} | {med(h1, 'cpu'):.0f} | "
                         f"{med(h2, 'p50') * 1000:.0f} | {p99[server][1]:.0f} | {med(h2, 'cpu'):.0f} | "
                         f"{med(h1, 'load_core'):.0f}/{med(h2, 'load_core'):.0f} | {per_round} | {errors} |")
        if "gateway" in p99 and "haproxy" in p99:
            lines.append(f"\np99 ratio gateway/HAProxy at that rate: h1 {p99['gateway'][0] / p99['haproxy'][0]:.2f}, "
                         f"h2 {p99['gateway'][1] / p99['haproxy'][1]:.2f} (target ≤ 1.5).")
    table = "\n".join(lines)
    print(table)
    if SAVE:
        versions = (f"nginx {subprocess.run([NGINX, '-v'], capture_output=True, text=True).stderr.strip().split('/')[-1]}, "
                    f"HAProxy {subprocess.run([HAPROXY, '-v'], capture_output=True, text=True).stdout.split()[2]}, "
                    f"h2load {subprocess.run(['h2load', '--version'], capture_output=True, text=True).stdout.split()[1]}")
        cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        save_result(
            "peers", "gateway vs HAProxy and nginx, one run",
            f"Command: `DUR={DUR} ROUNDS={ROUNDS} benchmarks/peers.sh --save` (release build). Every server terminates TLS "
            "with the same generated P-256 certificate and proxies `GET /api/bookings` (226-byte body) over HTTP/1.1 "
            "keep-alive; no access logs. Server under test on CPU 0 (one worker/thread); load generators, upstream and "
            "Redis on CPU 1.\n\n"
            f"Machine: {os.cpu_count()} cores, {cpu_model}, kernel {os.uname().release}; {versions}. "
            f"Load average at the end: {open('/proc/loadavg').read().split()[:3]}.\n\n{table}")


if __name__ == "__main__":
    main()

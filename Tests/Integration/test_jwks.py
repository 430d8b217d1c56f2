"""jwt.jwks_url through the real gateway: a local HTTPS JWKS server (certificate from a throwaway
CA made with the openssl CLI, trusted through jwt.jwks_ca) that counts its hits and can change its
key set, its Cache-Control, or go away. Tokens are signed by PyJWT with RSA keys from cryptography.
"""
import json
import ssl
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from conftest import free_port

SECRET = "integration-secret-0123456789-abcdefgh"

ROUTES = """\
  - name: secure
    match: { host: secure.test, path_prefix: /api/ }
    upstream: booking
    auth: required
"""


def make_test_ca(d, name):
    """A throwaway CA in `d` and a certificate for 127.0.0.1 (and localhost) it signed; never
    committed. Returns `d`, holding ca.crt, server.crt and server.key."""
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", f"/CN={name} test CA", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext.cnf"), "-out", str(d / "server.crt"))
    return d


@pytest.fixture(scope="module")
def jwks_ca(tmp_path_factory):
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    d = make_test_ca(tmp_path_factory.mktemp("jwks-ca"), "jwks")
    return {"ca": d / "ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


class RSAKey:
    def __init__(self, kid):
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self):
        out = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        out.update({"kid": self.kid, "alg": "RS256", "use": "sig"})
        return out

    def token(self, kid=None, **overrides):
        now = int(time.time())
        claims = {"iss": "barberpro-auth", "aud": "barberpro-api", "sub": "u-jwks", "iat": now, "exp": now + 600}
        claims.update(overrides)
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": kid or self.kid})


@pytest.fixture(scope="module")
def keys():
    return {name: RSAKey(name) for name in ("rs-a", "rs-b")}


class JWKSServer:
    """HTTPS on 127.0.0.1:`port`; `keys` and `cache_control` can change between requests."""

    def __init__(self, ca, port=None):
        self.ca = ca
        self.port = port or free_port()
        self.keys = []
        self.cache_control = "max-age=300"
        self.hits = 0
        self.lock = threading.Lock()
        self.httpd = None

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}/.well-known/jwks.json"

    def start(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                with server.lock:
                    server.hits += 1
                    body = json.dumps({"keys": [k.jwk() for k in server.keys]}).encode()
                    cache_control = server.cache_control
                self.send_response(200)
                self.send_header("Content-Type", "application/jwk-set+json")
                self.send_header("Content-Length", str(len(body)))
                if cache_control:
                    self.send_header("Cache-Control", cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.ca["cert"]), str(self.ca["key"]))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.allow_reuse_address = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def hit_count(self):
        with self.lock:
            return self.hits


@pytest.fixture
def jwks_server(jwks_ca):
    servers = []

    def make(start=True):
        s = JWKSServer(jwks_ca)
        if start:
            s.start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


def start_gateway(gateway_factory, upstream, server, ca, refresh=""):
    top = f"""\
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys:
    - {{ kid: hs-1, algorithm: HS256, secret: "{SECRET}" }}
  jwks_url: {server.url}
  jwks_ca: {ca["ca"]}
{refresh}"""
    return gateway_factory(upstream.port, top_extra=top, extra_routes=ROUTES)


def status(gw, tok):
    with httpx.Client(verify=False, timeout=10) as c:
        r = c.get(gw.url("/api/bookings"), headers={"Host": "secure.test", "Authorization": f"Bearer {tok}"})
        return r.status_code, r.headers.get("www-authenticate", "")


def hs_token():
    now = int(time.time())
    return jwt.encode({"iss": "barberpro-auth", "aud": "barberpro-api", "sub": "u-hs", "iat": now, "exp": now + 600},
                      SECRET, algorithm="HS256", headers={"kid": "hs-1"})


def wait_for(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_jwks_keys_verify_and_unknown_kids_fetch_once(gateway_factory, upstream, jwks_server, jwks_ca, keys):
    server = jwks_server()
    server.keys = [keys["rs-a"]]
    gw = start_gateway(gateway_factory, upstream, server, jwks_ca)
    # No token before the start-up fetch has landed: an early unknown kid would spend the refetch.
    assert wait_for(lambda: server.hit_count() == 1)
    time.sleep(0.5)
    assert status(gw, keys["rs-a"].token())[0] == 200, gateway_log(gw)
    assert status(gw, hs_token())[0] == 200  # static keys stay
    assert server.hit_count() == 1

    # An unknown kid: 401 unknown_key at once, and one refetch in the background.
    code, challenge = status(gw, keys["rs-a"].token(kid="nobody"))
    assert code == 401 and 'error_description="unknown_key"' in challenge
    assert wait_for(lambda: server.hit_count() == 2)
    # Many random kids within the 30 s window: still that one fetch.
    for _ in range(40):
        assert status(gw, keys["rs-a"].token(kid=str(uuid.uuid4())))[0] == 401
    time.sleep(0.5)
    assert server.hit_count() == 2
    assert status(gw, keys["rs-a"].token())[0] == 200


def gateway_log(gw):
    """The gateway's stderr (its JWKS fetch log), for assertion messages: stops the gateway."""
    gw.stop()
    return gw.proc.stderr.read()


def test_rotated_key_is_accepted_once_published(gateway_factory, upstream, jwks_server, jwks_ca, keys):
    server = jwks_server()
    server.keys = [keys["rs-a"]]
    # A 1 s unknown-kid interval, so that a refetch spent while the start-up fetch was still
    # landing (a slow machine) cannot hold back the one this test is about.
    gw = start_gateway(gateway_factory, upstream, server, jwks_ca,
                       refresh="  jwks_refresh: { unknown_kid_interval: 1s }\n")
    assert wait_for(lambda: status(gw, keys["rs-a"].token())[0] == 200)
    time.sleep(1.1)
    before = server.hit_count()

    server.keys = [keys["rs-a"], keys["rs-b"]]
    first = status(gw, keys["rs-b"].token())[0]
    assert first in (200, 401)  # 200 only if the triggered refetch won the race
    assert wait_for(lambda: server.hit_count() == before + 1), gateway_log(gw)
    assert wait_for(lambda: status(gw, keys["rs-b"].token())[0] == 200, timeout=5), gateway_log(gw)
    assert status(gw, keys["rs-a"].token())[0] == 200


def test_refresh_follows_cache_control_and_keeps_last_good_keys(gateway_factory, upstream, jwks_server, jwks_ca, keys):
    server = jwks_server()
    server.keys = [keys["rs-a"]]
    server.cache_control = "public, max-age=1"
    gw = start_gateway(gateway_factory, upstream, server, jwks_ca,
                       refresh="  jwks_refresh: { min: 1s, max: 1h }\n")
    assert wait_for(lambda: status(gw, keys["rs-a"].token())[0] == 200)
    # max-age=1 → refetched about every second, in the background.
    assert wait_for(lambda: server.hit_count() >= 3, timeout=6)

    # Background rotation without any unknown-kid nudge: rs-a withdrawn, rs-b published.
    server.keys = [keys["rs-b"]]
    assert wait_for(lambda: status(gw, keys["rs-a"].token())[0] == 401, timeout=5)
    assert status(gw, keys["rs-b"].token())[0] == 200

    # The JWKS server goes away: the last good set keeps verifying.
    server.stop()
    time.sleep(3)  # several failed refreshes
    assert status(gw, keys["rs-b"].token())[0] == 200
    assert status(gw, hs_token())[0] == 200


def test_unreachable_jwks_at_start_then_reachable(gateway_factory, upstream, jwks_server, jwks_ca, keys):
    server = jwks_server(start=False)
    server.keys = [keys["rs-a"]]
    gw = start_gateway(gateway_factory, upstream, server, jwks_ca,
                       refresh="  jwks_refresh: { min: 2s, max: 1h }\n")
    # The gateway started; static keys work, JWKS tokens get 401 (unknown_key) meanwhile.
    assert status(gw, hs_token())[0] == 200
    code, challenge = status(gw, keys["rs-a"].token())
    assert code == 401 and "unknown_key" in challenge
    server.start()
    # Retries back off from 1 s up to the 2 s floor: the keys arrive within a few seconds.
    assert wait_for(lambda: status(gw, keys["rs-a"].token())[0] == 200, timeout=10)


def test_untrusted_jwks_certificate_is_not_used(gateway_factory, upstream, jwks_server, jwks_ca, keys, certs):
    """Without jwks_ca (system store) or with the wrong CA, the throwaway CA is not trusted: no keys."""
    server = jwks_server()
    server.keys = [keys["rs-a"]]
    top = f"""\
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys:
    - {{ kid: hs-1, algorithm: HS256, secret: "{SECRET}" }}
  jwks_url: {server.url}
  jwks_ca: {certs["default"][0]}
"""
    gw = gateway_factory(upstream.port, top_extra=top, extra_routes=ROUTES)
    time.sleep(1.5)
    assert status(gw, keys["rs-a"].token())[0] == 401
    assert status(gw, hs_token())[0] == 200
    assert server.hit_count() == 0  # the handshake failed before any request
    # ... and it was tried: a gateway that never fetched would pass the checks above.
    log = gateway_log(gw)
    assert "jwt.jwks_url: fetch failed" in log and "certificate" in log, log


def test_validate_does_not_fetch(jwks_server, jwks_ca, tmp_path, certs):
    from conftest import GATEWAY, config_text
    server = jwks_server()
    top = f"""\
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  jwks_url: {server.url}
  jwks_ca: {jwks_ca["ca"]}
"""
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text(certs, 1, top_extra=top, extra_routes=ROUTES))
    out = subprocess.run([str(GATEWAY), "validate", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    time.sleep(0.3)
    assert server.hit_count() == 0
    path.write_text(config_text(certs, 1, top_extra=top.replace("https://", "http://"), extra_routes=ROUTES))
    out = subprocess.run([str(GATEWAY), "validate", "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 1 and "jwt.jwks_url: must be an https:// URL" in out.stdout + out.stderr


def test_reload_keeps_jwks_keys_and_stops_the_old_refresher(gateway_factory, upstream, jwks_server, jwks_ca, keys):
    server = jwks_server()
    server.keys = [keys["rs-a"]]
    gw = start_gateway(gateway_factory, upstream, server, jwks_ca)
    assert wait_for(lambda: status(gw, keys["rs-a"].token())[0] == 200)
    # The JWKS server goes away, then the config is reloaded (same jwks_url): the new snapshot
    # starts from the last good key set instead of an empty one.
    server.stop()
    gw.config_path.write_text(gw.config_path.read_text().replace("max_body_bytes: 2MiB", "max_body_bytes: 1MiB"))
    r = httpx.post(gw.url("/config/reload", listener="admin"), timeout=10)
    assert r.status_code == 200 and r.json()["result"] == "success", r.text
    time.sleep(0.5)
    assert status(gw, keys["rs-a"].token())[0] == 200
    assert status(gw, hs_token())[0] == 200

"""JWT on routes, CORS and the trusted client IP through the real gateway over TLS.

Tokens are made by PyJWT (an implementation independent of ours); the demo upstream's
/api/echo-headers shows what the gateway forwarded.
"""
import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

SECRET = "integration-secret-0123456789-abcdefgh"
ORIGIN = "https://book.barberpro.com.ar"

CORS_AND_JWT = """\
cors:
  allowed_origins: [https://barberpro.com.ar, "https://*.barberpro.com.ar"]
  allowed_methods: [GET, POST, PUT, DELETE]
  allowed_headers: [authorization, content-type]
  exposed_headers: [x-request-id]
  allow_credentials: true
  max_age: 10m
jwt:
  issuer: barberpro-auth
  audiences: [barberpro-api]
  keys:
    - { kid: hs-1, algorithm: HS256, secret: "%s" }
    - { kid: es-1, algorithm: ES256, public_key: %s }
  forward_claims: { sub: x-user-id, role: x-user-role }
"""

ROUTES = """\
  - name: secure
    match: { host: secure.test, path_prefix: /api/ }
    upstream: booking
    auth: required
  - name: admin
    match: { host: admin.test, path_prefix: /api/ }
    upstream: booking
    auth: required
    require_claims: { role: [admin] }
  - name: optional
    match: { host: opt.test, path_prefix: /api/ }
    upstream: booking
    auth: optional
  - name: nocors
    match: { host: nocors.test, path_prefix: /api/ }
    upstream: booking
    cors: false
"""


@pytest.fixture(scope="module")
def es_key(tmp_path_factory):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path_factory.mktemp("keys") / "es1.pem"
    path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, path


def start(gateway_factory, upstream, es_key, trusted=False):
    top = CORS_AND_JWT % (SECRET, es_key[1])
    if trusted:
        top += "client_ip:\n  trusted_proxies: [127.0.0.1/32]\n  header: cf-connecting-ip\n"
    return gateway_factory(upstream.port, top_extra=top, extra_routes=ROUTES)


@pytest.fixture
def gw(gateway_factory, upstream, es_key):
    return start(gateway_factory, upstream, es_key)


def token(secret=SECRET, kid="hs-1", algorithm="HS256", **overrides):
    now = int(time.time())
    claims = {"iss": "barberpro-auth", "aud": "barberpro-api", "sub": "u-42", "role": "barber",
              "iat": now, "exp": now + 600}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, secret, algorithm=algorithm, headers={"kid": kid} if kid else None)


# Every test here runs over HTTP/1.1 and over HTTP/2: the policies live in one pipeline.
HTTP2 = False


@pytest.fixture(autouse=True, params=["h1", "h2"])
def protocol(request):
    global HTTP2
    HTTP2 = request.param == "h2"
    yield request.param
    HTTP2 = False


def get(gw, path, host, headers=None, method="GET"):
    with httpx.Client(verify=False, timeout=10, http2=HTTP2) as c:
        r = c.request(method, gw.url(path), headers={"Host": host, **(headers or {})})
        assert r.http_version == ("HTTP/2" if HTTP2 else "HTTP/1.1")
        return r


def echoed(response):
    out = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def bearer(t):
    return {"Authorization": f"Bearer {t}"}


# --- JWT -------------------------------------------------------------------------------------

def test_valid_token_is_forwarded_with_claims(gw):
    r = get(gw, "/api/echo-headers", "secure.test", {**bearer(token()), "X-User-Id": "spoofed", "X-User-Role": "admin"})
    assert r.status_code == 200, r.text
    h = echoed(r)
    assert h["x-user-id"] == ["u-42"]
    assert h["x-user-role"] == ["barber"]


def test_es256_token_from_a_pem_public_key(gw, es_key):
    t = token(secret=es_key[0], kid="es-1", algorithm="ES256", sub="u-es")
    r = get(gw, "/api/echo-headers", "secure.test", bearer(t))
    assert r.status_code == 200, r.text
    assert echoed(r)["x-user-id"] == ["u-es"]


@pytest.mark.parametrize("make,description", [
    (lambda: token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "expired"),
    (lambda: token(secret="some-other-secret-0123456789-abcdefgh"), "bad_signature"),
    (lambda: token(iss="someone-else"), "wrong_issuer"),
    (lambda: token(aud="other-api"), "wrong_audience"),
    (lambda: token(exp=None), "missing_claim"),
    (lambda: token(kid="unknown"), "unknown_key"),
    (lambda: "not-a-jwt", "malformed"),
])
def test_invalid_tokens_are_401_with_a_description(gw, make, description):
    t = make()
    r = get(gw, "/api/echo-headers", "secure.test", bearer(t))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_token"
    assert r.headers["www-authenticate"] == \
        f'Bearer realm="api", error="invalid_token", error_description="{description}"'
    assert t not in r.text and SECRET not in r.text


def test_alg_none_is_refused(gw):
    unsigned = jwt.encode({"iss": "barberpro-auth", "aud": "barberpro-api", "sub": "x",
                           "exp": int(time.time()) + 60}, None, algorithm="none")
    r = get(gw, "/api/echo-headers", "secure.test", bearer(unsigned))
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_hs256_signed_with_the_public_key_is_refused(gw, es_key):
    # Algorithm confusion: the ES256 key's PEM used as an HMAC secret under its kid (PyJWT refuses
    # to make such a token, so it is signed by hand).
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    now = int(time.time())
    signing_input = b64(json.dumps({"alg": "HS256", "kid": "es-1"}).encode()) + "." + b64(json.dumps(
        {"iss": "barberpro-auth", "aud": "barberpro-api", "sub": "x", "iat": now, "exp": now + 60}).encode())
    mac = hmac.new(es_key[1].read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    forged = signing_input + "." + b64(mac)
    r = get(gw, "/api/echo-headers", "secure.test", bearer(forged))
    assert r.status_code == 401


def test_missing_token_is_a_bare_challenge(gw):
    r = get(gw, "/api/echo-headers", "secure.test")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="api"'
    assert r.json()["error"]["request_id"] == r.headers["x-request-id"]


def test_optional_route(gw):
    anonymous = get(gw, "/api/echo-headers", "opt.test", {"X-User-Id": "spoofed"})
    assert anonymous.status_code == 200
    assert "x-user-id" not in echoed(anonymous)
    assert get(gw, "/api/echo-headers", "opt.test", bearer(token(sub="u-opt"))).status_code == 200
    bad = get(gw, "/api/echo-headers", "opt.test", bearer(token(secret="some-other-secret-0123456789-abcdefgh")))
    assert bad.status_code == 401


def test_require_claims_is_403(gw):
    r = get(gw, "/api/echo-headers", "admin.test", bearer(token(role="barber")))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    ok = get(gw, "/api/echo-headers", "admin.test", bearer(token(role="admin")))
    assert ok.status_code == 200 and echoed(ok)["x-user-role"] == ["admin"]


def test_claim_headers_stripped_on_auth_none_routes(gw):
    r = get(gw, "/api/echo-headers", "localhost", {"X-User-Id": "spoofed", "x-user-role": "admin"})
    assert r.status_code == 200
    h = echoed(r)
    assert "x-user-id" not in h and "x-user-role" not in h


def test_token_cli_output_is_accepted(gw):
    import subprocess
    from conftest import GATEWAY
    out = subprocess.run([str(GATEWAY), "token", "--secret", SECRET, "--sub", "u-cli", "--role", "admin", "--kid", "hs-1"],
                         capture_output=True, text=True, check=True).stdout.strip()
    decoded = jwt.decode(out, SECRET, algorithms=["HS256"], audience="barberpro-api", issuer="barberpro-auth")
    assert decoded["sub"] == "u-cli" and decoded["exp"] - decoded["iat"] == 3600
    r = get(gw, "/api/echo-headers", "admin.test", bearer(out))
    assert r.status_code == 200 and echoed(r)["x-user-id"] == ["u-cli"]


# --- CORS ------------------------------------------------------------------------------------

def preflight(gw, origin, method="PUT", request_headers="authorization, content-type", host="secure.test"):
    h = {"Origin": origin, "Access-Control-Request-Method": method}
    if request_headers:
        h["Access-Control-Request-Headers"] = request_headers
    return get(gw, "/api/echo-headers", host, h, method="OPTIONS")


def test_preflight_allowed_needs_no_token(gw, upstream):
    before = upstream.stats()["requests"]
    r = preflight(gw, ORIGIN)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-methods"] == "GET, POST, PUT, DELETE"
    assert r.headers["access-control-allow-headers"] == "authorization, content-type"
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-max-age"] == "600"
    assert "origin" in r.headers["vary"].lower()
    assert "transfer-encoding" not in r.headers and r.content == b""
    assert upstream.stats()["requests"] == before  # never proxied
    # The 204 leaves the connection usable: a preflight and its request on one connection.
    with httpx.Client(verify=False, timeout=10) as c:
        h = {"Host": "secure.test", "Origin": ORIGIN}
        assert c.options(gw.url("/api/echo-headers"), headers={**h, "Access-Control-Request-Method": "PUT"}).status_code == 204
        assert c.put(gw.url("/api/echo-headers"), headers={**h, **bearer(token())}).status_code == 200


@pytest.mark.parametrize("origin,method,headers", [
    ("https://evilbarberpro.com.ar", "PUT", None),
    ("https://barberpro.com.ar.evil.com", "PUT", None),
    ("http://book.barberpro.com.ar", "PUT", None),
    ("https://book.barberpro.com.ar:8443", "PUT", None),
    ("null", "PUT", None),
    (ORIGIN, "PATCH", None),
    (ORIGIN, "PUT", "x-debug"),
])
def test_preflight_denied(gw, origin, method, headers):
    r = preflight(gw, origin, method, headers)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "cors_rejected"
    assert "access-control-allow-origin" not in r.headers


def test_actual_request_gets_cors_fields(gw):
    r = get(gw, "/api/echo-headers", "secure.test", {"Origin": ORIGIN, **bearer(token())})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-expose-headers"] == "x-request-id"
    assert r.headers["vary"] == "Origin"


def test_disallowed_origin_proxied_without_cors_fields(gw):
    r = get(gw, "/api/echo-headers", "localhost", {"Origin": "https://evil.example"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers
    assert r.headers["vary"] == "Origin"


def test_gateway_errors_carry_cors_fields(gw):
    unauthorized = get(gw, "/api/echo-headers", "secure.test", {"Origin": ORIGIN})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == ORIGIN
    assert unauthorized.headers["access-control-allow-credentials"] == "true"
    assert unauthorized.headers["vary"] == "Origin"
    missing = get(gw, "/nowhere", "localhost", {"Origin": ORIGIN})
    assert missing.status_code == 404
    assert missing.headers["access-control-allow-origin"] == ORIGIN
    assert missing.headers["vary"] == "Origin"
    broken = get(gw, "/api/close-early", "localhost", {"Origin": ORIGIN})  # upstream hangs up: 502
    assert broken.status_code == 502
    assert broken.headers["access-control-allow-origin"] == ORIGIN
    assert broken.headers["vary"] == "Origin"


def test_vary_is_merged_and_upstream_cors_replaced(gw):
    r = get(gw, "/api/vary", "localhost", {"Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers.get_list("vary") == ["Accept-Encoding, Origin"]
    assert r.headers.get_list("access-control-allow-origin") == [ORIGIN]


def test_options_without_request_method_is_ordinary(gw):
    r = get(gw, "/api/echo-headers", "localhost", {"Origin": ORIGIN}, method="OPTIONS")
    assert r.status_code == 200
    assert r.json()["method"] == "OPTIONS"


def test_cors_false_route_skips_cors(gw):
    r = preflight(gw, ORIGIN, host="nocors.test")
    assert r.status_code == 200 and r.json()["method"] == "OPTIONS"  # proxied as an ordinary request
    assert "access-control-allow-origin" not in r.headers and "vary" not in r.headers


# --- Client IP -------------------------------------------------------------------------------

def test_forwarding_headers_ignored_from_untrusted_peer(gw):
    r = get(gw, "/api/echo-headers", "localhost", {"CF-Connecting-IP": "198.51.100.9", "X-Forwarded-For": "192.0.2.1"})
    h = echoed(r)
    assert h["x-forwarded-for"] == ["127.0.0.1"]
    assert "cf-connecting-ip" not in h


def test_trusted_proxy_header_honoured(gateway_factory, upstream, es_key):
    gw = start(gateway_factory, upstream, es_key, trusted=True)
    r = get(gw, "/api/echo-headers", "localhost", {"CF-Connecting-IP": "198.51.100.9", "X-Forwarded-For": "192.0.2.1"})
    h = echoed(r)
    assert h["x-forwarded-for"] == ["192.0.2.1, 127.0.0.1"]
    assert h["cf-connecting-ip"] == ["198.51.100.9"]
    # Claim headers are stripped from trusted peers too.
    r = get(gw, "/api/echo-headers", "localhost", {"X-User-Id": "spoofed"})
    assert "x-user-id" not in echoed(r)

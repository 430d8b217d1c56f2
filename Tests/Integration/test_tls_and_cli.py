"""Real OpenSSL handshakes against the gateway, and the command line."""
import socket
import ssl
import subprocess

import pytest
from cryptography import x509

from conftest import GATEWAY, config_text


def peer_cert(port, server_name, **ctx_kw):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for k, v in ctx_kw.items():
        setattr(ctx, k, v)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as s:
            der = s.getpeercert(binary_form=True)
            return x509.load_der_x509_certificate(der), s.version(), s.selected_alpn_protocol()


def cn(cert):
    return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


def test_sni_picks_certificate(gateway):
    port = gateway.ports["public"]
    assert cn(peer_cert(port, "localhost")[0]) == "gateway-default"
    assert cn(peer_cert(port, "api.barberpro.test")[0]) == "gateway-other"
    assert cn(peer_cert(port, "x.shops.barberpro.test")[0]) == "gateway-other"
    assert cn(peer_cert(port, "unknown.example")[0]) == "gateway-default"


def alpn_of(port, offer):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(offer)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            return s.selected_alpn_protocol()


def test_alpn_offers_http11(gateway):
    port = gateway.ports["public"]
    assert alpn_of(port, ["http/1.1"]) == "http/1.1"
    # The listener's order ([h2, http/1.1]) wins over the client's.
    assert alpn_of(port, ["http/1.1", "h2"]) == "h2"
    assert alpn_of(port, ["h2"]) == "h2"
    # No ALPN offered: none selected (the connection speaks HTTP/1.1).
    assert peer_cert(port, "localhost")[2] is None
    # Nothing in common: a fatal no_application_protocol alert (RFC 7301 §3.2).
    with pytest.raises(ssl.SSLError, match="no application protocol"):
        alpn_of(port, ["spdy/3"])


def test_alpn_follows_listener_protocols(gateway_factory, upstream, certs):
    cert, key = certs["default"]
    gw = gateway_factory(upstream.port, listeners_extra=(
        "  - name: h1only\n    address: 127.0.0.1:0\n    protocols: [http/1.1]\n"
        f"    tls:\n      certificates:\n        - {{ cert: {cert}, key: {key} }}\n"))
    assert alpn_of(gw.ports["h1only"], ["h2", "http/1.1"]) == "http/1.1"


def test_tls12_accepted_when_min_is_12(gateway):
    _, version, _ = peer_cert(gateway.ports["public"], "localhost", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"


def test_tls11_refused_by_server(gateway):
    # OpenSSL's client refuses TLS 1.1 at its default security level; level 0 lets it offer it, so
    # the refusal we see is the gateway's protocol_version alert (alert 70), not the client's own
    # "no protocols available" or "unsupported protocol".
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.ports['public']}", "-tls1_1",
         "-cipher", "DEFAULT@SECLEVEL=0"], input="", capture_output=True, text=True, timeout=10)
    assert out.returncode != 0
    assert "tlsv1 alert protocol version" in out.stderr, out.stderr


def test_tls12_refused_when_min_is_13(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, min_version="1.3")
    with pytest.raises(ssl.SSLError):
        peer_cert(gw.ports["public"], "localhost", maximum_version=ssl.TLSVersion.TLSv1_2)
    assert peer_cert(gw.ports["public"], "localhost")[1] == "TLSv1.3"


def tls13_suite(port, *suites):
    """The TLS 1.3 suite `openssl s_client` gets, offering `suites` in that order (default: its own)."""
    offer = ["-ciphersuites", ":".join(suites)] if suites else []
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-servername", "localhost", *offer],
        input="", capture_output=True, text=True, timeout=10)
    assert "New, TLSv1.3, Cipher is " in out.stdout, out.stdout[-1500:] + out.stderr[-500:]
    return out.stdout.split("New, TLSv1.3, Cipher is ")[1].split()[0]


def test_tls13_prefers_aes128_gcm_over_the_clients_order(gateway):
    port = gateway.ports["public"]
    # OpenSSL's own client order puts AES-256-GCM first; the server's preference wins.
    assert tls13_suite(port) == "TLS_AES_128_GCM_SHA256"
    assert tls13_suite(port, "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384",
                       "TLS_AES_128_GCM_SHA256") == "TLS_AES_128_GCM_SHA256"
    # A client without AES-128-GCM still gets the others.
    assert tls13_suite(port, "TLS_AES_256_GCM_SHA384") == "TLS_AES_256_GCM_SHA384"
    assert tls13_suite(port, "TLS_CHACHA20_POLY1305_SHA256") == "TLS_CHACHA20_POLY1305_SHA256"


def test_session_resumption(gateway):
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{gateway.ports['public']}", "-tls1_2", "-reconnect",
         "-servername", "localhost"], input="", capture_output=True, text=True, timeout=20)
    assert out.stdout.count("Reused, TLSv1.2") >= 4, out.stdout[-2000:]


def test_validate_ok_and_errors(certs, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(config_text(certs, 3001))
    r = subprocess.run([str(GATEWAY), "validate", "--config", str(good)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text(certs, 3001).replace("max_connections: 64", "max_conections: 64")
                   .replace("upstream: booking\n", "upstream: bookng\n", 1)
                   .replace("timeouts: { client_header: 1s", "timeouts: { client_header: soon"))
    r = subprocess.run([str(GATEWAY), "validate", "--config", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert any(l.startswith("upstreams.booking.max_conections: unknown key") and "max_connections" in l for l in lines), lines
    assert any(l.startswith("routes[0].upstream:") and "booking" in l for l in lines), lines
    assert any(l.startswith("timeouts.client_header:") for l in lines), lines


def test_bad_certificate_exits_nonzero_naming_file(certs, tmp_path, upstream):
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    text = config_text(certs, upstream.port).replace(str(certs["default"][0]), str(garbage))
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text)
    r = subprocess.run([str(GATEWAY), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert "garbage.crt" in r.stderr


def test_mismatched_key_exits_nonzero(certs, tmp_path, upstream):
    text = config_text(certs, upstream.port).replace(str(certs["default"][1]), str(certs["other"][1]))
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(text)
    r = subprocess.run([str(GATEWAY), "run", "--config", str(cfg)], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0 and "other.key" in r.stderr and "does not match" in r.stderr


def jwt_config(certs, secret):
    text = config_text(certs, 3001).replace("    upstream: booking\n", "    upstream: booking\n    auth: required\n", 1)
    return text + f"jwt:\n  issuer: a\n  audiences: [b]\n  keys:\n    - {{ kid: k, algorithm: HS256, secret: {secret} }}\n"


def test_auth_required_validates_with_a_jwt_section(certs, tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(jwt_config(certs, "0123456789abcdef0123456789abcdef"))
    r = subprocess.run([str(GATEWAY), "validate", "--config", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_short_hmac_secret_refused_without_echoing_it(certs, tmp_path):
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(jwt_config(certs, "dev-only-secret-change-me"))
    for command in (["validate"], ["run"]):
        r = subprocess.run([str(GATEWAY), *command, "--config", str(cfg)], capture_output=True, text=True, timeout=20)
        assert r.returncode == 1
        assert "jwt.keys[0].secret: an HS256 secret must be at least 32 bytes" in r.stderr, r.stderr
        assert "dev-only-secret-change-me" not in r.stderr + r.stdout


def test_token_command(certs, tmp_path):
    import jwt
    r = subprocess.run([str(GATEWAY), "token", "--secret", "short", "--sub", "u"], capture_output=True, text=True)
    assert r.returncode == 1 and "at least 32 bytes" in r.stderr and "short" not in r.stderr.replace("shorter", "")
    secret = "0123456789abcdef0123456789abcdef"
    r = subprocess.run([str(GATEWAY), "token", "--secret", secret, "--sub", "u-1", "--role", "admin", "--ttl", "15m",
                        "--kid", "k9", "--iss", "me", "--aud", "you"], capture_output=True, text=True, check=True)
    t = r.stdout.strip()
    assert jwt.get_unverified_header(t)["kid"] == "k9"
    claims = jwt.decode(t, secret, algorithms=["HS256"], audience="you", issuer="me")
    assert claims["sub"] == "u-1" and claims["role"] == "admin" and claims["exp"] - claims["iat"] == 900
    # --config: iss/aud from its jwt section, and its HS256 key when --secret is absent.
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(jwt_config(certs, secret))
    r = subprocess.run([str(GATEWAY), "token", "--config", str(cfg), "--sub", "u-2"], capture_output=True, text=True, check=True)
    t = r.stdout.strip()
    assert jwt.get_unverified_header(t)["kid"] == "k"
    assert jwt.decode(t, secret, algorithms=["HS256"], audience="b", issuer="a")["sub"] == "u-2"


HANDSHAKE_LISTENER = """\
  - name: tight
    address: 127.0.0.1:0
    tls:
      handshake_timeout: 500ms
      certificates:
        - {{ cert: {cert}, key: {key} }}
"""


def test_stalled_handshakes_are_cut_off_while_finished_ones_stay(gateway_factory, upstream, certs):
    """Clients that connect and never finish the TLS handshake (silent, or stopped mid
    ClientHello) are closed at `tls.handshake_timeout`, all of them, while a client that finished
    its handshake keeps its connection past that time. The timeout is a timer on the loop's shared
    heap; the test fails when it is not armed."""
    import time
    cert, key = certs["default"]
    gw = gateway_factory(upstream.port, listeners_extra=HANDSHAKE_LISTENER.format(cert=cert, key=key))
    port = gw.ports["tight"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    finished = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost")
    stalled = []
    for i in range(40):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello that stops
        stalled.append(s)
    start = time.time()
    for s in stalled:
        try:
            assert s.recv(4096) == b""
        except ConnectionResetError:
            pass
        s.close()
    elapsed = time.time() - start
    assert 0.3 < elapsed < 3.0, elapsed
    # Well past the handshake timeout, the finished connection still serves a request.
    time.sleep(max(0.0, 1.0 - (time.time() - start)))
    finished.sendall(b"GET /api/bookings HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    response = b""
    while chunk := finished.recv(65536):
        response += chunk
    finished.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:200]

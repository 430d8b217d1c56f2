"""Hot reload: POST /config/reload, SIGHUP and file changes; invalid configs are refused whole."""
import os
import signal
import socket
import ssl
import threading
import time

import httpx
from cryptography import x509

from conftest import make_cert


def reload_post(gw):
    return httpx.post(gw.url("/config/reload", listener="admin"), timeout=10)


def metric(gw, name):
    for line in httpx.get(gw.url("/metrics", listener="admin"), timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_reload_applies_to_new_requests_while_in_flight_one_finishes(gateway):
    result = {}

    def slow():
        with httpx.Client(verify=False, timeout=10) as c:
            result["r"] = c.post(gateway.url("/api/bookings?delay_ms=1500"), content=b"x" * 2048)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.3)
    text = gateway.config_path.read_text().replace("max_body_bytes: 2MiB", "max_body_bytes: 1KiB")
    gateway.config_path.write_text(text)
    r = reload_post(gateway)
    assert r.status_code == 200 and r.json()["result"] == "success", r.text
    with httpx.Client(verify=False, timeout=10) as c:
        assert c.post(gateway.url("/api/bookings"), content=b"x" * 2048).status_code == 413
    t.join(timeout=10)
    assert result["r"].status_code == 201 and len(result["r"].content) == 2048
    assert metric(gateway, 'gateway_config_reloads_total{result="success"}') >= 1
    assert httpx.get(gateway.url("/config", listener="admin")).json()["hash"] == r.json()["hash"]


def test_reload_applies_to_new_streams_of_an_open_http2_connection(gateway):
    # An HTTP/2 connection keeps a snapshot of the config and takes the holder's again only when
    # a reload moved its generation: the next stream on the same connection must see the new limit.
    with httpx.Client(verify=False, timeout=10, http2=True) as c:
        first = c.post(gateway.url("/api/bookings"), content=b"x" * 2048)
        assert first.http_version == "HTTP/2" and first.status_code == 201
        stream = first.extensions["network_stream"]
        text = gateway.config_path.read_text().replace("max_body_bytes: 2MiB", "max_body_bytes: 1KiB")
        gateway.config_path.write_text(text)
        r = reload_post(gateway)
        assert r.status_code == 200 and r.json()["result"] == "success", r.text
        second = c.post(gateway.url("/api/bookings"), content=b"x" * 2048)
        assert second.extensions["network_stream"] is stream, "not the same connection"
        assert second.status_code == 413


def test_invalid_reload_keeps_running_config(gateway):
    good_hash = httpx.get(gateway.url("/config", listener="admin")).json()["hash"]
    gateway.config_path.write_text(gateway.config_path.read_text().replace("upstream: booking\n", "upstream: bookng\n", 1)
                                   .replace("max_connections: 64", "max_conections: 64"))
    r = reload_post(gateway)
    assert r.status_code == 400 and r.json()["result"] == "invalid"
    errors = r.json()["errors"]
    assert any(e.startswith("routes[0].upstream:") for e in errors), errors
    assert any("max_conections" in e for e in errors), errors
    with httpx.Client(verify=False, timeout=10) as c:
        assert c.get(gateway.url("/api/bookings")).status_code == 200
    assert httpx.get(gateway.url("/config", listener="admin")).json()["hash"] == good_hash
    assert metric(gateway, 'gateway_config_reloads_total{result="invalid"}') >= 1


def test_sighup_and_file_change_reload(gateway):
    with httpx.Client(verify=False, timeout=10) as c:
        assert c.post(gateway.url("/api/bookings"), content=b"x" * 2048).status_code == 201
        gateway.config_path.write_text(gateway.config_path.read_text().replace("max_body_bytes: 2MiB", "max_body_bytes: 1KiB"))
        deadline = time.time() + 5  # the watcher polls once a second
        while time.time() < deadline and c.post(gateway.url("/api/bookings"), content=b"x" * 2048).status_code != 413:
            time.sleep(0.2)
        assert c.post(gateway.url("/api/bookings"), content=b"x" * 2048).status_code == 413
        # Changed back with the same size and modification time, so the watcher (which compares
        # both) sees nothing: only the SIGHUP can reload it.
        seen = gateway.config_path.stat()
        gateway.config_path.write_text(gateway.config_path.read_text().replace("max_body_bytes: 1KiB", "max_body_bytes: 2MiB"))
        os.utime(gateway.config_path, ns=(seen.st_atime_ns, seen.st_mtime_ns))
        assert gateway.config_path.stat().st_size == seen.st_size
        time.sleep(1.5)  # a watcher poll or more: it must not have reloaded
        assert c.post(gateway.url("/api/bookings"), content=b"x" * 2048).status_code == 413
        gateway.proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while time.time() < deadline and c.post(gateway.url("/api/bookings"), content=b"x" * 2048).status_code != 201:
            time.sleep(0.2)
        assert c.post(gateway.url("/api/bookings"), content=b"x" * 2048).status_code == 201
    assert gateway.proc.poll() is None


def served_cn(port):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            cert = x509.load_der_x509_certificate(s.getpeercert(binary_form=True))
            return cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value


def test_certificate_reload(gateway_factory, upstream, tmp_path, certs):
    crt, key = make_cert(tmp_path, "rotating", "DNS:localhost,IP:127.0.0.1", "before-rotation")
    gw = gateway_factory(upstream.port)
    text = gw.config_path.read_text().replace(str(certs["default"][0]), str(crt)).replace(str(certs["default"][1]), str(key))
    gw.config_path.write_text(text)
    assert reload_post(gw).status_code == 200
    time.sleep(0.3)
    assert served_cn(gw.ports["public"]) == "before-rotation"
    make_cert(tmp_path, "rotating", "DNS:localhost,IP:127.0.0.1", "after-rotation")  # same paths
    assert reload_post(gw).status_code == 200
    time.sleep(0.3)
    assert served_cn(gw.ports["public"]) == "after-rotation"


def test_config_dump_redacts_secrets(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, top_extra="redis: { url: 'redis://gw:TOPSECRETPW@127.0.0.1:1/0' }\n")
    body = httpx.get(gw.url("/config", listener="admin")).text
    assert "TOPSECRETPW" not in body
    dump = httpx.get(gw.url("/config", listener="admin")).json()
    assert len(dump["hash"]) == 16 and dump["config"]["upstreams"][0]["name"] == "booking"

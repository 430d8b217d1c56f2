"""Bodies stream both ways with backpressure: gateway memory stays flat for huge bodies."""
import hashlib
import threading
import time

import httpx

GiB = 1024 * 1024 * 1024


def fnv1a(chunks):
    h = 14695981039346656037
    for chunk in chunks:
        for b in chunk:
            h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def test_1gib_upload_passes_with_flat_memory(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, max_body="2GiB")
    chunk = bytes(range(256)) * 1024  # 256 KiB
    count = GiB // len(chunk)
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], gw.rss_kib())
            time.sleep(0.05)

    baseline = gw.rss_kib()
    w = threading.Thread(target=watch)
    w.start()

    def body():
        for _ in range(count):
            yield chunk
    try:
        with httpx.Client(verify=False, timeout=120) as c:
            r = c.post(gw.url("/api/upload"), content=body(), headers={"content-length": str(GiB)})
    finally:
        done.set()
        w.join()
    assert r.status_code == 200
    assert r.json()["bytes"] == GiB
    # Python computing FNV over 1 GiB is too slow; check the hash of a small upload instead below.
    growth_mib = (peak[0] - baseline) / 1024
    assert growth_mib < 64, f"gateway RSS grew by {growth_mib:.0f} MiB during a 1 GiB upload"


def test_upload_content_is_intact(gateway_factory, upstream):
    gw = gateway_factory(upstream.port, max_body="64MiB")
    data = bytes((i * 7 + 3) % 251 for i in range(3 * 1024 * 1024 + 17))

    def chunks():
        for i in range(0, len(data), 100_000):
            yield data[i:i + 100_000]
    with httpx.Client(verify=False, timeout=60) as c:
        r = c.post(gw.url("/api/upload"), content=chunks())  # chunked
        assert r.status_code == 200
        assert r.json()["bytes"] == len(data)
        assert int(r.json()["fnv1a"], 16) == fnv1a([data])


def test_large_download_streams_and_slow_reader_keeps_memory_flat(gateway):
    size = 512 * 1024 * 1024
    baseline = gateway.rss_kib()
    peak = baseline
    received = 0
    with httpx.Client(verify=False, timeout=60) as c:
        with c.stream("GET", gateway.url(f"/api/download?bytes={size}")) as r:
            assert r.status_code == 200
            start = time.time()
            for chunk in r.iter_bytes(65536):
                received += len(chunk)
                if time.time() - start < 2:
                    time.sleep(0.002)  # a slow reader first: the gateway must not buffer the rest
                    peak = max(peak, gateway.rss_kib())
    assert received == size
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 64, f"gateway RSS grew by {growth_mib:.0f} MiB for a slow reader"


def test_chunked_upstream_response_is_rechunked(gateway):
    with httpx.Client(verify=False, timeout=30) as c:
        r = c.get(gateway.url("/api/download?bytes=300000&chunked=1"))
        assert r.status_code == 200 and len(r.content) == 300000
        assert r.headers.get("transfer-encoding") == "chunked"


def test_client_abort_mid_download_frees_upstream_connection(gateway, upstream):
    with httpx.Client(verify=False, timeout=30) as c:
        with c.stream("GET", gateway.url(f"/api/download?bytes={256 * 1024 * 1024}")) as r:
            next(r.iter_bytes(65536))
    deadline = time.time() + 5
    while time.time() < deadline and upstream.stats()["open_connections"] > 1:
        time.sleep(0.1)
    # Only the stats connection itself may remain.
    assert upstream.stats()["open_connections"] <= 1

"""Upstream keep-alive reuse never books twice (issue 10, item 9).

The demo upstream closes idle keep-alive connections after `--keepalive-timeout`, as Node.js does
after 5 s, and counts POSTs per request target, so a booking that reached it twice shows up.
"""
import http.client
import random
import re
import socket
import subprocess
import threading
import time

from conftest import DEMO, Gateway, RawGetUpstream, Upstream, config_text

KEEPALIVE_MS = 150


class KeepAliveUpstream(Upstream):
    def __init__(self, keepalive: str):
        self.proc = subprocess.Popen([str(DEMO), "--port", "0", "--keepalive-timeout", keepalive],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r":(\d+)$", line.strip())
        assert m, f"demo upstream did not start: {line!r}"
        self.port = int(m.group(1))


def wait_for(predicate, timeout=5.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def send(conn: http.client.HTTPConnection, method: str, path: str, body=None):
    headers = {"content-type": "application/json"} if body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def test_demo_upstream_closes_idle_keepalive_connections():
    upstream = KeepAliveUpstream("300ms")
    try:
        with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as s:
            s.sendall(b"GET /api/bookings HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
            # Still open well inside the timeout (a lower bound holds on a loaded machine)...
            s.settimeout(0.1)
            try:
                assert s.recv(1) != b"", "closed before the keep-alive timeout"
            except socket.timeout:
                pass
            # ...and closed by the upstream after it.
            s.settimeout(5)
            assert s.recv(1) == b""
        assert upstream.stats()["keepalive_closes"] == 1
    finally:
        upstream.stop()


def test_posts_just_after_upstream_closed_idle_connection_are_booked_once(gateway_factory):
    upstream = KeepAliveUpstream(f"{KEEPALIVE_MS}ms")
    try:
        gw = gateway_factory(upstream.port)
        # One client connection: every request goes through the same event loop and its pool.
        conn = http.client.HTTPConnection("127.0.0.1", gw.ports["plain"], timeout=10)
        rng = random.Random(9)
        statuses = []
        total = 40
        for i in range(total):
            closes = upstream.stats()["keepalive_closes"]
            statuses.append(send(conn, "POST", f"/api/bookings?id={i}", body=b'{"barber":"b_1"}'))
            # Send the next one just after the upstream closed the pooled connection while idle.
            assert wait_for(lambda: upstream.stats()["keepalive_closes"] > closes), "upstream never closed the idle connection"
            time.sleep(rng.uniform(0, 0.02))
        posts = upstream.stats()["posts"]
        assert statuses == [201] * total
        assert posts == {f"/api/bookings?id={i}": 1 for i in range(total)}
    finally:
        upstream.stop()


def test_posts_racing_the_upstream_keepalive_timeout_are_never_duplicated(gateway_factory):
    upstream = KeepAliveUpstream(f"{KEEPALIVE_MS}ms")
    try:
        gw = gateway_factory(upstream.port)
        conn = http.client.HTTPConnection("127.0.0.1", gw.ports["plain"], timeout=10)
        rng = random.Random(10)
        statuses = {}
        total = 60
        for i in range(total):
            statuses[i] = send(conn, "POST", f"/api/bookings?id={i}", body=b'{"barber":"b_1"}')
            # Around the upstream's timeout: some land on a connection the upstream is closing.
            time.sleep(rng.uniform(KEEPALIVE_MS - 15, KEEPALIVE_MS + 15) / 1000)
        posts = upstream.stats()["posts"]
        assert set(statuses.values()) <= {201, 502}, statuses
        for i, status in statuses.items():
            # A 502 only for a request the upstream never acted on; a 201 booked exactly once.
            assert posts.get(f"/api/bookings?id={i}", 0) == (1 if status == 201 else 0), (i, status)
        assert list(statuses.values()).count(201) >= total // 2
    finally:
        upstream.stop()


def test_request_that_reached_upstream_is_resent_only_if_idempotent(gateway_factory, upstream):
    """`/api/close-early` acts on the request, then drops the connection without answering."""
    gw = gateway_factory(upstream.port)
    conn = http.client.HTTPConnection("127.0.0.1", gw.ports["plain"], timeout=10)

    def on_reused_connection(method):
        # The first request leaves a pooled connection behind; the second goes on it.
        assert send(conn, "GET", "/api/bookings") == 200
        before = upstream.stats()
        status = send(conn, method, "/api/close-early")
        after = upstream.stats()
        # Each stats call opens one connection of its own.
        return status, after["connections"] - before["connections"] - 1, after["requests"] - before["requests"], after

    status, opened, requests, stats = on_reused_connection("POST")
    assert (status, opened, requests) == (502, 0, 1)
    assert stats["posts"] == {"/api/close-early": 1}

    status, opened, requests, _ = on_reused_connection("GET")
    # Sent once more on one fresh connection, which the upstream drops too.
    assert (status, opened, requests) == (502, 1, 2)


class DoubleAnsweringUpstream(RawGetUpstream):
    """Answers `/api/double` with two responses in one write, the second never asked for, after a
    pause in which other requests queue for the one connection slot; any other GET with one
    response whose body is its path."""

    @staticmethod
    def response(body: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    def answer(self, conn, head):
        path = head.split(b" ")[1]
        if path == b"/api/double":
            time.sleep(0.4)
            conn.sendall(self.response(b"first") + self.response(b"unasked"))
        else:
            conn.sendall(self.response(path))


def test_a_response_the_upstream_sent_unasked_never_reaches_the_next_request(certs, tmp_path):
    """An upstream that answers one request twice in one write: the second response must not
    become the answer to the request that waited for that connection (max_connections: 1, so the
    connection is handed to the waiting request the moment the first response ends). The
    connection is closed instead, and the waiting request gets its own answer on a new one."""
    upstream = DoubleAnsweringUpstream()
    config = config_text(certs, upstream.port).replace("workers: 2", "workers: 1").replace("max_connections: 64", "max_connections: 1")
    gw = Gateway(config, tmp_path)
    try:
        results = {}

        def get(path):
            conn = http.client.HTTPConnection("127.0.0.1", gw.ports["plain"], timeout=10)
            conn.request("GET", path)
            response = conn.getresponse()
            results[path] = (response.status, response.read())
            conn.close()

        first = threading.Thread(target=get, args=("/api/double",))
        first.start()
        time.sleep(0.15)  # the first holds the only slot, waiting for its answer
        second = threading.Thread(target=get, args=("/api/next",))
        second.start()
        first.join()
        second.join()
        assert results["/api/double"] == (200, b"first")
        assert results["/api/next"] == (200, b"/api/next")
        assert upstream.connections == 2, "the connection that carried an unasked response was reused"
    finally:
        gw.stop()
        upstream.stop()

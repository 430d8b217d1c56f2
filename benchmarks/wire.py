#!/usr/bin/env python3
"""Fixed-rate latency measured on the wire, for the gateway and HAProxy (and nginx) in one run.

Why: `peers.py`'s fixed-rate rows time each request in the load generator, which on this 2-core
machine shares CPU 1 with the upstream; at half of HAProxy's A rate that core is ~90% busy and its
own scheduling delays (a request sent late, a response read late) set the tails of every server
alike. Here the same `gateway bench --rate` load runs while `tcpdump` records, with kernel
timestamps, every client-side packet that carries payload. On loopback a packet is stamped when
its sender hands it to the device, so for each request

    latency = first server→client payload packet − last client→server payload packet before it

is the server's time from the request's bytes leaving the client to the response's first bytes
leaving the server: the server's queueing and work plus the upstream's round trip, without the
client's own delays. The upstream (nginx) also runs on the busy load core, so its leg is captured
too and each request is linked to the upstream exchange that served it (in arrival order, kept
only when the forwarded request and the relayed response agree): "own" is the wire time less
that leg, the part of the latency that is the server's alone. It needs one request in flight per
connection to pair packets without decrypting them, so h1 uses 64 keep-alive connections and h2
uses 64 connections with one stream each (`--streams 1`); a client WINDOW_UPDATE sent on its own
is not mistaken for a request, because the last client packet before the response is the one
that counts. h2mux is `peers.py`'s fixed-rate h2 load (4 connections × 16 streams): there the
capture is whole and decrypted with the TLS 1.3 secrets `gateway bench` writes to SSLKEYLOGFILE,
and each request's HEADERS frame is paired with its response's by stream id (wire time only: the
upstream leg is not linked). tcpdump filters in the kernel (payload-carrying packets of the server's port only)
and runs on CPU 1 with the load.

Environment: RATE (req/s, default: half of HAProxy's A from a calibration run, as `peers.py`),
DUR (s, default 10), ROUNDS (default 3), PROTOS (default "h1 h2 h2mux"), PEERS (default
"gateway haproxy"), BIN (the directory with the release `gateway`). Needs tcpdump, nginx,
haproxy, wrk and h2load (benchmarks/peers.sh installs them). `--save` writes the table to
benchmarks/results/DATE-wire.md.
"""
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402  (shares the servers' set-up and ports)

DUR = int(os.environ.get("DUR", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
PROTOS = os.environ.get("PROTOS", "h1 h2 h2mux").split()
SERVERS = os.environ.get("PEERS", "gateway haproxy").split()
WARMUP_S = 1.0
SAVE = "--save" in sys.argv[1:]


def start_capture(path, port, whole=False):
    """tcpdump on lo, nanosecond stamps, payload-carrying TCP segments of `port` (the server's
    listener) and of the upstream's, headers only; `whole`: the listener's alone, whole (to decrypt)."""
    payload = "(ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) > 0"
    ports = f"tcp port {port}" if whole else f"(tcp port {port} or tcp port {peers.UP_PORT})"
    proc = subprocess.Popen(["taskset", "-c", "1", "tcpdump", "-i", "lo", "-n", "-s", "0" if whole else "96", "-B", "65536",
                             "--time-stamp-precision=nano", "-w", path, f"{ports} and {payload}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # It prints "listening on lo" once its socket is open: no packet of the run is missed.
    line = proc.stderr.readline()
    if "listening" not in line:
        proc.kill()
        raise RuntimeError(f"tcpdump did not start: {line.strip()}")
    return proc


def stop_capture(proc):
    """Stops tcpdump; a capture that lost packets would pair the wrong ones, so that is an error."""
    proc.send_signal(signal.SIGINT)
    try:
        _, tail = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RuntimeError("tcpdump did not stop")
    dropped = [line for line in tail.splitlines() if "dropped by kernel" in line and not line.startswith("0 ")]
    if dropped:
        raise RuntimeError(f"tcpdump lost packets ({dropped[0].strip()}): raise -B or lower RATE")


def packets(path):
    """(timestamp ns, source port, destination port, sequence number, payload) of each IPv4 TCP
    segment of a nanosecond pcap (the payload as far as it was captured)."""
    data = Path(path).read_bytes()
    magic, = struct.unpack_from("<I", data, 0)
    if magic != 0xA1B23C4D:
        raise RuntimeError(f"{path}: not a little-endian nanosecond pcap (magic {magic:#x})")
    linktype, = struct.unpack_from("<I", data, 20)
    if linktype != 1:
        raise RuntimeError(f"{path}: link type {linktype}, expected Ethernet (lo)")
    offset = 24
    while offset + 16 <= len(data):
        seconds, nanos, captured, _ = struct.unpack_from("<IIII", data, offset)
        frame = offset + 16
        offset = frame + captured
        if captured < 14 + 20 + 20 or data[frame + 12:frame + 14] != b"\x08\x00":
            continue
        ip = frame + 14
        total, = struct.unpack_from(">H", data, ip + 2)
        tcp = ip + (data[ip] & 0x0F) * 4
        source, destination, seq = struct.unpack_from(">HHI", data, tcp)
        payload = data[tcp + (data[tcp + 12] >> 4) * 4:min(ip + total, offset)]
        yield seconds * 1_000_000_000 + nanos, source, destination, seq, payload


def exchanges(path, port):
    """(last request packet ns, first response packet ns) of every exchange with the listener on
    `port`, one request in flight per connection: a request's bytes are the client's last packet
    before the server's first packet."""
    pending, out = {}, []
    for stamp, source, destination, _, _ in packets(path):
        if destination == port:
            pending[source] = stamp
        elif source == port:
            sent = pending.pop(destination, None)
            if sent is not None:
                out.append((sent, stamp))
    return out


def chain(client, upstream):
    """Links each client exchange to the upstream exchange that served it. The timeline is cut
    wherever nothing is in flight on either leg; inside each piece the k-th upstream request belongs
    to the earliest client request not yet forwarded, and a client response to the earliest upstream
    response not yet relayed. A link counts only when both directions agree, and a piece whose legs
    do not pair one to one (a TLS handshake, a health check) is left out whole, so a reordering or a
    stray exchange drops samples rather than shifting every later pair. Returns {client index:
    upstream index}."""
    spans = sorted([(start, end, "c", i) for i, (start, end) in enumerate(client)] +
                   [(start, end, "u", j) for j, (start, end) in enumerate(upstream)])
    links, piece, reach = {}, [], None
    for span in spans + [(float("inf"), float("inf"), "", -1)]:
        if piece and span[0] > reach:
            links.update(pair_piece([s for s in piece if s[2] == "c"], [s for s in piece if s[2] == "u"]))
            piece, reach = [], None
        piece.append(span)
        reach = span[1] if reach is None else max(reach, span[1])
    return links


def pair_piece(client, upstream):
    if len(client) != len(upstream):
        return {}
    # Both lists are in request order (spans were sorted by start).
    forwarded = {u[3]: c[3] for c, u in zip(client, upstream) if c[0] <= u[0]}
    by_return = sorted(upstream, key=lambda u: u[1])
    relayed = {c[3]: u[3] for c, u in zip(sorted(client, key=lambda c: c[1]), by_return) if u[1] <= c[1]}
    return {c: u for u, c in forwarded.items() if relayed.get(c) == u}


# --- HTTP/2 with many streams per connection: the capture decrypted -----------------------------

def tcp_streams(path, port):
    """{(client port, from_client): (bytes, [(start offset, end offset, timestamp ns)])}: each
    direction of each connection reassembled from a full-payload capture."""
    segments = {}
    for stamp, source, destination, seq, payload in packets(path):
        if payload and port in (source, destination):
            key = (destination, False) if source == port else (source, True)
            segments.setdefault(key, []).append((seq, stamp, payload))
    streams = {}
    for key, parts in segments.items():
        base, buffer, spans = parts[0][0], bytearray(), []
        for seq, stamp, payload in parts:
            at = (seq - base) & 0xFFFFFFFF
            if at != len(buffer):
                continue  # a retransmission (lo loses nothing otherwise)
            spans.append((at, at + len(payload), stamp))
            buffer += payload
        streams[key] = (bytes(buffer), spans)
    return streams


def stamp_at(spans, position):
    """The timestamp of the segment that carried byte `position` (spans are in order)."""
    low, high = 0, len(spans) - 1
    while low < high:
        middle = (low + high) // 2
        if spans[middle][1] <= position:
            low = middle + 1
        else:
            high = middle
    return spans[low][2]


def tls13_keys(secret, suite):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
    hash_, key_length, aead = {0x1301: (hashes.SHA256(), 16, AESGCM), 0x1302: (hashes.SHA384(), 32, AESGCM),
                               0x1303: (hashes.SHA256(), 32, ChaCha20Poly1305)}[suite]

    def expand(label, length):
        full = b"tls13 " + label
        info = struct.pack(">H", length) + bytes([len(full)]) + full + b"\x00"
        return HKDFExpand(hash_, length, info).derive(secret)
    return aead(expand(b"key", key_length)), expand(b"iv", 12)


def application_data(stream, spans, secret, suite):
    """Yields (plaintext, first byte's stamp, last byte's stamp) of each application-data record
    of one direction; the handshake's records (other keys) are skipped until the first that opens."""
    cipher, iv = tls13_keys(secret, suite)
    position, sequence, opened = 0, 0, False
    while position + 5 <= len(stream):
        kind, length = stream[position], struct.unpack_from(">H", stream, position + 3)[0]
        end = position + 5 + length
        if end > len(stream):
            break
        if kind == 23:
            nonce = bytes(a ^ b for a, b in zip(iv, sequence.to_bytes(12, "big")))
            try:
                inner = cipher.decrypt(nonce, stream[position + 5:end], stream[position:position + 5])
                opened = True
                sequence += 1
                inner = inner.rstrip(b"\x00")
                if inner and inner[-1] == 23:
                    yield inner[:-1], stamp_at(spans, position), stamp_at(spans, end - 1)
            except Exception:
                if opened:
                    raise RuntimeError("a TLS record failed to decrypt after the handshake")
        position = end


def hello_fields(stream):
    """(random, cipher suite) of the ClientHello or ServerHello that opens a direction."""
    handshake = stream[5:]
    random = handshake[6:38]
    if handshake[0] == 1:
        return random, None
    session = handshake[38]
    return random, struct.unpack_from(">H", handshake, 39 + session)[0]


def h2_latencies(path, port, keylog):
    """Microseconds from each request's HEADERS frame (the segment carrying its record's last byte)
    to its response's HEADERS frame (the segment carrying its record's first byte), by stream, with
    TLS 1.3 decrypted from the client's key log: requests multiplexed on a connection pair exactly."""
    secrets = {}
    for line in Path(keylog).read_text().splitlines():
        label, random, secret = line.split()
        secrets[(label, bytes.fromhex(random))] = bytes.fromhex(secret)
    streams = tcp_streams(path, port)
    out = []
    for (client_port, from_client), (stream, spans) in streams.items():
        if not from_client or (client_port, False) not in streams:
            continue
        reply, reply_spans = streams[(client_port, False)]
        random, _ = hello_fields(stream)
        _, suite = hello_fields(reply)
        sent, answered = {}, {}
        for direction, data, marks, label in ((sent, stream, spans, "CLIENT_TRAFFIC_SECRET_0"),
                                              (answered, reply, reply_spans, "SERVER_TRAFFIC_SECRET_0")):
            secret = secrets.get((label, random))
            if secret is None:
                break
            h2 = bytearray()
            stamps = []  # (plaintext end offset, first stamp, last stamp) per record
            for plaintext, first, last in application_data(data, marks, secret, suite):
                h2 += plaintext
                stamps.append((len(h2), first, last))
            at, record = (24 if direction is sent else 0), 0
            while at + 9 <= len(h2):
                length = int.from_bytes(h2[at:at + 3], "big")
                kind, stream_id = h2[at + 3], int.from_bytes(h2[at + 5:at + 9], "big") & 0x7FFFFFFF
                if kind == 1 and stream_id not in direction:
                    # Requests count when their last byte went out; responses from their first.
                    edge = at + 9 + length - 1 if direction is sent else at
                    while stamps[record][0] <= edge:
                        record += 1
                    direction[stream_id] = stamps[record][2] if direction is sent else stamps[record][1]
                at += 9 + length
        for stream_id, start in sent.items():
            if stream_id in answered:
                out.append((start, (answered[stream_id] - start) / 1000))
    return out


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def measure(d, server, proc, port, proto, rate):
    """One fixed-rate run under capture: the row's numbers."""
    capture = f"{d}/{server}-{proto}.pcap"
    multiplexed = proto == "h2mux"
    dump = start_capture(capture, port, whole=multiplexed)
    extra = {"h1": ["--connections", "64"], "h2": ["--http2", "--connections", "64", "--streams", "1"],
             "h2mux": ["--http2", "--connections", "4", "--streams", "16"]}[proto]
    out = f"{d}/wire.json"
    keylog = f"{d}/keys.log"
    if multiplexed:
        os.environ["SSLKEYLOGFILE"] = keylog
    started = time.time_ns()
    try:
        _, cpu, wall, load_core = peers.run_load_measured(
            proc.pid, [str(peers.BIN / "gateway"), "bench", "--url", f"https://127.0.0.1:{port}{peers.PATH_}",
                       "--rate", str(rate), "--duration", f"{DUR}s", "--warmup", f"{WARMUP_S:g}s", "--threads", "1",
                       "--insecure", "--quiet", "--json", out, *extra])
    finally:
        stop_capture(dump)
        os.environ.pop("SSLKEYLOGFILE", None)
    # The window: after connecting and the warm-up, until the schedule ends (the drain is left out).
    begin, end = started + int((WARMUP_S + 0.5) * 1e9), started + int((WARMUP_S + 0.5 + DUR - 1) * 1e9)
    client = json.load(open(out))
    if multiplexed:
        total = sorted(latency for sent, latency in h2_latencies(capture, port, keylog) if begin <= sent < end)
        os.remove(capture)
        os.remove(keylog)
        return {"n": len(total), "p50": percentile(total, 0.50), "p99": percentile(total, 0.99),
                "p999": percentile(total, 0.999), "client_p99": client["latency_ms"]["p99"] * 1000,
                "errors": client["errors"]["total"], "cpu": 100 * cpu / wall, "load_core": load_core}
    legs = exchanges(capture, port)
    upstream = exchanges(capture, peers.UP_PORT)
    os.remove(capture)
    links = chain(legs, upstream)
    window = [i for i, (sent, _) in enumerate(legs) if begin <= sent < end]
    total = sorted((legs[i][1] - legs[i][0]) / 1000 for i in window)
    linked = [i for i in window if i in links]
    # The server's own share: request in → forwarded, and upstream answer in → relayed.
    own = sorted(((upstream[links[i]][0] - legs[i][0]) + (legs[i][1] - upstream[links[i]][1])) / 1000 for i in linked)
    upstream_leg = sorted((upstream[links[i]][1] - upstream[links[i]][0]) / 1000 for i in linked)
    # Which half of the server's own time makes its tail: request in → forwarded, or answer in → relayed.
    forward = sorted((upstream[links[i]][0] - legs[i][0]) / 1000 for i in linked)
    relay = sorted((legs[i][1] - upstream[links[i]][1]) / 1000 for i in linked)
    return {"n": len(total), "p50": percentile(total, 0.50), "p99": percentile(total, 0.99),
            "p999": percentile(total, 0.999), "linked": 100 * len(linked) / max(1, len(total)),
            "own_p50": percentile(own, 0.50), "own_p99": percentile(own, 0.99), "own_p999": percentile(own, 0.999),
            "up_p99": percentile(upstream_leg, 0.99), "forward_p99": percentile(forward, 0.99),
            "relay_p99": percentile(relay, 0.99), "client_p99": client["latency_ms"]["p99"] * 1000,
            "errors": client["errors"]["total"], "cpu": 100 * cpu / wall, "load_core": load_core}


def main():
    d = tempfile.mkdtemp(prefix="wire-")
    run = peers.Run(d)
    results = {}
    try:
        peers.set_up(run, d)
        rate = os.environ.get("RATE")
        if not rate:
            proc, port = run.start_server("haproxy", "base")
            run.warm(port, "A")
            rate = str(int(run.load(proc.pid, port, "A", None)["rps"] / 2))
            run.stop(proc)
            peers.log(f"fixed rate: {rate}/s (half of HAProxy's A in a calibration run)")
        for rnd in range(1, ROUNDS + 1):
            for server in SERVERS:
                proc, port = run.start_server(server, "base")
                run.warm(port, "A")
                for proto in PROTOS:
                    row = measure(d, server, proc, port, proto, rate)
                    peers.log(f"round {rnd} {server} {proto}: " + ", ".join(
                        f"{key} {row[key]:.0f}" for key in ("p50", "p99", "p999", "n", "own_p50", "own_p99", "own_p999",
                                                            "linked", "forward_p99", "relay_p99", "up_p99", "client_p99",
                                                            "cpu", "load_core") if row.get(key) is not None))
                    results.setdefault((server, proto), []).append(row)
                run.stop(proc)
    finally:
        run.stop_all()
        subprocess.run(["rm", "-rf", d])
    report(results, rate)


def report(results, rate):
    lines = [f"Fixed rate {rate}/s, open loop (`gateway bench`, 64 connections, h2 one stream each, h2mux 4 × 16 streams), {DUR} s after a "
             f"{WARMUP_S:g} s warm-up; medians of {ROUNDS} rounds; µs. Wire: the server's first response packet − the "
             "request's last packet (kernel timestamps on lo). Own: the wire time less the upstream leg, for the "
             "requests linked to their upstream exchange (linked %). Upstream: that leg's p99 (nginx on the load core). "
             "Client p99: the same requests timed by the client from their scheduled send.", "",
             "| server | proto | wire p50 | wire p99 | wire p99.9 | own p50 | own p99 | own p99.9 | linked % | upstream p99 | client p99 | server CPU % | load core % | own p99 per round (h2mux: wire) | errors |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|"]
    for server in SERVERS:
        for proto in PROTOS:
            rows = results.get((server, proto))
            if not rows:
                continue
            per_round = ", ".join(f"{r.get('own_p99') or r['p99']:.0f}" for r in rows)
            cells = " | ".join("—" if peers.med(rows, key) is None else f"{peers.med(rows, key):.0f}" for key in ("p50", "p99", "p999", "own_p50", "own_p99", "own_p999",
                                                                  "linked", "up_p99", "client_p99", "cpu", "load_core"))
            lines.append(f"| {server} | {proto} | {cells} | {per_round} | {sum(r['errors'] for r in rows)} |")
    if "gateway" in SERVERS and "haproxy" in SERVERS:
        for key, label in (("p99", "wire"), ("own_p99", "own")):
            ratios = []
            for proto in PROTOS:
                g, h = results.get(("gateway", proto)), results.get(("haproxy", proto))
                if g and h and peers.med(g, key) is not None and peers.med(h, key) is not None:
                    rounds = ", ".join(f"{a[key] / b[key]:.2f}" for a, b in zip(g, h))
                    ratios.append(f"{proto} {peers.med(g, key) / peers.med(h, key):.2f} (rounds {rounds})")
            lines.append(f"\n{label.capitalize()} p99 ratio gateway/HAProxy: {'; '.join(ratios)} (target ≤ 1.5).")
    table = "\n".join(lines)
    print(table)
    if SAVE:
        peers.save_result("wire", "fixed-rate latency on the wire",
                          f"Command: `DUR={DUR} ROUNDS={ROUNDS} RATE={rate} benchmarks/wire.py --save` (release build).\n\n{table}")


if __name__ == "__main__":
    main()

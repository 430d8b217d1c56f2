#!/usr/bin/env python3
"""The training run of the profile-guided release build (driven by scripts/pgo-train.sh).

An instrumented gateway (BIN: built with `-ir-profile-generate`) serves the peers harness's
set-ups for a few seconds each, so the profile counts what production traffic runs: TLS HTTP/2 and
HTTP/1.1 keep-alive proxying on the plain route (`base`) and on the product's route (`cors`: a JWT
verified, the per-IP window in process, CORS), plus new connections (a TLS handshake per request).
Each gateway writes its counts (LLVM_PROFILE_FILE, one `.profraw` per process) when it exits on
SIGTERM; scripts/pgo-train.sh merges them.

  BIN=.build/pgo-gen/release PROFRAW_DIR=dir benchmarks/pgo_train.py   [SECS=5]
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402

SECS = int(os.environ.get("SECS", "5"))
# (set-up, load): the load tool's command before the URL. wrk with `Connection: close` makes every
# request a new TCP + TLS connection (h2load does not reconnect).
LOADS = [
    ("base", ["h2load", "-c16", "-m10", "-D", str(SECS)]),
    ("base", ["h2load", "--h1", "-c64", "-D", str(SECS)]),
    ("base", ["wrk", "-t1", "-c16", f"-d{SECS}s", "-H", "Connection: close"]),
    ("cors", ["h2load", "-c16", "-m10", "-D", str(SECS)]),
    ("cors", ["h2load", "--h1", "-c64", "-D", str(SECS)]),
]


def main():
    raw = Path(os.environ["PROFRAW_DIR"])
    raw.mkdir(parents=True, exist_ok=True)
    d = tempfile.mkdtemp(prefix="pgo-train-")
    run = peers.Run(d)
    run.server_env = {"LLVM_PROFILE_FILE": str(raw / "gateway-%p.profraw")}
    try:
        peers.set_up(run, d)
        for setup in dict.fromkeys(s for s, _ in LOADS):
            proc, port = run.start_server("gateway", setup)
            headers = run.headers("F" if setup == "cors" else "B")
            url = f"https://127.0.0.1:{port}{peers.PATH_}"
            for _, load in (entry for entry in LOADS if entry[0] == setup):
                out = subprocess.run(["taskset", "-c", "1", *load, *headers, url], capture_output=True, text=True,
                                     timeout=SECS + 60).stdout
                done = next((line.strip() for line in out.splitlines()
                             if line.startswith("requests:") or "requests in" in line), "no result")
                print(f"{setup} {' '.join(load)}: {done}", flush=True)
                if " 0 succeeded" in done or " 0 requests in" in done or done == "no result":
                    sys.exit(f"pgo_train: the load {load} on {setup} got no answers:\n{out}")
            run.stop(proc)
    finally:
        run.stop_all()
    if not any(path.stat().st_size > 4096 for path in raw.glob("*.profraw")):
        sys.exit(f"pgo_train: no counts written to {raw} (was BIN built with -ir-profile-generate?)")


if __name__ == "__main__":
    main()

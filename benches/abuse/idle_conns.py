#!/usr/bin/env python3
"""Holds N idle TCP connections to a Handle TCP listener (spread over
enough 127.0.x.1 addresses to stay under the per-address share) while a
client keeps resolving over TCP, then opens EXTRA more past the cap.
Prints one JSON object: connections held, the resolver's success and
latency with them held, and what happened past the cap.

Usage: idle_conns.py IDRES HOST:PORT HANDLE N EXTRA PER_ADDRESS
"""
import json
import resource
import socket
import subprocess
import sys
import time

idres, server, handle, n, extra, per = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
host, port = server.rsplit(":", 1)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))


def open_conns(count, start):
    out = []
    for i in range(count):
        k = start + i
        s = socket.socket()
        s.bind((f"127.0.{1 + k // per}.1", 0))
        s.connect((host, int(port)))
        out.append(s)
    return out


def resolve_rounds(rounds):
    ok, lat = 0, []
    for _ in range(rounds):
        t = time.perf_counter()
        r = subprocess.run([idres, "resolve", "--tcp", "--server", server, handle], capture_output=True, timeout=30)
        lat.append(time.perf_counter() - t)
        ok += r.returncode == 0
    lat.sort()
    return {"ok": ok, "of": rounds, "p50_ms": round(lat[len(lat) // 2] * 1e3, 2),
            "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1e3, 2)}


def closed(conns):
    gone = 0
    for s in conns:
        try:
            if s.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                gone += 1
        except BlockingIOError:
            pass
        except OSError:
            gone += 1
    return gone


t0 = time.time()
held = open_conns(n, 0)
opened_s = time.time() - t0
time.sleep(2)
with_held = resolve_rounds(100)
still_open = n - closed(held)
more = open_conns(extra, n)
time.sleep(2)
evicted_old = closed(held)
evicted_new = closed(more)
after = resolve_rounds(50)
print(json.dumps({"held": n, "opened_in_s": round(opened_s, 1), "open_after_2s": still_open,
                  "resolve_while_held": with_held, "opened_past_cap": extra,
                  "closed_among_first": evicted_old, "closed_among_new": evicted_new,
                  "resolve_after": after}))

#!/usr/bin/env python3
"""A mixed soak of one top node and one mirror: resolution over UDP and TCP,
registration over gRPC, sync to the mirror, for SOAK_SECS (default 1800).

Prints the RSS and open file descriptors of both servers after a warm-up
and at the end, and their ratio (target: flat within 10%), with the work
done. Usage: python3 benches/abuse/soak.py /path/to/idres [seconds]
"""
import importlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc
from grpc_tools import protoc

IDRES = sys.argv[1]
SECS = int(sys.argv[2]) if len(sys.argv) > 2 else int(os.environ.get("SOAK_SECS", "1800"))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPERATOR = (("x-idres-dev-peer", "operator:soak"),)
work = tempfile.mkdtemp(prefix="idres-soak-")


def stubs():
    out = os.path.join(work, "gen")
    os.makedirs(out)
    files = [os.path.join("idres", "v1", f) for f in ("common.proto", "registry.proto", "sync.proto")]
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    assert protoc.main(["protoc", f"-I{ROOT}/proto", f"-I{well_known}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *files]) == 0
    sys.path.insert(0, out)
    return {n: importlib.import_module(f"idres.v1.{n}") for n in
            ("common_pb2", "registry_pb2", "registry_pb2_grpc", "sync_pb2", "sync_pb2_grpc")}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(name, args, config=""):
    d = os.path.join(work, name)
    os.makedirs(d)
    cfg = os.path.join(d, "idres.toml")
    with open(cfg, "w") as f:
        # Retention bounded as a long-running node would have it, so that
        # the data, and with it the memory, should stay level.
        f.write("[handle]\nudp_rate_bytes = 0\n[store]\nidempotency_window = 20000\n" + config)
    log = open(os.path.join(d, "serve.log"), "w")
    p = subprocess.Popen([IDRES, "serve", "--config", cfg, "--data-dir", os.path.join(d, "data"), *args],
                         stdout=subprocess.PIPE, stderr=log, text=True, env={**os.environ, "IDRES_LOG": "warn"})
    faces = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        line = p.stdout.readline()
        m = re.match(r"listening (\w+) (\S+)", line)
        if m:
            faces[m.group(1)] = m.group(2)
        if "grpc" in faces and "handle" in faces:
            break
    threading.Thread(target=p.stdout.read, daemon=True).start()
    return p, faces


def sample(pid):
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def main():
    pb = stubs()
    gport = free_port()
    top, tf = start("top", ["--handle-listen", "127.0.0.1:0", "--grpc-listen", f"127.0.0.1:{gport}",
                            "--grpc-dev-plaintext"], "[grpc]\nkeep_changes = 20000\n")
    mirror, mf = start("mirror", ["--role", "mirror", "--upstream", f"http://127.0.0.1:{gport}",
                                  "--handle-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
                                  "--grpc-dev-plaintext"], '[grpc]\nupstream_dev_peer = "operator:mirror"\nkeep_changes = 20000\n')
    stop = threading.Event()
    counts = {"registered": 0, "resolved_udp": 0, "resolved_tcp": 0, "errors": 0}
    handles = []
    lock = threading.Lock()

    def register():
        reg, common = pb["registry_pb2"], pb["common_pb2"]
        with grpc.insecure_channel(tf["grpc"]) as ch:
            stub = pb["registry_pb2_grpc"].RegistryServiceStub(ch)
            i = 0
            while not stop.is_set():
                ops = []
                for _ in range(50):
                    # Upserts over a fixed set of handles: the data stays the same
                    # size, so memory should too.
                    h = f"88.118.{i % 50}/SOAK{i % 20000:06d}"
                    ops.append(reg.Operation(operation_id=f"soak-{uuid.uuid4()}", kind=reg.OPERATION_KIND_UPSERT,
                                             handle=h, values=[common.HandleValue(
                                                 index=1, type="URL", data=f"https://soak.example/{i}".encode())]))
                    i += 1
                try:
                    stub.RegisterBatch(reg.RegisterBatchRequest(operations=ops), timeout=30, metadata=OPERATOR)
                    with lock:
                        counts["registered"] += len(ops)
                        handles.extend(o.handle for o in ops[:2])
                except grpc.RpcError:
                    counts["errors"] += 1
                time.sleep(0.25)

    def resolve(transport):
        host, port = tf["handle"].rsplit(":", 1)
        while not stop.is_set():
            with lock:
                h = handles[-1] if handles else None
            if h is None:
                time.sleep(0.1)
                continue
            r = subprocess.run([IDRES, "resolve", "--server", f"{host}:{port}", *(["--tcp"] if transport == "tcp" else []), h],
                               capture_output=True, text=True, timeout=30)
            key = f"resolved_{transport}"
            counts[key if r.returncode == 0 else "errors"] += 1
            time.sleep(0.02)

    threads = [threading.Thread(target=register, daemon=True)]
    threads += [threading.Thread(target=resolve, args=(t,), daemon=True) for t in ("udp", "tcp")]
    for t in threads:
        t.start()
    # Past the retention limits (20,000 changes at about 200 a second).
    warm = min(180, SECS // 10)
    time.sleep(warm)
    start_top, start_mirror = sample(top.pid), sample(mirror.pid)
    print(f"after {warm} s warm-up: top rss={start_top[0]} kB fds={start_top[1]}; "
          f"mirror rss={start_mirror[0]} kB fds={start_mirror[1]}", flush=True)
    t0 = time.time()
    while time.time() - t0 < SECS - warm:
        time.sleep(min(60, SECS - warm))
        st, sm = sample(top.pid), sample(mirror.pid)
        print(f"t={int(time.time() - t0 + warm)} s top rss={st[0]} fds={st[1]} mirror rss={sm[0]} fds={sm[1]} "
              f"{json.dumps(counts)}", flush=True)
    end_top, end_mirror = sample(top.pid), sample(mirror.pid)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    print(json.dumps({
        "seconds": SECS, "work": counts,
        "top": {"rss_kb": [start_top[0], end_top[0]], "fds": [start_top[1], end_top[1]],
                "rss_ratio": round(end_top[0] / start_top[0], 3), "fd_ratio": round(end_top[1] / start_top[1], 3)},
        "mirror": {"rss_kb": [start_mirror[0], end_mirror[0]], "fds": [start_mirror[1], end_mirror[1]],
                   "rss_ratio": round(end_mirror[0] / start_mirror[0], 3),
                   "fd_ratio": round(end_mirror[1] / start_mirror[1], 3)},
    }), flush=True)
    for p in (mirror, top):
        p.terminate()
        p.wait(timeout=20)


if __name__ == "__main__":
    main()

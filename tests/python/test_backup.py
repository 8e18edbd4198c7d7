"""Backup and restore of a running node, checked from outside the binary.

`idres backup` copies a running node through its control socket while it
writes; `idres restore` builds a new store from the copy, and the restored
store is compared with the source by `idres export` (JSON Lines in key
order), by the change log's head sequence number, and by the gRPC
SyncService digests of nodes that follow one another. Damaged copies are
refused with the byte offset of the fault. Replicas that followed a node
before it was restored from a backup, and replicas seeded from a backup with
`restore --follow`, go on from the backup's sequence number without a
snapshot.

Nodes listen on 127.0.0.1 only, gRPC in development plaintext (callers name
themselves in `x-idres-dev-peer`) except for the secondary node, which
follows its top over mutual TLS with `idres cert` certificates. Every wait
is bounded; every node is stopped at the end of its test.
"""

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
import uuid
import zlib

import grpc
import pytest
import requests

from idres_http_node import IDRES, PREFIX, SECRET, _retrying, basic, run_idres, start_node, stop_process
from test_grpc import CREDIT_CODE, channel, pb, pki  # noqa: F401  (fixtures: generated client, `idres cert` PKI)

#: bound of every wait for a node to do something
WAIT = 30
OPERATOR = (("x-idres-dev-peer", "operator:alice"),)
LOG_FILTER = "warn,idres::serve=info,idres_grpc::replica=info"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=WAIT, every=0.1):
    """Polls check() until it returns something true; returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (grpc.RpcError, requests.RequestException, OSError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


class Server:
    """A running `idres serve` on loopback, its JSON log in a file."""

    def __init__(self, directory, args, faces, config=""):
        os.makedirs(directory, exist_ok=True)
        self.dir = str(directory)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "serve.log")
        cmd = [IDRES, "--log-format", "json", "serve", "--data-dir", self.data,
               "--handle-listen", "127.0.0.1:0", *map(str, args)]
        if config:
            path = os.path.join(self.dir, "idres.toml")
            with open(path, "w") as f:
                f.write(config)
            cmd += ["--config", path]
        env = {**os.environ, "IDRES_LOG": LOG_FILTER}
        self.log_file = open(self.log, "ab")
        self.proc = _retrying(lambda: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log_file,
                                                       text=True, env=env))
        self.faces = {}
        found = threading.Event()

        def read():
            for line in self.proc.stdout:
                m = re.match(r"listening (\w+) (127\.0\.0\.1:\d+)", line)
                if m:
                    self.faces[m.group(1)] = m.group(2)
                    if set(faces) <= self.faces.keys():
                        found.set()
        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + WAIT
        while not found.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"idres serve {args} did not announce {faces} within {WAIT}s "
                                     f"(exit code {self.proc.returncode}): {self.faces}\n{self.log_tail()}")

    def log_tail(self, n=20):
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def events(self, message):
        """The JSON log lines with this message, in order."""
        out = []
        with open(self.log, errors="replace") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("message") == message:
                    out.append(e)
        return out

    def channel(self):
        return grpc.insecure_channel(self.faces["grpc"])

    def stop(self):
        stop_process(self.proc)
        self.log_file.close()


@pytest.fixture
def servers():
    """Starts nodes and stops every one at the end of the test."""
    started = []

    def start(*args, **kwargs):
        s = Server(*args, **kwargs)
        started.append(s)
        return s
    yield start
    for s in started:
        s.stop()


SUMMARY = re.compile(r"(backup|restore): (\d+) records, (\d+) keys, last sequence number (\d+), "
                     r"(\d+) bytes in [\d.]+ s")


def backup(data_dir, out):
    """`idres backup`; returns (records, last sequence number) of its summary."""
    r = run_idres("backup", "--data-dir", data_dir, out)
    m = SUMMARY.search(r.stderr)
    assert m and m.group(1) == "backup", r.stderr
    assert int(m.group(5)) == os.path.getsize(out), r.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    return int(m.group(2)), int(m.group(4))


def restore(path, data_dir, source_data, *extra):
    """`idres restore` and the source's secrets.key; returns (records, last sequence number)."""
    r = run_idres("restore", path, "--data-dir", data_dir, *extra)
    m = SUMMARY.search(r.stderr)
    assert m and m.group(1) == "restore", r.stderr
    shutil.copy2(os.path.join(source_data, "secrets.key"), os.path.join(data_dir, "secrets.key"))
    return int(m.group(2)), int(m.group(4))


def export(data_dir, out):
    run_idres("export", "--data-dir", data_dir, out)
    with open(out, "rb") as f:
        return f.read().splitlines()


def url_value(pbm, text):
    return pbm["common"].HandleValue(index=1, type="URL", data=text.encode())


def register(pbm, channel, handles, tag):
    """Upserts the handles on a node as an operator, in one client stream."""
    reg = pbm["registry"]
    ops = [reg.Operation(operation_id=f"{tag}-{uuid.uuid4()}", kind=reg.OPERATION_KIND_UPSERT, handle=h,
                         values=[url_value(pbm, f"https://factory.example.cn/{tag}/{h}")]) for h in handles]
    summary = pbm["registry_grpc"].RegistryServiceStub(channel).RegisterStream(iter(ops), timeout=WAIT,
                                                                               metadata=OPERATOR)
    assert summary.applied == len(handles) and not summary.failures, summary


def status(pbm, channel):
    return pbm["sync_grpc"].SyncServiceStub(channel).Status(pbm["sync"].SyncStatusRequest(), timeout=WAIT,
                                                            metadata=OPERATOR)


def digest(pbm, channel, prefix=""):
    d = pbm["sync_grpc"].SyncServiceStub(channel).Digest(pbm["sync"].DigestRequest(prefix=prefix), timeout=WAIT,
                                                         metadata=OPERATOR)
    return d.count, d.sha256


def wait_converged(pbm, source, replica, what, prefix=""):
    """Waits until the replica's digest equals the source's; returns it."""
    src, rep = source.channel(), replica.channel()
    try:
        def same():
            a, b = digest(pbm, src, prefix), digest(pbm, rep, prefix)
            return a if a == b else None
        return wait_for(what, same)
    finally:
        src.close()
        rep.close()


# ---------------------------------------------------------------------------


def test_backup_under_continuous_writes_is_consistent(tmp_path, servers):
    initial = [{"handle": f"{PREFIX}/BASE{i:05}",
                "values": [{"index": 1, "type": "URL", "data": f"https://factory.example.cn/base/{i}"}]}
               for i in range(20000)]
    (tmp_path / "src").mkdir()
    node = start_node(str(tmp_path / "src"), records=initial)
    try:
        sock = os.path.join(node.data_dir, "control.sock")
        assert stat.S_ISSOCK(os.stat(sock).st_mode)
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600

        def head(base):
            text = requests.get(f"{base}/metrics", timeout=WAIT).text
            m = re.search(r"^idres_changelog_head_sequence(?:\{[^}]*\})? (\d+)", text, re.M)
            assert m, "no idres_changelog_head_sequence in /metrics"
            return int(m.group(1))
        seq0 = head(node.base)

        started, acked, errors = [0], [0], []
        stop = threading.Event()

        def writer():
            session = requests.Session()
            session.headers["Authorization"] = basic()
            i = 0
            while not stop.is_set() and i < 100000:
                started[0] = i + 1
                try:
                    r = session.put(f"{node.base}/api/handles/{PREFIX}/W{i}?overwrite=false", timeout=WAIT,
                                    json={"values": [{"index": 1, "type": "URL",
                                                      "data": f"https://factory.example.cn/w/{i}"}]})
                except requests.RequestException as e:
                    errors.append(repr(e))
                    return
                if r.status_code != 201:
                    errors.append(f"W{i}: {r.status_code} {r.text}")
                    return
                i += 1
                acked[0] = i
        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            wait_for("the first 20 writes", lambda: acked[0] >= 20 or errors, every=0.02)
            assert not errors, errors
            out = str(tmp_path / "node.bak")
            acked_before = acked[0]
            t0 = time.monotonic()
            records, last_seq = backup(node.data_dir, out)
            took = time.monotonic() - t0
            started_by_end = started[0]
            wait_for("20 writes after the backup", lambda: acked[0] >= started_by_end + 20 or errors,
                     every=0.02)
            assert not errors, errors
            # the same file is not written over, by a backup of the running node either
            before = open(out, "rb").read()
            again = run_idres("backup", "--data-dir", node.data_dir, out, check=False)
            assert again.returncode != 0 and "exists" in again.stderr, again.stderr
            assert open(out, "rb").read() == before
        finally:
            stop.set()
            t.join(timeout=WAIT)
        assert not t.is_alive()
        assert not errors, errors
        total = acked[0]
    finally:
        node.stop()

    with open(out, "rb") as f:
        t = trailer(f.read())
    assert (t["records"], t["last_seq"]) == (records, last_seq), t
    assert t["redo_ops"] > 0, f"no write landed while the store was being read: {t}"
    restored = str(tmp_path / "restored" / "data")
    r_records, r_seq = restore(out, restored, node.data_dir)
    assert (r_records, r_seq) == (records, last_seq)
    src = export(node.data_dir, str(tmp_path / "src.jsonl"))
    dst = export(restored, str(tmp_path / "restored.jsonl"))

    def w_index(line):
        m = re.fullmatch(rf"{re.escape(PREFIX)}/W(\d+)", json.loads(line)["handle"])
        return int(m.group(1)) if m else None
    got = sorted(i for i in map(w_index, dst) if i is not None)
    k = len(got)
    assert got == list(range(k)), "the backup holds a write without every write acknowledged before it"
    assert len([i for i in map(w_index, src) if i is not None]) == total
    assert acked_before <= k <= started_by_end, (acked_before, k, started_by_end)
    assert 0 < k < total, f"the backup ({took:.2f} s) did not land in the middle of {total} writes: k={k}"
    expected = [line for line in src if w_index(line) is None or w_index(line) < k]
    assert dst == expected, f"the restored store is not the source as it was after write W{k - 1}"
    assert records == len(expected)
    # each write made one change: the backup is the point in time right after write k-1
    assert last_seq == seq0 + k, (seq0, k, last_seq)

    # The restored node serves from the backup's head and knows the administrator's secret.
    node2 = servers(tmp_path / "restored", ["--http-listen", "127.0.0.1:0"], ["http"])
    base = f"http://{node2.faces['http']}"
    assert head(base) == last_seq
    r = requests.put(f"{base}/api/handles/{PREFIX}/AFTER?overwrite=false", headers={"Authorization": basic()},
                     json={"values": [{"index": 1, "type": "URL", "data": "https://factory.example.cn/after"}]},
                     timeout=WAIT)
    assert r.status_code == 201, r.text
    assert head(base) == last_seq + 1


MAGIC = b"IDRESBAK"
KIND_TRAILER = 255


def frames(data):
    """The frames of a backup file, parsed and checked independently of the
    binary (docs in crates/idres-store/src/backup.rs): [(offset, kind, payload)]."""
    assert data[:8] == MAGIC
    out, pos = [], 8
    while pos < len(data):
        kind, length = data[pos], int.from_bytes(data[pos + 1:pos + 5], "big")
        payload = data[pos + 5:pos + 5 + length]
        crc = int.from_bytes(data[pos + 5 + length:pos + 9 + length], "big")
        assert len(payload) == length and crc == zlib.crc32(data[pos:pos + 5 + length]), f"frame at {pos}"
        out.append((pos, kind, payload))
        pos += 9 + length
    assert pos == len(data)
    assert out[0][1] == 0 and out[-1][1] == KIND_TRAILER
    trailer_at, _, t = out[-1]
    assert len(t) == 6 * 8 + 32
    assert t[48:] == hashlib.sha256(data[:trailer_at]).digest()
    return out


def trailer(data):
    names = ("base_entries", "redo_ops", "last_seq", "first_seq", "records", "finished")
    t = frames(data)[-1][2]
    return {n: int.from_bytes(t[8 * i:8 * i + 8], "big") for i, n in enumerate(names)}


REFUSED = re.compile(r"backup refused at byte offset (\d+): (.+)")


def refused(tmp_path, name, data, existing=False):
    """Restores `data`; asserts it is refused and nothing is made. Returns (offset, reason)."""
    path = tmp_path / f"{name}.bak"
    path.write_bytes(data)
    target = tmp_path / f"{name}.restored"
    if existing:
        target.mkdir()
    r = run_idres("restore", path, "--data-dir", target, check=False)
    assert r.returncode == 2, f"{name}: exit code {r.returncode}\n{r.stderr}"
    m = REFUSED.search(r.stderr)
    assert m, f"{name}: {r.stderr}"
    if existing:
        assert target.is_dir() and not any(target.iterdir()), f"{name}: {list(target.iterdir())}"
    else:
        assert not target.exists(), f"{name}: {target} was made"
    return int(m.group(1)), m.group(2)


def test_damaged_backups_are_refused(tmp_path):
    data = tmp_path / "data"
    secret = tmp_path / "admin.secret"
    secret.write_text(SECRET + "\n")
    run_idres("init-prefix", "--data-dir", data, "--prefix", PREFIX, "--admin", "300:88.118.8/ADMIN",
              "--secret-file", secret)
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"handle": f"{PREFIX}/D{i:04}", "values": [
        {"index": 1, "type": "URL", "data": f"https://factory.example.cn/d/{i}"}]}) + "\n" for i in range(2000)))
    run_idres("import", "--data-dir", data, records)

    good = tmp_path / "good.bak"
    n, last_seq = backup(data, good)  # of a stopped node's directory
    raw = good.read_bytes()
    fs = frames(raw)
    t = trailer(raw)
    assert (t["records"], t["last_seq"]) == (n, last_seq) == (2002, 2002)

    # An existing file is never replaced, by a backup from a directory either.
    out = tmp_path / "precious"
    out.write_bytes(b"keep me")
    r = run_idres("backup", "--data-dir", data, out, check=False)
    assert r.returncode != 0 and "exists" in r.stderr, r.stderr
    assert out.read_bytes() == b"keep me"

    # The intact file restores (so what follows is refused for its damage).
    assert restore(good, str(tmp_path / "ok"), str(data)) == (n, last_seq)
    assert export(str(tmp_path / "ok"), str(tmp_path / "ok.jsonl")) == export(str(data), str(tmp_path / "src.jsonl"))

    # Truncated anywhere: refused, at an offset inside what is left.
    cuts = {0, 4, 8, 10, len(raw) - 1, len(raw) - 40}
    for at, _, payload in fs:
        cuts |= {at, at + 3, at + 5 + len(payload) // 2, at + 5 + len(payload) + 2}
    for cut in sorted(c for c in cuts if c < len(raw)):
        offset, reason = refused(tmp_path, f"cut{cut}", raw[:cut])
        assert offset <= cut, (cut, offset, reason)
        if cut > 8:
            assert "truncated" in reason, (cut, reason)

    # A flipped bit in a frame's payload or checksum: refused at that frame.
    offset, _ = refused(tmp_path, "magic", bytes([raw[0] ^ 1]) + raw[1:])
    assert offset == 0
    for i, (at, kind, payload) in enumerate(fs):
        for pos in (at + 5 + len(payload) // 2, at + 5 + len(payload) + 3):
            flipped = bytearray(raw)
            flipped[pos] ^= 0x04
            offset, reason = refused(tmp_path, f"flip{pos}", bytes(flipped), existing=(i == 1))
            assert offset == at, (kind, pos, offset, reason)
            assert "checksum" in reason, reason

    # A frame changed with its checksum made to match: the whole-file SHA-256 catches it.
    base_at, _, base = next(f for f in fs if f[1] == 1)
    forged = bytearray(raw)
    forged[base_at + 5 + len(base) // 2] ^= 0x04
    crc_at = base_at + 5 + len(base)
    forged[crc_at:crc_at + 4] = zlib.crc32(bytes(forged[base_at:crc_at])).to_bytes(4, "big")
    offset, reason = refused(tmp_path, "forged", bytes(forged))
    assert offset == fs[-1][0] and "SHA-256" in reason, (offset, reason)

    # Bytes after the trailer.
    offset, reason = refused(tmp_path, "tail", raw + b"\0")
    assert offset == len(raw), (offset, reason)


def grpc_top(servers, directory, port):
    return servers(directory, ["--grpc-listen", f"127.0.0.1:{port}", "--grpc-dev-plaintext"], ["grpc"])


def grpc_mirror(servers, directory, upstream):
    return servers(directory, ["--role", "mirror", "--upstream", upstream,
                               "--grpc-listen", "127.0.0.1:0", "--grpc-dev-plaintext"], ["grpc"],
                   config='[grpc]\nupstream_dev_peer = "operator:mirror"\n')


def test_restored_top_is_followed_by_existing_mirror_without_snapshot(tmp_path, servers, pb):
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    top = grpc_top(servers, tmp_path / "top", port)
    mirror = grpc_mirror(servers, tmp_path / "mirror", upstream)
    with top.channel() as ch:
        register(pb, ch, [f"{PREFIX}/M{i:03}" for i in range(300)], "before")
    count, _ = wait_converged(pb, top, mirror, "the mirror catches up")
    assert count == 300
    first = mirror.events("following")
    assert first and first[0]["from_seq"] == 1 and first[0]["upstream"] == upstream

    records, last_seq = backup(top.data, str(tmp_path / "top.bak"))
    with top.channel() as ch:
        assert status(pb, ch).last_seq == last_seq
    assert records == 300
    top.stop()

    restore(str(tmp_path / "top.bak"), str(tmp_path / "top2" / "data"), top.data)
    before = len(mirror.events("following"))
    top2 = grpc_top(servers, tmp_path / "top2", port)
    with top2.channel() as ch:
        st = status(pb, ch)
        assert (st.last_seq, st.handle_count) == (last_seq, 300)
        register(pb, ch, [f"{PREFIX}/N{i:03}" for i in range(200)], "after")
        assert status(pb, ch).last_seq == last_seq + 200
    count, _ = wait_converged(pb, top2, mirror, "the mirror follows the restored top")
    assert count == 500
    resumed = mirror.events("following")[before:]
    assert resumed, "the mirror did not log following the restored top"
    for e in resumed:
        assert e["from_seq"] > 1 and e["resume_snapshot_seq"] == 0, e
        assert e["from_seq"] == last_seq + 1, e


def test_mirror_seeded_from_backup_converges(tmp_path, servers, pb):
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    top = grpc_top(servers, tmp_path / "top", port)
    with top.channel() as ch:
        register(pb, ch, [f"{PREFIX}/S{i:03}" for i in range(300)], "seed")
        records, last_seq = backup(top.data, str(tmp_path / "top.bak"))
        # changes after the backup, before the mirror exists: it must fetch them from the log
        register(pb, ch, [f"{PREFIX}/S{i:03}" for i in range(0, 300, 7)], "changed")
        register(pb, ch, [f"{PREFIX}/T{i:03}" for i in range(50)], "new")
    assert (records, last_seq) == (300, 300)

    mirror_data = str(tmp_path / "mirror" / "data")
    assert restore(str(tmp_path / "top.bak"), mirror_data, top.data, "--follow", upstream) == (records, last_seq)
    mirror = grpc_mirror(servers, tmp_path / "mirror", upstream)
    first = wait_for("the mirror's first following line", lambda: mirror.events("following"))[0]
    assert first["upstream"] == upstream
    assert (first["from_seq"], first["resume_snapshot_seq"]) == (last_seq + 1, 0), first
    count, _ = wait_converged(pb, top, mirror, "the seeded mirror catches up")
    assert count == 350
    with top.channel() as ch:
        register(pb, ch, [f"{PREFIX}/U{i:03}" for i in range(100)], "later")
    count, _ = wait_converged(pb, top, mirror, "the seeded mirror follows")
    assert count == 450
    assert len(mirror.events("following")) == 1, mirror.events("following")


def test_restored_top_is_followed_by_secondary_over_mutual_tls(tmp_path, servers, pb, pki):
    node_pb = pb["node"]
    port = free_port()
    upstream = f"https://localhost:{port}"
    serving = (f'cert = "{pki / "top.pem"}"\nkey = "{pki / "top-key.pem"}"\nclient_ca = "{pki / "ca.pem"}"\n')
    top_args = ["--grpc-listen", f"127.0.0.1:{port}"]
    top = servers(tmp_path / "top", top_args, ["grpc"], config="[grpc]\n" + serving)

    def tls(server, who):
        return channel(pki, server.faces, who)

    # File the secondary node, approve it, allocate it the prefix (test_grpc.py's flow).
    with tls(top, "node-py") as node_ch, tls(top, "alice") as op_ch:
        filing = pb["node_grpc"].NodeServiceStub(node_ch).File(node_pb.FileRequest(
            organisation="示例装备制造有限公司", credit_code=CREDIT_CODE,
            contact=node_pb.Contact(name="张三", email="ops@example.cn"), industry="C34",
            service_addresses=[pb["common"].ServiceAddress(host="127.0.0.1", port=2641)]), timeout=WAIT)
        ops = pb["node_grpc"].NodeServiceStub(op_ch)
        ops.Approve(node_pb.TransitionRequest(id=filing.id, reason="licence checked"), timeout=WAIT)
        ops.Allocate(node_pb.AllocateRequest(filing_id=filing.id, prefix=PREFIX, reason="first"), timeout=WAIT)
        register(pb, op_ch, [f"{PREFIX}/E{i:03}" for i in range(200)], "escrowed")

    secondary = servers(tmp_path / "secondary", ["--role", "secondary", "--upstream", upstream,
                                                 "--grpc-listen", "127.0.0.1:0"], ["grpc"], config=(
        "[grpc]\n" + serving + f'upstream_ca = "{pki / "ca.pem"}"\n'
        f'upstream_cert = "{pki / "node-py.pem"}"\nupstream_key = "{pki / "node-py-key.pem"}"\n'))

    def converged(source, what):
        def same():
            with tls(source, "alice") as a, tls(secondary, "alice") as b:
                got = [(digest(pb, a, p), digest(pb, b, p)) for p in ("0.NA", PREFIX)]
            return [x for x, y in got] if all(x == y for x, y in got) else None
        return wait_for(what, same, every=0.2)

    (_, _), (count, _) = converged(top, "the secondary follows the top")
    assert count == 200
    first = secondary.events("following")
    assert first and first[0]["upstream"] == upstream

    records, last_seq = backup(top.data, str(tmp_path / "top.bak"))
    with tls(top, "alice") as ch:
        assert status(pb, ch).last_seq == last_seq
    top.stop()
    restore(str(tmp_path / "top.bak"), str(tmp_path / "top2" / "data"), top.data)
    before = len(secondary.events("following"))
    top2 = servers(tmp_path / "top2", top_args, ["grpc"], config="[grpc]\n" + serving)
    with tls(top2, "alice") as ch:
        assert status(pb, ch).last_seq == last_seq
        # the filing and its allocation came back with the store
        listed = pb["node_grpc"].NodeServiceStub(ch).ListPrefixes(node_pb.ListPrefixesRequest(), timeout=WAIT)
        assert PREFIX in [p.prefix for p in listed.prefixes], listed
        register(pb, ch, [f"{PREFIX}/F{i:03}" for i in range(100)], "after")
    (_, _), (count, _) = converged(top2, "the secondary follows the restored top")
    assert count == 300
    resumed = secondary.events("following")[before:]
    assert resumed, "the secondary did not log following the restored top"
    for e in resumed:
        assert e["from_seq"] == last_seq + 1 and e["resume_snapshot_seq"] == 0, e
    # and escrows its own new identifiers to the restored top
    with tls(secondary, "alice") as ch:
        register(pb, ch, [f"{PREFIX}/LOCAL{i}" for i in range(5)], "local")
    (_, _), (count, _) = converged(top2, "the restored top holds the secondary's escrowed identifiers")
    assert count == 305

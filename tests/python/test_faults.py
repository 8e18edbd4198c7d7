"""Faults, checked from outside the binary: a top node killed (SIGKILL) under
registration load, and escrow from a secondary node facing a message too
large to send in one batch and a record the top refuses.

1. Rounds of load on a top node (authenticated HTTP PUTs from several
   threads, gRPC RegisterBatch from others), each ended by SIGKILL of
   `idres serve` mid-load; after each restart on the same data directory
   every write that was acknowledged must be there with its values, and
   have its change-log entry (the SyncService stream from sequence 1), and
   the log must be gapless (1..head).
2. A filed secondary node registers 100 records of ~70 KB (7 MB, above the
   4 MiB default gRPC message size); escrow delivers them all to the top.
3. The top accepts records of at most `[store] max_record_bytes` = 8192;
   the secondary (default 131072) escrows A, B (~20 KB), C: A and C
   arrive, B is a dead letter (metric and a warning naming it) and escrow
   goes on (D arrives). `idres import` of a record with no values is
   refused at a secondary, as the top refuses it.

Nodes listen on 127.0.0.1 only. The top of tests 1 serves gRPC in
development plaintext (callers name themselves in `x-idres-dev-peer`); in
2 and 3 the secondary follows and escrows to its top over mutual TLS with
`idres cert` certificates. Every wait is bounded.
"""

import json
import random
import threading
import time

import grpc
import requests

from idres_http_node import ADMIN, PREFIX, SECRET, basic, run_idres
from test_backup import OPERATOR, digest, free_port, servers, status, wait_for  # noqa: F401  (fixture)
from test_grpc import CREDIT_CODE, channel, pb, pki  # noqa: F401  (fixtures)
from test_observability import samples, scrape

WAIT = 30
ROUNDS = 4
HTTP_WRITERS = 4
GRPC_WRITERS = 2
GRPC_BATCH = 25
#: a Python client reads messages up to this size (the default is 4 MiB)
BIG = [("grpc.max_receive_message_length", 64 << 20)]


def init_prefix(directory):
    """`idres init-prefix` of 88.118.8 with ADMIN/SECRET in DIRECTORY/data."""
    directory.mkdir(parents=True, exist_ok=True)
    secret = directory / "admin.secret"
    secret.write_text(SECRET + "\n")
    run_idres("init-prefix", "--data-dir", directory / "data", "--prefix", PREFIX, "--admin", ADMIN,
              "--secret-file", secret)


def values_of(record):
    return [(v.index, v.type, bytes(v.data)) for v in record.values]


def change_log(pb, ch):
    """The whole change log as {seq: handle} (SyncService.Subscribe from 1),
    and the last through_seq the stream reported."""
    log, through = {}, 0
    stream = pb["sync_grpc"].SyncServiceStub(ch).Subscribe(
        pb["sync"].SubscribeRequest(from_seq=1, stop_when_caught_up=True), timeout=WAIT, metadata=OPERATOR)
    for batch in stream:
        assert batch.WhichOneof("phase") == "changes", batch
        through = max(through, batch.changes.through_seq)
        for e in batch.entries:
            assert e.seq not in log, f"seq {e.seq} twice: {log[e.seq]}, {e.handle}"
            log[e.seq] = e.handle
    return log, through


def resolve_all(pb, ch, handles):
    """{handle: record or None} at a node, by BatchResolve in pages of 1000."""
    out = {}
    resolver = pb["registry_grpc"].ResolveServiceStub(ch)
    for i in range(0, len(handles), 1000):
        chunk = handles[i:i + 1000]
        got = resolver.BatchResolve(pb["registry"].BatchResolveRequest(handles=chunk), timeout=WAIT,
                                    metadata=OPERATOR)
        for h, r in zip(chunk, got.results):
            assert r.handle == h, (h, r.handle)
            out[h] = r.record if r.code == 0 and r.HasField("record") else None
    return out


# ------------------------------------------------------------------ 1

class Load:
    """HTTP and gRPC writers against one node until told to stop or the node
    goes away. `acked` maps each handle whose write was acknowledged to
    (data, sequence number or None); `errors` holds refusals of a live node."""

    def __init__(self, pb, node, tag, acked):
        self.pb, self.node, self.tag, self.acked = pb, node, tag, acked
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors, self.ended = [], []
        self.counts = {"http": 0, "grpc": 0}
        self.threads = [threading.Thread(target=self.http, args=(t,), daemon=True) for t in range(HTTP_WRITERS)]
        self.threads += [threading.Thread(target=self.grpc, args=(t,), daemon=True) for t in range(GRPC_WRITERS)]
        for t in self.threads:
            t.start()

    def ack(self, face, handle, data, seq):
        with self.lock:
            self.acked[handle] = (data, seq)
            self.counts[face] += 1

    def http(self, t):
        session = requests.Session()
        session.headers["Authorization"] = basic()
        base = f"http://{self.node.faces['http']}"
        i = 0
        while not self.stop.is_set():
            handle = f"{PREFIX}/{self.tag}-H{t}-{i}"
            data = f"https://factory.example.cn/{self.tag}/h{t}/{i}"
            try:
                r = session.put(f"{base}/api/handles/{handle}?overwrite=false", timeout=10,
                                json={"values": [{"index": 1, "type": "URL", "data": data}]})
            except requests.RequestException as e:
                self.ended.append(f"http{t}: {type(e).__name__}")
                return
            if r.status_code != 201:
                self.errors.append(f"PUT {handle}: {r.status_code} {r.text[:200]}")
                return
            self.ack("http", handle, data.encode(), None)
            i += 1

    def grpc(self, t):
        reg, common = self.pb["registry"], self.pb["common"]
        with grpc.insecure_channel(self.node.faces["grpc"]) as ch:
            stub = self.pb["registry_grpc"].RegistryServiceStub(ch)
            i = 0
            while not self.stop.is_set():
                ops = []
                for _ in range(GRPC_BATCH):
                    handle = f"{PREFIX}/{self.tag}-G{t}-{i}"
                    ops.append(reg.Operation(operation_id=f"{self.tag}-g{t}-{i}", kind=reg.OPERATION_KIND_UPSERT,
                                             handle=handle, values=[common.HandleValue(
                                                 index=1, type="URL", data=f"grpc:{self.tag}/{t}/{i}".encode())]))
                    i += 1
                try:
                    out = stub.RegisterBatch(reg.RegisterBatchRequest(operations=ops), timeout=10,
                                             metadata=OPERATOR)
                except grpc.RpcError as e:
                    self.ended.append(f"grpc{t}: {e.code()}")
                    return
                for op, r in zip(ops, out.results):
                    if r.code != 0 or r.replayed or r.seq == 0:
                        self.errors.append(f"RegisterBatch {op.handle}: {r}")
                        return
                    self.ack("grpc", op.handle, op.values[0].data, r.seq)

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in self.threads), "a writer did not end within 15 s"


def check_nothing_lost(pb, node, acked):
    """Every acknowledged write is present with its values and its change-log
    entry; the log is 1..head without a hole. Returns (head, lost)."""
    with grpc.insecure_channel(node.faces["grpc"], options=BIG) as ch:
        st = status(pb, ch)
        log, through = change_log(pb, ch)
        records = resolve_all(pb, ch, sorted(acked))
    assert st.first_seq == 1, st
    holes = sorted(set(range(1, st.last_seq + 1)) - log.keys())
    beyond = sorted(s for s in log if s > st.last_seq)
    assert not holes and not beyond and through == st.last_seq, (
        f"change log is not 1..{st.last_seq}: {len(holes)} missing {holes[:10]}, beyond head {beyond[:10]}, "
        f"through_seq {through}")
    logged = set(log.values())
    lost = []
    for handle, (data, seq) in sorted(acked.items()):
        rec = records[handle]
        if rec is None:
            lost.append(f"{handle}: not found")
        elif values_of(rec) != [(1, "URL", data)]:
            lost.append(f"{handle}: values {values_of(rec)}")
        elif seq is not None and log.get(seq) != handle:
            lost.append(f"{handle}: acknowledged as seq {seq}, the log has {log.get(seq)!r} there")
        elif handle not in logged:
            lost.append(f"{handle}: no change-log entry")
    return st.last_seq, lost


def test_kill9_under_registration_load_loses_no_acknowledged_write(tmp_path, servers, pb):
    d = tmp_path / "top"
    init_prefix(d)
    args = ["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--grpc-dev-plaintext"]
    acked = {}
    rng = random.Random()
    for rnd in range(ROUNDS + 1):
        node = servers(d, args, ["http", "grpc"])
        head, lost = check_nothing_lost(pb, node, acked)
        print(f"start {rnd}: head {head}, {len(acked)} acknowledged writes checked, lost {len(lost)}")
        assert not lost, f"after {rnd} kills, {len(lost)} of {len(acked)} acknowledged writes lost: {lost[:10]}"
        if rnd == ROUNDS:
            break
        before = len(acked)
        load = Load(pb, node, f"R{rnd}", acked)
        try:
            wait_for("both faces acknowledging writes",
                     lambda: load.errors or (load.counts["http"] > 0 and load.counts["grpc"] > 0), timeout=10)
            assert not load.errors, load.errors
            delay = rng.uniform(0.6, 1.6)
            time.sleep(delay)
            assert not load.ended and not load.errors, (load.ended, load.errors)
            node.proc.kill()
            node.proc.wait(timeout=10)
            # Each writer finds the node gone at its next call.
            wait_for("every writer cut off by the kill",
                     lambda: len(load.ended) + len(load.errors) >= HTTP_WRITERS + GRPC_WRITERS, timeout=15)
        finally:
            load.join()
        assert not load.errors, load.errors
        assert len(load.ended) == HTTP_WRITERS + GRPC_WRITERS, f"writers not cut off by the kill: {load.ended}"
        print(f"round {rnd}: SIGKILL after {delay:.2f} s of load: {load.counts['http']} HTTP + "
              f"{load.counts['grpc']} gRPC writes acknowledged ({len(acked) - before} this round)")
        assert load.counts["http"] > 0 and load.counts["grpc"] > 0
    print(f"{ROUNDS} rounds, {len(acked)} acknowledged writes, lost 0")


# ------------------------------------------------------------- 2 and 3

def top_and_secondary(servers, tmp_path, pb, pki, top_config=""):
    """A top node (gRPC, mutual TLS) that filed node-py, approved it and
    allocated it PREFIX; the secondary node-py following and escrowing to
    it, serving gRPC (development plaintext) and HTTP. Returns (top,
    secondary, upstream URL) once the secondary has caught up."""
    port = free_port()
    upstream = f"https://localhost:{port}"
    serving = f'cert = "{pki / "top.pem"}"\nkey = "{pki / "top-key.pem"}"\nclient_ca = "{pki / "ca.pem"}"\n'
    top = servers(tmp_path / "top", ["--grpc-listen", f"127.0.0.1:{port}"], ["grpc"],
                  config=top_config + "[grpc]\n" + serving)
    node_pb = pb["node"]
    with channel(pki, top.faces, "node-py") as node_ch, channel(pki, top.faces, "alice") as op_ch:
        filing = pb["node_grpc"].NodeServiceStub(node_ch).File(node_pb.FileRequest(
            organisation="示例装备制造有限公司", credit_code=CREDIT_CODE,
            contact=node_pb.Contact(name="张三", email="ops@example.cn"), industry="C34",
            service_addresses=[pb["common"].ServiceAddress(host="127.0.0.1", port=2641)]), timeout=WAIT)
        ops = pb["node_grpc"].NodeServiceStub(op_ch)
        ops.Approve(node_pb.TransitionRequest(id=filing.id, reason="licence checked"), timeout=WAIT)
        ops.Allocate(node_pb.AllocateRequest(filing_id=filing.id, prefix=PREFIX, reason="first"), timeout=WAIT)
        head = status(pb, op_ch).last_seq
    secondary = servers(tmp_path / "secondary", [
        "--role", "secondary", "--upstream", upstream, "--grpc-listen", "127.0.0.1:0", "--grpc-dev-plaintext",
        "--http-listen", "127.0.0.1:0"], ["grpc", "http"], config=(
        f'[grpc]\nupstream_ca = "{pki / "ca.pem"}"\n'
        f'upstream_cert = "{pki / "node-py.pem"}"\nupstream_key = "{pki / "node-py-key.pem"}"\n'))
    # Local writes only once the secondary's first sync (a snapshot of its
    # prefix, which removes what the top lacks) is through the top's head.
    wait_for(f"the secondary applying the top's head {head}", lambda: head in samples(
        scrape(f"http://{secondary.faces['http']}"), "idres_follower_applied_sequence").values())
    return top, secondary, upstream


def register_at(pb, node, handle, data, tag):
    """One UPSERT at a node as its operator (plaintext); the result."""
    reg = pb["registry"]
    with grpc.insecure_channel(node.faces["grpc"]) as ch:
        r = pb["registry_grpc"].RegistryServiceStub(ch).Register(reg.Operation(
            operation_id=f"{tag}-{handle}", kind=reg.OPERATION_KIND_UPSERT, handle=handle,
            values=[pb["common"].HandleValue(index=1, type="DATA", data=data)]), timeout=WAIT, metadata=OPERATOR)
    assert r.code == 0, r
    return r


def resolve_at_top(pb, pki, top, handle):
    """The record at the top (operator alice over mutual TLS), or None if not found."""
    with channel(pki, top.faces, "alice") as ch:
        try:
            return pb["registry_grpc"].ResolveServiceStub(ch).Resolve(
                pb["registry"].ResolveRequest(handle=handle), timeout=WAIT)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise


def escrow_warnings(node):
    return [line for line in open(node.log, errors="replace") if "WARN" in line and "escrow" in line]


def test_escrow_delivers_records_beyond_one_message(tmp_path, servers, pb, pki):
    top, secondary, _ = top_and_secondary(servers, tmp_path, pb, pki)
    reg, common = pb["registry"], pb["common"]
    records = {f"{PREFIX}/BIG{i:03}": (f"{i:03}:".encode() + bytes(random.randrange(256) for _ in range(64))) * 1100
               for i in range(100)}
    total = sum(map(len, records.values()))
    assert total > 7_000_000 and all(len(v) > 70_000 for v in records.values())
    ops = (reg.Operation(operation_id=f"big-{h}", kind=reg.OPERATION_KIND_UPSERT, handle=h,
                         values=[common.HandleValue(index=1, type="DATA", data=v)]) for h, v in records.items())
    with grpc.insecure_channel(secondary.faces["grpc"]) as ch:
        summary = pb["registry_grpc"].RegistryServiceStub(ch).RegisterStream(ops, timeout=WAIT, metadata=OPERATOR)
    assert summary.applied == 100 and not summary.failures, summary
    t0 = time.monotonic()

    def same():
        with channel(pki, top.faces, "alice") as a, grpc.insecure_channel(secondary.faces["grpc"]) as b:
            there, here = digest(pb, a, PREFIX), digest(pb, b, PREFIX)
        return there if there == here and there[0] == 100 else None
    try:
        wait_for(f"the top's digest of {PREFIX} equal to the secondary's (100 records, {total} bytes)",
                 same, timeout=60, every=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\nsecondary's escrow warnings:\n{''.join(escrow_warnings(secondary)[-5:])}")
    print(f"escrow of 100 records, {total} bytes: {time.monotonic() - t0:.1f} s")
    for h, v in records.items():
        rec = resolve_at_top(pb, pki, top, h)
        assert rec is not None and values_of(rec) == [(1, "DATA", v)], h


def test_escrow_dead_letters_a_record_the_top_refuses_and_goes_on(tmp_path, servers, pb, pki):
    top, secondary, upstream = top_and_secondary(servers, tmp_path, pb, pki,
                                                 top_config="[store]\nmax_record_bytes = 8192\n\n")
    small = b"https://factory.example.cn/small"
    a = register_at(pb, secondary, f"{PREFIX}/A", small + b"/a", "dl")
    b = register_at(pb, secondary, f"{PREFIX}/B", b"b" * 20_000, "dl")
    c = register_at(pb, secondary, f"{PREFIX}/C", small + b"/c", "dl")
    assert a.seq < b.seq < c.seq, (a, b, c)

    def arrived(*names):
        return lambda: all(resolve_at_top(pb, pki, top, f"{PREFIX}/{n}") for n in names)
    try:
        wait_for("A and C at the top", arrived("A", "C"), timeout=60, every=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\nsecondary's escrow warnings:\n{''.join(escrow_warnings(secondary)[-5:])}")
    assert values_of(resolve_at_top(pb, pki, top, f"{PREFIX}/C")) == [(1, "DATA", small + b"/c")]
    b_at_top = resolve_at_top(pb, pki, top, f"{PREFIX}/B") is not None
    assert not b_at_top, "the top holds B (20,000 bytes of data), larger than its max_record_bytes = 8192"
    with grpc.insecure_channel(secondary.faces["grpc"]) as ch:
        local = pb["registry_grpc"].ResolveServiceStub(ch).Resolve(
            pb["registry"].ResolveRequest(handle=f"{PREFIX}/B"), timeout=WAIT, metadata=OPERATOR)
    assert values_of(local) == [(1, "DATA", b"b" * 20_000)], "the secondary (default limit) lost B"

    # not stuck behind B
    register_at(pb, secondary, f"{PREFIX}/D", small + b"/d", "dl")
    wait_for("D at the top after B was refused", arrived("D"), timeout=30, every=0.5)

    exposed = samples(scrape(f"http://{secondary.faces['http']}"), "idres_escrow_dead_letters_total")
    assert exposed.get(f'{{upstream="{upstream}"}}', 0) >= 1, f"idres_escrow_dead_letters_total: {exposed}"

    def naming(name, result):  # the handle or the escrow operation id, as JSON strings
        return [line for line in escrow_warnings(secondary)
                if f'"{PREFIX}/{name}"' in line or f'"escrow-{result.seq}"' in line]
    assert naming("B", b), (f"no escrow warning naming {PREFIX}/B or escrow-{b.seq} in the secondary's log:\n"
                            + "".join(escrow_warnings(secondary)[-5:]))
    assert not naming("A", a), naming("A", a)

    # The top refuses a record with no values; so does `idres import` at the secondary.
    reg = pb["registry"]
    with channel(pki, top.faces, "alice") as ch:
        r = pb["registry_grpc"].RegistryServiceStub(ch).RegisterBatch(reg.RegisterBatchRequest(operations=[
            reg.Operation(operation_id="empty", kind=reg.OPERATION_KIND_UPSERT, handle=f"{PREFIX}/EMPTY")]),
            timeout=WAIT).results[0]
    assert r.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "at least one value" in r.message, r
    secondary.stop()
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"handle": f"{PREFIX}/EMPTY", "values": []}) + "\n")
    out = run_idres("import", "--data-dir", secondary.data, empty, check=False)
    assert out.returncode != 0 and "at least one value" in out.stderr, (
        f"idres import of a record with no values: exit code {out.returncode}\n{out.stderr}")
    exported = run_idres("export", "--data-dir", secondary.data, tmp_path / "secondary.jsonl")
    handles = [json.loads(line)["handle"] for line in open(tmp_path / "secondary.jsonl")]
    assert f"{PREFIX}/EMPTY" not in handles and f"{PREFIX}/B" in handles, (exported.stderr, handles)

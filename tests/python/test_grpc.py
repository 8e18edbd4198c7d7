"""The gRPC face against an independent implementation: Python's grpcio.

A client is generated from proto/ with grpcio-tools at test time. Certificates
come from `idres cert`; the top node runs as `idres serve` on loopback ports it
picks itself. The test files a node, has an operator approve it and allocate a
prefix, registers identifiers (unary and streaming, with a retried operation),
resolves and searches them, and follows the sync stream. Every wait is bounded.
"""

import importlib
import os
import queue
import subprocess
import sys
import threading

import grpc
import pytest
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDRES = os.environ.get("IDRES_BIN", os.path.join(ROOT, "target", "debug", "idres"))
PROTO = os.path.join(ROOT, "proto")
WAIT = 20
CREDIT_CODE = "91350100M000100Y43"


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    files = [os.path.join("idres", "v1", f) for f in ("common.proto", "node.proto", "registry.proto", "sync.proto")]
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}", *files])
    assert rc == 0, "grpcio-tools could not compile proto/"
    sys.path.insert(0, str(out))
    mods = {}
    for name in ("common", "node", "registry", "sync"):
        mods[name] = importlib.import_module(f"idres.v1.{name}_pb2")
        mods[name + "_grpc"] = importlib.import_module(f"idres.v1.{name}_pb2_grpc")
    return mods


def idres(*args):
    r = subprocess.run([IDRES, *args], capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    idres("cert", "ca", "--dir", str(d))
    idres("cert", "issue", "--dir", str(d), "--kind", "server", "--name", "top")
    idres("cert", "issue", "--dir", str(d), "--kind", "operator", "--name", "alice")
    idres("cert", "issue", "--dir", str(d), "--kind", "node", "--name", "node-py")
    idres("cert", "issue", "--dir", str(d), "--kind", "node", "--name", "node-other")
    for key in ("ca-key.pem", "top-key.pem", "alice-key.pem", "node-py-key.pem"):
        assert (d / key).stat().st_mode & 0o777 == 0o600, f"{key} is not mode 0600"
    return d


@pytest.fixture(scope="module")
def top(pki, tmp_path_factory):
    d = tmp_path_factory.mktemp("top")
    conf = d / "top.toml"
    conf.write_text(
        "[grpc]\n"
        f'cert = "{pki / "top.pem"}"\nkey = "{pki / "top-key.pem"}"\nclient_ca = "{pki / "ca.pem"}"\n'
    )
    proc = subprocess.Popen(
        [IDRES, "serve", "--config", str(conf), "--data-dir", str(d / "data"),
         "--handle-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "IDRES_LOG": "warn"})
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    faces = {}
    while len(faces) < 2:
        parts = lines.get(timeout=WAIT).split()
        if len(parts) == 3 and parts[0] == "listening":
            faces[parts[1]] = parts[2]
    yield faces
    proc.terminate()
    proc.wait(timeout=WAIT)


def channel(pki, top, who):
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(),
        private_key=(pki / f"{who}-key.pem").read_bytes(),
        certificate_chain=(pki / f"{who}.pem").read_bytes(),
    )
    port = top["grpc"].rsplit(":", 1)[1]
    return grpc.secure_channel(f"localhost:{port}", creds)


def test_file_approve_register_resolve_and_follow(pb, pki, top):
    node_pb, reg_pb, sync_pb, common = pb["node"], pb["registry"], pb["sync"], pb["common"]
    node_ch = channel(pki, top, "node-py")
    op_ch = channel(pki, top, "alice")
    node = pb["node_grpc"].NodeServiceStub(node_ch)
    ops = pb["node_grpc"].NodeServiceStub(op_ch)
    registry = pb["registry_grpc"].RegistryServiceStub(node_ch)
    resolver = pb["registry_grpc"].ResolveServiceStub(node_ch)
    sync = pb["sync_grpc"].SyncServiceStub(node_ch)

    # A bad credit code is refused, naming the field.
    app = node_pb.FileRequest(
        organisation="示例装备制造有限公司", credit_code=CREDIT_CODE[:-1] + "4",
        contact=node_pb.Contact(name="张三", email="ops@example.cn"), industry="C34",
        service_addresses=[common.ServiceAddress(host="127.0.0.1", port=2641)])
    with pytest.raises(grpc.RpcError) as e:
        node.File(app, timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "credit_code" in e.value.details()

    app.credit_code = CREDIT_CODE
    filing = node.File(app, timeout=WAIT)
    assert filing.state == node_pb.FILING_STATE_PENDING
    with pytest.raises(grpc.RpcError) as e:
        registry.Register(reg_pb.Operation(operation_id="early", kind=reg_pb.OPERATION_KIND_CREATE,
                                           handle="88.118.8/early"), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "pending" in e.value.details()

    approved = ops.Approve(node_pb.TransitionRequest(id=filing.id, reason="licence checked"), timeout=WAIT)
    assert approved.state == node_pb.FILING_STATE_ACTIVE
    alloc = ops.Allocate(node_pb.AllocateRequest(filing_id=filing.id, prefix="88.118.8", reason="first"), timeout=WAIT)
    assert alloc.prefix == "88.118.8" and alloc.seq > 0

    def url(i):
        return common.HandleValue(index=1, type="URL", data=f"https://factory.example.cn/{i}".encode())

    first = registry.Register(reg_pb.Operation(operation_id="op-0", kind=reg_pb.OPERATION_KIND_CREATE,
                                               handle="88.118.8/P0000", values=[url(0)]), timeout=WAIT)
    assert first.code == 0 and not first.replayed
    again = registry.Register(reg_pb.Operation(operation_id="op-0", kind=reg_pb.OPERATION_KIND_CREATE,
                                               handle="88.118.8/P0000", values=[url(0)]), timeout=WAIT)
    assert again.replayed and again.seq == first.seq

    stream = (reg_pb.Operation(operation_id=f"op-{i}", kind=reg_pb.OPERATION_KIND_UPSERT,
                               handle=f"88.118.8/P{i:04}", values=[url(i)]) for i in range(1, 200))
    summary = registry.RegisterStream(stream, timeout=WAIT)
    assert summary.received == 199 and summary.applied == 199 and not summary.failures

    bad = registry.RegisterBatch(reg_pb.RegisterBatchRequest(operations=[
        reg_pb.Operation(operation_id="b-1", kind=reg_pb.OPERATION_KIND_UPSERT, handle="88.118.8/B1",
                         values=[common.HandleValue(index=0, type="URL", data=b"x")]),
        reg_pb.Operation(operation_id="b-2", kind=reg_pb.OPERATION_KIND_UPSERT, handle="99.1/B2", values=[url(1)]),
    ]), timeout=WAIT)
    assert [r.code for r in bad.results] == [grpc.StatusCode.INVALID_ARGUMENT.value[0],
                                             grpc.StatusCode.PERMISSION_DENIED.value[0]]
    assert "values[0].index" in bad.results[0].message

    rec = resolver.Resolve(reg_pb.ResolveRequest(handle="88.118.8/P0042"), timeout=WAIT)
    assert rec.values[0].data == b"https://factory.example.cn/42"

    found, token = [], ""
    while True:
        page = resolver.Search(reg_pb.SearchRequest(
            value=reg_pb.ValueQuery(type="URL", pattern="*example.cn/1*"), page_size=20, page_token=token), timeout=WAIT)
        found += [h.handle for h in page.hits]
        token = page.next_page_token
        if not token:
            break
    expected = {f"88.118.8/P{i:04}" for i in range(200) if str(i).startswith("1")}
    assert set(found) == expected

    # The change stream from the start, filtered to the node's prefix.
    seen = set()
    for batch in sync.Subscribe(sync_pb.SubscribeRequest(from_seq=1, prefixes=["88.118.8"],
                                                         stop_when_caught_up=True), timeout=WAIT):
        assert batch.WhichOneof("phase") == "changes"
        for entry in batch.entries:
            assert not entry.deleted and entry.seq > 0
            seen.add(entry.handle)
    assert seen == {f"88.118.8/P{i:04}" for i in range(200)}

    # Following live: a new registration arrives on the open stream.
    status = sync.Status(sync_pb.SyncStatusRequest(), timeout=WAIT)
    live = sync.Subscribe(sync_pb.SubscribeRequest(from_seq=status.last_seq + 1, prefixes=["0.NA", "88.118.8"]),
                          timeout=WAIT)
    registry.Register(reg_pb.Operation(operation_id="live", kind=reg_pb.OPERATION_KIND_CREATE,
                                       handle="88.118.8/LIVE", values=[url(999)]), timeout=WAIT)
    got = None
    for batch in live:
        for entry in batch.entries:
            if entry.handle == "88.118.8/LIVE":
                got = entry
        if got:
            live.cancel()
            break
    assert got is not None and not got.deleted

    digest = sync.Digest(sync_pb.DigestRequest(prefix="88.118.8"), timeout=WAIT)
    assert digest.count == 201 and len(digest.sha256) == 64

    # Another node may not write under this node's prefix, and is told why.
    other_ch = channel(pki, top, "node-other")
    other_app = node_pb.FileRequest()
    other_app.CopyFrom(app)
    other = pb["node_grpc"].NodeServiceStub(other_ch).File(other_app, timeout=WAIT)
    ops.Approve(node_pb.TransitionRequest(id=other.id, reason="ok"), timeout=WAIT)
    with pytest.raises(grpc.RpcError) as e:
        pb["registry_grpc"].RegistryServiceStub(other_ch).Register(
            reg_pb.Operation(operation_id="x", kind=reg_pb.OPERATION_KIND_UPSERT,
                             handle="88.118.8/P0001", values=[url(1)]), timeout=WAIT)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"of node {filing.id}" in e.value.details()

    audit = ops.ListAudit(node_pb.ListAuditRequest(filing_id=filing.id), timeout=WAIT)
    assert [ev.action for ev in audit.events] == ["file", "approve", "allocate"]
    assert audit.events[1].reason == "licence checked"

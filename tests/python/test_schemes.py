"""Identifier interoperability (标识互解) against the real idres binary.

Records link themselves to identifiers of other schemes with typed values
(`GS1.GTIN`, `GS1.DL`, `ECODE`, `OID`, `CID`, a configured scheme); the
node then resolves an identifier of any scheme to the linked record, walking
a GS1 key up from serial to lot to the GTIN alone. This checks it from the
outside, on every face:

* HTTP `GET /api/resolve?id=…` (with `requests`);
* the Handle protocol over UDP and TCP with the independent client
  `hdl_native` (link keys such as `gs1:01/…/10/…/21/…` as the handle);
* the `idres resolve` and `idres parse-id` command lines;
* gRPC `ResolveService.Resolve` / `BatchResolve` with grpcio stubs
  generated from proto/ (development plaintext on loopback);
* DNS over UDP and TCP with dig (BIND's client): GS1 keys in the ONS form
  under `gs1.id.<zone>`, OIDs by their ORS names, Ecodes and configured
  schemes as one label under `<scheme>.id.<zone>`. DNS answers only the
  exact key: it does not walk a GS1 key up.

The node is set up with `idres init-prefix` and `idres import` on a fresh
data directory and served by `idres serve` on loopback ports it picks
itself; its configuration adds Ecode version 5 (`[[schemes.ecode]]`) and a
configured scheme (`[[schemes.custom]]`). Every wait is bounded.
"""

import json
import os
import re
import shutil
import subprocess

import grpc
import pytest
import requests

import hdl_native as hdl
from idres_http_node import ADMIN, IDRES, PREFIX, SECRET, _retrying, basic, run_idres
from test_backup import Server
from test_grpc import pb  # noqa: F401  (fixture: the generated gRPC client)

#: bound of every single wait (HTTP request, Handle exchange, RPC, command)
WAIT = 15

GTIN = "09521234543213"
GTIN_V0 = "09506000134352"
ECODE_V1 = "10001123456789"
ECODE_V0 = "0" + GTIN_V0  # "009506000134352": version 0, GS1 data 09506000134352
ECODE_V5 = "5001123456"  # version 5 (configured): NSI 001, master data 123456
ECODE_V5B = "5002000042"
OID = "1.2.156.3001.1"
CID_VALUE = "CID:AB12CD34"
CID_KEY = "cid:CIDAB12CD34"
VIN = "1HGCM82633A004352"

DL_SERIAL = f"01/{GTIN}/10/LOT1/21/SER1"
LINK_SERIAL = f"gs1:{DL_SERIAL}"

CONFIG = """\
[[schemes.ecode]]
version = 5
nsi_digits = 3
md_min = 1
md_max = 10
chars = "digits"

[[schemes.custom]]
name = "cid"
pattern = "(?i)CID[:.]?([0-9A-Z]{4,64})"
canonical = "upper"
template = "CID$1"

[[schemes.custom]]
name = "vin"
pattern = "(?i)VIN:?([A-HJ-NPR-Z0-9]{17})"
canonical = "upper"
template = "VIN$1"
"""


def mod10(body):
    """The GS1 mod-10 check digit of the digits before it (own code)."""
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def with_check_digit(body):
    return body + mod10(body)


for _g in (GTIN, GTIN_V0):
    assert mod10(_g[:-1]) == _g[-1], f"test data: {_g} has a wrong check digit"
#: a valid GTIN no record links to
GTIN_UNLINKED = with_check_digit("0950600013499")
assert GTIN_UNLINKED not in (GTIN, GTIN_V0)


def url(tag):
    return f"https://factory.example.cn/{tag}"


def sv(index, typ, text, **extra):
    return {"index": index, "type": typ, "data": {"format": "string", "value": text}, **extra}


def product_records():
    return [
        {"handle": f"{PREFIX}/P1", "values": [
            sv(1, "URL", url("p1")),
            sv(2, "DESC", "centrifugal pump P1, lot LOT1, serial SER1"),
            sv(10, "GS1.DL", DL_SERIAL),
            sv(11, "ECODE", ECODE_V1),
            sv(12, "ECODE", ECODE_V0),
            sv(13, "OID", OID),
            sv(14, "CID", CID_VALUE),
            sv(15, "VIN", VIN),
        ]},
        # the lot, written as a Digital Link URI
        {"handle": f"{PREFIX}/LOT", "values": [
            sv(1, "URL", url("lot1")),
            sv(10, "GS1.DL", f"https://id.gs1.org/01/{GTIN}/10/LOT1"),
        ]},
        # the GTIN alone
        {"handle": f"{PREFIX}/G", "values": [
            sv(1, "URL", url("gtin")),
            sv(10, "GS1.GTIN", GTIN),
        ]},
        # another lot, written as a bracketed element string
        {"handle": f"{PREFIX}/X", "values": [
            sv(1, "URL", url("lotx")),
            sv(10, "GS1.DL", f"(01){GTIN}(10)LOTX"),
        ]},
        # a lot with a '/' in it (percent-escaped in its link key)
        {"handle": f"{PREFIX}/SL", "values": [
            sv(1, "URL", url("slash")),
            sv(10, "GS1.DL", f"(01){GTIN}(10)A/B"),
        ]},
        # a lot link without public read: not indexed
        {"handle": f"{PREFIX}/PRIV", "values": [
            sv(1, "URL", url("priv")),
            sv(10, "GS1.DL", f"01/{GTIN}/10/PRIV", permissions="1100"),
        ]},
    ]


P1, LOT, G, X, E5, E5B, SL = (f"{PREFIX}/{s}" for s in ("P1", "LOT", "G", "X", "E5", "E5B", "SL"))

#: handle -> its URL (index 1), by which a reply shows which record it is
URLS = {f"{PREFIX}/P1": url("p1"), f"{PREFIX}/LOT": url("lot1"), f"{PREFIX}/G": url("gtin"),
        f"{PREFIX}/X": url("lotx"), f"{PREFIX}/PRIV": url("priv"), f"{PREFIX}/E5": url("e5"),
        f"{PREFIX}/E5B": url("e5b"), f"{PREFIX}/SL": url("slash")}


def init_store(directory, records, config=None):
    """init-prefix (ADMIN/SECRET) and `idres import` into directory/data
    (with `--config directory/idres.toml` holding `config` if given)."""
    os.makedirs(directory, exist_ok=True)
    data = os.path.join(directory, "data")
    secret = os.path.join(directory, "admin.secret")
    with open(secret, "w") as f:
        f.write(SECRET + "\n")
    run_idres("init-prefix", "--data-dir", data, "--prefix", PREFIX, "--admin", ADMIN, "--secret-file", secret,
              timeout=WAIT)
    if records:
        path = os.path.join(directory, "records.jsonl")
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        extra = []
        if config is not None:
            conf = os.path.join(directory, "idres.toml")
            with open(conf, "w") as f:
                f.write(config)
            extra = ["--config", conf]
        run_idres("import", "--data-dir", data, *extra, path, timeout=WAIT)
    return data


class Node:
    def __init__(self, server):
        self.server = server
        self.base = f"http://{server.faces['http']}"
        self.handle_addr = server.faces["handle"]
        self.host, port = self.handle_addr.rsplit(":", 1)
        self.port = int(port)
        self.config = os.path.join(server.dir, "idres.toml")
        dns = server.faces.get("dns")
        self.dns_port = int(dns.rsplit(":", 1)[1]) if dns else None

    def alive(self):
        return self.server.proc.poll() is None


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("schemes"))
    # Ecode V5 exists only in this node's configuration: E5 is imported with it,
    # E5B written through the node.
    init_store(d, product_records() + [
        {"handle": E5, "values": [sv(1, "URL", url("e5")), sv(10, "ECODE", ECODE_V5)]}], config=CONFIG)
    server = Server(d, ["--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--grpc-dev-plaintext",
                        "--dns-listen", "127.0.0.1:0"],
                    ["http", "handle", "grpc", "dns"], config=CONFIG)
    try:
        n = Node(server)
        r = put(n, E5B, [sv(1, "URL", url("e5b")), sv(10, "ECODE", ECODE_V5B)])
        assert r.status_code in (200, 201), f"PUT E5B: {r.status_code} {r.text}\n{server.log_tail()}"
        yield n
    finally:
        server.stop()


def put(node, handle, values, overwrite=True):
    return requests.put(f"{node.base}/api/handles/{handle}", params={"overwrite": str(overwrite).lower()},
                        headers={"Authorization": basic()}, json={"values": values}, timeout=WAIT)


def get_resolve(node, ident):
    return requests.get(f"{node.base}/api/resolve", params={"id": ident}, timeout=WAIT)


def url_of_json(values):
    """The URL at index 1 in JSON values (REST shape)."""
    for v in values:
        if v["index"] == 1 and v["type"] == "URL":
            d = v["data"]
            return d["value"] if isinstance(d, dict) else d
    return None


def url_of_hdl(reply):
    v = reply.value(1)
    return v.data.decode() if v is not None and v.type == "URL" else None


def handle_client(node, transport):
    return hdl.HandleClient(node.host, node.port, transport=transport, timeout=5)


# ---------------------------------------------------------------------------
# 1. resolution of every scheme, on every face
# ---------------------------------------------------------------------------

LEVELS_SERIAL = ["01+10+21", "01+10", "01"]

#: (identifier, handle reached, level, exact, scheme, form or None, canonical or None)
HTTP_CASES = [
    (P1, P1, "handle", True, "handle", "Handle", P1),
    (f"https://id.gs1.org/{DL_SERIAL}", P1, "01+10+21", True, "gs1", "Digital Link URI", LINK_SERIAL),
    (f"https://id.gs1.org/{DL_SERIAL}?17=261231", P1, "01+10+21", True, "gs1", "Digital Link URI", LINK_SERIAL),
    (f"(01){GTIN}(10)LOT1(21)SER1", P1, "01+10+21", True, "gs1", "element string", LINK_SERIAL),
    (f"(01){GTIN}(21)SER1(10)LOT1", P1, "01+10+21", True, "gs1", "element string", LINK_SERIAL),
    (f"HTTPS://ID.GS1.ORG/{DL_SERIAL}", P1, "01+10+21", True, "gs1", "Digital Link URI", LINK_SERIAL),
    (LINK_SERIAL, P1, "01+10+21", True, "gs1", None, LINK_SERIAL),
    (ECODE_V1, P1, "ecode", True, "ecode", "Ecode V1", f"ecode:{ECODE_V1}"),
    (f"ecode:{ECODE_V1}", P1, "ecode", True, "ecode", "Ecode V1", f"ecode:{ECODE_V1}"),
    (ECODE_V0, P1, "01", True, "ecode", "Ecode V0 (GS1)", f"gs1:01/{GTIN_V0}"),
    (GTIN_V0[1:], P1, "01", True, "gs1", "GTIN-13", f"gs1:01/{GTIN_V0}"),
    (OID, P1, "oid", True, "oid", "OID", f"oid:{OID}"),
    (f"urn:oid:{OID}", P1, "oid", True, "oid", None, f"oid:{OID}"),
    (CID_VALUE, P1, "cid", True, "cid", None, CID_KEY),
    (CID_KEY, P1, "cid", True, "cid", None, CID_KEY),
    ("cidab12cd34", P1, "cid", True, "cid", None, CID_KEY),
    (f"vin:{VIN.lower()}", P1, "vin", True, "vin", None, f"vin:VIN{VIN}"),
    (f"https://id.gs1.org/01/{GTIN}/10/LOT1", LOT, "01+10", True, "gs1", "Digital Link URI",
     f"gs1:01/{GTIN}/10/LOT1"),
    (GTIN[1:], G, "01", True, "gs1", "GTIN-13", f"gs1:01/{GTIN}"),
    (GTIN, G, "01", True, "gs1", "GTIN-14", f"gs1:01/{GTIN}"),
    (f"gs1:01/{GTIN}/10/LOTX", X, "01+10", True, "gs1", None, f"gs1:01/{GTIN}/10/LOTX"),
    (f"https://id.gs1.org/01/{GTIN}/10/A%2fB", SL, "01+10", True, "gs1", "Digital Link URI",
     f"gs1:01/{GTIN}/10/A%2FB"),
    (ECODE_V5, E5, "ecode", True, "ecode", "Ecode V5", f"ecode:{ECODE_V5}"),
    (f"ecode:{ECODE_V5}", E5, "ecode", True, "ecode", "Ecode V5", f"ecode:{ECODE_V5}"),
    (ECODE_V5B, E5B, "ecode", True, "ecode", "Ecode V5", f"ecode:{ECODE_V5B}"),
    # walk-up
    (f"https://id.gs1.org/01/{GTIN}/10/LOT1/21/OTHER", LOT, "01+10", False, "gs1", "Digital Link URI",
     f"gs1:01/{GTIN}/10/LOT1/21/OTHER"),
    (f"https://id.gs1.org/01/{GTIN}/10/LOT2", G, "01", False, "gs1", "Digital Link URI", f"gs1:01/{GTIN}/10/LOT2"),
    (f"gs1:01/{GTIN}/10/LOT2", G, "01", False, "gs1", None, f"gs1:01/{GTIN}/10/LOT2"),
    # a link value without public read is not indexed: the lot walks up to the GTIN
    (f"gs1:01/{GTIN}/10/PRIV", G, "01", False, "gs1", None, f"gs1:01/{GTIN}/10/PRIV"),
    # an EPC URN (GTIN + serial, no lot): nothing at 01+21, the GTIN's record
    ("urn:epc:id:sgtin:9521234.054321.SER1", G, "01", False, "gs1", "EPC URN", f"gs1:01/{GTIN}/21/SER1"),
]


def test_http_resolve_every_scheme(node):
    failures = []
    for ident, handle, level, exact, scheme, form, canonical in HTTP_CASES:
        r = get_resolve(node, ident)
        if r.status_code != 200:
            failures.append(f"{ident!r}: HTTP {r.status_code} {r.text[:300]}")
            continue
        j = r.json()
        got = {k: j.get(k) for k in ("responseCode", "handle", "level", "exact", "scheme", "id")}
        want = {"responseCode": 1, "handle": handle, "level": level, "exact": exact, "scheme": scheme, "id": ident}
        if form is not None:
            got["form"], want["form"] = j.get("form"), form
        if canonical is not None:
            got["canonical"], want["canonical"] = j.get("canonical"), canonical
        if got != want:
            failures.append(f"{ident!r}: got {got}, want {want}")
        if url_of_json(j.get("values", [])) != URLS[handle]:
            failures.append(f"{ident!r}: values are not {handle}'s: {j.get('values')}")
        if not isinstance(j.get("levels"), list):
            failures.append(f"{ident!r}: no levels list: {j}")
    assert not failures, "\n".join(failures)

    # The level list of a serialised GTIN, most specific first.
    j = get_resolve(node, f"https://id.gs1.org/{DL_SERIAL}").json()
    assert j["levels"] == LEVELS_SERIAL, j
    # The record's link values are in the answer as stored.
    types = {v["type"] for v in j["values"]}
    assert {"GS1.DL", "ECODE", "OID", "CID", "VIN"} <= types, types


def test_http_unknown_identifiers_are_404(node):
    for ident in (f"https://id.gs1.org/01/{GTIN_UNLINKED}", GTIN_UNLINKED, "ecode:10001999999999",
                  "oid:1.2.156.3001.999", "cid:CIDZZZZ9999", f"{PREFIX}/NOPE"):
        r = get_resolve(node, ident)
        assert r.status_code == 404, f"{ident}: {r.status_code} {r.text}"
        assert r.json()["responseCode"] == 100, r.text
    r = requests.get(f"{node.base}/api/resolve", timeout=WAIT)
    assert r.status_code == 400 and "id" in r.json().get("message", ""), r.text


#: (handle string sent over the Handle protocol, handle of the record reached)
HDL_CASES = [
    (P1, P1),
    (LINK_SERIAL, P1),
    (f"ecode:{ECODE_V1}", P1),
    (f"ecode:{ECODE_V0}", P1),
    (f"gs1:01/{GTIN_V0}", P1),
    (f"oid:{OID}", P1),
    (CID_KEY, P1),
    ("cid:AB12CD34", P1),
    (f"vin:VIN{VIN}", P1),
    (f"gs1:01/{GTIN}/10/LOT1", LOT),
    (f"gs1:01/{GTIN}", G),
    (f"gs1:01/{GTIN}/10/LOTX", X),
    (f"gs1:01/{GTIN}/10/A%2FB", SL),
    (f"ecode:{ECODE_V5}", E5),
    (f"ecode:{ECODE_V5B}", E5B),
    # walk-up
    (f"gs1:01/{GTIN}/10/LOT1/21/OTHER", LOT),
    (f"gs1:01/{GTIN}/10/LOT2", G),
    (f"gs1:01/{GTIN}/10/PRIV", G),
]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_handle_protocol_resolves_link_keys(node, transport):
    failures = []
    with handle_client(node, transport) as c:
        for sent, handle in HDL_CASES:
            try:
                r = c.resolve(sent)
            except hdl.HandleError as e:
                failures.append(f"{sent!r}: {e}")
                continue
            if not r.ok:
                failures.append(f"{sent!r}: rc {r.rc} {r.message!r}")
                continue
            if r.handle != sent:
                failures.append(f"{sent!r}: reply names {r.handle!r}, not the requested string")
            if url_of_hdl(r) != URLS[handle]:
                failures.append(f"{sent!r}: not {handle}'s values: {[(v.index, v.type, v.data) for v in r.values]}")
        # Filters apply to the linked record as to a handle.
        r = c.resolve(LINK_SERIAL, types=["GS1.DL"])
        if not (r.ok and [v.type for v in r.values] == ["GS1.DL"] and r.values[0].data == DL_SERIAL.encode()):
            failures.append(f"type filter: rc {r.rc} {[(v.index, v.type, v.data) for v in r.values]}")
        # The non-public link value of PRIV is not shown either.
        r = c.resolve(f"{PREFIX}/PRIV")
        if not (r.ok and [v.index for v in r.values] == [1]):
            failures.append(f"PRIV: rc {r.rc} {[(v.index, v.type) for v in r.values]}")
        # Nothing linked: HANDLE_NOT_FOUND.
        for sent in (f"gs1:01/{GTIN_UNLINKED}", "ecode:10001999999999", "oid:1.2.156.3001.999"):
            r = c.resolve(sent)
            if r.rc != hdl.RC_HANDLE_NOT_FOUND:
                failures.append(f"{sent!r}: rc {r.rc} {r.message!r}, want {hdl.RC_HANDLE_NOT_FOUND}")
    assert not failures, "\n".join(failures)


def cli_resolve(node, ident, tcp=False, config=True):
    args = ["resolve", "--server", node.handle_addr]
    if tcp:
        args.append("--tcp")
    if config:
        args += ["--config", node.config]
    return run_idres(*args, ident, timeout=WAIT, check=False)


#: (identifier of any scheme given to `idres resolve`, scheme, record reached)
CLI_CASES = [
    (f"https://id.gs1.org/{DL_SERIAL}", "gs1", P1),
    (f"(01){GTIN}(10)LOT1(21)SER1", "gs1", P1),
    (ECODE_V1, "ecode", P1),
    (ECODE_V0, "ecode", P1),
    (OID, "oid", P1),
    (CID_VALUE, "cid", P1),
    (GTIN[1:], "gs1", G),
    ("urn:epc:id:sgtin:9521234.054321.SER1", "gs1", G),
    (f"https://id.gs1.org/01/{GTIN}/10/LOT1/21/OTHER", "gs1", LOT),
    (ECODE_V5, "ecode", E5),
    (P1, "handle", P1),
]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_cli_resolve_any_scheme(node, tcp):
    failures = []
    for ident, scheme, handle in CLI_CASES:
        r = cli_resolve(node, ident, tcp=tcp)
        if r.returncode != 0:
            failures.append(f"{ident!r}: exit {r.returncode}: {r.stdout} {r.stderr}")
            continue
        j = json.loads(r.stdout)
        if (j.get("responseCode"), j.get("scheme")) != (1, scheme) or url_of_json(j.get("values", [])) != URLS[handle]:
            failures.append(f"{ident!r}: {j}")
        if "read as" not in r.stderr:
            failures.append(f"{ident!r}: no 'read as' on stderr: {r.stderr!r}")
    assert not failures, "\n".join(failures)
    # Without the node's configuration the client does not know Ecode V5.
    r = cli_resolve(node, ECODE_V5, tcp=tcp, config=False)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "V5" in r.stdout and "not in the version table" in r.stdout, r.stdout


def test_grpc_resolve_any_scheme(node, pb):
    reg = pb["registry"]
    cases = [(P1, P1)] + [(ident, handle) for ident, handle, *_ in HTTP_CASES if ident != P1]
    md = (("x-idres-dev-peer", "operator:alice"),)  # plaintext development callers name themselves
    with grpc.insecure_channel(node.server.faces["grpc"]) as ch:
        stub = pb["registry_grpc"].ResolveServiceStub(ch)
        # a handle works as before: the face itself is sound
        rec = stub.Resolve(reg.ResolveRequest(handle=P1), timeout=WAIT, metadata=md)
        assert rec.handle == P1 and rec.values[0].data == URLS[P1].encode()

        failures = []
        for ident, handle in cases:
            try:
                rec = stub.Resolve(reg.ResolveRequest(handle=ident), timeout=WAIT, metadata=md)
            except grpc.RpcError as e:
                failures.append(f"Resolve {ident!r}: {e.code().name} {e.details()}")
                continue
            first = next((v for v in rec.values if v.index == 1), None)
            if first is None or first.data != URLS[handle].encode():
                failures.append(f"Resolve {ident!r}: not {handle}'s values: {list(rec.values)[:2]}")
            if rec.handle != ident:
                failures.append(f"Resolve {ident!r}: record handle {rec.handle!r}")

        batch = stub.BatchResolve(reg.BatchResolveRequest(handles=[i for i, _ in cases]), timeout=WAIT,
                                  metadata=md)
        assert len(batch.results) == len(cases)
        for (ident, handle), res in zip(cases, batch.results):
            if res.code != 0 or not res.HasField("record"):
                failures.append(f"BatchResolve {ident!r}: code {res.code} {res.message}")
            elif res.record.values[0].data != URLS[handle].encode():
                failures.append(f"BatchResolve {ident!r}: not {handle}'s values")
        # a bad identifier is INVALID_ARGUMENT, naming the fault
        try:
            stub.Resolve(reg.ResolveRequest(handle=f"https://id.gs1.org/01/{GTIN[:-1]}4"), timeout=WAIT, metadata=md)
            failures.append("Resolve of a wrong check digit succeeded")
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT or "check digit" not in e.details():
                failures.append(f"Resolve of a wrong check digit: {e.code().name} {e.details()}")
    assert not failures, f"{len(failures)} of {2 * len(cases) + 1} gRPC checks failed:\n" + "\n".join(failures)


# --- DNS ---------------------------------------------------------------------

#: the ORS zone: the default, this node's configuration sets no [dns] zone
ZONE = "oid-res.org."
assert "[dns]" not in CONFIG


def ons_name(key, kind="gtin"):
    """A GS1 key in the ONS form: its digits reversed, one per label."""
    return ".".join(reversed(key)) + f".{kind}.gs1.id.{ZONE}"


def ors_name(oid):
    """An OID's ORS name: its arcs reversed under the zone."""
    return ".".join(reversed(oid.split("."))) + f".{ZONE}"


def scheme_name(label, scheme):
    """An Ecode or a configured scheme's identifier: one label under
    `<scheme>.id.<zone>`."""
    return f"{label}.{scheme}.id.{ZONE}"


assert ons_name(GTIN) == "3.1.2.3.4.5.4.3.2.1.2.5.9.0.gtin.gs1.id.oid-res.org."
assert ors_name(OID) == "1.3001.156.2.1.oid-res.org."
assert scheme_name(ECODE_V1, "ecode") == "10001123456789.ecode.id.oid-res.org."

#: the GTIN with a wrong check digit
GTIN_BAD = GTIN[:-1] + str((int(GTIN[-1]) + 1) % 10)
assert mod10(GTIN_BAD[:-1]) != GTIN_BAD[-1]

#: Ecode V5 is a version of this node only through its [[schemes.ecode]] row
V5_CONFIGURED = "version = 5" in CONFIG

DIG_TRANSPORTS = {"udp": "+notcp", "tcp": "+tcp"}


def dig(node, name, rtype, transport):
    assert shutil.which("dig"), "dig (Debian dnsutils) is required"
    assert node.dns_port, "the node has no DNS listener"
    out = subprocess.run(["dig", "-p", str(node.dns_port), "@127.0.0.1", name, rtype, DIG_TRANSPORTS[transport],
                          "+time=3", "+tries=2"], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, f"dig {name} {rtype} ({transport}): exit {out.returncode}\n{out.stdout}{out.stderr}"
    return out.stdout


def dig_status(text):
    m = re.search(r"status: (\w+)", text)
    assert m, text
    return m.group(1)


def dig_flags(text):
    m = re.search(r";; flags: ([a-z ]*);", text)
    assert m, text
    return m.group(1).split()


def dig_section(text, section):
    """The record lines of one section of dig's output (ANSWER, AUTHORITY)."""
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith(";; ") and line.endswith("SECTION:"):
            inside = line == f";; {section} SECTION:"
            continue
        if inside:
            if not line.strip():
                inside = False
            elif not line.startswith(";"):
                lines.append(line)
    return lines


def records_of(lines, rtype):
    """(owner, rdata) of the lines of one type."""
    out = []
    for line in lines:
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[2] == "IN" and parts[3] == rtype:
            out.append((parts[0], parts[4]))
    return out


def txt_strings(rdata):
    """The character-strings of a TXT rdata as dig prints it, joined."""
    return "".join(bytes(m, "utf-8").decode("unicode_escape") for m in re.findall(r'"((?:[^"\\]|\\.)*)"', rdata))


def naptr_regexp(rdata):
    """The regexp field of a NAPTR rdata: order pref "flags" "service" "regexp" replacement."""
    m = re.fullmatch(r'(\d+) (\d+) "([^"]*)" "([^"]*)" "((?:[^"\\]|\\.)*)" (\S+)', rdata.strip())
    assert m, rdata
    return m.group(5)


def dns_answer_problems(node, what, name, handle, transport):
    """The faults of the NAPTR and TXT answers for name: they must be
    handle's record (its URL, index 1, is the only URL value of each)."""
    problems = []
    want = URLS[handle]
    out = dig(node, name, "TXT", transport)
    st, ans = dig_status(out), dig_section(out, "ANSWER")
    txt = [txt_strings(r) for _, r in records_of(ans, "TXT")]
    urls = [t[len("URL="):] for t in txt if t.startswith("URL=")]
    if st != "NOERROR" or urls != [want]:
        problems.append(f"{what} {name} TXT ({transport}): {st}, URL strings {urls}, want [{want!r}] "
                        f"({handle}): {ans}")
    elif "aa" not in dig_flags(out):
        problems.append(f"{what} {name} TXT ({transport}): not authoritative: {dig_flags(out)}")
    out = dig(node, name, "NAPTR", transport)
    st, ans = dig_status(out), dig_section(out, "ANSWER")
    naptr = records_of(ans, "NAPTR")
    regexps = [naptr_regexp(r) for _, r in naptr]
    if st != "NOERROR" or regexps != [f"!^.*$!{want}!"]:
        problems.append(f"{what} {name} NAPTR ({transport}): {st}, regexps {regexps}, want "
                        f"['!^.*$!{want}!'] ({handle}): {ans}")
    elif not all('"U" "ORS+UINF"' in r for _, r in naptr):
        problems.append(f"{what} {name} NAPTR ({transport}): not U / ORS+UINF: {naptr}")
    return problems


def http_handle(node, ident):
    r = get_resolve(node, ident)
    assert r.status_code == 200, f"{ident}: {r.status_code} {r.text}"
    return r.json()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dns_resolves_each_linked_identifier(node, transport):
    # Ecode V0 is the GS1 key it carries: the DNS name reaches the record
    # HTTP names for the same identifier.
    v0 = http_handle(node, ECODE_V0)
    assert (v0["handle"], v0["canonical"], v0["exact"]) == (P1, f"gs1:01/{GTIN_V0}", True), v0
    cases = [
        ("GTIN (ONS)", ons_name(GTIN), G),
        ("GTIN (ONS), upper-case labels", ons_name(GTIN).upper(), G),
        ("GTIN of the Ecode V0 (ONS)", ons_name(GTIN_V0), P1),
        # no OID record of its own: answered from the handle that names it
        ("OID named by P1", ors_name(OID), P1),
        ("Ecode V1", scheme_name(ECODE_V1, "ecode"), P1),
        ("Ecode V1, upper-case labels", scheme_name(ECODE_V1, "ecode").upper(), P1),
        ("Ecode V0", scheme_name(ECODE_V0, "ecode"), v0["handle"]),
        ("CID", scheme_name("cidab12cd34", "cid"), P1),
        ("CID, upper case", scheme_name("CIDAB12CD34", "CID").upper(), P1),
    ]
    nxdomain = [
        ("GTIN with a wrong check digit (ONS)", ons_name(GTIN_BAD)),
        ("unlinked GTIN (ONS)", ons_name(GTIN_UNLINKED)),
        ("13 digits (ONS)", ons_name(GTIN[1:])),
        ("Ecode V7", scheme_name("7000112345", "ecode")),
        ("unlinked Ecode V1", scheme_name("10001999999999", "ecode")),
        ("unknown CID", scheme_name("cidzzzz9999", "cid")),
        ("unlinked OID", ors_name("1.2.156.3001.999")),
    ]
    if V5_CONFIGURED:
        cases += [("Ecode V5 (configured)", scheme_name(ECODE_V5, "ecode"), E5),
                  ("Ecode V5 written through the node", scheme_name(ECODE_V5B, "ecode"), E5B)]
    else:
        nxdomain += [("Ecode V5 (not configured)", scheme_name(ECODE_V5, "ecode"))]

    # DNS does not walk a GS1 key up: an Ecode V0 carrying GTIN+lot(+serial)
    # that HTTP answers from a less specific level is NXDOMAIN over DNS;
    # the exact key of a lot is answered.
    lot_v0 = f"0(01){GTIN}(10)LOT1"
    j = http_handle(node, f"ecode:{lot_v0}")
    assert (j["handle"], j["exact"]) == (LOT, True), j
    cases.append(("Ecode V0 of GTIN+lot (exact)", scheme_name(lot_v0, "ecode"), LOT))
    for v0_up, level_handle in ((f"0(01){GTIN}(10)LOT1(21)OTHER", LOT), (f"0(01){GTIN}(10)LOT2", G)):
        j = http_handle(node, f"ecode:{v0_up}")
        assert (j["handle"], j["exact"]) == (level_handle, False), j
        nxdomain.append((f"Ecode V0 {v0_up} (HTTP walks up to {level_handle})", scheme_name(v0_up, "ecode")))

    problems = []
    for what, name, handle in cases:
        problems += dns_answer_problems(node, what, name, handle, transport)
    for what, name in nxdomain:
        for rtype in ("NAPTR", "TXT"):
            out = dig(node, name, rtype, transport)
            st, ans = dig_status(out), dig_section(out, "ANSWER")
            soa = records_of(dig_section(out, "AUTHORITY"), "SOA")
            if st != "NXDOMAIN" or ans or not soa:
                problems.append(f"{what} {name} {rtype} ({transport}): {st}, answer {ans}, SOA {soa}, "
                                f"want NXDOMAIN with the SOA")
    # the trees exist, without answers of their own (NODATA)
    for name in (f"gs1.id.{ZONE}", f"gtin.gs1.id.{ZONE}", f"ecode.id.{ZONE}", f"cid.id.{ZONE}"):
        for rtype in ("NAPTR", "TXT"):
            out = dig(node, name, rtype, transport)
            st, ans = dig_status(out), dig_section(out, "ANSWER")
            if st != "NOERROR" or ans:
                problems.append(f"{name} {rtype} ({transport}): {st}, answer {ans}, want NOERROR without one")
    assert node.alive(), node.server.log_tail()
    assert not problems, f"{len(problems)} DNS checks failed:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------
# 2. conflicting links
# ---------------------------------------------------------------------------

def refused_conflict(r, key, holder, claimant, status_faults):
    """A write refused for a link conflict: a message naming the key and both
    handles (holder first). A status other than 4xx is noted in
    status_faults (the refusal is the client's fault, not the server's)."""
    try:
        msg = r.json().get("message", "")
    except ValueError:
        msg = r.text
    assert r.status_code >= 400, f"not refused: {r.status_code} {r.text}"
    assert key in msg and holder in msg and claimant in msg, msg
    assert msg.index(holder) < msg.index(claimant), f"the holder is named first: {msg}"
    if not 400 <= r.status_code < 500:
        status_faults.append(f"{claimant} claiming {key}: HTTP {r.status_code} {r.text}")


def test_conflicting_link_is_refused_over_http(node):
    status_faults = []
    b = f"{PREFIX}/B"
    for data in (DL_SERIAL, f"(01){GTIN}(10)LOT1(21)SER1", f"https://id.gs1.org/{DL_SERIAL}?17=261231"):
        r = put(node, b, [sv(1, "URL", url("b")), sv(10, "GS1.DL", data)])
        refused_conflict(r, LINK_SERIAL, P1, b, status_faults)
    for typ, data, key in (("ECODE", ECODE_V1, f"ecode:{ECODE_V1}"),
                           ("CID", "cid.ab12cd34", CID_KEY), ("GS1.GTIN", GTIN, f"gs1:01/{GTIN}")):
        holder = G if typ == "GS1.GTIN" else P1
        r = put(node, b, [sv(1, "URL", url("b")), sv(10, typ, data)])
        refused_conflict(r, key, holder, b, status_faults)
    # nothing of B was written, and the link still leads to P1
    assert requests.get(f"{node.base}/api/handles/{b}", timeout=WAIT).status_code == 404
    assert get_resolve(node, LINK_SERIAL).json()["handle"] == P1

    # OID links are shared by default (several records could always name
    # one OID): the first claimant in handle order answers.
    r = put(node, b, [sv(1, "URL", url("b")), sv(10, "OID", OID)])
    assert r.status_code in (200, 201), f"a second record naming the OID: {r.status_code} {r.text}"
    assert get_resolve(node, OID).json()["handle"] == min(b, P1)
    d = requests.delete(f"{node.base}/api/handles/{b}", headers={"Authorization": basic()}, timeout=WAIT)
    assert d.status_code == 200, d.text
    assert get_resolve(node, OID).json()["handle"] == P1

    # A record keeps its own link when rewritten; a link given up is free.
    m1, m2 = f"{PREFIX}/M1", f"{PREFIX}/M2"
    link = f"01/{GTIN}/10/MOVE"
    assert put(node, m1, [sv(1, "URL", url("m1")), sv(10, "GS1.DL", link)]).status_code in (200, 201)
    r = put(node, m1, [sv(1, "URL", url("m1b")), sv(10, "GS1.DL", link)])
    assert r.status_code in (200, 201), f"rewriting the holder: {r.status_code} {r.text}"
    r = put(node, m2, [sv(1, "URL", url("m2")), sv(10, "GS1.DL", link)])
    refused_conflict(r, f"gs1:{link}", m1, m2, status_faults)
    assert put(node, m1, [sv(1, "URL", url("m1c"))]).status_code in (200, 201)
    r = put(node, m2, [sv(1, "URL", url("m2")), sv(10, "GS1.DL", link)])
    assert r.status_code in (200, 201), f"after M1 gave the link up: {r.status_code} {r.text}"
    j = get_resolve(node, f"gs1:{link}").json()
    assert (j.get("handle"), j.get("level")) == (m2, "01+10"), j
    # deleting the holder frees the link too
    d = requests.delete(f"{node.base}/api/handles/{m2}", headers={"Authorization": basic()}, timeout=WAIT)
    assert d.status_code == 200, d.text
    j = get_resolve(node, f"gs1:{link}").json()
    assert (j.get("handle"), j.get("level"), j.get("exact")) == (G, "01", False), j
    r = put(node, m1, [sv(1, "URL", url("m1d")), sv(10, "GS1.DL", link)])
    assert r.status_code in (200, 201), r.text
    # An invalid link value is refused as the client's fault, naming it.
    r = put(node, b, [sv(1, "URL", url("b")), sv(10, "GS1.DL", f"01/{GTIN[:-1]}4")])
    assert r.status_code >= 400 and "check digit" in r.text and b in r.text, f"{r.status_code} {r.text}"
    if not 400 <= r.status_code < 500:
        status_faults.append(f"invalid link value: HTTP {r.status_code} {r.text}")
    assert not status_faults, "conflicts refused with a server-error status:\n" + "\n".join(status_faults)


def test_conflicting_link_is_refused_over_handle_and_grpc(node, pb):
    """The same refusal on the other write paths: Handle CREATE_HANDLE
    (HS_SECKEY authentication) and gRPC RegisterBatch."""
    hb, gb = f"{PREFIX}/HB", f"{PREFIX}/GB"
    faults = []
    auth = hdl.SecretKeyAuth(ADMIN.split(":", 1)[1], int(ADMIN.split(":", 1)[0]), SECRET)
    with hdl.HandleClient(node.host, node.port, transport="tcp", auth=auth, timeout=5) as c:
        r = c.create_handle(hb, [hdl.HandleValue.text(1, "URL", url("hb")),
                                 hdl.HandleValue.text(10, "GS1.DL", f"https://id.gs1.org/{DL_SERIAL}")])
        assert not r.ok and LINK_SERIAL in r.message and P1 in r.message and hb in r.message, r
        if r.rc == hdl.RC_ERROR:
            faults.append(f"Handle CREATE_HANDLE conflict: rc {r.rc} (generic ERROR) {r.message!r}")
        r = c.create_handle(hb, [hdl.HandleValue.text(1, "URL", url("hb")),
                                 hdl.HandleValue.text(10, "ECODE", "7000112345")])
        assert not r.ok and "V7" in r.message, r
        if r.rc == hdl.RC_ERROR:
            faults.append(f"Handle CREATE_HANDLE bad link: rc {r.rc} (generic ERROR) {r.message!r}")
        assert c.resolve(hb).rc == hdl.RC_HANDLE_NOT_FOUND

    reg, common = pb["registry"], pb["common"]
    md = (("x-idres-dev-peer", "operator:alice"),)
    with grpc.insecure_channel(node.server.faces["grpc"]) as ch:
        stub = pb["registry_grpc"].RegistryServiceStub(ch)
        ops = [reg.Operation(operation_id=f"gb-{n}", kind=reg.OPERATION_KIND_UPSERT, handle=gb,
                             values=[common.HandleValue(index=1, type="URL", data=url("gb").encode()),
                                     common.HandleValue(index=10, type=t, data=d.encode())])
               for n, (t, d) in enumerate([("GS1.DL", DL_SERIAL), ("ECODE", ECODE_V1),
                                           ("GS1.DL", f"01/{GTIN[:-1]}4")])]
        res = stub.RegisterBatch(reg.RegisterBatchRequest(operations=ops), timeout=WAIT, metadata=md).results
        assert len(res) == 3
        for want, r in zip([LINK_SERIAL, f"ecode:{ECODE_V1}"], res[:2]):
            assert r.code != 0 and want in r.message and P1 in r.message and gb in r.message, r
            if r.code not in (grpc.StatusCode.ALREADY_EXISTS.value[0], grpc.StatusCode.FAILED_PRECONDITION.value[0],
                              grpc.StatusCode.INVALID_ARGUMENT.value[0]):
                faults.append(f"gRPC conflict: code {r.code} {r.message}")
        assert res[2].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "check digit" in res[2].message, res[2]
    assert requests.get(f"{node.base}/api/handles/{gb}", timeout=WAIT).status_code == 404
    assert not faults, "\n".join(faults)


def test_conflicting_link_is_refused_by_import(tmp_path):
    a, b = f"{PREFIX}/A", f"{PREFIX}/B"
    data = init_store(str(tmp_path), [{"handle": a, "values": [sv(1, "GS1.DL", DL_SERIAL)]}])
    path = tmp_path / "second.jsonl"
    path.write_text(json.dumps({"handle": b, "values": [sv(1, "GS1.DL", f"https://id.gs1.org/{DL_SERIAL}")]})
                    + "\n")
    r = run_idres("import", "--data-dir", data, str(path), timeout=WAIT, check=False)
    assert r.returncode != 0, r.stderr
    want = f"{LINK_SERIAL} is already linked to {a}; {b} cannot claim it too"
    assert want in r.stderr, r.stderr
    out = run_idres("export", "--data-dir", data, timeout=WAIT).stdout
    assert f'"handle":"{b}"' not in out, "the refused record was stored"
    assert f'"handle":"{a}"' in out

    # Two records of one file claiming one link: the file is refused whole.
    d2 = init_store(str(tmp_path / "two"), [])
    path = tmp_path / "two.jsonl"
    path.write_text("".join(json.dumps({"handle": h, "values": [sv(1, "GS1.DL", DL_SERIAL)]}) + "\n"
                            for h in (a, b)))
    r = run_idres("import", "--data-dir", d2, str(path), timeout=WAIT, check=False)
    assert r.returncode != 0, r.stderr
    assert LINK_SERIAL in r.stderr and a in r.stderr and b in r.stderr, r.stderr
    out = run_idres("export", "--data-dir", d2, timeout=WAIT).stdout
    assert f'"handle":"{a}"' not in out and f'"handle":"{b}"' not in out, "part of a refused file was stored"


def test_shared_links_let_several_records_claim_one_key(tmp_path):
    a, b, c = f"{PREFIX}/SA", f"{PREFIX}/SB", f"{PREFIX}/SC"
    shared = '[schemes]\nshared_links = ["gs1"]\n'
    init_store(str(tmp_path), [
        {"handle": a, "values": [sv(1, "URL", url("sa")), sv(10, "GS1.DL", DL_SERIAL), sv(11, "ECODE", ECODE_V1)]},
        {"handle": b, "values": [sv(1, "URL", url("sb")), sv(10, "GS1.DL", f"(01){GTIN}(10)LOT1(21)SER1")]},
    ], config=shared)
    server = Server(str(tmp_path), ["--http-listen", "127.0.0.1:0"], ["http", "handle"], config=shared)
    try:
        n = Node(server)
        j = get_resolve(n, f"https://id.gs1.org/{DL_SERIAL}").json()
        assert j.get("handle") in (a, b) and j.get("level") == "01+10+21" and j.get("exact") is True, j
        # Ecode links are still exclusive.
        r = put(n, c, [sv(1, "URL", url("sc")), sv(10, "ECODE", ECODE_V1)])
        assert r.status_code >= 400 and a in r.text and c in r.text, r.text
        r = put(n, c, [sv(1, "URL", url("sc")), sv(10, "GS1.DL", DL_SERIAL)])
        assert r.status_code in (200, 201), r.text
        # resolution takes the first claimant in handle order
        j = get_resolve(n, LINK_SERIAL).json()
        assert j.get("handle") == a, j
    finally:
        server.stop()


def test_import_reads_the_schemes_of_its_configuration(tmp_path):
    rec = {"handle": f"{PREFIX}/V5", "values": [sv(1, "URL", url("v5")), sv(10, "ECODE", ECODE_V5)]}
    data = init_store(str(tmp_path), [])
    path = tmp_path / "v5.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    # without the configuration Ecode V5 is not a version: refused, naming the value and the fault
    r = run_idres("import", "--data-dir", data, str(path), timeout=WAIT, check=False)
    assert r.returncode != 0 and "V5" in r.stderr and "not in the version table" in r.stderr, r.stderr
    assert f"{PREFIX}/V5" in r.stderr, r.stderr
    conf = tmp_path / "node.toml"
    conf.write_text(CONFIG)
    run_idres("import", "--data-dir", data, "--config", str(conf), str(path), timeout=WAIT)
    # A node started with another [schemes] rebuilds its link index: under
    # the default table the V5 link is left out (the record stays).
    server = Server(str(tmp_path), ["--http-listen", "127.0.0.1:0"], ["http", "handle"], config="")
    try:
        n = Node(server)
        assert requests.get(f"{n.base}/api/handles/{PREFIX}/V5", timeout=WAIT).status_code == 200
        r = get_resolve(n, f"ecode:{ECODE_V5}")
        assert r.status_code == 400 and "V5" in r.json()["message"], r.text
    finally:
        server.stop()
    server = Server(str(tmp_path), ["--http-listen", "127.0.0.1:0"], ["http", "handle"], config=CONFIG)
    try:
        n = Node(server)
        j = get_resolve(n, ECODE_V5).json()
        assert (j.get("handle"), j.get("form"), j.get("level")) == (f"{PREFIX}/V5", "Ecode V5", "ecode"), j
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# 3. bad identifiers
# ---------------------------------------------------------------------------

LONG_DL = f"https://id.gs1.org/01/{GTIN}/10/" + "A" * (3000 - len(f"https://id.gs1.org/01/{GTIN}/10/"))
assert len(LONG_DL) == 3000

#: (what, HTTP identifier, Handle string, fragments the message must contain)
BAD = [
    ("wrong check digit", f"https://id.gs1.org/01/{GTIN[:-1]}4", f"gs1:01/{GTIN[:-1]}4", ["check digit"]),
    ("unknown AI", f"https://id.gs1.org/01/{GTIN}/89/X", f"gs1:01/{GTIN}/89/X",
     ["unknown application identifier (89)"]),
    ("unknown AI in the query", f"https://id.gs1.org/01/{GTIN}?89=X", None, ["unknown application identifier (89)"]),
    ("malformed DL", "https://id.gs1.org/01/", "gs1:01/", ["(01)", "empty"]),
    ("oversize", LONG_DL, "gs1:" + LONG_DL[len("https://id.gs1.org/"):], ["at most 2048"]),
    ("Ecode V7", "ecode:7000112345", "ecode:7000112345", ["V7", "not in the version table"]),
    ("bare Ecode V7", "7000112345", None, ["V7", "not in the version table"]),
]


def test_bad_identifiers_over_http(node):
    failures = []
    for what, ident, _, fragments in BAD:
        r = get_resolve(node, ident)
        try:
            msg = r.json().get("message", "")
        except ValueError:
            msg = r.text
        if r.status_code != 400 or not all(f in msg for f in fragments):
            failures.append(f"{what}: HTTP {r.status_code} {msg[:300]!r}, want 400 naming {fragments}")
    assert node.alive()
    r = get_resolve(node, f"https://id.gs1.org/{DL_SERIAL}")
    assert r.status_code == 200 and r.json()["handle"] == P1, r.text
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_bad_identifiers_over_handle(node, transport):
    failures = []
    with handle_client(node, transport) as c:
        for what, _, sent, fragments in BAD:
            if sent is None:
                continue
            try:
                r = c.resolve(sent)
            except hdl.HandleError as e:
                failures.append(f"{what}: {e}")
                continue
            good = r.rc == hdl.RC_INVALID_HANDLE and all(f in r.message for f in fragments)
            # The wire layer bounds a request's handle (1024 bytes) before any
            # scheme reads it: PROTOCOL_ERROR naming that limit is as good.
            if what == "oversize" and r.rc == hdl.RC_PROTOCOL_ERROR and "exceeds the limit" in r.message:
                good = True
            if not good:
                failures.append(f"{what}: rc {r.rc} {r.message[:300]!r}, want {hdl.RC_INVALID_HANDLE} naming "
                                f"{fragments}")
    assert node.alive()
    with handle_client(node, transport) as c:
        r = c.resolve(LINK_SERIAL)
        assert r.ok and url_of_hdl(r) == URLS[P1], r
    assert not failures, "\n".join(failures)


def test_bad_identifiers_on_the_command_line(node):
    failures = []
    for what, ident, _, fragments in BAD:
        for tcp in (False, True):
            r = cli_resolve(node, ident, tcp=tcp)
            if r.returncode != 1 or not all(f in r.stdout for f in fragments):
                failures.append(f"resolve {what} (tcp={tcp}): exit {r.returncode} {r.stdout[:300]!r} "
                                f"{r.stderr[:200]!r}")
    # parse-id: one line per identifier, exit 1 when any fails
    ids = [ident for _, ident, _, _ in BAD]
    r = run_idres("parse-id", "--config", node.config, f"https://id.gs1.org/{DL_SERIAL}", *ids, timeout=WAIT,
                  check=False)
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 1 and len(lines) == len(ids) + 1, (r.returncode, r.stdout, r.stderr)
    assert lines[0]["ok"] is True and lines[0]["canonical"] == LINK_SERIAL
    assert lines[0]["element_string"] == f"^01{GTIN}10LOT1^21SER1", lines[0]
    for (what, ident, _, fragments), line in zip(BAD, lines[1:]):
        if line.get("ok") is not False or line.get("id") != ident or not all(f in line.get("error", "")
                                                                             for f in fragments):
            failures.append(f"parse-id {what}: {json.dumps(line)[:300]}")
    assert node.alive()
    r = cli_resolve(node, ECODE_V1)
    assert r.returncode == 0 and url_of_json(json.loads(r.stdout)["values"]) == URLS[P1], r.stdout + r.stderr
    assert not failures, "\n".join(failures)


def test_parse_id_reads_every_scheme(node):
    cases = {
        f"https://id.gs1.org/{DL_SERIAL}?17=261231": ("gs1", "Digital Link URI", LINK_SERIAL,
                                                      f"^01{GTIN}10LOT1^21SER1^17261231"),
        f"(01){GTIN}(10)LOT1(21)SER1": ("gs1", "element string", LINK_SERIAL, f"^01{GTIN}10LOT1^21SER1"),
        GTIN[1:]: ("gs1", "GTIN-13", f"gs1:01/{GTIN}", f"^01{GTIN}"),
        ECODE_V1: ("ecode", "Ecode V1", f"ecode:{ECODE_V1}", None),
        ECODE_V0: ("ecode", "Ecode V0 (GS1)", f"gs1:01/{GTIN_V0}", f"^01{GTIN_V0}"),
        ECODE_V5: ("ecode", "Ecode V5", f"ecode:{ECODE_V5}", None),
        OID: ("oid", "OID", f"oid:{OID}", None),
        CID_VALUE: ("cid", None, CID_KEY, None),
        P1: ("handle", "Handle", P1, None),
    }
    proc = _retrying(lambda: subprocess.run([IDRES, "parse-id", "--config", node.config, "--stdin"],
                                            input="".join(k + "\n" for k in cases), capture_output=True,
                                            text=True, timeout=WAIT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["id"] for line in lines] == list(cases)
    for line in lines:
        scheme, form, canonical, es = cases[line["id"]]
        assert line["ok"] is True and line["scheme"] == scheme and line["canonical"] == canonical, line
        if form:
            assert line["form"] == form, line
        assert line["element_string"] == es, line
    by_id = {line["id"]: line for line in lines}
    assert by_id[f"(01){GTIN}(10)LOT1(21)SER1"]["levels"] == LEVELS_SERIAL
    assert by_id[ECODE_V1]["levels"] == ["ecode"]


def test_search_by_linked_identifier_prefix(node):
    """Every record under a GTIN, and under a GTIN+lot, in pages; the
    private link is not listed; a link-key prefix works as well."""
    def links(**params):
        r = requests.get(f"{node.base}/api/links", params=params, timeout=WAIT)
        assert r.status_code == 200, r.text
        return r.json()

    whole = links(id=GTIN)
    got = [(i["link"], i["handle"]) for i in whole["items"]]
    assert whole["next"] is None
    assert got[0] == (f"gs1:01/{GTIN}", G)
    handles = {h for _, h in got}
    assert {P1, LOT, G, X, SL} <= handles, got
    assert f"{PREFIX}/PRIV" not in handles, "a link without public read is not listed"
    assert [link for link, _ in got] == sorted(link for link, _ in got), "in link-key order"

    # Under the lot: the lot's record, then every serial under it.
    lot = links(id=f"(01){GTIN}(10)LOT1")
    assert [(i["link"], i["handle"]) for i in lot["items"]] == [
        (f"gs1:01/{GTIN}/10/LOT1", LOT), (f"gs1:01/{GTIN}/10/LOT1/21/SER1", P1)]

    # Pages of one follow each other to the same list.
    paged, cursor = [], None
    for _ in range(20):
        params = {"id": GTIN, "limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = links(**params)
        assert len(page["items"]) <= 1
        paged += [(i["link"], i["handle"]) for i in page["items"]]
        cursor = page["next"]
        if not cursor:
            break
    assert paged == got

    # A raw link-key prefix: every GTIN starting with the company prefix.
    assert {i["handle"] for i in links(prefix=f"gs1:01/{GTIN[:8]}")["items"]} == handles

    for bad in ({"id": "(01)09521234543214"}, {"prefix": "nothing"}, {},
                {"id": GTIN, "prefix": "gs1:"}, {"id": GTIN, "cursor": "!!"},
                {"id": GTIN, "limit": "0"}):
        r = requests.get(f"{node.base}/api/links", params=bad, timeout=WAIT)
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert r.json()["message"], bad

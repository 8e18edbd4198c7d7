"""What an operator sees of a running node: metrics scraped by a real
Prometheus server, readiness that follows the store's writer and a
mirror's lag (over HTTP and the gRPC health service), JSON log lines with
audit events, `idres check-config`, and SIGHUP reloading the HTTPS
certificate.

Every node is `idres serve` on loopback ports it picks itself (learned from
its `listening <face> <addr>` lines); Prometheus listens on a free loopback
port. Every wait is bounded; processes and mounts are cleaned up.
Needs: the Debian packages `prometheus` (prometheus and promtool), the
Python packages pytest, requests, cryptography, grpcio and grpcio-tools;
root for the tmpfs mount of the writer-failure test.
"""

import datetime
import http.client
import importlib
import ipaddress
import json
import math
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import grpc
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_tools import protoc

from idres_http_node import (ADMIN, IDRES, PREFIX, SECRET, _binary_ready, _retrying, basic,
                             make_pki, run_idres, start_node)

WAIT = 20
PROMETHEUS = "/usr/bin/prometheus"
PROMTOOL = "/usr/bin/promtool"

# The standard gRPC health protocol (grpc/health/v1/health.proto), compiled
# with grpcio-tools at test time like the idres protos in test_grpc.py.
HEALTH_PROTO = """syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"""


# ---------------------------------------------------------------- helpers

class Served:
    """A running `idres serve`: its process, faces and standard error file."""

    def __init__(self, proc, faces, stderr_path):
        self.proc, self.faces, self.stderr_path = proc, faces, stderr_path

    def url(self, face="http"):
        return f"{face}://{self.faces[face]}"

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.proc.returncode

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


def serve(directory, name, args, want, env=None, log_format=None):
    """Starts `idres [--log-format F] serve ARGS`; waits (bounded) until every
    face in `want` is announced. Standard error goes to DIRECTORY/NAME.err."""
    _binary_ready()
    cmd = [IDRES]
    if log_format:
        cmd += ["--log-format", log_format]
    cmd += ["serve", *map(str, args)]
    stderr_path = os.path.join(str(directory), f"{name}.err")
    environment = {**os.environ, "IDRES_LOG": "info", **(env or {})}
    err = open(stderr_path, "w")
    try:
        proc = _retrying(lambda: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                                  env=environment))
    finally:
        err.close()
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    faces = {}
    deadline = time.monotonic() + WAIT
    while not set(want) <= faces.keys() and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None and lines.empty():
                break
            continue
        m = re.match(r"listening (\w+) (127\.0\.0\.1:\d+)", line)
        if m:
            faces[m.group(1)] = m.group(2)
    node = Served(proc, faces, stderr_path)
    if not set(want) <= faces.keys():
        node.stop()
        raise AssertionError(f"{name}: faces {faces} announced within {WAIT}s, wanted {want} "
                             f"(exit code {proc.returncode}):\n{node.stderr()[-3000:]}")
    return node


def init_prefix(directory, data):
    secret_file = os.path.join(str(directory), "admin.secret")
    with open(secret_file, "w") as f:
        f.write(SECRET + "\n")
    run_idres("init-prefix", "--data-dir", data, "--prefix", PREFIX, "--admin", ADMIN,
              "--secret-file", secret_file)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, probe, timeout):
    """Calls probe() until it returns something truthy, for at most
    `timeout` seconds; returns it, or fails naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = probe()
        except (requests.RequestException, OSError) as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")
        time.sleep(0.2)


def scrape(base, **kw):
    return requests.get(f"{base}/metrics", timeout=5, **kw).text


def samples(text, name):
    """{labels-string: value} of the samples of metric `name` in a text exposition."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) == name:
            out[m.group(2) or ""] = float(m.group(3))
    return out


def readyz(base):
    r = requests.get(f"{base}/readyz", timeout=5)
    return r.status_code, r.text


def put(base, handle, values, auth=basic()):
    return requests.put(f"{base}/api/handles/{handle}", json={"values": values},
                        headers={"Authorization": auth}, timeout=30)


def url_value(text, index=1):
    return {"index": index, "type": "URL", "data": {"format": "string", "value": text}}


def resolve_udp(addr, handle):
    r = run_idres("resolve", "--server", addr, handle, timeout=10, check=False)
    return r.returncode == 0 and json.loads(r.stdout).get("responseCode") == 1


@pytest.fixture(scope="module")
def health_pb(tmp_path_factory):
    """The generated client of grpc.health.v1.Health. The proto file sits in
    a directory of its own name, so the Python modules do not fall under
    grpcio's own `grpc` package; the wire names stay grpc.health.v1."""
    out = tmp_path_factory.mktemp("health")
    (out / "idres_health_pb").mkdir()
    (out / "idres_health_pb" / "health.proto").write_text(HEALTH_PROTO)
    rc = protoc.main(["protoc", f"-I{out}", f"--python_out={out}", f"--grpc_python_out={out}",
                      "idres_health_pb/health.proto"])
    assert rc == 0, "grpcio-tools could not compile the health protocol"
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("idres_health_pb.health_pb2")
        pb2_grpc = importlib.import_module("idres_health_pb.health_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc


def top_and_mirror(d, mirror_config="", mirror_grpc=False):
    """A top node (HTTP, Handle, plaintext gRPC) with prefix 88.118.8 and a
    mirror following it over plaintext gRPC (HTTP, and gRPC if asked)."""
    init_prefix(d, d / "top")
    top = serve(d, "top", ["--data-dir", d / "top", "--handle-listen", "127.0.0.1:0",
                           "--http-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0",
                           "--grpc-dev-plaintext"], want=("http", "handle", "grpc"))
    conf = d / "mirror.toml"
    # A plaintext upstream knows its callers by name: an operator may follow everything.
    conf.write_text('[grpc]\nupstream_dev_peer = "operator:mirror"\n' + mirror_config)
    args = ["--config", conf, "--data-dir", d / "mirror", "--role", "mirror",
            "--upstream", f"http://{top.faces['grpc']}", "--handle-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0"]
    want = ["http", "handle"]
    if mirror_grpc:
        args += ["--grpc-listen", "127.0.0.1:0", "--grpc-dev-plaintext"]
        want.append("grpc")
    try:
        mirror = serve(d, "mirror", args, want=want)
    except BaseException:
        top.stop()
        raise
    return top, mirror


# ---------------------------------------------------------------- 1

def prom_query(base, q):
    r = requests.get(f"{base}/api/v1/query", params={"query": q}, timeout=5)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_the_node(tmp_path):
    assert os.access(PROMETHEUS, os.X_OK), f"{PROMETHEUS} is missing: apt-get install prometheus"
    assert os.access(PROMTOOL, os.X_OK), f"{PROMTOOL} is missing: apt-get install prometheus"
    top, mirror = top_and_mirror(tmp_path)
    prom = None
    stop = threading.Event()
    try:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            f"  - job_name: top\n    static_configs:\n      - targets: ['{top.faces['http']}']\n"
            f"  - job_name: mirror\n    static_configs:\n      - targets: ['{mirror.faces['http']}']\n")
        log = open(tmp_path / "prometheus.log", "w")
        prom = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        base = f"http://127.0.0.1:{port}"
        wait_for("prometheus ready", lambda: requests.get(f"{base}/-/ready", timeout=2).ok, 30)

        # Resolutions over Handle UDP all along, so that rates have something to see.
        def load():
            while not stop.is_set():
                resolve_udp(top.faces["handle"], f"0.NA/{PREFIX}")
                stop.wait(0.2)
        threading.Thread(target=load, daemon=True).start()
        wait_for("a resolution", lambda: resolve_udp(top.faces["handle"], f"0.NA/{PREFIX}"), 10)

        up = wait_for("both targets up", lambda: (
            {r["metric"]["job"] for r in prom_query(base, "up == 1")} >= {"top", "mirror"}), 30)
        assert up
        counter = wait_for("the Handle UDP request counter", lambda: [
            r for r in prom_query(
                base, 'idres_requests_total{job="top",face="handle_udp",op="RESOLUTION"} > 0')], 30)
        assert {r["metric"].get("code") for r in counter} >= {"SUCCESS"}, counter

        def p99():
            res = prom_query(base, 'histogram_quantile(0.99, sum by (le) (rate('
                                   'idres_request_duration_seconds_bucket{job="top",face="handle_udp",'
                                   'op="RESOLUTION"}[30s])))')
            return [r for r in res if math.isfinite(float(r["value"][1]))]
        q = wait_for("a p99 latency of Handle UDP resolutions", p99, 30)
        assert 0 < float(q[0]["value"][1]) < 10, q
        count = prom_query(base, 'idres_request_duration_seconds_count{job="top",face="handle_udp"}')
        assert count and float(count[0]["value"][1]) > 0, count

        lag = wait_for("the mirror's replication lag", lambda: prom_query(
            base, '{job="mirror",__name__=~"idres_follower_lag_changes|idres_follower_lag_seconds"}'), 30)
        upstreams = {r["metric"].get("upstream") for r in lag}
        assert upstreams == {f"http://{top.faces['grpc']}"}, lag
        assert {r["metric"]["__name__"] for r in lag} == {"idres_follower_lag_changes",
                                                          "idres_follower_lag_seconds"}, lag
        build = prom_query(base, "idres_build_info")
        assert {(r["metric"]["job"], r["metric"]["role"]) for r in build} == {
            ("top", "top"), ("mirror", "mirror")}, build

        # The exposition itself passes promtool's checks, as scraped from each
        # node, in the text format 0.0.4 by default and OpenMetrics on request.
        for node in (top, mirror):
            r = requests.get(f"{node.url()}/metrics", timeout=5,
                             headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            assert r.headers["content-type"].startswith("application/openmetrics-text"), r.headers
            assert r.text.endswith("# EOF\n"), r.text[-200:]
            r = requests.get(f"{node.url()}/metrics", timeout=5)
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
            body = r.text
            r = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                               text=True, timeout=30)
            assert r.returncode == 0, f"promtool check metrics ({r.returncode}):\n{r.stdout}{r.stderr}"
    finally:
        stop.set()
        if prom is not None:
            prom.terminate()
            try:
                prom.wait(timeout=15)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait(timeout=5)
        mirror.stop()
        top.stop()


# ---------------------------------------------------------------- 2

def test_readyz_follows_writer_failure(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(data)], check=True, timeout=10)
    node = None
    try:
        # Space held back, given back once the node is stopped.
        reserve = data / "reserve"
        with open(reserve, "wb") as f:
            f.write(b"\0" * (2 << 20))
        init_prefix(tmp_path, data)
        args = ["--data-dir", data, "--handle-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        node = serve(tmp_path, "full", args, want=("http",))
        base = node.url()
        wait_for("ready before writing", lambda: readyz(base)[0] == 200, 10)
        acknowledged = {}
        failed = None
        deadline = time.monotonic() + 40
        for i in range(800):
            if time.monotonic() > deadline:
                break
            handle = f"{PREFIX}/BIG{i:04}"
            # ~100 kB, under the default max_record_bytes (131072)
            value = f"https://example.cn/{i}/" + f"{i:04}" * 25_000
            r = put(base, handle, [url_value(value)])
            if r.status_code in (200, 201):
                acknowledged[handle] = value
            else:
                failed = (handle, r.status_code, r.text)
                break
        assert failed, f"no write failed on a 6 MiB filesystem after {len(acknowledged)} writes"
        assert failed[1] >= 500, f"the failed write is answered {failed[1]}: {failed[2]}"
        assert acknowledged, "the very first write failed"

        code, text = readyz(base)
        assert code == 503 and re.search(r"^store: .*refuses writes", text, re.M), (code, text)
        assert samples(scrape(base), "idres_writer_failed") == {"": 1.0}
        assert samples(scrape(base), "idres_ready") == {"": 0.0}
        # Further writes are refused; reads go on.
        r = put(base, f"{PREFIX}/SMALL", [url_value("https://example.cn/small")])
        assert r.status_code >= 500, (r.status_code, r.text)
        first = next(iter(acknowledged))
        r = requests.get(f"{base}/api/handles/{first}", timeout=10)
        assert r.status_code == 200, (r.status_code, r.text)
        assert r.json()["values"][0]["data"]["value"] == acknowledged[first]

        node.stop()
        node = None
        os.unlink(reserve)
        node = serve(tmp_path, "recovered", args, want=("http",))
        base = node.url()
        wait_for("ready after the restart", lambda: (lambda c_t: c_t[0] == 200 and c_t[1].strip() == "ready")(
            readyz(base)), 15)
        assert samples(scrape(base), "idres_writer_failed") == {"": 0.0}
        for handle, value in acknowledged.items():
            r = requests.get(f"{base}/api/handles/{handle}", timeout=10)
            assert r.status_code == 200, f"acknowledged {handle} lost: {r.status_code} {r.text[:200]}"
            assert r.json()["values"][0]["data"]["value"] == value, handle
        # and it writes again
        r = put(base, f"{PREFIX}/AFTER", [url_value("https://example.cn/after")])
        assert r.status_code in (200, 201), (r.status_code, r.text)
    finally:
        if node is not None:
            node.stop()
        subprocess.run(["umount", str(data)], timeout=20)


# ---------------------------------------------------------------- 3

def test_readyz_follows_mirror_lag(tmp_path, health_pb):
    pb2, pb2_grpc = health_pb
    top, mirror = top_and_mirror(tmp_path, "ready_max_lag_secs = 2\n", mirror_grpc=True)
    base = mirror.url()
    channel = grpc.insecure_channel(mirror.faces["grpc"])
    health = pb2_grpc.HealthStub(channel)

    def serving():
        return health.Check(pb2.HealthCheckRequest(service=""), timeout=5).status

    stopped = False
    try:
        # Caught up: the mirror's applied sequence is the top's head (a
        # mirror that never caught up counts as ready for its first
        # ready_max_lag_secs, so readiness alone does not say it).
        head = samples(scrape(top.url()), "idres_changelog_head_sequence")[""]
        assert head > 0
        wait_for("the mirror caught up", lambda: head in samples(
            scrape(base), "idres_follower_applied_sequence").values(), 15)
        wait_for("the mirror ready once caught up", lambda: readyz(base)[0] == 200, 5)
        wait_for("gRPC health SERVING", lambda: serving() == pb2.HealthCheckResponse.SERVING, 5)

        os.kill(top.proc.pid, signal.SIGSTOP)
        stopped = True
        t0 = time.monotonic()
        code, text = wait_for("the mirror not ready with its upstream stopped",
                              lambda: (lambda c_t: c_t if c_t[0] == 503 else None)(readyz(base)), 6)
        assert re.search(r"^follower: ", text, re.M), text
        wait_for("gRPC health NOT_SERVING", lambda: serving() == pb2.HealthCheckResponse.NOT_SERVING, 3)
        assert samples(scrape(base), "idres_ready") == {"": 0.0}
        assert time.monotonic() - t0 < 8

        os.kill(top.proc.pid, signal.SIGCONT)
        stopped = False
        wait_for("the mirror ready again", lambda: readyz(base)[0] == 200, 5)
        wait_for("gRPC health SERVING again", lambda: serving() == pb2.HealthCheckResponse.SERVING, 3)

        # A write at the top reaches the mirror, and the mirror's metrics say
        # so soon after: a caught-up follower hears from its upstream about
        # every second.
        r = put(top.url(), f"{PREFIX}/LAG1", [url_value("https://example.cn/lag1")])
        assert r.status_code in (200, 201), r.text
        head = samples(scrape(top.url()), "idres_changelog_head_sequence")[""]
        wait_for("the record at the mirror", lambda: requests.get(
            f"{base}/api/handles/{PREFIX}/LAG1", timeout=5).status_code == 200, 10)
        wait_for("the mirror's idres_follower_applied_sequence reaching the top's head "
                 f"{head:.0f} (the record is there already)", lambda: head in samples(
                     scrape(base), "idres_follower_applied_sequence").values(), 4)
    finally:
        channel.close()
        if stopped:
            os.kill(top.proc.pid, signal.SIGCONT)
        mirror.stop()
        top.stop()


# ---------------------------------------------------------------- 4

def test_json_logs_parse(tmp_path):
    data = tmp_path / "data"
    init_prefix(tmp_path, data)
    node = serve(tmp_path, "json", ["--data-dir", data, "--handle-listen", "127.0.0.1:0",
                                    "--http-listen", "127.0.0.1:0"],
                 want=("http",), log_format="json")
    try:
        base = node.url()
        r = put(base, f"{PREFIX}/LOG1", [url_value("https://example.cn/log1")])
        assert r.status_code in (200, 201), r.text
        # A prefix the administrator does not administer.
        r = put(base, "99.999/LOG2", [url_value("https://example.cn/log2")])
        assert r.status_code in (401, 403), (r.status_code, r.text)
        # A wrong secret is an authentication failure, not an audit event.
        r = put(base, f"{PREFIX}/LOG3", [url_value("https://example.cn/log3")],
                auth=basic(secret="wrong"))
        assert r.status_code == 401, (r.status_code, r.text)
    finally:
        node.stop()
    lines = [l for l in node.stderr().splitlines() if l.strip()]
    assert lines, "no log lines"
    events = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise AssertionError(f"a log line is not JSON ({e}): {line!r}")
        assert isinstance(obj, dict) and "level" in obj and "target" in obj, line
        events.append(obj)
    audit = [e for e in events if e["target"] == "idres::audit"]
    applied = [e for e in audit if e.get("outcome") == "applied"]
    refused = [e for e in audit if e.get("outcome") == "refused"]
    assert [e.get("handle") for e in applied] == [f"{PREFIX}/LOG1"], audit
    assert [e.get("handle") for e in refused] == ["99.999/LOG2"], (
        f"the refused write (403) has no audit event; audit events: {audit}")
    for e in applied + refused:
        for field in ("face", "who", "op", "handle"):
            assert e.get(field), f"audit event without {field}: {e}"
        assert e["who"] == ADMIN or ADMIN in str(e["who"]), e
    assert refused[0].get("why"), refused
    assert not any(e.get("handle") == f"{PREFIX}/LOG3" for e in audit), audit


# ---------------------------------------------------------------- 5

def check_config(path):
    r = run_idres("check-config", path, timeout=30, check=False)
    return r.returncode, r.stdout + r.stderr


def test_check_config(tmp_path):
    pki = make_pki(str(tmp_path), [])
    other = tmp_path / "other"
    other.mkdir()
    other_pki = make_pki(str(other), [])
    data = tmp_path / "data"

    def config(name, text):
        p = tmp_path / name
        p.write_text(f'[store]\ndata_dir = "{data}"\n' + text)
        return p

    good = config("good.toml",
                  f'[http]\nlisten = "127.0.0.1:8443"\ntls_cert = "{pki["server_cert"]}"\n'
                  f'tls_key = "{pki["server_key"]}"\nclient_ca = "{pki["ca"]}"\n'
                  '[grpc]\nlisten = "127.0.0.1:2643"\ndev_plaintext = true\n')
    code, out = check_config(good)
    assert code == 0 and f"{good}: ok" in out, (code, out)

    unknown = config("unknown.toml", '[http]\nlisten = "127.0.0.1:8443"\ncolour = "blue"\n')
    code, out = check_config(unknown)
    assert code == 1 and "error:" in out and "colour" in out, (code, out)

    missing = tmp_path / "missing.pem"
    several = config("several.toml",
                     f'[node]\nrole = "mirror"\n'
                     f'[http]\nlisten = "127.0.0.1:8443"\ntls_cert = "{missing}"\n'
                     f'tls_key = "{pki["server_key"]}"\n'
                     '[grpc]\nlisten = "0.0.0.0:2643"\ndev_plaintext = true\n')
    code, out = check_config(several)
    assert code == 1, (code, out)
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    assert any(str(missing) in l for l in errors), out
    assert any("mirror" in l and "upstream" in l for l in errors), out
    assert any("dev_plaintext" in l and "loopback" in l for l in errors), out
    assert len(errors) >= 3, out

    mismatch = config("mismatch.toml",
                      f'[http]\nlisten = "127.0.0.1:8443"\ntls_cert = "{pki["server_cert"]}"\n'
                      f'tls_key = "{other_pki["server_key"]}"\n')
    code, out = check_config(mismatch)
    errors = [l for l in out.splitlines() if l.startswith("error:")]
    assert code == 1 and len(errors) == 1 and "[http]" in errors[0], (code, out)

    for name, text, words in [
        ("no-upstream.toml", '[node]\nrole = "mirror"\n', ("mirror", "upstream")),
        ("bad-role.toml", '[node]\nrole = "leader"\n', ("leader",)),
        ("bad-upstream.toml", '[node]\nrole = "secondary"\nupstream = "ftp://top"\n', ("ftp://top",)),
        ("plaintext.toml", '[grpc]\nlisten = "0.0.0.0:2643"\ndev_plaintext = true\n', ("loopback",)),
        ("missing-cert.toml", f'[http]\ntls_cert = "{missing}"\ntls_key = "{pki["server_key"]}"\n',
         (str(missing),)),
    ]:
        code, out = check_config(config(name, text))
        errors = [l for l in out.splitlines() if l.startswith("error:")]
        assert code == 1 and len(errors) == 1 and all(w in errors[0] for w in words), (name, code, out)

    code, out = check_config(tmp_path / "absent.toml")
    assert code == 1 and "error:" in out, (code, out)


# ---------------------------------------------------------------- 6

def server_cert(ca_cert, ca_key, cn, days):
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after((now + datetime.timedelta(days=days)).replace(microsecond=0))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_ca(cn):
    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def write_pair(cert_path, key_path, cert, key):
    """Replaces the files atomically (as a certificate manager would)."""
    for path, data in ((key_path, key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption())),
                       (cert_path, cert.public_bytes(serialization.Encoding.PEM))):
        tmp = path + ".new"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def test_sighup_reloads_http_certificate(tmp_path):
    pki = make_pki(str(tmp_path), [])
    ca_cert, ca_key = make_ca("idres reload CA")
    ca2 = tmp_path / "reload-ca.pem"
    ca2.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    node = start_node(str(tmp_path), tls=pki)
    try:
        host, port = node.base.removeprefix("https://").rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=pki["ca"])
        ctx.load_verify_locations(cafile=str(ca2))

        def fresh_cert():
            with socket.create_connection((host, int(port)), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname="localhost") as t:
                    return x509.load_der_x509_certificate(t.getpeercert(binary_form=True))

        def expiry():
            r = requests.get(f"{node.base}/metrics", verify=False, timeout=5)
            return samples(r.text, "idres_tls_certificate_expiry_timestamp_seconds")

        requests.packages.urllib3.disable_warnings()
        before = fresh_cert()
        assert before.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
        assert list(expiry().values()) == [before.not_valid_after_utc.timestamp()], expiry()

        old = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
        old.request("GET", "/healthz")
        r = old.getresponse()
        assert r.status == 200 and r.read().strip() == b"ok"
        old_sock = old.sock
        assert x509.load_der_x509_certificate(old_sock.getpeercert(binary_form=True)) == before

        new_cert, new_key = server_cert(ca_cert, ca_key, "localhost reloaded", 30)
        write_pair(pki["server_cert"], pki["server_key"], new_cert, new_key)
        node.proc.send_signal(signal.SIGHUP)
        seen = wait_for("a new connection with the new certificate",
                        lambda: (lambda c: c if c == new_cert else None)(fresh_cert()), 5)
        assert seen.serial_number == new_cert.serial_number != before.serial_number

        # The open connection keeps its certificate and goes on working.
        old.request("GET", "/healthz")
        r = old.getresponse()
        assert r.status == 200 and r.read().strip() == b"ok"
        assert old.sock is old_sock
        assert x509.load_der_x509_certificate(old.sock.getpeercert(binary_form=True)) == before
        old.close()

        wait_for("the expiry metric of the new certificate", lambda: list(expiry().values()) == [
            new_cert.not_valid_after_utc.timestamp()], 5)
        labels = next(iter(expiry()))
        assert 'face="http"' in labels and "localhost reloaded" in labels, labels

        # A broken certificate is not taken: the last good one stays in force.
        with open(pki["server_cert"], "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        node.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert fresh_cert() == new_cert
            time.sleep(0.2)
        assert node.proc.poll() is None, "the node died on a broken certificate"
        r = requests.get(f"{node.base}/healthz", verify=False, timeout=5)
        assert r.status_code == 200
    finally:
        node.stop()

"""Checks of the deployment files in deploy/.

- Kubernetes (deploy/k8s): both overlays render with `kubectl kustomize`
  (and with every kubectl in $IDRES_EXTRA_KUBECTL, a colon-separated list,
  e.g. the kubectl 1.20 of Debian's kubernetes-client with kustomize
  v2.0.3), validate against the Kubernetes 1.30 schemas with
  kubernetes-validate (strict), and hang together: probes, ports,
  selectors, volumes, the configuration they mount.
- systemd (deploy/idres.service): `systemd-analyze verify` accepts the unit
  and `systemd-analyze security --offline` rates it well.
- Prometheus (deploy/prometheus): `promtool check rules`, `promtool test
  rules`, `promtool check config`.
- Grafana (deploy/grafana/idres.json) and the alerts use only the metrics
  the node documents (METRICS below), and their PromQL parses.
- The Dockerfile: multi-stage, numeric non-root USER, exec-form
  ENTRYPOINT.
- The configurations (deploy/idres.toml, deploy/k8s/base/idres.toml) are
  accepted by the node itself.

A missing tool is a failure, never a skip.
"""

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request

import pytest

from idres_http_node import IDRES, _binary_ready, _retrying, run_idres

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
K8S = os.path.join(DEPLOY, "k8s")
PROM = os.path.join(DEPLOY, "prometheus")
OVERLAYS = ("top", "mirror")
#: the Kubernetes version the manifests are validated against
K8S_VERSION = "1.30.0"
TIMEOUT = 120

#: The metrics the node documents at /metrics: name -> (type, labels).
METRICS = {
    "idres_requests_total": ("counter", {"face", "op", "code"}),
    "idres_request_duration_seconds": ("histogram", {"face", "op"}),
    "idres_rate_limited_total": ("counter", {"face"}),
    "idres_dropped_total": ("counter", {"face", "reason"}),
    "idres_writer_queue_depth": ("gauge", set()),
    "idres_writer_group_mutations": ("histogram", set()),
    "idres_writer_commit_duration_seconds": ("histogram", set()),
    "idres_writer_flush_duration_seconds": ("histogram", set()),
    "idres_writer_failed": ("gauge", set()),
    "idres_read_cache_hits_total": ("counter", set()),
    "idres_read_cache_misses_total": ("counter", set()),
    "idres_store_size_bytes": ("gauge", set()),
    "idres_store_records": ("gauge", set()),
    "idres_changelog_head_sequence": ("gauge", set()),
    "idres_changelog_trim_sequence": ("gauge", set()),
    "idres_data_filesystem_avail_bytes": ("gauge", set()),
    "idres_data_filesystem_size_bytes": ("gauge", set()),
    "idres_follower_applied_sequence": ("gauge", {"upstream"}),
    "idres_follower_lag_changes": ("gauge", {"upstream"}),
    "idres_follower_lag_seconds": ("gauge", {"upstream"}),
    "idres_escrow_backlog": ("gauge", {"upstream"}),
    "idres_escrow_dead_letters_total": ("counter", {"upstream"}),
    "idres_tls_certificate_expiry_timestamp_seconds": ("gauge", {"face", "subject"}),
    "idres_ready": ("gauge", set()),
    "idres_build_info": ("gauge", {"version", "role"}),
}
FACES = {"handle_udp", "handle_tcp", "handle_http", "dns_udp", "dns_tcp", "dns_quic", "http", "grpc"}
#: labels Prometheus adds to every series (target labels)
TARGET_LABELS = {"job", "instance", "namespace", "pod", "role", "app_kubernetes_io_component"}

#: the node's ports: (containerPort, protocol)
PORTS = {
    (2641, "UDP"), (2641, "TCP"),  # Handle
    (8000, "TCP"),                 # HTTP
    (8053, "UDP"), (8053, "TCP"),  # DNS
    (8853, "UDP"),                 # DNS over QUIC
    (50051, "TCP"),                # gRPC
}


# --- helpers ----------------------------------------------------------------

def need(tool):
    """The path of a tool; fails the test when it is missing."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (see tests/run-all.sh)")
    return path


def run(cmd, cwd=ROOT, check=True):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert r.returncode == 0, f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r


def yaml_module():
    try:
        import yaml
    except ImportError:
        pytest.fail("PyYAML is not installed (it comes with kubernetes-validate)")
    return yaml


def kubectls():
    """kubectl on PATH, then those named in $IDRES_EXTRA_KUBECTL."""
    found = [need("kubectl")]
    for p in filter(None, os.environ.get("IDRES_EXTRA_KUBECTL", "").split(":")):
        if not os.access(p, os.X_OK):
            pytest.fail(f"IDRES_EXTRA_KUBECTL names {p}, which is not executable")
        found.append(p)
    return found


_rendered = {}


def render_text(overlay, kubectl=None):
    kubectl = kubectl or need("kubectl")
    key = (overlay, kubectl)
    if key not in _rendered:
        r = run([kubectl, "kustomize", os.path.join(K8S, "overlays", overlay)])
        _rendered[key] = r.stdout
    return _rendered[key]


def render(overlay):
    """The overlay's resources, rendered by the kubectl on PATH."""
    return [d for d in yaml_module().safe_load_all(render_text(overlay)) if d]


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def all_of(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def container(workload):
    cs = pod_spec(workload)["containers"]
    assert len(cs) == 1, cs
    return cs[0]


def port_number(c, port):
    """A probe's or Service's port, resolved through the container's named ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port in named, f"port {port!r} is not a named port of the container: {named}"
    return named[port]


def workload_of(docs, overlay):
    return one(docs, "StatefulSet") if overlay == "top" else one(docs, "Deployment")


# --- Kubernetes -----------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_with_every_kubectl(overlay):
    shapes = {}
    for kubectl in kubectls():
        docs = [d for d in yaml_module().safe_load_all(render_text(overlay, kubectl)) if d]
        # names differ only in the ConfigMap's hash suffix between kustomize versions
        shapes[kubectl] = sorted((d["apiVersion"], d["kind"], re.sub(r"-[a-z0-9]{10}$", "", d["metadata"]["name"])
                                  if d["kind"] == "ConfigMap" else d["metadata"]["name"]) for d in docs)
    first = next(iter(shapes.values()))
    for kubectl, shape in shapes.items():
        assert shape == first, f"{kubectl} renders other resources:\n{shape}\n{first}"
    kinds = {k for _, k, _ in first}
    want = {"ConfigMap", "Service", "NetworkPolicy", "ServiceMonitor", "ServiceAccount", "PodDisruptionBudget"}
    want |= {"StatefulSet"} if overlay == "top" else {"Deployment", "HorizontalPodAutoscaler"}
    assert want <= kinds, f"missing kinds: {want - kinds}"


def test_old_single_manifest_is_gone():
    assert not os.path.exists(os.path.join(K8S, "idres.yaml"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_against_kubernetes_schemas(overlay, tmp_path):
    try:
        import kubernetes_validate  # noqa: F401
    except ImportError:
        pytest.fail("kubernetes-validate is not installed (pip install kubernetes-validate)")
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(render_text(overlay))
    r = run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, str(path)],
            check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    passed = re.findall(r"^INFO .* passed for resource (\S+) against version", out, re.M)
    warned = re.findall(r"^WARN .*", out, re.M)
    failed = re.findall(r"^(?:ERROR|FATAL) .*", out, re.M)
    assert not failed, out
    # kubernetes-validate has schemas for built-in kinds only: a custom
    # resource gets a warning (and is checked by test_servicemonitor).
    assert len(warned) == 1 and "kind ServiceMonitor" in warned[0], out
    docs = render(overlay)
    assert len(passed) == len(docs) - 1, out


def test_servicemonitor():
    for overlay in OVERLAYS:
        docs = render(overlay)
        sm = one(docs, "ServiceMonitor")
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        spec = sm["spec"]
        assert set(spec) <= {"selector", "endpoints", "podTargetLabels", "targetLabels", "namespaceSelector",
                             "jobLabel", "sampleLimit"}, spec
        selected = [s for s in all_of(docs, "Service") if matches(spec["selector"]["matchLabels"],
                                                                  s["metadata"].get("labels", {}))]
        assert len(selected) == 1, "the ServiceMonitor must select exactly one Service"
        svc = selected[0]
        assert svc["spec"].get("publishNotReadyAddresses") is True, "not-ready pods must still be scraped"
        assert spec["endpoints"], spec
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "relabelings",
                               "metricRelabelings", "honorLabels"}, ep
            assert ep["path"] == "/metrics"
            assert ep.get("scheme", "http") == "http"
            port = [p for p in svc["spec"]["ports"] if p["name"] == ep["port"]]
            assert port and port[0]["port"] == 8000, (ep, svc["spec"]["ports"])
            for d in ("interval", "scrapeTimeout"):
                assert re.fullmatch(r"\d+[smh]", ep[d]), ep
        w = workload_of(docs, overlay)
        assert matches(svc["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workload(overlay):
    docs = render(overlay)
    w = workload_of(docs, overlay)
    spec, c = pod_spec(w), container(w)
    labels = w["spec"]["template"]["metadata"]["labels"]
    assert matches(w["spec"]["selector"]["matchLabels"], labels)

    # command line
    args = c["args"]
    assert args[:3] == ["serve", "--config", "/etc/idres/idres.toml"], args
    assert "json" == args[args.index("--log-format") + 1], args
    if overlay == "mirror":
        assert args[args.index("--role") + 1] == "mirror", args
        assert args[args.index("--upstream") + 1] == "https://idres-top:50051", args
    else:
        assert "--role" not in args and "--upstream" not in args, args

    # ports
    ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
    assert PORTS <= ports, f"missing ports {PORTS - ports}"
    assert len({p["name"] for p in c["ports"]}) == len(c["ports"])

    # probes
    live, ready = c["livenessProbe"]["httpGet"], c["readinessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and port_number(c, live["port"]) == 8000, live
    assert ready["path"] == "/readyz" and port_number(c, ready["port"]) == 8000, ready
    if "startupProbe" in c:
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"

    # shutdown: SIGTERM stops the node within 5 s
    assert spec["terminationGracePeriodSeconds"] >= 10

    # security
    pod_sc, sc = spec["securityContext"], c["securityContext"]
    assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] > 0 and pod_sc["runAsGroup"] > 0
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
    assert spec["automountServiceAccountToken"] is False
    one(docs, "ServiceAccount", spec["serviceAccountName"])

    # resources: the HPA needs a CPU request
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]

    # volumes: the store, the configuration and certificates, /tmp
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert set(mounts) == {"/var/lib/idres", "/etc/idres", "/tmp"}, mounts
    assert mounts["/etc/idres"].get("readOnly") is True
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    data = mounts["/var/lib/idres"]["name"]
    if overlay == "top":
        claims = {t["metadata"]["name"]: t for t in w["spec"]["volumeClaimTemplates"]}
        assert data in claims and data not in volumes, "the top's store is on a PersistentVolumeClaim"
        claim = claims[data]["spec"]
        assert claim["accessModes"] == ["ReadWriteOnce"] and claim["resources"]["requests"]["storage"]
    else:
        assert "volumeClaimTemplates" not in w["spec"]
        assert "emptyDir" in volumes[data], "a mirror keeps its copy on an emptyDir"
    for m in mounts.values():
        assert m["name"] in volumes or m["mountPath"] == "/var/lib/idres"
    sources = volumes[mounts["/etc/idres"]["name"]]["projected"]["sources"]
    files = {}
    for s in sources:
        (kind, src), = s.items()
        for item in src["items"]:
            files["/etc/idres/" + item["path"]] = (kind, src["name"], item["key"])
    # the ConfigMap it mounts is the generated one (with its hash suffix)
    kind, name, key = files["/etc/idres/idres.toml"]
    assert kind == "configMap"
    cm = one(docs, "ConfigMap", name)
    assert key in cm["data"]

    # every file the configuration names is mounted
    config = tomllib.loads(cm["data"][key])
    assert config["store"]["data_dir"] == "/var/lib/idres"
    named = [v for section in config.values() for k, v in section.items()
             if isinstance(v, str) and v.startswith("/etc/idres/")]
    assert named
    for path in named:
        if "/upstream/" in path and overlay == "top":
            continue  # read by mirrors only
        assert path in files, f"{path} (in idres.toml) is not mounted: {sorted(files)}"

    # the configuration listens on the container's ports
    listens = {config["handle"]["listen"]: ("UDP", "TCP"), config["dns"]["listen"]: ("UDP", "TCP"),
               config["dns"]["doq_listen"]: ("UDP",), config["http"]["listen"]: ("TCP",),
               config["grpc"]["listen"]: ("TCP",)}
    for addr, protos in listens.items():
        host, port = addr.rsplit(":", 1)
        assert host == "0.0.0.0", addr
        for proto in protos:
            assert (int(port), proto) in ports, (addr, proto)


def test_top_statefulset():
    docs = render("top")
    sts = one(docs, "StatefulSet")
    assert sts["spec"]["replicas"] == 1, "the store has a single writer"
    assert sts["spec"]["volumeClaimTemplates"]
    governing = one(docs, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert matches(governing["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
    assert {(p["port"], p["protocol"]) for p in governing["spec"]["ports"]} >= {(50051, "TCP"), (2641, "UDP"),
                                                                                 (2641, "TCP")}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services(overlay):
    docs = render(overlay)
    w = workload_of(docs, overlay)
    c = container(w)
    labels = w["spec"]["template"]["metadata"]["labels"]
    services = all_of(docs, "Service")
    served = set()
    for svc in services:
        ports = svc["spec"]["ports"]
        protos = {p.get("protocol", "TCP") for p in ports}
        if svc["spec"].get("type") == "LoadBalancer":
            assert len(protos) == 1, f"{svc['metadata']['name']}: one protocol per load balancer"
            assert svc["spec"].get("externalTrafficPolicy") == "Local", "keep client addresses"
        if not matches(svc["spec"]["selector"], labels):
            continue
        for p in ports:
            served.add((port_number(c, p["targetPort"]), p.get("protocol", "TCP")))
    # every client-facing port reaches the pods over UDP and over TCP
    for port in (2641, 8053):
        assert {(port, "UDP"), (port, "TCP")} <= served, served
    assert (8853, "UDP") in served and (8000, "TCP") in served


def test_read_services_are_shared_by_top_and_mirrors():
    top, mirror = render("top"), render("mirror")
    top_pods = one(top, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    mirror_pods = one(mirror, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for name in ("idres-udp", "idres-tcp"):
        a, b = one(top, "Service", name), one(mirror, "Service", name)
        assert a == b, f"{name} differs between the overlays"
        assert matches(a["spec"]["selector"], top_pods) and matches(a["spec"]["selector"], mirror_pods)
        assert a["spec"]["type"] == "LoadBalancer"
    assert {(p["port"], p["protocol"]) for p in one(top, "Service", "idres-udp")["spec"]["ports"]} == \
        {(2641, "UDP"), (53, "UDP"), (853, "UDP")}
    assert {(p["port"], p["protocol"]) for p in one(top, "Service", "idres-tcp")["spec"]["ports"]} >= \
        {(2641, "TCP"), (53, "TCP")}
    # the objects both overlays carry are the same, so applying both agrees
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    shared = {key(d) for d in top} & {key(d) for d in mirror}
    assert {("Service", "idres-udp"), ("NetworkPolicy", "idres"), ("ServiceMonitor", "idres")} <= shared
    for k in shared:
        assert [d for d in top if key(d) == k] == [d for d in mirror if key(d) == k], k
    # mirrors follow the top through the top's Service
    assert not ({key(d) for d in top if d["kind"] in ("StatefulSet", "Deployment")}
                & {key(d) for d in mirror if d["kind"] in ("StatefulSet", "Deployment")})
    grpc = one(top, "Service", "idres-top")
    assert 50051 in [p["port"] for p in grpc["spec"]["ports"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdb(overlay):
    docs = render(overlay)
    w = workload_of(docs, overlay)
    pdbs = all_of(docs, "PodDisruptionBudget")
    assert len(pdbs) == 1
    pdb = pdbs[0]
    assert pdb["apiVersion"] == "policy/v1"
    assert matches(pdb["spec"]["selector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
    assert ("minAvailable" in pdb["spec"]) != ("maxUnavailable" in pdb["spec"])
    # the other overlay's pods are not covered by this budget
    other = workload_of(render("mirror" if overlay == "top" else "top"), "mirror" if overlay == "top" else "top")
    assert not matches(pdb["spec"]["selector"]["matchLabels"], other["spec"]["template"]["metadata"]["labels"])


def test_hpa_scales_the_mirrors():
    docs = render("mirror")
    dep = one(docs, "Deployment")
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
    assert cpu and container(dep)["resources"]["requests"]["cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy(overlay):
    docs = render(overlay)
    w = workload_of(docs, overlay)
    c = container(w)
    np_ = one(docs, "NetworkPolicy")
    assert matches(np_["spec"]["podSelector"]["matchLabels"], w["spec"]["template"]["metadata"]["labels"])
    assert set(np_["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    allowed = {(port_number(c, p["port"]), p.get("protocol", "TCP"))
               for rule in np_["spec"]["ingress"] for p in rule["ports"]}
    assert PORTS <= allowed, f"not allowed in: {PORTS - allowed}"
    egress = np_["spec"]["egress"]
    assert any({"port": 53, "protocol": "UDP"} in r.get("ports", []) for r in egress), "cluster DNS"
    top_pods = one(render("top"), "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert any({"port": 50051, "protocol": "TCP"} in r["ports"]
               and any(matches(t.get("podSelector", {}).get("matchLabels", {"x": "y"}), top_pods) for t in r["to"])
               for r in egress), "mirrors must reach the top's gRPC port"


# --- systemd ----------------------------------------------------------------

def unit_directives(text):
    out = {}
    section = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, v = line.split("=", 1)
        out.setdefault((section, k.strip()), []).append(v.strip())
    return out


def test_systemd_unit(tmp_path):
    tool = need("systemd-analyze")
    src = open(os.path.join(DEPLOY, "idres.service")).read()
    d = unit_directives(src)
    svc = lambda k: d.get(("Service", k), [None])[-1]  # noqa: E731
    assert svc("ExecStart").split()[:4] == ["/usr/local/bin/idres", "serve", "--config", "/etc/idres/idres.toml"]
    assert svc("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert svc("DynamicUser") == "yes" or (svc("User") and svc("User") != "root")
    want = {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes", "PrivateDevices": "yes",
            "NoNewPrivileges": "yes", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
            "RestrictNamespaces": "yes", "StateDirectory": "idres",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX"}
    for k, v in want.items():
        assert svc(k) == v, f"{k}={svc(k)}, want {v}"
    assert "@system-service" in d[("Service", "SystemCallFilter")]
    assert int(svc("LimitNOFILE")) >= 65536
    assert int(svc("TimeoutStopSec").rstrip("s")) >= 5
    # default ports are unprivileged: no capability at all
    assert svc("CapabilityBoundingSet") == "" and svc("AmbientCapabilities") == ""

    # systemd-analyze verify checks that the executable exists: point the
    # copy at the built binary
    _binary_ready()
    unit = tmp_path / "idres.service"
    unit.write_text(src.replace("/usr/local/bin/idres", os.path.abspath(IDRES)))
    r = run([tool, "verify", str(unit)], check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    # unknown keys and bad values are only warnings: there must be none
    assert "idres.service" not in out, out
    # exposure: 0 (locked down) .. 10 (unprotected); --threshold is in tenths
    r = run([tool, "security", "--offline=yes", "--threshold=20", str(unit)], check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


# --- Prometheus -------------------------------------------------------------

def test_promtool_check_rules():
    run([need("promtool"), "check", "rules", os.path.join(PROM, "alerts.yml")])


def test_promtool_test_rules():
    r = run([need("promtool"), "test", "rules", "alerts.test.yml"], cwd=PROM)
    assert "SUCCESS" in r.stdout


def test_promtool_check_config():
    run([need("promtool"), "check", "config", os.path.join(PROM, "prometheus.yml")])


ALERTS = {"IdresDown", "IdresNotReady", "IdresReplicationLag", "IdresCertificateExpiry", "IdresWriterFailed",
          "IdresDiskFilling"}


def alert_rules():
    doc = yaml_module().safe_load(open(os.path.join(PROM, "alerts.yml")))
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alerts_are_tested_firing_and_silent():
    rules = alert_rules()
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r
        assert r["annotations"]["summary"] and r["annotations"]["description"], r
    tests = yaml_module().safe_load(open(os.path.join(PROM, "alerts.test.yml")))
    assert tests["rule_files"] == ["alerts.yml"]
    firing, silent = set(), set()
    for t in tests["tests"]:
        for a in t["alert_rule_test"]:
            (firing if a["exp_alerts"] else silent).add(a["alertname"])
    assert firing == ALERTS and silent == ALERTS, (firing, silent)


IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# PromQL words that look like metric names
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right",
    "and", "or", "unless", "offset", "bool", "rate", "irate", "increase", "delta", "histogram_quantile",
    "predict_linear", "time", "le", "topk", "bottomk", "abs", "clamp_min", "clamp_max", "label_replace",
    "humanize", "quantile", "absent", "vector", "scalar", "deriv", "changes", "resets",
}


def metric_names(expr):
    """(metric, labels matched or grouped on) pairs used in a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings
    expr = re.sub(r"\[[^\]]*\]", "", expr)                    # ranges
    used = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?", expr):
        name, matchers = m.group(1), m.group(2) or ""
        end = m.end()
        if name in PROMQL_WORDS or re.fullmatch(r"\d\w*", name):
            continue
        if expr[end:end + 1] == "(" and not matchers:
            continue  # a function
        # label names inside by (...) / without (...) / on (...)
        before = expr[:m.start()].rstrip()
        if re.search(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*$", before):
            continue
        labels = set(IDENT.findall(re.sub(r"=~?|!=|!~|\"\"|,", " ", matchers)))
        used.append((name, labels))
    return used


def grouping_labels(expr):
    return {lbl for g in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr) for lbl in IDENT.findall(g)}


def check_documented(expr, where):
    """Every metric an expression uses is documented, with its labels."""
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    labels = set(TARGET_LABELS)
    for name, matched in names:
        if name == "up":
            continue
        base = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in METRICS:
                base = name[: -len(suffix)]
                assert METRICS[base][0] == "histogram", f"{where}: {name}: {base} is not a histogram"
        assert base in METRICS, f"{where}: {name} is not a documented metric"
        kind, own = METRICS[base]
        if kind == "histogram":
            assert name != base, f"{where}: a histogram is used through _bucket/_sum/_count"
            own = own | ({"le"} if name.endswith("_bucket") else set())
        if kind == "counter":
            assert re.search(rf"\b(rate|irate|increase)\(\s*{name}\b", expr), f"{where}: counter {name} without rate()"
        assert matched <= own | TARGET_LABELS, f"{where}: {name} has no label {matched - own - TARGET_LABELS}"
        labels |= own
    assert grouping_labels(expr) <= labels, f"{where}: grouping on unknown labels in {expr!r}"
    return {n for n, _ in names}


def test_alerts_use_documented_metrics():
    for r in alert_rules():
        check_documented(r["expr"], r["alert"])


def test_metric_name_conventions():
    for name, (kind, labels) in METRICS.items():
        assert name.startswith("idres_")
        assert name.endswith("_total") == (kind == "counter"), name
    assert "idres_requests_total" in METRICS and FACES


def dashboard():
    with open(os.path.join(DEPLOY, "grafana", "idres.json")) as f:
        return json.load(f)


def panels(d):
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])


def test_grafana_dashboard():
    d = dashboard()
    assert 36 <= d["schemaVersion"] <= 41, d["schemaVersion"]
    assert d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids))
    used = set()
    exprs = []
    for p in panels(d):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            used |= check_documented(t["expr"], p["title"])
            exprs.append(t["expr"])
    # the panels the operations guide describes
    for name in ("idres_requests_total", "idres_request_duration_seconds_bucket", "idres_writer_queue_depth",
                 "idres_writer_commit_duration_seconds_bucket", "idres_read_cache_hits_total",
                 "idres_read_cache_misses_total", "idres_store_records", "idres_store_size_bytes",
                 "idres_changelog_head_sequence", "idres_follower_lag_seconds", "idres_escrow_backlog",
                 "idres_escrow_dead_letters_total", "idres_tls_certificate_expiry_timestamp_seconds",
                 "idres_ready"):
        assert name in used, f"no panel shows {name}"
    quantiles = {float(q) for e in exprs for q in re.findall(r"histogram_quantile\(([\d.]+)", e)}
    assert {0.5, 0.99} <= quantiles


def test_dashboard_promql_parses(tmp_path):
    """promtool parses the dashboard's queries (as recording rules), Grafana's
    variables replaced by what Grafana would send."""
    promtool = need("promtool")
    rules = []
    for p in panels(dashboard()):
        for t in p.get("targets", []):
            expr = (t["expr"].replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*"))
            assert "$" not in expr, expr
            rules.append({"record": f"dashboard:panel{p['id']}:{t['refId'].lower()}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    run([promtool, "check", "rules", str(path)])


# --- Dockerfile -------------------------------------------------------------

def dockerfile_instructions():
    text = open(os.path.join(DEPLOY, "Dockerfile")).read()
    text = re.sub(r"\\\n", " ", text)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile():
    ins = dockerfile_instructions()
    froms = [i for i, (op, _) in enumerate(ins) if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    stages = [re.split(r"\s+as\s+", rest, flags=re.I) for op, rest in ins if op == "FROM"]
    names = {s[1] for s in stages if len(s) == 2}
    final = ins[froms[-1]:]
    ops = [op for op, _ in final]
    # the final stage runs nothing: it needs no shell
    assert "RUN" not in ops, "the final stage has no shell to RUN in"
    for op, rest in final:
        if op == "COPY" and "--from=" in rest:
            assert re.search(r"--from=(\S+)", rest).group(1) in names, rest
    users = [rest for op, rest in final if op == "USER"]
    assert users, "the final stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) > 0, f"USER {users[-1]}: numeric and not root"
    assert not group or (group.isdigit() and int(group) > 0)
    for op in ("ENTRYPOINT", "CMD"):
        rest = [r for o, r in final if o == op][-1]
        value = json.loads(rest)  # exec form: a JSON array
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"{op} {rest}"
    entry = json.loads([r for o, r in final if o == "ENTRYPOINT"][-1])
    assert entry == ["/usr/local/bin/idres"]
    cmd = json.loads([r for o, r in final if o == "CMD"][-1])
    assert cmd[:3] == ["serve", "--config", "/etc/idres/idres.toml"]
    assert "HEALTHCHECK" not in ops or all(r.startswith("NONE") or r.split("CMD", 1)[1].strip().startswith("[")
                                           for o, r in final if o == "HEALTHCHECK")
    exposed = {tuple(p.split("/")) for o, r in final if o == "EXPOSE" for p in r.split()}
    assert {(str(port), proto.lower()) for port, proto in PORTS} <= exposed, exposed
    assert ("STOPSIGNAL", "SIGTERM") in final
    assert any(o == "VOLUME" and "/var/lib/idres" in r for o, r in final)


# --- the configurations, with the node itself --------------------------------

def serve(args, want, timeout=30):
    """Starts `idres serve ARGS`, waits for the faces in `want`; returns
    (process, {face: address})."""
    proc = _retrying(lambda: subprocess.Popen([IDRES, "serve", *args], stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True))
    lines, errors = queue.Queue(), []
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()
    faces = {}
    deadline = time.monotonic() + timeout
    while not want <= faces.keys() and time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        m = re.match(r"listening (\w+) (\S+)", line)
        if m:
            faces[m.group(1)] = m.group(2)
    if not want <= faces.keys():
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError(f"idres serve {' '.join(args)}: faces {faces}, want {want}, "
                             f"exit {proc.returncode}\n{''.join(errors)[-3000:]}")
    return proc, faces


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        raise AssertionError("the node did not stop within 10 s of SIGTERM")


LOOPBACK = ["--handle-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"]


def test_image_configuration_is_accepted(tmp_path):
    """deploy/idres.toml (the image's) starts a node with HTTP and DNS."""
    proc, faces = serve(["--config", os.path.join(DEPLOY, "idres.toml"), "--data-dir", str(tmp_path / "data"),
                         *LOOPBACK], {"handle", "http", "dns"})
    try:
        with urllib.request.urlopen(f"http://{faces['http']}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        stop(proc)


def test_kubernetes_configuration_is_accepted(tmp_path):
    """deploy/k8s/base/idres.toml starts a node with every face, its
    certificates where the pods mount them (moved under tmp_path)."""
    etc = tmp_path / "etc"
    pki = tmp_path / "pki"
    run_idres("cert", "ca", "--dir", pki)
    run_idres("cert", "issue", "--dir", pki, "--kind", "server", "--name", "top", "--san", "localhost",
              "--san", "127.0.0.1")
    run_idres("cert", "issue", "--dir", pki, "--kind", "node", "--name", "mirror")
    for sub, name in (("tls", "top"), ("upstream", "mirror")):
        (etc / sub).mkdir(parents=True)
        shutil.copy(pki / f"{name}.pem", etc / sub / "tls.crt")
        shutil.copy(pki / f"{name}-key.pem", etc / sub / "tls.key")
        shutil.copy(pki / "ca.pem", etc / sub / "ca.crt")
    text = open(os.path.join(K8S, "base", "idres.toml")).read().replace("/etc/idres/", f"{etc}/")
    (etc / "idres.toml").write_text(text)
    proc, faces = serve(["--config", str(etc / "idres.toml"), "--data-dir", str(tmp_path / "data"), *LOOPBACK,
                         "--doq-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0"],
                        {"handle", "http", "dns", "doq", "grpc"})
    try:
        with urllib.request.urlopen(f"http://{faces['http']}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        stop(proc)

"""Network partitions between nodes, made with Linux network namespaces.

A top node, a filed secondary node and a mirror each run in a network
namespace of their own (`ip netns exec NS idres serve ...`), each listening
only on its own address in 10.231.R.0/24 (R random per run). Each has a
veth to a bridge in a fourth, hub namespace: the "cluster" network, the
only path between the nodes. The test process reaches every node over a
separate point-to-point veth from the root namespace (a /32 route to the
node's address), which is never cut, so that clients keep writing to the
secondary while it is cut off from the top; the root namespace does not
forward (ip_forward stays as it is, 0 on this machine), so it is no path
between the nodes.

Partitions are made by cutting links, not by dropping packets: the
kernel here has no sch_netem (`tc qdisc add ... netem` fails with
"Specified qdisc kind is unknown"), so there is no netem loss or delay.
A cut is `ip link set PORT down` of the secondary's and the mirror's ports
on the hub's bridge (a switch port going dark: the node's own interface
stays up and keeps its address, its peers become unreachable), healed by
`ip link set PORT up`. That each cut really separated the nodes, and each
heal joined them again, is probed with TCP connections from inside the
namespaces.

While an operator writes continuously at the top (distinct handles under a
prefix the top keeps itself, which the mirror follows, and prefix
allocations to another node, i.e. the prefix table 0.NA, which the
secondary follows too) and a local operator writes continuously at the
secondary (distinct handles under its own prefix, which it escrows to the
top), the secondary's and the mirror's links are cut and healed, three
rounds: 4 s, 45 s, 4 s. A cut of a few seconds is bridged by TCP
retransmission (the connections only stall); the 45 s one outlasts the
nodes' HTTP/2 keepalive, so their connections to the top fail, and the test
requires that both followers then follow the top on a new stream (escrow
re-sends from its cursor). The secondary follows only 0.NA and its own
prefixes (docs/grpc.md), so its copy of what the top writes is the prefix
table; the top's own prefix is compared between top and mirror. Afterwards, within a bounded time, the mirror's digest of the whole
store equals the top's, the top's digest of the secondary's prefix equals
the secondary's, and the secondary's prefix table equals the top's; and the
top's change log (read through the SyncService stream one change per
batch, so that nothing is folded together) holds exactly one change per
write made at the secondary, and one per write made at the top: nothing
was applied twice, nothing lost.

Namespaces, links and routes have random names and are removed at the end,
whatever happens; every node is stopped. Every wait is bounded.
"""

import collections
import ipaddress
import json
import os
import re
import secrets
import subprocess
import threading
import time
import uuid

import grpc
import pytest

from idres_http_node import IDRES, PREFIX, _binary_ready, stop_process
from test_backup import digest, status, url_value
from test_grpc import CREDIT_CODE, pb  # noqa: F401  (fixture: client generated from proto/)

#: bound of each wait for a node to do something
WAIT = 30
#: bound of the wait for every node to agree after the last heal
CONVERGE = 60
#: seconds each cut lasts, one round per cut. A cut of a few seconds is
#: bridged by TCP retransmission: the nodes' connections to the top live on
#: and only stall. The long one outlasts the nodes' HTTP/2 keepalive (a ping
#: after 20 s without data, 20 s for its answer: crates/idres-grpc/src/tls.rs),
#: so their connections fail and are made again after the heal, and escrow
#: and sync resume from their cursors.
CUTS = (4, 45, 4)
#: a cut this long must have made the secondary and the mirror reconnect
KEEPALIVE_CUT = 41
#: seconds of connected writing before each cut
HEALED_SECONDS = 3
#: operations per RegisterBatch of the writers, and pause between batches
BATCH = 10
PAUSE = 0.05
#: the prefix the top keeps itself (written by its operator, not allocated)
TOP_PREFIX = "88.200"
#: prefixes allocated to a second node during the test: writes to 0.NA
OTHER_PREFIX = "88.300"
GRPC_PORT = 2643
HANDLE_PORT = 2641
LOG_FILTER = "warn,idres::serve=info,idres_grpc::replica=info,idres_grpc::escrow=info"


def sh(*cmd, ns=None, check=True, timeout=20):
    """Runs a command (in namespace `ns`), returns the CompletedProcess."""
    if ns:
        cmd = ("ip", "netns", "exec", ns, *cmd)
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{' '.join(map(str, cmd))}: exit code {r.returncode}\n{r.stderr}"
    return r


def wait_for(what, check, timeout=WAIT, every=0.2):
    """Polls check() until it returns something true; returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except grpc.RpcError as e:
            last = f"{e.code()}: {e.details()}"
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def used_networks():
    out = sh("ip", "-4", "route", "show", "table", "all").stdout + sh("ip", "-4", "addr").stdout
    return [ipaddress.ip_network(m, strict=False) for m in re.findall(r"\b(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", out)]


class Net:
    """Namespaces T, S, M (the nodes) and HUB (a bridge), and access links
    from the root namespace. Node addresses are 10.231.R.1 (top), .2
    (secondary), .3 (mirror)."""

    ROLES = ("t", "s", "m")

    def __init__(self):
        self.sfx = secrets.token_hex(3)
        self.namespaces, self.root_links = [], []
        used = used_networks()
        for _ in range(50):
            r = secrets.randbelow(200) + 20
            cluster = ipaddress.ip_network(f"10.231.{r}.0/24")
            access = ipaddress.ip_network(f"10.231.{r + 1}.0/24")
            if not any(cluster.overlaps(n) or access.overlaps(n) for n in used):
                break
        else:
            raise AssertionError(f"no free 10.231.x.0/24 pair for the test network: {used}")
        self.r = r
        self.ns = {role: f"idres-pt-{self.sfx}-{role}" for role in self.ROLES}
        self.hub = f"idres-pt-{self.sfx}-hub"
        self.ip = {role: f"10.231.{r}.{i + 1}" for i, role in enumerate(self.ROLES)}
        #: the node's port on the hub's bridge, by role
        self.port = {role: f"p{role}{self.sfx}" for role in self.ROLES}

    def up(self):
        for ns in (self.hub, *self.ns.values()):
            sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")
        for k, role in enumerate(self.ROLES):
            ns, ip = self.ns[role], self.ip[role]
            node_if, port = f"n{role}{self.sfx}", self.port[role]
            sh("ip", "link", "add", node_if, "netns", ns, "type", "veth", "peer", "name", port, "netns", self.hub)
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", node_if)
            sh("ip", "-n", ns, "link", "set", node_if, "up")
            sh("ip", "-n", self.hub, "link", "set", port, "master", "br0", "up")
            # the test's own way in, never cut
            root_if, far_if = f"a{role}{self.sfx}", f"b{role}{self.sfx}"
            near, far = f"10.231.{self.r + 1}.{4 * k + 1}", f"10.231.{self.r + 1}.{4 * k + 2}"
            sh("ip", "link", "add", root_if, "type", "veth", "peer", "name", far_if, "netns", ns)
            self.root_links.append(root_if)
            sh("ip", "addr", "add", f"{near}/30", "dev", root_if)
            sh("ip", "link", "set", root_if, "up")
            sh("ip", "-n", ns, "addr", "add", f"{far}/30", "dev", far_if)
            sh("ip", "-n", ns, "link", "set", far_if, "up")
            sh("ip", "route", "add", f"{ip}/32", "via", far, "dev", root_if)

    def down(self):
        problems = []
        for link in self.root_links:
            r = sh("ip", "link", "del", link, check=False)
            if r.returncode:
                problems.append(r.stderr.strip())
        for ns in reversed(self.namespaces):
            r = sh("ip", "netns", "del", ns, check=False)
            if r.returncode:
                problems.append(r.stderr.strip())
        left = [ns for ns in sh("ip", "netns", "list").stdout.split() if self.sfx in ns]
        left += [line for line in sh("ip", "-o", "link").stdout.splitlines() if self.sfx in line]
        assert not left and not problems, f"test network not removed: {left} {problems}"

    def cut(self, *roles):
        for role in roles:
            sh("ip", "-n", self.hub, "link", "set", self.port[role], "down")

    def heal(self, *roles):
        for role in roles:
            sh("ip", "-n", self.hub, "link", "set", self.port[role], "up")

    def reaches(self, src, dst, port=GRPC_PORT, timeout=1.0):
        """Whether a TCP connection from namespace `src` to node `dst` opens."""
        r = sh("python3", "-c", "import socket, sys\n"
               "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()",
               self.ip[dst], port, timeout, ns=self.ns[src], check=False, timeout=timeout + 10)
        return r.returncode == 0

    def listening(self, role):
        """(proto, local address, port) of every bound TCP listener and UDP
        socket in the namespace, from /proc/net (of that namespace)."""
        out = []
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            text = sh("cat", f"/proc/net/{proto}", ns=self.ns[role]).stdout
            for line in text.splitlines()[1:]:
                f = line.split()
                if proto.startswith("tcp") and f[3] != "0A":  # LISTEN
                    continue
                addr, port = f[1].split(":")
                if len(addr) == 8:
                    ip = str(ipaddress.IPv4Address(bytes.fromhex(addr)[::-1]))
                else:
                    words = [bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, 32, 8)]
                    ip = str(ipaddress.IPv6Address(b"".join(words)))
                out.append((proto, ip, int(port, 16)))
        return out


@pytest.fixture
def net():
    if os.geteuid() != 0:
        raise AssertionError("this test makes network namespaces: run it as root")
    n = Net()
    try:
        n.up()
        yield n
    finally:
        n.down()


class NsNode:
    """`idres serve` inside a namespace, on its address there; JSON log in a file."""

    def __init__(self, net, role, directory, args, config):
        os.makedirs(directory, exist_ok=True)
        self.role, self.ip = role, net.ip[role]
        self.dir = str(directory)
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "serve.log")
        path = os.path.join(self.dir, "idres.toml")
        with open(path, "w") as f:
            f.write(config)
        cmd = ["ip", "netns", "exec", net.ns[role], IDRES, "--log-format", "json", "serve",
               "--data-dir", self.data, "--config", path,
               "--handle-listen", f"{self.ip}:{HANDLE_PORT}", "--grpc-listen", f"{self.ip}:{GRPC_PORT}", *args]
        env = {**os.environ, "IDRES_LOG": LOG_FILTER}
        for attempt in range(2):
            _binary_ready()
            self.log_file = open(self.log, "ab")
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log_file, text=True, env=env)
            self.faces = {}
            found = threading.Event()

            def read(proc=self.proc, faces=self.faces, found=found):
                for line in proc.stdout:
                    m = re.match(r"listening (\w+) (\S+)", line)
                    if m:
                        faces[m.group(1)] = m.group(2)
                        if {"grpc", "handle"} <= faces.keys():
                            found.set()
            threading.Thread(target=read, daemon=True).start()
            deadline = time.monotonic() + WAIT
            while not found.wait(0.2):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    break
            if found.is_set():
                return
            died = self.proc.poll() is not None
            self.stop()
            if attempt == 0 and died:
                time.sleep(30)  # the binary may be being rebuilt
                continue
            raise AssertionError(f"{role}: idres serve {args} did not announce its faces within {WAIT}s "
                                 f"(exit code {self.proc.returncode}): {self.faces}\n{self.log_tail()}")

    def log_tail(self, n=30):
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def events(self, message):
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

    def channel(self, pki, who):
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.pem").read_bytes(),
            private_key=(pki / f"{who}-key.pem").read_bytes(),
            certificate_chain=(pki / f"{who}.pem").read_bytes())
        return grpc.secure_channel(f"{self.ip}:{GRPC_PORT}", creds)

    def stop(self):
        stop_process(self.proc)
        self.log_file.close()


@pytest.fixture
def nodes():
    started = []

    def start(*args):
        n = NsNode(*args)
        started.append(n)
        return n
    yield start
    for n in started:
        n.stop()


def make_pki(directory, ips):
    def idres(*args):
        _binary_ready()
        r = subprocess.run([IDRES, *map(str, args)], capture_output=True, text=True, timeout=WAIT)
        assert r.returncode == 0, r.stderr
    idres("cert", "ca", "--dir", directory)
    for role, ip in ips.items():
        idres("cert", "issue", "--dir", directory, "--kind", "server", "--name", f"server-{role}", "--san", ip)
    for name in ("alice", "mirror"):  # CN operator:<name>
        idres("cert", "issue", "--dir", directory, "--kind", "operator", "--name", name)
    for name in ("node-sec", "node-other"):
        idres("cert", "issue", "--dir", directory, "--kind", "node", "--name", name)
    return directory


class Writer(threading.Thread):
    """Writes distinct handles `<prefix>/<tag><n>` in RegisterBatch calls of
    CREATE until stopped; a call that fails is sent again with the same
    operation ids. `acked` holds the handles the node acknowledged."""

    def __init__(self, pb, channel, prefix, tag):
        super().__init__(daemon=True)
        self.pb, self.channel, self.prefix, self.tag = pb, channel, prefix, tag
        self.stop = threading.Event()
        self.acked, self.errors, self.retries = [], [], 0

    def run(self):
        reg = self.pb["registry"]
        stub = self.pb["registry_grpc"].RegistryServiceStub(self.channel)
        run_id, n = uuid.uuid4().hex[:8], 0
        while not self.stop.is_set() and not self.errors:
            handles = [f"{self.prefix}/{self.tag}{i:06}" for i in range(n, n + BATCH)]
            ops = [reg.Operation(operation_id=f"{self.tag}-{run_id}-{i}", kind=reg.OPERATION_KIND_CREATE,
                                 handle=h, values=[url_value(self.pb, f"https://factory.example.cn/{h}")])
                   for i, h in zip(range(n, n + BATCH), handles)]
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    results = stub.RegisterBatch(reg.RegisterBatchRequest(operations=ops), timeout=10).results
                    break
                except grpc.RpcError as e:
                    self.retries += 1
                    if time.monotonic() > deadline:
                        self.errors.append(f"{handles[0]}..: {e.code()}: {e.details()}")
                        return
                    time.sleep(0.5)
            bad = [(r.operation_id, r.code, r.message) for r in results if r.code != 0]
            if bad or len(results) != len(ops):
                self.errors.append(f"{handles[0]}..: {bad or len(results)}")
                return
            self.acked += handles
            n += BATCH
            time.sleep(PAUSE)


class Allocator(threading.Thread):
    """Allocates prefixes OTHER_PREFIX.<k> to a filing, one at a time,
    until stopped: changes of the top's prefix table (0.NA)."""

    def __init__(self, pb, channel, filing_id):
        super().__init__(daemon=True)
        self.pb, self.channel, self.filing_id = pb, channel, filing_id
        self.stop = threading.Event()
        self.allocated, self.errors = [], []

    def run(self):
        stub = self.pb["node_grpc"].NodeServiceStub(self.channel)
        k = 1
        while not self.stop.is_set():
            prefix = f"{OTHER_PREFIX}.{k}"
            try:
                stub.Allocate(self.pb["node"].AllocateRequest(filing_id=self.filing_id, prefix=prefix,
                                                              reason="partition test"), timeout=10)
            except grpc.RpcError as e:
                self.errors.append(f"{prefix}: {e.code()}: {e.details()}")
                return
            self.allocated.append(prefix)
            k += 1
            self.stop.wait(0.3)


def change_log(pb, channel, prefixes):
    """Every change of the log under `prefixes`, from sequence number 1, one
    change per batch (a batch sends several changes of one handle once):
    [(seq, handle, deleted)]; and the last sequence number covered."""
    req = pb["sync"].SubscribeRequest(from_seq=1, prefixes=prefixes, batch_size=1, stop_when_caught_up=True)
    entries, through = [], 0
    for b in pb["sync_grpc"].SyncServiceStub(channel).Subscribe(req, timeout=120):
        assert b.WhichOneof("phase") == "changes", f"the top answered from_seq=1 with a {b.WhichOneof('phase')}"
        assert len(b.entries) <= 1, b
        assert b.changes.through_seq > through, (through, b.changes)
        through = b.changes.through_seq
        entries += [(e.seq, e.handle, e.deleted) for e in b.entries]
    return entries, through


def under(prefix, handle):
    return handle.startswith(prefix + "/")


def test_writes_through_partitions_converge_without_double_application(tmp_path, net, nodes, pb, capsys):
    def say(text):
        with capsys.disabled():
            print(f"[partition] {text}", flush=True)

    pki = make_pki(tmp_path / "pki", net.ip)
    top_url = f"https://{net.ip['t']}:{GRPC_PORT}"

    def serving(role):
        return (f'[grpc]\ncert = "{pki / f"server-{role}.pem"}"\nkey = "{pki / f"server-{role}-key.pem"}"\n'
                f'client_ca = "{pki / "ca.pem"}"\n')

    def following(role, who):
        return (serving(role) + f'upstream_ca = "{pki / "ca.pem"}"\n'
                f'upstream_cert = "{pki / f"{who}.pem"}"\nupstream_key = "{pki / f"{who}-key.pem"}"\n')

    top = nodes(net, "t", tmp_path / "top", [], serving("t"))
    assert net.reaches("s", "t") and net.reaches("m", "t"), "the cluster network does not join the nodes"

    # File the secondary and a second node, approve both, allocate PREFIX to the secondary.
    node_pb, common = pb["node"], pb["common"]
    filings = {}
    with top.channel(pki, "alice") as op:
        ops = pb["node_grpc"].NodeServiceStub(op)
        for who, ip in (("node-sec", net.ip["s"]), ("node-other", "198.51.100.9")):
            with top.channel(pki, who) as ch:
                filings[who] = pb["node_grpc"].NodeServiceStub(ch).File(node_pb.FileRequest(
                    organisation="示例装备制造有限公司", credit_code=CREDIT_CODE,
                    contact=node_pb.Contact(name="张三", email="ops@example.cn"), industry="C34",
                    service_addresses=[common.ServiceAddress(host=ip, port=HANDLE_PORT)]), timeout=WAIT).id
            ops.Approve(node_pb.TransitionRequest(id=filings[who], reason="licence checked"), timeout=WAIT)
        ops.Allocate(node_pb.AllocateRequest(filing_id=filings["node-sec"], prefix=PREFIX, reason="first"),
                     timeout=WAIT)

    mirror = nodes(net, "m", tmp_path / "mirror", ["--role", "mirror", "--upstream", top_url],
                   following("m", "mirror"))
    secondary = nodes(net, "s", tmp_path / "secondary", ["--role", "secondary", "--upstream", top_url],
                      following("s", "node-sec"))
    for role, node in (("t", top), ("s", secondary), ("m", mirror)):
        assert node.faces == {"grpc": f"{node.ip}:{GRPC_PORT}", "handle": f"{node.ip}:{HANDLE_PORT}"}, node.faces
        bound = net.listening(role)
        assert bound and all(ip == node.ip for _, ip, _ in bound), f"{role} listens elsewhere than {node.ip}: {bound}"

    top_ch, sec_ch, mir_ch = (n.channel(pki, "alice") for n in (top, secondary, mirror))

    def d(ch, prefix=""):
        return digest(pb, ch, prefix)

    wait_for("the mirror and the secondary follow the top",
             lambda: d(mir_ch) == d(top_ch) and d(sec_ch, "0.NA") == d(top_ch, "0.NA"))
    assert d(sec_ch, "0.NA")[0] == 1, d(sec_ch, "0.NA")  # the prefix table: 0.NA/PREFIX

    top_writer = Writer(pb, top.channel(pki, "alice"), TOP_PREFIX, "T")
    sec_writer = Writer(pb, secondary.channel(pki, "alice"), PREFIX, "S")
    allocator = Allocator(pb, top.channel(pki, "alice"), filings["node-other"])
    threads = (top_writer, sec_writer, allocator)
    for t in threads:
        t.start()
    rounds = []
    try:
        def writing_ok():
            for t in threads:
                assert not t.errors, t.errors
        wait_for("the first writes", lambda: len(top_writer.acked) >= 50 and len(sec_writer.acked) >= 50
                 and allocator.allocated)
        for rnd, cut_seconds in enumerate(CUTS, 1):
            time.sleep(HEALED_SECONDS)
            writing_ok()
            before = (len(sec_writer.acked), len(top_writer.acked))
            followed = (len(secondary.events("following")), len(mirror.events("following")))
            escrow_errors = len(secondary.events("escrow interrupted; retrying"))
            net.cut("s", "m")
            t_cut = time.monotonic()
            assert not net.reaches("s", "t"), f"round {rnd}: the secondary still reaches the top through the cut"
            assert not net.reaches("m", "t"), f"round {rnd}: the mirror still reaches the top through the cut"
            time.sleep(max(0.0, cut_seconds - (time.monotonic() - t_cut)))
            writing_ok()
            # what the cut did: the secondary holds writes the top has not got, the top changes the mirror lacks
            sec_n, top_sec_n = d(sec_ch, PREFIX)[0], d(top_ch, PREFIX)[0]
            top_n, mir_n = d(top_ch)[0], d(mir_ch)[0]
            top_na, sec_na = d(top_ch, "0.NA")[0], d(sec_ch, "0.NA")[0]
            net.heal("s", "m")
            held = time.monotonic() - t_cut
            during = (len(sec_writer.acked) - before[0], len(top_writer.acked) - before[1])
            rounds.append(dict(round=rnd, cut_s=round(held, 1), sec_writes_during_cut=during[0],
                               top_writes_during_cut=during[1], secondary_prefix_at_secondary=sec_n,
                               secondary_prefix_at_top=top_sec_n, top_store=top_n, mirror_store=mir_n,
                               prefix_table_top=top_na, prefix_table_secondary=sec_na))
            say(f"round {rnd}: cut {held:.1f} s; {rounds[-1]}")
            assert sec_n > top_sec_n, f"round {rnd}: the top got every write of the cut-off secondary: {rounds[-1]}"
            assert mir_n < top_n, f"round {rnd}: the cut-off mirror kept up with the top: {rounds[-1]}"
            assert sec_na < top_na, f"round {rnd}: the cut-off secondary kept up with 0.NA: {rounds[-1]}"
            wait_for(f"round {rnd}: the secondary and the mirror reach the top again",
                     lambda: net.reaches("s", "t") and net.reaches("m", "t"), timeout=15)
            if cut_seconds >= KEEPALIVE_CUT:
                wait_for(f"round {rnd}: the secondary and the mirror follow the top on a new connection",
                         lambda: len(secondary.events("following")) > followed[0]
                         and len(mirror.events("following")) > followed[1])
            say(f"round {rnd}: after the heal, 'following' (a new sync stream) logged by the secondary "
                f"{len(secondary.events('following')) - followed[0]} times, by the mirror "
                f"{len(mirror.events('following')) - followed[1]} times; 'escrow interrupted' by the secondary "
                f"{len(secondary.events('escrow interrupted; retrying')) - escrow_errors} times")
        time.sleep(1)  # writes go on a little past the last heal
    finally:
        for t in threads:
            t.stop.set()
        for t in threads:
            t.join(timeout=WAIT)
            t.channel.close()
    assert not any(t.is_alive() for t in threads), "a writer did not stop"
    for t in threads:
        assert not t.errors, t.errors
    n_sec, n_top, n_alloc = len(sec_writer.acked), len(top_writer.acked), len(allocator.allocated)
    say(f"writes: {n_sec} at the secondary under {PREFIX}, {n_top} at the top under {TOP_PREFIX}, "
        f"{n_alloc} allocations (0.NA); client retries: secondary {sec_writer.retries}, top {top_writer.retries}")
    assert len(set(sec_writer.acked)) == n_sec and len(set(top_writer.acked)) == n_top

    t_stop = time.monotonic()

    last = {}

    def agreed():
        top_all, mir_all = d(top_ch), d(mir_ch)
        top_sec, sec_sec = d(top_ch, PREFIX), d(sec_ch, PREFIX)
        top_na, sec_na = d(top_ch, "0.NA"), d(sec_ch, "0.NA")
        top_tp = d(top_ch, TOP_PREFIX)
        state = dict(top=top_all, mirror=mir_all, sec_prefix_top=top_sec, sec_prefix_secondary=sec_sec,
                     na_top=top_na, na_secondary=sec_na, top_prefix_top=top_tp)
        ok = (top_all == mir_all and top_sec == sec_sec and top_na == sec_na
              and sec_sec[0] == n_sec and top_tp[0] == n_top and top_na[0] == 1 + n_alloc
              and top_all[0] == n_sec + n_top + 1 + n_alloc)
        last.update(state)
        return state if ok else None
    try:
        state = wait_for("the nodes agree after the last heal", agreed, timeout=CONVERGE, every=0.5)
    except AssertionError as e:
        raise AssertionError(f"{e}\nlast state: {last}\nsecondary log:\n{secondary.log_tail()}\n"
                             f"mirror log:\n{mirror.log_tail()}") from None
    say(f"converged {time.monotonic() - t_stop:.1f} s after the writes stopped: "
        f"top {state['top']}, secondary prefix {state['sec_prefix_top']}, 0.NA {state['na_top']}; "
        f"the secondary holds {d(sec_ch, TOP_PREFIX)[0]} records of {TOP_PREFIX} (it follows 0.NA and its own)")

    # Exactly one change at the top per write: nothing applied twice, nothing lost.
    t_log = time.monotonic()
    entries, through = change_log(pb, top_ch, [PREFIX, TOP_PREFIX, "0.NA"])
    say(f"read the top's change log in {time.monotonic() - t_log:.1f} s")
    assert through == status(pb, top_ch).last_seq, "the stream did not reach the top's last change"
    seqs = [s for s, _, _ in entries]
    assert seqs == sorted(set(seqs)), "change-log entries out of order or repeated"
    per = {p: collections.Counter(h for _, h, _ in entries if under(p, h)) for p in (PREFIX, TOP_PREFIX)}
    na = collections.Counter(h for _, h, _ in entries if under("0.NA", h))
    assert not [e for e in entries if e[2]], "deletions in the change log"
    say(f"top change log through seq {through}: {sum(per[PREFIX].values())} changes under {PREFIX} "
        f"({len(per[PREFIX])} handles), {sum(per[TOP_PREFIX].values())} under {TOP_PREFIX} "
        f"({len(per[TOP_PREFIX])} handles), {sum(na.values())} under 0.NA ({len(na)} handles)")
    twice = {h: c for h, c in per[PREFIX].items() if c > 1}
    assert not twice, f"escrowed writes applied more than once at the top: {dict(list(twice.items())[:10])}"
    assert set(per[PREFIX]) == set(sec_writer.acked), "the top's log differs from the secondary's writes"
    assert sum(per[PREFIX].values()) == n_sec
    twice = {h: c for h, c in per[TOP_PREFIX].items() if c > 1}
    assert not twice, f"top writes applied more than once: {dict(list(twice.items())[:10])}"
    assert set(per[TOP_PREFIX]) == set(top_writer.acked) and sum(per[TOP_PREFIX].values()) == n_top

    refused = secondary.events("escrow operation refused upstream")
    assert not refused, refused[:5]
    say("reconnections: " + ", ".join(
        f"{name} {msg!r} x{len(node.events(msg))}" for name, node in (("secondary", secondary), ("mirror", mirror))
        for msg in ("following", "sync interrupted; resuming", "escrow interrupted; retrying")
        if not (name == "mirror" and msg.startswith("escrow"))))
    for ch in (top_ch, sec_ch, mir_ch):
        ch.close()

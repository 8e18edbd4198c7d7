"""Abuse resistance of a running node: UDP amplification under a flood
(Handle byte budgets, DNS response-rate limiting with slip), minimal ANY
over UDP (RFC 8482), and the TCP connection caps with longest-idle
eviction on the Handle and DNS faces.

Each test starts its own `idres serve` (after `idres import`) on loopback
ports it picks itself (port 0, learned from the `listening <face> <addr>`
lines), with the HTTP face on for `/metrics`. Clients bind distinct
loopback sources: Linux lets any 127.x.y.z be a source, so 127.0.0.1 (the
legitimate client) and 127.77.0.1 (the flooder) are different /24s and so
different budgets. The Handle client is `hdl_native` (independent of
idres); DNS goes through dnspython or raw sockets. Every wait and every
load loop is bounded in seconds.
"""

import json
import math
import os
import queue
import re
import select
import socket
import subprocess
import sys
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
import requests

import hdl_native as hdl
from idres_http_node import IDRES, _binary_ready, _retrying, run_idres, stop_process

WAIT = 30
ZONE = "oid-res.org."

#: The flood lasts this long (seconds).
FLOOD_SECS = 4.0
#: Replies still in flight after the flood are read for this long.
DRAIN_SECS = 1.0

# Byte budgets of the flood tests. The defaults are 131072 bytes/s with a
# burst of 262144 (`[handle] udp_rate_bytes`/`udp_burst_bytes`, `[dns]
# rrl_rate_bytes`/`rrl_burst_bytes`) and `rrl_slip = 2`; lower budgets make
# the limit bite within a three-second flood.
RATE = 32768
BURST = 65536

FLOODER_HANDLE = "127.77.0.1"
FLOODER_DNS = "127.78.0.1"
LEGIT = "127.0.0.1"

BIG_HANDLE = "88.118.8/BIG"
SMALL_HANDLE = "88.118.8/SMALL"
BIG_COUNT = 60
#: An OID whose NAPTR answer fits a 1232-byte UDP response but is many
#: times the query: what an amplifier wants.
MEDIUM_OID = "1.2.156.3001.4"
MEDIUM_NAME = "4.3001.156.2.1.oid-res.org."
MEDIUM_COUNT = 12
SMALL_OID = "1.2.156.3001.1"
SMALL_NAME = "1.3001.156.2.1.oid-res.org."


def url_value(index, url):
    return {"index": index, "type": "URL", "data": {"format": "string", "value": url}}


RECORDS = [
    {"handle": BIG_HANDLE,
     "values": [url_value(i, f"https://example.cn/products/item-{i:04}/details")
                for i in range(1, BIG_COUNT + 1)]},
    {"handle": SMALL_HANDLE, "values": [url_value(1, "https://example.cn/small")]},
    {"oid": SMALL_OID, "values": [url_value(1, "https://example.cn/p")]},
    {"oid": MEDIUM_OID,
     "values": [url_value(i, f"https://example.cn/m/{i:03}/details")
                for i in range(1, MEDIUM_COUNT + 1)]},
]


# ---------------------------------------------------------------- the node

class Node:
    def __init__(self, proc, faces, stderr_path):
        self.proc, self.faces, self.stderr_path = proc, faces, stderr_path

    def port(self, face):
        return int(self.faces[face].rsplit(":", 1)[1])

    @property
    def handle_port(self):
        return self.port("handle")

    @property
    def dns_port(self):
        return self.port("dns")

    def metrics(self):
        r = requests.get(f"http://{self.faces['http']}/metrics", timeout=5)
        assert r.status_code == 200, f"/metrics: {r.status_code} {r.text[:200]}"
        return r.text

    def stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def stop(self):
        stop_process(self.proc)


def start(directory, config, dns_face=False):
    """Imports RECORDS, then serves Handle (UDP+TCP), HTTP and, if asked,
    DNS (UDP+TCP) on loopback ports of its choice, with `config` as the
    configuration file."""
    _binary_ready()
    directory = str(directory)
    data = os.path.join(directory, "data")
    records = os.path.join(directory, "records.jsonl")
    with open(records, "w") as f:
        for r in RECORDS:
            f.write(json.dumps(r) + "\n")
    run_idres("import", "--data-dir", data, records)
    conf = os.path.join(directory, "idres.toml")
    with open(conf, "w") as f:
        f.write(config)
    cmd = [IDRES, "serve", "--config", conf, "--data-dir", data,
           "--handle-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    want = {"handle", "http"}
    if dns_face:
        cmd += ["--dns-listen", "127.0.0.1:0"]
        want.add("dns")
    stderr_path = os.path.join(directory, "serve.err")
    for attempt in range(2):
        err = open(stderr_path, "w")
        try:
            proc = _retrying(lambda: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                                      text=True))
        finally:
            err.close()
        lines = queue.Queue()
        threading.Thread(target=lambda p=proc, q=lines: [q.put(line) for line in p.stdout],
                         daemon=True).start()
        faces = {}
        deadline = time.monotonic() + WAIT
        while not want <= faces.keys() and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None and lines.empty():
                    break
                continue
            m = re.match(r"listening (\w+) (127\.0\.0\.1:\d+)", line)
            if m:
                faces[m.group(1)] = m.group(2)
        node = Node(proc, faces, stderr_path)
        if want <= faces.keys():
            return node
        died = proc.poll() is not None
        node.stop()
        if attempt == 0 and died:  # a binary being rebuilt: wait and try once more
            time.sleep(30)
            continue
        raise AssertionError(f"node did not announce {sorted(want)} within {WAIT}s: {faces} "
                             f"(exit code {proc.returncode}):\n{node.stderr()[-3000:]}")
    raise AssertionError("unreachable")


@pytest.fixture
def node_factory(tmp_path):
    nodes = []

    def make(config, dns_face=False, name="node"):
        d = tmp_path / name
        d.mkdir()
        n = start(d, config, dns_face)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        n.stop()


def sample(text, name, **labels):
    """The value of metric `name` whose labels include `labels` (0 when the
    series has not been created yet: counters appear on first use)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


def counter(node, name, **labels):
    return sample(node.metrics(), name, **labels)


# ---------------------------------------------------------------- Handle clients

def resolution(handle):
    return hdl.Message(hdl.OC_RESOLUTION, body=hdl.body_resolution(handle),
                       request_id=hdl.new_request_id())


def udp_resolve(port, handle, source, timeout):
    """One UDP attempt from `source`: the Reply, or None on timeout."""
    msg = resolution(handle)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for p in hdl.udp_packets(msg):
            s.sendto(p, ("127.0.0.1", port))
        asm = hdl.UdpReassembler(msg.request_id)
        deadline = time.monotonic() + timeout
        wire_bytes = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            s.settimeout(left)
            try:
                data, _ = s.recvfrom(65535)
            except socket.timeout:
                return None
            wire_bytes += len(data)
            done = asm.add(data)
            if done is not None:
                reply = hdl.Reply(done)
                reply.wire_bytes = wire_bytes  # every datagram of the reply
                return reply


class SourcedTcp(hdl.TcpConnection):
    """A Handle TCP connection from a chosen loopback source address."""

    def __init__(self, port, source, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))
        self.sock.settimeout(timeout)
        self.decrypt = None

    def resolve(self, handle):
        return hdl.Reply(self.exchange(resolution(handle))[-1])


def tcp_resolve(port, handle, source, timeout=5.0):
    with SourcedTcp(port, source, timeout) as c:
        return c.resolve(handle)


def resolve_like_a_client(port, handle, source, udp_timeout=0.5):
    """As Handle clients do: UDP with a short timeout, then TCP. Returns
    (transport, Reply), or (None, error) when both fail."""
    r = udp_resolve(port, handle, source, udp_timeout)
    if r is not None:
        return "udp", r
    try:
        return "tcp", tcp_resolve(port, handle, source)
    except (OSError, hdl.HandleError) as e:
        return None, e


# ---------------------------------------------------------------- socket states

def closed_within(sock, seconds):
    """True if the peer closes `sock` (EOF or reset) within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except socket.timeout:
            return False
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return True
        if not data:
            return True


def is_open(sock):
    """True if nothing (no EOF, no reset) is waiting on `sock` now."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True
    except OSError:
        return False


def connect(port, source):
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


# ---------------------------------------------------------------- a flood

#: The flooder, run as a process of its own so that it competes with the
#: legitimate client for nothing but the node. It reads a JSON job on
#: standard input, prints "sending", floods for `secs`, prints "sent",
#: reads replies for `drain` seconds more, and prints its counts as JSON.
FLOODER = r"""
import json, socket, sys, threading, time
job = json.loads(sys.stdin.readline())
packets = [bytes.fromhex(p) for p in job["packets"]]
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
sock.bind((job["source"], 0))
addr = ("127.0.0.1", job["port"])
c = {"sent_bytes": 0, "sent_packets": 0, "received_bytes": 0, "received_packets": 0,
     "full": 0, "full_bytes": 0, "slipped": 0, "other": 0, "slip_sample": None}
done = threading.Event()
def classify(data):
    if job["mode"] != "dns":
        return
    tc = len(data) >= 12 and data[2] & 0x02
    ancount = int.from_bytes(data[6:8], "big") if len(data) >= 12 else -1
    if tc and ancount == 0:
        c["slipped"] += 1
        if c["slip_sample"] is None:
            c["slip_sample"] = data.hex()
    elif not tc and ancount == job["answers"]:
        c["full"] += 1
        c["full_bytes"] += len(data)
    else:
        c["other"] += 1
def read():
    stop_at = None
    sock.settimeout(0.2)
    while True:
        if stop_at is None and done.is_set():
            stop_at = time.monotonic() + job["drain"]
        if stop_at is not None and time.monotonic() > stop_at:
            break
        try:
            data = sock.recv(65535)
        except OSError:
            continue
        c["received_bytes"] += len(data)
        c["received_packets"] += 1
        classify(data)
    c["ended"] = time.monotonic()
reader = threading.Thread(target=read, daemon=True)
reader.start()
print("sending", flush=True)
c["started"] = time.monotonic()
end = c["started"] + job["secs"]
while time.monotonic() < end:
    for p in packets:
        try:
            sock.sendto(p, addr)
        except OSError:
            continue
        c["sent_bytes"] += len(p)
        c["sent_packets"] += 1
done.set()
print("sent", flush=True)
reader.join(job["drain"] + 5)
c["window"] = c.pop("ended", time.monotonic()) - c.pop("started")
print(json.dumps(c), flush=True)
"""


class Flood:
    """A flood from `source`: `packets` sent round-robin as fast as one
    process can for FLOOD_SECS, every reply read (DRAIN_SECS more)."""

    def __init__(self, port, source, packets, mode="handle", answers=0):
        self.job = {"port": port, "source": source, "packets": [p.hex() for p in packets],
                    "mode": mode, "answers": answers, "secs": FLOOD_SECS, "drain": DRAIN_SECS}
        self.done_sending = threading.Event()
        self.counts = None

    def run(self):
        """Floods; returns once the flooder has reported (bounded)."""
        proc = subprocess.Popen([sys.executable, "-c", FLOODER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
        try:
            proc.stdin.write(json.dumps(self.job) + "\n")
            proc.stdin.flush()
            deadline = time.monotonic() + FLOOD_SECS + DRAIN_SECS + 20
            while self.counts is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("the flooder did not report in time")
                try:
                    line = lines.get(timeout=min(left, 1)).strip()
                except queue.Empty:
                    if proc.poll() is not None and lines.empty():
                        raise AssertionError(f"the flooder died: {proc.stderr.read()[-2000:]}")
                    continue
                if line == "sent":
                    self.done_sending.set()
                elif line.startswith("{"):
                    self.counts = json.loads(line)
        finally:
            self.done_sending.set()
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        for k, v in self.counts.items():
            setattr(self, k, v)

    def report(self):
        return (f"flooder sent {self.sent_packets} packets / {self.sent_bytes} bytes, received "
                f"{self.received_packets} packets / {self.received_bytes} bytes in {self.window:.1f} s")


class Legit:
    """A legitimate client on 127.0.0.1 with `lookups` lookups going at
    once, each resolving every `pause` seconds while `flood` sends.
    `attempt()` returns (transport, ok, detail)."""

    def __init__(self, attempt, pause, flood, lookups=2):
        self.attempt, self.pause, self.flood = attempt, pause, flood
        self.results = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(lookups)]

    def _run(self):
        while not self.flood.done_sending.is_set():
            self.results.append(self.attempt())
            self.flood.done_sending.wait(self.pause)

    def start(self):
        for t in self.threads:
            t.start()

    def check(self, what):
        for t in self.threads:
            t.join(timeout=15)
        assert not any(t.is_alive() for t in self.threads), (
            f"{what}: the legitimate client did not finish")
        n = len(self.results)
        ok = sum(1 for _, good, _ in self.results if good)
        by = {t: sum(1 for tt, good, _ in self.results if tt == t and good) for t in ("udp", "tcp")}
        failures = [d for _, good, d in self.results if not good][:5]
        assert n >= 10, f"{what}: only {n} resolutions during the flood: {self.results}"
        assert ok >= math.ceil(0.99 * n), (
            f"{what}: the legitimate client succeeded {ok} of {n} times during the flood "
            f"(udp {by['udp']}, tcp {by['tcp']}); failures: {failures}")
        return n, by


# ---------------------------------------------------------------- 1. Handle UDP

HANDLE_FLOOD_CONFIG = f"""
[handle]
udp_workers = 2
udp_rate_bytes = {RATE}
udp_burst_bytes = {BURST}
"""


def test_handle_udp_flood_is_not_amplified_and_others_are_served(node_factory):
    node = node_factory(HANDLE_FLOOD_CONFIG)
    port = node.handle_port

    # Unlimited, one request for the large record is an amplifier: one
    # 72-byte datagram draws a reply of several packets.
    request = hdl.udp_packets(resolution(BIG_HANDLE))
    assert len(request) == 1
    probe = udp_resolve(port, BIG_HANDLE, "127.99.0.1", 2.0)
    assert probe is not None and probe.ok and len(probe.values) == BIG_COUNT, probe
    reply_bytes = probe.wire_bytes
    assert reply_bytes > 20 * len(request[0]), (reply_bytes, len(request[0]))
    small = udp_resolve(port, SMALL_HANDLE, "127.98.0.1", 2.0)
    assert small is not None and small.ok, small

    before = counter(node, "idres_rate_limited_total", face="handle_udp")
    packets = [hdl.udp_packets(resolution(BIG_HANDLE))[0] for _ in range(256)]
    flood = Flood(port, FLOODER_HANDLE, packets)

    def attempt():
        transport, r = resolve_like_a_client(port, BIG_HANDLE, LEGIT)
        good = transport is not None and r.ok and len(r.values) == BIG_COUNT
        return transport, good, r

    # Two lookups at once, each of about 5 KB, each at most every 0.25 s:
    # within the legitimate source's own budget.
    legit = Legit(attempt, 0.25, flood)
    legit.start()
    flood.run()
    n, by = legit.check("Handle UDP")

    ratio = flood.received_bytes / max(1, flood.sent_bytes)
    assert flood.sent_bytes > 50 * reply_bytes, f"the flood was too weak to mean anything: {flood.report()}"
    assert ratio <= 3, f"amplification {ratio:.2f} > 3: {flood.report()}"
    # The flooder's own budget: the burst, what refilled over the window,
    # one reply of slack (10% margin for timing).
    allowed = BURST + RATE * flood.window * 1.1 + reply_bytes
    assert flood.received_bytes <= allowed, (
        f"the flooder drew more than its budget ({allowed:.0f} bytes): {flood.report()}")
    assert flood.received_bytes >= reply_bytes, (
        f"the flooder's first replies (its burst) should have been sent: {flood.report()}")
    after = counter(node, "idres_rate_limited_total", face="handle_udp")
    assert after > before, f'idres_rate_limited_total{{face="handle_udp"}} stayed at {after}'

    # Once the flood is over (and the legitimate source's bucket has had
    # time to refill), plain UDP works again.
    time.sleep(2.5)
    r = udp_resolve(port, BIG_HANDLE, LEGIT, 2.0)
    assert r is not None, "no UDP reply after the flood"
    assert r.ok and len(r.values) == BIG_COUNT, r
    print(f"handle: {flood.report()}; ratio {ratio:.4f}; legit {n} (udp {by['udp']}, "
          f"tcp {by['tcp']}); rate_limited +{after - before:.0f}")


# ---------------------------------------------------------------- 2, 3. DNS UDP

DNS_CONFIG = f"""
[dns]
zone = "{ZONE}"
udp_workers = 2
rrl_rate_bytes = {RATE}
rrl_burst_bytes = {BURST}
rrl_slip = 2
"""


def naptr_count(msg):
    return sum(len(rrset) for rrset in msg.answer if rrset.rdtype == dns.rdatatype.NAPTR)


def test_dns_rrl_bounds_a_flood_slips_truncated_and_serves_others(node_factory):
    node = node_factory(DNS_CONFIG, dns_face=True)
    port = node.dns_port
    query = dns.message.make_query(MEDIUM_NAME, "NAPTR", use_edns=0, payload=1232)
    wire = query.to_wire()

    # Unlimited, the answer fits UDP whole and is many times the query.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.99.0.1", 0))
        s.settimeout(2)
        s.sendto(wire, ("127.0.0.1", port))
        probe_raw = s.recv(65535)
    probe = dns.message.from_wire(probe_raw)
    assert not probe.flags & dns.flags.TC and naptr_count(probe) == MEDIUM_COUNT, probe
    assert len(probe_raw) > 10 * len(wire), (len(probe_raw), len(wire))

    before = counter(node, "idres_rate_limited_total", face="dns_udp")
    packets = []
    for i in range(256):
        q = dns.message.make_query(MEDIUM_NAME, "NAPTR", use_edns=0, payload=1232)
        q.id = i + 1
        packets.append(q.to_wire())
    flood = Flood(port, FLOODER_DNS, packets, mode="dns", answers=MEDIUM_COUNT)

    def attempt():
        q = dns.message.make_query(MEDIUM_NAME, "NAPTR", use_edns=0, payload=1232)
        transport, r = "udp", None
        try:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.5, source=LEGIT)
        except dns.exception.Timeout:
            r = None
        if r is None or r.flags & dns.flags.TC:
            transport = "tcp"
            try:
                r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=5, source=LEGIT)
            except (dns.exception.DNSException, OSError) as e:
                return None, False, e
        return transport, naptr_count(r) == MEDIUM_COUNT, r

    legit = Legit(attempt, 0.1, flood)
    legit.start()
    flood.run()
    n, by = legit.check("DNS UDP")

    report = (f"{flood.report()}; full answers {flood.full} ({flood.full_bytes} bytes), "
              f"truncated {flood.slipped}, other {flood.other}")
    ratio = flood.received_bytes / max(1, flood.sent_bytes)
    assert flood.sent_bytes > 50 * len(probe_raw), f"the flood was too weak to mean anything: {report}"
    assert ratio <= 3, f"amplification {ratio:.2f} > 3: {report}"
    # The node answers only part of a flood (the kernel drops what its
    # queues cannot hold), so the ratio alone is a loose bound; what the
    # limit promises is the source's budget: the burst, what refilled over
    # the window, one answer of slack (10% margin for timing). Slipped
    # replies are not charged; they are smaller than the queries.
    allowed = BURST + RATE * flood.window * 1.1 + len(probe_raw)
    assert flood.full_bytes <= allowed, (
        f"full answers to the flooder exceed its budget ({allowed:.0f} bytes): {report}")
    assert flood.full >= 1, f"the flooder's burst should have been answered: {report}"
    assert flood.slipped >= 1, f"no truncated (TC, no answer) reply reached the flooder: {report}"
    slip_wire = bytes.fromhex(flood.slip_sample)
    slip = dns.message.from_wire(slip_wire)
    assert slip.flags & dns.flags.TC and not slip.answer and not slip.authority, slip
    assert [str(q.name) for q in slip.question] == [MEDIUM_NAME], slip
    assert len(slip_wire) <= len(wire), (
        f"a slipped reply ({len(slip_wire)} bytes) is larger than the query ({len(wire)})")
    after = counter(node, "idres_rate_limited_total", face="dns_udp")
    assert after > before, f'idres_rate_limited_total{{face="dns_udp"}} stayed at {after}'

    time.sleep(2.5)
    r = dns.query.udp(dns.message.make_query(MEDIUM_NAME, "NAPTR", use_edns=0, payload=1232),
                      "127.0.0.1", port=port, timeout=2, source=LEGIT)
    assert not r.flags & dns.flags.TC and naptr_count(r) == MEDIUM_COUNT, r
    print(f"dns: {report}; ratio {ratio:.4f}; legit {n} (udp {by['udp']}, tcp {by['tcp']}); "
          f"rate_limited +{after - before:.0f}")


def rrsets(msg):
    return {rrset.rdtype: rrset for rrset in msg.answer}


def test_dns_any_is_minimal_over_udp_and_whole_over_tcp(node_factory):
    node = node_factory(DNS_CONFIG, dns_face=True)
    port = node.dns_port
    source = "127.79.0.1"
    views = {dns.rdatatype.NAPTR, dns.rdatatype.URI, dns.rdatatype.TXT}
    for name, count in ((SMALL_NAME, 1), (MEDIUM_NAME, MEDIUM_COUNT)):
        q = dns.message.make_query(name, "ANY", use_edns=0, payload=1232)
        udp = dns.query.udp(q, "127.0.0.1", port=port, timeout=5, source=source)
        tcp = dns.query.tcp(q, "127.0.0.1", port=port, timeout=5, source=source)
        assert not udp.flags & dns.flags.TC, f"ANY {name} over UDP was truncated: {udp}"
        assert len(udp.answer) == 1, f"ANY {name} over UDP: want one RRset, got:\n{udp}"
        assert udp.answer[0].rdtype in views and len(udp.answer[0]) == count, udp
        got = rrsets(tcp)
        assert set(got) == views, f"ANY {name} over TCP: want NAPTR, URI and TXT, got:\n{tcp}"
        assert all(len(got[t]) == count for t in views), tcp
        assert sum(len(r) for r in udp.answer) < sum(len(r) for r in tcp.answer)
    # The small record's three views, in full over TCP.
    tcp = dns.query.tcp(dns.message.make_query(SMALL_NAME, "ANY"), "127.0.0.1", port=port,
                        timeout=5, source=source)
    got = rrsets(tcp)
    (naptr,) = got[dns.rdatatype.NAPTR]
    assert naptr.regexp.decode().split(naptr.regexp.decode()[0])[2] == "https://example.cn/p"
    (uri,) = got[dns.rdatatype.URI]
    assert uri.target == b"https://example.cn/p"
    (txt,) = got[dns.rdatatype.TXT]
    assert b"".join(txt.strings) == b"URL=https://example.cn/p"
    # At the apex: SOA alone over UDP, SOA and NS over TCP.
    q = dns.message.make_query(ZONE, "ANY")
    udp = dns.query.udp(q, "127.0.0.1", port=port, timeout=5, source=source)
    tcp = dns.query.tcp(q, "127.0.0.1", port=port, timeout=5, source=source)
    assert [r.rdtype for r in udp.answer] == [dns.rdatatype.SOA], udp
    assert set(rrsets(tcp)) == {dns.rdatatype.SOA, dns.rdatatype.NS}, tcp


# ---------------------------------------------------------------- 4. Handle TCP

# Default idle cut (tcp_idle_secs = 3600); a short request deadline, so that
# an idle connection surviving past it shows the two are apart.
HANDLE_TCP_CONFIG = """
[handle]
max_tcp_connections = 40
max_tcp_per_address = 10
tcp_request_secs = 2
"""


def dropped(node, face, reason):
    return counter(node, "idres_dropped_total", face=face, reason=reason)


def open_conns(port, source, n, pause=0.03):
    out = []
    for _ in range(n):
        out.append(SourcedTcp(port, source))
        time.sleep(pause)  # distinct admission times, in order
    return out


def test_handle_tcp_caps_and_longest_idle_eviction(node_factory):
    node = node_factory(HANDLE_TCP_CONFIG)
    port = node.handle_port
    face = "handle_tcp"
    base = {r: dropped(node, face, r) for r in ("evicted", "address_limit", "connection_limit")}
    conns = []
    try:
        own = open_conns(port, LEGIT, 10)
        conns += own
        # The 11th from the same address is over its share: closed at once.
        extra = connect(port, LEGIT)
        conns.append(extra)
        assert closed_within(extra, 2), "the 11th connection from 127.0.0.1 was not closed"
        assert all(is_open(c.sock) for c in own), "the first 10 from 127.0.0.1 must stay open"

        # Up to the cap of 40 from three other addresses.
        others = []
        for a in ("127.0.1.1", "127.0.2.1", "127.0.3.1"):
            others += open_conns(port, a, 10)
        conns += others
        time.sleep(0.2)
        assert all(is_open(c.sock) for c in own + others), "a connection under the caps was closed"

        # A request on the second one makes it recent.
        r = own[1].resolve(SMALL_HANDLE)
        assert r.ok, r
        time.sleep(0.05)

        # Full: a newcomer evicts the connection idle longest, the first one.
        n1 = SourcedTcp(port, "127.0.9.1")
        conns.append(n1)
        assert closed_within(own[0].sock, 3), "the longest-idle connection was not evicted"
        r = n1.resolve(SMALL_HANDLE)
        assert r.ok and r.values[0].text_data == "https://example.cn/small", r
        time.sleep(0.2)
        assert all(is_open(c.sock) for c in own[1:] + others), "only the longest-idle one may go"

        # The next newcomer evicts the next longest idle, the third one:
        # the second had a request more recently.
        n2 = SourcedTcp(port, "127.0.10.1")
        conns.append(n2)
        assert closed_within(own[2].sock, 3), "the next longest-idle connection was not evicted"
        assert n2.resolve(SMALL_HANDLE).ok
        time.sleep(0.2)
        assert is_open(own[1].sock), "a connection with a recent request was evicted"
        r = own[1].resolve(SMALL_HANDLE)
        assert r.ok, r
        assert all(is_open(c.sock) for c in own[3:] + others + [n1])

        # A connection its client closes gives its place back: with 40 open
        # again, one closed, a newcomer from 127.0.0.1 (8 of its 10 used)
        # comes in without evicting anyone.
        own[9].close()
        time.sleep(0.3)
        back = SourcedTcp(port, LEGIT)
        conns.append(back)
        assert back.resolve(SMALL_HANDLE).ok
        time.sleep(0.2)
        assert all(is_open(c.sock) for c in own[3:9] + others + [n1, n2])

        # Idle for longer than the request deadline: not cut.
        time.sleep(3)
        assert is_open(own[3].sock), "an idle connection was cut after a few seconds"
        r = own[3].resolve(BIG_HANDLE)
        assert r.ok and len(r.values) == BIG_COUNT, r

        got = {k: dropped(node, face, k) - v for k, v in base.items()}
        assert got == {"evicted": 2, "address_limit": 1, "connection_limit": 0}, (
            f"idres_dropped_total{{face=\"{face}\"}} increases: {got}")
    finally:
        for c in conns:
            c.close()


BUSY_CONFIG = """
[handle]
max_tcp_connections = 6
max_tcp_per_address = 6
tcp_request_secs = 3
"""


def test_handle_tcp_full_of_requests_in_progress_refuses_the_newcomer(node_factory):
    node = node_factory(BUSY_CONFIG)
    port = node.handle_port
    face = "handle_tcp"
    base = {r: dropped(node, face, r) for r in ("evicted", "connection_limit")}
    conns = []
    try:
        busy = open_conns(port, LEGIT, 6)
        conns += busy
        # Each begins a request (an envelope announcing 200 bytes) and
        # sends no more of it: a request in progress, so none is idle.
        for c in busy:
            c.send_raw(hdl.Envelope(request_id=hdl.new_request_id(), length=200).encode())
        time.sleep(0.3)
        started = time.monotonic()
        newcomer = connect(port, "127.0.1.1")
        conns.append(newcomer)
        assert closed_within(newcomer, 1.5), "the newcomer to a node full of busy connections was not closed"
        assert time.monotonic() - started < 2.5
        assert all(is_open(c.sock) for c in busy), "a connection with a request in progress was evicted"
        # The unfinished requests are cut at the request deadline (3 s).
        for c in busy:
            assert closed_within(c.sock, 6), "an unfinished request outlived its deadline"
        time.sleep(0.3)
        r = tcp_resolve(port, SMALL_HANDLE, "127.0.1.1")
        assert r.ok, r
        got = {k: dropped(node, face, k) - v for k, v in base.items()}
        assert got == {"evicted": 0, "connection_limit": 1}, (
            f"idres_dropped_total{{face=\"{face}\"}} increases: {got}")
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------- 5. DNS TCP

DNS_TCP_CONFIG = f"""
[dns]
zone = "{ZONE}"
max_tcp_connections = 6
max_tcp_per_address = 3
tcp_request_secs = 2
"""


def dns_tcp_ask(sock):
    q = dns.message.make_query(SMALL_NAME, "NAPTR")
    dns.query.send_tcp(sock, q, time.time() + 5)
    r, _ = dns.query.receive_tcp(sock, time.time() + 5)
    assert r.id == q.id and naptr_count(r) == 1, r
    return r


def test_dns_tcp_caps_and_longest_idle_eviction(node_factory):
    node = node_factory(DNS_TCP_CONFIG, dns_face=True)
    port = node.dns_port
    face = "dns_tcp"
    base = {r: dropped(node, face, r) for r in ("evicted", "address_limit", "connection_limit")}
    conns = []
    try:
        own = []
        for _ in range(3):
            own.append(connect(port, LEGIT))
            time.sleep(0.03)
        conns += own
        extra = connect(port, LEGIT)
        conns.append(extra)
        assert closed_within(extra, 2), "the 4th DNS connection from 127.0.0.1 was not closed"
        others = []
        for _ in range(3):
            others.append(connect(port, "127.0.1.1"))
            time.sleep(0.03)
        conns += others
        time.sleep(0.2)
        assert all(is_open(s) for s in own + others)
        dns_tcp_ask(own[1])
        time.sleep(0.05)
        newcomer = connect(port, "127.0.9.1")
        conns.append(newcomer)
        assert closed_within(own[0], 3), "the longest-idle DNS connection was not evicted"
        dns_tcp_ask(newcomer)
        time.sleep(0.2)
        assert all(is_open(s) for s in own[1:] + others), "only the longest-idle one may go"
        # Idle past the request deadline: still served.
        time.sleep(2.5)
        dns_tcp_ask(own[1])
        dns_tcp_ask(own[2])
        got = {k: dropped(node, face, k) - v for k, v in base.items()}
        assert got == {"evicted": 1, "address_limit": 1, "connection_limit": 0}, (
            f"idres_dropped_total{{face=\"{face}\"}} increases: {got}")
    finally:
        for s in conns:
            s.close()

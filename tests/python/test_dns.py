"""OID resolution over DNS (X.672 ORS) against the real idres binary.

The node is loaded with `idres import` and started with `idres serve` on
loopback ports it picks itself; independent clients query it: dig (BIND's
client), dnspython over UDP, TCP and DNS-over-QUIC, and aioquic driving a
raw RFC 9250 exchange. Every wait is bounded.
"""

import asyncio
import datetime
import ipaddress
import json
import os
import queue
import re
import shutil
import subprocess
import threading

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDRES = os.environ.get("IDRES_BIN", os.path.join(ROOT, "target", "debug", "idres"))
ZONE = "oid-res.org."
OID_NAME = "1.3001.156.2.1.oid-res.org."
BIG_NAME = "2.3001.156.2.1.oid-res.org."
ALIAS_NAME = "3.3001.156.2.1.oid-res.org."
BIG_COUNT = 60
WAIT = 20


def url_value(index, url):
    return {"index": index, "type": "URL", "data": {"format": "string", "value": url}}


RECORDS = [
    {"oid": "1.2.156.3001.1", "values": [url_value(1, "https://example.cn/p")]},
    {"oid": "1.2.156.3001.2",
     "values": [url_value(i, f"https://example.cn/products/item-{i:04}/details")
                for i in range(1, BIG_COUNT + 1)]},
    {"handle": "88.118.8/JXDY2106023",
     "values": [url_value(1, "https://factory.example/JXDY2106023"),
                {"index": 2, "type": "OID", "data": "1.2.156.3001.3"}]},
    {"oid": "1.2.156.3001.3",
     "values": [{"index": 1, "type": "HS_ALIAS", "data": "88.118.8/JXDY2106023"}]},
    {"handle": "88.118.8/X5",
     "values": [url_value(1, "https://factory.example/X5"),
                {"index": 2, "type": "OID", "data": "1.2.156.3001.5"}]},
]


def make_certificate(directory):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


class Node:
    def __init__(self, proc, dns_port, doq_port, cafile):
        self.proc, self.dns_port, self.doq_port, self.cafile = proc, dns_port, doq_port, cafile


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    assert os.path.exists(IDRES), f"build the binary first: {IDRES}"
    d = str(tmp_path_factory.mktemp("dns"))
    data = os.path.join(d, "data")
    records = os.path.join(d, "records.jsonl")
    with open(records, "w") as f:
        for r in RECORDS:
            f.write(json.dumps(r) + "\n")
    subprocess.run([IDRES, "import", "--data-dir", data, records], check=True, timeout=60,
                   capture_output=True)
    cert, key = make_certificate(d)
    config = os.path.join(d, "idres.toml")
    with open(config, "w") as f:
        f.write(f'[dns]\nzone = "{ZONE}"\ncert = "{cert}"\nkey = "{key}"\nudp_workers = 2\n')
    proc = subprocess.Popen(
        [IDRES, "serve", "--config", config, "--data-dir", data,
         "--handle-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0",
         "--doq-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()
    ports = {}
    try:
        while not {"dns", "doq"} <= ports.keys():
            line = lines.get(timeout=WAIT)
            m = re.match(r"listening (\w+) 127\.0\.0\.1:(\d+)", line)
            if m:
                ports[m.group(1)] = int(m.group(2))
        yield Node(proc, ports["dns"], ports["doq"], cert)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)


def dig(node, *args):
    assert shutil.which("dig"), "dig (Debian dnsutils) is required"
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(node.dns_port), "+time=3", "+tries=1",
                          *args], capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def status(text):
    return re.search(r"status: (\w+)", text).group(1)


def flags(text):
    return re.search(r";; flags: ([a-z ]*);", text).group(1).split()


def answers(text, rtype):
    return [line for line in text.splitlines()
            if not line.startswith(";") and re.search(rf"\sIN\s+{rtype}\s", line)]


def naptr_urls(msg):
    urls = []
    for rrset in msg.answer:
        for rd in rrset:
            if rd.rdtype == dns.rdatatype.NAPTR:
                regexp = rd.regexp.decode()
                delim = regexp[0]
                urls.append(regexp.split(delim)[2])
    return urls


# --- dig ------------------------------------------------------------------

def test_dig_naptr_yields_the_imported_url(node):
    for transport in ("+notcp", "+tcp"):
        out = dig(node, OID_NAME, "NAPTR", transport)
        assert status(out) == "NOERROR"
        assert "aa" in flags(out)
        naptr = answers(out, "NAPTR")
        assert len(naptr) == 1, out
        assert '"U" "ORS+UINF" "!^.*$!https://example.cn/p!" .' in naptr[0]


def test_dig_unknown_oid_is_nxdomain_with_soa(node):
    out = dig(node, "9.3001.156.2.1.oid-res.org", "NAPTR")
    assert status(out) == "NXDOMAIN"
    assert "aa" in flags(out)
    assert not answers(out, "NAPTR")
    soa = answers(out, "SOA")
    assert len(soa) == 1 and soa[0].startswith("oid-res.org."), out


def test_dig_large_answer_truncated_over_udp_whole_over_tcp(node):
    out = dig(node, BIG_NAME, "NAPTR", "+ignore", "+noedns")
    assert "tc" in flags(out)
    assert not answers(out, "NAPTR")
    out = dig(node, BIG_NAME, "NAPTR", "+ignore", "+bufsize=1232")
    assert "tc" in flags(out)
    out = dig(node, BIG_NAME, "NAPTR", "+tcp")
    assert "tc" not in flags(out)
    assert len(answers(out, "NAPTR")) == BIG_COUNT


def test_dig_outside_the_zone_is_refused(node):
    out = dig(node, "www.example.com", "A")
    assert status(out) == "REFUSED"
    assert "aa" not in flags(out)


def test_dig_alias_resolves_through_the_handle(node):
    out = dig(node, ALIAS_NAME, "NAPTR", "+short")
    assert "!^.*$!https://factory.example/JXDY2106023!" in out


def test_dig_oid_named_by_a_handle_resolves_to_the_handle(node):
    out = dig(node, "5.3001.156.2.1.oid-res.org", "NAPTR", "+short")
    assert "!^.*$!https://factory.example/X5!" in out


def test_dig_apex_soa_and_ns(node):
    out = dig(node, ZONE, "SOA", "+short")
    assert out.split()[:2] == ["ns1.oid-res.org.", "hostmaster.oid-res.org."]
    assert dig(node, ZONE, "NS", "+short").split() == ["ns1.oid-res.org."]


# --- dnspython over UDP and TCP ----------------------------------------------

def test_dnspython_udp_and_tcp(node):
    q = dns.message.make_query(OID_NAME, "NAPTR")
    for send in (dns.query.udp, dns.query.tcp):
        r = send(q, "127.0.0.1", port=node.dns_port, timeout=5)
        assert r.rcode() == dns.rcode.NOERROR
        assert r.flags & dns.flags.AA
        assert naptr_urls(r) == ["https://example.cn/p"]
    q = dns.message.make_query(OID_NAME, "TXT")
    r = dns.query.udp(q, "127.0.0.1", port=node.dns_port, timeout=5)
    assert [b"".join(rd.strings) for rd in r.answer[0]] == [b"URL=https://example.cn/p"]
    q = dns.message.make_query(OID_NAME, "URI")
    r = dns.query.udp(q, "127.0.0.1", port=node.dns_port, timeout=5)
    (uri,) = r.answer[0]
    assert (uri.priority, uri.weight, uri.target) == (1, 1, b"https://example.cn/p")


def test_dnspython_nxdomain_nodata_refused(node):
    r = dns.query.udp(dns.message.make_query("9.3001.156.2.1.oid-res.org.", "NAPTR"),
                      "127.0.0.1", port=node.dns_port, timeout=5)
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority and r.authority[0].rdtype == dns.rdatatype.SOA
    r = dns.query.udp(dns.message.make_query(OID_NAME, "AAAA"),
                      "127.0.0.1", port=node.dns_port, timeout=5)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA
    r = dns.query.tcp(dns.message.make_query("example.net.", "NAPTR"),
                      "127.0.0.1", port=node.dns_port, timeout=5)
    assert r.rcode() == dns.rcode.REFUSED


def test_dnspython_truncation_then_tcp(node):
    q = dns.message.make_query(BIG_NAME, "NAPTR", use_edns=0, payload=1232)
    r = dns.query.udp(q, "127.0.0.1", port=node.dns_port, timeout=5)
    assert r.flags & dns.flags.TC
    assert not r.answer
    r = dns.query.tcp(q, "127.0.0.1", port=node.dns_port, timeout=5)
    assert not r.flags & dns.flags.TC
    assert len(naptr_urls(r)) == BIG_COUNT
    assert r.edns == 0 and r.payload == 1232


def test_malformed_and_reflected_datagrams(node):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    good = dns.message.make_query(OID_NAME, "NAPTR")
    good.id = 4242
    wire = good.to_wire()
    reflected = bytearray(wire)
    reflected[0:2] = (4241).to_bytes(2, "big")
    reflected[2] |= 0x80
    s.sendto(bytes(reflected), ("127.0.0.1", node.dns_port))  # a response: ignored
    s.sendto(b"\x01\x02\x03", ("127.0.0.1", node.dns_port))   # no header: dropped
    s.sendto(wire[:20], ("127.0.0.1", node.dns_port))          # cut question: FORMERR
    data, _ = s.recvfrom(65535)
    r = dns.message.from_wire(data)
    assert (r.id, r.rcode()) == (4242, dns.rcode.FORMERR)
    s.sendto(wire, ("127.0.0.1", node.dns_port))
    r = dns.message.from_wire(s.recvfrom(65535)[0])
    assert naptr_urls(r) == ["https://example.cn/p"]


# --- DNS over QUIC ------------------------------------------------------------

def test_dnspython_doq(node):
    q = dns.message.make_query(OID_NAME, "NAPTR")
    r = dns.query.quic(q, "127.0.0.1", port=node.doq_port, timeout=10,
                       verify=node.cafile, server_hostname="localhost")
    assert r.rcode() == dns.rcode.NOERROR
    assert naptr_urls(r) == ["https://example.cn/p"]
    r = dns.query.quic(dns.message.make_query(BIG_NAME, "NAPTR"), "127.0.0.1",
                       port=node.doq_port, timeout=10, verify=node.cafile,
                       server_hostname="localhost")
    assert not r.flags & dns.flags.TC
    assert len(naptr_urls(r)) == BIG_COUNT
    r = dns.query.quic(dns.message.make_query("example.org.", "NAPTR"), "127.0.0.1",
                       port=node.doq_port, timeout=10, verify=node.cafile,
                       server_hostname="localhost")
    assert r.rcode() == dns.rcode.REFUSED


class DoqClient(QuicConnectionProtocol):
    """A bare RFC 9250 client: one stream per query, 2-byte length framing."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.streams = {}
        self.closed = asyncio.get_event_loop().create_future()

    async def ask(self, wire):
        sid = self._quic.get_next_available_stream_id()
        done = asyncio.get_event_loop().create_future()
        self.streams[sid] = (bytearray(), done)
        self._quic.send_stream_data(sid, len(wire).to_bytes(2, "big") + wire, end_stream=True)
        self.transmit()
        return await asyncio.wait_for(done, WAIT)

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived) and event.stream_id in self.streams:
            buf, done = self.streams[event.stream_id]
            buf.extend(event.data)
            if event.end_stream and not done.done():
                done.set_result(bytes(buf))
        elif isinstance(event, ConnectionTerminated) and not self.closed.done():
            self.closed.set_result(event.error_code)


def test_aioquic_doq_framing_and_message_id_rule(node):
    async def run():
        config = QuicConfiguration(is_client=True, alpn_protocols=["doq"],
                                   server_name="localhost")
        config.load_verify_locations(node.cafile)
        async with connect("127.0.0.1", node.doq_port, configuration=config,
                           create_protocol=DoqClient) as client:
            q = dns.message.make_query(ALIAS_NAME, "NAPTR")
            q.id = 0
            data = await client.ask(q.to_wire())
            assert int.from_bytes(data[:2], "big") == len(data) - 2
            r = dns.message.from_wire(data[2:])
            assert r.id == 0
            assert naptr_urls(r) == ["https://factory.example/JXDY2106023"]
            # A non-zero message ID is a protocol error: the server closes
            # the connection with DOQ_PROTOCOL_ERROR (0x2).
            q.id = 7
            sid = client._quic.get_next_available_stream_id()
            wire = q.to_wire()
            client._quic.send_stream_data(sid, len(wire).to_bytes(2, "big") + wire,
                                          end_stream=True)
            client.transmit()
            return await asyncio.wait_for(client.closed, WAIT)

    assert asyncio.run(asyncio.wait_for(run(), 2 * WAIT)) == 0x2


def test_doq_rejects_other_alpn(node):
    async def run():
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"],
                                   server_name="localhost")
        config.load_verify_locations(node.cafile)
        try:
            async with connect("127.0.0.1", node.doq_port, configuration=config,
                               wait_connected=True):
                return "connected"
        except ConnectionError:
            return "refused"

    assert asyncio.run(asyncio.wait_for(run(), WAIT)) == "refused"


def test_sighup_reloads_the_doq_certificate(tmp_path):
    """SIGHUP makes new DNS-over-QUIC connections use the certificate now in
    the files; a broken file keeps the last good one."""
    import signal
    import time

    data = str(tmp_path / "data")
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    subprocess.run([IDRES, "import", "--data-dir", data, str(records)], check=True, timeout=60,
                   capture_output=True)
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    old_dir.mkdir()
    new_dir.mkdir()
    old_cert, old_key = make_certificate(str(old_dir))
    new_cert, new_key = make_certificate(str(new_dir))
    live_cert, live_key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    shutil.copy(old_cert, live_cert)
    shutil.copy(old_key, live_key)
    config = tmp_path / "idres.toml"
    config.write_text(f'[dns]\nzone = "{ZONE}"\ncert = "{live_cert}"\nkey = "{live_key}"\n')
    proc = subprocess.Popen(
        [IDRES, "serve", "--config", str(config), "--data-dir", data,
         "--handle-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0",
         "--doq-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()

    def ask(cafile):
        q = dns.message.make_query(OID_NAME, "NAPTR")
        return dns.query.quic(q, "127.0.0.1", port=port, timeout=5, verify=cafile,
                              server_hostname="localhost")

    def verifies(cafile):
        try:
            return ask(cafile).rcode() == dns.rcode.NOERROR
        except Exception:  # a certificate the client does not trust
            return False

    def until(cond, what):
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.2)
        raise AssertionError(f"not within {WAIT} s: {what}")

    try:
        port = None
        while port is None:
            m = re.match(r"listening doq 127\.0\.0\.1:(\d+)", lines.get(timeout=WAIT))
            if m:
                port = int(m.group(1))
        assert verifies(old_cert) and not verifies(new_cert)
        shutil.copy(new_cert, live_cert)
        shutil.copy(new_key, live_key)
        proc.send_signal(signal.SIGHUP)
        until(lambda: verifies(new_cert), "the new certificate is served")
        assert not verifies(old_cert)
        with open(live_cert, "w") as f:
            f.write("not a certificate\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert proc.poll() is None, "a bad certificate file does not stop the node"
        assert verifies(new_cert), "the last good certificate stays in force"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=WAIT)

"""More of the Handle face against the real idres binary: the Java admin
path through a Diffie-Hellman session, VERIFY_RESPONSE, homing prefixes,
LOGIN_ID_SYSTEM outside TCP, and the privacy of searches and listings
(HTTP reverse lookup and listing, LIST_HANDLES, gRPC Search).

The clients are independent of idres: tests/python/hdl_native.py for the
native protocol (with the helpers of test_native_admin.py), urllib for
HTTP, and for gRPC a grpcio client generated from proto/ at test time
(test_grpc.py's fixtures). Nodes run on loopback ports they pick
themselves, in temporary directories; every wait is bounded.

What is covered:

1. Handle.Net's default admin path: GET_SITE_INFO for the node key, a
   certified SESSION_SETUP (mode 4, Diffie-Hellman) whose reply is
   digested, signed by the node key and carries a DH key in the client's
   group, then create / modify / delete inside the session (HS_MAC
   requests, each challenged and answered), every reply verified; a node
   without a key refuses SESSION_SETUP unsigned; other key exchange modes
   are OPERATION_NOT_SUPPORTED;
2. VERIFY_RESPONSE (201) with the digest in the int4-length form Java
   sends and in the type-prefixed form: valid, invalid, unknown identity;
3. HOME_NA / UNHOME_NA / LIST_HOMED_NAS: refused to a prefix
   administrator, judged on the parent prefix record: an administrator of
   0.NA/0.NA (made with `idres init-prefix --prefix 0.NA`) homes the
   top-level prefix 88, and then 88.119 below it; a homed record carries
   the node's own HS_SITE and an HS_ADMIN naming the caller;
4. LOGIN_ID_SYSTEM over UDP and HTTP `POST /`: OPERATION_NOT_SUPPORTED;
5. a private EMAIL value (written by import, HTTP PUT and natively) is
   found by no reverse lookup, anonymous or not; LIST_HANDLES carries names
   only; no cursor of /hrls leaks it or a handle name, and paged walks of
   /hrls and /api/handles?prefix= return every match exactly once;
6. an HS_SECKEY and a private EMAIL registered over gRPC by a secondary
   node are never served anonymously over UDP, TCP or HTTP, nor to another
   node, nor found by gRPC Search, whose page tokens do not carry them;
   the owner and operators get the HS_SECKEY only sealed.
"""

import base64
import binascii
import hashlib
import json
import os
import queue
import re
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

import hdl_native as h
from idres_http_node import ADMIN, IDRES, PREFIX, SECRET, _retrying, basic, run_idres, start_node
from test_grpc import CREDIT_CODE, channel, pb  # noqa: F401 - pb is a fixture used here
from test_native_admin import (ADMIN_HANDLE, ADMIN_INDEX, PREFIX_RECORD, TIMEOUT, Client, KeyedNode,
                               admin_auth, assert_absent, assert_challenged_ok, check_signed, contents,
                               post_message, resolved, site_key, text)

WAIT = 30  # seconds: a node starting, a gRPC call


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def http(url, method="GET", body=None, headers=None):
    """(status, headers, body bytes) of an HTTP request; errors are statuses too."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def hrls(base, params, auth=None):
    """GET /hrls/handles?params: (status, headers, decoded JSON or raw body)."""
    status, headers, body = http(f"{base}/hrls/handles?{urllib.parse.urlencode(params)}",
                                 headers={"Authorization": auth} if auth else None)
    try:
        doc = json.loads(body)
    except ValueError:
        doc = body
    return status, headers, doc, body


def b64_cores(data):
    """The base64 text (standard and URL-safe, unpadded) that `data` leaves
    wherever it sits in a longer encoded string: one per alignment."""
    out = set()
    for a in range(3):
        enc = base64.b64encode(b"\0" * a + data)
        start = 4 if a else 0
        end = len(enc) - (4 if (a + len(data)) % 3 else 0)
        core = enc[start:end]
        if len(core) >= 8:
            out.add(core)
            out.add(core.translate(bytes.maketrans(b"+/", b"-_")))
    return out


def encodings(clear):
    """`clear` as it could appear: as is, hex (both cases), base64 (both alphabets, any alignment)."""
    return {clear, clear.hex().encode(), clear.hex().upper().encode()} | b64_cores(clear)


def peel(token, depth=3):
    """What a token may decode to (base64 of either alphabet, hex), a few layers deep."""
    found, todo = [], [token.encode() if isinstance(token, str) else token]
    for _ in range(depth):
        nxt = []
        for t in todo:
            found.append(t)
            for part in re.split(rb"[^A-Za-z0-9+/=_-]+", t):
                if len(part) < 8:
                    continue
                stripped = part.rstrip(b"=")
                for alt in (stripped, stripped.translate(bytes.maketrans(b"-_", b"+/"))):
                    try:
                        nxt.append(base64.b64decode(alt + b"=" * (-len(alt) % 4), validate=True))
                    except (binascii.Error, ValueError):
                        pass
                if re.fullmatch(rb"[0-9a-fA-F]+", part) and len(part) % 2 == 0:
                    nxt.append(bytes.fromhex(part.decode()))
        todo = nxt
    return found + todo


def token_leaks(token, private, handles):
    """What of the private values (any encoding) or of the handle names (hex) a token carries."""
    data = token.encode() if isinstance(token, str) else token
    out = []
    for clear in private:
        out += [f for f in encodings(clear) if f in data]
        out += [b"decoded:" + clear for d in peel(data) if clear in d]
    lower = data.lower()
    out += [b"hex:" + n.encode() for n in handles if n.encode().hex().encode() in lower]
    return out


def assert_signed(kn, key, msg):
    """msg carries a valid HS_SIGNED credential by the node key (test_native_admin's
    check, which also alters the body, for messages with a body of some length)."""
    if len(msg.header_and_body()) > 31:
        check_signed(kn, key, msg)
        return
    assert msg.flags & h.FLAG_CERT, "a certified reply keeps the certify flag"
    cred = h.Credential.decode(msg.credential)
    assert (cred.sig_type, cred.hash_alg) == (h.CRED_SIGNED, b"SHA-256"), cred
    assert h.verify_message(msg, key), "the reply's signature does not verify with the HS_SITE key"
    tampered = h.Message.decode(msg.encode())
    tampered.request_id ^= 1
    assert not h.verify_message(tampered, key)


def reply_leaks(data, private):
    """What of the private values (clear, hex, base64) a reply carries."""
    return [f for clear in private for f in encodings(clear) if f in data]


# ---------------------------------------------------------------------------
# Nodes
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A node without a key and without a 0.NA/0.NA record."""
    n = start_node(str(tmp_path_factory.mktemp("plain")))
    yield n
    n.stop()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A node with an RSA node key (idres keygen)."""
    d = tmp_path_factory.mktemp("keyed-rsa")
    key, pub = d / "node.key", d / "node.pub.pem"
    run_idres("keygen", "--algorithm", "rsa", "--out", key, "--public-out", pub)
    n = start_node(str(d), node_key=key)
    yield KeyedNode(n, "rsa", pub.read_bytes(), "")
    n.stop()


# ---------------------------------------------------------------------------
# 1. SESSION_SETUP (Diffie-Hellman) and admin inside the session
# ---------------------------------------------------------------------------

def test_java_default_admin_path_through_a_dh_session(keyed):
    kn = keyed
    key = site_key(kn)
    # as the Java tools: each message on its own connection
    c = Client(kn.node, "tcp", auth=admin_auth(), verify=True, new_connection_for_answer=True)
    si = c.get_site_info()
    assert si.ok and c.server_key is not None, si
    assert c.server_key.public_numbers() == key.public_numbers(), "GET_SITE_INFO gave another key"

    r = c.session_setup_dh()  # verify=True: raises unless digested and signed by the node key
    setup = c.log[-1][0]
    assert setup.flags & h.FLAG_CERT and setup.flags & h.FLAG_RRDG and setup.session_id == 0
    assert (r.rc, r.opcode) == (h.RC_SUCCESS, h.OC_SESSION_SETUP), f"{r} {r.message!r}"
    assert r.msg.flags & h.FLAG_RRDG and h.check_reply_digest(setup, r.msg), "SESSION_SETUP reply digest"
    assert_signed(kn, key, r.msg)
    assert r.session_mode == h.KEY_EXCHANGE_DH, r.session_mode
    rd = h.Reader(r.session_data)
    cipher = rd.u32()
    assert cipher in (h.CIPHER_DES, h.CIPHER_DESEDE, h.CIPHER_AES), cipher
    peer = h.parse_pubkey_data(rd.rest())
    assert isinstance(peer, tuple) and peer[0] == "DH", f"no DH_PUB_KEY in the reply: {peer!r}"
    _, y, p, g = peer
    assert (p, g) == (h.DH_P_1024, h.DH_G), "the server's DH key is not in the client's group"
    assert 1 < y < p - 1
    sid = r.msg.session_id
    assert sid != 0, "the reply must name the new session"
    assert c.session is not None and c.session.session_id == sid

    handle = f"{PREFIX}/DH-SESSION"
    counters = []

    def check_in_session(reply, opcode):
        (request, challenge), (answer, finals) = c.log[-2], c.log[-1]
        assert request.session_id == sid, "the admin request must go in the session"
        cred = h.Credential.decode(request.credential)
        assert cred.sig_type == h.CRED_MAC and h.verify_message_mac(request, c.session.key)
        counters.append(cred.counter)
        assert answer.credential == b"", "Java's answer carries no credential"
        assert_challenged_ok(c, reply, opcode)
        assert_signed(kn, key, challenge[0])
        for m in finals:
            assert_signed(kn, key, m)

    r = c.create_handle(handle, [text(1, "URL", "https://example.cn/dh"), text(2, "DESC", "in a session")],
                        certify=True)
    check_in_session(r, h.OC_CREATE_HANDLE)
    assert r.handle == handle
    assert resolved(kn.node, handle) == {1: ("URL", b"https://example.cn/dh"), 2: ("DESC", b"in a session")}

    r = c.modify_values(handle, [text(2, "DESC", "modified in a session")], certify=True)
    check_in_session(r, h.OC_MODIFY_VALUE)
    assert resolved(kn.node, handle, "udp") == {1: ("URL", b"https://example.cn/dh"),
                                               2: ("DESC", b"modified in a session")}

    r = c.delete_handle(handle, certify=True)
    check_in_session(r, h.OC_DELETE_HANDLE)
    assert_absent(kn.node, handle)
    assert counters == sorted(set(counters)) and counters[0] >= 1, f"session counters {counters}"


@pytest.mark.parametrize("transport", ["tcp", "udp", "http"])
def test_session_setup_refused_by_a_node_without_key(plain, transport):
    c = Client(plain, transport, auth=admin_auth())
    r = c.session_setup_dh()
    assert r.rc not in (h.RC_SUCCESS, h.RC_AUTHENTICATION_NEEDED) and r.rc >= h.RC_ERROR, \
        f"SESSION_SETUP to a node without a key: expected an error, got {r} {r.message!r}"
    assert r.opcode == h.OC_SESSION_SETUP
    assert r.msg.credential == b"", "no key, no signature"
    assert not r.msg.flags & h.FLAG_CERT, "the refusal must not claim to be certified"
    assert r.session_mode is None and c.session is None


@pytest.mark.parametrize("mode", [h.KEY_EXCHANGE_CIPHER_CLIENT, h.KEY_EXCHANGE_CIPHER_SERVER,
                                  h.KEY_EXCHANGE_CIPHER_HDL])
def test_session_setup_other_key_exchange_is_not_supported(keyed, mode):
    kn = keyed
    key = site_key(kn)
    c = Client(kn.node, "tcp", server_key=key, verify=True)
    client_key = h.rsa_pubkey_data(rsa.generate_private_key(65537, 2048)) if mode == 1 else None
    body = h.body_session_setup(mode, ADMIN_HANDLE, ADMIN_INDEX, public_key=client_key,
                                exchange_handle=ADMIN_HANDLE, exchange_index=ADMIN_INDEX)
    r = c.request(h.OC_SESSION_SETUP, body, certify=True, rrdg=True, authenticate=False, session_id=0)
    assert (r.rc, r.opcode) == (h.RC_OPERATION_NOT_SUPPORTED, h.OC_SESSION_SETUP), \
        f"SESSION_SETUP mode {mode}: expected rc 5, got {r} {r.message!r}"
    assert_signed(kn, key, r.msg)  # certified request: the refusal is signed too
    assert r.session_mode is None


# ---------------------------------------------------------------------------
# 2. VERIFY_RESPONSE
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_verify_response(keyed, transport):
    kn = keyed
    key = site_key(kn)
    c = Client(kn.node, transport, server_key=key, verify=True)
    nonce = os.urandom(h.NONCE_SIZE)
    digest = hashlib.sha256(b"the request another server was asked " + nonce).digest()
    other_digest = hashlib.sha256(b"another request").digest()
    good = h.seckey_answer_pbkdf2(SECRET.encode(), nonce, digest)
    wrong = h.seckey_answer_pbkdf2(b"not the secret", nonce, digest)
    assert h.verify_seckey_answer(SECRET.encode(), nonce, digest, good)

    def ask(handle, index, answer, typed, d=digest):
        body = h.body_verify_response(handle, index, nonce, d, answer,
                                      digest_type=h.HASH_SHA256 if typed else None)
        if not typed:
            assert body[len(h.sstr(handle)) + 4 + len(h.bstr(nonce)):][:4] == h.u32(len(d)), "int4-length form"
        r = c.request(h.OC_VERIFY_RESPONSE, body, certify=True, rrdg=True, authenticate=False)
        assert h.check_reply_digest(c.log[-1][0], r.msg), "VERIFY_RESPONSE reply digest"
        assert_signed(kn, key, r.msg)
        return r

    for typed in (False, True):
        form = "type-prefixed" if typed else "int4-length"
        for index in (ADMIN_INDEX, 0):
            r = ask(ADMIN_HANDLE, index, good, typed)
            assert (r.rc, r.opcode, r.valid) == (h.RC_SUCCESS, h.OC_VERIFY_RESPONSE, True), \
                f"{form}, index {index}, right answer: {r} {r.message!r} valid={r.valid}"
            assert len(r.msg.body) == 1 + 32 + 1, "digest, then one byte"
        r = ask(ADMIN_HANDLE, ADMIN_INDEX, h.seckey_answer_sha1(SECRET.encode(), nonce, digest), typed)
        assert (r.rc, r.valid) == (h.RC_SUCCESS, True), f"{form}, SHA-1 answer: {r} valid={r.valid}"
        r = ask(ADMIN_HANDLE, ADMIN_INDEX, wrong, typed)
        assert (r.rc, r.valid) == (h.RC_SUCCESS, False), f"{form}, wrong secret: {r} {r.message!r} valid={r.valid}"
        r = ask(ADMIN_HANDLE, ADMIN_INDEX, good, typed, d=other_digest)
        assert (r.rc, r.valid) == (h.RC_SUCCESS, False), f"{form}, answer for another digest: {r} valid={r.valid}"
        r = ask(f"{PREFIX}/NO-SUCH-IDENTITY", ADMIN_INDEX, good, typed)
        assert r.rc == h.RC_INVALID_ADMIN, f"{form}, unknown identity: expected 400, got {r} {r.message!r}"
    # the library's own call (Java's form)
    r = c.verify_response(ADMIN_HANDLE, ADMIN_INDEX, nonce, digest, good)
    assert (r.rc, r.valid) == (h.RC_SUCCESS, True), r


# ---------------------------------------------------------------------------
# 3. HOME_NA, UNHOME_NA, LIST_HOMED_NAS
# ---------------------------------------------------------------------------

OPERATOR_HANDLE = f"{PREFIX}/OPERATOR"
OPERATOR_INDEX = 300
OPERATOR_SECRET = "the operator's own secret " + secrets.token_hex(8)
HOMED = "88.119"


def operator_auth():
    return h.SecretKeyAuth(OPERATOR_HANDLE, OPERATOR_INDEX, OPERATOR_SECRET)


@pytest.fixture(scope="module")
def operator_node(tmp_path_factory):
    """A node whose 0.NA/0.NA (from `idres init-prefix --prefix 0.NA`, on the
    stopped node) makes 300:88.118.8/OPERATOR its administrator."""
    d = str(tmp_path_factory.mktemp("operator"))
    first = start_node(d)
    first.stop()
    secret_file = os.path.join(d, "operator.secret")
    with open(secret_file, "w") as f:
        f.write(OPERATOR_SECRET + "\n")
    run_idres("init-prefix", "--data-dir", first.data_dir, "--prefix", "0.NA",
              "--admin", f"{OPERATOR_INDEX}:{OPERATOR_HANDLE}", "--secret-file", secret_file)
    n = start_node(d)
    yield n
    n.stop()


@pytest.mark.parametrize("target", ["90", "88.120"], ids=["top-level", "derived"])
@pytest.mark.parametrize("which", ["plain", "operator_node"])
def test_prefix_administrator_may_not_home_unhome_or_list(request, which, target):
    """HOME_NA is judged on the parent prefix record (0.NA/0.NA above the
    top-level prefix 90, 0.NA/88 above 88.120), which does not name ADMIN."""
    n = request.getfixturevalue(which)
    assert_absent(n, f"0.NA/{target}")
    c = Client(n, "tcp", auth=admin_auth())
    r = c.home_prefix(target)
    assert (r.rc, r.opcode) == (h.RC_INSUFFICIENT_PERMISSIONS, h.OC_HOME_NA), \
        f"HOME_NA 0.NA/{target} as {ADMIN}: expected 401, got {r} {r.message!r}"
    assert [m.opcode for m in c.challenges] == [h.OC_HOME_NA], "the identity is proven before the refusal"
    assert_absent(n, f"0.NA/{target}")
    r = c.list_homed_prefixes()
    assert (r.rc, r.opcode) == (h.RC_INSUFFICIENT_PERMISSIONS, h.OC_LIST_HOMED_NAS), \
        f"LIST_HOMED_NAS as {ADMIN}: expected 401, got {r} {r.message!r}"
    assert not r.handles
    before = resolved(n, PREFIX_RECORD)
    r = c.unhome_prefix(PREFIX)
    assert (r.rc, r.opcode) == (h.RC_INSUFFICIENT_PERMISSIONS, h.OC_UNHOME_NA), \
        f"UNHOME_NA {PREFIX_RECORD} as {ADMIN}: expected 401, got {r} {r.message!r}"
    assert resolved(n, PREFIX_RECORD) == before


def check_homed(n, record, site_bytes):
    """`record` resolves (UDP and TCP) with the node's own HS_SITE and an
    HS_ADMIN naming the operator."""
    for transport in ("tcp", "udp"):
        values = resolved(n, record, transport)
        sites = [d for t, d in values.values() if t == "HS_SITE"]
        assert sites == [site_bytes], f"{record} over {transport}: HS_SITE {sites!r}, node's {site_bytes!r}"
        admins = [h.decode_hs_admin(d) for t, d in values.values() if t == "HS_ADMIN"]
        mine = [a for a in admins if (a[1], a[2]) == (OPERATOR_HANDLE, OPERATOR_INDEX)]
        assert mine, f"{record}: no HS_ADMIN names the caller: {admins}"
        bits = h.ADM_ADD_HANDLE | h.ADM_DELETE_HANDLE | h.ADM_ADD_PREFIX | h.ADM_DELETE_PREFIX | h.ADM_LIST_HANDLES
        assert mine[0][0] & bits == bits, f"{record}: HS_ADMIN bits {mine[0][0]:#x}"


def test_operator_homes_lists_uses_and_unhomes_prefixes(operator_node):
    """The operator of 0.NA/0.NA homes the top-level prefix 88; 0.NA/88 then
    names it, so it homes 88.119 under it, creates a handle there, lists
    both, and unhomes them again."""
    n = operator_node
    top, record = "0.NA/88", f"0.NA/{HOMED}"
    si = Client(n, "tcp").get_site_info()
    assert si.ok and si.site and not si.msg.flags & h.FLAG_RRDG, si
    site_bytes = si.msg.body
    assert_absent(n, top)
    assert_absent(n, record)

    c = Client(n, "tcp", auth=operator_auth())
    # the parent of 88.119 is 88, and 0.NA/88 does not exist yet
    r = c.home_prefix(HOMED)
    assert r.rc == h.RC_INSUFFICIENT_PERMISSIONS, f"HOME_NA {record} before {top}: {r} {r.message!r}"
    assert_absent(n, record)

    r = c.home_prefix("88")
    assert_challenged_ok(c, r, h.OC_HOME_NA)
    assert c.log[-2][0].body == h.sstr(top)
    check_homed(n, top, site_bytes)
    r = c.home_prefix(HOMED)
    assert_challenged_ok(c, r, h.OC_HOME_NA)
    assert c.log[-2][0].body == h.sstr(record)
    check_homed(n, record, site_bytes)

    r = c.list_homed_prefixes()
    assert_challenged_ok(c, r, h.OC_LIST_HOMED_NAS)
    assert {top, record, PREFIX_RECORD} <= set(r.handles), r.handles
    assert len(r.handles) == len(set(r.handles)), r.handles

    child = f"{HOMED}/HOMED-1"
    r = c.create_handle(child, [text(1, "URL", "https://example.cn/homed")])
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    assert resolved(n, child) == {1: ("URL", b"https://example.cn/homed")}
    stranger = Client(n, "tcp", auth=admin_auth())
    r = stranger.create_handle(f"{HOMED}/BY-ADMIN", [text(1, "URL", "https://example.cn/no")])
    assert r.rc == h.RC_INSUFFICIENT_PERMISSIONS, f"{ADMIN} under {HOMED}: expected 401, got {r} {r.message!r}"
    assert_absent(n, f"{HOMED}/BY-ADMIN")
    r = stranger.unhome_prefix(HOMED)
    assert r.rc == h.RC_INSUFFICIENT_PERMISSIONS, f"UNHOME_NA {record} as {ADMIN}: {r} {r.message!r}"
    check_homed(n, record, site_bytes)

    r = c.unhome_prefix(HOMED)
    assert_challenged_ok(c, r, h.OC_UNHOME_NA)
    assert_absent(n, record)
    r = c.list_homed_prefixes()
    assert_challenged_ok(c, r, h.OC_LIST_HOMED_NAS)
    assert record not in r.handles and {top, PREFIX_RECORD} <= set(r.handles), r.handles
    r = c.unhome_prefix("88")
    assert_challenged_ok(c, r, h.OC_UNHOME_NA)
    assert_absent(n, top)
    r = c.list_homed_prefixes()
    assert r.ok and top not in r.handles and PREFIX_RECORD in r.handles, r.handles


# ---------------------------------------------------------------------------
# 4. LOGIN_ID_SYSTEM only over TCP
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["udp", "http"])
def test_login_id_system_outside_tcp_is_not_supported(plain, transport):
    c = Client(plain, transport, auth=admin_auth())
    flags = h.DEFAULT_FLAGS & ~(h.FLAG_PUBL | h.FLAG_CACR)
    req = c.make_request(h.OC_LOGIN_ID_SYSTEM, h.body_login(ADMIN_HANDLE, ADMIN_INDEX), flags, rrdg=True)
    (reply,) = c.exchange(req)
    r = h.Reply(reply)
    assert (r.rc, r.opcode) == (h.RC_OPERATION_NOT_SUPPORTED, h.OC_LOGIN_ID_SYSTEM), \
        f"LOGIN_ID_SYSTEM over {transport}: expected rc 5, got {r} {r.message!r}"
    assert r.challenge is None and reply.request_id == req.request_id
    # over TCP the same identity logs in
    t = Client(plain, "tcp", auth=admin_auth())
    assert t.login_id_system().rc == h.RC_SUCCESS


# ---------------------------------------------------------------------------
# 5. Private values in searches and listings
# ---------------------------------------------------------------------------

WRITERS = ("import", "http", "native")
PUBLIC_COUNT = 30
PAGE = 7


@dataclass
class PrivateReads:
    node: object
    private: dict  # handle -> private EMAIL value (bytes)
    urls: dict  # handle -> its public URL
    public: dict = field(default_factory=dict)  # handle -> public EMAIL value

    @property
    def private_values(self):
        return list(self.private.values())

    @property
    def all_handles(self):
        return list(self.private) + list(self.public)


@pytest.fixture(scope="module")
def reads(tmp_path_factory):
    private = {f"{PREFIX}/PRIV-{w.upper()}": f"secret-person-{w}-{secrets.token_hex(6)}@example.cn".encode()
               for w in WRITERS}
    urls = {hd: f"https://example.cn/private-{hd.rsplit('-', 1)[1].lower()}" for hd in private}
    public = {f"{PREFIX}/PUB-{i:02}": f"q{i}@example.cn".encode() for i in range(PUBLIC_COUNT)}
    imported = f"{PREFIX}/PRIV-IMPORT"
    records = [{"handle": imported, "values": [
        {"index": 1, "type": "URL", "data": {"format": "string", "value": urls[imported]}},
        {"index": 2, "type": "EMAIL", "permissions": "1100",
         "data": {"format": "string", "value": private[imported].decode()}}]}]
    records += [{"handle": hd, "values": [
        {"index": 1, "type": "URL", "data": {"format": "string", "value": f"https://example.cn/{hd}"}},
        {"index": 2, "type": "EMAIL", "data": {"format": "string", "value": v.decode()}}]}
        for hd, v in public.items()]
    n = start_node(str(tmp_path_factory.mktemp("reads")), records=records)
    try:
        via_http = f"{PREFIX}/PRIV-HTTP"
        status, _, body = http(f"{n.base}/api/handles/{via_http}?overwrite=false", "PUT",
                               {"values": [{"index": 1, "type": "URL", "data": urls[via_http]},
                                           {"index": 2, "type": "EMAIL", "permissions": "1100",
                                            "data": {"format": "string", "value": private[via_http].decode()}}]},
                               {"Authorization": basic()})
        assert status == 201, body
        native = f"{PREFIX}/PRIV-NATIVE"
        c = Client(n, "tcp", auth=admin_auth())
        r = c.create_handle(native, [text(1, "URL", urls[native]),
                                     h.HandleValue(2, "EMAIL", private[native], perms=0x0C)])
        assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
        yield PrivateReads(n, private, urls, public)
    finally:
        n.stop()


def test_private_values_are_kept_and_hidden(reads):
    n = reads.node
    for handle, value in reads.private.items():
        for transport in ("udp", "tcp"):
            r = Client(n, transport).resolve(handle)
            assert r.ok and contents(r) == {1: ("URL", reads.urls[handle].encode())}, (handle, transport, r)
            assert reply_leaks(r.msg.encode(), [value]) == []
        status, _, body = http(f"{n.base}/api/handles/{handle}")
        assert status == 200 and [v["index"] for v in json.loads(body)["values"]] == [1], body
        assert reply_leaks(body, [value]) == []
        # the administrator reads it: the value is there, admin-only
        status, _, body = http(f"{n.base}/api/handles/{handle}?publicOnly=false", headers={"Authorization": basic()})
        assert status == 200, body
        (email,) = [v for v in json.loads(body)["values"] if v["type"] == "EMAIL"]
        assert email["data"]["value"].encode() == value and email.get("permissions") == "1100", email


@pytest.mark.parametrize("who", ["anonymous", "admin"])
def test_reverse_lookup_never_finds_a_private_value(reads, who):
    n, auth = reads.node, (basic() if who == "admin" else None)
    for params in ({"EMAIL": "*secret-person*"}, {"EMAIL": "*secret-person*", "retrieverecords": "true"},
                   {"EMAIL": "secret-person-*"}, {"EMAIL": "*"}):
        status, headers, doc, body = hrls(n.base, params, auth)
        if params == {"EMAIL": "*"}:  # every EMAIL: only the public ones
            assert status == 200 and sorted(doc) == sorted(reads.public), (params, doc)
        else:
            assert (status, doc) == (200, []), f"/hrls {params} as {who}: {status} {doc}"
        assert reply_leaks(body, reads.private_values) == [], (params, body)
        assert reply_leaks(str(headers).encode(), reads.private_values) == []
    for handle, value in reads.private.items():
        status, _, doc, _ = hrls(n.base, {"EMAIL": value.decode()}, auth)
        assert (status, doc) == (200, []), f"/hrls exact private value as {who}: {status} {doc}"
        status, _, doc, body = hrls(n.base, {"URL": reads.urls[handle]}, auth)
        assert (status, doc) == (200, [handle]), f"/hrls URL of {handle} as {who}: {status} {doc}"
        if who == "anonymous":
            status, _, doc, body = hrls(n.base, {"URL": reads.urls[handle], "retrieverecords": "true"})
            assert status == 200 and [d["handle"] for d in doc] == [handle], doc
            assert [v["type"] for v in doc[0]["values"]] == ["URL"], doc
            assert reply_leaks(body, reads.private_values) == []
            # a second criterion on the private value does not hold for someone who may not read it
            status, _, doc, _ = hrls(n.base, {"URL": reads.urls[handle], "EMAIL": "*secret-person*"})
            assert (status, doc) == (200, []), doc


def test_list_handles_carries_names_only(reads):
    c = Client(reads.node, "tcp", auth=admin_auth())
    r = c.list_handles(PREFIX)
    assert_challenged_ok(c, r, h.OC_LIST_HANDLES)
    assert set(reads.all_handles) <= set(r.handles), sorted(set(reads.all_handles) - set(r.handles))
    for part in r.parts:
        assert part.ok and part.opcode == h.OC_LIST_HANDLES
        names = h.Reader(part.msg.body)
        n = names.u32()
        listed = [names.sstr() for _ in range(n)]
        assert names.remaining() == 0, "LIST_HANDLES carries something after the names"
        assert all(x.startswith(f"{PREFIX}/") for x in listed), listed
        assert reply_leaks(part.msg.encode(), reads.private_values) == []


def walk_hrls(base, params, auth, mode):
    """Every page of a reverse lookup: by page number or by cursor. Returns
    (pages of handles, cursors seen, Link headers seen)."""
    pages, cursors, links = [], [], []
    cursor = None
    for number in range(PUBLIC_COUNT // PAGE + 3):
        q = dict(params, limit=PAGE)
        if mode == "page":
            q["page"] = number
        elif cursor is not None:
            q["cursor"] = cursor
        status, headers, doc, body = hrls(base, q, auth)
        assert status == 200 and isinstance(doc, list), (q, status, body)
        cursor = headers.get("X-Next-Cursor")
        link = headers.get("Link")
        if cursor:
            cursors.append(cursor)
            assert link and 'rel="next"' in link, link
            target = urllib.parse.parse_qs(urllib.parse.urlsplit(link.split(">")[0].lstrip("<")).query)
            assert target.get("cursor") == [cursor], (link, cursor)
        if link:
            links.append(link)
        if not doc:
            break
        pages.append(doc)
        if mode == "cursor" and not cursor:
            break
    else:
        raise AssertionError(f"/hrls {params} by {mode}: more pages than there are matches")
    return pages, cursors, links


@pytest.mark.parametrize("mode", ["page", "cursor"])
@pytest.mark.parametrize("who", ["anonymous", "admin"])
def test_reverse_lookup_pages_and_cursors_leak_nothing(reads, who, mode):
    auth = basic() if who == "admin" else None
    pages, cursors, links = walk_hrls(reads.node.base, {"EMAIL": "*@example.cn"}, auth, mode)
    found = [hd for p in pages for hd in p]
    assert len(found) == len(set(found)), f"a handle on two pages: {found}"
    assert set(found) == set(reads.public), sorted(set(found) ^ set(reads.public))
    assert len(pages) >= 2 and all(len(p) == PAGE for p in pages[:-1]), [len(p) for p in pages]
    if mode == "cursor":
        assert len(cursors) >= len(pages) - 1, "every full page names the next"
    for token in cursors + links:
        assert token_leaks(token, reads.private_values, reads.all_handles) == [], token
    # the private handles' own values are public here (URL); their cursors leak nothing either
    pages, cursors, links = walk_hrls(reads.node.base, {"URL": "https://example.cn/*"}, auth, mode)
    found = [hd for p in pages for hd in p]
    assert set(reads.private) <= set(found) and len(found) == len(set(found)), found
    for token in cursors + links:
        assert token_leaks(token, reads.private_values, reads.all_handles) == [], token


def test_api_listing_pages(reads):
    base = reads.node.base
    status, _, _ = http(f"{base}/api/handles?prefix={PREFIX}&page=0&pageSize={PAGE}")
    assert status in (401, 403), f"anonymous listing of {PREFIX}: {status}"
    seen, total = [], None
    for page in range(200 // PAGE):
        status, headers, body = http(f"{base}/api/handles?prefix={PREFIX}&page={page}&pageSize={PAGE}",
                                     headers={"Authorization": basic()})
        assert status == 200, body
        doc = json.loads(body)
        total = doc["totalCount"] if total is None else total
        assert doc["totalCount"] == total and doc["page"] == page and doc["pageSize"] == PAGE, doc
        assert reply_leaks(body, reads.private_values) == [], body
        for k, v in headers.items():
            if k.lower() not in ("date", "content-length", "content-type"):
                assert token_leaks(v, reads.private_values, reads.all_handles) == [], (k, v)
        if not doc["handles"]:
            break
        assert len(doc["handles"]) <= PAGE
        seen += doc["handles"]
    else:
        raise AssertionError("the listing did not end")
    assert len(seen) == len(set(seen)) == total, (len(seen), len(set(seen)), total)
    assert set(reads.all_handles) <= set(seen)


# ---------------------------------------------------------------------------
# 6. gRPC registrations: HS_SECKEY and private values
# ---------------------------------------------------------------------------

GRPC_PREFIX = "88.200.1"
GRPC_PUBLIC = 25
SEALED_TAG = b"idres-sealed-v1$"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """test_grpc's certificates (`idres cert`), made with the retrying runner."""
    d = tmp_path_factory.mktemp("pki")
    run_idres("cert", "ca", "--dir", d)
    for kind, name in (("server", "top"), ("operator", "alice"), ("node", "node-py"), ("node", "node-other")):
        run_idres("cert", "issue", "--dir", d, "--kind", kind, "--name", name)
    return d


class GrpcTop:
    """`idres serve` with gRPC (mutual TLS), Handle and HTTP faces."""

    def __init__(self, pki_dir, directory):
        conf = directory / "top.toml"
        conf.write_text("[grpc]\n"
                        f'cert = "{pki_dir / "top.pem"}"\nkey = "{pki_dir / "top-key.pem"}"\n'
                        f'client_ca = "{pki_dir / "ca.pem"}"\n')
        cmd = [IDRES, "serve", "--config", str(conf), "--data-dir", str(directory / "data"),
               "--handle-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        self.proc = _retrying(lambda: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                                       text=True, env={**os.environ, "IDRES_LOG": "warn"}))
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        self.faces = {}
        deadline = time.monotonic() + WAIT
        while not {"grpc", "handle", "http"} <= self.faces.keys():
            if time.monotonic() > deadline or (self.proc.poll() is not None and lines.empty()):
                self.stop()
                raise AssertionError(f"the gRPC node did not announce its faces: {self.faces}")
            try:
                m = re.match(r"listening (\w+) (127\.0\.0\.1:\d+)", lines.get(timeout=0.5))
            except queue.Empty:
                continue
            if m:
                self.faces[m.group(1)] = m.group(2)
        self.base = f"http://{self.faces['http']}"

    @property
    def handle_host(self):
        return self.faces["handle"].rsplit(":", 1)[0]

    @property
    def handle_port(self):
        return int(self.faces["handle"].rsplit(":", 1)[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@dataclass
class Escrow:
    top: GrpcTop
    secrets: dict  # handle -> clear HS_SECKEY data
    private: dict  # handle -> private EMAIL value
    public: dict  # handle -> public EMAIL value
    resolvers: dict  # who -> ResolveServiceStub

    @property
    def hidden(self):
        return list(self.secrets.values()) + list(self.private.values())

    @property
    def handles(self):
        return list(self.secrets) + list(self.public)


@pytest.fixture(scope="module")
def escrow(pb, pki, tmp_path_factory):  # noqa: F811 - pytest fixtures
    """node-py files with its Handle address at the top, is approved, gets
    88.200.1 and registers over gRPC: two holders of an HS_SECKEY (one asks
    for public read, one takes the default permissions), one of them with
    a private EMAIL, and 25 handles with public EMAIL values. node-other is
    filed and approved too, with no prefix."""
    top = GrpcTop(pki, tmp_path_factory.mktemp("grpc-top"))
    try:
        node_pb, reg_pb, common = pb["node"], pb["registry"], pb["common"]
        node_ch, op_ch, other_ch = (channel(pki, top.faces, w) for w in ("node-py", "alice", "node-other"))
        ops = pb["node_grpc"].NodeServiceStub(op_ch)
        app = node_pb.FileRequest(
            organisation="示例密钥托管有限公司", credit_code=CREDIT_CODE,
            contact=node_pb.Contact(name="李四", email="ops@example.cn"), industry="C34",
            service_addresses=[common.ServiceAddress(host=top.handle_host, port=top.handle_port)])
        filing = pb["node_grpc"].NodeServiceStub(node_ch).File(app, timeout=WAIT)
        ops.Approve(node_pb.TransitionRequest(id=filing.id, reason="checked"), timeout=WAIT)
        ops.Allocate(node_pb.AllocateRequest(filing_id=filing.id, prefix=GRPC_PREFIX, reason="keys"), timeout=WAIT)
        other = pb["node_grpc"].NodeServiceStub(other_ch).File(app, timeout=WAIT)
        ops.Approve(node_pb.TransitionRequest(id=other.id, reason="checked"), timeout=WAIT)

        holder, default = f"{GRPC_PREFIX}/SECRET-HOLDER", f"{GRPC_PREFIX}/SECRET-DEFAULT"
        sec = {holder: b"grpc-secret-" + secrets.token_hex(12).encode(),
               default: b"grpc-default-" + secrets.token_hex(12).encode()}
        private = {holder: f"secret-person-grpc-{secrets.token_hex(6)}@example.cn".encode()}
        public = {f"{GRPC_PREFIX}/G{i:02}": f"q{i}@example.cn".encode() for i in range(GRPC_PUBLIC)}

        def url(hd):
            return common.HandleValue(index=1, type="URL", data=f"https://example.cn/{hd}".encode())

        ops_list = [
            reg_pb.Operation(operation_id="holder", kind=reg_pb.OPERATION_KIND_CREATE, handle=holder, values=[
                url(holder),
                common.HandleValue(index=2, type="EMAIL", data=private[holder], permissions=0x0C),
                common.HandleValue(index=300, type="HS_SECKEY", data=sec[holder], permissions=0x0E)]),
            reg_pb.Operation(operation_id="default", kind=reg_pb.OPERATION_KIND_CREATE, handle=default, values=[
                url(default), common.HandleValue(index=300, type="HS_SECKEY", data=sec[default])]),
        ] + [reg_pb.Operation(operation_id=f"pub-{hd}", kind=reg_pb.OPERATION_KIND_CREATE, handle=hd, values=[
            url(hd), common.HandleValue(index=2, type="EMAIL", data=v)]) for hd, v in public.items()]
        done = pb["registry_grpc"].RegistryServiceStub(node_ch).RegisterBatch(
            reg_pb.RegisterBatchRequest(operations=ops_list), timeout=WAIT)
        assert [r.code for r in done.results] == [0] * len(ops_list), [(r.code, r.message) for r in done.results]
        resolvers = {w: pb["registry_grpc"].ResolveServiceStub(ch)
                     for w, ch in (("node-py", node_ch), ("alice", op_ch), ("node-other", other_ch))}
        yield Escrow(top, sec, private, public, resolvers)
    finally:
        top.stop()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_grpc_seckey_never_served_over_the_handle_protocol(escrow, transport):
    top = escrow.top
    c = Client(top, transport)
    dnrf = h.DEFAULT_FLAGS | h.FLAG_DNRF
    for handle in escrow.secrets:
        # the prefix is homed at this node's own address: answered from the store
        r = c.resolve(handle)
        assert r.ok and r.value(1) is not None, f"{handle} over {transport}: {r} {r.message!r}"
        for r in (r, c.resolve(handle, flags=dnrf), c.resolve(handle, public_only=False),
                  c.resolve(handle, [300]), c.resolve(handle, [2, 300]), c.resolve(handle, types=["HS_SECKEY"]),
                  c.resolve(handle, types=["EMAIL"])):
            assert r.rc in (h.RC_SUCCESS, h.RC_VALUES_NOT_FOUND), (handle, r)
            assert [v.type for v in r.values if v.type in ("HS_SECKEY", "EMAIL")] == [], \
                f"{handle}: private value served anonymously over {transport}"
            assert reply_leaks(r.msg.encode(), escrow.hidden) == [], f"{handle}: secret material in the reply"


def test_grpc_seckey_never_served_over_http(escrow):
    base = escrow.top.base
    for handle in escrow.secrets:
        status, _, body = http(f"{base}/api/handles/{handle}")
        assert status == 200, body
        doc = json.loads(body)
        assert [v["type"] for v in doc["values"]] == ["URL"], doc
        assert reply_leaks(body, escrow.hidden) == [], body
        for query in ("index=300", "type=HS_SECKEY", "type=EMAIL", "index=2&index=300", "publicOnly=false"):
            status, _, body = http(f"{base}/api/handles/{handle}?{query}")
            assert b"HS_SECKEY" not in body and reply_leaks(body, escrow.hidden) == [], (query, status, body)
        req = h.Message(h.OC_RESOLUTION, body=h.body_resolution(handle, [300], ["HS_SECKEY"]),
                        request_id=h.new_request_id())
        (m,) = post_message(base, req.encode())
        assert not h.Reply(m).values and reply_leaks(m.encode(), escrow.hidden) == []
        status, _, doc, body = hrls(base, {"URL": f"https://example.cn/{handle}", "retrieverecords": "true"})
        assert status == 200 and [d["handle"] for d in doc] == [handle], doc
        assert reply_leaks(body, escrow.hidden) == [] and b"HS_SECKEY" not in body, body


def test_grpc_another_node_does_not_read_private_values(escrow, pb):  # noqa: F811
    reg_pb = pb["registry"]
    for handle in escrow.secrets:
        rec = escrow.resolvers["node-other"].Resolve(reg_pb.ResolveRequest(handle=handle), timeout=WAIT)
        assert [v.type for v in rec.values] == ["URL"], rec
        assert reply_leaks(rec.SerializeToString(), escrow.hidden) == []


@pytest.mark.parametrize("who", ["node-py", "alice"])
def test_grpc_seckey_is_kept_sealed_and_admin_only(escrow, pb, who):  # noqa: F811
    """The owner and the operators read the record, but the HS_SECKEY only
    sealed, without its public-read bit, and never in clear."""
    reg_pb = pb["registry"]
    for handle, secret in escrow.secrets.items():
        rec = escrow.resolvers[who].Resolve(reg_pb.ResolveRequest(handle=handle), timeout=WAIT)
        (key,) = [v for v in rec.values if v.type == "HS_SECKEY"] or [None]
        if key is not None:
            assert key.data.startswith(SEALED_TAG), f"{handle} as {who}: HS_SECKEY data {key.data[:24]!r}"
            assert not key.permissions & h.PERM_PUBLIC_READ, f"{handle}: HS_SECKEY permissions {key.permissions:#x}"
        assert reply_leaks(rec.SerializeToString(), [secret]) == [], f"{handle} as {who}: clear secret"


def grpc_search(pb, stub, value_type, pattern, page_size=5, with_records=False):
    """Every page of a value Search: (handles, page tokens, raw replies)."""
    reg_pb = pb["registry"]
    handles, tokens, raw, token = [], [], [], ""
    for _ in range(GRPC_PUBLIC // page_size + 5):
        page = stub.Search(reg_pb.SearchRequest(value=reg_pb.ValueQuery(type=value_type, pattern=pattern),
                                                page_size=page_size, page_token=token,
                                                with_records=with_records), timeout=WAIT)
        handles += [x.handle for x in page.hits]
        raw.append(page.SerializeToString())
        token = page.next_page_token
        if not token:
            return handles, tokens, raw
        tokens.append(token)
    raise AssertionError(f"Search {value_type}={pattern}: more pages than handles")


@pytest.mark.parametrize("who", ["node-py", "alice", "node-other"])
def test_grpc_search_never_finds_private_values(escrow, pb, who):  # noqa: F811
    stub = escrow.resolvers[who]
    holder_email = next(iter(escrow.private.values())).decode()
    for value_type, pattern in (("EMAIL", "*secret-person*"), ("EMAIL", holder_email), ("HS_SECKEY", "*"),
                                ("HS_SECKEY", "*grpc-*"), ("hs_seckey", "*")):
        handles, tokens, raw = grpc_search(pb, stub, value_type, pattern, with_records=True)
        assert handles == [], f"Search {value_type}={pattern} as {who}: {handles}"
        assert all(reply_leaks(x, escrow.hidden) == [] for x in raw)
    for secret in escrow.secrets.values():
        handles, _, _ = grpc_search(pb, stub, "HS_SECKEY", secret.decode())
        assert handles == [], f"Search by the secret itself as {who}: {handles}"


@pytest.mark.parametrize("who", ["node-py", "alice"])
def test_grpc_search_pages_and_tokens_leak_nothing(escrow, pb, who):  # noqa: F811
    stub = escrow.resolvers[who]
    handles, tokens, raw = grpc_search(pb, stub, "EMAIL", "*@example.cn")
    assert len(handles) == len(set(handles)), f"a handle on two pages: {handles}"
    assert set(handles) == set(escrow.public), sorted(set(handles) ^ set(escrow.public))
    assert len(tokens) >= GRPC_PUBLIC // 5 - 1, tokens
    for token in tokens:
        assert token_leaks(token, escrow.hidden, escrow.handles) == [], token
    handles, tokens, raw = grpc_search(pb, stub, "URL", "https://example.cn/*")
    assert set(escrow.secrets) <= set(handles) and len(handles) == len(set(handles)), handles
    for token in tokens:
        assert token_leaks(token, escrow.hidden, escrow.handles) == [], token


# ---------------------------------------------------------------------------
# 7. Online guessing is bounded; a login lasts as long as its key
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    n = start_node(str(tmp_path_factory.mktemp("strict")),
                   extra_config="[handle]\nmax_auth_failures = 3\nauth_lockout_secs = 600\n")
    yield n
    n.stop()


def test_wrong_answers_lock_that_identity_out_from_that_address(strict):
    handle = f"{PREFIX}/GUESSED"
    for _ in range(3):
        r = Client(strict, "tcp", auth=admin_auth(secret="a wrong guess")).create_handle(
            handle, [text(1, "URL", "https://example.cn/guess")])
        assert r.rc == h.RC_AUTHENTICATION_FAILED, f"{r} {r.message!r}"
    # Now even the right secret is refused unchecked, for this identity here.
    r = Client(strict, "tcp", auth=admin_auth()).create_handle(handle, [text(1, "URL", "https://example.cn/guess")])
    assert r.rc == h.RC_AUTHENTICATION_FAILED and "too many failed attempts" in r.message, f"{r} {r.message!r}"
    r = Client(strict, "udp", auth=admin_auth()).create_handle(handle, [text(1, "URL", "https://example.cn/guess")])
    assert r.rc == h.RC_AUTHENTICATION_FAILED, f"{r} {r.message!r}"
    assert_absent(strict, handle)


@pytest.fixture(scope="module")
def strict_verify(tmp_path_factory):
    n = start_node(str(tmp_path_factory.mktemp("strict-verify")),
                   extra_config="[handle]\nmax_auth_failures = 3\nauth_lockout_secs = 600\n")
    yield n
    n.stop()


def test_verify_response_guesses_count_as_failures(strict_verify):
    """VERIFY_RESPONSE is no way round the lockout: each wrong answer counts."""
    c = Client(strict_verify, "tcp")
    nonce = os.urandom(h.NONCE_SIZE)
    digest = hashlib.sha256(b"a guessed request").digest()

    def ask(secret):
        body = h.body_verify_response(ADMIN_HANDLE, ADMIN_INDEX, nonce, digest,
                                      h.seckey_answer_pbkdf2(secret, nonce, digest))
        return c.request(h.OC_VERIFY_RESPONSE, body, rrdg=True, authenticate=False)

    # Before any failure, the right answer is valid.
    r = ask(SECRET.encode())
    assert (r.rc, r.valid) == (h.RC_SUCCESS, True), f"{r} {r.message!r} valid={r.valid}"
    for _ in range(3):
        r = ask(b"a wrong guess")
        assert (r.rc, r.valid) == (h.RC_SUCCESS, False), f"{r} {r.message!r} valid={r.valid}"
    r = ask(SECRET.encode())
    assert r.rc == h.RC_AUTHENTICATION_FAILED and r.valid is None, f"{r} {r.message!r} valid={r.valid}"


def test_a_login_ends_when_its_key_is_removed(node_with_member):
    node, handle_of_member, secret = node_with_member
    member = h.SecretKeyAuth(handle_of_member, 300, secret)
    c = Client(node, "tcp", auth=member)
    assert c.login_id_system().rc == h.RC_SUCCESS
    c.auth = None
    target = f"{PREFIX}/BY-MEMBER"
    r = c.create_handle(target, [text(1, "URL", "https://example.cn/member")])
    assert r.rc == h.RC_SUCCESS, f"{r} {r.message!r}"
    # An administrator takes the member's key away.
    admin = Client(node, "tcp", auth=admin_auth())
    r = admin.remove_values(handle_of_member, [300])
    assert r.rc == h.RC_SUCCESS, f"{r} {r.message!r}"
    # The logged-in connection is told to log in again, and writes nothing.
    r = c.add_values(target, [text(2, "DESC", "after the key went")])
    assert r.rc == 407, f"{r} {r.message!r}"
    assert resolved(node, target) == {1: ("URL", b"https://example.cn/member")}
    # Logging in again fails: the identity holds no key any more.
    again = Client(node, "tcp", auth=member)
    assert again.login_id_system().rc == h.RC_INVALID_ADMIN
    # A record keeps at least one value, on every write path: removing the
    # last one is refused (delete the handle instead).
    r = admin.remove_values(handle_of_member, [1])
    assert r.rc == h.RC_INVALID_VALUE and "at least one value" in r.message, f"{r} {r.message!r}"
    assert resolved(node, handle_of_member) == {1: ("DESC", b"a member of the group")}


@pytest.fixture(scope="module")
def node_with_member(tmp_path_factory):
    n = start_node(str(tmp_path_factory.mktemp("member")))
    member, secret = f"{PREFIX}/MEMBER", "member secret"
    c = Client(n, "tcp", auth=admin_auth())
    r = c.create_handle(member, [text(1, "DESC", "a member of the group"),
                                 h.HandleValue(300, "HS_SECKEY", secret.encode(), perms=0x0C)])
    assert r.rc == h.RC_SUCCESS, f"{r} {r.message!r}"
    r = anonymous_resolve_group(n)
    value = h.HandleValue(200, "HS_VLIST", h.encode_vlist(r + [h.ValueRef(member, 300)]), perms=0x0E)
    r = c.modify_values(PREFIX_RECORD, [value])
    assert r.rc == h.RC_SUCCESS, f"{r} {r.message!r}"
    yield n, member, secret
    n.stop()


def anonymous_resolve_group(node):
    r = h.HandleClient(node.handle_host, node.handle_port, timeout=TIMEOUT).resolve(PREFIX_RECORD, [200])
    return h.decode_vlist(r.value(200).data)

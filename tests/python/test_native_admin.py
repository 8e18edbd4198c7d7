"""Native Handle administration (RFC 3652) against the real idres binary.

The client is tests/python/hdl_native.py, written independently of idres
from the wire behaviour of the Handle.Net Java client and the teleinfo /
CAICT SDKs. Nodes are started with `idres init-prefix` + `idres serve` on
loopback ports they pick themselves (idres_http_node.start_node), in
temporary directories; every wait is bounded.

What is covered:

1. the whole administrative cycle (create, add, modify, remove, list,
   delete) over TCP, UDP and HTTP `POST /`, authenticated with secret keys
   (PBKDF2, SHA-1 and the other answer codes), RSA, DSA and SM2 keys in
   every HS_PUBKEY encoding the server takes, each write checked by an
   anonymous resolution;
2. challenges answered elsewhere than they were issued (a new TCP
   connection, as the Java client does; another face);
3. CAICT's LOGIN_ID_SYSTEM (2001): one challenge, then writes unchallenged
   on that connection only;
4. refusals (403, 400, 401, 406 for replays and unknown sessions, 405 for
   expired challenges), each followed by a resolution proving nothing was
   written;
5. certified replies signed with an RSA or SM2 node key taken from
   GET_SITE_INFO (and refused by a node without a key);
6. HS_SECKEY privacy: secrets written by import, HTTP and the native
   protocol are sealed, never served anonymously, exported only sealed, and
   still authenticate natively and with HTTP Basic.
"""

import base64
import json
import os
import secrets
import socket
import stat
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, rsa

import hdl_native as h
from idres_http_node import ADMIN, PREFIX, SECRET, basic, run_idres, start_node

ADMIN_HANDLE, ADMIN_INDEX = ADMIN.split(":", 1)[1], int(ADMIN.split(":", 1)[0])
PREFIX_RECORD = f"0.NA/{PREFIX}"
GROUP_INDEX = 200  # HS_VLIST of the prefix administrators (idres init-prefix)
KEY_INDEX = 300  # where the test identities keep their HS_PUBKEY / HS_SECKEY
TIMEOUT = 10.0  # seconds, any one exchange
MEDIA_TYPE = "application/x-hdl-message"
SEALED_TAG = "idres-sealed-v1$"


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------

def split_messages(data):
    """The messages (envelope + message each) of a byte string, in order."""
    out, pos = [], 0
    while pos < len(data):
        env = h.Envelope.decode(data[pos:pos + h.ENVELOPE_SIZE])
        end = pos + h.ENVELOPE_SIZE + env.length
        assert end <= len(data), f"reply cut short: {len(data)} bytes, message wants {end}"
        out.append(h.Message.from_parts(env, data[pos + h.ENVELOPE_SIZE:end]))
        pos = end
    assert out, "empty reply"
    return out


def post_message(base, wire):
    """POST / with a native message's bytes; the reply's messages."""
    req = urllib.request.Request(base + "/", data=wire, method="POST",
                                 headers={"Content-Type": MEDIA_TYPE})
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
        assert resp.status == 200, resp.status
        assert resp.headers.get_content_type() == MEDIA_TYPE, resp.headers.get("Content-Type")
        return split_messages(resp.read())


class Client(h.HandleClient):
    """hdl_native's client over "tcp", "udp" or "http" (POST / with the raw
    message), logging every exchange as (request, replies)."""

    def __init__(self, node, transport="tcp", auth=None, **kw):
        super().__init__(node.handle_host, node.handle_port, transport=transport, auth=auth,
                         timeout=TIMEOUT, **kw)
        self.base = node.base
        self.log = []

    def exchange(self, msg, new_connection=False):
        if self.transport == "http":
            replies = post_message(self.base, msg.encode())
        else:
            replies = super().exchange(msg, new_connection)
        self.log.append((msg, replies))
        return replies

    @property
    def challenges(self):
        return [r for _, rs in self.log for r in rs if r.rc == h.RC_AUTHENTICATION_NEEDED]


def send(node, transport, msg, conn=None):
    """One message over a face (TCP: `conn` or a new connection); its replies."""
    if transport == "tcp":
        if conn is not None:
            return conn.exchange(msg)
        with h.TcpConnection(node.handle_host, node.handle_port, TIMEOUT) as c:
            return c.exchange(msg)
    if transport == "udp":
        return [h.udp_exchange(node.handle_host, node.handle_port, msg, timeout=2.0)]
    assert transport == "http", transport
    return post_message(node.base, msg.encode())


def answer_for(challenge_msg, request, auth, session_id=None):
    """The opcode-200 answer to a 402, as hdl_native's client builds it."""
    ch = h.challenge_from_reply(challenge_msg)
    assert ch.check_request(request.header_and_body()), "challenge digest is not of our request"
    flags = (request.flags & h.ANSWER_INHERITED_FLAGS) | h.FLAG_RECU
    return h.Message(h.OC_CHALLENGE_RESPONSE, h.RC_RESERVED, flags, auth.answer_body(ch),
                     major=challenge_msg.major, minor=challenge_msg.minor,
                     session_id=challenge_msg.session_id if session_id is None else session_id,
                     request_id=h.new_request_id())


def admin_auth(scheme="pbkdf2", secret=SECRET):
    return h.SecretKeyAuth(ADMIN_HANDLE, ADMIN_INDEX, secret, scheme=scheme)


def anonymous(node, transport="tcp"):
    return Client(node, transport)


# ---------------------------------------------------------------------------
# Values and checks
# ---------------------------------------------------------------------------

def text(index, typ, value):
    return h.HandleValue.text(index, typ, value)


def contents(reply):
    """{index: (type, data)} of a resolution reply."""
    return {v.index: (v.type, v.data) for v in reply.values}


def resolved(node, handle, transport="tcp"):
    """The anonymous resolution of a handle that must exist: {index: (type, data)}."""
    r = anonymous(node, transport).resolve(handle)
    assert r.rc == h.RC_SUCCESS, f"resolving {handle} over {transport}: {r}"
    return contents(r)


def assert_absent(node, handle):
    for transport in ("udp", "tcp"):
        r = anonymous(node, transport).resolve(handle)
        assert r.rc == h.RC_HANDLE_NOT_FOUND, f"{handle} over {transport} should not exist: {r} {contents(r)}"


def assert_challenged_ok(client, reply, opcode):
    """The last operation of `client` went: request -> 402 (fresh session) ->
    answer -> final reply with the original opcode and the answer's request id."""
    assert reply.rc == h.RC_SUCCESS, f"opcode {opcode}: {reply} {reply.message!r}"
    assert reply.opcode == opcode, f"final reply has opcode {reply.opcode}, not {opcode}"
    (request, challenge), (answer, finals) = client.log[-2], client.log[-1]
    assert request.opcode == opcode and len(challenge) == 1
    ch = challenge[0]
    assert ch.rc == h.RC_AUTHENTICATION_NEEDED and ch.opcode == opcode, ch
    assert ch.request_id == request.request_id
    assert ch.session_id != 0, "the challenge must name a session"
    assert answer.opcode == h.OC_CHALLENGE_RESPONSE and answer.session_id == ch.session_id
    assert all(m.request_id == answer.request_id for m in finals), "final reply must carry the answer's request id"


def members(node):
    """The members of the prefix administrators' group."""
    r = anonymous(node).resolve(PREFIX_RECORD, [GROUP_INDEX])
    assert r.ok and r.value(GROUP_INDEX) is not None, r
    return [(m.handle, m.index) for m in h.decode_vlist(r.value(GROUP_INDEX).data)]


def add_to_group(node, identities):
    """Makes identities (handle, index) prefix administrators, as ADMIN, and checks it."""
    r = anonymous(node).resolve(PREFIX_RECORD, [GROUP_INDEX])
    old = r.value(GROUP_INDEX)
    current = members(node)
    new = current + [m for m in identities if m not in current]
    c = Client(node, "tcp", auth=admin_auth())
    value = h.HandleValue(GROUP_INDEX, "HS_VLIST", h.encode_vlist(new), ttl=old.ttl, perms=old.perms)
    r = c.modify_values(PREFIX_RECORD, [value])
    assert_challenged_ok(c, r, h.OC_MODIFY_VALUE)
    assert members(node) == new


def http_request(url, method="GET", body=None, headers=None):
    """(status, body bytes) of an HTTP request; errors are statuses too."""
    data = None if body is None else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if data is not None:
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ---------------------------------------------------------------------------
# Nodes and identities
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A node without a key, shared by most tests (each uses its own handles)."""
    n = start_node(str(tmp_path_factory.mktemp("native")))
    yield n
    n.stop()


@dataclass
class KeyIdentity:
    handle: str
    key: object  # private key: cryptography RSA/DSA or hdl_native.SM2PrivateKey
    data: bytes  # its HS_PUBKEY data


@pytest.fixture(scope="module")
def identities(node):
    """Public-key identities created by ADMIN natively (HS_PUBKEY at index 300,
    one encoding each) and made prefix administrators through the group."""
    rsa_key = rsa.generate_private_key(65537, 2048)
    rsa_pem_key = rsa.generate_private_key(65537, 2048)
    dsa_key = dsa.generate_private_key(2048)
    sm2_key, sm2_pem_key, sm2_der_key = (h.SM2PrivateKey.generate() for _ in range(3))
    specs = {
        "rsa": (rsa_key, h.rsa_pubkey_data(rsa_key)),  # Handle binary RSA_PUB_KEY
        "rsa-pem": (rsa_pem_key, h.pem_pubkey_data(rsa_pem_key)),  # bare PEM SPKI
        "dsa": (dsa_key, h.dsa_pubkey_data(dsa_key)),  # Handle binary DSA_PUB_KEY
        "sm2": (sm2_key, h.sm2_pubkey_data(sm2_key)),  # SM2_PUB_KEY + flags + PEM
        "sm2-pem": (sm2_pem_key, h.pem_pubkey_data(sm2_pem_key)),  # bare PEM SPKI
        "sm2-der": (sm2_der_key, h.sm2_pubkey_data(sm2_der_key, inner="der")),  # SM2_PUB_KEY + DER
    }
    c = Client(node, "tcp", auth=admin_auth())
    out = {}
    for name, (key, data) in specs.items():
        handle = f"{PREFIX}/ID-{name.upper()}"
        r = c.create_handle(handle, [h.HandleValue(KEY_INDEX, "HS_PUBKEY", data)])
        assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
        assert r.handle == handle
        assert resolved(node, handle) == {KEY_INDEX: ("HS_PUBKEY", data)}
        out[name] = KeyIdentity(handle, key, data)
    add_to_group(node, [(i.handle, KEY_INDEX) for i in out.values()])
    return out


@pytest.fixture(scope="module")
def target(node):
    """An existing handle the refusal tests try to change."""
    handle = f"{PREFIX}/REFUSAL-TARGET"
    c = Client(node, "tcp", auth=admin_auth())
    r = c.create_handle(handle, [text(1, "URL", "https://example.cn/target")])
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    return handle


NOBODY_HANDLE = f"{PREFIX}/NOBODY"
NOBODY_SECRET = "nobody's own secret " + secrets.token_hex(8)


@pytest.fixture(scope="module")
def nobody(node):
    """88.118.8/NOBODY: an identity with its own HS_SECKEY, in no admin group."""
    c = Client(node, "tcp", auth=admin_auth())
    r = c.create_handle(NOBODY_HANDLE, [h.HandleValue(KEY_INDEX, "HS_SECKEY", NOBODY_SECRET.encode()),
                                        text(1, "DESC", "not an administrator")])
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    assert (NOBODY_HANDLE, KEY_INDEX) not in members(node)
    return h.SecretKeyAuth(NOBODY_HANDLE, KEY_INDEX, NOBODY_SECRET)


# ---------------------------------------------------------------------------
# 1. The administrative cycle
# ---------------------------------------------------------------------------

def _pk(name, hash_name=None, **kw):
    def make(ids):
        i = ids[name]
        if isinstance(i.key, h.SM2PrivateKey):
            return h.SM2Auth(i.handle, KEY_INDEX, i.key, **kw)
        return h.PublicKeyAuth(i.handle, KEY_INDEX, i.key, hash=hash_name, **kw)
    return make


AUTHS = {
    "seckey-pbkdf2": lambda ids: admin_auth("pbkdf2"),  # 0x22
    "seckey-sha1": lambda ids: admin_auth("sha1"),  # 0x02
    "seckey-md5": lambda ids: admin_auth("md5"),  # 0x01
    "seckey-sha256": lambda ids: admin_auth("sha256"),  # 0x03
    "seckey-hmac-sha1": lambda ids: admin_auth("hmac-sha1"),  # 0x12
    "seckey-hmac-sha256": lambda ids: admin_auth("hmac-sha256"),  # 0x13
    "rsa-sha256": _pk("rsa", "SHA256"),
    "rsa-sha1": _pk("rsa", "SHA1"),
    "rsa-pem": _pk("rsa-pem", "SHA256"),
    "dsa-sha256": _pk("dsa", "SHA256"),
    "dsa-sha1": _pk("dsa", "SHA1"),
    "sm2": _pk("sm2"),  # SM3 prehash, DER, user id = the handle
    "sm2-pem": _pk("sm2-pem"),
    "sm2-der-key": _pk("sm2-der"),
    "sm2-raw-signature": _pk("sm2", der=False),
    "sm2-no-prehash": _pk("sm2", prehash=False),
    "sm2-default-user-id": _pk("sm2", user_id=h.SM2_DEFAULT_USER_ID),
}
BOTH_TRANSPORTS = ["seckey-pbkdf2", "rsa-sha256", "rsa-pem", "dsa-sha256", "sm2", "sm2-pem"]
CYCLES = ([(t, a) for a in BOTH_TRANSPORTS for t in ("tcp", "udp")]
          + [("udp", "seckey-sha1"), ("tcp", "rsa-sha1"), ("tcp", "dsa-sha1")]
          + [("tcp", a) for a in ("seckey-md5", "seckey-sha256", "seckey-hmac-sha1", "seckey-hmac-sha256",
                                  "sm2-der-key", "sm2-raw-signature", "sm2-no-prehash", "sm2-default-user-id")]
          + [("http", "seckey-pbkdf2"), ("http", "sm2")])


def admin_cycle(node, transport, auth, name):
    """create, add, modify, remove, list (TCP), delete; each checked by resolution."""
    handle = f"{PREFIX}/{name}"
    look = "tcp" if transport == "http" else transport
    c = Client(node, transport, auth=auth)
    first_url = f"https://example.cn/{name}".encode()

    r = c.create_handle(handle, [h.HandleValue(1, "URL", first_url), text(2, "DESC", "first")])
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    assert r.handle == handle, "CREATE_HANDLE's reply body is the created handle"
    assert resolved(node, handle, look) == {1: ("URL", first_url), 2: ("DESC", b"first")}

    r = c.add_values(handle, [text(3, "EMAIL", "ops@example.cn")])
    assert_challenged_ok(c, r, h.OC_ADD_VALUE)
    assert resolved(node, handle, look)[3] == ("EMAIL", b"ops@example.cn")

    r = c.modify_values(handle, [text(2, "DESC", "second")])
    assert_challenged_ok(c, r, h.OC_MODIFY_VALUE)
    assert resolved(node, handle, look) == {1: ("URL", first_url), 2: ("DESC", b"second"),
                                            3: ("EMAIL", b"ops@example.cn")}

    r = c.remove_values(handle, [3])
    assert_challenged_ok(c, r, h.OC_REMOVE_VALUE)
    assert resolved(node, handle, look) == {1: ("URL", first_url), 2: ("DESC", b"second")}

    if transport == "tcp":
        r = c.list_handles(PREFIX)
        assert_challenged_ok(c, r, h.OC_LIST_HANDLES)
        assert handle in r.handles and f"{PREFIX}/ID-RSA" in r.handles, r.handles

    r = c.delete_handle(handle)
    assert_challenged_ok(c, r, h.OC_DELETE_HANDLE)
    assert_absent(node, handle)

    sessions = [m.session_id for m in c.challenges]
    assert len(set(sessions)) == len(sessions), f"every challenge needs a fresh session: {sessions}"


@pytest.mark.parametrize("transport,kind", CYCLES, ids=[f"{t}-{a}" for t, a in CYCLES])
def test_admin_cycle(node, identities, transport, kind):
    admin_cycle(node, transport, AUTHS[kind](identities), f"CYCLE-{transport}-{kind}")


def test_seckey_md5_answer_of_protocol_2_0(node):
    """A client speaking 2.0 answers with bare MD5(secret||nonce||digest||secret)."""
    c = Client(node, "tcp", auth=admin_auth("auto"), version=(2, 0), suggest=(2, 0))
    handle = f"{PREFIX}/CYCLE-V20-MD5"
    r = c.create_handle(handle, [text(1, "URL", "https://example.cn/v20")])
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    ch = h.challenge_from_reply(c.challenges[-1])
    assert ch.effective_version < (2, 1), f"challenge in {ch.version}, suggesting {ch.suggested}"
    assert resolved(node, handle)[1] == ("URL", b"https://example.cn/v20")
    r = c.delete_handle(handle)
    assert_challenged_ok(c, r, h.OC_DELETE_HANDLE)
    assert_absent(node, handle)


def test_mint_new_suffix_and_overwrite(node):
    c = Client(node, "tcp", auth=admin_auth())
    # as Java's CreateHandleRequest(prefix, values, auth, mintNewSuffix): the body names the prefix
    r = c.create_handle(PREFIX, [text(1, "URL", "https://example.cn/minted")], mint=True)
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    minted = r.handle
    assert minted and minted.startswith(f"{PREFIX}/") and len(minted) > len(PREFIX) + 8, minted
    assert resolved(node, minted) == {1: ("URL", b"https://example.cn/minted")}
    r = c.create_handle(minted, [text(1, "URL", "https://example.cn/again")])
    assert r.rc == h.RC_HANDLE_ALREADY_EXISTS, r
    assert resolved(node, minted) == {1: ("URL", b"https://example.cn/minted")}
    r = c.create_handle(minted, [text(2, "DESC", "replaced")], overwrite=True)
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    assert resolved(node, minted) == {2: ("DESC", b"replaced")}


# ---------------------------------------------------------------------------
# 2. Answers that arrive elsewhere
# ---------------------------------------------------------------------------

def test_java_flow_answer_on_new_tcp_connection(node):
    c = Client(node, "tcp", auth=admin_auth(), new_connection_for_answer=True)
    handle = f"{PREFIX}/JAVA-FLOW"
    r = c.create_handle(handle, [text(1, "URL", "https://example.cn/java")])
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    assert resolved(node, handle) == {1: ("URL", b"https://example.cn/java")}
    r = c.modify_values(handle, [text(1, "URL", "https://example.cn/java2")])
    assert_challenged_ok(c, r, h.OC_MODIFY_VALUE)
    assert resolved(node, handle) == {1: ("URL", b"https://example.cn/java2")}
    r = c.delete_handle(handle)
    assert_challenged_ok(c, r, h.OC_DELETE_HANDLE)
    assert_absent(node, handle)


CROSS = [("udp", "http"), ("http", "tcp"), ("tcp", "udp"), ("http", "udp")]


@pytest.mark.parametrize("asked,answered", CROSS, ids=[f"{a}-to-{b}" for a, b in CROSS])
def test_answer_on_another_face(node, asked, answered):
    """The answer names the session; the face it comes on does not matter."""
    handle = f"{PREFIX}/CROSS-{asked}-{answered}"
    c = Client(node, asked)
    req = c.make_request(h.OC_CREATE_HANDLE,
                         h.body_handle_values(handle, [text(1, "URL", "https://example.cn/cross")]))
    (challenge,) = c.exchange(req)
    assert challenge.rc == h.RC_AUTHENTICATION_NEEDED, challenge
    answer = answer_for(challenge, req, admin_auth())
    (final,) = send(node, answered, answer)
    assert (final.rc, final.opcode, final.request_id) == (h.RC_SUCCESS, h.OC_CREATE_HANDLE, answer.request_id), \
        h.Reply(final)
    assert resolved(node, handle) == {1: ("URL", b"https://example.cn/cross")}


# ---------------------------------------------------------------------------
# 3. CAICT LOGIN_ID_SYSTEM
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("caict_session", [False, True], ids=["challenge-session", "own-session"])
def test_login_id_system_then_unchallenged_writes(node, caict_session):
    """2001 is challenged once; then writes on that connection go through
    without a challenge (even with no identity left to answer one)."""
    tag = "CAICT" if caict_session else "TELEINFO"
    c = Client(node, "tcp", auth=admin_auth())
    r = c.login_id_system(session_id=secrets.randbelow(10 ** 9 - 10000) + 10000, caict_session=caict_session)
    assert (r.rc, r.opcode) == (h.RC_SUCCESS, h.OC_LOGIN_ID_SYSTEM), f"{r} {r.message!r}"
    assert [m.opcode for m in c.challenges] == [h.OC_LOGIN_ID_SYSTEM]
    c.auth = None  # a 402 from here on would come back as the reply
    handle = f"{PREFIX}/LOGIN-{tag}"

    r = c.create_handle(handle, [text(1, "URL", "https://example.cn/login")])
    assert (r.rc, r.opcode, r.handle) == (h.RC_SUCCESS, h.OC_CREATE_HANDLE, handle), f"{r} {r.message!r}"
    assert resolved(node, handle) == {1: ("URL", b"https://example.cn/login")}
    r = c.add_values(handle, [text(2, "DESC", "added")])
    assert (r.rc, r.opcode) == (h.RC_SUCCESS, h.OC_ADD_VALUE), f"{r} {r.message!r}"
    r = c.modify_values(handle, [text(1, "URL", "https://example.cn/login2")])
    assert (r.rc, r.opcode) == (h.RC_SUCCESS, h.OC_MODIFY_VALUE), f"{r} {r.message!r}"
    r = c.remove_values(handle, [2])
    assert (r.rc, r.opcode) == (h.RC_SUCCESS, h.OC_REMOVE_VALUE), f"{r} {r.message!r}"
    assert resolved(node, handle) == {1: ("URL", b"https://example.cn/login2")}
    r = c.list_handles(PREFIX)
    assert r.ok and handle in r.handles, r
    assert len(c.challenges) == 1, "no challenge after the login"

    # a fresh connection is not logged in
    fresh = Client(node, "tcp", auth=admin_auth())
    r = fresh.delete_handle(handle)
    assert_challenged_ok(fresh, r, h.OC_DELETE_HANDLE)
    assert len(fresh.challenges) == 1
    assert_absent(node, handle)
    # ... and neither is UDP from the same host
    r = Client(node, "udp").create_handle(handle, [text(1, "URL", "https://example.cn/nope")])
    assert r.rc == h.RC_AUTHENTICATION_NEEDED, r
    assert_absent(node, handle)


def test_answer_in_own_session_matched_by_connection(node):
    """CAICT's engine stamps its own session id on every message, the answer
    included: on TCP the answer is matched to the connection's last challenge."""
    handle = f"{PREFIX}/OWN-SESSION"
    c = Client(node, "tcp", auth=admin_auth())
    c.session_id = secrets.randbelow(10 ** 9 - 10000) + 10000
    c.answer_with_client_session = True
    r = c.create_handle(handle, [text(1, "URL", "https://example.cn/own-session")])
    assert (r.rc, r.opcode) == (h.RC_SUCCESS, h.OC_CREATE_HANDLE), f"{r} {r.message!r}"
    assert c.log[-1][0].session_id == c.session_id, "the answer went in the client's own session id"
    assert resolved(node, handle) == {1: ("URL", b"https://example.cn/own-session")}
    # the challenge is used up: the same answer again is refused
    (again,) = c.conn.exchange(c.log[-1][0])
    assert again.rc == h.RC_AUTHEN_ERROR, h.Reply(again)


def test_list_handles_of_many(node):
    """LIST_HANDLES over TCP returns every handle of the prefix, however many
    messages it takes (continued ones carry the continuous flag, the last not)."""
    c = Client(node, "tcp", auth=admin_auth())
    assert c.login_id_system().ok
    c.auth = None
    made = [f"{PREFIX}/MANY-{i:03}" for i in range(120)]
    for handle in made:
        r = c.create_handle(handle, [text(1, "URL", "https://example.cn/many")])
        assert r.ok, (handle, r)
    lister = Client(node, "tcp", auth=admin_auth())
    r = lister.list_handles(PREFIX)
    assert_challenged_ok(lister, r, h.OC_LIST_HANDLES)
    assert set(made) <= set(r.handles), sorted(set(made) - set(r.handles))[:5]
    assert len(r.handles) == len(set(r.handles)), "a handle listed twice"
    assert all(p.msg.continuous for p in r.parts[:-1]) and not r.parts[-1].msg.continuous
    assert all(p.ok and p.opcode == h.OC_LIST_HANDLES for p in r.parts)
    # still correct after deletions
    for handle in made[:10]:
        assert c.delete_handle(handle).ok
    r = lister.list_handles(PREFIX)
    assert r.ok and not set(made[:10]) & set(r.handles) and set(made[10:]) <= set(r.handles)


def test_login_with_wrong_secret_does_not_log_in(node):
    c = Client(node, "tcp", auth=admin_auth(secret="not the secret"))
    r = c.login_id_system()
    assert r.rc == h.RC_AUTHENTICATION_FAILED, r
    c.auth = None
    handle = f"{PREFIX}/LOGIN-FAILED"
    r = c.create_handle(handle, [text(1, "URL", "https://example.cn/x")])
    assert r.rc == h.RC_AUTHENTICATION_NEEDED, r
    assert_absent(node, handle)


# ---------------------------------------------------------------------------
# 4. Refusals
# ---------------------------------------------------------------------------

def assert_refused(node, target, auth, rc, name, transport="tcp"):
    """Neither a create nor a modify goes through; nothing is written."""
    before = resolved(node, target)
    c = Client(node, transport, auth=auth)
    new = f"{PREFIX}/{name}"
    r = c.create_handle(new, [text(1, "URL", "https://example.cn/refused")])
    assert r.rc == rc, f"create as {auth.handle}: expected {rc}, got {r} {r.message!r}"
    assert_absent(node, new)
    r = c.modify_values(target, [text(1, "URL", "https://example.cn/hijacked")])
    assert r.rc == rc, f"modify as {auth.handle}: expected {rc}, got {r} {r.message!r}"
    r = c.delete_handle(target)
    assert r.rc == rc, f"delete as {auth.handle}: expected {rc}, got {r} {r.message!r}"
    assert resolved(node, target) == before
    assert len(c.challenges) == 3


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_wrong_secret_is_403(node, target, transport):
    assert_refused(node, target, admin_auth(secret="correct horse battery stapler"), h.RC_AUTHENTICATION_FAILED,
                   f"REFUSED-WRONG-SECRET-{transport}", transport)


def test_signature_by_another_rsa_key_is_403(node, identities, target):
    other = rsa.generate_private_key(65537, 2048)
    auth = h.PublicKeyAuth(identities["rsa"].handle, KEY_INDEX, other, hash="SHA256")
    assert_refused(node, target, auth, h.RC_AUTHENTICATION_FAILED, "REFUSED-OTHER-RSA")


def test_signature_by_another_sm2_key_is_403(node, identities, target):
    auth = h.SM2Auth(identities["sm2"].handle, KEY_INDEX, h.SM2PrivateKey.generate())
    assert_refused(node, target, auth, h.RC_AUTHENTICATION_FAILED, "REFUSED-OTHER-SM2")


INVALID_ADMINS = {
    "unknown-handle": lambda ids: h.SecretKeyAuth(f"{PREFIX}/NO-SUCH-ADMIN", KEY_INDEX, "whatever"),
    "no-pubkey-at-index": lambda ids: h.PublicKeyAuth(ADMIN_HANDLE, ADMIN_INDEX, ids["rsa"].key, hash="SHA256"),
    "no-seckey-at-index": lambda ids: h.SecretKeyAuth(ids["rsa"].handle, KEY_INDEX, "whatever"),
    "wrong-index": lambda ids: h.SecretKeyAuth(ADMIN_HANDLE, 301, SECRET),
}


@pytest.mark.parametrize("case", INVALID_ADMINS)
def test_invalid_admin_is_400(node, identities, target, case):
    assert_refused(node, target, INVALID_ADMINS[case](identities), h.RC_INVALID_ADMIN, f"REFUSED-{case.upper()}")


def test_identity_without_the_admin_bit_is_401(node, target, nobody):
    assert_refused(node, target, nobody, h.RC_INSUFFICIENT_PERMISSIONS, "REFUSED-NOBODY")
    # NOBODY's secret was right: it authenticates over HTTP too
    status, _ = http_request(f"{node.base}/api/handles/{NOBODY_HANDLE}",
                             headers={"Authorization": basic(f"{KEY_INDEX}:{NOBODY_HANDLE}", NOBODY_SECRET)})
    assert status == 200


@pytest.mark.parametrize("replay_on", ["same-tcp", "new-tcp", "udp", "http"])
def test_replayed_answer_is_406_and_writes_nothing(node, replay_on):
    handle = f"{PREFIX}/REPLAY-{replay_on}"
    c = Client(node, "tcp")
    req = c.make_request(h.OC_CREATE_HANDLE,
                         h.body_handle_values(handle, [text(1, "URL", "https://example.cn/replay")]))
    (challenge,) = c.exchange(req)
    assert challenge.rc == h.RC_AUTHENTICATION_NEEDED, challenge
    answer = answer_for(challenge, req, admin_auth())
    wire = answer.encode()
    (first,) = c.conn.exchange(answer)
    assert (first.rc, first.opcode) == (h.RC_SUCCESS, h.OC_CREATE_HANDLE), h.Reply(first)
    assert resolved(node, handle) == {1: ("URL", b"https://example.cn/replay")}

    d = Client(node, "tcp", auth=admin_auth())
    assert_challenged_ok(d, d.delete_handle(handle), h.OC_DELETE_HANDLE)
    assert_absent(node, handle)

    assert answer.encode() == wire, "the replay must be the identical message"
    if replay_on == "same-tcp":
        replies = send(node, "tcp", answer, conn=c.conn)
    else:
        replies = send(node, replay_on.replace("new-", ""), answer)
    (again,) = replies
    assert again.rc == h.RC_AUTHEN_ERROR, f"replayed answer: expected 406, got {h.Reply(again)}"
    assert_absent(node, handle)


@pytest.mark.parametrize("transport", ["new-tcp", "udp", "http"])
def test_answer_to_a_session_never_issued_is_406(node, transport):
    handle = f"{PREFIX}/NEVER-ISSUED-{transport}"
    c = Client(node, "udp")
    req = c.make_request(h.OC_CREATE_HANDLE,
                         h.body_handle_values(handle, [text(1, "URL", "https://example.cn/never")]))
    (challenge,) = c.exchange(req)
    assert challenge.rc == h.RC_AUTHENTICATION_NEEDED, challenge
    other = challenge.session_id ^ 0x5A5A5A5A or 1
    (reply,) = send(node, transport.replace("new-", ""), answer_for(challenge, req, admin_auth(), session_id=other))
    assert reply.rc == h.RC_AUTHEN_ERROR, f"answer for session {other}: expected 406, got {h.Reply(reply)}"
    assert_absent(node, handle)


@pytest.fixture(scope="module")
def short_ttl_node(tmp_path_factory):
    n = start_node(str(tmp_path_factory.mktemp("ttl")), extra_config="[handle]\nchallenge_ttl_secs = 1\n")
    yield n
    n.stop()


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_expired_challenge_is_405(short_ttl_node, transport):
    node = short_ttl_node
    # answered at once, a challenge of this node works
    quick = f"{PREFIX}/TTL-QUICK-{transport}"
    c = Client(node, transport, auth=admin_auth())
    assert_challenged_ok(c, c.create_handle(quick, [text(1, "URL", "https://example.cn/q")]), h.OC_CREATE_HANDLE)
    assert resolved(node, quick) == {1: ("URL", b"https://example.cn/q")}
    # answered late, it is refused
    handle = f"{PREFIX}/TTL-LATE-{transport}"
    req = c.make_request(h.OC_CREATE_HANDLE,
                         h.body_handle_values(handle, [text(1, "URL", "https://example.cn/late")]))
    (challenge,) = c.exchange(req)
    assert challenge.rc == h.RC_AUTHENTICATION_NEEDED, challenge
    time.sleep(2.5)
    answer = answer_for(challenge, req, admin_auth())
    (reply,) = c.exchange(answer)  # TCP: on the connection the challenge came on
    assert reply.rc == h.RC_AUTHEN_TIMEOUT, f"late answer: expected 405, got {h.Reply(reply)}"
    assert_absent(node, handle)


# ---------------------------------------------------------------------------
# 5. Certified replies and the node key
# ---------------------------------------------------------------------------

@dataclass
class KeyedNode:
    node: object
    algorithm: str
    public_pem: bytes
    handle: str  # a handle that exists there


@pytest.fixture(scope="module", params=["rsa", "sm2"])
def keyed_node(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"key-{request.param}")
    key, pub = d / "node.key", d / "node.pub.pem"
    run_idres("keygen", "--algorithm", request.param, "--out", key, "--public-out", pub)
    n = start_node(str(d), node_key=key)
    try:
        handle = f"{PREFIX}/SIGNED-{request.param.upper()}"
        c = Client(n, "tcp", auth=admin_auth())
        assert_challenged_ok(c, c.create_handle(handle, [text(1, "URL", "https://example.cn/signed")]),
                             h.OC_CREATE_HANDLE)
        yield KeyedNode(n, request.param, pub.read_bytes(), handle)
    finally:
        n.stop()


@pytest.mark.parametrize("algorithm", ["rsa", "sm2"])
def test_keygen_writes_mode_0600_and_never_overwrites(tmp_path, algorithm):
    key, pub = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    run_idres("keygen", "--algorithm", algorithm, "--out", key, "--public-out", pub)
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    before = key.read_bytes()
    assert b"PRIVATE KEY" in before and pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    r = run_idres("keygen", "--algorithm", algorithm, "--out", key, check=False)
    assert r.returncode != 0, "keygen replaced an existing key"
    assert key.read_bytes() == before


def site_key(kn):
    """The node key from GET_SITE_INFO, checked against `--public-out`."""
    r = Client(kn.node, "tcp").get_site_info()
    assert r.ok and r.site and r.site.servers, r
    data = r.site.servers[0].public_key
    key = h.parse_pubkey_data(data)
    if kn.algorithm == "rsa":
        assert data.startswith(h.sstr("RSA_PUB_KEY") + h.u16(0)), data[:20]
        expect = serialization.load_pem_public_key(kn.public_pem)
        assert key.public_numbers() == expect.public_numbers()
    else:
        rd = h.Reader(data)
        assert rd.bstr() == b"SM2_PUB_KEY" and rd.u16() == 0
        assert rd.bstr().startswith(b"-----BEGIN PUBLIC KEY-----")
        assert key == h.parse_pubkey_data(kn.public_pem)
    return key


def check_signed(kn, key, msg):
    """msg carries a valid HS_SIGNED credential; altering it breaks it."""
    assert msg.flags & h.FLAG_CERT, "a certified reply keeps the certify flag"
    cred = h.Credential.decode(msg.credential)
    assert cred.sig_type == h.CRED_SIGNED
    if kn.algorithm == "rsa":
        assert cred.hash_alg == b"SHA-256"
    else:
        assert cred.hash_alg == b"SM3" and cred.signature[0] == 0x30, "SM2 signature, DER"
    assert h.verify_message(msg, key), "the reply's signature does not verify with the HS_SITE key"
    hb = bytearray(msg.header_and_body())
    for pos in (len(hb) - 1, 30, 9):  # last body byte, first body bytes, a header flag byte
        tampered = h.Message.decode(msg.encode())
        bad = bytearray(hb)
        bad[pos] ^= 0x01
        tampered.raw_hb = bytes(bad)
        assert not h.verify_message(tampered, key), f"a reply altered at byte {pos} still verifies"
    tampered = h.Message.decode(msg.encode())
    c2 = h.Credential.decode(tampered.credential)
    c2.signature = c2.signature[:-1] + bytes([c2.signature[-1] ^ 0x01])
    tampered.credential = c2.encode()
    assert not h.verify_message(tampered, key), "an altered signature still verifies"
    tampered = h.Message.decode(msg.encode())
    tampered.request_id ^= 1  # an envelope field the signature covers
    assert not h.verify_message(tampered, key)


@pytest.mark.parametrize("transport", ["tcp", "udp", "http"])
def test_certified_resolution_verifies_with_site_key(keyed_node, transport):
    kn = keyed_node
    key = site_key(kn)
    c = Client(kn.node, transport, server_key=key, verify=True)
    r = c.resolve(kn.handle, certify=True)  # verify=True: raises unless signed and valid
    assert r.ok and contents(r) == {1: ("URL", b"https://example.cn/signed")}, r
    check_signed(kn, key, r.msg)
    # an error reply to a certified request is signed too
    r = c.resolve(f"{PREFIX}/NO-SUCH-HANDLE", certify=True)
    assert r.rc == h.RC_HANDLE_NOT_FOUND
    check_signed(kn, key, r.msg)
    # a key of the same kind that is not the node's does not verify it
    other = (rsa.generate_private_key(65537, 2048).public_key() if kn.algorithm == "rsa"
             else h.SM2PrivateKey.generate().public_key)
    assert not h.verify_message(r.msg, other)


def test_certified_site_info_and_admin_exchange(keyed_node):
    kn = keyed_node
    key = site_key(kn)
    c = Client(kn.node, "tcp", auth=admin_auth(), server_key=key, verify=True)
    r = c.get_site_info(certify=True)
    assert r.ok
    check_signed(kn, key, r.msg)
    handle = f"{PREFIX}/SIGNED-ADMIN-{kn.algorithm.upper()}"
    r = c.create_handle(handle, [text(1, "URL", "https://example.cn/cert-admin")], certify=True)
    assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
    check_signed(kn, key, c.challenges[-1])  # the 402 is signed
    check_signed(kn, key, r.msg)  # and so is the final reply
    assert resolved(kn.node, handle) == {1: ("URL", b"https://example.cn/cert-admin")}


@pytest.mark.parametrize("transport", ["tcp", "udp", "http"])
def test_certified_request_without_node_key_is_an_error(node, target, transport):
    r = Client(node, transport).resolve(target, certify=True)
    assert r.rc == h.RC_ERROR, r
    assert r.msg.credential == b"", "no key, no credential"
    assert not r.msg.flags & h.FLAG_CERT, "the reply must not claim to be certified"
    assert not r.values
    # the same request without certify resolves
    assert resolved(node, target, "tcp" if transport == "http" else transport)[1][0] == "URL"


# ---------------------------------------------------------------------------
# 6. HS_SECKEY privacy
# ---------------------------------------------------------------------------

@dataclass
class Privacy:
    node: object
    secrets: dict  # handle -> clear secret (bytes); HS_SECKEY at KEY_INDEX (ADMIN: ADMIN_INDEX)
    stopped: bool = False


IMPORTED = f"{PREFIX}/SEC-IMPORT"
VIA_HTTP = f"{PREFIX}/SEC-HTTP"
NATIVE = f"{PREFIX}/SEC-NATIVE"


@pytest.fixture(scope="module")
def privacy(tmp_path_factory):
    """A node whose secrets were written by import (node stopped), HTTP PUT and
    native CREATE, each asking for public read; all three identities are
    then made prefix administrators."""
    sec = {IMPORTED: b"imported-" + secrets.token_hex(12).encode(),
           VIA_HTTP: b"http-" + secrets.token_hex(12).encode(),
           NATIVE: b"native-" + secrets.token_hex(12).encode()}
    record = {"handle": IMPORTED, "values": [
        {"index": 1, "type": "URL", "data": {"format": "string", "value": "https://example.cn/imported"}},
        {"index": KEY_INDEX, "type": "HS_SECKEY", "permissions": "1110",
         "data": {"format": "string", "value": sec[IMPORTED].decode()}}]}
    n = start_node(str(tmp_path_factory.mktemp("privacy")), records=[record])
    state = Privacy(n, sec)
    try:
        assert resolved(n, IMPORTED)[1] == ("URL", b"https://example.cn/imported")
        status, body = http_request(
            f"{n.base}/api/handles/{VIA_HTTP}?overwrite=false", "PUT",
            {"values": [{"index": 1, "type": "URL", "data": "https://example.cn/http"},
                        {"index": KEY_INDEX, "type": "HS_SECKEY", "permissions": "1110",
                         "data": {"format": "string", "value": sec[VIA_HTTP].decode()}}]},
            {"Authorization": basic()})
        assert status == 201, body
        c = Client(n, "tcp", auth=admin_auth())
        r = c.create_handle(NATIVE, [text(1, "URL", "https://example.cn/native"),
                                     h.HandleValue(KEY_INDEX, "HS_SECKEY", sec[NATIVE], perms=0x0E)])
        assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
        add_to_group(n, [(hd, KEY_INDEX) for hd in sec])
        yield state
    finally:
        n.stop()


def leaks(data, state):
    """What of the secrets (clear, base64, hex, sealed) is in `data`."""
    found = []
    for clear in list(state.secrets.values()) + [SECRET.encode()]:
        for form in (clear, base64.b64encode(clear), clear.hex().encode()):
            if form in data:
                found.append(form)
    if SEALED_TAG.encode() in data:
        found.append(SEALED_TAG.encode())
    return found


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_seckey_never_resolved_anonymously(privacy, transport):
    assert not privacy.stopped
    n = privacy.node
    c = anonymous(n, transport)
    for handle in list(privacy.secrets) + [ADMIN_HANDLE]:
        full = c.resolve(handle)
        assert full.ok and full.value(1 if handle != ADMIN_HANDLE else 100) is not None, (handle, full)
        for r in (full, c.resolve(handle, public_only=False), c.resolve(handle, sorted({KEY_INDEX, ADMIN_INDEX})),
                  c.resolve(handle, types=["HS_SECKEY"])):
            assert r.rc in (h.RC_SUCCESS, h.RC_VALUES_NOT_FOUND), (handle, r)
            assert [v for v in r.values if v.type == "HS_SECKEY"] == [], f"{handle}: HS_SECKEY served anonymously"
            assert leaks(r.msg.encode(), privacy) == [], f"{handle}: secret material in the reply"


def test_seckey_never_served_over_http_anonymously(privacy):
    assert not privacy.stopped
    base = privacy.node.base
    for handle in list(privacy.secrets) + [ADMIN_HANDLE]:
        status, body = http_request(f"{base}/api/handles/{handle}")
        assert status == 200, body
        doc = json.loads(body)
        assert doc["responseCode"] == 1 and doc["values"], doc
        assert [v for v in doc["values"] if v["type"] == "HS_SECKEY"] == [], doc
        assert leaks(body, privacy) == [], f"{handle}: {body!r}"
        for query in (f"index={KEY_INDEX}", "type=HS_SECKEY", "publicOnly=false"):
            status, body = http_request(f"{base}/api/handles/{handle}?{query}")
            assert leaks(body, privacy) == [], f"{handle}?{query}: {body!r}"
            assert b"HS_SECKEY" not in body, f"{handle}?{query}: {body!r}"
        # and not through POST / either
        req = h.Message(h.OC_RESOLUTION, body=h.body_resolution(handle, [], ["HS_SECKEY"]),
                        request_id=h.new_request_id())
        (m,) = post_message(base, req.encode())
        assert [v for v in h.Reply(m).values if v.type == "HS_SECKEY"] == []
        assert leaks(m.encode(), privacy) == []


@pytest.mark.parametrize("handle", [IMPORTED, VIA_HTTP, NATIVE])
def test_sealed_secret_authenticates_natively(privacy, handle):
    assert not privacy.stopped
    n = privacy.node
    secret = privacy.secrets[handle]
    name = handle.rsplit("/", 1)[1]
    for transport, scheme in (("tcp", "pbkdf2"), ("udp", "sha1")):
        new = f"{PREFIX}/BY-{name}-{transport}"
        c = Client(n, transport, auth=h.SecretKeyAuth(handle, KEY_INDEX, secret, scheme=scheme))
        r = c.create_handle(new, [text(1, "URL", f"https://example.cn/{name}")])
        assert_challenged_ok(c, r, h.OC_CREATE_HANDLE)
        assert resolved(n, new) == {1: ("URL", f"https://example.cn/{name}".encode())}
    c = Client(n, "tcp", auth=h.SecretKeyAuth(handle, KEY_INDEX, secret + b"x"))
    new = f"{PREFIX}/BY-{name}-WRONG"
    assert c.create_handle(new, [text(1, "URL", "https://example.cn/x")]).rc == h.RC_AUTHENTICATION_FAILED
    assert_absent(n, new)


@pytest.mark.parametrize("handle", [IMPORTED, VIA_HTTP, NATIVE])
def test_sealed_secret_authenticates_http_basic(privacy, handle):
    assert not privacy.stopped
    base = privacy.node.base
    identity = f"{KEY_INDEX}:{handle}"
    secret = privacy.secrets[handle].decode()
    new = f"{PREFIX}/BASIC-{handle.rsplit('/', 1)[1]}"
    status, body = http_request(f"{base}/api/handles/{new}?overwrite=false", "PUT",
                                {"values": [{"index": 1, "type": "URL", "data": "https://example.cn/basic"}]},
                                {"Authorization": basic(identity, secret)})
    assert status == 201, body
    assert resolved(privacy.node, new) == {1: ("URL", b"https://example.cn/basic")}
    status, _ = http_request(f"{base}/api/handles/{handle}", headers={"Authorization": basic(identity, secret)})
    assert status == 200
    status, _ = http_request(f"{base}/api/handles/{handle}",
                             headers={"Authorization": basic(identity, secret + "x")})
    assert status == 401


def test_export_carries_only_sealed_secrets(privacy):
    """Last of the privacy tests: stops the node to export its store."""
    privacy.node.stop()
    privacy.stopped = True
    out = run_idres("export", "--data-dir", privacy.node.data_dir).stdout
    assert leaks(out.encode(), privacy) == [SEALED_TAG.encode()], "clear secret material in the export"
    records = {r["handle"]: r for r in map(json.loads, out.splitlines())}
    for handle in privacy.secrets:
        (v,) = [v for v in records[handle]["values"] if v["type"] == "HS_SECKEY"]
        assert v["data"]["value"].startswith(SEALED_TAG), v
        perms = v.get("permissions", "1110")
        assert perms[2:] == "00", f"{handle}: the stored HS_SECKEY keeps public access: {perms}"

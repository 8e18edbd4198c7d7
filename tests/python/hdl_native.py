"""An independent client of the Handle native protocol (RFC 3652), for tests.

Written from the public wire behaviour of the Handle.Net 9.2.0 Java client
and server and of the teleinfo id-pointer-sdk / CAICT ID-SDK clients (see
the spec notes the project keeps on them); it imports nothing of idres.
Only the Python standard library, `cryptography` (RSA, DSA) and `gmssl`
(SM2 / SM3, pure Python) are used.

Layers, from the bottom:

* byte helpers (`Reader`, `u8`/`u16`/`u32`/`bstr`/`sstr`);
* framing: `Envelope` (20 bytes), `Message` (24-byte header, body,
  credential), UDP splitting into 492-byte chunks (`udp_packets`,
  `udp_reassemble`);
* data: `HandleValue`, HS_ADMIN / HS_VLIST codecs, `SiteInfo` (HS_SITE);
* keys: Java-style BigInteger bytes, HS_PUBKEY encoders/decoders (Handle
  binary RSA_PUB_KEY / DSA_PUB_KEY, teleinfo SM2_PUB_KEY, bare PEM SPKI),
  a small SM2 implementation on top of gmssl's curve arithmetic;
* authentication: 402 challenges and opcode-200 answers for HS_SECKEY
  (PBKDF2-HMAC-SHA1 form, SHA-1 form, old MD5 form), RSA, DSA and SM2/SM3,
  plus the server-side checks of the same (for offline tests);
* credentials: signing and verifying a message's credential section
  (HS_SIGNED with RSA/DSA/SM2, HS_MAC with a session key);
* request bodies and reply parsers for every opcode the tests use;
* transport: `TcpConnection`, `udp_exchange`;
* `HandleClient`: resolution, site info, admin operations with automatic
  challenge answering, LIST_HANDLES continuation, the CAICT LOGIN_ID_SYSTEM
  (2001) flow on one TCP connection, and a Diffie-Hellman SESSION_SETUP like
  the Java tools do.

Run `python3 hdl_native.py` for an offline self-check (no server needed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import random
import secrets
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives import padding as sym_padding

try:  # gmssl is needed only for SM2 / SM3
    from gmssl import sm2 as _gm_sm2
    from gmssl import sm3 as _gm_sm3
except ImportError:  # pragma: no cover - reported when SM2 is used
    _gm_sm2 = None
    _gm_sm3 = None

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

ENVELOPE_SIZE = 20
HEADER_SIZE = 24
MAX_MESSAGE_LENGTH = 262144
UDP_PACKET_SIZE = 512
UDP_CHUNK = UDP_PACKET_SIZE - ENVELOPE_SIZE  # 492 bytes of message per datagram
NONCE_SIZE = 16
DEFAULT_VERSION = (2, 11)

# opcodes
OC_RESOLUTION = 1
OC_GET_SITE_INFO = 2
OC_CREATE_HANDLE = 100
OC_DELETE_HANDLE = 101
OC_ADD_VALUE = 102
OC_REMOVE_VALUE = 103
OC_MODIFY_VALUE = 104
OC_LIST_HANDLES = 105
OC_CHALLENGE_RESPONSE = 200
OC_VERIFY_RESPONSE = 201
OC_HOME_NA = 300
OC_UNHOME_NA = 301
OC_LIST_HOMED_NAS = 302
OC_SESSION_SETUP = 400
OC_SESSION_TERMINATE = 401
OC_SESSION_EXCHANGEKEY = 402
OC_LOGIN_ID_SYSTEM = 2001  # CAICT / teleinfo

# response codes
RC_RESERVED = 0
RC_SUCCESS = 1
RC_ERROR = 2
RC_SERVER_TOO_BUSY = 3
RC_PROTOCOL_ERROR = 4
RC_OPERATION_NOT_SUPPORTED = 5
RC_RECURSION_COUNT_TOO_HIGH = 6
RC_HANDLE_NOT_FOUND = 100
RC_HANDLE_ALREADY_EXISTS = 101
RC_INVALID_HANDLE = 102
RC_VALUES_NOT_FOUND = 200
RC_VALUE_ALREADY_EXISTS = 201
RC_INVALID_VALUE = 202
RC_OUT_OF_DATE_SITE_INFO = 300
RC_SERVER_NOT_RESP = 301
RC_SERVICE_REFERRAL = 302
RC_PREFIX_REFERRAL = 303
RC_INVALID_ADMIN = 400
RC_INSUFFICIENT_PERMISSIONS = 401
RC_AUTHENTICATION_NEEDED = 402
RC_AUTHENTICATION_FAILED = 403
RC_INVALID_CREDENTIAL = 404
RC_AUTHEN_TIMEOUT = 405
RC_AUTHEN_ERROR = 406
RC_SESSION_TIMEOUT = 500
RC_SESSION_FAILED = 501

# header opFlags
FLAG_AUTH = 0x80000000  # authoritative
FLAG_CERT = 0x40000000  # certify (sign the reply)
FLAG_ENCR = 0x20000000  # encrypt
FLAG_RECU = 0x10000000  # recursive
FLAG_CACR = 0x08000000  # cache certify
FLAG_CONT = 0x04000000  # continuous (more messages follow)
FLAG_KPAL = 0x02000000  # keep alive
FLAG_PUBL = 0x01000000  # public values only
FLAG_RRDG = 0x00800000  # return request digest
FLAG_OVRW = 0x00400000  # overwrite when exists
FLAG_MINT = 0x00200000  # mint new suffix
FLAG_DNRF = 0x00100000  # do not refer
FLAG_TRUSTED = 0x00000002  # ID-SDK "trusted query" bit

#: what the Java client sets on every request by default
DEFAULT_FLAGS = FLAG_RECU | FLAG_CACR | FLAG_PUBL
#: flags a challenge answer inherits from the challenged request (Java takeValuesFrom)
ANSWER_INHERITED_FLAGS = FLAG_AUTH | FLAG_CERT | FLAG_ENCR | FLAG_CACR | FLAG_PUBL | FLAG_DNRF | FLAG_RRDG

# envelope flags (byte 2, high bits)
ENV_COMPRESSED = 0x80
ENV_ENCRYPTED = 0x40
ENV_TRUNCATED = 0x20

# request-digest hash types
HASH_MD5_OLD = 0
HASH_MD5 = 1
HASH_SHA1 = 2
HASH_SHA256 = 3
DIGEST_SIZES = {HASH_MD5: 16, HASH_SHA1: 20, HASH_SHA256: 32}
# secret-key answer codes
MAC_HMAC_SHA1 = 0x12
MAC_HMAC_SHA256 = 0x13
MAC_PBKDF2_HMAC_SHA1 = 0x22

# value permissions
PERM_ADMIN_READ = 0x8
PERM_ADMIN_WRITE = 0x4
PERM_PUBLIC_READ = 0x2
PERM_PUBLIC_WRITE = 0x1
PERM_DEFAULT = PERM_ADMIN_READ | PERM_ADMIN_WRITE | PERM_PUBLIC_READ

# HS_ADMIN permission bits
ADM_ADD_HANDLE = 0x001
ADM_DELETE_HANDLE = 0x002
ADM_ADD_PREFIX = 0x004
ADM_DELETE_PREFIX = 0x008
ADM_MODIFY_VALUE = 0x010
ADM_REMOVE_VALUE = 0x020
ADM_ADD_VALUE = 0x040
ADM_MODIFY_ADMIN = 0x080
ADM_REMOVE_ADMIN = 0x100
ADM_ADD_ADMIN = 0x200
ADM_READ_VALUE = 0x400
ADM_LIST_HANDLES = 0x800
ADM_ALL = 0xFFF

# session key exchange modes
KEY_EXCHANGE_NONE = 0
KEY_EXCHANGE_CIPHER_CLIENT = 1
KEY_EXCHANGE_CIPHER_SERVER = 2
KEY_EXCHANGE_CIPHER_HDL = 3
KEY_EXCHANGE_DH = 4
CIPHER_DES, CIPHER_DESEDE, CIPHER_AES = 1, 2, 3

AUTH_SECKEY = b"HS_SECKEY"
AUTH_PUBKEY = b"HS_PUBKEY"
CRED_SIGNED = b"HS_SIGNED"
CRED_MAC = b"HS_MAC"
CRED_OLDSIGNED = b"HS_DSAPUBKEY"

#: the SM2 user id of GM/T 0009 when none is agreed
SM2_DEFAULT_USER_ID = b"1234567812345678"

# interface types / protocols in HS_SITE
ST_ADMIN, ST_QUERY, ST_BOTH = 1, 2, 3
SP_UDP, SP_TCP, SP_HTTP, SP_HTTPS = 0, 1, 2, 3


class HandleError(Exception):
    """A malformed message, a failed check, or a transport problem."""


# ---------------------------------------------------------------------------
# Byte helpers
# ---------------------------------------------------------------------------

def u8(v: int) -> bytes:
    return struct.pack(">B", v & 0xFF)


def u16(v: int) -> bytes:
    return struct.pack(">H", v & 0xFFFF)


def u32(v: int) -> bytes:
    return struct.pack(">I", v & 0xFFFFFFFF)


def bstr(b: bytes) -> bytes:
    """A byte array: u32 length then the bytes."""
    return u32(len(b)) + bytes(b)


def sstr(s: Union[str, bytes]) -> bytes:
    """A string: u32 length then UTF-8."""
    return bstr(s.encode("utf-8") if isinstance(s, str) else s)


def _b(s: Union[str, bytes]) -> bytes:
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


class Reader:
    """Sequential big-endian reader over a byte string; raises HandleError on overrun."""

    def __init__(self, data: bytes, pos: int = 0, end: Optional[int] = None):
        self.data = bytes(data)
        self.pos = pos
        self.end = len(self.data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise HandleError(f"truncated: need {n} bytes at {self.pos}, have {self.remaining()}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def bstr(self, limit: int = MAX_MESSAGE_LENGTH * 4) -> bytes:
        n = self.u32()
        if n > limit:
            raise HandleError(f"array length {n} too large")
        return self.take(n)

    def sstr(self) -> str:
        return self.bstr().decode("utf-8", errors="replace")

    def rest(self) -> bytes:
        return self.take(self.remaining())


def version_ge(v: Tuple[int, int], major: int, minor: int) -> bool:
    return tuple(v) >= (major, minor)


# ---------------------------------------------------------------------------
# Framing: envelope, header, message
# ---------------------------------------------------------------------------

@dataclass
class Envelope:
    """The 20-byte message envelope (RFC 3652 §2.2.1)."""

    major: int = 2
    minor: int = 11
    flags: int = 0  # ENV_* bits
    suggest_major: int = 2
    suggest_minor: int = 11
    session_id: int = 0
    request_id: int = 0
    sequence: int = 0
    length: int = 0

    def encode(self) -> bytes:
        return (bytes([self.major & 0xFF, self.minor & 0xFF,
                       (self.flags & 0xE0) | (self.suggest_major & 0x03), self.suggest_minor & 0xFF])
                + u32(self.session_id) + u32(self.request_id) + u32(self.sequence) + u32(self.length))

    @classmethod
    def decode(cls, data: bytes) -> "Envelope":
        if len(data) < ENVELOPE_SIZE:
            raise HandleError("short envelope")
        sug_major = data[2] & 0x03
        sug_minor = data[3]
        if sug_major == 0:  # as the Java decoder: no suggestion = the protocol version
            sug_major, sug_minor = data[0], data[1]
        sid, rid, seq, length = struct.unpack(">IIII", data[4:20])
        if length > MAX_MESSAGE_LENGTH:
            raise HandleError(f"message length {length} too large")
        return cls(data[0], data[1], data[2] & 0xE0, sug_major, sug_minor, sid, rid, seq, length)


def _now() -> int:
    return int(time.time())


@dataclass
class Message:
    """One Handle message: envelope fields, 24-byte header, body, credential.

    `body` is the body exactly as on the wire (for replies it includes the
    request digest when FLAG_RRDG is set). `credential` is the credential
    section without its u32 length. On decode `raw_hb` keeps the header+body
    bytes exactly as received, and `header_and_body()` returns them, so
    digests and signatures are checked over the received bytes.
    """

    opcode: int
    rc: int = RC_RESERVED
    flags: int = DEFAULT_FLAGS
    body: bytes = b""
    credential: bytes = b""
    major: int = DEFAULT_VERSION[0]
    minor: int = DEFAULT_VERSION[1]
    suggest_major: int = DEFAULT_VERSION[0]
    suggest_minor: int = DEFAULT_VERSION[1]
    env_flags: int = 0
    session_id: int = 0
    request_id: int = 0
    site_serial: int = 0xFFFF  # Java's "unknown" (-1)
    recursion: int = 0
    expiration: Optional[int] = None  # None = now + 43200 when encoded
    raw_hb: Optional[bytes] = field(default=None, repr=False)
    has_credential_field: bool = True

    # -- versions ------------------------------------------------------
    @property
    def version(self) -> Tuple[int, int]:
        return (self.major, self.minor)

    @property
    def suggested(self) -> Tuple[int, int]:
        return (self.suggest_major, self.suggest_minor)

    def is_response(self) -> bool:
        return self.rc != RC_RESERVED

    @property
    def continuous(self) -> bool:
        return bool(self.flags & FLAG_CONT)

    # -- encoding ------------------------------------------------------
    def header(self) -> bytes:
        exp = self.expiration if self.expiration is not None else _now() + 43200
        return (u32(self.opcode) + u32(self.rc) + u32(self.flags) + u16(self.site_serial)
                + u8(self.recursion) + b"\x00" + u32(exp) + u32(len(self.body)))

    def header_and_body(self) -> bytes:
        """The bytes Java calls getEncodedMessageBody(): header + body (digest input)."""
        if self.raw_hb is not None:
            return self.raw_hb
        if self.expiration is None:
            self.expiration = _now() + 43200  # freeze it, so digests stay stable
        return self.header() + self.body

    def payload(self) -> bytes:
        """Header, body, credential length and credential (everything after the envelope)."""
        return self.header_and_body() + u32(len(self.credential)) + self.credential

    def envelope(self, sequence: int = 0, length: Optional[int] = None) -> Envelope:
        return Envelope(self.major, self.minor, self.env_flags, self.suggest_major, self.suggest_minor,
                        self.session_id, self.request_id, sequence,
                        len(self.payload()) if length is None else length)

    def encode(self) -> bytes:
        """Envelope + payload, as written on a TCP stream."""
        p = self.payload()
        return self.envelope(0, len(p)).encode() + p

    def touch(self) -> None:
        """Forget the cached received bytes after changing fields."""
        self.raw_hb = None

    # -- decoding ------------------------------------------------------
    @classmethod
    def from_parts(cls, env: Envelope, payload: bytes) -> "Message":
        if env.flags & ENV_ENCRYPTED:
            raise HandleError("encrypted message; decrypt the payload first")
        if len(payload) < HEADER_SIZE:
            raise HandleError("short message header")
        r = Reader(payload)
        opcode, rc, flags = r.u32(), r.u32(), r.u32()
        serial, recursion = r.u16(), r.u8()
        r.u8()
        expiration, body_len = r.u32(), r.u32()
        body = r.take(body_len)
        cred = b""
        has_cred = False
        if r.remaining() >= 4:
            has_cred = True
            cred = r.bstr()
        m = cls(opcode, rc, flags, body, cred, env.major, env.minor, env.suggest_major, env.suggest_minor,
                env.flags, env.session_id, env.request_id, serial, recursion, expiration,
                payload[:HEADER_SIZE + body_len], has_cred)
        return m

    @classmethod
    def decode(cls, data: bytes) -> "Message":
        env = Envelope.decode(data[:ENVELOPE_SIZE])
        payload = data[ENVELOPE_SIZE:ENVELOPE_SIZE + env.length]
        if len(payload) < env.length:
            raise HandleError("message shorter than its envelope says")
        return cls.from_parts(env, payload)


def new_request_id() -> int:
    return secrets.randbelow(0x7FFFFFFE) + 1


# -- UDP ------------------------------------------------------------------

def udp_packets(msg: Message) -> List[bytes]:
    """Split a message into datagrams of at most 512 bytes (492 of message each).

    Every packet carries a full envelope with the same request id, the total
    message length and its sequence number; the truncated flag is set when
    there is more than one packet (as the Java client does).
    """
    payload = msg.payload()
    chunks = [payload[i:i + UDP_CHUNK] for i in range(0, len(payload), UDP_CHUNK)] or [b""]
    out = []
    for seq, chunk in enumerate(chunks):
        env = msg.envelope(seq, len(payload))
        if len(chunks) > 1:
            env.flags |= ENV_TRUNCATED
        out.append(env.encode() + chunk)
    return out


class UdpReassembler:
    """Collects the datagrams of one message (by request id), by sequence number."""

    def __init__(self, request_id: Optional[int] = None):
        self.request_id = request_id
        self.env: Optional[Envelope] = None
        self.parts = {}

    def add(self, datagram: bytes) -> Optional[Message]:
        """Add one datagram; returns the message once complete, else None."""
        env = Envelope.decode(datagram[:ENVELOPE_SIZE])
        if self.request_id is not None and env.request_id != self.request_id:
            return None
        if self.env is None:
            self.env = env
        elif env.length != self.env.length:
            raise HandleError("datagrams disagree on the message length")
        self.parts[env.sequence] = datagram[ENVELOPE_SIZE:]
        total = self.env.length
        need = max(1, -(-total // UDP_CHUNK))
        if len(self.parts) < need:
            return None
        buf = bytearray(total)
        for seq in range(need):
            if seq not in self.parts:
                return None
            chunk = self.parts[seq]
            buf[seq * UDP_CHUNK:seq * UDP_CHUNK + len(chunk)] = chunk[:max(0, total - seq * UDP_CHUNK)]
        env = Envelope(**{**self.env.__dict__})
        env.flags &= ~ENV_TRUNCATED
        env.sequence = 0
        return Message.from_parts(env, bytes(buf))


def udp_reassemble(datagrams: Iterable[bytes]) -> Message:
    """Reassemble a message from its datagrams, in any order."""
    r = UdpReassembler()
    msg = None
    for d in datagrams:
        msg = r.add(d) or msg
    if msg is None:
        raise HandleError("incomplete UDP message")
    return msg


# ---------------------------------------------------------------------------
# Handle values, HS_ADMIN, HS_VLIST, HS_SITE
# ---------------------------------------------------------------------------

@dataclass
class ValueRef:
    handle: str
    index: int

    def encode(self) -> bytes:
        return sstr(self.handle) + u32(self.index)


@dataclass
class HandleValue:
    """A handle value (RFC 3651 §3.1)."""

    index: int
    type: str
    data: bytes = b""
    ttl: int = 86400
    ttl_type: int = 0  # 0 relative, 1 absolute
    perms: int = PERM_DEFAULT
    timestamp: int = 0
    refs: List[ValueRef] = field(default_factory=list)

    @classmethod
    def text(cls, index: int, type: str, text: str, **kw) -> "HandleValue":
        return cls(index, type, text.encode("utf-8"), **kw)

    def encode(self) -> bytes:
        out = (u32(self.index) + u32(self.timestamp) + u8(self.ttl_type) + u32(self.ttl) + u8(self.perms)
               + sstr(self.type) + bstr(self.data) + u32(len(self.refs)))
        return out + b"".join(r.encode() for r in self.refs)

    @classmethod
    def read(cls, r: Reader) -> "HandleValue":
        index, ts, ttl_type, ttl, perms = r.u32(), r.u32(), r.u8(), r.u32(), r.u8()
        typ = r.sstr()
        data = r.bstr()
        refs = [ValueRef(r.sstr(), r.u32()) for _ in range(r.u32())]
        return cls(index, typ, data, ttl, ttl_type, perms, ts, refs)

    @classmethod
    def decode(cls, data: bytes) -> "HandleValue":
        return cls.read(Reader(data))

    @property
    def text_data(self) -> str:
        return self.data.decode("utf-8", errors="replace")


def encode_values(values: Sequence[HandleValue]) -> bytes:
    return u32(len(values)) + b"".join(v.encode() for v in values)


def read_values(r: Reader) -> List[HandleValue]:
    return [HandleValue.read(r) for _ in range(r.u32())]


def encode_hs_admin(perms: int, admin_handle: str, admin_index: int) -> bytes:
    """HS_ADMIN data: u16 permissions, str admin handle, u32 admin index."""
    return u16(perms) + sstr(admin_handle) + u32(admin_index)


def decode_hs_admin(data: bytes) -> Tuple[int, str, int]:
    """Returns (perms, admin handle, admin index); tolerates 2 legacy trailing bytes."""
    r = Reader(data)
    perms = r.u16()
    handle = r.sstr()
    index = r.u32()
    if r.remaining() not in (0, 2):
        raise HandleError("trailing bytes in HS_ADMIN")
    return perms, handle, index


def hs_admin_value(index: int, admin_handle: str, admin_index: int, perms: int = ADM_ALL, **kw) -> HandleValue:
    return HandleValue(index, "HS_ADMIN", encode_hs_admin(perms, admin_handle, admin_index), **kw)


def encode_vlist(refs: Sequence[Union[ValueRef, Tuple[str, int]]]) -> bytes:
    """HS_VLIST data: u32 count, then (str handle, u32 index) each."""
    refs = [r if isinstance(r, ValueRef) else ValueRef(*r) for r in refs]
    return u32(len(refs)) + b"".join(r.encode() for r in refs)


def decode_vlist(data: bytes) -> List[ValueRef]:
    r = Reader(data)
    out = [ValueRef(r.sstr(), r.u32()) for _ in range(r.u32())]
    if r.remaining():
        raise HandleError("trailing bytes in HS_VLIST")
    return out


def batch_admin_perm_string(perms: int) -> str:
    """The 12-character permission field of a GenericBatch `ADMIN` value.

    Character i is bit (1 << i) (add handle first, list handles last): the
    reverse of the JSON bit string.
    """
    return "".join("1" if perms & (1 << i) else "0" for i in range(12))


def batch_value_line(v: HandleValue) -> str:
    """A GenericBatch value line for a text, HS_ADMIN or HS_VLIST value."""
    p = "".join("1" if v.perms & b else "0" for b in (PERM_ADMIN_READ, PERM_ADMIN_WRITE, PERM_PUBLIC_READ, PERM_PUBLIC_WRITE))
    if v.type == "HS_ADMIN":
        perms, h, i = decode_hs_admin(v.data)
        data = f"ADMIN {i}:{batch_admin_perm_string(perms)}:{h}"
    elif v.type == "HS_VLIST":
        data = "LIST " + "".join(f"{r.index}:{r.handle};" for r in decode_vlist(v.data))
    else:
        data = "UTF8 " + v.text_data
    return f"{v.index} {v.type} {v.ttl} {p} {data}"


def ip16(address: str) -> bytes:
    """A 16-byte HS_SITE address: IPv4 as 12 zero bytes + 4, IPv6 as is."""
    ip = ipaddress.ip_address(address)
    return (b"\x00" * 12 + ip.packed) if ip.version == 4 else ip.packed


@dataclass
class Interface:
    type: int = ST_BOTH
    protocol: int = SP_TCP
    port: int = 2641


@dataclass
class ServerInfo:
    server_id: int = 1
    address: bytes = ip16("127.0.0.1")
    public_key: bytes = b""
    interfaces: List[Interface] = field(default_factory=list)

    @property
    def ip(self) -> str:
        if self.address[:12] == b"\x00" * 12:
            return str(ipaddress.IPv4Address(self.address[12:]))
        return str(ipaddress.IPv6Address(self.address))

    def key(self):
        """The server's public key decoded from its HS_PUBKEY-style bytes."""
        return parse_pubkey_data(self.public_key)


@dataclass
class SiteInfo:
    """HS_SITE data (RFC 3651 §3.2.2)."""

    version: int = 1
    major: int = 2
    minor: int = 10
    serial: int = 1
    primary: bool = True
    multi_primary: bool = False
    hash_option: int = 0
    hash_filter: bytes = b""
    attributes: List[Tuple[str, bytes]] = field(default_factory=list)
    servers: List[ServerInfo] = field(default_factory=list)

    def encode(self) -> bytes:
        out = (u16(self.version) + u8(self.major) + u8(self.minor) + u16(self.serial)
               + u8((0x80 if self.primary else 0) | (0x40 if self.multi_primary else 0)) + u8(self.hash_option)
               + bstr(self.hash_filter) + u32(len(self.attributes)))
        for name, value in self.attributes:
            out += sstr(name) + bstr(_b(value))
        out += u32(len(self.servers))
        for s in self.servers:
            out += u32(s.server_id) + s.address.rjust(16, b"\x00")[:16] + bstr(s.public_key) + u32(len(s.interfaces))
            out += b"".join(u8(i.type) + u8(i.protocol) + u32(i.port) for i in s.interfaces)
        return out

    @classmethod
    def decode(cls, data: bytes) -> "SiteInfo":
        r = Reader(data)
        site = cls(r.u16(), r.u8(), r.u8(), r.u16())
        f = r.u8()
        site.primary, site.multi_primary = bool(f & 0x80), bool(f & 0x40)
        site.hash_option = r.u8()
        site.hash_filter = r.bstr()
        site.attributes = [(r.sstr(), r.bstr()) for _ in range(r.u32())]
        for _ in range(r.u32()):
            s = ServerInfo(r.u32(), r.take(16), r.bstr())
            s.interfaces = [Interface(r.u8(), r.u8(), r.u32()) for _ in range(r.u32())]
            site.servers.append(s)
        if r.remaining():
            raise HandleError("trailing bytes in HS_SITE")
        return site


# ---------------------------------------------------------------------------
# Keys: Java BigInteger bytes, SM2/SM3, HS_PUBKEY encodings
# ---------------------------------------------------------------------------

def java_bigint(n: int) -> bytes:
    """BigInteger.toByteArray() of a non-negative n: minimal two's complement."""
    return n.to_bytes(n.bit_length() // 8 + 1, "big")


def _digest(hash_type: int, data: bytes) -> bytes:
    if hash_type == HASH_SHA256:
        return hashlib.sha256(data).digest()
    if hash_type == HASH_SHA1:
        return hashlib.sha1(data).digest()
    if hash_type in (HASH_MD5, HASH_MD5_OLD):
        return hashlib.md5(data).digest()
    raise HandleError(f"unknown digest type {hash_type}")


def digest_type_for(version: Tuple[int, int]) -> int:
    """The request-digest hash a reply of this version uses."""
    if not version_ge(version, 2, 1):
        return HASH_MD5_OLD
    return HASH_SHA256 if version_ge(version, 2, 7) else HASH_SHA1


def encode_digest(hash_type: int, digest: bytes) -> bytes:
    """How a digest starts a reply body (old type 0 = u32 length + bytes)."""
    return bstr(digest) if hash_type == HASH_MD5_OLD else u8(hash_type) + digest


# -- SM3 / SM2 -------------------------------------------------------------

def _need_gmssl():
    if _gm_sm2 is None:
        raise HandleError("the gmssl package is needed for SM2/SM3 (pip install gmssl)")


def sm3(data: bytes) -> bytes:
    _need_gmssl()
    return bytes.fromhex(_gm_sm3.sm3_hash(list(bytes(data))))


_SM2 = {k: int(v, 16) for k, v in (_gm_sm2.default_ecc_table.items() if _gm_sm2 else [])}
SM2_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200")
OID_SM2_CURVE = bytes.fromhex("2a811ccf5501822d")  # 1.2.156.10197.1.301


def _sm2_engine(private_hex: str = "0" * 64, public_hex: str = "") -> "object":
    _need_gmssl()
    eng = _gm_sm2.CryptSM2(private_key=private_hex, public_key="")
    eng.public_key = public_hex  # set after: gmssl's constructor lstrip("04") mangles keys
    return eng


@dataclass(frozen=True)
class SM2PublicKey:
    x: int
    y: int

    @property
    def point_hex(self) -> str:
        return "%064x%064x" % (self.x, self.y)

    def uncompressed(self) -> bytes:
        return b"\x04" + self.x.to_bytes(32, "big") + self.y.to_bytes(32, "big")

    def spki_der(self) -> bytes:
        return SM2_SPKI_PREFIX + self.uncompressed()

    def za(self, user_id: bytes = SM2_DEFAULT_USER_ID) -> bytes:
        """Z_A = SM3(ENTL || ID || a || b || xG || yG || xA || yA)."""
        t = _gm_sm2.default_ecc_table
        return sm3(u16(len(user_id) * 8) + user_id + bytes.fromhex(t["a"] + t["b"] + t["g"]) + bytes.fromhex(self.point_hex))

    def verify(self, message: bytes, signature: bytes, user_id: bytes = SM2_DEFAULT_USER_ID) -> bool:
        """SM2 verify of `message` (hashed with Z_A inside); signature DER or raw r||s."""
        try:
            r, s = sm2_sig_decode(signature)
        except HandleError:
            return False
        n = _SM2["n"]
        if not (1 <= r < n and 1 <= s < n):
            return False
        e = sm3(self.za(user_id) + message)
        return bool(_sm2_engine(public_hex=self.point_hex).verify("%064x%064x" % (r, s), e))


@dataclass(frozen=True)
class SM2PrivateKey:
    d: int

    @classmethod
    def generate(cls) -> "SM2PrivateKey":
        return cls(secrets.randbelow(_SM2["n"] - 2) + 1)

    @property
    def public_key(self) -> SM2PublicKey:
        pt = _sm2_engine()._kg(self.d, _gm_sm2.default_ecc_table["g"])
        return SM2PublicKey(int(pt[:64], 16), int(pt[64:], 16))

    def sign(self, message: bytes, user_id: bytes = SM2_DEFAULT_USER_ID, der: bool = True) -> bytes:
        """SM2 signature of `message` (e = SM3(Z_A || message)); DER or raw 64-byte r||s."""
        pub = self.public_key
        e = sm3(pub.za(user_id) + message)
        eng = _sm2_engine("%064x" % self.d, pub.point_hex)
        while True:
            k = "%064x" % (secrets.randbelow(_SM2["n"] - 1) + 1)
            sig = eng.sign(e, k)
            if sig:
                r, s = int(sig[:64], 16), int(sig[64:], 16)
                return sm2_sig_encode(r, s, der)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def _der_int(v: int) -> bytes:
    b = java_bigint(v)
    return b"\x02" + _der_len(len(b)) + b


def sm2_sig_encode(r: int, s: int, der: bool = True) -> bytes:
    if der:
        body = _der_int(r) + _der_int(s)
        return b"\x30" + _der_len(len(body)) + body
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _der_read(data: bytes, pos: int) -> Tuple[int, bytes, int]:
    tag = data[pos]
    ln = data[pos + 1]
    pos += 2
    if ln & 0x80:
        k = ln & 0x7F
        ln = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    if pos + ln > len(data):
        raise HandleError("DER overrun")
    return tag, data[pos:pos + ln], pos + ln


def sm2_sig_decode(sig: bytes) -> Tuple[int, int]:
    """(r, s) from a DER SEQUENCE{r,s} or a 64-byte raw r||s."""
    if len(sig) == 64 and sig[0] != 0x30:
        return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    try:
        tag, body, end = _der_read(sig, 0)
        if tag != 0x30 or end != len(sig):
            raise HandleError("not a DER sequence")
        t1, rb, p = _der_read(body, 0)
        t2, sb, p = _der_read(body, p)
        if t1 != 2 or t2 != 2 or p != len(body):
            raise HandleError("bad DER signature")
        return int.from_bytes(rb, "big"), int.from_bytes(sb, "big")
    except (IndexError, HandleError) as e:
        if len(sig) == 64:
            return int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
        raise HandleError(f"bad SM2 signature encoding: {e}")


# -- PEM / SPKI ----------------------------------------------------------------

def pem_encode(der: bytes, label: str = "PUBLIC KEY", line: int = 64, newline: str = "\n") -> bytes:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + line] for i in range(0, len(b64), line)]
    return (f"-----BEGIN {label}-----{newline}" + newline.join(lines) + f"{newline}-----END {label}-----{newline}").encode()


def pem_decode(pem: bytes) -> bytes:
    body = [ln.strip() for ln in pem.decode("ascii", errors="replace").splitlines()
            if ln.strip() and not ln.strip().startswith("-----")]
    return base64.b64decode("".join(body))


def spki_der(key) -> bytes:
    if isinstance(key, SM2PublicKey):
        return key.spki_der()
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def parse_spki_der(der: bytes):
    """RSA/DSA (cryptography objects) or SM2 (SM2PublicKey) from a SubjectPublicKeyInfo."""
    if OID_SM2_CURVE in der[:40] or der.startswith(SM2_SPKI_PREFIX[:4]) and OID_SM2_CURVE in der:
        point = der[-65:]
        if point[0] != 4:
            raise HandleError("SM2 key is not an uncompressed point")
        return SM2PublicKey(int.from_bytes(point[1:33], "big"), int.from_bytes(point[33:], "big"))
    return serialization.load_der_public_key(der)


# -- HS_PUBKEY data -----------------------------------------------------------

def rsa_pubkey_data(key) -> bytes:
    """Handle binary: str RSA_PUB_KEY, u16 0, bytes e, bytes n (two's complement)."""
    nums = (key.public_key() if hasattr(key, "private_numbers") else key).public_numbers()
    return sstr("RSA_PUB_KEY") + u16(0) + bstr(java_bigint(nums.e)) + bstr(java_bigint(nums.n))


def dsa_pubkey_data(key) -> bytes:
    """Handle binary: str DSA_PUB_KEY, u16 0, bytes q, p, g, y."""
    nums = (key.public_key() if hasattr(key, "private_numbers") else key).public_numbers()
    pn = nums.parameter_numbers
    return (sstr("DSA_PUB_KEY") + u16(0) + bstr(java_bigint(pn.q)) + bstr(java_bigint(pn.p))
            + bstr(java_bigint(pn.g)) + bstr(java_bigint(nums.y)))


def dh_pubkey_data(y: int, p: int, g: int) -> bytes:
    """Handle binary: str DH_PUB_KEY, u16 0, bytes y, p, g."""
    return sstr("DH_PUB_KEY") + u16(0) + bstr(java_bigint(y)) + bstr(java_bigint(p)) + bstr(java_bigint(g))


def sm2_pubkey_data(key: Union[SM2PublicKey, SM2PrivateKey], inner: str = "pem") -> bytes:
    """teleinfo: str SM2_PUB_KEY, u16 0, bytes PEM SPKI (76-char CRLF lines) — or DER with inner="der"."""
    pub = key.public_key if isinstance(key, SM2PrivateKey) else key
    der = pub.spki_der()
    blob = der if inner == "der" else pem_encode(der, line=76, newline="\r\n")
    return sstr("SM2_PUB_KEY") + u16(0) + bstr(blob)


def pem_pubkey_data(key) -> bytes:
    """ID-SDK style: the bare PEM SubjectPublicKeyInfo bytes (RSA, DSA or SM2)."""
    if isinstance(key, SM2PrivateKey):
        key = key.public_key
    if hasattr(key, "private_numbers"):
        key = key.public_key()
    return pem_encode(spki_der(key))


def pubkey_data(key, encoding: str = "handle") -> bytes:
    """HS_PUBKEY data for a key: encoding "handle" (RSA_PUB_KEY/DSA_PUB_KEY/SM2_PUB_KEY) or "pem"."""
    if encoding == "pem":
        return pem_pubkey_data(key)
    if isinstance(key, (SM2PublicKey, SM2PrivateKey)):
        return sm2_pubkey_data(key)
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return rsa_pubkey_data(key)
    if isinstance(key, (dsa.DSAPrivateKey, dsa.DSAPublicKey)):
        return dsa_pubkey_data(key)
    raise HandleError(f"unsupported key {type(key)}")


def parse_pubkey_data(data: bytes):
    """Decode HS_PUBKEY data in any of the three shapes (or DER SPKI).

    Returns a cryptography RSA/DSA public key, an SM2PublicKey, or for
    DH_PUB_KEY a tuple ("DH", y, p, g).
    """
    data = bytes(data)
    if data.lstrip().startswith(b"-----BEGIN"):
        return parse_spki_der(pem_decode(data))
    if len(data) >= 4 and 0 < struct.unpack(">I", data[:4])[0] <= 32:
        r = Reader(data)
        kind = r.bstr()
        if kind in (b"RSA_PUB_KEY", b"DSA_PUB_KEY", b"DH_PUB_KEY", b"SM2_PUB_KEY"):
            r.u16()
            if kind == b"RSA_PUB_KEY":
                e = int.from_bytes(r.bstr(), "big")
                n = int.from_bytes(r.bstr(), "big")
                return rsa.RSAPublicNumbers(e, n).public_key()
            if kind == b"DSA_PUB_KEY":
                q, p, g, y = (int.from_bytes(r.bstr(), "big") for _ in range(4))
                return dsa.DSAPublicNumbers(y, dsa.DSAParameterNumbers(p, q, g)).public_key()
            if kind == b"DH_PUB_KEY":
                y, p, g = (int.from_bytes(r.bstr(), "big") for _ in range(3))
                return ("DH", y, p, g)
            inner = r.bstr()
            return parse_spki_der(pem_decode(inner) if inner.lstrip().startswith(b"-----") else inner)
    return parse_spki_der(data)


def load_private_key(pem_or_der: bytes, password: Optional[bytes] = None):
    """cryptography private key from PEM/DER (PKCS#8 or traditional)."""
    if pem_or_der.lstrip().startswith(b"-----"):
        return serialization.load_pem_private_key(pem_or_der, password)
    return serialization.load_der_private_key(pem_or_der, password)


# ---------------------------------------------------------------------------
# Challenges and answers
# ---------------------------------------------------------------------------

@dataclass
class Challenge:
    """A 402 reply, parsed: what the answer is computed from."""

    nonce: bytes
    digest: bytes
    digest_type: int
    version: Tuple[int, int]  # the challenge's envelope version
    suggested: Tuple[int, int]
    session_id: int
    opcode: int

    @property
    def effective_version(self) -> Tuple[int, int]:
        """The lower of the envelope and suggested versions (used by the HS_SECKEY answer)."""
        return min(tuple(self.version), tuple(self.suggested))

    @property
    def signed_data(self) -> bytes:
        """nonce || digest: what HS_SECKEY MACs and HS_PUBKEY signs."""
        return self.nonce + self.digest

    def check_request(self, request_hb: bytes) -> bool:
        """True when the digest is that of our own request's header+body."""
        return _digest(self.digest_type, request_hb) == self.digest


def challenge_from_reply(reply: Message) -> Challenge:
    """Parse a 402 reply body (both the ≥2.1 and the old form)."""
    if reply.rc != RC_AUTHENTICATION_NEEDED:
        raise HandleError(f"not a challenge: rc {reply.rc}")
    r = Reader(reply.body)
    if reply.flags & FLAG_RRDG:
        dtype, digest = read_request_digest(r)
        nonce = r.bstr()
    else:  # old form: str nonce, str digest (MD5)
        nonce = r.bstr()
        digest = r.bstr()
        dtype = HASH_MD5_OLD
    return Challenge(nonce, digest, dtype, reply.version, reply.suggested, reply.session_id, reply.opcode)


def read_request_digest(r: Reader) -> Tuple[int, bytes]:
    dtype = r.u8()
    if dtype == HASH_MD5_OLD:
        r.pos -= 1
        return dtype, r.bstr()
    if dtype not in DIGEST_SIZES:
        raise HandleError(f"unknown request digest type {dtype}")
    return dtype, r.take(DIGEST_SIZES[dtype])


def make_challenge_reply(request: Message, nonce: Optional[bytes] = None, session_id: int = 1,
                         version: Optional[Tuple[int, int]] = None, old_form: bool = False) -> Message:
    """Server side, for offline tests: the 402 reply a Handle server sends for `request`."""
    nonce = nonce or os.urandom(NONCE_SIZE)
    version = version or min(request.suggested, DEFAULT_VERSION)
    hb = request.header_and_body()
    keep = request.flags & (FLAG_AUTH | FLAG_CERT | FLAG_ENCR | FLAG_CACR | FLAG_PUBL | FLAG_DNRF)
    if old_form or not version_ge(version, 2, 1):
        body = bstr(nonce) + bstr(hashlib.md5(hb).digest())
        flags = keep | FLAG_RECU
    else:
        dt = digest_type_for(version)
        body = encode_digest(dt, _digest(dt, hb)) + bstr(nonce)
        flags = keep | FLAG_RECU | FLAG_RRDG
    return Message(request.opcode, RC_AUTHENTICATION_NEEDED, flags, body, major=version[0], minor=version[1],
                   session_id=session_id, request_id=request.request_id)


# -- HS_SECKEY --------------------------------------------------------------

def _java_pbkdf2_password(secret: bytes) -> bytes:
    # Java turns each byte into a char (b & 0xff) and SunJCE PBKDF2 encodes chars as UTF-8
    return secret.decode("latin-1").encode("utf-8")


def seckey_answer_pbkdf2(secret: bytes, nonce: bytes, digest: bytes, salt: Optional[bytes] = None,
                         iterations: int = 10000, key_bits: int = 160) -> bytes:
    """0x22 | bytes salt | u32 iterations | u32 key bits | bytes HMAC-SHA1(DK, nonce||digest)."""
    salt = os.urandom(16) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha1", _java_pbkdf2_password(secret), salt, iterations, key_bits // 8)
    mac = hmac.new(dk, nonce + digest, hashlib.sha1).digest()
    return u8(MAC_PBKDF2_HMAC_SHA1) + bstr(salt) + u32(iterations) + u32(key_bits) + bstr(mac)


def seckey_answer_sha1(secret: bytes, nonce: bytes, digest: bytes) -> bytes:
    """0x02 | SHA1(secret || nonce || digest || secret)  (protocol 2.1 .. 2.6)."""
    return u8(HASH_SHA1) + hashlib.sha1(secret + nonce + digest + secret).digest()


def seckey_answer_md5_old(secret: bytes, nonce: bytes, digest: bytes) -> bytes:
    """MD5(secret || nonce || digest || secret), no prefix (protocol < 2.1)."""
    return hashlib.md5(secret + nonce + digest + secret).digest()


def seckey_answer_simple(code: int, secret: bytes, nonce: bytes, digest: bytes) -> bytes:
    """The other codes a Java server accepts: 0x01 MD5, 0x03 SHA-256 (k‖m‖k), 0x12/0x13 HMAC."""
    m = nonce + digest
    if code == HASH_MD5:
        return u8(code) + hashlib.md5(secret + m + secret).digest()
    if code == HASH_SHA256:
        return u8(code) + hashlib.sha256(secret + m + secret).digest()
    if code == MAC_HMAC_SHA1:
        return u8(code) + hmac.new(secret, m, hashlib.sha1).digest()
    if code == MAC_HMAC_SHA256:
        return u8(code) + hmac.new(secret, m, hashlib.sha256).digest()
    raise HandleError(f"unknown secret key answer code {code}")


def verify_seckey_answer(secret: bytes, nonce: bytes, digest: bytes, answer: bytes, old_format: bool = False) -> bool:
    """Server side: check an HS_SECKEY answer the way the Java server does."""
    if old_format:
        return hmac.compare_digest(answer, seckey_answer_md5_old(secret, nonce, digest))
    if not answer:
        return False
    code = answer[0]
    try:
        if code == MAC_PBKDF2_HMAC_SHA1:
            r = Reader(answer, 1)
            salt, it, bits = r.bstr(), r.u32(), r.u32()
            if not 0 < it <= 10_000_000 or bits % 8 or not 0 < bits <= 4096:
                return False
            expect = seckey_answer_pbkdf2(secret, nonce, digest, salt, it, bits)
        elif code == HASH_SHA1:
            expect = seckey_answer_sha1(secret, nonce, digest)
        else:
            expect = seckey_answer_simple(code, secret, nonce, digest)
    except HandleError:
        return False
    return hmac.compare_digest(answer, expect)


def java_hashed_secret(password: Union[str, bytes]) -> bytes:
    """The "hash" option of SecretKeyAuthenticationInfo: lowercase hex of SHA-1, as ASCII."""
    return hashlib.sha1(_b(password)).hexdigest().encode()


# -- authenticators -----------------------------------------------------------

class Auth:
    """An identity that can answer challenges: subclasses give auth_type and answer()."""

    auth_type = b""

    def __init__(self, handle: str, index: int):
        self.handle = handle
        self.index = index

    def answer(self, ch: Challenge) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def answer_body(self, ch: Challenge) -> bytes:
        return body_challenge_answer(self.auth_type, self.handle, self.index, self.answer(ch))


class SecretKeyAuth(Auth):
    """HS_SECKEY. scheme: "auto" (by version like Java), "pbkdf2", "sha1", "md5-old",
    or one of "md5", "sha256", "hmac-sha1", "hmac-sha256" (accepted by Java servers)."""

    auth_type = AUTH_SECKEY

    def __init__(self, handle: str, index: int, secret: Union[str, bytes], scheme: str = "auto",
                 iterations: int = 10000, key_bits: int = 160, salt: Optional[bytes] = None):
        super().__init__(handle, index)
        self.secret = _b(secret)
        self.scheme = scheme
        self.iterations, self.key_bits, self.salt = iterations, key_bits, salt

    def scheme_for(self, ch: Challenge) -> str:
        if self.scheme != "auto":
            return self.scheme
        v = ch.effective_version
        if not version_ge(v, 2, 1):
            return "md5-old"
        return "pbkdf2" if version_ge(v, 2, 7) else "sha1"

    def answer(self, ch: Challenge) -> bytes:
        s = self.scheme_for(ch)
        if s == "pbkdf2":
            return seckey_answer_pbkdf2(self.secret, ch.nonce, ch.digest, self.salt, self.iterations, self.key_bits)
        if s == "sha1":
            return seckey_answer_sha1(self.secret, ch.nonce, ch.digest)
        if s == "md5-old":
            return seckey_answer_md5_old(self.secret, ch.nonce, ch.digest)
        codes = {"md5": HASH_MD5, "sha256": HASH_SHA256, "hmac-sha1": MAC_HMAC_SHA1, "hmac-sha256": MAC_HMAC_SHA256}
        return seckey_answer_simple(codes[s], self.secret, ch.nonce, ch.digest)


HASH_LABELS = {"SHA256": b"SHA-256", "SHA1": b"SHA1", "SM3": b"SM3", "MD5": b"MD5"}


def _hash_obj(name: str):
    name = name.upper().replace("-", "")
    if name == "SHA256":
        return hashes.SHA256()
    if name == "SHA1":
        return hashes.SHA1()
    if name == "MD5":
        return hashes.MD5()
    raise HandleError(f"unsupported hash {name}")


def _hash_name_from_label(label: bytes) -> str:
    if len(label) == 1:
        return {HASH_SHA1: "SHA1", HASH_SHA256: "SHA256", HASH_MD5: "MD5"}.get(label[0], "?")
    n = label.decode("ascii", errors="replace").upper().replace("-", "")
    return n


def pubkey_signature(key, data: bytes, hash_name: str = "SHA256", sm2_user_id: bytes = SM2_DEFAULT_USER_ID,
                     sm2_der: bool = True) -> bytes:
    """Sign `data` with an RSA (PKCS#1 v1.5), DSA (DER) or SM2 private key."""
    if isinstance(key, SM2PrivateKey):
        return key.sign(data, sm2_user_id, sm2_der)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), _hash_obj(hash_name))
    if isinstance(key, dsa.DSAPrivateKey):
        return key.sign(data, _hash_obj(hash_name))
    raise HandleError(f"unsupported private key {type(key)}")


def pubkey_verify(key, data: bytes, signature: bytes, hash_name: str, sm2_user_id: bytes = SM2_DEFAULT_USER_ID) -> bool:
    try:
        if isinstance(key, SM2PublicKey):
            return key.verify(data, signature, sm2_user_id)
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), _hash_obj(hash_name))
            return True
        if isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, data, _hash_obj(hash_name))
            return True
    except (InvalidSignature, ValueError, HandleError):
        return False
    raise HandleError(f"unsupported public key {type(key)}")


class PublicKeyAuth(Auth):
    """HS_PUBKEY with an RSA or DSA private key (cryptography object).

    hash: None = like Java (SHA-256 from 2.7, but SHA-1 for DSA below 2.11,
    SHA-1 below 2.7); or "SHA256" / "SHA1". label overrides the hash name
    written (default "SHA-256" / "SHA1"; "SHA256" and "SHA-1" are also legal).
    """

    auth_type = AUTH_PUBKEY

    def __init__(self, handle: str, index: int, private_key, hash: Optional[str] = None, label: Optional[bytes] = None):
        super().__init__(handle, index)
        self.key = private_key
        self.hash = hash
        self.label = label

    def hash_for(self, ch: Challenge) -> str:
        if self.hash:
            return self.hash.upper().replace("-", "")
        v = ch.version
        if not version_ge(v, 2, 7):
            return "SHA1"
        if isinstance(self.key, dsa.DSAPrivateKey) and not version_ge(v, 2, 11):
            return "SHA1"
        return "SHA256"

    def answer(self, ch: Challenge) -> bytes:
        h = self.hash_for(ch)
        sig = pubkey_signature(self.key, ch.signed_data, h)
        return bstr(self.label or HASH_LABELS[h]) + bstr(sig)


class SM2Auth(Auth):
    """HS_PUBKEY with an SM2 key, as teleinfo's id-pointer-sdk answers.

    Signs M = SM3(nonce || digest) (prehash=True; False signs nonce||digest
    itself) with SM2 whose user id is the admin handle's UTF-8 bytes unless
    user_id is given; signature DER (der=True) or raw r||s; hash name "SM3".
    """

    auth_type = AUTH_PUBKEY

    def __init__(self, handle: str, index: int, private_key: SM2PrivateKey, user_id: Optional[bytes] = None,
                 der: bool = True, prehash: bool = True, label: bytes = b"SM3"):
        super().__init__(handle, index)
        self.key = private_key
        self.user_id = _b(handle) if user_id is None else _b(user_id)
        self.der, self.prehash, self.label = der, prehash, label

    def answer(self, ch: Challenge) -> bytes:
        m = sm3(ch.signed_data) if self.prehash else ch.signed_data
        return bstr(self.label) + bstr(self.key.sign(m, self.user_id, self.der))


def verify_pubkey_answer(public_key, nonce: bytes, digest: bytes, answer: bytes,
                         sm2_user_ids: Sequence[bytes] = ()) -> bool:
    """Server side: check an HS_PUBKEY answer (RSA/DSA like Java; SM2 with the given
    user ids — e.g. the admin handle — then the default, pre-hashed or not)."""
    try:
        r = Reader(answer)
        label, sig = r.bstr(), r.bstr()
    except HandleError:
        return False
    data = nonce + digest
    if isinstance(public_key, SM2PublicKey):
        for uid in list(sm2_user_ids) + [SM2_DEFAULT_USER_ID]:
            for m in (sm3(data), data):
                if public_key.verify(m, sig, _b(uid)):
                    return True
        return False
    name = _hash_name_from_label(label)
    if name not in ("SHA1", "SHA256", "MD5"):
        return False
    return pubkey_verify(public_key, data, sig, name)


# ---------------------------------------------------------------------------
# Credentials (message signatures)
# ---------------------------------------------------------------------------

@dataclass
class Credential:
    """The credential section: version, reserved, flags, signer (handle, index =
    session counter), type (HS_SIGNED / HS_MAC), hash name, signature."""

    sig_type: bytes = CRED_SIGNED
    hash_alg: bytes = b"SHA-256"
    signature: bytes = b""
    counter: int = 0
    version: int = 0
    reserved: int = 0
    flags: int = 0
    signer_handle: bytes = b""

    def encode(self) -> bytes:
        section = bstr(self.hash_alg) + bstr(self.signature)
        return (u8(self.version) + u8(self.reserved) + u16(self.flags) + bstr(self.signer_handle) + u32(self.counter)
                + bstr(self.sig_type) + u32(len(section)) + section)

    @classmethod
    def decode(cls, data: bytes) -> "Credential":
        r = Reader(data)
        version, reserved, flags = r.u8(), r.u8(), r.u16()
        signer, counter = r.bstr(), r.u32()
        sig_type = r.bstr()
        section_len = r.u32()
        sr = Reader(r.take(section_len))
        hash_alg = sr.bstr()
        sig = sr.bstr()
        return cls(sig_type, hash_alg, sig, counter, version, reserved, flags, signer)


def signed_bytes(msg: Message, counter: int) -> bytes:
    """What an HS_SIGNED / HS_MAC credential covers, by the message's version."""
    hb = msg.header_and_body()
    v = msg.version
    if not version_ge(v, 2, 6):
        return hb
    if not version_ge(v, 2, 7):  # Java's 2.6 offset bug, reproduced
        buf = bytearray(14)
        buf[0], buf[1] = msg.major, msg.minor
        buf[2:6] = u32(msg.session_id)
        buf[4:8] = u32(msg.request_id)
        buf[4:8] = u32(counter)
        return bytes(buf) + hb
    pre = bytes([msg.major, msg.minor])
    if version_ge(v, 2, 8):
        pre += bytes([msg.suggest_major, msg.suggest_minor])
    return pre + u32(msg.session_id) + u32(msg.request_id) + u32(counter) + hb


def sign_message(msg: Message, private_key, hash_name: Optional[str] = None, counter: int = 0,
                 sm2_user_id: bytes = SM2_DEFAULT_USER_ID, sm2_der: bool = True) -> Credential:
    """Attach an HS_SIGNED credential (RSA/DSA/SM2). hash None: SM3 for SM2,
    else SHA-256 from 2.7 (2.11 for DSA), else SHA-1 — like the Java server."""
    if hash_name is None:
        if isinstance(private_key, SM2PrivateKey):
            hash_name = "SM3"
        elif version_ge(msg.version, 2, 11) or (version_ge(msg.version, 2, 7) and not isinstance(private_key, dsa.DSAPrivateKey)):
            hash_name = "SHA256"
        else:
            hash_name = "SHA1"
    data = signed_bytes(msg, counter)
    sig = pubkey_signature(private_key, data, hash_name, sm2_user_id, sm2_der)
    cred = Credential(CRED_SIGNED, HASH_LABELS[hash_name.upper().replace("-", "")], sig, counter)
    msg.credential = cred.encode()
    return cred


def session_mac(msg: Message, session_key: bytes, counter: int) -> Tuple[bytes, bytes]:
    """(hash name, MAC) of an HS_MAC credential for this message's version."""
    v = msg.version
    if version_ge(v, 2, 7):
        return b"HMAC-SHA256", hmac.new(session_key, signed_bytes(msg, counter), hashlib.sha256).digest()
    if not version_ge(v, 2, 5):
        hb = msg.header_and_body()
        return bytes([HASH_SHA1]), hashlib.sha1(session_key + hb + session_key).digest()
    raise HandleError("HS_MAC for protocol 2.5/2.6 (broken layout) is not supported")


def sign_message_mac(msg: Message, session_key: bytes, counter: int) -> Credential:
    name, mac = session_mac(msg, session_key, counter)
    cred = Credential(CRED_MAC, name, mac, counter)
    msg.credential = cred.encode()
    return cred


def verify_message(msg: Message, public_key, sm2_user_id: bytes = SM2_DEFAULT_USER_ID) -> bool:
    """Check an HS_SIGNED credential with the signer's public key (RSA/DSA/SM2)."""
    if not msg.credential:
        return False
    try:
        cred = Credential.decode(msg.credential)
    except HandleError:
        return False
    if cred.sig_type not in (CRED_SIGNED, CRED_OLDSIGNED):
        return False
    data = signed_bytes(msg, cred.counter)
    name = _hash_name_from_label(cred.hash_alg)
    if isinstance(public_key, SM2PublicKey):
        return name == "SM3" and public_key.verify(data, cred.signature, sm2_user_id)
    if name not in ("SHA1", "SHA256", "MD5"):
        return False
    return pubkey_verify(public_key, data, cred.signature, name)


def verify_message_mac(msg: Message, session_key: bytes) -> bool:
    if not msg.credential:
        return False
    cred = Credential.decode(msg.credential)
    if cred.sig_type != CRED_MAC:
        return False
    try:
        _, mac = session_mac(msg, session_key, cred.counter)
    except HandleError:
        return False
    return hmac.compare_digest(mac, cred.signature)


# ---------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------

def body_resolution(handle: str, indexes: Sequence[int] = (), types: Sequence[str] = ()) -> bytes:
    return sstr(handle) + u32(len(indexes)) + b"".join(u32(i) for i in indexes) + u32(len(types)) + b"".join(sstr(t) for t in types)


def body_handle(handle: str) -> bytes:
    """DELETE_HANDLE, LIST_HANDLES, LIST_HOMED_NAS, HOME_NA, UNHOME_NA, GET_SITE_INFO ("/"), SESSION_TERMINATE."""
    return sstr(handle)


def body_handle_values(handle: str, values: Sequence[HandleValue]) -> bytes:
    """CREATE_HANDLE, ADD_VALUE, MODIFY_VALUE."""
    return sstr(handle) + encode_values(values)


def body_remove_values(handle: str, indexes: Sequence[int]) -> bytes:
    return sstr(handle) + u32(len(indexes)) + b"".join(u32(i) for i in indexes)


def body_challenge_answer(auth_type: bytes, handle: str, index: int, answer: bytes) -> bytes:
    return bstr(auth_type) + sstr(handle) + u32(index) + bstr(answer)


def body_verify_response(handle: str, index: int, nonce: bytes, digest: bytes, answer: bytes,
                         digest_type: Optional[int] = None) -> bytes:
    """VERIFY_RESPONSE: Java sends the digest length-prefixed; pass digest_type to send u8 type + digest."""
    d = bstr(digest) if digest_type is None else u8(digest_type) + digest
    return sstr(handle) + u32(index) + bstr(nonce) + d + bstr(answer)


def body_session_setup(mode: int, identity_handle: str = "", identity_index: int = -1, timeout: int = 86400,
                       public_key: Optional[bytes] = None, exchange_handle: Optional[str] = None,
                       exchange_index: int = -1) -> bytes:
    out = u16(mode) + u32(timeout) + sstr(identity_handle) + u32(identity_index)
    if mode in (KEY_EXCHANGE_CIPHER_CLIENT, KEY_EXCHANGE_DH):
        out += bstr(public_key or b"")
    elif mode == KEY_EXCHANGE_CIPHER_HDL:
        out += sstr(exchange_handle or "") + u32(exchange_index)
    return out + b"\x00\x00"  # Java sizes the u16 mode as 4 bytes: 2 trailing zeros


def body_login(handle: str, index: int) -> bytes:
    """LOGIN_ID_SYSTEM (2001): str admin handle, u32 index."""
    return sstr(handle) + u32(index)


# ---------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------

class Reply:
    """A decoded reply: rc, request digest, and the typed content for its opcode.

    Attributes set when they apply: values, handle, handles, site, message
    (error text), nonce/challenge, valid (VERIFY_RESPONSE), session_mode /
    session_data (SESSION_SETUP), parts (all messages of a continued reply).
    """

    def __init__(self, msg: Message):
        self.msg = msg
        self.rc = msg.rc
        self.opcode = msg.opcode
        self.digest_type: Optional[int] = None
        self.digest: Optional[bytes] = None
        self.values: List[HandleValue] = []
        self.handle: Optional[str] = None
        self.handles: List[str] = []
        self.site: Optional[SiteInfo] = None
        self.message: str = ""
        self.challenge: Optional[Challenge] = None
        self.valid: Optional[bool] = None
        self.session_mode: Optional[int] = None
        self.session_data: bytes = b""
        self.parts: List["Reply"] = [self]
        self.parse_error: Optional[str] = None
        try:
            self._parse()
        except (HandleError, UnicodeDecodeError, struct.error, IndexError) as e:
            self.parse_error = str(e)

    @property
    def ok(self) -> bool:
        return self.rc == RC_SUCCESS

    @property
    def expired(self) -> bool:
        return (self.msg.expiration or 0) < _now()

    def value(self, index: int) -> Optional[HandleValue]:
        return next((v for v in self.values if v.index == index), None)

    def _parse(self):
        m = self.msg
        if m.rc == RC_AUTHENTICATION_NEEDED:
            self.challenge = challenge_from_reply(m)
            self.digest_type, self.digest = self.challenge.digest_type, self.challenge.digest
            return
        r = Reader(m.body)
        if m.flags & FLAG_RRDG:
            self.digest_type, self.digest = read_request_digest(r)
        if m.rc == RC_SUCCESS:
            op = m.opcode
            if op == OC_RESOLUTION:
                self.handle = r.sstr()
                self.values = read_values(r)
            elif op == OC_GET_SITE_INFO:
                self.site = SiteInfo.decode(r.rest())
            elif op == OC_CREATE_HANDLE:
                self.handle = r.sstr() if r.remaining() else None
            elif op in (OC_LIST_HANDLES, OC_LIST_HOMED_NAS):
                self.handles = [r.sstr() for _ in range(r.u32())]
            elif op == OC_VERIFY_RESPONSE:
                self.valid = bool(r.u8() & 1)
            elif op == OC_SESSION_SETUP:
                self.session_mode = r.u16()
                self.session_data = r.bstr()
        elif m.rc in (RC_SERVICE_REFERRAL, RC_PREFIX_REFERRAL):
            self.handle = r.sstr()
            if r.remaining():
                self.values = read_values(r)
        elif m.rc >= RC_ERROR and r.remaining() >= 4:
            self.message = r.sstr()

    def __repr__(self):
        return f"<Reply op={self.opcode} rc={self.rc} msg={self.message!r} values={len(self.values)} handles={len(self.handles)}>"


def check_reply_digest(request: Message, reply: Message) -> bool:
    """True if the reply's request digest is that of the request's header+body."""
    r = Reply(reply)
    if r.digest is None:
        return False
    return _digest(r.digest_type, request.header_and_body()) == r.digest


# ---------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------

class TcpConnection:
    """One TCP connection carrying envelope-framed messages."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2641, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.decrypt = None  # optional callable(payload) -> payload for encrypted replies

    def _read(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise HandleError(f"connection closed after {len(buf)} of {n} bytes")
            buf += chunk
        return bytes(buf)

    def send(self, msg: Message) -> None:
        self.sock.sendall(msg.encode())

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> Message:
        env = Envelope.decode(self._read(ENVELOPE_SIZE))
        payload = self._read(env.length)
        if env.flags & ENV_ENCRYPTED:
            if self.decrypt is None:
                raise HandleError("encrypted reply and no session to decrypt it")
            payload = self.decrypt(payload)
            env.flags &= ~ENV_ENCRYPTED
            env.length = len(payload)
        return Message.from_parts(env, payload)

    def exchange(self, msg: Message) -> List[Message]:
        """Send one request; read replies until one without the continuous flag."""
        self.send(msg)
        out = []
        while True:
            reply = self.recv()
            if reply.request_id != msg.request_id:
                raise HandleError(f"reply for request id {reply.request_id}, expected {msg.request_id}")
            out.append(reply)
            if not reply.continuous:
                return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def udp_exchange(host: str, port: int, msg: Message, timeout: float = 2.0, retries: int = 3) -> Message:
    """Send a request over UDP (split into 492-byte chunks) and reassemble the reply."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        packets = udp_packets(msg)
        for attempt in range(retries):
            for p in packets:
                s.sendto(p, (host, port))
            asm = UdpReassembler(msg.request_id)
            deadline = time.monotonic() + timeout * (attempt + 1)
            try:
                while time.monotonic() < deadline:
                    s.settimeout(max(0.01, deadline - time.monotonic()))
                    data, _ = s.recvfrom(65535)
                    done = asm.add(data)
                    if done is not None:
                        return done
            except socket.timeout:
                continue
    raise HandleError(f"no UDP reply from {host}:{port}")


# ---------------------------------------------------------------------------
# Sessions (Diffie-Hellman SESSION_SETUP, HS_MAC)
# ---------------------------------------------------------------------------

#: RFC 2409 Oakley group 2 (1024-bit MODP), generator 2
DH_P_1024 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF", 16)
DH_G = 2


def _des_parity(key: bytes) -> bytes:
    out = bytearray()
    for b in key:
        b &= 0xFE
        b |= (bin(b).count("1") & 1) ^ 1
        out.append(b)
    return bytes(out)


def dh_session_key(shared: int, p: int, algorithm: int) -> bytes:
    """The session key Java derives from a DH shared secret (fixed len(p) bytes)."""
    raw = shared.to_bytes((p.bit_length() + 7) // 8, "big")
    if algorithm == CIPHER_AES:
        i = 0
        while i + 32 < len(raw) and raw[i] == 0:
            i += 1
        return raw[i:i + 32]
    if algorithm == CIPHER_DES:
        return _des_parity(raw[:8])
    if algorithm == CIPHER_DESEDE:
        return _des_parity(raw[:24])
    raise HandleError(f"unknown session cipher {algorithm}")


@dataclass
class ClientSession:
    session_id: int
    key: bytes
    algorithm: int
    version: Tuple[int, int]
    counter: int = 1

    def next_counter(self) -> int:
        c = self.counter
        self.counter += 1
        return c

    def decrypt(self, payload: bytes) -> bytes:
        """AES/CBC/PKCS5 with the IV in front (protocol ≥ 2.4), AES sessions only."""
        if self.algorithm != CIPHER_AES:
            raise HandleError("only AES session encryption is implemented")
        iv, ct = payload[:16], payload[16:]
        d = Cipher(algorithms.AES(self.key[:16]), modes.CBC(iv)).decryptor()
        padded = d.update(ct) + d.finalize()
        u = sym_padding.PKCS7(128).unpadder()
        return u.update(padded) + u.finalize()

    def encrypt(self, payload: bytes) -> bytes:
        if self.algorithm != CIPHER_AES:
            raise HandleError("only AES session encryption is implemented")
        iv = os.urandom(16)
        p = sym_padding.PKCS7(128).padder()
        e = Cipher(algorithms.AES(self.key[:16]), modes.CBC(iv)).encryptor()
        return iv + e.update(p.update(payload) + p.finalize()) + e.finalize()


def dh_server_reply_data(client_pub: bytes, algorithm: int = CIPHER_AES) -> Tuple[bytes, bytes]:
    """Server side, for offline tests: (SESSION_SETUP reply data, session key)."""
    kind, y, p, g = parse_pubkey_data(client_pub)
    x = secrets.randbelow(p - 3) + 2
    ys = pow(g, x, p)
    return u32(algorithm) + dh_pubkey_data(ys, p, g), dh_session_key(pow(y, x, p), p, algorithm)


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------

class HandleClient:
    """A native-protocol client of one server.

    transport "tcp" keeps one connection (reconnects when closed; challenge
    answers go on the same connection unless new_connection_for_answer, which
    imitates the Java client) or "udp". With verify=True, certified replies
    are checked against server_key (set by get_site_info() or passed in).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 2641, *, transport: str = "tcp",
                 auth: Optional[Auth] = None, version: Tuple[int, int] = DEFAULT_VERSION,
                 suggest: Tuple[int, int] = DEFAULT_VERSION, timeout: float = 10.0, server_key=None,
                 verify: bool = False, new_connection_for_answer: bool = False,
                 sm2_server_user_id: bytes = SM2_DEFAULT_USER_ID):
        self.host, self.port, self.transport = host, port, transport
        self.auth = auth
        self.version, self.suggest = tuple(version), tuple(suggest)
        self.timeout = timeout
        self.server_key = server_key
        self.verify = verify
        self.new_connection_for_answer = new_connection_for_answer
        self.sm2_server_user_id = sm2_server_user_id
        self.conn: Optional[TcpConnection] = None
        self.session: Optional[ClientSession] = None
        self.session_id = 0  # envelope session id for requests (CAICT uses its own)
        self.logged_in = False
        #: CAICT's engine sends the answer in its own session id, not the challenge's
        self.answer_with_client_session = False
        self.last_request: Optional[Message] = None

    # -- plumbing --------------------------------------------------------
    def close(self) -> None:
        if self.conn:
            self.conn.close()
            self.conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def connection(self) -> TcpConnection:
        if self.conn is None:
            self.conn = TcpConnection(self.host, self.port, self.timeout)
            if self.session:
                self.conn.decrypt = self.session.decrypt
        return self.conn

    def make_request(self, opcode: int, body: bytes, flags: Optional[int] = None, *, certify: bool = False,
                     rrdg: bool = False, session_id: Optional[int] = None,
                     version: Optional[Tuple[int, int]] = None) -> Message:
        f = DEFAULT_FLAGS if flags is None else flags
        if certify:
            f |= FLAG_CERT
        if rrdg:
            f |= FLAG_RRDG
        v = version or self.version
        msg = Message(opcode, RC_RESERVED, f, body, major=v[0], minor=v[1], suggest_major=self.suggest[0],
                      suggest_minor=self.suggest[1], request_id=new_request_id())
        if session_id is not None:
            msg.session_id = session_id
        elif self.session:
            msg.session_id = self.session.session_id
        else:
            msg.session_id = self.session_id
        if self.session and msg.session_id == self.session.session_id and opcode != OC_SESSION_SETUP:
            sign_message_mac(msg, self.session.key, self.session.next_counter())
        return msg

    def exchange(self, msg: Message, new_connection: bool = False) -> List[Message]:
        """Send one message; all reply messages (several for a continued list)."""
        self.last_request = msg
        if self.transport == "udp":
            return [udp_exchange(self.host, self.port, msg, timeout=min(self.timeout, 2.0))]
        if new_connection:
            with TcpConnection(self.host, self.port, self.timeout) as c:
                return c.exchange(msg)
        try:
            return self.connection().exchange(msg)
        except (OSError, HandleError):
            self.close()
            raise

    def verify_reply(self, reply: Message, request: Message) -> None:
        """Raise HandleError unless the certified reply is signed and digests match."""
        if request.flags & FLAG_RRDG and not check_reply_digest(request, reply):
            raise HandleError("reply carries a wrong or no request digest")
        if not request.flags & FLAG_CERT:
            return
        if reply.credential and Credential.decode(reply.credential).sig_type == CRED_MAC:
            if not self.session or not verify_message_mac(reply, self.session.key):
                raise HandleError("HS_MAC credential does not verify")
            return
        if self.server_key is None:
            raise HandleError("no server public key to verify the reply (call get_site_info first)")
        if not verify_message(reply, self.server_key, self.sm2_server_user_id):
            raise HandleError("reply signature does not verify")

    def request(self, opcode: int, body: bytes, flags: Optional[int] = None, *, certify: bool = False,
                rrdg: bool = False, authenticate: bool = True, session_id: Optional[int] = None,
                auth: Optional[Auth] = None) -> Reply:
        """Send a request; answer a 402 with `auth`; return the final Reply.

        For continued replies (LIST_HANDLES) `handles` holds them all and
        `parts` every message's Reply.
        """
        req = self.make_request(opcode, body, flags, certify=certify, rrdg=rrdg, session_id=session_id)
        replies = self.exchange(req)
        auth = auth or self.auth
        original = req
        for _ in range(2):  # Java answers at most two challenges
            last = replies[-1]
            if last.rc != RC_AUTHENTICATION_NEEDED or not authenticate or auth is None:
                break
            if self.verify:
                self.verify_reply(last, req)
            ch = challenge_from_reply(last)
            if not ch.check_request(original.header_and_body()):
                raise HandleError("challenge digest is not that of our request")
            aflags = (original.flags & ANSWER_INHERITED_FLAGS) | FLAG_RECU
            sid = self.session_id if self.answer_with_client_session else last.session_id
            # like Java, the answer carries no HS_MAC even inside a session
            answer = Message(OC_CHALLENGE_RESPONSE, RC_RESERVED, aflags, auth.answer_body(ch),
                             major=last.major, minor=last.minor, suggest_major=self.suggest[0],
                             suggest_minor=self.suggest[1], session_id=sid, request_id=new_request_id())
            req = answer
            replies = self.exchange(answer, new_connection=self.new_connection_for_answer)
        if self.verify:
            for m in replies:
                self.verify_reply(m, req)
        parts = [Reply(m) for m in replies]
        final = parts[-1]
        if len(parts) > 1:
            final.handles = [h for p in parts for h in p.handles]
            final.parts = parts
        return final

    # -- operations --------------------------------------------------------
    def resolve(self, handle: str, indexes: Sequence[int] = (), types: Sequence[str] = (), *,
                public_only: bool = True, certify: bool = False, authenticate: bool = False,
                flags: Optional[int] = None) -> Reply:
        f = DEFAULT_FLAGS if flags is None else flags
        if not public_only:
            f &= ~FLAG_PUBL
        return self.request(OC_RESOLUTION, body_resolution(handle, indexes, types), f, certify=certify,
                            authenticate=authenticate)

    def get_site_info(self, certify: bool = False) -> Reply:
        """GET_SITE_INFO; remembers the first server's public key for verification."""
        r = self.request(OC_GET_SITE_INFO, body_handle("/"), certify=certify, authenticate=False)
        if r.ok and r.site and r.site.servers and r.site.servers[0].public_key and self.server_key is None:
            try:
                self.server_key = r.site.servers[0].key()
            except Exception:  # noqa: BLE001 - an undecodable key just stays unknown
                pass
        return r

    def create_handle(self, handle: str, values: Sequence[HandleValue], *, overwrite: bool = False,
                      mint: bool = False, certify: bool = False) -> Reply:
        f = DEFAULT_FLAGS | (FLAG_OVRW if overwrite else 0) | (FLAG_MINT if mint else 0)
        return self.request(OC_CREATE_HANDLE, body_handle_values(handle, values), f, certify=certify)

    def delete_handle(self, handle: str, *, certify: bool = False) -> Reply:
        return self.request(OC_DELETE_HANDLE, body_handle(handle), certify=certify)

    def add_values(self, handle: str, values: Sequence[HandleValue], *, overwrite: bool = False,
                   certify: bool = False) -> Reply:
        f = DEFAULT_FLAGS | (FLAG_OVRW if overwrite else 0)
        return self.request(OC_ADD_VALUE, body_handle_values(handle, values), f, certify=certify)

    def remove_values(self, handle: str, indexes: Sequence[int], *, certify: bool = False) -> Reply:
        return self.request(OC_REMOVE_VALUE, body_remove_values(handle, indexes), certify=certify)

    def modify_values(self, handle: str, values: Sequence[HandleValue], *, certify: bool = False) -> Reply:
        return self.request(OC_MODIFY_VALUE, body_handle_values(handle, values), certify=certify)

    def list_handles(self, prefix: str, *, certify: bool = False) -> Reply:
        """LIST_HANDLES of a prefix ("88.118.8" is sent as "0.NA/88.118.8"); collects continuation."""
        h = prefix if "/" in prefix else "0.NA/" + prefix
        if self.transport == "udp":
            raise HandleError("LIST_HANDLES needs TCP")
        return self.request(OC_LIST_HANDLES, body_handle(h), certify=certify)

    def home_prefix(self, prefix: str) -> Reply:
        return self.request(OC_HOME_NA, body_handle(prefix if prefix.upper().startswith("0.NA/") else "0.NA/" + prefix))

    def unhome_prefix(self, prefix: str) -> Reply:
        return self.request(OC_UNHOME_NA, body_handle(prefix if prefix.upper().startswith("0.NA/") else "0.NA/" + prefix))

    def list_homed_prefixes(self, handle: str = "/") -> Reply:
        return self.request(OC_LIST_HOMED_NAS, body_handle(handle))

    def verify_response(self, handle: str, index: int, nonce: bytes, digest: bytes, answer: bytes) -> Reply:
        """VERIFY_RESPONSE (201): is this HS_SECKEY answer valid? (certify + RRDG, like Java)."""
        return self.request(OC_VERIFY_RESPONSE, body_verify_response(handle, index, nonce, digest, answer),
                            certify=True, rrdg=True, authenticate=False)

    # -- CAICT / teleinfo login ---------------------------------------------------
    def login_id_system(self, session_id: Optional[int] = None, get_site_info: bool = True,
                        caict_session: bool = False) -> Reply:
        """LOGIN_ID_SYSTEM (2001) on this TCP connection, as id-pointer-sdk does:
        GET_SITE_INFO, then 2001 with RRDG (certify off, publicOnly off), answer
        the 402 with opcode 200 on the same connection; rc 1 = logged in.

        session_id: the envelope session id of every message (CAICT picks a
        random one in 10000..10^9); caict_session=True also sends the answer
        in that id instead of the challenge's, as the CAICT engine does."""
        if self.transport != "tcp":
            raise HandleError("LOGIN_ID_SYSTEM needs TCP")
        if self.auth is None:
            raise HandleError("no identity to log in with")
        if session_id is not None:
            self.session_id = session_id
        if get_site_info:
            self.get_site_info()
        flags = (DEFAULT_FLAGS & ~(FLAG_PUBL | FLAG_CACR))
        saved = (self.new_connection_for_answer, self.answer_with_client_session)
        self.new_connection_for_answer = False
        self.answer_with_client_session = caict_session
        try:
            r = self.request(OC_LOGIN_ID_SYSTEM, body_login(self.auth.handle, self.auth.index), flags, rrdg=True)
        finally:
            self.new_connection_for_answer, self.answer_with_client_session = saved
        self.logged_in = r.ok
        return r

    # -- Java-style DH session ------------------------------------------------------
    def session_setup_dh(self, identity: Optional[Tuple[str, int]] = None, p: int = DH_P_1024, g: int = DH_G,
                         certify: bool = True, timeout: int = 86400) -> Reply:
        """SESSION_SETUP with Diffie-Hellman (mode 4), certify + RRDG as the Java tools.

        On success later requests carry the session id and an HS_MAC credential.
        """
        if identity is None and self.auth is not None:
            identity = (self.auth.handle, self.auth.index)
        h, i = identity if identity else ("", -1)
        x = secrets.randbelow(p - 3) + 2
        body = body_session_setup(KEY_EXCHANGE_DH, h, i, timeout, dh_pubkey_data(pow(g, x, p), p, g))
        self.session = None
        r = self.request(OC_SESSION_SETUP, body, certify=certify, rrdg=True, authenticate=False, session_id=0)
        if r.ok and r.session_mode == KEY_EXCHANGE_DH:
            rr = Reader(r.session_data)
            alg = rr.u32() if version_ge(r.msg.version, 2, 4) else CIPHER_DES
            peer = parse_pubkey_data(rr.rest())
            if not (isinstance(peer, tuple) and peer[0] == "DH"):
                raise HandleError("SESSION_SETUP reply has no DH key")
            key = dh_session_key(pow(peer[1], x, p), p, alg)
            self.session = ClientSession(r.msg.session_id, key, alg, r.msg.version)
            if self.conn:
                self.conn.decrypt = self.session.decrypt
        return r


# ---------------------------------------------------------------------------
# Offline self-check
# ---------------------------------------------------------------------------

def _selfcheck() -> None:  # noqa: C901 - a list of independent checks
    ok = []

    def check(name, cond):
        if not cond:
            raise AssertionError(name)
        ok.append(name)

    # envelope + message round trip
    m = Message(OC_RESOLUTION, body=body_resolution("88.118.8/abc", [1, 2], ["URL"]), session_id=7, request_id=42,
                expiration=1_900_000_000)
    m.credential = b"\x01\x02"
    d = Message.decode(m.encode())
    check("message round trip", (d.opcode, d.body, d.credential, d.session_id, d.request_id, d.expiration)
          == (m.opcode, m.body, m.credential, 7, 42, 1_900_000_000))
    check("header layout", len(m.header()) == HEADER_SIZE and m.encode()[:2] == b"\x02\x0b")
    e = Envelope.decode(bytes([2, 10, 0, 0]) + bytes(16))
    check("suggest defaults to version", (e.suggest_major, e.suggest_minor) == (2, 10))

    # values
    vals = [HandleValue.text(1, "URL", "https://example.org/"),
            hs_admin_value(100, "0.NA/88.118.8", 200, ADM_ALL & ~ADM_ADD_PREFIX),
            HandleValue(3, "HS_VLIST", encode_vlist([("88.118.8/ADMIN", 300)]), refs=[ValueRef("a/b", 1)])]
    r = Reader(encode_values(vals))
    back = read_values(r)
    check("values round trip", back == vals and r.remaining() == 0)
    check("hs_admin decode", decode_hs_admin(vals[1].data) == (ADM_ALL & ~ADM_ADD_PREFIX, "0.NA/88.118.8", 200))
    check("hs_admin legacy tail", decode_hs_admin(vals[1].data + b"\0\0")[1] == "0.NA/88.118.8")
    check("vlist decode", decode_vlist(vals[2].data) == [ValueRef("88.118.8/ADMIN", 300)])
    check("batch perms LSB first", batch_admin_perm_string(ADM_ADD_HANDLE | ADM_LIST_HANDLES) == "100000000001")
    check("batch line", batch_value_line(vals[1]).startswith("100 HS_ADMIN 86400 1110 ADMIN 200:"))

    # UDP split / reassembly
    big = Message(OC_CREATE_HANDLE, body=body_handle_values("88.118.8/big", [HandleValue(1, "DESC", os.urandom(3000))]),
                  request_id=99, expiration=1_900_000_000)
    pk = udp_packets(big)
    check("udp packet size", all(len(p) <= UDP_PACKET_SIZE for p in pk) and len(pk) > 1)
    shuffled = pk[:]
    random.shuffle(shuffled)
    back = udp_reassemble(shuffled)
    check("udp reassembly", back.body == big.body and back.request_id == 99)

    # keys
    rsa_key = rsa.generate_private_key(65537, 1024)
    dsa_key = dsa.generate_private_key(1024)
    sm2_key = SM2PrivateKey.generate()
    data = rsa_pubkey_data(rsa_key)
    rr = Reader(data)
    check("rsa key layout", rr.bstr() == b"RSA_PUB_KEY" and rr.u16() == 0 and rr.bstr() == b"\x01\x00\x01"
          and rr.bstr()[0] == 0)  # 1024-bit modulus has its top bit set: leading 0x00
    check("rsa key parse", parse_pubkey_data(data).public_numbers() == rsa_key.public_key().public_numbers())
    check("dsa key parse", parse_pubkey_data(dsa_pubkey_data(dsa_key)).public_numbers() == dsa_key.public_key().public_numbers())
    check("sm2 SM2_PUB_KEY parse", parse_pubkey_data(sm2_pubkey_data(sm2_key)) == sm2_key.public_key)
    check("sm2 SM2_PUB_KEY der", parse_pubkey_data(sm2_pubkey_data(sm2_key, inner="der")) == sm2_key.public_key)
    check("sm2 pem parse", parse_pubkey_data(pem_pubkey_data(sm2_key)) == sm2_key.public_key)
    check("rsa pem parse", parse_pubkey_data(pem_pubkey_data(rsa_key)).public_numbers() == rsa_key.public_key().public_numbers())
    check("java bigint", java_bigint(0) == b"\0" and java_bigint(255) == b"\0\xff" and java_bigint(127) == b"\x7f")

    # site info
    site = SiteInfo(servers=[ServerInfo(1, ip16("127.0.0.1"), rsa_pubkey_data(rsa_key),
                                        [Interface(ST_BOTH, SP_TCP, 2641), Interface(ST_QUERY, SP_UDP, 2641)])],
                    attributes=[("desc", b"test")])
    s2 = SiteInfo.decode(site.encode())
    check("site round trip", s2 == site and s2.servers[0].ip == "127.0.0.1")

    # SM2 against gmssl's own SM3withSM2 (default user id) and both encodings
    msg = b"hello handle"
    raw = sm2_key.sign(msg, der=False)
    eng = _sm2_engine("%064x" % sm2_key.d, sm2_key.public_key.point_hex)
    check("sm2 matches gmssl verify_with_sm3", eng.verify_with_sm3(raw.hex(), msg))
    gm_sig = eng.sign_with_sm3(msg, "%064x" % (secrets.randbelow(_SM2["n"] - 1) + 1))
    check("gmssl signature verifies here", sm2_key.public_key.verify(msg, bytes.fromhex(gm_sig)))
    check("sm2 der verify", sm2_key.public_key.verify(msg, sm2_key.sign(msg, b"88.118.8/ADMIN"), b"88.118.8/ADMIN"))
    check("sm2 wrong id fails", not sm2_key.public_key.verify(msg, sm2_key.sign(msg, b"x"), b"y"))
    check("sm3 vector", sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0")

    # challenge / answers
    req = Message(OC_CREATE_HANDLE, body=body_handle_values("88.118.8/x", vals[:1]), request_id=5)
    for ver in ((2, 11), (2, 6), (2, 0)):
        chm = Message.decode(make_challenge_reply(req, session_id=77, version=ver).encode())
        ch = Reply(chm).challenge
        check(f"challenge {ver} digest", ch.check_request(req.header_and_body()) and ch.session_id == 77)
        sk = SecretKeyAuth("88.118.8/ADMIN", 300, "s3cret")
        ans = sk.answer(ch)
        expect_prefix = {(2, 11): MAC_PBKDF2_HMAC_SHA1, (2, 6): HASH_SHA1}.get(ver)
        check(f"seckey {ver} form", (ans[0] == expect_prefix) if expect_prefix else len(ans) == 16)
        check(f"seckey {ver} verifies", verify_seckey_answer(b"s3cret", ch.nonce, ch.digest, ans, old_format=ver < (2, 1)))
        check(f"seckey {ver} wrong key", not verify_seckey_answer(b"other", ch.nonce, ch.digest, ans, old_format=ver < (2, 1)))
    ans = SecretKeyAuth("h", 1, "k").answer(ch)
    check("pbkdf2 length", len(SecretKeyAuth("h", 1, "k", scheme="pbkdf2").answer(ch)) == 53)
    for code in (HASH_MD5, HASH_SHA256, MAC_HMAC_SHA1, MAC_HMAC_SHA256):
        check(f"seckey code {code}", verify_seckey_answer(b"k", b"n" * 16, b"d" * 32, seckey_answer_simple(code, b"k", b"n" * 16, b"d" * 32)))
    chm = Message.decode(make_challenge_reply(req, version=(2, 10)).encode())
    ch = challenge_from_reply(chm)
    ra = PublicKeyAuth("88.118.8/ADMIN", 300, rsa_key).answer(ch)
    check("rsa answer label", Reader(ra).bstr() == b"SHA-256")
    check("rsa answer verifies", verify_pubkey_answer(rsa_key.public_key(), ch.nonce, ch.digest, ra))
    ra1 = PublicKeyAuth("88.118.8/ADMIN", 300, rsa_key, hash="SHA1").answer(ch)
    check("rsa sha1 answer verifies", verify_pubkey_answer(rsa_key.public_key(), ch.nonce, ch.digest, ra1))
    da = PublicKeyAuth("88.118.8/ADMIN", 300, dsa_key).answer(ch)
    check("dsa answer sha1 below 2.11", Reader(da).bstr() == b"SHA1")
    check("dsa answer verifies", verify_pubkey_answer(dsa_key.public_key(), ch.nonce, ch.digest, da))
    for der in (True, False):
        sa = SM2Auth("88.118.8/ADMIN", 300, sm2_key, der=der).answer(ch)
        rr = Reader(sa)
        check(f"sm2 answer der={der}", rr.bstr() == b"SM3" and sm2_key.public_key.verify(
            sm3(ch.signed_data), rr.bstr(), b"88.118.8/ADMIN"))
        check(f"sm2 answer server check der={der}", verify_pubkey_answer(sm2_key.public_key, ch.nonce, ch.digest, sa, [b"88.118.8/ADMIN"]))
    body = SecretKeyAuth("88.118.8/ADMIN", 300, "k").answer_body(ch)
    rr = Reader(body)
    check("answer body", rr.bstr() == AUTH_SECKEY and rr.sstr() == "88.118.8/ADMIN" and rr.u32() == 300 and len(rr.bstr()) == 53)

    # credentials
    rep = Message(OC_RESOLUTION, RC_SUCCESS, FLAG_RRDG, encode_digest(3, hashlib.sha256(req.header_and_body()).digest())
                  + sstr("88.118.8/x") + encode_values(vals[:1]), major=2, minor=11, session_id=3, request_id=5)
    sign_message(rep, rsa_key)
    wire = Message.decode(rep.encode())
    check("credential decode", Credential.decode(wire.credential).hash_alg == b"SHA-256")
    check("rsa-sha256 credential verifies", verify_message(wire, rsa_key.public_key()))
    check("reply digest check", check_reply_digest(req, wire))
    bad = Message.decode(rep.encode())
    bad.raw_hb = bad.raw_hb[:-1] + bytes([bad.raw_hb[-1] ^ 1])
    check("tampered reply fails", not verify_message(bad, rsa_key.public_key()))
    for ver in ((2, 7), (2, 6), (2, 5)):
        mm = Message(OC_DELETE_HANDLE, RC_SUCCESS, 0, b"", major=ver[0], minor=ver[1], request_id=9)
        sign_message(mm, rsa_key, counter=4)
        check(f"credential {ver}", verify_message(Message.decode(mm.encode()), rsa_key.public_key()))
    sign_message(rep, dsa_key)
    check("dsa credential verifies", verify_message(Message.decode(rep.encode()), dsa_key.public_key()))
    sign_message(rep, sm2_key)
    check("sm2-sm3 credential verifies", verify_message(Message.decode(rep.encode()), sm2_key.public_key))
    sign_message(rep, sm2_key, sm2_der=False)
    check("sm2 raw credential verifies", verify_message(Message.decode(rep.encode()), sm2_key.public_key))
    sign_message_mac(rep, b"k" * 32, 2)
    check("hs_mac verifies", verify_message_mac(Message.decode(rep.encode()), b"k" * 32))
    check("hs_mac wrong key", not verify_message_mac(Message.decode(rep.encode()), b"j" * 32))

    # replies
    lst = Message(OC_LIST_HANDLES, RC_SUCCESS, 0, u32(2) + sstr("88.118.8/a") + sstr("88.118.8/b"))
    check("list reply", Reply(lst).handles == ["88.118.8/a", "88.118.8/b"])
    err = Message(OC_CREATE_HANDLE, RC_HANDLE_ALREADY_EXISTS, 0, sstr("exists"))
    check("error reply", Reply(err).message == "exists")
    cr = Message(OC_CREATE_HANDLE, RC_SUCCESS, 0, sstr("88.118.8/1"))
    check("create reply", Reply(cr).handle == "88.118.8/1" and Reply(Message(OC_CREATE_HANDLE, RC_SUCCESS)).handle is None)
    vr = Message(OC_VERIFY_RESPONSE, RC_SUCCESS, FLAG_RRDG, encode_digest(3, b"\0" * 32) + b"\x01")
    check("verify reply", Reply(vr).valid is True)
    sr = Message(OC_GET_SITE_INFO, RC_SUCCESS, 0, site.encode())
    check("site reply key", Reply(sr).site.servers[0].key().public_numbers() == rsa_key.public_key().public_numbers())
    rb = body_remove_values("88.118.8/x", [2, 3])
    check("remove body", rb == sstr("88.118.8/x") + u32(2) + u32(2) + u32(3))
    check("login body", body_login("88.118.8/ADMIN", 300) == sstr("88.118.8/ADMIN") + u32(300))
    check("verify body", body_verify_response("h", 0, b"n", b"dd", b"a") == sstr("h") + u32(0) + bstr(b"n") + bstr(b"dd") + bstr(b"a"))

    # DH session key agreement, both sides
    x = secrets.randbelow(DH_P_1024 - 3) + 2
    cpub = dh_pubkey_data(pow(DH_G, x, DH_P_1024), DH_P_1024, DH_G)
    sdata, skey = dh_server_reply_data(cpub)
    rr = Reader(sdata)
    alg = rr.u32()
    peer = parse_pubkey_data(rr.rest())
    ckey = dh_session_key(pow(peer[1], x, DH_P_1024), DH_P_1024, alg)
    check("dh session key agrees", ckey == skey and len(ckey) == 32)
    sess = ClientSession(5, ckey, CIPHER_AES, (2, 11))
    check("aes session round trip", sess.decrypt(sess.encrypt(b"payload" * 10)) == b"payload" * 10)
    ssb = body_session_setup(KEY_EXCHANGE_DH, "88.118.8/ADMIN", 300, 86400, cpub)
    rr = Reader(ssb)
    check("session setup body", rr.u16() == 4 and rr.u32() == 86400 and rr.sstr() == "88.118.8/ADMIN"
          and rr.u32() == 300 and rr.bstr() == cpub and rr.rest() == b"\0\0")

    print(f"hdl_native self-check: {len(ok)} passed, 0 failed")


if __name__ == "__main__":
    _selfcheck()

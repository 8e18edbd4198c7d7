"""A running idres node with its HTTP face, for the HTTP tests.

`start_node` creates a prefix administrator with `idres init-prefix` on a
fresh data directory, then starts `idres serve` on loopback ports it picks
itself (port 0) and learns them from the `listening <face> <addr>` lines.
With `tls=True` it first makes a test PKI with the `cryptography` package:
a CA, a server certificate for localhost/127.0.0.1, and client
certificates whose CN is an `index:handle` identity. Every wait is bounded.
"""

import base64
import datetime
import ipaddress
import os
import queue
import re
import subprocess
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDRES = os.environ.get("IDRES_BIN", os.path.join(ROOT, "target", "debug", "idres"))
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
WAIT = 30

PREFIX = "88.118.8"
ADMIN = "300:88.118.8/ADMIN"
SECRET = "correct horse battery staple"


def basic(identity=ADMIN, secret=SECRET):
    """The Authorization header value for an identity, as Handle clients send it."""
    user = identity.replace(":", "%3A").replace("/", "%2F")
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def _write_key(path, key):
    with open(path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def _write_cert(path, cert):
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def make_pki(directory, client_identities):
    """A CA, a server certificate and one client certificate per identity.

    Returns a dict of file paths: ca, server_cert, server_key, and for each
    identity (index:handle) a (cert, key) pair under clients[identity].
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idres test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn, server):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                                critical=False)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                                critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    paths = {"ca": os.path.join(directory, "ca.pem"), "clients": {}}
    _write_cert(paths["ca"], ca)
    cert, key = leaf("localhost", True)
    paths["server_cert"] = os.path.join(directory, "server.pem")
    paths["server_key"] = os.path.join(directory, "server-key.pem")
    _write_cert(paths["server_cert"], cert)
    _write_key(paths["server_key"], key)
    for n, identity in enumerate(client_identities):
        cert, key = leaf(identity, False)
        c, k = os.path.join(directory, f"client{n}.pem"), os.path.join(directory, f"client{n}-key.pem")
        _write_cert(c, cert)
        _write_key(k, key)
        paths["clients"][identity] = (c, k)
    return paths


class Node:
    """A running `idres serve`."""

    def __init__(self, proc, base, handle_addr, data_dir):
        self.proc, self.base, self.handle_addr, self.data_dir = proc, base, handle_addr, data_dir

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_node(directory, tls=None):
    """Initialises prefix 88.118.8 with ADMIN/SECRET and serves HTTP(S).

    `tls` is the dict of `make_pki` (HTTPS with its CA as client CA) or None
    (plain HTTP).
    """
    assert os.path.exists(IDRES), f"build the binary first: {IDRES}"
    data = os.path.join(directory, "data")
    secret_file = os.path.join(directory, "admin.secret")
    with open(secret_file, "w") as f:
        f.write(SECRET + "\n")
    init = [IDRES, "init-prefix", "--data-dir", data, "--prefix", PREFIX, "--admin", ADMIN,
            "--secret-file", secret_file]
    subprocess.run(init, check=True, timeout=60, capture_output=True)
    config = os.path.join(directory, "idres.toml")
    with open(config, "w") as f:
        f.write("[http]\n")
        if tls:
            f.write(f'tls_cert = "{tls["server_cert"]}"\ntls_key = "{tls["server_key"]}"\n'
                    f'client_ca = "{tls["ca"]}"\n')
    proc = subprocess.Popen(
        [IDRES, "serve", "--config", config, "--data-dir", data,
         "--handle-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    faces = {}
    want = "https" if tls else "http"
    try:
        while not {want, "handle"} <= faces.keys():
            line = lines.get(timeout=WAIT)
            m = re.match(r"listening (\w+) (127\.0\.0\.1:\d+)", line)
            if m:
                faces[m.group(1)] = m.group(2)
    except queue.Empty:
        proc.kill()
        raise AssertionError(f"node did not announce its faces within {WAIT}s: {faces}")
    return Node(proc, f"{want}://{faces[want]}", faces["handle"], data)

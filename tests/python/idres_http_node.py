"""A running idres node with its HTTP face, for the HTTP tests.

`start_node` creates a prefix administrator with `idres init-prefix` on a
fresh data directory, then starts `idres serve` on loopback ports it picks
itself (port 0) and learns them from the `listening <face> <addr>` lines.
With `tls=True` it first makes a test PKI with the `cryptography` package:
a CA, a server certificate for localhost/127.0.0.1, and client
certificates whose CN is an `index:handle` identity. It can also give the
node a key (`--node-key`), extra configuration, and records imported with
`idres import` before the node starts. Every wait is bounded.

The binary is rebuilt from time to time by others: a missing or
half-written binary is waited for (bounded) and the command retried.
"""

import base64
import datetime
import ipaddress
import json
import os
import queue
import re
import subprocess
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IDRES = os.environ.get("IDRES_BIN", os.path.join(ROOT, "target", "debug", "idres"))
ARTIFACTS = os.path.join(ROOT, "tests", "artifacts")
WAIT = 30
#: how long to wait for a binary that is being rebuilt
BINARY_WAIT = 180

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


def _binary_ready():
    """Waits (bounded) until the binary exists and is executable."""
    deadline = time.monotonic() + BINARY_WAIT
    while not (os.path.isfile(IDRES) and os.access(IDRES, os.X_OK)):
        if time.monotonic() > deadline:
            raise AssertionError(f"build the binary first: {IDRES}")
        time.sleep(5)


def _retrying(start):
    """Runs start() (which execs the binary), retrying while the binary is
    missing or being written (ENOENT, ETXTBSY, exec format error)."""
    deadline = time.monotonic() + BINARY_WAIT
    while True:
        _binary_ready()
        try:
            return start()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(30)


def run_idres(*args, timeout=60, check=True):
    """Runs `idres ARGS` to completion; returns the CompletedProcess (text)."""
    r = _retrying(lambda: subprocess.run([IDRES, *map(str, args)], capture_output=True, text=True,
                                         timeout=timeout))
    if check:
        assert r.returncode == 0, f"idres {' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr}"
    return r


class Node:
    """A running `idres serve`."""

    def __init__(self, proc, base, handle_addr, data_dir):
        self.proc, self.base, self.handle_addr, self.data_dir = proc, base, handle_addr, data_dir

    @property
    def handle_host(self):
        return self.handle_addr.rsplit(":", 1)[0]

    @property
    def handle_port(self):
        return int(self.handle_addr.rsplit(":", 1)[1])

    def stop(self):
        stop_process(self.proc)


def stop_process(proc):
    """SIGTERM, then SIGKILL if the process is not gone within 15 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def start_node(directory, tls=None, node_key=None, extra_config="", records=None):
    """Initialises prefix 88.118.8 with ADMIN/SECRET and serves HTTP(S) and
    the Handle protocol (TCP and UDP on one port).

    `tls` is the dict of `make_pki` (HTTPS with its CA as client CA) or None
    (plain HTTP). `node_key` is a key file of `idres keygen` (serve
    --node-key). `extra_config` is TOML appended to the configuration file
    (e.g. "[handle]\nchallenge_ttl_secs = 1\n"). `records` is a list of
    JSON records (the `idres import` format) imported before the node
    starts.
    """
    _binary_ready()
    data = os.path.join(directory, "data")
    secret_file = os.path.join(directory, "admin.secret")
    with open(secret_file, "w") as f:
        f.write(SECRET + "\n")
    run_idres("init-prefix", "--data-dir", data, "--prefix", PREFIX, "--admin", ADMIN,
              "--secret-file", secret_file)
    if records:
        path = os.path.join(directory, "records.jsonl")
        with open(path, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
        run_idres("import", "--data-dir", data, path)
    config = os.path.join(directory, "idres.toml")
    with open(config, "w") as f:
        f.write("[http]\n")
        if tls:
            f.write(f'tls_cert = "{tls["server_cert"]}"\ntls_key = "{tls["server_key"]}"\n'
                    f'client_ca = "{tls["ca"]}"\n')
        if extra_config:
            f.write("\n" + extra_config.rstrip("\n") + "\n")
    cmd = [IDRES, "serve", "--config", config, "--data-dir", data,
           "--handle-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    if node_key:
        cmd += ["--node-key", str(node_key)]
    want = "https" if tls else "http"
    for attempt in range(2):
        proc = _retrying(lambda: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                                  text=True))
        lines = queue.Queue()
        threading.Thread(target=lambda p=proc, q=lines: [q.put(line) for line in p.stdout],
                         daemon=True).start()
        faces = {}
        deadline = time.monotonic() + WAIT
        while not {want, "handle"} <= faces.keys() and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if proc.poll() is not None and lines.empty():
                    break  # died before announcing
                continue
            m = re.match(r"listening (\w+) (127\.0\.0\.1:\d+)", line)
            if m:
                faces[m.group(1)] = m.group(2)
        if {want, "handle"} <= faces.keys():
            break
        died = proc.poll() is not None
        if not died:
            proc.kill()
        proc.wait(timeout=5)
        # a binary being rebuilt may start and die: wait and try once more
        if attempt == 0 and died:
            time.sleep(30)
            continue
        raise AssertionError(f"node did not announce its faces within {WAIT}s: {faces} "
                             f"(exit code {proc.returncode})")
    return Node(proc, f"{want}://{faces[want]}", faces["handle"], data)

"""The GS1-conformant resolver (GS1-Conformant Resolver standard 1.2) of
idres, checked from outside the binary.

A node is set up with `idres init-prefix` and `idres import --config` on a
fresh data directory and served by `idres serve` with its HTTP, Handle and
DNS faces on loopback ports it picks itself. Its configuration gives the
resolver a public base URL (`[http] public_url`) that differs from where it
listens, so every anchor, Link header and the description file must use
the public one.

Records link to GS1 keys (`GS1.GTIN`, `GS1.DL`) and carry resolver links
(`GS1.LINK` values, JSON). The HTTP face is queried with `requests`
without following redirects; description files and linksets are validated
with `jsonschema` (Draft 7, with format checking) against the normative
schemas in tests/data/gs1/schemas. The DNS face (ONS form under
`gtin.gs1.id.<zone>`) is queried with dig. Every wait is bounded.
"""

import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from urllib.parse import quote

import pytest
import requests
from jsonschema import Draft7Validator, FormatChecker

from idres_http_node import ADMIN, IDRES, PREFIX, ROOT, SECRET, _retrying, basic, run_idres, stop_process

#: bound of every single wait (HTTP request, DNS query, command)
WAIT = 15
#: bound of a node's start
START_WAIT = 30

PUBLIC = "https://id.example.org"
RESOLVER_NAME = "idres GS1 test resolver"
ZONE = "oid-res.org."
LINKSET = "application/linkset+json"
VOC = "https://gs1.org/voc/"

SCHEMAS = os.path.join(ROOT, "tests", "data", "gs1", "schemas")


def mod10(body):
    """The GS1 mod-10 check digit of the digits before it (own code)."""
    total = sum(int(c) * (3 if i % 2 == 0 else 1) for i, c in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def with_check_digit(body):
    return body + mod10(body)


GTIN = "09521234543213"
assert mod10(GTIN[:-1]) == GTIN[-1]
#: one non-default link
GTIN_ONE = with_check_digit("0952123454322")
#: two non-default links, no default
GTIN_TWO = with_check_digit("0952123454323")
#: a record without resolver links
GTIN_BARE = with_check_digit("0952123454324")
#: valid, linked by no record
GTIN_NONE = with_check_digit("0952123454329")
#: the GTIN with a wrong check digit
GTIN_BAD = GTIN[:-1] + str((int(GTIN[-1]) + 1) % 10)
SSCC = with_check_digit("09521234000000001")
GLN = with_check_digit("952123400001")
assert len({GTIN, GTIN_ONE, GTIN_TWO, GTIN_BARE, GTIN_NONE, GTIN_BAD}) == 6
assert len(SSCC) == 18 and len(GLN) == 13

SERIAL_PATH = f"/01/{GTIN}/10/LOT1/21/SER1"
LOT_PATH = f"/01/{GTIN}/10/LOT1"
GTIN_PATH = f"/01/{GTIN}"

CONFIG = f"""\
[http]
public_url = "{PUBLIC}"
resolver_name = "{RESOLVER_NAME}"

[dns]
zone = "{ZONE}"
"""


def sv(index, typ, text, **extra):
    return {"index": index, "type": typ, "data": {"format": "string", "value": text}, **extra}


def link(index, link_type, href, title, **fields):
    """A GS1.LINK value: its JSON (fields as given, with linkType/href/title)."""
    obj = {"linkType": link_type, "href": href, "title": title, **fields}
    return obj, sv(index, "GS1.LINK", json.dumps(obj, ensure_ascii=False))


def full(link_type):
    return VOC + link_type[4:] if link_type.startswith("gs1:") else link_type


# --- the serial's resolver links ---------------------------------------------
PIP_EN, _pip_en = link(20, "gs1:pip", "https://brand.example.com/en/pip", "Product page",
                       type="text/html", hreflang=["en"])
PIP_ZH, _pip_zh = link(21, "gs1:pip", "https://brand.example.cn/zh/pip", "产品页", type="text/html",
                       hreflang=["zh"])
EPIL_PDF, _epil_pdf = link(22, "https://gs1.org/voc/epil", "https://brand.example.com/epil.pdf", "Leaflet (PDF)",
                           type="application/pdf", hreflang=["en"])
EPIL_HTML, _epil_html = link(23, "gs1:epil", "https://brand.example.com/epil.html", "Leaflet", type="text/html",
                             hreflang=["en"])
INSTR_CN, _instr_cn = link(24, "gs1:instructions", "https://brand.example.cn/instructions", "说明",
                           context=["cn"])
INSTR_US, _instr_us = link(25, "gs1:instructions", "https://brand.example.com/instructions", "Instructions",
                           context=["us"])
CERT, _cert = link(26, "gs1:certificationInfo", "https://cert.example.org/c/SER1", "Certificate", fwqs=False)
RECIPE_A, _recipe_a = link(27, "gs1:recipeInfo", "https://food.example.com/a", "Recipe A")
RECIPE_B, _recipe_b = link(28, "gs1:recipeInfo", "https://food.example.com/b", "Recipe B")
SERIAL_LINKS = [PIP_EN, PIP_ZH, EPIL_PDF, EPIL_HTML, INSTR_CN, INSTR_US, CERT, RECIPE_A, RECIPE_B]

# --- the lot's ---------------------------------------------------------------
TRACE, _trace = link(20, "gs1:traceability", "https://trace.example.com/t?src=idres", "Traceability")
LOT_DEFAULT, _lot_default = link(21, "gs1:masterData", "https://brand.example.com/lot1", "Lot 1", default=True)
LOT_LINKS = [TRACE, LOT_DEFAULT]

# --- the GTIN's --------------------------------------------------------------
GTIN_DEFAULT, _gtin_default = link(20, "gs1:defaultLink", "https://brand.example.com/product", "Product")
RETAILERS, _retailers = link(21, "https://gs1.org/voc/hasRetailers", "https://shop.example.com/", "Shops")
PIP_GENERIC, _pip_generic = link(22, "gs1:pip", "https://brand.example.com/pip", "Product page (any)")
PRIVATE, _private = link(23, "gs1:sustainabilityInfo", "https://internal.example.com/private", "Private")
GTIN_LINKS = [GTIN_DEFAULT, RETAILERS, PIP_GENERIC]  # PRIVATE is not publicly readable

ONE, _one = link(20, "gs1:pip", "https://brand.example.com/one", "The one")
TWO_A, _two_a = link(20, "gs1:pip", "https://brand.example.com/two/pip", "Two: page")
TWO_B, _two_b = link(21, "gs1:hasRetailers", "https://shop.example.com/two", "Two: shops")

GTIN_URL = "https://factory.example.cn/gtin"


def records():
    return [
        {"handle": f"{PREFIX}/S1", "values": [
            sv(1, "URL", "https://factory.example.cn/s1"),
            sv(10, "GS1.DL", SERIAL_PATH[1:]),
            _pip_en, _pip_zh, _epil_pdf, _epil_html, _instr_cn, _instr_us, _cert, _recipe_a, _recipe_b]},
        {"handle": f"{PREFIX}/LOT1", "values": [
            sv(1, "URL", "https://factory.example.cn/lot1"),
            sv(10, "GS1.DL", f"https://id.gs1.org{LOT_PATH}"),
            _trace, _lot_default]},
        {"handle": f"{PREFIX}/G", "values": [
            sv(1, "URL", GTIN_URL),
            sv(2, "URL", "https://factory.example.cn/gtin/alt"),
            sv(10, "GS1.GTIN", GTIN),
            _gtin_default, _retailers, _pip_generic, {**_private, "permissions": "1100"}]},
        {"handle": f"{PREFIX}/G1", "values": [sv(1, "URL", "https://factory.example.cn/g1"),
                                              sv(10, "GS1.GTIN", GTIN_ONE), _one]},
        {"handle": f"{PREFIX}/G2", "values": [sv(1, "URL", "https://factory.example.cn/g2"),
                                              sv(10, "GS1.GTIN", GTIN_TWO), _two_a, _two_b]},
        {"handle": f"{PREFIX}/GB", "values": [sv(1, "URL", "https://factory.example.cn/gb"),
                                              sv(10, "GS1.GTIN", GTIN_BARE)]},
        {"handle": f"{PREFIX}/SSCC", "values": [sv(1, "URL", "https://factory.example.cn/sscc"),
                                                sv(10, "GS1.DL", f"00/{SSCC}")]},
        {"handle": f"{PREFIX}/GLN", "values": [sv(1, "URL", "https://factory.example.cn/gln"),
                                               sv(10, "GS1.DL", f"414/{GLN}")]},
    ]


# ---------------------------------------------------------------------------
# the node
# ---------------------------------------------------------------------------

def init_store(directory, recs, config=CONFIG):
    """init-prefix and `idres import --config` into directory/data."""
    os.makedirs(directory, exist_ok=True)
    data = os.path.join(directory, "data")
    secret = os.path.join(directory, "admin.secret")
    with open(secret, "w") as f:
        f.write(SECRET + "\n")
    run_idres("init-prefix", "--data-dir", data, "--prefix", PREFIX, "--admin", ADMIN, "--secret-file", secret,
              timeout=WAIT)
    conf = os.path.join(directory, "idres.toml")
    with open(conf, "w") as f:
        f.write(config)
    if recs:
        import_records(directory, data, conf, recs)
    return data, conf


def import_records(directory, data, conf, recs, name="records.jsonl", check=True):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return run_idres("import", "--data-dir", data, "--config", conf, path, timeout=WAIT, check=check)


class Server:
    """`idres serve` on loopback (HTTP, Handle, DNS), its log in a file."""

    FACES = ("http", "handle", "dns")

    def __init__(self, directory, data, conf):
        self.log = os.path.join(directory, "serve.log")
        self.log_file = open(self.log, "ab")
        cmd = [IDRES, "serve", "--config", conf, "--data-dir", data, "--handle-listen", "127.0.0.1:0",
               "--http-listen", "127.0.0.1:0", "--dns-listen", "127.0.0.1:0"]
        self.proc = _retrying(lambda: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log_file,
                                                       text=True))
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        self.faces = {}
        deadline = time.monotonic() + START_WAIT
        while not set(self.FACES) <= self.faces.keys():
            if time.monotonic() > deadline or (self.proc.poll() is not None and lines.empty()):
                self.stop()
                raise AssertionError(f"idres serve did not announce {self.FACES} within {START_WAIT}s "
                                     f"(exit code {self.proc.returncode}): {self.faces}\n{self.log_tail()}")
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            m = re.match(r"listening (\w+) (127\.0\.0\.1:\d+)", line)
            if m:
                self.faces[m.group(1)] = m.group(2)
        self.base = f"http://{self.faces['http']}"
        self.dns_port = int(self.faces["dns"].rsplit(":", 1)[1])

    def log_tail(self, n=20):
        with open(self.log, errors="replace") as f:
            return "".join(f.readlines()[-n:])

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        stop_process(self.proc)
        self.log_file.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("gs1resolver"))
    data, conf = init_store(d, records())
    server = Server(d, data, conf)
    try:
        yield server
    finally:
        server.stop()


def get(node, path_and_query, headers=None):
    """GET on the node without following redirects."""
    return requests.get(node.base + path_and_query, headers=headers or {}, allow_redirects=False, timeout=WAIT)


def options(node, path_and_query, headers=None):
    return requests.options(node.base + path_and_query, headers=headers or {}, allow_redirects=False,
                            timeout=WAIT)


def lt(link_type):
    """The query parameter linkType=… (percent-encoded)."""
    return "linkType=" + quote(link_type, safe="")


def validator(name):
    with open(os.path.join(SCHEMAS, name), encoding="utf-8") as f:
        schema = json.load(f)
    Draft7Validator.check_schema(schema)
    checker = FormatChecker()
    # no silent skip: the formats the schemas use must really be checked
    assert "uri" in checker.checkers, "jsonschema[format-nongpl] is needed to check format: uri"
    return Draft7Validator(schema, format_checker=checker)


def schema_errors(v, doc):
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(doc)]


LINKSET_SCHEMA = None


def valid_linkset(r):
    """The linkset of a response, checked against the GS1 linkset schema."""
    global LINKSET_SCHEMA
    if LINKSET_SCHEMA is None:
        LINKSET_SCHEMA = validator("gs1-linkset-schema.json")
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == LINKSET, r.headers
    body = r.json()
    errors = schema_errors(LINKSET_SCHEMA, body)
    assert not errors, f"linkset not valid against the GS1 linkset schema: {errors}\n{json.dumps(body, indent=1)}"
    return body


def hrefs_by_type(context_object):
    """{link-type URI: [href, …]} of one linkset context object."""
    return {k: [x["href"] for x in v] for k, v in context_object.items() if k != "anchor"}


def expected_hrefs(links):
    """Each link under its type; a link marked default also under
    gs1:defaultLink, so that a linkset reader can tell the default."""
    out = {}
    for ln in links:
        out.setdefault(full(ln["linkType"]), []).append(ln["href"])
        if ln.get("default") and full(ln["linkType"]) != full("gs1:defaultLink"):
            out.setdefault(full("gs1:defaultLink"), []).append(ln["href"])
    return out


def check_link_objects(context_object, links):
    """Each stored link appears in the context object with its attributes."""
    problems = []
    for ln in links:
        objs = [x for x in context_object.get(full(ln["linkType"]), []) if x["href"] == ln["href"]]
        if len(objs) != 1:
            problems.append(f"{ln['href']}: {len(objs)} objects under {full(ln['linkType'])}")
            continue
        o = objs[0]
        for k in ("title", "type", "hreflang", "context"):
            if o.get(k) != ln.get(k):
                problems.append(f"{ln['href']}: {k} {o.get(k)!r}, stored {ln.get(k)!r}")
        if ln.get("fwqs") is False and o.get("fwqs") is not False:
            problems.append(f"{ln['href']}: fwqs false not shown: {o}")
    return problems


LINK_HEADER = re.compile(r'^\s*<([^>]*)>\s*((?:;\s*[a-zA-Z*-]+\s*=\s*(?:"[^"]*"|[^;,\s]+)\s*)*)$')


def linkset_link(r):
    """The (target, {param: value}) of the response's Link header."""
    raw = r.headers.get("Link")
    assert raw, f"no Link header on {r.status_code} {r.url}: {dict(r.headers)}"
    m = LINK_HEADER.match(raw)
    assert m, f"Link header not of one link: {raw!r}"
    params = {k.lower(): v.strip('"') for k, v in re.findall(r';\s*([a-zA-Z*-]+)\s*=\s*("[^"]*"|[^;,\s]+)',
                                                              m.group(2))}
    return m.group(1), params


def check_linkset_header(r, key_path):
    target, params = linkset_link(r)
    want = f"{PUBLIC}{key_path}?linkType=linkset"
    problems = []
    if target != want:
        problems.append(f"Link target {target!r}, want {want!r}")
    if params.get("rel") != "linkset" or params.get("type") != LINKSET:
        problems.append(f"Link params {params}, want rel=linkset type={LINKSET}")
    return problems


def redirect(r):
    assert r.status_code == 307, f"{r.status_code} {r.headers} {r.text[:500]}"
    return r.headers["Location"]


# ---------------------------------------------------------------------------
# description file
# ---------------------------------------------------------------------------

def test_description_file(node):
    r = get(node, "/.well-known/gs1resolver")
    assert r.status_code == 200, r.text
    assert r.headers.get("Content-Type", "").split(";")[0].strip() == "application/json", r.headers
    doc = r.json()
    errors = schema_errors(validator("description-file-schema.json"), doc)
    assert not errors, f"description file not valid: {errors}\n{doc}"
    assert doc["resolverRoot"] == PUBLIC, doc
    assert doc.get("name") == RESOLVER_NAME, doc
    assert doc["supportedPrimaryKeys"], doc
    # the gs1: CURIE prefix the resolver reads is declared
    assert {"namespace": VOC, "prefix": "gs1:"} in doc.get("supportedLinkType", []), doc
    assert r.headers.get("Access-Control-Allow-Origin") == "*", r.headers


# ---------------------------------------------------------------------------
# linksets
# ---------------------------------------------------------------------------

def test_linkset_by_link_type_covers_every_level(node):
    for query in ("linkType=linkset", "linkType=all"):
        r = get(node, f"{SERIAL_PATH}?{query}")
        assert r.status_code == 200, f"{query}: {r.status_code} {r.text}"
        body = valid_linkset(r)
        items = body["linkset"]
        anchors = [o["anchor"] for o in items]
        assert anchors == [PUBLIC + SERIAL_PATH, PUBLIC + LOT_PATH, PUBLIC + GTIN_PATH], f"{query}: {anchors}"
        problems = []
        for o, links in zip(items, (SERIAL_LINKS, LOT_LINKS, GTIN_LINKS)):
            if hrefs_by_type(o) != expected_hrefs(links):
                problems.append(f"{o['anchor']}: {hrefs_by_type(o)} != {expected_hrefs(links)}")
            problems += [f"{o['anchor']}: {p}" for p in check_link_objects(o, links)]
            if any(":" in k and not k.startswith("http") for k in o):
                problems.append(f"{o['anchor']}: CURIE keys {list(o)}")
        # the non-public link is not shown
        assert PRIVATE["href"] not in r.text, r.text
        assert not problems, f"{query}:\n" + "\n".join(problems)
        assert not check_linkset_header(r, SERIAL_PATH)

    # A serial without a record walks up: the lot and the GTIN.
    r = get(node, f"/01/{GTIN}/10/LOT1/21/OTHER?linkType=linkset")
    assert r.status_code == 200, r.text
    assert [o["anchor"] for o in valid_linkset(r)["linkset"]] == [PUBLIC + LOT_PATH, PUBLIC + GTIN_PATH]


def test_linkset_by_accept_header(node):
    by_type = get(node, f"{SERIAL_PATH}?linkType=linkset")
    assert by_type.status_code == 200, by_type.text
    for accept in (LINKSET, f"{LINKSET}, application/json;q=0.5"):
        r = get(node, SERIAL_PATH, headers={"Accept": accept})
        assert r.status_code == 200, f"Accept {accept}: {r.status_code} {r.headers} {r.text[:300]}"
        assert valid_linkset(r) == by_type.json(), f"Accept {accept}"
        assert not check_linkset_header(r, SERIAL_PATH)
    # at the GTIN alone: one context object
    r = get(node, GTIN_PATH, headers={"Accept": LINKSET})
    assert r.status_code == 200, r.text
    items = valid_linkset(r)["linkset"]
    assert [o["anchor"] for o in items] == [PUBLIC + GTIN_PATH]
    assert hrefs_by_type(items[0]) == expected_hrefs(GTIN_LINKS)


# ---------------------------------------------------------------------------
# redirection
# ---------------------------------------------------------------------------

def test_single_link_is_a_307(node):
    cases = [
        # (request, Location): a link type at the most specific level having one
        (f"{SERIAL_PATH}?{lt('gs1:certificationInfo')}", CERT["href"]),
        (f"{SERIAL_PATH}?{lt('gs1:traceability')}", TRACE["href"]),          # from the lot
        (f"{SERIAL_PATH}?{lt('gs1:hasRetailers')}", RETAILERS["href"]),      # from the GTIN
        (f"{SERIAL_PATH}?{lt(VOC + 'hasRetailers')}", RETAILERS["href"]),    # full URI asked
        (f"{SERIAL_PATH}?{lt(VOC + 'certificationInfo')}", CERT["href"]),
        (f"{GTIN_PATH}?{lt('gs1:pip')}", PIP_GENERIC["href"]),
        (f"{LOT_PATH}?{lt('gs1:pip')}", PIP_GENERIC["href"]),
        # no linkType: the default link at the most specific level having one
        (SERIAL_PATH, LOT_DEFAULT["href"]),                                   # "default": true on the lot
        (LOT_PATH, LOT_DEFAULT["href"]),
        (f"/01/{GTIN}/10/LOT2", GTIN_DEFAULT["href"]),                        # gs1:defaultLink on the GTIN
        (f"/01/{GTIN}/10/LOT2/21/SER9", GTIN_DEFAULT["href"]),
        (GTIN_PATH, GTIN_DEFAULT["href"]),
        (f"{GTIN_PATH}?{lt('gs1:defaultLink')}", GTIN_DEFAULT["href"]),
        # no default anywhere: the single link of the most specific level
        (f"/01/{GTIN_ONE}", ONE["href"]),
    ]
    problems = []
    for req, want in cases:
        r = get(node, req)
        if r.status_code != 307 or r.headers.get("Location") != want:
            problems.append(f"{req}: {r.status_code} Location {r.headers.get('Location')!r}, want 307 {want!r} "
                            f"{r.text[:200]}")
    assert not problems, "\n".join(problems)


def test_several_equal_links_are_a_300(node):
    cases = [
        # (request, the level's path, the links listed)
        (f"{SERIAL_PATH}?{lt('gs1:recipeInfo')}", SERIAL_PATH, [RECIPE_A, RECIPE_B]),
        (f"{SERIAL_PATH}?{lt('gs1:pip')}", SERIAL_PATH, [PIP_EN, PIP_ZH]),  # no Accept-Language
        (f"{SERIAL_PATH}?{lt('gs1:instructions')}", SERIAL_PATH, [INSTR_CN, INSTR_US]),  # no context
        (f"/01/{GTIN_TWO}", f"/01/{GTIN_TWO}", [TWO_A, TWO_B]),  # no default, two links
    ]
    problems = []
    for req, level, links in cases:
        r = get(node, req)
        if r.status_code != 300:
            problems.append(f"{req}: {r.status_code} {r.headers.get('Location')} {r.text[:200]}")
            continue
        items = valid_linkset(r)["linkset"]
        if [o["anchor"] for o in items] != [PUBLIC + level]:
            problems.append(f"{req}: anchors {[o['anchor'] for o in items]}")
            continue
        if hrefs_by_type(items[0]) != expected_hrefs(links):
            problems.append(f"{req}: listed {hrefs_by_type(items[0])}, want {expected_hrefs(links)}")
        problems += [f"{req}: {p}" for p in check_link_objects(items[0], links)]
        if "Location" in r.headers:
            problems.append(f"{req}: a 300 with Location {r.headers['Location']}")
        problems += [f"{req}: {p}" for p in check_linkset_header(r, req.split("?")[0])]
    assert not problems, "\n".join(problems)


def test_unknown_link_type_is_404(node):
    problems = []
    for req in (f"{SERIAL_PATH}?{lt('gs1:allergenInfo')}",
                f"{GTIN_PATH}?{lt(VOC + 'allergenInfo')}",
                f"{SERIAL_PATH}?{lt('gs1:sustainabilityInfo')}",   # only a non-public link has it
                f"{GTIN_PATH}?{lt('gs1:traceability')}"):           # the lot's, not above the GTIN
        r = get(node, req)
        if r.status_code != 404:
            problems.append(f"{req}: {r.status_code} {r.headers.get('Location')} {r.text[:200]}")
            continue
        j = r.json()
        if j.get("status") != 404 or not j.get("message"):
            problems.append(f"{req}: body {j}")
        problems += [f"{req}: {p}" for p in check_linkset_header(r, req.split("?")[0])]
    # no record at any level, and a record without links
    for req in (f"/01/{GTIN_NONE}", f"/01/{GTIN_NONE}/10/LOT1/21/SER1", f"/01/{GTIN_BARE}"):
        r = get(node, req)
        if r.status_code != 404:
            problems.append(f"{req}: {r.status_code} {r.headers.get('Location')} {r.text[:200]}")
    assert not problems, "\n".join(problems)


#: (what, path and query, fragment the message names)
BAD_PATHS = [
    ("wrong check digit", f"/01/{GTIN_BAD}", "check digit"),
    ("wrong check digit with qualifiers", f"/01/{GTIN_BAD}/10/LOT1/21/SER1", "check digit"),
    ("qualifiers out of order", f"/01/{GTIN}/21/SER1/10/LOT1", "not a valid key and qualifier path"),
    ("unknown AI in the path", f"/01/{GTIN}/89/X", "unknown application identifier (89)"),
    ("short GTIN", f"/01/{GTIN[:-1]}", "13 characters"),
    ("unknown AI in the query", f"/01/{GTIN}?89=X", "unknown application identifier (89)"),
]


def test_bad_paths_are_400_naming_the_fault(node):
    problems = []
    for what, req, fragment in BAD_PATHS:
        r = get(node, req)
        try:
            j = r.json()
        except ValueError:
            j = {}
        msg = j.get("message", "")
        path = req.split("?")[0]
        if r.status_code != 400 or j.get("status") != 400:
            problems.append(f"{what} {req}: {r.status_code} {r.text[:300]}")
        elif f"{path} is not a valid GS1 Digital Link: " not in msg or fragment not in msg:
            problems.append(f"{what} {req}: message {msg!r}, want '{path} is not a valid GS1 Digital Link: "
                            f"…{fragment}…'")
        elif r.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            problems.append(f"{what}: Content-Type {r.headers.get('Content-Type')}")
    assert node.alive()
    assert not problems, "\n".join(problems)


def test_trailing_slash_is_tolerated(node):
    for path in (SERIAL_PATH, GTIN_PATH):
        plain, slashed = get(node, path), get(node, path + "/")
        assert slashed.status_code == plain.status_code == 307, (slashed.status_code, slashed.text)
        assert slashed.headers["Location"] == plain.headers["Location"]
        assert slashed.headers.get("Link") == plain.headers.get("Link"), (slashed.headers, plain.headers)
        a, b = get(node, f"{path}?linkType=linkset"), get(node, f"{path}/?linkType=linkset")
        assert a.status_code == b.status_code == 200, b.text
        assert valid_linkset(b) == a.json()
        r = get(node, f"{path}/?{lt('gs1:pip')}", headers={"Accept-Language": "en"})
        assert r.status_code == 307, r.text


def test_query_string_is_passed_on(node):
    cases = [
        # data attributes and other parameters follow; linkType and context do not
        (f"{SERIAL_PATH}?17=261231", f"{LOT_DEFAULT['href']}?17=261231"),
        (f"{SERIAL_PATH}?{lt('gs1:recipeInfo')}&17=261231", None),  # (a 300: nothing to pass on)
        (f"{GTIN_PATH}?17=261231&foo=bar", f"{GTIN_DEFAULT['href']}?17=261231&foo=bar"),
        (f"{GTIN_PATH}?{lt('gs1:hasRetailers')}&17=261231&foo=bar",
         f"{RETAILERS['href']}?17=261231&foo=bar"),
        (f"{GTIN_PATH}?17=261231&{lt('gs1:hasRetailers')}&foo=bar",
         f"{RETAILERS['href']}?17=261231&foo=bar"),
        (f"{SERIAL_PATH}?{lt('gs1:instructions')}&context=cn&foo=bar", f"{INSTR_CN['href']}?foo=bar"),
        # a target with a query of its own gets the rest after '&'
        (f"{SERIAL_PATH}?{lt('gs1:traceability')}&17=261231", f"{TRACE['href']}&17=261231"),
        # fwqs false: the target as stored
        (f"{SERIAL_PATH}?{lt('gs1:certificationInfo')}&17=261231&foo=bar", CERT["href"]),
        (f"{SERIAL_PATH}?17=261231&{lt('gs1:certificationInfo')}", CERT["href"]),
    ]
    problems = []
    for req, want in cases:
        r = get(node, req)
        if want is None:
            if r.status_code != 300:
                problems.append(f"{req}: {r.status_code}, want 300")
            continue
        if r.status_code != 307 or r.headers.get("Location") != want:
            problems.append(f"{req}: {r.status_code} Location {r.headers.get('Location')!r}, want {want!r}")
        # The Link header names the key's path, without data attributes.
        problems += [f"{req}: {p}" for p in check_linkset_header(r, req.split("?")[0])]
    assert not problems, "\n".join(problems)


def test_accept_language_chooses_hreflang(node):
    req = f"{SERIAL_PATH}?{lt('gs1:pip')}"
    cases = [
        ("zh-CN,zh;q=0.9,en;q=0.8", PIP_ZH),
        ("en-GB,en;q=0.9,zh;q=0.8", PIP_EN),
        ("zh", PIP_ZH),
        ("en", PIP_EN),
        ("zh-TW", PIP_ZH),        # primary subtag
        ("en-US", PIP_EN),
        ("en;q=0.3, zh-CN", PIP_ZH),  # by q, not by position
        ("zh;q=0.3, en-AU", PIP_EN),
        ("fr-FR, zh;q=0.5", PIP_ZH),  # the first range with a match
        ("fr, en;q=0.1", PIP_EN),
    ]
    problems = []
    for lang, want in cases:
        r = get(node, req, headers={"Accept-Language": lang})
        if r.status_code != 307 or r.headers.get("Location") != want["href"]:
            problems.append(f"Accept-Language {lang!r}: {r.status_code} {r.headers.get('Location')!r}, "
                            f"want {want['href']!r}")
    # no language in common: both stay (300)
    r = get(node, req, headers={"Accept-Language": "fr-FR, de;q=0.5"})
    if r.status_code != 300:
        problems.append(f"Accept-Language fr, de: {r.status_code} {r.headers.get('Location')}, want 300")
    assert not problems, "\n".join(problems)


def test_accept_chooses_media_type(node):
    req = f"{SERIAL_PATH}?{lt('gs1:epil')}"
    problems = []
    for accept, want in (("application/pdf", EPIL_PDF), ("text/html", EPIL_HTML),
                         ("text/html, application/xhtml+xml", EPIL_HTML)):
        r = get(node, req, headers={"Accept": accept})
        if r.status_code != 307 or r.headers.get("Location") != want["href"]:
            problems.append(f"Accept {accept!r}: {r.status_code} {r.headers.get('Location')!r}, want {want['href']}")
    r = get(node, req, headers={"Accept": "*/*"})
    if r.status_code != 300:
        problems.append(f"Accept */*: {r.status_code} {r.headers.get('Location')}, want 300")
    # Accept-Language first, then Accept: both are English
    r = get(node, req, headers={"Accept": "application/pdf", "Accept-Language": "en-GB"})
    if r.status_code != 307 or r.headers.get("Location") != EPIL_PDF["href"]:
        problems.append(f"en-GB + PDF: {r.status_code} {r.headers.get('Location')}")
    assert not problems, "\n".join(problems)


def test_accept_is_read_as_media_ranges_with_q_values(node):
    """Accept is a list of media ranges with weights (RFC 9110 §12.5.1): a
    browser's text/html at q=1 beats */* at q=0.8, q=0 means "not
    acceptable", and a range names a whole media type, not a prefix of one."""
    req = f"{SERIAL_PATH}?{lt('gs1:epil')}"
    cases = [
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", 307, EPIL_HTML),  # a browser
        ("application/pdf;q=0.9, */*;q=0.1", 307, EPIL_PDF),
        ("application/pdf;q=0, text/html", 307, EPIL_HTML),
        ("text/htmlx", 300, None),  # matches neither link: both stay
    ]
    problems = []
    for accept, status, want in cases:
        r = get(node, req, headers={"Accept": accept})
        got = (r.status_code, r.headers.get("Location"))
        if got != (status, want["href"] if want else None):
            problems.append(f"Accept {accept!r}: {got}, want {(status, want['href'] if want else None)}")
    assert not problems, "\n".join(problems)


def test_context_narrows_the_links(node):
    base = f"{SERIAL_PATH}?{lt('gs1:instructions')}"
    problems = []
    for ctx, want in (("cn", INSTR_CN), ("us", INSTR_US)):
        r = get(node, f"{base}&context={ctx}")
        if r.status_code != 307 or r.headers.get("Location") != want["href"]:
            problems.append(f"context={ctx}: {r.status_code} {r.headers.get('Location')!r}, want {want['href']}")
    # context before linkType, and an Accept-Language that does not decide
    r = get(node, f"{SERIAL_PATH}?context=cn&{lt('gs1:instructions')}", headers={"Accept-Language": "en"})
    if r.status_code != 307 or r.headers.get("Location") != INSTR_CN["href"]:
        problems.append(f"context first: {r.status_code} {r.headers.get('Location')!r}")
    r = get(node, base)
    if r.status_code != 300:
        problems.append(f"no context: {r.status_code}, want 300")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# headers
# ---------------------------------------------------------------------------

def cors_problems(r, what):
    h = r.headers
    out = []
    if h.get("Access-Control-Allow-Origin") != "*":
        out.append(f"{what}: Access-Control-Allow-Origin {h.get('Access-Control-Allow-Origin')!r}")
    methods = {m.strip().upper() for m in h.get("Access-Control-Allow-Methods", "").split(",")}
    if not {"GET", "HEAD", "OPTIONS"} <= methods:
        out.append(f"{what}: Access-Control-Allow-Methods {h.get('Access-Control-Allow-Methods')!r}")
    exposed = {m.strip().lower() for m in h.get("Access-Control-Expose-Headers", "").split(",")}
    if not {"link", "location"} <= exposed:
        out.append(f"{what}: Access-Control-Expose-Headers {h.get('Access-Control-Expose-Headers')!r}")
    return out


def test_cors_and_link_headers_on_every_answer(node):
    origin = {"Origin": "https://app.example.net"}
    cases = [
        # (what, request, status, key path for the Link header or None)
        ("description", "/.well-known/gs1resolver", 200, None),
        ("linkset", f"{SERIAL_PATH}?linkType=linkset", 200, SERIAL_PATH),
        ("307", SERIAL_PATH, 307, SERIAL_PATH),
        ("307 with data attribute", f"{SERIAL_PATH}?17=261231", 307, SERIAL_PATH),
        ("307 walked up", f"/01/{GTIN}/10/LOT2", 307, f"/01/{GTIN}/10/LOT2"),
        ("300", f"{SERIAL_PATH}?{lt('gs1:recipeInfo')}", 300, SERIAL_PATH),
        ("404 link type", f"{SERIAL_PATH}?{lt('gs1:allergenInfo')}", 404, SERIAL_PATH),
        ("404 no record", f"/01/{GTIN_NONE}", 404, f"/01/{GTIN_NONE}"),
        ("400", f"/01/{GTIN_BAD}", 400, None),
    ]
    problems = []
    for what, req, status, key_path in cases:
        r = get(node, req, headers=origin)
        if r.status_code != status:
            problems.append(f"{what}: {r.status_code}, want {status}")
            continue
        problems += cors_problems(r, what)
        if key_path is not None:
            problems += [f"{what}: {p}" for p in check_linkset_header(r, key_path)]
    assert not problems, "\n".join(problems)


def test_options_on_a_dl_path(node):
    problems = []
    for path in (SERIAL_PATH, GTIN_PATH, f"{SERIAL_PATH}?17=261231", SERIAL_PATH + "/"):
        for headers in ({}, {"Origin": "https://app.example.net", "Access-Control-Request-Method": "GET",
                             "Access-Control-Request-Headers": "Accept-Language"}):
            r = options(node, path, headers=headers)
            what = f"OPTIONS {path} {'preflight' if headers else ''}"
            if r.status_code != 204:
                problems.append(f"{what}: {r.status_code} {r.text[:200]}")
                continue
            allow = {m.strip().upper() for m in r.headers.get("Allow", "").split(",")}
            if not {"GET", "HEAD", "OPTIONS"} <= allow:
                problems.append(f"{what}: Allow {r.headers.get('Allow')!r}")
            problems += cors_problems(r, what)
            key = path.split("?")[0].rstrip("/")
            problems += [f"{what}: {p}" for p in check_linkset_header(r, key)]
            if r.content:
                problems.append(f"{what}: a 204 with a body {r.content[:100]!r}")
    assert not problems, "\n".join(problems)


def test_link_header_equal_on_307_and_options(node):
    for path in (SERIAL_PATH, GTIN_PATH, f"/01/{GTIN}/10/LOT2", f"/01/{GTIN_ONE}"):
        g, o = get(node, path), options(node, path)
        assert g.status_code == 307 and o.status_code == 204, (path, g.status_code, o.status_code)
        assert g.headers.get("Link") and g.headers.get("Link") == o.headers.get("Link"), \
            (path, g.headers.get("Link"), o.headers.get("Link"))
        # and the Link target is a linkset of that key
        target, _ = linkset_link(g)
        assert target.startswith(PUBLIC + "/")
        r = get(node, target[len(PUBLIC):])
        assert r.status_code == 200, r.text
        # its first anchor is the key's most specific level that has a record
        assert (PUBLIC + path).startswith(valid_linkset(r)["linkset"][0]["anchor"]), r.text


# ---------------------------------------------------------------------------
# import refuses bad resolver links
# ---------------------------------------------------------------------------

#: (what, the GS1.LINK value's JSON, fragment the error names)
BAD_LINKS = [
    ("missing title", {"linkType": "gs1:pip", "href": "https://brand.example.com/x"}, "title"),
    ("empty title", {"linkType": "gs1:pip", "href": "https://brand.example.com/x", "title": ""}, "title"),
    ("ftp href", {"linkType": "gs1:pip", "href": "ftp://brand.example.com/x", "title": "T"}, "href"),
    ("relative href", {"linkType": "gs1:pip", "href": "/x", "title": "T"}, "href"),
    ("bad hreflang", {"linkType": "gs1:pip", "href": "https://brand.example.com/x", "title": "T",
                      "hreflang": ["english"]}, "hreflang"),
    # (a JSON type error: only the value is named)
    ("hreflang not a list", {"linkType": "gs1:pip", "href": "https://brand.example.com/x", "title": "T",
                             "hreflang": "en"}, None),
    ("bad type", {"linkType": "gs1:pip", "href": "https://brand.example.com/x", "title": "T",
                  "type": "html"}, "type"),
]


def test_bad_gs1_link_refused_at_import(tmp_path):
    data, conf = init_store(str(tmp_path), [])
    problems = []
    for n, (what, obj, fragment) in enumerate(BAD_LINKS):
        handle = f"{PREFIX}/BAD{n}"
        rec = {"handle": handle, "values": [sv(1, "URL", "https://factory.example.cn/bad"),
                                            sv(10, "GS1.GTIN", GTIN),
                                            sv(17, "GS1.LINK", json.dumps(obj))]}
        r = import_records(str(tmp_path), data, conf, [rec], name=f"bad{n}.jsonl", check=False)
        if r.returncode == 0:
            problems.append(f"{what}: imported: {r.stdout} {r.stderr}")
            continue
        if "value 17" not in r.stderr or (fragment is not None and fragment not in r.stderr):
            problems.append(f"{what}: the error does not name value 17 and {fragment!r}: {r.stderr.strip()!r}")
    # not a JSON object at all
    rec = {"handle": f"{PREFIX}/BADJ", "values": [sv(1, "URL", "https://factory.example.cn/bad"),
                                                  sv(10, "GS1.GTIN", GTIN), sv(17, "GS1.LINK", "pip!")]}
    r = import_records(str(tmp_path), data, conf, [rec], name="badj.jsonl", check=False)
    if r.returncode == 0 or "value 17" not in r.stderr:
        problems.append(f"not JSON: exit {r.returncode} {r.stderr.strip()!r}")
    out = run_idres("export", "--data-dir", data, timeout=WAIT).stdout
    if f"{PREFIX}/BAD" in out:
        problems.append(f"a refused record was stored: {out[:500]}")
    # the same record with a good link is taken
    good = {"handle": f"{PREFIX}/GOOD", "values": [sv(1, "URL", "https://factory.example.cn/good"),
                                                   sv(10, "GS1.GTIN", GTIN), _pip_en]}
    r = import_records(str(tmp_path), data, conf, [good], name="good.jsonl", check=False)
    if r.returncode != 0:
        problems.append(f"good link refused: {r.stderr.strip()!r}")
    assert not problems, "\n".join(problems)


def test_bad_gs1_link_refused_over_http(node):
    """The same check on the HTTP write path (PUT /api/handles/…)."""
    handle = f"{PREFIX}/PUTBAD"
    obj = {"linkType": "gs1:pip", "href": "ftp://brand.example.com/x", "title": "T"}
    r = requests.put(f"{node.base}/api/handles/{handle}", params={"overwrite": "true"},
                     headers={"Authorization": basic()}, timeout=WAIT,
                     json={"values": [sv(1, "URL", "https://factory.example.cn/x"),
                                      sv(17, "GS1.LINK", json.dumps(obj))]})
    assert 400 <= r.status_code < 500 and "value 17" in r.text and "href" in r.text, f"{r.status_code} {r.text}"
    assert requests.get(f"{node.base}/api/handles/{handle}", timeout=WAIT).status_code == 404


# ---------------------------------------------------------------------------
# DNS (ONS form)
# ---------------------------------------------------------------------------

def ons_name(key, kind="gtin"):
    return ".".join(reversed(key)) + f".{kind}.gs1.id.{ZONE}"


def dig(node, *args):
    assert shutil.which("dig"), "dig (Debian dnsutils) is required"
    out = subprocess.run(["dig", "@127.0.0.1", "-p", str(node.dns_port), "+time=3", "+tries=1", *args],
                         capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def status(text):
    m = re.search(r"status: (\w+)", text)
    assert m, text
    return m.group(1)


def answers(text, rtype):
    return [line for line in text.splitlines()
            if not line.startswith(";") and re.search(rf"\sIN\s+{rtype}\s", line)]


def test_dns_ons_naptr(node):
    name = ons_name(GTIN)
    assert name == "3.1.2.3.4.5.4.3.2.1.2.5.9.0.gtin.gs1.id.oid-res.org."
    for transport in ("+notcp", "+tcp"):
        out = dig(node, name, "NAPTR", transport)
        assert status(out) == "NOERROR", out
        naptr = answers(out, "NAPTR")
        assert len(naptr) == 2, out
        assert '"U" "ORS+UINF" "!^.*$!https://factory.example.cn/gtin!" .' in naptr[0], out
        assert '"U" "ORS+UINF" "!^.*$!https://factory.example.cn/gtin/alt!" .' in naptr[1], out
    # upper-case labels are the same name
    out = dig(node, name.upper(), "NAPTR")
    assert status(out) == "NOERROR" and len(answers(out, "NAPTR")) == 2, out
    # TXT: the public values, not the private link
    out = dig(node, name, "TXT", "+tcp")
    assert status(out) == "NOERROR", out
    txt = "\n".join(answers(out, "TXT"))
    assert f"URL={GTIN_URL}" in txt and f"GS1.GTIN={GTIN}" in txt, out
    assert PRIVATE["href"] not in txt, out
    # SSCC and GLN in their own trees
    for key, kind, url in ((SSCC, "sscc", "https://factory.example.cn/sscc"),
                           (GLN, "gln", "https://factory.example.cn/gln")):
        out = dig(node, ons_name(key, kind), "NAPTR")
        assert status(out) == "NOERROR", out
        assert [f"!^.*$!{url}!" in a for a in answers(out, "NAPTR")] == [True], out


def test_dns_ons_nxdomain(node):
    cases = [
        ("wrong check digit", ons_name(GTIN_BAD)),
        ("no record", ons_name(GTIN_NONE)),
        ("13 digits", ons_name(GTIN[1:])),
        ("a GTIN under sscc", ons_name(GTIN, "sscc")),
        ("not a digit", "x." + ons_name(GTIN[1:])),
    ]
    problems = []
    for what, name in cases:
        out = dig(node, name, "NAPTR")
        if status(out) != "NXDOMAIN" or answers(out, "NAPTR"):
            problems.append(f"{what} {name}: {status(out)} {answers(out, 'NAPTR')}")
    # the tree itself exists, without answers
    for name in (f"gtin.gs1.id.{ZONE}", f"gs1.id.{ZONE}"):
        out = dig(node, name, "NAPTR")
        if status(out) != "NOERROR" or answers(out, "NAPTR"):
            problems.append(f"{name}: {status(out)} {answers(out, 'NAPTR')}")
    assert node.alive()
    assert not problems, "\n".join(problems)

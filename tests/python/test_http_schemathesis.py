"""schemathesis against the node's own /api/openapi.json.

Property-based requests (bounded in examples per operation and in total
time) with the prefix administrator's Basic credentials, so that writes go
deep; every response must be free of server errors and conform to the
document: status codes, content types, headers and body schemas. The
native-message operation is left out: its body is a binary Handle message
that schemathesis cannot generate (the Rust tests and the pyhandle tests
cover it and the JSON API by hand).
"""

import os
import shutil
import subprocess
import sys

import pytest
import requests

from idres_http_node import ADMIN, SECRET, start_node

SEED = os.environ.get("IDRES_SCHEMATHESIS_SEED", "20261129")
MAX_EXAMPLES = os.environ.get("IDRES_SCHEMATHESIS_EXAMPLES", "25")
MAX_TIME = os.environ.get("IDRES_SCHEMATHESIS_SECONDS", "120")


def schemathesis_cmd():
    exe = shutil.which("schemathesis") or shutil.which("st")
    return [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = start_node(str(tmp_path_factory.mktemp("schema")))
    try:
        yield n
    finally:
        n.stop()


def test_document_is_served(node):
    doc = requests.get(node.base + "/api/openapi.json", timeout=30).json()
    assert doc["openapi"].startswith("3.0")
    assert {"/api/handles/{prefix}/{suffix}", "/api/handles", "/hrls/handles", "/"} <= set(doc["paths"])


def test_schemathesis_finds_nothing(node, tmp_path):
    user = ADMIN.replace(":", "%3A").replace("/", "%2F")
    cmd = schemathesis_cmd() + [
        "run", node.base + "/api/openapi.json",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_headers_conformance,response_schema_conformance",
        "--exclude-operation-id", "nativeMessage",
        "--max-examples", MAX_EXAMPLES,
        "--max-time", MAX_TIME,
        "--request-timeout", "20",
        "--seed", SEED,
        "--workers", "2",
        "--auth", f"{user}:{SECRET}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=int(MAX_TIME) + 180)
    out = proc.stdout + proc.stderr
    print(out[-20000:])
    assert proc.returncode == 0, out[-6000:]
    assert "generated" in out

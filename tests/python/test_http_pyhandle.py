"""pyhandle 1.5.0, the EUDAT Handle client, against a running idres node.

The node serves HTTPS with a certificate from a CA made here, and accepts
client certificates from the same CA. pyhandle is used as its users use
it: RESTHandleClient with Basic credentials (index%3Ahandle and the secret
key), then retrieve, register (overwrite false and true), modify, delete a
value, search by value, delete the handle; a wrong password is refused, and
a client certificate naming the administrator works in place of a password.
"""

import json

import pytest
import requests
from pyhandle.client.resthandleclient import RESTHandleClient
from pyhandle.handleexceptions import (
    HandleAlreadyExistsException,
    HandleAuthenticationError,
    HandleNotFoundException,
    ReverseLookupException,
)

from idres_http_node import ADMIN, PREFIX, SECRET, basic, make_pki, start_node

NOBODY = "300:88.118.8/NOBODY"


@pytest.fixture(scope="module")
def tls_node(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("https"))
    pki = make_pki(d, [ADMIN, NOBODY])
    node = start_node(d, tls=pki)
    try:
        yield node, pki
    finally:
        node.stop()


def client(node, pki, password=SECRET):
    return RESTHandleClient.instantiate_with_username_and_password(
        node.base, ADMIN, password, HTTPS_verify=pki["ca"])


def test_pyhandle_lifecycle(tls_node):
    node, pki = tls_node
    c = client(node, pki)
    # The administrator's own handle: its key is hidden, its HS_ADMIN shown.
    admin = c.retrieve_handle_record_json(f"{PREFIX}/ADMIN")
    assert admin["handle"] == f"{PREFIX}/ADMIN"
    assert [v["type"] for v in admin["values"]] == ["HS_ADMIN"]

    h = f"{PREFIX}/PYHANDLE-1"
    assert c.register_handle(h, "https://factory.example.cn/pump/1", checksum="abc123") == h
    with pytest.raises(HandleAlreadyExistsException):
        c.register_handle(h, "https://factory.example.cn/pump/1b", overwrite=False)
    assert c.register_handle(h, "https://factory.example.cn/pump/1c", overwrite=True,
                             DESC="centrifugal pump") == h
    record = c.retrieve_handle_record(h)
    assert record["URL"] == "https://factory.example.cn/pump/1c"
    assert record["DESC"] == "centrifugal pump"
    assert "CHECKSUM" not in record, "overwrite replaced the whole record"
    # pyhandle writes HS_ADMIN naming 200:0.NA/<prefix>, the admin group.
    full = c.retrieve_handle_record_json(h)
    admin_value = next(v for v in full["values"] if v["type"] == "HS_ADMIN")
    assert admin_value["data"]["value"]["handle"] == f"0.NA/{PREFIX}"
    assert admin_value["data"]["value"]["index"] == 200

    c.modify_handle_value(h, URL="https://factory.example.cn/pump/1d", EMAIL="qa@factory.example.cn")
    assert c.get_value_from_handle(h, "URL") == "https://factory.example.cn/pump/1d"
    assert c.get_value_from_handle(h, "EMAIL") == "qa@factory.example.cn"

    c.delete_handle_value(h, "DESC")
    assert c.get_value_from_handle(h, "DESC") is None

    found = c.search_handle(URL="*factory.example.cn/pump/1d")
    assert found == [h]
    assert c.search_handle(URL="*no-such-host*") == []

    assert c.delete_handle(h) == h
    assert c.retrieve_handle_record(h) is None
    with pytest.raises(HandleNotFoundException):
        c.delete_handle(h)


def test_wrong_password_is_refused(tls_node):
    node, pki = tls_node
    # pyhandle checks only that the identity's handle exists when it starts.
    c = client(node, pki, password="not the secret")
    with pytest.raises(HandleAuthenticationError):
        c.register_handle(f"{PREFIX}/PYHANDLE-WRONG", "https://example.cn/x")
    r = requests.get(f"{node.base}/api/handles/{PREFIX}/PYHANDLE-WRONG", verify=pki["ca"], timeout=30)
    assert r.status_code == 404
    with pytest.raises(ReverseLookupException):
        c.search_handle(URL="*")


def test_client_certificate_in_place_of_a_password(tls_node):
    node, pki = tls_node
    cert, key = pki["clients"][ADMIN]
    c = RESTHandleClient(node.base, certificate_only=cert, private_key=key, HTTPS_verify=pki["ca"],
                         handleowner="200:0.NA/" + PREFIX)
    h = f"{PREFIX}/PYHANDLE-CERT"
    assert c.register_handle(h, "https://factory.example.cn/cert", overwrite=True) == h
    assert c.retrieve_handle_record(h)["URL"] == "https://factory.example.cn/cert"
    assert c.delete_handle(h) == h
    # A certificate from the same CA naming an identity without permission.
    cert, key = pki["clients"][NOBODY]
    r = requests.put(f"{node.base}/api/handles/{h}", cert=(cert, key), verify=pki["ca"], timeout=30,
                     headers={"Authorization": 'Handle clientCert="true"'},
                     data=json.dumps({"values": [{"index": 1, "type": "URL", "data": "https://x"}]}))
    # The identity's handle does not exist, yet a verified certificate is
    # an identity all the same: it just has no permission here.
    assert r.status_code == 403, r.text
    assert r.json()["responseCode"] == 401


def test_plain_requests_see_the_contract(tls_node):
    node, pki = tls_node
    s = requests.Session()
    ca = pki["ca"]  # per request: an environment CA bundle would win over Session.verify
    url = f"{node.base}/api/handles/{PREFIX}/REQ-1"
    body = {"values": [{"index": 1, "type": "URL", "data": "https://example.cn/req-1"},
                       {"index": "100", "type": "HS_ADMIN", "data": {"format": "admin", "value": {
                           "handle": f"0.NA/{PREFIX}", "index": "200", "permissions": "011111110011"}}}]}
    r = s.put(url + "?overwrite=false", json=body, verify=ca, timeout=30)
    assert r.status_code == 401 and r.json()["responseCode"] == 402
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    r = s.put(url + "?overwrite=false", json=body, headers={"Authorization": basic()}, verify=ca,
              timeout=30)
    assert (r.status_code, r.json()) == (201, {"responseCode": 1, "handle": f"{PREFIX}/REQ-1"})
    r = s.get(url, verify=ca, timeout=30)
    assert r.status_code == 200
    v = r.json()["values"][0]
    assert v["data"] == {"format": "string", "value": "https://example.cn/req-1"}
    assert set(v) >= {"index", "type", "data", "ttl", "timestamp"}

"""The web resolver page in headless Chromium (Debian's chromium and
chromedriver, driven by Selenium).

The browser loads `/`, types an identifier into the form and submits it;
the test reads the rendered table, follows a link, checks that `/{handle}`
redirects to the handle's URL value and that `?noredirect` shows the
record, and keeps screenshots under tests/artifacts/. The node's URL
values point back at the node itself, so nothing leaves the machine.
"""

import os
import shutil
import tempfile

import pytest
import requests

from idres_http_node import ARTIFACTS, PREFIX, basic, start_node

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 30

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian chromium and chromium-driver are not installed")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = start_node(str(tmp_path_factory.mktemp("web")))
    try:
        records = {
            "PUMP-1": [
                {"index": 1, "type": "URL", "data": f"{n.base}/{PREFIX}/TARGET?noredirect"},
                {"index": 2, "type": "DESC", "data": "Centrifugal pump, lot 2106023 <tested>"},
                {"index": 3, "type": "EMAIL", "data": "qa@factory.example.cn"},
                {"index": 4, "type": "HS_ALIAS", "data": f"{PREFIX}/TARGET"},
            ],
            "TARGET": [{"index": 1, "type": "DESC", "data": "the page a redirect lands on"}],
        }
        for suffix, values in records.items():
            r = requests.put(f"{n.base}/api/handles/{PREFIX}/{suffix}", json={"values": values},
                             headers={"Authorization": basic()}, timeout=WAIT)
            assert r.status_code in (200, 201), r.text
        yield n
    finally:
        n.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # never let Selenium fetch a browser
    profile = tempfile.mkdtemp(prefix="idres-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--window-size=1280,900", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    assert driver.save_screenshot(path)
    assert os.path.getsize(path) > 1000


def test_form_submission_renders_the_record(node, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(node.base + "/")
    assert browser.title == "Resolve an identifier · idres resolver"
    box = browser.find_element(By.ID, "handle")
    box.send_keys(f"{PREFIX}/PUMP-1")
    browser.find_element(By.ID, "resolve").click()
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.ID, "values")))
    assert browser.find_element(By.ID, "result").text == f"{PREFIX}/PUMP-1"
    rows = browser.find_elements(By.CSS_SELECTOR, "#values tbody tr")
    cells = [[td.text for td in r.find_elements(By.TAG_NAME, "td")] for r in rows]
    assert [c[0] for c in cells] == ["1", "2", "3", "4"]
    assert [c[1] for c in cells] == ["URL", "DESC", "EMAIL", "HS_ALIAS"]
    assert cells[1][2] == "Centrifugal pump, lot 2106023 <tested>"
    assert cells[0][3] == "86400 s (1 day)"
    url_link = rows[0].find_element(By.TAG_NAME, "a")
    assert url_link.get_attribute("href") == f"{node.base}/{PREFIX}/TARGET?noredirect"
    assert rows[2].find_element(By.TAG_NAME, "a").get_attribute("href") == "mailto:qa@factory.example.cn"
    shot(browser, "http-resolver-record.png")

    # The alias is a link to the other record's page.
    rows[3].find_element(By.TAG_NAME, "a").click()
    WebDriverWait(browser, WAIT).until(ec.text_to_be_present_in_element((By.ID, "result"), "TARGET"))
    assert "the page a redirect lands on" in browser.find_element(By.ID, "values").text


def test_errors_are_explained(node, browser):
    from selenium.webdriver.common.by import By

    browser.get(node.base + "/?handle=" + f"{PREFIX}/NO-SUCH-THING")
    err = browser.find_element(By.ID, "error")
    assert "is not registered at this node" in err.text
    shot(browser, "http-resolver-not-found.png")
    browser.get(node.base + "/?handle=missing-slash")
    assert "No '/' between prefix and suffix" in browser.find_element(By.ID, "error").text


def test_redirect_and_noredirect(node, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{node.base}/{PREFIX}/PUMP-1")
    # Redirected to the URL value, which is TARGET's record page.
    assert browser.current_url == f"{node.base}/{PREFIX}/TARGET?noredirect"
    assert browser.find_element(By.ID, "result").text == f"{PREFIX}/TARGET"
    browser.get(f"{node.base}/{PREFIX}/PUMP-1?noredirect")
    assert browser.current_url == f"{node.base}/{PREFIX}/PUMP-1?noredirect"
    assert browser.find_element(By.ID, "result").text == f"{PREFIX}/PUMP-1"
    # The same address answers JSON to a client that asks for it.
    r = requests.get(f"{node.base}/{PREFIX}/PUMP-1", headers={"Accept": "application/json"},
                     allow_redirects=False, timeout=WAIT)
    assert r.status_code == 200 and r.json()["handle"] == f"{PREFIX}/PUMP-1"

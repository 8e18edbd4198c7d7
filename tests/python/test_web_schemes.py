"""The web resolver page with identifiers of every scheme, in headless
Chromium (Debian's chromium and chromedriver, driven by Selenium), in
Chinese and in English.

A record is linked to a GTIN+lot (GS1.DL), another to its GTIN; the
browser types a Digital Link, a scanned element string (symbology
identifier `]C1`, then Enter, as a barcode reader acting as a keyboard
sends it) and an Ecode, and checks what the page says it read and which
record and level it reached. One browser asks for Chinese in its
Accept-Language, the other for English; the switch on the page changes
the language either way.
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
GTIN = "09521234543213"


def test_browser_is_installed():
    # The page tests need Debian's chromium and chromium-driver; their
    # absence is a failure, not a skip.
    assert os.path.exists(CHROMIUM), CHROMIUM
    assert os.path.exists(CHROMEDRIVER), CHROMEDRIVER


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    n = start_node(str(tmp_path_factory.mktemp("webschemes")))
    try:
        records = {
            "LOT-1": [
                {"index": 1, "type": "DESC", "data": "Pump, lot LOT1"},
                {"index": 2, "type": "GS1.DL", "data": f"https://id.gs1.org/01/{GTIN}/10/LOT1"},
                {"index": 3, "type": "ECODE", "data": "10001123456789"},
            ],
            "GTIN": [
                {"index": 1, "type": "DESC", "data": "Pump, every lot"},
                {"index": 2, "type": "GS1.GTIN", "data": GTIN},
            ],
        }
        for suffix, values in records.items():
            r = requests.put(f"{n.base}/api/handles/{PREFIX}/{suffix}", json={"values": values},
                             headers={"Authorization": basic()}, timeout=WAIT)
            assert r.status_code in (200, 201), r.text
        yield n
    finally:
        n.stop()


def make_browser(language):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    profile = tempfile.mkdtemp(prefix="idres-chromium-")
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--window-size=1280,900", f"--user-data-dir={profile}", f"--lang={language}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"intl.accept_languages": language})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(WAIT)
    return driver, profile


@pytest.fixture(params=["zh-CN,zh", "en-US,en"], ids=["zh", "en"])
def browser(request):
    driver, profile = make_browser(request.param)
    try:
        yield driver, request.param[:2]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


WORDS = {
    "zh": {"button": "解析", "read": "识别为", "reached": "解析到记录", "lot": "GTIN + 批次",
           "gtin": "GTIN", "walked": "由上一层级应答", "title": "标识解析 · idres 标识解析",
           "not_found": "未找到"},
    "en": {"button": "Resolve", "read": "Read as", "reached": "Reached record", "lot": "GTIN + lot",
           "gtin": "GTIN", "walked": "the nearest level above answered",
           "title": "Resolve an identifier · idres resolver", "not_found": "Not found"},
}


def submit(driver, text, enter=False):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "handle")
    box.clear()
    box.send_keys(text)
    if enter:
        box.send_keys(Keys.ENTER)
    else:
        driver.find_element(By.ID, "resolve").click()
    WebDriverWait(driver, WAIT).until(ec.presence_of_element_located((By.ID, "read")))


def test_any_scheme_in_the_browsers_language(node, browser):
    from selenium.webdriver.common.by import By

    driver, lang = browser
    w = WORDS[lang]
    driver.get(node.base + "/")
    assert driver.title == w["title"]
    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang").startswith(lang)
    assert driver.find_element(By.ID, "resolve").text == w["button"]

    # A Digital Link with a serial: no record of its own, the lot answers.
    submit(driver, f"https://id.example.org/01/{GTIN}/10/LOT1/21/SER9?17=261231")
    read = driver.find_element(By.ID, "read").text
    assert read.startswith(w["read"]), read
    assert driver.find_element(By.ID, "scheme").text == "GS1"
    assert driver.find_element(By.ID, "form").text == "Digital Link URI"
    assert driver.find_element(By.ID, "canonical").text == f"gs1:01/{GTIN}/10/LOT1/21/SER9"
    assert driver.find_element(By.ID, "reached").text == f"{PREFIX}/LOT-1"
    assert driver.find_element(By.ID, "level").text == w["lot"]
    assert w["walked"] in read and w["reached"] in read
    assert "Pump, lot LOT1" in driver.find_element(By.ID, "values").text
    shot(driver, f"web-schemes-dl-{lang}.png")

    # Scanned: symbology identifier, element string, then Enter.
    submit(driver, f"]C101{GTIN}10LOT1", enter=True)
    assert driver.find_element(By.ID, "form").text == "element string"
    assert driver.find_element(By.ID, "reached").text == f"{PREFIX}/LOT-1"
    assert w["walked"] not in driver.find_element(By.ID, "read").text

    # A GTIN-13 with another lot: the GTIN record answers.
    submit(driver, f"(01){GTIN}(10)LOT2")
    assert driver.find_element(By.ID, "reached").text == f"{PREFIX}/GTIN"
    assert driver.find_element(By.ID, "level").text == w["gtin"]

    # An Ecode.
    submit(driver, "10001123456789")
    assert driver.find_element(By.ID, "scheme").text == "ECODE"
    assert driver.find_element(By.ID, "reached").text == f"{PREFIX}/LOT-1"

    # A wrong check digit is refused with the fault named.
    box = driver.find_element(By.ID, "handle")
    box.clear()
    box.send_keys(f"(01)0952123454321{int(GTIN[-1]) ^ 1}")
    driver.find_element(By.ID, "resolve").click()
    err = driver.find_element(By.ID, "error").text
    assert "check digit" in err and "expected 3" in err, err


def test_language_switch(node, browser):
    from selenium.webdriver.common.by import By

    driver, lang = browser
    other = "en" if lang == "zh" else "zh"
    driver.get(f"{node.base}/?handle=({'01'}){GTIN}")
    assert driver.find_element(By.ID, "level").text == WORDS[lang]["gtin"]
    assert driver.find_element(By.ID, "read").text.startswith(WORDS[lang]["read"])
    # The current language is not a link; the other one is, and keeps the identifier.
    assert driver.find_elements(By.CSS_SELECTOR, f"strong#lang-{lang}")
    driver.find_element(By.ID, f"lang-{other}").click()
    assert driver.find_element(By.ID, "read").text.startswith(WORDS[other]["read"])
    assert driver.find_element(By.ID, "reached").text == f"{PREFIX}/GTIN"
    assert driver.find_element(By.ID, "resolve").text == WORDS[other]["button"]
    # The form keeps the chosen language for the next identifier.
    submit(driver, f"gs1:01/{GTIN}/10/LOT1")
    assert driver.find_element(By.ID, "read").text.startswith(WORDS[other]["read"])
    shot(driver, f"web-schemes-switch-{lang}-to-{other}.png")


def shot(driver, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    assert driver.save_screenshot(path)
    assert os.path.getsize(path) > 1000

"""The web page end to end: ``audioclf serve`` in a subprocess, headless Chromium driven by Selenium uploads real
FSDD clips through the file input; the page must show the label the Python API predicts.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/install-browser.sh``); skipped without them."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import live_server, FSDD_CLIPS, FSDD_LABELS
import soundfile as sf

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(f"browser test needs {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver, "
                "or .ci/install-browser.sh)", allow_module_level=True)
pytest.importorskip("selenium", reason="browser test needs selenium")
pytest.importorskip("fastapi", reason="browser test needs the serve extra")
pytest.importorskip("uvicorn", reason="browser test needs the serve extra")
httpx = pytest.importorskip("httpx")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from audioclf.audio import read_audio  # noqa: E402
from audioclf.inference import load  # noqa: E402

CLIPS, LABELS, SR = FSDD_CLIPS, FSDD_LABELS, 8000


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    with live_server(run, tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def upload(driver, url: str, path: Path | str, threshold: str | None = None):
    driver.get(url + "/")
    if threshold is not None:
        driver.find_element(By.ID, "threshold").send_keys(threshold)
    driver.find_element(By.ID, "file").send_keys(str(path))
    return WebDriverWait(driver, 30).until(EC.presence_of_element_located((By.ID, "top-label")))


@pytest.mark.slow
def test_page_shows_the_label_the_python_api_predicts(server, browser, run):
    clf = load(run)
    for clip in CLIPS[:3]:
        expected = clf.predict(clip, top_k=5)
        top = upload(browser, server, clip)
        assert top.text == expected[0]["label"]
        rows = browser.find_elements(By.CSS_SELECTOR, "#results .row")
        assert [r.get_attribute("data-label") for r in rows] == [p["label"] for p in expected]
        np.testing.assert_allclose([float(r.get_attribute("data-score")) for r in rows],
                                   [p["score"] for p in expected], rtol=1e-6)
        assert "error" not in browser.find_element(By.ID, "status").get_attribute("class")


def test_page_shows_an_event_timeline_for_long_audio(server, browser, run, tmp_path):
    audio = np.concatenate([read_audio(p, SR)[0] for p in CLIPS[:6]])
    path = tmp_path / "long.wav"
    sf.write(path, audio, SR)
    expected = load(run).predict(str(path))
    top = upload(browser, server, path, threshold="0")  # the untrained model is unsure: every label is an event
    assert top.text == expected[0]["label"]
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "timeline-box").is_displayed())
    events = browser.find_elements(By.CSS_SELECTOR, "#timeline .event")
    assert events, "no events drawn"
    assert {e.get_attribute("data-label") for e in events} == set(LABELS)
    for e in events:
        assert float(e.get_attribute("data-end")) > float(e.get_attribute("data-start")) >= 0


def test_page_reports_errors(server, browser, tmp_path):
    bad = tmp_path / "not-audio.wav"
    bad.write_bytes(b"definitely not audio" * 20)
    browser.get(server + "/")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    status = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#status.error"))
    assert "415" in status.text
    assert httpx.get(server + "/health").json()["status"] == "ok"


@pytest.mark.slow
def test_microphone_recording_is_classified(server, browser):
    """MediaRecorder (Chromium's fake microphone: a beep) -> WebM/Opus upload, decoded by FFmpeg (PyAV)."""
    pytest.importorskip("av", reason="WebM/Opus recordings need PyAV (the formats extra)")
    browser.get(server + "/")
    button = browser.find_element(By.ID, "record")
    button.click()
    WebDriverWait(browser, 10).until(lambda d: "Stop" in button.text)
    time.sleep(1.2)
    button.click()
    top = WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.ID, "top-label") or d.find_elements(By.CSS_SELECTOR, "#status.error"))[0]
    assert top.get_attribute("id") == "top-label", browser.find_element(By.ID, "status").text
    assert top.text in LABELS

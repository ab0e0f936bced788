"""The web playground in a real browser: headless Chromium driven by Selenium.

Uses Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
skips with the reason where they or selenium are missing. The model is a
barely trained 2x256 LSTM (40 steps, a second or two): its text is poor, but a
step costs what a real model's does, so a long generation takes long enough to
watch it stream in, and it has learnt that <eos> is rare. Screenshots go to ``$GENRNN_TEST_ARTIFACTS`` (default
``test-artifacts/`` at the repository root).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'genrnn[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")

import genrnn  # noqa: E402
from genrnn.serve import BackgroundServer, Limits, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SWEEP = ["0.3", "0.8", "1", "1.3", "1.8"]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("GENRNN_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40
    (root / "text.txt").write_text(text)
    run = genrnn.train(root / "text.txt", out=root / "run", max_steps=40, seq_len=32, batch_size=4,
                       sample_every=0, eval_every=1000, device="cpu")
    with BackgroundServer(create_app({"hamlet": run}, Limits())) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"needs Chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): "
                    "apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def js(driver, script: str):
    return driver.execute_script(script)


def wait_for(driver, script: str, timeout: float = 30.0, poll: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = js(driver, script)
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for: {script}")


def set_value(driver, element_id: str, value: str) -> None:
    element = driver.find_element("id", element_id)
    element.clear()
    element.send_keys(value)


def test_generate_streams_text_in(server, browser):
    browser.get(server.url + "/")
    wait_for(browser, "return document.getElementById('model').options.length === 1")
    assert browser.find_element("id", "model-picker").get_attribute("hidden") is not None  # one model: no picker
    set_value(browser, "prompt", "To be, or not")
    set_value(browser, "max-tokens", "1000")
    set_value(browser, "seed", "1")
    browser.find_element("id", "generate").click()

    # Poll the output while it is generating: it must grow at least twice before the end.
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        length, running = js(browser, "return [document.getElementById('output-text').textContent.length, "
                                      "!document.getElementById('stop').disabled]")
        if not running and length:
            break
        if running and length and (not seen or length > seen[-1]):
            seen.append(length)
        time.sleep(0.01)
    final = js(browser, "return document.getElementById('output-text').textContent.length")
    assert len(seen) >= 2 and seen[-1] < final, f"the text did not stream in: saw lengths {seen}, then {final}"
    assert final > 200
    assert js(browser, "return document.getElementById('output-prompt').textContent") == "To be, or not"
    assert "tokens" in browser.find_element("id", "stats").text
    assert browser.find_element("id", "error").get_attribute("hidden") is not None
    browser.save_screenshot(str(artifacts_dir() / "playground-generate.png"))


def test_temperature_sweep_shows_five_streaming_panels(server, browser):
    browser.get(server.url + "/")
    wait_for(browser, "return document.getElementById('model').options.length === 1")
    set_value(browser, "prompt", "Whether 'tis")
    set_value(browser, "max-tokens", "400")
    set_value(browser, "seed", "3")
    browser.find_element("id", "sweep").click()
    wait_for(browser, "return !document.getElementById('sweep-view').hidden")
    wait_for(browser, "return !document.getElementById('sweep').disabled && "
                      "[...document.querySelectorAll('.sweep-panel .generated')].every(e => e.textContent.length > 0)")
    panels = browser.find_elements("css selector", "#sweep-panels .sweep-panel")
    assert [p.get_attribute("data-temperature") for p in panels] == SWEEP
    texts = [js(browser, f"return document.querySelector('#sweep-text-{i} .generated').textContent")
             for i in range(5)]
    assert all(len(t) > 100 for t in texts)
    assert len(set(texts)) > 1  # different temperatures, different text
    assert browser.find_element("id", "error").get_attribute("hidden") is not None
    browser.save_screenshot(str(artifacts_dir() / "playground-sweep.png"))


def test_bad_settings_show_the_servers_error(server, browser):
    browser.get(server.url + "/")
    wait_for(browser, "return document.getElementById('model').options.length === 1")
    set_value(browser, "max-tokens", "999999")
    browser.find_element("id", "generate").click()
    message = wait_for(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    assert "max_tokens" in message

"""The web playground in a real browser: headless Chromium driven by Selenium.

Uses Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
skips with the reason where they or selenium are missing. The plain model is a
barely trained 2x256 LSTM (40 steps, a second or two): its text is poor, but a
step costs what a real model's does, so a long generation takes long enough to
watch it stream in, and it has learnt that <eos> is rare. The conditioned
models are 1x48 LSTMs trained here on data drawn here (as in
test_conditions.py): one sentence per label (a label, or a one-hot vector of
it, picks the sentence), and coloured squares captioned with their colour.
The sequence-to-sequence model reverses strings of letters (as in
test_seq2seq.py), a 1x64 LSTM with attention.
Screenshots go to ``$GENRNN_TEST_ARTIFACTS`` (default ``test-artifacts/`` at
the repository root).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'genrnn[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")

import genrnn  # noqa: E402
from genrnn.serve import BackgroundServer, Limits, create_app  # noqa: E402

from test_conditions import COLOURS, FRUIT, draw_squares, write_table  # noqa: E402
from test_seq2seq import strings, write_pairs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SWEEP = ["0.3", "0.8", "1", "1.3", "1.8"]
SMALL = dict(hidden_size=48, num_layers=1, embedding_size=16, batch_size=16, sample_every=0, eval_every=1000,
             condition_dim=16, device="cpu")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("GENRNN_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def hamlet(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    text = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 40
    (root / "text.txt").write_text(text)
    return genrnn.train(root / "text.txt", out=root / "run", max_steps=40, seq_len=32, batch_size=4,
                        sample_every=0, eval_every=1000, device="cpu")


@pytest.fixture(scope="module")
def server(hamlet):
    with BackgroundServer(create_app({"hamlet": hamlet}, Limits())) as srv:
        yield srv


@pytest.fixture(scope="module")
def fruit_runs(tmp_path_factory):
    """Two runs on one table: one from the label column, one from a one-hot vector of it."""
    import torch

    root = tmp_path_factory.mktemp("fruit")
    labels = np.random.default_rng(0).choice(list(FRUIT), 240)
    table = write_table(root / "fruit.csv", [(l, FRUIT[l]) for l in labels], ("label", "text"))
    np.save(root / "onehot.npy", np.eye(3, dtype=np.float32)[[list(FRUIT).index(l) for l in labels]])
    torch.manual_seed(0)
    fruit = genrnn.train(table, fields=["text"], condition_field="label", out=root / "fruit", max_steps=120,
                         lr=0.02, **SMALL)
    torch.manual_seed(0)
    onehot = genrnn.train(table, fields=["text"], condition_vectors=root / "onehot.npy", out=root / "onehot",
                          max_steps=120, lr=0.02, **SMALL)
    return fruit, onehot


@pytest.fixture(scope="module")
def labels_server(hamlet, fruit_runs):
    """A plain model (the default), a label-conditioned one and a vector-conditioned one."""
    fruit, onehot = fruit_runs
    with BackgroundServer(create_app({"hamlet": hamlet.run_dir, "fruit": fruit.run_dir, "onehot": onehot.run_dir},
                                     Limits())) as srv:
        yield srv


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """Squares of a size and place not in the training data, and a file that is no image."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("probes")
    paths = {}
    for name, rgb in COLOURS.items():
        pixels = np.full((64, 64, 3), 255, np.uint8)
        pixels[20:48, 10:38] = rgb
        Image.fromarray(pixels).save(folder / f"{name}.png")
        paths[name] = folder / f"{name}.png"
    (folder / "notes.txt").write_text("these are notes, not an image\n")
    paths["notes"] = folder / "notes.txt"
    return paths


@pytest.fixture(scope="module")
def captions_server(hamlet, fruit_runs, tmp_path_factory):
    """The plain model, the label model and a captioner of coloured squares (its
    CNN needs about 300 steps to tell red, green and blue apart: ~15 s)."""
    import torch

    table = draw_squares(tmp_path_factory.mktemp("squares"))
    folder = table.parent
    torch.manual_seed(0)
    squares = genrnn.train(table, fields=["caption"], image_field="image", out=folder / "run", max_steps=300,
                           lr=0.003, **SMALL)
    with BackgroundServer(create_app({"hamlet": hamlet.run_dir, "fruit": fruit_runs[0].run_dir,
                                      "squares": squares}, Limits())) as srv:
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


def hidden(driver, element_id: str) -> bool:
    return not driver.find_element("id", element_id).is_displayed()


def error_hidden(driver) -> bool:
    return driver.find_element("id", "error").get_attribute("hidden") is not None


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def open_model(driver, srv, model: str, models: int) -> None:
    driver.get(srv.url + "/")
    wait_for(driver, f"return document.getElementById('model').options.length === {models}")
    choose(driver, "model", model)


def greedy(driver) -> None:
    """The temperature slider to 0, as a keyboard user would."""
    from selenium.webdriver.common.keys import Keys

    driver.find_element("id", "temperature").send_keys(Keys.HOME)
    assert driver.find_element("id", "temperature-value").text == "0.00"


def record_requests(driver) -> None:
    """Keep the JSON body of every fetch() the page makes in window.sent."""
    js(driver, "window.sent = []; const f = window.fetch; window.fetch = (url, opts) => { "
               "if (opts && opts.body) window.sent.push([String(url), JSON.parse(opts.body)]); return f(url, opts); };")


def captions_done(driver, count: int):
    """The captions shown, once `count` are there and none is pending: [[state, text], ...]."""
    wait_for(driver, f"const items = [...document.querySelectorAll('#captions .caption-item')]; "
                     f"return items.length === {count} && items.every(i => i.dataset.state !== 'pending')")
    return js(driver, "return [...document.querySelectorAll('#captions .caption-item')]"
                      ".map(i => [i.dataset.state, i.querySelector('.caption-text').textContent])")


def api_captions(srv, *paths: Path, **options):
    """What POST /v1/captions answers for the same files (base64 JSON), as the page asks."""
    import httpx

    body = {"model": "squares", "image": [base64.b64encode(p.read_bytes()).decode() for p in paths],
            "max_tokens": 300, "temperature": 0, **options}
    return httpx.post(srv.url + "/v1/captions", json=body, timeout=60)


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


# -- conditioned models --------------------------------------------------------------------


def test_label_picker_picks_the_sentence(labels_server, browser):
    open_model(browser, labels_server, "hamlet", 3)
    assert not hidden(browser, "model-picker")
    assert hidden(browser, "condition-box") and hidden(browser, "tab-labels")  # a plain model: no picker
    choose(browser, "model", "fruit")
    assert not hidden(browser, "condition-box") and hidden(browser, "vector-box")
    assert browser.find_element("css selector", "label[for=condition]").text == "Label"
    options = js(browser, "return [...document.getElementById('condition').options].map(o => [o.value, o.text])")
    assert options == [["a", "a"], ["b", "b"], ["c", "c"], ["", "each label, side by side"]]
    greedy(browser)
    set_value(browser, "max-tokens", "60")
    record_requests(browser)
    for label, sentence in FRUIT.items():
        choose(browser, "condition", label)
        browser.find_element("id", "generate").click()
        wait_for(browser, "return document.getElementById('stop').disabled && "
                          "document.getElementById('stats').textContent.includes('end of text')")
        assert js(browser, "return document.getElementById('output-text').textContent") == sentence
    assert [body["condition"] for _, body in js(browser, "return window.sent")] == list(FRUIT)
    assert error_hidden(browser)
    browser.save_screenshot(str(artifacts_dir() / "playground-label.png"))
    choose(browser, "model", "hamlet")  # and away again
    assert hidden(browser, "condition-box")


def test_each_label_side_by_side_and_a_sweep_of_one_label(labels_server, browser):
    open_model(browser, labels_server, "fruit", 3)
    greedy(browser)
    set_value(browser, "max-tokens", "60")
    choose(browser, "condition", "")  # each label
    assert not browser.find_element("id", "sweep").is_enabled()  # the sweep takes one label
    browser.find_element("id", "generate").click()
    wait_for(browser, "return !document.getElementById('labels-view').hidden && "
                      "document.getElementById('label-stats').textContent.startsWith('3 labels in')")
    panels = browser.find_elements("css selector", "#label-panels .label-panel")
    assert [p.get_attribute("data-label") for p in panels] == list(FRUIT)
    texts = [js(browser, f"return document.querySelector('#label-text-{i} .generated').textContent") for i in range(3)]
    assert texts == list(FRUIT.values())
    assert error_hidden(browser)
    browser.save_screenshot(str(artifacts_dir() / "playground-each-label.png"))

    choose(browser, "condition", "b")
    set_value(browser, "seed", "3")
    record_requests(browser)
    browser.find_element("id", "sweep").click()
    wait_for(browser, "return !document.getElementById('sweep').disabled && "
                      "document.getElementById('sweep-stats').textContent.startsWith('five streams in')")
    sent = js(browser, "return window.sent")
    assert sorted((b["temperature"], b["condition"]) for _, b in sent) == [(t, "b") for t in [0.3, 0.8, 1, 1.3, 1.8]]
    assert all(js(browser, f"return document.querySelector('#sweep-text-{i} .generated').textContent")
               for i in range(5))
    assert error_hidden(browser)


def test_a_vector_condition_and_its_errors(labels_server, browser):
    open_model(browser, labels_server, "onehot", 3)
    assert hidden(browser, "condition-box") and not hidden(browser, "vector-box")
    assert browser.find_element("id", "vector-size").text == "3 numbers"
    greedy(browser)
    set_value(browser, "max-tokens", "60")
    set_value(browser, "condition-vector", "0, 0, 1")
    browser.find_element("id", "generate").click()
    wait_for(browser, "return document.getElementById('stats').textContent.includes('end of text')")
    assert js(browser, "return document.getElementById('output-text').textContent") == FRUIT["c"]
    set_value(browser, "condition-vector", "0 1")  # the server checks the width
    browser.find_element("id", "generate").click()
    message = wait_for(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    assert "width 3" in message
    set_value(browser, "condition-vector", "0, one, 0")  # the page checks the numbers
    browser.find_element("id", "generate").click()
    assert "must be numbers" in wait_for(browser, "const e = document.getElementById('error'); "
                                                  "return !e.hidden && e.textContent")


# -- a captioner ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_captioner_gets_a_drop_zone_and_captions_chosen_files(captions_server, browser, probes):
    from selenium.webdriver.common.keys import Keys

    open_model(browser, captions_server, "squares", 3)
    for gone in ("prompt-box", "generate", "sweep", "top-p", "top-k", "condition-box", "tab-single", "tab-sweep"):
        assert hidden(browser, gone), gone
    zone = browser.find_element("id", "drop-zone")
    assert zone.is_displayed() and zone.text == "Drop an image here, or click to choose one"
    assert zone.get_attribute("tabindex") == "0" and zone.get_attribute("role") == "button"
    assert not hidden(browser, "captions-view")
    assert browser.find_element("id", "temperature-value").text == "0.00"  # captions start greedy

    # The keyboard: Enter and Space on the focused zone open the file chooser.
    js(browser, "window.opened = 0; document.getElementById('image-file').click = () => { window.opened++; };")
    zone.send_keys(Keys.ENTER)
    zone.send_keys(Keys.SPACE)
    assert js(browser, "return document.activeElement.id") == "drop-zone"
    assert js(browser, "return window.opened") == 2
    zone.click()
    assert js(browser, "return window.opened") == 3
    js(browser, "delete document.getElementById('image-file').click;")

    chooser = browser.find_element("id", "image-file")
    chooser.send_keys(str(probes["red"]))
    shown = captions_done(browser, 1)
    api = api_captions(captions_server, probes["red"])
    assert api.status_code == 200, api.text
    assert shown == [["done", api.json()["captions"][0]["text"]]]
    assert shown[0][1] == "a red square"
    assert js(browser, "return document.querySelector('#caption-0 .caption-image').naturalWidth") == 64  # previewed

    chooser.send_keys(f"{probes['green']}\n{probes['blue']}")  # several files, several captions
    shown = captions_done(browser, 3)
    api = api_captions(captions_server, probes["green"], probes["blue"])
    assert [text for _, text in shown[1:]] == [c["text"] for c in api.json()["captions"]]
    assert [text for _, text in shown] == ["a red square", "a green square", "a blue square"]
    assert error_hidden(browser)
    browser.save_screenshot(str(artifacts_dir() / "playground-caption.png"))

    choose(browser, "model", "fruit")  # a text model again: the prompt is back, the drop zone gone
    assert hidden(browser, "image-box") and not hidden(browser, "prompt-box") and not hidden(browser, "condition-box")
    assert not hidden(browser, "single-view")
    assert browser.find_element("id", "temperature-value").text == "0.80"  # the text temperature back
    choose(browser, "model", "squares")
    assert len(browser.find_elements("css selector", "#captions .caption-item")) == 3


@pytest.mark.slow
def test_a_dropped_image_is_captioned(captions_server, browser, probes):
    open_model(browser, captions_server, "squares", 3)
    lit, taken = js(browser, """
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "blue.png", { type: "image/png" }));
        const zone = document.getElementById("drop-zone");
        zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true, cancelable: true }));
        const lit = zone.classList.contains("dragover");
        const drop = new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true });
        zone.dispatchEvent(drop);
        return [lit, drop.defaultPrevented];
    """.replace("arguments[0]", repr(base64.b64encode(probes["blue"].read_bytes()).decode())))
    assert lit and taken
    shown = captions_done(browser, 1)
    assert shown == [["done", api_captions(captions_server, probes["blue"]).json()["captions"][0]["text"]]]
    assert shown[0][1] == "a blue square"
    assert "blue.png" in browser.find_element("css selector", "#caption-0 .caption-file").text


@pytest.mark.slow
def test_a_file_that_is_no_image_shows_the_servers_error(captions_server, browser, probes):
    open_model(browser, captions_server, "squares", 3)
    browser.find_element("id", "image-file").send_keys(str(probes["notes"]))
    message = wait_for(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    api = api_captions(captions_server, probes["notes"])
    assert api.status_code == 400
    expected = api.json()["error"]["message"]
    assert "not an image" in expected
    assert message == f"notes.txt: {expected}"
    assert captions_done(browser, 1) == [["error", expected]]
    browser.save_screenshot(str(artifacts_dir() / "playground-caption-error.png"))
    # a good image after it clears the error
    browser.find_element("id", "image-file").send_keys(str(probes["green"]))
    assert captions_done(browser, 2)[1] == ["done", "a green square"]
    assert error_hidden(browser)


# -- surprise: the prompt scored, and the next token at five temperatures ----------------------


def api_scores(srv, prompt: str, **options):
    """What the API gives for the text, as the page asks: its logprobs and bits per character."""
    import httpx

    body = {"prompt": prompt, "echo": True, "logprobs": 5, "max_tokens": 0, **options}
    lp = httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    return lp, -sum(lp["token_logprobs"]) / np.log(2) / len(prompt)


def surprise_done(driver) -> str:
    return wait_for(driver, "const s = document.getElementById('surprise-stats').textContent; "
                            "return !document.getElementById('surprise').disabled && s.includes('bits/char') && s")


def shown_surprise(driver):
    """The tokens the page shows: [[text, bits, tooltip, background]...]."""
    return js(driver, "return [...document.querySelectorAll('#surprise-text .tok')].map(t => "
                      "[t.textContent, Number(t.dataset.bits), t.title, t.style.backgroundColor])")


def test_surprise_colours_each_token_and_gives_bits_per_char(server, browser):
    browser.get(server.url + "/")
    wait_for(browser, "return document.getElementById('model').options.length === 1")
    text = "To be, or not to be, that is the zebra:\nWhether"
    set_value(browser, "prompt", text)
    record_requests(browser)
    browser.find_element("id", "surprise").click()
    stats = surprise_done(browser)
    assert not hidden(browser, "surprise-view") and hidden(browser, "single-view")
    assert error_hidden(browser)
    sent = sorted((body for _, body in js(browser, "return window.sent")), key=lambda b: b["max_tokens"])
    assert [(b["echo"], b["logprobs"], b["max_tokens"]) for b in sent[:1]] == [(True, 5, 0)]
    assert (sent[1].get("echo", False), sent[1]["logprobs"], sent[1]["max_tokens"]) == (False, 20, 1)

    lp, per_char = api_scores(server, text)
    tokens = shown_surprise(browser)
    assert [t[0] for t in tokens] == lp["tokens"] and "".join(t[0] for t in tokens) == text
    assert js(browser, "return document.getElementById('surprise-text').textContent") == text
    bits = [-v / np.log(2) for v in lp["token_logprobs"]]
    assert [t[1] for t in tokens] == pytest.approx(bits, abs=1e-3)
    assert f"{per_char:.3f} bits/char" in stats
    assert float(js(browser, "return document.getElementById('surprise-stats').dataset.bitsPerChar")) == \
        pytest.approx(per_char, rel=1e-9)
    # a tooltip with the five alternatives, and colours from green to red
    title = tokens[0][2]
    assert "the model expected:" in title and len(title.splitlines()) == 2 + 5
    zebra = text.index("z")  # a character the model never saw: <unk>, the most surprising
    assert max(t[1] for t in tokens) == tokens[zebra][1] > min(t[1] for t in tokens) + 2
    assert len({t[3] for t in tokens}) > 3 and all(t[3].startswith("rgba(") for t in tokens)

    # the next token at five temperatures, 20 bars each, the entropy growing with the temperature
    panels = browser.find_elements("css selector", "#next-panels .next-panel")
    assert [p.get_attribute("data-temperature") for p in panels] == SWEEP
    entropies = [float(p.get_attribute("data-entropy")) for p in panels]
    assert entropies == sorted(entropies) and entropies[0] < entropies[-1]
    assert all(len(p.find_elements("css selector", ".bar-row")) == 20 for p in panels)
    assert "H = " in panels[0].text and "approximation" in browser.find_element("id", "next-hint").text
    browser.save_screenshot(str(artifacts_dir() / "playground-surprise.png"))

    # the generation tabs still work after it
    browser.find_element("id", "tab-single").click()
    assert hidden(browser, "surprise-view") and not hidden(browser, "single-view")


def test_surprise_with_a_label(labels_server, browser):
    open_model(browser, labels_server, "fruit", 3)
    choose(browser, "condition", "")  # each label: the text is scored with one
    assert not browser.find_element("id", "surprise").is_enabled()
    text = FRUIT["b"]
    set_value(browser, "prompt", text)
    results = {}
    for label in FRUIT:
        choose(browser, "condition", label)
        browser.find_element("id", "surprise").click()
        stats = surprise_done(browser)
        _, per_char = api_scores(labels_server, text, model="fruit", condition=label)
        assert f"{per_char:.3f} bits/char" in stats
        results[label] = per_char
        js(browser, "document.getElementById('surprise-stats').textContent = ''")
    assert min(results, key=results.get) == "b"  # its own label explains the sentence best
    assert error_hidden(browser)


# -- a sequence-to-sequence model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def reverser(tmp_path_factory):
    """Reverses strings of the letters a-h (3 to 8 of them; sources up to 16 tokens)."""
    import torch

    folder = tmp_path_factory.mktemp("reverse")
    train = strings(2000, 0)
    table = write_pairs(folder / "rev.csv", train, [s[::-1] for s in train])
    torch.manual_seed(0)
    return genrnn.train(str(table), task="seq2seq", source_field="src", target_field="tgt", attention=True,
                        out=folder / "run", max_steps=260, hidden_size=64, num_layers=1, embedding_size=16,
                        batch_size=32, seq_len=16, lr=2e-2, eval_every=130, sample_every=0, device="cpu")


@pytest.fixture(scope="module")
def seq2seq_server(hamlet, reverser):
    """The plain model (the default) and the reverser."""
    with BackgroundServer(create_app({"hamlet": hamlet, "reverse": reverser}, Limits())) as srv:
        yield srv


def finished(driver, timeout: float = 60.0) -> str:
    """The stats line once the page has finished (it says how many tokens)."""
    return wait_for(driver, "const s = document.getElementById('stats').textContent; "
                            "return document.getElementById('stop').disabled && s.includes(' tokens in ') && s",
                    timeout)


def output_text(driver) -> str:
    return js(driver, "return document.getElementById('output-text').textContent")


def test_seq2seq_translates_a_source_by_beam_search_or_sampling(seq2seq_server, reverser, browser):
    open_model(browser, seq2seq_server, "reverse", 2)
    assert "translates sources of up to 16 tokens" in browser.find_element("id", "status").text
    assert browser.find_element("id", "prompt-label").text == "Source sentence"
    assert browser.find_element("id", "generate").text == "Translate"
    for gone in ("condition-box", "vector-box", "image-box", "sweep", "tab-sweep", "temperature-box", "top-p-box",
                 "top-k-box", "seed-box"):
        assert hidden(browser, gone), gone
    assert not hidden(browser, "decoding-box") and not hidden(browser, "beam")
    assert browser.find_element("id", "decoding-beam").is_selected()
    assert browser.find_element("id", "beam").get_attribute("value") == "5"

    source = "abcdefgh"
    set_value(browser, "beam", "3")
    set_value(browser, "prompt", source)
    record_requests(browser)
    browser.find_element("id", "generate").click()
    assert "end of text" in finished(browser)
    expected = reverser.translate([source], beam=3)[0]
    assert expected == source[::-1]  # the model has learnt it
    assert output_text(browser) == expected
    assert js(browser, "return document.getElementById('output-prompt').textContent") == ""
    (url, body), = js(browser, "return window.sent")
    assert url == "/v1/completions"
    assert body["prompt"] == source and body["beam"] == 3 and body["model"] == "reverse"
    assert not {"condition", "temperature", "top_p", "n", "stop", "logprobs"} & set(body)
    assert error_hidden(browser)
    browser.save_screenshot(str(artifacts_dir() / "playground-seq2seq.png"))

    # Several sources, one per line (a blank line keeps its place): one output line each.
    many = ["hgfe", "abc", "", "cabbage"]
    set_value(browser, "prompt", "\n".join(many))
    browser.find_element("id", "generate").click()
    assert finished(browser).startswith("3 sources, ")
    want = reverser.translate([m for m in many if m], beam=3)
    assert output_text(browser).split("\n") == [want[0], want[1], "", want[2]]
    assert js(browser, "return window.sent")[-1][1]["prompt"] == [m for m in many if m]

    # Sampling: the temperature (and seed) instead of the beam.
    browser.find_element("id", "decoding-sample").click()
    assert hidden(browser, "beam") and not hidden(browser, "temperature-box") and not hidden(browser, "seed-box")
    assert browser.find_element("id", "temperature-value").text == "0.80"
    set_value(browser, "prompt", "gabe")
    set_value(browser, "seed", "7")
    browser.find_element("id", "generate").click()
    finished(browser)
    body = js(browser, "return window.sent")[-1][1]
    assert "beam" not in body and "condition" not in body
    assert body["temperature"] == 0.8 and body["seed"] == 7 and body["prompt"] == "gabe"
    assert set(output_text(browser)) <= set("abcdefgh") and output_text(browser)
    assert error_hidden(browser)

    # Back to the language model: its prompt box, sweep and sampling controls are back.
    choose(browser, "model", "hamlet")
    assert browser.find_element("id", "prompt-label").text == "Prompt"
    assert browser.find_element("id", "generate").text == "Generate"
    assert hidden(browser, "decoding-box") and not hidden(browser, "sweep") and not hidden(browser, "temperature-box")
    choose(browser, "model", "reverse")  # and the source comes back with the seq2seq model
    assert browser.find_element("id", "prompt").get_attribute("value") == "gabe"
    assert browser.find_element("id", "decoding-sample").is_selected() and not hidden(browser, "seed-box")


def test_seq2seq_errors_show_the_servers_message(seq2seq_server, browser):
    import httpx

    open_model(browser, seq2seq_server, "reverse", 2)
    long = "abcdefgh" * 3  # 25 tokens with its end, over the 16 of the model
    set_value(browser, "prompt", long)
    browser.find_element("id", "generate").click()
    message = wait_for(browser, "const e = document.getElementById('error'); return !e.hidden && e.textContent")
    api = httpx.post(seq2seq_server.url + "/v1/completions", json={"model": "reverse", "prompt": long, "beam": 5},
                     timeout=60)
    assert api.status_code == 400
    assert message == api.json()["error"]["message"]
    assert "limit of 16" in message
    browser.save_screenshot(str(artifacts_dir() / "playground-seq2seq-error.png"))

    set_value(browser, "beam", "")  # the page checks the beam size
    browser.find_element("id", "generate").click()
    assert "beam size" in wait_for(browser, "const e = document.getElementById('error'); "
                                            "return !e.hidden && e.textContent")
    set_value(browser, "beam", "65")  # and the server its range
    set_value(browser, "prompt", "abc")
    browser.find_element("id", "generate").click()
    assert "beam" in wait_for(browser, "const e = document.getElementById('error'); "
                                       "return !e.hidden && e.textContent && e.textContent.includes('64') "
                                       "&& e.textContent")
    set_value(browser, "beam", "2")  # a good request clears the error
    browser.find_element("id", "generate").click()
    finished(browser)
    assert error_hidden(browser) and output_text(browser) == "cba"

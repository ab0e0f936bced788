"""``genrnn inspect``: the page's figures are the model's own, the attention
of a reversal model points where it should, and the page needs no network."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genrnn
from genrnn.cli import main
from genrnn.inspection import FEATURES, _correlations, _features, analyse, analyse_translations, render
from genrnn.state import start
from genrnn.tokenizers import EOS_ID

from test_conditions import fruit_csv, fruit_run  # noqa: F401  (fixtures)
from test_seq2seq import reversal  # noqa: F401  (fixture)

TEXT = 'He said "stop (now)" and left.\nShe said "go [there]".\n'


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    (root / "t.txt").write_text(TEXT * 60, encoding="utf-8")
    return genrnn.train(str(root / "t.txt"), out=root / "run", max_steps=40, hidden_size=24, num_layers=2,
                        embedding_size=8, seq_len=32, batch_size=8, sample_every=0, eval_every=1000)


def page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


def test_surprise_is_the_models_own(lm):
    data = analyse(lm, TEXT, length=20)
    assert "".join(data["tokens"]) == TEXT
    ids = [EOS_ID] + lm.tokenizer.encode(TEXT)
    with torch.no_grad():
        logits, _, _ = lm.model(torch.tensor([ids[:-1]]), None, start(lm.model, None))
    want = -F.log_softmax(logits[0], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0] / math.log(2)
    assert data["bits"] == pytest.approx(want.tolist(), abs=2e-3)
    assert data["bpc"] == pytest.approx(float(want.sum()) / len(TEXT), abs=1e-3)
    for bits, top in zip(data["bits"], data["top"]):
        assert len(top) == 5 and top[0][1] >= 2 ** -bits - 1e-3  # the likeliest is at least the actual token
    rows = data["temperature"]["rows"]
    assert [r["t"] for r in rows] == [0.3, 0.8, 1.0, 1.3, 1.8]
    assert [r["entropy_bits"] for r in rows] == sorted(r["entropy_bits"] for r in rows)  # hotter is flatter
    assert set(data["continuations"]) >= {"greedy", "prompt_end"}


def test_neurons_cover_every_unit_and_rank_by_features(lm):
    data = analyse(lm, TEXT, length=5)
    groups = data["neurons"]["groups"]
    assert sorted(groups) == ["c layer 1", "c layer 2", "h layer 1", "h layer 2"]
    import base64

    for g in groups.values():
        assert g["units"] == 24 and len(base64.b64decode(g["data"])) == 24 * len(data["tokens"])
    assert set(data["neurons"]["ranked"]) == set(FEATURES)
    feats = _features(list('a "b" (c)\nd'))
    assert feats[:, 0].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # inside quotes (the closing one toggles)
    assert feats[:, 1].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0]  # inside brackets
    assert feats[:, 4].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # after a newline
    acts = np.stack([feats[:, 0] * 2 - 1, np.arange(11.0)], 1)
    r = _correlations(acts, feats)
    assert r[0, 0] == pytest.approx(1.0) and abs(r[0, 1]) < 1


def test_the_page_is_self_contained_and_carries_the_data(lm, tmp_path, capsys):
    (tmp_path / "in.txt").write_text(TEXT, encoding="utf-8")
    out = tmp_path / "page.html"
    assert main(["inspect", str(lm.run_dir), "--text", str(tmp_path / "in.txt"), "--out", str(out),
                 "--length", "10"]) == 0
    page = out.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert page_data(page)["tokens"] == analyse(lm, TEXT, length=10)["tokens"]
    assert main(["inspect", str(lm.run_dir), "--prompt", "", "--out", str(out)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["inspect", str(lm.run_dir), "--text", str(tmp_path / "nope.txt")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_reversal_model_attends_to_the_mirrored_position(reversal):  # noqa: F811
    run, held_out, _ = reversal
    data = analyse_translations(run, held_out[:10])
    hits = total = 0
    for t in data["translations"]:
        matrix = np.array(t["attention"])
        assert matrix.shape == (len(t["output"]), len(t["source"]))
        assert matrix.sum(1) == pytest.approx(np.ones(len(matrix)), abs=1e-2)
        # reversing: output j looks at the source a fixed distance from its end (an anti-diagonal;
        # measured, the model reads the position just after the character it writes)
        diagonal = matrix.argmax(1) + np.arange(len(matrix))
        hits += int((diagonal == np.bincount(diagonal).argmax()).sum())
        total += len(matrix)
    assert hits / total > 0.8, (hits, total)
    assert "Attention" in render(data)


def test_a_label_run_is_scored_under_each_label(fruit_run):  # noqa: F811
    data = analyse(fruit_run, "apples are red", length=5)
    c = data["condition"]
    assert c["labels"] == fruit_run.condition.label_names()
    assert len(c["best_label"]) == len(data["tokens"]) and len(c["total_bits"]) == len(c["labels"])
    scores = fruit_run.score(["apples are red"] * len(c["labels"]), condition=fruit_run.condition.label_names())
    assert int(np.argmin(c["total_bits"])) == int(np.argmax(scores))


def test_a_planted_quote_unit_ranks_first():
    """A unit that is +1 inside quotes and -1 outside, among noise, is the first for "inside quotes"."""
    from genrnn.inspection import _neurons

    pieces = list('plain "quoted text" plain again "more" end\n' * 5)
    inside = _features(pieces)[:, 0]
    rng = np.random.default_rng(0)
    acts = []
    for q in inside:
        h = rng.normal(0, 0.3, (2, 16)).astype(np.float32)
        h[1, 7] = 1.0 if q else -1.0  # layer 2, unit 7
        acts.append([h, rng.normal(0, 0.3, (2, 16)).astype(np.float32)])
    ranked = _neurons(acts, pieces, None)["ranked"]["inside quotes"]
    assert ranked[0]["group"] == "h layer 2" and ranked[0]["unit"] == 7 and ranked[0]["r"] == pytest.approx(1.0)


def test_the_temperature_panel_is_softmax_of_logits_over_t(lm):
    data = analyse(lm, TEXT, at=10, length=5)
    ids = [EOS_ID] + lm.tokenizer.encode(TEXT)
    with torch.no_grad():
        logits, _, _ = lm.model(torch.tensor([ids[:12]]), None, start(lm.model, None))
    last = logits[0, 11].clone()
    last[0] = float("-inf")  # <pad> is never drawn
    for row in data["temperature"]["rows"]:
        p = torch.softmax(last / row["t"], -1)
        for token, prob in row["top"]:
            assert prob == pytest.approx(float(p[lm.tokenizer.encode(token)[0]]), abs=1e-4)
        entropy = float(-(p[p > 0] * p[p > 0].log2()).sum())
        assert row["entropy_bits"] == pytest.approx(entropy, abs=1e-3)


def test_unknown_characters_are_counted_and_said(lm, tmp_path, capsys):
    out = tmp_path / "u.html"
    assert main(["inspect", str(lm.run_dir), "--prompt", "He said \u00e9\u00e9", "--out", str(out),
                 "--length", "5"]) == 0
    assert "2 tokens of the text are not in the model's vocabulary" in capsys.readouterr().err
    assert page_data(out.read_text(encoding="utf-8"))["unknown"] == 2


def test_the_page_renders_in_a_browser(lm, tmp_path):
    """Headless Chromium: no script error, one span per token carrying the model's own
    surprise, and a unit picked from the ranking recolours the text."""
    import os
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (test extra)")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    chromedriver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(chromedriver)):
        pytest.skip("needs Chromium and chromedriver: apt-get install chromium chromium-driver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from test_playground import artifacts_dir

    out = tmp_path / "page.html"
    assert main(["inspect", str(lm.run_dir), "--prompt", TEXT, "--out", str(out), "--length", "20"]) == 0
    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(out.as_uri())
        spans = driver.execute_script("return document.querySelectorAll('.text')[0].querySelectorAll('span').length")
        assert spans == len(lm.tokenizer.encode(TEXT))
        shown = driver.execute_script("return JSON.parse(document.getElementById('data').textContent).bits")
        assert shown == analyse(lm, TEXT, length=20)["bits"]
        before = driver.execute_script("return document.getElementById('neuron').innerHTML")
        driver.execute_script("const s = document.getElementById('ranked'); s.selectedIndex = s.options.length - 1;"
                              "s.onchange();")
        assert driver.execute_script("return document.getElementById('neuron').innerHTML") != before
        assert "Neurons" in driver.page_source and "Temperature" in driver.page_source
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        driver.save_screenshot(str(artifacts_dir() / "inspect.png"))
    finally:
        driver.quit()

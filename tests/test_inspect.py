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

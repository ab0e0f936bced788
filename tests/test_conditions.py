"""Conditioned generation (one-to-many): a label, a vector or an image sets the
initial state, and the text unfolds from it.

All data is made here: a table of labelled sentences that a label alone
separates, vectors that are one-hot labels, and coloured squares drawn with
Pillow whose captions name the colour.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import genrnn
from genrnn.conditions import ConditionSpec
from genrnn.config import ModelConfig
from genrnn.errors import GenrnnError
from genrnn.models import build_model
from genrnn.state import cat_rows, select_rows, start

from test_cli import cli, json_lines, ok

FRUIT = {"a": "apples are red", "b": "bananas are yellow", "c": "cherries are dark"}
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}
SMALL = dict(hidden_size=48, num_layers=1, embedding_size=16, batch_size=16, sample_every=0, eval_every=100,
             condition_dim=16)


def write_table(path: Path, rows, header=("label", "text")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def fruit_csv(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.choice(list(FRUIT), 240)
    return write_table(tmp_path_factory.mktemp("fruit") / "fruit.csv", [(l, FRUIT[l]) for l in labels])


@pytest.fixture(scope="module")
def fruit_run(fruit_csv, tmp_path_factory) -> genrnn.api.TrainedModel:
    torch.manual_seed(0)
    return genrnn.train(fruit_csv, fields=["text"], condition_field="label", out=tmp_path_factory.mktemp("r") / "run",
                        max_steps=120, lr=0.02, **SMALL)


def draw_squares(folder: Path, n: int = 90) -> Path:
    """Coloured squares of random sizes and places on white, captioned "a
    COLOUR square"; returns the table (image paths relative to it)."""
    from PIL import Image

    (folder / "img").mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        name = list(COLOURS)[i % 3]
        side = int(rng.integers(16, 40))
        x, y = rng.integers(0, 64 - side, 2)
        pixels = np.full((64, 64, 3), 255, np.uint8)
        pixels[y : y + side, x : x + side] = COLOURS[name]
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        rows.append((f"img/{i}.png", f"a {name} square"))
    return write_table(folder / "captions.csv", rows, header=("image", "caption"))


@pytest.fixture(scope="module")
def squares(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("squares")
    draw_squares(folder)
    return folder


# -- the model ---------------------------------------------------------------------------


def tiny(condition: str, size: int, cell: str = "lstm", every: bool = True, embedding: int = 8, vocab: int = 11):
    torch.manual_seed(0)
    return build_model(ModelConfig(cell=cell, vocab_size=vocab, embedding_size=embedding, hidden_size=12,
                                   num_layers=2, condition=condition, condition_size=size, condition_dim=6,
                                   condition_every_step=every)).eval()


def some_condition(kind: str, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if kind == "label":
        return torch.randint(0, 4, (batch,), generator=g)
    if kind == "vector":
        return torch.randn(batch, 5, generator=g)
    return torch.randint(0, 256, (batch, 3, 16, 16), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("kind,size", [("label", 4), ("vector", 5), ("image", 16)])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("every", [True, False])
def test_start_state_shapes_and_rows(kind, size, cell, every):
    model = tiny(kind, size, cell, every)
    cond = some_condition(kind, 3)
    with torch.no_grad():
        state = start(model, cond)
        rnn_state = state[0] if every else state
        h = rnn_state[0] if cell == "lstm" else rnn_state
        assert h.shape == (2, 3, 12)
        if every:
            assert state[1].shape == (1, 3, 6)  # the embedding rides in the state, batch in dim 1
        # a row's initial state depends on its own condition only
        alone = start(model, cond[1:2])
        torch.testing.assert_close(select_rows(state, [1]), alone)
        # and different conditions give different states
        assert not torch.allclose(h[:, 0], h[:, 1])


@pytest.mark.parametrize("kind,size", [("label", 4), ("vector", 5), ("image", 16)])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("embedding", [8, 0])
def test_fast_step_equals_the_module_with_a_condition(kind, size, cell, embedding):
    """step() computes the cell itself, the fed condition included; the fused
    module (under autograd) must agree, and so must a forward over the same tokens."""
    model = tiny(kind, size, cell, True, embedding)
    cond = some_condition(kind, 4)
    idx = torch.randint(1, 11, (4, 6), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full, _, _ = model(idx, None, start(model, cond))
    with torch.inference_mode():
        state = start(model, cond)
        fast = []
        for t in range(6):
            logits, state = model.step(idx[:, t], state)
            fast.append(logits)
    with torch.enable_grad():
        state = start(model, cond)
        slow = []
        for t in range(6):
            logits, state = model.step(idx[:, t], state)
            slow.append(logits.detach())
    torch.testing.assert_close(torch.stack(fast, 1), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.stack(slow, 1), full, rtol=1e-4, atol=1e-5)


def test_prefill_pads_and_masks_with_conditions():
    """Prompts of different lengths in one padded batch end in the state each
    would reach alone; rows joined later keep their own conditions."""
    model = tiny("label", 4)
    cond = torch.tensor([0, 3, 1])
    prompts = [[2, 3, 4, 5], [2, 6], [2, 7, 8]]
    idx = torch.zeros(3, 4, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, : len(p)] = torch.tensor(p)
    with torch.no_grad():
        logits, state = model.prefill(idx, torch.tensor([4, 2, 3]), start(model, cond))
        for i, p in enumerate(prompts):
            alone, alone_state = model.prefill(torch.tensor([p]), torch.tensor([len(p)]), start(model, cond[i : i + 1]))
            torch.testing.assert_close(logits[i : i + 1], alone, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(select_rows(state, [i]), alone_state, rtol=1e-5, atol=1e-6)
        joined = cat_rows(select_rows(state, [2]), select_rows(state, [0]))
        step_joined, _ = model.step(torch.tensor([4, 4]), joined)
        step_all, _ = model.step(torch.tensor([4, 4, 4]), state)
        torch.testing.assert_close(step_joined, step_all[[2, 0]], rtol=1e-5, atol=1e-6)


def test_start_refuses_a_missing_or_unwanted_condition():
    with pytest.raises(GenrnnError, match="generates from a label"):
        start(tiny("label", 4), None)
    plain = build_model(ModelConfig(vocab_size=9, hidden_size=8, num_layers=1, embedding_size=4))
    assert start(plain, None) is None
    with pytest.raises(GenrnnError, match="takes no condition"):
        start(plain, torch.tensor([1]))
    with pytest.raises(GenrnnError, match="cannot be conditioned"):
        ModelConfig(type="markov", vocab_size=9, condition="label", condition_size=3).validate()


def test_unconditioned_models_keep_their_weights():
    """Adding conditions must not change what an unconditioned model draws at
    initialisation (the same seed, the same weights as before)."""
    torch.manual_seed(0)
    a = build_model(ModelConfig(vocab_size=9, hidden_size=8, num_layers=1, embedding_size=4))
    assert a.encoder is None and a.bridge is None and a.feed == 0
    names = [n for n, _ in a.named_parameters()]
    assert not any(n.startswith(("encoder", "bridge")) for n in names)


# -- the condition spec ---------------------------------------------------------------------


def test_label_spec_natural_order_names_and_errors():
    spec = ConditionSpec.for_labels(["10", "2", "1", "2"], None)
    assert spec.labels == ("1", "2", "10") and spec.size == 3
    named = ConditionSpec.for_labels(["1", "2", "3", "4"], ["World", "Sports", "Business", "Sci/Tech"])
    assert named.encode(["Sports", "4", "world"]).tolist() == [1, 3, 0]
    with pytest.raises(GenrnnError, match=r"unknown label 'Weather'; the labels are: World \(1\), Sports \(2\)"):
        named.encode(["Weather"])
    with pytest.raises(GenrnnError, match="3 names for the 4 labels"):
        ConditionSpec.for_labels(["1", "2", "3", "4"], ["a", "b", "c"])
    assert ConditionSpec.from_dict(named.to_dict()) == named


def test_vector_spec_checks_width_and_values():
    spec = ConditionSpec("vector", size=3)
    assert spec.encode([[1, 2, 3]]).shape == (1, 3)
    with pytest.raises(GenrnnError, match="width 3"):
        spec.encode([[1, 2]])
    with pytest.raises(GenrnnError, match="finite"):
        spec.encode([[1, float("nan"), 3]])


# -- training and generating -------------------------------------------------------------------


def test_a_label_sets_the_text(fruit_run):
    """A trivially separable task: each label has one sentence."""
    assert fruit_run.condition.labels == ("a", "b", "c")
    for label, sentence in FRUIT.items():
        assert fruit_run.generate(condition=label, temperature=0) == sentence
    # many labels in one batch, samples too
    texts = fruit_run.generate(condition=["c", "a", "b"], temperature=0)
    assert texts == [FRUIT["c"], FRUIT["a"], FRUIT["b"]]
    sampled = fruit_run.generate(condition=["b"] * 8, temperature=0.5, seed=1)
    assert sum(t == FRUIT["b"] for t in sampled) >= 6
    # the model as a classifier: log p(text | label) is highest for the right label
    for label, sentence in FRUIT.items():
        scores = fruit_run.score([sentence] * 3, condition=["a", "b", "c"])
        assert ["a", "b", "c"][int(np.argmax(scores))] == label


def test_conditioned_run_round_trips_and_evaluates(fruit_run, capsys):
    again = genrnn.load(fruit_run.run_dir)
    assert again.condition == fruit_run.condition
    a = again.score(list(FRUIT.values()), condition=list(FRUIT))
    b = fruit_run.score(list(FRUIT.values()), condition=list(FRUIT))
    assert a == b  # identical outputs after the round trip
    doc = json.loads((Path(fruit_run.run_dir) / "config.json").read_text())
    assert doc["condition"]["labels"] == ["a", "b", "c"]  # the label vocabulary is saved in the run
    m = again.evaluate()
    assert m["loss"] < 0.5 and m["tokens"] > 0
    out = ok(capsys, "eval", fruit_run.run_dir, "--json")
    assert json.loads(out)["loss"] == pytest.approx(m["loss"])


def test_sample_cli_with_labels(fruit_run, capsys):
    out = ok(capsys, "sample", fruit_run.run_dir, "--condition", "b", "--condition", "a", "--greedy", "--json")
    rows = json_lines(out)
    assert [(r["condition"], r["text"], r["finish_reason"]) for r in rows] == [
        ("b", FRUIT["b"], "eos"), ("a", FRUIT["a"], "eos")]
    out = ok(capsys, "sample", fruit_run.run_dir, "--greedy")  # no label: one sample per label
    assert all(s in out for s in FRUIT.values())


def test_condition_errors_are_one_line(fruit_run, fruit_csv, tmp_path, capsys):
    def fails(*argv, match):
        rc, out, err = cli(capsys, *argv)
        assert rc == 2, err
        assert "Traceback" not in err and err.count("\n") == 1
        assert match in err, err

    fails("sample", fruit_run.run_dir, "--condition", "kiwi", match="unknown label 'kiwi'; the labels are: a, b, c")
    fails("sample", fruit_run.run_dir, "--condition-vector", str(tmp_path / "none.npy"), match="no vector file")
    fails("caption", fruit_run.run_dir, str(fruit_csv), match="is not an image captioner")
    fails("train", fruit_csv, "--field", "text", "--condition-field", "colour", "--max-steps", "1",
          "--out", tmp_path / "x", match="has no column 'colour'")
    plain = tmp_path / "plain.txt"
    plain.write_text("one line\nanother line\n" * 20)
    fails("train", plain, "--condition-field", "label", "--max-steps", "1", "--out", tmp_path / "y",
          match="needs a CSV, TSV or JSONL table")
    fails("train", fruit_csv, "--field", "text", "--condition-field", "label", "--layout", "stream",
          "--max-steps", "1", "--out", tmp_path / "z", match="--layout lines")
    rows = list(csv.reader(open(fruit_csv)))[1:]
    write_table(tmp_path / "gap.csv", rows[:5] + [["", "no label here"]] + rows[5:])
    fails("train", tmp_path / "gap.csv", "--field", "text", "--condition-field", "label", "--max-steps", "1",
          "--out", tmp_path / "w", match="line 7 has an empty 'label'")
    np.save(tmp_path / "short.npy", np.zeros((3, 4), np.float32))
    fails("train", fruit_csv, "--field", "text", "--condition-vectors", tmp_path / "short.npy", "--max-steps", "1",
          "--out", tmp_path / "v", match="condition vectors have 3 rows but the corpus has 240 records")
    with pytest.raises(GenrnnError, match="takes no condition"):
        plain_run = genrnn.train(plain, out=tmp_path / "p", max_steps=2, **SMALL)
        plain_run.generate(condition="a")
    with pytest.raises(GenrnnError, match="generates from a label"):
        fruit_run.generate("")


def test_vectors_condition_a_run(fruit_csv, tmp_path, capsys):
    """--condition-vectors: one row per record; here a one-hot of the label."""
    labels = [r[0] for r in list(csv.reader(open(fruit_csv)))[1:]]
    vectors = np.eye(3, dtype=np.float32)[[list(FRUIT).index(l) for l in labels]]
    np.save(tmp_path / "v.npy", vectors)
    torch.manual_seed(0)
    ok(capsys, "train", fruit_csv, "--field", "text", "--condition-vectors", tmp_path / "v.npy", "--max-steps", "120",
       "--lr", "0.02", "--hidden-size", "48", "--layers", "1", "--embedding-size", "16", "--batch-size", "16",
       "--condition-dim", "16", "--sample-every", "0", "--out", tmp_path / "run", "--no-progress", "-q")
    run = genrnn.load(tmp_path / "run")
    assert run.condition.kind == "vector" and run.condition.size == 3
    assert run.generate(condition=[[0, 1, 0], [0, 0, 1]], temperature=0) == [FRUIT["b"], FRUIT["c"]]
    np.save(tmp_path / "ask.npy", np.eye(3, dtype=np.float32)[[2, 0]])
    rows = json_lines(ok(capsys, "sample", tmp_path / "run", "--condition-vector", tmp_path / "ask.npy", "--greedy",
                         "--json"))
    assert [r["text"] for r in rows] == [FRUIT["c"], FRUIT["a"]]
    np.save(tmp_path / "wide.npy", np.zeros((1, 5), np.float32))
    rc, _, err = cli(capsys, "sample", tmp_path / "run", "--condition-vector", tmp_path / "wide.npy")
    assert rc == 2 and "width 3" in err


@pytest.mark.slow
def test_a_captioner_names_the_colour(squares, tmp_path, capsys):
    """A CNN encoder trained with the decoder reads the square's colour."""
    torch.manual_seed(0)
    ok(capsys, "train", squares / "captions.csv", "--image-field", "image", "--field", "caption", "--max-steps", "300",
       "--lr", "0.003", "--hidden-size", "48", "--layers", "1", "--embedding-size", "16", "--batch-size", "16",
       "--condition-dim", "16", "--val-fraction", "0.1", "--sample-every", "0", "--out", tmp_path / "cap",
       "--no-progress", "-q")
    run = genrnn.load(tmp_path / "cap")
    assert run.condition.kind == "image" and run.condition.size == 64
    from PIL import Image

    probes = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        pixels = np.full((64, 64, 3), 255, np.uint8)
        pixels[20:48, 10:38] = rgb  # a new size and place
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        probes.append(tmp_path / f"{name}.png")
    assert run.caption(probes) == [f"a {name} square" for name in COLOURS]
    assert run.caption(probes, beam=3) == [f"a {name} square" for name in COLOURS]
    out = ok(capsys, "caption", tmp_path / "cap", *probes, "--json", "--beam", "2")
    assert [r["caption"] for r in json_lines(out)] == [f"a {name} square" for name in COLOURS]
    # the round trip gives identical captions from the bytes, and a bad image is one clear line
    assert run.caption([p.read_bytes() for p in probes]) == [f"a {name} square" for name in COLOURS]
    (tmp_path / "bad.png").write_text("not an image")
    rc, _, err = cli(capsys, "caption", tmp_path / "cap", tmp_path / "bad.png")
    assert rc == 2 and "bad.png" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "caption", tmp_path / "cap", tmp_path / "missing.png")
    assert rc == 2 and "missing.png" in err
    rc, _, err = cli(capsys, "sample", tmp_path / "cap", "--condition", "red")
    assert rc == 2 and "Traceback" not in err


def test_resume_of_a_conditioned_run_is_exact(fruit_csv, tmp_path):
    """Ctrl-C at step 13, resume: the same weights as a run that never stopped."""
    from test_train import InterruptAt

    opts = dict(fields=["text"], condition_field="label", seed=3, max_steps=30, log_every=1, **{**SMALL, "eval_every": 10})
    whole = genrnn.train(fruit_csv, out=tmp_path / "whole", **opts)
    part = genrnn.train(fruit_csv, out=tmp_path / "part", callbacks=InterruptAt(13), **opts)
    assert part.result.interrupted
    resumed = genrnn.train(resume=tmp_path / "part")
    assert resumed.result.step == 30
    a = torch.load(tmp_path / "whole" / "resume.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "resume.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("encoder.") for k in a)
    assert resumed.condition == whole.condition


# -- which weights a run keeps, and a captioner's defaults ------------------------------------


def _saved_step(run_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(run_dir / "model.safetensors"), "pt") as f:
        return int(f.metadata()["step"])


def test_keep_best_or_last(tmp_path):
    """Random text over four letters: validation loss bottoms out early while
    the model goes on memorising the training text. keep=best holds the
    weights of that lowest loss; keep=last the final ones."""
    rng = np.random.default_rng(0)
    (tmp_path / "train.txt").write_text("".join(rng.choice(list("abcd"), 3000)))
    (tmp_path / "val.txt").write_text("".join(rng.choice(list("abcd"), 1000)))
    steps = {}
    for keep in ("best", "last"):
        torch.manual_seed(0)
        run = genrnn.train(tmp_path / "train.txt", val=tmp_path / "val.txt", out=tmp_path / keep, keep=keep,
                           max_steps=300, eval_every=20, lr=0.02, hidden_size=96, num_layers=1, batch_size=8,
                           seq_len=32, sample_every=0, baseline=0)
        steps[keep] = (_saved_step(tmp_path / keep), run.result.best_val["step"], run.result.step)
    best_at = steps["best"][1]
    assert best_at < 300, "the set-up must overfit: the lowest validation loss before the last step"
    assert steps["best"] == (best_at, best_at, 300)
    assert steps["last"] == (300, best_at, 300)  # the same run; only the file differs
    with pytest.raises(GenrnnError, match="keep"):
        genrnn.train(tmp_path / "train.txt", out=tmp_path / "bad", keep="first", max_steps=1)


def test_a_captioner_gets_word_tokens_and_its_last_weights(squares, tmp_path):
    """With no options, an image run is set up as a captioner (autoconfig.CAPTIONER);
    every option given wins, one at a time."""
    from genrnn.autoconfig import CAPTIONER, choose_captioner

    assert choose_captioner(set()).options == CAPTIONER
    assert "tokenizer" not in choose_captioner({"tokenizer"}).options
    torch.manual_seed(0)
    run = genrnn.train(squares / "captions.csv", fields=["caption"], image_field="image", out=tmp_path / "a",
                       max_steps=4, sample_every=0, val_fraction=0.1)
    cfg = run.config
    assert (cfg.data.tokenizer, cfg.model.hidden_size, cfg.model.num_layers, cfg.data.batch_size,
            cfg.model.condition_dim, cfg.train.keep) == ("word", 256, 1, 32, 128, "last")
    assert "captioner" in json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])["auto"]["reason"]
    run = genrnn.train(squares / "captions.csv", fields=["caption"], image_field="image", out=tmp_path / "b",
                       max_steps=4, sample_every=0, val_fraction=0.1, tokenizer="char", hidden_size=32)
    assert (run.config.data.tokenizer, run.config.model.hidden_size, run.config.train.keep) == ("char", 32, "last")


def test_the_cli_says_which_weights_a_captioner_kept(squares, tmp_path, capsys):
    """Each caption ends in a word of its own, so validation loss rises once
    the captioner learns the training words; the run keeps its last weights
    and says so."""
    rows = list(csv.reader(open(squares / "captions.csv")))[1:]
    write_table(tmp_path / "c.csv", [(str(squares / r[0]), f"{r[1]} w{i}") for i, r in enumerate(rows)],
                header=("image", "caption"))
    rc, out, err = cli(capsys, "train", tmp_path / "c.csv", "--image-field", "image", "--field", "caption",
                       "--max-steps", "60", "--eval-every", "5", "--val-fraction", "0.2", "--sample-every", "0",
                       "--out", tmp_path / "c", "--no-progress")
    assert rc == 0, err
    said = out + err
    assert "settings for a captioner: word tokens" in said
    evals = [json.loads(line) for line in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    best = [r["step"] for r in evals if r.get("best")]
    assert best[-1] < 60, "the set-up must overfit: the lowest validation loss before the last step"
    assert f"(step {best[-1]})" in said and "holds the last weights (step 60)" in said
    assert _saved_step(tmp_path / "c") == 60


def test_histogram_vectors_condition_a_captioner(squares, tmp_path):
    """The squares as --condition-vectors: 16x16 pixels (mostly white) and an
    8x8x8 colour histogram (a few non-zero bins among 512), the features of
    benchmarks/captioning.py (on the emoji set, a tanh after the encoder's
    layer norm saturated on such rows, and every image got one caption)."""
    from genrnn.images import load_images
    from genrnn.models.encoders import colour_histogram

    rows = list(csv.reader(open(squares / "captions.csv")))[1:]
    px = load_images([squares / r[0] for r in rows])
    small = px.reshape(len(px), 3, 16, 4, 16, 4).mean(axis=(3, 5)).reshape(len(px), -1) / 255.0
    hist = colour_histogram(torch.from_numpy(px)).numpy()
    vectors = np.concatenate([small, hist], axis=1).astype(np.float32)
    np.save(tmp_path / "f.npy", vectors)
    torch.manual_seed(0)
    run = genrnn.train(squares / "captions.csv", fields=["caption"], condition_vectors=tmp_path / "f.npy",
                       out=tmp_path / "run", max_steps=300, sample_every=0, eval_every=100)
    assert run.generate(condition=vectors[:6], temperature=0) == [r[1] for r in rows[:6]]


def test_vector_features_are_centred_over_the_batch():
    """Features much the same in every row (a background) leave no common part
    for the projection to grow (encoders.Centre), and a training batch of one
    row uses the running statistics."""
    from genrnn.models.encoders import Centre, VectorEncoder

    enc = VectorEncoder(ModelConfig(condition="vector", condition_size=40, condition_dim=8)).train()
    g = torch.Generator().manual_seed(0)
    x = torch.ones(16, 40)
    x[:, :4] = torch.rand(16, 4, generator=g)  # four features tell the rows apart
    with torch.no_grad():
        enc.proj.weight.mul_(50.0)
        pre = enc.proj(enc.norm(x))
        spread = float(enc(x).std(0).mean())
    assert torch.allclose(pre.mean(0), enc.proj.bias, atol=1e-4)  # the rows' common part is gone
    assert spread > 0.3
    one = Centre(3).train()
    one.running_mean.fill_(1.0)
    assert torch.allclose(one(torch.tensor([[2.0, 1.0, 0.0]])), torch.tensor([[1.0, 0.0, -1.0]]), atol=1e-4)


def test_colour_histogram():
    """The image encoder's colour branch: one cell per colour, shares that are
    the same wherever the colour sits, rows of unit length."""
    from genrnn.models.encoders import colour_histogram

    img = torch.full((2, 3, 8, 8), 255, dtype=torch.uint8)
    img[0, :, :4, :4] = torch.tensor([200, 40, 40], dtype=torch.uint8)[:, None, None]  # a red quarter, top left
    img[1, :, 4:, 4:] = torch.tensor([200, 40, 40], dtype=torch.uint8)[:, None, None]  # ... bottom right
    h = colour_histogram(img)
    assert h.shape == (2, 512) and torch.equal(h[0], h[1])
    red, white = (6 * 8 + 1) * 8 + 1, 511
    assert torch.allclose(h[0, [red, white]], torch.tensor([0.5, 0.75 ** 0.5]))
    assert torch.allclose((h ** 2).sum(1), torch.ones(2))


def test_captions_are_beam_searched_unless_asked_otherwise(squares, tmp_path, monkeypatch):
    """run.caption: a beam of beam.CAPTION_BEAM by default; beam=1 is greedy
    (the sampling core); a temperature samples; both at once is an error."""
    from genrnn.api import TrainedModel
    from genrnn.beam import CAPTION_BEAM

    torch.manual_seed(0)
    run = genrnn.train(squares / "captions.csv", fields=["caption"], image_field="image", out=tmp_path / "c",
                       max_steps=5, sample_every=0, val_fraction=0.1)
    beams = []
    real = TrainedModel.beam_search

    def spy(self, *args, **kwargs):
        beams.append(kwargs["beam"])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TrainedModel, "beam_search", spy)
    images = [squares / "img" / f"{i}.png" for i in range(3)]
    default = run.caption(images)
    assert beams == [CAPTION_BEAM] and CAPTION_BEAM > 1
    assert run.caption(images, beam=CAPTION_BEAM) == default
    greedy = run.caption(images, beam=1)
    assert run.caption(images, temperature=0.7, seed=1) and beams == [CAPTION_BEAM] * 2
    assert greedy == [c.text for c in run.complete([""] * 3, condition=images, temperature=0, length=100)]
    with pytest.raises(GenrnnError, match="not both"):
        run.caption(images, beam=2, temperature=0.5)

"""genrnn train NEWTEXT --init-from RUN: the parent's weights, its vocabulary extended."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

import genrnn
from genrnn import checkpoint as ckpt

WORDS = "the cat sat on a mat and then it ran off to see the dog who was not there".split()
TINY = dict(hidden_size=24, num_layers=1, embedding_size=8, seq_len=24, batch_size=8, sample_every=0, device="cpu")


def text(lines=300, seed=0, extra="") -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) + extra + "." for _ in range(lines))


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    root = tmp_path_factory.mktemp("parent")
    (root / "a.txt").write_text(text())
    return genrnn.train(root / "a.txt", out=root / "run", max_steps=60, **TINY)


def test_known_tokens_keep_their_rows_and_new_ones_start_at_the_mean(parent, tmp_path):
    (tmp_path / "b.txt").write_text(text(200, seed=1, extra=" — café"))  # é and — are new characters
    child = genrnn.train(tmp_path / "b.txt", out=tmp_path / "child", init_from=str(parent.run_dir), max_steps=1,
                         lr=1e-12, sample_every=0, device="cpu")
    old, new = parent.tokenizer, child.tokenizer
    assert new.vocab_size > old.vocab_size
    for i in range(old.vocab_size):  # every old id means the same token
        assert new.token_str(i) == old.token_str(i)
    added = [new.token_str(i) for i in range(old.vocab_size, new.vocab_size)]
    assert set(added) == {"é", "—"}
    p = parent.model.state_dict()
    c = ckpt.load_resume(tmp_path / "child" / ckpt.RESUME)["model"]
    c = {k[len("rnn."):] if k.startswith("rnn.") else k: v for k, v in c.items()}
    V = old.vocab_size
    emb = c["embedding.weight"]
    torch.testing.assert_close(emb[:V], p["embedding.weight"], atol=1e-6, rtol=0)  # lr 1e-12: as copied
    torch.testing.assert_close(emb[V:], p["embedding.weight"][3:].mean(0).expand(new.vocab_size - V, -1),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(c["head.bias"][:V], p["head.bias"], atol=1e-6, rtol=0)
    cfg = json.loads((tmp_path / "child" / "config.json").read_text())["run"]
    assert cfg["train"]["init_from"] == str(parent.run_dir)
    assert cfg["model"]["hidden_size"] == 24  # the parent's shape, not the automatic choice


def test_starting_from_a_run_beats_starting_from_scratch_on_its_kind_of_text(parent, tmp_path):
    (tmp_path / "b.txt").write_text(text(200, seed=2))
    opts = dict(max_steps=5, lr=3e-3, **{k: v for k, v in TINY.items() if k not in ("hidden_size", "num_layers",
                                                                                    "embedding_size")})
    warm = genrnn.train(tmp_path / "b.txt", out=tmp_path / "warm", init_from=str(parent.run_dir), **opts)
    cold = genrnn.train(tmp_path / "b.txt", out=tmp_path / "cold", hidden_size=24, num_layers=1, embedding_size=8,
                        **opts)
    assert warm.result.best_val["loss"] < cold.result.best_val["loss"] - 0.1


def test_the_child_resumes_samples_and_serves_like_any_run(parent, tmp_path):
    (tmp_path / "b.txt").write_text(text(200, seed=3, extra=" ö"))
    genrnn.train(tmp_path / "b.txt", out=tmp_path / "c", init_from=str(parent.run_dir), max_steps=4,
                         **{k: v for k, v in TINY.items() if k in ("seq_len", "batch_size", "sample_every", "device")})
    more = genrnn.train(resume=tmp_path / "c", max_steps=8)
    assert more.result.step == 8
    assert len(more.complete(["the ö"], length=10, temperature=0.8, seed=0)[0].text) > 0


def test_contradicting_the_parent_is_a_clear_error(parent, tmp_path):
    (tmp_path / "b.txt").write_text(text(50))
    with pytest.raises(genrnn.GenrnnError, match="shape comes from|takes the network's shape"):
        genrnn.train(tmp_path / "b.txt", out=tmp_path / "x", init_from=str(parent.run_dir), hidden_size=64,
                     max_steps=1)
    with pytest.raises(genrnn.GenrnnError, match="leave --tokenizer out"):
        genrnn.train(tmp_path / "b.txt", out=tmp_path / "y", init_from=str(parent.run_dir), tokenizer="word",
                     max_steps=1)
    with pytest.raises(genrnn.GenrnnError, match="no run folder|not a genrnn run"):
        genrnn.train(tmp_path / "b.txt", out=tmp_path / "z", init_from=str(tmp_path / "nothing"), max_steps=1)


def test_a_markov_parent_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text(text(50))
    genrnn.train(tmp_path / "a.txt", out=tmp_path / "kn", type="markov", order=3, sample_every=0)
    with pytest.raises(genrnn.GenrnnError, match="no network weights"):
        genrnn.train(tmp_path / "a.txt", out=tmp_path / "x", init_from=str(tmp_path / "kn"), max_steps=1)


def test_the_transferred_network_gives_the_parents_logits_on_the_old_tokens(parent):
    from genrnn.config import ModelConfig
    from genrnn.initfrom import transfer
    from genrnn.models import build_model

    V = parent.tokenizer.vocab_size
    m = parent.config.model
    child = build_model(ModelConfig(**{**m.__dict__, "vocab_size": V + 3})).eval()
    transfer(parent.model, child, V)  # what a run fine-tuned with zero steps holds
    x = torch.tensor([parent.tokenizer.encode("the cat sat on a mat")])
    with torch.no_grad():
        want, _, _ = parent.model.eval()(x)
        got, _, _ = child(x)
    assert torch.equal(got[..., :V], want)  # bitwise: the same rows, the same arithmetic


def test_a_corrupt_parent_is_a_clear_error(parent, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(parent.run_dir, broken)
    weights = broken / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-100])
    (tmp_path / "b.txt").write_text(text(50))
    with pytest.raises(genrnn.GenrnnError, match="corrupt|truncated|sha256"):
        genrnn.train(tmp_path / "b.txt", out=tmp_path / "x", init_from=str(broken), max_steps=1)


def test_the_built_in_english_model_is_a_starting_point(tmp_path):
    from genrnn import pretrained

    (tmp_path / "b.txt").write_text(text(100, extra=" ☃"))  # a snowman: not in the built-in vocabulary
    child = genrnn.train(tmp_path / "b.txt", out=tmp_path / "c", init_from="english", max_steps=2, sample_every=0,
                         device="cpu")
    english = genrnn.load(pretrained.resolve("english"))
    assert english.config.model.hidden_size == child.config.model.hidden_size == 256
    assert child.tokenizer.vocab_size == english.tokenizer.vocab_size + 1
    assert child.tokenizer.token_str(english.tokenizer.vocab_size) == "☃"
    assert child.config.train.init_from == "english"
    # it knows English before it has seen any of ours: far below a uniform guess over its characters
    val = english.evaluate(tmp_path / "b.txt")
    assert val["loss"] < 0.6 * math.log(english.tokenizer.vocab_size)


def test_a_folder_named_like_a_built_in_model_wins(tmp_path, monkeypatch):
    from genrnn import pretrained

    monkeypatch.chdir(tmp_path)
    assert pretrained.resolve("english") == pretrained.HERE / "english"
    (tmp_path / "english").mkdir()
    assert pretrained.resolve("english") == Path("english")
    assert pretrained.resolve("runs/x") == Path("runs/x")


def test_genrnn_sample_takes_the_built_in_name(capsys):
    from genrnn.cli import main

    assert main(["sample", "english", "--prompt", "The ", "--length", "40", "--seed", "0", "--temperature", "0.5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The ") and len(out) >= 40


@pytest.mark.parametrize("dropouts", [(0.1, 0.0), (0.0, 0.2)])
def test_weights_move_between_runs_with_and_without_dropout(dropouts):
    """Dropout between layers switches the network to single-layer modules (other parameter names)."""
    from genrnn.config import ModelConfig
    from genrnn.initfrom import transfer
    from genrnn.models import build_model

    torch.manual_seed(0)
    shape = dict(hidden_size=16, num_layers=2, embedding_size=8)
    parent = build_model(ModelConfig(vocab_size=20, dropout=dropouts[0], **shape)).eval()
    child = build_model(ModelConfig(vocab_size=22, dropout=dropouts[1], **shape)).eval()
    transfer(parent, child, 20)
    x = torch.randint(3, 20, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(child(x)[0][..., :20], parent(x)[0], atol=1e-6, rtol=0)


def test_a_child_takes_a_tenth_of_the_automatic_learning_rate_unless_given_one(parent, tmp_path):
    from genrnn.config import auto_lr
    from genrnn.initfrom import LR_SCALE

    (tmp_path / "b.txt").write_text(text(100, seed=4))

    def peak(run_dir) -> float:
        lines = [json.loads(x) for x in (run_dir / ckpt.METRICS).read_text().splitlines()]
        return max(x["lr"] for x in lines if "lr" in x)

    opts = dict(max_steps=20, log_every=1, sample_every=0, device="cpu", init_from=str(parent.run_dir))
    child = genrnn.train(tmp_path / "b.txt", out=tmp_path / "c", **opts)
    want = auto_lr(child.config.model) * LR_SCALE
    assert want * 0.8 < peak(tmp_path / "c") <= want * (1 + 1e-9)
    given = genrnn.train(tmp_path / "b.txt", out=tmp_path / "g", lr=5e-3, **opts)
    assert peak(given.run_dir) == pytest.approx(5e-3, rel=0.2)

"""genrnn train NEWTEXT --init-from RUN: the parent's weights, its vocabulary extended."""

from __future__ import annotations

import json
import random

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

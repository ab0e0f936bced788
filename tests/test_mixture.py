"""The RNN + Kneser-Ney mixture: a proper distribution, never worse than its parts
on the data its weight is fitted on, and a model like any other (sample, save, resume, serve)."""

from __future__ import annotations

import json
import random

import httpx
import pytest
import torch

import genrnn
from genrnn.config import ModelConfig
from genrnn.models import MixtureLM, build_model
from genrnn.models.mixture import fit_weight

WORDS = "the cat sat on a mat and then it ran off to see the dog who was not there".split()


def text(lines=300, seed=0) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(10)) + "." for _ in range(lines))


SMALL = dict(type="mixture", order=4, hidden_size=32, num_layers=1, embedding_size=16, seq_len=32, batch_size=8,
             sample_every=0, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    (root / "t.txt").write_text(text())
    return genrnn.train(root / "t.txt", out=root / "run", max_steps=40, eval_every=20, **SMALL)


def test_fit_weight_is_never_worse_than_either_part():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        a = -torch.rand(500, generator=g, dtype=torch.float64) * 5
        b = -torch.rand(500, generator=g, dtype=torch.float64) * 5 + (trial - 10) * 0.2
        w, loss = fit_weight(a, b)
        assert 0.0 <= w <= 1.0
        assert loss <= min(float(-a.mean()), float(-b.mean())) + 1e-12
        # the optimum: no weight on a grid does better
        grid = torch.linspace(0, 1, 101, dtype=torch.float64)
        best = min(float(-torch.logaddexp(a + torch.log(x), b + torch.log1p(-x)).mean()) for x in grid)
        assert loss <= best + 1e-9
    a = torch.zeros(10, dtype=torch.float64)  # the RNN certain and right everywhere: all weight on it
    assert fit_weight(a, a - 1.0)[0] == 1.0
    assert fit_weight(a - 1.0, a)[0] == 0.0


def _model(weight=0.3, V=12, order=3):
    model = build_model(ModelConfig(type="mixture", vocab_size=V, hidden_size=16, num_layers=1, embedding_size=8,
                                    order=order))
    g = torch.Generator().manual_seed(1)
    model.fit([torch.cat([torch.tensor([2]), torch.randint(3, V, (400,), generator=g)]).numpy()])
    model.weight.fill_(weight)
    return model.eval()


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_mixture_probabilities_sum_to_one(weight):
    model = _model(weight)
    idx = torch.randint(3, 12, (3, 7))
    logits, _, state = model(idx)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(3, 7), atol=1e-5, rtol=0)
    step, _ = model.step(torch.tensor([4, 5, 6]), state)
    torch.testing.assert_close(step.exp().sum(-1), torch.ones(3), atol=1e-5, rtol=0)


def test_step_prefill_and_forward_agree_and_mix_the_parts():
    model = _model(0.4)
    idx = torch.randint(3, 12, (2, 6))
    full, _, _ = model(idx)
    last, state = model.prefill(idx, torch.tensor([6, 6]))
    torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=0)
    rnn, _, _ = model.rnn(idx)
    kn, _, _ = model.ngram(idx)
    expect = torch.log(0.4 * rnn.float().softmax(-1) + 0.6 * kn.exp())
    torch.testing.assert_close(full, expect, atol=1e-5, rtol=1e-5)
    # training mode is the RNN alone (its loss is what is trained); the n-gram history still follows
    model.train()
    logits, loss, (s_rnn, s_kn) = model(idx, idx)
    torch.testing.assert_close(logits, rnn)
    assert s_kn[0, :, -1].tolist() == idx[:, -1].tolist()


def test_the_trained_mixture_is_not_worse_than_its_parts(run):
    best = run.result.best_val
    assert 0.0 <= best["mix_weight"] <= 1.0
    assert best["loss"] <= min(best["rnn_loss"], best["baseline_loss"]) + 1e-9
    # genrnn eval on the saved model gives the figure the trainer reported (same weight, same tokens)
    assert run.evaluate()["loss"] == pytest.approx(best["loss"], abs=2e-4)


def test_metrics_report_the_baseline_beside_the_rnn(run):
    lines = [json.loads(x) for x in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    baseline = next(x["baseline"] for x in lines if "baseline" in x)
    assert baseline["order"] == 4 and baseline["val_loss"] > 0
    evals = [x for x in lines if "val_loss" in x]
    assert evals and all({"val_rnn_loss", "val_baseline_loss", "mix_weight"} <= set(x) for x in evals)
    assert all(x["val_baseline_loss"] == pytest.approx(baseline["val_loss"]) for x in evals)


def test_the_mixture_survives_a_checkpoint_round_trip_and_samples(run):
    again = genrnn.load(run.run_dir, device="cpu")
    assert isinstance(again.model, MixtureLM)
    assert float(again.model.weight) == pytest.approx(run.result.best_val["mix_weight"], abs=1e-6)
    a = run.complete(["the cat"], length=30, temperature=0.8, seed=3)[0].text
    b = again.complete(["the cat"], length=30, temperature=0.8, seed=3)[0].text
    assert a == b and len(a) > 0
    beams = again.beam_search(["the "], beam=3, length=10)
    assert beams and beams[0]


def test_a_mixture_run_resumes_exactly(tmp_path):
    import signal

    from genrnn import checkpoint as ckpt
    from genrnn.trainer import Callbacks

    class InterruptAt(Callbacks):
        def on_log(self, metrics):
            if metrics["step"] == 12:
                signal.raise_signal(signal.SIGINT)

    (tmp_path / "t.txt").write_text(text(200, seed=1))
    opts = dict(SMALL, max_steps=30, eval_every=10, log_every=1)
    genrnn.train(tmp_path / "t.txt", out=tmp_path / "whole", **opts)
    cut = genrnn.train(tmp_path / "t.txt", out=tmp_path / "cut", callbacks=InterruptAt(), **opts)
    assert cut.result.interrupted
    genrnn.train(resume=tmp_path / "cut")
    a = ckpt.load_resume(tmp_path / "whole" / ckpt.RESUME)["model"]
    b = ckpt.load_resume(tmp_path / "cut" / ckpt.RESUME)["model"]
    assert a.keys() == b.keys() and any(k.startswith("ngram.") for k in a) and "weight" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_plain_rnn_run_reports_its_baseline(tmp_path):
    (tmp_path / "t.txt").write_text(text(200))
    run = genrnn.train(tmp_path / "t.txt", out=tmp_path / "r", max_steps=5, hidden_size=16, num_layers=1,
                       baseline=3, sample_every=0, device="cpu")
    assert run.result.best_val["baseline_loss"] > 0
    off = genrnn.train(tmp_path / "t.txt", out=tmp_path / "o", max_steps=5, hidden_size=16, num_layers=1,
                       baseline=0, sample_every=0, device="cpu")
    assert "baseline_loss" not in off.result.best_val


def test_a_conditioned_mixture_is_refused(tmp_path):
    with pytest.raises(genrnn.GenrnnError, match="cannot be conditioned"):
        ModelConfig(type="mixture", condition="label", condition_size=3).validate()


def test_the_mixture_serves(run):
    from genrnn.serve import BackgroundServer, Limits, create_app

    app = create_app({"mix": run}, Limits(), api_key=None)
    with BackgroundServer(app) as srv:
        r = httpx.post(f"{srv.url}/v1/completions", json={"model": "mix", "prompt": "the cat", "max_tokens": 20,
                                                          "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        served = r.json()["choices"][0]["text"]
    assert served == run.complete(["the cat"], length=20, temperature=0)[0].text


@pytest.mark.parametrize("damage", ["offsets", "words", "ctx_keys", "sizes"])
def test_tampered_ngram_tables_are_refused_on_load(damage):
    from genrnn.models import MarkovLM

    model = _model().ngram
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    key = "orders.2."
    if damage == "offsets":
        tensors[key + "offsets"][-1] += 5
    elif damage == "words":
        tensors[key + "words"][0] = 10_000
    elif damage == "ctx_keys":
        tensors[key + "ctx_keys"] = tensors[key + "ctx_keys"].flip(0)
    else:
        tensors[key + "gamma"] = tensors[key + "gamma"][:-1]
    fresh = MarkovLM(model.config)
    fresh.prepare_load({k: v for k, v in model.state_dict().items()})  # the real tables pass
    with pytest.raises(genrnn.GenrnnError, match="corrupt"):
        MarkovLM(model.config).prepare_load(tensors)

"""--adaptive-softmax: a cheaper output layer for large word vocabularies whose
log-probabilities stay exact everywhere a model is read."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

import genrnn
from genrnn import checkpoint as ckpt
from genrnn.beam import beam_search
from genrnn.config import ModelConfig
from genrnn.errors import GenrnnError
from genrnn.models import build_model
from genrnn.models.output import cutoffs
from genrnn.tokenizers import EOS_ID


def model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    options = dict(vocab_size=300, hidden_size=32, embedding_size=16, adaptive_softmax="40,120")
    options.update(kw)
    return build_model(ModelConfig(**options))


def zipf_text(words=400, lines=500, seed=0) -> str:
    """Word text whose frequencies fall off as 1/rank, as a real vocabulary's do."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(words)]
    weights = [1 / (i + 1) for i in range(words)]
    return "\n".join(" ".join(rng.choices(vocab, weights, k=10)) + " ." for _ in range(lines))


def test_auto_cutoffs_and_bad_ones():
    assert cutoffs("auto", 10_000) == [2000]
    assert cutoffs("auto", 33_278) == [2000, 10_000]
    assert cutoffs("100,400", 1000) == [100, 400]
    assert cutoffs("auto", 2000) == []  # a full softmax: a head would hold it all
    assert isinstance(model(vocab_size=1500, adaptive_softmax="auto").head, torch.nn.Linear)
    for spec, vocab in (("400,100", 1000), ("100,1000", 1000), ("0,10", 100), ("lots", 100)):
        with pytest.raises(GenrnnError, match="adaptive-softmax"):
            cutoffs(spec, vocab)
    with pytest.raises(GenrnnError, match="tie"):
        ModelConfig(vocab_size=300, hidden_size=16, embedding_size=16, tie_weights=True,
                    adaptive_softmax="auto").validate()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_log_probs_sum_to_one_in_every_path(cell):
    m = model(cell=cell).eval()
    x = torch.randint(0, 300, (3, 9))
    with torch.no_grad():
        full, _, _ = m(x)
        assert full.logsumexp(-1).abs().max() < 1e-5
        last, state = m.prefill(x[:, :5], torch.tensor([5, 3, 1]))
        assert last.logsumexp(-1).abs().max() < 1e-5
        torch.testing.assert_close(last[0], full[0, 4], atol=1e-5, rtol=0)  # row 0 is unpadded
        fast, _ = m.step(x[:, 5], state)  # the hand-written step
        module, _ = m._module_step(x[:, 5], state)  # the fused module's
        torch.testing.assert_close(fast, module, atol=1e-5, rtol=0)
        assert fast.logsumexp(-1).abs().max() < 1e-5


def test_the_training_loss_is_the_cross_entropy_of_the_distribution():
    m = model()
    x, y = torch.randint(0, 300, (4, 12)), torch.randint(0, 300, (4, 12))
    y[0, :5] = -100  # padding
    m.train()
    logits, loss, _ = m(x, y)
    assert logits is None  # the cheap path computes no full logits
    loss.backward()  # and trains every part
    assert all(p.grad is not None for p in m.head.parameters())
    m.eval()
    with torch.no_grad():
        logp, eval_loss, _ = m(x, y)
    keep = y != -100
    want = -logp.gather(-1, y.clamp_min(0)[..., None])[..., 0][keep].mean()
    assert float(loss.detach()) == pytest.approx(float(want), abs=1e-5)
    assert float(eval_loss) == pytest.approx(float(want), abs=1e-5)


def test_bf16_autocast_keeps_float32_figures():
    m = model()
    x, y = torch.randint(0, 300, (2, 8)), torch.randint(0, 300, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss, _ = m(x, y)
        loss.backward()
        m.eval()
        logp, _, _ = m(x)
    assert loss.dtype == logp.dtype == torch.float32
    assert logp.logsumexp(-1).abs().max() < 1e-5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("adaptive")
    (root / "a.txt").write_text(zipf_text())
    return genrnn.train(root / "a.txt", out=root / "run", tokenizer="word", adaptive_softmax="30,120", max_steps=40,
                        hidden_size=32, num_layers=1, embedding_size=16, seq_len=16, batch_size=8, eval_every=20,
                        sample_every=0, device="cpu")


def test_a_word_run_trains_evaluates_samples_and_beams(run):
    cfg = json.loads((run.run_dir / ckpt.CONFIG).read_text())["run"]["model"]
    assert cfg["adaptive_softmax"] == "30,120"
    reloaded = genrnn.load(run.run_dir)
    val = reloaded.evaluate()
    assert val["loss"] == pytest.approx(run.result.best_val["loss"], abs=1e-4)
    assert val["loss"] < 5.9  # below the uniform 400 words' log(400) = 5.99: it learned the frequencies
    text = reloaded.complete(["w0 w1"], length=8, temperature=1.0, seed=1)[0].text
    assert len(text.split()) >= 2
    prompt = [EOS_ID] + reloaded.tokenizer.encode("w0")
    (hyp,) = beam_search(reloaded.model, [prompt], beam=3, max_new_tokens=4)[0]
    ids = prompt + hyp.ids + ([EOS_ID] if hyp.finish_reason == "eos" else [])
    with torch.no_grad():
        logp, _, _ = reloaded.model.eval()(torch.tensor([ids[:-1]]))
    steps = logp[0, len(prompt) - 1 :].gather(-1, torch.tensor(ids[len(prompt) :])[:, None])
    assert hyp.logprob == pytest.approx(float(steps.sum()), abs=1e-4)  # the beam's figures are the model's own


def test_the_server_scores_with_exact_log_probs(run):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'genrnn[serve]'")
    httpx = pytest.importorskip("httpx", reason="httpx is not installed (test extra)")
    from genrnn.serve import BackgroundServer, Limits, create_app

    prompt = "w0 w3 w1 w2"
    ids = [EOS_ID] + run.tokenizer.encode(prompt)
    with torch.no_grad():
        logp, _, _ = run.model.eval()(torch.tensor([ids[:-1]]))
    want = logp[0].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    with BackgroundServer(create_app({"m": run}, Limits())) as srv:
        r = httpx.post(f"{srv.url}/v1/completions", json={"model": "m", "prompt": prompt, "max_tokens": 0,
                                                          "echo": True, "logprobs": 1}, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert [v for v in got if v is not None] == pytest.approx(want, abs=1e-4)


def test_init_from_an_adaptive_run_grows_its_last_cluster(run, tmp_path):
    (tmp_path / "b.txt").write_text("novel1 novel2 w0 .\n" + zipf_text(seed=1))
    child = genrnn.train(tmp_path / "b.txt", out=tmp_path / "child", init_from=str(run.run_dir), max_steps=1,
                         lr=1e-12, sample_every=0, device="cpu")
    old, new = run.tokenizer.vocab_size, child.tokenizer.vocab_size
    added = {child.tokenizer.token_str(i) for i in range(old, new)}
    assert {"novel1", "novel2"} <= added
    assert all(child.tokenizer.token_str(i) == run.tokenizer.token_str(i) for i in range(old))
    parent = run.model.state_dict()
    got = ckpt.load_resume(tmp_path / "child" / ckpt.RESUME)["model"]
    tail = "head.tail.1.1.weight"  # the last cluster's output rows
    torch.testing.assert_close(got[tail][: parent[tail].shape[0]], parent[tail], atol=1e-6, rtol=0)
    torch.testing.assert_close(got[tail][parent[tail].shape[0] :], parent[tail].mean(0).expand(new - old, -1),
                               atol=1e-6, rtol=0)
    with torch.no_grad():
        logp, _, _ = child.model.eval()(torch.tensor([[EOS_ID] + child.tokenizer.encode("novel1 w0")]))
    assert logp.logsumexp(-1).abs().max() < 1e-5
    assert F.softmax(logp, -1).shape[-1] == new


def test_the_automatic_word_model_unties_its_output_for_an_adaptive_softmax(tmp_path):
    (tmp_path / "a.txt").write_text(zipf_text(lines=100))
    run = genrnn.train(tmp_path / "a.txt", out=tmp_path / "r", tokenizer="word", adaptive_softmax="30,120",
                       max_steps=2, sample_every=0, device="cpu")
    m = run.config.model
    assert (m.type, m.hidden_size, m.tie_weights, m.adaptive_softmax) == ("mixture", 200, False, "30,120")
    with torch.no_grad():
        logp, _, _ = run.model.eval()(torch.tensor([[EOS_ID] + run.tokenizer.encode("w0 w1 w2")]))
    assert logp.exp().sum(-1).sub(1).abs().max() < 1e-4  # the mixture of two exact distributions is one

"""Logits transforms, the generation loop and text completion.

Exact checks use hand-computed examples; the sampling distribution is checked
empirically against the exact one with a fake model whose next-token logits
never change.
"""

from __future__ import annotations

import math
from typing import List, Sequence

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from genrnn.config import ModelConfig
from genrnn.errors import GenrnnError
from genrnn.models import build_model
from genrnn.sampling import (
    SampleConfig,
    apply_temperature,
    complete,
    generate_tokens,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from genrnn.tokenizers import EOS_ID, PAD_ID, build_tokenizer

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NEG_INF = float("-inf")



class FixedLogits(nn.Module):
    """A model whose next-token logits are always ``logits`` (V,), whatever it reads."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # so the model has a device
        self.logits = logits.float()

    def prefill(self, idx, lengths, state=None):
        return self.logits.expand(idx.shape[0], -1), state

    def step(self, idx, state):
        return self.logits.expand(idx.shape[0], -1), state


class Scripted(nn.Module):
    """Row i emits ``scripts[i]`` one token after the other (then repeats its last token).

    Its state is the position in the script; it records what ``prefill`` read.
    """

    def __init__(self, scripts: Sequence[Sequence[int]], vocab_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.scripts = [list(s) for s in scripts]
        self.vocab_size = vocab_size
        self.prefilled = None

    def _logits(self, pos: int) -> torch.Tensor:
        out = torch.zeros(len(self.scripts), self.vocab_size)
        for i, s in enumerate(self.scripts):
            out[i, s[min(pos, len(s) - 1)]] = 20.0
        return out

    def prefill(self, idx, lengths, state=None):
        self.prefilled = [row[:n].tolist() for row, n in zip(idx, lengths)]
        return self._logits(0), 0

    def step(self, idx, state):
        return self._logits(state + 1), state + 1


def tiny_lm(vocab_size: int = 9, seed: int = 0, cell: str = "gru"):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(cell=cell, vocab_size=vocab_size, embedding_size=6, hidden_size=16,
                                    num_layers=1))
    with torch.no_grad():  # sharper than at initialisation, so that samples vary less trivially
        model.head.weight.mul_(8.0)
    return model.eval()


def masked_softmax(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The exact distribution sampling should follow: PAD excluded, logits / T."""
    z = logits.double().clone()
    z[PAD_ID] = NEG_INF
    return torch.softmax(z / temperature, dim=-1)


def draw(model: nn.Module, n_rows: int, steps: int, **config) -> torch.Tensor:
    """(steps, n_rows) tokens from ``generate_tokens``."""
    out = list(generate_tokens(model, [[3]] * n_rows, SampleConfig(max_new_tokens=steps, **config)))
    return torch.stack(out)


def assert_frequencies(samples: torch.Tensor, probs: torch.Tensor) -> None:
    """Each token's frequency within 5 standard errors sqrt(p(1-p)/N) of p.

    With a fixed seed this is deterministic; for a fresh seed a wrong
    distribution of this size fails it, a right one passes with probability
    above 1 - 6e-7 per token.
    """
    N = samples.numel()
    freq = torch.bincount(samples.flatten(), minlength=len(probs)).double() / N
    for token, (f, p) in enumerate(zip(freq.tolist(), probs.tolist())):
        if p == 0:
            assert f == 0, f"token {token} is excluded but was drawn"
            continue
        bound = 5 * math.sqrt(p * (1 - p) / N)
        assert abs(f - p) <= bound, f"token {token}: frequency {f:.4f}, expected {p:.4f} +- {bound:.4f}"


LOGITS = torch.tensor([0.7, 0.5, 1.0, 2.0, -1.0, 1.5, 0.0])  # PAD's 0.7 must never count


# -- transforms ---------------------------------------------------------------------------


def test_apply_temperature_per_row():
    logits = torch.tensor([[1.0, -2.0, 4.0], [1.0, -2.0, 4.0], [3.0, 0.0, -3.0]])
    out = apply_temperature(logits, torch.tensor([0.5, 2.0, 0.0]))
    assert out.tolist() == [[2.0, -4.0, 8.0], [0.5, -1.0, 2.0], [3.0, 0.0, -3.0]]  # T == 0: unchanged
    assert logits[0].tolist() == [1.0, -2.0, 4.0]  # the input is untouched


def test_top_k_filter_exact():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0, 1.0]])
    out = top_k_filter(logits, 2)
    assert out.tolist() == [[NEG_INF, 3.0, NEG_INF, 2.0, NEG_INF], [5.0, 4.0, NEG_INF, NEG_INF, NEG_INF]]
    assert top_k_filter(logits, 1).isfinite().sum(dim=1).tolist() == [1, 1]
    assert torch.equal(top_k_filter(logits, 5), logits)
    assert torch.equal(top_k_filter(logits, 50), logits)


@PROPERTY
@given(st.lists(st.floats(-20, 20, allow_nan=False), min_size=1, max_size=20, unique=True), st.data())
def test_top_k_filter_keeps_the_k_largest(values, data):
    k = data.draw(st.integers(1, len(values)))
    logits = torch.tensor([values], dtype=torch.float64)
    out = top_k_filter(logits, k)[0]
    kept = set(torch.nonzero(out.isfinite()).flatten().tolist())
    assert kept == set(sorted(range(len(values)), key=lambda i: -values[i])[:k])
    assert torch.equal(out[list(kept)], logits[0, list(kept)])  # kept logits unchanged


def test_top_p_filter_hand_computed():
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.2, 0.1]])
    logits = probs.log()
    kept = lambda p: top_p_filter(logits, p)[0].isfinite().nonzero().flatten().tolist()  # noqa: E731
    # sorted: 0.5 (1), 0.2 (3), 0.15 (0), 0.1 (4), 0.05 (2); cumulative 0.5 0.7 0.85 0.95 1.0
    assert kept(0.3) == [1]
    assert kept(0.5 - 1e-3) == [1]
    assert kept(0.6) == [1, 3]
    assert kept(0.8) == [0, 1, 3]
    assert kept(0.9) == [0, 1, 3, 4]
    assert kept(0.99) == [0, 1, 2, 3, 4]
    assert kept(1.0) == [0, 1, 2, 3, 4]
    out = top_p_filter(logits, 0.8)
    assert torch.equal(out[0, [0, 1, 3]], logits[0, [0, 1, 3]])
    assert out[0, 2] == NEG_INF and out[0, 4] == NEG_INF
    # rows are filtered independently
    two = torch.stack([logits[0], torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0])])
    assert top_p_filter(two, 0.6).isfinite().tolist() == [[False, True, False, True, False],
                                                          [False, False, False, False, True]]


@PROPERTY
@given(st.lists(st.floats(-8, 8, allow_nan=False), min_size=1, max_size=16), st.floats(0.001, 1.0))
def test_top_p_filter_keeps_the_smallest_sufficient_prefix(values, p):
    logits = torch.tensor([values], dtype=torch.float32)
    probs = torch.softmax(logits.double(), dim=-1)[0]
    order = sorted(range(len(values)), key=lambda i: -values[i])
    cumulative = torch.cumsum(probs[order], dim=0).tolist()
    # stay clear of float32 rounding at the boundary and of ties across it
    assume(all(abs(c - p) > 1e-5 for c in cumulative))
    m = next((j + 1 for j, c in enumerate(cumulative) if c >= p), len(values))
    if m < len(values):
        assume(values[order[m - 1]] - values[order[m]] > 1e-4)
    out = top_p_filter(logits, p)[0]
    kept = set(torch.nonzero(out.isfinite()).flatten().tolist())
    assert kept == set(order[:m])
    assert float(probs[list(kept)].sum()) >= p - 1e-5


def test_sample_next_greedy_rows_and_pad():
    logits = torch.tensor([[9.0, 1.0, 3.0, 2.0], [9.0, 5.0, 1.0, 2.0]])
    before = logits.clone()
    out = sample_next(logits, torch.tensor([0.0, 0.0]), None, None, None)
    assert out.tolist() == [2, 1]  # the argmax once PAD (id 0) is excluded
    assert torch.equal(logits, before)  # the caller's logits are left alone
    # greedy rows beside sampled rows
    g = torch.Generator().manual_seed(0)
    many = torch.stack([sample_next(logits, torch.tensor([0.0, 5.0]), None, None, g) for _ in range(200)])
    assert bool((many[:, 0] == 2).all())
    assert len(set(many[:, 1].tolist())) > 1 and PAD_ID not in many.tolist()


# -- generation ------------------------------------------------------------------------------


@torch.no_grad()
def test_greedy_equals_argmax_at_every_step():
    model = tiny_lm(cell="lstm")
    prompts = [[2, 5, 6, 7], [2, 3]]
    out = torch.stack(list(generate_tokens(model, prompts, SampleConfig(max_new_tokens=12, temperature=0.0))))
    # by hand: prefill each prompt, then feed back the argmax (PAD excluded)
    for i, p in enumerate(prompts):
        logits, state = model.prefill(torch.tensor([p]), torch.tensor([len(p)]))
        for t in range(12):
            logits[:, PAD_ID] = NEG_INF
            nxt = logits.argmax(-1)
            assert int(out[t, i]) == int(nxt)
            logits, state = model.step(nxt, state)
    assert len(set(out.flatten().tolist())) > 1  # not a degenerate constant


def test_seeded_sampling_is_reproducible():
    model = tiny_lm()
    prompts = [[2, 4], [2, 5, 6]]
    run = lambda seed, **kw: torch.stack(  # noqa: E731
        list(generate_tokens(model, prompts, SampleConfig(max_new_tokens=40, seed=seed, **kw))))
    a = run(1)
    assert a.shape == (40, 2) and a.dtype == torch.int64
    assert torch.equal(a, run(1))
    assert not torch.equal(a, run(2))
    assert torch.equal(run(3, top_k=3, top_p=0.9, temperature=0.8), run(3, top_k=3, top_p=0.9, temperature=0.8))


def test_pad_is_never_sampled():
    model = FixedLogits(torch.tensor([8.0, 0.0, 0.5, 0.0]))  # PAD by far the most likely
    samples = draw(model, 500, 4, temperature=1.5, seed=0)
    assert PAD_ID not in samples.tolist()
    assert set(samples.flatten().tolist()) == {1, 2, 3}
    greedy = draw(model, 3, 2, temperature=0.0)
    assert bool((greedy == 2).all())


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.5])
def test_sampling_frequencies_match_softmax(temperature):
    """N = 20000 draws; each token within 5 standard errors of softmax(logits / T)."""
    samples = draw(FixedLogits(LOGITS), 2000, 10, temperature=temperature, seed=11)
    assert samples.numel() == 20000
    assert_frequencies(samples, masked_softmax(LOGITS, temperature))


def test_sampling_frequencies_with_top_k_and_top_p():
    """N = 20000 draws each; the excluded tokens never appear, the others follow
    the renormalised distribution within 5 standard errors."""
    # top-k 3 of the non-PAD logits: ids 3 (2.0), 5 (1.5), 2 (1.0)
    probs = masked_softmax(LOGITS, 1.2)
    top3 = torch.zeros_like(probs)
    top3[[3, 5, 2]] = probs[[3, 5, 2]]
    samples = draw(FixedLogits(LOGITS), 2000, 10, temperature=1.2, top_k=3, seed=5)
    assert set(samples.flatten().tolist()) == {2, 3, 5}
    assert_frequencies(samples, top3 / top3.sum())
    # top-p: at T=1 the sorted non-PAD probabilities are 0.420 0.255 0.154 0.094 0.057 0.021 (PAD
    # excluded before the filter), so p = 0.7 keeps ids 3, 5, 2 and p = 0.5 keeps ids 3, 5
    probs = masked_softmax(LOGITS, 1.0)
    for p, keep in ((0.7, [3, 5, 2]), (0.5, [3, 5])):
        assert float(probs[keep[:-1]].sum()) < p <= float(probs[keep].sum())
        want = torch.zeros_like(probs)
        want[keep] = probs[keep]
        samples = draw(FixedLogits(LOGITS), 2000, 10, top_p=p, seed=6)
        assert set(samples.flatten().tolist()) == set(keep)
        assert_frequencies(samples, want / want.sum())


def test_per_row_temperatures():
    """Rows alternate T = 0.5 and T = 2.0 (10000 draws each, 5 standard errors);
    a row with T = 0 is greedy."""
    temps = [0.5, 2.0] * 1000
    samples = draw(FixedLogits(LOGITS), 2000, 10, temperature=temps, seed=2)
    assert_frequencies(samples[:, 0::2], masked_softmax(LOGITS, 0.5))
    assert_frequencies(samples[:, 1::2], masked_softmax(LOGITS, 2.0))
    mixed = draw(FixedLogits(LOGITS), 4, 50, temperature=torch.tensor([0.0, 1.0, 0.0, 1.0]), seed=3)
    assert bool((mixed[:, [0, 2]] == 3).all())
    assert len(set(mixed[:, 1].tolist())) > 2
    with pytest.raises(GenrnnError, match="3 temperatures for 4"):
        draw(FixedLogits(LOGITS), 4, 1, temperature=[1.0, 1.0, 0.5])


def test_generate_tokens_checks_its_input_and_restores_training_mode():
    model = tiny_lm().train()
    list(generate_tokens(model, [[2]], SampleConfig(max_new_tokens=3)))
    assert model.training
    assert list(generate_tokens(model, [[2]], SampleConfig(max_new_tokens=0))) == []
    with pytest.raises(GenrnnError, match="at least one token"):
        list(generate_tokens(model, [[2], []], SampleConfig()))
    with pytest.raises(GenrnnError, match="at least one token"):
        list(generate_tokens(model, [], SampleConfig()))
    for bad in (dict(temperature=-0.1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5),
                dict(max_new_tokens=-1), dict(temperature=[1.0, -1.0])):
        with pytest.raises(GenrnnError):
            SampleConfig(**bad).validate()


# -- text completion ----------------------------------------------------------------------------


@pytest.fixture()
def chars():
    return build_tokenizer("char", "abcdefghijklmnopqrstuvwxyz .,!")


def scripted(tokenizer, *texts: str, eos: Sequence[bool] = ()) -> Scripted:
    scripts: List[List[int]] = []
    for i, t in enumerate(texts):
        ids = tokenizer.encode(t)
        scripts.append(ids + [EOS_ID] if (eos[i] if i < len(eos) else True) else ids)
    return Scripted(scripts, tokenizer.vocab_size)


def run_complete(model, tokenizer, prompts, **kw):
    pieces = {i: [] for i in range(len(prompts))}
    stop = kw.pop("stop", ())
    config = SampleConfig(temperature=0.0, **kw)
    out = complete(model, tokenizer, prompts, config, stop=stop, on_text=lambda i, s: pieces[i].append(s))
    for i, c in enumerate(out):
        assert "".join(pieces[i]) == c.text  # the stream adds up to the result
        assert all(pieces[i])  # no empty pieces
    return out, pieces


def test_complete_stops_at_eos(chars):
    model = scripted(chars, "hi there", "ok")
    out, _ = run_complete(model, chars, ["ab", ""], max_new_tokens=50)
    assert [(c.prompt, c.text, c.tokens, c.finish_reason) for c in out] == [
        ("ab", "hi there", 9, "eos"),  # eight characters and the <eos>
        ("", "ok", 3, "eos"),
    ]
    # every prompt is read after <eos>, the beginning-of-document marker
    assert model.prefilled == [[EOS_ID] + chars.encode("ab"), [EOS_ID]]


def test_complete_length_limit(chars):
    model = scripted(chars, "abcdefghij", "ab", eos=[False, True])
    out, _ = run_complete(model, chars, ["x", "y"], max_new_tokens=6)
    assert (out[0].text, out[0].tokens, out[0].finish_reason) == ("abcdef", 6, "length")
    assert (out[1].text, out[1].tokens, out[1].finish_reason) == ("ab", 3, "eos")
    out, pieces = run_complete(model, chars, ["x"], max_new_tokens=0)
    assert (out[0].text, out[0].tokens, out[0].finish_reason) == ("", 0, "length")


def test_complete_stop_strings(chars):
    model = scripted(chars, "hello world, and more", "nothing here", "stop at once")
    out, pieces = run_complete(model, chars, ["a", "b", "c"], max_new_tokens=40, stop=["o w", "st"])
    assert (out[0].text, out[0].tokens, out[0].finish_reason) == ("hell", 7, "stop")  # "hello w" read
    assert (out[1].text, out[1].tokens, out[1].finish_reason) == ("nothing here", 13, "eos")
    assert (out[2].text, out[2].tokens, out[2].finish_reason) == ("", 2, "stop")


def test_complete_earliest_stop_string_wins(chars):
    model = scripted(chars, "hello world")
    out, _ = run_complete(model, chars, ["q"], max_new_tokens=40, stop=["wor", "llo"])
    assert (out[0].text, out[0].tokens, out[0].finish_reason) == ("he", 5, "stop")
    out, _ = run_complete(model, chars, ["q"], max_new_tokens=40, stop=["lo", "hello"])
    assert (out[0].text, out[0].finish_reason) == ("", "stop")


def test_complete_streams_with_held_back_text(chars):
    """Text that could still become a stop string is held back, then released."""
    model = scripted(chars, "abab abx abc tail", "ab")
    out, pieces = run_complete(model, chars, ["", ""], max_new_tokens=40, stop=["abc"])
    assert (out[0].text, out[0].finish_reason) == ("abab abx ", "stop")
    assert (out[1].text, out[1].finish_reason) == ("ab", "eos")
    # the pieces never ran ahead into the stop string: each prefix is a prefix of the result
    shown = ""
    for piece in pieces[0]:
        shown += piece
        assert out[0].text.startswith(shown)
    assert len(pieces[0]) > 1  # it did stream, not only flush at the end
    # without stop strings every character is passed on as soon as it is made
    out, pieces = run_complete(model, chars, ["", ""], max_new_tokens=40)
    assert pieces[0] == list("abab abx abc tail")
    assert out[0].text == "abab abx abc tail"


def test_complete_with_a_real_model_is_reproducible(chars):
    model = tiny_lm(vocab_size=chars.vocab_size)
    config = SampleConfig(max_new_tokens=25, seed=4, temperature=1.0)
    a = complete(model, chars, ["ab", "c", ""], config)
    b = complete(model, chars, ["ab", "c", ""], config)
    assert [c.text for c in a] == [c.text for c in b]
    for c in a:
        assert c.finish_reason in ("eos", "length")
        assert 1 <= c.tokens <= 25
        assert (c.tokens == 25) == (c.finish_reason == "length")
        assert len(c.text) == c.tokens - (c.finish_reason == "eos")  # one char per token

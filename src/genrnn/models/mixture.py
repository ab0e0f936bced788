"""The RNN interpolated with the Kneser-Ney n-gram model (model type ``mixture``).

    p(w | h) = weight * p_rnn(w | h) + (1 - weight) * p_kn(w | h)

the classic RNN + KN interpolation (Mikolov et al. 2011, "Empirical
evaluation and combination of advanced language modeling techniques": on
PTB it beats both models alone). The n-gram part is *fitted* on the training
tokens before the first step (:meth:`fit`); the RNN part is *trained*: in
training mode ``forward`` is the RNN's alone, so the optimiser sees the
RNN's own loss and no n-gram work is done per step. The weight is fitted on
validation data (:meth:`calibrate`, called by the trainer at every
evaluation): the loss is convex in it, and the search includes both ends,
so on the data it was fitted on the mixture is never worse than either part.
In eval mode ``forward``, ``prefill`` and ``step`` return the mixture's
log-probabilities as logits, so evaluation, sampling, beam search and the
server use it like any model. The state is the pair (the RNN's state, the
n-gram's history); both keep the batch in dimension 1.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..errors import GenrnnError
from .markov import MarkovLM
from .rnn import RNNLM


def fit_weight(a: torch.Tensor, b: torch.Tensor, iters: int = 60) -> Tuple[float, float]:
    """The weight w in [0, 1] that minimises the mean of
    -log(w exp(a) + (1 - w) exp(b)) over per-token log-probabilities ``a``
    (the RNN's) and ``b`` (the n-gram's), and that mean. The objective is
    convex in w; its derivative is bisected, and both ends are candidates."""
    a, b = a.double().flatten(), b.double().flatten()
    if a.numel() == 0:
        return 1.0, 0.0

    def loss(w: float) -> float:
        if w >= 1.0:
            return float(-a.mean())
        if w <= 0.0:
            return float(-b.mean())
        return float(-torch.logaddexp(a + math.log(w), b + math.log1p(-w)).mean())

    def slope(w: float) -> float:  # d loss / d w = -mean((pa - pb) / (w pa + (1 - w) pb))
        m = torch.logaddexp(a + math.log(w), b + math.log1p(-w))
        return float(-((a - m).exp() - (b - m).exp()).mean())

    lo, hi = 1e-9, 1.0 - 1e-9
    if slope(lo) >= 0:
        w = 0.0
    elif slope(hi) <= 0:
        w = 1.0
    else:
        for _ in range(iters):
            mid = 0.5 * (lo + hi)
            if slope(mid) < 0:
                lo = mid
            else:
                hi = mid
        w = 0.5 * (lo + hi)
    best = min((loss(x), x) for x in (w, 0.0, 1.0))
    return best[1], best[0]


class MixtureLM(nn.Module):
    """An RNN language model and an n-gram model of ``config.order``, mixed
    with one weight (a buffer, saved with the weights)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.condition != "none":
            raise GenrnnError("the mixture mixes a language model with an n-gram model, which takes no condition; "
                              "a conditioned run uses --model rnn")
        self.config = config
        self.vocab_size = int(config.vocab_size)
        self.rnn = RNNLM(replace(config, type="rnn"))
        self.ngram = MarkovLM(replace(config, type="markov"))
        self.register_buffer("weight", torch.ones((), dtype=torch.float32))  # of the RNN; 1 until calibrated
        self._ngram_cache: Dict[Any, torch.Tensor] = {}

    # -- the fitted parts --------------------------------------------------------------

    def fit(self, token_arrays) -> None:
        """Fit the n-gram part on the training tokens (see ``MarkovLM.fit``)."""
        self.ngram.fit(token_arrays)
        self._ngram_cache.clear()

    def prepare_load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.ngram.prepare_load({k[len("ngram."):]: v for k, v in tensors.items() if k.startswith("ngram.")})
        self._ngram_cache.clear()

    @torch.inference_mode()
    def calibrate(self, eval_set, runtime, max_tokens: Optional[int] = None) -> Dict[str, float]:
        """Fit the weight on ``eval_set`` and return the validation figures:
        ``loss`` (the mixture's, nats/token) and those of its parts,
        ``rnn_loss`` and ``baseline_loss``, with ``weight``. The n-gram's
        log-probabilities are computed once per evaluation set and kept."""
        from ..evaluate import target_logprobs  # evaluate imports the models' package

        b = self._ngram_logprobs(eval_set, runtime, max_tokens)
        a = target_logprobs(self.rnn, eval_set, runtime, max_tokens)
        w, loss = fit_weight(a, b)
        self.weight.fill_(w)
        return {"loss": loss, "rnn_loss": float(-a.double().mean()), "baseline_loss": float(-b.double().mean()),
                "weight": w, "tokens": int(a.numel())}

    def baseline_loss(self, eval_set, runtime, max_tokens: Optional[int] = None) -> Tuple[float, int]:
        """The n-gram part's validation loss (nats/token) and token count; its
        log-probabilities are kept for :meth:`calibrate`, so the trainer's
        start-of-run report pays for the n-gram pass once, before the clock."""
        b = self._ngram_logprobs(eval_set, runtime, max_tokens)
        return float(-b.double().mean()), int(b.numel())

    def _ngram_logprobs(self, eval_set, runtime, max_tokens: Optional[int]) -> torch.Tensor:
        from ..evaluate import target_logprobs

        key = (id(eval_set), max_tokens)
        if key not in self._ngram_cache:
            self._ngram_cache[key] = target_logprobs(self.ngram, eval_set, runtime, max_tokens)
        return self._ngram_cache[key]

    # -- the model protocol -------------------------------------------------------------

    def _mix(self, rnn_logits: torch.Tensor, ngram_logp: torch.Tensor) -> torch.Tensor:
        w = float(self.weight)
        rnn_logp = F.log_softmax(rnn_logits.float(), dim=-1)
        if w >= 1.0:
            return rnn_logp
        if w <= 0.0:
            return ngram_logp.float()
        return torch.logaddexp(rnn_logp + math.log(w), ngram_logp.float() + math.log1p(-w))

    @staticmethod
    def _parts(state):
        return (None, None) if state is None else state

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, state=None):
        s_rnn, s_kn = self._parts(state)
        logits, loss, s_rnn = self.rnn(idx, targets, s_rnn)
        if self.training:  # the RNN is what is trained; the n-gram history still follows the text
            return logits, loss, (s_rnn, self.ngram.advance(idx, s_kn))
        logp_kn, _, s_kn = self.ngram(idx, None, s_kn)
        out = self._mix(logits, logp_kn)
        if targets is not None:
            loss = F.nll_loss(out.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return out, loss, (s_rnn, s_kn)

    def prefill(self, idx: torch.Tensor, lengths: torch.Tensor, state=None):
        s_rnn, s_kn = self._parts(state)
        logits, s_rnn = self.rnn.prefill(idx, lengths, s_rnn)
        logp_kn, s_kn = self.ngram.prefill(idx, lengths, s_kn)
        return self._mix(logits, logp_kn), (s_rnn, s_kn)

    def step(self, idx: torch.Tensor, state):
        s_rnn, s_kn = self._parts(state)
        logits, s_rnn = self.rnn.step(idx, s_rnn)
        logp_kn, s_kn = self.ngram.step(idx, s_kn)
        return self._mix(logits, logp_kn), (s_rnn, s_kn)

    def split_state(self, state):
        """The RNN part's (cells' state, context), for inspection."""
        return self.rnn.split_state(self._parts(state)[0])

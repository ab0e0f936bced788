"""Held-out loss, perplexity and bits per character.

All figures are token-weighted over the whole split: the summed negative
log-likelihood (nats) divided by the number of targets. Bits per character
works for any tokenizer: total nats / characters / ln 2, where characters are
those of the evaluated text (see ``data.count_chars``).
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import IGNORE, EvalSet
from .distributed import Dist
from . import faults
from .state import detach_state, start
from .runtime import Runtime


def _scored(model: nn.Module, eval_set: EvalSet, runtime: Runtime, max_tokens: Optional[int], dist: Dist):
    """(logits (B, T, V) as float32, targets (B, T)) of this rank's rows of every
    evaluation batch, the state carried and started as in training."""
    was_training = model.training
    model.eval()
    state = None
    try:
        for batch in eval_set.batches(max_tokens):
            rows = slice(dist.rank, None, dist.world_size)
            x, y, condition = batch.x[rows], batch.y[rows], batch.condition
            if x.shape[0] == 0:  # fewer rows than ranks
                continue
            x, y = x.to(runtime.device), y.to(runtime.device)
            with runtime.autocast():
                if batch.reset:  # the initial state, from the rows' conditions (None: zeros)
                    state = start(model, None if condition is None else condition[rows].to(runtime.device))
                logits, _, state = model(x, None, state)
            state = detach_state(state)
            faults.point("eval")
            yield logits.float(), y
    finally:
        model.train(was_training)


@torch.inference_mode()
def evaluate(model: nn.Module, eval_set: EvalSet, runtime: Runtime, max_tokens: Optional[int] = None,
             dist: Optional[Dist] = None) -> Dict[str, float]:
    """Return ``loss`` (nats/token), ``perplexity``, ``bits_per_char``,
    ``tokens`` and ``chars``. With ``max_tokens`` only the start of the split is
    read and ``bits_per_char`` uses the whole split's chars-per-token ratio.

    Under torchrun (``dist``), each rank scores every ``world_size``-th row of
    each batch (a fixed set of lanes, so the carried state stays its own) and
    the sums are all-reduced: every rank returns the figures of the whole split."""
    dist = dist or Dist()
    total_nats, total_tokens = 0.0, 0
    for logits, y in _scored(model, eval_set, runtime, max_tokens, dist):
        total_nats += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"))
        total_tokens += int((y != IGNORE).sum())
    total_nats, total_tokens = dist.sum([total_nats, float(total_tokens)], runtime.device)
    total_tokens = int(total_tokens)
    return summarize(total_nats, total_tokens, eval_set.num_chars * total_tokens / max(1, eval_set.num_targets))


@torch.inference_mode()
def target_logprobs(model: nn.Module, eval_set: EvalSet, runtime: Runtime,
                    max_tokens: Optional[int] = None) -> torch.Tensor:
    """The log-probability of every target of the split (padding left out), in
    a fixed order, on the CPU: what a mixture's weight is fitted on."""
    out = []
    for logits, y in _scored(model, eval_set, runtime, max_tokens, Dist()):
        keep = y != IGNORE
        lp = F.log_softmax(logits, dim=-1).gather(-1, y.clamp_min(0)[..., None])[..., 0]
        out.append(lp[keep].cpu())
    return torch.cat(out) if out else torch.zeros(0)


def summarize(total_nats: float, tokens: int, chars: float) -> Dict[str, float]:
    loss = total_nats / max(1, tokens)
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "bits_per_char": total_nats / max(1.0, chars) / math.log(2),
        "tokens": tokens,
        "chars": int(round(chars)),
    }

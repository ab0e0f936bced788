"""The output layer of a recurrent model: a full softmax or an adaptive one.

A word model's cost is its output layer: a 10k-word vocabulary makes the
(hidden x vocabulary) product most of every step. The adaptive softmax
(Grave et al. 2017, "Efficient softmax approximation for GPUs";
``nn.AdaptiveLogSoftmaxWithLoss``) gives the most frequent tokens a full
row each (the head) and puts the rare ones in clusters behind a narrower
projection, so training computes the rare tokens' scores only for the
targets that are rare. It needs the vocabulary ordered by frequency, which
the word tokenizers' is (specials, then most frequent first).

Training uses its cheap loss; everything else (evaluation, sampling, beam
search, the server) gets the exact log-probabilities of the distribution it
defines over the whole vocabulary (``log_prob``), which the callers treat as
logits: their log-softmax is themselves.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import GenrnnError

FIRST_CUTOFF = 2000  # "auto": the head holds the 2,000 most frequent tokens (a full softmax up to 2,000) ...
GROWTH = 5  # ... and each further cluster is 5x as far down the list
DIV_VALUE = 4.0  # each cluster's projection is 4x narrower than the last (PyTorch's default)


def cutoffs(spec: str, vocab_size: int) -> List[int]:
    """The cluster boundaries for ``spec`` ("auto" or "2000,10000") and a
    vocabulary of ``vocab_size`` tokens; a clear error where they do not fit.
    "auto" gives none (a full softmax) for a vocabulary of 2,000 tokens or
    fewer, where a head would hold nearly everything anyway."""
    if spec == "auto":
        if vocab_size <= FIRST_CUTOFF:
            return []
        out, c = [], FIRST_CUTOFF
        while c < vocab_size:
            out.append(c)
            c *= GROWTH
    else:
        try:
            out = [int(part) for part in spec.split(",")]
        except ValueError:
            raise GenrnnError(f"--adaptive-softmax takes 'auto' or increasing token counts such as 2000,10000; "
                              f"got {spec!r}") from None
    if not out or any(b <= a for a, b in zip(out, out[1:])) or out[0] < 1 or out[-1] >= vocab_size:
        raise GenrnnError(f"--adaptive-softmax {spec}: the cutoffs must increase and lie between 1 and the "
                          f"vocabulary size minus 1 ({vocab_size - 1})")
    return out


def build(hidden_size: int, vocab_size: int, adaptive: str) -> nn.Module:
    bounds = cutoffs(adaptive, vocab_size) if adaptive else []
    if not bounds:
        return nn.Linear(hidden_size, vocab_size)
    return nn.AdaptiveLogSoftmaxWithLoss(hidden_size, vocab_size, bounds, div_value=DIV_VALUE)


def scores(head: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """(..., H) -> (..., V): logits of a full softmax, exact log-probabilities
    of an adaptive one."""
    if isinstance(head, nn.Linear):
        return F.linear(h, head.weight, head.bias)
    with torch.autocast(h.device.type, enabled=False):  # float32: its parts mix dtypes under autocast
        flat = head.log_prob(h.reshape(-1, h.shape[-1]).float())
    return flat.view(*h.shape[:-1], flat.shape[-1])


def training_loss(head: nn.Module, h: torch.Tensor, targets: torch.Tensor) -> Optional[torch.Tensor]:
    """An adaptive softmax's mean cross-entropy over the targets that are not
    -100, computed without the full logits; None for a full softmax, whose
    loss comes from its logits."""
    if isinstance(head, nn.Linear):
        return None
    keep = targets.flatten() != -100
    with torch.autocast(h.device.type, enabled=False):  # float32, as in scores()
        return head(h.flatten(0, 1)[keep].float(), targets.flatten()[keep]).loss

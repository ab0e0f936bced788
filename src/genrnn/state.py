"""Recurrent state: the one place that knows how to walk, cut, pick and join it.

A model's state is any nesting of tuples (or lists) of tensors, or None for
"start from zeros". Every tensor in it has the batch in dimension 1 -- the
RNN's ``(layers, B, H)``, a carried condition's ``(1, B, C)``, the Markov
model's ``(1, B, order - 1)``, a sequence-to-sequence model's memory
``(S, B, H)`` and mask ``(S, B)`` -- so the trainer, evaluation, generation, the
serving engine and DDP can detach it, select or join rows, and shard it
without knowing what it holds.

Conditions (label ids, vectors, images: what a conditioned model starts
from) are plain tensors with the batch in dimension 0, like the token ids.
:func:`start` turns them into a model's initial state.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn

from .errors import GenrnnError

State = Any  # None, a tensor, or a tuple of states

BATCH_DIM = 1


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor of a state, keeping its nesting."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(map_state(fn, s) for s in state)
    return fn(state)


def detach_state(state: State) -> State:
    """Cut the graph between windows (truncated backpropagation through time)."""
    return map_state(lambda s: s.detach(), state)


def select_rows(state: State, index: Union[torch.Tensor, slice, Sequence[int]]) -> State:
    """Rows ``index`` of the batch (an index tensor, a list or a slice)."""
    if isinstance(index, slice):
        return map_state(lambda s: s[:, index], state)
    return map_state(lambda s: s.index_select(BATCH_DIM, torch.as_tensor(index, dtype=torch.long, device=s.device)),
                     state)


def cat_rows(a: State, b: State) -> State:
    """``a``'s rows, then ``b``'s. Two states of one model have the same nesting.

    Tensors that differ in another dimension than the batch (a sequence-to-
    sequence model's memory (S, B, H) of sources of different lengths) are
    zero-padded to the larger; a model marks such padding with zeros (the
    memory's mask is 1 at real positions)."""
    if a is None or b is None:
        if a is None and b is None:
            return None
        raise ValueError("cannot join a zero (None) state with a real one; start both from model.start()")
    if isinstance(a, (tuple, list)):
        return tuple(cat_rows(x, y) for x, y in zip(a, b))
    if a.shape[:BATCH_DIM] + a.shape[BATCH_DIM + 1 :] != b.shape[:BATCH_DIM] + b.shape[BATCH_DIM + 1 :]:
        a, b = _pad_to(a, b), _pad_to(b, a)
    return torch.cat([a, b], dim=BATCH_DIM)


def _pad_to(x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``x`` zero-padded at the end of every dimension but the batch to ``other``'s size where larger."""
    pad = []
    for d in reversed(range(x.dim())):
        pad += [0, 0 if d == BATCH_DIM else max(0, other.shape[d] - x.shape[d])]
    return torch.nn.functional.pad(x, pad) if any(pad) else x


def batch_size(state: State) -> Optional[int]:
    """Rows in a state (None for a zero state)."""
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        for s in state:
            n = batch_size(s)
            if n is not None:
                return n
        return None
    return int(state.shape[BATCH_DIM])


def from_saved(obj: Any) -> State:
    """A state read back from ``resume.pt`` (lists there become tuples again)."""
    if isinstance(obj, (tuple, list)):
        return tuple(from_saved(o) for o in obj)
    return obj


def start(model: nn.Module, condition: Optional[torch.Tensor]) -> State:
    """The initial state of a batch: ``model.start(condition)``, or zeros
    (None) for a batch without one. A model that takes no condition may have
    no ``start``; giving it a condition is then a user error."""
    fn = getattr(model, "start", None)
    if condition is None:
        return fn(None) if fn is not None else None
    if fn is None:
        raise GenrnnError("this model takes no condition (it was trained without --condition-field, "
                          "--condition-vectors, --image-field or --image-features)")
    return fn(condition)


def stack_conditions(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """One condition tensor from per-row ones (no batch dimension), zero-padded
    to the largest where their shapes differ (source sentences of different
    lengths: 0 is ``<pad>``)."""
    shape = [max(r.shape[d] for r in rows) for d in range(rows[0].dim())]
    out = rows[0].new_zeros([len(rows)] + shape)
    for i, r in enumerate(rows):
        out[(i,) + tuple(slice(0, n) for n in r.shape)] = r
    return out


def select_condition(condition: Optional[torch.Tensor], rows: Union[torch.Tensor, slice, Sequence[int]]):
    """Rows of a condition tensor (batch in dimension 0), or None."""
    if condition is None:
        return None
    if isinstance(rows, slice):
        return condition[rows]
    return condition.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=condition.device))

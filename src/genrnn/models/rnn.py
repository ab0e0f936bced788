"""Recurrent language model: (embedding | one-hot) -> RNN/LSTM/GRU -> linear.

Uses PyTorch's fused ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (cuDNN on GPU, oneDNN on
CPU) with ``batch_first=True``. With ``embedding_size=0`` the input is a one-hot
vector, exactly the lesson's model (``nn.LSTM(vocab, 64)`` + Linear).

The recurrent state is an ``(h, c)`` tuple for LSTM and a tensor ``h`` for GRU
and RNN, each ``(num_layers, B, hidden_size)``.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..config import ModelConfig

State = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], None]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def map_state(fn: Callable[[torch.Tensor], torch.Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor of a recurrent state."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)  # type: ignore[return-value]
    return fn(state)


def detach_state(state: State) -> State:
    """Cut the graph between windows (truncated backpropagation through time)."""
    return map_state(lambda s: s.detach(), state)


class StackedRNN(nn.Module):
    """``num_layers`` single-layer cells with dropout between them, a drop-in
    for ``nn.LSTM(..., num_layers, dropout=p, batch_first=True)``.

    Used when there is inter-layer dropout. cuDNN's fused multi-layer kernels
    draw that dropout from a random state of their own that cannot be saved,
    so a run resumed on CUDA would not continue the way it would have; here
    the masks come from PyTorch's generator, which the checkpoint restores.
    """

    def __init__(self, cell: type, input_size: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            cell(input_size if i == 0 else hidden_size, hidden_size, num_layers=1, batch_first=True)
            for i in range(num_layers)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x, state: State = None):
        finals = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = x._replace(data=self.drop(x.data)) if isinstance(x, PackedSequence) else self.drop(x)
            layer_state = map_state(lambda s: s[i : i + 1], state)  # (1, B, H) slices of (L, B, H)
            x, layer_state = layer(x, layer_state)
            finals.append(layer_state)
        if isinstance(finals[0], tuple):  # LSTM: (h, c)
            return x, tuple(torch.cat(parts) for parts in zip(*finals))
        return x, torch.cat(finals)


class RNNLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        V, E, H = config.vocab_size, config.embedding_size, config.hidden_size
        self.embedding = nn.Embedding(V, E) if E > 0 else None
        self.drop = nn.Dropout(config.dropout)
        cell, in_size, L = _CELLS[config.cell], (E if E > 0 else V), config.num_layers
        if config.dropout > 0 and L > 1:
            self.rnn = StackedRNN(cell, in_size, H, L, config.dropout)
        else:  # one fused call for all layers (cuDNN / oneDNN)
            self.rnn = cell(input_size=in_size, hidden_size=H, num_layers=L, batch_first=True)
        self.head = nn.Linear(H, V)
        if config.tie_weights:  # Press & Wolf 2017; sizes checked in ModelConfig.validate
            self.head.weight = self.embedding.weight

    def _inputs(self, idx: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            # the lesson's one-hot input; float32 even under autocast is fine
            x = F.one_hot(idx, self.config.vocab_size).to(self.head.weight.dtype)  # (B, T, V)
        else:
            x = self.embedding(idx)  # (B, T, E)
        return self.drop(x)

    def forward(
        self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, state: State = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], State]:
        out, state = self.rnn(self._inputs(idx), state)  # (B, T, H)
        logits = self.head(self.drop(out))  # (B, T, V)
        loss = None
        if targets is not None:
            # loss in float32 even under bf16 autocast; -100 marks padding
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss, state

    def prefill(
        self, idx: torch.Tensor, lengths: torch.Tensor, state: State = None
    ) -> Tuple[torch.Tensor, State]:
        """Run right-padded prompts ``idx`` (B, T) of ``lengths`` (B,) as one batch."""
        x = self._inputs(idx)
        if bool((lengths == idx.shape[1]).all()):  # no padding: skip the packing
            out, state = self.rnn(x, state)
            return self.head(out[:, -1]), state
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed, state)  # the state is taken after each row's own last token
        out, _ = pad_packed_sequence(out, batch_first=True)  # (B, T, H)
        last = out[torch.arange(idx.shape[0], device=idx.device), lengths.to(idx.device) - 1]  # (B, H)
        return self.head(last), state

    def step(self, idx: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One generation step: ``idx`` (B,) -> logits (B, V)."""
        out, state = self.rnn(self._inputs(idx[:, None]), state)  # (B, 1, H)
        return self.head(out[:, 0]), state

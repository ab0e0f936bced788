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
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

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


class RNNLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        V, E, H = config.vocab_size, config.embedding_size, config.hidden_size
        self.embedding = nn.Embedding(V, E) if E > 0 else None
        self.drop = nn.Dropout(config.dropout)
        self.rnn = _CELLS[config.cell](
            input_size=E if E > 0 else V,
            hidden_size=H,
            num_layers=config.num_layers,
            batch_first=True,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
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

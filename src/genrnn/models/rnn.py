"""Recurrent language model: (embedding | one-hot) -> RNN/LSTM/GRU -> linear.

Uses PyTorch's fused ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (cuDNN on GPU, oneDNN on
CPU) with ``batch_first=True``. With ``embedding_size=0`` the input is a one-hot
vector, exactly the lesson's model (``nn.LSTM(vocab, 64)`` + Linear).

The recurrent state is an ``(h, c)`` tuple for LSTM and a tensor ``h`` for GRU
and RNN, each ``(num_layers, B, hidden_size)``.

Generation does not call those modules for its one-token steps: :meth:`RNNLM.step`
computes the cell update itself from the same parameters (see
:func:`_cell_step`), because the fused modules' fixed cost per call dominates a
single time step. Training, evaluation and ``prefill`` keep the fused modules.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

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


# (weight_ih, weight_hh, bias_ih, bias_hh) of one layer
LayerParams = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _gates(x: Optional[torch.Tensor], w_ih: torch.Tensor, b_ih: torch.Tensor,
           x_proj: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x @ w_ih.T + b_ih``, or ``x_proj`` where the caller has it already
    (the first layer's rows, gathered from the weights by token id)."""
    return x_proj if x_proj is not None else torch.addmm(b_ih, x, w_ih.t())


def _cell_step(cell: str, nonlinearity: str, params: LayerParams, x: Optional[torch.Tensor],
               h: torch.Tensor, c: Optional[torch.Tensor], x_proj: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One time step of one layer, as ``nn.LSTM``/``nn.GRU``/``nn.RNN`` define it
    (same gate order, same two biases), for inputs ``x`` (B, I) and state ``h``
    (and ``c``) (B, H). Returns the new ``h`` (and ``c``; None for GRU/RNN).

    Every operation is out of place, type-promoting and differentiable, so it
    runs under autocast (the matrix products in bf16/fp16, as the fused module
    would) and on any device. ``x_proj`` replaces ``x @ w_ih.T + b_ih``.
    """
    w_ih, w_hh, b_ih, b_hh = params
    H = h.shape[-1]
    gi = _gates(x, w_ih, b_ih, x_proj)
    gh = torch.addmm(b_hh, h, w_hh.t())
    if cell == "lstm":  # gates i, f, g, o
        gates = gi + gh
        s = torch.sigmoid(gates)  # the g quarter is not used; one call beats three on (B, H)
        c_new = torch.addcmul(s[:, H : 2 * H] * c, s[:, :H], torch.tanh(gates[:, 2 * H : 3 * H]))
        return s[:, 3 * H :] * torch.tanh(c_new), c_new
    if cell == "gru":  # gates r, z, n; n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
        rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])
        n = torch.tanh(torch.addcmul(gi[:, 2 * H :], rz[:, :H], gh[:, 2 * H :]))
        return n + rz[:, H:] * (h - n), None  # (1 - z) * n + z * h
    pre = gi + gh
    return (torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)), None


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
        first = self.rnn.layers[0] if isinstance(self.rnn, StackedRNN) else self.rnn
        self._nonlinearity: str = getattr(first, "nonlinearity", "tanh")

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
        """One generation step: ``idx`` (B,) -> logits (B, V).

        Computes the cell update with a few matrix products and elementwise
        operations per layer instead of calling the fused module: for one time
        step the fused module's fixed cost per call dominates (oneDNN's above
        all). Measured side by side on 2 CPU cores (``benchmarks/sampling.py``,
        ``benchmarks/results/sampling.md``), a step of the 2x256 LSTM at
        batch 1 took FIXME. The result equals the module's within float
        rounding (``tests/test_fast_step.py``). In training mode with dropout
        the module runs, so that the dropout masks are drawn as in training.
        """
        if self.training and self.config.dropout > 0:
            out, state = self.rnn(self._inputs(idx[:, None]), state)  # (B, 1, H)
            return self.head(out[:, 0]), state
        return self._fast_step(idx, state)

    def _layer_params(self) -> List[LayerParams]:
        """Each layer's (weight_ih, weight_hh, bias_ih, bias_hh), fused or stacked."""
        if isinstance(self.rnn, StackedRNN):
            return [(m.weight_ih_l0, m.weight_hh_l0, m.bias_ih_l0, m.bias_hh_l0) for m in self.rnn.layers]
        p = self.rnn._parameters
        return [(p[f"weight_ih_l{i}"], p[f"weight_hh_l{i}"], p[f"bias_ih_l{i}"], p[f"bias_hh_l{i}"])
                for i in range(self.config.num_layers)]

    def _fast_step(self, idx: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        cell, L, H = self.config.cell, self.config.num_layers, self.config.hidden_size
        layers = self._layer_params()
        w_ih0, _, b_ih0, _ = layers[0]
        if state is None:
            zeros = w_ih0.new_zeros(L, idx.shape[0], H)
            state = (zeros, zeros) if cell == "lstm" else zeros
        h, c = state if isinstance(state, tuple) else (state, None)
        x_proj = None
        if self.embedding is None:  # one-hot @ W_ih.T is a gather of W_ih's columns
            x_proj = w_ih0.t()[idx] + b_ih0
            x = None
        else:
            x = self.embedding(idx)
        hs: List[torch.Tensor] = []
        cs: List[torch.Tensor] = []
        for i, params in enumerate(layers):
            x, c_i = _cell_step(cell, self._nonlinearity, params, x, h[i], None if c is None else c[i],
                                x_proj if i == 0 else None)
            hs.append(x)
            if c_i is not None:
                cs.append(c_i)
        logits = F.linear(x, self.head.weight, self.head.bias)
        h_new = hs[0][None] if L == 1 else torch.stack(hs)
        if cell != "lstm":
            return logits, h_new
        return logits, (h_new, cs[0][None] if L == 1 else torch.stack(cs))

"""Recurrent language model: (embedding | one-hot) -> RNN/LSTM/GRU -> softmax layer.

Uses PyTorch's fused ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (cuDNN on GPU, oneDNN on
CPU) with ``batch_first=True``. With ``embedding_size=0`` the input is a one-hot
vector, exactly the lesson's model (``nn.LSTM(vocab, 64)`` + Linear). The
output layer is a linear one or an adaptive softmax (:mod:`.output`).

The recurrent state is an ``(h, c)`` tuple for LSTM and a tensor ``h`` for GRU
and RNN, each ``(num_layers, B, hidden_size)``.

A conditioned model (``condition`` label, vector or image) has a condition
encoder (:mod:`.encoders`); :meth:`RNNLM.start` maps the condition's embedding
(B, C) through a learned layer to the initial state of every layer. With
``condition_every_step`` the embedding is also concatenated to the input at
every step, and then it rides in the state, ``(rnn_state, embedding (1, B, C))``,
so that ``step`` needs nothing but the state (and row selection keeps each
row's own condition).

A sequence-to-sequence model is the same decoder conditioned on a source
sentence (``condition`` text): the encoder is an RNN (:class:`.encoders.TextEncoder`)
whose final state sets the decoder's initial state. With ``attention`` its
outputs at every source position, the memory (S, B, H), and their mask
(S, B) (1 at real tokens, 0 at padding) ride in the state too, and after
the decoder's top layer each step attends over them (Luong et al. 2015,
"general" score ``h W m``, output ``tanh(W_c [context; h])``). Luong's
rather than Bahdanau's because the attention comes after the recurrence:
training runs the decoder as one fused RNN call over the whole target and
the attention as one batched product, where Bahdanau's feeds each step's
context into the next step's input and needs a Python loop over time.

Generation does not call those modules for its one-token steps: :meth:`RNNLM.step`
computes the cell update itself from the same parameters (see
:func:`_cell_update`), because the fused modules' fixed cost per call dominates
a single time step. Training, evaluation and ``prefill`` keep the fused modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..config import ModelConfig
from ..errors import GenrnnError
from ..state import map_state
from . import output
from .encoders import ENCODERS

State = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], None]

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


# (weight_ih, weight_hh, bias_ih, bias_hh) of one layer
LayerParams = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

# The first layer's input projection is tabulated per token id (V x 4H for an
# LSTM) only up to this many elements (16 MiB in float32): a character model's
# table is tiny, a large word vocabulary's would not be.
_TABLE_MAX_ELEMENTS = 1 << 22


class _ParamNames(dict):
    """Layer i -> the fused module's names of its four parameters."""

    def __missing__(self, i: int) -> Tuple[str, ...]:
        names = self[i] = tuple(f"{k}_l{i}" for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        return names


_PARAM_NAMES = _ParamNames()


# Up to this batch size a step multiplies by transposed, contiguous copies of
# the weights; above it by the parameters themselves (see _StepWeights).
_COPY_MAX_BATCH = 2

# On CPU, from this much work per step -- batch x hidden size x threads (more
# than 2 threads count as 2, the most measured) -- oneDNN's fused LSTM/GRU cell
# beats the step written out here, if oneDNN is on. Measured side by side,
# median of 11 steps, fast / oneDNN module, ms: 2 threads, 2x256 batch 64 1.22
# / 1.28, batch 128 2.33 / 2.21, batch 256 3.93 / 3.57; 3x512 batch 32 4.58 /
# 5.26, batch 64 10.5 / 9.2, batch 256 27.5 / 20.5. 1 thread: 2x256 batch 128
# 3.33 / 3.37, batch 256 6.83 / 6.22; 3x512 batch 128 19.4 / 20.9, batch 256
# 37.0 / 34.6. Below it oneDNN's fixed cost per call loses (batch 1: 6x slower).
_ONEDNN_MIN_WORK = 1 << 16


@dataclass
class _StepWeights:
    """What :meth:`RNNLM.step` multiplies with, derived from the parameters once
    and kept until they change (``key``).

    * ``w_ih``/``w_hh``: each layer's weights as (in, gates) matrices. Which
      layout is faster depends on the batch. Measured side by side, whole
      steps, 2 threads on this project's 2-core machine, median of 9 (3x512
      LSTM, then 2x256), transposed contiguous copies against the parameters'
      transposed views (``addmm(b, x, w.t())``): batch 1 1.14 vs 2.29 ms
      (0.154 vs 0.170), batch 2 1.86 vs 4.07 ms (0.226 vs 0.260), batch 4
      4.16 vs 3.75 ms (0.382 vs 0.373), batch 64 9.05 vs 7.97 ms (2.16 vs
      2.04). A product with one or two rows streams the whole matrix, and MKL
      streams the (in, gates) layout faster; larger products favour the
      parameters' own layout. So the copies (``copies()``, made on first use:
      as much memory as the recurrent weights once more) serve batches up to
      :data:`_COPY_MAX_BATCH`, and the views (free) the rest.
    * ``bias``: ``b_ih + b_hh`` for LSTM/RNN (one addition less per step), just
      ``b_ih`` for GRU, whose ``b_hn`` sits inside ``r * (...)``; ``bias_hh``
      is ``b_hh`` for GRU.
    * ``table``: for the first layer, ``input(token) @ W_ih.T + bias`` for every
      token (the one-hot input's is W_ih's columns), so the embedding lookup
      and the first input product become one row gather; None where it would
      be large (:data:`_TABLE_MAX_ELEMENTS`).
    """

    key: tuple
    table: Optional[torch.Tensor]
    w_ih: List[torch.Tensor]  # views of the parameters, (in, gates)
    w_hh: List[torch.Tensor]
    bias: List[torch.Tensor]
    bias_hh: List[torch.Tensor]
    w_cond: Optional[torch.Tensor] = None  # (C, gates): layer 0's weights for a condition fed at every step
    _copies: Optional[Tuple[List[torch.Tensor], List[torch.Tensor]]] = None

    def copies(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """(w_ih, w_hh) as contiguous copies, made the first time they are asked for."""
        if self._copies is None:
            with torch.no_grad():
                w_ih = [w.new_empty((0, w.shape[1])) if i == 0 and self.table is not None else w.contiguous()
                        for i, w in enumerate(self.w_ih)]  # the table replaces layer 0's
                self._copies = (w_ih, [w.contiguous() for w in self.w_hh])
        return self._copies


def _cell_update(cell: str, nonlinearity: str, gi: torch.Tensor, h: torch.Tensor, c: Optional[torch.Tensor],
                 w_hh_t: torch.Tensor, b_hh: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One time step of one layer, as ``nn.LSTM``/``nn.GRU``/``nn.RNN`` define it
    (same gate order), from ``gi`` = the input's part of the gates (B, G) and
    the state ``h`` (and ``c``) (B, H). For LSTM and RNN ``gi`` includes both
    biases; for GRU only ``b_ih``, and ``b_hh`` is passed apart. Returns the
    new ``h`` (and ``c``; None for GRU/RNN).

    Every operation is out of place and type-promoting, so this also runs
    under autocast (the matrix products in bf16/fp16, as in the fused module)
    and on any device.
    """
    H = h.shape[-1]
    if cell == "gru":  # gates r, z, n; n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
        gh = torch.addmm(b_hh, h, w_hh_t)
        rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])
        n = torch.tanh(torch.addcmul(gi[:, 2 * H :], rz[:, :H], gh[:, 2 * H :]))
        return n + rz[:, H:] * (h - n), None  # (1 - z) * n + z * h
    gates = torch.addmm(gi, h, w_hh_t)
    if cell == "lstm":  # gates i, f, g, o
        s = torch.sigmoid(gates)  # the g quarter is not used; one call beats three on (B, H)
        c_new = torch.addcmul(s[:, H : 2 * H] * c, s[:, :H], torch.tanh(gates[:, 2 * H : 3 * H]))
        return s[:, 3 * H :] * torch.tanh(c_new), c_new
    return (torch.tanh(gates) if nonlinearity == "tanh" else torch.relu(gates)), None


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


_STACKED_NAME = re.compile(r"(^|\.)rnn\.layers\.(\d+)\.(\w+)_l0$")


def fused_name(name: str) -> str:
    """A parameter's name as the fused module spells it: ``rnn.layers.1.weight_ih_l0``
    (a :class:`StackedRNN`, used with dropout) -> ``rnn.weight_ih_l1``. The two
    hold the same tensors, so weights move between a run with dropout and one
    without (``--init-from``) by these names."""
    return _STACKED_NAME.sub(lambda m: f"{m.group(1)}rnn.{m.group(3)}_l{m.group(2)}", name)


class RNNLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if (config.attention or config.bidirectional) and config.condition != "text":
            raise GenrnnError("--attention and --bidirectional are options of a sequence-to-sequence model "
                              "(--task seq2seq)")
        self.config = config
        V, E, H = config.vocab_size, config.embedding_size, config.hidden_size
        C = config.condition_dim if config.condition != "none" else 0
        self.feed = C if config.condition_every_step else 0  # condition width added to the input
        self.embedding = nn.Embedding(V, E) if E > 0 else None
        self.drop = nn.Dropout(config.dropout)
        cell, in_size, L = _CELLS[config.cell], (E if E > 0 else V) + self.feed, config.num_layers
        if config.dropout > 0 and L > 1:
            self.rnn = StackedRNN(cell, in_size, H, L, config.dropout)
        else:  # one fused call for all layers (cuDNN / oneDNN)
            self.rnn = cell(input_size=in_size, hidden_size=H, num_layers=L, batch_first=True)
        self.head = output.build(H, V, config.adaptive_softmax)  # a full or an adaptive softmax (.output)
        if config.tie_weights:  # Press & Wolf 2017; sizes checked in ModelConfig.validate
            self.head.weight = self.embedding.weight
        first = self.rnn.layers[0] if isinstance(self.rnn, StackedRNN) else self.rnn
        self._nonlinearity: str = getattr(first, "nonlinearity", "tanh")
        self._step_weights: Optional[_StepWeights] = None  # not a buffer: never in the state dict
        # built last, so an unconditioned model draws the same initial weights as before conditions existed
        self.encoder = ENCODERS[config.condition](config) if C else None
        self.bridge = nn.Linear(C, L * H * (2 if config.cell == "lstm" else 1)) if C else None
        self.attention = config.attention
        if config.attention:
            self.attn_query = nn.Linear(H, H, bias=False)  # W in score(h, m) = h W m
            self.attn_out = nn.Linear(2 * H, H, bias=False)  # W_c

    def start(self, condition: Optional[torch.Tensor]) -> State:
        """The initial state for a batch of conditions (label ids (B,), vectors
        (B, D), uint8 images (B, 3, S, S) or source ids (B, S)); None (zeros)
        for an unconditioned model given none."""
        if self.encoder is None:
            if condition is None:
                return None
            raise GenrnnError("this model takes no condition (it was trained without one)")
        if condition is None:
            what = "source sentence" if self.config.condition == "text" else self.config.condition
            raise GenrnnError(f"this model generates from a {what}: give one")
        encoded = self.encoder(condition)
        feat, memory, valid = encoded if isinstance(encoded, tuple) else (encoded, None, None)  # (B, C)
        B, L, H = feat.shape[0], self.config.num_layers, self.config.hidden_size
        k = 2 if self.config.cell == "lstm" else 1
        init = torch.tanh(self.bridge(feat)).view(B, L, k, H).permute(2, 1, 0, 3)  # (k, L, B, H)
        rnn_state = (init[0].contiguous(), init[1].contiguous()) if k == 2 else init[0].contiguous()
        context = (feat if self.feed else None,
                   memory.transpose(0, 1).contiguous() if self.attention else None,  # (S, B, H)
                   valid.t().contiguous() if self.attention else None)  # (S, B)
        return self._join(rnn_state, context)

    def split_state(self, state: State) -> Tuple[State, tuple]:
        """(the cells' state, (fed condition embedding (B, C), memory (S, B, H),
        mask (S, B)), each None where the model has none). The state is the
        cells' state alone, or ``(cells' state, [embedding (1, B, C)], [memory, mask])``."""
        if state is None or not (self.feed or self.attention):
            return state, (None, None, None)
        rest = list(state[1:])
        feat = rest.pop(0)[0] if self.feed else None
        memory, valid = (rest[0], rest[1]) if self.attention else (None, None)
        return state[0], (feat, memory, valid)

    def _join(self, rnn_state: State, context: tuple) -> State:
        feat, memory, valid = context
        extras = ((feat[None],) if feat is not None else ()) + ((memory, valid) if memory is not None else ())
        return (rnn_state,) + extras if extras else rnn_state

    def _attend(self, out: torch.Tensor, context: tuple) -> torch.Tensor:
        """Decoder outputs (B, T, H) or (B, H) -> attentional outputs, same shape;
        ``out`` itself for a model without attention."""
        _, memory, valid = context
        if memory is None:
            if self.attention:
                raise GenrnnError("this model translates from a source sentence: give one")
            return out
        weights = self.attention_weights(out, memory, valid)
        if out.dim() == 2:
            ctx = torch.einsum("bs,sbh->bh", weights, memory)
        else:
            ctx = torch.einsum("bts,sbh->bth", weights, memory)
        return torch.tanh(self.attn_out(torch.cat([ctx.to(out.dtype), out], dim=-1)))

    def attention_weights(self, out: torch.Tensor, memory: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """How much each source position counts for decoder outputs ``out``
        (B, H) or (B, T, H): (B, S) or (B, T, S), rows summing to 1, 0 at padding."""
        query = self.attn_query(out)
        if out.dim() == 2:
            scores = torch.einsum("bh,sbh->bs", query, memory.to(query.dtype))
            scores = scores.masked_fill(valid.t() == 0, float("-inf"))
        else:
            scores = torch.einsum("bth,sbh->bts", query, memory.to(query.dtype))
            scores = scores.masked_fill(valid.t()[:, None, :] == 0, float("-inf"))
        return torch.softmax(scores.float(), dim=-1).to(memory.dtype)

    def _inputs(self, idx: torch.Tensor, feat: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embedding is None:
            # the lesson's one-hot input; float32 even under autocast is fine
            x = F.one_hot(idx, self.config.vocab_size).to(next(self.rnn.parameters()).dtype)  # (B, T, V)
        else:
            x = self.embedding(idx)  # (B, T, E)
        if self.feed:  # the condition beside every token: (B, T, E + C)
            f = feat.to(x.dtype) if feat is not None else x.new_zeros(x.shape[0], self.feed)
            x = torch.cat([x, f[:, None, :].expand(-1, x.shape[1], -1)], dim=-1)
        return self.drop(x)

    def forward(
        self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None, state: State = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], State]:
        rnn_state, context = self.split_state(state)
        out, rnn_state = self.rnn(self._inputs(idx, context[0]), rnn_state)  # (B, T, H)
        out = self.drop(self._attend(out, context))
        if targets is not None and self.training:  # an adaptive softmax's loss needs no full logits: None
            loss = output.training_loss(self.head, out, targets)
            if loss is not None:
                return None, loss, self._join(rnn_state, context)
        logits = output.scores(self.head, out)  # (B, T, V)
        loss = None
        if targets is not None:
            # loss in float32 even under bf16 autocast; -100 marks padding
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss, self._join(rnn_state, context)

    def prefill(
        self, idx: torch.Tensor, lengths: torch.Tensor, state: State = None
    ) -> Tuple[torch.Tensor, State]:
        """Run right-padded prompts ``idx`` (B, T) of ``lengths`` (B,) as one batch."""
        rnn_state, context = self.split_state(state)
        x = self._inputs(idx, context[0])
        if bool((lengths == idx.shape[1]).all()):  # no padding: skip the packing
            out, rnn_state = self.rnn(x, rnn_state)
            return output.scores(self.head, self._attend(out[:, -1], context)), self._join(rnn_state, context)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, rnn_state = self.rnn(packed, rnn_state)  # the state is taken after each row's own last token
        out, _ = pad_packed_sequence(out, batch_first=True)  # (B, T, H)
        last = out[torch.arange(idx.shape[0], device=idx.device), lengths.to(idx.device) - 1]  # (B, H)
        return output.scores(self.head, self._attend(last, context)), self._join(rnn_state, context)

    def step(self, idx: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        """One generation step: ``idx`` (B,) -> logits (B, V).

        Without gradients (inference mode or ``no_grad``, as in generation),
        the cell update is computed here, with two matrix products and a few
        elementwise operations per layer, instead of calling the fused module:
        for one time step the module's fixed cost per call dominates. Measured
        side by side on 2 CPU cores (docs/benchmarks.md, "Sampling speed"), in
        the old sampling loop, replacing the module step (oneDNN off) with this
        one took the 2x256 LSTM from 2,630 to 3,154 chars/s at batch 1 and the
        3x512 from 392 to 901; with the new loop, 4,248 and 824 (noise: the
        sampler costs the 3x512 almost nothing). The result equals the module's
        within float rounding (``tests/test_fast_step.py``).

        What it multiplies with is derived from the parameters (:class:`_StepWeights`)
        and rebuilt whenever a parameter is replaced or changed in place (its
        version counter moves: optimizer steps, ``load_state_dict``,
        ``torch.no_grad()`` edits, ``.to()``). Edits through ``param.data``
        bypass the version counter: call :meth:`clear_step_cache` after them.

        The fused module runs as before with gradients enabled, in training mode
        with dropout, with weights made under ``torch.inference_mode`` (which
        have no version counter), and for large batches on CPU with oneDNN on,
        where oneDNN's fused cell is faster (:data:`_ONEDNN_MIN_WORK`).
        """
        if torch.is_grad_enabled() or (self.training and self.config.dropout > 0) or self._onednn_wins(idx):
            return self._module_step(idx, state)
        weights = self._current_step_weights()
        if weights is None:
            return self._module_step(idx, state)
        return self._fast_step(weights, idx, state)

    def _onednn_wins(self, idx: torch.Tensor) -> bool:
        """A large batch on CPU with oneDNN on: its fused cell is faster there
        (:data:`_ONEDNN_MIN_WORK`). oneDNN's switch is read, never flipped."""
        work = idx.shape[0] * self.config.hidden_size * min(torch.get_num_threads(), 2)
        return work >= _ONEDNN_MIN_WORK and idx.device.type == "cpu" and torch.backends.mkldnn.enabled

    def clear_step_cache(self) -> None:
        """Forget the weight copies :meth:`step` keeps (rebuilt at the next step)."""
        self._step_weights = None

    def train(self, mode: bool = True) -> "RNNLM":
        """As ``nn.Module.train``; going back to training also drops the weight
        copies of :meth:`step`, so they do not sit in memory while the weights
        they were made from change (generation puts the mode back when it ends)."""
        if mode:
            self._step_weights = None
        return super().train(mode)

    def _module_step(self, idx: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        rnn_state, context = self.split_state(state)
        out, rnn_state = self.rnn(self._inputs(idx[:, None], context[0]), rnn_state)  # (B, 1, H)
        return output.scores(self.head, self._attend(out[:, 0], context)), self._join(rnn_state, context)

    def _step_params(self) -> List[torch.Tensor]:
        """weight_ih, weight_hh, bias_ih, bias_hh of each layer (fused or
        stacked), then the embedding's weight if there is one. Read straight
        from the modules' parameter dicts: this runs every step."""
        mods = self._modules
        rnn = mods["rnn"]
        if isinstance(rnn, StackedRNN):
            params = [m._parameters[n] for m in rnn.layers for n in _PARAM_NAMES[0]]
        else:
            p = rnn._parameters
            params = [p[n] for i in range(self.config.num_layers) for n in _PARAM_NAMES[i]]
        embedding = mods.get("embedding")  # None (one-hot input) is a plain attribute
        if embedding is not None:
            params.append(embedding._parameters["weight"])
        return params

    def _current_step_weights(self) -> Optional[_StepWeights]:
        """The cached weights if no parameter was replaced, moved (``.to``,
        ``.data =``) or changed in place since they were made; else new ones.
        About 4 us per step for the 2x256 LSTM, most of it building the key."""
        params = self._step_params()
        try:
            key = tuple([(id(t), t.data_ptr(), t._version) for t in params])
        except RuntimeError:  # inference tensors: no version counter to watch
            return None
        weights = self._step_weights
        if weights is None or weights.key != key:
            L = self.config.num_layers
            layers: List[LayerParams] = [tuple(params[4 * i : 4 * i + 4]) for i in range(L)]  # type: ignore[misc]
            weights = self._step_weights = self._build_step_weights(key, layers)
        return weights

    def _build_step_weights(self, key: tuple, layers: List[LayerParams]) -> _StepWeights:
        gru = self.config.cell == "gru"
        device_type = layers[0][0].device.type
        with torch.no_grad(), torch.autocast(device_type, enabled=False):  # kept in the weights' dtype
            bias = [b_ih if gru else b_ih + b_hh for _, _, b_ih, b_hh in layers]
            w_ih = [w.t() for w, _, _, _ in layers]
            w_cond = None
            if self.feed:  # layer 0's input is [token, condition]: split its weights
                tokens = w_ih[0].shape[0] - self.feed
                w_ih[0], w_cond = w_ih[0][:tokens], w_ih[0][tokens:]
            table = None
            if self.embedding is None:  # one-hot @ W_ih.T: W_ih's columns
                table = w_ih[0] + bias[0]
            elif self.config.vocab_size * w_ih[0].shape[1] <= _TABLE_MAX_ELEMENTS:
                table = torch.addmm(bias[0], self.embedding.weight, w_ih[0])
        return _StepWeights(key, table, w_ih, [w.t() for _, w, _, _ in layers], bias,
                            [b_hh for _, _, _, b_hh in layers] if gru else [], w_cond)

    def _fast_step(self, w: _StepWeights, idx: torch.Tensor, state: State) -> Tuple[torch.Tensor, State]:
        cell, L, H = self.config.cell, self.config.num_layers, self.config.hidden_size
        w_ih, w_hh = w.copies() if idx.shape[0] <= _COPY_MAX_BATCH else (w.w_ih, w.w_hh)
        state, context = self.split_state(state)
        feat = context[0]
        if state is None:
            zeros = w.bias[0].new_zeros(L, idx.shape[0], H)
            state = (zeros, zeros) if cell == "lstm" else zeros
        h, c = state if isinstance(state, tuple) else (state, None)
        hs: List[torch.Tensor] = []
        cs: List[torch.Tensor] = []
        x = None
        for i in range(L):
            if i == 0 and w.table is not None:
                gi = w.table[idx]
            else:
                gi = torch.addmm(w.bias[i], self.embedding(idx) if i == 0 else x, w_ih[i])
            if i == 0 and feat is not None:
                gi = torch.addmm(gi, feat.to(gi.dtype), w.w_cond)
            x, c_i = _cell_update(cell, self._nonlinearity, gi, h[i], None if c is None else c[i], w_hh[i],
                                  w.bias_hh[i] if w.bias_hh else None)
            hs.append(x)
            if c_i is not None:
                cs.append(c_i)
        logits = output.scores(self.head, self._attend(x, context))
        h_new = hs[0][None] if L == 1 else torch.stack(hs)
        if cell != "lstm":
            return logits, self._join(h_new, context)
        return logits, self._join((h_new, cs[0][None] if L == 1 else torch.stack(cs)), context)

"""Sampling: logits transforms, one per-row sampler, one text assembler, and
the generation loop that local sampling (``complete``) and the server's
engine (``serve/engine.py``) both run.

* Transforms on (B, V) logits, excluded tokens becoming ``-inf``:
  :func:`apply_temperature` (T per row), :func:`top_k_filter` and
  :func:`top_p_filter` (nucleus, Holtzman et al. 2019; k and p per row too).
* :class:`Sampler` draws one token per row with each row's own settings
  (:class:`RowSampling`: temperature, 0 = greedy; top-k; top-p; seed) by
  inverse CDF (:func:`draw`) from uniforms of the row's own generator
  (:class:`Uniforms`). So a row's tokens depend on its seed and its own logits
  only, never on the rows beside it in the batch: the server's ``seed: S`` and
  ``genrnn sample --seed S`` give the same text (row ``i`` of a request
  seeded with ``S`` uses :func:`row_seed` ``(S, i)`` in both). Rows can join
  and leave between steps (:meth:`Sampler.add`, :meth:`Sampler.keep`); what
  stays the same from step to step is settled once when they do, so a step
  at batch 1 costs a handful of small tensor operations and no host
  synchronisation.
* :class:`TextStream` turns one row's token ids into text: primed with the
  prompt, it returns per token the text that may be shown now and a finish
  reason ("eos", "stop" or "length"); stop strings are cut off as in the
  OpenAI API and text that could still become one is held back.

:func:`generate_tokens` runs the prompts through the model once (``prefill``,
from ``state.start(model, condition)``), then steps the recurrent state one
token at a time; :func:`complete` turns that into text.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .errors import GenrnnError
from .state import start
from .tokenizers import EOS_ID, PAD_ID

Temperature = Union[float, Sequence[float], torch.Tensor]


@dataclass(frozen=True)
class SampleConfig:
    max_new_tokens: int = 200
    temperature: Temperature = 1.0  # 0 = greedy; a sequence gives one per row
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None  # row i draws from row_seed(seed, i); None: random

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise GenrnnError("--length must be >= 0")
        if any(t < 0 for t in _temperatures(self.temperature)):
            raise GenrnnError("--temperature must be >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise GenrnnError("--top-k must be >= 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GenrnnError("--top-p must be in (0, 1]")


def _temperatures(temperature: Temperature) -> List[float]:
    if isinstance(temperature, torch.Tensor):
        return [float(t) for t in temperature.flatten().tolist()]
    if isinstance(temperature, (list, tuple)):
        return [float(t) for t in temperature]
    return [float(temperature)]


# -- transforms ------------------------------------------------------------------------


# The smallest temperature divided by: logits / 1e-189 would overflow to inf and the
# softmax give NaN (found by the server's fuzz test); / 1e-20 keeps logits finite, and the
# draw is then the argmax, as the temperature asks.
_FINITE_MAX = 3.0e38  # below float32's largest: what an overflowing score is cut to before softmax
_T_MIN = 1e-20


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``logits / T`` row-wise; rows with T == 0 are left as they are (greedy
    rows take the argmax, which temperature does not change)."""
    t = temperature.to(logits.dtype).reshape(-1, 1)
    return logits / torch.where(t > 0, t.clamp(min=_T_MIN), torch.ones_like(t))


def top_k_filter(logits: torch.Tensor, k: Union[int, torch.Tensor]) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row; the rest become -inf.
    ``k`` is one int or one per row (B,); 0, or k >= V, keeps the whole row.
    Logits tied with the k-th largest are kept too, so ties can keep more."""
    V = logits.shape[-1]
    if isinstance(k, int):
        return logits if k <= 0 or k >= V else _top_k(logits, k, None)
    k = k.reshape(-1, 1).to(logits.device)
    k = torch.where((k > 0) & (k < V), k, V)
    return _top_k(logits, int(k.max()), k - 1)


def _top_k(logits: torch.Tensor, most: int, kth_index: Optional[torch.Tensor]) -> torch.Tensor:
    """Top-k with the largest k = ``most``; ``kth_index`` (B, 1) gives each
    row's k - 1 when the rows differ (None: every row keeps ``most``)."""
    values = torch.topk(logits, most, dim=-1).values
    kth = values[:, -1:] if kth_index is None else values.gather(1, kth_index)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: Union[float, torch.Tensor]) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability is
    at least ``p`` (always at least one token). ``p`` is one float or one per
    row (B,); p >= 1 keeps the whole row. Ties are ranked by id (a stable
    sort), so a row's result depends on its own logits only."""
    if isinstance(p, torch.Tensor):
        return _top_p(logits, p.to(device=logits.device, dtype=torch.float32).reshape(-1, 1).clamp_min(_P_MIN), True)
    if p >= 1.0:
        return logits
    return _top_p(logits, max(p, _P_MIN), False)


# The smallest p used: a p that is 0 in float32 (5e-324, say) would drop every token.
_P_MIN = torch.finfo(torch.float32).tiny


def _top_p(logits: torch.Tensor, p: Union[float, torch.Tensor], per_row: bool) -> torch.Tensor:
    """Top-p with ``p`` >= _P_MIN: a float, or a (B, 1) / 0-dim float32 tensor;
    ``per_row``: some rows may have p >= 1, which keep everything."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= p  # the first token always has before == 0 < p
    if per_row:
        drop_sorted &= p < 1.0  # p = 1 keeps everything, whatever the rounding
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


# -- the draw ----------------------------------------------------------------------------

# <pad> is left out of sampling by slicing it off the front of the logits
assert PAD_ID == 0, "sampling assumes <pad> is token 0"

# Uniforms a row draws from its generator at a time; its sequence of uniforms
# depends only on its seed, however the batch around it consumes them.
_UNIFORMS = 64
# The largest uniform used: u * total then stays strictly below total for any
# positive float32 total (see draw), whatever the rounding.
_U_MAX = 1.0 - 2.0**-23


def row_seed(seed: int, index: int) -> int:
    """The seed of row ``index`` of a request (or a ``complete`` call) seeded
    with ``seed``: a hash, so rows are independent and a row's text depends
    only on (seed, index)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """The inverse-CDF draw: for (unnormalised) ``probs`` (B, N) and one
    uniform in [0, 1) per row (B,), the column whose cumulative-probability
    interval holds ``u * total``. A column with probability 0 is never drawn.
    This is the :class:`Sampler`'s draw, with a fresh buffer."""
    u = uniforms.to(probs.dtype).clamp(max=_U_MAX).reshape(-1, 1)
    return _CDF(probs.shape[0], probs.shape[1], probs.device, probs.dtype).draw(probs, u) - 1


class _CDF:
    """The draw's buffer (B, N + 1): column 0 is 0 and the cumulative sums of
    the probabilities follow. ``searchsorted(right=True)`` then counts the
    entries <= u * total, which is 1 + the column j with cdf[j] <= u * total
    < cdf[j + 1] -- so column j has probability > 0 -- and for the tokens
    after <pad> the count is the token id itself. ``u <= 1 - 2**-23`` keeps
    ``u * total`` below ``total`` after rounding (the gap is at least one ulp
    of total)."""

    def __init__(self, rows: int, n: int, device: torch.device, dtype: torch.dtype = torch.float32):
        self.full = torch.zeros(rows, n + 1, device=device, dtype=dtype)
        self.body = self.full[:, 1:]  # views, made once
        self.total = self.full[:, -1:]
        self.in_place = self.body.is_contiguous()  # batch 1; a strided out= is slow on CPU

    def draw(self, probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """1 + the column drawn from ``probs`` (B, N) with uniforms ``u`` (B, 1) in [0, _U_MAX]."""
        if self.in_place:
            torch.cumsum(probs, dim=-1, out=self.body)
        else:
            self.body.copy_(torch.cumsum(probs, dim=-1))
        # clamped: a row whose probabilities are not numbers (a model with NaN weights) still gets a
        # token id, never one past the vocabulary
        return torch.searchsorted(self.full, u * self.total, right=True).view(-1).clamp_(1, self.body.shape[1])


class Uniforms:
    """One row's random numbers: uniforms in [0, 1) from its own CPU
    generator, drawn in blocks of :data:`_UNIFORMS`, one used per sampled
    token. The sequence depends only on the seed (None: a random one), and
    being on the CPU it is the same whatever the model's device."""

    def __init__(self, seed: Optional[int]):
        self.seed = seed
        self._generator: Optional[torch.Generator] = None
        self._left = torch.empty(0)  # drawn, not yet taken

    def take(self, n: int) -> torch.Tensor:
        """The next ``n`` uniforms, (n,) float32 on the CPU."""
        if self._generator is None:
            self._generator = torch.Generator()
            if self.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(self.seed)
        parts = []
        while n > 0:
            if not len(self._left):
                self._left = torch.rand(_UNIFORMS, generator=self._generator)
            k = min(n, len(self._left))
            parts.append(self._left[:k])
            self._left = self._left[k:]
            n -= k
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else torch.empty(0)


@dataclass(frozen=True)
class RowSampling:
    """How one row draws its tokens."""

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    seed: Optional[int] = None  # of the row's own generator; None: a random one


@dataclass
class _Plan:
    """What a batch's draw does at every step, settled when its rows change."""

    all_greedy: bool
    greedy_rows: Optional[torch.Tensor]  # (B,) bool where some rows are greedy
    divisor: Optional[torch.Tensor]  # 0-dim (one temperature) or (B, 1); None for T = 1
    top_k: Optional[int]  # the (largest) k; None: no row filters
    kth_index: Optional[torch.Tensor]  # (B, 1) each row's k - 1 where rows differ
    top_p: Optional[torch.Tensor]  # 0-dim or (B, 1); None: no row filters
    per_row_p: bool = False  # top_p is (B, 1), and rows with p = 1 keep everything


class Sampler:
    """Draws one token per row from logits (B, V), each row with its own
    :class:`RowSampling` and its own :class:`Uniforms`.

    Per step: drop ``<pad>`` by slicing (a view; the caller's logits are never
    written), divide by the temperature, top-k, top-p -- each only if some row
    needs it -- softmax, and the inverse-CDF draw with each row's next
    uniform; greedy rows take the argmax. Rows are added and kept (dropped)
    between steps; the choices that hold for all rows (all greedy, one
    temperature, whether and how any row filters) are settled once after a
    change, and the uniforms for the next :data:`_UNIFORMS` steps sit on the
    device as one (C, B, 1) block, so a step needs no tensor built from the
    host and no host synchronisation.
    """

    def __init__(self, device: Union[str, torch.device] = "cpu"):
        self.device = torch.device(device)
        self.rows: List[RowSampling] = []
        self._streams: List[Uniforms] = []
        self._block: Optional[torch.Tensor] = None  # (C, B, 1): row i's next uniform at [col, i]
        self._columns: Optional[Sequence[torch.Tensor]] = None  # a fresh block's (B, 1) columns, as views
        self._col = 0
        self._plan: Optional[_Plan] = None
        self._cdf: Optional[_CDF] = None

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: Sequence[RowSampling], streams: Optional[Sequence[Uniforms]] = None) -> None:
        """Append rows to the batch (their logits come after the others').
        ``streams`` replaces the rows' :class:`Uniforms` (anything with
        ``take(n)``), e.g. to draw with chosen uniforms."""
        streams = [Uniforms(r.seed) for r in rows] if streams is None else list(streams)
        if self._block is not None:  # the new rows' uniforms line up with the block's column
            C, left = self._block.shape[0], self._block.shape[0] - self._col
            new = torch.zeros(C, len(rows))
            for j, (r, s) in enumerate(zip(rows, streams)):
                if r.temperature > 0:
                    new[self._col :, j] = s.take(left)
            new.clamp_(max=_U_MAX)
            self._block, self._columns = torch.cat([self._block, new[:, :, None].to(self.device)], dim=1), None
        self.rows = self.rows + list(rows)
        self._streams = self._streams + streams
        self._plan = None

    def keep(self, positions: Sequence[int], index: Optional[torch.Tensor] = None) -> None:
        """Keep only the rows at ``positions`` (in that order); ``index`` is
        the same as a long tensor on the device, if the caller has one."""
        self.rows = [self.rows[i] for i in positions]
        self._streams = [self._streams[i] for i in positions]
        if self._block is not None:
            if index is None:
                index = torch.tensor(list(positions), dtype=torch.long, device=self.device)
            self._block, self._columns = self._block.index_select(1, index), None
        self._plan = None

    def _settle(self) -> _Plan:
        dev, rows = self.device, self.rows
        greedy = [r.temperature == 0 for r in rows]
        if all(greedy):
            return _Plan(True, None, None, None, None, None)
        drawn = [r for r, g in zip(rows, greedy) if not g]
        temps = {r.temperature for r in drawn}
        if temps == {1.0}:
            divisor = None
        elif len(temps) == 1:
            divisor = torch.tensor(max(temps.pop(), _T_MIN), device=dev)
        else:
            divisor = torch.tensor([1.0 if g else max(r.temperature, _T_MIN) for r, g in zip(rows, greedy)],
                                   device=dev)[:, None]
        ks = {r.top_k or 0 for r in drawn}
        top_k, kth_index = None, None
        if len(ks) == 1:
            top_k = ks.pop() or None
        else:  # rows differ: each row's k (0 = off, kept whole below)
            top_k = -1  # resolved against V at the first draw
        ps = {1.0 if r.top_p is None else r.top_p for r in drawn}
        top_p, per_row_p = None, len(ps) > 1
        if per_row_p:
            top_p = torch.tensor([1.0 if r.top_p is None else r.top_p for r in rows], device=dev)[:, None]
        elif next(iter(ps)) < 1.0:
            top_p = torch.tensor(next(iter(ps)), device=dev)
        if top_p is not None:
            top_p.clamp_(min=_P_MIN)
        greedy_rows = torch.tensor(greedy, device=dev) if any(greedy) else None
        return _Plan(False, greedy_rows, divisor, top_k, kth_index, top_p, per_row_p)

    def _per_row_k(self, plan: _Plan, V: int) -> None:
        ks = [(r.top_k or 0) if r.temperature > 0 else 0 for r in self.rows]
        ks = [k if 0 < k < V else V for k in ks]
        plan.top_k = max(ks)
        plan.kth_index = torch.tensor(ks, device=self.device)[:, None] - 1

    def _uniforms(self) -> torch.Tensor:
        """This step's uniform of every row, (B, 1) on the device."""
        if self._block is None or self._col == self._block.shape[0]:
            zeros = torch.zeros(_UNIFORMS)
            columns = [s.take(_UNIFORMS) if r.temperature > 0 else zeros for r, s in zip(self.rows, self._streams)]
            self._block = torch.stack(columns, dim=1).clamp_(max=_U_MAX)[:, :, None].to(self.device)
            self._columns = self._block.unbind(0)  # views made once per block; after rows change, indexing
            self._col = 0
        u = self._block[self._col] if self._columns is None else self._columns[self._col]
        self._col += 1
        return u

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row, (B,) long on the logits' device."""
        plan = self._plan
        if plan is None:
            plan = self._plan = self._settle()
        z = logits[:, PAD_ID + 1 :]  # a view: the caller's logits are never written
        if z.dtype != torch.float32:
            z = z.float()
        if plan.all_greedy:
            return z.argmax(dim=-1) + 1
        best = z.argmax(dim=-1) + 1 if plan.greedy_rows is not None else None
        if plan.divisor is not None:
            z = z / plan.divisor
        # a huge logit over a small temperature overflows to inf (softmax: NaN); NaN scores get no mass
        z = torch.nan_to_num(z, nan=float("-inf"), posinf=_FINITE_MAX)
        if plan.top_k is not None:
            if plan.top_k < 0:
                self._per_row_k(plan, z.shape[-1])
            if plan.kth_index is not None or plan.top_k < z.shape[-1]:
                z = _top_k(z, plan.top_k, plan.kth_index)
        if plan.top_p is not None:
            z = _top_p(z, plan.top_p, plan.per_row_p)
        cdf = self._cdf
        if cdf is None or cdf.full.shape != logits.shape:
            cdf = self._cdf = _CDF(logits.shape[0], logits.shape[1] - 1, z.device)
        tokens = cdf.draw(torch.softmax(z, dim=-1), self._uniforms())
        if best is None:
            return tokens
        return torch.where(plan.greedy_rows, best, tokens)


# -- text assembly -----------------------------------------------------------------------


class TextStream:
    """One row's text, token by token, as the OpenAI API has it.

    Primed with the prompt's ids (so that the first new word is spaced after
    the prompt's last one), :meth:`push` takes each sampled id and returns the
    text that may be shown now and the finish reason, if the row ended:
    "eos" at ``<eos>``, "stop" when a stop string appeared (it and what
    follows are cut off), "length" at the ``max_tokens``-th token. Text that
    could still turn into a stop string (the last ``longest stop - 1``
    characters) is held back until it cannot; the pieces returned add up to
    :attr:`text`. :attr:`count` counts the tokens pushed, the ending one
    included; :attr:`piece` is what the last token added to the decoded text.
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int], stop: Sequence[str] = (),
                 max_tokens: Optional[int] = None):
        self.decoder = tokenizer.decoder()
        for tid in prompt_ids:
            self.decoder.push(tid)
        self.stop = [s for s in stop if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.max_tokens = max_tokens
        self.count = 0
        self.length = 0  # characters of text so far, held-back ones included
        self.piece = ""
        self.finish_reason: Optional[str] = None
        self._shown: List[str] = []
        self._held = ""

    @property
    def text(self) -> str:
        return "".join(self._shown) + self._held

    def push(self, tid: int) -> Tuple[str, Optional[str]]:
        """Take the next token id; (text to show now, finish reason or None)."""
        if self.finish_reason is not None:
            raise ValueError(f"the row already ended ({self.finish_reason})")
        self.count += 1
        if tid == EOS_ID:
            self.piece = ""
            return self._end("eos")
        piece = self.piece = self.decoder.push(tid)
        self.length += len(piece)
        if not self.stop:  # the common case: everything shows at once
            if self.max_tokens is not None and self.count >= self.max_tokens:
                self._held = piece
                return self._end("length")
            if piece:
                self._shown.append(piece)
            return piece, None
        pending = self._held + piece
        # only the held text and the new piece can hold a new match: what was shown had none
        hits = [h for h in (pending.find(s) for s in self.stop) if h >= 0]
        if hits:
            cut = min(hits)
            self.length -= len(pending) - cut
            self._held = pending[:cut]
            return self._end("stop")
        if self.max_tokens is not None and self.count >= self.max_tokens:
            self._held = pending
            return self._end("length")
        cut = len(pending) - self.holdback
        if cut <= 0:
            self._held = pending
            return "", None
        out, self._held = pending[:cut], pending[cut:]
        self._shown.append(out)
        return out, None

    def push_all(self, ids: Sequence[int]) -> Tuple[str, Optional[str]]:
        """:meth:`push` for each id until the row ends; the text they showed
        and the finish reason. Without stop strings the ids are decoded in one
        go, with no per-token checks."""
        if self.stop or self.finish_reason is not None:
            out = []
            reason = None
            for tid in ids:
                text, reason = self.push(tid)
                out.append(text)
                if reason:
                    break
            return "".join(out), reason
        n = len(ids)
        if self.max_tokens is not None:
            n = min(n, self.max_tokens - self.count)
        ids = ids[:n]
        eos = EOS_ID in ids
        if eos:
            ids = ids[: ids.index(EOS_ID)]
        text = "".join([self.decoder.push(tid) for tid in ids])
        self.count += len(ids) + eos
        self.length += len(text)
        self._held += text
        self.piece = ""  # several tokens: no single last piece
        if eos:
            return self._end("eos")
        if self.max_tokens is not None and self.count >= self.max_tokens:
            return self._end("length")
        out, self._held = self._held, ""
        if out:
            self._shown.append(out)
        return out, None

    def finish(self, reason: str = "length") -> str:
        """End the row now (e.g. when generation stopped); the held text."""
        if self.finish_reason is not None:
            return ""
        return self._end(reason)[0]

    def _end(self, reason: str) -> Tuple[str, str]:
        out, self._held = self._held, ""
        if out:
            self._shown.append(out)
        self.finish_reason = reason
        return out, reason


# -- generation --------------------------------------------------------------------------


# The most steps an accelerator runs ahead of the host: sampled ids stay on the
# device and are copied back once per chunk. Chunks grow 1, 2, 4, ... so the
# first token still comes back after one step.
_MAX_CHUNK = 32


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():  # e.g. the Markov model: tables, no parameters
        return t.device
    return torch.device("cpu")


def padded_prompts(prompts: Sequence[Sequence[int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) and lengths (B,) of token-id lists, for ``prefill``."""
    lengths = torch.tensor([len(p) for p in prompts])
    idx = torch.full((len(prompts), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    return idx, lengths


def row_samplings(config: SampleConfig, rows: int) -> List[RowSampling]:
    """Each row's sampling settings from a config: its temperature (one for
    all or one per row), top-k, top-p and seed ``row_seed(config.seed, i)``."""
    temps = _temperatures(config.temperature)
    if len(temps) == 1:
        temps = temps * rows
    elif len(temps) != rows:
        raise GenrnnError(f"got {len(temps)} temperatures for {rows} samples")
    return [RowSampling(t, config.top_k, config.top_p, None if config.seed is None else row_seed(config.seed, i))
            for i, t in enumerate(temps)]


@torch.inference_mode()
def generate_tokens(model: nn.Module, prompts: List[List[int]], config: SampleConfig,
                    device: Optional[torch.device] = None,
                    condition: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    """Yield ``config.max_new_tokens`` steps of new ids, shape (B,), on the CPU.

    ``prompts`` are token-id lists (B of them, each non-empty); they run as one
    padded batch through ``model.prefill``, from the initial state
    ``state.start(model, condition)`` (``condition``: one row per prompt, or
    None).
    """
    device = device or _model_device(model)
    yield from _generate(model, prompts, config, device, 1 if device.type == "cpu" else _MAX_CHUNK, condition)


def _generate(model: nn.Module, prompts: List[List[int]], config: SampleConfig, device: torch.device,
              max_chunk: int, condition: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    """:func:`generate_tokens` with the chunk size as a parameter, so that the
    CPU tests run the accelerator's chunked path too (it must give the same
    tokens)."""
    config.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenrnnError("every prompt needs at least one token")
    if condition is not None and condition.shape[0] != len(prompts):
        raise GenrnnError(f"got {condition.shape[0]} conditions for {len(prompts)} prompts")
    was_training = model.training
    model.eval()
    try:
        sample = Sampler(device)
        sample.add(row_samplings(config, len(prompts)))
        idx, lengths = padded_prompts(prompts)
        state = start(model, None if condition is None else condition.to(device))
        logits, state = model.prefill(idx.to(device), lengths, state)
        n, done, chunk = config.max_new_tokens, 0, 1
        while done < n:
            k = min(chunk, n - done)
            new = [sample(logits)]
            for _ in range(k - 1):
                logits, state = model.step(new[-1], state)
                new.append(sample(logits))
            if k == 1 and new[0].device.type == "cpu":
                yield new[0]  # the CPU case: no copy, no stacking
            else:
                yield from torch.stack(new).cpu()  # one copy (and wait) per chunk
            done += k
            chunk = min(2 * chunk, max_chunk)
            if done < n:  # after the hand-over, so the caller sees each chunk a step sooner
                logits, state = model.step(new[-1], state)
    finally:
        model.train(was_training)


# -- text level ------------------------------------------------------------------------


@dataclass
class Completion:
    prompt: str
    text: str  # the generated continuation, without the prompt
    tokens: int  # tokens generated (the <eos> or stop text included)
    finish_reason: str  # "length", "eos" or "stop"


def _collect(steps: Iterator[torch.Tensor], rows: List[TextStream]) -> None:
    """:func:`complete` without stop strings or streaming: per step only the
    ids come to Python and are scanned for ``<eos>`` (to stop once every row
    has ended); each row's text is decoded once at the end
    (:meth:`TextStream.push_all`), with the same result as token by token."""
    steps_ids: List[List[int]] = []
    ended = [False] * len(rows)
    remaining = len(rows)
    for nxt in steps:
        ids = nxt.tolist()
        steps_ids.append(ids)
        if EOS_ID in ids:
            for i, tid in enumerate(ids):
                if tid == EOS_ID and not ended[i]:
                    ended[i] = True
                    remaining -= 1
            if not remaining:
                break
    for row, ids in zip(rows, zip(*steps_ids)):
        row.push_all(list(ids))


def complete(model: nn.Module, tokenizer, prompts: Sequence[str], config: SampleConfig, *,
             stop: Sequence[str] = (), device: Optional[torch.device] = None, autocast=None,
             on_text: Optional[Callable[[int, str], None]] = None,
             condition: Optional[torch.Tensor] = None) -> List[Completion]:
    """Generate a continuation of every prompt, all rows in one batch.

    Each prompt is preceded by ``<eos>`` (the beginning-of-document marker the
    model was trained with), so an empty prompt starts a new document. A row
    ends at ``<eos>``, at any of the ``stop`` strings (cut off, as in the OpenAI
    API), or after ``max_new_tokens``. ``on_text(row, piece)`` receives the text
    as it is produced; text that could still turn into a stop string is held
    back until it cannot (:class:`TextStream`). ``condition``: one row per
    prompt, for a conditioned model.
    """
    ids = [[EOS_ID] + tokenizer.encode(p) for p in prompts]
    rows = [TextStream(tokenizer, r, stop, config.max_new_tokens) for r in ids]
    with autocast if autocast is not None else contextlib.nullcontext():
        steps = generate_tokens(model, ids, config, device, condition)
        try:
            if rows and not rows[0].stop and on_text is None:  # nothing to do per token: decode at the end
                _collect(steps, rows)
            else:
                remaining = len(rows)
                for nxt in steps:
                    for i, tid in enumerate(nxt.tolist()):
                        row = rows[i]
                        if row.finish_reason is not None:
                            continue
                        text, reason = row.push(tid)
                        if text and on_text is not None:
                            on_text(i, text)
                        remaining -= reason is not None
                    if not remaining:
                        break
        finally:
            steps.close()  # puts the model back in training mode now, even after a break
    for i, row in enumerate(rows):
        text = row.finish("length")  # rows that got no token at all (max_new_tokens = 0)
        if text and on_text is not None:
            on_text(i, text)
    return [Completion(p, r.text, r.count, r.finish_reason) for p, r in zip(prompts, rows)]  # type: ignore[arg-type]

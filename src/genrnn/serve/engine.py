"""The batching engine: one thread owns the models and steps every active
stream of a model as one batch.

A recurrent model generates a token with one ``step`` whatever the batch, and on
a CPU a step at batch 64 costs little more than one at batch 1 (the weights are
read once either way). So the engine keeps the rows of all requests -- every
prompt times ``n`` -- in one batch per model::

    loop:
        rows that joined since the last step run through one ``prefill``
        and are concatenated to the batch (their states along dim 1)
        every row samples its next token from its own logits, with its own
        temperature / top-k / top-p and its own torch.Generator
        the new text goes back to the requests (one hand-over per step)
        finished and cancelled rows leave (index_select of the state)
        one ``model.step`` for the rows that remain

Rows join and leave between steps, so a request never waits for another to
finish. All torch work happens in the engine thread (under
``torch.inference_mode``); PyTorch's global switches, such as turning oneDNN
off for one-token steps on CPU, are never flipped under another thread's feet.

Reproducibility: each row samples by inverse CDF from uniforms drawn from its
own generator, so its text depends on its seed and its own logits only, never
on which other rows share the batch (a batched ``multinomial`` would draw one
stream of random numbers for the whole batch).

The engine knows tokens and text, not HTTP: a request hands it row specs and a
*sink*; the engine calls ``sink.deliver(updates)`` with a list of
:class:`Update` per step. A sink with an event ``loop`` attribute is called in
that loop (all sinks of one loop in one ``call_soon_threadsafe`` per step);
a sink whose ``loop`` is None is called in the engine thread.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Deque, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..models import map_state
from ..tokenizers import EOS_ID, PAD_ID

log = logging.getLogger("genrnn.serve")

# Prompts joining at one step are prefilled together while their padded size
# (rows x longest prompt) stays under this; the rest join at the next step.
PREFILL_TOKENS = 65_536
_UNIFORMS = 64  # uniforms a row draws from its generator at a time


class EngineFull(Exception):
    """The engine already holds as many streams as it may."""


class EngineStopped(Exception):
    """The engine is shutting down (or never started)."""


@dataclass(frozen=True)
class RowParams:
    """How one row samples and when it ends."""

    max_tokens: int = 16
    temperature: float = 1.0  # 0 = greedy
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    greedy: bool = False
    stop: Tuple[str, ...] = ()
    logprobs: Optional[int] = None  # alternatives per token; None = no logprobs
    seed: Optional[int] = None  # None: a fresh random seed


@dataclass(frozen=True)
class RowSpec:
    """One row to generate: ``index`` is its choice index in the request."""

    index: int
    prompt_ids: Sequence[int]  # starts with EOS_ID, the beginning-of-document marker
    params: RowParams


@dataclass
class TokenInfo:
    """A generated token with its log-probability (model distribution, T = 1)."""

    text: str  # what the token added to the text ("<eos>" etc. for special tokens)
    offset: int  # where it starts in the completion text
    logprob: float
    top: Dict[str, float]


@dataclass
class Update:
    """New output of one row: text, per-token logprobs, and maybe its end."""

    index: int
    text: str = ""
    tokens: List[TokenInfo] = field(default_factory=list)
    finish_reason: Optional[str] = None  # "eos", "stop", "length", "cancelled" or "error"
    completion_tokens: int = 0
    error: Optional[str] = None


class _Row:
    """A stream in the engine: sampling state and text assembly (as ``complete()``)."""

    def __init__(self, spec: RowSpec, ticket: "Ticket", tokenizer):
        p = spec.params
        self.index = spec.index
        self.ticket = ticket
        self.ids = list(spec.prompt_ids)
        self.params = p
        self.greedy = p.greedy or p.temperature == 0
        self.generator = torch.Generator()
        if p.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(p.seed)
        self._uniforms: List[float] = []
        self.tokenizer = tokenizer
        self.decoder = tokenizer.decoder()
        for tid in self.ids:  # so the first new word is spaced after the prompt's last one
            self.decoder.push(tid)
        self.stop = [s for s in p.stop if s]
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.emitted = 0
        self.count = 0
        self.done = False
        self.released = False

    def uniform(self) -> float:
        if not self._uniforms:
            self._uniforms = torch.rand(_UNIFORMS, generator=self.generator).tolist()[::-1]
        return self._uniforms.pop()

    def advance(self, tid: int, logprob: Optional[Tuple[float, Dict[str, float]]]) -> Optional[Update]:
        """Take the sampled token ``tid``; return what the request should see."""
        self.count += 1
        offset = len(self.text)
        reason = None
        if tid == EOS_ID:
            piece = ""
            reason = "eos"
        else:
            piece = self.decoder.push(tid)
            self.text += piece
            if self.stop:
                # only the tail can hold a new match: what was emitted had none
                window = max(0, self.emitted - self.holdback)
                hits = [h for h in (self.text.find(s, window) for s in self.stop) if h >= 0]
                if hits:
                    self.text = self.text[: min(hits)]
                    reason = "stop"
        if reason is None and self.count >= self.params.max_tokens:
            reason = "length"
        end = len(self.text) if reason else max(self.emitted, len(self.text) - self.holdback)
        update = Update(self.index, self.text[self.emitted : end], completion_tokens=self.count,
                        finish_reason=reason)
        self.emitted = end
        if logprob is not None:
            shown = piece if piece else self.tokenizer.token_str(tid)
            update.tokens.append(TokenInfo(shown, offset, logprob[0], logprob[1]))
        self.done = reason is not None
        if update.text or update.tokens or reason:
            return update
        return None


class Ticket:
    """A request's rows in the engine; :meth:`cancel` frees their slots at once."""

    def __init__(self, engine: "Engine", sink: Any):
        self.engine = engine
        self.sink = sink
        self.rows: List[_Row] = []
        self.cancelled = False

    def cancel(self) -> None:
        """Drop the rows that are still running (a no-op once all finished)."""
        self.cancelled = True
        self.engine._release(self.rows)
        self.engine._wake()


@dataclass
class _Slot:
    """One served model and its batch."""

    name: str
    model: nn.Module
    tokenizer: Any
    device: torch.device
    autocast: Callable[[], ContextManager]
    pending: Deque[_Row] = field(default_factory=deque)
    rows: List[_Row] = field(default_factory=list)
    logits: Optional[torch.Tensor] = None  # (B, V): next-token logits of the rows
    state: Any = None  # the model's recurrent state, batch along dim 1
    settings: Optional[Tuple[torch.Tensor, ...]] = None  # the rows' sampling settings, rebuilt when rows change


def cat_states(a: Any, b: Any) -> Any:
    """Concatenate two recurrent states along the batch (dim 1)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, tuple):
        return tuple(torch.cat([x, y], dim=1) for x, y in zip(a, b))
    return torch.cat([a, b], dim=1)


def sample_rows(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                greedy: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` (B, V), every row with its own settings.

    ``temperature`` (B,) float, ``top_k`` (B,) long (0 = off), ``top_p`` (B,)
    float (1 = off), ``greedy`` (B,) bool, ``uniforms`` (B,) in [0, 1). The
    same transforms as :func:`genrnn.sampling.sample_next` (temperature, then
    top-k, then top-p on what top-k kept), per row; then the token is drawn by
    inverse CDF over the vocabulary in id order with the row's own uniform. So
    a row's token depends on its own logits and uniform only, never on the
    other rows or on whether they filter.
    """
    logits = logits.float().index_fill(1, torch.tensor([PAD_ID], device=logits.device), float("-inf"))
    best = logits.argmax(dim=-1)  # <pad> is never a word
    if bool(greedy.all()):
        return best
    t = temperature.to(logits.dtype).reshape(-1, 1)
    logits = logits / torch.where(t > 0, t, torch.ones_like(t))
    if bool((top_k > 0).any()) or bool((top_p < 1.0).any()):
        logits = _filter_rows(logits, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)
    total = cdf[:, -1:]
    # strictly below the total, so the search always lands on a token with probability > 0
    below = torch.nextafter(total, torch.zeros_like(total))
    target = torch.minimum(uniforms.to(cdf.dtype).reshape(-1, 1) * total, below)
    sampled = torch.searchsorted(cdf, target, right=True).reshape(-1).clamp(max=cdf.shape[-1] - 1)
    return torch.where(greedy, best, sampled)


def _filter_rows(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row top-k (0 = off) then top-p (1 = off); dropped logits become -inf.

    As :func:`genrnn.sampling.top_k_filter` (ties with the k-th are kept) and
    :func:`genrnn.sampling.top_p_filter` (the smallest set of most likely
    tokens whose mass reaches p), each row on its own.
    """
    V = logits.shape[-1]
    ranked, order = torch.sort(logits, dim=-1, descending=True, stable=True)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, V)).clamp(1, V)
    kth = ranked.gather(1, (k - 1).reshape(-1, 1))
    ranked = ranked.masked_fill(ranked < kth, float("-inf"))
    probs = torch.softmax(ranked, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
    p = top_p.to(probs.dtype).reshape(-1, 1)
    drop_ranked = (before >= p) & (p < 1.0)  # p = 1 keeps everything, whatever the rounding
    drop_ranked[:, 0] = False  # the best token always stays
    drop = torch.zeros_like(drop_ranked).scatter(-1, order, drop_ranked | torch.isinf(ranked))
    return logits.masked_fill(drop, float("-inf"))


class Engine:
    """Runs the rows of all requests, batched per model, in one thread.

    ``models`` maps a name to an object with ``.model``, ``.tokenizer`` and
    ``.runtime`` (a :class:`genrnn.api.TrainedModel`). ``max_streams`` caps the
    rows held at once, over all models: :meth:`submit` raises
    :class:`EngineFull` beyond it, so memory and latency stay bounded.
    """

    def __init__(self, models: Dict[str, Any], max_streams: int = 128, prefill_tokens: int = PREFILL_TOKENS):
        if max_streams < 1:
            raise ValueError("max_streams must be >= 1")
        self.max_streams = max_streams
        self.prefill_tokens = prefill_tokens
        self._slots: Dict[str, _Slot] = {}
        for name, trained in models.items():
            runtime = trained.runtime
            self._slots[name] = _Slot(name, trained.model.eval(), trained.tokenizer, runtime.device, runtime.autocast)
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # guards _held and the rows' released flags
        self._held = 0
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self.steps = 0  # batched steps taken, and tokens generated (for /healthz and benchmarks)
        self.tokens = 0

    # -- the request side (any thread) ------------------------------------------

    @property
    def active(self) -> int:
        """Rows held: running, or waiting for their prefill."""
        return self._held

    def start(self) -> "Engine":
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="genrnn-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread; rows still running end with finish_reason "cancelled"."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, model: str, specs: Sequence[RowSpec], sink: Any) -> Ticket:
        """Queue ``specs`` on ``model``; updates go to ``sink.deliver``.

        Raises KeyError for an unknown model, :class:`EngineFull` when the
        rows do not fit, :class:`EngineStopped` when the engine is not running.
        """
        slot = self._slots[model]
        ticket = Ticket(self, sink)
        ticket.rows = [_Row(spec, ticket, slot.tokenizer) for spec in specs]
        with self._lock:
            if self._held + len(ticket.rows) > self.max_streams:
                raise EngineFull(f"the server is generating {self._held} streams, at most {self.max_streams} "
                                 f"at once; this request needs {len(ticket.rows)} more")
            self._held += len(ticket.rows)
        with self._cond:
            if self._stopping or self._thread is None:
                self._release(ticket.rows)
                raise EngineStopped("the engine is not running")
            slot.pending.extend(ticket.rows)
            self._cond.notify_all()
        return ticket

    def _release(self, rows: Sequence[_Row]) -> None:
        with self._lock:
            for row in rows:
                if not row.released:
                    row.released = True
                    self._held -= 1

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # -- the engine thread ------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._stopping and not any(s.pending or s.rows for s in self._slots.values()):
                        self._cond.wait()
                    if self._stopping:
                        break
                    joining = {name: self._take_pending(s) for name, s in self._slots.items()}
                for name, slot in self._slots.items():
                    if not (slot.rows or joining[name]):
                        continue
                    outbox: List[Tuple[_Row, Update]] = []
                    try:
                        self._iterate(slot, joining[name], outbox)
                    except Exception as e:  # a failing model must not take the server down
                        log.exception("engine step failed on model %s", name)
                        self._fail(slot, joining[name], f"generation failed: {type(e).__name__}: {e}", outbox)
                    self._publish(outbox)
        self._shutdown()

    def _take_pending(self, slot: _Slot) -> List[_Row]:
        """The rows that join at this step: FIFO, within the prefill budget."""
        taken: List[_Row] = []
        longest = 0
        while slot.pending:
            row = slot.pending[0]
            size = max(longest, len(row.ids)) * (len(taken) + 1)
            if taken and size > self.prefill_tokens:
                break
            taken.append(slot.pending.popleft())
            longest = max(longest, len(row.ids))
        return taken

    def _iterate(self, slot: _Slot, joining: List[_Row], outbox: List[Tuple[_Row, Update]]) -> None:
        self._drop(slot, [r for r in slot.rows if not r.ticket.cancelled])
        joining = [r for r in joining if not r.ticket.cancelled]
        ready = []
        for row in joining:
            if row.params.max_tokens <= 0:  # nothing to generate
                self._finish(row, Update(row.index, finish_reason="length"), outbox)
            else:
                ready.append(row)
        if ready:
            self._join(slot, ready)
        if not slot.rows:
            return
        with slot.autocast():
            tokens, logprobs = self._sample(slot)
        keep: List[int] = []
        for i, (row, tid) in enumerate(zip(slot.rows, tokens.tolist())):
            update = row.advance(tid, logprobs[i] if logprobs is not None else None)
            if row.done:
                self._finish(row, update, outbox)
            else:
                keep.append(i)
                if update is not None:
                    outbox.append((row, update))
        self._publish(outbox)  # hand the tokens over before the step: lower latency
        outbox.clear()
        self.steps += 1
        self.tokens += len(slot.rows)
        if len(keep) < len(slot.rows):
            self._drop(slot, [slot.rows[i] for i in keep], keep)
            tokens = tokens[torch.tensor(keep, dtype=torch.long)] if keep else tokens[:0]
        if not slot.rows:
            return
        with slot.autocast():  # RNNLM.step picks its own kernels per batch size
            slot.logits, slot.state = slot.model.step(tokens.to(slot.device), slot.state)

    def _join(self, slot: _Slot, rows: List[_Row]) -> None:
        """Prefill the prompts of ``rows`` as one padded batch and add them to the batch."""
        lengths = torch.tensor([len(r.ids) for r in rows])
        idx = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long)
        for i, r in enumerate(rows):
            idx[i, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        with slot.autocast():
            logits, state = slot.model.prefill(idx.to(slot.device), lengths, None)
        if slot.rows:
            slot.logits = torch.cat([slot.logits, logits])
            slot.state = cat_states(slot.state, state)
        else:
            slot.logits, slot.state = logits, state
        slot.rows = slot.rows + rows
        slot.settings = None

    def _drop(self, slot: _Slot, keep_rows: List[_Row], keep: Optional[List[int]] = None) -> None:
        """Keep only ``keep_rows`` (positions ``keep`` in the batch) in the batch."""
        if len(keep_rows) == len(slot.rows):
            return
        if keep is None:
            kept = set(map(id, keep_rows))
            keep = [i for i, r in enumerate(slot.rows) if id(r) in kept]
        slot.rows = keep_rows
        slot.settings = None
        if not keep_rows:
            slot.logits, slot.state = None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=slot.device)
        slot.logits = slot.logits.index_select(0, index) if slot.logits is not None else None
        slot.state = map_state(lambda s: s.index_select(1, index), slot.state)

    def _sample(self, slot: _Slot) -> Tuple[torch.Tensor, Optional[List[Any]]]:
        """The next token of every row (CPU tensor), and the logprobs rows asked for."""
        rows, dev = slot.rows, slot.device
        if slot.settings is None:
            slot.settings = (
                torch.tensor([r.greedy for r in rows], device=dev),
                torch.tensor([r.params.temperature for r in rows], device=dev),
                torch.tensor([r.params.top_k or 0 for r in rows], dtype=torch.long, device=dev),
                torch.tensor([1.0 if r.params.top_p is None else r.params.top_p for r in rows], device=dev),
            )
        greedy, temperature, top_k, top_p = slot.settings
        uniforms = torch.tensor([0.0 if r.greedy else r.uniform() for r in rows], device=dev)
        tokens = sample_rows(slot.logits, temperature, top_k, top_p, greedy, uniforms)
        wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        if not wanted:
            return tokens.cpu(), None
        which = torch.tensor(wanted, dtype=torch.long, device=dev)
        lsm = torch.log_softmax(slot.logits.index_select(0, which).float(), dim=-1)
        chosen = lsm.gather(1, tokens.index_select(0, which).reshape(-1, 1)).reshape(-1).tolist()
        top_n = min(max(rows[i].params.logprobs for i in wanted), lsm.shape[-1])
        top_values, top_ids = torch.topk(lsm, top_n, dim=-1)
        top_values, top_ids = top_values.tolist(), top_ids.tolist()
        logprobs: List[Any] = [None] * len(rows)
        for j, i in enumerate(wanted):
            n = rows[i].params.logprobs
            top = {slot.tokenizer.token_str(t): _finite(v) for t, v in zip(top_ids[j][:n], top_values[j][:n])}
            logprobs[i] = (_finite(chosen[j]), top)
        return tokens.cpu(), logprobs

    def _finish(self, row: _Row, update: Optional[Update], outbox: List[Tuple[_Row, Update]]) -> None:
        row.done = True
        self._release([row])
        if not row.ticket.cancelled and update is not None:
            outbox.append((row, update))

    def _fail(self, slot: _Slot, joining: List[_Row], message: str, outbox: List[Tuple[_Row, Update]]) -> None:
        """End every row of ``slot`` (and those joining) with an error; start afresh."""
        seen = set()
        for row in slot.rows + joining:
            if id(row) in seen or row.done:
                continue
            seen.add(id(row))
            self._finish(row, Update(row.index, finish_reason="error", completion_tokens=row.count, error=message),
                         outbox)
        slot.rows, slot.logits, slot.state, slot.settings = [], None, None, None

    def _publish(self, outbox: List[Tuple[_Row, Update]]) -> None:
        """Hand each sink its updates: one call per event loop, whatever the number of rows."""
        if not outbox:
            return
        by_sink: Dict[int, Tuple[Any, List[Update]]] = {}
        for row, update in outbox:
            if row.ticket.cancelled:
                continue
            sink = row.ticket.sink
            by_sink.setdefault(id(sink), (sink, []))[1].append(update)
        by_loop: Dict[int, Tuple[Any, list]] = {}
        for sink, updates in by_sink.values():
            loop = getattr(sink, "loop", None)
            if loop is None:
                sink.deliver(updates)
            else:
                by_loop.setdefault(id(loop), (loop, []))[1].append((sink, updates))
        for loop, items in by_loop.values():
            try:
                loop.call_soon_threadsafe(_deliver_all, items)
            except RuntimeError:  # the loop is closed: the server is going down
                pass

    def _shutdown(self) -> None:
        outbox: List[Tuple[_Row, Update]] = []
        with self._cond:
            for slot in self._slots.values():
                rows = slot.rows + list(slot.pending)
                slot.pending.clear()
                for row in rows:
                    if not row.done:
                        self._finish(row, Update(row.index, finish_reason="cancelled", completion_tokens=row.count,
                                                 error="the server is shutting down"), outbox)
                slot.rows, slot.logits, slot.state, slot.settings = [], None, None, None
        self._publish(outbox)


def _deliver_all(items) -> None:
    for sink, updates in items:
        sink.deliver(updates)


def _finite(x: float) -> float:
    """JSON has no -inf: a token the model rules out gets a very low logprob instead."""
    return x if math.isfinite(x) else -9999.0

"""The batching engine: one thread owns the models and steps every active
stream of a model as one batch.

A recurrent model generates a token with one ``step`` whatever the batch, and on
a CPU a step at batch 64 costs little more than one at batch 1 (the weights are
read once either way). So the engine keeps the rows of all requests -- every
prompt times ``n`` -- in one batch per model::

    loop:
        rows that asked for their prompt's logprobs (echo + logprobs) get
        them from one teacher-forced pass over their prompts (``_score``)
        rows that joined since the last step run through one ``prefill``
        (from ``state.start`` of their stacked conditions) and join the batch
        (``state.cat_rows``; the sampler adds their settings)
        every row draws its next token (``sampling.Sampler``: its own
        temperature / top-k / top-p and its own generator)
        and turns it into text (``sampling.TextStream``: stop strings, hold-back)
        the new text goes back to the requests
        finished and cancelled rows leave (``state.select_rows``)
        one ``model.step`` for the rows that remain

Sampling and text assembly are those of ``genrnn.sampling.complete``, so a
seeded row gives the same text here as locally, alone or in any batch. Rows
join and leave between steps, so a request never waits for another to finish.
All torch work happens in the engine thread (under ``torch.inference_mode``).

The engine knows tokens and text, not HTTP: a request hands it row specs and a
*sink*; the engine calls ``sink.deliver(updates)`` with a list of
:class:`Update`. A sink with an event ``loop`` attribute is called in that
loop. A wake-up of a loop costs it, and through the GIL the engine, about
half of a step at batch 1, so per loop at most one delivery is scheduled
at a time, what the engine produces meanwhile is added to it, and text that
can wait goes at most every :data:`DELIVERY_INTERVAL`; a row's first text
and its end go at once. A sink whose ``loop`` is None is called in the
engine thread at every step.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Deque, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .. import state as states
from ..errors import GenrnnError
from ..beam import beam_search
from ..sampling import RowSampling, Sampler, TextStream, padded_prompts
from ..tokenizers import EOS_ID

log = logging.getLogger("genrnn.serve")

# Prompts joining at one step are prefilled together while their padded size
# (rows x longest prompt) stays under this; the rest join at the next step.
PREFILL_TOKENS = 65_536
# Seconds between two wake-ups of an event loop for text that can wait (a
# row's first text and its end go at once). Well under the app's 20 ms between
# writes of a stream, and it spares the loop (and the GIL) a wake-up per step.
DELIVERY_INTERVAL = 0.002
# Scoring prompts (echo + logprobs) runs them through the model a chunk of
# positions at a time, so that the logits held at once (rows x positions x
# vocabulary) stay under this many numbers.
SCORE_ELEMENTS = 1 << 23


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
    seed: Optional[int] = None  # the row's own seed (app: sampling.row_seed); None: a fresh random one
    beam: Optional[int] = None  # beam search with this many beams instead of sampling (one update at the end)
    length_penalty: float = 1.0  # with beam: rank by log p / length^length_penalty
    # also score the prompt: each of its tokens' logprob given those before it (the first given the
    # beginning-of-document <eos>) and this many alternatives, in Update.prompt before any other update
    prompt_logprobs: Optional[int] = None


@dataclass(frozen=True)
class RowSpec:
    """One row to generate: ``index`` is its choice index in the request."""

    index: int
    prompt_ids: Sequence[int]  # starts with EOS_ID, the beginning-of-document marker
    params: RowParams
    condition: Optional[torch.Tensor] = None  # this row's condition (no batch dimension), for a conditioned model


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
    # with RowParams.prompt_logprobs: (logprob, top alternatives) of each prompt token after the
    # leading <eos>, in order; in the row's first update
    prompt: Optional[List[Tuple[float, Dict[str, float]]]] = None


class _Row:
    """A stream in the engine: its request, its sampling settings and its text."""

    __slots__ = ("index", "ticket", "sink", "loop", "ids", "params", "condition", "sampling", "text", "done",
                 "released")

    def __init__(self, spec: RowSpec, ticket: "Ticket", tokenizer):
        p = spec.params
        self.index = spec.index
        self.ticket = ticket
        self.sink = ticket.sink
        self.loop = getattr(ticket.sink, "loop", None)  # None: deliver in the engine thread
        self.ids = list(spec.prompt_ids)
        self.params = p
        self.condition = spec.condition
        self.sampling = RowSampling(0.0 if p.greedy else p.temperature, p.top_k, p.top_p, p.seed)
        self.text = TextStream(tokenizer, self.ids, p.stop, p.max_tokens)
        self.done = False
        self.released = False

    @property
    def count(self) -> int:
        return self.text.count


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
        self.engine._cancels = True
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
    sampler: Optional[Sampler] = None  # the rows' sampling, in the rows' order
    conditioned: bool = False  # whether the rows carry conditions (all or none of them do)
    logprobs: bool = False  # whether any row asks for logprobs

    def reset(self) -> None:
        self.rows, self.logits, self.state, self.logprobs = [], None, None, False
        self.sampler = Sampler(self.device)

    def set_rows(self, rows: List[_Row]) -> None:
        self.rows = rows
        self.logprobs = any(r.params.logprobs is not None for r in rows)


class _Mailbox:
    """Updates on their way to the sinks of one event loop. At most one
    delivery is scheduled at a time: while the loop has not run it, the
    engine adds to it instead of waking the loop again; and text that can
    wait is sent at most every :data:`DELIVERY_INTERVAL` (the engine flushes
    what waits at the end of each iteration and before it idles)."""

    def __init__(self, loop: Any):
        self.loop = loop
        self.lock = threading.Lock()
        self.items: List[Tuple[Any, Update]] = []
        self.scheduled = False
        self.last = 0.0  # when the last delivery was scheduled (time.monotonic)

    def post(self, items: List[Tuple[Any, Update]], urgent: bool) -> None:
        """From the engine thread; raises RuntimeError once the loop is closed."""
        with self.lock:
            self.items.extend(items)
        self.flush(urgent)

    def flush(self, force: bool) -> None:
        """Schedule a delivery of what waits, unless one is scheduled already
        or (without ``force``) the last was less than the interval ago."""
        with self.lock:
            if self.scheduled or not self.items:
                return
            now = time.monotonic()
            if not force and now - self.last < DELIVERY_INTERVAL:
                return
            self.scheduled, self.last = True, now
        try:
            self.loop.call_soon_threadsafe(self.deliver)
        except RuntimeError:
            with self.lock:
                self.items.clear()
                self.scheduled = False
            raise

    def deliver(self) -> None:
        """In the loop: hand each sink all that arrived, in one call."""
        with self.lock:
            items, self.items = self.items, []
            self.scheduled = False
        by_sink: Dict[int, Tuple[Any, List[Update]]] = {}
        for sink, update in items:
            entry = by_sink.get(id(sink))
            if entry is None:
                by_sink[id(sink)] = (sink, [update])
            else:
                entry[1].append(update)
        for sink, updates in by_sink.values():
            sink.deliver(updates)


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
            slot = _Slot(name, trained.model.eval(), trained.tokenizer, runtime.device, runtime.autocast)
            slot.reset()
            self._slots[name] = slot
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # guards _held and the rows' released flags
        self._held = 0
        self._cancels = False  # some ticket was cancelled since the engine last looked
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._mailboxes: Dict[int, _Mailbox] = {}  # id(loop) -> its mailbox
        self.steps = 0  # batched steps taken, and tokens generated (for /healthz and benchmarks)
        self.tokens = 0

    # -- the request side (any thread) ------------------------------------------

    @property
    def active(self) -> int:
        """Rows held: running, or waiting for their prefill."""
        return self._held

    @property
    def waiting(self) -> int:
        """Rows submitted and not yet prefilled."""
        return sum(len(slot.pending) for slot in self._slots.values())

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
        slots = list(self._slots.values())
        with torch.inference_mode():
            while True:
                if self._mailboxes:
                    self._flush(force=not any(s.pending or s.rows for s in slots))
                with self._cond:
                    while not self._stopping and not any(s.pending or s.rows for s in slots):
                        self._cond.wait()
                    if self._stopping:
                        break
                    joining = [self._take_pending(s) if s.pending else [] for s in slots]
                cancels, self._cancels = self._cancels, False
                for slot, rows in zip(slots, joining):
                    if not (slot.rows or rows):
                        continue
                    outbox: List[Tuple[_Row, Update]] = []
                    try:
                        if cancels:
                            self._drop_rows(slot, [i for i, r in enumerate(slot.rows) if not r.ticket.cancelled])
                        self._iterate(slot, rows, outbox)
                    except Exception as e:  # a failing model must not take the server down
                        log.exception("engine step failed on model %s", slot.name)
                        self._fail(slot, rows, f"generation failed: {type(e).__name__}: {e}", outbox)
                    self._publish(outbox, urgent=True)
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
        if joining:
            scoring = [r for r in joining if r.params.prompt_logprobs is not None and not r.ticket.cancelled]
            if scoring:
                self._score(slot, scoring, outbox)
            ready, searches = [], []
            for row in joining:
                if row.ticket.cancelled or row.done:
                    continue
                if row.params.max_tokens <= 0:  # nothing to generate
                    self._finish(row, Update(row.index, finish_reason="length"), outbox)
                else:
                    (searches if row.params.beam is not None else ready).append(row)
            if searches:
                self._search(slot, searches, outbox)
            if ready:
                self._join(slot, ready, outbox)
        rows = slot.rows
        if not rows:
            return
        with slot.autocast():  # RNNLM.step picks its own kernels per batch size
            tokens = slot.sampler(slot.logits)
            logprobs = self._logprobs(slot, tokens) if slot.logprobs else None
            keep: List[int] = []
            urgent = bool(outbox)  # a row's first token or its end (or a refusal): deliver at once
            for i, (row, tid) in enumerate(zip(rows, tokens.tolist())):
                text = row.text
                offset = text.length
                piece, reason = text.push(tid)
                if logprobs is not None and logprobs[i] is not None:
                    shown = text.piece if text.piece else slot.tokenizer.token_str(tid)
                    update = Update(row.index, piece, [TokenInfo(shown, offset, *logprobs[i])], reason, text.count)
                elif piece or reason:
                    update = Update(row.index, piece, [], reason, text.count)
                else:  # all of its text held back
                    keep.append(i)
                    continue
                if reason is not None:
                    self._finish(row, update, outbox)
                    urgent = True
                else:
                    keep.append(i)
                    outbox.append((row, update))
                    urgent = urgent or text.count == 1
            self._publish(outbox, urgent)  # hand the tokens over before the step: lower latency
            outbox.clear()
            self.steps += 1
            self.tokens += len(rows)
            if len(keep) < len(rows):
                index = self._drop_rows(slot, keep)
                if index is None:
                    return
                tokens = tokens.index_select(0, index)
            slot.logits, slot.state = slot.model.step(tokens, slot.state)

    def _join(self, slot: _Slot, rows: List[_Row], outbox: List[Tuple[_Row, Update]]) -> None:
        """Prefill the prompts of ``rows`` and add them to the batch.

        Rows with and without a condition never share a model's batch: the
        two kinds are prefilled apart, and a kind that differs from the rows
        already running (or whose start or prefill fails, e.g. a condition
        for a model that takes none) ends with an error; the others go on.
        """
        for conditioned, group in _by_kind(rows).items():
            if slot.rows and conditioned != slot.conditioned:
                have = "with" if slot.conditioned else "without"
                self._fail_rows(group, "rows with and without a condition cannot share a model: this model is "
                                       f"generating rows {have} one", outbox)
                continue
            try:
                logits, state = self._prefill(slot, group)
            except Exception as e:
                self._fail_group(slot, group, "prefill", "generation", e, outbox)
                continue
            if slot.rows:
                slot.logits = torch.cat([slot.logits, logits])
                slot.state = states.cat_rows(slot.state, state)
            else:
                slot.logits, slot.state = logits, state
            slot.set_rows(slot.rows + group)
            slot.conditioned = conditioned
            slot.sampler.add([r.sampling for r in group])
            for row in group:
                row.condition = None  # the state carries what the model needs of it

    def _search(self, slot: _Slot, rows: List[_Row], outbox: List[Tuple[_Row, Update]]) -> None:
        """Beam-search rows: each group of rows with the same beam, length
        and penalty decodes as one batch (``genrnn.beam``), between two steps
        of the sampled rows, and ends with one update holding its whole text."""
        groups: Dict[tuple, List[_Row]] = {}
        for row in rows:
            p = row.params
            groups.setdefault((p.beam, p.max_tokens, p.length_penalty, row.condition is not None), []).append(row)
        for (beam, max_tokens, penalty, _), group in groups.items():
            try:
                found = beam_search(slot.model, [r.ids for r in group], beam=beam, max_new_tokens=max_tokens,
                                    length_penalty=penalty, device=slot.device, autocast=slot.autocast(),
                                    condition=_conditions(slot, group))
            except Exception as e:
                self._fail_group(slot, group, "beam search", "generation", e, outbox)
                continue
            self.steps += 1
            for row, hyps in zip(group, found):
                best = hyps[0]
                text, _ = row.text.push_all(best.ids + ([EOS_ID] if best.finish_reason == "eos" else []))
                self.tokens += best.length
                self._finish(row, Update(row.index, text, [], best.finish_reason, best.length), outbox)

    def _score(self, slot: _Slot, rows: List[_Row], outbox: List[Tuple[_Row, Update]]) -> None:
        """The prompt's logprobs of rows that asked (echo + logprobs), as the
        first update of each: before they join, from one teacher-forced pass
        (``model(idx, None, state)`` from ``state.start``, as
        ``TrainedModel.score``) over each kind's prompts, right-padded (the
        padding after a prompt does not change what comes before it). A row
        whose scoring fails ends with an error; the others go on."""
        for group in _by_kind(rows).values():
            try:
                scores = self._score_prompts(slot, group)
            except Exception as e:
                self._fail_group(slot, group, "scoring prompts", "scoring", e, outbox)
                continue
            for row, prompt in zip(group, scores):
                outbox.append((row, Update(row.index, prompt=prompt)))

    def _score_prompts(self, slot: _Slot, rows: List[_Row]) -> List[List[Tuple[float, Dict[str, float]]]]:
        idx, lengths = padded_prompts([r.ids for r in rows])
        out: List[List[Tuple[float, Dict[str, float]]]] = [[] for _ in rows]
        positions = idx.shape[1] - 1  # position t predicts token t + 1
        if positions <= 0:
            return out
        lengths = lengths.tolist()
        idx = idx.to(slot.device)
        condition = _conditions(slot, rows)
        chunk = max(1, SCORE_ELEMENTS // (len(rows) * max(1, slot.tokenizer.vocab_size)))
        token_str = slot.tokenizer.token_str
        with slot.autocast():
            state = states.start(slot.model, condition)
            for a in range(0, positions, chunk):
                b = min(positions, a + chunk)
                logits, _, state = slot.model(idx[:, a:b], None, state)
                lsm = torch.log_softmax(logits.float(), dim=-1)  # (B, b - a, V)
                chosen = lsm.gather(2, idx[:, a + 1 : b + 1, None])[..., 0].tolist()
                top_n = min(max(r.params.prompt_logprobs for r in rows), lsm.shape[-1])
                if top_n > 0:
                    top_values, top_ids = torch.topk(lsm, top_n, dim=-1)
                    top_values, top_ids = top_values.tolist(), top_ids.tolist()
                for i, row in enumerate(rows):
                    n = row.params.prompt_logprobs
                    for t in range(b - a):
                        if a + t + 1 >= lengths[i]:
                            break
                        top = ({token_str(k): _finite(v) for k, v in zip(top_ids[i][t][:n], top_values[i][t][:n])}
                               if n else {})
                        out[i].append((_finite(chosen[i][t]), top))
        return out

    def _prefill(self, slot: _Slot, rows: List[_Row]):
        idx, lengths = padded_prompts([r.ids for r in rows])
        with slot.autocast():
            start = states.start(slot.model, _conditions(slot, rows))
            return slot.model.prefill(idx.to(slot.device), lengths, start)

    def _drop_rows(self, slot: _Slot, keep: List[int]) -> Optional[torch.Tensor]:
        """Keep only the rows at positions ``keep``; their index tensor, or None
        when nothing changes or no row is left (then the batch is reset)."""
        if len(keep) == len(slot.rows):
            return None
        if not keep:
            slot.reset()
            return None
        index = torch.tensor(keep, dtype=torch.long, device=slot.device)
        slot.set_rows([slot.rows[i] for i in keep])
        slot.logits = slot.logits.index_select(0, index) if slot.logits is not None else None
        slot.state = states.select_rows(slot.state, index)
        slot.sampler.keep(keep, index)
        return index

    def _logprobs(self, slot: _Slot, tokens: torch.Tensor) -> List[Any]:
        """(logprob of the drawn token, the top alternatives) for the rows that asked."""
        rows, dev = slot.rows, slot.device
        wanted = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
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
        return logprobs

    def _finish(self, row: _Row, update: Optional[Update], outbox: List[Tuple[_Row, Update]]) -> None:
        row.done = True
        self._release([row])
        if not row.ticket.cancelled and update is not None:
            outbox.append((row, update))

    def _fail_group(self, slot: _Slot, rows: Sequence[_Row], doing: str, what: str, e: Exception,
                    outbox: List[Tuple[_Row, Update]]) -> None:
        """End ``rows`` with the error ``e`` raised while ``doing`` something: a
        user's error (GenrnnError) as it is, anything else logged, as "``what``
        failed: ...". The other rows go on."""
        if not isinstance(e, GenrnnError):
            log.exception("%s failed on model %s", doing, slot.name)
        message = str(e) if isinstance(e, GenrnnError) else f"{what} failed: {type(e).__name__}: {e}"
        self._fail_rows(rows, message, outbox)

    def _fail_rows(self, rows: Sequence[_Row], message: str, outbox: List[Tuple[_Row, Update]]) -> None:
        for row in rows:
            if not row.done:
                self._finish(row, Update(row.index, finish_reason="error", completion_tokens=row.count,
                                         error=message), outbox)

    def _fail(self, slot: _Slot, joining: List[_Row], message: str, outbox: List[Tuple[_Row, Update]]) -> None:
        """End every row of ``slot`` (and those joining) with an error; start afresh."""
        seen = set()
        rows = []
        for row in slot.rows + joining:
            if id(row) not in seen:
                seen.add(id(row))
                rows.append(row)
        self._fail_rows(rows, message, outbox)
        slot.reset()

    def _publish(self, outbox: List[Tuple[_Row, Update]], urgent: bool) -> None:
        """Hand the updates over: to a loop's mailbox (delivered at once if
        ``urgent``, else within :data:`DELIVERY_INTERVAL`), or to a thread
        sink at once."""
        if not outbox:
            return
        by_loop: Dict[int, Tuple[Any, List[Tuple[Any, Update]]]] = {}
        by_sink: Dict[int, Tuple[Any, List[Update]]] = {}
        for row, update in outbox:
            if row.ticket.cancelled:
                continue
            loop = row.loop
            if loop is None:
                by_sink.setdefault(id(row.sink), (row.sink, []))[1].append(update)
            else:
                entry = by_loop.get(id(loop))
                if entry is None:
                    entry = by_loop[id(loop)] = (loop, [])
                entry[1].append((row.sink, update))
        for sink, updates in by_sink.values():
            sink.deliver(updates)
        for key, (loop, items) in by_loop.items():
            mailbox = self._mailboxes.get(key)
            if mailbox is None or mailbox.loop is not loop:
                mailbox = self._mailboxes[key] = _Mailbox(loop)
            try:
                mailbox.post(items, urgent)
            except RuntimeError:  # the loop is closed: the server is going down
                del self._mailboxes[key]

    def _flush(self, force: bool) -> None:
        """Schedule the deliveries whose interval has passed (all of them with ``force``)."""
        for key, mailbox in list(self._mailboxes.items()):
            try:
                mailbox.flush(force)
            except RuntimeError:
                del self._mailboxes[key]

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
                slot.reset()
        self._publish(outbox, urgent=True)
        self._flush(force=True)


def _by_kind(rows: Sequence[_Row]) -> Dict[bool, List[_Row]]:
    """Rows with a condition and rows without, apart (they are never batched together)."""
    kinds: Dict[bool, List[_Row]] = {}
    for row in rows:
        kinds.setdefault(row.condition is not None, []).append(row)
    return kinds


def _conditions(slot: _Slot, rows: Sequence[_Row]) -> Optional[torch.Tensor]:
    """The rows' conditions as one tensor on the model's device (zero-padded where their
    sizes differ), or None for rows without (all or none of them have one)."""
    if rows[0].condition is None:
        return None
    return states.stack_conditions([r.condition for r in rows]).to(slot.device)


def _finite(x: float) -> float:
    """JSON has no -inf: a token the model rules out gets a very low logprob instead."""
    return x if math.isfinite(x) else -9999.0

"""Sampling: pure logits transforms and one token-by-token generation loop.

The transforms work on logits of shape (B, V) and return new logits in which
excluded tokens are ``-inf``:

* :func:`apply_temperature` -- divide by T (T may differ per row);
* :func:`top_k_filter`      -- keep the k largest logits of each row;
* :func:`top_p_filter`      -- keep the smallest set of tokens whose probability
  reaches p (nucleus sampling, Holtzman et al. 2019).

:func:`generate_tokens` runs the prompts through the model once (``prefill``),
then steps the recurrent state one token at a time -- it never re-reads the
text. It yields one (B,) tensor of new token ids per step; callers decode,
stream and decide when to stop. Temperature 0 means greedy (argmax).

Speed (``benchmarks/sampling.py``; figures in docs/benchmarks.md, "Sampling speed"):
a token costs one ``model.step`` plus a handful of small tensor operations, so
at small batch the fixed cost of each operation is what counts. The loop
therefore settles once per generation what does not change between steps
(greedy or not, one temperature or one per row; :class:`_Sampler`), leaves
``<pad>`` out by slicing the logits instead of copying them, and draws the
token as the winner of an exponential race (see :func:`_race`) rather than
with ``torch.multinomial``, which checks its input with two host
synchronisations and about ten operations per call. On an accelerator the
sampled ids stay on the device and are copied to the host in chunks
(:data:`_MAX_CHUNK`), so the loop does not wait for the device every token.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Union

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
    seed: Optional[int] = None

    def validate(self) -> None:
        if self.max_new_tokens < 0:
            raise GenrnnError("--length must be >= 0")
        temps = self.temperature if isinstance(self.temperature, (list, tuple)) else [self.temperature]
        if isinstance(self.temperature, torch.Tensor):
            temps = self.temperature.flatten().tolist()
        if any(float(t) < 0 for t in temps):
            raise GenrnnError("--temperature must be >= 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise GenrnnError("--top-k must be >= 1")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GenrnnError("--top-p must be in (0, 1]")


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``logits / T`` row-wise; rows with T == 0 are left as they are (greedy
    rows take the argmax, which temperature does not change)."""
    t = temperature.to(logits.dtype).reshape(-1, 1)
    return logits / torch.where(t > 0, t, torch.ones_like(t))


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row; the rest become -inf.
    Logits tied with the k-th largest are kept too, so ties can keep more."""
    if k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose total probability is
    at least ``p`` (always at least one token)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = before >= p  # the first token always has before == 0 < p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: torch.Tensor, temperature: torch.Tensor, top_k: Optional[int], top_p: Optional[float],
                generator: Optional[torch.Generator]) -> torch.Tensor:
    """One token per row from logits (B, V) -> (B,). ``<pad>`` is never drawn;
    rows with temperature 0 take the argmax. The logits are not modified."""
    return _Sampler(temperature, top_k, top_p, generator)(logits)


# <pad> is left out of sampling by slicing it off the front of the logits
assert PAD_ID == 0, "sampling assumes <pad> is token 0"

# Smallest normal float32: uniforms are clamped to it so that -log(u) is finite.
_TINY = torch.finfo(torch.float32).tiny


def _race(probs: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Index of one draw per row from the (unnormalised) ``probs`` (B, V).

    Each token gets an exponential waiting time ``E = -log(u)`` and the token
    with the largest ``p / E`` wins: ``E / p`` is exponential with rate ``p``,
    and the shortest of independent exponential times is token ``i`` with
    probability ``p_i / sum(p)``. This is what ``torch.multinomial`` does
    internally for one sample, minus its input checks (two host
    synchronisations per call). Measured on one thread, CPU time per call,
    softmax included: 14.8 against 18.6 us at batch 1, 20 against 41 at
    batch 8, 48 against 127 at batch 64 (the whole old ``sample_next``: 53,
    68, 174; :class:`_Sampler`: 17, 22, 50).

    Tokens with ``p = 0`` score exactly 0 and never win: ``u`` is clamped away
    from 0, so every ``E`` is finite and positive (no ``0 / 0``), and a token
    with ``p > 0`` always scores above 0. The uniforms are float32 (steps of
    2**-24), so a token less likely than about 1e-7 times the favourite is
    drawn less often than it should be.
    """
    u = torch.rand(probs.shape, generator=generator, device=probs.device, dtype=probs.dtype)
    # p / log(u) = -(p / E): the winner is the smallest
    return torch.argmin(probs / u.clamp_min_(_TINY).log_(), dim=-1)


class _Sampler:
    """Draws one token per row from logits (B, V), with everything that stays
    the same from step to step settled once: whether all rows are greedy, a
    single temperature or one per row, the divisor for each row. That takes
    the per-step host synchronisation (``bool((temperature == 0).all())``)
    and several small operations out of the loop.

    The transforms and their order are those of :func:`apply_temperature`,
    :func:`top_k_filter` and :func:`top_p_filter`, applied to the logits with
    the ``<pad>`` column sliced off (a view, no copy).
    """

    def __init__(self, temperature: torch.Tensor, top_k: Optional[int], top_p: Optional[float],
                 generator: Optional[torch.Generator]):
        temps = [float(t) for t in temperature.reshape(-1).tolist()]  # the one synchronisation
        self.top_k, self.top_p, self.generator = top_k, top_p, generator
        self.all_greedy = all(t == 0 for t in temps)
        self.greedy_rows: Optional[torch.Tensor] = None  # (B,) bool where some rows are greedy
        self.scale: Union[None, float, torch.Tensor] = None  # divide the logits by this
        if self.all_greedy:
            return
        if any(t == 0 for t in temps):
            self.greedy_rows = temperature.reshape(-1) == 0
        if len(set(temps)) == 1:
            self.scale = None if temps[0] == 1.0 else temps[0]
        else:
            t = temperature.to(torch.float32).reshape(-1, 1)
            self.scale = torch.where(t > 0, t, torch.ones_like(t))

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        z = logits[:, PAD_ID + 1 :]  # a view: the caller's logits are never written
        if z.dtype != torch.float32:
            z = z.float()
        if self.all_greedy:
            return z.argmax(dim=-1) + 1
        if self.scale is not None:
            z = z / self.scale
        if self.top_k is not None:
            z = top_k_filter(z, self.top_k)
        if self.top_p is not None:
            z = top_p_filter(z, self.top_p)
        sampled = _race(torch.softmax(z, dim=-1), self.generator) + 1
        if self.greedy_rows is None:
            return sampled
        # temperature, top-k and top-p all keep the largest logit, so the greedy
        # rows' argmax can be taken after them
        return torch.where(self.greedy_rows, z.argmax(dim=-1) + 1, sampled)


def _temperature_tensor(temperature: Temperature, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(temperature, dtype=torch.float32, device=device).flatten()
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise GenrnnError(f"got {t.numel()} temperatures for {batch} samples")
    return t


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


@torch.inference_mode()
def generate_tokens(model: nn.Module, prompts: List[List[int]], config: SampleConfig,
                    device: Optional[torch.device] = None,
                    condition: Optional[torch.Tensor] = None) -> Iterator[torch.Tensor]:
    """Yield ``config.max_new_tokens`` steps of new ids, shape (B,), on the CPU.

    ``prompts`` are token-id lists (B of them, each non-empty); they run as one
    padded batch through ``model.prefill``.
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
    was_training = model.training
    model.eval()
    try:
        B = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts])
        idx = torch.full((B, int(lengths.max())), PAD_ID, dtype=torch.long)
        for i, p in enumerate(prompts):
            idx[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(config.seed)
        sample = _Sampler(_temperature_tensor(config.temperature, B, device), config.top_k, config.top_p,
                          generator)
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


def _collect(steps: Iterator[torch.Tensor], decoders: list, texts: List[str], counts: List[int],
             reasons: List[Optional[str]]) -> None:
    """:func:`complete` without stop strings or streaming: per token only the
    ids come to Python and are scanned for ``<eos>`` (to stop once every row
    has ended); the text is decoded once at the end. Fills ``texts``,
    ``counts`` and ``reasons`` exactly as the per-token loop would. Measured
    with a model that costs nothing, so that only the loop counts (300 tokens,
    one thread, CPU time per step at batch 64): 72 us for the bare
    ``generate_tokens``, 70 us with this, 107 us with the per-row loop (what
    ``on_text`` still gets), 171 us with a stop string. At batch 1 all are
    within 4 us.
    """
    rows: List[List[int]] = []
    ended = [False] * len(texts)
    remaining = len(texts)
    for nxt in steps:
        ids = nxt.tolist()
        rows.append(ids)
        if EOS_ID in ids:
            for i, tid in enumerate(ids):
                if tid == EOS_ID and not ended[i]:
                    ended[i] = True
                    remaining -= 1
            if not remaining:
                break
    for i, row in enumerate(zip(*rows)):
        n = row.index(EOS_ID) + 1 if ended[i] else len(row)
        counts[i] = n
        if ended[i]:
            reasons[i] = "eos"
            n -= 1
        texts[i] = "".join(decoders[i].push(tid) for tid in row[:n])


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
    back until it cannot.
    """
    stop = [s for s in stop if s]
    holdback = max((len(s) for s in stop), default=1) - 1
    ids = [[EOS_ID] + tokenizer.encode(p) for p in prompts]
    decoders = [tokenizer.decoder() for _ in prompts]
    for d, row in zip(decoders, ids):  # so the first new word is spaced after the prompt's last one
        for tid in row:
            d.push(tid)
    texts = [""] * len(prompts)
    emitted = [0] * len(prompts)
    counts = [0] * len(prompts)
    reasons: List[Optional[str]] = [None] * len(prompts)

    def flush(i: int, final: bool) -> None:
        end = len(texts[i]) if final else max(emitted[i], len(texts[i]) - holdback)
        if on_text is not None and end > emitted[i]:
            on_text(i, texts[i][emitted[i] : end])
        emitted[i] = end

    with autocast if autocast is not None else contextlib.nullcontext():
        steps = generate_tokens(model, ids, config, device, condition)
        try:
            if not stop and on_text is None:  # nothing to do per token: decode at the end
                _collect(steps, decoders, texts, counts, reasons)
            else:
                for nxt in steps:
                    for i, tid in enumerate(nxt.tolist()):
                        if reasons[i] is not None:
                            continue
                        counts[i] += 1
                        if tid == EOS_ID:
                            reasons[i] = "eos"
                            flush(i, True)
                            continue
                        texts[i] += decoders[i].push(tid)
                        if stop:
                            # only the tail can hold a new match: what was emitted had none
                            window = max(0, emitted[i] - holdback)
                            hits = [h for h in (texts[i].find(s, window) for s in stop) if h >= 0]
                            if hits:
                                texts[i] = texts[i][: min(hits)]
                                reasons[i] = "stop"
                                flush(i, True)
                                continue
                        flush(i, False)
                    if all(r is not None for r in reasons):
                        break
        finally:
            steps.close()  # puts the model back in training mode now, even after a break
    for i in range(len(prompts)):
        if reasons[i] is None:
            reasons[i] = "length"
            flush(i, True)
    return [Completion(p, t, c, r) for p, t, c, r in zip(prompts, texts, counts, reasons)]  # type: ignore[arg-type]

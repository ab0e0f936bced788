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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .errors import GenrnnError
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
    """One token per row from logits (B, V) -> (B,)."""
    logits = logits.float().clone()  # ours to change: never write into the model's (maybe shared) tensor
    logits[:, PAD_ID] = float("-inf")  # padding is never a word
    greedy = logits.argmax(dim=-1)
    if bool((temperature == 0).all()):
        return greedy
    logits = apply_temperature(logits, temperature)
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    sampled = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return torch.where(temperature.reshape(-1) == 0, greedy, sampled)


def _temperature_tensor(temperature: Temperature, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(temperature, dtype=torch.float32, device=device).flatten()
    if t.numel() == 1:
        return t.expand(batch)
    if t.numel() != batch:
        raise GenrnnError(f"got {t.numel()} temperatures for {batch} samples")
    return t


def _single_step_kernels(device: torch.device):
    """On CPU, run one-token steps without oneDNN: its fixed cost per call
    dominates a single time step (measured: a 2x256 LSTM samples 3,479 vs
    1,094 chars/s at batch 1 and 26,889 vs 22,856 at batch 64 without it). It
    stays on for the prompt and for training, where it is faster."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    return _mkldnn_disabled()


@contextlib.contextmanager
def _mkldnn_disabled():
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


@torch.inference_mode()
def generate_tokens(model: nn.Module, prompts: List[List[int]], config: SampleConfig,
                    device: Optional[torch.device] = None) -> Iterator[torch.Tensor]:
    """Yield ``config.max_new_tokens`` steps of new ids, shape (B,), on the CPU.

    ``prompts`` are token-id lists (B of them, each non-empty); they run as one
    padded batch through ``model.prefill``.
    """
    config.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenrnnError("every prompt needs at least one token")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        B = len(prompts)
        lengths = torch.tensor([len(p) for p in prompts])
        idx = torch.full((B, int(lengths.max())), PAD_ID, dtype=torch.long)
        for i, p in enumerate(prompts):
            idx[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        temperature = _temperature_tensor(config.temperature, B, device)
        generator = None
        if config.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(config.seed)
        logits, state = model.prefill(idx.to(device), lengths, None)
        for _ in range(config.max_new_tokens):
            nxt = sample_next(logits, temperature, config.top_k, config.top_p, generator)
            yield nxt.cpu()
            with _single_step_kernels(device):
                logits, state = model.step(nxt, state)
    finally:
        model.train(was_training)


# -- text level ------------------------------------------------------------------------


@dataclass
class Completion:
    prompt: str
    text: str  # the generated continuation, without the prompt
    tokens: int  # tokens generated (the <eos> or stop text included)
    finish_reason: str  # "length", "eos" or "stop"


def complete(model: nn.Module, tokenizer, prompts: Sequence[str], config: SampleConfig, *,
             stop: Sequence[str] = (), device: Optional[torch.device] = None, autocast=None,
             on_text: Optional[Callable[[int, str], None]] = None) -> List[Completion]:
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
        for nxt in generate_tokens(model, ids, config, device):
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
    for i in range(len(prompts)):
        if reasons[i] is None:
            reasons[i] = "length"
            flush(i, True)
    return [Completion(p, t, c, r) for p, t, c, r in zip(prompts, texts, counts, reasons)]  # type: ignore[arg-type]

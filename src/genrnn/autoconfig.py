"""Training defaults chosen for the device, the time budget and the corpus.

A run that sets none of the model, batch or learning-rate options (and no
preset) gets them from :func:`choose`, a pure function of what the device is
(:class:`DeviceFacts`), the time budget and the corpus size, so the same
command suits a 2-core laptop, a many-core server and a GPU. One line says
what was picked and why. Explicit options and presets always win: giving any
of :data:`CHOSEN` turns the choice off.

The rules come from measurements on a 2-core CPU (docs/benchmarks.md, "Out
of the box"): small steps (32 windows of 64 characters) beat the 64x128
batches within minutes, because they make 4x as many updates; a 2x384 LSTM
with dropout pays off from about 7 minutes; bf16 autocast trains 1.3-1.7x
faster on CPUs with native bf16 instructions (AVX512-BF16, AMX) and was no
worse; and the RNN mixed with a Kneser-Ney model (``models/mixture.py``) is
never worse than either on validation, which matters most when the budget
gives the RNN few steps. A CPU's budget is scaled by its threads and bf16 into
"2-core float32 seconds" before the thresholds apply. A GPU keeps the earlier
64x128 defaults, which its step rate suits.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

# the options the choice sets; a run that gives any of them keeps the plain defaults
CHOSEN = ("type", "cell", "embedding_size", "hidden_size", "num_layers", "dropout", "tie_weights", "order",
          "seq_len", "batch_size", "lr", "state_span", "precision")

REFERENCE_RATE = 28_000  # tokens/s of the 2x256 char LSTM, 32x64 batches, float32, 2 CPU cores
BF16_SPEEDUP = 1.45  # measured 1.3-1.7x (docs/benchmarks.md)
WIDE_FROM = 420.0  # 2-core float32 seconds from which the 2x384 LSTM wins
EVALUATIONS = 5  # validation passes to aim for in a budget (each also fits the mixture's weight)
EVAL_EPOCHS = 2  # ... and at least one every this many passes over the training text
CHARS_PER_WORD = 4.5  # characters per word-level token, spaces included (Alice 4.2, PTB 5.5)
MANY_EPOCHS = {"char": 15, "word": 50}  # passes over the text beyond which the RNN overfits without more dropout
LARGE_WORDS = 1_500_000  # characters from which a word-level text counts as large (PTB: 5 M)
ADAPTIVE_SPEEDUP = 1.5  # tokens/s of the 2x200 word LSTM with an adaptive softmax over its tied full one (PTB: 1.51x)


@dataclass(frozen=True)
class DeviceFacts:
    kind: str  # "cpu", "cuda" or "mps"
    threads: int = 1
    bf16: bool = False  # native bf16 arithmetic (a CPU's AVX512-BF16 or AMX)
    name: str = ""


def device_facts(device: torch.device) -> DeviceFacts:
    """What the device can do: threads, and native bf16 on a CPU (from the
    CPU's flags in /proc/cpuinfo on Linux; elsewhere assumed absent)."""
    if device.type != "cpu":
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        return DeviceFacts(device.type, threads=torch.get_num_threads(), bf16=True, name=name)
    flags = set()
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("flags"):
                        flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    kind = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if native else "no native bf16"
    return DeviceFacts("cpu", threads=torch.get_num_threads() or os.cpu_count() or 1, bf16=native, name=kind)


@dataclass(frozen=True)
class Choice:
    options: Dict[str, Any]
    reason: str


def choose(facts: DeviceFacts, budget_s: Optional[float], corpus_chars: int, tokenizer: str = "char",
           layout: str = "stream", max_steps: Optional[int] = None, adaptive: bool = False) -> Choice:
    """The options for a run on ``facts``'s device, with a time budget of
    ``budget_s`` seconds over a training text of ``corpus_chars`` characters.
    Without a time budget, ``max_steps`` (of the 32x64 steps) stands for one;
    with neither, the default 5 minutes. With an ``adaptive`` softmax the
    word model's output layer is its own, not tied to the embedding."""
    speed = max(1.0, facts.threads / 2) * (BF16_SPEEDUP if facts.bf16 else 1.0)
    if budget_s:
        budget = budget_s
    elif max_steps:
        budget = max_steps * 32 * 64 / REFERENCE_RATE / speed
    else:
        budget = 300.0
    words = tokenizer != "char"
    o: Dict[str, Any] = {"type": "mixture"}
    why = []
    if facts.kind != "cpu":
        o.update(hidden_size=256, num_layers=2, seq_len=128, batch_size=64)
        o["order"] = _order(corpus_chars, words)
        why.append(f"{facts.kind} ({facts.name}): batches of 64x128")
        return Choice(o, _say(o, why, facts, budget_s))
    compute = budget * speed
    if facts.bf16:
        o["precision"] = "bf16"
    tokens = corpus_chars / (CHARS_PER_WORD if words else 1.0)

    def steps_at(rate: float, step_tokens: int) -> float:  # the steps the budget gives at this rate
        return max_steps if (max_steps and not budget_s) else compute * rate / step_tokens

    def epochs(rate: float, step_tokens: int) -> float:  # passes over the training text (90%) the budget gives
        return steps_at(rate, step_tokens) * step_tokens / max(1.0, 0.9 * tokens)

    if words:  # a word model's cost is its output layer: Zaremba's small LSTM, tied, as the ptb-small preset
        # On a large text an adaptive softmax (untied) beat the tied full one: PTB, 10 minutes, test
        # perplexity 100.6 against 108.3 at 1.51x the tokens/s. A small text's vocabulary gains little from
        # one and its RNN more from the tying.
        adaptive = adaptive or corpus_chars >= LARGE_WORDS
        rate, step_tokens = REFERENCE_RATE / 4 * (ADAPTIVE_SPEEDUP if adaptive else 1.0), 32 * 35
        dropout = 0.1 if corpus_chars >= LARGE_WORDS else 0.3
        if epochs(rate, step_tokens) > MANY_EPOCHS["word"]:
            dropout = 0.5
        o.update(hidden_size=200, embedding_size=200, tie_weights=not adaptive, num_layers=2, seq_len=35,
                 batch_size=32, lr=3e-3, dropout=dropout)
        if adaptive:
            o["adaptive_softmax"] = "auto"
        if layout == "stream":
            o["state_span"] = 1_000_000
        why.append("word level: a 2x200 LSTM" + (" with an adaptive softmax" if adaptive else " with tied embeddings") +
                   (f", dropout {dropout:g} for a small corpus" if dropout > 0.1 else ""))
    else:
        small = corpus_chars < 300_000
        if compute >= WIDE_FROM and not small:
            rate, step_tokens = REFERENCE_RATE * 0.45, 64 * 64
            passes = epochs(rate, step_tokens)
            dropout = 0.3 if passes > MANY_EPOCHS["char"] else 0.1
            o.update(hidden_size=384, num_layers=2, embedding_size=64, dropout=dropout, seq_len=64, batch_size=64)
            why.append(f"{_minutes(compute)} 2-core float32 minutes: a 2x384 LSTM with dropout {dropout:g}" +
                       (f" ({passes:.0f} passes over the text)" if dropout > 0.1 else ""))
        else:
            o.update(hidden_size=256, num_layers=2, embedding_size=64, seq_len=64, batch_size=32,
                     dropout=0.2 if small and compute >= WIDE_FROM else 0.0)
            rate, step_tokens = REFERENCE_RATE, 32 * 64
            why.append(("a small corpus" if small and compute >= WIDE_FROM else
                        f"{_minutes(compute)} 2-core float32 minutes") +
                       ": a 2x256 LSTM, small steps (32x64) for many updates" +
                       (", dropout 0.2" if o["dropout"] else ""))
        if layout == "lines":
            o.pop("seq_len")  # a record's length, not a window's
    o["order"] = _order(corpus_chars, words)
    steps = int(steps_at(rate, step_tokens))
    # about EVALUATIONS times a budget, and at least every EVAL_EPOCHS passes over a small text, so the
    # best checkpoint is taken before the RNN overfits it
    every = min(steps / EVALUATIONS, EVAL_EPOCHS * 0.9 * tokens / step_tokens)
    o["eval_every"] = max(50, int(round(every / 50.0)) * 50)
    return Choice(o, _say(o, why, facts, budget_s))


CAPTIONED = ("image", "vector")  # condition kinds with one caption per record
CAPTIONER = {"tokenizer": "word", "hidden_size": 256, "num_layers": 1, "batch_size": 32, "condition_dim": 128,
             "keep": "last"}


def choose_captioner(explicit) -> Choice:
    """The options for a captioner (one text per image or feature vector),
    each unless the user gave it. Measured on the emoji set (docs/benchmarks.md,
    "Captioning"): word tokens, so that a caption is a few decisions and never
    a misspelt name; a 1x256 LSTM with a 128-wide image embedding; batches of
    32 captions; and the last weights, not those of the lowest validation
    loss, which is dominated by captions whose words were never seen and
    bottoms out long before the captions of known things stop improving."""
    o = {k: v for k, v in CAPTIONER.items() if k not in explicit}
    said = {"tokenizer": "{} tokens", "hidden_size": "hidden size {}", "num_layers": "{} layer(s)",
            "batch_size": "batches of {}", "condition_dim": "a condition embedding of {}", "keep": "keeping the {} weights"}
    parts = [said[k].format(v) for k, v in o.items()]
    return Choice(o, "settings for a captioner: " + ", ".join(parts) + " (any of these options you give wins)")


def _order(corpus_chars: int, words: bool) -> int:
    """The n-gram order for the mixture. Measured on seven corpora (Kneser-Ney
    alone, orders 3-8, docs/benchmarks.md): at char level 8 was best or within
    0.003 nats of the best on every one; at word level 5 on PTB, and on a
    small text (Alice, 30k words) 4, within 0.01 of 3 and 5. Very large texts
    get shorter contexts, which bounds the tables' memory."""
    if words:
        return 5 if corpus_chars >= LARGE_WORDS else 4
    return 8 if corpus_chars <= 20_000_000 else 6 if corpus_chars <= 200_000_000 else 5


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}".rstrip("0").rstrip(".")


def _say(o: Dict[str, Any], why, facts: DeviceFacts, budget_s: Optional[float]) -> str:
    device = (f"{facts.kind}, {facts.threads} threads, {facts.name}" if facts.kind == "cpu" else facts.kind)
    parts = [f"{o['num_layers']}x{o['hidden_size']} LSTM mixed with a {o['order']}-gram Kneser-Ney model"]
    if "batch_size" in o:
        parts.append(f"batches {o['batch_size']}" + (f"x{o['seq_len']}" if "seq_len" in o else ""))
    if o.get("precision") == "bf16":
        parts.append("bf16 autocast (native bf16)")
    if "eval_every" in o:
        parts.append(f"validation every {o['eval_every']} steps")
    budget = f"a {_minutes(budget_s)}-minute budget" if budget_s else "a step budget"
    return (f"automatic settings for {device} and {budget}: " + ", ".join(parts) + " (" + "; ".join(why) +
            "). Any model, batch, lr or precision option or a --preset turns this off")

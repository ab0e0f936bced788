"""Sampling speed: genrnn's generation loop before and after the fast path,
against the naive loop, side by side in one process.

    python benchmarks/sampling.py
    python benchmarks/sampling.py --repeats 7 --length 300 --ablation --json out.json
        # (docs/benchmarks.md, Sampling speed; --ablation adds the half-way variants)
    python benchmarks/sampling.py --threads 1 --models "2x256 LSTM" --batches 1 64

Models: the default 2x256 LSTM and a 3x512 LSTM (embedding 64, vocabulary 68,
tiny Shakespeare's characters + 3 specials), random weights (speed does not
depend on training). Variants, each sampling at temperature 1 from a seeded
generator:

* ``naive``  -- the lesson's loop: the whole module's ``forward`` on a (B, 1)
  input per character, softmax, ``torch.multinomial``, ``.item()`` (batch 1) or
  ``.tolist()``, a new input tensor from the host; PyTorch's defaults (oneDNN
  on), under ``torch.no_grad()``. The prompt is read the same way, one call
  per character.
* ``before`` -- genrnn's loop as it was before this benchmark (commit 04b0cac):
  ``prefill`` once, then per token ``sample_next`` (a copy of the logits,
  ``torch.multinomial``, a host check of the temperatures) and the fused
  ``nn.LSTM`` for one step with oneDNN switched off, under inference mode.
  Reproduced here (:func:`before_generate`) so that it can still be timed.
* ``after``  -- :func:`genrnn.sampling.generate_tokens` as it is now.

``--ablation`` adds ``before+fast step`` (the old loop calling the new
``RNNLM.step``) and ``after+module step`` (the new loop with the fused module
stepped as before), to split the gain between the cell and the sampler.

Measures: new characters per second for B parallel samples (from a one-token
prompt, timed from the first new character to the last, so neither the prefill
nor a loop's setup counts), and the latency
of the first character after a 200-character prompt (prefill + first sampled
token; B copies of the prompt). The variants run interleaved, in a rotating
order, ``--repeats`` times; the tables give medians. The machine is shared, so
only ratios from one run are worth comparing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.nn as nn

from genrnn.config import ModelConfig
from genrnn.models import build_model
from genrnn.runtime import make_runtime, tune_allocator
from genrnn.sampling import SampleConfig, apply_temperature, generate_tokens, top_k_filter, top_p_filter
from genrnn.tokenizers import EOS_ID, PAD_ID

VOCAB = 68
MODELS = {  # name -> ModelConfig fields
    "2x256 LSTM": dict(embedding_size=64, hidden_size=256, num_layers=2),
    "3x512 LSTM": dict(embedding_size=64, hidden_size=512, num_layers=3),
}
BATCHES = (1, 8, 64)
PROMPT_CHARS = 200


# -- the loops ---------------------------------------------------------------------------


@contextlib.contextmanager
def mkldnn(enabled: bool):
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def module_step(model: nn.Module, idx: torch.Tensor, state):
    """The old ``RNNLM.step``: the fused module for one time step."""
    out, state = model.rnn(model._inputs(idx[:, None]), state)
    return model.head(out[:, 0]), state


def before_sample_next(logits, temperature, top_k, top_p, generator):
    """``sampling.sample_next`` as it was (commit 04b0cac)."""
    logits = logits.float().clone()
    logits[:, PAD_ID] = float("-inf")
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


@torch.inference_mode()
def before_generate(model: nn.Module, prompts: List[List[int]], config: SampleConfig, device: torch.device,
                    step: Optional[Callable] = None) -> Iterator[torch.Tensor]:
    """``sampling.generate_tokens`` as it was (commit 04b0cac): oneDNN off for
    each one-token step on CPU, ``sample_next`` per token, ``.cpu()`` per token.
    ``step`` replaces the old module step (for the ablation)."""
    step = step or (lambda i, s: module_step(model, i, s))
    model.eval()
    B = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts])
    idx = torch.full((B, int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    temperature = torch.as_tensor(config.temperature, dtype=torch.float32, device=device).flatten().expand(B)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed or 0)
    logits, state = model.prefill(idx.to(device), lengths, None)
    for _ in range(config.max_new_tokens):
        nxt = before_sample_next(logits, temperature, config.top_k, config.top_p, generator)
        yield nxt.cpu()
        with mkldnn(device.type != "cpu"):  # off on CPU, as genrnn's earlier loop had it
            logits, state = step(nxt, state)


@torch.no_grad()
def naive_generate(model: nn.Module, prompts: List[List[int]], config: SampleConfig,
                   device: torch.device) -> Iterator[List[int]]:
    """The lesson's loop: one forward call of the whole module per character,
    the prompt included; multinomial; the ids back to the host and a new input
    tensor from them. PyTorch's defaults (oneDNN on)."""
    model.eval()
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed or 0)
    state = None
    for t in range(len(prompts[0])):  # equal-length prompts here
        x = torch.tensor([[p[t]] for p in prompts], device=device)
        logits, _, state = model(x, None, state)
    for _ in range(config.max_new_tokens):
        probs = torch.softmax(logits[:, -1] / float(config.temperature), dim=-1)
        nxt = torch.multinomial(probs, 1, generator=generator)
        ids = [nxt.item()] if nxt.shape[0] == 1 else nxt[:, 0].tolist()
        yield ids
        logits, _, state = model(torch.tensor(ids, device=device)[:, None], None, state)


def after_module_step_generate(model, prompts, config, device):
    """The new loop with the old (fused module) step, for the ablation."""
    real = model.step

    def step(idx, state):
        with mkldnn(device.type != "cpu"):
            return module_step(model, idx, state)

    model.step = step  # instance attribute: shadows the method for this run only
    try:
        yield from generate_tokens(model, prompts, config, device)
    finally:
        del model.step
        assert model.step == real


def variants(ablation: bool) -> Dict[str, Callable]:
    v: Dict[str, Callable] = {
        "naive": naive_generate,
        "before": before_generate,
        "after": lambda m, p, c, d: generate_tokens(m, p, c, d),
    }
    if ablation:
        v["before+fast step"] = lambda m, p, c, d: before_generate(m, p, c, d, step=m.step)
        v["after+module step"] = after_module_step_generate
    return v


# -- timing ------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_throughput(fn, model, batch: int, length: int, device: torch.device) -> float:
    """New chars/s for ``batch`` samples from a one-token prompt, timed from
    the first new token to the last (so neither the prefill nor a loop's
    one-off setup counts): ``batch * (length - 1)`` characters."""
    config = SampleConfig(max_new_tokens=length, temperature=1.0, seed=0)
    n = 0
    start = 0.0
    for _ in fn(model, [[EOS_ID]] * batch, config, device):
        if n == 0:
            _sync(device)
            start = time.perf_counter()
        n += 1
    _sync(device)
    assert n == length
    return batch * (length - 1) / (time.perf_counter() - start)


def time_first_char(fn, model, batch: int, prompt: List[int], device: torch.device) -> float:
    """Seconds from the call to the first new token (prefill + one sample)."""
    config = SampleConfig(max_new_tokens=2, temperature=1.0, seed=0)
    _sync(device)
    start = time.perf_counter()
    gen = iter(fn(model, [prompt] * batch, config, device))
    next(gen)
    _sync(device)
    elapsed = time.perf_counter() - start
    gen.close()
    return elapsed


def machine_line(device: torch.device) -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    malloc = "tuned" if tune_allocator() else "default"  # no-op where already decided or turned off
    return f"CPU {cpu}; torch {torch.__version__}; {device.type} ({where}); float32; glibc allocator {malloc}"


def print_table(table: Dict[str, Dict], names: List[str], fmt, ratio_a: str, ratio_b: str, ratios) -> None:
    """One markdown row per "model, batch B" key: each variant's median, then two ratios."""
    print()
    print("| model | batch | " + " | ".join(names) + f" | {ratio_a} | {ratio_b} |")
    print("|---|---:|" + "---:|" * len(names) + "---:|---:|")
    for key, by_name in table.items():
        model_name, b = key.split(", batch ")
        medians = {n: by_name[n]["median"] for n in names}
        x, y = ratios(medians)
        print(f"| {model_name} | {b} | " + " | ".join(fmt(medians[n]) for n in names) + f" | {x:.2f}x | {y:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (medians are reported)")
    ap.add_argument("--length", type=int, default=300, help="new characters per sample")
    ap.add_argument("--latency-repeats", type=int, default=None, help="first-character rounds (default --repeats)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: PyTorch's)")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="*", type=int, default=list(BATCHES))
    ap.add_argument("--ablation", action="store_true", help="also the two half-way variants")
    ap.add_argument("--json", help="also write every timing here")
    args = ap.parse_args()
    rt = make_runtime(args.device, "fp32", threads=args.threads)
    device = rt.device
    print(machine_line(device), flush=True)
    fns = variants(args.ablation)
    names = list(fns)
    results: Dict[str, Dict] = {"machine": machine_line(device), "args": vars(args), "throughput": {}, "first_char": {}}
    g = torch.Generator().manual_seed(1)
    prompt = [EOS_ID] + torch.randint(3, VOCAB, (PROMPT_CHARS,), generator=g).tolist()
    for model_name in args.models:
        torch.manual_seed(0)
        model = build_model(ModelConfig(vocab_size=VOCAB, **MODELS[model_name])).to(device).eval()
        for b in args.batches:
            for name in names:  # warm-up: allocator, oneDNN primitives
                time_throughput(fns[name], model, b, 5, device)
                time_first_char(fns[name], model, b, prompt, device)
            rates: Dict[str, List[float]] = {n: [] for n in names}
            lat: Dict[str, List[float]] = {n: [] for n in names}
            for r in range(args.repeats):
                order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
                for name in order:
                    rates[name].append(time_throughput(fns[name], model, b, args.length, device))
            for r in range(args.latency_repeats or args.repeats):
                order = names[r % len(names):] + names[: r % len(names)]
                for name in order:
                    lat[name].append(time_first_char(fns[name], model, b, prompt, device))
            key = f"{model_name}, batch {b}"
            results["throughput"][key] = {n: dict(median=statistics.median(v), runs=v) for n, v in rates.items()}
            results["first_char"][key] = {n: dict(median=statistics.median(v), runs=v) for n, v in lat.items()}
            print(f"  {key}: " + ", ".join(f"{n} {statistics.median(rates[n]):,.0f} chars/s / "
                                           f"{1e3 * statistics.median(lat[n]):.1f} ms" for n in names), flush=True)

    print()
    print("Throughput, new characters per second (median of "
          f"{args.repeats}; {args.length} characters per sample):")
    print_table(results["throughput"], names, lambda v: f"{v:,.0f}", "after / before", "after / naive",
                lambda m: (m["after"] / m["before"], m["after"] / m["naive"]))
    print()
    print(f"First character after a {PROMPT_CHARS}-character prompt, milliseconds (median of "
          f"{args.latency_repeats or args.repeats}; B copies of the prompt):")
    print_table(results["first_char"], names, lambda v: f"{1e3 * v:.2f}", "before / after", "naive / after",
                lambda m: (m["before"] / m["after"], m["naive"] / m["after"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

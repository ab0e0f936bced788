"""Training efficiency: achieved GFLOP/s of genrnn's training step against this
machine's float32 matrix-multiply ceiling, measured in the same run.

    python benchmarks/gflops.py
    python benchmarks/gflops.py --repeats 7 --trainer ../shared/data/tinyshakespeare/input.txt --json out.json
        # (docs/benchmarks.md, Training efficiency; --trainer also times genrnn.train's own loop)

Ceiling: the median GFLOP/s of ``torch.mm`` on square float32 matrices of 1024,
1536 and 2048 (2 n^3 FLOPs each), per thread count; the best size counts. One
product of each size is timed in every round of the training measurements, so
the ceiling and the training step see the same load.

Training step: forward, backward and AdamW on random tokens, the same step
that ``benchmarks/speed.py``'s ``train_speed`` times (here with each phase
timed too, and the configurations interleaved), for the default 2x256 LSTM
(embedding 64, vocabulary 68). Model FLOPs are counted analytically, as matrix
products only (a multiply-add is 2 FLOPs):

    forward, per token:  sum over layers l of 2 * G * H * (I_l + H)  +  2 * H * V
        G = 4 gates (LSTM; 3 for GRU, 1 for RNN), I_l = the layer's input size
        (the embedding size for layer 0, H above), V = the vocabulary (the head)
    training, per token: 3 x forward  (backward ~ 2 x forward: the gradients
        with respect to the inputs and to the weights each cost one forward)

Elementwise gate arithmetic, the softmax/cross-entropy and AdamW (a few FLOPs
per parameter per step) are left out: together well under 1% here. For the
default model the forward is 2*4*256*(64+256) + 2*4*256*(256+256) + 2*256*68
= 1,738,752 FLOPs per token, so a step is 5.22 MFLOP per token.

Variants of the default 64x128 batch: oneDNN off (PyTorch's own LSTM
kernels), AdamW with ``fused=True``, bf16 autocast (the ceiling is float32's,
so no fraction), fewer threads, and the batch run as 2 or 4 slices of rows
whose gradients add up to the whole batch's (each slice's mean loss weighted by
its share of the targets; one AdamW step): the same update, a smaller working
set per forward/backward.

Every configuration's model and optimizer are built first; then the rounds
interleave one timed step of each, so the noise of a shared machine hits them
alike. Tables give medians of ``--repeats`` rounds after 2 warm-up steps.

genrnn tunes glibc's allocator on the CPU (``genrnn.runtime.tune_allocator``);
so does this script, unless ``GENRNN_MALLOC_TUNING=0``: run it both ways to
see what the tuning is worth (the machine line says which).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampling import machine_line  # noqa: E402  (benchmarks/ is not a package)

from genrnn.config import ModelConfig  # noqa: E402
from genrnn.models import build_model  # noqa: E402

VOCAB = 68
DEFAULT_MODEL = dict(embedding_size=64, hidden_size=256, num_layers=2)
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def flops_per_token(vocab: int, embedding_size: int, hidden_size: int, num_layers: int, cell: str = "lstm",
                    training: bool = True) -> float:
    """Matrix-product FLOPs per token (see the module docstring)."""
    G, H = GATES[cell], hidden_size
    inputs = [embedding_size or vocab] + [H] * (num_layers - 1)  # one-hot input: a V-wide product
    forward = sum(2 * G * H * (i + H) for i in inputs) + 2 * H * vocab
    return 3 * forward if training else forward


# -- the ceiling ---------------------------------------------------------------------------


class Ceiling:
    """``torch.mm`` GFLOP/s on square float32 matrices, per thread count and
    size; :meth:`round` times each once, so the rounds can be interleaved with
    the training steps and see the same load."""

    def __init__(self, threads: Sequence[int], sizes: Sequence[int] = (1024, 1536, 2048)):
        self.threads = list(threads)
        self.mats = {n: (torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)) for n in sizes}
        self.runs: Dict[Tuple[int, int], List[float]] = {(t, n): [] for t in threads for n in sizes}

    def round(self, record: bool = True) -> None:
        before = torch.get_num_threads()
        try:
            for t in self.threads:
                torch.set_num_threads(t)
                for n, (a, b, out) in self.mats.items():
                    start = time.perf_counter()
                    torch.mm(a, b, out=out)
                    elapsed = time.perf_counter() - start
                    if record:
                        self.runs[t, n].append(2 * n**3 / elapsed / 1e9)
        finally:
            torch.set_num_threads(before)

    def by_size(self, t: int, how=statistics.median) -> Dict[int, float]:
        return {n: how(self.runs[t, n]) for n in self.mats}

    def gflops(self, t: int) -> float:
        """The ceiling: the best size's median."""
        return max(self.by_size(t).values())


# -- the training step ---------------------------------------------------------------------


@dataclass
class Case:
    """One timed configuration of the training step."""

    name: str
    batch: int
    seq_len: int
    threads: int
    mkldnn: bool = True
    fused_adamw: bool = False
    bf16: bool = False  # CPU autocast to bfloat16 (not float32: not comparable with the ceiling)
    micro: int = 1  # forward/backward in this many slices of rows, gradients summed, one AdamW step
    model_kw: dict = field(default_factory=lambda: dict(DEFAULT_MODEL))
    times: List[float] = field(default_factory=list)
    phases: Dict[str, List[float]] = field(default_factory=lambda: {"forward": [], "backward": [], "optimizer": []})

    def build(self) -> None:
        torch.manual_seed(0)
        self.model = build_model(ModelConfig(vocab_size=VOCAB, **self.model_kw)).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=self.fused_adamw or None)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(3, VOCAB, (self.batch, self.seq_len), generator=g)
        self.y = torch.randint(3, VOCAB, (self.batch, self.seq_len), generator=g)

    @contextlib.contextmanager
    def settings(self):
        threads, mkldnn = torch.get_num_threads(), torch.backends.mkldnn.enabled
        torch.set_num_threads(self.threads)
        torch.backends.mkldnn.enabled = self.mkldnn
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            torch.backends.mkldnn.enabled = mkldnn

    def step(self, record: bool) -> None:
        """One step as ``benchmarks/speed.py``'s ``train_speed`` times it, with
        the phases timed too."""
        with self.settings():
            t0 = time.perf_counter()
            self.opt.zero_grad(set_to_none=True)
            fwd = 0.0
            for x, y in zip(self.x.chunk(self.micro), self.y.chunk(self.micro)):
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                    _, loss, _ = self.model(x, y)
                fwd += time.perf_counter() - t
                # the mean over all targets: each slice weighs by its share of them
                (loss * (y.numel() / self.y.numel())).backward()
            t2 = time.perf_counter()
            t1 = t0 + fwd
            self.opt.step()
            t3 = time.perf_counter()
        if record:
            self.times.append(t3 - t0)
            for k, v in zip(("forward", "backward", "optimizer"), (t1 - t0, t2 - t1, t3 - t2)):
                self.phases[k].append(v)

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.seq_len / statistics.median(self.times)

    @property
    def flops(self) -> float:
        return flops_per_token(VOCAB, **self.model_kw)


def run_cases(cases: List[Case], ceiling: Ceiling, repeats: int, warmup: int = 2) -> None:
    """Rounds of one step of every case (in a rotating order) and one ceiling
    measurement, so that all see the same load."""
    for c in cases:
        c.build()
    for r in range(warmup + repeats):
        order = cases[r % len(cases):] + cases[: r % len(cases)]
        for c in order:
            c.step(record=r >= warmup)
        ceiling.round(record=r >= warmup)


# -- the trainer itself --------------------------------------------------------------------


def trainer_speed(corpus: str, steps: int, threads: int) -> Dict[str, float]:
    """tokens/s that ``genrnn.train`` logs (the loop with data loading, clipping,
    the learning-rate schedule and bookkeeping), default model and batch, no
    evaluation or samples inside the timed steps; the first logged interval
    (warm-up) is dropped."""
    import genrnn

    with tempfile.TemporaryDirectory() as tmp:
        genrnn.train(corpus, out=tmp, max_steps=steps, log_every=5, eval_every=10**9, sample_every=0,
                     threads=threads, device="cpu", eval_tokens=8192)
        rates = []
        with open(os.path.join(tmp, "metrics.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                if "tokens_per_s" in rec and rec.get("step", 0) > 5 and "loss" in rec:
                    rates.append(rec["tokens_per_s"])
    return {"median_tokens_per_s": statistics.median(rates), "intervals": rates}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per configuration")
    ap.add_argument("--threads", type=int, nargs="*", default=None,
                    help="thread counts to compare (default: 1 and PyTorch's default)")
    ap.add_argument("--trainer", metavar="CORPUS", help="also time genrnn.train's own loop on this corpus")
    ap.add_argument("--trainer-steps", type=int, default=40)
    ap.add_argument("--json", help="also write every timing here")
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    machine_line(torch.device("cpu"))  # tunes the allocator (unless GENRNN_MALLOC_TUNING=0) before any tensor
    threads = sorted(set(args.threads or [1, default_threads]))
    T = max(threads)
    print(machine_line(torch.device("cpu")), flush=True)
    print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)

    ceiling = Ceiling(threads)

    grid = [Case(f"{b}x{s}", b, s, T) for b, s in
            [(32, 128), (64, 64), (128, 32), (64, 128), (128, 64), (64, 256), (16, 256), (128, 128), (256, 64),
             (256, 128)]]
    variants = [Case("64x128 in 2 slices of 32 rows", 64, 128, T, micro=2),
                Case("64x128 in 4 slices of 16 rows", 64, 128, T, micro=4),
                Case("64x128, oneDNN off", 64, 128, T, mkldnn=False),
                Case("64x128, fused AdamW", 64, 128, T, fused_adamw=True),
                Case("64x128, bf16 autocast", 64, 128, T, bf16=True)]
    for t in threads:
        if t != T:
            variants += [Case(f"64x128, {t} thread(s)", 64, 128, t), Case(f"256x128, {t} thread(s)", 256, 128, t)]
    cases = grid + variants
    run_cases(cases, ceiling, args.repeats)
    for t in threads:
        sizes = ", ".join(f"{n}: {g:.0f}" for n, g in ceiling.by_size(t).items())
        best = max(ceiling.by_size(t, max).values())
        print(f"ceiling at {t} thread(s): {ceiling.gflops(t):.1f} GFLOP/s, median of {args.repeats} "
              f"(torch.mm by size: {sizes}; best single product {best:.0f})", flush=True)

    def row(c: Case) -> str:
        gf = c.tokens_per_s * c.flops / 1e9
        frac = gf / ceiling.gflops(c.threads)
        ph = {k: 1e3 * statistics.median(v) for k, v in c.phases.items()}
        share = "n/a (bf16)" if c.bf16 else f"{100 * frac:.0f}%"  # the ceiling is float32's
        return (f"| {c.name} | {c.threads} | {'on' if c.mkldnn else 'off'} | {c.tokens_per_s:,.0f} | {gf:.1f} | "
                f"{share} | {ph['forward']:.0f} / {ph['backward']:.0f} / {ph['optimizer']:.1f} |")

    print()
    print(f"Default 2x256 LSTM (embedding 64, vocab {VOCAB}), {cases[0].flops / 1e6:.2f} MFLOP per training token; "
          f"median of {args.repeats} interleaved steps:")
    print()
    print("| batch x seq len | threads | oneDNN | tokens/s | GFLOP/s | of ceiling | forward / backward / AdamW ms |")
    print("|---|---:|---|---:|---:|---:|---|")
    for c in cases:
        print(row(c))
    print()
    for t in threads:
        print(f"Ceiling at {t} thread(s): {ceiling.gflops(t):.1f} GFLOP/s (float32 torch.mm, same rounds).")

    results = {"machine": machine_line(torch.device("cpu")), "args": vars(args),
               "flops_per_token": cases[0].flops,
               "ceiling": {str(t): {"gflops": ceiling.gflops(t),
                                    "runs": {str(n): ceiling.runs[t, n] for n in ceiling.mats}} for t in threads},
               "cases": [{"name": c.name, "batch": c.batch, "seq_len": c.seq_len, "threads": c.threads,
                          "mkldnn": c.mkldnn, "fused_adamw": c.fused_adamw, "tokens_per_s": c.tokens_per_s,
                          "gflops": c.tokens_per_s * c.flops / 1e9, "step_times": c.times, "phases": c.phases}
                         for c in cases]}
    if args.trainer:
        bare = next(c for c in cases if c.name == "64x128")
        tr = trainer_speed(args.trainer, args.trainer_steps, T)
        results["trainer"] = tr
        print()
        print(f"genrnn.train's loop on {args.trainer} (64x128, {T} threads): "
              f"{tr['median_tokens_per_s']:,.0f} tokens/s (median of {len(tr['intervals'])} logged intervals) "
              f"against {bare.tokens_per_s:,.0f} for the bare step above.")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

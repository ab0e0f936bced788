"""The lesson's training method against a plain loop and genrnn, same model, same clock.

    python benchmarks/lesson.py                      # 60 s and 5 min budgets (about 17 minutes)
    python benchmarks/lesson.py --budgets 20 60 --json out.json

The model is the lesson's in all three: one-hot input into ``nn.LSTM(vocab, 64)``
and a Linear layer (genrnn's ``RNNLM`` with ``embedding_size=0``, the same
modules), on AG News (title + description, the lesson's text; the test split
here, the first 90% of rows for training and the last 10% for validation).

* **lesson**: our re-implementation of how the PyTorch lesson trains. Each
  article of length l is ONE minibatch of all l-100 overlapping windows of 100
  characters, built with a Python loop; every position predicts the next
  character; Adam, lr 0.01, constant. Articles are taken in order.
* **plain loop**: the improvement the lesson suggests: the articles joined into
  one stream, cut into non-overlapping 101-character windows, shuffled,
  batches of 64, the same Adam at 0.01. The simplest correct loop.
* **plain + allocator**: the same plain loop with genrnn's allocator tuning
  (``genrnn.runtime.tune_allocator``), to show what that alone is worth.
* **genrnn**: ``genrnn.train`` with its defaults at this model size (AdamW,
  lr 1e-2 with warmup and cosine decay over the budget, clipping, batches of
  64 x 128 independent windows), one run per budget since its schedule follows
  the clock.

Every model is scored by the same evaluator (``genrnn.evaluate``): the whole
validation text, the state carried through it, total nats / characters. The
clock counts training only, not evaluation. "corpus chars/s" is how much new
text a method reads per second: the lesson recomputes each character in up to
100 windows, so it reads far less than it computes.

Each method runs in its own Python process (the allocator setting is
process-wide); only genrnn and "plain + allocator" get the tuned allocator.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

import genrnn
from genrnn.config import DataConfig, ModelConfig
from genrnn.data import make_eval_set
from genrnn.evaluate import evaluate
from genrnn.models import build_model
from genrnn.runtime import make_runtime, tune_allocator
from genrnn.tokenizers import build_tokenizer

WINDOW = 100  # the lesson's nchars
LR = 0.01


def shared_data() -> Path:
    return Path(os.environ.get("GENRNN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def read_articles(path: Path) -> List[str]:
    with open(path, encoding="utf-8", newline="") as f:
        return [f"{row[1]} {row[2]}" for row in csv.reader(f)]


def lesson_model(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=vocab, embedding_size=0, hidden_size=64, num_layers=1))


def score(model, eval_set, rt) -> Dict[str, float]:
    m = evaluate(model, eval_set, rt)
    return {"val_loss": m["loss"], "val_bpc": m["bits_per_char"]}


def run_lesson(train_ids: List[List[int]], vocab: int, budgets: List[float], eval_set, rt) -> Dict:
    """One minibatch per article of all its overlapping 100-char windows."""
    model = lesson_model(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    out: Dict = {"points": []}
    clock = 0.0
    chars = steps = computed = 0
    i = 0
    pending = sorted(budgets)
    while pending:
        ids = train_ids[i % len(train_ids)]
        i += 1
        if len(ids) <= WINDOW:
            continue
        t = time.perf_counter()
        xs, ys = [], []
        for k in range(len(ids) - WINDOW):  # the lesson builds its windows in Python
            xs.append(ids[k : k + WINDOW])
            ys.append(ids[k + 1 : k + WINDOW + 1])
        x, y = torch.tensor(xs), torch.tensor(ys)
        _, loss, _ = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        clock += time.perf_counter() - t
        chars += len(ids)
        computed += x.numel()
        steps += 1
        if clock >= pending[0]:
            out["points"].append(dict(budget=pending.pop(0), time=clock, steps=steps, corpus_chars=chars,
                                      **score(model, eval_set, rt)))
    out["corpus_chars_per_s"] = chars / clock
    out["computed_tokens_per_s"] = computed / clock
    return out


def run_plain(stream: torch.Tensor, vocab: int, budgets: List[float], eval_set, rt, batch: int = 64) -> Dict:
    """Non-overlapping windows of one shuffled stream; the same model and Adam."""
    model = lesson_model(vocab)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    n = (len(stream) - 1) // WINDOW
    xs = stream[: n * WINDOW].view(n, WINDOW)
    ys = stream[1 : n * WINDOW + 1].view(n, WINDOW)
    g = torch.Generator().manual_seed(0)
    out: Dict = {"points": []}
    clock = 0.0
    chars = steps = 0
    pending = sorted(budgets)
    order = torch.randperm(n, generator=g)
    pos = 0
    while pending:
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=g), 0
        t = time.perf_counter()
        rows = order[pos : pos + batch]
        pos += batch
        _, loss, _ = model(xs[rows], ys[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
        clock += time.perf_counter() - t
        chars += rows.numel() * WINDOW
        steps += 1
        if clock >= pending[0]:
            out["points"].append(dict(budget=pending.pop(0), time=clock, steps=steps, corpus_chars=chars,
                                      **score(model, eval_set, rt)))
    out["corpus_chars_per_s"] = chars / clock
    return out


def run_genrnn(train_file: Path, val_file: Path, budgets: List[float], eval_set, rt, workdir: Path) -> Dict:
    out: Dict = {"points": []}
    for budget in sorted(budgets):
        run = genrnn.train(train_file, val=val_file, fields=["text"], out=workdir / f"genrnn-{budget:g}s",
                           embedding_size=0, hidden_size=64, num_layers=1, time=budget,
                           sample_every=0, eval_every=10**9, device="cpu")
        r = run.result
        point = dict(budget=budget, time=r.elapsed, steps=r.step, corpus_chars=int(r.tokens_per_s * r.elapsed),
                     **score(run.model, eval_set, rt))
        out["points"].append(point)
        out["corpus_chars_per_s"] = r.tokens_per_s
    return out


METHODS = ["lesson", "plain", "plain-tuned", "genrnn"]
TUNED = {"plain-tuned", "genrnn"}  # methods that run with genrnn's allocator tuning


def run_method(method: str, path: Path, budgets: List[float]) -> Dict:
    """One method, in this process (the parent gives each method a fresh one)."""
    if method not in METHODS:
        raise SystemExit(f"unknown method {method}; choose from {', '.join(METHODS)}")
    if method in TUNED:
        tune_allocator()
    rt = make_runtime("cpu", "fp32")
    articles = read_articles(path)
    cut = int(len(articles) * 0.9)
    train_texts, val_texts = articles[:cut], articles[cut:]
    tok = build_tokenizer("char", train_texts)
    eval_set = make_eval_set(tok, val_texts, DataConfig())
    print(f"[{method}] AG News {path.name}: {len(train_texts):,} training articles "
          f"({sum(map(len, train_texts)):,} chars), {len(val_texts):,} validation ({eval_set.num_chars:,} chars); "
          f"vocab {tok.vocab_size}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if method == "lesson":
        return run_lesson([tok.encode(t) for t in train_texts], tok.vocab_size, budgets, eval_set, rt)
    if method in ("plain", "plain-tuned"):
        stream = torch.cat([torch.from_numpy(tok.encode_array(t)) for t in train_texts])
        return run_plain(stream, tok.vocab_size, budgets, eval_set, rt)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for split, texts in (("train", train_texts), ("val", val_texts)):
            with open(work / f"{split}.jsonl", "w", encoding="utf-8") as f:
                for t in texts:
                    f.write(json.dumps({"text": t}) + "\n")
        return run_genrnn(work / "train.jsonl", work / "val.jsonl", budgets, eval_set, rt, work)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, help="AG News CSV (default: $GENRNN_SHARED_DATA/ag_news/test.csv)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[60, 300], help="training seconds (default: 60 300)")
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # run one method here
    args = ap.parse_args()
    path = args.csv or shared_data() / "ag_news" / "test.csv"
    if not path.exists():
        print(f"{path} not found: give --csv or set GENRNN_SHARED_DATA", file=sys.stderr)
        return 2
    if args.child:
        Path(args.json).write_text(json.dumps(run_method(args.methods[0], path, args.budgets)))
        return 0
    results: Dict[str, Dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            t0 = time.perf_counter()
            out = Path(tmp) / f"{method}.json"
            env = dict(os.environ, GENRNN_MALLOC_TUNING="1" if method in TUNED else "0")
            cmd = [sys.executable, __file__, "--child", "--csv", str(path), "--methods", method,
                   "--json", str(out), "--budgets", *map(str, args.budgets)]
            subprocess.run(cmd, env=env, check=True)
            results[method] = json.loads(out.read_text())
            print(f"  {method}: done in {time.perf_counter() - t0:.0f}s", flush=True)
    header = "| method | corpus chars/s | " + " | ".join(f"val nats/char at {b:g} s (bits/char)" for b in args.budgets) + " |"
    print("\n" + header + "\n|" + "---|" * (2 + len(args.budgets)))
    for method, r in results.items():
        cells = [f"{p['val_loss']:.3f} ({p['val_bpc']:.3f})" for p in r["points"]]
        print(f"| {method} | {r['corpus_chars_per_s']:,.0f} | " + " | ".join(cells) + " |")
    speed = {m: r["corpus_chars_per_s"] for m, r in results.items()}
    for a, b in (("genrnn", "plain"), ("genrnn", "plain-tuned"), ("plain-tuned", "plain"), ("genrnn", "lesson")):
        if a in speed and b in speed:
            print(f"{a} / {b}, corpus chars/s: {speed[a] / speed[b]:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

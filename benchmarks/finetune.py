"""Starting from a trained model: fine-tuning speed, and a vocabulary extended with new symbols.

    python benchmarks/finetune.py speed --shakespeare RUN --budget 2m --budget 10m
    python benchmarks/finetune.py symbols --shakespeare RUN --budget 2m
    python benchmarks/finetune.py table bench-runs/finetune.jsonl

``speed``: the first 50 KB of Nietzsche (../shared/data/nietzsche, cut at a
line end; the run holds out its last 10%), which the built-in ``english``
model never saw, trained with the defaults (``genrnn train TEXT --time B``)
from three starts: from scratch, ``--init-from english`` and
``--init-from`` a tiny Shakespeare run (``--shakespeare``: any run, e.g. a
default 2-minute one). Every run validates every 50 steps, so the curves
resolve; each appends one JSON line with its curve, its best validation loss
and how long it took to reach the from-scratch run's best of the same budget.

``symbols``: the tiny Shakespeare run fine-tuned on Alice in Wonderland,
whose curly quotes and dashes it never saw. It reports how often the new
characters appear in samples against Alice's own rate, and the RNN's
validation loss on the end of tiny Shakespeare before and after (the RNN
part: a mixture's n-gram part is refitted on the new text).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import genrnn
from genrnn.config import parse_duration
from genrnn.initfrom import LR_SCALE

STARTS = ("scratch", "english", "shakespeare")
SMALL_BYTES = 50_000


def shared() -> Path:
    return Path(os.environ.get("GENRNN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def small_corpus(out: Path) -> Path:
    """The first 50 KB of Nietzsche, cut at the last line end before it."""
    text = (shared() / "nietzsche" / "nietzsche.txt").read_text(encoding="utf-8")
    head = text[:SMALL_BYTES]
    head = head[: head.rfind("\n") + 1]
    path = out / "nietzsche-50k.txt"
    path.write_text(head, encoding="utf-8")
    return path


def curve(run_dir: Path) -> List[Dict[str, float]]:
    """(step, time, mixture loss, RNN loss) at every validation."""
    points = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        if "val_loss" in m and "time" in m:
            points.append({"step": m["step"], "time": m["time"], "loss": m["val_loss"],
                           "rnn_loss": m.get("val_rnn_loss", m["val_loss"])})
    return points


def first_time_at(points: List[Dict[str, float]], target: float) -> Optional[float]:
    return next((p["time"] for p in points if p["loss"] <= target + 1e-12), None)


def speed(args) -> List[Dict[str, Any]]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = small_corpus(out)
    rows = []
    for budget_text in args.budget:
        budget = parse_duration(budget_text)
        for start in args.start or STARTS:
            opts: Dict[str, Any] = {"lr": args.lr} if args.lr else {}
            if start == "english":
                opts["init_from"] = "english"
            elif start == "shakespeare":
                opts["init_from"] = str(args.shakespeare)
            run_dir = out / (f"{start}-{int(budget)}s" + (f"-lr{args.lr:g}" if args.lr else ""))
            t0 = time.perf_counter()
            run = genrnn.train(corpus, out=run_dir, time=budget, eval_every=50, sample_every=0, seed=args.seed,
                               **opts)
            points = curve(run_dir)
            cfg = json.loads((run_dir / "config.json").read_text())["run"]
            row = {"kind": "speed", "start": start, "budget_s": budget, "lr": args.lr,
                   "lr_scale": 1.0 if args.lr or start == "scratch" else LR_SCALE, "steps": run.result.step,
                   "tokens_per_s": round(run.result.tokens_per_s), "wall_s": round(time.perf_counter() - t0, 1),
                   "best_loss": min(p["loss"] for p in points), "best_rnn_loss": min(p["rnn_loss"] for p in points),
                   "first_loss": points[0]["loss"], "first_step": points[0]["step"],
                   "shape": f"{cfg['model']['num_layers']}x{cfg['model']['hidden_size']}",
                   "dropout": cfg["model"]["dropout"], "vocab": run.tokenizer.vocab_size, "curve": points}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
    return rows


def symbols(args) -> List[Dict[str, Any]]:
    from genrnn.data import make_eval_set
    from genrnn.evaluate import evaluate

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shakespeare = (shared() / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    tail = out / "shakespeare-last-10pc.txt"
    tail.write_text(shakespeare[int(len(shakespeare) * 0.9):], encoding="utf-8")
    alice = shared() / "alice" / "alice.txt"
    parent = genrnn.load(args.shakespeare, device="cpu")
    budget = parse_duration(args.budget[0])
    texts, val = [alice], None
    if args.rehearse:  # the parent's own text beside the new one (its first 90%: the last 10% is scored)
        head = out / "shakespeare-first-90pc.txt"
        head.write_text(shakespeare[: int(len(shakespeare) * 0.9)], encoding="utf-8")
        book = alice.read_text(encoding="utf-8")  # Alice split as a run without rehearsal splits it
        texts, val = [out / "alice-first-90pc.txt", head], out / "alice-last-10pc.txt"
        texts[0].write_text(book[: int(len(book) * 0.9)], encoding="utf-8")
        val.write_text(book[int(len(book) * 0.9):], encoding="utf-8")
    child = genrnn.train(texts, out=out / (f"symbols-{int(budget)}s" + ("-rehearse" if args.rehearse else "")),
                         val=val, init_from=str(args.shakespeare), time=budget,
                         sample_every=0, seed=args.seed)
    known = {parent.tokenizer.token_str(i) for i in range(parent.tokenizer.vocab_size)}
    new = [child.tokenizer.token_str(i) for i in range(parent.tokenizer.vocab_size, child.tokenizer.vocab_size)]

    def rnn_loss(run) -> float:
        net = getattr(run.model, "rnn", run.model)
        texts = [tail.read_text(encoding="utf-8")]
        eval_set = make_eval_set(run.tokenizer, texts, run.config.data, None, None)
        return evaluate(net, eval_set, run.runtime)["loss"]

    samples = child.complete([""] * args.samples, length=args.length, temperature=0.8, seed=args.seed)
    text = "".join(s.text for s in samples)
    alice_text = alice.read_text(encoding="utf-8")
    rate = {c: text.count(c) / max(1, len(text)) * 1000 for c in new}
    alice_rate = {c: alice_text.count(c) / len(alice_text) * 1000 for c in new}
    row = {"kind": "symbols", "budget_s": budget, "rehearse": args.rehearse, "steps": child.result.step,
           "tokens_per_s": round(child.result.tokens_per_s), "new_tokens": new,
           "unknown_before": sorted(set(alice_text) - known), "sample_chars": len(text),
           "per_1000_chars_samples": rate, "per_1000_chars_alice": alice_rate,
           "shakespeare_rnn_loss_before": rnn_loss(parent), "shakespeare_rnn_loss_after": rnn_loss(child),
           "alice_val_loss": child.result.best_val["loss"], "alice_val_rnn_loss": child.result.best_val.get(
               "rnn_loss", child.result.best_val["loss"]), "sample": samples[0].text[:300]}
    print(json.dumps(row, ensure_ascii=False), flush=True)
    return [row]


def table(path: Path) -> str:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out = ["| budget | start | learning rate | shape, dropout | steps @ tokens/s | first validation (step) | "
           "best mixture | its RNN part | reaches from-scratch's best at |", "|---|---|---|---|---|---:|---:|---:|---:|"]
    speed_rows = [r for r in rows if r["kind"] == "speed"]
    for r in sorted(speed_rows, key=lambda r: (r["budget_s"], STARTS.index(r["start"]), -r.get("lr_scale", 1.0))):
        scratch = next((x for x in speed_rows if x["start"] == "scratch" and x["budget_s"] == r["budget_s"]), None)
        reach = scratch and first_time_at(r["curve"], scratch["best_loss"])
        lr = f"{r['lr']:g}" if r.get("lr") else "automatic" + (f" x{r['lr_scale']:g}" if r.get("lr_scale", 1) != 1 else "")
        out.append(f"| {r['budget_s'] / 60:g} min | {r['start']} | {lr} | {r['shape']}, {r['dropout']:g} | "
                   f"{r['steps']:,} @ {r['tokens_per_s']:,} | {r['first_loss']:.3f} ({r['first_step']}) | "
                   f"**{r['best_loss']:.3f}** | {r['best_rnn_loss']:.3f} | "
                   f"{'-' if reach is None else f'{reach:.0f} s'} |")
    for r in (r for r in rows if r["kind"] == "symbols"):
        out.append("")
        out.append(f"symbols{' (with Shakespeare rehearsed)' if r.get('rehearse') else ''}: {r['steps']:,} steps @ "
                   f"{r['tokens_per_s']:,} tokens/s; Alice validation {r['alice_val_loss']:.3f}; new tokens "
                   f"{' '.join(r['new_tokens'])}; Shakespeare RNN loss {r['shakespeare_rnn_loss_before']:.3f} -> "
                   f"{r['shakespeare_rnn_loss_after']:.3f}")
        for c in r["new_tokens"]:
            out.append(f"  {c!r}: {r['per_1000_chars_samples'][c]:.2f} per 1000 sampled chars, "
                       f"Alice {r['per_1000_chars_alice'][c]:.2f}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "symbols", "table"])
    p.add_argument("results", nargs="?", help="table: the JSONL file")
    p.add_argument("--shakespeare", help="a tiny Shakespeare run to start from")
    p.add_argument("--budget", action="append", help="time budget per run (repeatable; default 2m and 10m)")
    p.add_argument("--out", default="bench-runs/finetune")
    p.add_argument("--results-file", default="bench-runs/finetune.jsonl")
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rehearse", action="store_true",
                   help="symbols: train on the parent's text (tiny Shakespeare's first 90%%) beside Alice")
    p.add_argument("--start", action="append", choices=STARTS, help="speed: the starts to run (default: all)")
    p.add_argument("--lr", type=float, help="a learning rate for every run (default: the run's own)")
    args = p.parse_args(argv)
    if args.what == "table":
        print(table(Path(args.results or args.results_file)))
        return 0
    if not args.shakespeare:
        p.error("--shakespeare RUN is needed")
    args.budget = args.budget or ["2m", "10m"]
    rows = speed(args) if args.what == "speed" else symbols(args)
    with open(args.results_file, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(table(Path(args.results_file)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

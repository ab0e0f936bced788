"""Validation loss for a wall-clock budget on tiny Shakespeare (nanoGPT's split).

    python benchmarks/quality.py --config cpu-3m --config cpu-10m
    python benchmarks/quality.py --config cpu-3m --set dropout=0.1 --label drop0.1 --out bench-runs
    python benchmarks/quality.py --markov 6 --json results.json --plot curves.png

Each ``--config`` is a preset name or JSON file (its ``time`` is the budget);
``--set key=value`` overrides options of the *next* ``--config`` (use
``--label`` to name it). Training and validation are the first 90% and last
10% of ``input.txt`` (genrnn's default ``--val-fraction 0.1`` is nanoGPT's
character split); the loss is genrnn's evaluator over the whole validation
text with the state carried through it, in nats per character (bits/char in
brackets). ``--markov N`` adds the N-gram Kneser-Ney baseline. The time on
the plot is the run's own clock, evaluations included.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List

import genrnn
from genrnn.presets import load_preset

NANOGPT_CPU_3M = 1.797  # nanoGPT's CPU config, 3000 iterations, 174 s on this machine (issue 3)


def corpus_path() -> Path:
    root = Path(os.environ.get("GENRNN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    return root / "tinyshakespeare" / "input.txt"


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def curve(run_dir: Path) -> List[Dict[str, float]]:
    points = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "val_loss" in rec:
            points.append({"time": rec["time"], "step": rec["step"], "val_loss": rec["val_loss"]})
    return points


def run_config(label: str, options: Dict[str, Any], out: Path) -> Dict[str, Any]:
    run_dir = out / label
    t0 = time.perf_counter()
    run = genrnn.train(corpus_path(), out=run_dir, sample_every=0, **options)
    wall = time.perf_counter() - t0
    best = run.result.best_val
    final = run.evaluate()  # the best checkpoint, whole validation text
    return {"label": label, "options": options, "val_loss": final["loss"], "val_bpc": final["bits_per_char"],
            "best_step": best["step"] if best else None, "steps": run.result.step, "train_time": run.result.elapsed,
            "wall": wall, "tokens_per_s": run.result.tokens_per_s, "curve": curve(run_dir)}


def run_markov(order: int, out: Path) -> Dict[str, Any]:
    t0 = time.perf_counter()
    run = genrnn.train(corpus_path(), out=out / f"markov-{order}", type="markov", order=order, sample_every=0)
    fit = time.perf_counter() - t0
    final = run.evaluate()
    return {"label": f"{order}-gram Kneser-Ney", "val_loss": final["loss"], "val_bpc": final["bits_per_char"],
            "train_time": fit, "wall": time.perf_counter() - t0, "curve": []}


def plot(results: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        if r["curve"]:
            ax.plot([p["time"] / 60 for p in r["curve"]], [p["val_loss"] for p in r["curve"]], marker=".",
                    label=f"{r['label']} ({r['val_loss']:.3f})")
        else:
            ax.axhline(r["val_loss"], linestyle=":", color="gray")
            ax.text(0.01, r["val_loss"] + 0.01, f"{r['label']} (fitted in {r['train_time']:.0f} s): "
                    f"{r['val_loss']:.3f}", color="gray", transform=ax.get_yaxis_transform())
    ax.axhline(NANOGPT_CPU_3M, linestyle="--", color="tab:red", linewidth=1)
    ax.text(0.01, NANOGPT_CPU_3M + 0.01, f"nanoGPT's CPU config after 3 min on this machine: {NANOGPT_CPU_3M}",
            color="tab:red", transform=ax.get_yaxis_transform())
    ax.set_xlim(left=0)
    ax.set_xlabel("training time (minutes, 2-core CPU)")
    ax.set_ylabel("validation loss (nats/char)")
    ax.set_ylim(1.35, 2.3)
    ax.set_title("tiny Shakespeare: validation loss against wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", action="append", default=[], help="preset name or JSON file; repeatable")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an option of the next --config (repeatable)")
    ap.add_argument("--label", action="append", default=[], help="name of the next --config's run")
    ap.add_argument("--markov", type=int, action="append", default=[], metavar="ORDER")
    ap.add_argument("--out", type=Path, default=Path("bench-runs"), help="where run folders go (default: bench-runs)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--merge", type=Path, action="append", default=[], help="add results from earlier --json files")
    args, _ = ap.parse_known_args()
    # pair each --config with the --set/--label options that came before it
    jobs, pending, label = [], {}, None
    argv = iter(__import__("sys").argv[1:])
    for a in argv:
        if a == "--set":
            k, _, v = next(argv).partition("=")
            pending[k.replace("-", "_")] = parse_value(v)
        elif a == "--label":
            label = next(argv)
        elif a == "--config":
            name = next(argv)
            options = {**load_preset(name), **pending}
            jobs.append((label or Path(name).stem + "".join(f"-{k}{v}" for k, v in pending.items()), options))
            pending, label = {}, None
    args.out.mkdir(parents=True, exist_ok=True)
    results: List[Dict[str, Any]] = []
    for path in args.merge:
        results += json.loads(path.read_text())
    for order in args.markov:
        results.append(run_markov(order, args.out))
        print(f"{results[-1]['label']}: {results[-1]['val_loss']:.4f} nats/char", flush=True)
    for label, options in jobs:
        r = run_config(label, options, args.out)
        results.append(r)
        print(f"{label}: {r['val_loss']:.4f} nats/char ({r['val_bpc']:.3f} bits/char), best at step "
              f"{r['best_step']} of {r['steps']}, {r['tokens_per_s']:,.0f} tokens/s", flush=True)
    print("\n| run | budget | val nats/char | bits/char | steps | tokens/s |\n|---|---|---|---|---|---|")
    for r in results:
        budget = r.get("options", {}).get("time")
        print(f"| {r['label']} | {'' if budget is None else f'{budget / 60:.3g} min'} | {r['val_loss']:.4f} | "
              f"{r['val_bpc']:.3f} | {r.get('steps', '')} | {r.get('tokens_per_s', 0):,.0f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Out of the box: the defaults against the n-gram baseline, per corpus and budget.

    python benchmarks/out_of_box.py --kn                       # Kneser-Ney orders 3-8 per corpus (seconds each)
    python benchmarks/out_of_box.py --budget 2m --config new --repeat 3 --config old
    python benchmarks/out_of_box.py --budget 10m --config new --corpus tinyshakespeare --corpus ptb
    python benchmarks/out_of_box.py --table results.jsonl      # the markdown table of everything measured

Configurations: ``new`` is what ``genrnn train CORPUS --time B`` picks by
itself (``autoconfig.choose``: the mixture, batch and width for this device,
budget and corpus); ``old`` is the previous defaults (a plain 2x256 LSTM,
64x128 batches, float32), with the 5-gram baseline reported beside it;
``adaptive`` is ``new`` with ``--adaptive-softmax`` (word level: untied); ``cpu-3m``/``cpu-10m`` are the presets with the budget given. Every run
appends one JSON line to ``--results`` with its steps, tokens/s and the
validation figures the trainer reports (the mixture's, its RNN's and its
n-gram's, all on the same validation tokens). PTB runs also report test
perplexity, which no weight was fitted on.

Corpora: five from ../shared/data (or $GENRNN_SHARED_DATA) and the built-in
python-docs, plus two kinds nothing was tuned on, from this machine: Python
source code (the standard library's ``email`` package) and software licences
(/usr/share/common-licenses).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Dict, List

import genrnn


def shared() -> Path:
    return Path(os.environ.get("GENRNN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def corpora() -> Dict[str, Dict[str, Any]]:
    d = shared()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return {
        "tinyshakespeare": {"corpus": [str(d / "tinyshakespeare" / "input.txt")]},
        "ag_news": {"corpus": [str(d / "ag_news" / "test.csv")], "fields": ["1", "2"]},
        "alice-words": {"corpus": [str(d / "alice" / "alice.txt")], "options": {"tokenizer": "word"}},
        "ptb": {"corpus": [str(d / "ptb" / "ptb.train.txt")], "val": [str(d / "ptb" / "ptb.valid.txt")],
                "test": str(d / "ptb" / "ptb.test.txt"), "options": {"tokenizer": "whitespace"}},
        "python-docs": {"corpus": None},
        # kinds not tuned on
        "python-code": {"corpus": [str(stdlib / "email")], "glob": "*.py"},
        "licenses": {"corpus": ["/usr/share/common-licenses"], "glob": "*"},
    }


CONFIGS = {
    "new": {},
    "adaptive": {"adaptive_softmax": "auto"},  # the defaults with an adaptive softmax (untied: word level)
    "old": {"type": "rnn", "baseline": 5},
    "cpu-3m": {"preset": "cpu-3m"},
    "cpu-10m": {"preset": "cpu-10m"},
    "preset": {"preset": None},  # the best preset for the corpus and budget: see best_preset
}


def best_preset(spec: Dict[str, Any], budget: float) -> str:
    """The preset a user would pick: ``ptb-small`` at word level, else the CPU
    preset for the budget (``cpu-3m`` under 7 minutes, ``cpu-10m`` from 7)."""
    if spec.get("options", {}).get("tokenizer") in ("word", "whitespace"):
        return "ptb-small"
    return "cpu-3m" if budget < 420 else "cpu-10m"


def train_one(name: str, spec: Dict[str, Any], config: str, budget: float, out: Path, repeat: int) -> Dict[str, Any]:
    options = dict(spec.get("options", {}))
    extra = dict(CONFIGS[config])
    preset = extra.pop("preset", None)
    if config == "preset":
        preset = best_preset(spec, budget)
    options.update(extra)
    run_dir = out / f"{name}-{config}-{int(budget)}s-{repeat}"
    t0 = time.perf_counter()
    run = genrnn.train(spec["corpus"], out=run_dir, val=spec.get("val"), fields=spec.get("fields", ()),
                       glob=spec.get("glob", "*.txt"), preset=preset, time=budget, sample_every=0, **options)
    wall = time.perf_counter() - t0
    best = run.result.best_val or {}
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    baseline = next((x["baseline"] for x in lines if "baseline" in x), None)
    cfg = json.loads((run_dir / "config.json").read_text())["run"]
    row = {"corpus": name, "config": config, "budget_s": budget, "repeat": repeat, "steps": run.result.step,
           "tokens_per_s": round(run.result.tokens_per_s), "wall_s": round(wall, 1), "val_loss": best.get("loss"),
           "val_bpc": best.get("bits_per_char"), "val_rnn_loss": best.get("rnn_loss", best.get("loss")),
           "val_baseline_loss": best.get("baseline_loss"), "baseline_order": baseline and baseline["order"],
           "mix_weight": best.get("mix_weight"), "model": cfg["model"]["type"],
           "shape": f"{cfg['model']['num_layers']}x{cfg['model']['hidden_size']}",
           "batch": f"{cfg['data']['batch_size']}x{cfg['data']['seq_len']}", "precision": cfg["train"]["precision"],
           "dropout": cfg["model"]["dropout"], "eval_every": cfg["train"]["eval_every"],
           "softmax": cfg["model"].get("adaptive_softmax") or "full", "tied": cfg["model"]["tie_weights"]}
    if preset:
        row["preset"] = preset
    if spec.get("test"):
        test = run.evaluate(spec["test"])
        row["test_ppl"] = test["perplexity"]
    return row


def kn_orders(name: str, spec: Dict[str, Any], out: Path, orders) -> List[Dict[str, Any]]:
    rows = []
    for n in orders:
        run_dir = out / f"{name}-kn{n}"
        options = dict(spec.get("options", {}))
        t0 = time.perf_counter()
        run = genrnn.train(spec["corpus"], out=run_dir, val=spec.get("val"), fields=spec.get("fields", ()),
                           glob=spec.get("glob", "*.txt"), type="markov", order=n, sample_every=0, **options)
        row = {"corpus": name, "config": f"kn{n}", "order": n, "fit_s": round(time.perf_counter() - t0, 1),
               "val_loss": run.result.best_val["loss"], "val_bpc": run.result.best_val["bits_per_char"]}
        if spec.get("test"):
            row["test_ppl"] = run.evaluate(spec["test"])["perplexity"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def crossfit(run_dir: Path) -> Dict[str, Any]:
    """How much fitting the mixture's weight on the validation tokens flatters
    its validation loss: fit it on one half and score the other, both ways
    (two-fold), against fitting on all of it."""
    import math

    import torch

    from genrnn.data import make_eval_set, split_documents
    from genrnn.trainer import load_documents
    from genrnn.evaluate import target_logprobs
    from genrnn.models.mixture import fit_weight

    run = genrnn.load(run_dir, device="cpu")
    cfg = run.config.data
    split = split_documents(*load_documents(run.corpus), cfg, vectors=None)
    eval_set = make_eval_set(run.tokenizer, split.val, cfg, split.val_conditions, run.condition)
    a = target_logprobs(run.model.rnn, eval_set, run.runtime)
    b = target_logprobs(run.model.ngram, eval_set, run.runtime)
    n = a.numel() // 2

    def score(w: float, x: torch.Tensor, y: torch.Tensor) -> float:
        if w >= 1:
            return float(-x.double().mean())
        if w <= 0:
            return float(-y.double().mean())
        return float(-torch.logaddexp(x.double() + math.log(w), y.double() + math.log1p(-w)).mean())

    w_all, in_sample = fit_weight(a, b)
    w1, _ = fit_weight(a[:n], b[:n])
    w2, _ = fit_weight(a[n:], b[n:])
    held_out = (score(w1, a[n:], b[n:]) * (a.numel() - n) + score(w2, a[:n], b[:n]) * n) / a.numel()
    out = {"run": str(run_dir), "tokens": int(a.numel()), "weight": w_all, "weights_halves": [w1, w2],
           "in_sample": in_sample, "two_fold": held_out, "rnn": float(-a.double().mean()),
           "ngram": float(-b.double().mean())}
    test = next((s.get("test") for s in corpora().values() if s.get("val") and
                 [str(x) for x in s["val"]] == list(run.corpus.val or [])), None)
    if test:  # a test split no weight saw: the parts and the mixture as saved
        from genrnn.data import document_records

        texts, _ = document_records(run.corpus.load([test]), cfg.layout, None)
        test_set = make_eval_set(run.tokenizer, texts, cfg, None, run.condition)
        ta = target_logprobs(run.model.rnn, test_set, run.runtime)
        tb = target_logprobs(run.model.ngram, test_set, run.runtime)
        w = float(run.model.weight)
        out.update(test_ppl_rnn=math.exp(-float(ta.double().mean())), test_ppl_ngram=math.exp(-float(tb.double().mean())),
                   test_ppl_mixture=math.exp(score(w, ta, tb)))
    return out


def table(path: Path, drop=()) -> str:
    """The markdown table; ``drop``: runs left out, as CORPUS/CONFIG/BUDGET_S/REPEAT."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["config"].startswith("kn") or
            f"{r['corpus']}/{r['config']}/{int(r['budget_s'])}/{r['repeat']}" not in set(drop)]
    kn: Dict[str, Dict[int, float]] = {}
    for r in rows:
        if r["config"].startswith("kn"):
            kn.setdefault(r["corpus"], {})[r["order"]] = r["val_loss"]
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        if not r["config"].startswith("kn"):
            # runs recorded before the dropout and validation interval were logged stay apart
            groups.setdefault((r["corpus"], r["budget_s"], r["config"], r.get("dropout"), r.get("eval_every")),
                              []).append(r)
    out = ["| corpus | budget | configuration | runs: steps @ tokens/s | RNN alone | KN-5 | best KN (order) | "
           "model (median) | vs KN-5 | vs best KN |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for (corpus, budget, config, dropout, every), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2], kv[0][3] is not None)):
        detail = "" if dropout is None else f", dropout {dropout:g}, validation every {every}"
        orders = kn.get(corpus, {})
        kn5 = orders.get(5)
        best_order = min(orders, key=orders.get) if orders else None
        med = statistics.median(r["val_loss"] for r in rs)
        rnn = statistics.median(r["val_rnn_loss"] for r in rs)
        runs = ", ".join(f"{r['steps']:,} @ {r['tokens_per_s']:,}" for r in rs)
        each = " / ".join(f"{r['val_loss']:.3f}" for r in rs)
        name = config + (" " + rs[0]["preset"] if config == "preset" else "")
        shape = f"{rs[0]['model']} {rs[0]['shape']}, {rs[0]['batch']}{detail}"
        out.append(f"| {corpus} | {budget / 60:g} min | {name} ({shape}) "
                   f"| {runs} | {rnn:.3f} | {kn5 if kn5 is None else f'{kn5:.3f}'} | "
                   f"{'-' if best_order is None else f'{orders[best_order]:.3f} ({best_order})'} | "
                   f"**{med:.3f}** ({each}) | {'-' if kn5 is None else f'{kn5 - med:+.3f}'} | "
                   f"{'-' if best_order is None else f'{orders[best_order] - med:+.3f}'} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append", help="corpus names (default: all)")
    ap.add_argument("--config", action="append", choices=list(CONFIGS), help="configurations to train")
    ap.add_argument("--budget", default="2m")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration")
    ap.add_argument("--first-repeat", type=int, default=0, help="number of the first run (to add runs to a results file)")
    ap.add_argument("--kn", action="store_true", help="fit Kneser-Ney orders 3-8 (3-5 at word level)")
    ap.add_argument("--results", default="bench-runs/out_of_box.jsonl")
    ap.add_argument("--out", default="bench-runs/out_of_box")
    ap.add_argument("--table", metavar="JSONL", help="print the markdown table of a results file and stop")
    ap.add_argument("--drop", nargs="*", default=(), metavar="CORPUS/CONFIG/BUDGET_S/REPEAT",
                    help="with --table: runs to leave out (disturbed by other work on the machine)")
    ap.add_argument("--crossfit", metavar="RUN", nargs="+", help="two-fold check of mixture runs' weights, and stop")
    args = ap.parse_args(argv)
    if args.table:
        print(table(Path(args.table), args.drop))
        return 0
    if args.crossfit:
        for run_dir in args.crossfit:
            print(json.dumps(crossfit(Path(run_dir))), flush=True)
        return 0
    from genrnn.config import parse_duration

    budget = parse_duration(args.budget)
    specs = corpora()
    names = args.corpus or list(specs)
    out, results = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        spec = specs[name]
        if args.kn:
            words = spec.get("options", {}).get("tokenizer", "char") != "char"
            for row in kn_orders(name, spec, out, range(3, 6) if words else range(3, 9)):
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
        for config in args.config or []:
            for i in range(args.first_repeat, args.first_repeat + args.repeat):
                row = train_one(name, spec, config, budget, out, i)
                print(json.dumps(row), flush=True)
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

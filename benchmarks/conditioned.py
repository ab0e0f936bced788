"""The condition is obeyed: AG News class -> title.

    python benchmarks/conditioned.py                                  # both designs, 5 min each
    python benchmarks/conditioned.py --time 10m --designs every-step --json cond.json
    python benchmarks/conditioned.py --preset cpu-3m --option hidden_size=384 --option dropout=0.1
    python benchmarks/conditioned.py --time 20s --rows 600 --per-class 20   # smoke test

Data: AG News' test split ($GENRNN_SHARED_DATA/ag_news/test.csv, 7,600 rows, no
header: class 1-4, title, description; class names from classes.txt). A fixed
permutation (``numpy.random.default_rng(0)``) cuts it into 6,600 training rows
and 1,000 held-out rows, written with a header (label,title,description) to
the work folder (``--work``, default a temporary folder).

For each design (``--designs``: ``every-step`` feeds the label's embedding at
every step as well as into the initial state, ``condition_every_step=True``;
``initial`` feeds it into the initial state only) genrnn trains a title model
conditioned on the label for ``--time`` (genrnn's own held-out 10% of the
training CSV validates it). ``--preset`` and ``--option KEY=VALUE``
(repeatable, values read as JSON where they parse) pass training options.

The judge is a classifier that never saw a generated title: TF-IDF over
character 2-4-grams (``char_wb``, sublinear tf) + logistic regression, trained
on the 6,600 training titles, C = 10 (``--judge-c 0`` picks C from 1, 3, 10,
30 by 3-fold cross-validation instead; on the full split C = 10 scores 77.4%
on the real held-out titles, fitted in about 15 s here). Reported:

* the judge's accuracy on the 1,000 real held-out titles (what a perfectly
  obeyed condition could score at most, roughly) and chance (25%);
* the judge's accuracy on ``--per-class`` (200) generated titles per class
  (temperature ``--temperature`` 0.8, fixed seed, 150 characters at most,
  stopped at a newline or <eos>): does it recover the class asked for?
  Overall and per class;
* the model as a generative classifier on the 1,000 held-out titles:
  argmax over c of log p(title | c) + log p(c), priors from the training
  label counts (``run.score``);
* the share of generated titles that are verbatim training titles
  (memorisation), the share of distinct ones, and a few examples per class.

The equivalent ``genrnn train`` command is printed for each design.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from run_options import CLI_FLAGS, checked_options, fresh_dir, shared_data

DESIGNS = {"every-step": True, "initial": False}
N_HELD_OUT = 1000
JUDGE_CS = (1.0, 3.0, 10.0, 30.0)


def read_rows(path: Path) -> List[Tuple[str, str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(r[0].strip(), r[1], r[2]) for r in csv.reader(f) if r]


def split_rows(rows: List[Tuple[str, str, str]], rows_limit: int = 0) -> Tuple[list, list]:
    """6,600 training and 1,000 held-out rows by a fixed permutation; ``rows_limit``
    keeps only the first rows of each part (same proportions) for a smoke test."""
    order = np.random.default_rng(0).permutation(len(rows))
    n_train = len(rows) - N_HELD_OUT
    train = [rows[i] for i in order[:n_train]]
    held = [rows[i] for i in order[n_train:]]
    if rows_limit:
        held = held[: max(20, rows_limit * N_HELD_OUT // n_train)]
        train = train[:rows_limit]
    return train, held


def write_csv(path: Path, rows: Sequence[Tuple[str, str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "title", "description"])
        w.writerows(rows)


# -- the judge -------------------------------------------------------------------------


def fit_judge(titles: List[str], labels: List[str], c: float = 0.0):
    """TF-IDF char 2-4-grams + logistic regression; ``c`` 0 = pick C by 3-fold CV."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline

    def pipe(value: float):
        return make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True),
                             LogisticRegression(C=value, max_iter=2000))

    if c > 0:
        return pipe(c).fit(titles, labels), {"C": c}
    search = GridSearchCV(pipe(10.0), {"logisticregression__C": list(JUDGE_CS)}, cv=3, n_jobs=1)
    search.fit(titles, labels)
    cv = {f"{p['logisticregression__C']:g}": float(s)
          for p, s in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"])}
    return search.best_estimator_, {"C": search.best_params_["logisticregression__C"], "cv_accuracy": cv}


def accuracy(pred: Sequence[str], gold: Sequence[str], labels: Sequence[str]) -> Dict[str, Any]:
    pred, gold = list(pred), list(gold)
    out: Dict[str, Any] = {"overall": sum(p == g for p, g in zip(pred, gold)) / max(1, len(gold)), "per_class": {}}
    for lab in labels:
        idx = [i for i, g in enumerate(gold) if g == lab]
        out["per_class"][lab] = sum(pred[i] == lab for i in idx) / len(idx) if idx else float("nan")
    out["confusion"] = {lab: dict(Counter(pred[i] for i, g in enumerate(gold) if g == lab)) for lab in labels}
    return out


# -- one design ------------------------------------------------------------------------


def cli_line(train_csv: Path, classes: Path, run_dir: Path, design: str, seconds: float,
             preset: str, options: Dict[str, Any]) -> str:
    parts = ["genrnn", "train", str(train_csv), "--field", "title", "--condition-field", "label",
             "--condition-names", str(classes), "--time", f"{seconds:g}s", "--out", str(run_dir),
             "--sample-every", "0"]
    if not DESIGNS[design]:
        parts.append("--no-condition-every-step")
    if preset:
        parts += ["--preset", preset]
    for k, v in options.items():
        flag = CLI_FLAGS.get(k, "--" + k.replace("_", "-"))
        if isinstance(v, bool):  # store_true flags; False is their default
            if v:
                parts.append(flag)
        else:
            parts += [flag, str(v)]
    return " ".join(shlex.quote(p) for p in parts)


def run_design(design: str, args, work: Path, train_rows, held_rows, judge, labels: List[str],
               names: Dict[str, str], options: Dict[str, Any]) -> Dict[str, Any]:
    import genrnn

    run_dir = fresh_dir(work / f"run-{design}")
    train_csv, classes = work / "train.csv", shared_data() / "ag_news" / "classes.txt"
    command = cli_line(train_csv, classes, run_dir, design, args.seconds, args.preset, options)
    print(f"\n[{design}] {command}", flush=True)
    t0 = time.perf_counter()
    run = genrnn.train(train_csv, fields=["title"], condition_field="label", condition_names=classes,
                       layout="lines", out=run_dir, time=args.seconds, condition_every_step=DESIGNS[design],
                       sample_every=0, preset=args.preset or None, **options)
    wall = time.perf_counter() - t0
    r = run.result
    best = r.best_val or {}
    print(f"[{design}] {r.step} steps in {r.elapsed:.0f}s, {r.tokens_per_s:,.0f} tokens/s, "
          f"best val {best.get('loss', float('nan')):.4f} nats/char ({best.get('bits_per_char', float('nan')):.3f} "
          f"bits/char)", flush=True)

    # generated titles, per_class per label, in one batch
    asked = [lab for lab in labels for _ in range(args.per_class)]
    t1 = time.perf_counter()
    texts = run.generate("", condition=asked, temperature=args.temperature, seed=args.seed,
                         length=150, stop=["\n"])
    gen_time = time.perf_counter() - t1
    texts = [t.strip() for t in texts]
    judged = list(judge.predict(texts))
    gen_acc = accuracy(judged, asked, labels)
    train_titles = {t.strip() for _, t, _ in train_rows}
    copies = sum(t in train_titles for t in texts)
    by_label = {lab: [t for t, a in zip(texts, asked) if a == lab] for lab in labels}

    # the model as a generative classifier on the held-out titles
    t2 = time.perf_counter()
    titles = [t for _, t, _ in held_rows]
    gold = [lab for lab, _, _ in held_rows]
    counts = Counter(lab for lab, _, _ in train_rows)
    prior = {lab: math.log(counts[lab] / len(train_rows)) for lab in labels}
    scores = np.array([run.score(titles, condition=[lab] * len(titles)) for lab in labels])  # (C, N)
    scores += np.array([prior[lab] for lab in labels])[:, None]
    gc_pred = [labels[i] for i in scores.argmax(axis=0)]
    gc_acc = accuracy(gc_pred, gold, labels)
    score_time = time.perf_counter() - t2

    at_other = {}
    for t_other in args.also_temperature:
        other = [t.strip() for t in run.generate("", condition=asked, temperature=t_other, seed=args.seed,
                                                length=150, stop=["\n"])]
        at_other[str(t_other)] = accuracy(list(judge.predict(other)), asked, labels)
        print(f"[{design}] judge on titles generated at T = {t_other:g}: {at_other[str(t_other)]['overall']:.1%}",
              flush=True)
    print(f"[{design}] judge on generated titles: {gen_acc['overall']:.1%} "
          + ", ".join(f"{names[lab]} {gen_acc['per_class'][lab]:.1%}" for lab in labels)
          + f"; generative classifier on held-out titles: {gc_acc['overall']:.1%}; "
          f"copies of training titles {copies / len(texts):.1%}, distinct {len(set(texts)) / len(texts):.1%}, "
          f"empty {sum(not t for t in texts)}", flush=True)
    for lab in labels:
        print(f"  {names[lab]}:")
        for t in by_label[lab][: args.examples]:
            print(f"    {t}")
    return {"design": design, "condition_every_step": DESIGNS[design], "command": command, "options": options,
            "preset": args.preset, "budget": args.seconds, "steps": r.step, "train_time": r.elapsed,
            "wall": wall, "tokens_per_s": r.tokens_per_s, "best_val": best,
            "generated": {"n": len(texts), "temperature": args.temperature, "seed": args.seed,
                          "seconds": gen_time, "judge_accuracy": gen_acc,
                          "judge_accuracy_at": at_other,
                          "copies_of_training": copies / len(texts), "distinct": len(set(texts)) / len(texts),
                          "empty": sum(not t for t in texts), "mean_length": float(np.mean([len(t) for t in texts])),
                          "examples": {names[lab]: by_label[lab][: args.examples] for lab in labels},
                          "all": [{"asked": names[a], "judged": names.get(j, j), "text": t}
                                  for a, j, t in zip(asked, judged, texts)]},
            "generative_classifier": {"accuracy": gc_acc, "seconds": score_time,
                                      "prior": {names[lab]: counts[lab] / len(train_rows) for lab in labels}}}


# -- main ----------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time", default="5m", help="training budget per design, e.g. 90s, 5m (default: 5m)")
    ap.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS),
                    help="every-step (condition_every_step=True) and/or initial (False); default: both")
    ap.add_argument("--preset", default="", help="a genrnn preset name or JSON file of options (its time is "
                                                 "overridden by --time)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a genrnn training option, e.g. hidden_size=512 (repeatable; JSON values)")
    ap.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: 0.8)")
    ap.add_argument("--also-temperature", type=float, action="append", default=[], metavar="T",
                    help="judge generated titles at this temperature too (repeatable; reported beside)")
    ap.add_argument("--per-class", type=int, default=200, help="generated titles per class (default: 200)")
    ap.add_argument("--seed", type=int, default=1, help="sampling seed (default: 1)")
    ap.add_argument("--examples", type=int, default=5, help="example titles shown per class (default: 5)")
    ap.add_argument("--judge-c", type=float, default=10.0,
                    help="the judge's C (default: 10); 0 = pick it from 1, 3, 10, 30 by 3-fold CV")
    ap.add_argument("--rows", type=int, default=0,
                    help="smoke test: keep only this many training rows (and a proportional share of held-out)")
    ap.add_argument("--work", type=Path, help="where the CSVs and run folders go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    data = shared_data() / "ag_news"
    if not (data / "test.csv").is_file() or not (data / "classes.txt").is_file():
        print(f"AG News not found: need {data / 'test.csv'} and {data / 'classes.txt'} "
              "(set GENRNN_SHARED_DATA to the folder holding ag_news/)", file=sys.stderr)
        return 2
    from genrnn.config import parse_duration

    args.seconds = parse_duration(args.time)
    options = checked_options(args.option, args.preset, ("condition_every_step", "time", "layout", "sample_every"))
    if options is None:
        return 2

    rows = read_rows(data / "test.csv")
    class_names = [line.strip() for line in (data / "classes.txt").read_text().splitlines() if line.strip()]
    labels = [str(i + 1) for i in range(len(class_names))]
    names = dict(zip(labels, class_names))
    train_rows, held_rows = split_rows(rows, args.rows)

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="genrnn-conditioned-")
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    try:
        write_csv(work / "train.csv", train_rows)
        write_csv(work / "heldout.csv", held_rows)
        print(f"AG News: {len(train_rows):,} training rows, {len(held_rows):,} held-out rows "
              f"({', '.join(f'{names[k]} {v}' for k, v in sorted(Counter(r[0] for r in train_rows).items()))}); "
              f"work folder {work}", flush=True)

        t0 = time.perf_counter()
        train_titles = [t for _, t, _ in train_rows]
        judge, judge_info = fit_judge(train_titles, [lab for lab, _, _ in train_rows], args.judge_c)
        real = accuracy(judge.predict([t for _, t, _ in held_rows]), [lab for lab, _, _ in held_rows], labels)
        judge_info.update(real_held_out=real, seconds=time.perf_counter() - t0)
        print(f"judge (char 2-4-gram TF-IDF + logistic regression, C={judge_info['C']:g}): "
              f"{real['overall']:.1%} on the {len(held_rows):,} real held-out titles ("
              + ", ".join(f"{names[lab]} {real['per_class'][lab]:.1%}" for lab in labels)
              + f"); fitted in {judge_info['seconds']:.0f}s", flush=True)

        results = [run_design(d, args, work, train_rows, held_rows, judge, labels, names, options)
                   for d in args.designs]
    finally:
        if tmp is not None:
            tmp.cleanup()

    pc = " | ".join(f"{names[lab]}" for lab in labels)
    print(f"\n| design | steps | tokens/s | val bits/char | judge acc, generated | {pc} | "
          f"generative-classifier acc | copies of training |")
    print("|" + "---|" * (7 + len(labels)))
    for r in results:
        g = r["generated"]["judge_accuracy"]
        bpc = r["best_val"].get("bits_per_char")
        print(f"| {r['design']} | {r['steps']:,} | {r['tokens_per_s']:,.0f} | "
              f"{'' if bpc is None else f'{bpc:.3f}'} | {g['overall']:.1%} | "
              + " | ".join(f"{g['per_class'][lab]:.1%}" for lab in labels)
              + f" | {r['generative_classifier']['accuracy']['overall']:.1%} | "
              f"{r['generated']['copies_of_training']:.1%} |")
    print(f"| real held-out titles (judge) | | | | {real['overall']:.1%} | "
          + " | ".join(f"{real['per_class'][lab]:.1%}" for lab in labels) + " | | |")
    print("| chance | | | | 25.0% | " + " | ".join("25.0%" for _ in labels) + " | 25.0% | |")
    print("\nreproduce the training with" + (" (the CSVs are kept with --work DIR):" if tmp is not None else ":"))
    for r in results:
        print(f"  {r['command']}")
    if args.json:
        args.json.write_text(json.dumps({"data": {"train_rows": len(train_rows), "held_out_rows": len(held_rows),
                                                  "split": "numpy default_rng(0) permutation of ag_news/test.csv",
                                                  "classes": names},
                                         "judge": judge_info, "designs": results}, indent=2))
    return 0


if __name__ == "__main__":
    from genrnn.errors import GenrnnError

    try:
        raise SystemExit(main())
    except GenrnnError as e:  # genrnn's own one-line errors (a bad option value, a bad preset...)
        print(f"genrnn: error: {e}", file=sys.stderr)
        raise SystemExit(2)

"""Mechanism check: reversing random strings of 5-20 characters, with and without attention.

    python benchmarks/reversal.py                       # both designs, 3 minutes each
    python benchmarks/reversal.py --time 30s --test 200 # smoke test

The strings are drawn uniformly from the 26 lower-case letters, their lengths
uniformly from 5 to 20 (seed 0 for training, seed 1 for the test strings,
none of which is a training string). Each design trains for ``--time`` on
``--train`` pairs (genrnn holds out 10% for validation) and decodes the test
strings greedily (``run.translate(beam=1)``); the figure is the exact-match
share. ``--option KEY=VALUE`` passes training options.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

from run_options import checked_options

DEFAULTS: Dict[str, Any] = {"hidden_size": 128, "num_layers": 1, "embedding_size": 32, "batch_size": 64,
                            "seq_len": 24, "eval_every": 250, "sample_every": 0}


def strings(n: int, seed: int):
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(5, 20))) for _ in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", default="3m")
    ap.add_argument("--train", type=int, default=20_000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--designs", default="attention,plain")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    options = checked_options(args.option, "", ("time", "attention"))
    if options is None:
        return 2
    import genrnn

    train = strings(args.train, 0)
    seen = set(train)
    test = [s for s in strings(args.test * 2, 1) if s not in seen][: args.test]
    report: Dict[str, Any] = {"train_pairs": len(train), "test_strings": len(test), "time": args.time}
    with tempfile.TemporaryDirectory() as work:
        table = Path(work) / "reverse.csv"
        with open(table, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["src", "tgt"])
            w.writerows((s, s[::-1]) for s in train)
        for design in args.designs.split(","):
            run = genrnn.train(str(table), task="seq2seq", source_field="src", target_field="tgt",
                               out=Path(work) / design, time=args.time,
                               **{**DEFAULTS, **options, "attention": design == "attention"})
            out = run.translate(test, beam=1, length=24)
            exact = sum(o == s[::-1] for o, s in zip(out, test)) / len(test)
            r = run.result
            report[design] = {"exact_match": round(100 * exact, 1), "steps": r.step,
                              "seconds": round(r.elapsed, 1), "target_tokens_per_s": round(r.tokens_per_s),
                              "val_loss": round(r.best_val["loss"], 4) if r.best_val else None,
                              "examples": [{"source": s, "output": o} for s, o in list(zip(test, out))[:3]]}
            print(design, json.dumps(report[design]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

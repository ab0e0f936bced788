"""Headlines: AG News description -> title, against the "lead" baseline.

    python benchmarks/headlines.py --time 10m --json headlines.json
    python benchmarks/headlines.py --time 20s --rows 600        # smoke test

Data and split: as benchmarks/conditioned.py (AG News' 7,600-row test split,
a fixed permutation into 6,600 training and 1,000 held-out rows). The source
is the description cut to its first ``--source-chars`` (200) characters at a
word boundary (the median description has 187; genrnn leaves out pairs over
its ``--seq-len``, and the lead of a news description is what its title
summarises); the target is the title.

Rows of the table, on the 1,000 held-out rows, with chrF (sacrebleu) and
ROUGE-L F1 over lower-cased words (genrnn.metrics):

* lead: the description's first words, as many as the median training title
  has (the usual extractive baseline for headline generation);
* genrnn seq2seq (bidirectional encoder + attention, char level) trained for
  ``--time`` on the training rows (10% held out for validation), decoded
  greedily and with beam 5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

from conditioned import read_rows, split_rows, write_csv
from run_options import checked_options, shared_data

DEFAULTS: Dict[str, Any] = {"hidden_size": 256, "num_layers": 1, "embedding_size": 64, "batch_size": 32,
                            "seq_len": 208, "dropout": 0.1, "bidirectional": True, "attention": True,
                            "eval_every": 250, "sample_every": 0}


def cut(text: str, chars: int) -> str:
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    head = text[:chars]
    return head[: head.rfind(" ")] if " " in head else head


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", default="10m")
    ap.add_argument("--rows", type=int, default=0, help="use only this many training rows (smoke test)")
    ap.add_argument("--source-chars", type=int, default=200)
    ap.add_argument("--beams", default="1,5")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    options = checked_options(args.option, "", ("time",))
    if options is None:
        return 2
    path = shared_data() / "ag_news" / "test.csv"
    if not path.is_file():
        print(f"no AG News at {path}: set GENRNN_SHARED_DATA", file=sys.stderr)
        return 2
    from genrnn.metrics import chrf, rouge_l

    train, held = split_rows(read_rows(path), args.rows)
    train = [(label, title, cut(desc, args.source_chars)) for label, title, desc in train]
    sources = [cut(desc, args.source_chars) for _, _, desc in held]
    refs = [title for _, title, _ in held]
    words = int(statistics.median(len(t.split()) for _, t, _ in train))
    lead = [" ".join(s.split()[:words]) for s in sources]
    report: Dict[str, Any] = {"held_out": len(held), "lead": {"words": words, "chrf": round(chrf(lead, refs), 1),
                                                              "rouge_l": round(rouge_l(lead, refs), 1)}}
    print("lead", json.dumps(report["lead"]), flush=True)
    import genrnn

    with tempfile.TemporaryDirectory() as work:
        table = Path(work) / "train.csv"
        write_csv(table, train)
        run = genrnn.train(str(table), task="seq2seq", source_field="description", target_field="title",
                           out=Path(work) / "run", time=args.time, **{**DEFAULTS, **options})
        r = run.result
        report["training"] = {"steps": r.step, "seconds": round(r.elapsed, 1),
                              "target_tokens_per_s": round(r.tokens_per_s),
                              "val_loss": round(r.best_val["loss"], 4) if r.best_val else None,
                              "options": {**DEFAULTS, **options}}
        print("training", json.dumps(report["training"]), flush=True)
        for beam in [int(b) for b in args.beams.split(",")]:
            out = run.translate(sources, beam=beam, length=120)
            name = "greedy" if beam == 1 else f"beam{beam}"
            report[name] = {"chrf": round(chrf(out, refs), 1), "rouge_l": round(rouge_l(out, refs), 1),
                            "examples": [{"description": s[:100], "output": o, "title": t}
                                         for s, o, t in list(zip(sources, out, refs))[:4]]}
            print(name, json.dumps(report[name], ensure_ascii=False), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

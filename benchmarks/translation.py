"""Translation, English -> German program messages (Debian's gettext catalogs).

    python benchmarks/translation.py --time 30m --json mt.json              # attention, bidirectional
    python benchmarks/translation.py --time 30m --no-attention               # the plain encoder-decoder
    python benchmarks/translation.py --baselines-only                        # copying the source, seconds
    python benchmarks/translation.py --time 30s --limit 100                  # smoke test

Data: $GENRNN_SHARED_DATA/debian-l10n/en-de.{train,valid,test}.tsv (no header;
English, German, catalog; read literally: ``quotes=False``, a ``"`` is a
character). genrnn trains on train with valid as validation, for ``--time``
(the budget includes its periodic validations), then decodes the test split
greedily, with beam 5, and with beam 5 keeping placeholders (the best of the
5 hypotheses whose placeholders equal the source's: ``keep_placeholders``)
(``run.translate``, 64 sources per batch, length penalty 1). ``--option KEY=VALUE`` (repeatable, JSON values) passes training
options. Every figure is printed with the steps and tokens/s it came from.

Metrics (genrnn.metrics, sacrebleu defaults): corpus BLEU and chrF, exact
match, and the share of outputs whose printf placeholders equal the source's.
Baseline: the source copied unchanged. Decoding speed: test sentences per
second at batch 1 (the first ``--speed-sentences`` sources, one at a time) and
at batch 64, greedy and beam 5.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

from run_options import checked_options, fresh_dir, shared_data

DEFAULTS: Dict[str, Any] = {  # chosen by short runs on this task; see docs/benchmarks.md
    "hidden_size": 256, "num_layers": 1, "embedding_size": 64, "batch_size": 64, "seq_len": 176,
    "dropout": 0.1, "bidirectional": True, "attention": True, "eval_every": 500, "sample_every": 0,
    "eval_tokens": 200_000,
}


def read_pairs(path: Path) -> List[Tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            rows.append((parts[0], parts[1]))
    return rows


def scores(outputs: List[str], pairs: List[Tuple[str, str]]) -> Dict[str, float]:
    from genrnn.metrics import translation_scores

    return {k: round(v, 1) for k, v in translation_scores(outputs, [t for _, t in pairs],
                                                           [s for s, _ in pairs]).items()}


def decode(run, sources: List[str], beam: int, batch_size: int, keep: bool = False) -> Tuple[List[str], float]:
    t0 = time.perf_counter()
    out = run.translate(sources, beam=beam, batch_size=batch_size, keep_placeholders=keep)
    return out, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", default="30m", help="training budget (default 30m)")
    ap.add_argument("--no-attention", action="store_true", help="the plain encoder-decoder (final state only)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N test pairs")
    ap.add_argument("--beams", default="1,5,5+keep",
                    help="beam sizes to decode with (1 = greedy; N+keep: keep_placeholders)")
    ap.add_argument("--speed-sentences", type=int, default=64)
    ap.add_argument("--baselines-only", action="store_true")
    ap.add_argument("--run", help="score an existing run folder instead of training one")
    ap.add_argument("--out", default="runs/bench-translation")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    data = shared_data() / "debian-l10n"
    if not (data / "en-de.train.tsv").is_file():
        print(f"no data at {data}: set GENRNN_SHARED_DATA", file=sys.stderr)
        return 2
    test = read_pairs(data / "en-de.test.tsv")[: args.limit]
    sources = [s for s, _ in test]
    report: Dict[str, Any] = {"test_pairs": len(test), "copy_source": scores(sources, test)}
    print(f"test pairs {len(test)}; copying the source: {report['copy_source']}", flush=True)
    if args.baselines_only:
        return _write(args.json, report)

    import genrnn

    if args.run:
        run = genrnn.load(args.run)
        options = {}
    else:
        options = checked_options(args.option, "", ("time",))
        if options is None:
            return 2
        options = {**DEFAULTS, **({"attention": False} if args.no_attention else {}), **options}
        out = fresh_dir(Path(args.out))
        run = genrnn.train(str(data / "en-de.train.tsv"), val=str(data / "en-de.valid.tsv"), task="seq2seq",
                           source_field="0", target_field="1", format="tsv", quotes=False, out=out,
                           time=args.time, **options)
        r = run.result
        report["training"] = {"run": str(r.run_dir), "options": options, "time": args.time, "steps": r.step,
                              "seconds": round(r.elapsed, 1), "target_tokens_per_s": round(r.tokens_per_s),
                              "val_loss": round(r.best_val["loss"], 4) if r.best_val else None,
                              "parameters": sum(p.numel() for p in run.model.parameters())}
        print("training:", json.dumps(report["training"]), flush=True)
    for name_beam in args.beams.split(","):
        keep = name_beam.endswith("+keep")
        beam = int(name_beam.replace("+keep", ""))
        outputs, seconds = decode(run, sources, beam, 64, keep)
        name = ("greedy" if beam == 1 else f"beam{beam}") + ("_keep_placeholders" if keep else "")
        report[name] = {**scores(outputs, test), "sentences_per_s_batch64": round(len(sources) / seconds, 1)}
        few = sources[: args.speed_sentences]
        t0 = time.perf_counter()
        for s in few:
            run.translate([s], beam=beam, keep_placeholders=keep)
        report[name]["sentences_per_s_batch1"] = round(len(few) / (time.perf_counter() - t0), 1)
        report[name]["examples"] = [{"source": s, "output": o, "reference": t}
                                    for (s, t), o in list(zip(test, outputs))[:5]]
        print(name, json.dumps({k: v for k, v in report[name].items() if k != "examples"}), flush=True)
    return _write(args.json, report)


def _write(path, report) -> int:
    if path:
        Path(path).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

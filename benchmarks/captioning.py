"""Captioning: the emoji test split.

    python benchmarks/captioning.py                                   # baselines + both designs, 10 min each
    python benchmarks/captioning.py --baselines-only                  # the two baselines, seconds
    python benchmarks/captioning.py --time 10m --designs every-step --features-baseline --json captions.json
    python benchmarks/captioning.py --time 10m --designs every-step --option tokenizer='"char"'   # any option
    python benchmarks/captioning.py --time 20s --features-baseline    # smoke test

Data: $GENRNN_SHARED_DATA/emoji-captions (captions.csv: image,caption,codepoints,
group,subgroup,split; images/NNNN.png, 64x64 RGB): 3,287 train, 175 valid, 193
test images, each captioned with its CLDR short name ("woman biking: light skin
tone"). The splits are written as CSVs (image as an absolute path, caption) to
the work folder (``--work``, default a temporary folder).

Metrics on the 193 test images, with sacrebleu: corpus BLEU-4
(``corpus_bleu(hyps, [refs])``), chrF (``corpus_chrf``), exact match, and
skin-tone accuracy: among the test images whose reference names a skin tone
(light, medium-light, medium, medium-dark, dark; "kiss: woman, man,
medium-light skin tone, dark skin tone" names two), the share of captions that
name exactly the same tones in the same order (tones are parsed with a regex
that takes the longest match, so "medium skin tone" never matches inside
"medium-light skin tone").

Rows of the table:

* pixel retrieval: the caption of the nearest training image in pixel space
  (L2 over the 64x64x3 pixels as floats, as genrnn reads them: RGB on white);
* most frequent training caption, for every image;
* genrnn captioners (``image_field``: genrnn's small CNN encoder), one per
  ``--designs`` entry (``every-step``: the image embedding is fed at every step
  as well as into the initial state; ``initial``: the initial state only),
  trained for ``--time`` on train with valid as validation, captioning the test
  images with the default beam (``run.caption``) and greedily, with genrnn's captioner settings
  (``autoconfig.CAPTIONER``) for every option not given; ``--option
  KEY=VALUE`` (repeatable, JSON values) and ``--preset`` pass training options;
* with ``--features-baseline``: a captioner on precomputed features instead of
  the CNN (``condition_vectors``: the pixels box-downsampled to 16x16x3 = 768
  numbers in [0, 1] and the square roots of an 8x8x8 RGB colour histogram's
  shares, 512 more, one row per training record; genrnn holds out 10% of
  train for validation since a vector run takes no --val), captioning the test
  images from their own feature rows, decoded the same two ways.

The figures issue-measured for the baselines are printed beside this run's.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from run_options import CLI_FLAGS, checked_options, fresh_dir, shared_data

DESIGNS = {"every-step": True, "initial": False}
TONES = ("medium-light", "medium-dark", "medium", "light", "dark")  # longest first: the regex takes the first
TONE_RE = re.compile(r"\b(" + "|".join(re.escape(t) for t in TONES) + r") skin tone\b")
# the issue's figures for the 193 test images (pixel retrieval; most frequent caption)
ISSUE = {"pixel retrieval": {"bleu": 40.0, "chrf": 67.4, "exact": 0.0, "tone": 5.6, "tone_n": 90},
         "most frequent caption": {"bleu": 0.0, "chrf": 7.8}}
FEATURE_SIDE = 16


# -- data --------------------------------------------------------------------------


def read_splits(root: Path) -> Dict[str, List[Dict[str, str]]]:
    """{split: [{"image": absolute path, "caption": ...}]} in file order."""
    splits: Dict[str, List[Dict[str, str]]] = {"train": [], "valid": [], "test": []}
    with open(root / "captions.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            splits.setdefault(row["split"], []).append(
                {"image": str((root / row["image"]).resolve()), "caption": row["caption"]})
    return splits


def write_csv(path: Path, rows: Sequence[Dict[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        w.writerows([r["image"], r["caption"]] for r in rows)


def pixels(paths: Sequence[str]) -> np.ndarray:
    """(N, 3, 64, 64) uint8, as genrnn reads the images."""
    from genrnn.images import load_image

    return np.stack([load_image(p) for p in paths])


def features(images: np.ndarray, side: int = FEATURE_SIDE) -> np.ndarray:
    """Box-downsampled pixels, (N, 3 * side * side) in [0, 1], then the square
    root of the share of pixels in each of 8^3 RGB colour cells: float32,
    one row per image. The pixels say where things are, the histogram which
    colours there are wherever they are (a skin tone)."""
    import torch

    from genrnn.models.encoders import colour_histogram

    n, c, s, _ = images.shape
    k = s // side
    small = images.reshape(n, c, side, k, side, k).astype(np.float32).mean(axis=(3, 5))
    hist = colour_histogram(torch.from_numpy(images)).numpy()  # the image encoder's own
    return np.concatenate([(small / 255.0).reshape(n, -1), hist], axis=1)


# -- metrics -----------------------------------------------------------------------


def tones(text: str) -> List[str]:
    return TONE_RE.findall(text)


def metrics(hyps: Sequence[str], refs: Sequence[str]) -> Dict[str, Any]:
    import sacrebleu

    hyps = [h.strip() for h in hyps]
    refs = list(refs)
    toned = [i for i, r in enumerate(refs) if tones(r)]
    tone_hits = sum(tones(hyps[i]) == tones(refs[i]) for i in toned)
    return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
            "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "exact": 100.0 * sum(h == r for h, r in zip(hyps, refs)) / len(refs),
            "tone": 100.0 * tone_hits / len(toned) if toned else float("nan"), "tone_n": len(toned),
            "tone_hits": tone_hits, "distinct_captions": len(set(hyps))}


# -- methods -----------------------------------------------------------------------


def pixel_retrieval(train_px: np.ndarray, test_px: np.ndarray, train_caps: List[str]) -> List[str]:
    a = train_px.reshape(len(train_px), -1).astype(np.float32)
    b = test_px.reshape(len(test_px), -1).astype(np.float32)
    d = (b * b).sum(1)[:, None] - 2.0 * b @ a.T + (a * a).sum(1)[None, :]  # squared L2, (test, train)
    return [train_caps[i] for i in d.argmin(axis=1)]


def cli_line(corpus: Path, run_dir: Path, seconds: float, preset: str, options: Dict[str, Any],
             every_step: Optional[bool], val: Optional[Path] = None, vectors: Optional[Path] = None) -> str:
    parts = ["genrnn", "train", str(corpus), "--field", "caption"]
    parts += ["--image-features", str(vectors)] if vectors else ["--image-field", "image"]
    if val:
        parts += ["--val", str(val)]
    parts += ["--time", f"{seconds:g}s", "--out", str(run_dir), "--sample-every", "0"]
    if every_step is False:
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


def summary(run, wall: float) -> Dict[str, Any]:
    r = run.result
    return {"steps": r.step, "train_time": r.elapsed, "wall": wall, "tokens_per_s": r.tokens_per_s,
            "best_val": r.best_val or {}}


def run_captioner(design: str, args, work: Path, test_paths: List[str], refs: List[str],
                  options: Dict[str, Any]) -> List[Dict[str, Any]]:
    import genrnn

    run_dir = fresh_dir(work / f"run-{design}")
    command = cli_line(work / "train.csv", run_dir, args.seconds, args.preset, options, DESIGNS[design],
                       val=work / "valid.csv")
    print(f"\n[{design}] {command}", flush=True)
    t0 = time.perf_counter()
    run = genrnn.train(work / "train.csv", fields=["caption"], image_field="image", val=[work / "valid.csv"],
                       out=run_dir, time=args.seconds, condition_every_step=DESIGNS[design], sample_every=0,
                       preset=args.preset or None, **options)
    return decoded(summary(run, time.perf_counter() - t0), f"genrnn, {design}", command, options, refs,
                   lambda beam: run.caption(test_paths, length=100, beam=beam))


def decoded(out: Dict[str, Any], method: str, command: str, options: Dict[str, Any], refs: List[str],
            caption) -> List[Dict[str, Any]]:
    """Two rows for one captioner: its default decoding (a beam of CAPTION_BEAM) and greedy."""
    from genrnn.beam import CAPTION_BEAM

    rows = []
    for beam, how in ((CAPTION_BEAM, f"beam {CAPTION_BEAM}, the default"), (1, "greedy")):
        t1 = time.perf_counter()
        hyps = [h.strip() for h in caption(beam)]
        rows.append(dict(out, method=f"{method}, {how}", command=command, options=options, beam=beam,
                         caption_seconds=time.perf_counter() - t1, hyps=hyps, **metrics(hyps, refs)))
        report(rows[-1])
    return rows


def run_features(args, work: Path, train_px: np.ndarray, test_px: np.ndarray, refs: List[str],
                 options: Dict[str, Any]) -> List[Dict[str, Any]]:
    import genrnn

    npy = work / "train-features.npy"
    np.save(npy, features(train_px))
    run_dir = fresh_dir(work / "run-features")
    every_step = args.designs != ["initial"]  # every-step unless only initial is asked for
    command = cli_line(work / "train.csv", run_dir, args.seconds, args.preset, options, every_step, vectors=npy)
    print(f"\n[features] {command}", flush=True)
    t0 = time.perf_counter()
    run = genrnn.train(work / "train.csv", fields=["caption"], condition_vectors=npy, out=run_dir,
                       time=args.seconds, condition_every_step=every_step, sample_every=0,
                       preset=args.preset or None, **options)
    design = "every-step" if every_step else "initial"
    rows = features(test_px)

    def caption(beam: int) -> List[str]:
        if beam == 1:
            return run.generate("", condition=rows, temperature=0, length=100, stop=["\n"])
        return [h[0][0] for h in run.beam_search([""] * len(rows), beam=beam, length=100, condition=rows)]

    return decoded(summary(run, time.perf_counter() - t0),
                   f"genrnn, {FEATURE_SIDE}x{FEATURE_SIDE} pixels + colour histogram as features ({design})",
                   command, options, refs, caption)


def report(r: Dict[str, Any]) -> None:
    extra = ""
    if "steps" in r:
        b = r["best_val"]
        extra = (f"; {r['steps']:,} steps in {r['train_time']:.0f}s, {r['tokens_per_s']:,.0f} tokens/s, "
                 f"best val {b.get('loss', float('nan')):.4f} nats/char")
    print(f"[{r['method']}] BLEU {r['bleu']:.1f}, chrF {r['chrf']:.1f}, exact {r['exact']:.1f}%, "
          f"skin tone {r['tone']:.1f}% ({r['tone_hits']}/{r['tone_n']}), {r['distinct_captions']} distinct "
          f"captions{extra}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--time", default="10m", help="training budget per captioner, e.g. 90s, 10m (default: 10m)")
    ap.add_argument("--designs", nargs="*", default=list(DESIGNS), choices=list(DESIGNS),
                    help="every-step and/or initial (default: both); none = baselines only")
    ap.add_argument("--baselines-only", action="store_true", help="only the two baselines, no training")
    ap.add_argument("--features-baseline", action="store_true",
                    help="also train on 16x16x3 pixels and a colour histogram as features (condition_vectors) "
                         "instead of the CNN")
    ap.add_argument("--preset", default="", help="a genrnn preset name or JSON file (its time is overridden)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a genrnn training option, e.g. hidden_size=512 (repeatable; JSON values)")
    ap.add_argument("--examples", type=int, default=20, help="example captions kept in --json (default: 20)")
    ap.add_argument("--work", type=Path, help="where the CSVs and run folders go (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    root = shared_data() / "emoji-captions"
    if not (root / "captions.csv").is_file() or not (root / "images").is_dir():
        print(f"the emoji captions are not found: need {root / 'captions.csv'} and {root / 'images'}/ "
              "(set GENRNN_SHARED_DATA to the folder holding emoji-captions/)", file=sys.stderr)
        return 2
    from genrnn.config import parse_duration

    args.seconds = parse_duration(args.time)
    options = checked_options(args.option, args.preset, ("condition_every_step", "time", "sample_every"))
    if options is None:
        return 2
    if args.baselines_only:
        args.designs, args.features_baseline = [], False

    splits = read_splits(root)
    train, test = splits["train"], splits["test"]
    refs = [r["caption"] for r in test]
    test_paths = [r["image"] for r in test]
    print(f"emoji captions: {len(train):,} train, {len(splits['valid']):,} valid, {len(test):,} test images; "
          f"{sum(bool(tones(r)) for r in refs)} test references name a skin tone", flush=True)

    tmp = None
    if args.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="genrnn-captioning-")
        work = Path(tmp.name)
    else:
        work = args.work
        work.mkdir(parents=True, exist_ok=True)
    results: List[Dict[str, Any]] = []
    try:
        for split in ("train", "valid", "test"):
            write_csv(work / f"{split}.csv", splits[split])

        t0 = time.perf_counter()
        train_px, test_px = pixels([r["image"] for r in train]), pixels(test_paths)
        hyps = pixel_retrieval(train_px, test_px, [r["caption"] for r in train])
        results.append(dict(method="pixel retrieval", seconds=time.perf_counter() - t0, hyps=hyps,
                            **metrics(hyps, refs)))
        report(results[-1])
        top, count = Counter(r["caption"] for r in train).most_common(1)[0]
        hyps = [top] * len(test)
        results.append(dict(method="most frequent caption", caption=top, count=count, hyps=hyps,
                            **metrics(hyps, refs)))
        report(results[-1])
        print(f"  (the most frequent training caption: {top!r}, {count} times)")
        for r in results:
            issue = ISSUE[r["method"]]
            same = all(abs(r[k] - v) < 0.05 + 1e-9 for k, v in issue.items())
            print(f"  {r['method']}: issue " + ", ".join(f"{k} {v:g}" for k, v in issue.items())
                  + "; here " + ", ".join(f"{k} {r[k]:.1f}" if k != "tone_n" else f"{k} {r[k]}" for k in issue)
                  + ("  (same)" if same else "  (DIFFERENT)"))

        for design in args.designs:
            results += run_captioner(design, args, work, test_paths, refs, options)
        if args.features_baseline:
            results += run_features(args, work, train_px, test_px, refs, options)
    finally:
        if tmp is not None:
            tmp.cleanup()

    print("\n| method | BLEU | chrF | exact % | skin-tone % (n) | train time | steps | tokens/s | val loss (nats/token) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        cells = ["", "", "", ""]
        if "steps" in r:
            vloss = r["best_val"].get("loss")
            cells = [f"{r['train_time']:.0f} s", f"{r['steps']:,}", f"{r['tokens_per_s']:,.0f}",
                     "" if vloss is None else f"{vloss:.4f}"]
        print(f"| {r['method']} | {r['bleu']:.1f} | {r['chrf']:.1f} | {r['exact']:.1f} | {r['tone']:.1f} "
              f"({r['tone_n']}) | " + " | ".join(cells) + " |")
    if args.features_baseline:
        print("(the features row trains on 90% of train and reports its val loss on the other 10%: a vector run "
              "takes no --val)")
    for r in results:
        if "command" in r:
            print(f"reproduce: {r['command']}")
    if tmp is not None and any("command" in r for r in results):
        print("(the CSVs, features and runs are kept with --work DIR)")
    if args.json:
        for r in results:
            r["examples"] = [{"image": p, "reference": ref, "caption": h}
                             for p, ref, h in list(zip(test_paths, refs, r["hyps"]))[: args.examples]]
        args.json.write_text(json.dumps({"data": {"train": len(train), "valid": len(splits["valid"]),
                                                  "test": len(test)}, "issue_baselines": ISSUE,
                                         "results": results}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    from genrnn.errors import GenrnnError

    try:
        raise SystemExit(main())
    except GenrnnError as e:  # genrnn's own one-line errors (a bad option value, a bad preset...)
        print(f"genrnn: error: {e}", file=sys.stderr)
        raise SystemExit(2)

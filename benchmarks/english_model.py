"""The built-in ``english`` model: how it is trained and packaged.

    python benchmarks/english_model.py train --out bench-runs/english/run      # ~25 minutes on 2 cores
    python benchmarks/english_model.py package bench-runs/english/run           # into src/genrnn/pretrained/english

A 2x256 character LSTM (embedding 64, dropout 0.1), the shape the defaults
pick for a small text, so that ``--init-from english`` on one changes
nothing but the start. Trained for 20,000 steps of 32 windows of 64
characters (bf16 autocast where the CPU has native bf16), seed 1, on the
public-domain books in ../shared/data: War and Peace, Alice in Wonderland
and tiny Shakespeare, in that order. Nietzsche is left out: the fine-tuning
benchmark (benchmarks/finetune.py) starts from this model on it. The run
holds out the last 10% of the text, which is the end of tiny Shakespeare.

``package`` copies config.json and model.safetensors (weights checked on
load by their sha256) and replaces the machine's absolute corpus paths by
the files' names under ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "src" / "genrnn" / "pretrained" / "english"
BOOKS = ("gutenberg/warandpeace.txt", "alice/alice.txt", "tinyshakespeare/input.txt")
OPTIONS = ["--model", "rnn", "--cell", "lstm", "--layers", "2", "--hidden-size", "256", "--embedding-size", "64",
           "--dropout", "0.1", "--seq-len", "64", "--batch-size", "32", "--precision", "bf16", "--max-steps", "20000",
           "--eval-every", "2000", "--seed", "1"]


def shared() -> Path:
    return Path(os.environ.get("GENRNN_SHARED_DATA", ROOT.parent / "shared" / "data"))


def train(out: Path) -> int:
    cmd = [sys.executable, "-m", "genrnn", "train", *[str(shared() / b) for b in BOOKS], "--out", str(out), *OPTIONS,
           "--no-progress"]
    print(" ".join(cmd), flush=True)
    return subprocess.call(cmd)


def package(run: Path) -> int:
    TARGET.mkdir(parents=True, exist_ok=True)
    doc = json.loads((run / "config.json").read_text(encoding="utf-8"))
    doc["corpus"]["sources"] = [f"../shared/data/{b}" for b in BOOKS]
    (TARGET / "config.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    shutil.copyfile(run / "model.safetensors", TARGET / "model.safetensors")
    best = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"best": true' in x]
    if best:
        b = best[-1]
        print(f"packaged {run} into {TARGET}: best validation {b['val_loss']:.4f} nats/char "
              f"({b['val_bpc']:.3f} bits/char) at step {b['step']}, {b['time']:.0f} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["train", "package"])
    p.add_argument("run", nargs="?", default="bench-runs/english/run")
    p.add_argument("--out", default="bench-runs/english/run")
    args = p.parse_args(argv)
    return train(Path(args.out)) if args.what == "train" else package(Path(args.run))


if __name__ == "__main__":
    sys.exit(main())

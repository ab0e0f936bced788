"""Characters, words and BPE subwords: the same network and budget on two corpora.

    python benchmarks/token_kinds.py --budget 3m
    python benchmarks/token_kinds.py --table bench-runs/token_kinds.jsonl

Tiny Shakespeare (its last 10% held out) and WikiText-2 (its own valid
split), each trained for the same time with the same 2x256 LSTM (embedding
128), batches of 32 windows of about 128 characters: 128 characters, 32
words or 48 BPE tokens. The word run also runs with ``--adaptive-softmax``
where its vocabulary is large enough for one. Figures: bits per character
(the validation nats over the validation text's characters, so the kinds
compare; a word vocabulary's ``<unk>`` makes its figure look better than it
is: the text behind it is not paid for), tokens and characters per second,
and a sample at T = 0.8 from each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List

import genrnn

KINDS: Dict[str, Dict[str, Any]] = {
    "char": {"tokenizer": "char", "seq_len": 128},
    "word": {"tokenizer": "word", "seq_len": 32},
    "word, adaptive softmax": {"tokenizer": "word", "seq_len": 32, "adaptive_softmax": "auto"},
    "bpe 2048": {"tokenizer": "bpe", "vocab_size": 2048, "seq_len": 48},
}
NETWORK = dict(type="rnn", cell="lstm", num_layers=2, hidden_size=256, embedding_size=128, batch_size=32,
               dropout=0.1, baseline=0)


def shared() -> Path:
    return Path(os.environ.get("GENRNN_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def corpora() -> Dict[str, Dict[str, Any]]:
    d = shared()
    return {"tinyshakespeare": {"corpus": d / "tinyshakespeare" / "input.txt", "val": None},
            "wikitext-2": {"corpus": d / "wikitext-2" / "train.txt", "val": d / "wikitext-2" / "valid.txt"}}


def run_one(corpus: str, kind: str, budget: float, out: Path, seed: int) -> Dict[str, Any]:
    spec = corpora()[corpus]
    options = dict(NETWORK, **KINDS[kind])
    run_dir = out / f"{corpus}-{kind.replace(' ', '').replace(',', '-')}"
    try:
        run = genrnn.train(spec["corpus"], val=spec["val"], out=run_dir, time=budget, eval_every=10**9,
                           sample_every=0, seed=seed, **options)
    except genrnn.GenrnnError as e:  # e.g. a vocabulary too small for an adaptive softmax
        return {"corpus": corpus, "kind": kind, "skipped": str(e)}
    val = run.result.best_val
    chars = val["chars"] / max(1, val["tokens"])
    sample = run.complete([""], length=60 if kind.startswith("word") else 200, temperature=0.8, seed=seed)[0].text
    return {"corpus": corpus, "kind": kind, "budget_s": budget, "steps": run.result.step, "vocab": run.tokenizer.vocab_size,
            "tokens_per_s": round(run.result.tokens_per_s), "chars_per_s": round(run.result.tokens_per_s * chars),
            "val_loss": val["loss"], "val_bpc": val["bits_per_char"], "chars_per_token": chars,
            "sample": sample[:300]}


def table(path: Path) -> str:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    out = ["| corpus | tokens | vocabulary | steps @ tokens/s (chars/s) | chars/token | validation nats/token | "
           "**bits/char** |", "|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            out.append(f"| {r['corpus']} | {r['kind']} | - | skipped: {r['skipped']} | | | |")
            continue
        out.append(f"| {r['corpus']} | {r['kind']} | {r['vocab']:,} | {r['steps']:,} @ {r['tokens_per_s']:,} "
                   f"({r['chars_per_s']:,}) | {r['chars_per_token']:.2f} | {r['val_loss']:.3f} | "
                   f"**{r['val_bpc']:.3f}** |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="3m")
    p.add_argument("--corpus", action="append", choices=list(corpora()))
    p.add_argument("--kind", action="append", choices=list(KINDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-runs/token_kinds")
    p.add_argument("--results", default="bench-runs/token_kinds.jsonl")
    p.add_argument("--table", metavar="JSONL")
    args = p.parse_args(argv)
    if args.table:
        print(table(Path(args.table)))
        return 0
    from genrnn.config import parse_duration

    budget = parse_duration(args.budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    for corpus in args.corpus or list(corpora()):
        for kind in args.kind or list(KINDS):
            row = run_one(corpus, kind, budget, out, args.seed)
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
            with open(args.results, "a", encoding="utf-8") as f:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(table(Path(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

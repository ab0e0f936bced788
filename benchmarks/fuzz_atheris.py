"""Coverage-guided fuzzing (atheris, libFuzzer) of the readers of user files.

    pip install atheris                                   # a wheel exists for CPython 3.8-3.11 on Linux x86-64
    python benchmarks/fuzz_atheris.py all --seconds 60    # each target 60 s in its own process, then a table
    python benchmarks/fuzz_atheris.py all --seconds 60 --only config,weights
    python benchmarks/fuzz_atheris.py corpus -max_total_time=300 -rss_limit_mb=2048   # one target, libFuzzer flags

Targets: ``corpus`` (bytes as a .txt/.csv/.tsv/.jsonl/.md file, with random
fields, decoding-error handler, quoting and format, through ``load_corpus``),
``config`` (bytes as a run's config.json), ``weights`` (bytes as its
model.safetensors, loaded as a run), ``resume`` (bytes as resume.pt),
``tokenizer`` (bytes as a tokenizer dict in JSON) and ``image`` (bytes as an
image file, decoded at 32x32). The only outcome allowed besides success is
genrnn's own ``GenrnnError`` with a message; any other exception is a crash,
and so are a hang over 10 s (``-timeout``) and memory over 2 GB
(``-rss_limit_mb``): libFuzzer then writes the input as ``crash-*`` /
``timeout-*`` / ``oom-*`` in the current folder. The run folder the targets
damage is a tiny model this script trains first. Tests of the same readers
with Hypothesis run in the suite (tests/test_fuzz.py); this is the longer,
coverage-guided search.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ("corpus", "config", "weights", "resume", "tokenizer", "image")
EXTS = [".txt", ".csv", ".tsv", ".jsonl", ".md"]
FIELDS = [(), ("0",), ("1",), ("0", "1"), ("title",), ("text",)]


def make_run(root: Path) -> Path:
    import genrnn

    root.mkdir(parents=True, exist_ok=True)
    text = root / "text.txt"
    text.write_text("\n".join(f"the cat {i} sat on the mat." for i in range(200)) + "\n", encoding="utf-8")
    genrnn.train(str(text), out=root / "run", max_steps=2, hidden_size=16, num_layers=1, embedding_size=8,
                 seq_len=16, batch_size=4, sample_every=0, device="cpu")
    return root / "run"


def fuzz(target: str, argv) -> None:
    import atheris

    # the libraries first, outside the instrumentation (instrumenting torch or Pillow takes minutes):
    # coverage is measured in genrnn's own code; the seeds (valid files) start the search inside the formats
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import safetensors.torch  # noqa: F401
    import tokenizers  # noqa: F401
    import torch  # noqa: F401

    with atheris.instrument_imports(include=["genrnn"]):
        from genrnn import checkpoint as ckpt
        from genrnn.corpora import ERROR_HANDLERS, load_corpus
        from genrnn.errors import GenrnnError
        from genrnn.images import decode_image
        from genrnn.tokenizers import tokenizer_from_dict

    work = Path(tempfile.mkdtemp(prefix="genrnn-fuzz-"))
    good = make_run(work / "good") if target in ("config", "weights", "resume") else None
    scratch = work / "scratch"

    def fresh_run() -> Path:
        if scratch.exists():
            shutil.rmtree(scratch)
        shutil.copytree(good, scratch)
        return scratch

    def one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        try:
            if target == "corpus":
                ext, fields = fdp.PickValueInList(EXTS), fdp.PickValueInList(FIELDS)
                errors, quotes = fdp.PickValueInList(list(ERROR_HANDLERS)), fdp.ConsumeBool()
                fmt = fdp.PickValueInList(["auto", "text", "csv"])
                path = work / f"corpus{ext}"
                path.write_bytes(fdp.ConsumeBytes(fdp.remaining_bytes()))
                load_corpus([path], fields=fields, errors=errors, quotes=quotes, fmt=fmt)
            elif target == "config":
                run = fresh_run()
                (run / ckpt.CONFIG).write_bytes(data)
                ckpt.read_config(run)
            elif target == "weights":
                run = fresh_run()
                (run / ckpt.WEIGHTS).write_bytes(data)
                ckpt.load_run(run)
            elif target == "resume":
                path = work / "resume.pt"
                path.write_bytes(data)
                ckpt.load_resume(path)
            elif target == "tokenizer":
                try:
                    doc = json.loads(data.decode("utf-8", "replace"))
                except (ValueError, RecursionError):
                    return
                tokenizer_from_dict(doc)
            elif target == "image":
                decode_image(data, 32, name="fuzz.img")
        except GenrnnError as e:
            if not str(e).strip():
                raise AssertionError("a GenrnnError without a message") from None

    seeds = work / "seeds"
    write_seeds(target, seeds, good)
    atheris.Setup([sys.argv[0], *argv, str(seeds)], one)
    atheris.Fuzz()


def write_seeds(target: str, folder: Path, good) -> None:
    """A starting corpus of valid inputs for libFuzzer to mutate (new finds are added to it)."""
    import io

    folder.mkdir(parents=True, exist_ok=True)
    seeds = []
    if target == "image":
        from PIL import Image

        img = Image.new("RGB", (8, 8), (200, 30, 90))
        for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"):
            buf = io.BytesIO()
            img.save(buf, fmt)
            seeds.append(buf.getvalue())
    elif target in ("config", "weights", "resume"):
        name = {"config": "config.json", "weights": "model.safetensors", "resume": "resume.pt"}[target]
        seeds.append((good / name).read_bytes())
    elif target == "tokenizer":
        from genrnn.tokenizers import build_tokenizer

        for kind in ("char", "word", "whitespace"):
            seeds.append(json.dumps(build_tokenizer(kind, ["the cat sat on the mat."]).to_dict()).encode())
    elif target == "corpus":
        seeds += [b"\0\0\0\0\0the cat\nsat\n", b"\1\1\0\0\0title,body\n\"a, b\",c\n",
                  b"\3\5\0\1\0{\"text\": \"a\"}\n{\"text\": \"b\"}\n"]
    for i, blob in enumerate(seeds):
        (folder / f"seed{i}").write_bytes(blob)


def run_all(seconds: float, targets=TARGETS) -> int:
    """Each target in its own process for ``seconds``; a markdown table of runs and crashes."""
    rows, failed = [], 0
    for target in targets:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, target, f"-max_total_time={int(seconds)}",
                              "-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"],
                             capture_output=True, text=True, timeout=seconds + 600)
        log = out.stdout + out.stderr
        runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
        cov = re.findall(r"\bcov: (\d+)", log)
        crash = re.findall(r"(?:Test unit written to|artifact_prefix.*?)\s*(\S+)", log)
        ok = out.returncode == 0
        failed += not ok
        rows.append(f"| {target} | {int(runs[-1]) if runs else 0:,} | {cov[-1] if cov else '-'} | "
                    f"{time.perf_counter() - t0:.0f} s | {'none' if ok else 'rc %d %s' % (out.returncode, crash)} |")
        if not ok:
            print(log[-3000:], file=sys.stderr)
    print("| target | inputs | coverage (edges) | time | crashes, hangs, OOM |\n|---|---:|---:|---:|---|")
    print("\n".join(rows))
    return 1 if failed else 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS + ("all",):
        print(__doc__)
        return 2
    if sys.argv[1] == "all":
        seconds = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 60.0
        only = sys.argv[sys.argv.index("--only") + 1].split(",") if "--only" in sys.argv else TARGETS
        return run_all(seconds, only)
    fuzz(sys.argv[1], sys.argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main())

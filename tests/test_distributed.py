"""Data-parallel training under torchrun: 2 gloo processes on the CPU.

A DDP run with a global batch of B rows must train like one process on the
same B rows (DDP averages the shards' gradients), only rank 0 writes, and
every rank ends with the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torch.distributed as tdist

pytestmark = pytest.mark.skipif(not tdist.is_available() or not tdist.is_gloo_available(),
                                reason="this PyTorch build has no gloo backend")

ARGS = ["--max-steps", "24", "--batch-size", "8", "--seq-len", "32", "--hidden-size", "32", "--layers", "2",
        "--embedding-size", "16", "--state-span", "3", "--eval-every", "8",
        "--sample-every", "0", "--threads", "1", "--no-progress", "--seed", "7"]


def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "text.txt"
    words = "the cat sat on a mat while the dog ran after a red ball in the long grass".split()
    gen = torch.Generator().manual_seed(0)
    path.write_text(" ".join(words[i] for i in torch.randint(len(words), (6000,), generator=gen).tolist()))
    return path


def train(argv, env_extra=None, timeout=240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(env_extra or {})
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


def metrics(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    text = corpus(tmp_path)
    single = train([sys.executable, "-m", "genrnn", "train", str(text), "--out", str(tmp_path / "one"), *ARGS])
    assert single.returncode == 0, single.stderr
    ddp = train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "-m", "genrnn", "train", str(text), "--out", str(tmp_path / "two"), *ARGS])
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    losses = lambda ms, key: [(m["step"], m[key]) for m in ms if key in m]  # noqa: E731
    assert [s for s, _ in losses(one, "loss")] == [s for s, _ in losses(two, "loss")]
    for (_, a), (_, b) in zip(losses(one, "loss") + losses(one, "val_loss"), losses(two, "loss") + losses(two, "val_loss")):
        assert a == pytest.approx(b, rel=1e-4)
    # rank 0 alone wrote the log: each record once
    assert len([m for m in two if "val_loss" in m]) == len([m for m in one if "val_loss" in m])
    record = next(m["ddp"] for m in two if "ddp" in m)
    assert record["world_size"] == 2 and len(set(record["weights_sha256"])) == 1
    wa = load_file(str(tmp_path / "one" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    # the DDP run can be continued by a single process: the saved state is the whole batch's
    cont = train([sys.executable, "-m", "genrnn", "train", "--resume", str(tmp_path / "two"), "--max-steps", "28",
                  "--no-progress"])
    assert cont.returncode == 0, cont.stderr


def test_batch_must_divide_among_processes(tmp_path):
    text = corpus(tmp_path)
    args = [a if a != "8" else "7" for a in ARGS]  # --batch-size 7
    ddp = train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "-m", "genrnn", "train", str(text), "--out", str(tmp_path / "odd"), *args])
    assert ddp.returncode != 0
    assert "must be a multiple of the 2 processes" in ddp.stderr
    assert "Traceback" not in "\n".join(l for l in ddp.stderr.splitlines() if "genrnn: error" in l)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["label", "seq2seq"])
def test_a_conditioned_model_trains_like_one(tmp_path, kind):
    """The condition is sharded with its rows (and its embedding, or a source's
    memory and mask, ride in the state), so two processes still train like one."""
    import csv

    gen = torch.Generator().manual_seed(1)
    sentences = {"a": "apples are red", "b": "bananas are yellow", "c": "cherries are dark"}
    with open(tmp_path / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        for i in torch.randint(3, (200,), generator=gen).tolist():
            source = "abc"[i] if kind == "label" else "".join("abcdefgh"[j] for j in
                                                               torch.randint(8, (3 + i * 2,), generator=gen))
            w.writerow([source, sentences["abc"[i]] if kind == "label" else source[::-1]])
    what = (["--field", "text", "--condition-field", "label"] if kind == "label" else
            ["--task", "seq2seq", "--source-field", "label", "--target-field", "text", "--attention",
             "--bidirectional", "--seq-len", "16"])
    args = [*what, "--max-steps", "16", "--batch-size", "8",
            "--hidden-size", "32", "--layers", "2", "--embedding-size", "16", "--condition-dim", "8",
            "--eval-every", "8", "--sample-every", "0", "--threads", "1", "--no-progress", "--seed", "7"]
    single = train([sys.executable, "-m", "genrnn", "train", str(tmp_path / "t.csv"), "--out", str(tmp_path / "one"),
                    *args])
    assert single.returncode == 0, single.stderr
    ddp = train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "-m", "genrnn", "train", str(tmp_path / "t.csv"), "--out", str(tmp_path / "two"), *args])
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    pairs = [(a[k], b[k]) for a, b in zip([m for m in one if "loss" in m or "val_loss" in m],
                                          [m for m in two if "loss" in m or "val_loss" in m])
             for k in ("loss", "val_loss") if k in a]
    assert pairs and all(a == pytest.approx(b, rel=1e-4) for a, b in pairs)
    wa = load_file(str(tmp_path / "one" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert any(k.startswith("encoder.") for k in wa)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4

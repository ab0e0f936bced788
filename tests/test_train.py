"""Training loop: learning, schedule, exact resume after Ctrl-C and kill -9."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import genrnn
from genrnn import checkpoint as ckpt
from genrnn.trainer import Callbacks, lr_at

# state_span > 1 so that resume must also restore the carried recurrent state;
# 2 layers with dropout so that it must restore the inter-layer dropout stream
TINY = dict(hidden_size=24, num_layers=2, embedding_size=8, seq_len=16, batch_size=4, state_span=4,
            eval_every=5, sample_every=0, log_every=1, dropout=0.1, seed=7)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    lines = [f"the {w} sat on the mat number {i}." for i, w in enumerate(["cat", "dog", "owl", "fox"] * 30)]
    path = tmp_path / "text.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def last_weights(run_dir: Path) -> dict:
    return ckpt.load_resume(run_dir / ckpt.RESUME)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_lr_schedule_warms_up_and_anneals():
    assert lr_at(0.0, 1.0, 0.1, 0.1) == pytest.approx(0.01)
    assert lr_at(0.05, 1.0, 0.1, 0.1) == pytest.approx(0.5)
    assert lr_at(0.1, 1.0, 0.1, 0.1) == pytest.approx(1.0)
    assert lr_at(0.55, 1.0, 0.1, 0.1) == pytest.approx(0.55)  # cosine midpoint: 0.1 + 0.9/2
    assert lr_at(1.0, 1.0, 0.1, 0.1) == pytest.approx(0.1)
    assert lr_at(2.0, 1.0, 0.1, 0.1) == pytest.approx(0.1)


def test_training_lowers_validation_loss(corpus, tmp_path):
    run = genrnn.train(corpus, out=tmp_path / "run", max_steps=60, lr=1e-2, **{**TINY, "dropout": 0.0})
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.5
    assert run.result.best_val["loss"] == min(vals)
    # the time-budgeted run's schedule follows the clock and it stops on time
    t0 = time.perf_counter()
    genrnn.train(corpus, out=tmp_path / "timed", time=2.0, **TINY)
    assert time.perf_counter() - t0 < 30


class InterruptAt(Callbacks):
    """Sends the process a SIGINT (Ctrl-C) when a step is logged."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, metrics):
        if metrics["step"] == self.step:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_then_resume_ends_with_identical_weights(corpus, tmp_path):
    full = genrnn.train(corpus, out=tmp_path / "full", max_steps=30, **TINY)
    assert not full.result.interrupted
    part = genrnn.train(corpus, out=tmp_path / "part", max_steps=30, callbacks=InterruptAt(13), **TINY)
    assert part.result.interrupted and part.result.step == 13
    resumed = genrnn.train(resume=tmp_path / "part")
    assert resumed.result.step == 30 and not resumed.result.interrupted
    assert_same_weights(last_weights(tmp_path / "full"), last_weights(tmp_path / "part"))
    # the metrics log has each step once
    steps = [json.loads(l)["step"] for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == list(range(1, 31))


def test_resume_refuses_changes_that_alter_learning(corpus, tmp_path):
    genrnn.train(corpus, out=tmp_path / "r", max_steps=5, **TINY)
    with pytest.raises(genrnn.GenrnnError, match="cannot change hidden_size"):
        genrnn.train(resume=tmp_path / "r", hidden_size=64)
    # stopping rules may change: continue to 10 steps
    assert genrnn.train(resume=tmp_path / "r", max_steps=10).result.step == 10


@pytest.mark.slow
def test_kill_9_then_resume_matches_uninterrupted(corpus, tmp_path):
    args = [sys.executable, "-m", "genrnn", "train", str(corpus), "--max-steps", "60", "--save-every", "3",
            "--hidden-size", "24", "--layers", "2", "--embedding-size", "8", "--seq-len", "16",
            "--batch-size", "4", "--state-span", "4", "--eval-every", "5", "--sample-every", "0", "--dropout", "0.1",
            "--seed", "7", "--no-progress", "-q"]
    env = dict(os.environ, GENRNN_OFFLINE="1")
    subprocess.run(args + ["--out", str(tmp_path / "full")], check=True, env=env, capture_output=True, timeout=300)

    victim = subprocess.Popen(args + ["--out", str(tmp_path / "killed")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume_file = tmp_path / "killed" / ckpt.RESUME
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if resume_file.exists() and ckpt.load_resume(resume_file)["progress"]["step"] >= 9:
            break
        time.sleep(0.01)
    if victim.poll() is not None:
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = ckpt.load_resume(resume_file)["progress"]["step"]
    assert killed_at < 60
    done = subprocess.run([sys.executable, "-m", "genrnn", "train", "--resume", str(tmp_path / "killed"), "-q"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_same_weights(last_weights(tmp_path / "full"), last_weights(tmp_path / "killed"))
    leftovers = [p.name for p in (tmp_path / "killed").iterdir() if p.name.startswith(".")]
    assert leftovers == [] or all(p.endswith(".tmp") for p in leftovers)


def test_same_seed_same_run(corpus, tmp_path):
    a = genrnn.train(corpus, out=tmp_path / "a", max_steps=8, **TINY)
    b = genrnn.train(corpus, out=tmp_path / "b", max_steps=8, **TINY)
    assert_same_weights(last_weights(tmp_path / "a"), last_weights(tmp_path / "b"))
    assert a.generate("the", length=30, seed=3) == b.generate("the", length=30, seed=3)
    genrnn.train(corpus, out=tmp_path / "c", max_steps=8, **{**TINY, "seed": 8})
    assert not torch.equal(last_weights(tmp_path / "a")["head.weight"], last_weights(tmp_path / "c")["head.weight"])


def test_unknown_option_is_an_error(corpus, tmp_path):
    with pytest.raises(genrnn.GenrnnError, match="hidden_size"):
        genrnn.train(corpus, out=tmp_path / "x", hiden_size=10, max_steps=1)


def test_api_generate_and_evaluate(corpus, tmp_path):
    run = genrnn.train(corpus, out=tmp_path / "r", max_steps=10, **TINY)
    text = run.generate("the cat", length=20, temperature=0.5, seed=1)
    assert isinstance(text, str) and text.startswith("the cat")
    texts = run.generate(["a", "b"], num_samples=2, length=5, seed=1)
    assert len(texts) == 4 and texts[0].startswith("a") and texts[2].startswith("b")
    m = run.evaluate()
    assert math.isclose(m["perplexity"], math.exp(m["loss"]), rel_tol=1e-9)
    again = genrnn.load(tmp_path / "r").evaluate()
    assert again == m


def test_deterministic_option_trains_and_is_saved(corpus, tmp_path, monkeypatch):
    """--deterministic turns on deterministic algorithms, cuDNN's deterministic kernels (no
    benchmark) and the cuBLAS workspace setting, for the run; it is saved with the run, and two runs
    with the same seed end with bitwise-equal weights. The process is left as it was found."""
    # set, then delete: monkeypatch then removes at teardown what the run sets (delenv alone would
    # record nothing where the variable is absent)
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              cudnn.deterministic, cudnn.benchmark)
    try:
        torch.use_deterministic_algorithms(False)  # start from the other setting, so the run must change them
        cudnn.deterministic, cudnn.benchmark = False, True
        run = genrnn.train(corpus, out=tmp_path / "d", max_steps=3, deterministic=True, **TINY)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a CPU op without one warns, not fails
        assert cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert run.config.train.deterministic
        saved = json.loads((tmp_path / "d" / ckpt.CONFIG).read_text(encoding="utf-8"))
        assert saved["run"]["train"]["deterministic"] is True
        assert genrnn.load(tmp_path / "d").config.train.deterministic
        again = genrnn.train(corpus, out=tmp_path / "e", max_steps=3, deterministic=True, **TINY)
        assert again.result.step == run.result.step == 3
        assert_same_weights(last_weights(tmp_path / "d"), last_weights(tmp_path / "e"))
        assert_same_weights(run.model.state_dict(), again.model.state_dict())  # the saved best weights too
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        cudnn.deterministic, cudnn.benchmark = before[2], before[3]


def test_a_run_killed_before_its_first_checkpoint_can_start_again(corpus, tmp_path):
    genrnn.train(corpus, out=tmp_path / "r", max_steps=2, **TINY)
    (tmp_path / "r" / "resume.pt").unlink()  # as if killed before the first save
    (tmp_path / "r" / "model.safetensors").unlink()
    with pytest.raises(genrnn.GenrnnError, match="start it again with the same --out"):
        genrnn.train(resume=tmp_path / "r")
    assert genrnn.train(corpus, out=tmp_path / "r", max_steps=2, **TINY).result.step == 2

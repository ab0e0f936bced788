"""Faults: kill -9 at chosen moments, again and again, and a full disk.

The kill soak itself is ``benchmarks/kill_soak.py`` (20 kills); here it runs
with one kill of each kind. The full disk is a real one where the tests may
mount a small tmpfs (root), and a file-size limit (RLIMIT_FSIZE) everywhere.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from genrnn import checkpoint as ckpt
from genrnn import faults
from genrnn._io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import kill_soak  # noqa: E402

TRAIN = ["--max-steps", "12", "--save-every", "3", "--eval-every", "3", "--hidden-size", "24", "--layers", "2",
         "--embedding-size", "8", "--seq-len", "16", "--batch-size", "4", "--state-span", "4", "--dropout", "0.1",
         "--sample-every", "0", "--seed", "7", "--no-progress", "-q"]


def genrnn_cmd(*args) -> list:
    return [sys.executable, "-m", "genrnn", *map(str, args)]


def env(fault=None) -> dict:
    e = dict(os.environ, GENRNN_OFFLINE="1", OMP_NUM_THREADS="1")
    e.pop("GENRNN_FAULT", None)
    if fault:
        e["GENRNN_FAULT"] = fault
    return e


def test_fault_spec_is_checked():
    assert faults._parse(None) is None and faults._parse("") is None
    assert faults._parse("write:3") == ("write", 3)
    for bad in ("write", "write:0", "nap:2", "step:x"):
        with pytest.raises(ValueError, match="GENRNN_FAULT"):
            faults._parse(bad)


def test_a_fault_point_kills_the_process_at_its_nth_pass(tmp_path):
    code = "from genrnn import faults\nfor i in range(5):\n    print(i, flush=True)\n    faults.point('eval')\n"
    out = subprocess.run([sys.executable, "-c", code], env=env("eval:3"), capture_output=True, text=True)
    assert out.returncode == -9 and out.stdout.split() == ["0", "1", "2"]
    out = subprocess.run([sys.executable, "-c", code], env=env("step:3"), capture_output=True, text=True)
    assert out.returncode == 0 and len(out.stdout.split()) == 5  # another point: never fires


def test_kill_mid_write_keeps_the_old_file_and_resume_clears_the_leftover(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    code = f"from genrnn._io import atomic_write_bytes\natomic_write_bytes({str(target)!r}, b'new' * 1000)\n"
    assert subprocess.run([sys.executable, "-c", code], env=env("write:1")).returncode == -9
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.glob(".f.bin.*.tmp")]  # the leftover a kill -9 cannot clean
    from genrnn._io import remove_stale_temporaries

    assert remove_stale_temporaries(tmp_path) and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_kill_soak_one_of_each_kind(tmp_path):
    """A step, a validation, a checkpoint write and a random moment: each kill
    lands, the folder reads back after each, and the final weights are the
    uninterrupted run's, bitwise."""
    report = kill_soak.soak(tmp_path, kills=4, seed=3, steps=300)
    assert report["ok"], kill_soak.summary(report) + "\n" + repr(report)
    landed = {r["fault"].split(":")[0] for r in report["runs"] if r["killed"]}
    assert {"step", "eval", "write"} <= landed, report["runs"]
    assert any(r["temporaries"] for r in report["runs"] if r["fault"].startswith("write")), report["runs"]


# -- a full disk ----------------------------------------------------------------------


class FileSizeLimit:
    """Writes beyond ``limit`` bytes per file fail with EFBIG (RLIMIT_FSIZE; Python ignores SIGXFSZ)."""

    message = "File too large"

    def __init__(self, root: Path):
        self.dir = root / "disk"
        self.dir.mkdir()
        self.limit = None

    def fill(self, limit: int) -> None:
        self.limit = limit

    def free(self) -> None:
        self.limit = None

    def run(self, cmd, **kw):
        limit = self.limit

        def cap():
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        return subprocess.run(cmd, preexec_fn=cap, capture_output=True, text=True, env=env(), timeout=300, **kw)


class FullTmpfs:
    """A small tmpfs filled to the last byte by a filler file (needs root and mount)."""

    message = "No space left on device"

    def __init__(self, root: Path):
        self.dir = root / "tmpfs"
        self.dir.mkdir()
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(self.dir)], check=True,
                           capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            pytest.skip(f"cannot mount a tmpfs here ({e}); the file-size limit variant covers a full disk")
        self.filler = self.dir / "filler"

    def fill(self, limit: int = 0) -> None:
        with open(self.filler, "ab", buffering=0) as f, contextlib.suppress(OSError):  # unbuffered: no flush
            while f.write(b"\0" * 4096):
                pass

    def free(self) -> None:
        self.filler.unlink()

    def run(self, cmd, **kw):
        return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300, **kw)

    def close(self) -> None:
        subprocess.run(["umount", str(self.dir)], capture_output=True, timeout=30)


@pytest.fixture(params=["file-size-limit", "tmpfs"])
def disk(request, tmp_path):
    d = (FileSizeLimit if request.param == "file-size-limit" else FullTmpfs)(tmp_path)
    yield d
    getattr(d, "close", lambda: None)()


@pytest.fixture()
def text(tmp_path) -> Path:
    return kill_soak.corpus(tmp_path / "text.txt")


@pytest.mark.slow
def test_full_disk_mid_run_is_one_clear_error_and_the_run_resumes(disk, text, tmp_path):
    ok = dict(capture_output=True, text=True, env=env(), timeout=300)
    assert subprocess.run(genrnn_cmd("train", text, "--out", tmp_path / "full", *TRAIN), **ok).returncode == 0
    # a run with a checkpoint at step 6, killed in step 8, moved to the small disk
    part = tmp_path / "part"
    killed = subprocess.run(genrnn_cmd("train", text, "--out", part, *TRAIN), **dict(ok, env=env("step:8")))
    assert killed.returncode == -9
    run = disk.dir / "run"
    shutil.copytree(part, run)
    resume_before = (run / ckpt.RESUME).read_bytes()
    disk.fill((run / ckpt.RESUME).stat().st_size - 1)

    out = disk.run(genrnn_cmd("train", "--resume", run, "-q"))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("genrnn: error: cannot write ") and disk.message in out.stderr, out.stderr
    # a checkpoint write says the old file is kept; any write failing says how to go on
    assert "unchanged" in out.stderr or "metrics.jsonl" in out.stderr, out.stderr
    assert f"continue it with: genrnn train --resume {run}" in out.stderr, out.stderr
    assert (run / ckpt.RESUME).read_bytes() == resume_before
    assert not list(run.glob(".*.tmp"))
    ckpt.load_resume(run / ckpt.RESUME)  # readable
    ckpt.read_config(run)

    # outputs of plot and inspect on the full disk: the same kind of message, nothing left behind
    disk.fill(64)
    outputs = (("plot", run, "--out", disk.dir / "curves.png"),
               ("inspect", run, "--prompt", "the cat", "--length", "20", "--out", disk.dir / "i.html"))
    for args in outputs:
        out = disk.run(genrnn_cmd(*args))
        assert out.returncode == 2 and "Traceback" not in out.stderr, (args, out.stderr)
        assert "cannot write" in out.stderr and disk.message in out.stderr, (args, out.stderr)
        assert not list(disk.dir.glob(".*.tmp")) and not (disk.dir / args[-1].name).exists()

    disk.free()
    done = disk.run(genrnn_cmd("train", "--resume", run, "-q"))
    assert done.returncode == 0, done.stderr
    a, b = ckpt.load_resume(tmp_path / "full" / ckpt.RESUME)["model"], ckpt.load_resume(run / ckpt.RESUME)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run.glob(".*.tmp"))

"""Training killed again and again: kill -9 at random moments, resume each time.

    python benchmarks/kill_soak.py                        # 20 kills of a small char model (a few CPU minutes)
    python benchmarks/kill_soak.py --kills 40 --seed 2 --json soak.json

A small LSTM (2x48, dropout 0.1, state carried across windows) trains for a
fixed number of steps with a fixed seed, once without interruption and once
killed ``--kills`` times with SIGKILL and resumed after each kill with
``genrnn train --resume``. The kills land in four kinds of moment, in turn:

* ``step``: inside a training step, after the backward pass and before the
  optimizer's update;
* ``eval``: inside validation, after one of its batches;
* ``write``: inside a checkpoint write (``resume.pt``, ``model.safetensors``
  or ``config.json``), after the bytes are written and before the rename;
* ``time``: at a random time after the process starts (it may be importing,
  loading, training or writing).

The first three use genrnn's crash points (``GENRNN_FAULT=NAME:N``, see
``genrnn/faults.py``) with a random N, so they land where they are meant to;
a process that ends before its N-th point is counted as a kill that missed.
After every kill the run folder is read back (``config.json``, ``resume.pt``,
``model.safetensors``) and must be readable; after the last resume, the final
weights (``resume.pt``'s model and ``model.safetensors``) must equal the
uninterrupted run's bitwise, ``metrics.jsonl`` must log the same steps, each once, and
no temporary file may be left. The exit status is 0 only if all of this holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

KINDS = ("step", "eval", "write", "time")
STEPS = 2000
TRAIN = ["--save-every", "4", "--eval-every", "10", "--hidden-size", "48", "--layers", "2",
         "--embedding-size", "16", "--seq-len", "32", "--batch-size", "8", "--state-span", "4", "--dropout", "0.1",
         "--sample-every", "0", "--seed", "7", "--no-progress", "-q"]


def corpus(path: Path) -> Path:
    """A text the soak writes itself: 40 KB of numbered sentences."""
    words = ["cat", "dog", "owl", "fox", "hen", "elk"]
    lines = [f"the {words[i % 6]} and the {words[(i * 7) % 6]} met at gate {i % 97}." for i in range(900)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _env(fault: Optional[str] = None) -> Dict[str, str]:
    env = dict(os.environ, GENRNN_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("GENRNN_FAULT", None)
    if fault:
        env["GENRNN_FAULT"] = fault
    return env


def _train_cmd(text: Path, run: Path, steps: int) -> List[str]:
    """A fresh start, or a resume once the run has a checkpoint (a run killed
    before its first one holds nothing, and is started again in place)."""
    if (run / "resume.pt").exists():
        return [sys.executable, "-m", "genrnn", "train", "--resume", str(run), "-q"]
    return [sys.executable, "-m", "genrnn", "train", str(text), "--out", str(run), "--max-steps", str(steps)] + TRAIN


def _step(run: Path) -> Optional[int]:
    from genrnn import checkpoint as ckpt

    path = run / ckpt.RESUME
    return ckpt.load_resume(path)["progress"]["step"] if path.exists() else None


def readable(run: Path) -> Optional[str]:
    """None if everything the run folder holds reads back, else what failed."""
    from genrnn import checkpoint as ckpt

    try:
        if (run / ckpt.CONFIG).exists():
            ckpt.read_config(run)
        if (run / ckpt.RESUME).exists():
            ckpt.load_resume(run / ckpt.RESUME)
        if (run / ckpt.WEIGHTS).exists():
            ckpt.load_run(run)
    except Exception as e:  # noqa: BLE001 - the soak reports any failure to read
        return f"{type(e).__name__}: {e}"
    return None


def temporaries(run: Path) -> List[str]:
    return sorted(p.name for p in run.glob(".*.tmp")) if run.exists() else []


# the moment of each kind of kill: the N-th pass of a crash point, or seconds after the start
MOMENTS = {"step": lambda rng: rng.randint(1, 14), "eval": lambda rng: rng.randint(1, 6),
           "write": lambda rng: rng.randint(1, 6), "time": lambda rng: f"{rng.uniform(1.0, 4.0):.2f}"}


def plan(kills: int, rng: random.Random) -> List[str]:
    """The kills, in turn over the four kinds, each with its random moment."""
    return [f"{kind}:{MOMENTS[kind](rng)}" for kind in (KINDS[i % len(KINDS)] for i in range(kills))]


def kill_once(text: Path, run: Path, fault: str, steps: int, timeout: float = 300) -> Dict[str, Any]:
    before = _step(run)
    kind, _, arg = fault.partition(":")
    t0 = time.perf_counter()
    proc = subprocess.Popen(_train_cmd(text, run, steps), env=_env(None if kind == "time" else fault),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kind == "time":
        try:
            proc.wait(timeout=float(arg))
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    rc = proc.returncode
    row = {"fault": fault, "rc": rc, "killed": rc == -9, "seconds": round(time.perf_counter() - t0, 2),
           "step_before": before, "step_after": _step(run), "temporaries": temporaries(run),
           "unreadable": readable(run)}
    if rc not in (0, -9):
        row["stderr"] = (err or "")[-2000:]
    return row


def soak(work: Path, kills: int = 20, seed: int = 0, steps: int = STEPS, text: Optional[Path] = None) -> Dict[str, Any]:
    """Run the soak in ``work``; the report (``ok``: every check held)."""
    import torch

    from genrnn import checkpoint as ckpt
    from safetensors.torch import load_file as load_tensors

    work.mkdir(parents=True, exist_ok=True)
    text = text or corpus(work / "text.txt")
    full, killed = work / "full", work / "killed"
    t0 = time.perf_counter()
    subprocess.run(_train_cmd(text, full, steps), env=_env(), check=True, capture_output=True, timeout=600)
    full_s = time.perf_counter() - t0
    rows = []
    for fault in plan(kills, random.Random(seed)):
        rows.append(kill_once(text, killed, fault, steps))
        if rows[-1]["rc"] == 0:  # the run finished before this kill could land
            break
    if rows and rows[-1]["rc"] == 0:
        final = subprocess.CompletedProcess([], 0, "", "")
    else:
        final = subprocess.run(_train_cmd(text, killed, steps), env=_env(), capture_output=True, text=True,
                               timeout=600)
    report: Dict[str, Any] = {"kills_planned": kills, "kills": sum(r["killed"] for r in rows), "runs": rows,
                              "resumes": sum(1 for r in rows if r["step_before"] is not None) + 1,
                              "uninterrupted_s": round(full_s, 1), "final_rc": final.returncode}
    if final.returncode != 0:
        report.update(ok=False, final_stderr=final.stderr[-2000:])
        return report
    a, b = ckpt.load_resume(full / ckpt.RESUME)["model"], ckpt.load_resume(killed / ckpt.RESUME)["model"]
    differ = sorted(k for k in a if k not in b or not torch.equal(a[k], b[k])) + sorted(set(b) - set(a))
    wa, wb = load_tensors(full / ckpt.WEIGHTS), load_tensors(killed / ckpt.WEIGHTS)
    differ_best = sorted(k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])) + sorted(set(wb) - set(wa))
    def logged(run: Path) -> List[int]:  # the steps of the training log lines
        return [json.loads(x)["step"] for x in (run / ckpt.METRICS).read_text().splitlines()
                if x.strip() and "loss" in json.loads(x)]

    report.update(
        final_step=_step(killed), tensors=len(a), differing_tensors=differ, differing_best_weights=differ_best,
        metrics_steps_once=bool(logged(killed)) and logged(killed) == logged(full),
        temporaries_left=temporaries(killed), unreadable=[r for r in rows if r["unreadable"]],
        other_exits=[r for r in rows if r["rc"] not in (0, -9)])
    report["ok"] = (not differ and not differ_best and report["metrics_steps_once"] and not report["temporaries_left"]
                    and not report["unreadable"] and not report["other_exits"] and report["final_step"] == steps)
    return report


def summary(report: Dict[str, Any]) -> str:
    by_kind: Dict[str, List[int]] = {}
    for r in report["runs"]:
        kind = r["fault"].split(":")[0]
        by_kind.setdefault(kind, [0, 0])
        by_kind[kind][0] += 1
        by_kind[kind][1] += r["killed"]
    kinds = ", ".join(f"{k} {landed}/{tried}" for k, (tried, landed) in by_kind.items())
    lines = [f"kills landed {report['kills']} of {len(report['runs'])} tried ({kinds}); "
             f"resumes {report['resumes']}; temporaries left by kills mid-write: "
             f"{sum(bool(r['temporaries']) for r in report['runs'])}"]
    if "differing_tensors" in report:
        lines.append(f"final step {report['final_step']}; tensors differing from the uninterrupted run: "
                     f"{len(report['differing_tensors'])} of {report['tensors']} (resume.pt), {len(report['differing_best_weights'])} "
                     f"(model.safetensors); metrics.jsonl has each step once: {report['metrics_steps_once']}; "
                     f"unreadable after a kill: {len(report['unreadable'])}; temporaries at the end: "
                     f"{len(report['temporaries_left'])}")
    lines.append("OK" if report["ok"] else "FAILED")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument("--steps", type=int, default=STEPS, help="training steps of the run")
    ap.add_argument("--work", help="folder for the runs (default: a temporary folder)")
    ap.add_argument("--json", help="write the full report here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = soak(Path(args.work or tmp), args.kills, args.seed, args.steps)
    for r in report["runs"]:
        print(f"{r['fault']:>10}  rc {r['rc']:>3}  {r['seconds']:5.1f} s  step {r['step_before']} -> "
              f"{r['step_after']}  {'temporary left' if r['temporaries'] else ''}"
              f"{'  UNREADABLE: ' + r['unreadable'] if r['unreadable'] else ''}")
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Training curves as a picture: ``genrnn plot RUN [RUN...]`` and ``train --plot``.

One figure of four panels, read from each run's ``metrics.jsonl``: training
and validation loss against step, the same against wall-clock minutes,
training tokens/s, and the learning rate. Several runs share the axes (one
colour each, named by their folder) so that they compare at a glance.
Training loss is in nats per token as logged (the mean over the last
``--log-every`` steps); validation loss is the held-out figure. matplotlib
comes with ``pip install 'genrnn[plot]'`` and draws off screen (Agg).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ._io import atomic_path
from .checkpoint import METRICS
from .errors import GenrnnError

PLOT = "loss.png"  # what train --plot writes into the run folder
SIZE = (12.0, 8.0)  # inches; at DPI, 1200 x 800 pixels
DPI = 100


def read_metrics(run_dir: Path) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """(training log lines, validation lines) of a run, in order."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise GenrnnError(f"no {METRICS} in {run_dir}: is it a genrnn run folder?")
    train, val = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise GenrnnError(f"{path}: line {n} is not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), (int, float)):
            continue
        if "loss" in record:
            train.append(record)
        elif "val_loss" in record:
            val.append(record)
    return train, val


def require() -> None:
    """Fail now, with the install hint, if matplotlib is missing (``train --plot``)."""
    _pyplot()


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise GenrnnError("plots need matplotlib: pip install 'genrnn[plot]'") from None
    matplotlib.use("Agg")  # off screen, no display needed
    import matplotlib.pyplot as plt

    return plt


def figure(runs: Sequence[Path]):
    """The matplotlib figure of ``runs`` (not saved). Each line's label is
    ``NAME train``/``NAME val`` etc., and its data is the metrics' own values
    (minutes = time / 60), so tests read the plotted data back from it."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=SIZE, dpi=DPI)
    (by_step, by_time), (speed, rate) = axes
    names = _names(runs)
    for i, (run, name) in enumerate(zip(runs, names)):
        train, val = read_metrics(run)
        colour = f"C{i % 10}"
        steps = [r["step"] for r in train]
        if train:
            by_step.plot(steps, [r["loss"] for r in train], color=colour, alpha=0.6, label=f"{name} train")
            by_time.plot([r["time"] / 60 for r in train], [r["loss"] for r in train], color=colour, alpha=0.6,
                         label=f"{name} train")
            speed.plot(steps, [r.get("tokens_per_s", float("nan")) for r in train], color=colour,
                       label=f"{name} tokens/s")
            rate.plot(steps, [r.get("lr", float("nan")) for r in train], color=colour, label=f"{name} lr")
        if val:
            by_step.plot([r["step"] for r in val], [r["val_loss"] for r in val], color=colour, marker="o",
                         linestyle="--", label=f"{name} val")
            by_time.plot([r.get("time", float("nan")) / 60 for r in val], [r["val_loss"] for r in val],
                         color=colour, marker="o", linestyle="--", label=f"{name} val")
    by_step.set(title="loss against step", xlabel="step", ylabel="nats per token")
    by_time.set(title="loss against time", xlabel="minutes", ylabel="nats per token")
    speed.set(title="training speed", xlabel="step", ylabel="tokens/s")
    rate.set(title="learning rate", xlabel="step", ylabel="lr")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_runs(runs: Sequence[Path], out: Path) -> Path:
    """Draw ``runs`` into the PNG ``out``, written atomically (``_io.atomic_path``),
    so a reader never sees half a file."""
    runs = [Path(r) for r in runs]
    if not runs:
        raise GenrnnError("give at least one run folder to plot")
    plt = _pyplot()
    fig = figure(runs)
    out = Path(out)
    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png")
    except OSError as e:
        raise GenrnnError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        plt.close(fig)
    return out


def _names(runs: Sequence[Path]) -> List[str]:
    """Folder names, with the parent added where two runs share a name."""
    names = [Path(r).name for r in runs]
    return [f"{Path(r).parent.name}/{n}" if names.count(n) > 1 else n for r, n in zip(runs, names)]

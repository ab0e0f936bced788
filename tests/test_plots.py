"""``genrnn plot`` and ``train --plot``: the PNG decodes at the expected size,
and the plotted data equals metrics.jsonl (read back from the figure)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib", reason="the plot extra is not installed: pip install 'genrnn[plot]'")

import genrnn  # noqa: E402
from genrnn.cli import main  # noqa: E402
from genrnn.plots import PLOT, figure  # noqa: E402

TINY = dict(hidden_size=16, num_layers=1, embedding_size=8, seq_len=16, batch_size=8, sample_every=0,
            log_every=2, eval_every=5, max_steps=12)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    (root / "t.txt").write_text("a quick brown fox jumps over the lazy dog\n" * 40, encoding="utf-8")
    a = genrnn.train(str(root / "t.txt"), out=root / "a", plot=True, **TINY)
    b = genrnn.train(str(root / "t.txt"), out=root / "b", lr=3e-3, **TINY)
    return a.run_dir, b.run_dir


def metrics(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r], [r for r in lines if "val_loss" in r]


def test_train_plot_writes_a_png_at_each_validation(runs):
    from PIL import Image

    a, b = runs
    with Image.open(a / PLOT) as img:
        img.load()
        assert img.size == (1200, 800)
    assert not (b / PLOT).exists()
    assert not list(a.glob(".loss.png.*"))  # no temporary file left behind


def test_the_plotted_data_is_the_metrics(runs):
    a, b = runs
    fig = figure([a, b])
    by_step, by_time, speed, rate = fig.axes
    lines = {line.get_label(): line for ax in fig.axes for line in ax.lines}
    for run in (a, b):
        train, val = metrics(run)
        name = run.name
        assert list(lines[f"{name} lr"].get_ydata()) == [r["lr"] for r in train]
        assert list(lines[f"{name} tokens/s"].get_ydata()) == [r["tokens_per_s"] for r in train]
        step_lines = {ln.get_label(): ln for ln in by_step.lines}
        assert list(step_lines[f"{name} train"].get_xdata()) == [r["step"] for r in train]
        assert list(step_lines[f"{name} train"].get_ydata()) == [r["loss"] for r in train]
        assert list(step_lines[f"{name} val"].get_ydata()) == [r["val_loss"] for r in val]
        time_lines = {ln.get_label(): ln for ln in by_time.lines}
        assert list(time_lines[f"{name} val"].get_xdata()) == pytest.approx([r["time"] / 60 for r in val])
    assert len(val) >= 2


def test_plot_command_and_its_errors(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "both.png"
    assert main(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out) and out.stat().st_size > 10_000
    assert main(["plot", str(tmp_path)]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    (tmp_path / "file").write_text("not a folder")
    assert main(["plot", str(a), "--out", str(tmp_path / "file" / "x.png")]) == 2
    assert "genrnn: error:" in capsys.readouterr().err

"""Presets: built-in and user files of training options, and --preset on the CLI."""

from __future__ import annotations

import json

import pytest

from genrnn.cli import main
from genrnn.config import RunConfig, override
from genrnn.errors import GenrnnError
from genrnn.presets import list_presets, load_preset


def test_every_builtin_preset_makes_a_valid_config():
    names = [p["name"] for p in list_presets()]
    assert {"cpu-3m", "cpu-10m", "lesson", "ptb-small"} <= set(names)
    for name in names:
        options = load_preset(name)
        assert options, name
        override(RunConfig(), **options).validate()


def test_time_is_read_as_a_duration():
    assert load_preset("cpu-3m")["time"] == 180.0


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(GenrnnError, match="unknown preset 'nope'.*cpu-3m"):
        load_preset("nope")


@pytest.mark.parametrize("text, match", [
    ("{", "not valid JSON"),
    ('{"opts": {}}', "must be a JSON object"),
    ('{"options": {"hiden_size": 3}}', "unknown option 'hiden_size'"),
    ('{"options": {"time": "soon"}}', "cannot read duration"),
])
def test_bad_preset_files(tmp_path, text, match):
    path = tmp_path / "mine.json"
    path.write_text(text)
    with pytest.raises(GenrnnError, match=match):
        load_preset(str(path))


def test_missing_preset_file(tmp_path):
    with pytest.raises(GenrnnError, match="cannot read preset"):
        load_preset(str(tmp_path / "absent.json"))


def test_cli_preset_with_an_override(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    preset = tmp_path / "p.json"
    preset.write_text(json.dumps({"description": "tiny", "options": {
        "hidden_size": 16, "num_layers": 1, "embedding_size": 8, "seq_len": 16, "batch_size": 4,
        "max_steps": 50, "sample_every": 0}}))
    run = tmp_path / "run"
    assert main(["train", str(text), "--preset", str(preset), "--max-steps", "3", "--out", str(run), "-q"]) == 0
    saved = json.loads((run / "config.json").read_text())["run"]
    assert saved["model"]["hidden_size"] == 16  # from the preset
    assert saved["train"]["max_steps"] == 3  # the flag wins
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--preset", "lesson"]) == 2
    assert "leave out --preset" in capsys.readouterr().err


def test_cli_lists_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "cpu-10m" in out and "hidden_size=256" in out
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"cpu-3m", "lesson"}

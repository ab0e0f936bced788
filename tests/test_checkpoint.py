"""Run folders: round trips give identical logits, and damage is caught.

A run folder is ``config.json`` + ``model.safetensors`` (with a sha256 of its
tensor bytes) + ``resume.pt`` (read with ``weights_only=True``) +
``metrics.jsonl``. Each test that damages a file works on its own copy of a
run trained once per module, on a small synthetic text (no shared data needed).
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load

import genrnn
from genrnn import checkpoint as ckpt
from genrnn.cli import main
from genrnn.config import ModelConfig
from genrnn.errors import GenrnnError
from genrnn.models import build_model

TEXT = "".join(f"{i} the quick brown fox jumps over the lazy dog; pack my box with five dozen jugs.\n"
               for i in range(150))
TINY = dict(hidden_size=32, num_layers=1, embedding_size=16, seq_len=32, batch_size=8, max_steps=20,
            eval_every=10, sample_every=0)
RUN_FILES = {"config.json", "model.safetensors", "resume.pt", "metrics.jsonl"}



def _train(tmp_path_factory, name: str, **options) -> genrnn.TrainedModel:
    folder = tmp_path_factory.mktemp(name)
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:  # module-scoped: isolate the cache here too
        mp.setenv("GENRNN_CACHE", str(folder / "cache"))
        mp.setenv("GENRNN_OFFLINE", "1")
        return genrnn.train(str(corpus), out=folder / "run", **{**TINY, **options})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> genrnn.TrainedModel:
    """A 1x32 LSTM with a validation split."""
    return _train(tmp_path_factory, "plain")


@pytest.fixture(scope="module")
def tied(tmp_path_factory) -> genrnn.TrainedModel:
    """Tied embedding/output weights, no validation split: model.safetensors holds the last weights."""
    return _train(tmp_path_factory, "tied", embedding_size=32, tie_weights=True, val_fraction=0.0, max_steps=12)


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may damage."""
    dst = tmp_path / "run"
    shutil.copytree(trained.run_dir, dst)
    return dst


def fixed_input(vocab_size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(3, vocab_size, (3, 17), generator=g)  # (B, T), no special tokens


@torch.no_grad()
def logits_of(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    model.eval()
    logits, _, _ = model(idx)
    return logits  # (B, T, V)


# -- round trips ---------------------------------------------------------------------------


def test_weights_round_trip_gives_identical_logits(tmp_path):
    """save_weights -> load_weights into a differently initialised model: bitwise equal."""
    config = ModelConfig(vocab_size=41, embedding_size=8, hidden_size=24, num_layers=2, cell="gru")
    torch.manual_seed(1)
    model = build_model(config)
    torch.manual_seed(2)
    fresh = build_model(config)
    idx = fixed_input(41)
    assert not torch.equal(logits_of(model, idx), logits_of(fresh, idx))
    ckpt.save_weights(tmp_path / "model.safetensors", model, {"step": 7})
    meta = ckpt.load_weights(tmp_path / "model.safetensors", fresh)
    assert meta["step"] == "7"
    assert torch.equal(logits_of(model, idx), logits_of(fresh, idx))
    for name, t in model.state_dict().items():
        assert torch.equal(t, fresh.state_dict()[name]), name


def test_run_round_trip_gives_identical_logits(trained):
    loaded = genrnn.load(trained.run_dir)
    assert loaded.config == trained.config
    assert loaded.tokenizer.to_dict() == trained.tokenizer.to_dict()
    idx = fixed_input(loaded.config.model.vocab_size)
    assert torch.equal(logits_of(trained.model, idx), logits_of(loaded.model, idx))
    # and generation from the loaded run matches
    assert loaded.generate("the ", length=30, seed=3) == trained.generate("the ", length=30, seed=3)


def test_tied_weights_round_trip(tied):
    run = tied.run_dir
    stored = st_load((run / "model.safetensors").read_bytes())
    # the shared matrix is stored once
    assert ("embedding.weight" in stored) != ("head.weight" in stored)
    loaded = genrnn.load(run)
    m = loaded.model
    assert loaded.config.model.tie_weights
    assert m.embedding.weight.data_ptr() == m.head.weight.data_ptr()  # still one tensor after loading
    # the trainer's last in-memory weights, as saved in resume.pt, give the same logits
    state = torch.load(run / "resume.pt", map_location="cpu", weights_only=True)["model"]
    reference = build_model(loaded.config.model)
    reference.load_state_dict(state)
    idx = fixed_input(loaded.config.model.vocab_size)
    assert torch.equal(logits_of(reference, idx), logits_of(m, idx))
    assert torch.equal(logits_of(tied.model, idx), logits_of(m, idx))


# -- the run folder ---------------------------------------------------------------------


def test_run_folder_contents(trained):
    run = trained.run_dir
    names = {p.name for p in run.iterdir()}
    assert names == RUN_FILES
    assert not [n for n in names if n.startswith(".")]  # no temporary file left behind

    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["format_version"] == 1
    assert config["run"]["model"]["hidden_size"] == 32
    assert config["tokenizer"]["kind"] == "char"

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records and all("step" in r for r in records)
    logs = [r for r in records if "loss" in r]
    vals = [r for r in records if "val_loss" in r]
    assert logs and vals
    assert max(r["step"] for r in logs) == 20
    assert [r["step"] for r in vals] == [10, 20]
    assert all(isinstance(r["loss"], float) and r["loss"] > 0 for r in logs)
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)

    meta = ckpt.load_weights(run / "model.safetensors", build_model(trained.config.model))
    assert "tensors_sha256" in meta
    resume = ckpt.load_resume(run / "resume.pt")
    assert resume["progress"]["step"] == 20


def test_missing_weights(run_copy):
    (run_copy / "model.safetensors").unlink()
    with pytest.raises(GenrnnError, match="model.safetensors"):
        genrnn.load(run_copy)


# -- damaged model.safetensors ------------------------------------------------------------


def _data_start(blob: bytes) -> int:
    (header_len,) = struct.unpack("<Q", blob[:8])
    return 8 + header_len


@pytest.mark.parametrize("cut", ["empty", "4 bytes", "in header", "half", "last byte"])
def test_truncated_weights(run_copy, cut):
    path = run_copy / "model.safetensors"
    blob = path.read_bytes()
    n = {"empty": 0, "4 bytes": 4, "in header": _data_start(blob) // 2, "half": len(blob) // 2,
         "last byte": len(blob) - 1}[cut]
    path.write_bytes(blob[:n])
    with pytest.raises(GenrnnError, match="truncated or corrupt"):
        genrnn.load(run_copy)


@pytest.mark.parametrize("where", ["first data byte", "middle", "last byte"])
def test_flipped_byte_in_tensor_data(run_copy, where):
    path = run_copy / "model.safetensors"
    blob = bytearray(path.read_bytes())
    start = _data_start(bytes(blob))
    i = {"first data byte": start, "middle": (start + len(blob)) // 2, "last byte": len(blob) - 1}[where]
    blob[i] ^= 0x01  # one bit: a float that changes slightly, still a valid file
    path.write_bytes(bytes(blob))
    with pytest.raises(GenrnnError, match="checksum"):
        genrnn.load(run_copy)


def test_extra_bytes_after_weights(run_copy):
    path = run_copy / "model.safetensors"
    path.write_bytes(path.read_bytes() + b"\0\0\0\0")
    with pytest.raises(GenrnnError, match="truncated or corrupt"):
        genrnn.load(run_copy)


# -- damaged config.json ------------------------------------------------------------------


def _edit_config(run: Path, edit) -> None:
    path = run / "config.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    edit(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe{}", b"[1, 2]", b"null", b'"a string"', b"{}",
                                 b'{"format_version": 1}'],
                         ids=["empty", "unclosed", "not utf-8", "list", "null", "string", "empty object",
                              "only a version"])
def test_garbage_config(run_copy, raw):
    (run_copy / "config.json").write_bytes(raw)
    with pytest.raises(GenrnnError, match="config.json"):
        genrnn.load(run_copy)


@pytest.mark.parametrize("edit", [
    lambda d: d.update(format_version="1"),
    lambda d: d.update(format_version=True),
    lambda d: d.update(format_version=0),
    lambda d: d.update(corpus=[1, 2]),
    lambda d: d.update(tokenizer=5),
    lambda d: d.update(run=None),
    lambda d: d["run"]["model"].update(cell="transformer"),
    lambda d: d["run"]["model"].update(type=["rnn"]),
    lambda d: d["run"]["model"].update(dropout="lots"),
    lambda d: d["run"]["model"].update(unknown_option=1),
    lambda d: d["run"]["model"].update(vocab_size=5),
    lambda d: d["run"]["data"].update(seq_len="x"),
    lambda d: d["run"]["train"].update(device="tpu"),
    lambda d: d["corpus"].update(sources=5),
    lambda d: d["corpus"].update(val="other.txt"),
], ids=["version string", "version bool", "version 0", "corpus list", "tokenizer int", "run null",
        "cell", "type list", "dropout string", "unknown key", "vocab size",
        "seq_len string", "device", "corpus sources int", "corpus val string"])
def test_edited_config_is_an_error_not_a_crash(run_copy, edit):
    _edit_config(run_copy, edit)
    with pytest.raises(GenrnnError):
        genrnn.load(run_copy)


def test_future_format_version(run_copy):
    _edit_config(run_copy, lambda d: d.update(format_version=999))
    with pytest.raises(GenrnnError, match="upgrade genrnn") as e:
        genrnn.load(run_copy)
    assert "999" in str(e.value)


@pytest.mark.parametrize("field, value", [("hidden_size", 64), ("num_layers", 2), ("embedding_size", 8),
                                          ("cell", "gru")])
def test_config_edited_so_weights_do_not_match(run_copy, field, value):
    _edit_config(run_copy, lambda d: d["run"]["model"].update({field: value}))
    with pytest.raises(GenrnnError, match="does not match"):
        genrnn.load(run_copy)


def test_damaged_run_via_cli(run_copy, capsys):
    _edit_config(run_copy, lambda d: d["run"]["model"].update(hidden_size=64))
    assert main(["sample", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrnn: error: ") and "does not match" in err and err.count("\n") == 1


# -- damaged resume.pt ----------------------------------------------------------------------


class MakesAFile:
    """Unpickling this calls ``open(marker, "w")``: code run by merely loading a file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the plain pickle's protocol
@pytest.mark.parametrize("how", ["torch.save", "plain pickle"])
def test_resume_pt_that_would_run_code_is_refused(run_copy, tmp_path, capsys, how):
    marker = tmp_path / "pwned"
    payload = {"format": 1, "model": {}, "evil": MakesAFile(marker)}
    path = run_copy / "resume.pt"
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))

    # the payload is real: an unsafe load would create the marker
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(MakesAFile(probe))).close()
    assert probe.exists()

    with pytest.raises(GenrnnError, match="resume.pt"):
        ckpt.load_resume(path)
    assert not marker.exists()

    # and through the command: a clean error, still no code run
    assert main(["train", "--resume", str(run_copy), "--max-steps", "25", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genrnn: error: ") and "resume.pt" in err and err.count("\n") == 1
    assert "\x1b[" not in err  # no terminal escapes from torch's message
    assert not marker.exists()


@pytest.mark.parametrize("cut", ["empty", "10 bytes", "half", "last byte"])
def test_truncated_resume_pt(run_copy, cut):
    path = run_copy / "resume.pt"
    blob = path.read_bytes()
    n = {"empty": 0, "10 bytes": 10, "half": len(blob) // 2, "last byte": len(blob) - 1}[cut]
    path.write_bytes(blob[:n])
    with pytest.raises(GenrnnError, match="resume.pt"):
        ckpt.load_resume(path)


@pytest.mark.parametrize("payload", [[1, 2], {"format": 999}, {"no": "format"}], ids=["list", "future", "no format"])
def test_resume_pt_of_another_kind(run_copy, payload):
    torch.save(payload, run_copy / "resume.pt")
    with pytest.raises(GenrnnError, match="not a genrnn resume file"):
        ckpt.load_resume(run_copy / "resume.pt")


def test_resume_pt_with_wrong_contents_via_api(run_copy):
    good = torch.load(run_copy / "resume.pt", map_location="cpu", weights_only=True)
    torch.save({"format": 1}, run_copy / "resume.pt")
    with pytest.raises(GenrnnError, match="incompatible"):
        genrnn.train(resume=run_copy, max_steps=25)
    good["model"] = {"embedding.weight": torch.zeros(3, 3)}
    torch.save(good, run_copy / "resume.pt")
    with pytest.raises(GenrnnError, match="does not match"):
        genrnn.train(resume=run_copy, max_steps=25)

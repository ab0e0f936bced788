"""Run folders: self-describing, atomic, never unpickled.

A run folder holds::

    config.json        format version, run configuration, tokenizer, corpus
    model.safetensors  the weights to use (best by validation loss)
    resume.pt          last weights + optimizer + progress, for --resume
    metrics.jsonl      one JSON object per log line (plots read this)

``model.safetensors`` carries a sha256 of its tensor bytes in its metadata, so
a truncated or edited file is caught on load. ``resume.pt`` holds only
tensors, numbers and strings and is read with ``torch.load(weights_only=True)``,
which refuses to run code. Every file is written to a temporary name and
renamed into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from . import __version__, pretrained
from ._io import atomic_write_bytes, atomic_write_text
from .conditions import ConditionSpec
from .config import FORMAT_VERSION, RunConfig
from .errors import GenrnnError
from .tokenizers import Tokenizer, tokenizer_from_dict

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
RESUME = "resume.pt"
METRICS = "metrics.jsonl"


# -- config.json ------------------------------------------------------------------


def write_config(run_dir: Path, config: RunConfig, tokenizer: Tokenizer, corpus: Dict[str, Any],
                 condition: Optional[ConditionSpec] = None) -> None:
    doc = {
        "format_version": FORMAT_VERSION,
        "genrnn_version": __version__,
        "run": config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "corpus": corpus,
        "condition": condition.to_dict() if condition is not None else None,
    }
    atomic_write_text(run_dir / CONFIG, json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def read_condition(run_dir: Path) -> Optional[ConditionSpec]:
    """What a conditioned run generates from (labels, vector width, image size, source
    sentences: with the run's own tokenizer when the vocabulary is shared); None if nothing."""
    path = Path(run_dir) / CONFIG
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entry = doc.get("condition")
        shared = isinstance(entry, dict) and entry.get("kind") == "text" and entry.get("shared") is True
        spec = ConditionSpec.from_dict(entry, tokenizer_from_dict(doc.get("tokenizer")) if shared else None)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError, TypeError) as e:
        raise GenrnnError(f"{path} is corrupt: {e}") from None  # TypeError: e.g. "labels": 5
    except GenrnnError as e:
        raise GenrnnError(f"{path}: {e}") from None
    return spec


def read_config(run_dir: Path) -> Tuple[RunConfig, Tokenizer, Dict[str, Any]]:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise GenrnnError(f"no run folder at {run_dir} (built-in models: {', '.join(pretrained.MODELS)})")
    if not run_dir.is_dir():
        raise GenrnnError(f"{run_dir} is a file, not a run folder (give the folder that holds {CONFIG})")
    path = run_dir / CONFIG
    if not path.is_file():
        raise GenrnnError(f"{run_dir} is not a genrnn run folder: it has no {CONFIG}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also a number of > 4300 digits
        raise GenrnnError(f"{path} is corrupt: {e}") from None
    if not isinstance(doc, dict) or "format_version" not in doc:
        raise GenrnnError(f"{path} is not a genrnn run configuration (no format_version)")
    version = doc["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise GenrnnError(f"{path} is corrupt: format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise GenrnnError(
            f"{path} has format version {version!r}, but this genrnn ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade genrnn to use this run"
        )
    try:
        config = RunConfig.from_dict(doc["run"])
        tokenizer = tokenizer_from_dict(doc["tokenizer"])
    except KeyError as e:
        raise GenrnnError(f"{path} is incomplete: missing {e}") from None
    except (TypeError, ValueError) as e:
        raise GenrnnError(f"{path} is corrupt: {e}") from None
    try:  # a hand-edited value of the wrong type or range fails here, not deep in training or eval
        config.validate()
    except (GenrnnError, TypeError, ValueError) as e:
        raise GenrnnError(f"{path} is corrupt: {e}") from None
    corpus = doc.get("corpus", {})
    _check_corpus(path, corpus)
    return config, tokenizer, corpus


def _check_corpus(path: Path, corpus: Any) -> None:
    """The corpus entry must have the types that ``CorpusSpec.from_dict`` expects."""

    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    problem = None
    if not isinstance(corpus, dict):
        problem = f"'corpus' must be a JSON object, got {type(corpus).__name__}"
    else:
        for key in ("sources", "fields"):
            if key in corpus and not strings(corpus[key]):
                problem = f"corpus {key!r} must be a list of strings"
        if corpus.get("val") is not None and not strings(corpus["val"]):
            problem = "corpus 'val' must be null or a list of strings"
        for key in ("glob", "encoding", "errors", "fmt"):
            if key in corpus and not isinstance(corpus[key], str):
                problem = f"corpus {key!r} must be a string"
    if problem:
        raise GenrnnError(f"{path} is corrupt: {problem}")


# -- model.safetensors -----------------------------------------------------------------


def _tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The state dict without tied duplicates (safetensors stores each tensor once)."""
    seen: Dict[int, str] = {}
    out: Dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        key = t.data_ptr()
        if key in seen and t.numel() > 0:
            continue
        seen[key] = name
        out[name] = t.detach().to("cpu", copy=True).contiguous()
    return out


def _data_section(blob: bytes) -> bytes:
    (header_len,) = struct.unpack("<Q", blob[:8])
    return blob[8 + header_len :]


def save_weights(path: Path, model: nn.Module, meta: Optional[Dict[str, Any]] = None) -> None:
    tensors = _tensors(model)
    metadata = {k: str(v) for k, v in (meta or {}).items()}
    metadata["format"] = f"genrnn/{FORMAT_VERSION}"
    # the tensor bytes do not depend on the metadata, so hash a first
    # serialization and store the digest in the second
    digest = hashlib.sha256(_data_section(st_save(tensors, metadata))).hexdigest()
    metadata["tensors_sha256"] = digest
    atomic_write_bytes(path, st_save(tensors, metadata))


def load_weights(path: Path, model: nn.Module) -> Dict[str, str]:
    """Load ``path`` into ``model``; return the file's metadata."""
    if not path.is_file():
        raise GenrnnError(f"{path.parent} has no {path.name} yet: training stopped before its first save")
    blob = path.read_bytes()
    try:
        tensors = st_load(blob)
        (header_len,) = struct.unpack("<Q", blob[:8])
        metadata = json.loads(blob[8 : 8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, struct.error, ValueError, json.JSONDecodeError) as e:
        raise GenrnnError(f"{path} is truncated or corrupt ({e}); retrain or restore it") from None
    digest = metadata.get("tensors_sha256")
    if digest is None or hashlib.sha256(_data_section(blob)).hexdigest() != digest:
        raise GenrnnError(f"{path} has been modified or damaged: its checksum does not match; retrain or restore it")
    _load_state(model, tensors, path)
    return metadata


def _load_state(model: nn.Module, tensors: Dict[str, torch.Tensor], path: Path) -> None:
    prepare = getattr(model, "prepare_load", None)
    if prepare is not None:  # a fitted model (Markov) rebuilt from config.json sizes its tables from the file
        prepare(tensors)
    expected = model.state_dict()
    for name, t in tensors.items():
        if name not in expected:
            raise GenrnnError(f"{path} does not match {CONFIG}: unexpected tensor {name!r}")
        if tuple(expected[name].shape) != tuple(t.shape):
            raise GenrnnError(
                f"{path} does not match {CONFIG}: {name} has shape {tuple(t.shape)}, "
                f"the configured model needs {tuple(expected[name].shape)}"
            )
    missing, _ = model.load_state_dict(tensors, strict=False)
    tied = {n for n in missing if any(expected[n].data_ptr() == expected[m].data_ptr() for m in tensors)}
    if set(missing) - tied:
        raise GenrnnError(f"{path} does not match {CONFIG}: missing {sorted(set(missing) - tied)}")


# -- resume.pt ---------------------------------------------------------------------------


def save_resume(path: Path, payload: Dict[str, Any]) -> None:
    # serialised in memory, then written as plain bytes: torch.save's own file
    # writer reports a full disk as a RuntimeError, not an OSError with its errno
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_resume(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        raise GenrnnError(f"{path.parent} has no {path.name}: nothing to resume (the run never reached its first save); "
                          "start it again with the same --out")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a pickle that asks for code or objects beyond tensors and numbers
        raise GenrnnError(f"{path} holds more than tensors, numbers and strings, so it was not loaded "
                          "(loading it could run code); it is corrupt or not from genrnn") from None
    except Exception as e:  # a truncated zip, an empty file, ...
        first = (str(e).splitlines() or [""])[0][:200]  # some errors have an empty message
        raise GenrnnError(f"{path} is truncated or corrupt ({type(e).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise GenrnnError(f"{path} is not a genrnn resume file of format {FORMAT_VERSION}")
    return payload


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    tokenizer: Tokenizer
    corpus: Dict[str, Any]
    model: nn.Module
    metadata: Dict[str, str]
    condition: Optional[ConditionSpec] = None


def load_run(run_dir, device: torch.device = torch.device("cpu")) -> LoadedRun:
    """Config, tokenizer and best weights of a run (a folder, or a built-in
    model's name: :mod:`.pretrained`), ready for sampling."""
    from .models import build_model  # local: models import config, not checkpoint

    run_dir = pretrained.resolve(run_dir)
    config, tokenizer, corpus = read_config(run_dir)
    if config.model.vocab_size != tokenizer.vocab_size:
        raise GenrnnError(
            f"{run_dir / CONFIG} is inconsistent: the model has {config.model.vocab_size} outputs "
            f"but the tokenizer {tokenizer.vocab_size} tokens"
        )
    try:
        model = build_model(config.model)
    except (TypeError, ValueError, RuntimeError) as e:  # a hand-edited field: wrong type, absurd size
        raise GenrnnError(f"{run_dir / CONFIG} is corrupt: cannot build its model ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0][:200]})") from None
    condition = read_condition(run_dir)
    if (condition.kind if condition else "none") != config.model.condition or \
            (condition is not None and condition.size != config.model.condition_size):
        raise GenrnnError(f"{run_dir / CONFIG} is inconsistent: its condition entry does not match the model's")
    metadata = load_weights(run_dir / WEIGHTS, model)
    model.to(device).eval()
    return LoadedRun(run_dir, config, tokenizer, corpus, model, metadata, condition)

"""Conditions: what a conditioned run generates from, from the user's values to tensors.

A run trained with ``--condition-field`` (labels), ``--condition-vectors`` /
``--image-features`` (vectors) or ``--image-field`` (images) records a
:class:`ConditionSpec` in ``config.json``: the kind, and the label vocabulary
or the vector width or the image size. Everything that hands a condition to the
model -- training batches, ``genrnn sample --condition``, ``run.caption``, the
server -- encodes it here, so a bad value gets the same clear error everywhere:

* label: a label's value or its name (``2`` or ``Sports``) -> its id, (B,) int64;
* vector: rows of floats of the run's width -> (B, D) float32;
* image: paths, bytes, or uint8 arrays -> (B, 3, S, S) uint8 (:mod:`genrnn.images`);
* text: source sentences (sequence to sequence) -> token ids ``source <eos>``,
  right-padded with ``<pad>`` (0), (B, S) int64, with the source tokenizer
  (the run's own when the vocabulary is shared).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import GenrnnError

KINDS = ("label", "vector", "image", "text")
MAX_LABELS = 10_000


@dataclass(frozen=True)
class ConditionSpec:
    kind: str
    labels: Tuple[str, ...] = ()  # label: the values, in id order
    names: Tuple[str, ...] = ()  # label: a readable name per value ("" where none)
    size: int = 0  # vector: width; image: side in pixels; label: number of labels; text: source vocabulary
    max_length: int = 0  # text: the most source tokens (with its <eos>) a sentence may have
    shared: bool = True  # text: the source uses the run's own tokenizer (else ``source`` is its own)
    source: Any = field(default=None, compare=False, repr=False)  # text: the source Tokenizer

    @classmethod
    def for_text(cls, source, max_length: int, shared: bool) -> "ConditionSpec":
        """A sequence-to-sequence run's source side: its tokenizer and length limit."""
        return cls("text", size=source.vocab_size, max_length=max_length, shared=shared, source=source)

    # -- building ----------------------------------------------------------------------

    @classmethod
    def for_labels(cls, values: Sequence[str], names: Optional[Sequence[str]] = None) -> "ConditionSpec":
        """The vocabulary of the training labels, in natural order (``2`` before ``10``).
        ``names`` name the values in that order (e.g. AG News' classes.txt)."""
        labels = tuple(sorted(set(values), key=_natural))
        if len(labels) > MAX_LABELS:
            raise GenrnnError(f"the condition column has {len(labels):,} different values; at most {MAX_LABELS:,} "
                              "labels are supported (is it a text column? give it with --field instead)")
        if names is not None:
            names = [n.strip() for n in names]
            if len(names) != len(labels):
                raise GenrnnError(f"--condition-names gives {len(names)} names for the {len(labels)} labels "
                                  f"({_show(labels)}); give one name per label, in that order")
        return cls("label", labels, tuple(names) if names is not None else ("",) * len(labels), len(labels))

    def to_dict(self) -> Dict[str, Any]:
        d = {"kind": self.kind, "labels": list(self.labels), "names": list(self.names), "size": self.size}
        if self.kind == "text":
            d.update(max_length=self.max_length, shared=self.shared,
                     tokenizer=None if self.shared else self.source.to_dict())
        return d

    @classmethod
    def from_dict(cls, d: Any, tokenizer=None) -> Optional["ConditionSpec"]:
        """``tokenizer``: the run's own, the source side's when it is shared."""
        if d is None:
            return None
        if not isinstance(d, dict) or d.get("kind") not in KINDS:
            raise GenrnnError("the run's condition entry is corrupt (no known kind)")
        labels, names = d.get("labels", []), d.get("names", [])
        if not all(isinstance(x, str) for x in list(labels) + list(names)) or not isinstance(d.get("size"), int):
            raise GenrnnError("the run's condition entry is corrupt (labels, names and size)")
        if d["kind"] != "text":
            return cls(d["kind"], tuple(labels), tuple(names), d["size"])
        from .tokenizers import tokenizer_from_dict

        shared, max_length = d.get("shared"), d.get("max_length")
        if not isinstance(shared, bool) or not isinstance(max_length, int) or max_length < 2:
            raise GenrnnError("the run's condition entry is corrupt (shared and max_length of the source)")
        source = tokenizer if shared else tokenizer_from_dict(d.get("tokenizer"))
        if source is None or source.vocab_size != d["size"]:
            raise GenrnnError("the run's condition entry is corrupt (the source vocabulary's size)")
        return cls.for_text(source, max_length, shared)

    # -- describing --------------------------------------------------------------------

    def label_names(self) -> List[str]:
        """What to show for each label: its name, else its value."""
        return [n or v for v, n in zip(self.labels, self.names)]

    def describe(self) -> str:
        if self.kind == "label":
            return f"{self.size} labels ({_show(self.label_names())})"
        if self.kind == "vector":
            return f"vectors of {self.size}"
        if self.kind == "text":
            vocab = "shared vocabulary" if self.shared else f"source vocabulary {self.size}"
            return f"source sentences (up to {self.max_length} tokens, {vocab})"
        return f"{self.size}x{self.size} images"

    # -- encoding ----------------------------------------------------------------------

    def label_id(self, value: Any) -> int:
        text = str(value).strip()
        if text in self.labels:
            return self.labels.index(text)
        lowered = [n.lower() for n in self.names]
        if text.lower() in lowered and text:
            return lowered.index(text.lower())
        raise GenrnnError(f"unknown label {text!r}; the labels are: {_show(self._choices())}")

    def _choices(self) -> List[str]:
        return [f"{n} ({v})" if n else v for v, n in zip(self.labels, self.names)]

    def encode(self, values: Any) -> torch.Tensor:
        """A batch of user values (one per row) as the model's condition tensor."""
        if self.kind == "label":
            return torch.tensor([self.label_id(v) for v in values], dtype=torch.long)
        if self.kind == "vector":
            return self.encode_vectors(values)
        if self.kind == "text":
            return self.encode_texts(values)
        return self.encode_images(values)

    def source_ids(self, text: Any) -> np.ndarray:
        """One source sentence as ``ids <eos>``; GenrnnError if it is empty or too long."""
        from .tokenizers import EOS_ID

        if not isinstance(text, str):
            raise GenrnnError(f"a source sentence must be text, not {type(text).__name__}")
        ids = np.asarray(self.source.encode_array(" ".join(text.split("\n")).strip()), dtype=np.int64)
        if len(ids) == 0:
            raise GenrnnError("the source sentence is empty")
        if len(ids) + 1 > self.max_length:
            raise GenrnnError(f"the source sentence has {len(ids) + 1} tokens (with its end), over this run's limit "
                              f"of {self.max_length} (its --seq-len); split it or train with a larger --seq-len")
        return np.append(ids, EOS_ID)

    def encode_texts(self, values: Sequence[Any]) -> torch.Tensor:
        rows = [self.source_ids(v) for v in values]
        out = torch.zeros(len(rows), max((len(r) for r in rows), default=1), dtype=torch.long)  # 0 = <pad>
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.from_numpy(r)
        return out

    def encode_vectors(self, values: Any) -> torch.Tensor:
        try:
            array = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError):
            raise GenrnnError(f"a condition vector must be a list of {self.size} numbers") from None
        if array.ndim == 1:
            array = array[None]
        if array.ndim != 2 or array.shape[1] != self.size:
            raise GenrnnError(f"condition vectors must have width {self.size}; got shape {tuple(array.shape)}")
        if not np.isfinite(array).all():
            raise GenrnnError("condition vectors must be finite numbers (no NaN or infinity)")
        return torch.from_numpy(np.ascontiguousarray(array))

    def encode_images(self, values: Sequence[Any]) -> torch.Tensor:
        from .images import decode_image, load_image

        out = []
        values = list(values)
        for i, v in enumerate(values):
            name = f"image {i}" if len(values) > 1 else "image"
            if isinstance(v, (bytes, bytearray)):
                out.append(decode_image(bytes(v), self.size, name=name))
            elif isinstance(v, np.ndarray):
                if v.shape != (3, self.size, self.size) or v.dtype != np.uint8:
                    raise GenrnnError(f"{name}: an array must be uint8 of shape (3, {self.size}, {self.size})")
                out.append(v)
            else:
                out.append(load_image(Path(v), self.size))
        return torch.from_numpy(np.stack(out)) if out else torch.zeros(0, 3, self.size, self.size, dtype=torch.uint8)


def for_records(kind: str, conditions: Optional[List[Any]], names: Optional[Sequence[str]] = None) -> ConditionSpec:
    """The spec of a new run from its training records' raw conditions."""
    if kind not in KINDS:
        raise GenrnnError(f"unknown condition kind {kind!r}; known: {', '.join(KINDS)}")
    if not conditions:
        raise GenrnnError(f"the model is to be conditioned on a {kind}, but the training records have none")
    if kind == "label":
        return ConditionSpec.for_labels([str(c) for c in conditions], names)
    if names is not None:
        raise GenrnnError("--condition-names names labels; it does not apply to vectors or images")
    if kind == "vector":
        return ConditionSpec("vector", size=int(np.asarray(conditions[0]).shape[-1]))
    from .images import IMAGE_SIZE

    return ConditionSpec("image", size=IMAGE_SIZE)


def read_vectors(path: str, rows: Optional[int] = None) -> np.ndarray:
    """A float matrix from a ``.npy`` file (never unpickled), one row per record."""
    p = Path(path)
    if not p.is_file():
        raise GenrnnError(f"no vector file at {p}")
    try:
        array = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise GenrnnError(f"{p} is not a plain .npy array of numbers ({e})") from None
    except OSError as e:
        raise GenrnnError(f"cannot read {p}: {e}") from None
    if array.ndim != 2 or array.shape[1] == 0 or not np.issubdtype(array.dtype, np.number):
        raise GenrnnError(f"{p} must hold a 2-D array of numbers, one row per record; got shape {array.shape}, "
                          f"dtype {array.dtype}")
    if rows is not None and array.shape[0] != rows:
        raise GenrnnError(f"{p} has {array.shape[0]:,} rows but the corpus has {rows:,} records; give one row "
                          "per record, in order (empty rows of the corpus are skipped)")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise GenrnnError(f"{p} holds NaN or infinite values")
    return array


def read_names(path: str) -> List[str]:
    """Label names, one per line (AG News' classes.txt)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GenrnnError(f"cannot read --condition-names {path}: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _natural(value: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", value) if part]


def _show(items: Sequence[str], limit: int = 12) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")

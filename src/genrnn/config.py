"""Configuration: frozen dataclasses, strict parsing, and run-level options.

Three groups, one per concern:

* :class:`ModelConfig` -- the network's shape (what ``models`` builds);
* :class:`DataConfig`  -- tokenizer, layout and batching (what ``data`` builds);
* :class:`TrainConfig` -- optimisation, stopping, logging, device.

They are frozen: a change is a new object made with :func:`dataclasses.replace`
(or :func:`override`). Parsing is strict: an unknown key is an error that names
the close matches, so a misspelt option is never silently ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import GenrnnError

FORMAT_VERSION = 1

CELLS = ("lstm", "gru", "rnn")
CONDITIONS = ("none", "label", "vector", "image", "text")
LAYOUTS = ("stream", "lines")
TOKENIZER_KINDS = ("char", "word", "whitespace", "bpe")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KEEPS = ("best", "last")  # which weights a run keeps in model.safetensors


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network. ``vocab_size`` is filled in from the tokenizer."""

    type: str = "rnn"
    cell: str = "lstm"
    vocab_size: int = 0
    embedding_size: int = 64  # 0: one-hot input, as in the lesson's model
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0
    tie_weights: bool = False
    # "" a full softmax; "auto" or cutoffs such as "2000,10000": an adaptive softmax (models/output.py)
    adaptive_softmax: str = ""
    order: int = 5  # types "markov" and "mixture": n-gram order (the context is order-1 tokens)
    # What the text is generated from (one-to-many): nothing, a label, a vector or an image.
    # condition_size: the number of labels, the vector's width, or the image's side in pixels.
    condition: str = "none"
    condition_size: int = 0
    condition_dim: int = 64  # width of the learned condition embedding
    condition_every_step: bool = True  # also feed the embedding at every step, not only the initial state
    # Sequence to sequence (condition "text"): the encoder reads both ways; the decoder attends over
    # the encoder's outputs (Luong's "general" score, after the decoder's top layer).
    bidirectional: bool = False
    attention: bool = False

    def validate(self) -> None:
        from .models import MODELS  # here, not at the top: models import this module

        if self.type not in MODELS:
            raise GenrnnError(f"unknown model type {self.type!r}; known: {', '.join(MODELS)}")
        _positive("order", self.order)
        _choice("condition", self.condition, CONDITIONS)
        if self.condition != "none":
            if self.type in ("markov", "mixture"):
                raise GenrnnError(f"the {self.type} model cannot be conditioned; use --model rnn")
            _positive("condition_size", self.condition_size)
            _positive("condition_dim", self.condition_dim)
        if (self.attention or self.bidirectional) and self.condition not in ("text", "none"):  # none: not yet known
            raise GenrnnError("--attention and --bidirectional are options of a sequence-to-sequence model "
                              "(--task seq2seq)")
        if self.bidirectional and self.hidden_size % 2:
            raise GenrnnError("--bidirectional splits --hidden-size between the two directions: make it even")
        _choice("cell", self.cell, CELLS)
        _positive("hidden_size", self.hidden_size)
        _positive("num_layers", self.num_layers)
        if self.embedding_size < 0:
            raise GenrnnError("--embedding-size must be >= 0 (0 means one-hot input)")
        if not 0.0 <= self.dropout < 1.0:
            raise GenrnnError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.adaptive_softmax and self.tie_weights:
            raise GenrnnError("--adaptive-softmax has its own output weights per cluster: it cannot be tied to the "
                              "embedding; leave out --tie-weights")
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise GenrnnError(
                "--tie-weights shares the embedding with the output layer, so it needs "
                f"--embedding-size equal to --hidden-size (got {self.embedding_size} and "
                f"{self.hidden_size})"
            )


@dataclass(frozen=True)
class DataConfig:
    """How text becomes batches."""

    tokenizer: str = "char"
    lower: bool = False
    vocab_size: Optional[int] = None  # cap; rarer tokens become <unk>
    layout: str = "stream"
    seq_len: int = 128
    batch_size: int = 64
    val_fraction: float = 0.1
    # stream layout: how many consecutive windows a lane walks with its state
    # carried before the lanes are reshuffled (truncated BPTT span, in windows).
    # 1 = every window starts from a zero state and batches are independent
    # draws; measured best for short budgets (see DESIGN.md).
    state_span: int = 1
    # sequence to sequence: one tokenizer for the source and the target sides (fitted on both)
    shared_vocab: bool = True

    def validate(self) -> None:
        _choice("tokenizer", self.tokenizer, TOKENIZER_KINDS)
        _choice("layout", self.layout, LAYOUTS)
        _positive("seq_len", self.seq_len)
        _positive("batch_size", self.batch_size)
        _positive("state_span", self.state_span)
        if self.vocab_size is not None and self.vocab_size < 4:
            raise GenrnnError("--vocab-size must be at least 4 (3 special tokens + 1)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise GenrnnError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, stopping, logging and device."""

    lr: Optional[float] = None  # None: chosen from the model width (see auto_lr)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    warmup: float = 0.02  # fraction of the run spent warming up the learning rate
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    time: Optional[float] = None  # wall-clock budget in seconds
    eval_every: int = 200
    # the weights model.safetensors keeps: the lowest validation loss ("best"), or the latest ("last"):
    # a captioner's validation loss rises on unseen words while its captions still improve
    keep: str = "best"
    eval_tokens: int = 262_144  # periodic evaluations look at this many tokens at most
    log_every: int = 10
    save_every: Optional[int] = None  # None: at every evaluation
    sample_every: int = 500  # 0 disables samples during training
    sample_prompt: str = ""
    sample_length: int = 200
    sample_temperature: float = 0.8
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    threads: Optional[int] = None
    deterministic: bool = False  # bitwise-reproducible CUDA runs, at some speed
    plot: bool = False  # draw the loss chart into the run folder (loss.png) at each validation
    # order of the Kneser-Ney baseline fitted beside a plain RNN language model and reported with its
    # validation loss (0: none); a mixture's baseline is its own n-gram part (ModelConfig.order)
    baseline: int = 5
    init_from: Optional[str] = None  # the run folder this run started from (--init-from)

    def validate(self) -> None:
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("keep", self.keep, KEEPS)
        if self.lr is not None and not (0 < self.lr < math.inf):
            raise GenrnnError(f"--lr must be a number > 0, got {self.lr}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not (0 <= value < math.inf):
                raise GenrnnError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if not isinstance(self.baseline, int) or isinstance(self.baseline, bool) or self.baseline < 0:
            raise GenrnnError(f"--baseline is an n-gram order >= 0 (0: none), got {self.baseline!r}")
        for name in ("save_every", "threads"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        _positive("sample_length", self.sample_length)
        if not (0 <= self.sample_temperature < math.inf):
            raise GenrnnError(f"sample temperature must be >= 0, got {self.sample_temperature}")
        for name in ("max_steps", "epochs", "time"):
            value = getattr(self, name)
            if value is not None and not (0 < value < math.inf):
                raise GenrnnError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        for name in ("eval_every", "log_every", "eval_tokens"):
            _positive(name, getattr(self, name))
        if self.sample_every < 0:
            raise GenrnnError("--sample-every must be >= 0 (0 disables samples)")
        if not 0.0 <= self.warmup < 1.0:
            raise GenrnnError(f"--warmup is a fraction of the run in [0, 1), got {self.warmup}")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; written to ``config.json``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.data.validate()
        self.train.validate()

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        if not isinstance(d, Mapping):
            raise GenrnnError("run configuration must be a JSON object")
        _check_keys(d.keys(), ("model", "data", "train"), "run configuration")
        return cls(
            model=_from_mapping(ModelConfig, d.get("model", {}), "model"),
            data=_from_mapping(DataConfig, d.get("data", {}), "data"),
            train=_from_mapping(TrainConfig, d.get("train", {}), "train"),
        )


def auto_lr(model: ModelConfig) -> float:
    """Learning rate for AdamW when none is given.

    1e-2 up to a width of 256: measured on tiny Shakespeare (3 minutes on 2
    CPU cores, 2x256 LSTM) it beat 3e-3, 6e-3 and 2e-2, and the lesson's
    one-hot LSTM of width 64 also learns fastest near 1e-2. Wider models get
    less, as width^-0.8 (2x512: 5.7e-3).
    """
    return min(1e-2, 1e-2 * (256 / model.hidden_size) ** 0.8)


def option_names() -> Dict[str, str]:
    """Map every flat option name (``hidden_size``, ``lr``...) to its group."""
    names: Dict[str, str] = {}
    # data first: the user's vocab_size is DataConfig's cap; ModelConfig's is derived
    for group, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        for f in dataclasses.fields(cls):
            names.setdefault(f.name, group)
    return names


def override(config: RunConfig, **options: Any) -> RunConfig:
    """Return ``config`` with flat options applied (``hidden_size=512, lr=1e-3``).

    Unknown names raise :class:`GenrnnError` with suggestions.
    """
    groups = option_names()
    changes: Dict[str, Dict[str, Any]] = {"model": {}, "data": {}, "train": {}}
    for name, value in options.items():
        if name not in groups:
            raise GenrnnError(_unknown(name, groups.keys(), "option"))
        changes[groups[name]][name] = value
    return RunConfig(
        model=dataclasses.replace(config.model, **changes["model"]),
        data=dataclasses.replace(config.data, **changes["data"]),
        train=dataclasses.replace(config.train, **changes["train"]),
    )


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hr)?\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"10m"``, ``"1.5h"`` -> seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise GenrnnError(f"cannot read duration {text!r}: use e.g. 90s, 10m or 1.5h")
    value = float(m.group(1))
    unit = (m.group(2) or "s").lower()
    return value * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}[unit]


# -- helpers -----------------------------------------------------------------


def _choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise GenrnnError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}; got {value!r}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise GenrnnError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")


def _unknown(name: str, known, what: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown {what} {name!r}{hint}"


def _check_keys(keys, allowed, where: str) -> None:
    for key in keys:
        if key not in allowed:
            raise GenrnnError(f"{where}: " + _unknown(key, allowed, "key"))


def _from_mapping(cls, d: Any, where: str):
    if not isinstance(d, Mapping):
        raise GenrnnError(f"{where} configuration must be a JSON object")
    names = [f.name for f in dataclasses.fields(cls)]
    _check_keys(d.keys(), names, f"{where} configuration")
    return cls(**d)

"""From documents to batches: train/validation splits and the two data layouts.

``stream`` (default) -- the corpus is one token stream; every document starts
with ``<eos>``, which doubles as "beginning of document", so an empty prompt
means "start a new document"::

    <eos> d o c 1 . . . <eos> d o c 2 . . .            (one long stream)

Each epoch the stream is cut, after a random offset, into windows of
``seq_len`` tokens (targets: the same window shifted left by one). Consecutive
windows are grouped into blocks of ``span`` windows; each step takes one window
from each of ``batch_size`` blocks (the "lanes"), and the recurrent state is
carried from window to window along a lane (truncated BPTT)::

    block order shuffled per epoch; a round = batch_size blocks walked in step
    lane 0: [w17 w18 w19 ... ]   state carried ->
    lane 1: [w3  w4  w5  ... ]
    ...
    step:    s=0 s=1 s=2 ...      (state reset at the start of each round)

so batches are equal-sized and shuffled across epochs, yet the state sees
long context. The default span is 1 (independent windows, a zero state for
each), which trained best in short budgets; see DESIGN.md. The order is a pure function of (seed, epoch, step), which is
what makes resume exact.

``lines`` -- one record per line (or per table row), ``<eos> record <eos>``.
Records are padded into batches of similar length (shuffle, sort within
mega-batches of 50 batches, shuffle the batches), the padding is masked out of
the loss with target -100, and generation stops at ``<eos>``.

Conditions (lines layout only): each record may carry a condition -- a label,
a vector or an image (:mod:`genrnn.conditions`). They are encoded once into a
table, row i for window i, and a batch carries its rows' conditions in
``Batch.condition`` (batch in dimension 0), which the trainer and evaluation
hand to ``state.start`` for the initial state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .conditions import ConditionSpec, for_records
from .config import DataConfig
from .corpora import Document
from .errors import GenrnnError
from .tokenizers import EOS_ID, PAD_ID, Tokenizer, build_tokenizer

IGNORE = -100  # target id that the loss skips


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # (B, T) int64 inputs
    y: torch.Tensor  # (B, T) int64 targets, IGNORE where padded
    reset: bool  # True: start this batch afresh, from state.start(model, condition)
    condition: Optional[torch.Tensor] = None  # (B, ...) the rows' conditions, or None


# -- splitting text -----------------------------------------------------------


def document_texts(docs: Sequence[Document], layout: str) -> List[str]:
    """Texts of the units a layout works on: documents (stream) or records (lines)."""
    return document_records(docs, layout)[0]


def document_records(docs: Sequence[Document], layout: str,
                     vectors: Optional[np.ndarray] = None) -> Tuple[List[str], Optional[List[Any]]]:
    """Texts of the units a layout works on, and each one's raw condition (the
    documents' own, or row i of ``vectors`` for record i), or None when
    there are none."""
    has_condition = vectors is not None or any(d.condition is not None for d in docs)
    if layout == "stream":
        if has_condition:
            raise GenrnnError("a condition needs one record per row: add --layout lines")
        return [d.text for d in docs if d.text.strip()], None
    records: List[str] = []
    conditions: List[Any] = []
    for d in docs:
        if d.record:  # a table row is one record even if a field holds a newline
            text = " ".join(d.text.split("\n")).strip()
            if text:
                records.append(text)
                conditions.append(d.condition)
        else:
            lines = [line for line in d.text.split("\n") if line.strip()]
            records.extend(lines)
            conditions.extend([d.condition] * len(lines))
    if vectors is not None:
        if len(vectors) != len(records):
            raise GenrnnError(f"the condition vectors have {len(vectors):,} rows but the corpus has "
                              f"{len(records):,} records; give one row per record, in order (empty rows and "
                              "lines are skipped)")
        return records, list(vectors)
    return records, conditions if has_condition else None


def split_texts(texts: List[str], val_fraction: float, layout: str, snap_to_space: bool,
                conditions: Optional[List[Any]] = None) -> Tuple[List[str], List[str]]:
    """Hold out the last ``val_fraction`` for validation.

    stream: by characters (nanoGPT's split: the first 90% trains, the last 10%
    validates); the document holding the cut is cut in two. With a word
    tokenizer the cut moves to the next whitespace so no word is split.
    lines: the last records after a fixed shuffle (seed 0, so the split does not
    move with --seed); ``conditions``, one per record, are shuffled alike in
    place (the list is reordered, its first part going with the training split).
    """
    if val_fraction <= 0:
        return texts, []
    if layout == "lines":
        order = np.random.default_rng(0).permutation(len(texts))
        n_val = max(1, int(round(len(texts) * val_fraction)))
        if n_val >= len(texts):
            raise GenrnnError(f"only {len(texts)} records: too few to hold out a validation split; use --val-fraction 0 or --val")
        shuffled = [texts[i] for i in order]
        if conditions is not None:
            conditions[:] = [conditions[i] for i in order]
        return shuffled[:-n_val], shuffled[-n_val:]
    total = sum(len(t) for t in texts)
    cut = int(total * (1 - val_fraction))
    train: List[str] = []
    seen = 0
    for i, t in enumerate(texts):
        if seen + len(t) <= cut:
            train.append(t)
            seen += len(t)
            continue
        at = cut - seen
        if snap_to_space:
            while at < len(t) and not t[at].isspace():
                at += 1
        head, tail = t[:at], t[at:]
        if head:
            train.append(head)
        val = ([tail] if tail else []) + texts[i + 1 :]
        if not val or not any(v.strip() for v in val):
            break
        return train, val
    raise GenrnnError("the corpus is too small to hold out a validation split; use --val-fraction 0 or --val")


def count_chars(texts: Sequence[str], layout: str) -> int:
    """Characters the targets of a split stand for (for bits per character).

    Every target is predicted once: the text's own characters, plus one for
    each ``<eos>`` that is a target (it stands in for a line break).
    """
    chars = sum(len(t) for t in texts)
    if layout == "lines":
        return chars + len(texts)  # each record's closing <eos>
    return chars + max(0, len(texts) - 1)  # <eos> before documents 2..n


# -- encoding -------------------------------------------------------------------


def encode_stream(tokenizer: Tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """``<eos> t1 <eos> t2 ...`` as one int64 tensor."""
    parts: List[np.ndarray] = []
    for t in texts:
        parts.append(np.array([EOS_ID], dtype=np.int64))
        parts.append(np.asarray(tokenizer.encode_array(t), dtype=np.int64))
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.long)


def encode_records(tokenizer: Tokenizer, texts: Sequence[str], seq_len: int,
                   owners: Optional[List[int]] = None) -> List[np.ndarray]:
    """``<eos> record <eos>`` per record; records longer than a window are cut
    into windows that overlap by one token so every target is kept once.
    ``owners``, if given, receives each window's record number."""
    out: List[np.ndarray] = []
    for i, t in enumerate(texts):
        ids = np.concatenate([[EOS_ID], np.asarray(tokenizer.encode_array(t), dtype=np.int64), [EOS_ID]])
        for start in range(0, len(ids) - 1, seq_len):
            out.append(ids[start : start + seq_len + 1])
            if owners is not None:
                owners.append(i)
    return out


# -- training batches --------------------------------------------------------------


class StreamBatches:
    """Equal-sized, shuffled windows with the state carried along lanes."""

    carries_state = True

    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int, span: int, seed: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        # windows that fit after any offset in [0, seq_len); a text too short
        # for that still gets one window and a smaller offset range
        n_windows = (len(tokens) - seq_len) // seq_len or (len(tokens) - 1) // seq_len
        # each epoch starts at a random offset in [0, max_offset]
        self.max_offset = min(seq_len - 1, len(tokens) - 1 - n_windows * seq_len)
        if n_windows < 1:
            raise GenrnnError(
                f"the training text has {len(tokens)} tokens, too few for --seq-len {seq_len}; "
                "give more text or a smaller --seq-len"
            )
        # a small corpus gets a smaller batch rather than an error
        self.batch_size = min(batch_size, n_windows)
        # rounds of batch_size blocks of `span` windows; pick the span so that
        # almost no window is dropped
        rounds = max(1, round(n_windows / (self.batch_size * span)))
        self.span = max(1, n_windows // (rounds * self.batch_size))
        self.rounds = n_windows // (self.batch_size * self.span)
        self.steps_per_epoch = self.rounds * self.span
        self._cache: Tuple[int, Optional[np.ndarray], int] = (-1, None, 0)

    def _plan(self, epoch: int) -> Tuple[np.ndarray, int]:
        if self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(self.max_offset + 1))
            n_blocks = self.rounds * self.batch_size
            order = rng.permutation(n_blocks)
            self._cache = (epoch, order, offset)
        return self._cache[1], self._cache[2]  # type: ignore[return-value]

    def get(self, epoch: int, index: int) -> Batch:
        order, offset = self._plan(epoch)
        rnd, s = divmod(index, self.span)
        blocks = torch.from_numpy(order[rnd * self.batch_size : (rnd + 1) * self.batch_size])
        starts = offset + (blocks * self.span + s) * self.seq_len  # (B,)
        pos = starts[:, None] + torch.arange(self.seq_len + 1)  # (B, T+1)
        chunk = self.tokens[pos]
        return Batch(chunk[:, :-1], chunk[:, 1:], reset=(s == 0))


class LineBatches:
    """Padded batches of records of similar length."""

    carries_state = False

    def __init__(self, records: List[np.ndarray], batch_size: int, seed: int, pool: int = 50,
                 conditions: Optional[torch.Tensor] = None):
        if not records:
            raise GenrnnError("no training records")
        self.records = records
        self.conditions = conditions  # (len(records), ...): window i's condition
        self.lengths = np.array([len(r) for r in records])
        self.batch_size = batch_size
        self.seed = seed
        self.pool = pool
        self.steps_per_epoch = -(-len(records) // batch_size)
        self._cache: Tuple[int, List[np.ndarray]] = (-1, [])

    def _plan(self, epoch: int) -> List[np.ndarray]:
        if self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.records))
            batches: List[np.ndarray] = []
            mega = self.batch_size * self.pool
            for start in range(0, len(order), mega):
                chunk = order[start : start + mega]
                chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
                batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
            self._cache = (epoch, [batches[i] for i in rng.permutation(len(batches))])
        return self._cache[1]

    def get(self, epoch: int, index: int) -> Batch:
        rows = self._plan(epoch)[index]
        x, y = pad_records([self.records[i] for i in rows])
        return Batch(x, y, reset=True, condition=_take(self.conditions, rows))


def _take(conditions: Optional[torch.Tensor], rows) -> Optional[torch.Tensor]:
    if conditions is None:
        return None
    return conditions.index_select(0, torch.as_tensor(np.asarray(rows, dtype=np.int64)))


def pad_records(records: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    T = max(len(r) for r in records) - 1
    x = torch.full((len(records), T), PAD_ID, dtype=torch.long)
    y = torch.full((len(records), T), IGNORE, dtype=torch.long)
    for i, r in enumerate(records):
        r = torch.from_numpy(np.asarray(r, dtype=np.int64))
        x[i, : len(r) - 1] = r[:-1]
        y[i, : len(r) - 1] = r[1:]
    return x, y


# -- evaluation batches --------------------------------------------------------------


class EvalSet:
    """A held-out split, walked in a fixed order; every target counted once."""

    def __init__(self, layout: str, tokens: Optional[torch.Tensor], records: Optional[List[np.ndarray]],
                 num_chars: int, batch_size: int, seq_len: int, conditions: Optional[torch.Tensor] = None):
        self.layout = layout
        self.conditions = conditions  # lines: window i's condition
        self.tokens = tokens
        self.records = records
        self.num_chars = num_chars
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.skipped = 0  # pairs left out for being over a sequence-to-sequence run's length limit
        if records is not None:
            self.num_targets = sum(len(r) - 1 for r in records)
        else:
            self.num_targets = max(0, len(tokens) - 1)

    def batches(self, max_tokens: Optional[int] = None) -> Iterator[Batch]:
        if self.records is not None:
            yield from self._line_batches(max_tokens)
        else:
            yield from self._stream_batches(max_tokens)

    def _stream_batches(self, max_tokens: Optional[int]) -> Iterator[Batch]:
        """Cut the stream into ``B`` contiguous lanes and walk them in windows,
        carrying the state: each lane starts cold once, then sees full context.
        The tail of the last lane is padded with ignored targets."""
        tokens = self.tokens if max_tokens is None else self.tokens[: max_tokens + 1]
        n = len(tokens) - 1  # targets
        if n <= 0:
            return
        B = max(1, min(self.batch_size, n // self.seq_len))
        lane = -(-n // B)
        B = -(-n // lane)  # no lane of padding only
        x = torch.full((B * lane,), PAD_ID, dtype=torch.long)
        y = torch.full((B * lane,), IGNORE, dtype=torch.long)
        x[:n] = tokens[:-1]
        y[:n] = tokens[1:]
        x, y = x.view(B, lane), y.view(B, lane)
        for start in range(0, lane, self.seq_len):
            yield Batch(x[:, start : start + self.seq_len], y[:, start : start + self.seq_len], reset=(start == 0))

    def _line_batches(self, max_tokens: Optional[int]) -> Iterator[Batch]:
        order = np.argsort([len(r) for r in self.records], kind="stable")
        seen = 0
        for i in range(0, len(order), self.batch_size):
            rows = order[i : i + self.batch_size]
            x, y = pad_records([self.records[j] for j in rows])
            yield Batch(x, y, reset=True, condition=_take(self.conditions, rows))
            seen += int((y != IGNORE).sum())
            if max_tokens is not None and seen >= max_tokens:
                return


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: object  # StreamBatches | LineBatches
    val: Optional[EvalSet]
    train_targets: int
    condition: Optional[ConditionSpec] = None
    skipped: int = 0  # sequence to sequence: pairs (training and validation) left out, over the length limit


def make_eval_set(tokenizer: Tokenizer, texts: List[str], config: DataConfig,
                  conditions: Optional[List[Any]] = None, spec: Optional[ConditionSpec] = None) -> EvalSet:
    """``conditions`` (raw, one per text) are encoded with ``spec``; pairs
    over the length limit of a sequence-to-sequence run are left out and
    counted (``EvalSet.skipped``)."""
    skipped = 0
    if spec is not None and spec.kind == "text":
        (texts, conditions), skipped = _fitting_pairs(tokenizer, spec, texts, conditions, config.seq_len)
    chars = count_chars(texts, config.layout)
    if config.layout == "lines":
        owners: List[int] = []
        records = encode_records(tokenizer, texts, config.seq_len, owners)
        table = _condition_table(spec, conditions, owners)
        out = EvalSet("lines", None, records, chars, config.batch_size, config.seq_len, table)
        out.skipped = skipped
        return out
    return EvalSet("stream", encode_stream(tokenizer, texts), None, chars, config.batch_size, config.seq_len)


def _condition_table(spec: Optional[ConditionSpec], conditions: Optional[List[Any]],
                     owners: List[int]) -> Optional[torch.Tensor]:
    """The encoded condition of every window (row i: window i's record's)."""
    if spec is None:
        if conditions is not None:
            raise GenrnnError("the corpus has conditions but the model takes none")
        return None
    if conditions is None:
        raise GenrnnError(f"this model generates from a {spec.kind}: the corpus must give one per record")
    encoded = spec.encode(conditions)  # one row per record
    return encoded.index_select(0, torch.as_tensor(owners, dtype=torch.long))


@dataclass
class Split:
    """Training and validation texts, and their raw conditions (None without)."""

    train: List[str]
    val: List[str]
    train_conditions: Optional[List[Any]] = None
    val_conditions: Optional[List[Any]] = None


def split_documents(train_docs: Sequence[Document], val_docs: Optional[Sequence[Document]],
                    config: DataConfig, vectors: Optional[np.ndarray] = None,
                    val_vectors: Optional[np.ndarray] = None) -> Split:
    """Training and validation texts: ``val_docs`` if given, else a held-out
    part. ``vectors`` condition the training corpus's records, row by row."""
    texts, conditions = document_records(train_docs, config.layout, vectors)
    if not texts:
        raise GenrnnError("the training corpus has no text")
    if val_docs is not None:
        val, val_conditions = document_records(val_docs, config.layout, val_vectors)
        return Split(texts, val, conditions, val_conditions)
    train, val = split_texts(texts, config.val_fraction, config.layout, config.tokenizer != "char", conditions)
    if conditions is None:
        return Split(train, val)
    return Split(train, val, conditions[: len(train)], conditions[len(train) :])


def build_dataset(
    train_docs: Sequence[Document],
    val_docs: Optional[Sequence[Document]],
    config: DataConfig,
    *,
    seed: int,
    tokenizer: Optional[Tokenizer] = None,
    extend: Optional[Tokenizer] = None,
    condition: Optional[str] = None,
    condition_spec: Optional[ConditionSpec] = None,
    label_names: Optional[List[str]] = None,
    vectors: Optional[np.ndarray] = None,
    val_vectors: Optional[np.ndarray] = None,
) -> Dataset:
    """Split (unless ``val_docs`` is given), build the tokenizer from the
    training text (unless given, e.g. on resume) and lay out the batches.
    ``extend``: instead, take this tokenizer with the training text's new
    tokens added after its own (a run started from another, ``--init-from``).

    ``condition`` is the kind the records are conditioned on (label, vector,
    image) or None; its spec (label vocabulary, sizes) is built from the
    training split unless given (resume)."""
    split = split_documents(train_docs, val_docs, config, vectors, val_vectors)
    if condition == "text" and config.layout != "lines":
        raise GenrnnError("sequence to sequence needs one pair per record: --layout lines")
    train_texts, val_texts = split.train, split.val
    if tokenizer is None and extend is not None:
        tokenizer = extend.extended(train_texts)
    if tokenizer is None:
        both = train_texts + list(split.train_conditions or []) if condition == "text" and config.shared_vocab else []
        tokenizer = build_tokenizer(config.tokenizer, both or train_texts, lower=config.lower,
                                    vocab_size=config.vocab_size)
    spec = condition_spec
    if condition == "text" and spec is None:
        source = tokenizer if config.shared_vocab else build_tokenizer(
            config.tokenizer, split.train_conditions or [], lower=config.lower, vocab_size=config.vocab_size)
        spec = ConditionSpec.for_text(source, config.seq_len, config.shared_vocab)
    elif condition is not None and spec is None:
        spec = for_records(condition, split.train_conditions, label_names)
    skipped = 0
    if spec is not None and spec.kind == "text":
        (train_texts, split.train_conditions), n = _fitting_pairs(tokenizer, spec, train_texts,
                                                                  split.train_conditions, config.seq_len)
        skipped = n
        if not train_texts:
            raise GenrnnError(f"every training pair is over --seq-len {config.seq_len} tokens on one side; "
                              "give a larger --seq-len")
    if config.layout == "lines":
        owners: List[int] = []
        records = encode_records(tokenizer, train_texts, config.seq_len, owners)
        train = LineBatches(records, config.batch_size, seed,
                            conditions=_condition_table(spec, split.train_conditions, owners))
        n_targets = sum(len(r) - 1 for r in records)
    else:
        if spec is not None:
            raise GenrnnError("a condition needs one record per row: add --layout lines")
        tokens = encode_stream(tokenizer, train_texts)
        train = StreamBatches(tokens, config.batch_size, config.seq_len, config.state_span, seed)
        n_targets = len(tokens) - 1
    val = make_eval_set(tokenizer, val_texts, config, split.val_conditions, spec) if val_texts else None
    return Dataset(tokenizer, train, val, n_targets, spec, skipped + (val.skipped if val is not None else 0))


def pair_fits(tokenizer: Tokenizer, spec: ConditionSpec, target: str, source: str, seq_len: int) -> bool:
    """A (target, source) pair fits when the target with its two <eos> fills at most one
    window of ``seq_len`` targets and the source with its <eos> has at most ``seq_len`` tokens."""
    return len(tokenizer.encode_array(target)) + 1 <= seq_len and len(spec.source.encode_array(source)) + 1 <= seq_len


def _fitting_pairs(tokenizer: Tokenizer, spec: ConditionSpec, targets: List[str], sources: Optional[List[Any]],
                   seq_len: int) -> Tuple[Tuple[List[str], List[Any]], int]:
    """The (target, source) pairs whose both sides fit ``seq_len`` (a target
    with its two <eos>, a source with its one), and how many were left out: a
    sequence-to-sequence record is never cut into windows, its decoder state
    starts from its own source."""
    if sources is None:
        raise GenrnnError("sequence to sequence needs a source for every target (--source-field)")
    keep_t: List[str] = []
    keep_s: List[Any] = []
    for t, src in zip(targets, sources):
        if pair_fits(tokenizer, spec, t, src, seq_len):
            keep_t.append(t)
            keep_s.append(src)
    return (keep_t, keep_s), len(targets) - len(keep_t)

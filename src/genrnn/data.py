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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import DataConfig
from .corpora import Document
from .errors import GenrnnError
from .tokenizers import EOS_ID, PAD_ID, Tokenizer, build_tokenizer

IGNORE = -100  # target id that the loss skips


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor  # (B, T) int64 inputs
    y: torch.Tensor  # (B, T) int64 targets, IGNORE where padded
    reset: bool  # True: start this batch from a zero state


# -- splitting text -----------------------------------------------------------


def document_texts(docs: Sequence[Document], layout: str) -> List[str]:
    """Texts of the units a layout works on: documents (stream) or records (lines)."""
    if layout == "stream":
        return [d.text for d in docs if d.text.strip()]
    records: List[str] = []
    for d in docs:
        if d.record:  # a table row is one record even if a field holds a newline
            text = " ".join(d.text.split("\n")).strip()
            if text:
                records.append(text)
        else:
            records.extend(line for line in d.text.split("\n") if line.strip())
    return records


def split_texts(texts: List[str], val_fraction: float, layout: str, snap_to_space: bool) -> Tuple[List[str], List[str]]:
    """Hold out the last ``val_fraction`` for validation.

    stream: by characters (nanoGPT's split: the first 90% trains, the last 10%
    validates); the document holding the cut is cut in two. With a word
    tokenizer the cut moves to the next whitespace so no word is split.
    lines: the last records after a fixed shuffle (seed 0, so the split does not
    move with --seed).
    """
    if val_fraction <= 0:
        return texts, []
    if layout == "lines":
        order = np.random.default_rng(0).permutation(len(texts))
        n_val = max(1, int(round(len(texts) * val_fraction)))
        if n_val >= len(texts):
            raise GenrnnError(f"only {len(texts)} records: too few to hold out a validation split; use --val-fraction 0 or --val")
        shuffled = [texts[i] for i in order]
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


def encode_records(tokenizer: Tokenizer, texts: Sequence[str], seq_len: int) -> List[np.ndarray]:
    """``<eos> record <eos>`` per record; records longer than a window are cut
    into windows that overlap by one token so every target is kept once."""
    out: List[np.ndarray] = []
    for t in texts:
        ids = np.concatenate([[EOS_ID], np.asarray(tokenizer.encode_array(t), dtype=np.int64), [EOS_ID]])
        for start in range(0, len(ids) - 1, seq_len):
            out.append(ids[start : start + seq_len + 1])
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

    def __init__(self, records: List[np.ndarray], batch_size: int, seed: int, pool: int = 50):
        if not records:
            raise GenrnnError("no training records")
        self.records = records
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
        x, y = pad_records([self.records[i] for i in self._plan(epoch)[index]])
        return Batch(x, y, reset=True)


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
                 num_chars: int, batch_size: int, seq_len: int):
        self.layout = layout
        self.tokens = tokens
        self.records = records
        self.num_chars = num_chars
        self.batch_size = batch_size
        self.seq_len = seq_len
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
            recs = [self.records[j] for j in order[i : i + self.batch_size]]
            x, y = pad_records(recs)
            yield Batch(x, y, reset=True)
            seen += int((y != IGNORE).sum())
            if max_tokens is not None and seen >= max_tokens:
                return


@dataclass
class Dataset:
    tokenizer: Tokenizer
    train: object  # StreamBatches | LineBatches
    val: Optional[EvalSet]
    train_targets: int


def make_eval_set(tokenizer: Tokenizer, texts: List[str], config: DataConfig) -> EvalSet:
    chars = count_chars(texts, config.layout)
    if config.layout == "lines":
        return EvalSet("lines", None, encode_records(tokenizer, texts, config.seq_len), chars, config.batch_size, config.seq_len)
    return EvalSet("stream", encode_stream(tokenizer, texts), None, chars, config.batch_size, config.seq_len)


def split_documents(train_docs: Sequence[Document], val_docs: Optional[Sequence[Document]],
                    config: DataConfig) -> Tuple[List[str], List[str]]:
    """Training and validation texts: ``val_docs`` if given, else a held-out part."""
    texts = document_texts(train_docs, config.layout)
    if not texts:
        raise GenrnnError("the training corpus has no text")
    if val_docs is not None:
        return texts, document_texts(val_docs, config.layout)
    return split_texts(texts, config.val_fraction, config.layout, snap_to_space=config.tokenizer != "char")


def build_dataset(
    train_docs: Sequence[Document],
    val_docs: Optional[Sequence[Document]],
    config: DataConfig,
    *,
    seed: int,
    tokenizer: Optional[Tokenizer] = None,
) -> Dataset:
    """Split (unless ``val_docs`` is given), build the tokenizer from the
    training text (unless given, e.g. on resume) and lay out the batches."""
    train_texts, val_texts = split_documents(train_docs, val_docs, config)
    if tokenizer is None:
        tokenizer = build_tokenizer(config.tokenizer, train_texts, lower=config.lower, vocab_size=config.vocab_size)
    if config.layout == "lines":
        records = encode_records(tokenizer, train_texts, config.seq_len)
        train = LineBatches(records, config.batch_size, seed)
        n_targets = sum(len(r) - 1 for r in records)
    else:
        tokens = encode_stream(tokenizer, train_texts)
        train = StreamBatches(tokens, config.batch_size, config.seq_len, config.state_span, seed)
        n_targets = len(tokens) - 1
    val = make_eval_set(tokenizer, val_texts, config) if val_texts else None
    return Dataset(tokenizer, train, val, n_targets)

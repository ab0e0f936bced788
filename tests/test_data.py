"""Splits, the stream and lines layouts, and evaluation batches.

Most stream tests use ``tokens = arange(N)``: a token's value is its position,
so a batch says exactly which part of the stream it came from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genrnn.config import DataConfig
from genrnn.corpora import Document
from genrnn.data import (
    IGNORE,
    EvalSet,
    LineBatches,
    StreamBatches,
    build_dataset,
    count_chars,
    document_texts,
    encode_records,
    encode_stream,
    make_eval_set,
    pad_records,
    split_texts,
)
from genrnn.errors import GenrnnError
from genrnn.tokenizers import EOS_ID, PAD_ID, build_tokenizer

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def make_records(n: int, seed: int = 0, max_words: int = 12):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, max_words + 1)))) for _ in range(n)]


def epoch_batches(batches, epoch: int):
    return [batches.get(epoch, i) for i in range(batches.steps_per_epoch)]


# -- stream layout ----------------------------------------------------------------


def test_stream_targets_are_inputs_shifted_by_one():
    text = "hello there, general kenobi. " * 20
    tokenizer = build_tokenizer("char", text)
    tokens = encode_stream(tokenizer, [text])
    sb = StreamBatches(tokens, batch_size=4, seq_len=16, span=3, seed=5)
    for batch in epoch_batches(sb, 0):
        assert batch.x.shape == batch.y.shape == (4, 16)
        assert batch.x.dtype == batch.y.dtype == torch.int64
        # each row is a slice of the token tensor, and y is the same slice moved by one
        for x, y in zip(batch.x, batch.y):
            hits = [s for s in range(len(tokens) - 16) if torch.equal(tokens[s : s + 16], x)]
            assert hits and any(torch.equal(tokens[s + 1 : s + 17], y) for s in hits)
        assert torch.equal(batch.x[:, 1:], batch.y[:, :-1])


def test_stream_batches_are_slices_of_the_stream():
    tokens = torch.arange(1000)
    sb = StreamBatches(tokens, batch_size=5, seq_len=8, span=4, seed=0)
    for epoch in (0, 1):
        for batch in epoch_batches(sb, epoch):
            assert batch.x.shape == (5, 8)
            start = batch.x[:, :1]
            assert torch.equal(batch.x, start + torch.arange(8))
            assert torch.equal(batch.y, batch.x + 1)
            assert int(batch.y.max()) <= 999


def test_stream_is_deterministic_and_reshuffled_per_epoch():
    tokens = torch.arange(3000)
    a = StreamBatches(tokens, batch_size=4, seq_len=10, span=5, seed=1)
    b = StreamBatches(tokens, batch_size=4, seq_len=10, span=5, seed=1)
    c = StreamBatches(tokens, batch_size=4, seq_len=10, span=5, seed=2)
    first = epoch_batches(a, 0)
    # the same (seed, epoch, index) gives the same batch, whatever was asked before
    b.get(3, 7)
    for i in reversed(range(a.steps_per_epoch)):
        assert torch.equal(b.get(0, i).x, first[i].x)
    assert torch.equal(a.get(0, 5).y, first[5].y)
    # other epochs and other seeds are ordered differently
    assert any(not torch.equal(x.x, y.x) for x, y in zip(first, epoch_batches(a, 1)))
    assert any(not torch.equal(x.x, y.x) for x, y in zip(first, epoch_batches(c, 0)))


def test_stream_state_is_carried_along_lanes():
    tokens = torch.arange(5000)
    sb = StreamBatches(tokens, batch_size=6, seq_len=7, span=8, seed=3)
    assert sb.steps_per_epoch == sb.rounds * sb.span
    assert sb.rounds >= 2 and sb.span >= 2
    for epoch in (0, 1):
        batches = epoch_batches(sb, epoch)
        for i, batch in enumerate(batches):
            assert batch.reset == (i % sb.span == 0)
            if i % sb.span:  # within a round: lane i picks up where it stopped
                prev = batches[i - 1]
                assert torch.equal(batch.x[:, 0], prev.y[:, -1])
                assert torch.equal(batch.x[:, 0], prev.x[:, -1] + 1)


def test_stream_epoch_covers_nearly_all_windows_once():
    tokens = torch.arange(10_007)
    T, B = 16, 8
    sb = StreamBatches(tokens, batch_size=B, seq_len=T, span=7, seed=4)
    n_windows = (len(tokens) - T) // T  # what fits after any offset
    for epoch in (0, 1, 2):
        starts = torch.cat([b.x[:, 0] for b in epoch_batches(sb, epoch)]).tolist()
        assert len(starts) == len(set(starts))  # no window twice
        offset = starts[0] % T
        assert all(s % T == offset for s in starts)  # one grid per epoch
        assert max(starts) + T <= len(tokens) - 1
        # a few windows at most are dropped to make the rounds even
        assert n_windows - len(starts) < sb.batch_size * sb.rounds
        assert len(starts) >= 0.97 * n_windows
    offsets = {epoch_batches(sb, e)[0].x[0, 0].item() % T for e in range(6)}
    assert len(offsets) > 1  # the cut moves between epochs


def test_stream_small_corpus_shrinks_the_batch():
    tokens = torch.arange(50)
    sb = StreamBatches(tokens, batch_size=64, seq_len=10, span=32, seed=0)
    assert sb.batch_size == 4  # (50 - 10) // 10 windows fit after any offset
    batches = epoch_batches(sb, 0)
    assert all(b.x.shape == (4, 10) for b in batches)
    # two tokens per window are enough when the offset is the worst one
    assert StreamBatches(torch.arange(20), batch_size=8, seq_len=10, span=1, seed=0).batch_size == 1


def test_stream_text_just_over_one_window_still_trains():
    sb = StreamBatches(torch.arange(13), batch_size=2, seq_len=10, span=4, seed=0)
    assert sb.batch_size == 1 and sb.max_offset == 2
    for epoch in range(20):  # every offset keeps the window inside the text
        batch = sb.get(epoch, 0)
        assert batch.y[0, -1] <= 12 and torch.equal(batch.y, batch.x + 1)


@pytest.mark.parametrize("n", [0, 1, 10])
def test_stream_too_short_raises(n):
    with pytest.raises(GenrnnError, match="too few"):
        StreamBatches(torch.arange(n), batch_size=2, seq_len=10, span=4, seed=0)


def test_encode_stream_puts_eos_before_every_document():
    tokenizer = build_tokenizer("char", ["ab", "c"])
    tokens = encode_stream(tokenizer, ["ab", "c"])
    a, b, c = tokenizer.encode("abc")
    assert tokens.tolist() == [EOS_ID, a, b, EOS_ID, c]
    assert tokens.dtype == torch.int64
    assert encode_stream(tokenizer, []).tolist() == []


# -- lines layout ----------------------------------------------------------------------


def decode_rows(batch):
    """Each row back to its record: the inputs up to the last target, then that target."""
    rows = []
    for x, y in zip(batch.x, batch.y):
        n = int((y != IGNORE).sum())
        assert bool((y[:n] != IGNORE).all()) and bool((y[n:] == IGNORE).all())
        assert bool((x[n:] == PAD_ID).all())
        assert bool((x[:n] != PAD_ID).all())
        assert torch.equal(x[1:n], y[: n - 1])
        rows.append(x[:n].tolist() + [int(y[n - 1])])
    return rows


def test_lines_padding_and_eos_framing():
    texts = ["ab", "abcab", "b", "cabbac ab"]
    tokenizer = build_tokenizer("char", texts)
    records = encode_records(tokenizer, texts, seq_len=64)
    lb = LineBatches(records, batch_size=3, seed=0)
    seen = []
    for batch in epoch_batches(lb, 0):
        assert batch.reset
        assert batch.x.shape == batch.y.shape
        longest = max(len(r) for r in decode_rows(batch))
        assert batch.x.shape[1] == longest - 1  # padded to the longest row only
        for row in decode_rows(batch):
            # <eos> record <eos>: the first input and the last target are <eos>
            assert row[0] == EOS_ID and row[-1] == EOS_ID
            assert EOS_ID not in row[1:-1]
            seen.append(tokenizer.decode(row[1:-1]))
    assert sorted(seen) == sorted(texts)


def test_pad_records_exact():
    x, y = pad_records([np.array([2, 5, 6, 2]), np.array([2, 7, 2])])
    assert x.tolist() == [[2, 5, 6], [2, 7, PAD_ID]]
    assert y.tolist() == [[5, 6, 2], [7, 2, IGNORE]]


def test_lines_every_record_once_per_epoch():
    texts = make_records(203, seed=1)
    tokenizer = build_tokenizer("word", texts)
    records = encode_records(tokenizer, texts, seq_len=100)
    lb = LineBatches(records, batch_size=8, seed=7, pool=5)
    assert lb.steps_per_epoch == 26  # ceil(203 / 8)
    want = sorted(tuple(r.tolist()) for r in records)
    orders = []
    for epoch in (0, 1):
        batches = epoch_batches(lb, epoch)
        assert all(b.x.shape[0] <= 8 for b in batches)
        rows = [tuple(r) for b in batches for r in decode_rows(b)]
        assert sorted(rows) == want
        orders.append(rows)
    assert orders[0] != orders[1]  # reshuffled
    again = LineBatches(records, batch_size=8, seed=7, pool=5)
    assert [tuple(r) for b in epoch_batches(again, 0) for r in decode_rows(b)] == orders[0]


def test_lines_batches_group_similar_lengths():
    texts = make_records(800, seed=2, max_words=40)
    tokenizer = build_tokenizer("word", texts)
    records = encode_records(tokenizer, texts, seq_len=1000)
    lengths = np.array([len(r) for r in records])
    lb = LineBatches(records, batch_size=8, seed=0, pool=20)
    spreads = []
    for batch in epoch_batches(lb, 0):
        n = (batch.y != IGNORE).sum(dim=1)
        spreads.append(int(n.max() - n.min()))
    rng = np.random.default_rng(0)
    random_spreads = [np.ptp(lengths[idx]) for idx in np.array_split(rng.permutation(len(records)), 100)]
    assert np.mean(spreads) < 0.15 * np.mean(random_spreads)
    # ...while batch order is still shuffled, not sorted by length
    maxima = [int((b.y != IGNORE).sum(dim=1).max()) for b in epoch_batches(lb, 0)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_encode_records_cuts_long_records_keeping_every_target_once():
    tokenizer = build_tokenizer("char", "abcdefghij")
    records = encode_records(tokenizer, ["abcdefghij", "ab"], seq_len=4)
    ids = [EOS_ID] + tokenizer.encode("abcdefghij") + [EOS_ID]  # 12 tokens, 11 targets
    assert [r.tolist() for r in records[:3]] == [ids[0:5], ids[4:9], ids[8:12]]
    assert records[3].tolist() == [EOS_ID] + tokenizer.encode("ab") + [EOS_ID]
    assert sum(len(r) - 1 for r in records) == 11 + 3


def test_line_batches_need_records():
    with pytest.raises(GenrnnError):
        LineBatches([], batch_size=4, seed=0)


# -- splits -----------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.33, 0.5])
def test_stream_split_char_is_at_exact_character(fraction):
    texts = ["first document here", "second one", "and a third, longer document to finish"]
    total = sum(len(t) for t in texts)
    train, val = split_texts(texts, fraction, "stream", snap_to_space=False)
    cut = int(total * (1 - fraction))
    assert sum(len(t) for t in train) == cut
    assert "".join(train) + "".join(val) == "".join(texts)
    assert sum(len(t) for t in val) == total - cut
    # the documents stay documents: only the one holding the cut is cut
    assert len(train) + len(val) in (len(texts), len(texts) + 1)


def test_stream_split_cut_inside_a_document():
    train, val = split_texts(["aaaaaaaaaa", "bbbbbbbbbb"], 0.25, "stream", snap_to_space=False)
    assert train == ["aaaaaaaaaa", "bbbbb"] and val == ["bbbbb"]
    train, val = split_texts(["aaaaaaaaaa", "bbbbbbbbbb"], 0.5, "stream", snap_to_space=False)
    assert train == ["aaaaaaaaaa"] and val == ["bbbbbbbbbb"]


def test_stream_split_word_moves_to_whitespace():
    text = "one two three four five six seven eight nine ten"
    cut = int(len(text) * (1 - 0.35))
    assert not text[cut].isspace() and not text[cut - 1].isspace()  # the cut is inside a word
    train, val = split_texts([text], 0.35, "stream", snap_to_space=True)
    assert train[0] + val[0] == text
    head = len(train[0])
    assert head >= cut and val[0][0].isspace()
    assert not any(c.isspace() for c in text[cut:head])  # the first whitespace after the cut
    words = text.split()
    assert train[0].split() + val[0].split() == words  # no word split in two


def test_stream_split_too_small_raises():
    with pytest.raises(GenrnnError, match="too small"):
        split_texts(["abcdefghijklmnop"], 0.1, "stream", snap_to_space=True)  # no space after the cut
    assert split_texts(["abc"], 0.0, "stream", snap_to_space=False) == (["abc"], [])


def test_lines_split_is_deterministic_and_independent_of_the_seed():
    texts = [f"record {i}" for i in range(50)]
    train, val = split_texts(texts, 0.2, "lines", snap_to_space=False)
    assert len(val) == 10 and len(train) == 40
    assert sorted(train + val) == sorted(texts)
    assert split_texts(texts, 0.2, "lines", snap_to_space=False) == (train, val)
    assert val != texts[-10:]  # shuffled, not the last lines
    # the training seed never reaches the split: two datasets with other seeds agree
    docs = [Document("\n".join(texts), "mem", False)]
    config = DataConfig(layout="lines", val_fraction=0.2, batch_size=4, seq_len=32)
    a = build_dataset(docs, None, config, seed=1)
    b = build_dataset(docs, None, config, seed=99)
    assert [r.tolist() for r in a.val.records] == [r.tolist() for r in b.val.records]
    # (while the seed does reach the training order)
    assert [r.tolist() for r in a.train.records] == [r.tolist() for r in b.train.records]
    rows = [[tuple(r) for r in decode_rows(batch)] for batch in (a.train.get(0, 0), b.train.get(0, 0))]
    assert rows[0] != rows[1]
    with pytest.raises(GenrnnError):
        split_texts(["only one"], 0.5, "lines", snap_to_space=False)


def test_count_chars():
    texts = ["abc", "de", "f"]
    assert count_chars(texts, "stream") == 6 + 2  # <eos> before documents 2 and 3
    assert count_chars(texts, "lines") == 6 + 3  # each record's closing <eos>
    assert count_chars([], "stream") == 0
    # stream with a char tokenizer: exactly one char per target
    tokenizer = build_tokenizer("char", texts)
    assert len(encode_stream(tokenizer, texts)) - 1 == count_chars(texts, "stream")
    records = encode_records(tokenizer, texts, seq_len=100)
    assert sum(len(r) - 1 for r in records) == count_chars(texts, "lines")


def test_document_texts():
    docs = [Document("line one\n\nline two\n", "f", False), Document("a row\nwith a newline", "t:2", True),
            Document("   ", "blank", False)]
    assert document_texts(docs, "lines") == ["line one", "line two", "a row with a newline"]
    assert document_texts(docs, "stream") == ["line one\n\nline two\n", "a row\nwith a newline"]


# -- evaluation batches ----------------------------------------------------------------


@pytest.mark.parametrize("n_tokens,batch_size,seq_len", [(101, 4, 7), (2, 4, 7), (57, 3, 5), (64, 8, 8), (30, 64, 4)])
def test_eval_stream_counts_every_target_once(n_tokens, batch_size, seq_len):
    tokens = torch.arange(n_tokens) + 3
    es = EvalSet("stream", tokens, None, num_chars=n_tokens - 1, batch_size=batch_size, seq_len=seq_len)
    assert es.num_targets == n_tokens - 1
    batches = list(es.batches())
    targets = torch.cat([b.y[b.y != IGNORE] for b in batches])
    assert sorted(targets.tolist()) == tokens[1:].tolist()  # each target exactly once
    lanes = batches[0].x.shape[0]
    for i, b in enumerate(batches):
        assert b.reset == (i == 0)
        assert b.x.shape[0] == lanes and b.x.shape[1] <= seq_len
        real = b.y != IGNORE
        assert torch.equal(b.y[real], b.x[real] + 1)  # inputs and targets aligned
        assert bool((b.x[~real] == PAD_ID).all())
    # each lane is contiguous across batches, so carrying the state is right
    x = torch.cat([b.x for b in batches], dim=1)
    y = torch.cat([b.y for b in batches], dim=1)
    real = y != IGNORE
    for lane_x, lane_real in zip(x, real):
        row = lane_x[lane_real]
        if len(row):  # the last lanes may be all padding
            assert torch.equal(row, row[0] + torch.arange(len(row)))


def test_eval_stream_max_tokens():
    tokens = torch.arange(200)
    es = EvalSet("stream", tokens, None, num_chars=199, batch_size=4, seq_len=8)
    n = sum(int((b.y != IGNORE).sum()) for b in es.batches(max_tokens=50))
    assert n == 50


def test_eval_lines_counts_every_record_target_once():
    texts = make_records(37, seed=3)
    tokenizer = build_tokenizer("word", texts)
    es = make_eval_set(tokenizer, texts, DataConfig(layout="lines", batch_size=5, seq_len=6))
    assert es.num_targets == sum(len(r) - 1 for r in es.records)
    batches = list(es.batches())
    assert sum(int((b.y != IGNORE).sum()) for b in batches) == es.num_targets
    rows = sorted(tuple(r) for b in batches for r in decode_rows(b))
    assert rows == sorted(tuple(r.tolist()) for r in es.records)
    assert es.num_chars == count_chars(texts, "lines")


def test_make_eval_set_stream():
    texts = ["some text", "more"]
    tokenizer = build_tokenizer("char", texts)
    es = make_eval_set(tokenizer, texts, DataConfig(batch_size=2, seq_len=4))
    assert es.tokens.tolist() == encode_stream(tokenizer, texts).tolist()
    assert es.num_targets == es.num_chars == 9 + 4 + 1


def test_build_dataset_stream():
    text = "the cat sat on the mat. " * 40
    config = DataConfig(batch_size=4, seq_len=16, val_fraction=0.1, state_span=4)
    ds = build_dataset([Document(text, "mem", False)], None, config, seed=0)
    cut = int(len(text) * 0.9)
    assert ds.train_targets == cut  # <eos> + cut chars: cut targets
    assert ds.val.num_targets == len(text) - cut
    assert isinstance(ds.train, StreamBatches) and ds.train.batch_size == 4
    assert ds.tokenizer.decode(ds.val.tokens.tolist()) == text[cut:]

"""Byte-level BPE tokens (Hugging Face tokenizers): nothing is <unk>, decoding
streams whole characters, saved as JSON, and it trains, samples and scores in
every layout."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("tokenizers", reason="pip install 'genrnn[bpe]'")

import genrnn  # noqa: E402
from genrnn.tokenizers import SPECIALS, UNK_ID, build_tokenizer, tokenizer_from_dict  # noqa: E402

WORDS = "the cat sat on a mat and then it ran off to see the dog who was not there".split()


def text(lines=300, seed=0) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) + "." for _ in range(lines))


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("bpe", [text() + "\nNaïve café — “quotes” 😀"], vocab_size=400)


def test_merges_make_tokens_longer_than_bytes(tok):
    t = text(50, seed=1)
    ids = tok.encode(t)
    assert len(ids) < len(t) / 2  # common words became single tokens
    assert 256 + len(SPECIALS) < tok.vocab_size <= 400 and min(ids) >= len(SPECIALS)  # fewer if merges run out


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=80))
def test_any_text_round_trips_and_is_never_unknown(tok, s):
    ids = tok.encode(s)
    assert UNK_ID not in ids
    assert tok.decode(ids) == s.encode("utf-8", "replace").decode("utf-8")


def test_stream_decoding_keeps_characters_split_over_tokens_whole(tok):
    s = "😀 naïve 日本語 <eos> end"  # never seen: bytes only, 4-byte characters split over tokens
    ids = tok.encode(s)
    dec = tok.decoder()
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) == s
    assert all("\ufffd" not in p for p in pieces)  # a piece is never half a character
    assert "<eos>" in tok.decode(ids)  # text that spells a special token stays text


def test_saved_as_the_library_json_and_read_back(tok):
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["kind"] == "bpe" and d["hf"]["model"]["type"] == "BPE"
    again = tokenizer_from_dict(d)
    s = "the dog ran to café 😀"
    assert again.encode(s) == tok.encode(s) and again.vocab_size == tok.vocab_size


@pytest.mark.parametrize("broken", [{"kind": "bpe"}, {"kind": "bpe", "format": 1, "lower": False, "hf": {"x": 1}},
                                    {"kind": "bpe", "format": 9, "lower": False, "hf": {}}])
def test_a_corrupt_bpe_entry_is_a_clear_error(broken):
    with pytest.raises(genrnn.GenrnnError, match="corrupt"):
        tokenizer_from_dict(broken)


def test_too_small_a_vocabulary_is_refused():
    with pytest.raises(genrnn.GenrnnError, match="at least 259"):
        build_tokenizer("bpe", ["abc"], vocab_size=100)


def test_a_missing_library_says_how_to_install_it(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(genrnn.GenrnnError, match=r"genrnn\[bpe\]"):
        build_tokenizer("bpe", ["some text"], vocab_size=300)


TINY = dict(hidden_size=32, num_layers=1, embedding_size=16, seq_len=24, batch_size=8, sample_every=0, device="cpu")


@pytest.mark.parametrize("layout", ["stream", "lines"])
def test_a_bpe_run_trains_samples_and_reports_bits_per_char(tmp_path, layout):
    (tmp_path / "t.txt").write_text(text(400))
    run = genrnn.train(tmp_path / "t.txt", out=tmp_path / layout, tokenizer="bpe", vocab_size=300, layout=layout,
                       max_steps=30, **TINY)
    assert run.tokenizer.kind == "bpe"
    ev = run.evaluate()
    assert ev["chars"] > ev["tokens"]  # bits/char counts characters, not tokens
    assert ev["bits_per_char"] == pytest.approx(ev["loss"] * ev["tokens"] / ev["chars"] / 0.6931471805599453)
    again = genrnn.load(run.run_dir, device="cpu")
    a = again.complete(["the cat"], length=20, temperature=0.8, seed=1)[0]
    assert a.text == run.complete(["the cat"], length=20, temperature=0.8, seed=1)[0].text
    assert 1 <= a.tokens <= 20 and a.finish_reason in ("length", "eos")


def test_a_bpe_sequence_to_sequence_run_translates(tmp_path):
    rng = random.Random(0)
    rows = []
    for _ in range(300):
        src = " ".join(rng.choice(WORDS) for _ in range(4))
        rows.append(f"{src}\t{' '.join(reversed(src.split()))}")
    (tmp_path / "p.tsv").write_text("\n".join(rows))
    run = genrnn.train(tmp_path / "p.tsv", out=tmp_path / "s2s", task="seq2seq", source_field="0", target_field="1",
                       tokenizer="bpe", vocab_size=300, max_steps=20, **dict(TINY, seq_len=32))
    out = run.translate(["the cat sat on"], beam=2)
    assert isinstance(out[0], str)

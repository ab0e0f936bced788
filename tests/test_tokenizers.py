"""Tokenizer round trips, the special ids, the saved dict, and word spacing."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genrnn.errors import GenrnnError
from genrnn.tokenizers import (
    EOS_ID,
    PAD_ID,
    SPECIALS,
    TOKENIZERS,
    UNK_ID,
    CharTokenizer,
    Tokenizer,
    WordTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that sit next to each other in tricky ways: apostrophes and hyphens
# inside words, the literal <unk> and its parts, quotes, brackets, digits.
TRICKY = ["a", "b", "don", "t", "'", "’", "‘", "-", "_", "<", ">", "unk", "<unk>", '"', "“", "”",
          "(", ")", ".", ":", ",", "!", "—", "3", "0", "\n", " ", "\t", "é", "́"]
tricky_text = st.lists(st.sampled_from(TRICKY), max_size=30).map("".join)
any_text = st.one_of(st.text(max_size=60), tricky_text)

ALICE = (
    "Alice was beginning to get very tired of sitting by her sister on the\n"
    "bank, and of having nothing to do: once or twice she had peeped into\n"
    "the book her sister was reading, “and what is the use of a book,” thought\n"
    "Alice “without pictures or conversations?”\n\n"
    "So she was considering (as well as she could) whether the Mock-Turtle’s\n"
    'daisy-chain was worth it. "Oh dear! I shall be late!" said the Rabbit.\n'
)
WORD_CORPUS = ALICE + " ".join(TRICKY) + " the <unk> company 's stock rose 3.0 % -- don't"


def _char() -> CharTokenizer:
    return build_tokenizer("char", [ALICE])


def _word() -> WordTokenizer:
    return build_tokenizer("word", [WORD_CORPUS])


def test_special_ids_are_shared():
    assert (PAD_ID, UNK_ID, EOS_ID) == (0, 1, 2)
    assert SPECIALS == ("<pad>", "<unk>", "<eos>")
    assert set(TOKENIZERS) == {"char", "word", "whitespace", "bpe"}
    for kind, cls in TOKENIZERS.items():
        tok = build_tokenizer(kind, "hello world")
        assert type(tok) is cls and isinstance(tok, Tokenizer) and tok.kind == kind
        assert [tok.token_str(i) for i in range(3)] == list(SPECIALS)


# --- char ---------------------------------------------------------------------------------


def test_char_vocabulary_is_sorted_by_code_point_and_deterministic():
    tok = build_tokenizer("char", ["bca", "ébz"])
    assert [tok.token_str(i) for i in range(3, tok.vocab_size)] == ["a", "b", "c", "z", "é"]
    assert tok.to_dict() == build_tokenizer("char", ["ébz", "bca"]).to_dict()


def test_char_round_trip_is_exact():
    tok = _char()
    assert tok.decode(tok.encode(ALICE)) == ALICE


def test_char_unseen_characters_are_unk():
    tok = build_tokenizer("char", "Today is")
    ids = tok.encode("Today 🙂 is")
    assert ids[6] == UNK_ID
    assert tok.decode(ids) == "Today \ufffd is"


@PROPERTY
@given(st.text(min_size=1, max_size=80))
def test_char_round_trip_on_any_text(text):
    tok = build_tokenizer("char", [text])
    assert tok.decode(tok.encode(text)) == text


def test_char_vocab_size_keeps_the_most_frequent_ties_by_code_point():
    tok = build_tokenizer("char", "aaabbbcc d", vocab_size=3 + 2)
    assert [tok.token_str(i) for i in range(3, tok.vocab_size)] == ["a", "b"]
    assert tok.encode("abcd") == [3, 4, UNK_ID, UNK_ID]


def test_char_lower():
    tok = build_tokenizer("char", "Hello", lower=True)
    assert [tok.token_str(i) for i in range(3, tok.vocab_size)] == ["e", "h", "l", "o"]
    assert tok.encode("HELLO") == tok.encode("hello")
    assert UNK_ID not in tok.encode("HeLLo")


# --- word ---------------------------------------------------------------------------------


def _tokens(tok: Tokenizer, text: str) -> list[str]:
    return [tok.token_str(i) for i in tok.encode(text)]


def test_word_tokens():
    tok = build_tokenizer("word", "x")
    text = "Don't stop, Mock-Turtle’s _very_ snake_case\n\n(3.5)"
    assert tok.encode(text) == [UNK_ID] * 15
    tok = build_tokenizer("word", text)
    assert _tokens(tok, text) == [
        "Don't", "stop", ",", "Mock-Turtle’s", "_", "very", "_", "snake_case",
        "\n", "\n", "(", "3", ".", "5", ")",
    ]


def test_word_decode_reads_naturally():
    tok = build_tokenizer("word", "Alice was beginning , to get ( very ) tired .")
    ids = tok.encode("Alice was beginning , to get ( very ) tired .")
    assert tok.decode(ids) == "Alice was beginning, to get (very) tired."


@pytest.mark.parametrize(
    "text",
    [
        'He said "hello there" and left.',
        '"Oh dear!" said the Rabbit. "I shall be late!"\n"Yes," she said.',
        "“I think—” (for, you see, she was _very_ tired)\n\nThe end.",
        "‘Off with her head!’ the Queen shouted; don’t you see?",
        "It costs $5, up 3.0% at 10:30 [maybe] {or not} -- who knows?",
        "the <unk> company 's stock fell\n",
    ],
)
def test_word_decode_restores_written_text(text):
    tok = build_tokenizer("word", text)
    assert tok.decode(tok.encode(text)) == text


def test_word_ptb_unk_round_trips():
    text = "the <unk> company said\n"
    tok = build_tokenizer("word", [text, "more text"])
    ids = tok.encode(text)
    assert ids[1] == UNK_ID and "<unk>" not in [tok.token_str(i) for i in range(3, tok.vocab_size)]
    assert tok.decode(ids) == text


def test_word_never_glues_tokens_together():
    tok = build_tokenizer("word", "don ' t < unk > a - b")
    for text in ["don ' t", "< unk >", "a - b", "don ’ t"]:
        ids = tok.encode(text)
        assert tok.encode(tok.decode(ids)) == ids


@PROPERTY
@given(any_text)
def test_word_decode_is_idempotent_on_any_text(text):
    tok = build_tokenizer("word", [text, "x"])
    ids = tok.encode(text)
    assert tok.encode(tok.decode(ids)) == ids


@PROPERTY
@given(st.lists(st.integers(1, 200), max_size=40))
def test_word_decode_of_any_ids_encodes_back(ids):
    tok = _word()
    ids = [i % tok.vocab_size for i in ids]
    expected = [i for i in ids if i not in (PAD_ID, EOS_ID)]
    assert tok.encode(tok.decode(ids)) == expected


def test_word_vocabulary_order_and_cap():
    tok = build_tokenizer("word", ["b a c", "a c d ."], vocab_size=3 + 3)
    # Most frequent first, ties in order of first occurrence.
    assert [tok.token_str(i) for i in range(3, tok.vocab_size)] == ["a", "c", "b"]
    assert tok.encode("d b") == [UNK_ID, 5]
    assert tok.to_dict() == build_tokenizer("word", ["b a c", "a c d ."], vocab_size=6).to_dict()


def test_word_lower():
    tok = build_tokenizer("word", "The cat. the Cat", lower=True)
    assert [tok.token_str(i) for i in range(3, tok.vocab_size)] == ["the", "cat", "."]
    assert tok.encode("THE CAT") == tok.encode("the cat") == [3, 4]


# --- both kinds ---------------------------------------------------------------------------

KINDS = pytest.mark.parametrize("kind", ["char", "word", "whitespace"])


@KINDS
def test_every_id_decodes(kind):
    tok = build_tokenizer(kind, WORD_CORPUS)
    for i in range(tok.vocab_size):
        assert isinstance(tok.decode([i]), str)
        assert isinstance(tok.token_str(i), str)
    assert tok.decode([PAD_ID, EOS_ID]) == ""
    assert tok.decode([UNK_ID]) == ("\ufffd" if kind == "char" else "<unk>")
    assert tok.decode(np.array([0, 1, 2, 3])) == tok.decode([0, 1, 2, 3])


@KINDS
@pytest.mark.parametrize("bad", [-1, "size"])
def test_out_of_range_ids_raise_value_error(kind, bad):
    tok = build_tokenizer(kind, "some text")
    i = tok.vocab_size if bad == "size" else bad
    with pytest.raises(ValueError):
        tok.decode([3, i])
    with pytest.raises(ValueError):
        tok.decoder().push(i)
    with pytest.raises(ValueError):
        tok.token_str(i)


@KINDS
@PROPERTY
@given(ids=st.lists(st.integers(0, 10_000), max_size=50))
def test_stream_decoder_equals_decode(kind, ids):
    tok = _char() if kind == "char" else _word()
    ids = [i % tok.vocab_size for i in ids]
    d = tok.decoder()
    assert "".join(d.push(i) for i in ids) == tok.decode(ids)


@KINDS
@pytest.mark.parametrize("lower", [False, True])
def test_dict_json_round_trip(kind, lower):
    tok = build_tokenizer(kind, WORD_CORPUS, lower=lower, vocab_size=40)
    d = tok.to_dict()
    assert d["kind"] == kind and d["format"] == 1
    back = tokenizer_from_dict(json.loads(json.dumps(d)))
    assert type(back) is type(tok) and back.to_dict() == d
    probe = ALICE + " 🙂 ÉTÉ"
    assert back.encode(probe) == tok.encode(probe)
    assert type(tok).from_dict(d).to_dict() == d


def _corruptions() -> list:
    good = build_tokenizer("char", "abc").to_dict()
    out = [[], "char", None]

    def edit(fn):
        d = copy.deepcopy(good)
        fn(d)
        out.append(d)

    edit(lambda d: d.pop("kind"))
    edit(lambda d: d.update(kind="bpe2"))
    edit(lambda d: d.update(kind=["char"]))
    edit(lambda d: d.pop("vocab"))
    edit(lambda d: d.update(format=2))
    edit(lambda d: d.update(format=True))
    edit(lambda d: d.update(lower="no"))
    edit(lambda d: d.update(extra=1))
    edit(lambda d: d.update(vocab="abc"))
    edit(lambda d: d.update(vocab=[*SPECIALS, 7]))
    edit(lambda d: d.update(vocab=["a", *SPECIALS]))
    edit(lambda d: d.update(vocab=list(SPECIALS)))
    edit(lambda d: d.update(vocab=[*SPECIALS, "a", "a"]))
    edit(lambda d: d.update(vocab=[*SPECIALS, "ab"]))
    edit(lambda d: d.update(kind="word", vocab=[*SPECIALS, "two words"]))
    edit(lambda d: d.update(kind="word", vocab=[*SPECIALS, "<unk>"]))
    return out


@pytest.mark.parametrize("d", _corruptions())
def test_corrupt_dicts_raise_genrnn_error(d):
    with pytest.raises(GenrnnError, match="corrupt or unsupported"):
        tokenizer_from_dict(d)


def test_from_dict_checks_the_kind():
    with pytest.raises(GenrnnError, match="kind"):
        WordTokenizer.from_dict(build_tokenizer("char", "abc").to_dict())


@pytest.mark.parametrize(
    "kind, texts, kwargs",
    [
        ("bpe2", ["abc"], {}),
        ("char", [], {}),
        ("char", ["", ""], {}),
        ("word", [" \t "], {}),
        ("word", ["<unk> <unk>"], {}),
        ("char", ["abc"], {"vocab_size": 3}),
        ("word", ["abc"], {"vocab_size": "10"}),
    ],
)
def test_build_errors(kind, texts, kwargs):
    with pytest.raises(GenrnnError):
        build_tokenizer(kind, texts, **kwargs)


@KINDS
def test_encode_array_matches_encode_on_a_large_text(kind):
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghij klmnop,.'’-\n\"()") + ["é", "ß", "日本", "🙂", "<unk>", "\ud800"]
    text = "".join(rng.choice(alphabet, size=250_000))  # about 1 MB with the multi-char pieces
    assert len(text) > 250_000
    tok = build_tokenizer(kind, [text[: len(text) // 2]], vocab_size=25)
    arr = tok.encode_array(text)
    assert arr.dtype == np.int64
    assert arr.tolist() == tok.encode(text)
    assert UNK_ID in arr
    assert tok.encode_array("").shape == (0,)


@KINDS
@PROPERTY
@given(train=st.text(min_size=1, max_size=40), text=any_text, lower=st.booleans())
def test_encode_array_matches_encode_on_any_text(kind, train, text, lower):
    tok = build_tokenizer(kind, [train, "x"], lower=lower)
    assert tok.encode_array(text).tolist() == tok.encode(text)


def test_books_round_trip(shared_data):
    for path, kind in [("alice/alice.txt", "word"), ("alice/alice.txt", "char"),
                       ("ptb/ptb.valid.txt", "word")]:
        text = (shared_data / path).read_text(encoding="utf-8")
        tok = build_tokenizer(kind, text)
        ids = tok.encode(text)
        if kind == "char":
            assert tok.decode(ids) == text
        else:
            assert tok.encode(tok.decode(ids)) == ids


# -- whitespace -------------------------------------------------------------------


def test_whitespace_tokens_keep_ptb_words_whole():
    tok = build_tokenizer("whitespace", " mr. <unk> is N years old \n the u.s. \n")
    text = " mr. <unk> is N years old \n the u.s. \n"
    ids = tok.encode(text)
    assert [tok.token_str(i) for i in ids] == ["mr.", "<unk>", "is", "N", "years", "old", "\n", "the", "u.s.", "\n"]
    assert ids[1] == UNK_ID
    assert tok.decode(ids) == "mr. <unk> is N years old\nthe u.s.\n"
    assert tok.encode(tok.decode(ids)) == ids


@PROPERTY
@given(st.lists(st.integers(1, 50), max_size=40))
def test_whitespace_decode_of_any_ids_encodes_back(ids):
    tok = build_tokenizer("whitespace", "a b c d ! ?? x-y\n" + " ".join(f"w{i}" for i in range(50)))
    ids = [i for i in ids if i < tok.vocab_size and i != EOS_ID]
    assert tok.encode(tok.decode(ids)) == ids


def test_whitespace_counts_ptb_test_targets(shared_data):
    """The standard PTB test set has 82,430 targets: 78,669 words + 3,761 line ends."""
    path = shared_data / "ptb" / "ptb.test.txt"
    if not path.exists():
        pytest.skip(f"{path} is not there")
    text = path.read_text(encoding="utf-8")
    assert len(build_tokenizer("whitespace", text).encode(text)) == 82_430

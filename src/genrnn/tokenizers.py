"""Tokenizers: text to integer ids and back.

Every tokenizer shares one small interface (:class:`Tokenizer`) and the same
special ids, so datasets, models and sampling never need to know which kind
they hold::

    id      0       1       2       3 ...
    token   <pad>   <unk>   <eos>   regular tokens (the order depends on the kind)

* ``char``: one token per Unicode code point. The vocabulary is sorted by code
  point.
* ``word``: words and punctuation (see ``_TOKEN_RE``), most frequent first.
  Decoding puts the spaces back the way people write them.
* ``whitespace``: the runs of non-space characters (and each line break), for
  text that is already tokenized, such as Penn Treebank.

Text the vocabulary has never seen (an emoji in a prompt) encodes to
``<unk>``; it never raises. Every id in ``[0, vocab_size)`` decodes.

A tokenizer is saved as a plain JSON-able dict (:meth:`Tokenizer.to_dict`),
never pickled, and is read back with :func:`tokenizer_from_dict`.
"""

from __future__ import annotations

import abc
import itertools
import operator
import re
from collections import Counter
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np

from .errors import GenrnnError

PAD_ID = 0
UNK_ID = 1
EOS_ID = 2
SPECIALS = ("<pad>", "<unk>", "<eos>")

_FORMAT = 1  # version of the to_dict() layout; bump it on an incompatible change
_DICT_KEYS = frozenset({"kind", "format", "lower", "vocab"})


class StreamDecoder(abc.ABC):
    """Decodes ids one at a time, e.g. to print tokens while they are sampled.

    For any ids, ``"".join(d.push(i) for i in ids) == tokenizer.decode(ids)``
    with a fresh ``d = tokenizer.decoder()``.
    """

    @abc.abstractmethod
    def push(self, token_id: int) -> str:
        """Return the text that ``token_id`` adds to what was decoded so far."""


class Tokenizer(abc.ABC):
    """The interface every tokenizer implements."""

    kind: ClassVar[str]  # the registry name, also written by to_dict()

    @classmethod
    @abc.abstractmethod
    def build(
        cls, texts: Iterable[str], *, lower: bool = False, vocab_size: int | None = None
    ) -> Tokenizer:
        """Build the vocabulary from training texts (see :func:`build_tokenizer`)."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """The number of ids, the special tokens included."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; unknown tokens become ``UNK_ID``."""

    @abc.abstractmethod
    def encode_array(self, text: str) -> np.ndarray:
        """The same ids as :meth:`encode`, as an int64 array, fast for whole corpora."""

    @abc.abstractmethod
    def decoder(self) -> StreamDecoder:
        """A fresh incremental decoder."""

    @abc.abstractmethod
    def token_str(self, i: int) -> str:
        """The vocabulary entry of id ``i``, for display."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description; :func:`tokenizer_from_dict` reads it back."""

    @classmethod
    @abc.abstractmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        """Inverse of :meth:`to_dict`; raises GenrnnError on a corrupt dict."""

    def spans(self, text: str) -> list[tuple[int, int]] | None:
        """Where each token of ``text`` lies in it, (start, end) per token of
        :meth:`encode`; None where that cannot be told (lower-casing that
        changes the text's length)."""
        return None

    def extended(self, texts: Iterable[str]) -> Tokenizer:
        """This vocabulary with the tokens of ``texts`` it lacks added after
        its own, so every id keeps its meaning (``--init-from``)."""
        raise GenrnnError(f"a {self.kind} tokenizer cannot be extended")

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``. ``<pad>`` and ``<eos>`` decode to nothing.

        Raises ValueError for an id outside ``[0, vocab_size)``.
        """
        # Going through the stream decoder keeps the two equal by construction.
        push = self.decoder().push
        return "".join([push(i) for i in ids])


def _check_id(token_id: int, size: int) -> int:
    i = operator.index(token_id)  # accepts numpy and torch integers too
    if not 0 <= i < size:
        raise ValueError(f"token id {i} is out of range for a vocabulary of {size}")
    return i


def _regular_limit(vocab_size: int | None) -> int | None:
    """How many regular tokens a ``vocab_size`` (specials included) leaves room for."""
    if vocab_size is None:
        return None
    return vocab_size - len(SPECIALS)


def _corrupt(reason: str) -> GenrnnError:
    return GenrnnError(
        f"tokenizer data is corrupt or unsupported: {reason}. "
        "Rebuild the tokenizer, or retrain with this version of genrnn."
    )


class _VocabTokenizer(Tokenizer):
    """A tokenizer defined by a list of token strings: id = position in the list."""

    def __init__(self, tokens: Sequence[str], *, lower: bool = False) -> None:
        self.lower = lower
        self._vocab = list(SPECIALS) + list(tokens)
        self._stoi = {t: i for i, t in enumerate(self._vocab) if i >= len(SPECIALS)}

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def token_str(self, i: int) -> str:
        return self._vocab[_check_id(i, len(self._vocab))]

    def extended(self, texts: Iterable[str]) -> _VocabTokenizer:
        seen = type(self).build(texts, lower=self.lower)._vocab[len(SPECIALS):]
        new = [t for t in seen if t not in self._stoi]
        return type(self)(self._vocab[len(SPECIALS):] + new, lower=self.lower) if new else self

    def to_dict(self) -> dict[str, Any]:
        # The specials are written too, so that the list reads as id -> token.
        return {
            "kind": self.kind,
            "format": _FORMAT,
            "lower": self.lower,
            "vocab": list(self._vocab),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> _VocabTokenizer:
        if not isinstance(d, dict):
            raise _corrupt(f"expected a JSON object, got {type(d).__name__}")
        if _DICT_KEYS - d.keys():
            raise _corrupt(f"missing {', '.join(sorted(_DICT_KEYS - d.keys()))}")
        if d.keys() - _DICT_KEYS:
            raise _corrupt(f"unknown key(s) {', '.join(sorted(map(str, d.keys() - _DICT_KEYS)))}")
        if isinstance(d["format"], bool) or d["format"] != _FORMAT:
            raise _corrupt(f"format {d['format']!r} (this genrnn reads format {_FORMAT})")
        if d["kind"] != cls.kind:
            raise _corrupt(f"kind {d['kind']!r} where {cls.kind!r} was expected")
        if not isinstance(d["lower"], bool):
            raise _corrupt(f"'lower' must be true or false, not {d['lower']!r}")
        vocab = d["vocab"]
        if not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab):
            raise _corrupt("'vocab' must be a list of strings")
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise _corrupt(f"'vocab' must start with {', '.join(SPECIALS)}")
        tokens = vocab[len(SPECIALS) :]
        if not tokens:
            raise _corrupt("'vocab' has no tokens besides the special ones")
        if len(set(vocab)) != len(vocab):
            twice = next(t for t, n in Counter(vocab).items() if n > 1)
            raise _corrupt(f"{twice!r} appears more than once in 'vocab'")
        bad = next((t for t in tokens if not cls._is_token(t)), None)
        if bad is not None:
            raise _corrupt(f"{bad!r} is not a valid {cls.kind} token")
        return cls(tokens, lower=d["lower"])

    @staticmethod
    @abc.abstractmethod
    def _is_token(token: str) -> bool:
        """Whether ``token`` is something this kind of tokenizer can produce."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, lower={self.lower})"


class _PieceDecoder(StreamDecoder):
    """Stateless decoding, for tokenizers where each id stands for a fixed string."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self._pieces = pieces

    def push(self, token_id: int) -> str:
        return self._pieces[_check_id(token_id, len(self._pieces))]


class CharTokenizer(_VocabTokenizer):
    """One token per Unicode code point.

    ``decode(encode(t)) == t`` whenever every character of ``t`` is in the
    vocabulary (and ``lower`` is off). An unknown character decodes to U+FFFD.
    """

    kind = "char"

    def __init__(self, chars: Sequence[str], *, lower: bool = False) -> None:
        super().__init__(chars, lower=lower)
        self._pieces = ["", "\ufffd", ""] + list(chars)
        # encode_array looks code points up in this sorted table: codes[k] is
        # the code point of the token whose id is code_ids[k].
        ids = np.arange(len(SPECIALS), len(self._vocab), dtype=np.int64)
        codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        order = np.argsort(codes, kind="stable")
        self._codes = codes[order]
        self._code_ids = ids[order]

    @classmethod
    def build(
        cls, texts: Iterable[str], *, lower: bool = False, vocab_size: int | None = None
    ) -> CharTokenizer:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text.lower() if lower else text)
        if not counts:
            raise GenrnnError("cannot build a char vocabulary: the training text is empty")
        chars = sorted(counts)
        limit = _regular_limit(vocab_size)
        if limit is not None and len(chars) > limit:
            # The most frequent characters; sorted() is stable, so ties keep code point order.
            chars = sorted(sorted(chars, key=lambda c: -counts[c])[:limit])
        return cls(chars, lower=lower)

    def encode(self, text: str) -> list[int]:
        if self.lower:
            text = text.lower()
        get = self._stoi.get
        return [get(c, UNK_ID) for c in text]

    def encode_array(self, text: str) -> np.ndarray:
        if self.lower:
            text = text.lower()
        # One uint32 per code point. "surrogatepass" keeps the lone surrogates of
        # a file read with errors="surrogateescape" instead of raising.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        pos = np.searchsorted(self._codes, codes)
        np.minimum(pos, len(self._codes) - 1, out=pos)  # past the end: unknown anyway
        known = self._codes[pos] == codes
        return np.where(known, self._code_ids[pos], np.int64(UNK_ID))

    def decoder(self) -> StreamDecoder:
        return _PieceDecoder(self._pieces)

    def spans(self, text: str) -> list[tuple[int, int]] | None:
        if self.lower and len(text.lower()) != len(text):
            return None
        return [(i, i + 1) for i in range(len(text))]

    @staticmethod
    def _is_token(token: str) -> bool:
        return len(token) == 1


# The word tokens, one per match, tried in this order:
#   <unk>        the unknown-word marker of preprocessed corpora (PTB, WikiText), kept whole
#   \n           a line break; each "\n" is its own token, so a blank line is two of them
#   words        letters and digits, with inner apostrophes, hyphens or underscores:
#                don't, Alice’s, Mock-Turtle, snake_case
#   [^\w\s]      any other non-space character, one token each
#   _            also one token by itself: Project Gutenberg texts mark _italics_ with it
# Other whitespace only separates tokens and is not kept.
_TOKEN_RE = re.compile(r"<unk>|\n|[^\W_]+(?:[-'’_][^\W_]+)*|[^\w\s]|_")

# How decoding spaces tokens: a space goes between two tokens unless the left
# one attaches to what follows (an opening bracket or quote), the right one
# attaches to what precedes (closing punctuation or quote), or a line starts.
_ATTACH_LEFT = frozenset(".,;:!?)]}%…”’")
_ATTACH_RIGHT = frozenset("([{“‘$£€¥")
_DASHES = frozenset("—–")  # attach on both sides: "I think—", "5–6"
# Straight double quotes and _italic_ marks alternate opening and closing. At
# the start of a line one always opens: a quotation running on over several
# paragraphs opens each of them again.
_TOGGLES = frozenset('"_')
# A straight single quote is an apostrophe more often than a quote ("abc 's"
# in PTB, "'Tis" in Shakespeare), so it attaches to the next token, except
# after closing punctuation, where it ends a quotation: 'Off with her head!'
_CLOSES_QUOTE = frozenset(".,;:!?")


class _WordStreamDecoder(StreamDecoder):
    """Writes word tokens with spaces where people put them (see the rules above)."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self._vocab = vocab
        self._line_start = True  # no space before the first token of a line
        self._glue_next = False  # the previous token attaches to the next one
        self._prev = ""
        self._open = dict.fromkeys(_TOGGLES, False)
        # The last (at most) two tokens written with no space between them.
        # Nothing can merge across a space or a line break, and the longest
        # match that can span a token boundary covers three tokens (< unk >,
        # or word - word), so these two plus a new token decide whether
        # writing it with no space keeps the tokens apart.
        self._tail: list[str] = []

    def push(self, token_id: int) -> str:
        i = _check_id(token_id, len(self._vocab))
        if i in (PAD_ID, EOS_ID):
            return ""
        tok = self._vocab[i]  # for UNK_ID this is "<unk>", which encodes back to UNK_ID
        attach_left, attach_right = self._attachment(tok)
        space = not (self._line_start or self._glue_next or attach_left)
        if not space and _TOKEN_RE.findall("".join(self._tail) + tok) != self._tail + [tok]:
            space = True  # e.g. don ' t written together would read back as one token
        if tok == "\n":
            self._tail = []
        elif space:
            self._tail = [tok]
        else:
            self._tail = self._tail[-1:] + [tok]
        self._line_start = tok == "\n"
        self._glue_next = attach_right
        self._prev = tok
        return " " + tok if space else tok

    def _attachment(self, tok: str) -> tuple[bool, bool]:
        """Whether ``tok`` attaches to the token before it, and to the one after it.

        Updates the open/closed state of the alternating quotes.
        """
        if tok == "\n" or tok in _DASHES:
            return True, True
        if tok in _TOGGLES:
            opening = self._line_start or not self._open[tok]
            self._open[tok] = opening
            return not opening, opening
        if tok == "'":
            closing = self._prev in _CLOSES_QUOTE
            return closing, not closing
        if tok == "-" and self._prev == "-":
            return True, False  # a "--" dash stays whole
        if (
            tok.isdecimal()
            and len(self._tail) == 2
            and self._tail[1] in ".:"
            and self._tail[0][-1].isdecimal()
        ):
            # 3.0 and 10:30; not "," which lists numbers as often as it groups digits
            return True, False
        return tok in _ATTACH_LEFT, tok in _ATTACH_RIGHT


class _PatternTokenizer(_VocabTokenizer):
    """Tokens are the matches of a regular expression (``_PATTERN``), the
    vocabulary most frequent first; ``<unk>`` in the text is the special token."""

    _PATTERN: ClassVar[re.Pattern]
    _WHAT: ClassVar[str]  # for the error on a text with no tokens

    @classmethod
    def build(
        cls, texts: Iterable[str], *, lower: bool = False, vocab_size: int | None = None
    ) -> _PatternTokenizer:
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(cls._PATTERN.findall(text.lower() if lower else text))
        counts.pop(SPECIALS[UNK_ID], None)  # "<unk>" in the text is the special token
        if not counts:
            raise GenrnnError(f"cannot build a {cls.kind} vocabulary: the training text has no {cls._WHAT}")
        # Most frequent first; sorted() is stable, so ties keep first-occurrence order.
        words = sorted(counts, key=lambda w: -counts[w])
        limit = _regular_limit(vocab_size)
        return cls(words[:limit] if limit is not None else words, lower=lower)

    def _tokens(self, text: str) -> list[str]:
        return self._PATTERN.findall(text.lower() if self.lower else text)

    def spans(self, text: str) -> list[tuple[int, int]] | None:
        seen = text.lower() if self.lower else text
        if len(seen) != len(text):
            return None
        return [m.span() for m in self._PATTERN.finditer(seen)]

    def encode(self, text: str) -> list[int]:
        get = self._stoi.get
        return [get(t, UNK_ID) for t in self._tokens(text)]

    def encode_array(self, text: str) -> np.ndarray:
        tokens = self._tokens(text)
        ids = map(self._stoi.get, tokens, itertools.repeat(UNK_ID))
        return np.fromiter(ids, dtype=np.int64, count=len(tokens))

    @classmethod
    def _is_token(cls, token: str) -> bool:
        return cls._PATTERN.findall(token) == [token] and token != SPECIALS[UNK_ID]


class WordTokenizer(_PatternTokenizer):
    """Words and punctuation, for word-level models (PTB, a book).

    Decoding writes the tokens the way people do ("Alice was beginning, to get
    (very) tired.") and never glues two tokens into a different one, so
    ``encode(decode(ids)) == ids`` for any ids other than ``<pad>``/``<eos>``.
    """

    kind = "word"
    _PATTERN = _TOKEN_RE
    _WHAT = "words or punctuation"

    def decoder(self) -> StreamDecoder:
        return _WordStreamDecoder(self._vocab)


# Whitespace tokens: a line break, or a run of anything else that is not whitespace.
_SPACE_RE = re.compile(r"\n|[^\s]+")


class _SpaceStreamDecoder(StreamDecoder):
    """One space between tokens, none at the start of a line."""

    def __init__(self, vocab: Sequence[str]) -> None:
        self._vocab = vocab
        self._line_start = True

    def push(self, token_id: int) -> str:
        i = _check_id(token_id, len(self._vocab))
        if i in (PAD_ID, EOS_ID):
            return ""
        tok = self._vocab[i]
        space = not self._line_start and tok != "\n"
        self._line_start = tok == "\n"
        return " " + tok if space else tok


class WhitespaceTokenizer(_PatternTokenizer):
    """Tokens are what lies between spaces; each line break is a token too.

    For corpora that are already tokenized, above all Penn Treebank as Mikolov
    prepared it: there the line break plays the part of the sentence-end token,
    so a model trained on ``ptb.train.txt`` is scored on exactly the 82,430 test
    targets (78,669 words + 3,761 line ends) that published perplexities count.
    The ``word`` tokenizer would split ``mr.`` into ``mr .`` and score 85,339.
    """

    kind = "whitespace"
    _PATTERN = _SPACE_RE
    _WHAT = "tokens"

    def decoder(self) -> StreamDecoder:
        return _SpaceStreamDecoder(self._vocab)


def _byte_alphabet() -> list[str]:
    """The byte-level BPE alphabet (GPT-2's convention, which Hugging Face's
    ``ByteLevel`` uses): a printable byte stands for itself; each of the other
    bytes, in increasing order, for the code points from 256 up."""
    keep = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


class _ByteDecoder(StreamDecoder):
    """Byte-level pieces to text: the bytes of each token go through one
    incremental UTF-8 decoder, so a character split over two tokens comes out
    whole with the second, and invalid bytes become U+FFFD."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        import codecs

        self._pieces = pieces
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._pieces[_check_id(token_id, len(self._pieces))])


class BPETokenizer(Tokenizer):
    """Byte-level byte-pair encoding, trained and run by Hugging Face's
    ``tokenizers`` (``pip install 'genrnn[bpe]'``). Every text encodes: the
    256 bytes are in the vocabulary, so nothing is ever ``<unk>``. genrnn's
    three special ids come first and the library's ids follow, so text that
    spells ``<eos>`` is ordinary text. The library's own JSON (the one its
    ``Tokenizer.from_str`` reads) is kept in ``to_dict()["hf"]``, so
    config.json holds it and nothing is pickled."""

    kind = "bpe"
    DEFAULT_SIZE = 1024

    def __init__(self, hf: Any, *, lower: bool = False) -> None:
        self.lower = lower
        self._hf = hf
        size = hf.get_vocab_size()
        table = {c: b for b, c in enumerate(_byte_alphabet())}
        pieces: list[bytes] = [b"", "\ufffd".encode(), b""]
        for i in range(size):
            token = hf.id_to_token(i)
            if token is None or any(c not in table for c in token):
                raise _corrupt(f"BPE token {i} ({token!r}) is not made of byte-level symbols")
            pieces.append(bytes(table[c] for c in token))
        self._pieces = pieces
        self._strs = list(SPECIALS) + [p.decode("utf-8", "replace") for p in pieces[len(SPECIALS):]]

    @staticmethod
    def _library():
        try:
            import tokenizers
        except ImportError:
            raise GenrnnError("--tokenizer bpe needs Hugging Face tokenizers: pip install 'genrnn[bpe]'") from None
        return tokenizers

    @classmethod
    def build(cls, texts: Iterable[str], *, lower: bool = False, vocab_size: int | None = None) -> BPETokenizer:
        lib = cls._library()
        texts = [t.lower() if lower else t for t in texts]
        if not any(texts):
            raise GenrnnError("cannot build a BPE vocabulary: the training text is empty")
        size = (vocab_size or cls.DEFAULT_SIZE) - len(SPECIALS)
        if size < 256:
            raise GenrnnError(f"--tokenizer bpe needs --vocab-size of at least {256 + len(SPECIALS)} "
                              "(the 256 bytes and the special tokens)")
        hf = lib.Tokenizer(lib.models.BPE())
        hf.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = lib.decoders.ByteLevel()
        trainer = lib.trainers.BpeTrainer(vocab_size=size, show_progress=False,
                                          initial_alphabet=lib.pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(_lines(texts), trainer=trainer)
        return cls(hf, lower=lower)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        if self.lower:
            text = text.lower()
        if not text:
            return np.zeros(0, dtype=np.int64)
        # lone surrogates (a file read with errors="surrogateescape") cannot cross into Rust
        text = text.encode("utf-8", "replace").decode("utf-8")
        ids = self._hf.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=np.int64) + len(SPECIALS)

    def decoder(self) -> StreamDecoder:
        return _ByteDecoder(self._pieces)

    def extended(self, texts: Iterable[str]) -> BPETokenizer:
        return self  # every text is made of its bytes already

    def token_str(self, i: int) -> str:
        return self._strs[_check_id(i, len(self._strs))]

    def to_dict(self) -> dict[str, Any]:
        import json

        return {"kind": self.kind, "format": _FORMAT, "lower": self.lower, "hf": json.loads(self._hf.to_str())}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPETokenizer:
        import json

        keys = {"kind", "format", "lower", "hf"}
        if not isinstance(d, dict) or set(d) != keys:
            raise _corrupt(f"a bpe tokenizer has the keys {', '.join(sorted(keys))}")
        if isinstance(d["format"], bool) or d["format"] != _FORMAT:
            raise _corrupt(f"format {d['format']!r} (this genrnn reads format {_FORMAT})")
        if not isinstance(d["lower"], bool) or not isinstance(d["hf"], dict):
            raise _corrupt("'lower' must be true or false and 'hf' a JSON object")
        lib = cls._library()
        try:
            hf = lib.Tokenizer.from_str(json.dumps(d["hf"]))
        except Exception as e:  # the library raises its own exception types for a bad file
            raise _corrupt(f"Hugging Face tokenizers cannot read it: {e}") from None
        return cls(hf, lower=d["lower"])

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, lower={self.lower})"


def _lines(texts: Sequence[str], size: int = 1 << 16):
    """Texts in pieces of about ``size`` characters cut after a line break, for training."""
    for text in texts:
        start = 0
        while start < len(text):
            end = text.find("\n", start + size)
            end = len(text) if end < 0 else end + 1
            yield text[start:end]
            start = end


TOKENIZERS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "word": WordTokenizer,
    "whitespace": WhitespaceTokenizer,
    "bpe": BPETokenizer,
}


def build_tokenizer(
    kind: str, texts: Iterable[str], *, lower: bool = False, vocab_size: int | None = None
) -> Tokenizer:
    """Build a ``kind`` tokenizer ("char", "word" or "whitespace") from training texts.

    ``texts`` is one string or several documents. ``lower`` lower-cases the
    text, at encode time too. ``vocab_size`` (the specials included) keeps only
    the most frequent tokens; the rest encode to ``<unk>``.
    """
    if kind not in TOKENIZERS:
        known = ", ".join(TOKENIZERS)
        raise GenrnnError(f"unknown tokenizer kind {kind!r}; choose one of: {known}")
    if vocab_size is not None and (
        not isinstance(vocab_size, int)
        or isinstance(vocab_size, bool)
        or vocab_size <= len(SPECIALS)
    ):
        raise GenrnnError(
            f"vocab_size must be more than {len(SPECIALS)} (the special tokens), not {vocab_size!r}"
        )
    if isinstance(texts, str):
        texts = [texts]  # iterating a str would make each character a document
    return TOKENIZERS[kind].build(texts, lower=lower, vocab_size=vocab_size)


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """Read back what :meth:`Tokenizer.to_dict` wrote; GenrnnError if it is corrupt."""
    if not isinstance(d, dict):
        raise _corrupt(f"expected a JSON object, got {type(d).__name__}")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in TOKENIZERS:
        raise _corrupt(f"unknown kind {kind!r} (known: {', '.join(TOKENIZERS)})")
    return TOKENIZERS[kind].from_dict(d)

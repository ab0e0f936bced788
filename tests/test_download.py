"""Downloading named corpora, against a local HTTP server on 127.0.0.1 only."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import pytest

from genrnn import corpora
from genrnn.corpora import NamedCorpus, RemoteFile, download, fetch, list_corpora, load_corpus
from genrnn.errors import GenrnnError

TEXT = b"To be, or not to be, that is the question.\n" * 50
TEXT_SHA256 = hashlib.sha256(TEXT).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; ``/truncated`` promises more bytes than it sends."""

    hits: list[str]

    def do_GET(self):
        self.hits.append(self.path)
        if self.path == "/truncated":
            self.send_response(200)
            self.send_header("Content-Length", str(len(TEXT)))
            self.end_headers()
            self.wfile.write(TEXT[:100])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format, *args):  # keep test output quiet
        pass


class Server:
    def __init__(self, root: Path):
        self.root = root
        self.hits: list[str] = []
        handler = type("Handler", (_Handler,), {"hits": self.hits})
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "play.txt").write_bytes(TEXT)
    server = Server(root)
    yield server
    server.close()


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("GENRNN_OFFLINE")


def use_remote(monkeypatch, name: str, remote: RemoteFile, **changes) -> Path:
    """Point corpus ``name`` at ``remote``; return where its file will be cached."""
    corpus = corpora.CORPORA.get(name) or NamedCorpus(name=name, description="test", licence="test", files={})
    corpus = replace(corpus, files=MappingProxyType({"train": remote}), **changes)
    monkeypatch.setattr(corpora, "CORPORA", MappingProxyType({**corpora.CORPORA, name: corpus}))
    return corpora.cache_dir() / "corpora" / name / remote.filename


def play(site: Server, path: str = "play.txt", sha256: str = TEXT_SHA256) -> RemoteFile:
    return RemoteFile(url=site.url(path), sha256=sha256, size=len(TEXT), filename="play.txt")


def test_fetch_downloads_into_cache_with_progress(site, online, monkeypatch, capsys):
    cached = use_remote(monkeypatch, "play", play(site))
    assert fetch("play", progress=True) == cached
    assert cached.read_bytes() == TEXT
    assert "play.txt" in capsys.readouterr().err  # the tqdm bar
    assert next(e for e in list_corpora() if e["name"] == "play")["cached"] is True
    # Second time: verified from the cache, no request.
    assert load_corpus(["play"])[0].text == TEXT.decode()
    assert site.hits == ["/play.txt"]


def test_named_corpus_downloaded_from_shared_data(shared_data, online, monkeypatch):
    server = Server(shared_data)
    try:
        real = corpora.CORPORA["tinyshakespeare"].files["train"]
        cached = use_remote(monkeypatch, "tinyshakespeare", replace(real, url=server.url("tinyshakespeare/input.txt")))
        docs = load_corpus(["tinyshakespeare"], progress=True)
        assert docs[0].source == "tinyshakespeare/train" and len(docs[0].text) == real.size
        assert hashlib.sha256(cached.read_bytes()).hexdigest() == real.sha256
        assert server.hits == ["/tinyshakespeare/input.txt"]
    finally:
        server.close()


def test_checksum_mismatch_saves_nothing(site, online, tmp_path):
    dest = tmp_path / "dl" / "play.txt"
    with pytest.raises(GenrnnError) as info:
        download(site.url("play.txt"), dest, "0" * 64)
    message = str(info.value)
    assert site.url("play.txt") in message and "0" * 64 in message and TEXT_SHA256 in message
    assert "nothing was saved" in message
    assert list(dest.parent.iterdir()) == []  # neither dest nor a temporary file


def test_offline_makes_no_request(site, monkeypatch):
    remote = play(site)
    cached = use_remote(monkeypatch, "play", remote)
    with pytest.raises(GenrnnError) as info:
        load_corpus(["play"])
    message = str(info.value)
    assert "'play' is not cached" in message and "GENRNN_OFFLINE" in message
    assert remote.url in message and str(cached) in message
    with pytest.raises(GenrnnError, match="offline"):
        download(remote.url, cached, remote.sha256)
    assert site.hits == []
    assert not cached.exists()


@pytest.mark.parametrize("value", ["true", "YES", "1"])
def test_offline_values(site, monkeypatch, value):
    monkeypatch.setenv("GENRNN_OFFLINE", value)
    use_remote(monkeypatch, "play", play(site))
    with pytest.raises(GenrnnError, match="offline"):
        fetch("play")
    assert site.hits == []


def test_offline_false_value_downloads(site, monkeypatch):
    monkeypatch.setenv("GENRNN_OFFLINE", "0")
    cached = use_remote(monkeypatch, "play", play(site))
    assert fetch("play") == cached


def test_http_404(site, online, monkeypatch):
    remote = play(site, path="missing.txt")
    cached = use_remote(monkeypatch, "play", remote)
    with pytest.raises(GenrnnError) as info:
        fetch("play")
    message = str(info.value)
    assert "HTTP 404" in message and remote.url in message and str(cached) in message
    assert not cached.exists()


def test_connection_refused(online, monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/play.txt"
    with pytest.raises(GenrnnError, match="cannot download .*play.txt.*refused"):
        download(url, tmp_path / "play.txt", TEXT_SHA256)
    use_remote(monkeypatch, "play", RemoteFile(url=url, sha256=TEXT_SHA256, size=1, filename="play.txt"))
    with pytest.raises(GenrnnError, match="'play' is not cached and cannot be downloaded .*refused.*Download http"):
        fetch("play")


def test_timeout(online, tmp_path):
    with socket.socket() as sock:  # listens but never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/slow"
        with pytest.raises(GenrnnError, match="no answer within 0.2 s"):
            download(url, tmp_path / "slow.txt", TEXT_SHA256, timeout=0.2)
    assert not (tmp_path / "slow.txt").exists()


def test_truncated_transfer(site, online, tmp_path):
    dest = tmp_path / "dl" / "play.txt"
    with pytest.raises(GenrnnError, match=f"cannot download .*closed after 100 of {len(TEXT)} bytes"):
        download(site.url("truncated"), dest, TEXT_SHA256)
    assert list(dest.parent.iterdir()) == []


def test_only_http_urls(online, tmp_path):
    source = tmp_path / "play.txt"
    source.write_bytes(TEXT)
    with pytest.raises(GenrnnError, match="only http:// and https://"):
        download(source.as_uri(), tmp_path / "copy.txt", TEXT_SHA256)


def test_corrupt_cache_is_downloaded_again(site, online, monkeypatch):
    cached = use_remote(monkeypatch, "play", play(site))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"damaged")
    assert fetch("play") == cached
    assert cached.read_bytes() == TEXT and site.hits == ["/play.txt"]


def test_corrupt_cache_offline_says_delete(site, monkeypatch):
    cached = use_remote(monkeypatch, "play", play(site))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"damaged")
    with pytest.raises(GenrnnError) as info:
        fetch("play")
    message = str(info.value)
    assert str(cached) in message and "corrupt" in message and "Delete it" in message
    assert site.hits == []


def test_fetch_rejects_builtin_unknown_and_bad_split():
    with pytest.raises(GenrnnError, match="built in"):
        fetch("python-docs")
    with pytest.raises(GenrnnError, match="unknown corpus 'nope'.*tinyshakespeare"):
        fetch("nope")
    with pytest.raises(GenrnnError, match="no split 'dev'.*train, valid, test"):
        fetch("ptb", "dev")


def test_table_corpus_uses_default_fields(site, online, monkeypatch):
    rows = b'3,"Title one","Body one"\n4,"Title two",""\n'
    (site.root / "news.csv").write_bytes(rows)
    remote = RemoteFile(
        url=site.url("news.csv"), sha256=hashlib.sha256(rows).hexdigest(), size=len(rows), filename="news.csv"
    )
    use_remote(monkeypatch, "news", remote, fmt="csv", default_fields=("1", "2"))
    docs = load_corpus(["news"])
    assert [d.text for d in docs] == ["Title one Body one", "Title two"]
    assert [d.source for d in docs] == ["news/train:line 1", "news/train:line 2"]
    assert [d.text for d in load_corpus(["news"], fields=["2"])] == ["Body one"]


def test_cache_dir_argument(site, online, monkeypatch, tmp_path):
    use_remote(monkeypatch, "play", play(site))
    explicit = tmp_path / "elsewhere"
    assert fetch("play", cache_dir=explicit) == explicit / "corpora" / "play" / "play.txt"
    assert load_corpus(["play"], cache_dir=explicit)[0].text == TEXT.decode()
    assert len(site.hits) == 1

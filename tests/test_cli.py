"""The ``genrnn`` command end to end, on small pieces of the public corpora.

Most runs call :func:`genrnn.cli.main` in-process (fast: torch is imported
once); a few start a real ``python -m genrnn`` to prove the console entry works
and that a user mistake prints one line and no traceback.

Every model here is tiny (1x32 LSTM, 20 steps), so the whole file takes
seconds on a CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import genrnn
from genrnn.cli import main

# a model and a run small enough for a test; --sample-every 0: no samples during training
TINY = ["--hidden-size", "32", "--layers", "1", "--embedding-size", "16", "--seq-len", "32",
        "--batch-size", "8", "--max-steps", "20", "--eval-every", "10", "--sample-every", "0",
        "--no-progress", "-q"]



def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``genrnn ARGV`` in-process; return (exit status, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def ok(capsys, *argv) -> str:
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    assert "Traceback" not in err
    return out


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def check_eval_json(out: str) -> dict:
    """``eval --json``: one object whose figures agree with each other."""
    m = json.loads(out)
    assert {"loss", "perplexity", "bits_per_char"} <= m.keys()
    assert m["tokens"] > 0 and m["chars"] > 0
    assert m["loss"] > 0
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-12)
    # bits/char and nats/token describe the same total: bpc * ln2 * chars == loss * tokens
    assert m["bits_per_char"] * math.log(2) * m["chars"] == pytest.approx(m["loss"] * m["tokens"], rel=1e-6)
    return m


def head_bytes(src: Path, dst: Path, n: int) -> Path:
    dst.write_bytes(src.read_bytes()[:n])
    return dst


def head_lines(src: Path, dst: Path, n: int) -> Path:
    with open(src, encoding="utf-8", newline="") as f:
        dst.write_text("".join(line for _, line in zip(range(n), f)), encoding="utf-8", newline="")
    return dst


# -- one shared char-level run ---------------------------------------------------------


@pytest.fixture(scope="module")
def shakespeare(shared_data, tmp_path_factory) -> Path:
    """The first 20 kB of tiny Shakespeare (ASCII, so no UTF-8 sequence is cut)."""
    return head_bytes(shared_data / "tinyshakespeare" / "input.txt",
                      tmp_path_factory.mktemp("corpus") / "shakespeare.txt", 20_000)


@pytest.fixture(scope="module")
def char_run(shakespeare, tmp_path_factory) -> Path:
    """A char-level stream run trained once for the sampling and eval tests."""
    out = tmp_path_factory.mktemp("runs") / "char"
    with pytest.MonkeyPatch.context() as mp:  # the autouse fixture is per test; isolate this one too
        mp.setenv("GENRNN_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("GENRNN_OFFLINE", "1")
        assert main(["train", str(shakespeare), "--out", str(out), *TINY]) == 0
    return out


# -- end to end: train -> sample -> eval ------------------------------------------------


def test_char_stream_train_sample_eval(char_run, shakespeare, capsys):
    assert {"config.json", "model.safetensors", "resume.pt", "metrics.jsonl"} <= {p.name for p in char_run.iterdir()}
    config = json.loads((char_run / "config.json").read_text(encoding="utf-8"))
    assert config["run"]["data"]["tokenizer"] == "char"
    assert config["run"]["data"]["layout"] == "stream"
    assert config["run"]["model"]["hidden_size"] == 32

    out = ok(capsys, "sample", char_run, "--prompt", "ROMEO:", "--length", "50", "--seed", "1")
    assert out.startswith("ROMEO:")
    assert len(out.rstrip("\n")) > len("ROMEO:")

    out = ok(capsys, "eval", char_run)
    assert "validation split" in out and "perplexity" in out and "bits/char" in out

    val = check_eval_json(ok(capsys, "eval", char_run, "--json"))
    assert val["tokens"] == val["chars"]  # one token per character
    whole = check_eval_json(ok(capsys, "eval", char_run, shakespeare, "--json"))
    assert whole["tokens"] > val["tokens"]  # the whole file is bigger than its validation tenth


def test_ag_news_csv_with_fields(shared_data, tmp_path, capsys):
    csv_path = head_lines(shared_data / "ag_news" / "test.csv", tmp_path / "ag.csv", 300)
    run = tmp_path / "ag"
    rc, _, err = cli(capsys, "train", csv_path, "--field", "1", "--field", "2", "--out", run, *TINY[:-1])
    assert rc == 0, err
    # not --quiet: a header and a summary on stderr, nothing on stdout
    assert "genrnn: done, 20 steps" in err
    assert "best validation loss" in err
    assert f"genrnn sample {run}" in err

    corpus = json.loads((run / "config.json").read_text(encoding="utf-8"))["corpus"]
    assert corpus["fields"] == ["1", "2"]

    rows = json_lines(ok(capsys, "sample", run, "--prompt", "Wall St.", "--json", "--seed", "0", "--length", "30"))
    assert len(rows) == 1 and rows[0]["prompt"] == "Wall St."

    check_eval_json(ok(capsys, "eval", run, "--json"))
    check_eval_json(ok(capsys, "eval", run, csv_path, "--field", "1", "--field", "2", "--json"))
    # without --field, eval reads the columns the run trained on
    same = json.loads(ok(capsys, "eval", run, csv_path, "--json"))
    assert same == json.loads(ok(capsys, "eval", run, csv_path, "--field", "1", "--field", "2", "--json"))


def test_names_one_per_line_sample_stops_at_eos(shared_data, tmp_path, capsys):
    names = head_lines(shared_data / "names" / "names.txt", tmp_path / "names.txt", 2000)
    run = tmp_path / "names"
    ok(capsys, "train", names, "--layout", "lines", "--out", run, *TINY)
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["run"]["data"]["layout"] == "lines"

    rows = json_lines(ok(capsys, "sample", run, "--num-samples", "8", "--json", "--seed", "0", "--length", "60"))
    assert len(rows) == 8
    for r in rows:
        assert "\n" not in r["text"], r  # a name is one line: <eos> ends it
        assert r["finish_reason"] in ("eos", "length")
        if r["finish_reason"] == "eos":
            assert r["tokens"] == len(r["text"]) + 1  # the characters and the <eos>
    assert any(r["finish_reason"] == "eos" for r in rows)

    # streamed: prompt + name on one line
    out = ok(capsys, "sample", run, "--prompt", "ma", "--seed", "3", "--length", "60")
    assert out.startswith("ma") and out.count("\n") == 1 and out.endswith("\n")

    check_eval_json(ok(capsys, "eval", run, "--json"))
    check_eval_json(ok(capsys, "eval", run, names, "--json"))


def test_word_tokenizer(shared_data, tmp_path, capsys):
    text = (shared_data / "alice" / "alice.txt").read_text(encoding="utf-8")[:12_000]
    alice = tmp_path / "alice.txt"
    alice.write_text(text, encoding="utf-8")
    run = tmp_path / "alice"
    ok(capsys, "train", alice, "--tokenizer", "word", "--out", run, *TINY)
    tok = json.loads((run / "config.json").read_text(encoding="utf-8"))["tokenizer"]
    assert tok["kind"] == "word"

    rows = json_lines(ok(capsys, "sample", run, "--prompt", "Alice was", "--json", "--seed", "2", "--length", "15"))
    (row,) = rows
    assert row["prompt"] == "Alice was"
    assert 1 <= row["tokens"] <= 15
    if row["finish_reason"] == "length":
        assert row["tokens"] == 15 and len(row["text"].split()) >= 1

    m = check_eval_json(ok(capsys, "eval", run, "--json"))
    assert m["chars"] > m["tokens"]  # words are several characters long
    check_eval_json(ok(capsys, "eval", run, alice, "--json"))


# -- sampling options -------------------------------------------------------------------


def test_sample_json_one_object_per_sample(char_run, capsys):
    out = ok(capsys, "sample", char_run, "--prompt", "ROMEO:", "--prompt", "JULIET:", "--num-samples", "3",
             "--length", "20", "--json", "--seed", "5")
    rows = json_lines(out)
    assert len(rows) == 6
    assert [r["prompt"] for r in rows] == ["ROMEO:"] * 3 + ["JULIET:"] * 3
    for r in rows:
        assert {"prompt", "text", "tokens"} <= r.keys()
        assert isinstance(r["text"], str) and isinstance(r["tokens"], int)
        assert 1 <= r["tokens"] <= 20
        if r["finish_reason"] == "length":
            assert r["tokens"] == 20 and len(r["text"]) == 20  # char level: one token, one character
    # three samples of one prompt differ (a batch does not repeat one random stream)
    assert len({r["text"] for r in rows[:3]}) > 1


def test_seed_reproducible(char_run, capsys):
    argv = ["sample", char_run, "--prompt", "KING:", "--length", "40", "--seed", "42", "-n", "2"]
    first = ok(capsys, *argv)
    assert ok(capsys, *argv) == first
    assert ok(capsys, *argv[:-4], "--seed", "43", "-n", "2") != first
    a = json_lines(ok(capsys, *argv, "--json"))
    b = json_lines(ok(capsys, *argv, "--json"))
    assert a == b


def test_greedy_equals_temperature_zero(char_run, capsys):
    greedy = json_lines(ok(capsys, "sample", char_run, "--prompt", "First", "--greedy", "--json", "--length", "30"))
    zero = json_lines(ok(capsys, "sample", char_run, "--prompt", "First", "--temperature", "0", "--json",
                         "--length", "30", "--seed", "9"))
    assert [r["text"] for r in greedy] == [r["text"] for r in zero]
    assert greedy[0]["temperature"] == zero[0]["temperature"] == 0
    # greedy ignores the seed
    again = json_lines(ok(capsys, "sample", char_run, "--prompt", "First", "--greedy", "--json", "--length", "30",
                          "--seed", "123"))
    assert again[0]["text"] == greedy[0]["text"]


def test_stop_cuts_the_text(char_run, capsys):
    base = ["sample", char_run, "--prompt", "ROMEO:", "--length", "120", "--seed", "11", "--json"]
    (full,) = json_lines(ok(capsys, *base))
    text = full["text"]
    stop = next(c for c in text[5:] if c.strip())  # a character the model did produce, past the start
    (cut,) = json_lines(ok(capsys, *base, "--stop", stop))
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == text[: text.index(stop)]
    assert stop not in cut["text"]
    # streamed output is cut the same way
    out = ok(capsys, *base[:-1], "--stop", stop)
    assert out == "ROMEO:" + cut["text"] + "\n"


def test_several_temperatures(char_run, capsys):
    rows = json_lines(ok(capsys, "sample", char_run, "--temperature", "0.5", "--temperature", "1.5",
                         "--temperature", "0", "-n", "2", "--length", "25", "--seed", "1", "--json"))
    assert [r["temperature"] for r in rows] == [0.5, 0.5, 1.5, 1.5, 0.0, 0.0]
    assert rows[4]["text"] == rows[5]["text"]  # temperature 0 is deterministic
    # streamed: every sample gets a header naming its prompt and temperature
    out = ok(capsys, "sample", char_run, "--temperature", "0.5", "--temperature", "1.5", "--length", "10",
             "--seed", "1")
    assert "--- sample 1/2: prompt '', temperature 0.5 ---" in out
    assert "--- sample 2/2: prompt '', temperature 1.5 ---" in out


def test_emoji_prompt_is_unknown_not_a_crash(char_run, capsys):
    from genrnn.tokenizers import UNK_ID

    assert genrnn.load(char_run).tokenizer.encode("\U0001F642") == [UNK_ID]  # not in the training text
    prompt = "ROMEO \U0001F642:"
    (row,) = json_lines(ok(capsys, "sample", char_run, "--prompt", prompt, "--json", "--seed", "4", "--length", "15"))
    assert row["prompt"] == prompt
    out = ok(capsys, "sample", char_run, "--prompt", prompt, "--seed", "4", "--length", "15")
    assert out.startswith(prompt)


# -- the default corpus and the corpus list ------------------------------------------------


def test_default_corpus_is_python_docs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default run folder is runs/<corpus>-<time> under the working folder
    ok(capsys, "train", *TINY[:10], "--max-steps", "3", "--val-fraction", "0.01", "--sample-every", "0", "-q")
    (run,) = list((tmp_path / "runs").iterdir())
    assert run.name.startswith("python-docs-")
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["corpus"]["sources"] == []
    metrics = json_lines((run / "metrics.jsonl").read_text(encoding="utf-8"))
    assert max(m["step"] for m in metrics) == 3
    # the cache stayed empty: python-docs is built in
    assert not any(Path(os.environ["GENRNN_CACHE"]).rglob("*"))


def test_corpora_lists_cache_state(capsys):
    out = ok(capsys, "corpora")
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "python-docs" in lines and "tinyshakespeare" in lines
    assert " cached " in lines["python-docs"] + " " and "not cached" not in lines["python-docs"]
    assert "not cached" in lines["tinyshakespeare"]
    rows = {r["name"]: r for r in json.loads(ok(capsys, "corpora", "--json"))}
    assert rows["python-docs"]["cached"] is True
    assert rows["tinyshakespeare"]["cached"] is False


# -- user mistakes: one line, exit 2, no traceback ----------------------------------------


@pytest.fixture
def bad_inputs(tmp_path) -> Path:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "binary.txt").write_bytes(b"text\x00\x01\x02 more")
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n")  # Latin-1, not UTF-8: byte 3 is bad
    (tmp_path / "table.csv").write_text("1,Hello there,Some description\n2,General Kenobi,Another one\n",
                                        encoding="utf-8")
    (tmp_path / "good.txt").write_text("hello world\n" * 200, encoding="utf-8")
    (tmp_path / "a_file").write_text("not a folder\n", encoding="utf-8")
    (tmp_path / "not_a_run").mkdir()
    return tmp_path


def _cache_dir() -> str:
    return os.environ["GENRNN_CACHE"]


ERRORS = {
    "missing file": (["train", "{d}/missing.txt"], ["missing.txt", "does not exist"]),
    "unknown corpus": (["train", "no-such-corpus"], ["'no-such-corpus'", "corpus names are", "tinyshakespeare"]),
    "empty file": (["train", "{d}/empty.txt"], ["empty.txt", "no text"]),
    "binary file": (["train", "{d}/binary.txt"], ["binary.txt", "binary"]),
    "invalid utf-8": (["train", "{d}/latin1.txt"], ["latin1.txt", "utf-8", "byte offset 3", "--encoding"]),
    "csv without --field": (["train", "{d}/table.csv"], ["table.csv", "--field"]),
    "missing column": (["train", "{d}/table.csv", "--field", "title"], ["table.csv", "no column 'title'"]),
    "column out of range": (["train", "{d}/table.csv", "--field", "1", "--field", "5"],
                            ["table.csv", "column 5", "out of range"]),
    "tie weights sizes": (["train", "{d}/good.txt", "--tie-weights"], ["--tie-weights", "--embedding-size", "16", "32"]),
    "bad duration": (["train", "{d}/good.txt", "--time", "abc"], ["'abc'", "10m"]),
    "out is a file": (["train", "{d}/good.txt", "--out", "{d}/a_file"], ["a_file"]),
    "sample missing run": (["sample", "{d}/no-run"], ["no-run", "no run folder"]),
    "sample not a run": (["sample", "{d}/not_a_run"], ["not_a_run", "not a genrnn run folder", "config.json"]),
    "eval missing run": (["eval", "{d}/no-run"], ["no-run", "no run folder"]),
    "resume missing run": (["train", "--resume", "{d}/no-run"], ["no-run", "no run folder"]),
    "offline download": (["train", "tinyshakespeare"],
                         ["tinyshakespeare", "not cached", "GENRNN_OFFLINE",
                          "https://raw.githubusercontent.com/karpathy/char-rnn/", "{cache}"]),
}

# the tiny shape (embedding 16, hidden 32) so that --tie-weights is refused
_SHAPE = TINY[:6] + ["--max-steps", "5", "-q"]


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_user_errors_are_one_line(case, bad_inputs, capsys):
    argv, expected = ERRORS[case]
    argv = [a.format(d=bad_inputs) for a in argv]
    if argv[0] == "train" and "--resume" not in argv:
        argv += _SHAPE
    rc, out, err = cli(capsys, *argv)
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    assert err.startswith("genrnn: error: ") and err.count("\n") == 1, err
    for piece in expected:
        assert piece.format(cache=_cache_dir()) in err, err


def test_out_folder_already_holding_a_run(char_run, shakespeare, capsys):
    before = (char_run / "config.json").read_bytes()
    rc, _, err = cli(capsys, "train", shakespeare, "--out", char_run, *TINY)
    assert rc == 2 and err.count("\n") == 1
    assert "already holds a run" in err and "--resume" in err
    assert (char_run / "config.json").read_bytes() == before  # untouched


def test_resume_without_resume_pt(char_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(char_run, run)
    (run / "resume.pt").unlink()
    rc, _, err = cli(capsys, "train", "--resume", run, "--max-steps", "30", "-q")
    assert rc == 2 and err.count("\n") == 1
    assert "resume.pt" in err and "nothing to resume" in err


def test_resume_with_a_corpus_or_a_fixed_option(char_run, shakespeare, capsys):
    rc, _, err = cli(capsys, "train", shakespeare, "--resume", char_run)
    assert rc == 2 and "leave out the corpus" in err
    rc, _, err = cli(capsys, "train", "--resume", char_run, "--hidden-size", "64")
    assert rc == 2 and "hidden_size" in err


def test_bad_flag_value_is_an_argparse_error(capsys):
    rc, out, err = cli(capsys, "train", "--cell", "foo")
    assert rc == 2
    assert "invalid choice: 'foo'" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "sample", "somewhere", "--length", "many")
    assert rc == 2 and "invalid int value" in err


# -- the real console entry -------------------------------------------------------------


def genrnn_process(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see _one_thread
    return subprocess.run([sys.executable, "-m", "genrnn", *map(str, argv)], capture_output=True, text=True,
                          encoding="utf-8", timeout=120, cwd=cwd, env=env)


def test_console_entry_point_is_declared():
    from importlib.metadata import entry_points

    scripts = entry_points(group="console_scripts")
    assert any(ep.name == "genrnn" and ep.value == "genrnn.cli:main" for ep in scripts)


def test_console_sample_same_seed_same_text_across_processes(char_run):
    argv = ["sample", char_run, "--prompt", "ROMEO:", "--length", "40", "--seed", "7", "--json"]
    a, b = genrnn_process(*argv), genrnn_process(*argv)
    assert a.returncode == b.returncode == 0, a.stderr
    assert a.stdout == b.stdout
    (row,) = json_lines(a.stdout)
    assert row["prompt"] == "ROMEO:" and row["text"]


@pytest.mark.parametrize("what", ["missing file", "bad flag", "corrupt weights"])
def test_console_errors_print_no_traceback(what, char_run, tmp_path):
    if what == "missing file":
        argv, expected = ["train", tmp_path / "missing.txt"], "does not exist"
    elif what == "bad flag":
        argv, expected = ["train", "--cell", "foo"], "invalid choice"
    else:
        run = tmp_path / "run"
        shutil.copytree(char_run, run)
        weights = bytearray((run / "model.safetensors").read_bytes())
        weights[-1] ^= 0xFF
        (run / "model.safetensors").write_bytes(bytes(weights))
        argv, expected = ["sample", run], "checksum"
    p = genrnn_process(*argv)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    assert expected in p.stderr
    assert p.stdout == ""

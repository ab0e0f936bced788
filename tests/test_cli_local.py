"""The ``genrnn`` command end to end on a corpus the test writes itself.

``tests/test_cli.py`` runs on pieces of the public corpora in ``../shared/data``
and most of it skips in a user's clone; this file needs nothing but itself:
a few hundred lines of random words from a fixed word list, a 1x16 LSTM and
20 steps, so a run takes seconds on a CPU. As there, most runs call
:func:`genrnn.cli.main` in-process (torch is imported once) and a few start a
real ``python -m genrnn`` to prove that a mistake prints one line, exit status
2 and no traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from genrnn import checkpoint as ckpt
from genrnn.cli import main
from test_cli import cli, json_lines, ok  # the in-process runner and its checks

WORDS = ("the a of and to in is was it that he she they we you river stone light house garden window "
         "quiet early late green blue small large old new runs walks sings reads writes opens closes "
         "under over near far before after because while yes no").split()

# a tiny model and run; --sample-every 0: no samples printed during training
TINY = ["--hidden-size", "16", "--layers", "1", "--embedding-size", "8", "--seq-len", "16", "--batch-size", "4",
        "--max-steps", "20", "--eval-every", "10", "--sample-every", "0", "--no-progress"]


def write_corpus(path: Path, lines: int = 300, seed: int = 0) -> Path:
    """``lines`` lines of 3 to 9 random words with some punctuation, the same for a seed."""
    rng = random.Random(seed)
    text = []
    for _ in range(lines):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        text.append(" ".join(words).capitalize() + rng.choice([".", ".", "!", "?", ","]))
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def metrics(run: Path) -> list[dict]:
    return json_lines((run / ckpt.METRICS).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "words.txt")


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """One run trained through the CLI (not --quiet), with what it printed: (run, stdout, stderr)."""
    run = tmp_path_factory.mktemp("runs") / "words"
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:  # the autouse fixture is per test; isolate this one too
        mp.setenv("GENRNN_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("GENRNN_OFFLINE", "1")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["train", str(corpus), "--out", str(run), *TINY])
    assert rc == 0, err.getvalue()
    return run, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(trained) -> Path:
    return trained[0]


# -- train ------------------------------------------------------------------------------------


def test_train_writes_a_run_with_the_options_given(trained, corpus):
    run, out, err = trained
    assert {"config.json", "model.safetensors", "resume.pt", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    config = json.loads((run / ckpt.CONFIG).read_text(encoding="utf-8"))
    model, data, train = config["run"]["model"], config["run"]["data"], config["run"]["train"]
    assert (model["type"], model["hidden_size"], model["num_layers"], model["embedding_size"]) == ("rnn", 16, 1, 8)
    assert (data["seq_len"], data["batch_size"], data["tokenizer"]) == (16, 4, "char")
    assert (train["max_steps"], train["eval_every"], train["sample_every"]) == (20, 10, 0)
    assert config["corpus"]["sources"] == [str(corpus)]
    assert set(config["tokenizer"]["vocab"][3:]) == set(corpus.read_text(encoding="utf-8"))  # every character
    logged = metrics(run)
    assert [m["step"] for m in logged if "loss" in m] == [10, 20]  # a log line every 10 steps
    assert [m["step"] for m in logged if "val_loss" in m] == [10, 20]  # --eval-every 10
    # not --quiet: a summary on stderr; nothing on stdout
    assert out == ""
    assert "genrnn: done, 20 steps" in err and "best validation loss" in err
    assert f"genrnn sample {run}" in err


def test_resume_continues_to_more_steps(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = ckpt.load_resume(copy / ckpt.RESUME)
    assert before["progress"]["step"] == 20
    rc, out, err = cli(capsys, "train", "--resume", copy, "--max-steps", "30", "--no-progress")
    assert rc == 0, err
    assert "resuming at step 20" in err and "genrnn: done, 30 steps" in err
    logged = metrics(copy)
    assert [m["step"] for m in logged if "loss" in m] == [10, 20, 30]  # each step once
    assert [m["step"] for m in logged if "val_loss" in m] == [10, 20, 30]
    after = ckpt.load_resume(copy / ckpt.RESUME)
    assert after["progress"]["step"] == 30
    assert any(not (after["model"][k] == before["model"][k]).all() for k in before["model"])  # it learned on
    config = json.loads((copy / ckpt.CONFIG).read_text(encoding="utf-8"))["run"]
    assert config["model"]["hidden_size"] == 16 and config["data"]["seq_len"] == 16  # the run's own settings
    # the original run is untouched, and a resumed run samples
    assert ckpt.load_resume(run / ckpt.RESUME)["progress"]["step"] == 20
    assert ok(capsys, "sample", copy, "--prompt", "The", "--length", "10", "--seed", "1").startswith("The")
    # resumed again without a larger budget: the run is done, and says what to give
    rc, _, err = cli(capsys, "train", "--resume", copy, "--no-progress", "-q")
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "already reached its stopping rule (step 30" in err and "--max-steps" in err
    assert ckpt.load_resume(copy / ckpt.RESUME)["progress"]["step"] == 30
    assert [m["step"] for m in metrics(copy) if "loss" in m] == [10, 20, 30]


# -- sample -----------------------------------------------------------------------------------


def test_same_seed_same_text_other_seed_other_text(run, capsys):
    argv = ["sample", run, "--prompt", "The river", "--length", "60", "-n", "2"]
    first = ok(capsys, *argv, "--seed", "42")
    assert first.count("--- sample ") == 2 and "The river" in first
    assert ok(capsys, *argv, "--seed", "42") == first
    other = ok(capsys, *argv, "--seed", "43")
    assert other != first
    a = json_lines(ok(capsys, *argv, "--seed", "42", "--json"))
    b = json_lines(ok(capsys, *argv, "--seed", "43", "--json"))
    assert [r["text"] for r in a] == [r["text"] for r in json_lines(ok(capsys, *argv, "--seed", "42", "--json"))]
    assert [r["text"] for r in a] != [r["text"] for r in b]
    assert a[0]["text"] != a[1]["text"]  # the two samples of one call differ too
    # the streamed text is the prompt and the JSON text
    one = ["sample", run, "--prompt", "The river", "--length", "60", "--seed", "7"]
    (row,) = json_lines(ok(capsys, *one, "--json"))
    assert ok(capsys, *one) == "The river" + row["text"] + "\n"


def test_stop_strings_cut_the_text(run, capsys):
    for seed in range(11, 60):  # a seed whose sample runs to the length limit (the model may write <eos>)
        base = ["sample", run, "--prompt", "The", "--length", "150", "--seed", str(seed), "--json"]
        (full,) = json_lines(ok(capsys, *base))
        if full["finish_reason"] == "length":
            break
    text = full["text"]
    assert full["finish_reason"] == "length" and len(text) == 150  # char level: a token is a character
    stop = text[20:22]  # two characters the model did write, well past the start
    (cut,) = json_lines(ok(capsys, *base, "--stop", stop))
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == text[: text.index(stop)]
    assert stop not in cut["text"]
    # of several stop strings the earliest in the text wins
    later = text[60:63]
    (both,) = json_lines(ok(capsys, *base, "--stop", later, "--stop", stop))
    assert both["text"] == text[: min(text.index(stop), text.index(later))]
    # streamed output is cut the same way
    assert ok(capsys, *base[:-1], "--stop", stop) == "The" + cut["text"] + "\n"
    # a stop string the model never writes changes nothing
    (same,) = json_lines(ok(capsys, *base, "--stop", "QQQ"))
    assert same["text"] == text and same["finish_reason"] == "length"


def test_greedy_equals_temperature_zero(run, capsys):
    argv = ["sample", run, "--prompt", "Under the", "--length", "40", "--json"]
    greedy = json_lines(ok(capsys, *argv, "--greedy"))
    zero = json_lines(ok(capsys, *argv, "--temperature", "0", "--seed", "9"))
    assert [r["text"] for r in greedy] == [r["text"] for r in zero]
    assert greedy[0]["temperature"] == zero[0]["temperature"] == 0
    # greedy ignores the seed; sampling at temperature 1 does not give the greedy text
    assert json_lines(ok(capsys, *argv, "--greedy", "--seed", "123"))[0]["text"] == greedy[0]["text"]
    sampled = [json_lines(ok(capsys, *argv, "--seed", str(s)))[0]["text"] for s in range(3)]
    assert any(t != greedy[0]["text"] for t in sampled)


def test_json_output_has_the_documented_keys(run, capsys):
    out = ok(capsys, "sample", run, "--prompt", "A", "--prompt", "The", "-n", "2", "--temperature", "0.8",
             "--temperature", "1.2", "--length", "12", "--seed", "3", "--json")
    rows = json_lines(out)  # one JSON object per line
    assert len(rows) == 8 == len(out.splitlines())
    for i, r in enumerate(rows):
        assert set(r) == {"index", "prompt", "text", "tokens", "finish_reason", "temperature"}
        assert r["index"] == i
        assert isinstance(r["text"], str) and isinstance(r["tokens"], int)
        assert r["finish_reason"] in ("eos", "stop", "length")
        assert 1 <= r["tokens"] <= 12
        if r["finish_reason"] == "length":
            assert r["tokens"] == 12 == len(r["text"])
    assert [r["prompt"] for r in rows] == ["A"] * 4 + ["The"] * 4
    assert [r["temperature"] for r in rows] == [0.8, 0.8, 1.2, 1.2] * 2


# -- eval -------------------------------------------------------------------------------------


def check_eval_json(out: str) -> dict:
    m = json.loads(out)
    assert {"loss", "perplexity", "bits_per_char", "tokens", "chars"} <= m.keys()
    assert m["tokens"] > 0 and m["chars"] > 0 and m["loss"] > 0
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]), rel=1e-12)
    # bits/char and nats/token describe the same total
    assert m["bits_per_char"] * math.log(2) * m["chars"] == pytest.approx(m["loss"] * m["tokens"], rel=1e-6)
    return m


def test_eval_on_the_validation_split_and_on_files(run, corpus, tmp_path, capsys):
    out = ok(capsys, "eval", run)
    assert out.startswith("validation split: loss ") and "perplexity" in out and "bits/char" in out
    val = check_eval_json(ok(capsys, "eval", run, "--json"))
    assert val["tokens"] == val["chars"]  # char level
    # the figure printed is the figure in the JSON
    assert f"loss {val['loss']:.4f} nats/token" in out
    # the best validation loss of training is this one
    best = min(m["val_loss"] for m in metrics(run) if "val_loss" in m)
    assert val["loss"] == pytest.approx(best, rel=1e-5)
    whole = check_eval_json(ok(capsys, "eval", run, corpus, "--json"))
    assert whole["chars"] == len(corpus.read_text(encoding="utf-8")) > val["chars"]
    # another file: its own figures, the same each time
    other = write_corpus(tmp_path / "other.txt", 50, seed=1)
    scored = check_eval_json(ok(capsys, "eval", run, other, "--json"))
    assert scored["chars"] == len(other.read_text(encoding="utf-8"))
    assert scored["loss"] != whole["loss"]
    assert json.loads(ok(capsys, "eval", run, other, "--json")) == scored


# -- mistakes: one line, exit 2, no traceback -----------------------------------------------


@pytest.fixture
def bad(tmp_path, run) -> Path:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("  \n\n\t\n", encoding="utf-8")
    (tmp_path / "binary.txt").write_bytes(b"hello\x00\x01\x02\xff world")
    (tmp_path / "table.csv").write_text("id,headline,body\n1,Rain today,Wet streets\n2,Sun tomorrow,Dry\n",
                                        encoding="utf-8")
    (tmp_path / "a_file").write_text("not a folder\n", encoding="utf-8")
    (tmp_path / "not_a_run").mkdir()
    no_resume = tmp_path / "no_resume"
    shutil.copytree(run, no_resume)
    (no_resume / ckpt.RESUME).unlink()
    return tmp_path


ERRORS = {
    "empty corpus": (["train", "{d}/empty.txt"], ["empty.txt", "no text"]),
    "whitespace corpus": (["train", "{d}/blank.txt"], ["blank.txt", "no text"]),
    "binary file": (["train", "{d}/binary.txt"], ["binary.txt", "binary", "NUL byte at offset 5"]),
    "missing csv column": (["train", "{d}/table.csv", "--field", "title"],
                           ["table.csv", "no column 'title'", "'headline'"]),
    "csv without --field": (["train", "{d}/table.csv"], ["table.csv", "--field"]),
    "resume: no folder": (["train", "--resume", "{d}/no-such-run"], ["no-such-run", "no run folder"]),
    "resume: not a run": (["train", "--resume", "{d}/not_a_run"], ["not_a_run", "not a genrnn run folder",
                                                                    "config.json"]),
    "resume: a file": (["train", "--resume", "{d}/a_file"], ["a_file", "is a file, not a run folder"]),
    "resume: no resume.pt": (["train", "--resume", "{d}/no_resume"], ["resume.pt", "nothing to resume"]),
    "resume with a corpus": (["train", "{d}/table.csv", "--resume", "{d}/no_resume"], ["leave out the corpus"]),
    "sample: not a run": (["sample", "{d}/not_a_run"], ["not_a_run", "not a genrnn run folder"]),
    "eval: empty corpus": (["eval", "{d}/no_resume", "{d}/empty.txt"], ["empty.txt", "no text"]),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_mistakes_are_one_line_and_exit_2(case, bad, capsys, monkeypatch):
    monkeypatch.chdir(bad)  # a run without --out would go to ./runs: not into the project
    argv, expected = ERRORS[case]
    argv = [a.format(d=bad) for a in argv]
    if argv[0] == "train" and "--resume" not in argv:
        argv += TINY
    rc, out, err = cli(capsys, *argv)
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    assert err.startswith("genrnn: error: ") and err.count("\n") == 1, err
    for piece in expected:
        assert piece in err, err
    assert out == ""
    assert not (bad / "runs").exists()


def genrnn_process(*argv, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENRNN_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "genrnn", *map(str, argv)], capture_output=True, text=True,
                          encoding="utf-8", timeout=120, cwd=cwd, env=env)


@pytest.mark.parametrize("case", ["empty corpus", "resume: not a run"])
def test_console_mistakes_print_no_traceback(case, bad):
    argv, expected = ERRORS[case]
    p = genrnn_process(*[a.format(d=bad) for a in argv], cwd=bad)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stderr.startswith("genrnn: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert all(piece in p.stderr for piece in expected), p.stderr
    assert p.stdout == ""


def test_console_sample_is_the_in_process_sample(run, capsys):
    argv = ["sample", run, "--prompt", "The", "--length", "30", "--seed", "5", "--json"]
    p = genrnn_process(*argv)
    assert p.returncode == 0, p.stderr
    assert json_lines(p.stdout) == json_lines(ok(capsys, *argv))

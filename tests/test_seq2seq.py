"""Sequence to sequence: the text encoder, attention masks, beam search, the
commands, and every bad input -- all on data the tests make themselves."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import genrnn
from genrnn.beam import beam_search
from genrnn.cli import main
from genrnn.config import ModelConfig
from genrnn.errors import GenrnnError
from genrnn.models import build_model
from genrnn.state import cat_rows, select_rows, start
from genrnn.tokenizers import EOS_ID

LETTERS = "abcdefgh"


def strings(n: int, seed: int, lo: int = 3, hi: int = 8):
    rng = random.Random(seed)
    return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi))) for _ in range(n)]


def write_pairs(path: Path, sources, targets, header=("src", "tgt")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(zip(sources, targets))
    return path


@pytest.fixture(scope="module")
def reversal(tmp_path_factory):
    """A reversal model trained for a few seconds, and held-out strings."""
    folder = tmp_path_factory.mktemp("rev")
    train = strings(2000, 0)
    table = write_pairs(folder / "rev.csv", train, [s[::-1] for s in train])
    run = genrnn.train(str(table), task="seq2seq", source_field="src", target_field="tgt", attention=True,
                       out=folder / "run", max_steps=260, hidden_size=64, num_layers=1, embedding_size=16,
                       batch_size=32, seq_len=16, lr=2e-2, eval_every=130, sample_every=0)
    seen = set(train)
    held_out = [s for s in strings(300, 1) if s not in seen][:100]
    return run, held_out, table


def tiny(attention=True, bidirectional=False, cell="lstm", every=True, layers=2):
    torch.manual_seed(0)
    return build_model(ModelConfig(cell=cell, vocab_size=11, embedding_size=8, hidden_size=12, num_layers=layers,
                                   condition="text", condition_size=11, condition_dim=6, attention=attention,
                                   bidirectional=bidirectional, condition_every_step=every)).eval()


def padded(rows):
    out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


SOURCES = [[3, 4, 5, 6, 7, 2], [8, 2], [9, 10, 3, 2]]


# -- the model -------------------------------------------------------------------


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_shapes_masks_and_padding(attention, bidirectional, cell):
    """The memory (S, B, H) and its mask (S, B) ride in the state, batch in
    dimension 1; a source's padding changes nothing, on either side."""
    model = tiny(attention, bidirectional, cell)
    cond = padded(SOURCES)
    with torch.no_grad():
        state = start(model, cond)
        if attention:
            memory, mask = state[-2], state[-1]
            assert memory.shape == (6, 3, 12) and mask.shape == (6, 3)
            assert mask[:, 1].tolist() == [1, 1, 0, 0, 0, 0]
        targets = padded([[2, 3, 4, 5], [2, 6], [2, 7, 8]])
        logits, _, _ = model(targets, None, state)
        for i, src in enumerate(SOURCES):
            alone_state = start(model, torch.tensor([src]))
            n = int((targets[i] != 0).sum())
            alone, _, _ = model(targets[i : i + 1, :n], None, alone_state)
            torch.testing.assert_close(logits[i : i + 1, :n], alone, rtol=1e-5, atol=1e-6)
            # more padding on the source side: the same state
            wider = torch.zeros(1, 9, dtype=torch.long)
            wider[0, : len(src)] = torch.tensor(src)
            torch.testing.assert_close(start(model, wider), alone_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("attention", [True, False])
def test_step_and_prefill_agree_with_forward(attention):
    model = tiny(attention, True)
    cond = padded(SOURCES)
    idx = torch.randint(1, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _, _ = model(idx, None, start(model, cond))
        last, _ = model.prefill(idx, torch.tensor([5, 5, 5]), start(model, cond))
        torch.testing.assert_close(last, full[:, -1], rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        state, steps = start(model, cond), []
        for t in range(5):
            logits, state = model.step(idx[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-4, atol=1e-5)


def test_rows_of_different_source_lengths_join():
    """Joining states of sources of different lengths pads the memory with
    zeros and the mask with 0: each row steps as it would alone."""
    model = tiny()
    with torch.no_grad():
        a, b = start(model, torch.tensor([SOURCES[0]])), start(model, torch.tensor([SOURCES[1]]))
        joined = cat_rows(b, a)
        assert joined[-2].shape == (6, 2, 12)
        out, _ = model.step(torch.tensor([4, 4]), joined)
        alone_b, _ = model.step(torch.tensor([4]), b)
        alone_a, _ = model.step(torch.tensor([4]), a)
    torch.testing.assert_close(out, torch.cat([alone_b, alone_a]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(select_rows(joined, [1]), a)


def test_attention_needs_a_source_and_a_seq2seq_model():
    with pytest.raises(GenrnnError, match="source sentence"):
        tiny().start(None)
    with pytest.raises(GenrnnError, match="seq2seq"):
        build_model(ModelConfig(vocab_size=11, attention=True))


# -- training and decoding --------------------------------------------------------


def test_reversal_is_learned_in_seconds(reversal):
    run, held_out, _ = reversal
    out = run.translate(held_out, beam=1)
    exact = np.mean([o == s[::-1] for o, s in zip(out, held_out)])
    assert exact >= 0.9, list(zip(held_out, out))[:10]


def test_beam_one_is_greedy(reversal):
    run, held_out, _ = reversal
    greedy = run.complete([""] * 30, greedy=True, length=16, condition=held_out[:30])
    assert run.translate(held_out[:30], beam=1) == [c.text for c in greedy]


def test_beam_hypotheses_are_sorted_and_scored_like_forward(reversal):
    run, held_out, _ = reversal
    cond = run.encode_condition(held_out[:8], 8)
    found = beam_search(run.model, [[EOS_ID]] * 8, beam=4, num_return=4, max_new_tokens=16, condition=cond)
    for i, hyps in enumerate(found):
        assert len(hyps) == 4
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        for h in hyps:
            assert h.finish_reason == "eos"
            assert h.score == pytest.approx(h.logprob / h.length)
            ids = [EOS_ID] + h.ids + [EOS_ID]
            with torch.no_grad():
                logits, _, _ = run.model(torch.tensor([ids[:-1]]), None, start(run.model, cond[i : i + 1]))
            rescored = F.log_softmax(logits[0], -1).gather(1, torch.tensor(ids[1:])[:, None]).sum()
            assert h.logprob == pytest.approx(float(rescored), abs=1e-4)


def test_batched_beams_equal_one_at_a_time(reversal):
    run, held_out, _ = reversal
    sources = held_out[:6]
    batched = run.beam_search([""] * 6, beam=3, num_return=2, condition=sources, batch_size=6)
    for s, hyps in zip(sources, batched):
        alone = run.beam_search([""], beam=3, num_return=2, condition=[s])[0]
        assert [t for t, _, _ in hyps] == [t for t, _, _ in alone]
        assert [sc for _, sc, _ in hyps] == pytest.approx([sc for _, sc, _ in alone], abs=1e-5)


def test_a_beam_that_never_ends_stops_at_the_length_limit(reversal):
    run, held_out, _ = reversal
    hyps = run.beam_search([""], beam=3, num_return=3, length=2, condition=[held_out[0]])[0]
    assert [r for _, _, r in hyps] == ["length"] * 3
    assert all(len(t) == 2 for t, _, _ in hyps)


def test_checkpoint_round_trip_gives_identical_outputs(reversal):
    run, held_out, _ = reversal
    again = genrnn.load(run.run_dir)
    assert again.translate(held_out[:20], beam=3) == run.translate(held_out[:20], beam=3)
    assert again.condition.kind == "text" and again.condition.shared


def test_translate_reads_stdin_and_writes_stdout(reversal, monkeypatch, capsys):
    run, held_out, _ = reversal
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join([held_out[0], "", held_out[1]]) + "\n"))
    assert main(["translate", str(run.run_dir), "--beam", "2"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[:3] == [held_out[0][::-1], "", held_out[1][::-1]]
    assert main(["translate", str(run.run_dir), held_out[2], "--num-return", "2", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["source"] == held_out[2] and len(record["translations"]) == 2
    assert record["translations"][0]["text"] == held_out[2][::-1]


def test_eval_prints_loss_bleu_and_chrf(reversal, tmp_path, capsys):
    run, held_out, _ = reversal
    table = write_pairs(tmp_path / "test.csv", held_out[:40], [s[::-1] for s in held_out[:40]])
    assert main(["eval", str(run.run_dir), str(table), "--json", "--beam", "3"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["pairs"] == 40 and m["beam"] == 3
    assert m["chrf"] > 80 and m["exact"] > 80 and m["loss"] < 1.0 and "bleu" in m  # one-word outputs: BLEU-4 is 0
    assert main(["eval", str(run.run_dir), str(table)]) == 0
    assert "BLEU" in capsys.readouterr().out


def test_sample_beam_for_a_language_model(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat.\n" * 200, encoding="utf-8")
    assert main(["train", str(text), "--out", str(tmp_path / "lm"), "--max-steps", "60", "--hidden-size", "32",
                 "--layers", "1", "--seq-len", "32", "--batch-size", "16", "--sample-every", "0", "-q"]) == 0
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "lm"), "--prompt", "the c", "--beam", "4", "--num-return", "2",
                 "--length", "10", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rank"] for r in rows] == [0, 1]
    assert rows[0]["score"] >= rows[1]["score"] and rows[0]["finish_reason"] == "length"
    assert rows[0]["text"].startswith("at")


def test_parallel_files_train(tmp_path):
    src = strings(300, 5)
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "out.txt").write_text("\n".join(s.upper() for s in src) + "\n", encoding="utf-8")
    run = genrnn.train([str(tmp_path / "in.txt"), str(tmp_path / "out.txt")], task="seq2seq", out=tmp_path / "p",
                       max_steps=5, hidden_size=16, num_layers=1, batch_size=16, seq_len=16, sample_every=0,
                       shared_vocab=False, bidirectional=True)
    assert run.corpus.parallel and not run.condition.shared
    assert isinstance(run.translate("abc", beam=2), str)
    assert genrnn.load(run.run_dir).condition.size == run.condition.size


def test_word_tokens_and_exact_resume(tmp_path):
    """Word tokens on both sides; Ctrl-C at step 5 and resume gives the weights
    of a run that never stopped."""
    from test_train import InterruptAt

    words = "red green blue cat dog fish one two three".split()
    rng = random.Random(2)
    src = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))) for _ in range(300)]
    table = write_pairs(tmp_path / "w.csv", src, [" ".join(reversed(s.split())) + " ." for s in src])
    opts = dict(task="seq2seq", source_field="src", target_field="tgt", tokenizer="word", attention=True,
                bidirectional=True, max_steps=12, hidden_size=16, num_layers=1, embedding_size=8, batch_size=16,
                seq_len=12, sample_every=0, eval_every=4, log_every=1, seed=3)
    whole = genrnn.train(str(table), out=tmp_path / "whole", **opts)
    part = genrnn.train(str(table), out=tmp_path / "part", callbacks=InterruptAt(5), **opts)
    assert part.result.interrupted
    assert genrnn.train(resume=tmp_path / "part").result.step == 12
    a = torch.load(tmp_path / "whole" / "resume.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "part" / "resume.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = whole.translate("red cat", beam=2)
    assert isinstance(out, str) and "<unk>" not in out


def test_over_long_pairs_are_left_out_and_counted(tmp_path, capsys):
    src = strings(200, 6)
    table = write_pairs(tmp_path / "p.csv", src + ["x" * 40], [s[::-1] for s in src] + ["y"])
    assert main(["train", str(table), "--task", "seq2seq", "--source-field", "src", "--target-field", "tgt",
                 "--out", str(tmp_path / "r"), "--max-steps", "3", "--hidden-size", "16", "--layers", "1",
                 "--seq-len", "16", "--sample-every", "0", "-q"]) == 0
    err = capsys.readouterr().err
    assert "1 pair" in err and "left out" in err
    assert main(["translate", str(tmp_path / "r"), "z" * 40]) == 2
    assert "over this run's limit" in capsys.readouterr().err


def test_bad_input_is_one_line_and_status_two(reversal, tmp_path, capsys):
    run, held_out, table = reversal
    run_dir = str(run.run_dir)

    def fails(*argv, match):
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.startswith("genrnn: error:") and match in err and "Traceback" not in err, err

    base = ["train", str(table), "--task", "seq2seq", "--max-steps", "1", "--out", str(tmp_path / "x"), "-q"]
    fails(*base, "--source-field", "nope", "--target-field", "tgt", match="no column 'nope'")
    fails(*base, "--source-field", "src", match="--target-field")
    fails(*base[:4], "--out", str(tmp_path / "y"), match="reads pairs")
    fails("train", str(table), "--source-field", "src", "--target-field", "tgt", match="--task seq2seq")
    fails("train", str(table), "--field", "tgt", "--attention", "--max-steps", "1", "--out", str(tmp_path / "z"),
          match="--attention")
    empty = tmp_path / "empty.csv"
    empty.write_text("src,tgt\nabc,\n", encoding="utf-8")
    fails("train", str(empty), "--task", "seq2seq", "--source-field", "src", "--target-field", "tgt",
          match="empty target")
    empty.write_text("src,tgt\n,abc\n", encoding="utf-8")
    fails("train", str(empty), "--task", "seq2seq", "--source-field", "src", "--target-field", "tgt",
          match="empty 'src'")
    (tmp_path / "a.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("a\n", encoding="utf-8")
    fails("train", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--task", "seq2seq", match="has 2 lines")
    fails("translate", run_dir, "abc", "--beam", "0", match="--beam must be")
    fails("translate", run_dir, "abc", "--beam", "2", "--num-return", "3", match="--num-return")
    fails("sample", run_dir, match="source sentence")
    fails("sample", run_dir, "--source", "abc", "--beam", "2", "--temperature", "0.5", match="--beam searches")
    (tmp_path / "lm.txt").write_text("hello there\n" * 50, encoding="utf-8")
    assert main(["train", str(tmp_path / "lm.txt"), "--out", str(tmp_path / "lm"), "--max-steps", "1",
                 "--hidden-size", "8", "--layers", "1", "--seq-len", "8", "-q"]) == 0
    capsys.readouterr()
    fails("translate", str(tmp_path / "lm"), "abc", match="not a sequence-to-sequence run")
    fails("eval", str(tmp_path / "lm"), "--beam", "2", match="sequence-to-sequence")


# -- serving ------------------------------------------------------------------------


def test_served_seq2seq_translates_its_prompt_with_sampling_or_beams(reversal):
    pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'genrnn[serve]'")
    httpx = pytest.importorskip("httpx", reason="httpx is not installed (test extra)")
    from genrnn.serve import BackgroundServer, Limits, create_app

    run, held_out, _ = reversal
    sources = held_out[:5]
    with BackgroundServer(create_app({"rev": run}, Limits())) as srv:
        def post(**body):
            return httpx.post(f"{srv.url}/v1/completions", json={"model": "rev", **body}, timeout=60)

        card = httpx.get(f"{srv.url}/v1/models/rev", timeout=30).json()
        assert card["genrnn"]["condition"]["kind"] == "text" and card["genrnn"]["condition"]["max_length"] == 16
        greedy = post(prompt=sources, max_tokens=16, temperature=0).json()
        assert [c["text"] for c in greedy["choices"]] == run.translate(sources, beam=1)
        beams = post(prompt=sources, max_tokens=16, beam=3).json()
        assert [c["text"] for c in beams["choices"]] == run.translate(sources, beam=3)
        assert {c["finish_reason"] for c in beams["choices"]} == {"stop"}
        short = post(prompt=sources[0], max_tokens=2, beam=3).json()["choices"][0]
        assert short["finish_reason"] == "length" and len(short["text"]) == 2
        stream = httpx.post(f"{srv.url}/v1/completions", json={"model": "rev", "prompt": sources[0], "beam": 2,
                                                               "max_tokens": 16, "stream": True}, timeout=60)
        assert sources[0][::-1] in stream.text and "[DONE]" in stream.text
        for body, param in (({"beam": 0}, "beam"), ({"beam": 2, "n": 2}, "n"), ({"beam": 2, "stop": "a"}, "stop"),
                            ({"condition": "x"}, "condition"), ({"prompt": "z" * 40}, "prompt"),
                            ({"prompt": ""}, "prompt")):
            r = post(**{"prompt": sources[0], **body})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["param"] == param, r.text


def test_keep_placeholders_picks_the_best_hypothesis_that_keeps_them(reversal, monkeypatch):
    run, held_out, _ = reversal
    src = held_out[0]
    hyps = run.beam_search([""], beam=4, num_return=4, condition=[src])[0]
    # pretend the source has a placeholder only the third hypothesis carries
    import genrnn.metrics as metrics

    monkeypatch.setattr(metrics, "placeholders", lambda t: ["%s"] if t in (src, hyps[2][0]) else [])
    assert run.translate(src, beam=4, keep_placeholders=True) == hyps[2][0]
    assert run.translate(src, beam=4) == hyps[0][0]
    with pytest.raises(GenrnnError, match="beam of 2"):
        run.translate(src, beam=1, keep_placeholders=True)

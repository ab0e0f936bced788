"""Defaults chosen for the device, the budget and the corpus (autoconfig.choose is pure)."""

from __future__ import annotations

import json
import random

import pytest

import genrnn
from genrnn.autoconfig import CHOSEN, DeviceFacts, choose

CPU2 = DeviceFacts("cpu", threads=2, bf16=False, name="no native bf16")
CPU2_BF16 = DeviceFacts("cpu", threads=2, bf16=True, name="AVX512-BF16")
MB = 1_000_000


def test_two_minutes_on_two_cores_takes_small_steps_and_the_mixture():
    c = choose(CPU2, 120, MB)
    o = c.options
    assert o["type"] == "mixture" and o["order"] == 8
    assert (o["num_layers"], o["hidden_size"], o["batch_size"], o["seq_len"]) == (2, 256, 32, 64)
    assert "precision" not in o  # no native bf16: float32
    assert "2x256" in c.reason and "8-gram" in c.reason
    assert choose(CPU2, 120, 500_000_000).options["order"] == 5  # bounded tables for a huge text


def test_ten_minutes_goes_wider_with_dropout():
    o = choose(CPU2, 600, MB).options
    assert (o["hidden_size"], o["batch_size"], o["dropout"]) == (384, 64, 0.1)


def test_native_bf16_turns_on_autocast_and_counts_as_more_compute():
    assert choose(CPU2_BF16, 120, MB).options["precision"] == "bf16"
    # 5 minutes: 300 s x 1.45 crosses the width threshold only with bf16
    assert choose(CPU2, 300, MB).options["hidden_size"] == 256
    assert choose(CPU2_BF16, 300, MB).options["hidden_size"] == 384


def test_one_thread_gets_less_than_many():
    one = choose(DeviceFacts("cpu", threads=1), 360, 10 * MB).options
    many = choose(DeviceFacts("cpu", threads=16), 360, 10 * MB).options
    assert one["hidden_size"] == 256 and many["hidden_size"] == 384
    assert many["eval_every"] > one["eval_every"]  # more steps in the same minutes: fewer evaluations per step


def test_a_small_text_is_validated_every_two_passes_and_gets_more_dropout_when_seen_many_times():
    big, small = choose(CPU2_BF16, 600, 10 * MB).options, choose(CPU2_BF16, 600, 300_000).options
    assert big["eval_every"] == 550 and big["dropout"] == 0.1  # about 5 evaluations in the budget
    # 300k characters at 64x64: two passes are 132 steps; the budget gives about 40 passes
    assert small["eval_every"] == 150 and small["dropout"] == 0.3
    assert choose(CPU2_BF16, 600, 1_100_000).options["dropout"] == 0.1  # tiny Shakespeare: 11 passes
    words = choose(CPU2_BF16, 600, 150_000, tokenizer="word").options  # Alice: hundreds of passes
    assert words["eval_every"] == 50 and words["dropout"] == 0.5
    assert choose(CPU2_BF16, 120, 150_000, tokenizer="word").options["dropout"] == 0.3


def test_a_gpu_keeps_large_batches_and_float32():
    o = choose(DeviceFacts("cuda", threads=8, bf16=True, name="H100"), 120, MB).options
    assert (o["batch_size"], o["seq_len"]) == (64, 128)
    assert "precision" not in o and o["type"] == "mixture"


def test_a_tiny_corpus_gets_a_short_ngram_and_no_wide_model():
    o = choose(CPU2, 1800, 20_000).options
    assert o["hidden_size"] == 256 and o["dropout"] == 0.2
    assert choose(CPU2, 120, 20_000).options["dropout"] == 0.0


def test_word_level_gets_the_small_lstm_tied_on_a_small_text_and_adaptive_on_a_large_one():
    o = choose(CPU2, 120, 5 * MB, tokenizer="whitespace").options
    assert (o["hidden_size"], o["embedding_size"], o["tie_weights"], o["seq_len"]) == (200, 200, False, 35)
    assert o["adaptive_softmax"] == "auto"
    assert o["order"] == 5 and o["dropout"] == 0.1 and o["state_span"] > 1
    small = choose(CPU2, 120, 150_000, tokenizer="word").options
    assert small["order"] == 4 and small["dropout"] == 0.3
    assert small["tie_weights"] and "adaptive_softmax" not in small
    asked = choose(CPU2, 120, 150_000, tokenizer="word", adaptive=True).options
    assert not asked["tie_weights"]


def test_lines_layout_keeps_the_record_length():
    assert "seq_len" not in choose(CPU2, 120, MB, layout="lines").options


def test_a_step_budget_stands_for_a_time():
    few = choose(CPU2, None, MB, max_steps=100).options
    many = choose(CPU2, None, MB, max_steps=100_000).options
    assert few["hidden_size"] == 256 and many["hidden_size"] == 384
    assert few["eval_every"] == 50


def test_every_chosen_option_is_a_real_option():
    from genrnn.config import option_names

    names = option_names()
    for facts in (CPU2, CPU2_BF16, DeviceFacts("cuda", 8, True)):
        for tok in ("char", "word"):
            for key in choose(facts, 600, MB, tokenizer=tok).options:
                assert key in names
    assert set(CHOSEN) <= set(names)


# -- applied by genrnn.train -------------------------------------------------------------


def _corpus(tmp_path):
    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran off to see the dog".split()
    path = tmp_path / "c.txt"
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(10)) for _ in range(300)))
    return path


def _saved(run_dir):
    return json.loads((run_dir / "config.json").read_text())["run"]


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_no_model_options_means_the_automatic_choice(tmp_path):
    run = genrnn.train(_corpus(tmp_path), out=tmp_path / "auto", max_steps=4, sample_every=0, device="cpu")
    cfg = _saved(tmp_path / "auto")
    assert cfg["model"]["type"] == "mixture" and cfg["data"]["batch_size"] == 32
    auto = next(x["auto"] for x in _metrics(tmp_path / "auto") if "auto" in x)
    assert auto["options"]["type"] == "mixture" and "automatic settings" in auto["reason"]
    assert run.complete(["the "], length=5, temperature=0)[0].tokens == 5


def test_an_explicit_flag_beats_the_automatic_choice(tmp_path):
    genrnn.train(_corpus(tmp_path), out=tmp_path / "b", max_steps=2, batch_size=8, sample_every=0, device="cpu")
    cfg = _saved(tmp_path / "b")
    # one model/batch option given: nothing is chosen, the plain defaults stay
    assert cfg["data"]["batch_size"] == 8 and cfg["model"]["type"] == "rnn" and cfg["model"]["hidden_size"] == 256
    assert not any("auto" in x for x in _metrics(tmp_path / "b"))
    # an option outside the choice is kept beside it
    genrnn.train(_corpus(tmp_path), out=tmp_path / "c", max_steps=2, eval_every=1, sample_every=0, device="cpu")
    assert _saved(tmp_path / "c")["train"]["eval_every"] == 1
    assert _saved(tmp_path / "c")["model"]["type"] == "mixture"


def test_a_preset_turns_the_choice_off(tmp_path):
    genrnn.train(_corpus(tmp_path), out=tmp_path / "p", preset="lesson", max_steps=2, sample_every=0, device="cpu")
    cfg = _saved(tmp_path / "p")
    assert cfg["model"]["type"] == "rnn" and cfg["model"]["hidden_size"] == 64


@pytest.mark.parametrize("tokenizer", ["char", "word"])
def test_the_choice_trains_at_both_levels(tmp_path, tokenizer):
    run = genrnn.train(_corpus(tmp_path), out=tmp_path / tokenizer, max_steps=3, tokenizer=tokenizer,
                       sample_every=0, device="cpu")
    best = run.result.best_val
    assert best["loss"] <= min(best["rnn_loss"], best["baseline_loss"]) + 1e-9

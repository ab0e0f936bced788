"""The recurrent language model: shapes, state carrying, prefill/step, the
padding mask, weight tying, the registry, overfitting a tiny corpus, and the
held-out evaluation of a model (loss, perplexity, bits per character)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genrnn.config import DataConfig, ModelConfig
from genrnn.data import IGNORE, count_chars, encode_stream, make_eval_set
from genrnn.errors import GenrnnError
from genrnn.evaluate import evaluate
from genrnn.models import MODELS, RNNLM, build_model, detach_state, map_state
from genrnn.runtime import make_runtime
from genrnn.tokenizers import PAD_ID, build_tokenizer

V = 11
CELLS = ["lstm", "gru", "rnn"]
EMBEDDINGS = [0, 6]  # 0: one-hot input



def make_model(cell: str = "lstm", embedding_size: int = 6, hidden_size: int = 16, num_layers: int = 2,
               vocab_size: int = V, seed: int = 0, **kw) -> RNNLM:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(cell=cell, vocab_size=vocab_size, embedding_size=embedding_size,
                                    hidden_size=hidden_size, num_layers=num_layers, **kw))
    return model.eval()


def random_idx(B: int, T: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g)


def state_shapes(state):
    return [tuple(s.shape) for s in state] if isinstance(state, tuple) else [tuple(state.shape)]


def assert_state_close(a, b, atol=1e-5):
    assert type(a) is type(b)
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, atol=atol, rtol=0)
    else:
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


grid = pytest.mark.parametrize("cell,embedding_size", [(c, e) for c in CELLS for e in EMBEDDINGS])


@grid
@torch.no_grad()
def test_shapes_loss_and_state(cell, embedding_size):
    model = make_model(cell, embedding_size, hidden_size=12, num_layers=2)
    idx = random_idx(3, 7)
    logits, loss, state = model(idx, idx)
    assert logits.shape == (3, 7, V)
    assert loss.shape == () and torch.isfinite(loss)
    # an untrained model is close to uniform: the loss is near ln V
    assert abs(float(loss) - math.log(V)) < 0.5
    expected = [(2, 3, 12)] * (2 if cell == "lstm" else 1)
    assert isinstance(state, tuple) == (cell == "lstm")
    assert state_shapes(state) == expected
    # no targets: no loss
    assert model(idx)[1] is None


@grid
def test_input_kind(cell, embedding_size):
    model = make_model(cell, embedding_size)
    if embedding_size == 0:
        assert model.embedding is None
        assert model.rnn.input_size == V
    else:
        assert model.embedding.weight.shape == (V, embedding_size)
        assert model.rnn.input_size == embedding_size


@grid
@torch.no_grad()
def test_state_carried_over_two_halves_equals_one_pass(cell, embedding_size):
    model = make_model(cell, embedding_size)
    idx = random_idx(2, 13)
    whole, _, state_whole = model(idx)
    first, _, state = model(idx[:, :5])
    second, _, state_two = model(idx[:, 5:], None, state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=0)
    assert_state_close(state_two, state_whole)
    # and the carried state matters: starting the second half cold differs
    cold, _, _ = model(idx[:, 5:])
    assert (cold - second).abs().max() > 1e-3


@grid
@torch.no_grad()
def test_prefill_padded_batch_equals_each_prompt_alone(cell, embedding_size):
    model = make_model(cell, embedding_size)
    prompts = [[3, 4, 5, 6, 7], [8], [9, 10, 3]]
    lengths = torch.tensor([len(p) for p in prompts])
    idx = torch.full((3, 5), PAD_ID, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, : len(p)] = torch.tensor(p)
    last, state = model.prefill(idx, lengths)
    assert last.shape == (3, V)
    for i, p in enumerate(prompts):
        alone, _, alone_state = model(torch.tensor([p]))
        torch.testing.assert_close(last[i], alone[0, -1], atol=1e-5, rtol=0)
        assert_state_close(map_state(lambda s: s[:, i : i + 1], state), alone_state)


@grid
@torch.no_grad()
def test_prefill_without_padding_and_with_initial_state(cell, embedding_size):
    model = make_model(cell, embedding_size)
    idx = random_idx(2, 6)
    _, _, init = model(random_idx(2, 4, seed=7))
    last, state = model.prefill(idx, torch.tensor([6, 6]), init)
    full, _, full_state = model(idx, None, init)
    torch.testing.assert_close(last, full[:, -1], atol=1e-5, rtol=0)
    assert_state_close(state, full_state)
    # padded path with an initial state too
    last2, _ = model.prefill(idx, torch.tensor([6, 3]), init)
    short, _, _ = model(idx[1:, :3], None, map_state(lambda s: s[:, 1:2], init))
    torch.testing.assert_close(last2[1], short[0, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(last2[0], full[0, -1], atol=1e-5, rtol=0)


@grid
@torch.no_grad()
def test_step_after_prefill_equals_forward_over_prompt_plus_token(cell, embedding_size):
    model = make_model(cell, embedding_size)
    prompts = [[3, 4, 5, 6], [7, 8]]
    idx = torch.tensor([[3, 4, 5, 6], [7, 8, PAD_ID, PAD_ID]])
    _, state = model.prefill(idx, torch.tensor([4, 2]))
    nxt = torch.tensor([9, 10])
    logits, state = model.step(nxt, state)
    assert logits.shape == (2, V)
    nxt2 = torch.tensor([4, 5])
    logits2, _ = model.step(nxt2, state)
    for i, p in enumerate(prompts):
        full, _, _ = model(torch.tensor([p + [int(nxt[i]), int(nxt2[i])]]))
        torch.testing.assert_close(logits[i], full[0, -2], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits2[i], full[0, -1], atol=1e-5, rtol=0)


@grid
@torch.no_grad()
def test_ignored_targets_do_not_count(cell, embedding_size):
    model = make_model(cell, embedding_size)
    idx = random_idx(2, 9)
    targets = random_idx(2, 9, seed=3)
    lengths = [9, 4]
    padded_idx, padded_targets = idx.clone(), targets.clone()
    padded_idx[1, 4:] = PAD_ID
    padded_targets[1, 4:] = IGNORE
    _, loss, _ = model(padded_idx, padded_targets)
    # the same loss from each row's real part, weighted by its number of targets
    nats = 0.0
    for i, n in enumerate(lengths):
        _, row_loss, _ = model(idx[i : i + 1, :n], targets[i : i + 1, :n])
        nats += float(row_loss) * n
    assert float(loss) == pytest.approx(nats / sum(lengths), abs=1e-5)
    # and it is not the loss that counts the padding: with the least likely
    # token as target at the padded positions it would be clearly higher
    logits, _, _ = model(padded_idx)
    worst = logits.argmin(-1)
    _, unmasked, _ = model(padded_idx, torch.where(padded_targets == IGNORE, worst, padded_targets))
    assert float(unmasked) > float(loss) + 1e-3


@torch.no_grad()
def test_loss_is_mean_cross_entropy():
    model = make_model("gru", 6)
    idx, targets = random_idx(2, 5), random_idx(2, 5, seed=9)
    logits, loss, _ = model(idx, targets)
    log_probs = torch.log_softmax(logits.double(), -1)
    expected = -log_probs.gather(-1, targets[..., None]).mean()
    assert float(loss) == pytest.approx(float(expected), abs=1e-5)


def test_tie_weights_shares_the_tensor():
    model = make_model("lstm", embedding_size=16, hidden_size=16, tie_weights=True)
    assert model.head.weight is model.embedding.weight
    with torch.no_grad():
        model.embedding.weight[5, 0] = 42.0
    assert float(model.head.weight.detach()[5, 0]) == 42.0
    # counted once among the parameters
    n_params = sum(p.numel() for p in model.parameters())
    untied = make_model("lstm", embedding_size=16, hidden_size=16)
    assert sum(p.numel() for p in untied.parameters()) - n_params == V * 16
    assert untied.head.weight is not untied.embedding.weight


@pytest.mark.parametrize("embedding_size", [0, 8])
def test_tie_weights_size_mismatch_raises(embedding_size):
    config = ModelConfig(vocab_size=V, embedding_size=embedding_size, hidden_size=16, tie_weights=True)
    with pytest.raises(GenrnnError, match="tie-weights"):
        config.validate()
    with pytest.raises(GenrnnError, match="tie-weights"):
        build_model(config)


def test_build_model_errors():
    with pytest.raises(GenrnnError, match="unknown model type 'transformer'"):
        build_model(ModelConfig(type="transformer", vocab_size=V, hidden_size=8))
    with pytest.raises(GenrnnError, match="vocabulary size"):
        build_model(ModelConfig(vocab_size=0, hidden_size=8))
    with pytest.raises(GenrnnError, match="cell"):
        build_model(ModelConfig(cell="transformer", vocab_size=V, hidden_size=8))
    with pytest.raises(GenrnnError, match="dropout"):
        build_model(ModelConfig(vocab_size=V, hidden_size=8, dropout=1.0))
    with pytest.raises(GenrnnError, match="embedding-size"):
        build_model(ModelConfig(vocab_size=V, hidden_size=8, embedding_size=-1))
    assert "rnn" in MODELS
    assert isinstance(build_model(ModelConfig(vocab_size=V, hidden_size=8, num_layers=1)), RNNLM)


def test_cell_and_sizes_follow_the_config():
    model = make_model("gru", embedding_size=5, hidden_size=9, num_layers=3)
    assert isinstance(model.rnn, torch.nn.GRU)
    assert (model.rnn.hidden_size, model.rnn.num_layers, model.rnn.batch_first) == (9, 3, True)
    assert model.head.weight.shape == (V, 9)
    assert isinstance(make_model("rnn").rnn, torch.nn.RNN)
    assert isinstance(make_model("lstm").rnn, torch.nn.LSTM)


def test_detach_state_cuts_the_graph():
    model = make_model("lstm", 6).train()
    _, _, state = model(random_idx(2, 4))
    assert all(s.requires_grad for s in state)
    detached = detach_state(state)
    assert all(not s.requires_grad for s in detached)
    assert all(torch.equal(a, b) for a, b in zip(state, detached))
    assert detach_state(None) is None


def test_dropout_is_off_in_eval_mode():
    model = make_model("lstm", 6, dropout=0.5)
    idx = random_idx(2, 6)
    a, _, _ = model(idx)
    b, _, _ = model(idx)
    assert torch.equal(a, b)
    model.train()
    c, _, _ = model(idx)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("cell,embedding_size", [("lstm", 0), ("gru", 16)])
def test_overfits_a_tiny_corpus(cell, embedding_size):
    """One 60-character text as one hand-made batch: the model must learn it by heart."""
    text = "the quick brown fox jumps over the lazy dog; pack my box now"
    assert len(text) == 60
    tokenizer = build_tokenizer("char", text)
    tokens = encode_stream(tokenizer, [text])  # <eos> t h e ...
    x, y = tokens[None, :-1], tokens[None, 1:]
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, vocab_size=tokenizer.vocab_size, embedding_size=embedding_size,
                                    hidden_size=32, num_layers=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    with torch.no_grad():
        _, first, _ = model(x, y)
    for _ in range(300):
        _, loss, _ = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.02:
            break
    model.eval()
    with torch.no_grad():
        _, loss, _ = model(x, y)
        logits, _, _ = model(x)
    assert float(first) > 2.0
    assert float(loss) < 0.05
    # and it reproduces the text greedily from <eos>
    assert tokenizer.decode(logits.argmax(-1)[0].tolist()) == text
    assert float(F.cross_entropy(logits[0], y[0])) < 0.05


# -- evaluation ---------------------------------------------------------------------------

EVAL_TEXTS = ["the cat sat on the mat, and the dog sat on the log.", "a short one", "",
              "then the cat ran off; the dog did not follow it at all"]
CPU = make_runtime("cpu", "fp32")


@pytest.mark.parametrize("layout", ["stream", "lines"])
@pytest.mark.parametrize("kind", ["char", "word"])
def test_evaluate_uniform_model_gives_ln_v(layout, kind):
    texts = [t for t in EVAL_TEXTS if t]
    tokenizer = build_tokenizer(kind, texts)
    config = DataConfig(tokenizer=kind, layout=layout, batch_size=3, seq_len=5)
    eval_set = make_eval_set(tokenizer, texts, config)
    model = make_model("lstm", 6, vocab_size=tokenizer.vocab_size)
    with torch.no_grad():  # every logit 0: the uniform distribution
        model.head.weight.zero_()
        model.head.bias.zero_()
    model.train()
    result = evaluate(model, eval_set, CPU)
    assert model.training  # put back as it was
    Vt = tokenizer.vocab_size
    tokens, chars = eval_set.num_targets, count_chars(texts, layout)
    assert result["tokens"] == tokens and result["chars"] == chars
    assert result["loss"] == pytest.approx(math.log(Vt), rel=1e-6)
    assert result["perplexity"] == pytest.approx(Vt, rel=1e-5)
    assert result["bits_per_char"] == pytest.approx(math.log(Vt) / math.log(2) * tokens / chars, rel=1e-6)
    if kind == "char":
        assert tokens == chars  # one target per character (an <eos> stands for a line break)
    else:
        assert tokens < chars


@torch.no_grad()
def test_evaluate_stream_equals_one_pass_over_the_text():
    """One lane: the windows with the state carried are one forward over the stream."""
    texts = [t for t in EVAL_TEXTS if t]
    tokenizer = build_tokenizer("char", texts)
    eval_set = make_eval_set(tokenizer, texts, DataConfig(batch_size=1, seq_len=7))
    model = make_model("gru", 6, vocab_size=tokenizer.vocab_size)
    tokens = eval_set.tokens
    _, loss, _ = model(tokens[None, :-1], tokens[None, 1:])
    result = evaluate(model, eval_set, CPU)
    assert result["tokens"] == len(tokens) - 1
    assert result["loss"] == pytest.approx(float(loss), abs=1e-5)


@torch.no_grad()
def test_evaluate_lines_equals_the_mean_over_records():
    texts = [t for t in EVAL_TEXTS if t] + ["x", "cat"]
    tokenizer = build_tokenizer("char", texts)
    eval_set = make_eval_set(tokenizer, texts, DataConfig(layout="lines", batch_size=2, seq_len=200))
    model = make_model("lstm", 0, vocab_size=tokenizer.vocab_size)
    nats, n = 0.0, 0
    for r in eval_set.records:
        r = torch.from_numpy(r)[None]
        _, loss, _ = model(r[:, :-1], r[:, 1:])
        nats += float(loss) * (r.shape[1] - 1)
        n += r.shape[1] - 1
    result = evaluate(model, eval_set, CPU)
    assert result["tokens"] == n
    assert result["loss"] == pytest.approx(nats / n, abs=1e-5)
    assert result["bits_per_char"] == pytest.approx(nats / count_chars(texts, "lines") / math.log(2), abs=1e-5)


@torch.no_grad()
def test_evaluate_max_tokens_scales_the_characters():
    texts = ["the cat sat on the mat and the dog sat on the log " * 4]
    tokenizer = build_tokenizer("word", texts)
    eval_set = make_eval_set(tokenizer, texts, DataConfig(tokenizer="word", batch_size=2, seq_len=4))
    model = make_model("rnn", 6, vocab_size=tokenizer.vocab_size)
    part = evaluate(model, eval_set, CPU, max_tokens=10)
    assert part["tokens"] == 10
    ratio = eval_set.num_chars / eval_set.num_targets  # characters per token of the whole split
    assert part["bits_per_char"] == pytest.approx(part["loss"] / ratio / math.log(2), rel=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_stacked_layers_with_dropout_equal_the_fused_module_in_eval(cell):
    """With inter-layer dropout the model stacks single-layer cells (so the
    dropout masks come from PyTorch's generator); with the same weights and
    dropout off it must compute exactly what the fused multi-layer module does."""
    from genrnn.models.rnn import StackedRNN

    torch.manual_seed(0)
    fused = build_model(ModelConfig(vocab_size=20, embedding_size=8, hidden_size=16, num_layers=3, cell=cell)).eval()
    stacked = build_model(ModelConfig(vocab_size=20, embedding_size=8, hidden_size=16, num_layers=3, cell=cell,
                                      dropout=0.3)).eval()
    assert isinstance(stacked.rnn, StackedRNN) and not isinstance(fused.rnn, StackedRNN)
    weights = {}
    for name, value in fused.state_dict().items():
        if name.startswith("rnn."):
            base, layer = name[len("rnn."):].rsplit("_l", 1)
            name = f"rnn.layers.{layer}.{base}_l0"
        weights[name] = value
    stacked.load_state_dict(weights)
    x = torch.randint(0, 20, (3, 9))
    lengths = torch.tensor([9, 4, 6])
    (la, _, sa), (lb, _, sb) = fused(x), stacked(x)
    assert torch.allclose(la, lb, atol=1e-5)
    for a, b in zip(sa if isinstance(sa, tuple) else (sa,), sb if isinstance(sb, tuple) else (sb,)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    pa, _ = fused.prefill(x, lengths)
    pb, _ = stacked.prefill(x, lengths)
    assert torch.allclose(pa, pb, atol=1e-5)

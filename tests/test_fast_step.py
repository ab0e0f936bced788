"""The fast generation path: ``RNNLM.step``'s own cell update against PyTorch's
modules, the cache of derived weights, and the sampling loop built on it
(greedy tokens, seeded reproducibility, the chunked accelerator path,
``complete()`` without per-token work)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import genrnn.sampling as sampling
from genrnn.config import ModelConfig
from genrnn.models import build_model, map_state
from genrnn.models.rnn import RNNLM, StackedRNN, _cell_update
from genrnn.sampling import SampleConfig, complete, generate_tokens
from genrnn.tokenizers import EOS_ID, PAD_ID, build_tokenizer

V = 11
CELLS = ["lstm", "gru", "rnn"]
SHAPES = [  # (num_layers, dropout): one layer, fused layers, stacked single-layer cells
    (1, 0.0),
    (3, 0.0),
    (3, 0.2),
]


def make(cell: str, embedding_size: int, num_layers: int, dropout: float = 0.0, seed: int = 0,
         vocab_size: int = V, hidden_size: int = 16) -> RNNLM:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(cell=cell, vocab_size=vocab_size, embedding_size=embedding_size,
                                    hidden_size=hidden_size, num_layers=num_layers, dropout=dropout))
    with torch.no_grad():  # larger than at initialisation, so that differences show
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


def states(state):
    return list(state) if isinstance(state, tuple) else [state]


def assert_same(a, b, atol=1e-5):
    (la, sa), (lb, sb) = a, b
    torch.testing.assert_close(la, lb, atol=atol, rtol=0)
    assert isinstance(sa, tuple) == isinstance(sb, tuple)
    for x, y in zip(states(sa), states(sb)):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=0)


class FastCalls:
    """Counts the calls of ``RNNLM._fast_step``, the fast path of ``step``
    (``step`` falls back to the module silently, so comparing the two says
    nothing unless the fast one is known to have run)."""

    def __init__(self):
        self.batches: list = []  # the batch size of each call

    def __len__(self) -> int:
        return len(self.batches)

    def since(self, mark: int) -> int:
        return len(self.batches) - mark


@pytest.fixture
def fast_calls(monkeypatch) -> FastCalls:
    calls = FastCalls()
    real = RNNLM._fast_step

    def spy(self, w, idx, state):
        calls.batches.append(idx.shape[0])
        return real(self, w, idx, state)

    monkeypatch.setattr(RNNLM, "_fast_step", spy)
    return calls


grid = pytest.mark.parametrize("cell,embedding_size,num_layers,dropout",
                               [(c, e, n, d) for c in CELLS for e in (0, 6) for n, d in SHAPES])


@grid
@pytest.mark.parametrize("rows", [[1], [0, 2], [0, 1, 2]])
def test_fast_step_equals_the_module(cell, embedding_size, num_layers, dropout, rows, fast_calls):
    """Logits and state after each of several steps, from a prefilled state and
    from no state, equal the fused (or stacked) module's. Batches of 1 and 2
    multiply by contiguous copies of the weights, larger ones by the parameters."""
    model = make(cell, embedding_size, num_layers, dropout)  # outside inference mode (see below)
    assert isinstance(model.rnn, StackedRNN) == (dropout > 0)
    idx = torch.tensor([[3, 4, 5, 6, 7], [8, 9, PAD_ID, PAD_ID, PAD_ID], [10, 2, 3, PAD_ID, PAD_ID]])[rows]
    with torch.inference_mode():
        _, state = model.prefill(idx, torch.tensor([5, 2, 3])[rows])
        fast, slow = state, state
        for tokens in ([3, 4, 5], [6, 7, 8], [9, 10, 1], [2, 3, 4]):
            nxt = torch.tensor(tokens)[rows]
            out_fast = model.step(nxt, fast)
            out_slow = model._module_step(nxt, slow)
            assert_same(out_fast, out_slow)
            fast, slow = out_fast[1], out_slow[1]
        assert fast_calls.batches == [len(rows)] * 4  # the fast path ran at every step
        assert model._step_weights is not None
        assert (model._step_weights._copies is not None) == (len(rows) <= 2)
        nxt = torch.tensor([3, 4, 5])[rows]
        assert_same(model.step(nxt, None), model._module_step(nxt, None))
        assert len(fast_calls) == 5


@grid
@torch.no_grad()
def test_fast_step_equals_forward_over_the_sequence(cell, embedding_size, num_layers, dropout, fast_calls):
    """Steps from a zero state reproduce ``forward`` over the whole sequence."""
    model = make(cell, embedding_size, num_layers, dropout)
    seq = torch.tensor([[3, 5, 7, 9, 2, 4], [1, 1, 6, 8, 10, 3]])
    full, _, full_state = model(seq)
    state = None
    for t in range(seq.shape[1]):
        logits, state = model.step(seq[:, t], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
    assert fast_calls.batches == [2] * seq.shape[1]  # every step took the fast path
    for x, y in zip(states(state), states(full_state)):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_cell_update_matches_rnn_cells(nonlinearity):
    """The cell arithmetic against PyTorch's single-step cells, one-hot or not,
    including the ReLU RNN that ModelConfig does not build (yet)."""
    torch.manual_seed(1)
    B, I, H = 4, 5, 7
    x, h, c = torch.randn(B, I), torch.randn(B, H), torch.randn(B, H)
    cells = {"lstm": nn.LSTMCell(I, H), "gru": nn.GRUCell(I, H), "rnn": nn.RNNCell(I, H, nonlinearity=nonlinearity)}
    with torch.no_grad():
        for name, m in cells.items():
            gru = name == "gru"
            gi = x @ m.weight_ih.t() + m.bias_ih + (0 if gru else m.bias_hh)
            got = _cell_update(name, nonlinearity, gi, h, c, m.weight_hh.t().contiguous(), m.bias_hh if gru else None)
            want = m(x, (h, c)) if name == "lstm" else (m(x, h), None)
            if name == "lstm":
                torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
                torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=0)
            else:
                torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=0)
                assert got[1] is None


@pytest.mark.parametrize("cell", CELLS)
def test_fast_step_under_bf16_autocast(cell, fast_calls):
    """Under autocast the products run in bf16, as the module's do: the two
    agree within bf16 rounding and give the same dtypes."""
    model = make(cell, 6, 2)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, state = model.prefill(torch.tensor([[3, 4, 5, 6]] * 2), torch.tensor([4, 4]))
        fast = model.step(torch.tensor([7, 8]), state)
        slow = model._module_step(torch.tensor([7, 8]), state)
    assert fast_calls.batches == [2]  # the fast path ran under autocast
    assert fast[0].dtype == slow[0].dtype
    assert [s.dtype for s in states(fast[1])] == [s.dtype for s in states(slow[1])]
    torch.testing.assert_close(fast[0].float(), slow[0].float(), atol=0.1, rtol=0.05)


def test_tied_weights_and_large_vocabularies(fast_calls):
    """Tied embedding/head; and a vocabulary too large to tabulate the first
    layer's input product (the embedding is looked up instead)."""
    torch.manual_seed(0)
    tied = build_model(ModelConfig(vocab_size=V, embedding_size=16, hidden_size=16, num_layers=2,
                                   tie_weights=True)).eval()
    with torch.inference_mode():
        _, state = tied.prefill(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
        assert_same(tied.step(torch.tensor([6]), state), tied._module_step(torch.tensor([6]), state))
    assert len(fast_calls) == 1
    import genrnn.models.rnn as rnn

    model = make("lstm", 6, 2)
    old = rnn._TABLE_MAX_ELEMENTS
    rnn._TABLE_MAX_ELEMENTS = 0
    try:
        with torch.inference_mode():
            _, state = model.prefill(torch.tensor([[3, 4, 5]]), torch.tensor([3]))
            assert_same(model.step(torch.tensor([6]), state), model._module_step(torch.tensor([6]), state))
            assert model._step_weights.table is None
            assert len(fast_calls) == 2  # the fast path, with the embedding looked up
    finally:
        rnn._TABLE_MAX_ELEMENTS = old


# -- the cache of derived weights ----------------------------------------------------------


def step_logits(model: RNNLM) -> torch.Tensor:
    """Two steps, so that every weight matters (from a zero state W_hh does not)."""
    with torch.inference_mode():
        _, state = model.step(torch.tensor([5, 6]), None)
        return model.step(torch.tensor([3, 4]), state)[0].clone()


def reference_logits(model: RNNLM) -> torch.Tensor:
    with torch.inference_mode():
        _, state = model._module_step(torch.tensor([5, 6]), None)
        return model._module_step(torch.tensor([3, 4]), state)[0]


def test_cache_follows_weight_changes(fast_calls):
    model = make("lstm", 6, 2)
    first = step_logits(model)
    assert len(fast_calls) == 2
    cached = model._step_weights
    assert step_logits(model) is not None and model._step_weights is cached  # unchanged weights: reused
    # an in-place change under no_grad
    with torch.no_grad():
        model.rnn.weight_hh_l1.mul_(0.5)
    changed = step_logits(model)
    assert not torch.allclose(first, changed)
    torch.testing.assert_close(changed, reference_logits(model), atol=1e-5, rtol=0)
    # load_state_dict (copies in place)
    other = make("lstm", 6, 2, seed=5)
    model.load_state_dict(other.state_dict())
    torch.testing.assert_close(step_logits(model), reference_logits(other), atol=1e-5, rtol=0)
    # an optimizer step
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    _, loss, _ = model(torch.tensor([[3, 4, 5]]), torch.tensor([[4, 5, 6]]))
    loss.backward()
    opt.step()
    model.eval()
    torch.testing.assert_close(step_logits(model), reference_logits(model), atol=1e-5, rtol=0)
    # a replaced parameter
    model.embedding.weight = nn.Parameter(torch.randn_like(model.embedding.weight))
    torch.testing.assert_close(step_logits(model), reference_logits(model), atol=1e-5, rtol=0)
    # .data bypasses the version counter: clear_step_cache() is the way
    with torch.no_grad():
        model.head.weight.data.mul_(1.0)  # the head is not cached: no problem there
        model.rnn.bias_hh_l0.data.add_(1.0)
    model.clear_step_cache()
    torch.testing.assert_close(step_logits(model), reference_logits(model), atol=1e-5, rtol=0)
    assert len(fast_calls) == 2 * 7  # each step_logits: two fast steps


def test_module_runs_where_the_fast_path_does_not_apply(fast_calls):
    model = make("lstm", 6, 2, dropout=0.5)
    nxt = torch.tensor([3, 4])
    # with gradients: the module, so that gradients reach the parameters
    logits, _ = model.step(nxt, None)
    assert logits.requires_grad and model._step_weights is None
    # training mode with dropout: the module, dropout and all
    model.train()
    with torch.no_grad():
        a, _ = model.step(nxt, None)
        b, _ = model.step(nxt, None)
    assert not torch.equal(a, b)
    assert model._step_weights is None
    # weights made in inference mode have no version counter: the module
    with torch.inference_mode():
        frozen = make("gru", 6, 2)
        out = frozen.step(nxt, None)
        assert frozen._step_weights is None
        assert_same(out, frozen._module_step(nxt, None))
    assert len(fast_calls) == 0


# -- generation ---------------------------------------------------------------------------


def module_stepping(model: RNNLM):
    """The same model, stepped through the fused module (the plain path)."""
    model.step = model._module_step  # an instance attribute shadows the method
    return model


@pytest.mark.parametrize("cell", CELLS)
def test_greedy_generation_equals_the_plain_path(cell, fast_calls):
    prompts = [[EOS_ID, 3, 4, 5], [EOS_ID], [EOS_ID, 9, 10]]
    config = SampleConfig(max_new_tokens=30, temperature=0.0)
    fast = torch.stack(list(generate_tokens(make(cell, 6, 2), prompts, config)))
    assert fast_calls.batches == [3] * 29  # a step per token after the first (which prefill gives)
    plain = torch.stack(list(generate_tokens(module_stepping(make(cell, 6, 2)), prompts, config)))
    assert len(fast_calls) == 29  # the plain path never took the fast one
    assert torch.equal(fast, plain)
    assert len(set(fast.flatten().tolist())) > 2


def test_seeded_sampling_is_reproducible_and_follows_the_plain_path(fast_calls):
    """Same seed, same tokens, run after run; the fast step and the module
    give logits equal to rounding, so at a fixed seed they draw the same tokens."""
    prompts = [[EOS_ID, 3], [EOS_ID, 5, 6], [EOS_ID]]
    config = SampleConfig(max_new_tokens=40, temperature=1.0, seed=7)
    model = make("lstm", 6, 2)
    a = torch.stack(list(generate_tokens(model, prompts, config)))
    assert fast_calls.batches == [3] * 39
    b = torch.stack(list(generate_tokens(model, prompts, config)))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.stack(list(generate_tokens(model, prompts, SampleConfig(
        max_new_tokens=40, temperature=1.0, seed=8)))))
    mark = len(fast_calls)
    plain = torch.stack(list(generate_tokens(module_stepping(make("lstm", 6, 2)), prompts, config)))
    assert fast_calls.since(mark) == 0
    assert torch.equal(a, plain)
    assert PAD_ID not in a.tolist()


@pytest.mark.parametrize("config", [
    SampleConfig(max_new_tokens=45, temperature=0.0),
    SampleConfig(max_new_tokens=45, temperature=0.9, seed=3),
    SampleConfig(max_new_tokens=45, temperature=[0.0, 1.3], top_k=4, top_p=0.9, seed=4),
    SampleConfig(max_new_tokens=1, seed=1),
])
def test_chunked_loop_gives_the_same_tokens(config, fast_calls):
    """The accelerator's loop (ids kept on the device, copied back in chunks
    of 1, 2, 4, ...) is the same computation as the one-token loop."""
    model = make("gru", 6, 2)
    prompts = [[EOS_ID, 3, 4], [EOS_ID]]
    cpu = torch.device("cpu")
    with torch.inference_mode():
        one = torch.stack(list(sampling._generate(model, prompts, config, cpu, 1)))
        assert len(fast_calls) == config.max_new_tokens - 1
        for chunk in (2, 8, 32):
            mark = len(fast_calls)
            got = list(sampling._generate(model, prompts, config, cpu, chunk))
            assert fast_calls.since(mark) == config.max_new_tokens - 1  # the chunked loop steps fast too
            assert all(t.shape == (2,) and t.dtype == torch.int64 for t in got)
            assert torch.equal(torch.stack(got), one)
        # stopping early leaves the model as it was
        model.train()
        gen = sampling._generate(model, prompts, config, cpu, 8)
        next(gen)
        assert not model.training
        gen.close()
        assert model.training


def test_draw_never_draws_an_excluded_token():
    """The inverse-CDF draw with the worst uniforms (0, and the largest below
    1): a token of probability 0 still cannot be drawn, and the index stays in
    range."""
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0], [1e-30, 0.0, 0.0, 0.0]])
    got = sampling.draw(probs, torch.zeros(3)).tolist()
    near_one = sampling.draw(probs, torch.full((3,), 1 - 2**-24)).tolist()
    assert got[0] in (1, 2) and got[1:] == [3, 0]
    assert near_one[0] in (1, 2) and near_one[1:] == [3, 0]


def test_generation_with_a_model_without_parameters():
    """The device comes from the buffers when a model has no parameters (the
    Markov baseline has only tables)."""

    class Buffered(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("logits", torch.tensor([0.0, 0.0, -9.0, 3.0, 1.0]))

        def prefill(self, idx, lengths, state=None):
            return self.logits.expand(idx.shape[0], -1), None

        def step(self, idx, state):
            return self.logits.expand(idx.shape[0], -1), None

    out = list(generate_tokens(Buffered(), [[2]], SampleConfig(max_new_tokens=3, temperature=0.0)))
    assert [t.tolist() for t in out] == [[3], [3], [3]]


@pytest.mark.parametrize("kind", ["char", "word"])
def test_complete_without_streaming_equals_the_streaming_loop(kind, fast_calls):
    """``complete()`` with no stop strings and no ``on_text`` collects ids and
    decodes at the end; the results are those of the per-token loop."""
    text = "the cat sat on the mat. a dog ran off! then the cat ran too, and the dog sat."
    tokenizer = build_tokenizer(kind, [text])
    model = make("lstm", 6, 1, vocab_size=tokenizer.vocab_size, seed=2)
    with torch.no_grad():
        model.head.bias[EOS_ID] -= 1.0  # so that some rows end early and others do not
    prompts = ["the", "", "a dog", "cat", "then", ""]
    for seed in range(3):
        config = SampleConfig(max_new_tokens=30, temperature=1.0, seed=seed)
        mark = len(fast_calls)
        quiet = complete(model, tokenizer, prompts, config)
        assert fast_calls.since(mark) > 0
        mark = len(fast_calls)
        pieces = {i: [] for i in range(len(prompts))}
        loud = complete(model, tokenizer, prompts, config, on_text=lambda i, s: pieces[i].append(s))
        assert fast_calls.since(mark) > 0
        assert quiet == loud
        assert ["".join(pieces[i]) for i in range(len(prompts))] == [c.text for c in quiet]
    reasons = {c.finish_reason for seed in range(3) for c in complete(
        model, tokenizer, prompts, SampleConfig(max_new_tokens=30, temperature=1.0, seed=seed))}
    assert reasons == {"eos", "length"}
    # everyone ends early: the loop stops before max_new_tokens
    with torch.no_grad():
        model.head.bias[EOS_ID] += 50.0
    done = complete(model, tokenizer, prompts, SampleConfig(max_new_tokens=30, temperature=1.0, seed=0))
    assert [(c.text, c.tokens, c.finish_reason) for c in done] == [("", 1, "eos")] * len(prompts)


def test_complete_restores_training_mode_after_an_early_end():
    tokenizer = build_tokenizer("char", ["abc"])
    model = make("gru", 6, 1, vocab_size=tokenizer.vocab_size)
    with torch.no_grad():
        model.head.bias[EOS_ID] += 50.0
    model.train()
    complete(model, tokenizer, ["a", "b"], SampleConfig(max_new_tokens=10, seed=0))
    assert model.training


def test_state_rows_select_and_concatenate(fast_calls):
    """The batching server selects and concatenates state rows along dim 1;
    the fast step must accept such states (non-contiguous included)."""
    model = make("lstm", 6, 2)
    with torch.inference_mode():
        _, state = model.prefill(torch.tensor([[3, 4], [5, 6], [7, 8]]), torch.tensor([2, 2, 2]))
        picked = map_state(lambda s: s[:, [2, 0]], state)
        strided = map_state(lambda s: s[:, ::2], state)
        for st in (picked, strided):
            assert_same(model.step(torch.tensor([1, 2]), st), model._module_step(torch.tensor([1, 2]), st))
    assert fast_calls.batches == [2, 2]


def test_training_mode_drops_the_weight_copies(fast_calls):
    """Back in training the copies would only take memory while the weights
    they were made from change; eval() keeps them (a server keeps the model in eval)."""
    model = make("lstm", 6, 2)
    step_logits(model)
    assert model._step_weights is not None
    model.eval()
    assert model._step_weights is not None
    model.train()
    assert model._step_weights is None
    model.eval()
    torch.testing.assert_close(step_logits(model), reference_logits(model), atol=1e-5, rtol=0)
    assert len(fast_calls) == 4


def test_large_cpu_batches_use_onednn_when_it_is_on(monkeypatch, fast_calls):
    """From a batch x width x threads threshold, the fused module (oneDNN)
    runs the step on CPU, unless oneDNN is off; the results agree either way."""
    import genrnn.models.rnn as rnn

    model = make("lstm", 6, 2)
    monkeypatch.setattr(rnn, "_ONEDNN_MIN_WORK", 3 * 16)  # batch 3 x width 16 x 1 thread
    nxt = torch.tensor([3, 4, 5])
    with torch.inference_mode():
        _, state = model.prefill(torch.tensor([[3, 4]] * 3), torch.tensor([2, 2, 2]))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert_same(model.step(nxt, state), model._module_step(nxt, state))
            assert model._step_weights is None  # the module ran
            assert len(fast_calls) == 0
            assert not model._onednn_wins(nxt[:2])
            with torch.backends.mkldnn.flags(enabled=False):
                assert not model._onednn_wins(nxt)
                assert_same(model.step(nxt, state), model._module_step(nxt, state))
            assert model._step_weights is not None  # the fast path ran
            assert fast_calls.batches == [3]
        finally:
            torch.set_num_threads(threads)

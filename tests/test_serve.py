"""``genrnn serve``: the batching engine, and the HTTP API through real clients.

A tiny model (1x32 LSTM, 30 steps, a few seconds) is trained once for the
module; live uvicorn servers run in background threads on free loopback ports.
The official ``openai`` package is the client, so the API is checked the way
users call it; raw ``httpx`` covers what that client hides (413, SSE framing,
a dropped connection). schemathesis fuzzes the served OpenAPI document.
"""

from __future__ import annotations

import json
import queue
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

fastapi = pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'genrnn[serve]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed (test extra)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (test extra)")

import genrnn  # noqa: E402
from genrnn.sampling import SampleConfig, complete  # noqa: E402
from genrnn.serve import BackgroundServer, Limits, create_app  # noqa: E402
from genrnn.sampling import RowSampling, Sampler  # noqa: E402
from genrnn.serve.engine import Engine, EngineFull, RowParams, RowSpec  # noqa: E402
from genrnn.tokenizers import EOS_ID  # noqa: E402

KEY = "test-key"
MODEL = "tiny"
# Large max_tokens so that greedy streams can hold every slot while a test looks
MAX_STREAMS = 8
LIMITS = Limits(max_tokens=100_000, max_prompt_chars=2_000, max_prompt_tokens=1_000, max_body_bytes=16_384,
                max_n=MAX_STREAMS, max_rows=MAX_STREAMS, max_streams=MAX_STREAMS)
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex jolly bankers "
         "in old london town and then they all go home").split()


def tiny_text(lines: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(lines))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> genrnn.TrainedModel:
    root = tmp_path_factory.mktemp("serve")
    (root / "tiny.txt").write_text(tiny_text())
    return genrnn.train(root / "tiny.txt", out=root / "run", max_steps=30, hidden_size=32, num_layers=1,
                        embedding_size=16, seq_len=32, batch_size=8, sample_every=0, eval_every=1000, device="cpu")


@pytest.fixture(scope="module")
def server(run):
    app = create_app({MODEL: run}, LIMITS, api_key=KEY)
    with BackgroundServer(app) as srv:
        yield srv


@pytest.fixture()
def client(server) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def auth() -> Dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def active_streams(server) -> int:
    return httpx.get(f"{server.url}/healthz").json()["active_streams"]


# -- the engine on its own ------------------------------------------------------------


class ThreadSink:
    """Collects an engine's updates in the engine thread (no event loop)."""

    loop = None

    def __init__(self):
        self.updates: "queue.Queue" = queue.Queue()

    def deliver(self, updates) -> None:
        self.updates.put(list(updates))

    def collect(self, rows: int, timeout: float = 30.0) -> Tuple[Dict[int, str], Dict[int, str], Dict[int, int]]:
        texts: Dict[int, str] = {}
        reasons: Dict[int, str] = {}
        counts: Dict[int, int] = {}
        while len(reasons) < rows:
            for u in self.updates.get(timeout=timeout):
                texts[u.index] = texts.get(u.index, "") + u.text
                counts[u.index] = u.completion_tokens
                if u.finish_reason:
                    reasons[u.index] = u.finish_reason
        return texts, reasons, counts


@pytest.fixture(scope="module")
def engine(run):
    eng = Engine({MODEL: run}, max_streams=16).start()
    yield eng
    eng.stop()


def spec(run, index: int, prompt: str, **params) -> RowSpec:
    return RowSpec(index, [EOS_ID] + run.tokenizer.encode(prompt), RowParams(**params))


def generate(engine, specs: List[RowSpec]) -> Dict[int, str]:
    sink = ThreadSink()
    engine.submit(MODEL, specs, sink)
    return sink.collect(len(specs))[0]


def test_seeded_row_is_the_same_alone_and_in_a_batch(run, engine):
    alone = generate(engine, [spec(run, 0, "the ", max_tokens=120, temperature=0.9, top_k=20, seed=42)])
    others = [spec(run, i, "a" * i, max_tokens=60 + 10 * i, temperature=0.5 + 0.2 * i, top_p=0.9, seed=i)
              for i in range(1, 6)]
    batched = generate(engine, others + [spec(run, 0, "the ", max_tokens=120, temperature=0.9, top_k=20, seed=42)])
    assert batched[0] == alone[0]
    assert len(alone[0]) > 50


def test_rows_joining_a_running_batch_keep_their_text(run, engine):
    """Rows submitted while others are mid-generation join between steps."""
    alone = generate(engine, [spec(run, 0, "over ", max_tokens=80, temperature=1.0, seed=7)])
    long_sink = ThreadSink()
    engine.submit(MODEL, [spec(run, i, "in ", max_tokens=2000, greedy=True) for i in range(4)], long_sink)
    time.sleep(0.05)
    joined = generate(engine, [spec(run, 0, "over ", max_tokens=80, temperature=1.0, seed=7)])
    long_sink.collect(4)
    assert joined == alone


def test_rows_share_steps(run, engine):
    before = engine.steps
    texts = generate(engine, [spec(run, i, "the ", max_tokens=40, greedy=True) for i in range(8)])
    assert len(texts) == 8
    assert engine.steps - before <= 41  # one step per token for all eight rows, not eight


def test_greedy_equals_complete(run, engine):
    prompt = "the lazy "
    expected = complete(run.model, run.tokenizer, [prompt], SampleConfig(max_new_tokens=100, temperature=0.0))[0]
    got = generate(engine, [spec(run, 0, prompt, max_tokens=100, greedy=True)])
    assert got[0] == expected.text
    batched = generate(engine, [spec(run, i, p, max_tokens=100, greedy=True)
                                for i, p in enumerate(["x", prompt, "jolly bankers"])])
    assert batched[1] == expected.text


def test_cancel_frees_the_slots_at_once(run):
    eng = Engine({MODEL: run}, max_streams=4).start()
    try:
        ticket = eng.submit(MODEL, [spec(run, i, "the ", max_tokens=10**9, greedy=True) for i in range(4)],
                            ThreadSink())
        assert eng.active == 4
        with pytest.raises(EngineFull):
            eng.submit(MODEL, [spec(run, 0, "a", max_tokens=5)], ThreadSink())
        ticket.cancel()
        assert eng.active == 0  # at once, not at the next step
        assert generate(eng, [spec(run, 0, "a", max_tokens=5, greedy=True)])
        assert wait_until(lambda: not eng._slots[MODEL].rows)  # and the rows left the batch
    finally:
        eng.stop()


def test_stop_and_length_and_eos(run, engine):
    base = generate(engine, [spec(run, 0, "the ", max_tokens=60, greedy=True)])[0]
    stop = base[20:23]
    cut = base[: base.index(stop)]
    sink = ThreadSink()
    engine.submit(MODEL, [spec(run, 0, "the ", max_tokens=60, greedy=True, stop=(stop,)),
                          spec(run, 1, "the ", max_tokens=0), spec(run, 2, "the ", max_tokens=7, greedy=True)], sink)
    texts, reasons, counts = sink.collect(3)
    assert texts[0] == cut and reasons[0] == "stop"
    assert texts.get(1, "") == "" and reasons[1] == "length" and counts.get(1, 0) == 0
    assert reasons[2] == "length" and counts[2] == 7 and texts[2] == base[:7]


class FixedUniforms:
    """A row's uniforms all equal to ``u`` (a stand-in for its generator)."""

    def __init__(self, u: float):
        self.u = u

    def take(self, n: int):
        import torch

        return torch.full((n,), self.u)


def sample_rows(logits, temperature, top_k, top_p, greedy, uniforms):
    """One draw of the engine's sampler (``genrnn.sampling.Sampler``) with the
    rows' settings given as lists and chosen uniforms."""
    rows = [RowSampling(0.0 if g else t, k or None, None if p >= 1.0 else p)
            for t, k, p, g in zip(temperature, top_k, top_p, greedy)]
    sampler = Sampler()
    sampler.add(rows, [FixedUniforms(u) for u in uniforms])
    return sampler(logits)


def test_sample_rows_per_row_settings():
    import torch

    logits = torch.tensor([[0.0, 0.0, 5.0, 1.0, 0.5], [0.0, 0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 1.0, 1.0, 1.0]])
    greedy = [True, False, False]
    temperature = [0.0, 1.0, 1.0]
    top_k = [0, 1, 0]  # row 1: only its best token
    top_p = [1.0, 1.0, 1.0]
    for u in (0.0, 0.3, 0.999):
        out = sample_rows(logits, temperature, top_k, top_p, greedy, [u] * 3)
        assert out[0] == 2 and out[1] == 4
        assert out[2] in (1, 2, 3, 4) and out[2] != 0  # never <pad>
    # inverse CDF over the vocabulary in id order: row 2 is id 1 (1 / (3e + 1) ~ 0.11),
    # then ids 2, 3, 4 (e / (3e + 1) ~ 0.30 each)
    sampling = [False] * 3
    picks = [int(sample_rows(logits, temperature, top_k, top_p, sampling, [u] * 3)[2])
             for u in (0.05, 0.2, 0.5, 0.9, 0.9999999)]
    assert picks == [1, 2, 3, 4, 4]
    # top-p 0.5 keeps the two most likely: ids 2 and 3 (ties by id; 0.30 + 0.30 >= 0.5)
    half = [1.0, 1.0, 0.5]
    picks = [int(sample_rows(logits, temperature, top_k, half, sampling, [u] * 3)[2])
             for u in (0.0, 0.49, 0.51, 0.9999999)]
    assert picks == [2, 2, 3, 3]
    # a row's token does not depend on whether the other rows filter
    plain = sample_rows(logits, temperature, [0, 0, 0], top_p, sampling, [0.3] * 3)
    mixed = sample_rows(logits, temperature, top_k, [0.5, 1.0, 1.0], sampling, [0.3] * 3)
    assert plain[2] == mixed[2]


# -- the HTTP API through the openai client ---------------------------------------------


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok" and health["models"] == [MODEL] and health["max_streams"] == MAX_STREAMS


def test_plain_completion(client, run):
    r = client.completions.create(model=MODEL, prompt="the quick ", max_tokens=30, temperature=0.8, seed=1)
    assert r.object == "text_completion" and r.model == MODEL
    (choice,) = r.choices
    assert isinstance(choice.text, str) and choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len("the quick ")
    assert 1 <= r.usage.completion_tokens <= 30
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # "default", or no model at all, picks the only one
    again = client.completions.create(model="default", prompt="the quick ", max_tokens=30, temperature=0.8, seed=1)
    assert again.choices[0].text == choice.text


def test_greedy_over_http_equals_the_library(client, run):
    want = run.complete(["the lazy "], length=80, greedy=True)[0].text
    r = client.completions.create(model=MODEL, prompt="the lazy ", max_tokens=80, temperature=0)
    assert r.choices[0].text == want
    r = client.completions.create(model=MODEL, prompt="the lazy ", max_tokens=80, extra_body={"greedy": True})
    assert r.choices[0].text == want


def test_stream_matches_plain(client):
    kwargs = dict(model=MODEL, prompt=["the ", "jolly "], max_tokens=60, temperature=1.1, n=2, seed=5)
    plain = client.completions.create(**kwargs)
    texts = {c.index: c.text for c in plain.choices}
    assert sorted(texts) == [0, 1, 2, 3]
    streamed: Dict[int, str] = {}
    finished = {}
    usage = None
    chunks = 0
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        chunks += 1
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert streamed == texts
    assert finished == {c.index: c.finish_reason for c in plain.choices}
    assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens
    assert chunks >= 5  # one per choice at least, and the usage
    # a long completion arrives in several pieces
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL, prompt="the ", max_tokens=1500,
                                                                    temperature=0, stream=True) if c.choices]
    assert len(pieces) >= 2 and len("".join(pieces)) > 1000


def test_sse_framing(server):
    body = {"model": MODEL, "prompt": "the ", "max_tokens": 20, "stream": True, "seed": 3}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=auth()) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["object"] == "text_completion" and c["model"] == MODEL for c in chunks)


def test_n_samples_differ_and_are_seeded(client):
    a = client.completions.create(model=MODEL, prompt="the ", max_tokens=40, n=4, seed=11, temperature=1.0)
    b = client.completions.create(model=MODEL, prompt="the ", max_tokens=40, n=4, seed=11, temperature=1.0)
    assert [c.index for c in a.choices] == [0, 1, 2, 3]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert len({c.text for c in a.choices}) > 1
    c = client.completions.create(model=MODEL, prompt="the ", max_tokens=40, n=4, seed=12, temperature=1.0)
    assert [x.text for x in c.choices] != [x.text for x in a.choices]


def test_stop_strings(client):
    base = client.completions.create(model=MODEL, prompt="the ", max_tokens=60, temperature=0).choices[0].text
    stop = base[25:28]
    want = base[: base.index(stop)]
    for s in (stop, [stop, "zzzzzz"]):
        r = client.completions.create(model=MODEL, prompt="the ", max_tokens=60, temperature=0, stop=s)
        assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="the ", max_tokens=60, temperature=0, stop=stop, stream=True))
    assert streamed == want


def test_seed_is_reproducible_under_concurrency(client):
    kwargs = dict(model=MODEL, prompt="in old ", max_tokens=100, temperature=1.0, top_p=0.95, seed=2024)
    alone = client.completions.create(**kwargs).choices[0].text

    def other(i: int) -> str:
        return client.completions.create(model=MODEL, prompt="x" * i, max_tokens=150, temperature=1.3,
                                         seed=i).choices[0].text

    with ThreadPoolExecutor(6) as pool:
        noise = [pool.submit(other, i) for i in range(5)]
        mine = [pool.submit(lambda: client.completions.create(**kwargs).choices[0].text) for _ in range(2)]
        assert [f.result() for f in mine] == [alone, alone]
        assert all(isinstance(f.result(), str) for f in noise)


def test_logprobs_legacy_shape(client):
    r = client.completions.create(model=MODEL, prompt="the ", max_tokens=25, temperature=0.7, seed=4, logprobs=3)
    choice = r.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == r.usage.completion_tokens
    assert "".join(t for t in lp.tokens if t != "<eos>") == choice.text
    assert lp.text_offset[0] == len("the ")
    assert all(b - a == len(t) for a, b, t in zip(lp.text_offset, lp.text_offset[1:], lp.tokens))
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert logprob <= 0 and len(top) == 3
        assert max(top.values()) >= logprob - 1e-6
        assert list(top.values()) == sorted(top.values(), reverse=True)


def test_echo(client):
    r = client.completions.create(model=MODEL, prompt="the ", max_tokens=10, temperature=0, echo=True)
    plain = client.completions.create(model=MODEL, prompt="the ", max_tokens=10, temperature=0)
    assert r.choices[0].text == "the " + plain.choices[0].text


def local_scores(run, prompt: str, condition=None, top: int = 0):
    """A prompt's logprobs from one forward pass here: (each token's, its top alternatives)."""
    import torch

    from genrnn.state import start

    ids = [EOS_ID] + run.tokenizer.encode(prompt)
    if len(ids) == 1:
        return [], []
    with torch.no_grad():
        cond = None if condition is None else run.encode_condition(condition, 1)
        logits, _, _ = run.model(torch.tensor([ids[:-1]]), None, start(run.model, cond))
    lsm = torch.log_softmax(logits.float(), dim=-1)[0]
    chosen = lsm[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].tolist()
    values, tops = torch.topk(lsm, top, dim=-1) if top else (None, None)
    alternatives = [] if not top else [{run.tokenizer.token_str(t): v for t, v in zip(ti, vi)}
                                       for ti, vi in zip(tops.tolist(), values.tolist())]
    return chosen, alternatives


def test_echo_with_logprobs_scores_the_prompt(client, run):
    prompt = "the lazy dog jumps"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=3)
    (choice,) = r.choices
    assert choice.text == prompt and choice.finish_reason == "length"
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == 0
    lp = choice.logprobs
    assert "".join(lp.tokens) == prompt and lp.text_offset == list(range(len(prompt)))
    want, alternatives = local_scores(run, prompt, top=3)
    assert lp.token_logprobs == pytest.approx(want, abs=1e-4)  # the first token's too: predicted from <eos>
    assert lp.token_logprobs[0] is not None
    for got, expected in zip(lp.top_logprobs, alternatives):
        assert list(got) == list(expected) and list(got.values()) == pytest.approx(list(expected.values()),
                                                                                    abs=1e-4)
    # then the generated tokens, as without echo
    kwargs = dict(model=MODEL, prompt=prompt, max_tokens=8, temperature=0.9, seed=2, logprobs=2)
    plain = client.completions.create(**kwargs).choices[0]
    echoed = client.completions.create(echo=True, **kwargs).choices[0]
    assert echoed.text == prompt + plain.text
    n = len(prompt)
    assert echoed.logprobs.tokens == [c for c in prompt] + plain.logprobs.tokens
    assert echoed.logprobs.token_logprobs[:n] == pytest.approx(want, abs=1e-4)
    assert echoed.logprobs.token_logprobs[n:] == plain.logprobs.token_logprobs
    assert echoed.logprobs.text_offset[n:] == plain.logprobs.text_offset
    assert all(len(top) == 2 for top in echoed.logprobs.top_logprobs)


def test_echo_with_logprobs_for_several_prompts_and_streamed(client, run):
    prompts = ["a jolly wizard", "", "old london town and then"]
    kwargs = dict(model=MODEL, prompt=prompts, max_tokens=5, temperature=1.0, n=2, seed=7, echo=True, logprobs=1)
    plain = client.completions.create(**kwargs)
    assert [c.index for c in plain.choices] == list(range(6))
    for c in plain.choices:
        prompt = prompts[c.index // 2]
        want, _ = local_scores(run, prompt)
        assert c.logprobs.token_logprobs[: len(prompt)] == pytest.approx(want, abs=1e-4)
        assert "".join(c.logprobs.tokens[: len(prompt)]) == prompt
        assert "".join(t for t in c.logprobs.tokens[len(prompt):] if t != "<eos>") == c.text[len(prompt):]
    first: Dict[int, object] = {}
    texts: Dict[int, str] = {}
    tokens: Dict[int, List[str]] = {}
    logprobs: Dict[int, List[float]] = {}
    for chunk in client.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            first.setdefault(c.index, c)
            texts[c.index] = texts.get(c.index, "") + c.text
            tokens.setdefault(c.index, []).extend(c.logprobs.tokens)
            logprobs.setdefault(c.index, []).extend(c.logprobs.token_logprobs)
    for c in plain.choices:
        prompt = prompts[c.index // 2]
        head = first[c.index]
        assert head.text.startswith(prompt) and "".join(head.logprobs.tokens[: len(prompt)]) == prompt
        assert texts[c.index] == c.text and tokens[c.index] == c.logprobs.tokens
        assert logprobs[c.index] == pytest.approx(c.logprobs.token_logprobs, abs=1e-6)


def test_echo_with_logprobs_of_a_long_prompt_in_chunks(run, monkeypatch):
    """The engine scores a prompt a chunk of positions at a time when its logits would be large."""
    import genrnn.serve.engine as engine_module

    monkeypatch.setattr(engine_module, "SCORE_ELEMENTS", 7 * run.tokenizer.vocab_size)
    prompt = tiny_text(2, seed=3)
    with BackgroundServer(create_app({MODEL: run}, LIMITS)) as srv:
        r = httpx.post(f"{srv.url}/v1/completions",
                       json={"prompt": [prompt, "the"], "max_tokens": 0, "echo": True, "logprobs": 0}).json()
    want, _ = local_scores(run, prompt)
    assert r["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx(want, abs=1e-4)
    assert r["choices"][0]["logprobs"]["top_logprobs"] == [{}] * len(prompt)
    assert r["choices"][1]["logprobs"]["token_logprobs"] == pytest.approx(local_scores(run, "the")[0], abs=1e-4)


def test_prompt_pieces_line_up_with_word_tokens():
    from genrnn.serve.app import _prompt_pieces
    from genrnn.tokenizers import build_tokenizer

    words = build_tokenizer("word", ["Alice was tired, very tired.\nThe end"])
    text = "  Alice was  tired, zebra.\nThe end "
    pieces = _prompt_pieces(words, text, words.encode(text))
    assert [t for t, _ in pieces] == ["  Alice", " was", "  tired", ",", " zebra", ".", "\n", "The", " end"]
    assert [o for _, o in pieces] == [sum(len(t) for t, _ in pieces[:i]) for i in range(len(pieces))]
    chars = build_tokenizer("char", ["abc"], lower=True)
    assert _prompt_pieces(chars, "AbX", chars.encode("AbX")) == [("A", 0), ("b", 1), ("X", 2)]


@pytest.fixture(scope="module")
def translator(tmp_path_factory):
    """A sequence-to-sequence model trained for two steps (its output does not matter)."""
    from test_seq2seq import strings, write_pairs

    folder = tmp_path_factory.mktemp("s2s")
    sources = strings(64, 0)
    table = write_pairs(folder / "pairs.csv", sources, [s[::-1] for s in sources])
    return genrnn.train(str(table), task="seq2seq", source_field="src", target_field="tgt", out=folder / "run",
                        max_steps=2, hidden_size=16, num_layers=1, seq_len=16, sample_every=0, eval_every=1000,
                        device="cpu")


def test_echo_with_logprobs_is_refused_for_a_seq2seq_model(translator):
    with BackgroundServer(create_app({"s2s": translator}, LIMITS)) as srv:
        url = f"{srv.url}/v1/completions"
        r = httpx.post(url, json={"prompt": "abc", "max_tokens": 0, "echo": True, "logprobs": 2})
        assert r.status_code == 400 and r.json()["error"]["param"] == "echo"
        assert "source" in r.json()["error"]["message"]
        ok = httpx.post(url, json={"prompt": "abc", "max_tokens": 3, "logprobs": 2})  # logprobs alone: fine
        assert ok.status_code == 200 and len(ok.json()["choices"][0]["logprobs"]["tokens"]) >= 1


# -- errors ----------------------------------------------------------------------------


def check_error(e: "openai.APIStatusError", status: int, param=None) -> dict:
    assert e.status_code == status
    body = e.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def test_401_without_or_with_a_wrong_key(server):
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "-", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.completions.create(model=MODEL, prompt="a", max_tokens=2)
        check_error(e.value, 401)
    r = httpx.post(f"{server.url}/v1/completions", json={"prompt": "a"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    assert httpx.get(f"{server.url}/healthz").status_code == 200  # no key needed


def test_404_unknown_model(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="nope", prompt="a", max_tokens=2)
    assert check_error(e.value, 404, "model")["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    r = httpx.get(f"{server.url}/v1/nothing-here", headers=auth())
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.parametrize("kwargs, param", [
    (dict(temperature=-1), "temperature"),
    (dict(top_p=0), "top_p"),
    (dict(max_tokens=LIMITS.max_tokens + 1), "max_tokens"),
    (dict(n=MAX_STREAMS + 1), "n"),
    (dict(prompt=["a"] * 5, n=2), "prompt"),
    (dict(prompt="a" * (LIMITS.max_prompt_chars + 1)), "prompt"),
    (dict(logprobs=99), "logprobs"),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
    (dict(extra_body={"top_k": 0}), "top_k"),
    (dict(extra_body={"frobnicate": 1}), "frobnicate"),
    (dict(presence_penalty=0.5), "presence_penalty"),
])
def test_400_bad_parameters(client, kwargs, param):
    args = dict(model=MODEL, prompt="a", max_tokens=2)
    args.update(kwargs)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**args)
    check_error(e.value, 400, param)


def test_400_raw_bodies(server):
    url = f"{server.url}/v1/completions"
    for content in (b"{not json", b"[1, 2]", b'"prompt"', b'{"prompt": 5}', b'{"max_tokens": "5"}',
                    b'{"temperature": NaN}', b'{"seed": 1e400}'):
        r = httpx.post(url, content=content, headers={**auth(), "Content-Type": "application/json"})
        assert r.status_code == 400, content
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_413_body_too_large(client, server):
    url = f"{server.url}/v1/completions"
    big = {"model": MODEL, "prompt": "a" * (LIMITS.max_body_bytes + 10)}
    r = httpx.post(url, json=big, headers=auth())
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the bytes are counted as they come
        yield b'{"prompt": "'
        for _ in range(LIMITS.max_body_bytes // 1000 + 2):
            yield b"a" * 1000
        yield b'"}'

    r = httpx.post(url, content=chunks(), headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 413
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL, prompt="a" * (LIMITS.max_body_bytes + 10), max_tokens=2)
    check_error(e.value, 413)
    assert client.completions.create(model=MODEL, prompt="a", max_tokens=2).choices  # still serving


def test_429_when_full_and_a_dropped_stream_frees_its_slots(client, server):
    body = {"model": MODEL, "prompt": "the ", "max_tokens": LIMITS.max_tokens, "n": MAX_STREAMS,
            "temperature": 0, "stream": True}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{server.url}/v1/completions", json=body, headers=auth()) as r:
            assert r.status_code == 200
            chunks = r.iter_bytes()  # (kept: a dropped iterator would close the connection)
            assert next(chunks).startswith(b"data: ")  # it is generating
            assert active_streams(server) == MAX_STREAMS
            with pytest.raises(openai.RateLimitError) as e:
                client.completions.create(model=MODEL, prompt="a", max_tokens=2)
            check_error(e.value, 429)
            assert e.value.response.headers.get("retry-after") == "1"
        # leaving the block closes the connection mid-stream
    assert wait_until(lambda: active_streams(server) == 0, timeout=3), "a dropped stream kept its slots"
    assert client.completions.create(model=MODEL, prompt="a", max_tokens=2).choices


def test_dropped_plain_request_frees_its_slots(server):
    body = {"model": MODEL, "prompt": "the ", "max_tokens": LIMITS.max_tokens, "n": 4, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/completions", json=body, headers=auth(), timeout=0.5)
    assert wait_until(lambda: active_streams(server) == 0, timeout=3), "a dropped request kept its slots"


def test_server_survives_a_burst_of_junk(server, client):
    url = f"{server.url}/v1/completions"
    junk = [b"", b"null", b"{}" * 1000, json.dumps({"prompt": ["a"] * 10000}).encode()[:16000],
            json.dumps({"prompt": "\ud800"}, ensure_ascii=True).encode(), b'{"stop": [""], "max_tokens": 3}']
    for content in junk:
        r = httpx.post(url, content=content, headers={**auth(), "Content-Type": "application/json"})
        assert r.status_code < 500, (content[:40], r.text)
    assert client.completions.create(model=MODEL, prompt="a", max_tokens=2).choices



def test_408_for_a_body_sent_too_slowly_and_healthz_counts_it(run):
    """A client that sends its body a byte at a time gets 408 after --body-timeout
    instead of holding a connection; /healthz counts the responses by status and
    shows the queue and the resident memory."""
    import socket

    limits = Limits(max_streams=4, body_timeout=1)
    with BackgroundServer(create_app({MODEL: run}, limits)) as srv:
        assert httpx.post(f"{srv.url}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 2}
                          ).status_code == 200
        port = srv.port
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 60\r\n\r\n{")
            reply = b""
            while chunk := sock.recv(4096):  # the server closes after the 408
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"request_timeout" in reply and 0.9 < time.monotonic() - start < 5
        health = httpx.get(f"{srv.url}/healthz").json()
        assert health["responses"] == {"200": 1, "408": 1}, health  # (this /healthz is counted once sent)
        assert health["waiting_rows"] == 0 and health["active_streams"] == 0
        assert health["rss_bytes"] is None or health["rss_bytes"] > 10_000_000
        assert health["limits"]["body_timeout"] == 1


@pytest.mark.slow
def test_server_soak_short(run, tmp_path):
    """benchmarks/server_soak.py for a few seconds: mixed and misbehaving clients,
    no 5xx, no unexpected status, every slot free at the end."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "server_soak.py"
    out = subprocess.run([sys.executable, str(bench), "--run", str(run.run_dir), "--duration", "8", "--clients", "4",
                          "--json", str(tmp_path / "soak.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["server_5xx"] == 0 and report["final_active"] == 0 and report["requests"] > 20
    seen = {k for k, c in report["by_kind"].items() if c}
    assert {"stream", "plain", "disconnect", "bad_json", "oversize", "slow"} <= seen, report["by_kind"]


# -- the command line --------------------------------------------------------------------


def test_cli_without_fastapi_says_what_to_install(run):
    """``import genrnn`` and ``genrnn --help`` work without the serve extra; ``genrnn serve`` says what to install."""
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
            "import genrnn; from genrnn.cli import main\n"
            "sys.exit(main(['serve', sys.argv[1], '--port', '0']))")
    r = subprocess.run([sys.executable, "-c", code, str(run.run_dir)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == "genrnn: error: genrnn serve needs FastAPI and uvicorn: pip install 'genrnn[serve]'"


def test_cli_serve_errors_are_one_line(run, server, capsys):
    from genrnn.cli import main

    for argv in (["serve"], ["serve", str(run.run_dir), "--max-streams", "0"],
                 ["serve", str(run.run_dir), "--model", "oops"],
                 ["serve", str(run.run_dir), "--port", str(server.port)]):  # the port is taken
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("genrnn: error: ") and err.count("\n") == 1, err


def test_cli_sample_from_a_server(server, capsys, monkeypatch):
    from genrnn.cli import main

    monkeypatch.delenv("GENRNN_API_KEY", raising=False)

    argv = ["sample", MODEL, "--server", server.url, "--api-key", KEY, "--prompt", "the ", "--prompt", "a ",
            "--temperature", "0.5", "--temperature", "1.2", "-n", "2", "--length", "30", "--seed", "3", "--json"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["prompt"], r["temperature"]) for r in rows] == [
        (p, t) for p in ("the ", "a ") for t in (0.5, 1.2) for _ in range(2)]
    assert all(0 < r["tokens"] <= 30 and r["finish_reason"] in ("length", "eos", "stop") for r in rows)
    assert main(argv) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows  # seeded
    assert main(["sample", MODEL, "--server", server.url, "--length", "5"]) == 2  # no key
    assert "401" in capsys.readouterr().err


# -- the OpenAPI document, fuzzed ------------------------------------------------------------


schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (test extra)")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402


@pytest.fixture(scope="module")
def fuzz_server(run):
    limits = Limits(max_tokens=24, max_prompt_chars=200, max_prompt_tokens=200, max_body_bytes=8192, max_n=4,
                    max_rows=8, max_streams=64)
    with BackgroundServer(create_app({MODEL: run}, limits, api_key=KEY)) as srv:
        yield srv


@pytest.fixture(scope="module")
def api_schema(fuzz_server):
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")
CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance, st_checks.content_type_conformance,
          st_checks.response_headers_conformance, st_checks.response_schema_conformance,
          st_checks.negative_data_rejection, st_checks.ignored_auth]


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_openapi_fuzz(case):
    case.call_and_validate(headers=auth(), checks=CHECKS)


def test_streamed_events_conform_to_the_spec(api_schema):
    """Each SSE event's data is a CompletionResponse chunk in JSON, or [DONE] (checked, not just fuzzed)."""
    operation = api_schema["/v1/completions"]["POST"]
    for body in ({"prompt": "the ", "stream": True, "max_tokens": 10, "n": 2, "logprobs": 2,
                  "stream_options": {"include_usage": True}},
                 {"prompt": ["the ", "a"], "stream": True, "max_tokens": 5, "echo": True, "stop": "e"}):
        case = operation.Case(body=body, media_type="application/json")
        response = case.call_and_validate(headers=auth(), checks=[st_checks.response_schema_conformance,
                                                                  st_checks.content_type_conformance])
        assert response.status_code == 200 and response.text.endswith("data: [DONE]\n\n")


def test_openapi_document_is_precise(server):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    post = spec["paths"]["/v1/completions"]["post"]
    assert {"200", "400", "401", "404", "413", "429"} <= set(post["responses"])
    assert "422" not in post["responses"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    request = spec["components"]["schemas"]["CompletionRequest"]
    assert {"prompt", "max_tokens", "temperature", "top_p", "top_k", "greedy", "n", "stop", "seed", "stream",
            "logprobs"} <= set(request["properties"])
    assert request.get("additionalProperties") is False
    assert "bearer" in json.dumps(spec.get("components", {}).get("securitySchemes", {})).lower()

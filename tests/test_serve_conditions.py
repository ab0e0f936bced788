"""``genrnn serve`` with a label-conditioned model and an image captioner:
the model cards, ``condition`` on /v1/completions, /v1/captions, and the 400s."""

from __future__ import annotations

import base64

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'genrnn[serve]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed (test extra)")
httpx = pytest.importorskip("httpx", reason="httpx is not installed (test extra)")

import genrnn  # noqa: E402
from genrnn.serve import BackgroundServer, Limits, create_app  # noqa: E402

from test_conditions import FRUIT, SMALL, write_table  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("served")
    rng = np.random.default_rng(0)
    labels = rng.choice(list(FRUIT), 240)
    write_table(root / "fruit.csv", [(l, FRUIT[l]) for l in labels])
    fruit = genrnn.train(root / "fruit.csv", fields=["text"], condition_field="label", out=root / "fruit",
                         max_steps=120, lr=0.02, seed=0, **SMALL)
    (root / "img").mkdir()
    rows = []
    for i in range(24):
        pixels = np.full((64, 64, 3), 255, np.uint8)
        pixels[10:40, 10:40] = (200, 30, 30) if i % 2 else (30, 30, 200)
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        rows.append((f"img/{i}.png", "a red square" if i % 2 else "a blue square"))
    write_table(root / "captions.csv", rows, header=("image", "caption"))
    captioner = genrnn.train(root / "captions.csv", fields=["caption"], image_field="image", out=root / "cap",
                             max_steps=20, seed=0, **SMALL)
    (root / "plain.txt").write_text("plain text for a plain model\n" * 30)
    plain = genrnn.train(root / "plain.txt", out=root / "plain", max_steps=5, **SMALL)
    return {"fruit": fruit, "cap": captioner, "plain": plain, "root": root}


@pytest.fixture(scope="module")
def server(runs):
    app = create_app({"fruit": runs["fruit"], "cap": runs["cap"], "plain": runs["plain"]},
                     Limits(max_rows=8, max_body_bytes=200_000))
    with BackgroundServer(app) as srv:
        yield srv


def post(server, path, **body):
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def error_of(r, status=400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_model_cards_describe_the_condition(server):
    cards = {m["id"]: m["genrnn"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert cards["fruit"]["condition"] == {"kind": "label", "labels": ["a", "b", "c"], "values": ["a", "b", "c"],
                                           "size": 3, "max_length": None}
    assert cards["cap"]["condition"]["kind"] == "image" and cards["cap"]["condition"]["size"] == 64
    assert cards["plain"]["condition"] is None


def test_completions_follow_the_condition(server):
    r = post(server, "/v1/completions", model="fruit", prompt="", condition="c", max_tokens=40, temperature=0)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == FRUIT["c"]
    r = post(server, "/v1/completions", model="fruit", prompt=["", ""], condition=["b", "a"], max_tokens=40,
             temperature=0, n=2)
    texts = [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]
    assert texts == [FRUIT["b"]] * 2 + [FRUIT["a"]] * 2
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model="fruit", prompt="", max_tokens=40, temperature=0, stream=True, extra_body={"condition": "a"}))
    assert streamed == FRUIT["a"]


def test_a_seed_gives_the_same_text_locally_and_served(server, runs):
    r = post(server, "/v1/completions", model="fruit", prompt="", condition="b", max_tokens=40, temperature=1.5,
             seed=7, n=3)
    served = [c["text"] for c in sorted(r.json()["choices"], key=lambda c: c["index"])]
    local = [c.text for c in runs["fruit"].complete([""] * 3, condition="b", length=40, temperature=1.5, seed=7)]
    assert served == local


def test_condition_errors_are_400(server):
    e = error_of(post(server, "/v1/completions", model="fruit", prompt="", condition="kiwi"))
    assert e["param"] == "condition" and "unknown label 'kiwi'; the labels are: a, b, c" in e["message"]
    e = error_of(post(server, "/v1/completions", model="fruit", prompt=""))
    assert e["param"] == "condition" and "generates from a label" in e["message"]
    e = error_of(post(server, "/v1/completions", model="plain", prompt="", condition="a"))
    assert "takes no condition" in e["message"]
    e = error_of(post(server, "/v1/completions", model="fruit", prompt=["", ""], condition=["a", "b", "c"]))
    assert "3 conditions for 2 rows" in e["message"]
    e = error_of(post(server, "/v1/completions", model="cap", prompt=""))
    assert "/v1/captions" in e["message"]


def test_captions_from_base64_and_raw_bodies(server, runs):
    images = [runs["root"] / "img" / f"{i}.png" for i in (0, 1)]
    local = runs["cap"].caption(images)
    data = [base64.b64encode(p.read_bytes()).decode() for p in images]
    r = post(server, "/v1/captions", model="cap", image=data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "caption" and [c["text"] for c in body["captions"]] == local
    r = post(server, "/v1/captions", model="cap", image="data:image/png;base64," + data[1])
    assert r.json()["captions"][0]["text"] == local[1]
    r = httpx.post(f"{server.url}/v1/captions?model=cap&max_tokens=50", content=images[0].read_bytes(),
                   headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["captions"][0]["text"] == local[0]
    # the same decoding as run.caption: a beam of 3 by default, or the one asked for
    greedy = runs["cap"].caption(images, beam=1)
    r = post(server, "/v1/captions", model="cap", image=data, beam=1)
    assert [c["text"] for c in r.json()["captions"]] == greedy
    r = httpx.post(f"{server.url}/v1/captions?model=cap&beam=1", content=images[0].read_bytes(),
                   headers={"Content-Type": "image/png"}, timeout=60)
    assert r.json()["captions"][0]["text"] == greedy[0]
    e = error_of(post(server, "/v1/captions", model="cap", image=data, beam=2, temperature=0.5))
    assert "beam" in e["message"] and "temperature" in e["message"]


def test_caption_errors_are_400(server, runs):
    e = error_of(post(server, "/v1/captions", model="cap", image="%%% not base64"))
    assert e["param"] == "image" and "base64" in e["message"]
    e = error_of(post(server, "/v1/captions", model="cap", image=base64.b64encode(b"not an image").decode()))
    assert e["param"] == "image" and e["message"].startswith("image: ")
    e = error_of(post(server, "/v1/captions", model="fruit", image=base64.b64encode(b"x").decode()))
    assert "not an image captioner" in e["message"]
    e = error_of(post(server, "/v1/captions", model="cap", image=[]))
    assert "at least one image" in e["message"]
    e = error_of(post(server, "/v1/captions", model="cap", image="", colour="red"))
    assert "invalid caption request" in e["message"]
    big = base64.b64encode(b"\0" * 300_000).decode()
    assert post(server, "/v1/captions", model="cap", image=big).status_code == 413

"""Training and sampling speed of genrnn's models on this machine.

    python benchmarks/speed.py                 # the figures quoted in the README
    python benchmarks/speed.py --json out.json

Training: tokens/s of full optimizer steps (forward, backward, AdamW) on
random tokens, median of --repeats timed steps after warmup, for the lesson's
model (one-hot input, LSTM 64) and for wider ones. Sampling: new characters/s
of genrnn's generation loop (prefill + one step per token) for 1 and for 64
parallel samples, median of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from genrnn.config import ModelConfig
from genrnn.models import build_model
from genrnn.runtime import Runtime, make_runtime
from genrnn.sampling import SampleConfig, generate_tokens

VOCAB = 68  # tiny Shakespeare's 65 characters + 3 specials

TRAIN_CASES = [  # (name, model, batch, seq_len)
    ("lesson: one-hot LSTM 64", dict(embedding_size=0, hidden_size=64, num_layers=1), 64, 128),
    ("default: 2x256 LSTM, emb 64", dict(embedding_size=64, hidden_size=256, num_layers=2), 64, 128),
    ("2x512 LSTM, emb 64", dict(embedding_size=64, hidden_size=512, num_layers=2), 64, 128),
]
SAMPLE_CASES = [("default: 2x256 LSTM", dict(embedding_size=64, hidden_size=256, num_layers=2))]


def _sync(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize()


def train_speed(model_kw, batch, seq_len, repeats, rt: Runtime):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=VOCAB, **model_kw)).to(rt.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(3, VOCAB, (batch, seq_len), device=rt.device)
    y = torch.randint(3, VOCAB, (batch, seq_len), device=rt.device)
    times = []
    for i in range(repeats + 2):
        _sync(rt)
        t = time.perf_counter()
        with rt.autocast():
            _, loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(rt)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return batch * seq_len / statistics.median(times)


def sample_speed(model_kw, batch, length, repeats, rt: Runtime):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=VOCAB, **model_kw)).to(rt.device).eval()
    prompts = [[2] + [5] * 20 for _ in range(batch)]
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        with rt.autocast():
            for _ in generate_tokens(model, prompts, SampleConfig(max_new_tokens=length, temperature=1.0, seed=0)):
                pass
        rates.append(batch * length / (time.perf_counter() - t))
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--length", type=int, default=500, help="characters per sample")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    ap.add_argument("--precision", default="fp32", help="fp32, bf16 or auto")
    ap.add_argument("--big", action="store_true", help="also time a 3x1024 LSTM (GPU)")
    args = ap.parse_args()
    rt = make_runtime(args.device, args.precision)
    cases = TRAIN_CASES + ([("3x1024 LSTM, emb 128", dict(embedding_size=128, hidden_size=1024, num_layers=3), 128, 128)]
                           if args.big else [])
    print(f"torch {torch.__version__}, {rt.describe()}")
    results = {"train_tokens_per_s": {}, "sample_chars_per_s": {}}
    for name, kw, b, t in cases:
        rate = train_speed(kw, b, t, args.repeats, rt)
        results["train_tokens_per_s"][name] = rate
        print(f"train  {name:<32} batch {b}x{t}: {rate:>10,.0f} tokens/s")
    for name, kw in SAMPLE_CASES:
        for b in (1, 64):
            rate = sample_speed(kw, b, args.length, args.repeats, rt)
            results["sample_chars_per_s"][f"{name}, {b} samples"] = rate
            print(f"sample {name:<32} {b:>3} parallel: {rate:>10,.0f} chars/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

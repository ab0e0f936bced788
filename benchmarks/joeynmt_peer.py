"""Peer anchor: JoeyNMT 2.3 trained and scored on genrnn's English->German split.

    python benchmarks/joeynmt_peer.py --out joeynmt.json                 # full run: 10 min training + decoding
    python benchmarks/joeynmt_peer.py --minutes 1 --limit 100            # smoke test (decodes 100 test lines)
    python benchmarks/joeynmt_peer.py --decode-only --limit 100          # re-decode the model already in --work

Run it with genrnn's Python (``/work/venv/bin/python``, which has sacrebleu);
JoeyNMT runs in a virtual environment of its own (``--venv``, default
``/work/joeynmt-venv``) that the script makes on first use, and is called as a
subprocess.

What it measures
----------------
Data: ``DATA/debian-l10n/en-de.{train,valid,test}.tsv`` (31,347 / 1,777 / 1,778
lines; no header; English TAB German TAB catalog), read as raw lines split on
TAB (no CSV quoting: the text has literal double quotes). ``--data`` defaults to
$GENRNN_DATA, then $GENRNN_SHARED_DATA, then ``../shared/data`` beside the repo
root; a folder that holds the TSVs directly is accepted as well. The splits are
written as JoeyNMT's plain parallel text (``train.en`` / ``train.de``, ...) into
``--work`` (default ``/tmp/joeynmt-peer``).

Model (the JoeyNMT YAML is written to ``WORK/train.yaml``): character level on
both sides (separate source and target vocabularies, every training character
kept), embeddings 64 (genrnn's default width), a 1-layer bidirectional LSTM
encoder of 256 per direction, a 1-layer LSTM decoder of 256 with Bahdanau
attention, bridge-initialised, with input feeding (JoeyNMT's recurrent
defaults). No dropout: ten CPU minutes are about half an epoch here (JoeyNMT
made 900-1,300 target tokens/s on this 2-core machine), far from overfitting.
Adam at 2e-3, gradients clipped to norm 1, loss normalised per target token,
batches of 3,000 tokens (``batch_type: token``: JoeyNMT counts padding,
max(src, trg)+1 times the sentences; about 1,400 real target tokens a batch),
shuffled, CPU only, ``--threads`` (default 2) intra-op threads via
OMP_NUM_THREADS / MKL_NUM_THREADS.

Time budget: JoeyNMT has no wall-clock limit, so training runs as a subprocess
(``python -m joeynmt train -t``) and gets SIGINT ``--minutes`` after it logs
``EPOCH 1`` (data loading and model building are not counted). JoeyNMT catches
KeyboardInterrupt in its training loop and saves the current weights
(``latest.ckpt``) on the way out, so the final state always lands on disk; it
also validates every ``--validation-freq`` updates (greedy decoding plus
perplexity on ``--dev-subset`` random valid lines, inside the budget, as
genrnn's validation is) and keeps ``best.ckpt`` by validation perplexity. The
test split is decoded with ``--ckpt`` (default ``latest``: the weights when the
clock ran out; ``best`` lags them by up to one validation interval).

Decoding: JoeyNMT's ``test`` mode on the test split (default all 1,778 lines;
``--limit N`` takes the first N), greedy and beam 5 (``--beams``), JoeyNMT's
default length penalty (off, ``beam_alpha: -1``), ``generate_unk: false``,
outputs capped by JoeyNMT's default (``max_output_length: -1``: 1.5 times the
longest source in the batch; batches of 3,000 tokens, as in training, hold
about 30-40 random lines, so the cap is rarely under 130 characters; set
``--max-output-length`` for a fixed cap). An undertrained model runs lines to
the cap, which makes decoding slow: with a fixed cap of 256, beam 5 took 2.7 s
a line after 70 updates; with the default cap 0.16 s. Expect the full run to
take roughly 15-25 minutes in all (10 of them training).

Figures (the table and one JSON line; ``--out FILE`` writes the JSON):

* BLEU and chrF with sacrebleu's defaults, exactly ``sacrebleu.corpus_bleu(hyps,
  [refs])`` / ``sacrebleu.corpus_chrf(hyps, [refs])`` on the detokenised
  outputs against the raw German column;
* placeholder match: the share of outputs whose printf placeholders equal the
  source's, as sorted lists (a multiset), placeholders being the matches of
  ``%(?:\\d+\\$)?[-+ #0']*(?:\\d+|\\*)?(?:\\.(?:\\d+|\\*))?(?:hh|h|ll|l|L|q|j|z|Z|t)?[diouxXeEfFgGaAcspnm%]``
  other than ``%%`` (found left to right, so ``%%d`` holds no ``%d``); over all
  lines, and over the lines whose source has one; the references' own share is
  printed as the ceiling;
* updates made and epochs (target tokens seen / target tokens in one epoch of
  train: characters + 1 for EOS per line, as JoeyNMT counts ``ntokens``);
* training target tokens/s, three ways: ``tokens_per_s_wall`` = JoeyNMT's own
  token counter (``total_tokens`` in the checkpoint: non-pad target tokens incl.
  EOS) / the budget's wall-clock seconds, validation included; ``..._excl_valid``
  = the same over wall-clock minus the validations' durations (from the log's
  timestamps: JoeyNMT's own "[sec]" there covers only the metrics); and
  ``joeynmt_logged_tokens_per_s_median``: the median of the "Tokens per Sec"
  JoeyNMT logs every ``logging_freq`` updates (it excludes validation);
* parameters (JoeyNMT's "Total params", checked against the checkpoint), and
  decode times.

Workarounds (JoeyNMT 2.3.0 on this machine's torch 2.13.0 CPU build)
--------------------------------------------------------------------
* Install order: ``pip install torch==2.13.0`` first (it comes from local disk
  as the CPU build; a bare ``pip install torch`` would fetch the multi-GB CUDA
  build), then ``pip install joeynmt==2.3.0 importlib_metadata torch==2.13.0``
  (torch named again so pip cannot move it). JoeyNMT asks only ``torch>=1.12``,
  so no ``--no-deps`` is needed; ``importlib_metadata`` is imported by
  ``joeynmt.helpers`` but is not among its declared dependencies.
* ``scheduling: plateau`` fails on torch 2.13 (JoeyNMT passes
  ReduceLROnPlateau's removed ``verbose`` argument) and a missing/``null``
  scheduler is refused ("Invalid scheduler"), so the config uses
  ``scheduling: exponential`` with ``decrease_factor: 0.99`` (per epoch: within
  the budget the learning rate stays within 2% of 2e-3).
* No time budget: SIGINT at the deadline, see above (``-t`` skips JoeyNMT's own
  test pass after training).
* The config is written as JSON (a subset of YAML that JoeyNMT's
  ``yaml.safe_load`` reads), with floats never in exponent form (PyYAML reads
  ``1e-05`` as a string).
* JoeyNMT reads its text files with ``str.splitlines()`` and drops empty lines,
  so a text with U+2028, VT, FF, \\x1c-\\x1e, \\x85 or an empty side would come
  out of line; such characters are replaced by a space and empty sides are
  refused (the debian-l10n split has neither).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from genrnn.metrics import bleu, chrf, placeholders

REPO = Path(__file__).resolve().parents[1]
JOEYNMT_VERSION = "2.3.0"
TORCH_VERSION = "2.13.0"
SPLITS = ("train", "valid", "test")

# characters str.splitlines() breaks on besides \n (and \r, which it also breaks on)
LINE_BREAKERS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def log(msg: str) -> None:
    print(f"[joeynmt-peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def data_dir(arg: Optional[str]) -> Path:
    base = arg or os.environ.get("GENRNN_DATA") or os.environ.get("GENRNN_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    base_p = Path(base)
    for cand in (base_p, base_p / "debian-l10n"):
        if (cand / "en-de.train.tsv").is_file():
            return cand
    raise SystemExit(f"no en-de.train.tsv in {base_p} or {base_p / 'debian-l10n'} (set --data or GENRNN_DATA)")


def read_split(path: Path) -> List[Tuple[str, str]]:
    """(English, German) pairs: raw lines split on TAB, no quoting."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    pairs = []
    for n, line in enumerate(lines, 1):
        cols = line.split("\t")
        if len(cols) < 2:
            raise SystemExit(f"{path}:{n}: expected English<TAB>German<TAB>catalog, got {len(cols)} column(s)")
        en, de = cols[0], cols[1]
        pairs.append((en, de))
    return pairs


def joey_safe(s: str, where: str) -> str:
    s = LINE_BREAKERS.sub(" ", s)
    if not s.strip():
        raise SystemExit(f"{where}: empty text, which JoeyNMT's plain reader would drop (lines would shift)")
    return s


def write_parallel(pairs: Sequence[Tuple[str, str]], prefix: Path) -> None:
    for lang, idx in (("en", 0), ("de", 1)):
        with open(f"{prefix}.{lang}", "w", encoding="utf-8", newline="\n") as f:
            for n, p in enumerate(pairs, 1):
                f.write(joey_safe(p[idx], f"{prefix.name}:{n}:{lang}") + "\n")


# --------------------------------------------------------------------------- venv


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, work: Path) -> None:
    py = venv_python(venv)
    check = [str(py), "-c", "import importlib_metadata, joeynmt.helpers, torch; "
             "print(importlib_metadata.version('joeynmt'), torch.__version__)"]
    if py.exists():
        r = subprocess.run(check, capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.split()[:1] == [JOEYNMT_VERSION]:
            log(f"JoeyNMT venv ready: {venv} (joeynmt, torch = {r.stdout.strip()})")
            return
    work.mkdir(parents=True, exist_ok=True)
    pip_log = work / "pip.log"
    log(f"making the JoeyNMT venv {venv} (pip output in {pip_log}, about a minute)")
    steps = []
    if not py.exists():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    steps.append(pip + [f"torch=={TORCH_VERSION}"])  # first: the CPU build from local disk
    steps.append(pip + [f"joeynmt=={JOEYNMT_VERSION}", "importlib_metadata", f"torch=={TORCH_VERSION}"])
    with open(pip_log, "a", encoding="utf-8") as f:
        for cmd in steps:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                raise SystemExit(f"venv step failed ({r.returncode}): {' '.join(cmd)}; see {pip_log}")
    r = subprocess.run(check, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"JoeyNMT does not import in {venv}:\n{r.stderr[-2000:]}")
    log(f"JoeyNMT venv made (joeynmt, torch = {r.stdout.strip()})")


# --------------------------------------------------------------------------- config


def to_yaml(obj) -> str:
    """JSON text (valid YAML) with floats in plain decimal notation."""
    if isinstance(obj, bool) or obj is None:
        return json.dumps(obj)
    if isinstance(obj, float):
        text = repr(obj)
        if "e" in text or "E" in text:
            text = f"{obj:.12f}".rstrip("0")
            if text.endswith("."):
                text += "0"
        return text
    if isinstance(obj, (int, str)):
        return json.dumps(obj, ensure_ascii=False)
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))}: {to_yaml(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(to_yaml(v) for v in obj) + "]"
    raise TypeError(type(obj))


def make_config(args, work: Path, model_dir: Path, test_prefix: Optional[Path], beam: int = 1) -> Dict:
    logging_freq = math.gcd(args.validation_freq, 50)
    side = {"level": "char", "lowercase": False, "normalize": False, "max_length": 1000,
            "voc_min_freq": 1, "voc_limit": 100000}
    data = {
        "dataset_type": "plain",
        "src": dict(side, lang="en"),
        "trg": dict(side, lang="de"),
    }
    if test_prefix is None:  # training config
        data.update(train=str(work / "data" / "train"), dev=str(work / "data" / "dev"),
                    sample_dev_subset=args.dev_subset)
    else:
        data["test"] = str(test_prefix)
    emb = {"embedding_dim": args.emb, "scale": False}
    return {
        "name": "joeynmt-peer-en-de-char",
        "joeynmt_version": JOEYNMT_VERSION,
        "model_dir": str(model_dir),
        "use_cuda": False,
        "fp16": False,
        "random_seed": args.seed,
        "data": data,
        "testing": {
            "load_model": None if test_prefix is None else str(model_dir / f"{args.ckpt}.ckpt"),
            "batch_size": 3000,
            "batch_type": "token",
            "beam_size": beam,
            "beam_alpha": -1,
            "n_best": 1,
            "max_output_length": args.max_output_length,
            "min_output_length": 1,
            "generate_unk": False,
            "eval_metrics": ["bleu", "chrf"],
            "sacrebleu_cfg": {"tokenize": "13a"},
        },
        "training": {
            "random_seed": args.seed,
            "optimizer": "adam",
            "adam_betas": [0.9, 0.999],
            "learning_rate": 0.002,
            "learning_rate_min": 0.0001,
            "scheduling": "exponential",
            "decrease_factor": 0.99,
            "weight_decay": 0.0,
            "clip_grad_norm": 1.0,
            "loss": "crossentropy",
            "label_smoothing": 0.0,
            "normalization": "tokens",
            "batch_size": args.batch_tokens,
            "batch_type": "token",
            "batch_multiplier": 1,
            "shuffle": True,
            "epochs": 10000,  # the clock stops it
            "validation_freq": args.validation_freq,
            "logging_freq": logging_freq,
            "early_stopping_metric": "ppl",
            "keep_best_ckpts": 1,
            "print_valid_sents": [0],
            "overwrite": True,
            "use_cuda": False,
            "num_workers": 0,
        },
        "model": {
            "initializer": "xavier_uniform",
            "bias_initializer": "zeros",
            "embed_initializer": "normal",
            "embed_init_weight": 0.1,
            "init_gain": 1.0,
            "tied_embeddings": False,
            "tied_softmax": False,
            "encoder": {
                "type": "recurrent",
                "rnn_type": "lstm",
                "hidden_size": args.hidden,
                "num_layers": 1,
                "bidirectional": True,
                "dropout": 0.0,
                "embeddings": dict(emb, dropout=0.0),
            },
            "decoder": {
                "type": "recurrent",
                "rnn_type": "lstm",
                "hidden_size": args.hidden,
                "num_layers": 1,
                "attention": "bahdanau",
                "init_hidden": "bridge",
                "input_feeding": True,
                "dropout": 0.0,
                "hidden_dropout": 0.0,
                "embeddings": dict(emb, dropout=0.0),
            },
        },
    }


def child_env(threads: int) -> Dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="",
               PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
    env.pop("PYTHONPATH", None)
    return env


# --------------------------------------------------------------------------- train


def stop_child(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log(f"JoeyNMT did not exit {grace:.0f} s after SIGINT; killing it")
        proc.kill()
        proc.wait()


def train(args, work: Path, model_dir: Path) -> Dict:
    cfg_path = work / "train.yaml"
    cfg_path.write_text(to_yaml(make_config(args, work, model_dir, None)) + "\n", encoding="utf-8")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    console = work / "train.console.log"
    train_log = model_dir / "train.log"
    cmd = [str(venv_python(Path(args.venv))), "-m", "joeynmt", "train", str(cfg_path), "--skip-test"]
    log(f"training: {' '.join(cmd)} (console in {console}, log in {train_log})")
    budget = args.minutes * 60.0
    with open(console, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(args.threads),
                                cwd=str(work), start_new_session=True)
        try:
            t_launch = time.time()
            t0 = None
            while t0 is None:  # the clock starts when the training loop does
                if proc.poll() is not None:
                    raise SystemExit(f"JoeyNMT training exited ({proc.returncode}) before training; see {console}")
                if train_log.is_file() and "EPOCH 1" in train_log.read_text(encoding="utf-8", errors="replace"):
                    t0 = time.time()
                    break
                if time.time() - t_launch > 600:
                    raise SystemExit(f"JoeyNMT did not start training within 10 minutes; see {console}")
                time.sleep(0.2)
            log(f"training loop started after {t0 - t_launch:.1f} s of setup; stopping it in {args.minutes:g} min")
            deadline = t0 + budget
            while proc.poll() is None and time.time() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.time())))
            if proc.poll() is not None:
                log(f"JoeyNMT training ended by itself ({proc.returncode}) before the budget")
            t_stop = time.time()
            stop_child(proc, grace=300)
            t_exit = time.time()
        finally:
            if proc.poll() is None:  # our own exception or Ctrl-C: never leave it running
                proc.kill()
                proc.wait()
    if not (model_dir / "latest.ckpt").exists():
        raise SystemExit(f"no checkpoint was saved; see {console}")
    return {"train_wall_s": t_stop - t0, "setup_s": t0 - t_launch, "shutdown_s": t_exit - t_stop}


def parse_train_log(model_dir: Path) -> Dict:
    text = (model_dir / "train.log").read_text(encoding="utf-8", errors="replace")
    rates = [float(x) for x in re.findall(r"Tokens per Sec:\s*([0-9.]+)", text)]
    # JoeyNMT's logged "[sec]" is only the metric computation; a validation's
    # duration is taken from the log's timestamps: from "Predicting N example(s)"
    # to the block's last line before training logs again (Step/EPOCH/Interrupt).
    valid_s, start, last = [], None, None
    for line in text.splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - ", line)
        if not m:
            continue
        ts = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
        if "joeynmt.prediction - Predicting" in line:
            start = last = ts
        elif start is not None and re.search(r"Step:|EPOCH|Interrupt at|Training ended", line):
            valid_s.append(last - start)
            start = None
        elif start is not None:
            last = ts
    if start is not None:
        valid_s.append(last - start)
    params = re.findall(r"Total params: (\d+)", text)
    ppl = re.findall(r"Evaluation result \(greedy\).*?ppl:\s*([0-9.]+)", text)
    return {
        "joeynmt_logged_tokens_per_s_median": statistics.median(rates) if rates else None,
        "validations": len(valid_s),
        "validation_s": sum(valid_s),
        "params_log": int(params[-1]) if params else None,
        "last_valid_ppl": float(ppl[-1]) if ppl else None,
        "interrupted": "Interrupt at epoch" in text,
    }


CKPT_INFO = r"""
import json, sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
st = ck["stats_state"]
n = sum(v.numel() for k, v in ck["model_state"].items())
print(json.dumps({"steps": int(st["steps"]), "total_tokens": int(st["total_tokens"]), "epoch": int(st["epochs"]),
                  "best_ckpt_iter": int(st["best_ckpt_iter"]), "best_ckpt_score": float(st["best_ckpt_score"]),
                  "params_ckpt": int(n)}))
"""


def ckpt_info(venv: Path, ckpt: Path) -> Dict:
    r = subprocess.run([str(venv_python(venv)), "-c", CKPT_INFO, str(ckpt)], capture_output=True, text=True,
                       env=child_env(1))
    if r.returncode != 0:
        raise SystemExit(f"could not read {ckpt}:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- decode + score


def decode(args, work: Path, model_dir: Path, test_prefix: Path, beam: int, n: int) -> Tuple[List[str], float]:
    name = "greedy" if beam == 1 else f"beam{beam}"
    cfg_path = work / f"test-{name}.yaml"
    cfg_path.write_text(to_yaml(make_config(args, work, model_dir, test_prefix, beam=beam)) + "\n", encoding="utf-8")
    out_prefix = work / f"hyp.{name}"
    hyp_file = Path(f"{out_prefix}.test")
    if hyp_file.exists():
        hyp_file.unlink()
    console = work / f"test-{name}.console.log"
    cmd = [str(venv_python(Path(args.venv))), "-m", "joeynmt", "test", str(cfg_path), "--output-path", str(out_prefix)]
    log(f"decoding {n} test lines ({name}) with {args.ckpt}.ckpt")
    t = time.time()
    with open(console, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(args.threads),
                                cwd=str(work), start_new_session=True)
        try:
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    secs = time.time() - t
    if rc != 0 or not hyp_file.is_file():
        raise SystemExit(f"JoeyNMT test ({name}) failed ({rc}); see {console}")
    lines = hyp_file.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != n:
        raise SystemExit(f"{hyp_file}: {len(lines)} lines for {n} sources")
    return lines, secs


def placeholder_shares(srcs: Sequence[str], outs: Sequence[str]) -> Tuple[float, Optional[float], int]:
    same = [placeholders(s) == placeholders(o) for s, o in zip(srcs, outs)]
    with_ph = [ok for s, ok in zip(srcs, same) if placeholders(s)]
    return (sum(same) / len(same),
            (sum(with_ph) / len(with_ph)) if with_ph else None,
            len(with_ph))


def score(hyps: List[str], refs: List[str], srcs: List[str]) -> Dict:
    """The calls genrnn's own benchmark uses (genrnn.metrics: sacrebleu defaults)."""
    ph_all, ph_with, _ = placeholder_shares(srcs, hyps)
    return {
        "bleu": round(bleu(hyps, refs), 2),
        "chrf": round(chrf(hyps, refs), 2),
        "placeholders_match": round(ph_all, 4),
        "placeholders_match_when_present": None if ph_with is None else round(ph_with, 4),
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="shared data folder (holding debian-l10n/) or the folder of the TSVs")
    ap.add_argument("--venv", default="/work/joeynmt-venv", help="JoeyNMT's virtual environment (made if missing)")
    ap.add_argument("--work", default="/tmp/joeynmt-peer", help="work folder: data files, configs, model, outputs")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget, wall clock (default 10)")
    ap.add_argument("--limit", type=int, default=0, help="decode only the first N test lines (0: all)")
    ap.add_argument("--beams", type=int, nargs="+", default=[1, 5], help="beam sizes to decode with (1 = greedy)")
    ap.add_argument("--ckpt", choices=["latest", "best"], default="latest", help="checkpoint to decode")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--emb", type=int, default=64, help="embedding width, both sides")
    ap.add_argument("--hidden", type=int, default=256, help="encoder LSTM size per direction and decoder LSTM size")
    ap.add_argument("--batch-tokens", type=int, default=3000)
    ap.add_argument("--validation-freq", type=int, default=200, help="updates between validations/checkpoints")
    ap.add_argument("--dev-subset", type=int, default=100, help="random valid lines per validation (-1: all)")
    ap.add_argument("--max-output-length", type=int, default=-1,
                    help="cap on output characters (-1: JoeyNMT's default, 1.5 x the longest source in the batch)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--decode-only", action="store_true", help="skip training; decode the model in WORK/model")
    ap.add_argument("--out", help="write the JSON result here too")
    args = ap.parse_args()
    if args.minutes <= 0 or args.validation_freq < 1 or args.limit < 0 or any(b < 1 for b in args.beams):
        ap.error("--minutes, --validation-freq and --beams must be positive, --limit >= 0")

    # a SIGTERM runs the finally blocks too, so no JoeyNMT child is left behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if importlib.util.find_spec("sacrebleu") is None:
        raise SystemExit("sacrebleu is missing: run this with genrnn's venv (source /work/venv/bin/activate)")

    ddir = data_dir(args.data)
    work = Path(args.work).resolve()
    model_dir = work / "model"
    venv = Path(args.venv)
    (work / "data").mkdir(parents=True, exist_ok=True)

    splits = {sp: read_split(ddir / f"en-de.{sp}.tsv") for sp in SPLITS}
    test = splits["test"][: args.limit] if args.limit else splits["test"]
    write_parallel(splits["train"], work / "data" / "train")
    write_parallel(splits["valid"], work / "data" / "dev")
    test_prefix = work / "data" / ("test" if not args.limit else f"test-first{args.limit}")
    write_parallel(test, test_prefix)
    log(f"data from {ddir}: {', '.join(f'{sp} {len(p)}' for sp, p in splits.items())}; decoding {len(test)} test lines")

    ensure_venv(venv, work)

    result: Dict = {"system": f"JoeyNMT {JOEYNMT_VERSION} (torch {TORCH_VERSION} CPU)", "data": str(ddir),
                    "budget_min": None if args.decode_only else args.minutes, "threads": args.threads, "test_lines": len(test),
                    "ckpt": args.ckpt}
    if args.decode_only:
        if not (model_dir / "latest.ckpt").exists():
            raise SystemExit(f"--decode-only: no model in {model_dir}")
        timing = {}
    else:
        timing = train(args, work, model_dir)
    info = ckpt_info(venv, model_dir / "latest.ckpt")
    logged = parse_train_log(model_dir)
    epoch_tokens = sum(len(de) + 1 for _, de in splits["train"])
    result.update(
        updates=info["steps"],
        epochs=round(info["total_tokens"] / epoch_tokens, 3),
        target_tokens_seen=info["total_tokens"],
        params=logged["params_log"] or info["params_ckpt"],
        params_ckpt=info["params_ckpt"],
        best_ckpt_update=info["best_ckpt_iter"],
        best_valid_ppl=None if math.isinf(info["best_ckpt_score"]) else round(info["best_ckpt_score"], 4),
        last_valid_ppl=logged["last_valid_ppl"],
        validations=logged["validations"],
        validation_s=round(logged["validation_s"], 1),
        joeynmt_logged_tokens_per_s_median=logged["joeynmt_logged_tokens_per_s_median"],
    )
    if timing:
        wall = timing["train_wall_s"]
        result.update(
            train_wall_s=round(wall, 1),
            setup_s=round(timing["setup_s"], 1),
            tokens_per_s_wall=round(info["total_tokens"] / wall, 1),
            tokens_per_s_excl_valid=round(info["total_tokens"] / max(1e-9, wall - logged["validation_s"]), 1),
            stopped_by_budget=logged["interrupted"],
        )

    srcs = [en for en, _ in test]
    refs = [de for _, de in test]
    ref_all, ref_with, n_with = placeholder_shares(srcs, refs)
    result.update(test_lines_with_placeholders=n_with, reference_placeholders_match=round(ref_all, 4),
                  reference_placeholders_match_when_present=None if ref_with is None else round(ref_with, 4))
    for beam in args.beams:
        name = "greedy" if beam == 1 else f"beam{beam}"
        hyps, secs = decode(args, work, model_dir, test_prefix, beam, len(test))
        sc = score(hyps, refs, srcs)
        for k, v in sc.items():
            result[f"{name}_{k}"] = v
        result[f"{name}_decode_s"] = round(secs, 1)
        result[f"{name}_hyps"] = str(work / f"hyp.{name}.test")

    rows = [("updates", result["updates"]), ("epochs", result["epochs"]), ("parameters", f"{result['params']:,}")]
    if timing:
        rows += [("training wall-clock s", result["train_wall_s"]),
                 ("target tokens/s, wall (incl. validation)", result["tokens_per_s_wall"]),
                 ("target tokens/s, excl. validation", result["tokens_per_s_excl_valid"])]
    rows += [("JoeyNMT logged tokens/s (median)", result["joeynmt_logged_tokens_per_s_median"]),
             ("validations (s spent)", f"{result['validations']} ({result['validation_s']})"),
             ("best / last valid ppl", f"{result['best_valid_ppl']} / {result['last_valid_ppl']}")]
    for beam in args.beams:
        name = "greedy" if beam == 1 else f"beam{beam}"
        rows += [(f"{name}: BLEU / chrF", f"{result[name + '_bleu']} / {result[name + '_chrf']}"),
                 (f"{name}: placeholders match (all / with one)",
                  f"{result[name + '_placeholders_match']:.1%} / "
                  + ("-" if result[name + "_placeholders_match_when_present"] is None
                     else f"{result[name + '_placeholders_match_when_present']:.1%}")),
                 (f"{name}: decode s", result[name + "_decode_s"])]
    rows.append(("references: placeholders match (all / with one)",
                 f"{ref_all:.1%} / " + ("-" if ref_with is None else f"{ref_with:.1%}") + f" ({n_with} lines with one)"))
    width = max(len(r[0]) for r in rows)
    how = f"{args.minutes:g} min CPU" if timing else f"model in {model_dir} (--decode-only)"
    print(f"\nJoeyNMT {JOEYNMT_VERSION}, en->de char, {how}, {len(test)} test lines, {args.ckpt}.ckpt")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    line = json.dumps(result, ensure_ascii=False)
    print(line, flush=True)
    if args.out:
        Path(args.out).write_text(line + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

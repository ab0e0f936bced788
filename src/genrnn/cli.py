"""The ``genrnn`` command: parse, call the library, print.

    genrnn train [CORPUS...] [options]     train (default corpus: python-docs)
    genrnn sample RUN [--prompt TEXT]...   generate, streamed (--condition LABEL for a conditioned run)
    genrnn caption RUN IMAGE...            caption images with a captioner
    genrnn translate RUN [TEXT...]         translate with a seq2seq run (no text: stdin to stdout)
    genrnn eval RUN [CORPUS...]            loss, perplexity, bits per character (BLEU, chrF for seq2seq)
    genrnn plot RUN [RUN...]               training curves as a PNG
    genrnn inspect RUN --text FILE         surprise, temperature, neurons, attention as an HTML page
    genrnn corpora                         named corpora and whether cached
    genrnn presets                         built-in sets of training options
    genrnn serve RUN... [--port 8000]      OpenAI-compatible HTTP API and web playground

A user mistake (bad path, bad flag, corrupt checkpoint) prints one line,
``genrnn: error: ...``, and exits with status 2 -- never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence

from . import __version__
from .config import CELLS, DEVICES, KEEPS, LAYOUTS, PRECISIONS, TOKENIZER_KINDS
from .errors import GenrnnError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# -- argument parsing ----------------------------------------------------------------


def _corpus_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("corpus")
    g.add_argument("--glob", default="*.txt", help="files to read from folders (default: *.txt)")
    g.add_argument("--field", action="append", default=[], metavar="NAME",
                   help="CSV/TSV column name (or 0-based index for header-less files) or JSONL key; "
                        "repeat to join several with a space")
    g.add_argument("--format", dest="fmt", default="auto", choices=["auto", "text", "csv", "tsv", "jsonl"],
                   help="input format (default: from the file extension)")
    g.add_argument("--encoding", default="utf-8", help="text encoding (default: strict utf-8)")
    g.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"],
                   help="what to do with bytes that do not decode (default: strict, an error)")
    g.add_argument("--no-quotes", dest="quotes", action="store_false",
                   help="read CSV/TSV fields literally: a double quote is a character, not a field's quoting "
                        "(plain TSV exports)")


def _beam_args(p: argparse.ArgumentParser, default: Optional[int]) -> None:
    b = p.add_argument_group("beam search")
    b.add_argument("--beam", type=int, default=default,
                   help="beam search with this many beams (1 = greedy)" +
                        (f" (default: {default})" if default else ""))
    b.add_argument("--num-return", type=int, default=1, help="the K best hypotheses, with their scores (default: 1)")
    b.add_argument("--length-penalty", type=float, default=1.0,
                   help="hypotheses are ranked by log p / length^ALPHA (default: 1, the mean per token)")


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model on text",
                       description="Train a recurrent language model. With no corpus, trains on the built-in "
                                   "python-docs corpus. Options left out keep their defaults.")
    p.add_argument("corpus", nargs="*", help="text files, folders, CSV/TSV/JSONL files or corpus names "
                                             "(see 'genrnn corpora'); default: python-docs")
    p.add_argument("--val", action="append", metavar="CORPUS", help="validation corpus (default: hold out --val-fraction)")
    p.add_argument("--out", help="run folder (default: runs/<corpus>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder where it stopped")
    p.add_argument("--preset", metavar="NAME", help="start from a named set of options (see 'genrnn presets') or a "
                                                    "JSON file of them; options given here override it")
    _corpus_args(p)
    k = p.add_argument_group("condition (one-to-many: generate from a label, a vector or an image)")
    k.add_argument("--condition-field", metavar="NAME",
                   help="CSV/TSV column (name or 0-based index) or JSONL key holding each record's label; the "
                        "model learns p(text | label). Implies --layout lines")
    k.add_argument("--condition-names", metavar="FILE",
                   help="names for the labels, one per line, in the labels' sorted order (e.g. AG News' classes.txt)")
    k.add_argument("--condition-vectors", metavar="FILE.npy",
                   help="one float vector per record, in record order, to generate from")
    k.add_argument("--image-field", metavar="NAME",
                   help="column holding each record's image path (relative to the table's folder): trains an "
                        "image captioner with a small CNN encoder. Needs pip install 'genrnn[images]'")
    k.add_argument("--image-features", metavar="FILE.npy",
                   help="precomputed image features, one row per record, instead of --image-field's CNN")
    S = argparse.SUPPRESS  # an option left out is not passed on, so defaults live in config.py
    q = p.add_argument_group("sequence to sequence (many-to-many: translation, headlines)")
    q.add_argument("--task", choices=["lm", "seq2seq"], default="lm",
                   help="lm: a language model (default); seq2seq: an encoder reads each pair's source and the "
                        "model generates its target. Pairs: a table's --source-field and --target-field, or two "
                        "parallel text files (source, then target), one pair per line. Implies --layout lines")
    q.add_argument("--source-field", metavar="NAME", help="seq2seq: the column (name or 0-based index) or key of the source")
    q.add_argument("--target-field", metavar="NAME", help="seq2seq: the column or key of the target")
    q.add_argument("--attention", action="store_true", default=S,
                   help="seq2seq: attend over the encoder's outputs at every step (Luong, general score)")
    q.add_argument("--bidirectional", action="store_true", default=S,
                   help="seq2seq: the encoder reads the source both ways (half --hidden-size each)")
    q.add_argument("--shared-vocab", action=argparse.BooleanOptionalAction, default=S,
                   help="seq2seq: one tokenizer for both sides, fitted on both (default: on)")
    d = p.add_argument_group("data")
    d.add_argument("--tokenizer", choices=TOKENIZER_KINDS, default=S,
                   help="token level: char, word (words and punctuation), or whitespace (already-tokenized "
                        "text such as PTB: split at spaces, line breaks kept) (default: char)")
    d.add_argument("--lower", action="store_true", default=S, help="lower-case the text")
    d.add_argument("--vocab-size", type=int, default=S, help="cap the vocabulary; rarer tokens become <unk>")
    d.add_argument("--layout", choices=LAYOUTS, default=S,
                   help="stream: one long text (default); lines: one record per line/row, ending with <eos>")
    d.add_argument("--seq-len", type=int, default=S, help="tokens per training window (default: 128)")
    d.add_argument("--batch-size", type=int, default=S, help="windows per batch (default: 64)")
    d.add_argument("--val-fraction", type=float, default=S, help="share held out for validation (default: 0.1)")
    d.add_argument("--state-span", type=int, default=S,
                   help="stream layout: windows a lane walks with its recurrent state carried (truncated BPTT) "
                        "before batches are reshuffled; 1 = independent windows (default: 1)")
    from .models import MODELS

    m = p.add_argument_group("model")
    m.add_argument("--model", dest="type", choices=list(MODELS), default=S,
                   help="rnn: a recurrent network; markov: an n-gram baseline (interpolated modified "
                        "Kneser-Ney), fitted in one pass over the text; mixture: the RNN interpolated with a "
                        "--order n-gram, the weight fitted on validation data (default: chosen for the device, "
                        "budget and corpus, a mixture, when no model, batch or lr option is given; else rnn)")
    m.add_argument("--order", type=int, default=S,
                   help="markov and mixture: n-gram order; each token is predicted from the order-1 before it "
                        "(default: 5)")
    m.add_argument("--cell", choices=CELLS, default=S, help="recurrent cell (default: lstm)")
    m.add_argument("--layers", dest="num_layers", type=int, default=S, help="recurrent layers (default: 2)")
    m.add_argument("--hidden-size", type=int, default=S, help="recurrent width (default: 256)")
    m.add_argument("--embedding-size", type=int, default=S, help="input embedding width; 0 = one-hot input (default: 64)")
    m.add_argument("--dropout", type=float, default=S, help="dropout between layers and on outputs (default: 0)")
    m.add_argument("--tie-weights", action="store_true", default=S, help="share input embedding and output weights")
    m.add_argument("--adaptive-softmax", nargs="?", const="auto", default=S, metavar="CUTOFFS",
                   help="an adaptive softmax (Grave et al. 2017) for a large word vocabulary: the most frequent "
                        "tokens get full output rows, rarer ones narrower clusters, so training is faster; "
                        "log-probabilities stay exact. CUTOFFS: the clusters' first token ids, e.g. 2000,10000 "
                        "(default: auto, 2000 and then x5 below the vocabulary size)")
    m.add_argument("--condition-dim", type=int, default=S, help="width of the learned condition embedding (default: 64)")
    m.add_argument("--condition-every-step", action=argparse.BooleanOptionalAction, default=S,
                   help="feed the condition embedding at every step as well as into the initial state "
                        "(default: on; --no-condition-every-step: the initial state only)")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, default=S, help="peak learning rate (default: 1e-2, x (256/hidden)^0.8 above width 256)")
    t.add_argument("--weight-decay", type=float, default=S, help="AdamW weight decay (default: 0.01)")
    t.add_argument("--warmup", type=float, default=S, help="warmup as a fraction of the run (default: 0.02)")
    t.add_argument("--grad-clip", type=float, default=S, help="clip the gradient norm; 0 = off (default: 1.0)")
    t.add_argument("--max-steps", type=int, default=S, help="stop after this many steps")
    t.add_argument("--epochs", type=float, default=S, help="stop after this many passes over the data")
    t.add_argument("--time", default=S, help="stop after this wall-clock time, e.g. 90s, 10m, 1h (default if no "
                                              "other stop: 5m); the learning-rate schedule follows the clock")
    t.add_argument("--eval-every", type=int, default=S, help="steps between validations (default: 200)")
    t.add_argument("--keep", choices=KEEPS, default=S,
                   help="the weights the run keeps: best = lowest validation loss, last = the latest "
                        "(default: best; last for a captioner)")
    t.add_argument("--save-every", type=int, default=S, help="steps between checkpoints (default: each validation)")
    t.add_argument("--sample-every", type=int, default=S, help="steps between printed samples; 0 = none (default: 500)")
    t.add_argument("--sample-prompt", default=S, help="prompt for those samples (default: empty)")
    t.add_argument("--sample-length", type=int, default=S, help="tokens per sample (default: 200)")
    t.add_argument("--seed", type=int, default=S, help="random seed (default: 1337)")
    t.add_argument("--device", choices=DEVICES, default=S, help="default: auto")
    t.add_argument("--precision", choices=PRECISIONS, default=S,
                   help="auto = fp32 (TF32 on CUDA); bf16 or fp16 turn on autocast")
    t.add_argument("--threads", type=int, default=S, help="CPU threads (default: PyTorch's choice)")
    t.add_argument("--init-from", metavar="RUN", default=S,
                   help="start from a trained run's weights: its shape and tokenizer, its vocabulary extended by "
                        "the new text's tokens (new rows start as the mean of the old ones). RUN: a run folder, or "
                        "'english', the built-in character model (see the README)")
    t.add_argument("--baseline", type=int, default=S, metavar="ORDER",
                   help="order of the Kneser-Ney baseline fitted beside a --model rnn run and reported with its "
                        "validation loss; 0 = none (default: 5; a mixture's baseline is its own n-gram)")
    t.add_argument("--plot", action="store_true", default=S,
                   help="draw the loss chart into the run folder (loss.png) at each validation, to watch it; "
                        "needs pip install 'genrnn[plot]'")
    t.add_argument("--deterministic", action="store_true", default=S,
                   help="bitwise-reproducible runs on CUDA (deterministic cuBLAS/cuDNN kernels; somewhat slower). "
                        "CPU runs are reproducible without it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only errors and the final summary")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genrnn", description="Generative recurrent networks: train and sample "
                                     "character- and word-level RNN/LSTM/GRU text generators.")
    parser.add_argument("--version", action="version", version=f"genrnn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _train_parser(sub)

    s = sub.add_parser("sample", help="generate text from a trained run")
    s.add_argument("run", help="run folder")
    s.add_argument("--prompt", action="append", help="prompt text; repeat for several (default: empty = new document)")
    s.add_argument("--length", type=int, default=300, help="tokens to generate per sample (default: 300)")
    s.add_argument("--temperature", type=float, action="append",
                   help="sampling temperature; 0 = greedy; repeat to compare several (default: 1.0)")
    s.add_argument("--top-k", type=int, help="sample only from the k most likely tokens")
    s.add_argument("--top-p", type=float, help="sample only from the smallest set of tokens with probability >= p")
    s.add_argument("--greedy", action="store_true", help="always take the most likely token (temperature 0)")
    s.add_argument("--num-samples", "-n", type=int, default=1, help="samples per prompt and temperature (default: 1)")
    s.add_argument("--seed", type=int, help="random seed: the same seed gives the same text")
    s.add_argument("--stop", action="append", default=[], help="stop a sample at this text; repeatable")
    s.add_argument("--condition", action="append", metavar="LABEL",
                   help="a conditioned run's label (its name or value); repeat for several")
    s.add_argument("--condition-vector", metavar="FILE.npy", help="a vector-conditioned run: one row per condition")
    s.add_argument("--source", action="append", metavar="TEXT",
                   help="a sequence-to-sequence run's source sentence; repeat for several")
    s.add_argument("--json", action="store_true", help="one JSON object per sample instead of streamed text")
    s.add_argument("--device", default="auto", choices=DEVICES)
    _beam_args(s, None)
    s.add_argument("--server", metavar="URL", help="generate on a genrnn server (genrnn serve) instead; RUN is then "
                                                   "the model's name there, or 'default'")
    s.add_argument("--api-key", help="with --server: the server's key (default: $GENRNN_API_KEY)")

    k = sub.add_parser("caption", help="caption images with a captioner run")
    k.add_argument("run", help="run folder of a captioner (trained with --image-field)")
    k.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    k.add_argument("--length", type=int, default=100, help="tokens per caption at most (default: 100)")
    k.add_argument("--temperature", type=float, default=0.0,
                   help="0 = the most likely caption, by beam search (default; --beam 1 is greedy); above 0, sampled")
    k.add_argument("--seed", type=int, help="random seed, with a temperature")
    k.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    k.add_argument("--json", action="store_true", help="one JSON object per image")
    k.add_argument("--device", default="auto", choices=DEVICES)
    _beam_args(k, None)

    tr = sub.add_parser("translate", help="translate with a sequence-to-sequence run",
                        description="Translate TEXT arguments, or with none, standard input one sentence per line "
                                    "to standard output one per line (a progress bar on a terminal).")
    tr.add_argument("run", help="run folder of a sequence-to-sequence model (trained with --task seq2seq)")
    tr.add_argument("text", nargs="*", help="source sentences (default: read standard input)")
    tr.add_argument("--length", type=int, help="tokens per output at most (default: the run's --seq-len)")
    tr.add_argument("--temperature", type=float, default=0.0,
                    help="sample at this temperature instead of beam search (default: 0, beam search)")
    tr.add_argument("--top-k", type=int, help="with a temperature: sample only from the k most likely tokens")
    tr.add_argument("--top-p", type=float, help="with a temperature: nucleus sampling")
    tr.add_argument("--seed", type=int, help="random seed, with a temperature")
    tr.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default: 64)")
    tr.add_argument("--keep-placeholders", action="store_true",
                    help="of the beam's hypotheses, output the best whose printf placeholders (%%s, %%1$d...) "
                         "equal the source's (program messages)")
    tr.add_argument("--json", action="store_true", help="one JSON object per sentence, with the scores")
    tr.add_argument("--device", default="auto", choices=DEVICES)
    _beam_args(tr, 5)

    e = sub.add_parser("eval", help="loss, perplexity and bits per character")
    e.add_argument("run", help="run folder")
    e.add_argument("corpus", nargs="*", help="corpus to evaluate on (default: the run's own validation split); "
                                             "a named split as NAME:SPLIT, e.g. ptb:test")
    _corpus_args(e)
    e.add_argument("--beam", type=int, help="a sequence-to-sequence run: decode every source with this beam "
                                            "(1 = greedy) and add BLEU, chrF and placeholders kept (default: 1)")
    e.add_argument("--json", action="store_true", help="print a JSON object")
    e.add_argument("--device", default="auto", choices=DEVICES)

    pl = sub.add_parser("plot", help="draw training curves of one or more runs into a PNG",
                        description="Training and validation loss against step and against time, tokens/s and "
                                    "the learning rate, from each run's metrics.jsonl; several runs share the axes. "
                                    "Needs pip install 'genrnn[plot]'.")
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    pl.add_argument("--out", help="PNG to write (default: RUN/loss.png for one run, runs.png for several)")

    ins = sub.add_parser("inspect", help="a self-contained HTML page of what a run learned",
                         description="Surprise per token (hover: the likeliest tokens), bits per character, the "
                                     "next-token distribution under a sweep of temperatures with greedy and sampled "
                                     "continuations, hidden units ranked by simple features of the text, and the "
                                     "text scored under each label of a conditioned run. For a seq2seq run: each "
                                     "line translated, with its attention matrix.")
    ins.add_argument("run", help="run folder")
    what = ins.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", metavar="FILE", help="a UTF-8 text file to inspect (seq2seq: one source per line)")
    what.add_argument("--prompt", metavar="TEXT", help="a text given here (seq2seq: a source sentence)")
    ins.add_argument("--at", type=int, help="the token whose next-token distribution is swept (default: the last)")
    ins.add_argument("--length", type=int, default=200, help="tokens of the greedy and sampled continuations")
    ins.add_argument("--seed", type=int, default=0, help="seed of the sampled continuation (default: 0)")
    ins.add_argument("--out", help="HTML file to write (default: RUN/inspect.html)")
    ins.add_argument("--device", default="auto", choices=DEVICES)

    c = sub.add_parser("corpora", help="list the named corpora")
    c.add_argument("--json", action="store_true", help="print JSON")

    r = sub.add_parser("presets", help="list the built-in training presets")
    r.add_argument("--json", action="store_true", help="print JSON")
    _serve_parser(sub)
    return parser


def _serve_parser(sub) -> argparse.ArgumentParser:
    from .serve.limits import DEFAULT_LIMITS as L

    v = sub.add_parser("serve", help="serve runs over HTTP: OpenAI-compatible API and a web playground",
                       description="Serve trained runs: POST /v1/completions (OpenAI-compatible, streamed or not), "
                                   "GET /v1/models, the playground at /, the API document at /docs. Concurrent "
                                   "requests share the model's steps (one batch). Needs: pip install 'genrnn[serve]'.")
    v.add_argument("run", nargs="*", metavar="RUN", help="run folder to serve, named after the folder")
    v.add_argument("--model", action="append", default=[], metavar="NAME=RUN",
                   help="serve RUN as NAME; repeatable. The first model is the default one")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    v.add_argument("--port", type=int, default=8000, help="default: 8000")
    v.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 (default: $GENRNN_API_KEY, "
                                     "else no key)")
    v.add_argument("--device", default="auto", choices=DEVICES)
    v.add_argument("--threads", type=int, help="CPU threads for the model (default: PyTorch's choice)")
    g = v.add_argument_group("limits")
    g.add_argument("--max-tokens", type=int, default=L.max_tokens,
                   help=f"largest max_tokens a request may ask for (default: {L.max_tokens})")
    g.add_argument("--max-prompt-chars", type=int, default=L.max_prompt_chars,
                   help=f"characters per prompt (default: {L.max_prompt_chars})")
    g.add_argument("--max-prompt-tokens", type=int, default=L.max_prompt_tokens,
                   help=f"tokens per prompt (default: {L.max_prompt_tokens})")
    g.add_argument("--max-body-bytes", type=int, default=L.max_body_bytes,
                   help=f"request body size; larger gets 413 (default: {L.max_body_bytes})")
    g.add_argument("--body-timeout", type=int, default=L.body_timeout, metavar="SECONDS",
                   help=f"time to send a whole request body; slower gets 408 (default: {L.body_timeout})")
    g.add_argument("--max-n", type=int, default=L.max_n, help=f"n per request (default: {L.max_n})")
    g.add_argument("--max-rows", type=int, default=L.max_rows,
                   help=f"prompts x n per request (default: {L.max_rows})")
    g.add_argument("--max-streams", type=int, default=L.max_streams,
                   help=f"completions generating at once, all requests together; more gets 429 "
                        f"(default: {L.max_streams})")
    v.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return v


# -- commands ---------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train
    from .config import option_names, parse_duration

    names = option_names()
    options: Dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    if "time" in options:
        options["time"] = parse_duration(options["time"])
    reporter = _TrainReporter(progress=not args.no_progress and not args.quiet, quiet=args.quiet)
    kwargs: Dict[str, Any] = dict(callbacks=reporter, progress_download=not args.quiet)
    if args.resume:
        given = [f for f in ("condition_field", "condition_names", "condition_vectors", "image_field",
                             "image_features", "source_field", "target_field") if getattr(args, f)]
        if given:
            raise GenrnnError(f"--resume continues a run with its own condition; leave out --{given[0].replace('_', '-')}")
        if args.corpus:
            raise GenrnnError("--resume continues a run on its own corpus; leave out the corpus")
        if args.preset:
            raise GenrnnError("--resume continues a run with its own settings; leave out --preset")
        run = train(resume=args.resume, **kwargs, **options)
    else:
        if args.image_features and (args.condition_vectors or args.image_field):
            raise GenrnnError("--image-features are the condition vectors of a captioner: give one of them")
        run = train(args.corpus or None, out=args.out, val=args.val, glob=args.glob, fields=args.field,
                    encoding=args.encoding, errors=args.errors, format=args.fmt, preset=args.preset,
                    condition_field=args.condition_field, image_field=args.image_field,
                    condition_vectors=args.condition_vectors or args.image_features,
                    condition_names=args.condition_names, task=args.task, source_field=args.source_field,
                    target_field=args.target_field, quotes=args.quotes, **kwargs, **options)
    return EXIT_INTERRUPTED if run.result.interrupted else 0


class _TrainReporter:
    """Progress bar (tqdm, on stderr) with loss, validation loss, tokens/s and ETA."""

    def __init__(self, progress: bool, quiet: bool):
        self.progress = progress
        self.quiet = quiet
        self.bar = None
        self.by_time = False
        self.val: Optional[float] = None
        self.baseline: Optional[Dict[str, Any]] = None
        self.last: Dict[str, Any] = {}

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def on_start(self, info: Dict[str, Any]) -> None:
        self.info = info
        if info.get("skipped_pairs"):  # shown even with --quiet: the data is not all used
            n = info["skipped_pairs"]
            self._print(f"genrnn: warning: {n:,} pair{'s' if n != 1 else ''} (training and validation) over --seq-len "
                        f"{info['config']['data']['seq_len']} tokens on a side left out")
        if self.quiet:
            return
        cfg = info["config"]
        m, d = cfg["model"], cfg["data"]
        if info.get("auto"):
            self._print(f"genrnn: {info['auto']}")
        if info.get("init_from"):
            i = info["init_from"]
            self._print(f"genrnn: starting from {i['run']}: its {i['kept_tokens']} tokens kept, {i['new_tokens']} new "
                        "ones (their rows start as the mean of the old ones)")
        stop = []
        if info["total_steps"]:
            stop.append(f"{info['total_steps']} steps")
        if info["time_budget"]:
            stop.append(f"{_fmt_time(info['time_budget'])}")
        if m["type"] == "markov":  # fitted in one pass: no steps, learning rate or progress bar
            self._print(f"genrnn: {m['order']}-gram Markov (interpolated modified Kneser-Ney), "
                        f"{d['tokenizer']} vocab {info['vocab_size']}\n"
                        f"genrnn: {info['train_tokens']:,} training tokens, {info['val_tokens']:,} validation tokens\n"
                        f"genrnn: device {info['device']}; run folder {info['run_dir']}")
            return
        condition = ""
        if info.get("condition"):
            feed = "initial state and every step" if m["condition_every_step"] else "initial state"
            if m["condition"] == "text":
                feed = ", ".join(["bidirectional encoder"] * m["bidirectional"] + ["attention"] * m["attention"] +
                                 [feed])
            condition = f"genrnn: conditioned on {info['condition']} ({feed})\n"
        mixed = f", mixed with a {m['order']}-gram" if m["type"] == "mixture" else ""
        self._print(
            f"genrnn: {m['num_layers']}x{m['hidden_size']} {m['cell'].upper()} "
            f"({'one-hot' if m['embedding_size'] == 0 else 'embedding ' + str(m['embedding_size'])}{mixed}), "
            f"{info['parameters']:,} parameters, {d['tokenizer']} vocab {info['vocab_size']}\n" + condition +
            f"genrnn: {info['train_tokens']:,} training tokens, {info['val_tokens']:,} validation tokens, "
            f"batch {info['batch_size']} x {d['seq_len']}, {info['steps_per_epoch']} steps/epoch, lr {info['lr']:.2g}\n"
            f"genrnn: device {info['device']}"
            + (f" x {info['processes']} processes (DDP)" if info.get("processes", 1) > 1 else "")
            + f"; stop after {' or '.join(stop)}; run folder {info['run_dir']}"
            + (f"\ngenrnn: resuming at step {info['resumed_at']}" if info["resumed_at"] else "")
        )
        if self.progress:
            from tqdm import tqdm

            self.by_time = not info["total_steps"]
            total = info["time_budget"] if self.by_time else info["total_steps"]
            initial = 0 if self.by_time else info["resumed_at"]
            self.bar = tqdm(total=total, initial=initial, unit="s" if self.by_time else "step",
                            file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"
                            if not self.by_time else "{l_bar}{bar}| {elapsed}<{remaining}{postfix}")

    def on_baseline(self, b: Dict[str, Any]) -> None:
        self.baseline = b
        if not self.quiet:
            self._print(f"genrnn: baseline: {b['order']}-gram Kneser-Ney on the same split, fitted in {b['fit_s']:.1f}s: "
                        f"validation loss {b['val_loss']:.4f} ({b['val_bpc']:.3f} bits/char)")

    def on_log(self, m: Dict[str, Any]) -> None:
        self.last = m
        if self.bar is not None:
            val = "" if self.val is None else f", val {self.val:.3f}"
            if self.val is not None and self.baseline is not None:
                val += f" ({self.baseline['order']}-gram {self.baseline['val_loss']:.3f})"
            post = f"loss {m['loss']:.3f}" + val + \
                   f", {m['tokens_per_s']:,.0f} tok/s, step {m['step']}"
            self.bar.set_postfix_str(post, refresh=False)
            if self.by_time:
                self.bar.update(min(self.bar.total, m["time"]) - self.bar.n)
            else:
                self.bar.update(m["step"] - self.bar.n)
        elif not self.quiet and m["step"] % (10 * max(1, self.info["config"]["train"]["log_every"])) == 0:
            self._print(f"step {m['step']}: loss {m['loss']:.4f}, {m['tokens_per_s']:,.0f} tok/s, "
                        f"lr {m['lr']:.2e}, {_fmt_time(m['time'])}")

    def on_eval(self, m: Dict[str, Any]) -> None:
        self.val = m["val_loss"]
        if not self.quiet and self.bar is None:
            parts = ""
            if "val_rnn_loss" in m:
                parts = f" (RNN {m['val_rnn_loss']:.4f}, n-gram {m['val_baseline_loss']:.4f}, weight {m['mix_weight']:.2f})"
            elif self.baseline is not None:
                parts = f" ({self.baseline['order']}-gram {self.baseline['val_loss']:.4f})"
            self._print(f"step {m['step']}: val loss {m['val_loss']:.4f} ({m['val_bpc']:.3f} bits/char){parts}"
                        + (" *" if m.get("best") else ""))

    def on_sample(self, step: int, text: str) -> None:
        if not self.quiet:
            self._print(f"--- sample at step {step} ---\n{text}\n---")

    def on_save(self, step: int, path) -> None:
        pass

    def on_end(self, result) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        lines = []
        if result.interrupted:
            lines.append(f"genrnn: interrupted at step {result.step}; saved. Continue with: "
                         f"genrnn train --resume {result.run_dir}")
        elif self.info["config"]["model"]["type"] == "markov":
            lines.append(f"genrnn: done, fitted and evaluated in {result.elapsed:.1f}s")
        else:
            lines.append(f"genrnn: done, {result.step} steps in {_fmt_time(result.elapsed)} "
                         f"({result.tokens_per_s:,.0f} tokens/s)")
        if result.best_val:
            b = result.best_val
            lines.append(f"genrnn: best validation loss {b['loss']:.4f} nats/token, perplexity {b['perplexity']:.2f}, "
                         f"{b['bits_per_char']:.3f} bits/char (step {b['step']})")
            lines += _baseline_verdict(b, self.baseline)
            if self.info["config"]["train"]["keep"] == "last" and b["step"] != result.step:
                lines.append(f"genrnn: model.safetensors holds the last weights (step {result.step}), not those of "
                             "the best validation loss (--keep last)")
        condition = self.info["config"]["model"]["condition"]
        if condition == "image":
            lines.append(f"genrnn: caption with: genrnn caption {result.run_dir} IMAGE...")
        elif condition == "label":
            first = self.info["labels"][0]
            lines.append(f"genrnn: sample with: genrnn sample {result.run_dir} --condition '{first}'")
        elif condition == "vector":
            lines.append(f"genrnn: sample with: genrnn sample {result.run_dir} --condition-vector VECTORS.npy")
        elif condition == "text":
            lines.append(f"genrnn: translate with: genrnn translate {result.run_dir} < SOURCES.txt > OUTPUTS.txt")
        else:
            lines.append(f"genrnn: sample with: genrnn sample {result.run_dir} --prompt 'Hello'")
        print("\n".join(lines), file=sys.stderr, flush=True)


def _baseline_verdict(best: Dict[str, Any], baseline: Optional[Dict[str, Any]]) -> list:
    """Whether the RNN beats the Kneser-Ney baseline on validation (and what the mixture adds)."""
    if baseline is None or "baseline_loss" not in best:
        return []
    order, kn = baseline["order"], best["baseline_loss"]
    rnn = best.get("rnn_loss", best["loss"])
    verdict = "beats" if rnn < kn else "does not beat"
    out = [f"genrnn: the RNN ({rnn:.4f}) {verdict} the {order}-gram Kneser-Ney baseline ({kn:.4f}): "
           f"{abs(kn - rnn):.4f} nats/token {'below' if rnn < kn else 'above'} it"]
    if "mix_weight" in best:
        out.append(f"genrnn: the model is their mixture (RNN weight {best['mix_weight']:.2f}): {best['loss']:.4f}, "
                   f"{min(rnn, kn) - best['loss']:.4f} below the better of the two")
    return out


def cmd_sample(args: argparse.Namespace) -> int:
    from .api import load

    if args.server:
        from .serve.client import RemoteModel

        run = RemoteModel(args.server, args.run, api_key=args.api_key or os.environ.get("GENRNN_API_KEY"))
    else:
        run = load(args.run, device=args.device)
    prompts = args.prompt or [""]
    temps = [0.0] if args.greedy else (args.temperature or [1.0])
    if args.num_samples < 1:
        raise GenrnnError("--num-samples must be >= 1")
    if args.condition and args.condition_vector:
        raise GenrnnError("give --condition or --condition-vector, not both")
    given = [f for f, v in (("--condition", args.condition), ("--condition-vector", args.condition_vector),
                            ("--source", args.source)) if v]
    if len(given) > 1:
        raise GenrnnError(f"give one of {' and '.join(given)}, not both")
    conditions: list = [None]
    if args.source:
        conditions = list(args.source)
    elif args.condition:
        conditions = list(args.condition)
    elif args.condition_vector:
        from .conditions import read_vectors

        conditions = list(read_vectors(args.condition_vector))
    elif getattr(run, "condition", None) is not None and run.condition.kind == "label":
        conditions = run.condition.label_names()  # no label given: one sample per label
    if args.beam is not None:
        return _print_beams(run, args, prompts, conditions)
    rows = [(p, c, t) for p in prompts for c in conditions for t in temps for _ in range(args.num_samples)]
    streamed = not args.json
    label = len(rows) > 1

    def shown(c) -> str:
        return "" if c is None else f", condition {c!r}" if isinstance(c, str) else f", vector {list(c)[:4]}..."

    def header(i: int) -> str:
        p, c, t = rows[i]
        return f"--- sample {i + 1}/{len(rows)}: prompt {p!r}{shown(c)}, temperature {t:g} ---"

    if streamed:
        if label:
            print(header(0), flush=True)
        sys.stdout.write(rows[0][0])
        sys.stdout.flush()

    def on_text(i: int, piece: str) -> None:
        if i == 0:  # row 0 streams live; the other rows of the batch print when done
            sys.stdout.write(piece)
            sys.stdout.flush()

    extra = {} if conditions[0] is None else {"condition": [c for _, c, _ in rows]}
    completions = run.complete([p for p, _, _ in rows], length=args.length, temperature=[t for _, _, t in rows],
                               top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop=args.stop,
                               on_text=on_text if streamed else None, **extra)
    if args.json:
        for i, (c, (p, cond, t)) in enumerate(zip(completions, rows)):
            record = {"index": i, "prompt": c.prompt, "text": c.text, "tokens": c.tokens,
                      "finish_reason": c.finish_reason, "temperature": t}
            if cond is not None:
                record["condition"] = cond if isinstance(cond, str) else [float(v) for v in cond]
            print(json.dumps(record, ensure_ascii=False))
        return 0
    print(flush=True)
    for i in range(1, len(rows)):
        print(header(i))
        print(completions[i].prompt + completions[i].text, flush=True)
    return 0


def _print_beams(run, args: argparse.Namespace, prompts, conditions) -> int:
    """``genrnn sample --beam N``: the best hypotheses of every prompt (and condition)."""
    if args.server:
        raise GenrnnError("--beam runs locally; leave out --server (or send \"beam\" in the request body)")
    if args.temperature or args.top_k or args.top_p or args.greedy or args.num_samples != 1 or args.stop:
        raise GenrnnError("--beam searches for the most likely text: leave out --temperature, --top-k, --top-p, "
                          "--greedy, --num-samples and --stop")
    rows = [(p, c) for p in prompts for c in conditions]
    extra = {} if conditions[0] is None else {"condition": [c for _, c in rows]}
    found = run.beam_search([p for p, _ in rows], beam=args.beam, num_return=args.num_return, length=args.length,
                            length_penalty=args.length_penalty, **extra)
    for i, ((p, c), hyps) in enumerate(zip(rows, found)):
        for rank, (text, score, reason) in enumerate(hyps):
            if args.json:
                record = {"index": i, "rank": rank, "prompt": p, "text": text, "score": score,
                          "finish_reason": reason}
                if c is not None:
                    record["condition"] = c if isinstance(c, str) else [float(v) for v in c]
                print(json.dumps(record, ensure_ascii=False))
            else:
                what = f"prompt {p!r}" + ("" if c is None else f", condition {c!r}" if isinstance(c, str) else "")
                print(f"--- {what}, beam {args.beam}, #{rank + 1}: score {score:.4f} ({reason}) ---")
                print(p + text, flush=True)
    return 0


def cmd_translate(args: argparse.Namespace) -> int:
    from .api import load

    if args.batch_size < 1:
        raise GenrnnError("--batch-size must be >= 1")
    run = load(args.run, device=args.device)
    if not run.is_seq2seq:
        raise GenrnnError(f"{args.run} is not a sequence-to-sequence run (trained without --task seq2seq); "
                          "use genrnn sample")
    texts = list(args.text) if args.text else [line.rstrip("\r\n") for line in sys.stdin]
    todo = [i for i, t in enumerate(texts) if t.strip()]  # an empty line translates to an empty line
    bar = None
    if not args.text and sys.stderr.isatty() and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="sentence", file=sys.stderr, dynamic_ncols=True)
    try:
        out = run.translate([texts[i] for i in todo], beam=args.beam, num_return=args.num_return, length=args.length,
                            length_penalty=args.length_penalty, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                            keep_placeholders=args.keep_placeholders,
                            on_batch=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    results: list = [[] if args.num_return > 1 else ""] * len(texts)
    for i, o in zip(todo, out):
        results[i] = o
    for source, o in zip(texts, results):
        hyps = o if args.num_return > 1 else [(o, None)]
        if args.json:
            print(json.dumps({"source": source, "translations": [{"text": t, "score": sc} for t, sc in hyps]}
                             if args.num_return > 1 else {"source": source, "translation": o}, ensure_ascii=False))
        elif args.num_return > 1:
            for rank, (t, sc) in enumerate(hyps):
                print(f"{rank + 1}\t{sc:.4f}\t{t}")
        else:
            print(o)
    sys.stdout.flush()
    return 0


def cmd_caption(args: argparse.Namespace) -> int:
    from .api import load

    if args.batch_size < 1:
        raise GenrnnError("--batch-size must be >= 1")
    run = load(args.run, device=args.device)
    for start in range(0, len(args.images), args.batch_size):
        paths = args.images[start : start + args.batch_size]
        captions = run.caption(paths, length=args.length, temperature=args.temperature, seed=args.seed,
                               beam=args.beam)
        for path, caption in zip(paths, captions):
            if args.json:
                print(json.dumps({"image": path, "caption": caption}, ensure_ascii=False), flush=True)
            else:
                print(f"{path}\t{caption}", flush=True)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .api import load

    run = load(args.run, device=args.device)
    opts: Dict[str, Any] = {}
    if args.corpus:
        opts = dict(glob=args.glob, encoding=args.encoding, errors=args.errors, fmt=args.fmt)
        if args.field:
            opts["fields"] = tuple(args.field)
        if not args.quotes:
            opts["quotes"] = False
    seq2seq = run.is_seq2seq
    if seq2seq and run.corpus.parallel and args.corpus and len(args.corpus) != 2:
        raise GenrnnError("this run trained on parallel files: give two, the source side then the target side")
    beam = (args.beam or 1) if seq2seq else args.beam
    bar = None
    if seq2seq and sys.stderr.isatty() and not args.json:
        from tqdm import tqdm

        bar = tqdm(unit="sentence", file=sys.stderr, dynamic_ncols=True, desc="decoding")
    try:
        m = run.evaluate(args.corpus or None, beam=beam, on_batch=bar.update if bar is not None else None, **opts)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(m))
        return 0
    what = " ".join(args.corpus) if args.corpus else "validation split"
    print(f"{what}: loss {m['loss']:.4f} nats/token, perplexity {m['perplexity']:.2f}, "
          f"{m['bits_per_char']:.4f} bits/char ({m['tokens']:,} tokens, {m['chars']:,} chars)")
    if seq2seq:
        skipped = f"; {m['skipped']:,} over the length limit left out" if m["skipped"] else ""
        decoding = "greedy" if beam == 1 else f"beam {beam}"
        print(f"{m['pairs']:,} pairs{skipped}; {decoding}: BLEU {m['bleu']:.1f}, chrF {m['chrf']:.1f}, exact "
              f"{m['exact']:.1f}%, placeholders kept {m['placeholders_kept']:.1f}%")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .plots import PLOT, plot_runs

    out = Path(args.out) if args.out else (Path(args.runs[0]) / PLOT if len(args.runs) == 1 else Path("runs.png"))
    print(plot_runs([Path(r) for r in args.runs], out))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ._io import atomic_write_text
    from .api import load
    from .inspection import analyse, analyse_translations, render

    run = load(args.run, device=args.device)
    if args.text is not None:
        try:
            text = Path(args.text).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GenrnnError(f"cannot read --text {args.text}: {e}") from None
    else:
        text = args.prompt
    if run.is_seq2seq:
        data = analyse_translations(run, text.splitlines())
    else:
        data = analyse(run, text, at=args.at, length=args.length, seed=args.seed)
        if data["unknown"]:
            print(f"genrnn: warning: {data['unknown']:,} tokens of the text are not in the model's vocabulary; "
                  "they are scored as <unk>", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.run) / "inspect.html"
    atomic_write_text(out, render(data))
    print(out)
    return 0


def cmd_corpora(args: argparse.Namespace) -> int:
    from .corpora import list_corpora

    rows = list_corpora()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        size = "built in" if r["size"] is None else _fmt_bytes(r["size"])
        state = "cached" if r["cached"] else "not cached"
        print(f"{r['name']:<{width}}  {size:>9}  {state:<10}  {r['description']}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import list_presets, load_preset

    rows = [dict(r, options=load_preset(r["name"])) for r in list_presets()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["options"].items())
        print(f"{r['name']:<{width}}  {r['description']}\n{'':<{width}}  {opts}")
    return 0


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve.app import create_app, parse_model_args
        from .serve.server import bind, run_server
    except ImportError as e:
        if (e.name or "").split(".")[0] in ("fastapi", "uvicorn", "starlette", "pydantic"):
            raise GenrnnError("genrnn serve needs FastAPI and uvicorn: pip install 'genrnn[serve]'") from None
        raise
    from .serve.limits import Limits

    try:
        models = parse_model_args(args.run, args.model)
        limits = Limits(max_tokens=args.max_tokens, max_prompt_chars=args.max_prompt_chars,
                        max_prompt_tokens=args.max_prompt_tokens, max_body_bytes=args.max_body_bytes,
                        body_timeout=args.body_timeout, max_n=args.max_n, max_rows=args.max_rows,
                        max_streams=args.max_streams)
        limits.validate()
    except ValueError as e:
        raise GenrnnError(str(e)) from None
    if not models:
        raise GenrnnError("give a run to serve: genrnn serve RUN [RUN...] or --model NAME=RUN")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:  # a port in use is a one-line error, before the models load
        bind(args.host, args.port).close()
    except OSError as e:
        raise GenrnnError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    api_key = args.api_key or os.environ.get("GENRNN_API_KEY") or None
    app = create_app(models, limits, api_key=api_key, device=args.device)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"genrnn: serving {', '.join(models)} at http://{host}:{args.port}/ (playground), /v1 (OpenAI API), "
          f"/docs; Ctrl-C stops", file=sys.stderr, flush=True)
    if not api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"genrnn: warning: listening on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr, flush=True)
    run_server(app, args.host, args.port, log_level=args.log_level)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "caption": cmd_caption, "translate": cmd_translate,
            "eval": cmd_eval, "plot": cmd_plot, "inspect": cmd_inspect, "corpora": cmd_corpora,
            "presets": cmd_presets, "serve": cmd_serve}


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="genrnn: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GenrnnError as e:
        print(f"genrnn: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ngenrnn: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `genrnn sample ... | head`
        return 0
    except OSError as e:  # e.g. --out names a file, or a folder that cannot be created
        print(f"genrnn: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())

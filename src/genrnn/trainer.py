"""The training loop: AdamW, warmup + cosine decay, clipping, truncated BPTT,
periodic validation and samples, atomic checkpoints and exact resume.

The trainer knows the model only through its protocol
(``forward(idx, targets, state) -> (logits, loss, state)``) and reports
progress through :class:`Callbacks`; it never prints.

Exact resume. Everything the next step depends on is saved in ``resume.pt``:
weights, optimizer moments, step/epoch/position, the carried recurrent state,
and the RNG state (dropout). The data order is a pure function of
(seed, epoch, step) and samples/evaluation use their own generators, so a run
stopped at any save and resumed ends with the same weights as one that never
stopped. Only the learning-rate schedule of a *time*-budgeted run depends on
the clock, and so cannot be replayed exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from . import distributed
from .conditions import read_names, read_vectors
from . import autoconfig, faults, initfrom
from .config import RunConfig, auto_lr, override
from .corpora import CORPORA, corpus_splits, load_corpus, load_parallel
from .data import IGNORE, Dataset, build_dataset
from ._io import disk_errors, remove_stale_temporaries
from .errors import DiskFullError, GenrnnError
from .evaluate import evaluate, summarize
from .models import MarkovLM, build_model, is_fitted
from .runtime import Runtime, make_runtime
from .sampling import SampleConfig, complete
from .state import batch_size as state_rows
from .state import cat_rows, detach_state, from_saved, map_state, select_condition, select_rows, start

# options that may change when a run is resumed (they do not change what was learnt)
RESUMABLE = {"max_steps", "epochs", "time", "eval_every", "eval_tokens", "log_every", "save_every",
             "sample_every", "sample_prompt", "sample_length", "sample_temperature", "device", "threads", "plot",
             "baseline"}


@dataclass(frozen=True)
class CorpusSpec:
    """Where the text comes from; saved so that ``eval``/``resume`` can re-read it."""

    sources: Sequence[str] = ()
    val: Optional[Sequence[str]] = None
    glob: str = "*.txt"
    fields: Sequence[str] = ()
    encoding: str = "utf-8"
    errors: str = "strict"
    fmt: str = "auto"
    # what each record is conditioned on: None, "label", "image" or "text" (a source sentence, from
    # condition_field or the first of two parallel files), or "vector" (row i of condition_vectors for
    # record i); condition_names names the labels
    condition: Optional[str] = None
    condition_field: Optional[str] = None
    condition_vectors: Optional[str] = None
    condition_names: Optional[str] = None
    parallel: bool = False  # sources (and val) are two text files, source and target, one pair per line
    quotes: bool = True  # CSV/TSV: "..." quotes a field (False: a quote is a character)

    def to_dict(self) -> Dict[str, Any]:
        return {"sources": list(self.sources), "val": None if self.val is None else list(self.val),
                "glob": self.glob, "fields": list(self.fields), "encoding": self.encoding,
                "errors": self.errors, "fmt": self.fmt, "condition": self.condition,
                "condition_field": self.condition_field, "condition_vectors": self.condition_vectors,
                "condition_names": self.condition_names, "parallel": self.parallel, "quotes": self.quotes}

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CorpusSpec":
        return cls(sources=tuple(d.get("sources", ())), val=None if d.get("val") is None else tuple(d["val"]),
                   glob=d.get("glob", "*.txt"), fields=tuple(d.get("fields", ())),
                   encoding=d.get("encoding", "utf-8"), errors=d.get("errors", "strict"), fmt=d.get("fmt", "auto"),
                   condition=d.get("condition"), condition_field=d.get("condition_field"),
                   condition_vectors=d.get("condition_vectors"), condition_names=d.get("condition_names"),
                   parallel=bool(d.get("parallel", False)), quotes=bool(d.get("quotes", True)))

    def validate(self) -> None:
        if self.condition not in (None, "label", "vector", "image", "text"):
            raise GenrnnError(f"unknown condition kind {self.condition!r}")
        if self.parallel:
            if self.condition != "text" or len(self.sources) != 2 or (self.val is not None and len(self.val) != 2):
                raise GenrnnError("parallel files are two text files, the source side then the target side "
                                  "(and --val likewise two)")
        elif self.condition == "text" and self.condition_field is None:
            raise GenrnnError("sequence to sequence reads pairs: give a table's --source-field and --target-field, "
                              "or two parallel text files (source, then target)")
        if (self.condition in ("label", "image")) != (self.condition_field is not None) \
                and self.condition != "text":
            raise GenrnnError("a label or image condition needs its column (--condition-field / --image-field)")
        if (self.condition == "vector") != (self.condition_vectors is not None):
            raise GenrnnError("a vector condition needs its file (--condition-vectors / --image-features)")
        if self.condition_vectors is not None and self.val is not None:
            raise GenrnnError("--condition-vectors give one row per record of the training corpus; hold out its "
                              "validation split with --val-fraction instead of --val")

    def load(self, sources: Sequence[str], split: str = "train", progress: bool = False):
        if self.parallel:
            return load_parallel(sources[0], sources[1], encoding=self.encoding, errors=self.errors)
        return load_corpus(list(sources), glob=self.glob, fields=tuple(self.fields), encoding=self.encoding,
                           errors=self.errors, fmt=self.fmt, split=split, progress=progress,
                           condition_field=self.condition_field, condition_paths=self.condition == "image",
                           quotes=self.quotes, pairs=self.condition == "text")

    def dataset_options(self) -> Dict[str, Any]:
        """What ``build_dataset`` needs to condition the records."""
        return {"condition": self.condition,
                "vectors": read_vectors(self.condition_vectors) if self.condition_vectors else None,
                "label_names": read_names(self.condition_names) if self.condition_names else None}


DEFAULT_CORPUS = "python-docs"
DEFAULT_TIME = 300.0  # seconds, when no --max-steps, --epochs or --time is given


def load_documents(spec: CorpusSpec, progress: bool = False):
    """Training and validation documents for a corpus spec.

    A single named corpus with a ``valid`` split (wikitext-2, ptb) validates on
    it unless ``--val`` says otherwise."""
    sources = list(spec.sources) or [DEFAULT_CORPUS]
    train_docs = spec.load(sources, "train", progress)
    if spec.val is not None:
        return train_docs, spec.load(spec.val, "train", progress)
    if len(sources) == 1 and sources[0] in CORPORA and not Path(sources[0]).exists() \
            and "valid" in corpus_splits(sources[0]):
        return train_docs, spec.load(sources, "valid", progress)
    return train_docs, None


class Callbacks:
    """Hooks for progress reporting; the CLI implements them with a progress bar."""

    def on_start(self, info: Dict[str, Any]) -> None: ...
    def on_log(self, metrics: Dict[str, Any]) -> None: ...
    def on_eval(self, metrics: Dict[str, Any]) -> None: ...
    def on_sample(self, step: int, text: str) -> None: ...
    def on_save(self, step: int, path: Path) -> None: ...
    def on_baseline(self, info: Dict[str, Any]) -> None: ...
    def on_end(self, result: "TrainResult") -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    elapsed: float
    best_val: Optional[Dict[str, float]]
    interrupted: bool
    tokens_per_s: float


@dataclass
class Progress:
    """What the next step depends on besides weights and optimizer."""

    step: int = 0
    epoch: int = 0
    index: int = 0  # step within the epoch
    elapsed: float = 0.0
    tokens: int = 0
    best_val: Optional[Dict[str, float]] = None


def lr_at(fraction: float, base: float, warmup: float, min_ratio: float) -> float:
    """Linear warmup over the first ``warmup`` of the run, then cosine decay to
    ``base * min_ratio`` at the end. ``fraction`` is the part of the run done,
    by steps or by the clock, so a time-budgeted run also ends annealed."""
    fraction = min(max(fraction, 0.0), 1.0)
    if warmup > 0 and fraction < warmup:
        return base * max(fraction / warmup, 0.01)
    decay = (fraction - warmup) / max(1e-9, 1.0 - warmup)
    return base * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * decay)))


def make_optimizer(model: nn.Module, lr: float, config: RunConfig, runtime: Runtime) -> torch.optim.Optimizer:
    # weight decay on matrices only, not on biases (or the tied embedding twice)
    decay, no_decay = [], []
    for p in {id(p): p for p in model.parameters()}.values():
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if runtime.device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=lr, betas=(config.train.beta1, config.train.beta2), **extra)


def corpus_fingerprint(data: Dataset) -> str:
    """Identifies the training data, so resume can refuse a changed corpus."""
    h = hashlib.sha256()
    train = data.train
    if hasattr(train, "tokens"):
        h.update(train.tokens.numpy().tobytes())
    else:
        for r in train.records:
            h.update(r.tobytes())
        if train.conditions is not None:
            h.update(train.conditions.contiguous().numpy().tobytes())
    return h.hexdigest()


@contextlib.contextmanager
def _graceful_interrupt():
    """First Ctrl-C asks the loop to stop at the next step boundary (so the
    checkpoint is consistent); a second one interrupts at once."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def default_run_dir(spec: CorpusSpec) -> Path:
    src = (list(spec.sources) or [DEFAULT_CORPUS])[0]
    name = Path(str(src).rstrip("/")).stem or "corpus"
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in name.split(":")[0])
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


class Trainer:
    def __init__(self, config: RunConfig, spec: CorpusSpec, run_dir: Path, *, resume: bool = False,
                 callbacks: Optional[Callbacks] = None, progress_download: bool = False,
                 explicit: Optional[Sequence[str]] = None):
        """``explicit``: the options the user gave (a preset's included); a new
        run that gives none of ``autoconfig.CHOSEN`` gets them chosen for its
        device, budget and corpus. None: take ``config`` as it is."""
        # under torchrun, one process per rank: only rank 0 reports and writes
        self.dist = distributed.from_env()
        self.callbacks = callbacks if callbacks is not None and self.dist.is_main else Callbacks()
        self.run_dir = Path(run_dir)
        self.spec = spec
        config.validate()
        threads = config.train.threads
        if self.dist.enabled and threads is None:  # the ranks share the node's cores
            threads = max(1, (os.cpu_count() or 1) // self.dist.local_world_size)
        self.runtime = make_runtime(config.train.device, config.train.precision, threads,
                                    config.train.deterministic)
        self.runtime = replace(self.runtime, device=distributed.init(self.dist, self.runtime.device))
        if config.train.plot and self.dist.is_main:
            from .plots import require

            require()  # before any training: a missing matplotlib is a one-line error now, not at step 200
        spec.validate()
        train_docs, val_docs = load_documents(spec, progress_download and self.dist.is_main)
        self.auto = None
        if explicit is not None and not resume and config.model.type == "rnn":
            if spec.condition is None and not set(explicit) & set(autoconfig.CHOSEN):
                config = self._choose(config, explicit, train_docs)
            elif spec.condition in autoconfig.CAPTIONED:
                choice = autoconfig.choose_captioner(explicit)
                if choice.options:
                    self.auto = {"reason": choice.reason, "options": choice.options}
                    config = override(config, **choice.options)
        parent = None
        if config.train.init_from and not resume:
            if spec.condition is not None:
                raise GenrnnError("--init-from starts a language model; a conditioned or sequence-to-sequence "
                                  "run cannot start from one yet")
            parent = initfrom.read_parent(Path(config.train.init_from))
            config = initfrom.inherit(config, parent, explicit or ())
        tokenizer = condition = None
        if resume:
            _, tokenizer, _ = ckpt.read_config(self.run_dir)
            condition = ckpt.read_condition(self.run_dir)
        self.data = build_dataset(train_docs, val_docs, config.data, seed=config.train.seed, tokenizer=tokenizer,
                                  extend=parent.tokenizer if parent is not None else None,
                                  condition_spec=condition, **spec.dataset_options())
        c = self.data.condition
        config = replace(config, model=replace(config.model, vocab_size=self.data.tokenizer.vocab_size,
                                               condition=c.kind if c else "none", condition_size=c.size if c else 0))
        self.config = config
        torch.manual_seed(config.train.seed)
        self.model = build_model(config.model).to(self.runtime.device)
        self.inherited = None
        if parent is not None:
            self.inherited = dict(initfrom.transfer(parent.model, self.model, parent.tokenizer.vocab_size),
                                  run=str(parent.run_dir))
        # a fitted model (the Markov baseline) is fitted in one pass in run(): no optimizer, nothing to resume
        self.fitted = is_fitted(self.model)
        if self.fitted and resume:
            raise GenrnnError(f"{self.run_dir} holds a {config.model.type} model, which is fitted in one pass: "
                              "there is nothing to resume; train it again with another --out")
        if self.dist.enabled:
            if self.fitted:
                raise GenrnnError(f"a {config.model.type} model is fitted in one pass; run it without torchrun")
            if self.data.train.batch_size % self.dist.world_size:
                raise GenrnnError(f"--batch-size {self.data.train.batch_size} must be a multiple of the "
                                  f"{self.dist.world_size} processes (each trains on an equal share of a batch)")
        # DDP averages the gradients of the ranks' shards in backward()
        # a model's fitted tables (the mixture's n-gram) are the same on every rank: never broadcast;
        # an adaptive softmax's cluster that no target of a rank's shard falls in gets no gradient there
        self.train_model = self.model if not self.dist.enabled else nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.runtime.device.index] if self.runtime.device.type == "cuda" else None,
            broadcast_buffers=not callable(getattr(self.model, "fit", None)),
            find_unused_parameters=any(isinstance(m, nn.AdaptiveLogSoftmaxWithLoss) for m in self.model.modules()))
        # a run started from trained weights takes smaller steps by default: they start near a good place
        self.lr = config.train.lr or auto_lr(config.model) * (initfrom.LR_SCALE if config.train.init_from else 1.0)
        self.optimizer = None if self.fitted else make_optimizer(self.model, self.lr, config, self.runtime)
        self.scaler = torch.amp.GradScaler("cuda") if self.runtime.needs_scaler else None
        self.progress = Progress()
        self.state = None  # recurrent state carried between windows
        self.baseline: Optional[Dict[str, Any]] = None  # the n-gram baseline's figures (_fit_baseline)
        self.fingerprint = corpus_fingerprint(self.data)
        if resume:
            self._restore()
        elif self.dist.is_main:
            self._start_run_dir()
        self.dist.barrier()  # the run folder exists before any rank goes on
        spe = self.data.train.steps_per_epoch
        t = config.train
        if t.max_steps is None and t.epochs is None and t.time is None:
            # the defaults are sized for a few minutes on a laptop CPU
            t = replace(t, time=DEFAULT_TIME)
            self.config = config = replace(config, train=t)
        totals = [n for n in (t.max_steps, None if t.epochs is None else math.ceil(t.epochs * spe)) if n]
        self.total_steps: Optional[int] = min(totals) if totals else None
        if resume and self.finished():
            raise GenrnnError(f"{self.run_dir} already reached its stopping rule (step {self.progress.step}, "
                              f"{self.progress.elapsed:.0f}s); give a larger --max-steps, --epochs or --time "
                              "to train on")

    def _choose(self, config: RunConfig, explicit: Sequence[str], train_docs) -> RunConfig:
        t = config.train
        facts = autoconfig.device_facts(self.runtime.device)
        chars = sum(len(d.text) for d in train_docs)
        steps = t.max_steps
        if t.epochs and not t.max_steps:  # in the 32x64 steps the estimate counts in
            steps = int(t.epochs * chars / (32 * 64) / (5 if config.data.tokenizer != "char" else 1)) + 1
        budget = t.time if (t.time or steps) else DEFAULT_TIME
        choice = autoconfig.choose(facts, budget, chars, config.data.tokenizer, config.data.layout, steps,
                                   adaptive=bool(config.model.adaptive_softmax))
        options = {k: v for k, v in choice.options.items() if k not in explicit}
        reason = choice.reason
        if t.init_from:  # the network's shape is the parent's
            options = {k: v for k, v in options.items() if k not in initfrom.SHAPE}
            reason += f"; the network's shape comes from --init-from {t.init_from}"
        self.auto = {"reason": reason, "options": options}
        if options.get("precision") == "bf16":
            self.runtime = replace(self.runtime, dtype=torch.bfloat16)
        return override(config, **options)

    # -- run folder ------------------------------------------------------------

    def _start_run_dir(self) -> None:
        if self.fitted and (self.run_dir / ckpt.CONFIG).exists() and (self.run_dir / ckpt.WEIGHTS).exists():
            raise GenrnnError(f"{self.run_dir} already holds a fitted model; choose another --out")
        # a folder whose run stopped before its first checkpoint holds nothing
        # to lose or resume, so a new run may start there
        if (self.run_dir / ckpt.CONFIG).exists() and (self.run_dir / ckpt.RESUME).exists():
            raise GenrnnError(f"{self.run_dir} already holds a run: continue it with --resume {self.run_dir} "
                              "or choose another --out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.run_dir)  # a run killed mid-write before its first checkpoint
        corpus = self.spec.to_dict()
        corpus["fingerprint"] = self.fingerprint
        ckpt.write_config(self.run_dir, self.config, self.data.tokenizer, corpus, self.data.condition)
        with disk_errors(self.run_dir / ckpt.METRICS):
            (self.run_dir / ckpt.METRICS).write_text("")

    def _restore(self) -> None:
        saved_config, _, corpus = ckpt.read_config(self.run_dir)
        if corpus.get("fingerprint") != self.fingerprint:
            raise GenrnnError(f"the training corpus differs from the one {self.run_dir} was started on; "
                              "resume needs the same text")
        payload = ckpt.load_resume(self.run_dir / ckpt.RESUME)
        if self.dist.is_main:  # a kill -9 mid-write leaves its temporary file
            remove_stale_temporaries(self.run_dir)
        try:
            ckpt._load_state(self.model, payload["model"], self.run_dir / ckpt.RESUME)
            self.optimizer.load_state_dict(payload["optimizer"])
            p = payload["progress"]
            self.progress = Progress(step=int(p["step"]), epoch=int(p["epoch"]), index=int(p["index"]),
                                     elapsed=float(p["elapsed"]), tokens=int(p["tokens"]),
                                     best_val=json.loads(p["best_val"]) if p.get("best_val") else None)
            torch.set_rng_state(payload["rng_cpu"])
            if self.runtime.device.type == "cuda" and "rng_cuda" in payload:
                torch.cuda.set_rng_state(payload["rng_cuda"])
            ranks = payload.get("rng_ranks")  # a distributed run saves every rank's generator
            if self.dist.enabled and ranks is not None and len(ranks) == self.dist.world_size:
                torch.set_rng_state(ranks[self.dist.rank])
            state = from_saved(payload.get("state"))
            if self.dist.enabled and state is not None:  # the saved state is the global batch's: take our rows
                state = select_rows(state, self.dist.shard(state_rows(state)))
            self.state = map_state(lambda s: s.to(self.runtime.device), state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise GenrnnError(f"{self.run_dir / ckpt.RESUME} is incompatible with this run: {e}") from None
        # drop log lines written after the checkpoint we resume from
        path = self.run_dir / ckpt.METRICS
        kept: List[str] = []
        if not self.dist.is_main:
            return
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.progress.step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash
        with disk_errors(path):
            path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def _save(self) -> None:
        p = self.progress
        payload = {
            "format": ckpt.FORMAT_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "progress": {"step": p.step, "epoch": p.epoch, "index": p.index, "elapsed": p.elapsed,
                         "tokens": p.tokens, "best_val": json.dumps(p.best_val) if p.best_val else ""},
            "rng_cpu": torch.get_rng_state(),
            "state": map_state(lambda s: s.detach().cpu(), self.state),
        }
        if self.runtime.device.type == "cuda":
            payload["rng_cuda"] = torch.cuda.get_rng_state()
        if self.dist.enabled:  # every rank's generator, and the state of the whole batch (rows in rank order)
            payload["rng_ranks"] = self.dist.gather(torch.get_rng_state())
            states = self.dist.gather(payload["state"])
            if payload["state"] is not None:
                joined = states[0]
                for more in states[1:]:
                    joined = cat_rows(joined, more)
                payload["state"] = joined
        if not self.dist.is_main:
            return
        ckpt.save_resume(self.run_dir / ckpt.RESUME, payload)
        if self.data.val is None:  # nothing to choose by: the last weights are the ones to use
            ckpt.save_weights(self.run_dir / ckpt.WEIGHTS, self.model, {"step": p.step})
        self.callbacks.on_save(p.step, self.run_dir)

    def _metrics(self, record: Dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        path = self.run_dir / ckpt.METRICS
        with disk_errors(path), open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")  # a line torn by a full disk is skipped on resume

    # -- loop --------------------------------------------------------------------

    def fraction_done(self) -> float:
        t = self.config.train
        parts = [0.0]
        if self.total_steps:
            parts.append(self.progress.step / self.total_steps)
        if t.time:
            parts.append(self.progress.elapsed / t.time)
        return max(parts)

    def finished(self) -> bool:
        t = self.config.train
        if self.total_steps is not None and self.progress.step >= self.total_steps:
            return True
        return bool(t.time) and self.progress.elapsed >= t.time

    def evaluate(self, max_tokens: Optional[int]) -> Optional[Dict[str, float]]:
        """Validation figures; a model with parameters fitted on validation data
        (the mixture's weight) fits them first and adds its parts' losses."""
        val = self.data.val
        if val is None:
            return None
        calibrate = getattr(self.model, "calibrate", None)
        if calibrate is None:
            metrics = evaluate(self.model, val, self.runtime, max_tokens, dist=self.dist)
            if self.baseline:
                metrics["baseline_loss"] = self.baseline["val_loss"]
            return metrics
        parts = calibrate(val, self.runtime, max_tokens)
        n = parts["tokens"]
        metrics = summarize(parts["loss"] * n, n, val.num_chars * n / max(1, val.num_targets))
        metrics.update(rnn_loss=parts["rnn_loss"], baseline_loss=parts["baseline_loss"], mix_weight=parts["weight"])
        return metrics

    def _eval_and_keep_best(self) -> None:
        p = self.progress
        metrics = self.evaluate(self.config.train.eval_tokens)
        if metrics is None:
            return
        record = {"step": p.step, "time": round(p.elapsed, 3), "val_loss": metrics["loss"],
                  "val_ppl": metrics["perplexity"], "val_bpc": metrics["bits_per_char"]}
        for key in ("rnn_loss", "baseline_loss", "mix_weight"):
            if key in metrics:
                record[key if key == "mix_weight" else "val_" + key] = metrics[key]
        best = p.best_val is None or metrics["loss"] < p.best_val["loss"]
        if best:
            p.best_val = dict(metrics, step=p.step)
            record["best"] = True
        if (best or self.config.train.keep == "last") and self.dist.is_main:
            ckpt.save_weights(self.run_dir / ckpt.WEIGHTS, self.model, {"step": p.step, "val_loss": metrics["loss"]})
        self._metrics(record)
        if self.config.train.plot and self.dist.is_main:
            from .plots import PLOT, plot_runs

            plot_runs([self.run_dir], self.run_dir / PLOT)
        self.callbacks.on_eval(record)

    def sample(self, prompt: str, length: int, temperature: float, seed: int) -> str:
        """A sample from the prompt; for a conditioned model one per label (the
        first four) or per validation record (the first three), each shown
        after its condition."""
        shown, condition = self._sample_conditions()
        cfg = SampleConfig(max_new_tokens=length, temperature=temperature, seed=seed)
        done = complete(self.model, self.data.tokenizer, [prompt] * max(1, len(shown)), cfg,
                        device=self.runtime.device, autocast=self.runtime.autocast(), condition=condition)
        if not shown:
            return prompt + done[0].text
        return "\n".join(f"[{s}] {prompt}{d.text}" for s, d in zip(shown, done))

    def _sample_conditions(self):
        """(what to show for each condition, their tensor) for training samples."""
        spec = self.data.condition
        if spec is None:
            return [], None
        if spec.kind == "label":
            names = spec.label_names()[:4]
            return names, torch.arange(len(names))
        source = self.data.val if self.data.val is not None else None
        table = source.conditions if source is not None else self.data.train.conditions
        n = min(3, len(table))
        if spec.kind == "text":
            return [spec.source.decode(row.tolist()) for row in table[:n]], table[:n]
        return [f"{spec.kind} {i}" for i in range(n)], table[:n]

    def _train_tokens(self):
        train = self.data.train
        return train.tokens if hasattr(train, "tokens") else train.records

    def _fit_baseline(self) -> None:
        """The Kneser-Ney baseline beside a language model's training, on the
        same split: the mixture's own n-gram part (fitted here on a new run;
        a resumed one has it from resume.pt), or for a plain RNN a separate
        n-gram model of order ``--baseline``. Its validation loss is reported
        once here and with every evaluation. Conditioned runs have none."""
        self.baseline = None
        cfg = self.config
        if cfg.model.condition != "none" or self.data.val is None:
            return
        begin = time.perf_counter()
        val, cap = self.data.val, cfg.train.eval_tokens
        own = getattr(self.model, "baseline_loss", None)
        if own is not None:  # the mixture: its n-gram part is the baseline
            if self.progress.step == 0:
                self.model.fit(self._train_tokens())
            fit_s, order = time.perf_counter() - begin, cfg.model.order
            loss, n = own(val, self.runtime, cap)
            metrics = summarize(loss * n, n, val.num_chars * n / max(1, val.num_targets))
        elif cfg.train.baseline:
            order = cfg.train.baseline
            ngram = MarkovLM(replace(cfg.model, type="markov", order=order)).to(self.runtime.device)
            ngram.fit(self._train_tokens())
            fit_s = time.perf_counter() - begin
            metrics = evaluate(ngram, val, self.runtime, cap)
        else:
            return
        self.baseline = {"order": order, "val_loss": metrics["loss"], "val_bpc": metrics["bits_per_char"],
                         "val_ppl": metrics["perplexity"], "fit_s": round(fit_s, 3)}
        self._metrics({"step": self.progress.step, "baseline": self.baseline})
        self.callbacks.on_baseline(self.baseline)

    def _fit(self) -> TrainResult:
        """A fitted model (the Markov baseline) counts its statistics in one
        pass over the training tokens instead of running gradient descent; one
        evaluation then saves its weights. No resume.pt: there is no optimizer
        or progress to continue from."""
        t, p = self.config.train, self.progress
        start = time.perf_counter()
        self.model.fit(self._train_tokens())
        p.step, p.tokens, p.elapsed = 1, self.data.train_targets, time.perf_counter() - start
        self._metrics({"step": p.step, "time": round(p.elapsed, 3), "tokens": p.tokens,
                       "tokens_per_s": p.tokens / max(1e-9, p.elapsed)})
        self._eval_and_keep_best()  # writes model.safetensors when there is a validation split
        if self.data.val is None:
            ckpt.save_weights(self.run_dir / ckpt.WEIGHTS, self.model, {"step": p.step})
        self.callbacks.on_save(p.step, self.run_dir)
        p.elapsed = time.perf_counter() - start
        if t.sample_every:
            text = self.sample(t.sample_prompt, t.sample_length, t.sample_temperature, seed=t.seed + p.step)
            self._metrics({"step": p.step, "sample": text})
            self.callbacks.on_sample(p.step, text)
        result = TrainResult(self.run_dir, p.step, p.elapsed, p.best_val, False, p.tokens / max(1e-9, p.elapsed))
        self.callbacks.on_end(result)
        return result

    def run(self) -> TrainResult:
        try:
            return self._run()
        except DiskFullError as e:  # the last checkpoint is whole: say how to go on from it
            if (self.run_dir / ckpt.RESUME).exists():
                raise DiskFullError(f"{e}. The run is saved up to its last checkpoint; once there is room, "
                                    f"continue it with: genrnn train --resume {self.run_dir}") from None
            raise

    def _run(self) -> TrainResult:
        t = self.config.train
        p = self.progress
        data = self.data
        spe = data.train.steps_per_epoch
        self.callbacks.on_start({
            "run_dir": str(self.run_dir), "device": self.runtime.describe(),
            "parameters": sum(q.numel() for q in {id(q): q for q in self.model.parameters()}.values()),
            "vocab_size": data.tokenizer.vocab_size, "train_tokens": data.train_targets,
            "val_tokens": data.val.num_targets if data.val else 0, "steps_per_epoch": spe,
            "batch_size": data.train.batch_size, "total_steps": self.total_steps, "time_budget": t.time,
            "lr": self.lr, "resumed_at": p.step, "config": self.config.to_dict(),
            "condition": data.condition.describe() if data.condition else None,
            "labels": data.condition.label_names() if data.condition and data.condition.kind == "label" else [],
            "processes": self.dist.world_size, "skipped_pairs": data.skipped,
            "auto": self.auto["reason"] if self.auto else None,
            "init_from": self.inherited,
        })
        if self.auto and p.step == 0:
            self._metrics({"step": 0, "auto": self.auto})
        if self.fitted:
            return self._fit()
        self._fit_baseline()
        save_every = t.save_every or t.eval_every
        interrupted = False
        self.model.train()
        log_loss = torch.zeros((), device=self.runtime.device)
        log_steps = log_tokens = 0
        log_start = time.perf_counter()
        clock = time.perf_counter() - p.elapsed
        with _graceful_interrupt() as flag:
            while not self.finished():
                if flag["stop"]:
                    interrupted = True
                    break
                batch = data.train.get(p.epoch, p.index)
                x, y, condition = batch.x, batch.y, batch.condition
                if self.dist.enabled:  # every rank drew the same global batch; train on our rows of it
                    rows = self.dist.shard(x.shape[0])
                    x, y, condition = x[rows], y[rows], select_condition(condition, rows)
                x = x.to(self.runtime.device, non_blocking=True)
                y = y.to(self.runtime.device, non_blocking=True)
                lr = lr_at(self.fraction_done(), self.lr, t.warmup, t.min_lr_ratio)
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                with self.runtime.autocast():
                    if batch.reset or not data.train.carries_state:  # the initial state, from the condition
                        self.state = start(self.model, None if condition is None else
                                           condition.to(self.runtime.device, non_blocking=True))
                    _, loss, state = self.train_model(x, y, self.state)
                if self.dist.enabled:
                    # each rank's loss is the mean over its own targets; weighted by its share of the
                    # batch's targets, DDP's average of the ranks' gradients is the whole batch's (padded
                    # records give the ranks different counts)
                    share = (y != IGNORE).sum() * self.dist.world_size / max(1, int((batch.y != IGNORE).sum()))
                    loss = loss * share
                self.optimizer.zero_grad(set_to_none=True)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    self.scaler.unscale_(self.optimizer)
                else:
                    loss.backward()
                faults.point("step")  # the crash tests' kill -9 inside a step
                if t.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.state = detach_state(state) if data.train.carries_state else None
                n_tok = int((batch.y != IGNORE).sum())
                p.step += 1
                p.index += 1
                if p.index >= spe:
                    p.epoch, p.index = p.epoch + 1, 0
                p.tokens += n_tok
                log_loss += loss.detach()
                log_steps += 1
                log_tokens += n_tok
                p.elapsed, flag["stop"] = self.dist.sync_step(time.perf_counter() - clock, flag["stop"],
                                                              self.runtime.device)

                if p.step % t.log_every == 0 or self.finished():
                    now = time.perf_counter()
                    record = {"step": p.step, "epoch": round(p.epoch + p.index / spe, 4), "time": round(p.elapsed, 3),
                              "lr": lr, "loss": self._mean(float(log_loss)) / log_steps,
                              "tokens_per_s": log_tokens / max(1e-9, now - log_start), "tokens": p.tokens}
                    self._metrics(record)
                    self.callbacks.on_log(record)
                    log_loss.zero_()
                    log_steps = log_tokens = 0
                    log_start = now
                if p.step % t.eval_every == 0 and not self.finished():
                    self._eval_and_keep_best()
                if t.sample_every and p.step % t.sample_every == 0 and not self.finished() and self.dist.is_main:
                    text = self.sample(t.sample_prompt, t.sample_length, t.sample_temperature, seed=t.seed + p.step)
                    self._metrics({"step": p.step, "sample": text})
                    self.callbacks.on_sample(p.step, text)
                if p.step % save_every == 0 and not self.finished():
                    self._save()
                # evaluation, samples and saving count against a time budget
                p.elapsed, flag["stop"] = self.dist.sync_step(time.perf_counter() - clock, flag["stop"],
                                                              self.runtime.device)
            self._eval_and_keep_best()
            self._save()
        if self.dist.enabled:
            self._check_replicas()
        if t.sample_every and not interrupted and self.dist.is_main:
            text = self.sample(t.sample_prompt, t.sample_length, t.sample_temperature, seed=t.seed + p.step)
            self._metrics({"step": p.step, "sample": text})
            self.callbacks.on_sample(p.step, text)
        result = TrainResult(self.run_dir, p.step, p.elapsed, p.best_val, interrupted,
                             p.tokens / max(1e-9, p.elapsed))
        self.callbacks.on_end(result)
        self.dist.barrier()  # the run folder is complete before any rank reads it
        return result

    def _mean(self, value: float) -> float:
        """The mean of a per-rank figure over the ranks (the figure itself in one process)."""
        return self.dist.sum([value], self.runtime.device)[0] / self.dist.world_size

    def _check_replicas(self) -> None:
        """Every rank must end with the same weights (DDP keeps them in step);
        rank 0 records each rank's sha256 of them in metrics.jsonl."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        digests = self.dist.gather(h.hexdigest())
        self._metrics({"step": self.progress.step, "ddp": {"world_size": self.dist.world_size,
                                                           "weights_sha256": digests}})
        if len(set(digests)) != 1:
            raise GenrnnError(f"the {self.dist.world_size} processes ended with different weights: {digests}")

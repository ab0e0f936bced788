"""The Python API; it mirrors the CLI.

    run = genrnn.train("tinyshakespeare", time="2m", hidden_size=256)
    run.generate("ROMEO:", length=300, temperature=0.8)
    genrnn.load("runs/...").evaluate("tinyshakespeare")
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union


from . import checkpoint as ckpt
from .config import RunConfig, override, parse_duration
from .data import document_texts, make_eval_set, split_documents
from .errors import GenrnnError
from .evaluate import evaluate
from .presets import load_preset
from .runtime import make_runtime
from .sampling import Completion, SampleConfig, complete
from .trainer import RESUMABLE, Callbacks, CorpusSpec, TrainResult, Trainer, default_run_dir, load_documents

Sources = Union[str, Path, Sequence[Union[str, Path]], None]


def _sources(corpus: Sources) -> tuple:
    if corpus is None:
        return ()
    if isinstance(corpus, (str, Path)):
        return (str(corpus),)
    return tuple(str(c) for c in corpus)


class TrainedModel:
    """A trained run loaded for generation and evaluation."""

    def __init__(self, run_dir: Union[str, Path], device: str = "auto"):
        self.runtime = make_runtime(device, "auto")
        loaded = ckpt.load_run(run_dir, self.runtime.device)
        self.run_dir = loaded.run_dir
        self.config = loaded.config
        self.tokenizer = loaded.tokenizer
        self.model = loaded.model
        self.metadata = loaded.metadata
        self.corpus = CorpusSpec.from_dict(loaded.corpus)
        self.result: Optional[TrainResult] = None

    def __repr__(self) -> str:
        m = self.config.model
        what = (f"{m.order}-gram Markov" if m.type == "markov"
                else f"{m.num_layers}x{m.hidden_size} {m.cell.upper()}")
        return f"TrainedModel({str(self.run_dir)!r}: {what}, {self.config.data.tokenizer} tokens, vocab {m.vocab_size})"

    def complete(self, prompts: Sequence[str], *, length: int = 200, temperature: Any = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
                 seed: Optional[int] = None, stop: Iterable[str] = (), on_text=None) -> List[Completion]:
        """One :class:`Completion` per prompt, generated as one batch."""
        config = SampleConfig(max_new_tokens=length, temperature=0.0 if greedy else temperature,
                              top_k=top_k, top_p=top_p, seed=seed)
        return complete(self.model, self.tokenizer, list(prompts), config, stop=list(stop),
                        device=self.runtime.device, autocast=self.runtime.autocast(), on_text=on_text)

    def generate(self, prompt: Union[str, Sequence[str]] = "", *, num_samples: int = 1, **options) -> Union[str, List[str]]:
        """Prompt + continuation. A single prompt with ``num_samples=1`` gives a
        string; otherwise a list (prompts in order, each repeated
        ``num_samples`` times). Options: length, temperature (0 = greedy),
        top_k, top_p, greedy, seed, stop."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if num_samples < 1:
            raise GenrnnError("num_samples must be >= 1")
        rows = [p for p in prompts for _ in range(num_samples)]
        texts = [c.prompt + c.text for c in self.complete(rows, **options)]
        return texts[0] if isinstance(prompt, str) and num_samples == 1 else texts

    def evaluate(self, corpus: Sources = None, **corpus_options) -> Dict[str, float]:
        """Loss (nats/token), perplexity and bits/char on ``corpus``, or on the
        run's own validation split when no corpus is given."""
        cfg = self.config.data
        if corpus is None:
            _, texts = split_documents(*load_documents(self.corpus), cfg)
            if not texts:
                raise GenrnnError(f"{self.run_dir} was trained without a validation split; give a corpus to evaluate on")
        else:
            spec = replace(self.corpus, **corpus_options) if corpus_options else self.corpus
            texts = document_texts(spec.load(_sources(corpus)), cfg.layout)
        return evaluate(self.model, make_eval_set(self.tokenizer, texts, cfg), self.runtime)


def load(run_dir: Union[str, Path], device: str = "auto") -> TrainedModel:
    """Load a run folder written by :func:`train` or ``genrnn train``."""
    return TrainedModel(run_dir, device)


def train(corpus: Sources = None, *, out: Union[str, Path, None] = None, val: Sources = None,
          resume: Union[str, Path, None] = None, glob: str = "*.txt", fields: Sequence[str] = (),
          encoding: str = "utf-8", errors: str = "strict", format: str = "auto",
          config: Optional[RunConfig] = None, callbacks: Optional[Callbacks] = None,
          progress_download: bool = False, preset: Optional[str] = None, **options: Any) -> TrainedModel:
    """Train a model and return it loaded (``.result`` holds the run summary).

    ``corpus``: a path, a folder, a named corpus (default ``python-docs``) or a
    list of them. ``options`` are any ModelConfig/DataConfig/TrainConfig field
    (``hidden_size=512``, ``cell="gru"``, ``time="10m"``, ``max_steps=2000``...);
    a misspelt one is an error. ``resume=RUN`` continues a run; then only the
    stopping, logging and device options may change. ``preset`` names a
    built-in preset (``"cpu-10m"``) or a JSON file of options; ``options``
    given here override it.
    """
    if preset is not None:
        if resume is not None:
            raise GenrnnError("a resumed run keeps its own settings; leave out the preset")
        options = {**load_preset(preset), **options}
    if isinstance(options.get("time"), str):
        options["time"] = parse_duration(options["time"])
    if resume is not None:
        run_dir = Path(resume)
        saved, _, corpus_dict = ckpt.read_config(run_dir)
        fixed = [k for k in options if k not in RESUMABLE]
        if fixed or corpus is not None or config is not None:
            what = ", ".join(fixed) or "the corpus or config"
            raise GenrnnError(f"cannot change {what} when resuming; only {', '.join(sorted(RESUMABLE))} may change")
        run_config = override(saved, **options)
        spec = CorpusSpec.from_dict(corpus_dict)
        trainer = Trainer(run_config, spec, run_dir, resume=True, callbacks=callbacks,
                          progress_download=progress_download)
    else:
        run_config = override(config or RunConfig(), **options)
        spec = CorpusSpec(sources=_sources(corpus), val=None if val is None else _sources(val), glob=glob,
                          fields=tuple(str(f) for f in fields), encoding=encoding, errors=errors, fmt=format)
        run_dir = Path(out) if out is not None else default_run_dir(spec)
        trainer = Trainer(run_config, spec, run_dir, callbacks=callbacks, progress_download=progress_download)
    result = trainer.run()
    trained = TrainedModel(result.run_dir, trainer.config.train.device)
    trained.result = result
    return trained

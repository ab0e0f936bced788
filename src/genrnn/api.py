"""The Python API; it mirrors the CLI.

    run = genrnn.train("tinyshakespeare", time="2m", hidden_size=256)
    run.generate("ROMEO:", length=300, temperature=0.8)
    genrnn.load("runs/...").evaluate("tinyshakespeare")

    titles = genrnn.train("news.csv", fields=["title"], condition_field="label", layout="lines")
    titles.generate(condition=["Sports", "World"], temperature=0.8)
    genrnn.load("runs/emoji").caption(["cat.png", "dog.png"])
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union


from . import checkpoint as ckpt
from .config import RunConfig, override, parse_duration
import numpy as np
import torch
import torch.nn.functional as F

from .corpora import format_of as _format_of
from .data import IGNORE, document_records, make_eval_set, pad_records, pair_fits, split_documents
from .errors import GenrnnError
from .evaluate import evaluate
from .presets import load_preset
from .runtime import make_runtime
from .beam import beam_search, caption_beam, check_beam
from .sampling import Completion, SampleConfig, TextStream, complete
from .state import start
from .tokenizers import EOS_ID
from .trainer import RESUMABLE, Callbacks, CorpusSpec, TrainResult, Trainer, default_run_dir, load_documents

Sources = Union[str, Path, Sequence[Union[str, Path]], None]

TASKS = ("lm", "seq2seq")


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
        self.condition = loaded.condition  # ConditionSpec of a conditioned run, else None
        self.corpus = CorpusSpec.from_dict(loaded.corpus)
        self.result: Optional[TrainResult] = None

    def __repr__(self) -> str:
        m = self.config.model
        what = (f"{m.order}-gram Markov" if m.type == "markov"
                else f"{m.num_layers}x{m.hidden_size} {m.cell.upper()}")
        return f"TrainedModel({str(self.run_dir)!r}: {what}, {self.config.data.tokenizer} tokens, vocab {m.vocab_size})"

    def encode_condition(self, condition: Any, rows: int) -> Optional[torch.Tensor]:
        """The model's condition tensor for ``rows`` rows from a user's value:
        one value for every row, or a list with one per row (labels by name or
        value, vectors as lists or arrays, images as paths, bytes or arrays)."""
        spec = self.condition
        if spec is None:
            if condition is not None:
                raise GenrnnError("this model takes no condition (it was trained without one)")
            return None
        if condition is None:
            names = spec.label_names()
            what = {"label": f"a label ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''})",
                    "vector": f"a vector of {spec.size} numbers", "image": "an image",
                    "text": "a source sentence"}[spec.kind]
            raise GenrnnError(f"this model generates from {what}: give one (--condition; condition= in Python "
                              "and over HTTP)")
        if _is_one(condition, spec.kind):
            values = [condition] * rows
        else:
            values = list(condition)
        if len(values) != rows:
            raise GenrnnError(f"got {len(values)} conditions for {rows} rows")
        return spec.encode(values)

    def complete(self, prompts: Sequence[str], *, length: int = 200, temperature: Any = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
                 seed: Optional[int] = None, stop: Iterable[str] = (), on_text=None,
                 condition: Any = None) -> List[Completion]:
        """One :class:`Completion` per prompt, generated as one batch;
        ``condition``: one for all prompts, or one per prompt."""
        prompts = list(prompts)
        config = SampleConfig(max_new_tokens=length, temperature=0.0 if greedy else temperature,
                              top_k=top_k, top_p=top_p, seed=seed)
        return complete(self.model, self.tokenizer, prompts, config, stop=list(stop),
                        device=self.runtime.device, autocast=self.runtime.autocast(), on_text=on_text,
                        condition=self.encode_condition(condition, len(prompts)))

    def generate(self, prompt: Union[str, Sequence[str]] = "", *, num_samples: int = 1, condition: Any = None,
                 **options) -> Union[str, List[str]]:
        """Prompt + continuation. A single prompt, a single condition and
        ``num_samples=1`` give a string; otherwise a list (prompts in order, then
        conditions, each repeated ``num_samples`` times). Options: length,
        temperature (0 = greedy), top_k, top_p, greedy, seed, stop."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if num_samples < 1:
            raise GenrnnError("num_samples must be >= 1")
        single = condition is None or self.condition is None or _is_one(condition, self.condition.kind)
        conditions = [condition] if single else list(condition)
        rows = [(p, c) for p in prompts for c in conditions for _ in range(num_samples)]
        done = self.complete([p for p, _ in rows], condition=None if condition is None else [c for _, c in rows],
                             **options)
        texts = [c.prompt + c.text for c in done]
        return texts[0] if isinstance(prompt, str) and single and num_samples == 1 else texts

    def caption(self, images: Sequence[Any], *, length: int = 100, temperature: float = 0.0,
                beam: Optional[int] = None, **options) -> List[str]:
        """One caption per image (paths, bytes or uint8 arrays), all in one
        batch: the most likely one by beam search (``beam``, default
        :data:`~genrnn.beam.CAPTION_BEAM`; 1 is greedy), or sampled at a
        ``temperature`` above 0."""
        if self.condition is None or self.condition.kind != "image":
            hint = (": it reads precomputed features; give them with condition= (genrnn sample --condition-vector)"
                    if self.condition is not None and self.condition.kind == "vector" else
                    " (it was trained without --image-field)")
            raise GenrnnError(f"{self.run_dir} is not an image captioner{hint}")
        images = [images] if isinstance(images, (str, Path, bytes)) else list(images)
        beam = caption_beam(beam, temperature)
        if beam is not None:
            found = self.beam_search([""] * len(images), beam=beam, length=length, condition=images,
                                     batch_size=len(images) or 1)
            return [h[0][0] for h in found]
        done = self.complete([""] * len(images), length=length, temperature=temperature, condition=images,
                             **options)
        return [c.text for c in done]

    def beam_search(self, prompts: Sequence[str] = ("",), *, beam: int = 5, num_return: int = 1,
                    length: Optional[int] = None, length_penalty: float = 1.0, condition: Any = None,
                    batch_size: int = 64, on_batch=None) -> List[List[Tuple[str, float, str]]]:
        """The ``num_return`` best continuations of each prompt by beam search,
        best first, as (text, score, finish reason); ``condition``: one for all
        prompts or one per prompt. Rows go in batches of ``batch_size`` prompts
        (x ``beam`` rows), longest source first; ``on_batch(done)`` is called
        after each. ``length`` defaults to the run's ``--seq-len``."""
        prompts = list(prompts)
        check_beam(beam, num_return)
        cond = self.encode_condition(condition, len(prompts))
        length = self.config.data.seq_len if length is None else length
        ids = [[EOS_ID] + self.tokenizer.encode(p) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: -(int((cond[i] != 0).sum()) if self.is_seq2seq else
                                                         len(ids[i])))
        out: List[Any] = [None] * len(ids)
        for at in range(0, len(order), batch_size):
            rows = order[at : at + batch_size]
            found = beam_search(self.model, [ids[i] for i in rows], beam=beam, max_new_tokens=length,
                                num_return=num_return, length_penalty=length_penalty,
                                condition=None if cond is None else cond[rows], device=self.runtime.device,
                                autocast=self.runtime.autocast())
            for i, hyps in zip(rows, found):
                out[i] = [(self._decode(ids[i], h.ids), h.score, h.finish_reason) for h in hyps]
            if on_batch is not None:
                on_batch(len(rows))
        return out

    def translate(self, texts: Union[str, Sequence[str]], *, beam: int = 5, num_return: int = 1,
                  length: Optional[int] = None, length_penalty: float = 1.0, temperature: float = 0.0,
                  top_k: Optional[int] = None, top_p: Optional[float] = None, seed: Optional[int] = None,
                  batch_size: int = 64, on_batch=None, keep_placeholders: bool = False) -> Any:
        """Translate source sentences with a sequence-to-sequence run: beam
        search (``beam=1`` is greedy), or sampling when ``temperature`` > 0.
        One text gives a string, a list gives a list; with ``num_return`` > 1
        each is a list of (text, score) pairs, best first.

        ``keep_placeholders`` (beam search): of the ``beam`` hypotheses, the best
        whose printf placeholders (``%s``, ``%1$d``...) equal the source's,
        else the best (program messages must carry them over; genrnn.metrics)."""
        if not self.is_seq2seq:
            raise GenrnnError(f"{self.run_dir} is not a sequence-to-sequence run (it was trained without "
                              "--task seq2seq); use generate or genrnn sample")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        check_beam(beam, num_return)
        if keep_placeholders and (temperature > 0 or beam == 1):
            raise GenrnnError("keeping placeholders picks among beam hypotheses: give a beam of 2 or more")
        if temperature > 0 or beam == 1:  # sampling, or greedy (beam 1, tested equal): the sampling core
            if temperature > 0 and num_return != 1:
                raise GenrnnError("num_return needs beam search; sampling gives one output per source")
            length = self.config.data.seq_len if length is None else length
            outs: List[Any] = [None] * len(texts)
            order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # similar lengths batch together
            for at in range(0, len(order), batch_size):
                rows = order[at : at + batch_size]
                done = self.complete([""] * len(rows), length=length, temperature=temperature, top_k=top_k,
                                     top_p=top_p, seed=None if seed is None else seed + at,
                                     condition=[texts[i] for i in rows])
                for i, c in zip(rows, done):
                    outs[i] = c.text
                if on_batch is not None:
                    on_batch(len(rows))
        else:
            found = self.beam_search([""] * len(texts), beam=beam, num_return=beam if keep_placeholders else num_return,
                                     length=length, length_penalty=length_penalty, condition=texts,
                                     batch_size=batch_size, on_batch=on_batch)
            if keep_placeholders:
                from .metrics import placeholders

                found = [sorted(h, key=lambda x: placeholders(x[0]) != placeholders(src))[:num_return]  # stable
                         for h, src in zip(found, texts)]
            outs = [h[0][0] if num_return == 1 else [(t, sc) for t, sc, _ in h] for h in found]
        return outs[0] if single else outs

    @property
    def is_seq2seq(self) -> bool:
        """Whether this is a sequence-to-sequence run (its condition is a source sentence)."""
        return self.condition is not None and self.condition.kind == "text"

    def _decode(self, prompt_ids: List[int], ids: List[int]) -> str:
        stream = TextStream(self.tokenizer, prompt_ids)
        stream.push_all(list(ids))
        return stream.text

    @torch.inference_mode()
    def score(self, texts: Sequence[str], condition: Any = None, batch_size: int = 256) -> List[float]:
        """log p(text | condition) in nats for each text, the closing ``<eos>``
        included: what a generative classifier compares across conditions."""
        texts = list(texts)
        cond = self.encode_condition(condition, len(texts))
        out: List[float] = []
        self.model.eval()
        for i in range(0, len(texts), batch_size):
            records = [np.array([EOS_ID] + self.tokenizer.encode(t) + [EOS_ID]) for t in texts[i : i + batch_size]]
            x, y = pad_records(records)
            x, y = x.to(self.runtime.device), y.to(self.runtime.device)
            with self.runtime.autocast():
                state = start(self.model, None if cond is None else cond[i : i + batch_size].to(self.runtime.device))
                logits, _, _ = self.model(x, None, state)
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, ignore_index=IGNORE, reduction="none")
            out.extend((-nll.sum(dim=1)).tolist())
        return out

    def evaluate(self, corpus: Sources = None, *, beam: Optional[int] = None, batch_size: int = 64,
                 on_batch=None, **corpus_options) -> Dict[str, Any]:
        """Loss (nats/token), perplexity and bits/char on ``corpus``, or on the
        run's own validation split when no corpus is given. A sequence-to-
        sequence run with ``beam`` also decodes every source (beam 1: greedy)
        and adds BLEU, chrF, exact match and placeholders kept (genrnn.metrics)."""
        cfg = self.config.data
        if corpus is None:
            split = split_documents(*load_documents(self.corpus), cfg,
                                    vectors=self.corpus.dataset_options()["vectors"])
            texts, conditions = split.val, split.val_conditions
            if not texts:
                raise GenrnnError(f"{self.run_dir} was trained without a validation split; give a corpus to evaluate on")
        else:
            spec = replace(self.corpus, **corpus_options) if corpus_options else self.corpus
            if spec.condition_vectors is not None and "condition_vectors" not in corpus_options:
                raise GenrnnError("this run is conditioned on vectors: give the corpus's own with condition_vectors=")
            texts, conditions = document_records(spec.load(_sources(corpus)), cfg.layout,
                                                 spec.dataset_options()["vectors"])
        eval_set = make_eval_set(self.tokenizer, texts, cfg, conditions, self.condition)
        if eval_set.num_targets == 0:
            raise GenrnnError("nothing to evaluate: no record fits the run's length limit (--seq-len)")
        result: Dict[str, Any] = dict(evaluate(self.model, eval_set, self.runtime))
        if self.is_seq2seq:
            result["pairs"] = len(eval_set.records)
            result["skipped"] = eval_set.skipped
            if beam is not None:
                from .metrics import translation_scores

                kept = [(t, c) for t, c in zip(texts, conditions or []) if self._fits(t, c)]
                outputs = self.translate([c for _, c in kept], beam=beam, batch_size=batch_size, on_batch=on_batch)
                result.update(translation_scores(outputs, [t for t, _ in kept], [c for _, c in kept]), beam=beam)
        elif beam is not None:
            raise GenrnnError("--beam with eval decodes a sequence-to-sequence run's sources; this run has none")
        return result

    def _fits(self, target: str, source: str) -> bool:
        return pair_fits(self.tokenizer, self.condition, target, source, self.config.data.seq_len)


def _is_one(condition: Any, kind: str) -> bool:
    """A single condition (rather than one per row)."""
    if isinstance(condition, (str, bytes, Path, int, float)):
        return True
    if kind == "vector":
        return np.asarray(condition).ndim == 1
    if kind == "image":
        return isinstance(condition, np.ndarray) and condition.ndim == 3
    return False


def load(run_dir: Union[str, Path], device: str = "auto") -> TrainedModel:
    """Load a run folder written by :func:`train` or ``genrnn train``."""
    return TrainedModel(run_dir, device)


def train(corpus: Sources = None, *, out: Union[str, Path, None] = None, val: Sources = None,
          resume: Union[str, Path, None] = None, glob: str = "*.txt", fields: Sequence[str] = (),
          encoding: str = "utf-8", errors: str = "strict", format: str = "auto",
          config: Optional[RunConfig] = None, callbacks: Optional[Callbacks] = None,
          progress_download: bool = False, preset: Optional[str] = None,
          condition_field: Optional[str] = None, image_field: Optional[str] = None,
          condition_vectors: Union[str, Path, None] = None, condition_names: Union[str, Path, None] = None,
          task: str = "lm", source_field: Optional[str] = None, target_field: Optional[str] = None,
          quotes: bool = True, **options: Any) -> TrainedModel:
    """Train a model and return it loaded (``.result`` holds the run summary).

    ``corpus``: a path, a folder, a named corpus (default ``python-docs``) or a
    list of them. ``options`` are any ModelConfig/DataConfig/TrainConfig field
    (``hidden_size=512``, ``cell="gru"``, ``time="10m"``, ``max_steps=2000``...);
    a misspelt one is an error. ``resume=RUN`` continues a run; then only the
    stopping, logging and device options may change. ``preset`` names a
    built-in preset (``"cpu-10m"``) or a JSON file of options; ``options``
    given here override it.

    Conditioned runs (one-to-many): ``condition_field`` names a table column
    of labels, ``image_field`` a column of image paths (relative to the
    table's folder), ``condition_vectors`` a ``.npy`` file with one row per
    record; ``condition_names`` a file naming the labels, one per line.
    They need ``layout="lines"``, which they set when it is not given.

    Sequence to sequence (``task="seq2seq"``): a table's ``source_field`` and
    ``target_field`` (``fields`` may name several target columns instead), or
    ``corpus`` = two parallel text files, source side first; ``attention=True``,
    ``bidirectional=True``, ``shared_vocab=False`` are model options.
    ``quotes=False`` reads CSV/TSV fields literally (``"`` is a character).
    """
    if task not in TASKS:
        raise GenrnnError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    # what the user chose; with none of the model, batch or lr options the trainer picks them (autoconfig)
    explicit = None if config is not None else set(options)
    if preset is not None:
        if resume is not None:
            raise GenrnnError("a resumed run keeps its own settings; leave out the preset")
        options = {**load_preset(preset), **options}
        explicit = None  # a preset is a complete choice
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
        parallel = False
        if task == "seq2seq":
            if condition_field or image_field or condition_vectors is not None:
                raise GenrnnError("a sequence-to-sequence run is conditioned on its source: give --source-field, "
                                  "not a label, vector or image")
            sources = _sources(corpus)
            if source_field is None:
                parallel = len(sources) == 2 and all(_format_of(Path(x), format) == "text" for x in sources)
                if not parallel:
                    raise GenrnnError("sequence to sequence reads pairs: give a table's --source-field and "
                                      "--target-field, or two parallel text files (source, then target)")
            if target_field is not None:
                fields = (target_field,)
            elif source_field is not None and not fields:
                raise GenrnnError("give the target side's column with --target-field")
            condition_field = source_field
        elif source_field is not None or target_field is not None:
            raise GenrnnError("--source-field and --target-field are for --task seq2seq")
        given = [k for k, v in (("condition_field", condition_field), ("image_field", image_field),
                                ("condition_vectors", condition_vectors)) if v is not None]
        if len(given) > 1:
            raise GenrnnError(f"give one condition, not {' and '.join(given)}")
        kind = {"condition_field": "label", "image_field": "image", "condition_vectors": "vector"}.get(
            given[0]) if given else None
        if task == "seq2seq":
            kind = "text"
        if kind is not None and "layout" not in options and (config is None or config.data.layout == "stream"):
            options["layout"] = "lines"  # a condition belongs to a record
        if condition_names is not None and kind != "label":
            raise GenrnnError("condition_names names the labels of condition_field")
        run_config = override(config or RunConfig(), **options)
        spec = CorpusSpec(sources=_sources(corpus), val=None if val is None else _sources(val), glob=glob,
                          fields=tuple(str(f) for f in fields), encoding=encoding, errors=errors, fmt=format,
                          condition=kind, condition_field=condition_field if condition_field is not None else image_field,
                          condition_vectors=None if condition_vectors is None else str(condition_vectors),
                          condition_names=None if condition_names is None else str(condition_names),
                          parallel=parallel, quotes=quotes)
        run_dir = Path(out) if out is not None else default_run_dir(spec)
        trainer = Trainer(run_config, spec, run_dir, callbacks=callbacks, progress_download=progress_download,
                          explicit=explicit)
    result = trainer.run()
    trained = TrainedModel(result.run_dir, trainer.config.train.device)
    trained.result = result
    return trained

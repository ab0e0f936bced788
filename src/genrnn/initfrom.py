"""Starting a run from a trained one: ``genrnn train NEWTEXT --init-from RUN``.

The new run takes the parent's network shape and tokenizer kind, and the
parent's vocabulary with the new text's unseen tokens appended after it, so
every token the parent knew keeps its id and with it its embedding row, its
output row and bias (and, for a one-hot input, its input column). A new
token's rows start as the mean of the parent's rows of regular tokens: a
typical token rather than a random one, so the first steps are not spent
undoing an outlier. Everything else is copied. The run then trains as any
run does (its own optimizer and schedule, resume, eval, sample and serve),
and records its parent in config.json (``train.init_from``). A mixture keeps
or gains its n-gram part fitted on the new text; Markov runs have no weights
to start from, and conditioned or sequence-to-sequence runs are refused: the
condition's encoder would need its own inheritance rules.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Iterable

import torch
import torch.nn as nn

from . import checkpoint as ckpt
from .config import RunConfig
from .errors import GenrnnError
from .tokenizers import SPECIALS

# The default learning rate of a run started from another is the automatic one times this. At the full
# rate (1e-2 for a 2x256) the first validation, 50 steps in (still in the warmup), was the best: the
# first steps undid what the parent knew (docs/benchmarks.md, "Starting from a trained model").
LR_SCALE = 0.1

SHAPE = ("cell", "embedding_size", "hidden_size", "num_layers", "tie_weights", "adaptive_softmax")


def read_parent(run_dir: Path) -> ckpt.LoadedRun:
    """The run to start from: a run folder, or a built-in model's name (:mod:`.pretrained`)."""
    parent = ckpt.load_run(run_dir)
    m = parent.config.model
    if m.type not in ("rnn", "mixture"):
        raise GenrnnError(f"--init-from {run_dir}: a {m.type} model has no network weights to start from; "
                          "give a run of --model rnn or mixture")
    if m.condition != "none":
        raise GenrnnError(f"--init-from {run_dir}: the run is conditioned on {m.condition}s; starting from a "
                          "conditioned or sequence-to-sequence run is not supported yet")
    return parent


def inherit(config: RunConfig, parent: ckpt.LoadedRun, explicit: Iterable[str]) -> RunConfig:
    """``config`` with the parent's network shape and tokenizer kind; an
    explicit option that contradicts them is an error."""
    pm, pd = parent.config.model, parent.config.data
    given = set(explicit)
    for name in SHAPE:
        if name in given and getattr(config.model, name) != getattr(pm, name):
            raise GenrnnError(f"--init-from takes the network's shape from {parent.run_dir}: its {name} is "
                              f"{getattr(pm, name)!r}, not {getattr(config.model, name)!r}; leave the option out")
    for name in ("tokenizer", "lower"):
        if name in given and getattr(config.data, name) != getattr(pd, name):
            raise GenrnnError(f"--init-from extends {parent.run_dir}'s {pd.tokenizer} vocabulary: its {name} is "
                              f"{getattr(pd, name)!r}; leave --{name} out")
    model = dataclasses.replace(config.model, **{n: getattr(pm, n) for n in SHAPE})
    if config.model.type not in ("rnn", "mixture"):
        raise GenrnnError("--init-from starts an rnn or mixture model; leave out --model markov")
    data = dataclasses.replace(config.data, tokenizer=pd.tokenizer, lower=pd.lower)
    return dataclasses.replace(config, model=model, data=data)


def _network(model: nn.Module) -> nn.Module:
    """The recurrent network of a model (a mixture's RNN part)."""
    from .models import MixtureLM

    return model.rnn if isinstance(model, MixtureLM) else model


@torch.no_grad()
def transfer(parent: nn.Module, child: nn.Module, parent_vocab: int) -> Dict[str, Any]:
    """Copy the parent network's weights into the child's, whose vocabulary
    extends the parent's from id ``parent_vocab`` on: along every dimension
    that is the vocabulary, the parent's slices are copied and the new ones
    set to the mean of the parent's regular tokens' slices. (An adaptive
    softmax's last cluster, which the new tokens join, grows the same way,
    its new rows the mean of that cluster's.)"""
    from .models.rnn import fused_name

    # by the fused module's names: a parent with dropout (StackedRNN) fits a child without, and back
    src = {fused_name(k): v for k, v in _network(parent).state_dict().items()}
    dst = {fused_name(k): v for k, v in _network(child).state_dict().items()}
    child_vocab = _network(child).config.vocab_size
    if src.keys() != dst.keys():
        raise GenrnnError("the parent run's network does not match the new run's (different parts)")
    extended = []
    for name, target in dst.items():
        source = src[name].to(target.device, target.dtype)
        if source.shape == target.shape:
            target.copy_(source)
            continue
        dims = [d for d in range(target.dim()) if source.shape[d] != target.shape[d]]
        if any(target.shape[d] - source.shape[d] != child_vocab - parent_vocab for d in dims):
            raise GenrnnError(f"the parent run's {name} has shape {tuple(source.shape)}, the new run needs "
                              f"{tuple(target.shape)}")
        grown = source
        for d in dims:
            whole = source.shape[d] == parent_vocab  # the whole vocabulary, not a cluster of it
            regular = grown.narrow(d, len(SPECIALS), parent_vocab - len(SPECIALS)) if whole else grown
            mean = regular.mean(dim=d, keepdim=True)
            grown = torch.cat([grown, mean.expand(*[child_vocab - parent_vocab if i == d else -1
                                                    for i in range(grown.dim())])], dim=d)
        target.copy_(grown)
        extended.append(name)
    return {"new_tokens": child_vocab - parent_vocab, "kept_tokens": parent_vocab, "extended": extended}

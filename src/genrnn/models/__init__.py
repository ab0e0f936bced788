"""Model registry and the protocol every genrnn model follows.

Every model is an ``nn.Module`` with::

    forward(idx, targets=None, state=None) -> (logits, loss, state)
        idx      (B, T) int64 token ids
        targets  (B, T) int64, -100 where there is nothing to predict (padding)
        logits   (B, T, V): scores whose log-softmax is the next-token log-probabilities
                 (an adaptive softmax gives those themselves); None from a model in
                 training mode that computes its loss without them (models/output.py)
        loss     mean cross-entropy over non-ignored targets, or None
        state    recurrent state to carry into the next call (None: zeros)

    prefill(idx, lengths, state=None) -> (last_logits (B, V), state)
        runs prompts of different lengths as one batch; the state and logits are
        those after each row's last real token.
    step(idx (B,), state) -> (logits (B, V), state)
        one token per row; generation calls this in a loop.
    start(condition) -> state                      (conditioned models)
        the initial state for a batch of conditions (batch in dimension 0:
        label ids, vectors or images); callers go through ``state.start``,
        which gives None (zeros) for a model without conditions.

so one ``generate()``, one ``evaluate()`` and one trainer serve them all: they
pass a batch's condition to ``state.start`` and the state on, never looking
inside. Models are built by name from :data:`MODELS` (the ``type`` field of
ModelConfig). Every tensor of a state has the batch in dimension 1 -- the
RNN's (layers, B, H), a fed condition's (1, B, C), the Markov model's
(1, B, order - 1) -- so :mod:`genrnn.state` can select, join and shard rows of
any model's state.

Two optional hooks let a model hold parts that are fitted rather than
trained. ``fit(token_arrays)`` is called on the training tokens before the
first step: a model with it and no trainable parameters (:func:`is_fitted`,
the Markov baseline) is fitted in one pass instead of trained; the mixture
fits its n-gram part so. ``calibrate(eval_set, runtime, max_tokens)`` fits
parameters on validation data (the mixture's weight) and returns the
validation figures; the trainer calls it instead of ``evaluate`` at every
evaluation. ``baseline_loss(eval_set, runtime, max_tokens)`` gives a model's
own n-gram baseline (the mixture's part) for the trainer's report.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch.nn as nn

from ..config import ModelConfig
from ..errors import GenrnnError
from ..state import State, detach_state, map_state
from .encoders import ENCODERS
from .markov import MarkovLM
from .mixture import MixtureLM
from .rnn import RNNLM

MODELS: Dict[str, Callable[[ModelConfig], nn.Module]] = {"rnn": RNNLM, "markov": MarkovLM, "mixture": MixtureLM}


def is_fitted(model: nn.Module) -> bool:
    """A model that is fitted in one pass over the training tokens
    (``model.fit(token_arrays)``, e.g. the Markov baseline) instead of trained
    by gradient descent: it has ``fit`` and no trainable parameters."""
    return callable(getattr(model, "fit", None)) and not any(p.requires_grad for p in model.parameters())


def build_model(config: ModelConfig) -> nn.Module:
    config.validate()
    if config.vocab_size <= 0:
        raise GenrnnError("model needs a vocabulary size > 0 (build the tokenizer first)")
    try:
        factory = MODELS[config.type]
    except KeyError:
        raise GenrnnError(f"unknown model type {config.type!r}; known: {', '.join(MODELS)}") from None
    return factory(config)


__all__ = ["ENCODERS", "MODELS", "MarkovLM", "MixtureLM", "RNNLM", "State", "build_model", "detach_state", "is_fitted",
           "map_state"]

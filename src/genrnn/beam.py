"""Beam search: the K most likely continuations of every prompt, for any model.

Works with every model of the protocol (``state.start``, ``prefill``,
``step``, ``state.select_rows``): a language model continuing a prompt, a
captioner or a sequence-to-sequence model decoding from its condition. Many
prompts decode as one batch of ``prompts x beam`` rows; a prompt whose search
is over leaves the batch.

Per step, each prompt's beams are extended by every token, and the ``2 K``
best (by summed log-probability) are looked at in order: one ending in
``<eos>`` among the top K becomes a finished hypothesis, the others continue
until K are alive. Finished hypotheses are ranked by ``log p / length^alpha``
(``length_penalty`` alpha; 1: the mean log-probability per token, the
``<eos>`` counted; 0: the raw sum, which favours short outputs). A prompt is
done when it has K finished hypotheses and none of its live beams scores
better now; at ``max_new_tokens`` the live beams finish with reason
``length`` (never an endless search: sgrvinod's captioning tutorial #18, #142).
The log-probabilities are those of ``forward``: a hypothesis's ``logprob``
equals re-scoring its tokens with teacher forcing. ``<pad>`` is never chosen.
With K = 1 this is greedy decoding.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import GenrnnError
from .sampling import padded_prompts
from .state import select_rows, start
from .tokenizers import EOS_ID, PAD_ID

MAX_BEAM = 64
# a caption's default decoding (API, CLI and server alike): the most likely caption by a beam of 3,
# which named skin tones more reliably than greedy decoding did (docs/benchmarks.md, "Captioning")
CAPTION_BEAM = 3


@dataclass(frozen=True)
class Hypothesis:
    ids: List[int]  # the generated tokens, without the closing <eos>
    logprob: float  # sum of log p(token | context) over them, and over the <eos> if it ended with one
    score: float  # logprob / length ** length_penalty, length counting the <eos>
    finish_reason: str  # "eos" or "length"

    @property
    def length(self) -> int:
        return len(self.ids) + (self.finish_reason == "eos")


def check_beam(beam: int, num_return: int = 1) -> None:
    if not isinstance(beam, int) or isinstance(beam, bool) or not 1 <= beam <= MAX_BEAM:
        raise GenrnnError(f"--beam must be a whole number from 1 to {MAX_BEAM}, got {beam!r}")
    if not isinstance(num_return, int) or isinstance(num_return, bool) or not 1 <= num_return <= beam:
        raise GenrnnError(f"--num-return must be from 1 to the beam size ({beam}), got {num_return!r}")


def caption_beam(beam: Optional[int], temperature: float) -> Optional[int]:
    """How a caption is decoded, the same for the API, the CLI and the server:
    the beam to search with (2 or more; :data:`CAPTION_BEAM` unless given), or
    None for the sampling core (``beam=1``: greedy; a temperature: sampled)."""
    if beam is not None and temperature:
        raise GenrnnError("give a beam or a temperature, not both")
    if temperature:
        return None
    beam = CAPTION_BEAM if beam is None else beam
    check_beam(beam, 1)
    return beam if beam > 1 else None


def _score(logprob: float, length: int, alpha: float) -> float:
    return logprob / max(1, length) ** alpha


@torch.inference_mode()
def beam_search(model: nn.Module, prompts: Sequence[Sequence[int]], *, beam: int, max_new_tokens: int,
                num_return: int = 1, length_penalty: float = 1.0, condition: Optional[torch.Tensor] = None,
                device: Optional[torch.device] = None, autocast=None) -> List[List[Hypothesis]]:
    """For each prompt (token ids, each starting with ``<eos>`` as in training),
    its ``num_return`` best hypotheses, best first. ``condition``: one row per
    prompt, for a conditioned model."""
    check_beam(beam, num_return)
    if max_new_tokens < 0:
        raise GenrnnError("--length must be >= 0")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenrnnError("every prompt needs at least one token")
    if condition is not None and condition.shape[0] != len(prompts):
        raise GenrnnError(f"got {condition.shape[0]} conditions for {len(prompts)} prompts")
    if device is None:
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
    if max_new_tokens == 0:
        return [[Hypothesis([], 0.0, 0.0, "length")] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        with autocast if autocast is not None else contextlib.nullcontext():
            return _search(model, prompts, beam, max_new_tokens, num_return, length_penalty, condition, device)
    finally:
        model.train(was_training)


def _search(model, prompts, K, max_new, num_return, alpha, condition, device) -> List[List[Hypothesis]]:
    B = len(prompts)
    idx, lengths = padded_prompts(prompts)
    state = start(model, None if condition is None else condition.to(device))
    logits, state = model.prefill(idx.to(device), lengths, state)
    rows = torch.arange(B, device=device).repeat_interleave(K)  # K copies of each prompt's row
    state, logits = select_rows(state, rows), logits.index_select(0, rows)
    beam_logp = torch.full((B, K), float("-inf"), device=device)
    beam_logp[:, 0] = 0.0  # K identical beams at first: only one may extend
    history = torch.zeros(B * K, 0, dtype=torch.long, device=device)
    finished: List[List[Hypothesis]] = [[] for _ in range(B)]
    active = list(range(B))  # the prompts still searching, in batch order
    for t in range(max_new):
        n, V = len(active), logits.shape[-1]
        logp = F.log_softmax(logits.float(), dim=-1)
        logp[:, PAD_ID] = float("-inf")
        total = (beam_logp[:, :, None] + logp.view(n, K, V)).view(n, K * V)
        values, flat = total.topk(min(2 * K, K * V), dim=-1)
        values_l, flat_l = values.tolist(), flat.tolist()
        keep_rows: List[int] = []
        keep_tokens: List[int] = []
        keep_logp: List[float] = []
        still: List[int] = []
        last = t == max_new - 1
        for j, b in enumerate(active):
            alive: List[tuple] = []
            for rank, (v, f) in enumerate(zip(values_l[j], flat_l[j])):
                if v == float("-inf"):
                    break
                k, tok = divmod(f, V)
                if tok == EOS_ID:
                    if rank < K:
                        ids = history[j * K + k].tolist()
                        finished[b].append(Hypothesis(ids, v, _score(v, t + 1, alpha), "eos"))
                    continue
                alive.append((j * K + k, tok, v))
                if len(alive) == K:
                    break
            if last:
                for r, tok, v in alive:
                    finished[b].append(Hypothesis(history[r].tolist() + [tok], v, _score(v, t + 1, alpha), "length"))
                continue
            done = len(finished[b]) >= K and alive and max(_score(v, t + 1, alpha) for _, _, v in alive) <= \
                sorted((h.score for h in finished[b]), reverse=True)[K - 1]
            if done or not alive:
                continue
            while len(alive) < K:  # fewer than K continuations exist (a tiny vocabulary): pad with dead beams
                alive.append((alive[0][0], alive[0][1], float("-inf")))
            still.append(b)
            for r, tok, v in alive:
                keep_rows.append(r)
                keep_tokens.append(tok)
                keep_logp.append(v)
        if not still:
            break
        sel = torch.tensor(keep_rows, dtype=torch.long, device=device)
        tokens = torch.tensor(keep_tokens, dtype=torch.long, device=device)
        history = torch.cat([history.index_select(0, sel), tokens[:, None]], dim=1)
        beam_logp = torch.tensor(keep_logp, device=device).view(len(still), K)
        active = still
        logits, state = model.step(tokens, select_rows(state, sel))
    return [sorted(h, key=lambda x: x.score, reverse=True)[:num_return] or [Hypothesis([], 0.0, 0.0, "length")]
            for h in finished]

"""Markov-chain (n-gram) baseline: interpolated modified Kneser-Ney smoothing.

A model of ``order`` N predicts a token from the N-1 tokens before it. It is
*fitted*, not trained: :meth:`MarkovLM.fit` counts the n-grams of the training
tokens once, and the trainer evaluates and saves it (see ``trainer.py``). It
follows the same protocol as the recurrent models, so ``genrnn sample`` and
``genrnn eval`` use it unchanged, and its held-out loss is directly comparable.

Smoothing. Interpolated Kneser-Ney (Kneser & Ney 1995) with the three
discounts per order of *modified* Kneser-Ney (Chen & Goodman 1998, "An
empirical study of smoothing techniques for language modeling", TR-10-98)::

    p_n(w | h) = (a(hw) - D_n(a(hw))) / a(h.)  +  gamma(h) p_{n-1}(w | h')
    gamma(h)   = (D_n1 N1(h.) + D_n2 N2(h.) + D_n3+ N3+(h.)) / a(h.)

where h' is h without its oldest token, a(h.) the sum of a(hw) over w, and
N_r(h.) the number of words with a(hw) = r (3 or more for N3+). At the highest
order a is the raw count; below it is the continuation count, the number of
distinct tokens seen just before the n-gram -- plus one for every occurrence at
the start of a sequence, where no token can precede it (this is KenLM's rule
for n-grams that begin with ``<s>``, and here it covers the lines layout, whose
records all begin with ``<eos>``). The discounts come from the count-of-counts
n_1..n_4 of each order: Y = n1 / (n1 + 2 n2), D_r = r - (r + 1) Y n_{r+1} / n_r;
where a count-of-count is zero or a discount falls outside (0, r], the fixed
fallback 0.5, 1, 1.5 is used (what KenLM's ``--discount_fallback`` uses).
Unseen contexts fall back to the next lower order, and the unigram is
interpolated with the uniform distribution over every token except ``<pad>``,
so every token -- ``<unk>`` and tokens never seen in training included -- has a
probability above zero and held-out perplexity is finite. ``<pad>`` is never a
target and gets none (its log-probability is -inf).

A context at the start of a document is ``<eos>`` and what follows it, as in
the training stream. A history shorter than N-1 tokens (the state after fewer
tokens than that; ``None`` is an empty history) simply uses the lower orders.

Tables. Everything is a registered buffer, so the weights go to
``model.safetensors`` like any model's. A context of n-1 tokens is identified
by walking backwards from the most recent token: its key at order n is
``id(its n-2 most recent tokens) * V + its oldest token``, where ``id`` is the
context's row in the order n-1 table (every suffix of a seen context is itself
a seen context). One walk over the history finds the context at every order
with one ``searchsorted`` per order, and keys stay below V * (number of
contexts), so they fit int64 for any vocabulary. Per order the tables are: the
sorted context keys, CSR offsets into the followers, the follower ids, their
discounted probabilities (the first term above) and ``gamma`` per context.

State. The last N-1 tokens of each row, a LongTensor of shape (1, B, N-1), -1
for "no token yet": the batch is dimension 1, as in the recurrent models'
(layers, B, H) states, so code that selects or concatenates rows of a state
along dimension 1 (``models.map_state``, the serving engine) works unchanged.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..errors import GenrnnError
from ..tokenizers import EOS_ID, PAD_ID

NONE = -1  # history slot before the first token
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
# the dense (rows x V) work of one chunk of predictions, in elements; bounds memory
CHUNK_ELEMENTS = 1 << 25

TokenArrays = Union[torch.Tensor, np.ndarray, Sequence[np.ndarray], Sequence[torch.Tensor]]


def modified_kn_discounts(counts_of_counts: Sequence[int]) -> Tuple[float, float, float]:
    """D1, D2, D3+ from n_1..n_4, the number of n-grams seen exactly 1..4 times
    (Chen & Goodman 1998, eq. 26), with the fixed fallback where undefined."""
    n1, n2, n3, n4 = (int(c) for c in counts_of_counts)
    n = (n1, n2, n3, n4)
    out = []
    for r in (1, 2, 3):
        d = FALLBACK_DISCOUNTS[r - 1]
        if n1 + 2 * n2 > 0 and n[r - 1] > 0:
            y = n1 / (n1 + 2 * n2)
            computed = r - (r + 1) * y * n[r] / n[r - 1]
            if 0.0 < computed <= r:
                d = computed
        out.append(d)
    return out[0], out[1], out[2]


class _OrderTable(nn.Module):
    """The tables of one order: contexts (sorted keys), followers in CSR form."""

    def __init__(self, first: bool):
        super().__init__()
        # an unfitted model is the uniform distribution: one empty unigram
        # context whose whole mass goes to the uniform (gamma 1)
        self.register_buffer("ctx_keys", torch.zeros(1 if first else 0, dtype=torch.long))
        self.register_buffer("offsets", torch.zeros(2 if first else 1, dtype=torch.long))
        self.register_buffer("words", torch.zeros(0, dtype=torch.int32))
        self.register_buffer("alpha", torch.zeros(0, dtype=torch.float32))
        self.register_buffer("gamma", torch.ones(1 if first else 0, dtype=torch.float32))

    def resize_like(self, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """Give each buffer the shape of the tensor that will be loaded into it
        (the tables are as large as the data made them)."""
        for name, buf in list(self._buffers.items()):
            t = tensors.get(prefix + name)
            if buf is not None and t is not None and tuple(t.shape) != tuple(buf.shape):
                self._buffers[name] = torch.empty(tuple(t.shape), dtype=buf.dtype, device=buf.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.resize_like(state_dict, prefix)  # so that plain load_state_dict() accepts fitted tables
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class MarkovLM(nn.Module):
    """N-gram language model (``ModelConfig.order`` = N) with interpolated
    modified Kneser-Ney smoothing. Fit it with :meth:`fit`; it has no
    trainable parameters. ``forward`` returns log-probabilities as logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.order = int(config.order)
        self.vocab_size = int(config.vocab_size)
        if self.vocab_size < 2:
            raise GenrnnError("the Markov model needs a vocabulary of at least 2 tokens")
        self.orders = nn.ModuleList(_OrderTable(first=n == 1) for n in range(1, self.order + 1))
        # D1, D2, D3+ of each order (row n-1), for inspection
        self.register_buffer("discounts", torch.zeros(self.order, 3, dtype=torch.float64))

    # -- fitting -----------------------------------------------------------------------

    def fit(self, token_arrays: TokenArrays) -> None:
        """Count the n-grams of the training tokens and compute the tables.

        ``token_arrays``: one 1-D token sequence (the stream layout's tokens)
        or a list of them (the lines layout's records). No n-gram spans two
        sequences. An array that does not begin with ``<eos>`` but begins with
        the last token of the previous one continues it: that is how
        ``data.encode_records`` cuts a long record into windows overlapping by
        one token, and the n-grams across the cut are worth keeping.
        """
        seqs = _join_windows(_as_arrays(token_arrays))
        if not seqs:
            raise GenrnnError("no training tokens to fit the Markov model on")
        tokens = np.concatenate(seqs)
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 1 or hi >= self.vocab_size:  # <pad> (0) is never a token of the text
            raise GenrnnError(f"token ids must be in [1, {self.vocab_size}) to fit the Markov model, "
                              f"got ids from {lo} to {hi}")
        tables, discounts = count_tables(seqs, self.order, self.vocab_size)
        device = self.discounts.device
        for module, table in zip(self.orders, tables):
            for name, value in table.items():
                module._buffers[name] = torch.from_numpy(value).to(device)
        self.discounts = torch.tensor(discounts, dtype=torch.float64, device=device)

    def prepare_load(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Resize the tables to the shapes in ``tensors`` before they are
        loaded; ``checkpoint.load_weights`` calls this, since a Markov model
        rebuilt from its config has empty tables. The tables are checked to
        fit together first: a tampered file must not index out of them."""
        self._check_tables(tensors)
        for i, module in enumerate(self.orders):
            module.resize_like(tensors, f"orders.{i}.")

    def _check_tables(self, tensors: Mapping[str, torch.Tensor]) -> None:
        V, previous = self.vocab_size, 1
        for i in range(self.order):
            t = {name: tensors.get(f"orders.{i}.{name}") for name in ("ctx_keys", "offsets", "words", "alpha", "gamma")}
            if any(v is None for v in t.values()):
                return  # a missing tensor: the loader reports it
            keys, offsets, words = t["ctx_keys"].long(), t["offsets"].long(), t["words"].long()
            n = keys.numel()
            problem = None
            if any(v.dim() != 1 for v in t.values()):
                problem = "a table is not one-dimensional"
            elif offsets.numel() != n + 1 or t["gamma"].numel() != n or t["alpha"].numel() != words.numel():
                problem = "the table sizes do not match"
            elif int(offsets[0]) != 0 or int(offsets[-1]) != words.numel() or bool((offsets.diff() < 0).any()):
                problem = "the follower offsets are not increasing from 0 to the followers' count"
            elif words.numel() and (int(words.min()) < 0 or int(words.max()) >= V):
                problem = f"a follower id is outside the vocabulary of {V}"
            elif n and (bool((keys.diff() <= 0).any()) or int(keys.min()) < 0 or
                        int(keys.max()) >= max(1, previous) * V):
                problem = "the context keys are not sorted or are out of range"
            if problem:
                raise GenrnnError(f"the Markov model's order-{i + 1} tables are corrupt: {problem}")
            previous = n

    # -- the model protocol -------------------------------------------------------------

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        B, T = idx.shape
        K = self.order - 1
        ext = torch.cat([self._history(state, B, idx.device), idx], dim=1)  # (B, K + T)
        if K == 0:
            hist = idx.new_empty(B * T, 0)
        else:  # the K tokens ending at each position: ext[:, t + 1 : t + 1 + K]
            hist = ext.unfold(1, K, 1)[:, 1:].reshape(B * T, K)
        logits = self._log_probs(hist).view(B, T, self.vocab_size)
        loss = None
        if targets is not None:
            loss = F.nll_loss(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss, ext[:, ext.shape[1] - K :][None]

    def prefill(self, idx: torch.Tensor, lengths: torch.Tensor,
                state: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Right-padded prompts ``idx`` (B, T) of ``lengths`` (B,): the
        distribution and the history after each row's last real token."""
        B, _ = idx.shape
        K = self.order - 1
        ext = torch.cat([self._history(state, B, idx.device), idx], dim=1)
        lengths = lengths.to(idx.device)
        # the K tokens ending at position lengths-1 of idx, which is ext[lengths-1+K]
        hist = ext.gather(1, lengths[:, None] + torch.arange(K, device=idx.device))
        return self._log_probs(hist), hist[None]

    def step(self, idx: torch.Tensor, state: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """One token per row: ``idx`` (B,) -> log-probabilities (B, V)."""
        hist = torch.cat([self._history(state, idx.shape[0], idx.device)[:, 1:], idx[:, None]], dim=1)
        hist = hist[:, hist.shape[1] - (self.order - 1) :]
        return self._log_probs(hist), hist[None]

    def advance(self, idx: torch.Tensor, state: Optional[torch.Tensor]) -> torch.Tensor:
        """The history after reading ``idx`` (B, T), without predicting (the
        mixture's n-gram part follows the text this way while its RNN trains)."""
        K = self.order - 1
        ext = torch.cat([self._history(state, idx.shape[0], idx.device), idx], dim=1)
        return ext[:, ext.shape[1] - K :][None]

    def _history(self, state: Optional[torch.Tensor], B: int, device: torch.device) -> torch.Tensor:
        K = self.order - 1
        if state is None:
            return torch.full((B, K), NONE, dtype=torch.long, device=device)
        if tuple(state.shape) != (1, B, K):
            raise GenrnnError(f"Markov state must have shape (1, {B}, {K}), got {tuple(state.shape)}")
        return state[0].to(device=device, dtype=torch.long)

    # -- prediction ---------------------------------------------------------------------

    @torch.no_grad()
    def _log_probs(self, hist: torch.Tensor) -> torch.Tensor:
        """Log-distributions (P, V) for histories ``hist`` (P, N-1), most recent last."""
        P, V = hist.shape[0], self.vocab_size
        out = torch.empty(P, V, dtype=torch.float32, device=hist.device)
        rows = max(1, CHUNK_ELEMENTS // V)
        unigram = self._unigram(hist.device)
        for start in range(0, P, rows):
            self._probs(hist[start : start + rows], unigram, out[start : start + rows])
        return out.log_()

    def _unigram(self, device: torch.device) -> torch.Tensor:
        """The order-1 distribution, interpolated with the uniform over all tokens but <pad>."""
        V, t = self.vocab_size, self.orders[0]
        p = torch.full((V,), float(t.gamma[0]) / (V - 1), dtype=torch.float32, device=device)
        p[PAD_ID] = 0.0
        p.index_add_(0, t.words.long(), t.alpha)
        return p

    def _probs(self, hist: torch.Tensor, unigram: torch.Tensor, out: torch.Tensor) -> None:
        """Fill ``out`` (R, V) with the distributions for ``hist`` (R, N-1).

        Unrolling the interpolation, a row whose longest seen context has order m is::

            p_m = gamma_m ... gamma_3 p_2  +  sum over k = 3..m of (gamma_m ... gamma_{k+1}) alpha_k

        with alpha_k the sparse discounted term of its order-k context. The
        dense p_2 is computed once per distinct order-2 context among the rows
        (word models have thousands of followers there); each row then costs
        one scaled copy of it plus the few followers of its longer contexts."""
        R, V, N = hist.shape[0], self.vocab_size, self.order
        device = hist.device
        # walk back from the most recent token: each row's context id at every order
        found: List[torch.Tensor] = []
        ids: List[torch.Tensor] = []
        cid = torch.zeros(R, dtype=torch.long, device=device)
        ok = torch.ones(R, dtype=torch.bool, device=device)
        for n in range(2, N + 1):
            table = self.orders[n - 1]
            C = table.ctx_keys.numel()
            if C == 0:
                break
            tok = hist[:, N - n]  # the oldest token of the order-n context
            key = cid * V + tok
            cid = torch.searchsorted(table.ctx_keys, key).clamp_(max=C - 1)
            ok = ok & (tok >= 0) & (tok < V) & (table.ctx_keys[cid] == key)  # -1: no token yet
            if not bool(ok.any()):
                break
            found.append(ok)
            ids.append(cid)
        # the dense base: the unigram, or p_2 of each distinct order-2 context
        base = unigram[None]
        which = torch.zeros(R, dtype=torch.long, device=device)
        if found:
            rows = found[0].nonzero().squeeze(1)
            ctx, inv = torch.unique(ids[0][rows], return_inverse=True)
            table = self.orders[1]
            base = torch.empty(1 + ctx.numel(), V, dtype=torch.float32, device=device)
            base[0] = unigram
            p2 = torch.mul(table.gamma[ctx, None], unigram, out=base[1:])
            owner, entry = _followers(table.offsets, ctx)
            p2.view(-1).index_add_(0, owner * V + table.words[entry], table.alpha[entry])
            which[rows] = inv + 1
        # weight[r] = product of gamma over the orders above the current one, up to the row's longest
        weight = torch.ones(R, dtype=torch.float32, device=device)
        terms = []
        for k in range(len(found) - 1, 0, -1):  # order k + 2, from the top down to 3
            table = self.orders[k + 1]
            rows = found[k].nonzero().squeeze(1)
            ctx = ids[k][rows]
            terms.append((table, rows, ctx, weight[rows]))
            weight[rows] *= table.gamma[ctx]
        torch.index_select(base, 0, which, out=out)
        out.mul_(weight[:, None])
        for table, rows, ctx, w in terms:
            owner, entry = _followers(table.offsets, ctx)
            values = table.alpha[entry] * w[owner]
            out.view(-1).index_add_(0, rows[owner] * V + table.words[entry], values)


def _followers(offsets: torch.Tensor, ctx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """For contexts ``ctx`` (U,): the position in ``ctx`` and the CSR entry of each of their followers."""
    starts = offsets[ctx]
    counts = offsets[ctx + 1] - starts
    owner = torch.repeat_interleave(torch.arange(ctx.numel(), device=ctx.device), counts)
    entry = torch.repeat_interleave(starts - (torch.cumsum(counts, 0) - counts), counts)
    entry += torch.arange(entry.numel(), device=ctx.device)
    return owner, entry


# -- counting (numpy) -------------------------------------------------------------------------


def _as_arrays(token_arrays: TokenArrays) -> List[np.ndarray]:
    if isinstance(token_arrays, (torch.Tensor, np.ndarray)) and token_arrays.ndim == 1:
        token_arrays = [token_arrays]
    arrays = []
    for a in token_arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        if a.ndim != 1:
            raise GenrnnError(f"the Markov model fits 1-D token sequences, got shape {a.shape}")
        arrays.append(a.astype(np.int64, copy=False))
    return arrays


def _join_windows(arrays: List[np.ndarray]) -> List[np.ndarray]:
    """Glue a record's windows back together (see :meth:`MarkovLM.fit`)."""
    groups: List[List[np.ndarray]] = []
    for a in arrays:
        if len(a) == 0:
            continue
        last = groups[-1][-1][-1] if groups else None
        if last is not None and a[0] != EOS_ID and last != EOS_ID and a[0] == last:
            groups[-1].append(a[1:])
        else:
            groups.append([a])
    return [np.concatenate(g) if len(g) > 1 else g[0] for g in groups]


def count_tables(seqs: List[np.ndarray], order: int, V: int) -> Tuple[List[Dict[str, np.ndarray]], np.ndarray]:
    """The prediction tables of every order (see the module docstring) and the
    discounts, computed with sorting and bincounts over all n-gram positions."""
    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    tokens = np.concatenate(seqs).astype(np.int64, copy=False)
    M = len(tokens)
    ends = np.cumsum(lens)
    remaining = np.repeat(ends, lens) - np.arange(M)  # tokens from each position to its sequence's end
    at_start = np.zeros(M, dtype=bool)
    at_start[ends - lens] = True
    cid = np.zeros(M, dtype=np.int64)  # id of the context of length n-2 starting at each position
    tables: List[Dict[str, np.ndarray]] = []
    discounts = np.zeros((order, 3))
    for n in range(1, order + 1):
        pos = np.flatnonzero(remaining >= n)  # where an n-gram starts
        if len(pos) == 0:  # sequences too short for this order: an empty table
            tables.append(_empty_table())
            continue
        # the n-gram's context tokens[pos : pos+n-1], keyed by its suffix's id and its oldest token
        ctx_key = np.zeros(len(pos), dtype=np.int64) if n == 1 else cid[pos + 1] * V + tokens[pos]
        ctx_keys, ctx_of = np.unique(ctx_key, return_inverse=True)
        ctx_of = ctx_of.reshape(-1)
        gram_keys, gram_of, raw = np.unique(ctx_of * V + tokens[pos + n - 1], return_inverse=True,
                                            return_counts=True)
        gram_of = gram_of.reshape(-1)
        G = len(gram_keys)
        if n < order:  # continuation counts: distinct preceding tokens, + each occurrence at a start
            inner = ~at_start[pos]
            pairs = np.unique(gram_of[inner] * V + tokens[pos[inner] - 1])
            counts = np.bincount(pairs // V, minlength=G) + np.bincount(gram_of[~inner], minlength=G)
        else:
            counts = raw
        d = np.array(modified_kn_discounts([np.count_nonzero(counts == r) for r in (1, 2, 3, 4)]))
        discounts[n - 1] = d
        g_ctx, g_word = gram_keys // V, gram_keys % V
        C = len(ctx_keys)
        gram_d = d[np.minimum(counts, 3) - 1]
        total = np.bincount(g_ctx, weights=counts, minlength=C)
        tables.append({
            "ctx_keys": ctx_keys.astype(np.int64),
            "offsets": np.concatenate([[0], np.cumsum(np.bincount(g_ctx, minlength=C))]).astype(np.int64),
            "words": g_word.astype(np.int32),
            "alpha": ((counts - gram_d) / total[g_ctx]).astype(np.float32),
            "gamma": (np.bincount(g_ctx, weights=gram_d, minlength=C) / total).astype(np.float32),
        })
        nxt = np.full(M, -1, dtype=np.int64)
        nxt[pos] = ctx_of
        cid = nxt
    return tables, discounts


def _empty_table() -> Dict[str, np.ndarray]:
    return {"ctx_keys": np.zeros(0, np.int64), "offsets": np.zeros(1, np.int64), "words": np.zeros(0, np.int32),
            "alpha": np.zeros(0, np.float32), "gamma": np.zeros(0, np.float32)}

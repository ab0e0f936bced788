"""Condition encoders: what a conditioned model starts from, as one vector per row.

A conditioned model (one-to-many) turns its condition into an embedding
(B, condition_dim), which sets the initial state of every layer and may also be
fed at every step. One encoder per kind of condition, chosen by name from
:data:`ENCODERS`:

* ``label``  -- label ids (B,) int64 -> a learned embedding per label;
* ``vector`` -- feature vectors (B, D) float, e.g. a pretrained CNN's -> a linear map;
* ``image``  -- images (B, 3, S, S) uint8 -> a small CNN trained with the decoder;
* ``text``   -- source token ids (B, S), right-padded with 0 -> an RNN encoder
  (sequence to sequence), which also returns its outputs, the *memory* the
  decoder attends over, and their mask.

Each is built from the model's config (``ENCODERS[kind](config)``).
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..config import ModelConfig

HISTOGRAM_BINS = 8  # per channel: the image encoder's 512 colour cells


class LabelEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.condition_size, config.condition_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        return self.embedding(labels)


class Centre(nn.BatchNorm1d):
    """Each feature centred and scaled over the batch (running statistics at
    evaluation). A per-row layer norm does not centre features that are much
    the same in every row (a white background's pixels, empty histogram
    bins): their common part stays, Adam's steps grow the projection of it
    step after step until it drowns the part that tells rows apart, and every
    row gets one embedding (emoji captions from 16x16 pixels and a colour
    histogram: one caption for every image after 6,000 steps, or a saturated
    tanh sooner). A training batch of one row has no statistics: it uses the
    running ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


class VectorEncoder(nn.Module):
    """Features of any scale (raw CNN activations, one-hots, histograms),
    centred (:class:`Centre`), then a linear map and a layer norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width, dim = config.condition_size, config.condition_dim
        self.norm = Centre(width)
        self.proj = nn.Linear(width, dim)
        self.out = nn.LayerNorm(dim)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, dim)
        return self.out(self.proj(self.norm(vectors.float())))


def colour_histogram(images: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> (B, bins**3): the square root of the share of
    pixels in each RGB colour cell (Swain and Ballard's colour indexing)."""
    cells = torch.div(images.long(), 256 // bins, rounding_mode="floor")
    codes = ((cells[:, 0] * bins + cells[:, 1]) * bins + cells[:, 2]).flatten(1)  # (B, S*S)
    counts = torch.zeros(images.shape[0], bins ** 3, device=images.device)
    counts.scatter_add_(1, codes, torch.ones_like(codes, dtype=counts.dtype))
    return (counts / codes.shape[1]).sqrt()


class ConvEncoder(nn.Module):
    """Two branches, each normalized on its own and joined by a linear layer
    with a layer norm after it (no tanh, which saturated):

    * *where*: four 3x3 conv + batch norm + ReLU + 2x2 max-pool blocks (32,
      64, 128, 128 channels), then the flattened 4x4 map (not a global
      average: where a colour sits tells a face from a background) and a
      layer norm. Without the batch norms the decoder's learning rate (1e-2)
      collapsed the encoder to one output for every image within a few steps.
    * *which colours*: a fixed colour histogram (:func:`colour_histogram`),
      centred (:class:`Centre`): which colours there are, wherever they are.
      The spatial branch alone read skin tone badly (the tone of a hand is a
      colour at a different place in every emoji), and so did a learned
      histogram (1x1 convs averaged over the image) trained with it.

    Other image sizes are pooled to 4x4 too."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        dim = config.condition_dim
        layers = []
        channels = [3, 32, 64, 128, 128]
        for a, b in zip(channels, channels[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.LayerNorm(128 * 16))
        self.colours = Centre(HISTOGRAM_BINS ** 3)
        width = 128 * 16 + HISTOGRAM_BINS ** 3
        self.proj = nn.Sequential(nn.Linear(width, dim), nn.LayerNorm(dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) uint8 -> (B, dim)
        x = images.float() * (2.0 / 255.0) - 1.0
        return self.proj(torch.cat([self.features(x), self.colours(colour_histogram(images))], dim=1))


class TextEncoder(nn.Module):
    """An embedding and an LSTM/GRU/RNN of the decoder's cell, width and depth
    over the source ids (B, S), right-padded with 0 and packed so that padding
    never enters the state. Returns ``(summary (B, C), memory (B, S', H),
    valid (B, S'))``: the last layer's final state (both directions' joined
    when bidirectional), projected to the condition width; the outputs at
    every source position (S' = the batch's longest source); and a mask that
    is 1 at real tokens. Bidirectional: H/2 per direction, so memory is H wide."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        H, E = config.hidden_size, config.embedding_size or config.hidden_size
        self.bidirectional = config.bidirectional
        per_direction = H // 2 if config.bidirectional else H
        self.embedding = nn.Embedding(config.condition_size, E, padding_idx=0)
        cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[config.cell]
        self.rnn = cell(E, per_direction, num_layers=config.num_layers, batch_first=True,
                        bidirectional=config.bidirectional, dropout=config.dropout if config.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(config.dropout)
        self.proj = nn.Linear(2 * per_direction if config.bidirectional else per_direction, config.condition_dim)

    def forward(self, ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lengths = (ids != 0).sum(1)
        if bool((lengths == 0).any()):
            raise ValueError("an empty source sentence (every source ends with <eos>)")
        ids = ids[:, : int(lengths.max())]
        x = self.drop(self.embedding(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])  # (B, S, H)
        h = state[0] if isinstance(state, tuple) else state  # (layers * directions, B, per_direction)
        final = torch.cat([h[-2], h[-1]], dim=-1) if self.bidirectional else h[-1]
        return self.proj(final), self.drop(memory), (ids != 0).to(memory.dtype)


ENCODERS: Dict[str, Callable[[ModelConfig], nn.Module]] = {
    "label": LabelEncoder,
    "vector": VectorEncoder,
    "image": ConvEncoder,
    "text": TextEncoder,
}

"""Condition encoders: what a conditioned model starts from, as one vector per row.

A conditioned model (one-to-many) turns its condition into an embedding
(B, condition_dim), which sets the initial state of every layer and may also be
fed at every step. One encoder per kind of condition, chosen by name from
:data:`ENCODERS`:

* ``label``  -- label ids (B,) int64 -> a learned embedding per label;
* ``vector`` -- feature vectors (B, D) float, e.g. a pretrained CNN's -> a linear map;
* ``image``  -- images (B, 3, S, S) uint8 -> a small CNN trained with the decoder.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.nn as nn


class LabelEncoder(nn.Module):
    def __init__(self, num_labels: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_labels, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:  # (B,) -> (B, dim)
        return self.embedding(labels)


class VectorEncoder(nn.Module):
    def __init__(self, width: int, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)  # features of any scale (raw CNN activations, one-hots...)
        self.proj = nn.Linear(width, dim)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, dim)
        return torch.tanh(self.proj(self.norm(vectors.float())))


class ConvEncoder(nn.Module):
    """Four 3x3 conv + batch norm + ReLU + 2x2 max-pool blocks (32, 64, 128,
    128 channels), then the flattened 4x4 map (not a global average: where a
    colour sits tells a face from a background) through a linear layer, with
    layer norms on both sides and no tanh. Without the batch norms the
    decoder's learning rate (1e-2) collapsed the encoder to one output for
    every image within a few steps (at 2e-3 it learned); a tanh output
    saturated the same way. Other image sizes are pooled to 4x4 too."""

    def __init__(self, image_size: int, dim: int):
        super().__init__()
        layers = []
        channels = [3, 32, 64, 128, 128]
        for a, b in zip(channels, channels[1:]):
            layers += [nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.LayerNorm(128 * 16))
        self.proj = nn.Sequential(nn.Linear(128 * 16, dim), nn.LayerNorm(dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) uint8 -> (B, dim)
        x = images.float() * (2.0 / 255.0) - 1.0
        return self.proj(self.features(x))


ENCODERS: Dict[str, Callable[[int, int], nn.Module]] = {
    "label": LabelEncoder,
    "vector": VectorEncoder,
    "image": ConvEncoder,
}

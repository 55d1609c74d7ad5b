"""Text re-weighting (paper §3.5): one learned weight in [0, 1] per CLIP token.

A small transformer encoder reads the frozen CLIP embeddings, a Linear + sigmoid turns each token
into a weight, and the weight multiplies that token's embedding. The head starts with zero weights
and a large bias, so an untrained module scales every token by sigmoid(bias) ~ 1.
"""

from __future__ import annotations

import torch
from torch import nn


class TextReweighter(nn.Module):
    def __init__(self, dim: int, num_layers: int = 3, num_heads: int = 8, ff_mult: int = 4, init_bias: float = 4.0):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=dim * ff_mult,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.fill_(init_bias)

    def forward(self, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, L, D] CLIP embeddings -> (reweighted [B, L, D], weights [B, L])."""
        weights = torch.sigmoid(self.head(self.encoder(text_embeddings))).squeeze(-1)
        return text_embeddings * weights.unsqueeze(-1), weights

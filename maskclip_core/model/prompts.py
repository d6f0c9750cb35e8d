"""Learned prompt contexts for the two classes (real, fake), CoOp style."""

from __future__ import annotations

import open_clip
import torch
from torch import nn


class PromptLearner(nn.Module):
    """Builds token embeddings [2,L,Wt]: SOT, `length` learned vectors, the shared suffix, EOT, padding."""

    def __init__(self, token_embedding: nn.Embedding, length: int, suffix: str, context_length: int):
        super().__init__()
        width = token_embedding.embedding_dim
        self.length = length
        self.ctx = nn.Parameter(torch.empty(2, length, width).normal_(std=0.02))  # [real, fake]
        template = " ".join(["X"] * length) + " " + suffix
        with torch.device("cpu"):  # real ids even when the model is built on the meta device
            tokens = open_clip.tokenize([template], context_length=context_length)[0]  # [L]
        self.eot_index = int(tokens.argmax())  # EOT has the largest id
        self.register_buffer("tokens", tokens, persistent=False)

    def forward(self, token_embedding: nn.Embedding) -> torch.Tensor:
        fixed = token_embedding(self.tokens.to(self.ctx.device))  # [L,Wt], frozen
        prefix = fixed[:1].expand(2, -1, -1)  # SOT
        suffix = fixed[1 + self.length :].expand(2, -1, -1)  # "an image ." EOT pad
        return torch.cat([prefix, self.ctx, suffix], dim=1)  # [2,L,Wt]

"""Multi-head self-attention for the ViT: full, or local (masked to nearby patches on the grid)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTIONS = ["full", "local"]


def local_attention_mask(grid_h, grid_w, radius, cls_token=True):
    """Boolean (T, T) mask, True where query token i may attend to key token j.

    Patch p attends to patch q when their Chebyshev distance on the grid, max(|dr|, |dc|), is at most
    `radius`. The cls token (index 0 when present) is global: it attends to every token and every token
    attends to it, as in Longformer's global tokens. So a radius covering the grid equals full attention,
    and with a cls token information can still cross the grid through it; use mean pooling
    (no cls token) for patch features that are strictly local (receptive field grows by `radius` per layer).
    """
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    dist = torch.maximum((rows[:, None] - rows[None, :]).abs(), (cols[:, None] - cols[None, :]).abs())
    mask = dist <= radius
    if cls_token:
        mask = F.pad(mask, (1, 0, 1, 0), value=True)
    return mask


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention, with an optional fixed boolean mask."""

    def __init__(self, dim, heads, mask=None, dropout=0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

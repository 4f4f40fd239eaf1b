"""MAMBA-S: the user's "simplified Mamba", kept as a CAUTIONARY BASELINE. IT IS NOT AN SSM.

    !!! Despite the name, this block is softmax self-attention with a SiLU gate:
    !!!     x, z = in_proj(norm(x));  y = softmax(q k^T / sqrt(d)) v   (q, k, v from x)
    !!!     out = x_in + out_proj(y * silu(z))
    !!! It has no state, no A / A_log, no dt / dt_proj, no scan and no selectivity, and its cost is
    !!! QUADRATIC in the number of tokens. It keeps none of Mamba's advantages (claim C2 of the
    !!! user's analysis); mambascope keeps it only so runs can show that: the recorder finds no SSM
    !!! layer to probe in it, and the scaling benchmark shows its quadratic time and memory.

Built exactly as the seed analysis describes it: pre-norm, the mixer only plus the residual (no
MLP, no conv1d), `in_proj` dim -> 2 * d_inner giving (x, z) as in Mamba, the seed's
`proj_q/proj_k/proj_v` held as one `qkv` Linear on x, a single head by default (the seed's
`self.scale` attention has no heads), `out_proj` d_inner -> dim. Patch embedding (conv, patch 16)
plus a learned position embedding (without it the token mixer is permutation-equivariant and the
mean-pooled feature would ignore the layout); no cls token (`num_prefix_tokens == 0`); the
feature is the mean over tokens after the final LayerNorm.

Its mixer shares the attention core (and its capture mode: `capture_attention`, `attn_probs`,
`attn_logit_max`) with ViT's attention, so attention statistics are recorded for it too.

Variants (registered):

| name        | dim | depth | expand (d_inner) | heads | params at 256x128, patch 16 |
|-------------|-----|-------|------------------|-------|-----------------------------|
| `MAMBA-S`   | 384 | 12    | 2 (768)          | 1     | 32.2 M                      |
| `MAMBA-S-T` | 96  | 4     | 2 (192)          | 1     | 0.75 M (CPU preset)         |
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (Backbone, CapturingAttention, DropPath, drop_path_rates,
                           init_weights_trunc_normal, mark, register_model)

__all__ = ["SimplifiedMambaMixer", "SimplifiedMambaBlock", "SimplifiedMamba",
           "mamba_simplified", "mamba_simplified_tiny"]


class SimplifiedMambaMixer(CapturingAttention):
    """The seed's "Mamba" mixer: in_proj -> (x, z); softmax attention on x; gate silu(z); out_proj.

    Args:
        dim: token width.
        expand: d_inner = expand * dim (Mamba's convention).
        num_heads: attention heads over d_inner (1 in the seed).
        qkv_bias: bias on the q/k/v projection.
        bias: bias on in_proj / out_proj (Mamba's default: none).
    """

    def __init__(self, dim: int, expand: int = 2, num_heads: int = 1, qkv_bias: bool = True,
                 bias: bool = False):
        d_inner = int(expand * dim)
        if d_inner % num_heads:
            raise ValueError(f"d_inner {d_inner} is not divisible by num_heads {num_heads}")
        super().__init__(head_dim=d_inner // num_heads)
        self.d_inner = d_inner
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=bias)
        self.qkv = nn.Linear(d_inner, 3 * d_inner, bias=qkv_bias)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)          # (B, T, d_inner) each
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                          # (B, heads, T, head_dim)
        y = self.attend(q, k, v).transpose(1, 2).reshape(B, T, self.d_inner)
        return self.out_proj(y * F.silu(z))


class SimplifiedMambaBlock(nn.Module):
    """Pre-norm residual around the mixer only: ``x + drop_path(mixer(norm(x)))``.

    Args:
        dim: token width.
        expand: mixer expansion.
        num_heads: mixer heads.
        drop_path: stochastic-depth rate of this block.
        norm_layer: norm constructor.
    """

    def __init__(self, dim: int, expand: int = 2, num_heads: int = 1, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(dim)
        self.mixer = SimplifiedMambaMixer(dim, expand=expand, num_heads=num_heads)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mixer(self.norm(x)))


class SimplifiedMamba(Backbone):
    """MAMBA-S backbone: images (B, 3, H, W) -> mean-pooled feature (B, embed_dim).

    Args:
        img_size: input (H, W) (re-ID default 256x128); a multiple of `patch_size`.
        patch_size: patch side.
        in_chans: input channels.
        embed_dim: token width (= `num_features`).
        depth: number of blocks.
        expand: d_inner = expand * embed_dim.
        num_heads: attention heads in each mixer.
        drop_rate: dropout on the embeddings.
        drop_path_rate: stochastic depth, growing linearly to this value over the blocks.
        norm_layer: norm constructor.
    """

    def __init__(self, img_size: int | tuple[int, int] = (256, 128), patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 384, depth: int = 12, expand: int = 2,
                 num_heads: int = 1, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        self._init_stem(img_size, patch_size, in_chans, embed_dim, depth)
        self.num_prefix_tokens = 0

        self.pos_embed = mark(nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim)),
                              no_weight_decay=True)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            SimplifiedMambaBlock(embed_dim, expand, num_heads, dpr, norm_layer)
            for dpr in drop_path_rates(drop_path_rate, depth)])
        self.norm = norm_layer(embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        # Same init as the ViT (trunc-normal std 0.02), so the two attention models differ only
        # in their blocks.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_weights_trunc_normal)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(x).flatten(1, 2) + self.pos_embed)   # (B, T, C)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)                             # mean over tokens after the final norm


@register_model("MAMBA-S")
def mamba_simplified(**kwargs) -> SimplifiedMamba:
    """The user's simplified Mamba (attention, NOT an SSM): dim 384, depth 12, expand 2."""
    return SimplifiedMamba(**{**dict(embed_dim=384, depth=12, expand=2, num_heads=1), **kwargs})


@register_model("MAMBA-S-T")
def mamba_simplified_tiny(**kwargs) -> SimplifiedMamba:
    """CPU preset of MAMBA-S: dim 96, depth 4, expand 2."""
    return SimplifiedMamba(**{**dict(embed_dim=96, depth=4, expand=2, num_heads=1), **kwargs})

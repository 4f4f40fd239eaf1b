"""Vision Transformer (Dosovitskiy et al. 2021), the reference backbone: timm's ViT, trimmed.

Patch embedding (strided conv) -> cls token + learned position embedding -> pre-norm blocks
(attention, MLP) -> final LayerNorm; the feature is the cls token after the final norm.

Variants (registered):

| name    | dim | depth | heads | MLP ratio | params at 256x128, patch 16 |
|---------|-----|-------|-------|-----------|-----------------------------|
| `VIT-S` | 384 | 12    | 6     | 4         | 21.6 M                      |
| `VIT-T` | 96  | 4     | 3     | 4         | 0.53 M (CPU preset)         |

Attention maps: every `Attention` has `capture_attention` (see `layers.CapturingAttention`);
`model.set_attention_capture(True)` switches all of them to the manual path, which stores
`attn_probs (B, heads, T, T)` with the cls token at index 0, and `attn_logit_max`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from models.layers import (Backbone, CapturingAttention, DropPath, Mlp,
                           drop_path_rates, init_weights_trunc_normal, mark, register_model)

__all__ = ["Attention", "Block", "VisionTransformer", "vit_small", "vit_tiny"]


class Attention(CapturingAttention):
    """Multi-head self-attention: qkv -> softmax(q k^T / sqrt(d)) v -> proj.

    Args:
        dim: token width.
        num_heads: heads; must divide `dim`.
        qkv_bias: bias on the qkv projection (timm's default: True).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, proj_drop: float = 0.0):
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        super().__init__(head_dim=dim // num_heads)
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                          # (B, heads, T, head_dim)
        x = self.attend(q, k, v).transpose(1, 2).reshape(B, T, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block.

    Args:
        dim: token width.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / dim.
        qkv_bias: bias on qkv.
        drop: dropout after attention and MLP projections.
        drop_path: stochastic-depth rate of this block.
        norm_layer: norm constructor.
        act_layer: MLP activation constructor.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, proj_drop=drop)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VisionTransformer(Backbone):
    """ViT backbone: images (B, 3, H, W) -> cls feature (B, embed_dim).

    Args:
        img_size: input (H, W) (re-ID default 256x128); a multiple of `patch_size`.
        patch_size: patch side.
        in_chans: input channels.
        embed_dim: token width (= `num_features`).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / embed_dim.
        qkv_bias: bias on qkv.
        drop_rate: dropout on embeddings and after projections.
        drop_path_rate: stochastic depth, growing linearly to this value over the blocks.
        norm_layer: norm constructor.
        act_layer: MLP activation constructor.
    """

    def __init__(self, img_size: int | tuple[int, int] = (256, 128), patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self._init_stem(img_size, patch_size, in_chans, embed_dim, depth)
        self.num_prefix_tokens = 1

        self.cls_token = mark(nn.Parameter(torch.zeros(1, 1, embed_dim)), no_weight_decay=True)
        self.pos_embed = mark(nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim)),
                              no_weight_decay=True)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, dpr, norm_layer, act_layer)
            for dpr in drop_path_rates(drop_path_rate, depth)])
        self.norm = norm_layer(embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        # timm's ViT init: trunc-normal std 0.02 for the position embedding, the cls token
        # (the user's remedy list asks for exactly this) and every Linear.
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_weights_trunc_normal)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(1, 2)            # (B, T, C), row-major patches
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(x + self.pos_embed)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]                                   # cls token after the final norm


@register_model("VIT-S")
def vit_small(**kwargs) -> VisionTransformer:
    """ViT-Small/16: dim 384, depth 12, 6 heads."""
    return VisionTransformer(**{**dict(embed_dim=384, depth=12, num_heads=6), **kwargs})


@register_model("VIT-T")
def vit_tiny(**kwargs) -> VisionTransformer:
    """CPU preset: dim 96, depth 4, 3 heads (head_dim 32)."""
    return VisionTransformer(**{**dict(embed_dim=96, depth=4, num_heads=3), **kwargs})

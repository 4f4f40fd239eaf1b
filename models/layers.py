"""Small pieces shared by every backbone: the model registry, patch embedding, MLP, DropPath,
the attention core with its explicit capture mode, the common backbone surface, and init helpers.

Reading order: registry, layers, attention, backbone base, init.
"""

from __future__ import annotations

import re

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "register_model", "model_entrypoints", "to_2tuple", "PatchEmbed", "Mlp", "DropPath",
    "drop_path_rates", "CapturingAttention", "Backbone", "init_weights_trunc_normal", "mark",
]

# --------------------------------------------------------------------------------------------
# registry (timm's @register_model habit: a variant is a small function that fills in sizes)
# --------------------------------------------------------------------------------------------

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a variant function under `name` (e.g. ``"VIT-S"``); `models.build_model` calls it."""
    def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODEL_ENTRYPOINTS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODEL_ENTRYPOINTS[name] = fn
        return fn
    return decorate


def model_entrypoints() -> dict[str, Callable[..., nn.Module]]:
    """Registered variant functions by name, in registration order (a copy)."""
    return dict(_MODEL_ENTRYPOINTS)


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------

def to_2tuple(v: int | tuple[int, int] | list[int], what: str = "size") -> tuple[int, int]:
    """``16 -> (16, 16)``; ``(256, 128) -> (256, 128)``; anything else raises ValueError."""
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(i, int) for i in v):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided conv: (B, 3, H, W) -> (B, H/p, W/p, C).

    Channel-last grid output; `flatten` it (row-major) for (B, T, C) tokens.

    Args:
        img_size: input (H, W); both must be multiples of `patch_size`.
        patch_size: side of a square patch.
        in_chans: input channels.
        embed_dim: output channels C.
        norm_layer: optional norm applied to each token (VMamba uses one, ViT does not).
    """

    def __init__(self, img_size: int | tuple[int, int] = (256, 128), patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 384,
                 norm_layer: Callable[[int], nn.Module] | None = None):
        super().__init__()
        self.img_size = to_2tuple(img_size, "img_size")
        if not isinstance(patch_size, int) or patch_size < 1:
            raise ValueError(f"patch_size must be a positive int, got {patch_size!r}")
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"expected images (B, C, {self.img_size[0]}, {self.img_size[1]}), "
                             f"got {tuple(x.shape)}")
        x = self.proj(x).permute(0, 2, 3, 1)             # (B, H/p, W/p, C)
        return self.norm(x)


class Mlp(nn.Module):
    """fc1 -> act -> drop -> fc2 -> drop (timm's Mlp)."""

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU, drop: float = 0.0):
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity when `drop_prob == 0` or in eval mode)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(drop_path_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rate growing linearly from 0 to `drop_path_rate` over the blocks."""
    return [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]


# --------------------------------------------------------------------------------------------
# attention core, shared by ViT's attention and MAMBA-S's mixer
# --------------------------------------------------------------------------------------------

class CapturingAttention(nn.Module):
    """Base class of every softmax-attention module: ``softmax(q k^T / sqrt(d)) v``, two paths.

    - ``capture_attention = False`` (default): `F.scaled_dot_product_attention` (fused; maps are
      not materialised).
    - ``capture_attention = True``: the same product written out; stores ``self.attn_probs``
      ``(B, heads, T, T)`` and ``self.attn_logit_max`` (scalar tensor: the largest pre-softmax
      logit), both detached. Explicit mode, as timm does: the fused path never hides maps silently.

    The recorder finds attention modules by the attribute `capture_attention`, so subclasses
    hold exactly one such module per block and do not nest another.
    """

    def __init__(self, head_dim: int):
        super().__init__()
        self.scale = head_dim ** -0.5
        self.capture_attention = False
        self.attn_probs: torch.Tensor | None = None
        self.attn_logit_max: torch.Tensor | None = None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v: (B, heads, T, head_dim) -> (B, heads, T, head_dim)."""
        if not self.capture_attention:
            return F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        logits = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, T, T)
        probs = logits.softmax(dim=-1)
        self.attn_logit_max = logits.detach().amax()
        self.attn_probs = probs.detach()
        return probs @ v

    @torch.no_grad()
    def attention_probs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run this module's own forward on ``x`` in capture mode; return ``(probs, logit_max)``.

        The recorder calls it on probe steps with the input it captured, after the training
        forward: the training path itself (fused or not) is left untouched. ``forward`` is called
        directly so that no hook fires twice.
        """
        was_capturing = self.capture_attention
        self.capture_attention = True
        try:
            self.forward(x)
            probs, logit_max = self.attn_probs, self.attn_logit_max
        finally:
            self.capture_attention = was_capturing
            if not was_capturing:
                self.attn_probs = self.attn_logit_max = None
        return probs, logit_max


# --------------------------------------------------------------------------------------------
# the common backbone surface
# --------------------------------------------------------------------------------------------

class Backbone(nn.Module):
    """What every backbone answers (docs/interfaces.md); subclasses set the attributes and
    implement `forward_features`, `forward_head` and `forward_intermediates`.

    Attributes: ``num_features``, ``patch_size``, ``img_size (H, W)``, ``grid_size``,
    ``blocks`` (nn.ModuleList), ``num_prefix_tokens``.
    """

    num_features: int
    patch_size: int
    img_size: tuple[int, int]
    grid_size: tuple[int, int]
    num_prefix_tokens: int = 0
    blocks: nn.ModuleList

    def _init_stem(self, img_size, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                   **patch_kwargs) -> None:
        """What every backbone sets up first: the patch embedding and the attributes that
        describe it (`img_size`, `patch_size`, `grid_size`, `num_features`)."""
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, **patch_kwargs)
        self.img_size = self.patch_embed.img_size
        self.patch_size = patch_size
        self.grid_size = self.patch_embed.grid_size
        self.num_features = self.embed_dim = embed_dim

    # The default surface of a plain token model: `_embed` (images -> tokens (B, T, C)), the
    # blocks in order, the final `norm`. Backbones with another layout (SS2D's grid, Vim's
    # fp32 residual stream) override these.
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:   # (B, T, C)
        x = self._embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(features (B, C), [output of each block (B, T, C), before the final norm])."""
        x = self._embed(x)
        intermediates = []
        for blk in self.blocks:
            x = blk(x)
            intermediates.append(x)
        return self.forward_head(self.norm(x)), intermediates

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:       # (B, C)
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_attention_capture(self, flag: bool = True) -> int:
        """Switch every attention module's capture mode; returns how many modules were switched."""
        n = 0
        for m in self.modules():
            if hasattr(m, "capture_attention"):
                m.capture_attention = bool(flag)
                if not flag:
                    m.attn_probs = m.attn_logit_max = None
                n += 1
        return n

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that take no weight decay (marked ``_no_weight_decay = True``)."""
        return {name for name, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}


# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------

def init_weights_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """timm's ViT init for `model.apply`: Linear weights trunc-normal(std), biases 0, LayerNorm 1/0.

    Parameters marked ``_no_reinit = True`` (Mamba's dt_proj, A_log, D, ...) are left alone, the
    way mamba-ssm's `_init_weights` skips them.
    """
    if isinstance(module, nn.Linear):
        if not getattr(module.weight, "_no_reinit", False):
            nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def mark(param: nn.Parameter, *, no_reinit: bool = False, no_weight_decay: bool = False) -> nn.Parameter:
    """Tag a parameter the way mamba-ssm does (``_no_reinit``, ``_no_weight_decay``)."""
    if no_reinit:
        param._no_reinit = True
    if no_weight_decay:
        param._no_weight_decay = True
    return param


# --------------------------------------------------------------------------------------------
# a generic init that forgets Mamba's _no_reinit marks (what `diagnose sweep`'s dt-init and
# alog-init remedies are measured against)
# --------------------------------------------------------------------------------------------

SSM_PARTS = ("dt", "alog")
_SSM_PARAM = {"dt": re.compile(r"(?:^|\.)dt_proj(?:_\w+)?\.(?:weight|bias)$"),
              "alog": re.compile(r"(?:^|\.)A(?:_\w+)?_log$")}


def generic_init(model, parts: Sequence[str] = SSM_PARTS, *, seed: int = 0,
                 std: float = 0.02) -> list[str]:
    """Overwrite a model's SSM parameters as a generic ``_init_weights`` does when it forgets
    Mamba's ``_no_reinit`` marks; returns the names of the parameters it overwrote.

    Args:
        model: any module; parameters follow mamba-ssm's names (``dt_proj``, ``dt_proj_b``,
            ``A_log``, ``A_b_log``: VMamba's SS2D, Vim's bimamba v2, ``mamba_simple.Mamba``).
        parts: ``"dt"``: ``dt_proj*.weight`` trunc-normal(std), ``dt_proj*.bias`` 0, so
            dt = softplus(dt_proj(x)) starts near softplus(0) = 0.69 for every channel instead of
            log-uniform in [1e-3, 1e-1]. ``"alog"``: ``A*_log`` trunc-normal(std), so
            A = -exp(A_log) ~ -1 for every state instead of S4D-real -(1..N).
        seed: the draws come from their own generator, so the rest of the run (head init, data
            order) is the same as without the perturbation.
    """
    unknown = set(parts) - set(SSM_PARTS)
    if unknown:
        raise ValueError(f"generic_init: unknown parts {sorted(unknown)}; known: {SSM_PARTS}")
    g = torch.Generator().manual_seed(int(seed))
    done = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            for part in parts:
                if not _SSM_PARAM[part].search(name):
                    continue
                if name.endswith(".bias"):
                    p.zero_()
                else:
                    # drawn on the CPU in fp32 (A_log stays fp32), then copied into place
                    p.copy_(torch.nn.init.trunc_normal_(torch.empty(p.shape), std=std,
                                                        a=-2 * std, b=2 * std, generator=g))
                done.append(name)
    return done


def ssm_parts(model) -> tuple[str, ...]:
    """Which of :data:`SSM_PARTS` the model has parameters for (``()`` for ViT, MAMBA-S)."""
    names = [n for n, _ in model.named_parameters()]
    return tuple(part for part in SSM_PARTS if any(_SSM_PARAM[part].search(n) for n in names))

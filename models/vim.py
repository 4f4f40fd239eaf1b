"""VIM-S: a Vim-style bidirectional Vision Mamba (Zhu et al. 2024, hustvl/Vim).

The Vision Mamba most re-ID papers start from. Patch embedding (conv, patch 16) -> a learned cls
token inserted in the MIDDLE of the row-major patch sequence -> learned position embedding ->
pre-norm residual blocks (RMSNorm -> BiMamba, no MLP; the residual stream kept in fp32) -> final
RMSNorm; the feature is the cls token after the final norm.

BiMamba, the token mixer, is mamba-ssm's ``bimamba_type="v2"`` as Vim ships it, on x (B, L, dim):

    x, z = in_proj(x).chunk(2)                         # (B, d_inner, L) each
    forward : u_f = silu(conv1d(x))                    # causal depthwise conv, d_conv 4
              dt, B, C = x_proj(u_f); dt = dt_proj(dt) # own x_proj / dt_proj / A_log / D
    backward: u_b = silu(conv1d_b(flip(x)))            # the same on the REVERSED sequence
              dt, B, C = x_proj_b(u_b); dt = dt_proj_b(dt)   # A_b_log, D_b
    y = selective_scan_fn(cat(u_f, u_b), ...)          # ONE call: (B, 2*d_inner, L), G=2 groups
    y = y_f + flip(y_b)                                # the backward output back in token order
    y = y / 2                                          # if divide_out (Vim's `if_divide_out=True`)
    out = out_proj(y * silu(z))                        # both directions gated by the same z

(Vim gates each direction inside its fused kernel, ``y_f*silu(z) + flip(y_b*silu(flip(z)))``;
that is the same product, gated once here.)

Layouts (what the recorder and the maps rely on):
- parameters keep mamba-ssm's bimamba-v2 names, so a Vim checkpoint's mixer keys map one-to-one:
  ``in_proj, conv1d, conv1d_b, x_proj, x_proj_b, dt_proj, dt_proj_b, A_log, A_b_log, D, D_b,
  out_proj``. ``A_log``/``A_b_log`` are ``(d_inner, d_state)``, ``D``/``D_b`` ``(d_inner,)``,
  ``dt_proj(_b)`` an ``nn.Linear(dt_rank, d_inner)``.
- probes: `bimamba_v2_scan_inputs` (also `BiMamba.scan_inputs`) returns K=2 directions
  ``["fwd", "bwd"]`` stacked channel-wise: channels ``0:d_inner`` forward, ``d_inner:2*d_inner``
  backward, whose sequence axis runs over the REVERSED tokens (scan step t is token L-1-t). It
  reads only those names, so it also probes any module written as mamba-ssm's bimamba v2 (Vim's
  own `Mamba`). `forward` runs on exactly these inputs, so the two cannot diverge.
- tokens: ``T = 1 + gh*gw``; the cls token sits at ``cls_index = gh*gw // 2`` (Vim's
  ``token_position = M // 2``), the patches around it in row-major order: tokens
  ``0:cls_index`` are patches ``0:cls_index`` and tokens ``cls_index+1:`` the rest.
  ``num_prefix_tokens == 1`` counts the cls token, but it is NOT a prefix: use ``cls_index`` or
  `Vim.patch_tokens` to drop it.

Initialisation: Mamba's for BOTH directions (dt_proj weight uniform(+-dt_rank^-0.5), its bias the
inverse softplus of dt log-uniform in [dt_min, dt_max], A S4D-real, D ones), then Vim's model init
(`Vim.init_weights`). ``buggy_init=True`` reproduces the public code's bug on purpose: in
mamba-ssm's bimamba v2 ``dt_proj_b`` is a plain ``nn.Linear`` that never gets the dt init, and
its bias is not marked ``_no_reinit``, so Vim's ``_init_weights`` (which zeroes every Linear bias
not so marked) sets ``dt_proj_b.bias = 0``: the backward direction starts with
``dt = softplus(0 + small) ~ 0.69`` everywhere instead of log-uniform in [1e-3, 1e-1] (its weight
is nn.Linear's default uniform(+-dt_rank^-0.5), which is Mamba's range anyway). ``A_b_log`` and
``D_b`` were initialised correctly there and are here. (hustvl/Vim at dd0358a:
mamba-1p1p1/mamba_ssm/modules/mamba_simple.py line 161 creates ``dt_proj_b``, while line 112 marks
only the forward bias; vim/models_mamba.py ``_init_weights``, line 191, zeroes the rest.)

Differences from hustvl/Vim, on purpose: stochastic depth grows linearly over the blocks (Vim
applies layer i+1's rate to layer i's output); no classification head (backbones return
features); no RoPE, no "flip the whole sequence" augmentation, no double cls token.

Variants (registered); d_inner = 2 * dim, d_conv 4, dt_rank = ceil(dim / 16), cls in the middle:

| name    | dim | depth | d_state | dt_rank | params at 256x128, patch 16 |
|---------|-----|-------|---------|---------|-----------------------------|
| `VIM-S` | 384 | 24    | 16      | 24      | 25.4 M (Vim-S: 26 M at 224) |
| `VIM-T` | 96  | 4     | 16      | 6       | 0.41 M (CPU preset)         |

(`VIM-T` is this project's CPU preset, like `VIT-T`, not the paper's Vim-Ti: dim 192, depth 24.)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import Backbone, DropPath, drop_path_rates, mark, register_model
from models.scan import BACKENDS, selective_scan_fn

__all__ = ["DIRECTIONS", "scan_orders", "inverse_softplus", "dt_bias_init", "bimamba_v2_scan_inputs", "BiMamba",
           "VimBlock", "Vim", "vim_small", "vim_tiny"]

DIRECTIONS = ("fwd", "bwd")
"""Scan directions, in channel-block order: token order, and reversed token order."""


def scan_orders(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(K=2, L) long: ``orders[k, t]`` is the TOKEN index (cls token included, see `Vim.cls_index`)
    that direction ``k`` visits at scan step ``t``: token order, then reversed."""
    idx = torch.arange(length, device=device)
    return torch.stack([idx, idx.flip(0)])


# --------------------------------------------------------------------------------------------
# Mamba's dt init
# --------------------------------------------------------------------------------------------

def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """softplus^-1(y) = y + log(1 - exp(-y)) = y + log(-expm1(-y)) (expm1: accurate at small y)."""
    return y + torch.log(-torch.expm1(-y))


def dt_bias_init(d_inner: int, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4) -> torch.Tensor:
    """Mamba's dt bias: dt log-uniform in [dt_min, dt_max] (floored), stored as its inverse
    softplus so that softplus(dt_proj(x) + bias) starts in that range. (d_inner,)"""
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min))
                   + math.log(dt_min)).clamp(min=dt_init_floor)
    return inverse_softplus(dt)


# --------------------------------------------------------------------------------------------
# the probe protocol for mamba-ssm's bimamba v2 naming
# --------------------------------------------------------------------------------------------

def _direction_inputs(module: nn.Module, x: torch.Tensor, suffix: str):
    """One direction's (u, delta before bias/softplus, B, C) from x (B, d_inner, L), already in
    that direction's order; `suffix` is "" (forward) or "_b" (backward)."""
    conv, x_proj, dt_proj = (getattr(module, n + suffix) for n in ("conv1d", "x_proj", "dt_proj"))
    length = x.shape[-1]
    d_state, dt_rank = module.A_log.shape[-1], dt_proj.weight.shape[1]
    u = F.silu(conv(x)[..., :length])                  # causal: drop the right padding
    x_dbl = x_proj(u.transpose(1, 2))                  # (B, L, dt_rank + 2N)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    # dt_proj's bias is not added here: it enters the scan as `delta_bias`, in fp32 before the
    # softplus, as mamba-ssm does.
    delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L)
    return u, delta, B.transpose(1, 2), C.transpose(1, 2)


def bimamba_v2_scan_inputs(module: nn.Module, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Scan inputs of a module written as mamba-ssm's bimamba v2 (Vim's `Mamba` or `BiMamba`),
    from x (B, L, d_model), what its forward receives; returns ``(inputs, z (B, d_inner, L))``.

    ``inputs`` is the SSM probe protocol (docs/interfaces.md) with K=2 directions ``["fwd",
    "bwd"]`` stacked channel-wise; the backward block's sequence axis is the reversed token order.
    """
    xz = module.in_proj(x).transpose(1, 2)             # (B, 2*d_inner, L)
    xs, z = xz.chunk(2, dim=1)                         # (B, d_inner, L) each
    u_f, dt_f, B_f, C_f = _direction_inputs(module, xs, "")
    u_b, dt_b, B_b, C_b = _direction_inputs(module, xs.flip(-1), "_b")
    A_log = torch.cat([module.A_log, module.A_b_log]).float()   # (2*d_inner, N), kept in fp32
    inputs = dict(
        u=torch.cat([u_f, u_b], dim=1),                # (B, 2*d_inner, L): fwd, then bwd
        delta=torch.cat([dt_f, dt_b], dim=1),          # (B, 2*d_inner, L), before softplus
        delta_bias=torch.cat([module.dt_proj.bias, module.dt_proj_b.bias]).float(),  # (2*d_inner,)
        A=-torch.exp(A_log),                           # (2*d_inner, N)
        B=torch.stack([B_f, B_b], dim=1),              # (B, 2, N, L): group k = direction k
        C=torch.stack([C_f, C_b], dim=1),              # (B, 2, N, L)
        D=torch.cat([module.D, module.D_b]).float(),   # (2*d_inner,)
        directions=list(DIRECTIONS),
        A_log=A_log,
    )
    return inputs, z


# --------------------------------------------------------------------------------------------
# the mixer
# --------------------------------------------------------------------------------------------

class BiMamba(nn.Module):
    """Bidirectional Mamba mixer (mamba-ssm's bimamba v2, as in Vim) on (B, L, dim).

    An SSM layer for the recorder (it has `A_log` and `dt_proj`) with ``directions = ("fwd",
    "bwd")``; `scan_inputs(x)` hands back exactly what `forward` passes to the scan.

    Args:
        dim: token width.
        d_state: SSM state size N.
        expand: d_inner = expand * dim.
        d_conv: causal depthwise conv1d kernel length (Mamba's 4).
        dt_rank: rank of the dt projection; ``"auto"`` = ceil(dim / 16).
        dt_min, dt_max: range of dt at init (log-uniform), both directions.
        dt_init_floor: smallest dt at init.
        dt_scale: scale of dt_proj's weight init.
        conv_bias: bias on the conv1d's.
        bias: bias on in_proj / out_proj.
        divide_out: halve the sum of the two directions (Vim's ``if_divide_out=True``, the
            setting of every released Vim model); False sums them (mamba-ssm's default).
        buggy_init: reproduce the public code's bug: ``dt_proj_b.bias = 0`` (see the module
            docstring); the backward direction starts with dt ~ 0.69.
        scan_backend: backend of `selective_scan_fn`.
    """

    directions = DIRECTIONS

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 4,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4, dt_scale: float = 1.0, conv_bias: bool = True,
                 bias: bool = False, divide_out: bool = True, buggy_init: bool = False,
                 scan_backend: str = "auto"):
        super().__init__()
        if scan_backend not in BACKENDS:
            raise ValueError(f"unknown scan backend {scan_backend!r}; expected one of {', '.join(BACKENDS)}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if d_conv < 1:
            raise ValueError(f"d_conv must be >= 1, got {d_conv}")
        self.dim = dim
        self.d_state = d_state
        self.expand = expand
        self.d_conv = d_conv
        self.d_inner = d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.K = len(DIRECTIONS)
        self.divide_out = divide_out
        self.buggy_init = buggy_init
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=bias)
        # One set of SSM parameters per direction, with mamba-ssm's names ("" and "_b").
        for sfx in ("", "_b"):
            self.add_module("conv1d" + sfx, nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner,
                                                      padding=d_conv - 1, bias=conv_bias))
            self.add_module("x_proj" + sfx, nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(self.dt_rank, d_inner, bias=True)
            self.add_module("dt_proj" + sfx, dt_proj)
            if sfx == "_b" and buggy_init:
                # The bug: nn.Linear's default weight (uniform(+-dt_rank^-0.5): Mamba's range at
                # dt_scale 1), and the bias zeroed by Vim's `_init_weights`, which it does not
                # escape (not `_no_reinit`): softplus(0) = 0.69 for every channel.
                nn.init.zeros_(dt_proj.bias)
            else:
                # Mamba: dt_proj's output starts at the scale of its bias whatever dt_rank is;
                # the bias puts dt log-uniform in [dt_min, dt_max]; a generic init must skip both.
                dt_init_std = self.dt_rank ** -0.5 * dt_scale
                nn.init.uniform_(dt_proj.weight, -dt_init_std, dt_init_std)
                with torch.no_grad():
                    dt_proj.bias.copy_(dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))
                mark(dt_proj.weight, no_reinit=True)
                mark(dt_proj.bias, no_reinit=True)
        # S4D-real init, both directions: A = -(1, 2, ..., N) per channel, stored as A_log in fp32
        # (exp of a low-precision A_log loses the decay rates); no weight decay on A_log or D
        # (decay would pull A towards -1 and D towards 0).
        A_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
        self.A_log = mark(nn.Parameter(A_log.clone()), no_reinit=True, no_weight_decay=True)    # (d_inner, N)
        self.A_b_log = mark(nn.Parameter(A_log.clone()), no_reinit=True, no_weight_decay=True)  # (d_inner, N)
        self.D = mark(nn.Parameter(torch.ones(d_inner)), no_reinit=True, no_weight_decay=True)  # (d_inner,)
        self.D_b = mark(nn.Parameter(torch.ones(d_inner)), no_reinit=True, no_weight_decay=True)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)

    def scan_inputs(self, x: torch.Tensor) -> dict:
        """The SSM probe protocol (docs/interfaces.md) for `forward`'s input x (B, L, dim): K=2
        directions ``["fwd", "bwd"]`` stacked channel-wise. `forward` runs on exactly this, with
        ``delta_softplus=True``."""
        return self._project(x)[0]

    def _project(self, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"BiMamba expects (B, L, {self.dim}), got {tuple(x.shape)}")
        return bimamba_v2_scan_inputs(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, z = self._project(x)
        y = selective_scan_fn(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"],
                              delta_bias=s["delta_bias"], delta_softplus=True,
                              backend=self.scan_backend)        # (B, 2*d_inner, L)
        y_f, y_b = y.chunk(2, dim=1)
        y = y_f + y_b.flip(-1)                           # the backward output back in token order
        if self.divide_out:
            y = y / 2
        y = y * F.silu(z)                                # (B, d_inner, L)
        return self.out_proj(y.transpose(1, 2))          # (B, L, dim)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_state={self.d_state}, d_inner={self.d_inner}, "
                f"dt_rank={self.dt_rank}, d_conv={self.d_conv}, divide_out={self.divide_out}, "
                f"buggy_init={self.buggy_init}")


# --------------------------------------------------------------------------------------------
# block and backbone
# --------------------------------------------------------------------------------------------

class VimBlock(nn.Module):
    """Pre-norm residual block on (B, L, dim): ``x + drop_path(mixer(norm(x)))``, no MLP.

    Vim writes it as "add, then norm, then mixer" (to fuse the add into the norm); the residual
    stream is the same. With `residual_in_fp32` the stream is kept in fp32 (under autocast the
    mixer runs in low precision, the sum of 24 residual branches does not).

    Args:
        dim: token width.
        mixer_kwargs: arguments of `BiMamba` (d_state, expand, d_conv, buggy_init, ...).
        drop_path: stochastic-depth rate of this block.
        norm_layer: norm constructor (Vim: RMSNorm).
        residual_in_fp32: keep the residual stream in fp32.
    """

    def __init__(self, dim: int, mixer_kwargs: dict | None = None, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.RMSNorm, residual_in_fp32: bool = True):
        super().__init__()
        self.norm = norm_layer(dim)
        self.mixer = BiMamba(dim, **(mixer_kwargs or {}))
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x.float() if self.residual_in_fp32 else x
        return residual + self.drop_path(self.mixer(self.norm(x.to(self.norm.weight.dtype))))


class Vim(Backbone):
    """VIM-S backbone: images (B, 3, H, W) -> cls feature (B, embed_dim); cls token in the middle.

    Args:
        img_size: input (H, W) (re-ID default 256x128); a multiple of `patch_size`.
        patch_size: patch side.
        in_chans: input channels.
        embed_dim: token width (= `num_features`).
        depth: number of blocks.
        d_state, expand, d_conv, dt_rank, dt_min, dt_max, dt_init_floor, dt_scale, divide_out:
            BiMamba sizes and init (see `BiMamba`).
        buggy_init: reproduce the public Vim's missing dt init of the backward direction
            (``dt_proj_b.bias = 0``; what ``--vim-buggy-init`` selects).
        middle_cls_token: the cls token in the middle of the sequence (Vim); False puts it first.
        drop_rate: dropout on the embeddings.
        drop_path_rate: stochastic depth, growing linearly to this value over the blocks.
        residual_in_fp32: keep the residual stream in fp32.
        scan_backend: backend of the selective scan.
        norm_layer: norm constructor (Vim: RMSNorm, eps 1e-5).
    """

    def __init__(self, img_size: int | tuple[int, int] = (256, 128), patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 384, depth: int = 24, d_state: int = 16,
                 expand: int = 2, d_conv: int = 4, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0, divide_out: bool = True, buggy_init: bool = False,
                 middle_cls_token: bool = True, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, residual_in_fp32: bool = True,
                 scan_backend: str = "auto",
                 norm_layer: Callable[[int], nn.Module] = nn.RMSNorm):
        super().__init__()
        self._init_stem(img_size, patch_size, in_chans, embed_dim, depth)
        self.num_prefix_tokens = 1
        num_patches = self.patch_embed.num_patches
        # Token layout: patches 0:cls_index, the cls token, patches cls_index: (row-major).
        self.cls_index = num_patches // 2 if middle_cls_token else 0
        self.buggy_init = buggy_init

        self.cls_token = mark(nn.Parameter(torch.zeros(1, 1, embed_dim)), no_weight_decay=True)
        self.pos_embed = mark(nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim)),
                              no_weight_decay=True)
        self.pos_drop = nn.Dropout(drop_rate)
        mixer_kwargs = dict(d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank,
                            dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                            dt_scale=dt_scale, divide_out=divide_out, buggy_init=buggy_init,
                            scan_backend=scan_backend)
        self.blocks = nn.ModuleList([
            VimBlock(embed_dim, mixer_kwargs, dpr, norm_layer, residual_in_fp32)
            for dpr in drop_path_rates(drop_path_rate, depth)])
        self.norm = norm_layer(embed_dim)
        self.init_weights()

    def init_weights(self) -> None:
        """Vim's init: trunc-normal(0.02) position embedding and cls token, LeCun-normal patch
        conv, then mamba-ssm's `_init_weights`: Linear biases zeroed unless ``_no_reinit``, other
        Linear weights at PyTorch's default, and each out_proj.weight re-drawn (PyTorch default)
        and divided by sqrt(depth) (GPT-2's scaling of residual branches). The dt projections,
        A_log and D keep Mamba's init (marked ``_no_reinit``)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight
        std = (1.0 / (w[0].numel())) ** 0.5 / 0.87962566103423978   # timm's lecun_normal_
        nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for m in self.modules():
            if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            w = blk.mixer.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            with torch.no_grad():
                w /= math.sqrt(len(self.blocks))

    def set_scan_backend(self, backend: str) -> None:
        """Switch every BiMamba's scan backend (e.g. ``"reference"`` for a check)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown scan backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        for m in self.modules():
            if isinstance(m, BiMamba):
                m.scan_backend = backend

    def patch_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + P, C) tokens -> (B, P, C) patch tokens, row-major, the cls token removed."""
        i = self.cls_index
        return torch.cat([tokens[:, :i], tokens[:, i + 1:]], dim=1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(1, 2)            # (B, P, C), row-major patches
        i = self.cls_index
        x = torch.cat([x[:, :i], self.cls_token.expand(x.shape[0], -1, -1), x[:, i:]], dim=1)
        return self.pos_drop(x + self.pos_embed)         # (B, 1 + P, C)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x.to(self.norm.weight.dtype))   # (B, 1 + P, C), cls at cls_index

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.cls_index]                      # cls token after the final norm

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(features (B, C), [output of each block (B, 1 + P, C), before the final norm])."""
        x = self._embed(x)
        intermediates = []
        for blk in self.blocks:
            x = blk(x)
            intermediates.append(x)
        return self.forward_head(self.norm(x.to(self.norm.weight.dtype))), intermediates


@register_model("VIM-S")
def vim_small(**kwargs) -> Vim:
    """Vim-S: dim 384, depth 24, d_state 16, expand 2, d_conv 4, bimamba v2, middle cls token."""
    return Vim(**{**dict(embed_dim=384, depth=24, d_state=16, expand=2, d_conv=4), **kwargs})


@register_model("VIM-T")
def vim_tiny(**kwargs) -> Vim:
    """CPU preset of VIM-S: dim 96, depth 4, d_state 16, expand 2, d_conv 4."""
    return Vim(**{**dict(embed_dim=96, depth=4, d_state=16, expand=2, d_conv=4), **kwargs})

"""MAMBA-V2: a VMamba-style Vision Mamba (Liu et al. 2024) built from SS2D blocks.

Isotropic (one stage, patch 16, no down-sampling) so that its blocks line up one-to-one with
ViT-S's for the layer-by-layer comparison; no position embedding and no cls token (VMamba has
neither: the depthwise conv and the scan order carry position); the feature is the mean over
tokens after the final LayerNorm.

SS2D, the token mixer, on a channel-last grid x (B, H, W, dim):

    x, z = in_proj(x).chunk(2)                         # (B, H, W, d_inner) each
    x = silu(conv2d(x))                                # depthwise d_conv x d_conv, on (B, d_inner, H, W)
    xs = cross_scan(x)                                 # (B, K=4, d_inner, L): "h", "v", "h_rev", "v_rev"
    dt, B, C = x_proj[k](xs[:, k])                     # per direction: dt_rank + 2 * d_state
    dt = dt_proj[k](dt)                                # per direction: dt_rank -> d_inner
    y = selective_scan_fn(xs, dt, A, B, C, D, delta_bias, delta_softplus=True)   # ONE call, G=K
    y = cross_merge(y)                                 # (B, d_inner, L): SUM of the four
    out = out_proj(out_norm(y) * silu(z))

Layouts (what the recorder and the maps rely on):
- directions are stacked channel-wise: direction ``k`` owns channels ``k*d_inner:(k+1)*d_inner``
  of u, delta, A, D and delta_bias (mamba-ssm / VMamba layout); B and C are grouped
  (B, K, N, L), group ``k`` = direction ``k``.
- ``A_log`` is ``(K*d_inner, d_state)`` and ``D`` is ``(K*d_inner,)`` (VMamba's ``A_logs``/``Ds``).
- ``x_proj`` and ``dt_proj`` are `DirectionalLinear`: ``weight (K, out, in)``, ``bias (K, out)``
  (``x_proj`` has no bias). So ``dt_proj.bias`` is ``(K, d_inner)``; flattened it is delta_bias.
- the merge SUMS the four directions (VMamba's CrossMerge). The user's analysis averages them
  (``sum(ys) / 4``); since LayerNorm (`out_norm`) follows, the two differ only through the
  norm's eps. ``cross_merge(cross_scan(x)) == 4 * x``.
- `SS2D.forward` takes and returns (B, H, W, dim); `SS2D.scan_inputs` takes the same input.

Variants (registered); d_inner = 2 * dim, d_conv 3, dt_rank = ceil(dim / 16), MLP ratio 4:

| name         | dim | depth | d_state | dt_rank | params at 256x128, patch 16 |
|--------------|-----|-------|---------|---------|-----------------------------|
| `MAMBA-V2`   | 384 | 12    | 16      | 24      | 28.8 M                      |
| `MAMBA-V2-T` | 96  | 4     | 16      | 6       | 0.79 M (CPU preset)         |
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import (Backbone, DropPath, Mlp, drop_path_rates,
                           init_weights_trunc_normal, mark, register_model)
from models.scan import BACKENDS, selective_scan_fn

__all__ = ["DIRECTIONS", "cross_scan", "cross_merge", "scan_orders", "DirectionalLinear", "SS2D",
           "VSSBlock", "VMamba", "mamba_v2", "mamba_v2_tiny"]

DIRECTIONS = ("h", "v", "h_rev", "v_rev")
"""Scan directions, in channel-block order: row-major, column-major, and both reversed."""


# --------------------------------------------------------------------------------------------
# cross-scan / cross-merge
# --------------------------------------------------------------------------------------------

def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """Grid (B, C, H, W) -> four sequences (B, K=4, C, L=H*W), in the order of `DIRECTIONS`."""
    if x.dim() != 4:
        raise ValueError(f"cross_scan expects (B, C, H, W), got {tuple(x.shape)}")
    h = x.flatten(2)                                     # row-major       (B, C, L)
    v = x.transpose(2, 3).flatten(2)                     # column-major    (B, C, L)
    return torch.stack([h, v, h.flip(-1), v.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Four sequences (B, K=4, C, L) -> (B, C, L) in row-major grid order: each direction mapped
    back to grid order, then SUMMED (VMamba's CrossMerge; no division by 4)."""
    H, W = grid_size
    if ys.dim() != 4 or ys.shape[1] != len(DIRECTIONS) or ys.shape[-1] != H * W:
        raise ValueError(f"cross_merge expects (B, {len(DIRECTIONS)}, C, {H * W}) for grid "
                         f"{(H, W)}, got {tuple(ys.shape)}")
    B, _, C, L = ys.shape
    y = ys[:, 0:2] + ys[:, 2:4].flip(-1)                 # undo the reversals: (B, 2, C, L)
    return y[:, 0] + y[:, 1].reshape(B, C, W, H).transpose(2, 3).reshape(B, C, L)


def scan_orders(grid_size: tuple[int, int], device: torch.device | str | None = None) -> torch.Tensor:
    """(K, L) long: ``orders[k, t]`` is the row-major grid index of the token that direction ``k``
    visits at step ``t`` (what the scan maps need to put a sequence back on the image)."""
    H, W = grid_size
    idx = torch.arange(H * W, device=device).view(1, 1, H, W)
    return cross_scan(idx)[0, :, 0]


# --------------------------------------------------------------------------------------------
# SS2D
# --------------------------------------------------------------------------------------------

class DirectionalLinear(nn.Module):
    """K independent Linear maps, one per scan direction, applied to (B, K, in, L) in one einsum.

    ``weight (K, out, in)``, ``bias (K, out)`` or None (VMamba's ``x_proj_weight`` /
    ``dt_projs_weight`` / ``dt_projs_bias``). Not an `nn.Linear`, so generic Linear inits skip it;
    its parameters are also marked ``_no_reinit``.
    """

    def __init__(self, num_directions: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.num_directions, self.in_features, self.out_features = num_directions, in_features, out_features
        self.weight = mark(nn.Parameter(torch.empty(num_directions, out_features, in_features)),
                           no_reinit=True)
        self.bias = (mark(nn.Parameter(torch.empty(num_directions, out_features)), no_reinit=True)
                     if bias else None)
        # nn.Linear's default: uniform(+-1/sqrt(in)); SS2D overrides dt_proj's below.
        bound = in_features ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        y = torch.einsum("bkil,koi->bkol", x, self.weight)   # (B, K, out, L)
        if add_bias and self.bias is not None:
            y = y + self.bias[None, :, :, None]
        return y

    def extra_repr(self) -> str:
        return (f"num_directions={self.num_directions}, in_features={self.in_features}, "
                f"out_features={self.out_features}, bias={self.bias is not None}")


class SS2D(nn.Module):
    """2-D selective scan (VMamba): four directional selective scans over a grid, run in one call.

    Input and output (B, H, W, dim). An SSM layer for the recorder (it has `A_log` and
    `dt_proj`); `scan_inputs(x)` hands back exactly what `forward` passes to the scan.

    Args:
        dim: token width.
        d_state: SSM state size N.
        expand: d_inner = expand * dim.
        d_conv: depthwise conv kernel side.
        dt_rank: rank of the dt projection; ``"auto"`` = ceil(dim / 16).
        dt_min, dt_max: range of dt at init (log-uniform).
        dt_init_floor: smallest dt at init.
        dt_scale: scale of dt_proj's weight init.
        conv_bias: bias on the depthwise conv.
        bias: bias on in_proj / out_proj.
        dropout: dropout after out_proj.
        scan_backend: backend of `selective_scan_fn` (``"auto"``, ``"fast"``, ``"reference"``,
            ``"cuda"``).
    """

    def __init__(self, dim: int, d_state: int = 16, expand: int = 2, d_conv: int = 3,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 1e-1,
                 dt_init_floor: float = 1e-4, dt_scale: float = 1.0, conv_bias: bool = True,
                 bias: bool = False, dropout: float = 0.0, scan_backend: str = "auto"):
        super().__init__()
        if scan_backend not in BACKENDS:
            raise ValueError(f"unknown scan backend {scan_backend!r}; expected one of {', '.join(BACKENDS)}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        if d_conv % 2 != 1:
            raise ValueError(f"d_conv must be odd (same padding), got {d_conv}")
        self.dim = dim
        self.d_state = d_state
        self.expand = expand
        self.d_conv = d_conv
        self.d_inner = d_inner = int(expand * dim)
        self.dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.directions = list(DIRECTIONS)
        self.K = K = len(DIRECTIONS)
        self.scan_backend = scan_backend

        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=bias)
        self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2,
                                groups=d_inner, bias=conv_bias)
        self.act = nn.SiLU()
        self.x_proj = DirectionalLinear(K, d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = DirectionalLinear(K, self.dt_rank, d_inner, bias=True)

        # Initialised as Mamba does (mamba_ssm/modules/mamba_simple.py), per direction.
        # dt_proj.weight: uniform(+-dt_rank^-0.5 * dt_scale), so dt_proj's output starts at the
        # scale of its bias whatever dt_rank is.
        dt_init_std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        # dt_proj.bias: dt log-uniform in [dt_min, dt_max] (floored), stored as its inverse
        # softplus, so softplus(dt_proj(x) + bias) starts in that range: softplus^-1(y) =
        # y + log(1 - exp(-y)) = y + log(-expm1(-y)), expm1 for accuracy at small y.
        dt = torch.exp(torch.rand(K, d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        # (dt_proj and x_proj are marked _no_reinit by DirectionalLinear: a later generic
        # `apply(_init_weights)` leaves them as they are here, as mamba-ssm's `_no_reinit`.)

        # S4D-real init: A = -(1, 2, ..., N) for every channel of every direction, stored as
        # A_log = log(A) in fp32 (exp of a low-precision A_log loses the decay rates); no weight
        # decay on A_log or D (decay would pull A towards -1 and D towards 0).
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(K * d_inner, 1)
        self.A_log = mark(nn.Parameter(torch.log(A)), no_reinit=True, no_weight_decay=True)  # (K*d_inner, N)
        self.D = mark(nn.Parameter(torch.ones(K * d_inner)), no_reinit=True, no_weight_decay=True)  # (K*d_inner,)

        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def _project(self, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Everything before the scan: (the scan's inputs, the gate z (B, H, W, d_inner))."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            raise ValueError(f"SS2D expects (B, H, W, {self.dim}), got {tuple(x.shape)}")
        B, H, W, _ = x.shape
        L, K, N, R = H * W, self.K, self.d_state, self.dt_rank
        x, z = self.in_proj(x).chunk(2, dim=-1)          # (B, H, W, d_inner) each
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2).contiguous()))   # (B, d_inner, H, W)
        xs = cross_scan(x)                               # (B, K, d_inner, L)
        x_dbl = self.x_proj(xs)                          # (B, K, R + 2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=2)
        # dt_proj's bias is not added here: it enters the scan as `delta_bias`, added in fp32
        # before the softplus, as mamba-ssm does (adding it here too would count it twice).
        dts = self.dt_proj(dts, add_bias=False)          # (B, K, d_inner, L), before bias/softplus
        inputs = dict(
            u=xs.reshape(B, K * self.d_inner, L),        # direction k: channels k*d_inner:(k+1)*d_inner
            delta=dts.reshape(B, K * self.d_inner, L),
            delta_bias=self.dt_proj.bias.float().reshape(K * self.d_inner),
            A=-torch.exp(self.A_log.float()),            # (K*d_inner, N), A_log kept in fp32
            B=Bs,                                        # (B, K, N, L)
            C=Cs,                                        # (B, K, N, L)
            D=self.D.float(),                            # (K*d_inner,)
            directions=list(self.directions),
            A_log=self.A_log,                            # (K*d_inner, N)
        )
        return inputs, z

    def scan_inputs(self, x: torch.Tensor) -> dict:
        """The SSM probe protocol (docs/interfaces.md): for `forward`'s input x (B, H, W, dim),
        ``dict(u, delta (before softplus), delta_bias, A, B, C, D, directions, A_log)``.
        `forward` runs on exactly this, with ``delta_softplus=True``."""
        return self._project(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        s, z = self._project(x)
        y = selective_scan_fn(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"],
                              delta_bias=s["delta_bias"], delta_softplus=True,
                              backend=self.scan_backend)   # (B, K*d_inner, L)
        y = cross_merge(y.view(B, self.K, self.d_inner, H * W), (H, W))   # (B, d_inner, L)
        y = y.transpose(1, 2).reshape(B, H, W, self.d_inner)
        y = self.out_norm(y) * F.silu(z)
        return self.dropout(self.out_proj(y))


# --------------------------------------------------------------------------------------------
# block and backbone
# --------------------------------------------------------------------------------------------

class VSSBlock(nn.Module):
    """VMamba v2 block on (B, H, W, dim): SS2D residual, then an MLP residual (VMamba v2 has one).

    Args:
        dim: token width.
        ssm_kwargs: arguments of `SS2D` (d_state, expand, d_conv, dt_rank, scan_backend, ...).
        mlp_ratio: MLP hidden width / dim (0 leaves the MLP out, as VMamba v1).
        drop_path: stochastic-depth rate of this block.
        norm_layer: norm constructor.
        act_layer: MLP activation constructor.
    """

    def __init__(self, dim: int, ssm_kwargs: dict | None = None, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.norm = norm_layer(dim)
        self.mixer = SS2D(dim, **(ssm_kwargs or {}))
        self.drop_path = DropPath(drop_path)
        self.mlp_branch = mlp_ratio > 0
        if self.mlp_branch:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm(x)))
        if self.mlp_branch:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VMamba(Backbone):
    """MAMBA-V2 backbone: images (B, 3, H, W) -> mean-pooled feature (B, embed_dim).

    Args:
        img_size: input (H, W) (re-ID default 256x128); a multiple of `patch_size`.
        patch_size: patch side.
        in_chans: input channels.
        embed_dim: token width (= `num_features`).
        depth: number of blocks.
        d_state, expand, d_conv, dt_rank, dt_min, dt_max, dt_init_floor, dt_scale: SS2D sizes
            and init (see `SS2D`).
        mlp_ratio: MLP hidden width / embed_dim in each block (0: no MLP).
        drop_rate: dropout on the embeddings.
        drop_path_rate: stochastic depth, growing linearly to this value over the blocks.
        scan_backend: backend of the selective scan.
        norm_layer: norm constructor.
    """

    def __init__(self, img_size: int | tuple[int, int] = (256, 128), patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 384, depth: int = 12, d_state: int = 16,
                 expand: int = 2, d_conv: int = 3, dt_rank: int | str = "auto",
                 dt_min: float = 1e-3, dt_max: float = 1e-1, dt_init_floor: float = 1e-4,
                 dt_scale: float = 1.0, mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, scan_backend: str = "auto",
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm):
        super().__init__()
        # VMamba's stem ends with a LayerNorm.
        self._init_stem(img_size, patch_size, in_chans, embed_dim, depth, norm_layer=norm_layer)
        self.num_prefix_tokens = 0

        ssm_kwargs = dict(d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank,
                          dt_min=dt_min, dt_max=dt_max, dt_init_floor=dt_init_floor,
                          dt_scale=dt_scale, scan_backend=scan_backend)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList([
            VSSBlock(embed_dim, ssm_kwargs, mlp_ratio, dpr, norm_layer)
            for dpr in drop_path_rates(drop_path_rate, depth)])
        self.norm = norm_layer(embed_dim)
        # VMamba's init: trunc-normal std 0.02 on Linear weights, LayerNorm 1/0. It skips SS2D's
        # A_log, D, x_proj and dt_proj (marked _no_reinit, and not nn.Linear).
        self.apply(init_weights_trunc_normal)

    def set_scan_backend(self, backend: str) -> None:
        """Switch every SS2D's scan backend (e.g. ``"reference"`` for a check)."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown scan backend {backend!r}; expected one of {', '.join(BACKENDS)}")
        for m in self.modules():
            if isinstance(m, SS2D):
                m.scan_backend = backend

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pos_drop(self.patch_embed(x))           # (B, H/p, W/p, C)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x).flatten(1, 2)                # (B, T, C), row-major

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)                             # mean over tokens after the final norm

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(features (B, C), [output of each block (B, T, C), before the final norm])."""
        x = self.pos_drop(self.patch_embed(x))
        intermediates = []
        for blk in self.blocks:
            x = blk(x)
            intermediates.append(x.flatten(1, 2))
        return self.forward_head(self.norm(x).flatten(1, 2)), intermediates


@register_model("MAMBA-V2")
def mamba_v2(**kwargs) -> VMamba:
    """VMamba-style SS2D backbone: dim 384, depth 12, d_state 16, expand 2, d_conv 3."""
    return VMamba(**{**dict(embed_dim=384, depth=12, d_state=16, expand=2, d_conv=3), **kwargs})


@register_model("MAMBA-V2-T")
def mamba_v2_tiny(**kwargs) -> VMamba:
    """CPU preset of MAMBA-V2: dim 96, depth 4, d_state 16, expand 2, d_conv 3."""
    return VMamba(**{**dict(embed_dim=96, depth=4, d_state=16, expand=2, d_conv=3), **kwargs})

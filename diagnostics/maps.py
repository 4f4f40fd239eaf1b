"""Scan paths against attention maps: hidden attention, rollout, attributions, ERF, and a score.

Reading order: the scan's matrix (`hidden_attention`), per-layer maps of both backbones, rollout,
attributions and the effective receptive field, the comparison numbers, then the `MapSet` that
holds one backbone's maps on a few probe images (computed, saved into a run, loaded back).

**Hidden attention** (Ali, Zimerman & Wolf, "The Hidden Attention of Mamba Models", 2024). The
selective scan without its ``D`` term and gate is a lower-triangular linear map of its input::

    y = M @ u,   M[b, d, i, j] = C_i . (prod_{k=j+1..i} exp(delta_k A_d)) . delta_j B_j   (j <= i)

The products are never formed as the exponential of a cumulative sum (``exp(cs_i) * exp(-cs_j)``
overflows to inf/NaN on long sequences, shared/GPU.md). The sequence is cut into blocks of
``block_size`` tokens. Across blocks the exponent is split into three *segment sums* of
``delta_k A``: "j+1 to the end of j's block", "the whole blocks between" (Mamba-2's ``segsum``:
a cumulative sum of masked copies, exact) and "the start of i's block to i"; each is <= 0 when
``A < 0`` and ``delta > 0`` (Mamba's case), so each factor lies in [0, 1]. The sums are taken in
fp64; exponentials and products in the inputs' dtype (fp64 stays fp64). The off-diagonal blocks
are then batched matmuls over the state (and, with ``reduce="mean"``, over the channels too, so
the per-channel maps are never materialised). Inside a block (``block_size`` steps), the products
are accumulated row by row, as the scan itself does: every column's state is multiplied by the
step's decay ``exp(delta_i A) <= 1`` (measured faster than one exponential per (i, j, n), and
nothing can overflow). Channels go in chunks, which bounds the working memory whatever ``D`` is.

**Per layer.** SS2D runs four directional scans ("h", "v", "h_rev", "v_rev"); each direction's
channel-mean map is put back on the image grid with `models.vmamba.scan_orders`, and the merged
map is their sum (the operator `cross_merge` applies: it sums the four directions). ViT: the
attention probabilities averaged over heads. For comparisons every map is turned into rows that
sum to one over the patch keys: attention is renormalised over the patches (the cls key dropped);
Mamba's signed map is taken in magnitude, ``|M|``, then normalised (our choice, stated: the
channel mean can be negative; Ali et al. min-max normalise instead).

**Rollout** (Abnar & Zuidema 2020): ``R = A~_L ... A~_1`` with ``A~ = 0.5 I + 0.5 A``, rows
renormalised. For Mamba the same, from the merged hidden-attention maps (as Ali et al. do).
The backbone's *output map* is the row of the token its head reads: the cls row for ViT, the mean
of the rows for the mean-pooled backbones (MAMBA-V2, MAMBA-S).

**Attributions** (captum): Saliency and Integrated Gradients of the similarity between an image's
embedding and its own (detached, normalised) embedding, ``f(x) . f(x0)/|f(x0)|``: backbones give
embeddings, not class logits, and in retrieval "what makes this image look like itself" is the
quantity (IG's baseline: zeros, the mean colour of the normalised input).

**ERF** (as in RepLKNet's and VMamba's figures): the gradient of the central output token (of the
last block, summed over channels) with respect to the input image, summed over input channels
and averaged over images. ``mode="replknet"`` takes the ReLU of the token and of the gradient,
as their code does; ``mode="abs"`` the plain sum and ``|grad|``.

**Scores** per layer and for the rollout (`compare_maps`): Pearson correlation between two
backbones' maps for the same query token (mean over all patch queries, and for the central one),
mean attention distance in patches, entropy (nats) of the rows, and pointing game / mask energy of
the output map against the foreground masks of the bundled synthetic data.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = [
    "REDUCTIONS", "ATTRIBUTION_METHODS", "ERF_MODES", "SCORE_COLUMNS", "segsum", "hidden_attention",
    "grid_permutation", "ssm_layer_maps", "ssm_maps", "attention_maps", "normalize_rows",
    "output_map", "attention_rollout", "integrated_gradients", "saliency", "attributions",
    "attribution_map", "backbone_feature_map", "effective_receptive_field", "erf_area_ratio",
    "erf_mean_distance", "entropy", "mean_attention_distance", "pearson", "row_correlation",
    "pointing_game", "ProbeImages", "probe_images", "MapSet", "compute_maps", "compare_maps",
    "comparison_table", "save_maps", "load_maps", "record_maps", "maps_dir", "maps_for_report",
]

REDUCTIONS = (None, "mean")
ATTRIBUTION_METHODS = ("saliency", "integrated_gradients")
ERF_MODES = ("replknet", "abs")

# Tokens per block of the hidden-attention computation: the diagonal blocks cost about
# D*N*L*block_size/2 multiply-adds done step by step, the off-diagonal ones D*N*L^2/2 as batched
# matmuls plus D*N*L^2/block_size gathered factors. CPU time on one thread (2-core machine):
# block 16/32/64 at B=2, D=768, L=128: 0.29/0.24/- s; at B=1, D=384, L=1024: 2.4/1.0/0.85 s.
DEFAULT_BLOCK = 32
# Working memory a channel chunk may take when `chunk_channels` is not given (bytes).
WORK_BUDGET_BYTES = 256 * 2**20
# A patch counts as foreground for the pointing game when at least this fraction of its pixels is.
POINTING_FRACTION = 0.5
# Images per forward/backward of Integrated Gradients (images x steps) and of the ERF: bounds
# their memory. MAMBA-V2 at 256x128 keeps about 0.4 GB per sample for the backward (the fast
# scan saves every state: 12 layers x 4 directions x 768 channels x 16 states x 128 tokens).
GRAD_BATCH = 4
MAPS_DIR = "maps"
_MAPS_FILE_RE = re.compile(r"^step-(-?\d+)\.npz$")


# --------------------------------------------------------------------------------------------
# hidden attention: the matrix the selective scan applies
# --------------------------------------------------------------------------------------------

def segsum(x: torch.Tensor, *, fill: float = float("-inf")) -> torch.Tensor:
    """Segment sums along the last axis: ``out[..., i, j] = sum_{k=j+1..i} x[..., k]`` for
    ``j <= i`` (0 on the diagonal) and `fill` above it. ``(..., T) -> (..., T, T)``.

    Exact, as Mamba-2's ``segsum``: a cumulative sum of copies of ``x`` masked to ``k > j``, so no
    difference of two large cumulative sums (which cancels digits) is ever taken.
    """
    T = x.shape[-1]
    strict = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)   # k > j
    xx = x[..., :, None].expand(*x.shape, T).masked_fill(~strict, 0.0)      # xx[.., k, j] = x_k
    out = xx.cumsum(dim=-2)                                                 # sum over j < k <= i
    return out.masked_fill(~strict.logical_or(torch.eye(T, dtype=torch.bool, device=x.device)),
                           fill)


def _check_scan_args(delta, A, B, C, delta_bias) -> None:
    expected = "expected delta (B, D, L); A (D, N); B, C (B, N, L) or (B, G, N, L); delta_bias (D,)"
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor; {expected}")
    if delta.dim() != 3:
        raise ValueError(f"delta {tuple(delta.shape)}: {expected}")
    bsz, dim, length = delta.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A {tuple(A.shape)} for D={dim}: {expected}")
    if A.is_complex():
        raise ValueError("complex A is not supported: Vision Mamba uses real A = -exp(A_log)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = ((t.dim() == 3 and tuple(t.shape) == (bsz, n, length))
              or (t.dim() == 4 and t.shape[0] == bsz and tuple(t.shape[2:]) == (n, length)
                  and dim % t.shape[1] == 0))
        if not ok:
            raise ValueError(f"{name} {tuple(t.shape)} for B={bsz}, D={dim}, N={n}, "
                             f"L={length}: {expected}")
    if delta_bias is not None and tuple(delta_bias.shape) != (dim,):
        raise ValueError(f"delta_bias {tuple(delta_bias.shape)} for D={dim}: {expected}")


def _auto_chunk(bsz: int, dim: int, n: int, lp: int, q: int, pairs: int, itemsize: int,
                reduce: str | None) -> int:
    """Channels per chunk so that one chunk's buffers stay within WORK_BUDGET_BYTES."""
    per_channel = bsz * lp * q * 2 * itemsize                    # diagonal blocks (+ a copy)
    per_channel += bsz * pairs * q * n * 3 * itemsize             # left/right block factors
    per_channel += bsz * lp * n * (3 * 8 + 6 * itemsize)          # per-token factors, states
    if reduce is None:
        per_channel += 2 * bsz * lp * lp * itemsize               # blocked result + its copy
    return int(max(1, min(dim, WORK_BUDGET_BYTES // max(per_channel, 1))))


def _assemble(diag: torch.Tensor, off: torch.Tensor | None, rows: torch.Tensor,
              cols: torch.Tensor, length: int) -> torch.Tensor:
    """Blocks ``diag (..., nb, Q, Q)`` and ``off (..., P, Q, Q)`` (pairs rows > cols) into the
    lower-triangular ``(..., L, L)`` matrix."""
    *lead, nb, q, _ = diag.shape
    blocks = diag.new_zeros(*lead, nb, nb, q, q)
    ar = torch.arange(nb, device=diag.device)
    blocks[..., ar, ar, :, :] = diag
    if off is not None:
        blocks[..., rows, cols, :, :] = off
    full = blocks.transpose(-3, -2).reshape(*lead, nb * q, nb * q)
    return full[..., :length, :length]


def hidden_attention(delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, *,
                     delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                     reduce: str | None = None, chunk_channels: int | None = None,
                     block_size: int = DEFAULT_BLOCK) -> torch.Tensor:
    """The matrix the selective scan applies (see the module docstring), mamba-ssm's shapes.

    Args:
        delta: ``(B, D, L)``, before `delta_bias` / softplus as in `selective_scan_fn`.
        A: ``(D, N)`` real (Mamba: ``-exp(A_log)``).
        B, C: ``(B, N, L)`` or grouped ``(B, G, N, L)`` (channel ``d`` uses group
            ``d // (D // G)``).
        delta_bias: ``(D,)``, added before the softplus.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        reduce: ``None``: every channel's map; ``"mean"``: their mean over channels.
        chunk_channels: channels computed at a time (memory bound); ``None``: chosen so a chunk's
            buffers take about 256 MiB.
        block_size: tokens per block (see the module docstring).

    Returns:
        ``M (B, D, L, L)``, or ``(B, L, L)`` with ``reduce="mean"``; zero above the diagonal;
        fp64 for fp64 ``delta``, else fp32. ``M @ u[..., None]`` is the scan's output without the
        ``D`` term and the gate.
    """
    _check_scan_args(delta, A, B, C, delta_bias)
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if chunk_channels is not None and (not isinstance(chunk_channels, int) or chunk_channels < 1):
        raise ValueError(f"chunk_channels must be a positive int or None, got {chunk_channels!r}")
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    work = torch.float64 if delta.dtype == torch.float64 else torch.float32
    f64 = torch.float64
    bsz, dim, length = delta.shape
    n = A.shape[1]
    Bg = B.unsqueeze(1) if B.dim() == 3 else B           # (B, G, N, L)
    Cg = C.unsqueeze(1) if C.dim() == 3 else C
    per_group = dim // Bg.shape[1]
    q = min(block_size, length)
    nb = -(-length // q)
    lp = nb * q
    pad = lp - length
    rows, cols = torch.tril_indices(nb, nb, -1, device=delta.device)   # block pairs I > J
    pairs = rows.numel()
    chunk = chunk_channels or _auto_chunk(bsz, dim, n, lp, q, pairs,
                                          torch.finfo(work).bits // 8, reduce)

    if reduce is None:
        out = torch.zeros(bsz, dim, length, length, dtype=work, device=delta.device)
    else:
        diag_sum = torch.zeros(bsz, nb, q, q, dtype=work, device=delta.device)
        off_sum = torch.zeros(bsz, pairs, q, q, dtype=work, device=delta.device)

    for c0 in range(0, dim, chunk):
        c1 = min(dim, c0 + chunk)
        c = c1 - c0
        groups = torch.arange(c0, c1, device=delta.device) // per_group
        # Step sizes in fp64: every exponent below is a sum of them times A.
        dt = delta[:, c0:c1].to(f64)
        if delta_bias is not None:
            dt = dt + delta_bias[c0:c1].to(f64)[:, None]
        if delta_softplus:
            dt = F.softplus(dt)
        Bc = Bg[:, groups].to(f64)                         # (B, c, N, L)
        Cc = Cg[:, groups].to(f64)
        dB = dt[:, :, None, :] * Bc                        # delta_j B_j      (B, c, N, L)
        if pad:  # padded steps: delta 0 (decay 1) and no input; they come after every real one
            dt, dB, Cc = F.pad(dt, (0, pad)), F.pad(dB, (0, pad)), F.pad(Cc, (0, pad))
        A_c = A[c0:c1].to(f64)                             # (c, N)
        dtb = dt.view(bsz, c, nb, q)
        Cq = Cc.view(bsz, c, n, nb, q).permute(0, 1, 3, 4, 2).to(work)    # (B, c, nb, Q, N)
        dBq = dB.view(bsz, c, n, nb, q).permute(0, 1, 3, 4, 2).to(work)   # (B, c, nb, Q, N)

        # Diagonal blocks, all blocks at once, row i after row i-1: the state of every column j
        # is multiplied by this step's decay exp(delta_i A) <= 1 (the scan's own arithmetic: no
        # sum is exponentiated), column i enters as delta_i B_i, and row i is C_i . state.
        decay = torch.exp((dtb[..., None] * A_c[None, :, None, None, :]).to(work))  # (B,c,nb,Q,N)
        state = torch.zeros(bsz, c, nb, q, n, dtype=work, device=delta.device)
        diag = torch.zeros(bsz, c, nb, q, q, dtype=work, device=delta.device)
        for i in range(q):
            state[..., :i, :].mul_(decay[..., i:i + 1, :])
            state[..., i, :] = dBq[..., i, :]
            diag[..., i, :i + 1] = (state[..., :i + 1, :] @ Cq[..., i, :, None])[..., 0]
        del decay, state

        off = None
        if pairs:
            # Across blocks: exp(A (sum_{j+1..J end} + sum_{blocks between} + sum_{I start..i})),
            # three segment sums, each <= 0 for A < 0, dt > 0, so each factor lies in [0, 1].
            head = dtb.cumsum(-1)                          # sum_{k=I start..i}     (B, c, nb, Q)
            tail = torch.cat([dtb.flip(-1).cumsum(-1).flip(-1)[..., 1:],
                              dtb.new_zeros(bsz, c, nb, 1)], dim=-1)   # sum_{k=j+1..J end}
            between = segsum(head[..., -1], fill=0.0)      # sum_{K=J+1..I} totals (B, c, nb, nb)
            between = between[:, :, rows - 1, cols]        # sum_{K=J+1..I-1}       (B, c, P)
            a = A_c[None, :, None, None, :]                # (1, c, 1, 1, N)
            left = Cq * torch.exp((head[..., None] * a).to(work))      # (B, c, nb, Q, N)
            right = dBq * torch.exp((tail[..., None] * a).to(work))    # (B, c, nb, Q, N)
            mid = torch.exp((between[..., None] * A_c[None, :, None, :]).to(work))  # (B, c, P, N)
            left = left[:, :, rows] * mid[:, :, :, None, :]            # (B, c, P, Q, N)
            right = right[:, :, cols]                                  # (B, c, P, Q, N)
            if reduce is None:
                off = left @ right.transpose(-1, -2)                   # (B, c, P, Q, Q)
            else:  # contract channels and states together: the per-channel maps never exist
                lf = left.permute(0, 2, 3, 1, 4).reshape(bsz, pairs, q, c * n)
                rt = right.permute(0, 2, 1, 4, 3).reshape(bsz, pairs, c * n, q)
                off_sum.add_(lf @ rt)
            del left, right, mid

        if reduce is None:
            out[:, c0:c1] = _assemble(diag, off, rows, cols, length)
        else:
            diag_sum.add_(diag.sum(1))
        del diag, off

    if reduce is None:
        return out
    return _assemble(diag_sum, off_sum if pairs else None, rows, cols, length).div_(dim)


# --------------------------------------------------------------------------------------------
# per-layer maps of both backbones
# --------------------------------------------------------------------------------------------

def _block_index(name: str) -> int:
    m = re.search(r"(?:^|\.)blocks\.(\d+)(?:\.|$)", name)
    return int(m.group(1)) if m else -1


def grid_permutation(directions: Sequence[str], grid_size: tuple[int, int], length: int,
                     device=None) -> torch.Tensor:
    """``(K, L)``: for direction ``k``, the scan step at which each grid token (row-major) is
    visited, so that ``M_scan[:, perm][:, :, perm]`` is the map in grid order."""
    from models.vmamba import DIRECTIONS, scan_orders

    gh, gw = grid_size
    if list(directions) == list(DIRECTIONS) and length == gh * gw:
        orders = scan_orders(grid_size, device=device)                 # (K, L) grid index at step t
    elif len(directions) == 1 and length == gh * gw:
        orders = torch.arange(length, device=device)[None]             # a single row-major scan
    else:
        raise ValueError(f"cannot place scan directions {list(directions)} of length {length} on "
                         f"the {gh}x{gw} patch grid (known: SS2D's four directions, or one "
                         f"row-major scan of exactly the patches)")
    return orders.argsort(dim=-1)


@torch.no_grad()
def ssm_layer_maps(module: nn.Module, x: torch.Tensor, grid_size: tuple[int, int], *,
                   reduce: str | None = "mean", chunk_channels: int | None = None
                   ) -> tuple[list[str], torch.Tensor]:
    """Hidden attention of one SSM layer, per direction, in grid order.

    x: the layer's input (what its forward receives). Returns ``(directions, maps)``: maps
    ``(K, B, L, L)`` (channel mean, ``reduce="mean"``) or ``(K, B, D, L, L)`` (``reduce=None``),
    signed, rows and columns in row-major grid order. Their sum over ``K`` is the merged map: for
    channel ``d``, ``sum_k maps[k, :, d] @ u_grid[:, d]`` is what `cross_merge` returns (without
    the ``D`` term), ``u_grid`` being the scan input in grid order.
    """
    from diagnostics.probes import scan_inputs

    s = scan_inputs(module, x)
    names = list(s["directions"])
    k_dirs = len(names)
    delta, A = s["delta"], s["A"]
    bsz, kd, length = delta.shape
    dim = kd // k_dirs
    perm = grid_permutation(names, grid_size, length, device=delta.device)
    bias = s.get("delta_bias")
    maps = []
    for k in range(k_dirs):
        ch = slice(k * dim, (k + 1) * dim)
        bc = []
        for t in (s["B"], s["C"]):
            if t.dim() == 4 and t.shape[1] > 1:
                g = t.shape[1]
                if g % k_dirs:
                    raise ValueError(f"{g} B/C groups do not split over {k_dirs} directions")
                t = t[:, k * (g // k_dirs):(k + 1) * (g // k_dirs)]
            bc.append(t)
        m = hidden_attention(delta[:, ch], A[ch], bc[0], bc[1],
                             delta_bias=bias[ch] if bias is not None else None,
                             delta_softplus=True, reduce=reduce, chunk_channels=chunk_channels)
        p = perm[k]
        maps.append(m[..., p, :][..., :, p])
    return names, torch.stack(maps)


def _capture_inputs(model: nn.Module, images: torch.Tensor, select: Callable[[nn.Module], bool]):
    """Run the model once (no grad) and return ``[(name, module, input)]`` of the selected
    modules, in forward order."""
    found = [(n, m) for n, m in model.named_modules() if select(m)]
    captured: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(
        lambda mod, args, name=n: captured.__setitem__(name, args[0].detach()))
        for n, m in found]
    try:
        with torch.no_grad():
            model.forward_features(images)
    finally:
        for h in handles:
            h.remove()
    return [(n, m, captured[n]) for n, m in found if n in captured]


def ssm_maps(model: nn.Module, images: torch.Tensor, *, chunk_channels: int | None = None):
    """Every SSM layer's maps: ``[(layer, directions, maps (K, B, P, P))]`` in block order."""
    from diagnostics.probes import is_ssm_module

    out = []
    for name, module, x in _capture_inputs(model, images, is_ssm_module):
        names, maps = ssm_layer_maps(module, x, tuple(model.grid_size),
                                     chunk_channels=chunk_channels)
        out.append((_block_index(name), names, maps))
    return out


def attention_maps(model: nn.Module, images: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """Every attention layer's probabilities averaged over heads: ``[(layer, (B, T, T))]``; T
    includes the model's prefix (cls) tokens."""
    from diagnostics.probes import is_attention_module

    out = []
    for name, module, x in _capture_inputs(model, images, is_attention_module):
        probs, _ = module.attention_probs(x)                       # (B, heads, T, T)
        out.append((_block_index(name), probs.float().mean(1)))
    return out


def normalize_rows(maps: torch.Tensor, *, absolute: bool = True) -> torch.Tensor:
    """Rows that sum to one: ``|M| / sum |M|`` (or ``M`` clamped at 0 with ``absolute=False``).
    An all-zero row stays zero."""
    m = maps.abs() if absolute else maps.clamp_min(0)
    return m / m.sum(-1, keepdim=True).clamp_min(1e-30)


def output_map(maps: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The map of the token the head reads, over the patches, summing to one: ``(B, T, T) ->
    (B, P)``. With a cls token (ViT): its row over the patch keys; without (mean-pooled
    backbones): the mean of the patch rows."""
    k = num_prefix_tokens
    row = maps[:, 0, k:] if k else maps.mean(1)
    return row / row.sum(-1, keepdim=True).clamp_min(1e-30)


def attention_rollout(maps: Sequence[torch.Tensor], *, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``A~_L @ ... @ A~_1`` with
    ``A~ = residual I + (1 - residual) A``, rows renormalised to one. maps: per layer ``(B, T, T)``,
    first layer first, rows summing to one."""
    if not len(maps):
        raise ValueError("attention_rollout needs at least one layer")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    eye = torch.eye(maps[0].shape[-1], dtype=maps[0].dtype, device=maps[0].device)
    rollout = None
    for a in maps:
        a = residual * eye + (1.0 - residual) * a
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
        rollout = a if rollout is None else a @ rollout
    return rollout


# --------------------------------------------------------------------------------------------
# attributions (captum) and the effective receptive field
# --------------------------------------------------------------------------------------------

def _similarity(model: nn.Module) -> Callable:
    def score(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return (model(x) * ref).sum(-1)                            # (B,)
    return score


def _reference(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model(images).float(), dim=-1)


def integrated_gradients(model: nn.Module, images: torch.Tensor, *, n_steps: int = 32,
                         internal_batch_size: int | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """captum's IntegratedGradients of ``f(x) . f(x0)/|f(x0)|`` from a zero baseline.
    Returns ``(attributions (B, 3, H, W), convergence delta (B,))``; completeness:
    ``attributions.sum((1, 2, 3)) ~= f(x) - f(0)``, the delta is the difference."""
    from captum.attr import IntegratedGradients

    ref = _reference(model, images)
    ig = IntegratedGradients(_similarity(model))
    attr, delta = ig.attribute(images, baselines=torch.zeros_like(images),
                               additional_forward_args=(ref,), n_steps=n_steps,
                               internal_batch_size=internal_batch_size or GRAD_BATCH,
                               return_convergence_delta=True)
    return attr.detach(), delta.detach()


def saliency(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """captum's Saliency (``|d score / d x|``) of the same score: ``(B, 3, H, W)``."""
    from captum.attr import Saliency

    ref = _reference(model, images)
    x = images.detach().clone().requires_grad_(True)
    return Saliency(_similarity(model)).attribute(x, additional_forward_args=(ref,),
                                                  abs=True).detach()


def attribution_map(attr: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, H, W)``: magnitude summed over the colour channels."""
    return attr.abs().sum(1)


def attributions(model: nn.Module, images: torch.Tensor,
                 methods: Sequence[str] = ATTRIBUTION_METHODS, *, ig_steps: int = 32,
                 internal_batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """Input-shaped attributions ``(B, 3, H, W)`` by method name (`ATTRIBUTION_METHODS`)."""
    unknown = [m for m in methods if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise ValueError(f"unknown attribution method(s) {unknown}; known: {ATTRIBUTION_METHODS}")
    out = {}
    for method in methods:
        if method == "saliency":
            out[method] = saliency(model, images)
        else:
            out[method] = integrated_gradients(model, images, n_steps=ig_steps,
                                               internal_batch_size=internal_batch_size)[0]
    return out


def backbone_feature_map(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``images -> (B, C, gh, gw)``: the last block's output tokens (prefix tokens dropped) on the
    patch grid, for `effective_receptive_field`."""
    gh, gw = model.grid_size
    k = getattr(model, "num_prefix_tokens", 0)

    def fmap(x: torch.Tensor) -> torch.Tensor:
        _, inter = model.forward_intermediates(x)
        t = inter[-1][:, k:]                                       # (B, P, C)
        return t.reshape(t.shape[0], gh, gw, -1).permute(0, 3, 1, 2)
    return fmap


def effective_receptive_field(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                              *, mode: str = "replknet", batch_size: int = GRAD_BATCH
                              ) -> torch.Tensor:
    """Gradient of the central output position w.r.t. the input, averaged over images.

    fn: ``images (B, C_in, H, W) -> feature map (B, C, h, w)`` (a conv net, or
    `backbone_feature_map(model)`). The central position is ``(h // 2, w // 2)``; its channels are
    summed (after a ReLU in ``"replknet"`` mode), the gradient is taken through ReLU
    (``"replknet"``) or in magnitude (``"abs"``), summed over input channels and averaged over
    images. Returns ``(H, W)``.
    """
    if mode not in ERF_MODES:
        raise ValueError(f"mode must be one of {ERF_MODES}, got {mode!r}")
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].detach().clone().requires_grad_(True)
        out = fn(x)
        if out.dim() != 4:
            raise ValueError(f"fn must return a feature map (B, C, h, w), got {tuple(out.shape)}")
        centre = out[:, :, out.shape[2] // 2, out.shape[3] // 2]
        if mode == "replknet":
            centre = F.relu(centre)
        (grad,) = torch.autograd.grad(centre.sum(), x)
        grad = F.relu(grad) if mode == "replknet" else grad.abs()
        total += grad.sum((0, 1)).double().cpu()
    return (total / images.shape[0]).float()


def erf_area_ratio(erf: torch.Tensor, threshold: float = 0.5) -> float:
    """RepLKNet's high-contribution area ratio: the area fraction of the smallest rectangle
    centred on the map whose sum reaches `threshold` of the total (grown one pixel a side)."""
    e = erf.double()
    total = float(e.sum())
    if total <= 0:
        return float("nan")
    H, W = e.shape
    cy, cx = H // 2, W // 2
    for r in range(max(H, W)):
        box = e[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1]
        if float(box.sum()) >= threshold * total:
            return box.numel() / (H * W)
    return 1.0


def erf_mean_distance(erf: torch.Tensor, patch_size: int) -> float:
    """Mean distance of the ERF's mass from its centre pixel, in patches."""
    e = erf.double().clamp_min(0)
    H, W = e.shape
    gh, gw = H // patch_size, W // patch_size
    # centre of the central output token's patch
    cy, cx = (gh // 2 + 0.5) * patch_size - 0.5, (gw // 2 + 0.5) * patch_size - 0.5
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64),
                            torch.arange(W, dtype=torch.float64), indexing="ij")
    d = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) / patch_size
    return float((e * d).sum() / e.sum().clamp_min(1e-30))


# --------------------------------------------------------------------------------------------
# comparison numbers
# --------------------------------------------------------------------------------------------

def entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy in nats along the last axis (``0 log 0 = 0``); p sums to one there."""
    p = p.double()
    return -(p * torch.log(p.clamp_min(1e-300))).sum(-1)


def mean_attention_distance(maps: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
    """Expected Euclidean distance on the patch grid from each query patch to the keys, averaged
    over queries: ``(B, P, P) -> (B,)`` in patches (rows sum to one; ViT Fig. 7, as
    `probes.attention_stats`)."""
    gh, gw = grid_size
    r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([r.reshape(-1), c.reshape(-1)], -1).double()
    dist = torch.cdist(pos, pos).to(maps.device)                  # (P, P)
    return (maps.double() * dist).sum(-1).mean(-1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last axis (NaN where either side is constant)."""
    a, b = a.double(), b.double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    r = (a * b).sum(-1) / den
    return torch.where(den > 0, r, torch.full_like(r, float("nan")))


def row_correlation(a: torch.Tensor, b: torch.Tensor, queries: Sequence[int] | None = None, *,
                    exclude_self: bool = False) -> torch.Tensor:
    """Mean over query rows of the Pearson correlation between two maps' rows for the same query
    token: ``(B, P, P), (B, P, P) -> (B,)``; `queries`: row indices (default: all).
    ``exclude_self``: leave each query's own key out (a residual / rollout puts much of a row's
    mass there in every backbone, which would make any two maps look alike)."""
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if exclude_self:
        P = a.shape[-1]
        keep = ~torch.eye(P, dtype=torch.bool, device=a.device)
        a = a.masked_select(keep).view(*a.shape[:-1], P - 1)
        b = b.masked_select(keep).view(*b.shape[:-1], P - 1)
    if queries is not None:
        idx = torch.as_tensor(list(queries), dtype=torch.long, device=a.device)
        a, b = a[:, idx], b[:, idx]
    return pearson(a, b).nanmean(-1)


def pointing_game(saliency_map: torch.Tensor, masks: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pointing game and mask energy of maps against foreground masks.

    saliency_map: ``(B, h, w)`` on a grid coarser than or equal to the masks ``(B, H, W)``
    (``H % h == 0``; a patch map is ``(B, gh, gw)``). The masks are averaged over each cell of the
    map's grid (foreground fraction ``f``). Returns ``(hit (B,) bool, energy (B,), mask_frac
    (B,))``: hit when the map's maximum falls on a cell with ``f >= 0.5``; energy
    ``sum(s+ f) / sum(s+)`` (the share of the map's positive mass on the foreground, Wang et al.'s
    energy-based pointing game); mask_frac: the energy a uniform map would get.
    """
    s = saliency_map.double().clamp_min(0)
    m = masks.double()
    if m.dim() != 3 or s.dim() != 3 or s.shape[0] != m.shape[0]:
        raise ValueError(f"expected maps (B, h, w) and masks (B, H, W), got "
                         f"{tuple(saliency_map.shape)} and {tuple(masks.shape)}")
    (H, W), (h, w) = m.shape[-2:], s.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"mask size {H}x{W} is not a multiple of the map's {h}x{w}")
    frac = F.avg_pool2d(m[:, None], (H // h, W // w))[:, 0] if (h, w) != (H, W) else m
    flat_s, flat_f = s.flatten(1), frac.flatten(1)
    hit = flat_f.gather(1, flat_s.argmax(1, keepdim=True))[:, 0] >= POINTING_FRACTION
    energy = (flat_s * flat_f).sum(1) / flat_s.sum(1).clamp_min(1e-300)
    energy = torch.where(flat_s.sum(1) > 0, energy, torch.full_like(energy, float("nan")))
    return hit, energy, flat_f.mean(1)


# --------------------------------------------------------------------------------------------
# probe images, the MapSet, and computing one
# --------------------------------------------------------------------------------------------

@dataclass
class ProbeImages:
    """A few fixed images to compute maps on.

    images: ``(B, 3, H, W)`` normalised (what the model takes); raw: ``(B, 3, H, W)`` in [0, 1]
    (for figures); masks: ``(B, H, W)`` bool foreground or None; ids: indices in the split.
    """

    images: torch.Tensor
    raw: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    ids: list[int] = field(default_factory=list)
    source: str = ""


def probe_images(n: int | None = 4, *, dataset: str = "synthetic",
                 img_size: tuple[int, int] = (256, 128), indices: Sequence[int] | None = None,
                 split: str = "query", seed: int = 0) -> ProbeImages:
    """Fixed probe images of a dataset split (`diagnostics.data.build_dataset`), un-augmented.

    `indices` picks items of the split; otherwise `n` items evenly spaced over it (the same for
    every run on the same dataset and size, so two backbones are compared on the same images).
    """
    from diagnostics.data import build_dataset

    data = build_dataset(dataset, img_size=tuple(img_size), seed=seed, augment="none")
    ds = getattr(data, split)
    if indices is None:
        if not n or n < 1:
            raise ValueError(f"need n >= 1 probe images, got {n!r}")
        indices = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))
    indices = [int(i) for i in indices]
    bad = [i for i in indices if not 0 <= i < len(ds)]
    if bad:
        raise ValueError(f"image indices {bad} are outside the {split} split (0..{len(ds) - 1})")
    images = torch.stack([ds[i][0] for i in indices])
    raw = torch.stack([ds.load(i) for i in indices])
    masks = torch.stack([ds.mask(i) for i in indices]) if ds.has_masks else None
    return ProbeImages(images, raw, masks, indices, f"{data.spec or dataset}/{split}")


@dataclass
class MapSet:
    """One backbone's maps on a few probe images (numpy, float32; ``P = gh * gw`` patches,
    row-major; every map's rows sum to one over the patch keys).

    layers ``(nL, B, P, P)``: per layer; for SSM layers the merged map. layer_ids ``(nL,)``:
    index in ``model.blocks``. output_layers ``(nL, B, P)``: per layer, the row of the token
    the head reads (`output_map`). rollout ``(B, P, P)`` and output_rollout ``(B, P)``.
    directions / direction_maps ``(nL, K, B, P, P)``: SSM only. attributions: method ->
    ``(B, H, W)`` (`attribution_map`). erf ``(H, W)`` or None. images ``(B, 3, H, W)`` in [0, 1]
    and masks ``(B, H, W)`` bool, or None. image_ids: items of `source`.
    """

    backbone: str
    kind: str                      # "ssm" or "attention"
    grid_size: tuple[int, int]
    patch_size: int
    num_prefix_tokens: int
    layer_ids: np.ndarray
    layers: np.ndarray
    output_layers: np.ndarray
    rollout: np.ndarray
    output_rollout: np.ndarray
    directions: list[str] = field(default_factory=list)
    direction_maps: np.ndarray | None = None
    attributions: dict[str, np.ndarray] = field(default_factory=dict)
    erf: np.ndarray | None = None
    images: np.ndarray | None = None
    masks: np.ndarray | None = None
    image_ids: list[int] = field(default_factory=list)
    source: str = ""
    step: int | None = None
    name: str = ""

    @property
    def num_images(self) -> int:
        return int(self.layers.shape[1])

    @property
    def label(self) -> str:
        """``name`` (or backbone) and step, for figure titles and table rows."""
        base = self.name or self.backbone
        return f"{base} @ step {self.step}" if self.step is not None else base


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)   # DistributedDataParallel / DataParallel


def compute_maps(model: nn.Module, probe: ProbeImages | torch.Tensor, *, backbone: str = "",
                 name: str = "", step: int | None = None,
                 attribution_methods: Sequence[str] = ATTRIBUTION_METHODS, ig_steps: int = 32,
                 erf: bool = True, erf_mode: str = "replknet", chunk_channels: int | None = None,
                 grad_batch: int = GRAD_BATCH) -> MapSet:
    """All maps of one backbone on the probe images (the model is put in eval mode meanwhile and
    given back in its mode; parameters' ``.grad`` are not touched). `grad_batch`: samples per
    forward/backward of the attributions and the ERF (memory against speed).

    Raises ValueError when the model has neither SSM nor attention layers.
    """
    from diagnostics.probes import is_attention_module, is_ssm_module

    if isinstance(probe, torch.Tensor):
        probe = ProbeImages(probe)
    model = _unwrap(model)
    has_ssm = any(is_ssm_module(m) for m in model.modules())
    if not has_ssm and not any(is_attention_module(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} has no SSM layer (A_log + dt_proj) and no "
                         f"attention layer (attention_probs): nothing to map")
    missing = [a for a in ("grid_size", "patch_size", "forward_features") if not hasattr(model, a)]
    if missing:
        raise ValueError(f"{type(model).__name__} lacks the backbone surface "
                         f"({', '.join(missing)}; docs/interfaces.md)")
    was_training = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        images = probe.images.to(dev)
        grid = tuple(model.grid_size)
        k = int(getattr(model, "num_prefix_tokens", 0))
        directions, direction_maps = [], None
        if has_ssm:
            kind = "ssm"
            per = ssm_maps(model, images, chunk_channels=chunk_channels)
            layer_ids = [layer for layer, _, _ in per]
            directions = per[0][1] if per else []
            merged = [normalize_rows(maps.sum(0)) for _, _, maps in per]        # (B, P, P)
            direction_maps = torch.stack([normalize_rows(maps) for _, _, maps in per])
            full = merged                                  # no prefix tokens in SSM backbones
            k = 0
        else:
            kind = "attention"
            per = attention_maps(model, images)
            layer_ids = [layer for layer, _ in per]
            full = [a for _, a in per]                                           # (B, T, T)
            merged = [a[:, k:, k:] / a[:, k:, k:].sum(-1, keepdim=True).clamp_min(1e-30)
                      for a in full]
        if not full:
            raise ValueError("the model's forward ran none of its SSM/attention layers")
        roll = attention_rollout(full)
        roll_p = roll[:, k:, k:] / roll[:, k:, k:].sum(-1, keepdim=True).clamp_min(1e-30)
        out = {
            "layers": torch.stack(merged),
            "output_layers": torch.stack([output_map(a, k) for a in full]),
            "rollout": roll_p, "output_rollout": output_map(roll, k),
        }
        attrs = {}
        if attribution_methods:
            with torch.enable_grad():
                for method, a in attributions(model, images, attribution_methods,
                                              ig_steps=ig_steps,
                                              internal_batch_size=grad_batch).items():
                    attrs[method] = attribution_map(a).float().cpu().numpy()
        erf_map = None
        if erf:
            with torch.enable_grad():
                erf_map = effective_receptive_field(backbone_feature_map(model), images,
                                                    mode=erf_mode, batch_size=grad_batch).numpy()
    finally:
        model.train(was_training)
    np32 = lambda t: t.detach().float().cpu().numpy()
    return MapSet(
        backbone=backbone or type(model).__name__, kind=kind, grid_size=grid,
        patch_size=int(model.patch_size), num_prefix_tokens=k,
        layer_ids=np.asarray(layer_ids, dtype=np.int64), layers=np32(out["layers"]),
        output_layers=np32(out["output_layers"]), rollout=np32(out["rollout"]),
        output_rollout=np32(out["output_rollout"]), directions=list(directions),
        direction_maps=np32(direction_maps) if direction_maps is not None else None,
        attributions=attrs, erf=erf_map,
        images=np32(probe.raw) if probe.raw is not None else None,
        masks=probe.masks.cpu().numpy().astype(bool) if probe.masks is not None else None,
        image_ids=list(probe.ids), source=probe.source, step=step, name=name,
    )


# --------------------------------------------------------------------------------------------
# the comparison table
# --------------------------------------------------------------------------------------------

SCORE_COLUMNS = ("backbone", "map", "layer", "entropy", "mean_distance", "pointing",
                 "mask_energy", "mask_frac", "corr", "corr_center", "corr_output")
"""Columns of `compare_maps`. map: ``layer`` / ``rollout`` / an attribution method / ``erf``;
layer: block index (-1 for the others). entropy (nats) and mean_distance (patches): of the query
rows, mean over queries and images (ERF: of the normalised ERF, and its mass's distance from the
centre). pointing (fraction of images) and mask_energy: of the output map against the masks;
mask_frac: a uniform map's energy. corr: Pearson correlation with the reference backbone's map of
the same kind and (aligned) layer, for the same query token (its own key left out), mean over
queries and images;
corr_center: for the central query only; corr_output: of the output maps (attributions, ERF:
of the maps themselves). NaN where it does not apply (the reference's own corr columns)."""


def _aligned_layer(i: int, n: int, n_ref: int) -> int:
    """Layer of a reference of depth n_ref matching layer i of n (same relative depth)."""
    if n == n_ref:
        return i
    return int(round(i * (n_ref - 1) / max(n - 1, 1)))


def _nan_mean(t: torch.Tensor) -> float:
    t = t.double()
    return float(t.nanmean()) if t.numel() and not torch.isnan(t).all() else float("nan")


def _pointing_stats(out_maps: torch.Tensor, masks: torch.Tensor | None, grid: tuple[int, int]):
    if masks is None:
        return dict(pointing=float("nan"), mask_energy=float("nan"), mask_frac=float("nan"))
    s = out_maps if out_maps.dim() == 3 else out_maps.reshape(out_maps.shape[0], *grid)
    hit, energy, frac = pointing_game(s, masks)
    return dict(pointing=_nan_mean(hit.double()), mask_energy=_nan_mean(energy),
                mask_frac=_nan_mean(frac))


def compare_maps(sets: Sequence[MapSet], reference: int | None = None):
    """The comparison table (a pandas DataFrame, columns `SCORE_COLUMNS`): one row per backbone
    and map (each layer, the rollout, each attribution method, the ERF).

    sets: MapSets of the same probe images and patch grid. reference: index of the backbone the
    correlations are taken against (default: the first attention backbone, else the first).
    Masks are those stored in the sets (the reference's when they differ).
    """
    import pandas as pd

    if not sets:
        raise ValueError("compare_maps needs at least one MapSet")
    grid = tuple(sets[0].grid_size)
    for s in sets[1:]:
        if tuple(s.grid_size) != grid or s.num_images != sets[0].num_images:
            raise ValueError(f"{s.label}: maps on a {s.grid_size} grid of {s.num_images} images "
                             f"cannot be compared with {sets[0].label} "
                             f"({grid}, {sets[0].num_images})")
        if s.image_ids and sets[0].image_ids and list(s.image_ids) != list(sets[0].image_ids):
            raise ValueError(f"{s.label} and {sets[0].label} are maps of different images "
                             f"({s.image_ids} vs {sets[0].image_ids})")
    if reference is None:
        reference = next((i for i, s in enumerate(sets) if s.kind == "attention"), 0)
    ref = sets[reference]
    masks_np = next((s.masks for s in [ref, *sets] if s.masks is not None), None)
    masks = torch.from_numpy(masks_np) if masks_np is not None else None
    gh, gw = grid
    centre = [(gh // 2) * gw + gw // 2]
    nan = float("nan")
    rows = []
    for si, s in enumerate(sets):
        is_ref = si == reference
        t = lambda a: torch.from_numpy(np.asarray(a))
        n = len(s.layer_ids)
        entries = [("layer", int(s.layer_ids[i]), t(s.layers[i]), t(s.output_layers[i]),
                    (t(ref.layers[_aligned_layer(i, n, len(ref.layer_ids))]),
                     t(ref.output_layers[_aligned_layer(i, n, len(ref.layer_ids))])))
                   for i in range(n)]
        entries.append(("rollout", -1, t(s.rollout), t(s.output_rollout),
                        (t(ref.rollout), t(ref.output_rollout))))
        for kind, layer, maps, out, (rmaps, rout) in entries:
            row = dict(backbone=s.label, map=kind, layer=layer,
                       entropy=_nan_mean(entropy(maps)), mean_distance=_nan_mean(
                           mean_attention_distance(maps, grid)),
                       **_pointing_stats(out, masks, grid))
            row.update(corr=nan, corr_center=nan, corr_output=nan)
            if not is_ref:
                row.update(corr=_nan_mean(row_correlation(maps, rmaps, exclude_self=True)),
                           corr_center=_nan_mean(row_correlation(maps, rmaps, centre,
                                                                 exclude_self=True)),
                           corr_output=_nan_mean(pearson(out, rout)))
            rows.append(row)
        for method, amap in s.attributions.items():
            a = t(amap).double()
            p = a.flatten(1) / a.flatten(1).sum(-1, keepdim=True).clamp_min(1e-300)
            row = dict(backbone=s.label, map=method, layer=-1, entropy=_nan_mean(entropy(p)),
                       mean_distance=nan, **_pointing_stats(a, masks, grid),
                       corr=nan, corr_center=nan, corr_output=nan)
            if not is_ref and method in ref.attributions:
                row["corr_output"] = _nan_mean(pearson(a.flatten(1),
                                                       t(ref.attributions[method]).flatten(1)))
            rows.append(row)
        if s.erf is not None:
            e = t(s.erf).double()
            row = dict(backbone=s.label, map="erf", layer=-1,
                       entropy=float(entropy(e.flatten() / e.sum().clamp_min(1e-300))),
                       mean_distance=erf_mean_distance(e, s.patch_size), pointing=nan,
                       mask_energy=nan, mask_frac=nan, corr=nan, corr_center=nan, corr_output=nan)
            if not is_ref and ref.erf is not None and ref.erf.shape == s.erf.shape:
                row["corr_output"] = float(pearson(e.flatten(), t(ref.erf).double().flatten()))
            rows.append(row)
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def comparison_table(scores):
    """`compare_maps`' rows side by side: one row per (map, layer), a column per
    (metric, backbone) named ``"metric | backbone"``; columns with no number are left out."""
    metrics = [c for c in SCORE_COLUMNS if c not in ("backbone", "map", "layer")]
    backbones = list(dict.fromkeys(scores["backbone"]))
    wide = scores.set_index(["map", "layer", "backbone"])[metrics].unstack("backbone")
    cols = [(m, b) for m in metrics for b in backbones if (m, b) in wide.columns]
    wide = wide[cols]
    wide.columns = [f"{m} | {b}" for m, b in cols]
    wide = wide.dropna(axis=1, how="all").reset_index()
    order = {k: i for i, k in enumerate(dict.fromkeys(scores["map"]))}
    wide["_order"] = wide["map"].map(order)
    return wide.sort_values(["_order", "layer"]).drop(columns="_order").reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# saving into a run, loading back
# --------------------------------------------------------------------------------------------

def maps_dir(run_dir: str | os.PathLike) -> Path:
    """``runs/NAME/maps``: one ``step-<step>.npz`` per recorded step."""
    return Path(run_dir) / MAPS_DIR


_META_FIELDS = ("backbone", "kind", "grid_size", "patch_size", "num_prefix_tokens", "directions",
                "image_ids", "source", "step", "name")
_ARRAY_FIELDS = ("layer_ids", "layers", "output_layers", "rollout", "output_rollout",
                 "direction_maps", "erf", "images", "masks")


def save_maps(maps: MapSet, path: str | os.PathLike) -> Path:
    """Write a MapSet as one compressed ``.npz`` (temporary name, then ``os.replace``: a reader
    never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {f: getattr(maps, f) for f in _META_FIELDS}
    meta["grid_size"] = list(maps.grid_size)
    arrays = {f: getattr(maps, f) for f in _ARRAY_FIELDS if getattr(maps, f) is not None}
    arrays.update({f"attr__{k}": v for k, v in maps.attributions.items()})
    arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)
    return path


def _load_one(path: Path) -> MapSet:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta_json"]).decode())
        arrays = {f: z[f] for f in _ARRAY_FIELDS if f in z.files}
        attrs = {k[len("attr__"):]: z[k] for k in z.files if k.startswith("attr__")}
    meta["grid_size"] = tuple(meta["grid_size"])
    return MapSet(**meta, **arrays, attributions=attrs)


def load_maps(path: str | os.PathLike) -> list[MapSet]:
    """MapSets of a run (``runs/NAME`` or its ``maps/`` folder) sorted by step, or of one ``.npz``.
    Unreadable files are skipped with a logged warning; no maps: ``[]``."""
    p = Path(path)
    if p.is_file():
        return [_load_one(p)]
    folder = p if p.name == MAPS_DIR else maps_dir(p)
    if not folder.is_dir():
        return []
    found = []
    for f in folder.iterdir():
        m = _MAPS_FILE_RE.match(f.name)
        if m and f.is_file():
            try:
                found.append((int(m.group(1)), _load_one(f)))
            except (OSError, ValueError, KeyError, TypeError, EOFError,
                    zipfile.BadZipFile) as e:
                log.warning("%s: unreadable maps skipped (%s)", f, e)
    return [s for _, s in sorted(found, key=lambda x: x[0])]


def maps_for_report(run_dirs: Sequence[str | os.PathLike]):
    """What the report's "scan paths vs attention" section needs: ``(sets, scores, notes)`` with
    the latest MapSet of each run that has maps, `compare_maps` of them (each scored on its own,
    with a note, when they are not of the same images and grid), and notes for the page."""
    import pandas as pd

    sets, notes = [], []
    for r in run_dirs:
        found = load_maps(r)
        if found:
            sets.append(found[-1])
        else:
            notes.append(f"{Path(r).name}: no maps recorded")
    if not sets:
        return [], None, notes
    try:
        scores = compare_maps(sets)
    except ValueError as e:
        notes.append(f"not compared side by side: {e}")
        scores = pd.concat([compare_maps([s]) for s in sets], ignore_index=True)
    return sets, scores, notes


def record_maps(run_dir: str | os.PathLike, model: nn.Module, probe: ProbeImages, step: int,
                **kwargs) -> Path:
    """Compute the maps of `model` at `step` and write ``runs/NAME/maps/step-<step>.npz``; what
    the training harness calls at a few steps (rank 0 only). kwargs: those of `compute_maps`."""
    maps = compute_maps(model, probe, step=step, **kwargs)
    return save_maps(maps, maps_dir(run_dir) / f"step-{int(step):08d}.npz")


# --------------------------------------------------------------------------------------------
# `python -m diagnostics.maps`: time and peak memory of hidden_attention
# --------------------------------------------------------------------------------------------

def _bench(bsz: int = 1, dim: int = 384, n: int = 16, length: int = 1024, reduce="mean",
           repeats: int = 2) -> dict:
    import resource
    import time

    g = torch.Generator().manual_seed(0)
    delta = torch.randn(bsz, dim, length, generator=g)
    A = -torch.exp(torch.rand(dim, n, generator=g) * math.log(n))
    B = torch.randn(bsz, n, length, generator=g)
    C = torch.randn(bsz, n, length, generator=g)
    bias = torch.randn(dim, generator=g) * 0.5 - 3.0
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        m = hidden_attention(delta, A, B, C, delta_bias=bias, delta_softplus=True, reduce=reduce)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(B=bsz, D=dim, N=n, L=length, reduce=reduce, wall_s=min(wall), cpu_s=min(cpu),
                peak_rss_mb=round(peak), rss_increase_mb=round(peak - base),
                out_shape=tuple(m.shape), threads=torch.get_num_threads(),
                load_avg=os.getloadavg())


if __name__ == "__main__":  # pragma: no cover
    print(_bench())

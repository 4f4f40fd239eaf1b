"""What a probe step measures, as plain functions of tensors (no hooks, no I/O).

The recorder calls these on probe steps; the tests check each number against an independent
computation. Column names are those of the run format (docs/interfaces.md).

SSM layers are found by what they are, not by class name: any module with `A_log` and `dt_proj`.
Their scan inputs come from `module.scan_inputs(x)` when the module provides it (our SS2D), and
otherwise are rebuilt from parameters named as in mamba-ssm's `mamba_simple.Mamba` (`in_proj`,
`conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`), so the fused CUDA path, which hides its internals,
is probed by running our own scan on its parameters and inputs.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.scan import scan_state_norms

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
QUANTILE_NAMES = ("min", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "max")
# exp(A dt) below this: the state is wiped at every token ("memory erased each token").
ERASED_DECAY = 0.01
# exp(A dt) above this: the state barely forgets and the input dt*B*u barely enters.
FROZEN_DECAY = 0.99
# Points at which the state norm along the sequence is kept (ssm_state table).
STATE_CURVE_POINTS = 16


def is_ssm_module(module: nn.Module) -> bool:
    """An SSM layer is any module with `A_log` and `dt_proj` (mamba-ssm's Mamba, SS2D, a user's own)."""
    return hasattr(module, "A_log") and hasattr(module, "dt_proj")


def is_attention_module(module: nn.Module) -> bool:
    """Attention modules that can hand back their probabilities (see models/layers.py)."""
    return callable(getattr(module, "attention_probs", None))


def mamba_simple_scan_inputs(module: nn.Module, x: torch.Tensor) -> dict:
    """Scan inputs of a module written as mamba-ssm's `mamba_simple.Mamba`, from its parameters.

    x: (B, L, d_model), what the module's forward receives. Mirrors the slow path of
    `Mamba.forward`: in_proj -> (x, z); causal depthwise conv1d + SiLU; x_proj -> (dt, B, C);
    delta = dt_proj.weight @ dt, with dt_proj.bias as the delta bias, softplus inside the scan.
    """
    length = x.shape[1]
    xz = module.in_proj(x).transpose(1, 2)                    # (B, 2*d_inner, L)
    xs, _ = xz.chunk(2, dim=1)                                # (B, d_inner, L)
    xs = F.silu(module.conv1d(xs)[..., :length])              # causal: drop the right padding
    d_state = module.A_log.shape[-1]
    dt_rank = module.dt_proj.weight.shape[1]
    x_dbl = module.x_proj(xs.transpose(1, 2))                 # (B, L, dt_rank + 2N)
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)
    delta = (dt @ module.dt_proj.weight.t()).transpose(1, 2)  # (B, d_inner, L)
    return dict(
        u=xs, delta=delta, delta_bias=module.dt_proj.bias.float(),
        A=-torch.exp(module.A_log.float()),                   # (d_inner, N)
        B=B.transpose(1, 2).unsqueeze(1), C=C.transpose(1, 2).unsqueeze(1),   # (B, 1, N, L)
        D=module.D.float(), directions=["fwd"], A_log=module.A_log.float(),
    )


def scan_inputs(module: nn.Module, x: torch.Tensor) -> dict:
    """The module's scan inputs, stacked direction-major: channels k*D:(k+1)*D are direction k."""
    if callable(getattr(module, "scan_inputs", None)):
        return module.scan_inputs(x)
    if hasattr(module, "A_b_log"):                # mamba-ssm's bimamba v2 (Vim's own Mamba)
        from models.vim import bimamba_v2_scan_inputs
        return bimamba_v2_scan_inputs(module, x)[0]
    needed = ("in_proj", "conv1d", "x_proj", "dt_proj", "A_log", "D")
    missing = [n for n in needed if not hasattr(module, n)]
    if missing:
        raise TypeError(f"{type(module).__name__} has A_log and dt_proj but neither scan_inputs() "
                        f"nor mamba-ssm's layout (missing {', '.join(missing)})")
    return mamba_simple_scan_inputs(module, x)


def stacked_A_log(module: nn.Module) -> torch.Tensor:
    """A_log of every scan direction, stacked as `scan_inputs`' A_log: (K*D, N) fp32 on the CPU.
    mamba-ssm's bimamba v2 (Vim) keeps its backward direction's in `A_b_log`."""
    parts = [module.A_log] + ([module.A_b_log] if hasattr(module, "A_b_log") else [])
    return torch.cat([p.detach().float().cpu().reshape(-1, p.shape[-1]) for p in parts])


def _quantiles(t: torch.Tensor, prefix: str) -> dict:
    # numpy selects (introselect) instead of sorting: ~10x faster than torch.quantile on the
    # millions of (batch, channel, token, state) values of A·dt; the same "linear" definition.
    flat = t.detach().reshape(-1).float().cpu().numpy()
    q = np.quantile(flat, QUANTILES)
    return {f"{prefix}_{n}": float(v) for n, v in zip(QUANTILE_NAMES, q)}


def _curve_points(curve: torch.Tensor) -> list[tuple[float, float]]:
    """Sample a (L,) curve at STATE_CURVE_POINTS evenly spaced positions in [0, 1]."""
    length = curve.numel()
    idx = torch.linspace(0, length - 1, min(STATE_CURVE_POINTS, length)).round().long()
    return [(float(i) / max(length - 1, 1), float(curve[i])) for i in idx]


def _drift(a_log: torch.Tensor, init: torch.Tensor | None, kd: int, ch: slice) -> float:
    """||A_log - A_log at step 0|| / ||A_log at step 0|| for one direction's channels."""
    if init is None:
        return float("nan")
    ref = init.to(a_log.device).reshape(kd, -1)[ch]
    return float((a_log - ref).norm() / ref.norm().clamp_min(1e-12))


@torch.no_grad()
def ssm_stats(inputs: dict, A_log_init: torch.Tensor | None = None) -> list[dict]:
    """Per-direction statistics of one SSM layer from its scan inputs (one dict per direction).

    Also returns, under the key ``_state_curve``, the state norm along the sequence.
    """
    u, delta, A, B, C = (inputs[k].float() for k in ("u", "delta", "A", "B", "C"))
    bias = inputs.get("delta_bias")
    directions = list(inputs["directions"])
    k_dirs = len(directions)
    bsz, kd, length = u.shape
    dim = kd // k_dirs
    # Per-channel state norms ||h_t||_2 over N, (B, K*D, L), by the fast path (tested against
    # the reference scan's own state norms).
    norms = scan_state_norms(u, delta, A, B, C, delta_bias=bias, delta_softplus=True)
    dt = F.softplus(delta + (bias.float()[:, None] if bias is not None else 0.0))  # (B, K*D, L)
    A_log = inputs["A_log"].float().reshape(kd, -1)
    D = inputs["D"].float().reshape(kd)
    rows = []
    for k, name in enumerate(directions):
        ch = slice(k * dim, (k + 1) * dim)
        dt_k, A_k = dt[:, ch], A[ch]                                   # (B, D, L), (D, N)
        adt = dt_k.unsqueeze(-1) * A_k[None, :, None, :]               # A·dt (B, D, L, N)
        decay = torch.exp(adt)
        mean_dt = dt_k.mean(dim=(0, 2))                                # (D,)
        # Tokens for the state to decay by 1/e at the channel's mean step size.
        mem = 1.0 / (A_k.abs() * mean_dt[:, None]).clamp_min(1e-12)   # (D, N)
        sel = (dt_k.std(dim=-1, unbiased=False) / dt_k.mean(dim=-1).clamp_min(1e-12)).mean()
        # Full state norm ||h_t|| over (D, N), averaged over the batch: (L,)
        curve = norms[:, ch].pow(2).sum(dim=1).sqrt().mean(dim=0)
        a_log = A_log[ch]
        row = {"direction": name}
        row.update(_quantiles(dt_k, "dt"))
        row.update(_quantiles(adt, "adt"))
        row.update(
            frac_erased=float((decay < ERASED_DECAY).float().mean()),
            frac_frozen=float((decay > FROZEN_DECAY).float().mean()),
            mem_len=float(mem.flatten().quantile(0.5)),   # the midpoint median, as numpy
            selectivity=float(sel),
            state_norm_first=float(curve[0]), state_norm_mid=float(curve[length // 2]),
            state_norm_last=float(curve[-1]), state_norm_max=float(curve.max()),
            alog_mean=float(a_log.mean()), alog_std=float(a_log.std(unbiased=False)),
            alog_min=float(a_log.min()), alog_max=float(a_log.max()),
            alog_drift=_drift(a_log, A_log_init, kd, ch),
            d_mean=float(D[ch].mean()), d_std=float(D[ch].std(unbiased=False)),
            _state_curve=_curve_points(curve),
        )
        rows.append(row)
    return rows


@torch.no_grad()
def attention_stats(probs: torch.Tensor, logit_max: torch.Tensor | float,
                    grid_size: tuple[int, int], num_prefix_tokens: int) -> dict:
    """Entropy, mean attention distance and max logit of one attention layer.

    probs: (B, heads, T, T), rows sum to 1; T = num_prefix_tokens + gh*gw.
    entropy: nats, mean over batch, heads and query tokens (all tokens, the cls token included).
    mean_distance: patches; for patch queries, the expected Euclidean distance on the patch grid
    to the patch keys, with the attention renormalised over patch keys (the cls token has no
    position), averaged over batch, heads and queries (as in ViT's Fig. 7 / Raghu et al.).
    """
    p = probs.float()
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1).mean()
    gh, gw = grid_size
    pp = p[..., num_prefix_tokens:, num_prefix_tokens:]                 # (B, H, P, P)
    pp = pp / pp.sum(-1, keepdim=True).clamp_min(1e-30)
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=-1).float()   # (P, 2)
    dist = torch.cdist(pos, pos)                                             # (P, P)
    mean_distance = (pp * dist).sum(-1).mean()
    return dict(entropy=float(entropy), mean_distance=float(mean_distance),
                logit_max=float(logit_max))

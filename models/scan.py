"""The selective scan of Mamba (S6), behind one function with three backends.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t        # (B, D, N) per step
    y_t = C_t . h_t + D * u_t,   then   y_t * silu(z_t)

`selective_scan_fn` takes mamba-ssm's arguments with mamba-ssm's shapes, so the fused CUDA kernel
and our paths are interchangeable:

    u, delta   (B, D, L)       input and step size (before `delta_bias` / softplus)
    A          (D, N)          real; Mamba uses A = -exp(A_log)
    B, C       (B, N, L)       shared by every channel, or
               (B, G, N, L)    G groups, channel d uses group d // (D // G) (VMamba runs its four
                               scan directions in one call this way)
    D          (D,)            skip connection
    z          (B, D, L)       gate
    delta_bias (D,)

Backends:
- ``reference``: the recurrence written out, one step at a time. Readable, the truth, and able to
  hand back the L2 norm of every hidden state (what the recorder needs on probe steps).
- ``fast``: pure PyTorch with a hand-written backward (`_ScanFn`). The elementwise work is done
  for all steps at once; only the two recurrences (forward over h, backward over dL/dh) loop over
  time, in place, on contiguous (B, D, N) slices. Exact to fp32 rounding.
- ``cuda``: mamba-ssm's fused kernel, when `mamba_ssm` imports and the tensors are on CUDA.
- ``auto``: ``cuda`` when possible, else ``fast``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "fast", "cuda")

try:  # optional: needs a CUDA build of mamba-ssm (pip install 'mambascope[cuda]')
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_cuda_scan
except Exception:  # ImportError, or the compiled extension failing to load on a CPU machine
    _mamba_cuda_scan = None

_logged_paths: set[str] = set()


def cuda_kernel_available() -> bool:
    """True when mamba-ssm's fused kernel imported and a CUDA device is present."""
    return _mamba_cuda_scan is not None and torch.cuda.is_available()


def resolve_backend(backend: str = "auto", device: torch.device | str | None = None) -> str:
    """The backend `selective_scan_fn` takes for tensors on `device` (what `diagnose models` shows)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if backend == "auto":
        return "cuda" if (on_cuda and cuda_kernel_available()) else "fast"
    if backend == "cuda" and not (on_cuda and cuda_kernel_available()):
        raise ValueError("scan backend 'cuda' needs mamba-ssm's CUDA kernel and CUDA tensors "
                         "(pip install 'mambascope[cuda]' on a GPU machine)")
    return backend


def _check_inputs(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise ValueError naming the expected shapes (mamba-ssm's) when the inputs disagree."""
    expected = ("expected u, delta (B, D, L); A (D, N); B, C (B, N, L) or (B, G, N, L); "
                "D, delta_bias (D,); z (B, D, L)")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor; {expected}")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u {tuple(u.shape)} and delta {tuple(delta.shape)}: {expected}")
    bsz, dim, length = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A {tuple(A.shape)} for D={dim}: {expected}")
    if A.is_complex():
        raise ValueError("complex A is not supported: Vision Mamba uses real A = -exp(A_log)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            ok = tuple(t.shape) == (bsz, n, length)
        elif t.dim() == 4:
            ok = t.shape[0] == bsz and t.shape[2:] == (n, length) and dim % t.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(f"{name} {tuple(t.shape)} for B={bsz}, D={dim}, N={n}, L={length}: {expected}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (dim,):
            raise ValueError(f"{name} {tuple(t.shape)} for D={dim}: {expected}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z {tuple(z.shape)} for u {tuple(u.shape)}: {expected}")
    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                    ("delta_bias", delta_bias)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name} has dtype {t.dtype}; the scan needs floating-point tensors")


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    # mamba-ssm computes in fp32 whatever the input (fp16/bf16 states lose the long memory);
    # we keep fp64 when asked, for tests and for the hidden-attention maps.
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _grouped(t: torch.Tensor) -> torch.Tensor:
    """(B, N, L) -> (B, 1, N, L); (B, G, N, L) unchanged."""
    return t.unsqueeze(1) if t.dim() == 3 else t


def _prepare_delta(delta, delta_bias, delta_softplus, dtype):
    delta = delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y, u, D, z, dtype_in, dtype):
    """Skip connection and gate, shared by every backend: y + D*u, then y * silu(z)."""
    if D is not None:
        y = y + u.to(dtype) * D.to(dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(dtype_in)


# --------------------------------------------------------------------------------------------
# reference
# --------------------------------------------------------------------------------------------

def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, return_state_norms=False):
    """The recurrence, one step at a time: the definition every other path is tested against.

    With ``return_state_norms=True`` it also returns ``||h_t||_2`` over the state dimension,
    ``(B, D, L)``, computed in the same pass. Returns ``y``, then ``last_state`` and
    ``state_norms`` when asked, in that order.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in, dtype = u.dtype, _compute_dtype(u)
    bsz, dim, length = u.shape
    n = A.shape[1]
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    A = A.to(dtype)
    groups = _grouped(B).shape[1]
    # Per-channel B and C: (B, G, N, L) -> (B, D, N, L), channel d reads group d // (D // G).
    B_ch = _grouped(B).to(dtype).repeat_interleave(dim // groups, dim=1)
    C_ch = _grouped(C).to(dtype).repeat_interleave(dim // groups, dim=1)
    u_c = u.to(dtype)

    h = u_c.new_zeros(bsz, dim, n)                      # (B, D, N)
    ys, norms = [], []
    # unbind(-1) instead of [..., t]: indexing inside the loop makes autograd's backward ~20x
    # slower on the CPU (measured, see shared/GPU.md).
    for d_t, u_t, b_t, c_t in zip(delta.unbind(-1), u_c.unbind(-1), B_ch.unbind(-1), C_ch.unbind(-1)):
        decay = torch.exp(d_t[:, :, None] * A)          # exp(delta_t A)      (B, D, N)
        h = decay * h + (d_t * u_t)[:, :, None] * b_t   # + delta_t B_t u_t   (B, D, N)
        ys.append((h * c_t).sum(-1))                    # C_t . h_t           (B, D)
        if return_state_norms:
            norms.append(h.detach().norm(dim=-1))
    y = _finish(torch.stack(ys, dim=-1), u, D, z, dtype_in, dtype)
    out = [y]
    if return_last_state:
        out.append(h.to(dtype_in))
    if return_state_norms:
        out.append(torch.stack(norms, dim=-1))
    return out[0] if len(out) == 1 else tuple(out)


# --------------------------------------------------------------------------------------------
# fast (CPU): vectorised elementwise work, in-place recurrences, hand-written backward
# --------------------------------------------------------------------------------------------

def _to_steps(B_or_C: torch.Tensor) -> torch.Tensor:
    """(B, G, N, L) -> (L, B, G, 1, N): time-major so every step is a contiguous block."""
    return B_or_C.permute(3, 0, 1, 2).unsqueeze(3).contiguous()


def _states(u, delta, A, B, C) -> torch.Tensor:
    """Every hidden state, time-major: h (L, B, D, N), for softplus'd delta and grouped B."""
    bsz, dim, length = u.shape
    n, groups = A.shape[1], B.shape[1]
    d_t = delta.permute(2, 0, 1)                         # (L, B, D)
    Bs = _to_steps(B)                                    # (L, B, G, 1, N)
    # h starts as delta_t u_t B_t for every t, then the recurrence adds the decayed past in
    # place: h_t += exp(delta_t A) * h_{t-1}.
    h = ((d_t * u.permute(2, 0, 1)).reshape(length, bsz, groups, dim // groups, 1) * Bs)
    h = h.reshape(length, bsz, dim, n)
    decay = torch.exp(d_t.unsqueeze(-1) * A)             # (L, B, D, N)
    for t in range(1, length):
        h[t].addcmul_(decay[t], h[t - 1])
    return h


@torch.no_grad()
def scan_state_norms(u, delta, A, B, C, delta_bias=None, delta_softplus=False) -> torch.Tensor:
    """||h_t||_2 over the state dimension, (B, D, L), by the fast path (no graph kept).

    What the recorder's probes use; `selective_scan_ref(..., return_state_norms=True)` is its
    reference and the tests hold the two together.
    """
    _check_inputs(u, delta, A, B, C, None, None, delta_bias)
    dtype = _compute_dtype(u)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    h = _states(u.to(dtype), delta, A.to(dtype), _grouped(B).to(dtype), _grouped(C).to(dtype))
    return h.norm(dim=-1).permute(1, 2, 0)


class _ScanFn(torch.autograd.Function):
    """y_ssm = C . h (no D term, no gate) for softplus'd delta; states kept time-major.

    Layout: every (L, B, D, N) buffer is time-major, so the recurrences touch contiguous
    (B, D, N) slices. The forward saves one such buffer (all states h); the backward recomputes
    exp(delta A) rather than storing it.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        # u, delta (B, D, L); A (D, N); B, C (B, G, N, L); all in the compute dtype.
        bsz, dim, length = u.shape
        n, groups = A.shape[1], B.shape[1]
        dg = dim // groups
        h = _states(u, delta, A, B, C)                   # (L, B, D, N)
        Cs = _to_steps(C)                                # (L, B, G, 1, N)
        # y[l, b, d] = sum_n h[l, b, d, n] C[b, g(d), n, l], as a batched matmul (no LBDN temp).
        y = torch.matmul(h.view(length, bsz, groups, dg, n), Cs.transpose(-1, -2))
        y = y.view(length, bsz, dim).permute(1, 2, 0)    # (B, D, L)
        ctx.save_for_backward(u, delta, A, B, C, h)
        return y, h[-1]

    @staticmethod
    def backward(ctx, gy, g_last):
        u, delta, A, B, C, h = ctx.saved_tensors
        bsz, dim, length = u.shape
        n, groups = A.shape[1], B.shape[1]
        dg = dim // groups
        u_t = u.permute(2, 0, 1)                         # (L, B, D)
        d_t = delta.permute(2, 0, 1)                     # (L, B, D)
        Bs = _to_steps(B)                                # (L, B, G, 1, N)
        Cs = _to_steps(C)                                # (L, B, G, 1, N)
        gy_t = gy.permute(2, 0, 1).reshape(length, bsz, groups, 1, dg)   # (L, B, G, 1, Dg)

        # dL/dh_t = C_t gy_t + exp(delta_{t+1} A) dL/dh_{t+1}   (reverse recurrence, in place)
        gh = (gy_t.transpose(-1, -2) * Cs).reshape(length, bsz, dim, n)  # (L, B, D, N)
        if g_last is not None:
            gh[-1] += g_last
        decay = torch.exp(d_t.unsqueeze(-1) * A)         # (L, B, D, N)
        for t in range(length - 2, -1, -1):
            gh[t].addcmul_(decay[t + 1], gh[t + 1])

        # C: dL/dC[b, g, n, l] = sum_{d in g} gy h
        gC = torch.matmul(gy_t, h.view(length, bsz, groups, dg, n))      # (L, B, G, 1, N)
        # Input term delta_t u_t B_t: dL/d(delta u) and dL/dB.
        du_in = (d_t * u_t).reshape(length, bsz, groups, 1, dg)
        gB = torch.matmul(du_in, gh.view(length, bsz, groups, dg, n))    # (L, B, G, 1, N)
        g_du = torch.matmul(gh.view(length, bsz, groups, dg, n), Bs.transpose(-1, -2))
        g_du = g_du.view(length, bsz, dim)               # dL/d(delta_t u_t)  (L, B, D)

        # Decay term: dL/d(delta_t A) = dL/dh_t * h_{t-1} * exp(delta_t A), h_{-1} = 0.
        # Reuse `decay` as the buffer.
        decay[0].zero_()
        decay[1:].mul_(h[:-1])
        decay.mul_(gh)                                   # (L, B, D, N)
        gA = torch.einsum("lbdn,lbd->dn", decay, d_t)
        g_delta = torch.einsum("lbdn,dn->lbd", decay, A) + g_du * u_t
        g_u = g_du * d_t

        to_bdl = lambda t: t.permute(1, 2, 0)            # (L, B, D) -> (B, D, L)
        to_bgnl = lambda t: t.squeeze(3).permute(1, 2, 3, 0)  # (L, B, G, 1, N) -> (B, G, N, L)
        return to_bdl(g_u), to_bdl(g_delta), gA, to_bgnl(gB), to_bgnl(gC)


def _scan_fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    dtype_in, dtype = u.dtype, _compute_dtype(u)
    delta = _prepare_delta(delta, delta_bias, delta_softplus, dtype)
    # The hand-written backward assumes every buffer has the compute dtype: keep autocast from
    # lowering the matmuls inside (mamba-ssm's kernel also computes the scan in fp32).
    with torch.autocast(u.device.type, enabled=False):
        y, last = _ScanFn.apply(u.to(dtype), delta, A.to(dtype),
                                _grouped(B).to(dtype), _grouped(C).to(dtype))
    y = _finish(y, u, D, z, dtype_in, dtype)
    return (y, last.to(dtype_in)) if return_last_state else y


# --------------------------------------------------------------------------------------------
# the one entry point
# --------------------------------------------------------------------------------------------

def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, *, backend="auto"):
    """Mamba's selective scan with mamba-ssm's signature; see the module docstring.

    Returns ``y (B, D, L)``, or ``(y, last_state (B, D, N))`` with ``return_last_state``.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    path = resolve_backend(backend, u.device)
    if path not in _logged_paths:
        _logged_paths.add(path)
        log.info("selective scan: %s backend", path)
    if path == "reference":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                                  return_last_state)
    if path == "cuda":
        # The kernel wants contiguous inputs; it computes in fp32 as the other paths do.
        args = [t.contiguous() if t is not None else None for t in (u, delta, A, B, C, D, z)]
        return _mamba_cuda_scan(*args, delta_bias=delta_bias, delta_softplus=delta_softplus,
                                return_last_state=return_last_state)
    return _scan_fast(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)

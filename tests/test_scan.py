"""The selective scan: `fast` against `reference`, and `reference` against a hand-worked case."""

import math

import pytest
import torch

import models.scan as scan
from models.scan import resolve_backend, scan_state_norms, selective_scan_fn, selective_scan_ref

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def _inputs(dtype, groups, bsz=2, dim=4, length=9, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    bc_shape = (bsz, n, length) if groups is None else (bsz, groups, n, length)
    return dict(
        u=r(bsz, dim, length), delta=r(bsz, dim, length) * 0.5,
        A=-torch.rand(dim, n, generator=g, dtype=dtype) - 0.1,
        B=r(*bc_shape), C=r(*bc_shape), D=r(dim), z=r(bsz, dim, length), delta_bias=r(dim) * 0.1,
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [None, 1, 2])
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("optional", ["all", "none"])
def test_fast_matches_reference(dtype, groups, softplus, optional):
    x = _inputs(dtype, groups)
    if optional == "none":
        x.update(D=None, z=None, delta_bias=None)
    if not softplus:  # keep delta positive so the recurrence is a decay, as in real use
        x["delta"] = x["delta"].abs()
    leaves = {k: v.requires_grad_() for k, v in x.items() if v is not None}
    weights = torch.linspace(-1, 1, 9, dtype=dtype)  # a non-uniform upstream gradient
    results = {}
    for backend in ("reference", "fast"):
        y, last = selective_scan_fn(**x, delta_softplus=softplus, return_last_state=True,
                                    backend=backend)
        loss = (y * weights).sum() + (last ** 2).sum()
        results[backend] = (y, last, torch.autograd.grad(loss, list(leaves.values())))
    (y_r, last_r, g_r), (y_f, last_f, g_f) = results["reference"], results["fast"]
    assert y_f.dtype == dtype and y_f.shape == x["u"].shape
    torch.testing.assert_close(y_f, y_r, **TOL[dtype])
    torch.testing.assert_close(last_f, last_r, **TOL[dtype])
    for name, a, b in zip(leaves, g_f, g_r):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"grad of {name}: {m}")


# Block plans of the fast path (bsz=2, n=3: 6 elements per channel and step), each with its
# inputs: (step elements, block elements, groups, dim, length).
BLOCKINGS = {
    # chunks inside groups of 5 channels, 2 wanted -> 1 + 2 + 2 (not dividing the group); the
    # group boundary is a chunk boundary; 4 uneven time blocks (2, 3, 3, 3)
    "split-groups": (12, 36, 2, 10, 11),
    # chunks of whole groups: 3 groups of 2 channels, 2 groups per chunk -> (2 groups, 1 group)
    "whole-groups": (24, 96, 3, 6, 11),
    # B, C (B, N, L): 7 channels in chunks 2 + 2 + 3; one step per block
    "ungrouped-single-steps": (18, 1, None, 7, 6),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("blocking", list(BLOCKINGS))
def test_fast_blocked_matches_reference(dtype, blocking, monkeypatch):
    step, block, groups, dim, length = BLOCKINGS[blocking]
    monkeypatch.setattr(scan, "_STEP_ELEMS", step)
    monkeypatch.setattr(scan, "_BLOCK_ELEMS", block)
    chunks, blocks = scan._plan(2, dim, 3, groups or 1, length)
    assert len(chunks) > 1 and (len(blocks) > 1)
    x = _inputs(dtype, groups, dim=dim, length=length, seed=3)
    leaves = {k: v.requires_grad_() for k, v in x.items()}
    weights = torch.linspace(-1, 1, length, dtype=dtype)
    results = {}
    for backend in ("reference", "fast"):
        y, last = selective_scan_fn(**x, delta_softplus=True, return_last_state=True,
                                    backend=backend)
        loss = (y * weights).sum() + (last ** 2).sum()
        results[backend] = (y, last, torch.autograd.grad(loss, list(leaves.values())))
    (y_r, last_r, g_r), (y_f, last_f, g_f) = results["reference"], results["fast"]
    torch.testing.assert_close(y_f, y_r, **TOL[dtype])
    torch.testing.assert_close(last_f, last_r, **TOL[dtype])
    for name, a, b in zip(leaves, g_f, g_r):
        torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"grad of {name}: {m}")
    # The state norms take the same blocks.
    _, norms_r = selective_scan_ref(**x, delta_softplus=True, return_state_norms=True)
    norms_f = scan_state_norms(x["u"], x["delta"], x["A"], x["B"], x["C"],
                               delta_bias=x["delta_bias"], delta_softplus=True)
    torch.testing.assert_close(norms_f, norms_r.to(dtype), **TOL[dtype])


@pytest.mark.parametrize("blocking", list(BLOCKINGS))
def test_fast_blocked_gradcheck(blocking, monkeypatch):
    step, block, groups, dim, length = BLOCKINGS[blocking]
    monkeypatch.setattr(scan, "_STEP_ELEMS", step)
    monkeypatch.setattr(scan, "_BLOCK_ELEMS", block)
    x = _inputs(torch.float64, groups, dim=dim, length=length, seed=4)
    x.update(D=None, z=None)
    names = list(x)
    args = tuple(x[k].requires_grad_() if x[k] is not None else None for k in names)
    fn = lambda *a: selective_scan_fn(**dict(zip(names, a)), delta_softplus=True,
                                      return_last_state=True, backend="fast")
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("bsz, dim, n, groups, length", [
    (2, 10, 3, 2, 11), (2, 6, 3, 3, 11), (2, 7, 3, 1, 6), (16, 768, 16, 4, 32),
    (32, 384, 16, 1, 256), (1, 12, 4, 12, 5),
])
@pytest.mark.parametrize("step, block", [(1, 1), (12, 36), (24, 96), (65536, 1 << 20)])
def test_plan_covers_channels_and_steps_once(bsz, dim, n, groups, length, step, block,
                                              monkeypatch):
    monkeypatch.setattr(scan, "_STEP_ELEMS", step)
    monkeypatch.setattr(scan, "_BLOCK_ELEMS", block)
    chunks, blocks = scan._plan(bsz, dim, n, groups, length)
    dg = dim // groups
    assert [c[0] for c in chunks[1:]] == [c[1] for c in chunks[:-1]]
    assert chunks[0][0] == 0 and chunks[-1][1] == dim
    for d0, d1, g0, gc in chunks:
        assert d1 > d0 and (d1 - d0) % gc == 0
        if gc == 1:   # inside group g0
            assert g0 * dg <= d0 and d1 <= (g0 + 1) * dg
        else:         # whole groups g0 .. g0 + gc - 1
            assert (d0, d1) == (g0 * dg, (g0 + gc) * dg)
    assert blocks[0][0] == 0 and blocks[-1][1] == length
    assert all(t1 > t0 for t0, t1 in blocks)
    assert [b[0] for b in blocks[1:]] == [b[1] for b in blocks[:-1]]


def test_fast_gradcheck_fp64():
    x = _inputs(torch.float64, 2, bsz=1, dim=2, length=5, n=2)
    names = list(x)
    args = tuple(x[k].requires_grad_() for k in names)
    fn = lambda *a: selective_scan_fn(**dict(zip(names, a)), delta_softplus=True, backend="fast")
    assert torch.autograd.gradcheck(fn, args)


def test_reference_hand_worked_one_channel():
    # D = N = 1, A = -1, delta = ln 2 so that exp(delta A) = 1/2 at every step.
    # u = [1, 2, 3], B = [1, 1, 1], C = [2, 1, 0.5], D = 0.5:
    #   h1 = ln2*1                = 1.00 ln2      y1 = 2 * 1.00 ln2 + 0.5 = 2.000 ln2 + 0.5
    #   h2 = h1/2 + ln2*2         = 2.50 ln2      y2 = 1 * 2.50 ln2 + 1.0
    #   h3 = h2/2 + ln2*3         = 4.25 ln2      y3 = 0.5 * 4.25 ln2 + 1.5 = 2.125 ln2 + 1.5
    ln2 = math.log(2.0)
    f = lambda v: torch.tensor(v, dtype=torch.float64)
    y, last, norms = selective_scan_ref(
        f([[[1.0, 2.0, 3.0]]]), f([[[ln2] * 3]]), f([[-1.0]]), f([[[1.0, 1.0, 1.0]]]),
        f([[[2.0, 1.0, 0.5]]]), D=f([0.5]), return_last_state=True, return_state_norms=True)
    expected = f([[[2 * ln2 + 0.5, 2.5 * ln2 + 1.0, 2.125 * ln2 + 1.5]]])
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(last, f([[[4.25 * ln2]]]))
    torch.testing.assert_close(norms, f([[[1.0 * ln2, 2.5 * ln2, 4.25 * ln2]]]))
    # The gate multiplies by silu(z) = z * sigmoid(z).
    z = f([[[0.0, 1.0, -2.0]]])
    yz = selective_scan_ref(f([[[1.0, 2.0, 3.0]]]), f([[[ln2] * 3]]), f([[-1.0]]),
                            f([[[1.0, 1.0, 1.0]]]), f([[[2.0, 1.0, 0.5]]]), D=f([0.5]), z=z)
    torch.testing.assert_close(yz, expected * z * torch.sigmoid(z))


def test_state_norms_match_explicit_states():
    x = _inputs(torch.float64, 2, length=6)
    _, norms = selective_scan_ref(**x, delta_softplus=True, return_state_norms=True)
    # Independent: run the scan on prefixes and take the last state of each.
    for t in range(6):
        pre = {k: (v[..., : t + 1] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
        _, last = selective_scan_fn(**pre, delta_softplus=True, return_last_state=True,
                                    backend="fast")
        torch.testing.assert_close(norms[..., t], last.norm(dim=-1))


@pytest.mark.parametrize("groups", [None, 2])
def test_fast_state_norms_match_reference(groups):
    x = _inputs(torch.float64, groups, length=11)
    _, ref = selective_scan_ref(**x, delta_softplus=True, return_state_norms=True)
    fast = scan_state_norms(x["u"], x["delta"], x["A"], x["B"], x["C"],
                            delta_bias=x["delta_bias"], delta_softplus=True)
    torch.testing.assert_close(fast, ref, atol=1e-12, rtol=1e-10)


def test_low_precision_inputs_computed_in_fp32():
    x = _inputs(torch.float32, None)
    y32 = selective_scan_fn(**x, delta_softplus=True, backend="fast")
    y16 = selective_scan_fn(**{k: v.bfloat16() for k, v in x.items()}, delta_softplus=True,
                            backend="fast")
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("bad, match", [
    (dict(u=torch.randn(2, 4)), "u"),
    (dict(A=torch.randn(5, 3)), "A"),
    (dict(B=torch.randn(2, 3, 3, 9)), "B"),     # 4 channels not divisible into 3 groups
    (dict(C=torch.randn(2, 2, 9)), "C"),
    (dict(D=torch.randn(3)), "D"),
    (dict(z=torch.randn(2, 4, 8)), "z"),
    (dict(u=torch.ones(2, 4, 9, dtype=torch.long)), "u"),
])
def test_bad_shapes_raise_value_error(bad, match):
    x = _inputs(torch.float32, None)
    x.update(bad)
    with pytest.raises(ValueError, match=match):
        selective_scan_fn(**x)


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "fast"
    assert resolve_backend("reference") == "reference"
    with pytest.raises(ValueError, match="unknown scan backend"):
        resolve_backend("triton")
    with pytest.raises(ValueError, match="cuda"):
        resolve_backend("cuda", "cpu")

"""Benchmark of the scan backends, measured side by side in one run.

    python -m models.bench_scan [--lengths 256 1024] [--repeats 3] [--backends mamba_ref reference fast]
    python -m models.bench_scan --batch 16 --dim 768 --groups 4 --lengths 32 --threads 1

For B=32, D=384, N=16 (a VMamba-S layer) and each sequence length: forward+backward time
(median of `--repeats`) and peak memory of each backend, against a loop written the way
mamba-ssm's `selective_scan_ref` is written (precomputed exp(delta A) and delta B u for every
step, `[:, :, i]` indexing per step). Every measurement runs in its own subprocess so that peak
memory (the growth of the process's max RSS over the inputs) belongs to that backend alone.
Outputs and input gradients are compared with the mamba-ssm-style loop. ``--groups G`` gives
B and C the grouped shape (B, G, N, L) (VMamba's four directions in one call: G=4; the
second command is one layer of the CPU demo's MAMBA-V2-T)."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from models.scan import selective_scan_fn


def mamba_ssm_style_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """mamba-ssm's `selective_scan_ref` as published (real A, B/C of shape (B, N, L) or
    (B, G, N, L)), for comparison."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    if B.dim() == 4:   # (B, G, N, L) -> one (N, L) per channel, as mamba-ssm's `repeat`
        B = B.repeat_interleave(dim // B.shape[1], dim=1)
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if B.dim() == 3:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B.float(), u)
    else:
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B.float(), u)
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if C.dim() == 3:
            ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i].float()))
        else:
            ys.append(torch.einsum("bdn,bdn->bd", x, C[:, :, :, i].float()))
    y = torch.stack(ys, dim=2)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    return out.to(dtype_in)


def make_inputs(batch, dim, n, length, seed=0, groups=None):
    g = torch.Generator().manual_seed(seed)
    bc = (batch, n, length) if groups is None else (batch, groups, n, length)
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5 - 2.0
    A = -torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(dim, 1))
    B = torch.randn(*bc, generator=g)
    C = torch.randn(*bc, generator=g)
    D = torch.ones(dim)
    z = torch.randn(batch, dim, length, generator=g)
    bias = torch.randn(dim, generator=g) * 0.1
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, z, bias)]


def run_once(backend, inputs):
    u, delta, A, B, C, D, z, bias = inputs
    if backend == "mamba_ref":
        y = mamba_ssm_style_ref(u, delta, A, B, C, D, z, bias, True)
    else:
        y = selective_scan_fn(u, delta, A, B, C, D, z, bias, True, backend=backend)
    grads = torch.autograd.grad(y.sum(), inputs)
    return y.detach(), grads


def child(backend, batch, dim, n, length, repeats, groups=None):
    """Runs in a subprocess: prints one JSON line with time, peak memory and a checksum file."""
    torch.manual_seed(0)
    inputs = make_inputs(batch, dim, n, length, groups=groups)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y, grads = run_once(backend, inputs)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base   # KiB on Linux
    out = {"time_s": sorted(times)[len(times) // 2], "peak_mb": peak / 1024}
    torch.save({"y": y, "grads": grads}, f"/tmp/_bench_scan_{backend}_{length}.pt")
    print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--groups", type=int, default=None,
                   help="B, C of shape (B, G, N, L) (default: (B, N, L))")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads in every measurement (default: torch's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backends", nargs="+", default=["mamba_ref", "reference", "fast"])
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.child:
        child(a.child[0], a.batch, a.dim, a.d_state, int(a.child[1]), a.repeats, a.groups)
        return 0
    print(f"selective scan, forward+backward, B={a.batch} D={a.dim} N={a.d_state} G={a.groups}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {a.repeats}")
    print(f"{'L':>6} {'backend':>10} {'time s':>8} {'peak MB':>9} {'speed-up':>9} {'mem ratio':>9} "
          f"{'max|dy|':>9} {'max rel dgrad':>13}")
    for length in a.lengths:
        res = {}
        for be in a.backends:
            cmd = [sys.executable, "-m", "models.bench_scan", "--child", be, str(length),
                   "--batch", str(a.batch), "--dim", str(a.dim), "--d-state", str(a.d_state),
                   "--repeats", str(a.repeats)]
            cmd += ["--groups", str(a.groups)] if a.groups else []
            cmd += ["--threads", str(a.threads)] if a.threads else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res[be] = json.loads(out.stdout.strip().splitlines()[-1])
        base = res.get("mamba_ref")
        ref = torch.load(f"/tmp/_bench_scan_{a.backends[0]}_{length}.pt", weights_only=True)
        for be in a.backends:
            r = res[be]
            got = torch.load(f"/tmp/_bench_scan_{be}_{length}.pt", weights_only=True)
            dy = (got["y"] - ref["y"]).abs().max().item()
            dg = max(((g - h).abs().max() / h.abs().max().clamp_min(1e-12)).item()
                     for g, h in zip(got["grads"], ref["grads"]))
            speed = base["time_s"] / r["time_s"] if base else float("nan")
            mem = r["peak_mb"] / base["peak_mb"] if base else float("nan")
            print(f"{length:>6} {be:>10} {r['time_s']:>8.3f} {r['peak_mb']:>9.0f} {speed:>8.2f}x "
                  f"{mem:>9.2f} {dy:>9.1e} {dg:>13.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

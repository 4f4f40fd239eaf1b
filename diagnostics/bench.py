"""`diagnose bench`: what the seed claims and what the toolkit costs, measured in one run.

    diagnose bench [--device cpu|cuda] [--quick] [--out reports/bench.html] [--markdown [PATH]]

Four sections, each a plain function returning a pandas DataFrame (the tests call them directly):

1. `bench_scan`: forward+backward time and peak memory of the scan backends (`reference`,
   `fast`, and on CUDA mamba-ssm's fused kernel `cuda`) against a loop written as mamba-ssm's
   `selective_scan_ref` is (`mamba_ref`), with the agreement of outputs and input gradients.
2. `bench_resolution` (+ `fit_slopes`): throughput and peak memory of the backbones at growing
   image sizes, and the log-log slope of time and memory against the number of tokens: the
   seed's "linear complexity" claim put to the test.
3. `bench_recorder`: training steps/s without and with the Recorder at several `probe_every`.
4. `bench_load`: time to load a 10k-step x 24-layer run, and to build its report.

Every time and memory measurement of sections 1 and 2 runs in a fresh process forked from a
clean server process (multiprocessing's "forkserver": torch is imported once, no computation
ran in it), so that its peak memory belongs to that measurement alone: on the CPU the growth of
the process's peak RSS (the kernel's high-water mark, reset through /proc/self/clear_refs where
allowed, else ru_maxrss), on CUDA `torch.cuda.max_memory_allocated`, over the timed runs and
above what the process held after an untimed warm-up run (first-call costs excluded, freed heap
memory handed back to the OS first).

Times are medians of a few runs after the warm-up run; a measurement stops early once its time
budget is spent (a warm-up longer than the budget is then the only, timed, run, and its memory
includes first-call costs; the `runs` and `note` columns say so). The load average heads every
output: on a shared machine the times are inflated, ratios measured side by side less so, and
torch's two threads on two busy cores are far slower than one (`--threads 1`).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import html
import logging
import math
import multiprocessing
import os
import platform
import resource
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SECTIONS = ("scan", "resolution", "recorder", "load")
PROBE_EVERY = (1, 10, 50, 200)
RECORDER_TARGET = 1.05       # issue 9: <= 1.05x overhead at probe_every=50
SCAN_TARGET = 3.0            # issue 9: `fast` >= 3x over the mamba-ssm-style loop on the CPU
# Square images, patch 16: 64, 144, 256, 576, 1024 tokens (and 2304 on CUDA).
IMAGE_SIZES = ((128, 128), (192, 192), (256, 256), (384, 384), (512, 512))

ProgressFn = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------------------------
# settings: what the full and the quick bench measure
# --------------------------------------------------------------------------------------------

def settings(device: str = "cpu", quick: bool = False) -> dict[str, dict]:
    """Keyword arguments of each section function, for a full or a `--quick` run on `device`."""
    cuda = device == "cuda"
    if quick:
        return {
            "scan": dict(batch=4, dim=64, d_state=16, lengths=(48, 128), repeats=2, max_seconds=2),
            "resolution": dict(models=("VIT-T", "MAMBA-S-T", "MAMBA-V2-T"),
                               image_sizes=IMAGE_SIZES[:3], batch=1, repeats=2, max_seconds=2),
            "recorder": dict(backbone="MAMBA-V2-T", image_size=(32, 16), patch_size=8, batch=2,
                             steps=50, rounds=1),
            "load": dict(steps=2_000, layers=24, repeats=1),
        }
    return {
        "scan": dict(batch=32, dim=384, d_state=16,
                     lengths=(196, 1024, 4096) if cuda else (196, 1024), repeats=3, max_seconds=60),
        "resolution": dict(models=("VIT-S", "MAMBA-S", "MAMBA-V2"),
                           image_sizes=IMAGE_SIZES + (((768, 768),) if cuda else ()),
                           # MAMBA-V2's fast scan keeps every state, (L, B, 4*768, 16) fp32
                           # per layer: ~2.2 GB at 64 tokens x 8 images on the CPU, so 1024
                           # tokens needs a batch of 2 to fit in ~10 GB.
                           batch=8 if cuda else 2, repeats=3, max_seconds=60),
        "recorder": dict(backbone="MAMBA-V2-T", image_size=(64, 32), patch_size=8, batch=16,
                         steps=200, rounds=3),
        "load": dict(steps=10_000, layers=24, repeats=5),
    }


# --------------------------------------------------------------------------------------------
# measurement helpers: fresh processes, peak memory, timed runs
# --------------------------------------------------------------------------------------------

_CONTEXT = None


def _context():
    """A forkserver context whose server has imported torch and our models (no computation ran
    in it, so its children start clean and cheap: no second torch import per measurement)."""
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "models", "models.bench_scan", "diagnostics.bench"])
        _CONTEXT = ctx
    return _CONTEXT


def _child_entry(conn, fn_name: str, kwargs: dict, threads: int | None) -> None:
    try:
        if threads:
            import torch
            torch.set_num_threads(threads)
        conn.send(("ok", globals()[fn_name](**kwargs)))
    except BaseException as e:  # noqa: BLE001  the parent reports it as the row's note
        conn.send(("error", f"{type(e).__name__}: {' '.join(str(e).split())}"[:300]))
        log.debug("child failed:\n%s", traceback.format_exc())
    finally:
        conn.close()


def _in_fresh_process(fn_name: str, kwargs: dict, *, threads: int | None = None,
                      timeout_s: float = 3600.0) -> dict:
    """Run `fn_name(**kwargs)` (a function of this module) in a fresh process; its dict result,
    or {"error": one line} when it raised, died (out of memory) or ran past `timeout_s`."""
    ctx = _context()
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_entry, args=(send, fn_name, kwargs, threads), daemon=True)
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
            proc.kill()
            return {"error": f"no result after {timeout_s:.0f} s (killed)"}
        status, value = recv.recv()
    except EOFError:
        proc.join()
        return {"error": f"the measuring process died (exit status {proc.exitcode}; "
                         "out of memory?)"}
    finally:
        recv.close()
        proc.join(timeout=30)
    return value if status == "ok" else {"error": value}


def _read_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class _PeakMemory:
    """Peak memory growth, in MiB, from the moment it is created.

    CUDA: the allocator's peak over what was allocated at the start. CPU: the process's peak
    RSS over its RSS at the start; the kernel's high-water mark is reset to the current RSS by
    writing 5 to /proc/self/clear_refs (Linux); where that is refused, the growth of ru_maxrss
    (then memory above an earlier, higher peak goes uncounted).
    """

    def __init__(self, device):
        import torch
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.how = "torch.cuda.max_memory_allocated"
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm = _read_status_kib("VmHWM") is not None
        except OSError:
            self.hwm = False
        if self.hwm:
            self.base = _read_status_kib("VmRSS")
            self.how = "peak RSS (VmHWM after reset)"
        else:
            self.base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.how = "ru_maxrss growth"

    def growth_mb(self) -> float:
        import torch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
        peak = (_read_status_kib("VmHWM") if self.hwm
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return (peak - self.base) / 1024    # KiB on Linux


def _release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim), so that a later peak-RSS
    measurement sees what a run needs rather than what an earlier run left cached."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _timed_runs(fn: Callable[[], object], device, repeats: int, max_seconds: float):
    """Time `fn` and measure its peak memory.

    One untimed warm-up run (first-call costs: lazy library init, allocator growth), then up to
    `repeats` timed runs, stopping once `max_seconds` are spent in all; the peak memory is that
    of the timed runs, above what the process held after the warm-up (freed memory handed back
    first). A warm-up longer than `max_seconds` is the only run, timed, and its memory includes
    the first-call costs (the note says so). Returns (times, peak_mb, last result, note, how).
    """
    import torch
    cuda = torch.device(device).type == "cuda"

    def run():
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0, out

    cold = _PeakMemory(device)
    warm, result = run()
    if warm > max_seconds:
        return ([warm], cold.growth_mb(), result,
                f"one cold run only (over the {max_seconds:g} s budget): memory includes "
                "first-call costs", cold.how)
    result = None
    _release_free_memory()
    mem = _PeakMemory(device)
    times, spent = [], warm
    for _ in range(max(1, repeats)):
        result = None              # free the previous outputs before the next run
        t, result = run()
        times.append(t)
        spent += t
        if spent > max_seconds:
            break
    return times, mem.growth_mb(), result, "", mem.how


# --------------------------------------------------------------------------------------------
# 1. scan backends
# --------------------------------------------------------------------------------------------

def _scan_child(backend: str, batch: int, dim: int, d_state: int, length: int, device: str,
                repeats: int, max_seconds: float, save_to: str) -> dict:
    """In a fresh process: time and peak memory of one backend; outputs saved for agreement."""
    import torch

    from models.bench_scan import make_inputs, run_once

    torch.manual_seed(0)
    inputs = make_inputs(batch, dim, d_state, length)
    if device != "cpu":
        inputs = [t.detach().to(device).requires_grad_() for t in inputs]
    times, peak, (y, grads), note, how = _timed_runs(lambda: run_once(backend, inputs), device,
                                                     repeats, max_seconds)
    torch.save({"y": y.cpu(), "grads": [g.cpu() for g in grads]}, save_to)
    return {"time_s": statistics.median(times), "runs": len(times), "peak_mb": peak,
            "memory": how, "note": note}


def scan_backends(device: str = "cpu") -> list[str]:
    """The backends section 1 compares: the mamba-ssm-style loop first (the baseline)."""
    return ["mamba_ref", "reference", "fast"] + (["cuda"] if device == "cuda" else [])


def bench_scan(*, device: str = "cpu", batch: int = 32, dim: int = 384, d_state: int = 16,
               lengths: Sequence[int] = (196, 1024), backends: Sequence[str] | None = None,
               repeats: int = 3, max_seconds: float = 60.0, threads: int | None = None,
               progress: ProgressFn = _quiet) -> pd.DataFrame:
    """Forward+backward time and peak memory of each scan backend, per sequence length.

    One row per (length, backend), every row present even when a backend could not run (its
    `note` says why). `speedup` and `mem_ratio` are against `mamba_ref` (mamba-ssm's loop);
    `max_abs_dy` and `max_rel_dgrad` (max over the 8 inputs of max|g - g_ref| / max|g_ref|)
    compare outputs and input gradients with `vs` (mamba_ref, or reference without it).
    """
    import torch

    from models.scan import cuda_kernel_available

    backends = list(backends or scan_backends(device))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mambascope-bench-scan-") as tmp:
        for length in lengths:
            res: dict[str, dict] = {}
            for be in backends:
                if be == "cuda" and not (device == "cuda" and cuda_kernel_available()):
                    res[be] = {"error": "mamba-ssm's fused kernel is not importable here"}
                    continue
                progress(f"scan L={length} {be}")
                res[be] = _in_fresh_process(
                    "_scan_child", dict(backend=be, batch=batch, dim=dim, d_state=d_state,
                                        length=length, device=device, repeats=repeats,
                                        max_seconds=max_seconds, save_to=f"{tmp}/{be}-{length}.pt"),
                    threads=threads)
            ok = [be for be in backends if "error" not in res[be]]
            vs = "mamba_ref" if "mamba_ref" in ok else ("reference" if "reference" in ok else None)
            ref = torch.load(f"{tmp}/{vs}-{length}.pt", weights_only=True) if vs else None
            base = res.get("mamba_ref", {})
            for be in backends:
                r = res[be]
                row = dict(length=length, backend=be, time_s=math.nan, runs=0, peak_mb=math.nan,
                           speedup=math.nan, mem_ratio=math.nan, vs=vs or "", max_abs_dy=math.nan,
                           max_rel_dgrad=math.nan, memory=r.get("memory", ""),
                           note=r.get("error") or r.get("note", ""))
                if "error" not in r:
                    row.update(time_s=r["time_s"], runs=r["runs"], peak_mb=r["peak_mb"])
                    if "error" not in base and base:
                        row["speedup"] = base["time_s"] / r["time_s"]
                        row["mem_ratio"] = (r["peak_mb"] / base["peak_mb"]
                                            if base["peak_mb"] > 0 else math.nan)
                    if ref is not None:
                        got = torch.load(f"{tmp}/{be}-{length}.pt", weights_only=True)
                        row["max_abs_dy"] = (got["y"] - ref["y"]).abs().max().item()
                        row["max_rel_dgrad"] = max(
                            ((g - h).abs().max() / h.abs().max().clamp_min(1e-12)).item()
                            for g, h in zip(got["grads"], ref["grads"]))
                rows.append(row)
                if not math.isnan(row["time_s"]):
                    progress(f"  {be}: {row['time_s']:.3f} s, {row['peak_mb']:.0f} MB")
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# 2. cost versus resolution
# --------------------------------------------------------------------------------------------

def _resolution_child(model: str, image_size: tuple[int, int], patch_size: int, batch: int,
                      device: str, repeats: int, max_seconds: float) -> dict:
    """In a fresh process: forward+backward time and activation peak memory of one backbone."""
    import torch

    from models import build_model
    from models.scan import resolve_backend

    torch.manual_seed(0)
    net = build_model(model, img_size=tuple(image_size), patch_size=patch_size).to(device)
    x = torch.randn(batch, 3, *image_size, device=device)
    # Gradient buffers exist before the baseline, so the peak is the forward+backward's own
    # (activations and temporaries), not the parameters' gradients, which do not grow with
    # the image.
    for p in net.parameters():
        p.grad = torch.zeros_like(p)

    def step():
        net.zero_grad(set_to_none=False)
        net(x).float().sum().backward()

    times, peak, _, note, how = _timed_runs(step, device, repeats, max_seconds)
    gh, gw = net.grid_size
    has_ssm = any(hasattr(m, "A_log") for m in net.modules())
    return {"tokens": gh * gw, "seq_len": gh * gw + getattr(net, "num_prefix_tokens", 0),
            "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
            "time_s": statistics.median(times), "runs": len(times), "peak_mb": peak,
            "memory": how, "scan": resolve_backend("auto", device) if has_ssm else "-",
            "note": note}


def bench_resolution(*, device: str = "cpu",
                     models: Sequence[str] = ("VIT-S", "MAMBA-S", "MAMBA-V2"),
                     image_sizes: Sequence[tuple[int, int]] = IMAGE_SIZES, patch_size: int = 16,
                     batch: int = 8, repeats: int = 3, max_seconds: float = 60.0,
                     threads: int | None = None, progress: ProgressFn = _quiet) -> pd.DataFrame:
    """Forward+backward cost of each backbone at each image size: one row per (model, image).

    `tokens` are patch tokens (ViT adds its cls token: `seq_len`); `time_s` is one
    forward+backward of the batch, `images_per_s` its throughput, `peak_mb` the peak memory
    above the model, its gradients and the batch.
    """
    rows = []
    for model in models:
        for size in image_sizes:
            image = f"{size[0]}x{size[1]}"
            progress(f"resolution {model} {image}")
            r = _in_fresh_process("_resolution_child",
                                  dict(model=model, image_size=tuple(size), patch_size=patch_size,
                                       batch=batch, device=device, repeats=repeats,
                                       max_seconds=max_seconds), threads=threads)
            gh, gw = size[0] // patch_size, size[1] // patch_size
            row = dict(model=model, image=image, tokens=r.get("tokens", gh * gw),
                       seq_len=r.get("seq_len", math.nan), batch=batch,
                       time_s=r.get("time_s", math.nan), images_per_s=math.nan,
                       peak_mb=r.get("peak_mb", math.nan), runs=r.get("runs", 0),
                       scan=r.get("scan", ""), memory=r.get("memory", ""),
                       note=r.get("error") or r.get("note", ""))
            if row["time_s"] > 0:
                row["images_per_s"] = batch / row["time_s"]
                progress(f"  {row['time_s']:.3f} s, {row['peak_mb']:.0f} MB")
            rows.append(row)
    return pd.DataFrame(rows)


def _slope(x, y) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


def fit_slopes(points: pd.DataFrame) -> pd.DataFrame:
    """Log-log slopes of time and peak memory against tokens, one row per model.

    `time_slope` / `mem_slope`: least squares over every size (numpy polyfit on the logs);
    `time_slope_top` / `mem_slope_top`: between the two largest sizes only, where the
    asymptotic term dominates. 1 is linear in the tokens, 2 quadratic.
    """
    rows = []
    for model, g in points.groupby("model", sort=False):
        g = g.sort_values("tokens")
        top = g.dropna(subset=["time_s"]).tail(2)
        top_mem = g[g["peak_mb"] > 0].tail(2)
        rows.append(dict(
            model=model, points=int(g["time_s"].notna().sum()),
            tokens=f"{int(g['tokens'].min())}-{int(g['tokens'].max())}",
            time_slope=_slope(g["tokens"], g["time_s"]),
            time_slope_top=_slope(top["tokens"], top["time_s"]),
            mem_slope=_slope(g["tokens"], g["peak_mb"]),
            mem_slope_top=_slope(top_mem["tokens"], top_mem["peak_mb"])))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# 3. recorder overhead
# --------------------------------------------------------------------------------------------

def bench_recorder(*, device: str = "cpu", backbone: str = "MAMBA-V2-T",
                   image_size: tuple[int, int] = (64, 32), patch_size: int = 8, batch: int = 16,
                   steps: int = 200, rounds: int = 3,
                   probe_every: Sequence[int] = PROBE_EVERY,
                   progress: ProgressFn = _quiet) -> pd.DataFrame:
    """Training steps/s with no recorder and with the Recorder at each `probe_every`.

    Every configuration trains its own copy of the model in lockstep with the others, step by
    step, each step timed on its own (diagnostics.bench_recorder); each is reported by its
    median round. `probes_timed` is how many probe steps fell in the timed steps (1..steps; the
    untimed warm-up is step 0, itself a probe step).
    """
    from diagnostics.bench_recorder import lockstep_steps_per_s

    configs: list[int | None] = [None, *probe_every]
    results: dict[int | None, list[float]] = {c: [] for c in configs}
    for r in range(rounds):
        progress(f"recorder round {r + 1}/{rounds}: {len(configs)} configurations in lockstep, "
                 f"{steps} steps")
        for c, sps in lockstep_steps_per_s(backbone, tuple(image_size), patch_size, batch,
                                           steps, configs, device=device).items():
            results[c].append(sps)
    base = statistics.median(results[None])
    rows = []
    for c in configs:
        sps = statistics.median(results[c])
        row = dict(configuration="no recorder" if c is None else f"probe_every={c}",
                   probe_every=c if c is not None else 0, steps_per_s=sps,
                   overhead=base / sps, probes_timed=0 if c is None else steps // c,
                   target="" if c != 50 else f"<= {RECORDER_TARGET:g}x", note="")
        if c is not None and steps // c == 0:
            row["note"] = f"no probe step among the {steps} timed steps: a lower bound"
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# 4. loading a long run, building its report
# --------------------------------------------------------------------------------------------

def _time_report(run_dir: Path, out: Path) -> list[tuple[str, float, str]]:
    """Seconds to build the HTML report of `run_dir`, as (operation, seconds, note) rows: per
    stage where diagnostics.report has them (analyse, render + write), else the whole of
    `diagnose_runs`; NaN and why when the report module is not there or fails."""
    try:
        from diagnostics import report
    except ImportError as e:
        return [("build the HTML report", math.nan,
                 f"not measured: diagnostics.report is not available ({e})")]
    try:
        if all(hasattr(report, f) for f in ("load_runs", "analyse_runs", "write_report")):
            t0 = time.perf_counter()
            runs = report.load_runs([run_dir])
            t1 = time.perf_counter()
            analysis = report.analyse_runs(runs)
            t2 = time.perf_counter()
            report.write_report(analysis, out)
            t3 = time.perf_counter()
            size = out.stat().st_size / 2**20
            return [("report: analyse (findings)", t2 - t1, "diagnostics.report.analyse_runs"),
                     ("report: render + write the HTML", t3 - t2,
                      f"diagnostics.report.write_report ({size:.1f} MiB page)"),
                     ("report: total, load included", t3 - t0, "load_runs + analyse + write")]
        t0 = time.perf_counter()
        with open(os.devnull, "w") as devnull, redirect_stdout(devnull), redirect_stderr(devnull):
            report.diagnose_runs([str(run_dir)], out=str(out), fmt="json", fail_on=None)
        return [("build the HTML report", time.perf_counter() - t0,
                 "diagnose_runs: load + analyse + render + write")]
    except Exception as e:  # noqa: BLE001  another module's failure is a row's note here
        return [("build the HTML report", math.nan,
                 f"failed: {type(e).__name__}: {' '.join(str(e).split())}"[:200])]


def _rows_loaded(run) -> int:
    return sum(len(run.table(name)) for name in run.tables)


def bench_load(*, steps: int = 10_000, layers: int = 24, repeats: int = 5,
               progress: ProgressFn = _quiet) -> pd.DataFrame:
    """Time to load a synthetic `steps` x `layers` run (diagnostics.bench_load), as a live run
    leaves it (one part per flush, the reader's worst case) and as a finished one (compacted),
    and to build its report. One row per operation; `time_s` is the median of `repeats`."""
    from diagnostics.bench_load import _disk_usage, _time_loads, build_synthetic_run
    from diagnostics.runfmt import RunWriter, load_run

    rows = []
    with tempfile.TemporaryDirectory(prefix="mambascope-bench-load-") as tmp:
        run_dir = Path(tmp) / "runs" / "synthetic"
        progress(f"load: writing a synthetic {steps:,}-step x {layers}-layer run")
        t0 = time.perf_counter()
        written = build_synthetic_run(run_dir, steps, layers, fsync=False)
        write_s = time.perf_counter() - t0
        size, files = _disk_usage(run_dir)
        total_rows = sum(written.values())
        rows.append(dict(operation="write the synthetic run (setup)", time_s=write_s, runs=1,
                         files=files, size_mb=size / 2**20, rows=total_rows,
                         note="no fsync; not what is measured"))
        progress("load: load_run, one part per flush")
        loads = _time_loads(run_dir, repeats)
        rows.append(dict(operation="load_run (live run: one part per flush)",
                         time_s=statistics.median(loads), runs=len(loads), files=files,
                         size_mb=size / 2**20, rows=_rows_loaded(load_run(run_dir)), note=""))
        with RunWriter(run_dir, resume=True, fsync=False) as writer:
            writer.close(compact=True)
        size, files = _disk_usage(run_dir)
        progress("load: load_run, compacted")
        loads = _time_loads(run_dir, repeats)
        rows.append(dict(operation="load_run (finished run: compacted)",
                         time_s=statistics.median(loads), runs=len(loads), files=files,
                         size_mb=size / 2**20, rows=total_rows, note=""))
        progress("load: report")
        for operation, seconds, note in _time_report(run_dir, Path(tmp) / "report.html"):
            rows.append(dict(operation=operation, time_s=seconds,
                             runs=0 if math.isnan(seconds) else 1, files=files,
                             size_mb=size / 2**20, rows=total_rows, note=note))
    frame = pd.DataFrame(rows)
    frame["steps"], frame["layers"] = steps, layers
    return frame


# --------------------------------------------------------------------------------------------
# presentation: one formatting for rich, markdown and HTML
# --------------------------------------------------------------------------------------------

@dataclass
class Section:
    """One section's result: its table (columns: (name, header, format)), notes and figures."""
    key: str
    title: str
    frame: pd.DataFrame
    columns: list[tuple[str, str, str]]
    notes: list[str] = field(default_factory=list)
    figures: list = field(default_factory=list)
    extra: list["Section"] = field(default_factory=list)   # a second table (slopes)
    wall_s: float = math.nan


def _cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if fmt == "s":
        return str(value)
    if fmt.endswith("d") and isinstance(value, float) and value.is_integer():
        value = int(value)      # an int column that pandas made float (a NaN elsewhere)
    try:
        return format(value, fmt)
    except (TypeError, ValueError):
        return str(value)


def table_cells(section: Section) -> tuple[list[str], list[list[str]]]:
    """(headers, rows of formatted cells): what every renderer prints."""
    cols = [c for c in section.columns if c[0] in section.frame.columns]
    headers = [h for _, h, _ in cols]
    rows = [[_cell(rec[name], fmt) for name, _, fmt in cols]
            for rec in section.frame.to_dict("records")]
    return headers, rows


SCAN_COLUMNS = [("length", "L", "d"), ("backend", "backend", "s"), ("time_s", "time s", ".4f"),
                ("speedup", "speed-up vs mamba_ref", ".2f"), ("peak_mb", "peak MB", ".1f"),
                ("mem_ratio", "memory vs mamba_ref", ".2f"), ("runs", "runs", "d"),
                ("vs", "agreement vs", "s"), ("max_abs_dy", "max |dy|", ".1e"),
                ("max_rel_dgrad", "max rel dgrad", ".1e"), ("note", "note", "s")]
RESOLUTION_COLUMNS = [("model", "model", "s"), ("image", "image", "s"), ("tokens", "tokens", "d"),
                      ("batch", "batch", "d"), ("time_s", "fwd+bwd s", ".4f"),
                      ("images_per_s", "images/s", ".2f"), ("peak_mb", "peak MB", ".1f"),
                      ("runs", "runs", "d"), ("scan", "scan", "s"), ("note", "note", "s")]
SLOPE_COLUMNS = [("model", "model", "s"), ("tokens", "tokens", "s"), ("points", "points", "d"),
                 ("time_slope", "time slope", ".2f"),
                 ("time_slope_top", "time slope (top 2)", ".2f"),
                 ("mem_slope", "memory slope", ".2f"),
                 ("mem_slope_top", "memory slope (top 2)", ".2f")]
RECORDER_COLUMNS = [("configuration", "configuration", "s"), ("steps_per_s", "steps/s", ".2f"),
                    ("overhead", "overhead", ".3f"), ("probes_timed", "probes timed", "d"),
                    ("target", "target", "s"), ("note", "note", "s")]
LOAD_COLUMNS = [("operation", "operation", "s"), ("time_s", "time s", ".3f"), ("runs", "runs", "d"),
                ("files", "files", "d"), ("size_mb", "MiB", ".1f"), ("rows", "rows", ",d"),
                ("note", "note", "s")]


def _figures_scan(df: pd.DataFrame) -> list:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("forward+backward time (s)",
                                                        "peak memory (MB)"))
    for i, (be, g) in enumerate(df.groupby("backend", sort=False)):
        x = [f"L={v}" for v in g["length"]]
        fig.add_trace(go.Bar(name=be, x=x, y=g["time_s"], legendgroup=be,
                             marker_color=_COLORS[i % len(_COLORS)]), 1, 1)
        fig.add_trace(go.Bar(name=be, x=x, y=g["peak_mb"], legendgroup=be, showlegend=False,
                             marker_color=_COLORS[i % len(_COLORS)]), 1, 2)
    fig.update_yaxes(type="log")
    fig.update_layout(barmode="group", height=380, margin=dict(t=40, b=30))
    return [fig]


def _figures_resolution(points: pd.DataFrame, slopes: pd.DataFrame) -> list:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("forward+backward time (s) vs tokens",
                                                        "peak memory (MB) vs tokens"))
    by_model = slopes.set_index("model").to_dict("index") if len(slopes) else {}
    for i, (model, g) in enumerate(points.groupby("model", sort=False)):
        s = by_model.get(model, {})
        color = _COLORS[i % len(_COLORS)]
        fig.add_trace(go.Scatter(x=g["tokens"], y=g["time_s"], mode="lines+markers",
                                 name=f"{model} (time slope {_cell(s.get('time_slope'), '.2f')})",
                                 line_color=color, legendgroup=model), 1, 1)
        fig.add_trace(go.Scatter(x=g["tokens"], y=g["peak_mb"], mode="lines+markers",
                                 name=f"{model} (memory slope {_cell(s.get('mem_slope'), '.2f')})",
                                 line_color=color, line_dash="dot", legendgroup=model), 1, 2)
    fig.update_xaxes(type="log", title_text="tokens")
    fig.update_yaxes(type="log")
    fig.update_layout(height=420, margin=dict(t=40, b=30))
    return [fig]


def _figures_recorder(df: pd.DataFrame) -> list:
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=df["configuration"], y=df["overhead"], marker_color=_COLORS[0]))
    fig.add_hline(y=RECORDER_TARGET, line_dash="dash", annotation_text="target at probe_every=50")
    fig.update_layout(title="time per step, relative to no recorder", height=360,
                      margin=dict(t=50, b=30), yaxis_title="overhead (x)")
    return [fig]


def _figures_load(df: pd.DataFrame) -> list:
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=df["operation"], y=df["time_s"], marker_color=_COLORS[1]))
    fig.update_layout(title="seconds", height=360, margin=dict(t=50, b=30))
    return [fig]


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages (what `uptime` prints), None where unknown."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def _load_text(load) -> str:
    if load is None:
        return "unknown"
    return ", ".join(f"{v:.2f}" for v in load)


@dataclass
class BenchResult:
    """Everything one `diagnose bench` run measured, with what is needed to judge it."""
    sections: list[Section]
    meta: dict
    failed: list[str] = field(default_factory=list)


def header_lines(meta: dict) -> list[str]:
    """The lines every output starts with: device, versions, threads, load average."""
    cores = meta.get("cores")
    lines = [
        f"mambascope bench{' --quick' if meta.get('quick') else ''} on {meta['device']} "
        f"({meta['device_name']}), {meta['date']}",
        f"torch {meta['torch']}, python {meta['python']}, {meta['threads']} torch threads, "
        f"{cores} cores",
        f"load average (1, 5, 15 min): {_load_text(meta['load_start'])} at the start"
        + (f", {_load_text(meta['load_end'])} at the end" if meta.get("load_end") else "")
        + (f"; wall time {meta['wall_s']:.1f} s" if meta.get("wall_s") else ""),
    ]
    if meta["device"] == "cuda":
        lines.append("mamba-ssm's fused kernel: "
                     + ("imported" if meta.get("cuda_kernel") else "not importable here"))
    load = meta.get("load_start")
    if load and cores and max(load[0], (meta.get("load_end") or load)[0]) > 0.5 * cores:
        lines.append("the machine was busy: times are inflated, ratios measured side by side "
                     "less so" + (f"; {meta['threads']} torch threads on busy cores can be "
                                  "10-100x slower than one (--threads 1)"
                                  if meta["threads"] > 1 else ""))
    return lines


# --------------------------------------------------------------------------------------------
# running the bench
# --------------------------------------------------------------------------------------------

def _device_name(device: str) -> str:
    import torch
    if device == "cuda":
        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def run_bench(device: str = "cpu", quick: bool = False, sections: Sequence[str] = SECTIONS,
              threads: int | None = None, overrides: dict[str, dict] | None = None,
              progress: ProgressFn = _quiet,
              on_section: Callable[[Section, dict], None] | None = None) -> BenchResult:
    """Run the chosen sections; `overrides` replace keyword arguments of a section, e.g.
    {"scan": {"lengths": (8,)}}. `on_section(section, meta)` is called as each one finishes."""
    import torch

    from models.scan import cuda_kernel_available

    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: expected cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch here")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(sorted(unknown))}; "
                         f"expected some of {', '.join(SECTIONS)}")
    if threads:
        torch.set_num_threads(threads)
    conf = settings(device, quick)
    for key, kw in (overrides or {}).items():
        conf[key] = {**conf[key], **kw}
    meta = dict(device=device, device_name=_device_name(device), quick=quick,
                date=_dt.date.today().isoformat(), torch=torch.__version__,
                python=platform.python_version(), threads=threads or torch.get_num_threads(),
                cores=os.cpu_count(), load_start=load_average(), load_end=None,
                cuda_kernel=cuda_kernel_available(), settings=conf)
    t_start = time.perf_counter()
    result = BenchResult([], meta)
    tiny = quick and "resolution" in sections
    for key in SECTIONS:
        if key not in sections:
            continue
        kw = conf[key]
        t0 = time.perf_counter()
        try:
            section = _SECTION_RUNNERS[key](device, kw, threads, quick, progress)
        except Exception as e:  # noqa: BLE001  one broken section must not lose the others
            log.debug("section %s failed:\n%s", key, traceback.format_exc())
            result.failed.append(key)
            section = Section(key, _TITLES[key], pd.DataFrame(), [],
                              notes=[f"this section failed: {type(e).__name__}: "
                                     f"{' '.join(str(e).split())}"[:300]])
        if key == "resolution" and tiny:
            section.notes.insert(0, "--quick: the tiny presets (VIT-T, MAMBA-S-T, MAMBA-V2-T) at "
                                    "small sizes, not the full-size backbones")
        section.wall_s = time.perf_counter() - t0
        section.notes.append(f"this section took {section.wall_s:.1f} s (wall).")
        result.sections.append(section)
        if on_section:
            on_section(section, meta)
    meta["load_end"] = load_average()
    meta["wall_s"] = time.perf_counter() - t_start
    return result


_TITLES = {"scan": "1. Scan backends", "resolution": "2. Cost versus resolution",
           "recorder": "3. Recorder overhead", "load": "4. Loading a long run"}


def _memory_note(df: pd.DataFrame) -> str:
    hows = sorted({h for h in df.get("memory", []) if h})
    return ("peak memory: " + (", ".join(hows) or "not measured") + ", over the timed runs, above "
            "what the process held after a warm-up run.")


def _section_scan(device, kw, threads, quick, progress) -> Section:
    df = bench_scan(device=device, threads=threads, progress=progress, **kw)
    notes = [f"selective scan forward+backward, B={kw['batch']} D={kw['dim']} N={kw['d_state']}, "
             "fp32, delta_softplus, D and z; each backend in its own fresh process; "
             "speed-up and memory ratio against mamba_ref, a loop written as mamba-ssm's "
             "selective_scan_ref is."]
    notes.append(_memory_note(df))
    fast = df[(df["backend"] == "fast") & df["speedup"].notna()]
    if device == "cpu" and len(fast):
        worst = fast["speedup"].min()
        verdict = ("--quick sizes: no verdict" if quick
                   else "met" if worst >= SCAN_TARGET else "NOT met")
        notes.append(f"target: fast >= {SCAN_TARGET:g}x over mamba_ref on the CPU (B=32, D=384, "
                     f"N=16); measured {worst:.1f}x at worst ({verdict}).")
    return Section("scan", _TITLES["scan"], df, SCAN_COLUMNS, notes, _figures_scan(df))


def _section_resolution(device, kw, threads, quick, progress) -> Section:
    points = bench_resolution(device=device, threads=threads, progress=progress, **kw)
    slopes = fit_slopes(points)
    notes = [f"one forward+backward of a batch of {kw['batch']}, patch {kw.get('patch_size', 16)}; "
             "peak memory above the model, its gradients and the batch (activations and "
             "temporaries). Slopes: d log(cost) / d log(tokens), 1 = linear, 2 = quadratic."]
    notes.append(_memory_note(points))
    slope_section = Section("slopes", "log-log slopes against tokens", slopes, SLOPE_COLUMNS)
    return Section("resolution", _TITLES["resolution"], points, RESOLUTION_COLUMNS, notes,
                   _figures_resolution(points, slopes), extra=[slope_section])


def _section_recorder(device, kw, threads, quick, progress) -> Section:
    notes = []
    df = bench_recorder(device=device, progress=progress, **kw)
    h, w = kw["image_size"]
    notes.insert(0, f"{kw['backbone']} at {h}x{w}, patch {kw['patch_size']}, batch {kw['batch']}, "
                    f"AdamW, clip 1.0; one copy of the model per configuration, trained in "
                    f"lockstep (each step timed on its own, the order rotating), {kw['steps']} "
                    f"timed steps x {kw['rounds']} round(s), median round. Anchor: Cockpit ~1.0x "
                    "for its cheap preset at intervals >= 16, 21x for its full preset every "
                    "step.")
    at50 = df[df["probe_every"] == 50]
    if len(at50):
        o = float(at50["overhead"].iloc[0])
        verdict = ("--quick: too few steps for a verdict" if quick
                   else "met" if o <= RECORDER_TARGET else "NOT met")
        notes.append(f"target <= {RECORDER_TARGET:g}x at probe_every=50: measured {o:.3f}x "
                     f"({verdict}).")
    return Section("recorder", _TITLES["recorder"], df, RECORDER_COLUMNS, notes,
                   _figures_recorder(df))


def _section_load(device, kw, threads, quick, progress) -> Section:
    df = bench_load(progress=progress, **kw)
    notes = [f"a synthetic run of {kw['steps']:,} steps x {kw['layers']} layers "
             "(diagnostics.bench_load: 8 parameter groups per layer, SSM probes every 50 steps "
             "on 4 directions, one flush per 100 steps); load_run is the median of "
             f"{kw['repeats']} load(s). Design target: about a second."]
    return Section("load", _TITLES["load"], df, LOAD_COLUMNS, notes, _figures_load(df))


_SECTION_RUNNERS = {"scan": _section_scan, "resolution": _section_resolution,
                    "recorder": _section_recorder, "load": _section_load}


# --------------------------------------------------------------------------------------------
# output: rich tables, markdown, one self-contained HTML page
# --------------------------------------------------------------------------------------------

def rich_tables(section: Section) -> list:
    """The section's rich tables (its own and any extra one)."""
    from rich.markup import escape
    from rich.table import Table

    out = []
    for s in [section, *section.extra]:
        headers, rows = table_cells(s)
        t = Table(title=escape(s.title), title_justify="left")
        for (name, _, fmt), h in zip([c for c in s.columns if c[0] in s.frame.columns], headers):
            t.add_column(escape(h), justify="left" if fmt == "s" else "right",
                         overflow="fold", no_wrap=name != "note",
                         max_width=48 if name == "note" else None)
        for r in rows:
            t.add_row(*(escape(c) for c in r))
        out.append(t)
    return out


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(section: Section) -> str:
    headers, rows = table_cells(section)
    if not headers:
        return ""
    lines = ["| " + " | ".join(_md_cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(result: BenchResult) -> str:
    """The tables as one markdown document, headed by the device and the load average."""
    out = [f"# mambascope bench, {result.meta['date']}, {result.meta['device']}", ""]
    out += [f"- {_md_cell(line)}" for line in header_lines(result.meta)]
    for s in result.sections:
        out += ["", f"## {_md_cell(s.title)}", ""]
        out += [_md_cell(n) for n in s.notes]
        table = markdown_table(s)
        if table:
            out += ["", table]
        for e in s.extra:
            out += ["", f"### {_md_cell(e.title)}", "", markdown_table(e)]
    return "\n".join(out) + "\n"


def _html_table(section: Section) -> str:
    headers, rows = table_cells(section)
    if not headers:
        return ""
    text = [fmt == "s" for name, _, fmt in section.columns if name in section.frame.columns]
    cls = lambda i: " class='text'" if text[i] else ""  # noqa: E731
    head = "".join(f"<th{cls(i)}>{html.escape(h)}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{html.escape(c)}</td>"
                                     for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .meta li { margin: 0.2em 0; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } .text { text-align: left; }
.note { color: #444; }
"""


def to_html(result: BenchResult) -> str:
    """One self-contained page: plotly's JS inline once (no CDN), every string escaped."""
    parts = [f"<h1>mambascope bench: {html.escape(result.meta['device'])}"
             f"{' (--quick)' if result.meta.get('quick') else ''}</h1>",
             "<ul class='meta'>" + "".join(f"<li>{html.escape(line)}</li>"
                                           for line in header_lines(result.meta)) + "</ul>"]
    js_included = False
    for s in result.sections:
        parts.append(f"<h2 id='{html.escape(s.key)}'>{html.escape(s.title)}</h2>")
        parts += [f"<p class='note'>{html.escape(n)}</p>" for n in s.notes]
        parts.append(_html_table(s))
        for e in s.extra:
            parts.append(f"<h3>{html.escape(e.title)}</h3>{_html_table(e)}")
        for fig in s.figures:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=not js_included))
            js_included = True
    title = html.escape(f"mambascope bench {result.meta['date']} {result.meta['device']}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def default_markdown_path(meta: dict) -> Path:
    """reports/bench-YYYY-MM-DD-<device>[-quick].md"""
    return Path("reports") / (f"bench-{meta['date']}-{meta['device']}"
                              f"{'-quick' if meta.get('quick') else ''}.md")


# --------------------------------------------------------------------------------------------
# the subcommand
# --------------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return v


def add_arguments(p: argparse.ArgumentParser, name: str = "bench") -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to measure (default cpu); cuda adds mamba-ssm's fused kernel "
                        "when it imports")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and tiny presets: every row, in under two minutes on 2 "
                        "cores (the numbers are for shape, not for quoting)")
    p.add_argument("--out", default="reports/bench.html", metavar="PATH",
                   help="the HTML page with the tables and figures (default reports/bench.html)")
    p.add_argument("--markdown", nargs="?", const="auto", default=None, metavar="PATH",
                   help="also write the tables as markdown (default path "
                        "reports/bench-YYYY-MM-DD-DEVICE.md)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   metavar="SECTION", help=f"run only these ({', '.join(SECTIONS)})")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="torch threads (default: torch's own choice)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress lines on stderr")


def main(args: argparse.Namespace, name: str = "bench") -> int:
    from rich.console import Console
    from rich.markup import escape

    # Tables are wide: when the output is not a terminal (a log, a pipe), do not fold them
    # into 80 columns.
    out = Console(highlight=False)
    if not out.is_terminal:
        out = Console(highlight=False, width=200)
    err = Console(stderr=True, highlight=False)
    progress = _quiet if args.no_progress else (lambda m: err.print(f"[dim]{escape(m)}[/dim]"))
    printed_header = []

    def on_section(section: Section, meta: dict) -> None:
        if not printed_header:
            for line in header_lines(meta):
                out.print(escape(line))
            printed_header.append(True)
        out.print()
        for n in section.notes:
            out.print(escape(n))
        for t in rich_tables(section):
            out.print(t)

    result = run_bench(args.device, args.quick, args.sections, args.threads,
                       progress=progress, on_section=on_section)
    out.print()
    out.print(escape(header_lines(result.meta)[2]))
    html_path = Path(args.out)
    _write_text(html_path, to_html(result))
    out.print(f"wrote {escape(str(html_path))}")
    if args.markdown:
        md_path = (default_markdown_path(result.meta) if args.markdown == "auto"
                   else Path(args.markdown))
        _write_text(md_path, to_markdown(result))
        out.print(f"wrote {escape(str(md_path))}")
    if result.failed:
        err.print(f"diagnose bench: section(s) failed: {', '.join(result.failed)} "
                  "(see their notes; --verbose logs the traceback)")
        return 1
    return 0

"""Benchmark of the run directory: write a synthetic run, measure how fast it loads.

``python -m diagnostics.bench_load`` builds, in a temporary directory, a run shaped like a real
Vision Mamba training run (10,000 steps, 24 layers with 8 parameter groups each, SSM probes every
50 steps on 24 layers x 4 directions, flushed every 100 steps, so ~100 parts per table) and
prints the write time, the size on disk, the load time (median of a few loads) and the rows per
table, before and after the writer's compaction at close.

The synthetic data comes from :func:`synthetic_windows`, which the tests also use to check that
every value round-trips.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics.runfmt import RunWriter, load_run

GROUPS = ("block", "A_log", "D", "dt_proj", "x_proj", "in_proj", "out_proj", "norm")
DIRECTIONS = ("h", "v", "h_rev", "v_rev")
SSM_STATS = (
    *(f"dt_{s}" for s in ("min", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "max")),
    *(f"adt_{s}" for s in ("min", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "max")),
    "frac_erased", "frac_frozen", "mem_len", "selectivity", "state_norm_first",
    "state_norm_mid", "state_norm_last", "state_norm_max", "alog_mean", "alog_std",
    "alog_min", "alog_max", "alog_drift", "d_mean", "d_std",
)
STATE_POSITIONS = 8
EVAL_EVERY = 500
NONFINITE_EVERY = 2_500  # a NaN loss (and an event) now and then, as a diverging run has
T0 = 1.7e9  # unix time of step 0


def synthetic_windows(
    steps: int = 10_000,
    layers: int = 24,
    *,
    flush_every: int = 100,
    probe_every: int = 50,
    seed: int = 0,
) -> Iterator[dict[str, dict[str, np.ndarray]]]:
    """Yield, per flush window of ``flush_every`` steps, the columns each table records.

    Values are random but deterministic (``seed``), include NaN and +-inf where a real run
    has them (update ratio unknown at step 0, nonfinite losses), and use every column type.
    """
    rng = np.random.default_rng(seed)
    groups = np.array(GROUPS)
    directions = np.array(DIRECTIONS)
    for start in range(0, steps, flush_every):
        stop = min(start + flush_every, steps)
        s = np.arange(start, stop, dtype=np.int64)
        n = len(s)
        out: dict[str, dict[str, np.ndarray]] = {}

        nonfinite = (s % NONFINITE_EVERY == NONFINITE_EVERY - 1)
        loss = 7.0 * np.exp(-s / 3_000) + rng.normal(0, 0.05, n)
        loss[nonfinite] = np.nan
        grad_norm = rng.lognormal(0, 0.5, n)
        grad_norm[nonfinite] = np.inf
        out["steps"] = {
            "step": s, "time": T0 + 0.25 * s, "epoch": s // 500, "loss": loss,
            "lr": 1e-3 * np.minimum(1.0, (s + 1) / 1_000), "grad_norm": grad_norm,
            "clip": np.full(n, 1.0), "clipped": grad_norm > 1.0,
            "step_time_s": rng.normal(0.25, 0.01, n), "samples_per_s": rng.normal(512, 5, n),
            "peak_mem_mb": np.full(n, 8192.0), "nonfinite": nonfinite,
            "nonfinite_where": np.where(nonfinite, "blocks.7.mixer.dt_proj", ""),
        }

        per_step = layers * len(GROUPS)
        ratio = rng.lognormal(-7, 1, n * per_step)
        ratio[: per_step if start == 0 else 0] = np.nan  # no previous weights at step 0
        out["layers"] = {
            "step": np.repeat(s, per_step),
            "layer": np.tile(np.repeat(np.arange(layers, dtype=np.int64), len(GROUPS)), n),
            "group": np.tile(groups, layers * n),
            "grad_norm": rng.lognormal(-3, 1, n * per_step),
            "weight_norm": rng.lognormal(2, 0.3, n * per_step),
            "update_ratio": ratio,
        }

        probes = s[s % probe_every == 0]
        if len(probes):
            k = len(probes) * layers * len(DIRECTIONS)
            ssm = {
                "step": np.repeat(probes, layers * len(DIRECTIONS)),
                "layer": np.tile(np.repeat(np.arange(layers, dtype=np.int64), len(DIRECTIONS)),
                                 len(probes)),
                "module": np.tile(np.repeat(np.array([f"blocks.{i}.mixer" for i in range(layers)]),
                                            len(DIRECTIONS)), len(probes)),
                "direction": np.tile(directions, len(probes) * layers),
            }
            ssm.update({name: rng.random(k) for name in SSM_STATS})
            out["ssm"] = ssm
            m = k * STATE_POSITIONS
            out["ssm_state"] = {
                "step": np.repeat(probes, layers * len(DIRECTIONS) * STATE_POSITIONS),
                "layer": np.tile(np.repeat(np.arange(layers, dtype=np.int64),
                                           len(DIRECTIONS) * STATE_POSITIONS), len(probes)),
                "direction": np.tile(np.repeat(directions, STATE_POSITIONS), len(probes) * layers),
                "pos": np.tile(np.linspace(0.0, 1.0, STATE_POSITIONS), k),
                "state_norm": rng.lognormal(0, 1, m),
            }

        evals = s[(s + 1) % EVAL_EVERY == 0]
        if len(evals):
            out["eval"] = {
                "step": evals, "epoch": evals // 500,
                **{k: rng.uniform(0, 100, len(evals)) for k in ("mAP", "rank1", "rank5", "rank10")},
            }

        bad = s[nonfinite]
        if len(bad):
            out["events"] = {
                "step": bad, "kind": np.full(len(bad), "nonfinite"),
                "where": np.full(len(bad), "blocks.7.mixer.dt_proj"),
                "message": np.array([f"loss is nan at step {b}\n(grad norm inf)" for b in bad]),
            }
        yield out


def synthetic_frames(steps: int = 10_000, layers: int = 24, **kwargs) -> dict[str, pd.DataFrame]:
    """The synthetic run as the DataFrames a perfect reader would return (for tests)."""
    chunks: dict[str, list[pd.DataFrame]] = {}
    for window in synthetic_windows(steps, layers, **kwargs):
        for table, cols in window.items():
            chunks.setdefault(table, []).append(pd.DataFrame(cols))
    return {t: pd.concat(c, ignore_index=True) for t, c in chunks.items()}


def build_synthetic_run(
    run_dir: str | os.PathLike,
    steps: int = 10_000,
    layers: int = 24,
    *,
    flush_every: int = 100,
    probe_every: int = 50,
    compact: bool = False,
    fsync: bool = True,
    seed: int = 0,
) -> dict[str, int]:
    """Write the synthetic run with one flush per window (merging off: the worst case for
    the reader, one part per flush). Returns the rows written per table."""
    rows: dict[str, int] = {}
    manifest = {"backbone": "MAMBA-S", "config": {"synthetic": True, "steps": steps},
                "probe_every": probe_every, "model": {"num_layers": layers}}
    with RunWriter(run_dir, manifest=manifest, flush_every_s=None, flush_rows=10**9,
                   merge_parts=0, fsync=fsync) as writer:
        for window in synthetic_windows(steps, layers, flush_every=flush_every,
                                        probe_every=probe_every, seed=seed):
            for table, cols in window.items():
                writer.extend_columns(table, cols)
                rows[table] = rows.get(table, 0) + len(cols["step"])
            writer.flush()
        writer.close(compact=compact)
    return rows


def _disk_usage(path: Path) -> tuple[int, int]:
    """(bytes, files) under ``path``."""
    size = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            size += os.path.getsize(os.path.join(root, name))
            files += 1
    return size, files


def _time_loads(path: Path, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        load_run(path)
        times.append(time.perf_counter() - t0)
    return times


def _append_cost(tmp: Path, rows: int) -> float:
    """Seconds per ``append`` of a ``layers`` row, the recorder's hot path (flush excluded)."""
    row = {"step": 0, "layer": 3, "group": "dt_proj", "grad_norm": 0.1, "weight_norm": 2.0,
           "update_ratio": 1e-3}
    with RunWriter(tmp / "append", manifest={}, flush_every_s=None, flush_rows=10**9,
                   fsync=False) as writer:
        t0 = time.perf_counter()
        for i in range(rows):
            row["step"] = i
            writer.append("layers", row)
        return (time.perf_counter() - t0) / rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the numbers; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--flush-every", type=int, default=100, help="steps between flushes")
    parser.add_argument("--repeats", type=int, default=5, help="loads to take the median of")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mambascope-bench-") as tmp:
        run_dir = Path(tmp) / "runs" / "synthetic"
        t0 = time.perf_counter()
        rows = build_synthetic_run(run_dir, args.steps, args.layers, flush_every=args.flush_every)
        write_s = time.perf_counter() - t0
        size, files = _disk_usage(run_dir)
        loads = _time_loads(run_dir, args.repeats)
        run = load_run(run_dir)

        print(f"synthetic run: {args.steps} steps x {args.layers} layers, "
              f"flush every {args.flush_every} steps")
        print(f"write (columnar, fsync): {write_s:.2f} s, {files} files, {size / 2**20:.1f} MiB")
        print(f"load ({files - 2} parts): median {statistics.median(loads):.3f} s "
              f"(min {min(loads):.3f}, max {max(loads):.3f}, n={len(loads)})")
        for table in rows:
            print(f"  {table:10s} {len(run.table(table)):>10,d} rows "
                  f"x {run.table(table).shape[1]} columns")

        # The same run after close(compact=True): one part per table.
        with RunWriter(run_dir, resume=True, fsync=True) as writer:
            t0 = time.perf_counter()
            writer.close(compact=True)
            compact_s = time.perf_counter() - t0
        size, files = _disk_usage(run_dir)
        loads = _time_loads(run_dir, args.repeats)
        print(f"compaction at close: {compact_s:.2f} s -> {files} files, {size / 2**20:.1f} MiB")
        print(f"load (compacted): median {statistics.median(loads):.3f} s "
              f"(min {min(loads):.3f}, max {max(loads):.3f})")
        print(f"append(): {_append_cost(Path(tmp), 200_000) * 1e6:.2f} us per row")
    return 0


if __name__ == "__main__":
    sys.exit(main())

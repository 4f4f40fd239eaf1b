"""`diagnose export`: a recorded run as TensorBoard event files, for teams that live there.

    diagnose export --run runs/mamba_v2 --tensorboard tb/mamba_v2 [--overwrite]
    tensorboard --logdir tb            # one folder per exported run: runs side by side

The run is read with `load_run` (the one reader) and written with the `tensorboard` package's
own record writer and protos into one event file, one event per step holding all that step's
values, in step order (the file appears under its final name only once complete). TensorBoard
groups tags by what precedes the first ``/``:

===========================================  ================================================
tag                                          from
===========================================  ================================================
``steps/<column>``                           every numeric column of ``steps`` but ``step``
                                             and ``time`` (bools as 0/1); wall time = ``time``
``layers/<column>/L<layer>.<group>``         ``layers`` (``Ltop`` for layer -1)
``ssm/<column>/<module>/<direction>``        ``ssm``: dt and A·dt quantiles, decay fractions,
                                             memory length, state norms, A_log, D
``ssm/dt/<module>/<direction>`` (histogram)  the dt quantiles as a distribution: 1 % of the
``ssm/adt/<module>/<direction>`` (histogram) values up to p01, 4 % up to p05, ... (A·dt alike)
``ssm_state/L<layer>.<direction>/pos<pos>``  ``ssm_state``: the state norm along the sequence
``attention/<column>/<module>``              ``attention``
``eval/<column>``                            ``eval`` (mAP, rank1, ... in percent)
===========================================  ================================================

Tag parts that come from the run (module, group and direction names) keep only
``[A-Za-z0-9._-]``; anything else becomes ``_``. TensorBoard stores scalars as float32: values
beyond ±3.4e38 read back as ±inf, NaN stays NaN. A step recorded twice (a run resumed before
duplicates were dropped on resume) exports its last value. Speed: about 6 µs a value (the
event format's CRC is computed in pure Python), 40 s for the 6.6 million values of a 10,000-step,
24-layer run.

`export_tensorboard(run, out_dir)` does the work; `main` only parses arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "main", "export_tensorboard", "ExportResult", "tag_part"]

EVENT_FILE_PREFIX = "events.out.tfevents."
QUANTILES = ("min", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "max")
# Percent of the values between consecutive quantiles above (min..p01: 1 %, p01..p05: 4 %, ...).
QUANTILE_MASS = (1.0, 4.0, 20.0, 25.0, 25.0, 20.0, 4.0, 1.0)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def tag_part(text) -> str:
    """A piece of a tag from run data: ``[A-Za-z0-9._-]`` only, at most 100 characters."""
    out = _UNSAFE.sub("_", str(text))[:100]
    return out or "_"


def _layer_name(layer) -> str:
    try:
        v = float(layer)
    except (TypeError, ValueError):
        return tag_part(layer)
    if not math.isfinite(v) or v != int(v):
        return "L" + tag_part(layer)
    return "Ltop" if int(v) == -1 else f"L{int(v):02d}"


# (table, key columns that name the series, columns left out, tag layout)
_TABLES = (
    ("steps", (), ("step", "time"), "steps/{col}"),
    ("layers", ("layer", "group"), ("step",), "layers/{col}/{layer}.{group}"),
    ("ssm", ("module", "direction"), ("step", "layer"), "ssm/{col}/{module}/{direction}"),
    ("ssm_state", ("layer", "direction", "pos"), ("step",),
     "ssm_state/{layer}.{direction}/pos{pos}"),
    ("attention", ("module",), ("step", "layer"), "attention/{col}/{module}"),
    ("eval", (), ("step",), "eval/{col}"),
)


@dataclass
class ExportResult:
    """What `export_tensorboard` wrote."""
    path: Path            # the event file
    steps: int            # events written (one per step)
    scalars: int          # scalar values
    histograms: int       # histogram values
    tags: int             # distinct scalar and histogram tags
    partial: bool         # the run had unreadable parts (what could be read was exported)


def _series(frame, keys: tuple[str, ...]) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Each row's series (an index) and, per series, the tag-safe text of each key column."""
    import pandas as pd
    if not keys:
        return np.zeros(len(frame), np.int64), [{}]
    codes, uniques = pd.MultiIndex.from_frame(frame[list(keys)]).factorize()
    names = []
    for combo in uniques:
        combo = combo if isinstance(combo, tuple) else (combo,)
        names.append({k: _key_name(k, v) for k, v in zip(keys, combo)})
    return codes.astype(np.int64), names


def _key_name(key: str, value) -> str:
    if key == "layer":
        return _layer_name(value)
    if key == "pos":
        try:
            v = float(value)
        except (TypeError, ValueError):
            return "nan"
        return f"{v:.2f}" if math.isfinite(v) else "nan"
    return tag_part("" if value is None or value != value else value)


def _numeric(series) -> np.ndarray | None:
    """A column as float64 (bools as 0/1), or None when it is not numeric."""
    import pandas as pd
    if pd.api.types.is_bool_dtype(series.dtype) or str(series.dtype) == "boolean":
        return series.astype("float64").to_numpy(na_value=np.nan)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    return None


def _valid_steps(frame) -> np.ndarray:
    """Mask of rows whose step is a whole number TensorBoard can store (int64)."""
    step = frame["step"].to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return np.isfinite(step) & (np.abs(step) <= 2.0**62) & (step == np.floor(step))


def _scalar_rows(run) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Every exported scalar as (step, tag index, value) arrays, in no order, and the tags."""
    tags: list[str] = []
    steps, tag_ids, values = [], [], []
    for table, keys, skip, layout in _TABLES:
        frame = run.table(table)
        if not len(frame) or "step" not in frame.columns:
            continue
        frame = frame[_valid_steps(frame)]
        if not len(frame):
            continue
        step = frame["step"].to_numpy(dtype="float64").astype(np.int64)
        codes, names = _series(frame, keys)
        for col in (c for c in frame.columns if c not in skip and c not in keys):
            if "{col}" not in layout and col != "state_norm":
                continue  # ssm_state: one value column, named by the tag's last part
            v = _numeric(frame[col])
            if v is None:
                continue  # text columns (nonfinite_where, ...) are not scalars
            prefix = layout.replace("{col}", tag_part(col))
            first = len(tags)
            tags += [prefix.format(**n) for n in names]
            steps.append(step)
            tag_ids.append(codes + first)
            values.append(v)
    if not steps:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), tags
    return np.concatenate(steps), np.concatenate(tag_ids), np.concatenate(values), tags


def _histogram_rows(run) -> list[tuple[int, str, np.ndarray]]:
    """(step, tag, the 9 quantiles) for each ssm row whose dt (A·dt) quantiles are usable."""
    frame = run.ssm
    if not len(frame):
        return []
    frame = frame[_valid_steps(frame)]
    codes, names = _series(frame, ("module", "direction"))
    step = frame["step"].to_numpy(dtype="float64").astype(np.int64)
    out = []
    for prefix in ("dt", "adt"):
        cols = [f"{prefix}_{q}" for q in QUANTILES]
        if not all(c in frame.columns for c in cols):
            continue
        q = np.stack([frame[c].to_numpy(dtype="float64", na_value=np.nan) for c in cols], axis=1)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(q).all(axis=1) & (np.diff(q, axis=1) >= 0).all(axis=1)
        for i in np.flatnonzero(ok):
            n = names[codes[i]]
            out.append((int(step[i]), f"ssm/{prefix}/{n['module']}/{n['direction']}", q[i]))
    return out


def _histogram_proto(q: np.ndarray):
    from tensorboard.compat.proto.summary_pb2 import HistogramProto
    mass = np.asarray(QUANTILE_MASS)
    mid = (q[1:] + q[:-1]) / 2
    return HistogramProto(min=float(q[0]), max=float(q[-1]), num=float(mass.sum()),
                          sum=float((mass * mid).sum()), sum_squares=float((mass * mid**2).sum()),
                          bucket_limit=[float(v) for v in q[1:]], bucket=[float(m) for m in mass])


def _wall_times(run) -> dict[int, float]:
    """Step -> wall time (unix seconds) from the steps table."""
    st = run.steps
    if not len(st):
        return {}
    st = st[_valid_steps(st)]
    t = st["time"].to_numpy(dtype="float64", na_value=np.nan)
    s = st["step"].to_numpy(dtype="float64").astype(np.int64)
    ok = np.isfinite(t) & (t >= 0) & (t < 1e11)
    return dict(zip(s[ok].tolist(), t[ok].tolist()))


def _prepare_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--tensorboard {out_dir}: exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    old = [p for p in out_dir.iterdir() if p.name.startswith(EVENT_FILE_PREFIX) and p.is_file()
           and not p.is_symlink()]
    if old and not overwrite:
        raise FileExistsError(f"{out_dir} already holds TensorBoard event files: pass --overwrite "
                              "to replace them (TensorBoard would show both)")
    for p in old:  # only event files, only in this folder
        p.unlink()


def export_tensorboard(run, out_dir, *, overwrite: bool = False) -> ExportResult:
    """Write `run` (a loaded Run or a run directory) as TensorBoard events into `out_dir`.

    One event file, written under a temporary name (which TensorBoard does not read) and
    renamed when complete. Raises FileExistsError when `out_dir` already has event files and
    not `overwrite` (with it, only the event files directly in `out_dir` are deleted),
    ImportError when the `tensorboard` package is missing, RunFormatError for an unreadable run.
    """
    from diagnostics.runfmt import Run, load_run
    try:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError as e:  # pragma: no cover - tensorboard is a dependency
        raise ImportError("diagnose export needs the tensorboard package "
                          "(pip install tensorboard)") from e

    if not isinstance(run, Run):
        run = load_run(run)
    out_dir = Path(out_dir)
    step, tag_id, value, tags = _scalar_rows(run)
    # One value per (step, tag): the last one recorded (a resumed run of an older version may
    # hold a step twice). Steps in increasing order: TensorBoard drops what it sees after a
    # later step as orphans of a restart.
    order = np.lexsort((tag_id, step))  # stable: equal (step, tag) keep their recorded order
    step, tag_id, value = step[order], tag_id[order], value[order]
    last = np.ones(len(step), bool)
    last[:-1] = (step[1:] != step[:-1]) | (tag_id[1:] != tag_id[:-1])
    step, tag_id, value = step[last], tag_id[last], value[last]
    hists: dict[int, dict[str, np.ndarray]] = {}
    for s, tag, q in _histogram_rows(run):
        hists.setdefault(s, {})[tag] = q
    all_steps = np.union1d(step, np.fromiter(hists, np.int64, len(hists)))
    bounds = np.searchsorted(step, all_steps, side="left").tolist() + [len(step)]

    walls = _wall_times(run)
    created = run.manifest.get("created_at")
    wall = float(created) if isinstance(created, (int, float)) and math.isfinite(created) else 0.0
    _prepare_dir(out_dir, overwrite)
    final = out_dir / (f"{EVENT_FILE_PREFIX}{int(time.time())}.{socket.gethostname()}."
                       f"{os.getpid()}.mambascope")
    tmp = out_dir / f".mambascope-export.{os.getpid()}.tmp"  # no "tfevents": TB skips it
    values = value.tolist()
    n_hist, seen_hist = 0, set()
    try:
        with open(tmp, "wb") as f:
            rec = RecordWriter(f)
            rec.write(Event(wall_time=time.time(), file_version="brain.Event:2")
                      .SerializeToString())
            for i, s in enumerate(all_steps.tolist()):
                a, b = bounds[i], bounds[i + 1]
                vals = [Summary.Value(tag=tags[t], simple_value=v)
                        for t, v in zip(tag_id[a:b].tolist(), values[a:b])]
                for tag, q in hists.get(s, {}).items():
                    vals.append(Summary.Value(tag=tag, histo=_histogram_proto(q)))
                    n_hist += 1
                    seen_hist.add(tag)
                wall = walls.get(s, wall)
                rec.write(Event(wall_time=wall, step=s, summary=Summary(value=vals))
                          .SerializeToString())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return ExportResult(final, len(all_steps), len(values), n_hist,
                        len(np.unique(tag_id)) + len(seen_hist), bool(run.partial))


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--run", required=True, metavar="PATH", help="the run directory to export")
    p.add_argument("--tensorboard", required=True, metavar="DIR",
                   help="folder for the TensorBoard event files (then: tensorboard --logdir DIR)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace event files already in DIR (nothing else there is touched)")


def main(args: argparse.Namespace, name: str) -> int:
    from rich.console import Console
    from rich.markup import escape

    from diagnostics.runfmt import load_run

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ValueError("diagnose export needs the tensorboard package "
                         "(pip install tensorboard)") from None
    run = load_run(args.run)
    result = export_tensorboard(run, args.tensorboard, overwrite=args.overwrite)
    console = Console(highlight=False, soft_wrap=True)
    if result.partial:
        console.print(f"[yellow]partial run[/yellow]: {escape(' '.join(run.warnings[:3]))}")
    console.print(f"exported {result.scalars} scalars and {result.histograms} histograms "
                  f"({result.tags} tags, {result.steps} steps) of {escape(run.name)} to "
                  f"{escape(str(result.path))}  (view: tensorboard --logdir "
                  f"{escape(str(result.path.parent))})")
    return 0

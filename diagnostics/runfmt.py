"""The run directory: its one writer (:class:`RunWriter`) and its one reader (:func:`load_run`).

A run lives in ``runs/NAME/``::

    manifest.json                       # schema version, config, status, heartbeat
    <table>/part-000000.parquet         # one part per flush
    <table>/part-000032-000063.parquet  # a merged part: replaces parts 32..63
    .writer.lock                        # held (flock) while a writer has the run open

Every file is written under a temporary name (``*.tmp``) and ``os.replace``d into place, so a
reader, or a run killed with ``kill -9``, only ever sees whole files: a crash loses at most the
rows not yet flushed.

Merged parts. A part's name is its *span* of flush numbers: ``part-<seq>`` covers ``[seq, seq]``
and ``part-<first>-<last>`` covers ``[first, last]``. The writer merges parts by writing the
merged file first and deleting the parts it covers afterwards; the reader ignores every part
whose span lies inside another part's span. So whatever moment a reader lists a table's folder
(before the merged file exists, between its creation and the deletions, after them), it sees
each row exactly once. A part deleted between the reader's listing and its read makes the reader
list the folder again.

Nothing here prints; the writer logs (``logging``) the few things it repairs on the way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

try:  # POSIX advisory locks; elsewhere a second writer is simply not detected.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "SCHEMA_VERSION",
    "STALE_AFTER_S",
    "STATUSES",
    "TABLE_COLUMNS",
    "TABLES",
    "Run",
    "RunFormatError",
    "RunWriter",
    "list_runs",
    "load_run",
    "run_signature",
]

_log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------
# The contract (docs/interfaces.md, "The run directory")
# ------------------------------------------------------------------------------------------

SCHEMA_VERSION = 1
"""Version this module writes and the newest it reads. Bump it when a reader of the old version
would misread the new files (renamed columns, new part naming), not for new optional columns."""

STALE_AFTER_S = 120.0
"""A run whose manifest says ``running`` but whose heartbeat (``updated_at``) is older than this
is reported as ``crashed``. The writer beats on every flush (every ``flush_every_s``, 2 s by
default) and on :meth:`RunWriter.heartbeat`; 120 s leaves room for a slow step or a
checkpoint save without calling a live run dead, and still tells a killed run within minutes."""

STATUSES = ("running", "finished", "crashed", "diverged")
MANIFEST_NAME = "manifest.json"
LOCK_NAME = ".writer.lock"

DEFAULT_FLUSH_EVERY_S = 2.0
DEFAULT_FLUSH_ROWS = 100_000
"""Rows buffered per table before an append forces a flush: bounds memory (python lists cost
about 32 bytes a cell) whatever the flush interval."""

DEFAULT_MERGE_PARTS = 32
"""While running, the writer merges a table's last this-many flushed parts into one, so that a
long run flushed every 2 s reads a few dozen files per table, not thousands."""

DEFAULT_COMPRESSION = "zstd"

_INT, _FLOAT, _BOOL, _STR = "int64", "float64", "bool", "string"
_ARROW_TYPES = {_INT: pa.int64(), _FLOAT: pa.float64(), _BOOL: pa.bool_(), _STR: pa.string()}

_DT_STATS = ("min", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "max")

TABLE_COLUMNS: dict[str, dict[str, str]] = {
    "steps": {
        "step": _INT, "time": _FLOAT, "epoch": _INT, "loss": _FLOAT, "lr": _FLOAT,
        "grad_norm": _FLOAT, "clip": _FLOAT, "clipped": _BOOL, "step_time_s": _FLOAT,
        "samples_per_s": _FLOAT, "peak_mem_mb": _FLOAT, "nonfinite": _BOOL,
        "nonfinite_where": _STR,
    },
    "layers": {
        "step": _INT, "layer": _INT, "group": _STR, "grad_norm": _FLOAT, "weight_norm": _FLOAT,
        "update_ratio": _FLOAT,
    },
    "ssm": {
        "step": _INT, "layer": _INT, "module": _STR, "direction": _STR,
        **{f"dt_{s}": _FLOAT for s in _DT_STATS},
        **{f"adt_{s}": _FLOAT for s in _DT_STATS},
        "frac_erased": _FLOAT, "frac_frozen": _FLOAT, "mem_len": _FLOAT, "selectivity": _FLOAT,
        "state_norm_first": _FLOAT, "state_norm_mid": _FLOAT, "state_norm_last": _FLOAT,
        "state_norm_max": _FLOAT, "alog_mean": _FLOAT, "alog_std": _FLOAT, "alog_min": _FLOAT,
        "alog_max": _FLOAT, "alog_drift": _FLOAT, "d_mean": _FLOAT, "d_std": _FLOAT,
    },
    "ssm_state": {
        "step": _INT, "layer": _INT, "direction": _STR, "pos": _FLOAT, "state_norm": _FLOAT,
    },
    "attention": {
        "step": _INT, "layer": _INT, "module": _STR, "entropy": _FLOAT,
        "mean_distance": _FLOAT, "logit_max": _FLOAT,
    },
    "eval": {
        "step": _INT, "epoch": _INT, "mAP": _FLOAT, "rank1": _FLOAT, "rank5": _FLOAT,
        "rank10": _FLOAT,
    },
    "events": {"step": _INT, "kind": _STR, "where": _STR, "message": _STR},
}
"""Documented columns of each table and their types, in the order frames show them. Loaded
frames always have these columns (null where a run did not record them), then any extra ones."""

TABLES = tuple(TABLE_COLUMNS)

# A table's name becomes a folder name: keep it a plain identifier so no name (from a caller or
# from disk) can point outside the run directory.
_TABLE_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_PART_RE = re.compile(r"^part-(\d{6,})(?:-(\d{6,}))?\.parquet$")
_TMP_SUFFIX = ".tmp"
# Attempts at listing+reading a table while a writer merges its parts under the reader's feet.
_READ_ATTEMPTS = 20
_READ_THREADS = 4
_SURROGATES_RE = re.compile("[\ud800-\udfff]")


class RunFormatError(Exception):
    """A run directory (or part of one) that cannot be read. The message is always one line."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(text: Any) -> str:
    """``text`` as one line: paths and exception texts may hold newlines (hostile run names)."""
    return re.sub(r"[\r\n\x0b\x0c\x1c-\x1e\x85\u2028\u2029]+", " ", str(text)).strip()


def _check_table_name(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_NAME_RE.match(table):
        raise ValueError(f"invalid table name {table!r}: use letters, digits and _ (max 64)")
    return table


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    """One part file and the span of flush numbers it covers."""

    path: Path
    first: int
    last: int


def _scan_parts(table_dir: Path) -> list[_Part]:
    """Every part file in ``table_dir`` (covered ones included), ordered by span."""
    parts = []
    with os.scandir(table_dir) as it:
        for entry in it:
            m = _PART_RE.match(entry.name)
            # Symlinks are skipped: the writer never makes them, and following one could read
            # a file outside the run directory.
            if m and entry.is_file(follow_symlinks=False):
                first = int(m.group(1))
                last = int(m.group(2)) if m.group(2) else first
                if last >= first:
                    parts.append(_Part(Path(entry.path), first, last))
    parts.sort(key=lambda p: (p.first, -p.last))
    return parts


def _live_parts(parts: list[_Part]) -> tuple[list[_Part], list[str]]:
    """Drop parts covered by a merged part. Returns the live parts and any warnings.

    ``parts`` must be sorted by (first, -last): then a part is covered exactly when it ends at or
    before the furthest end seen so far.
    """
    live, notes, reach = [], [], -1
    for part in parts:
        if part.last <= reach:
            continue  # inside a merged part that is already counted
        if part.first <= reach:
            # Partly overlapping spans: this writer never makes them. Keep the rows (better
            # duplicated than lost) and say so.
            notes.append(f"{part.path.name} overlaps another part: rows may repeat")
        live.append(part)
        reach = part.last
    return live, notes


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _replace_atomically(final: Path, write, *, fsync: bool) -> None:
    """Write ``final`` through ``write(fileobj)`` into a temporary file, then ``os.replace`` it.

    The data is fsync'ed before the rename so that after a power cut the new name never points
    at an empty file (the classic ext4 delayed-allocation trap).
    """
    tmp = final.with_name(f"{final.name}.{os.getpid()}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_default(obj: Any) -> Any:
    """JSON for the odd things configs hold: numpy/torch scalars, paths, dtypes, sets."""
    if hasattr(obj, "item") and callable(obj.item):
        with contextlib.suppress(Exception):
            return obj.item()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def _write_json(path: Path, obj: Mapping[str, Any], *, fsync: bool) -> None:
    # allow_nan: Python's json reads NaN/Infinity back; a config may well hold them.
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n"
    _replace_atomically(path, lambda f: f.write(text.encode("utf-8")), fsync=fsync)


# ------------------------------------------------------------------------------------------
# Writer
# ------------------------------------------------------------------------------------------


def _plain_scalar(v: Any) -> Any:
    """A python scalar from numpy/torch scalars; strings lose lone surrogates (not encodable)."""
    if isinstance(v, str):
        return _SURROGATES_RE.sub("\ufffd", v)
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if hasattr(v, "item") and callable(v.item):
        with contextlib.suppress(Exception):
            return v.item()
    return v


def _normalize_inferred(arr: pa.Array) -> pa.Array:
    """Widen inferred ints to int64 and floats to float64 (the format's only numeric types)."""
    if pa.types.is_integer(arr.type) and arr.type != pa.int64():
        with contextlib.suppress(pa.ArrowException):
            return arr.cast(pa.int64())
    if pa.types.is_floating(arr.type) and arr.type != pa.float64():
        return arr.cast(pa.float64())
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        return arr.cast(pa.string())
    return arr


def _to_arrow(values: Any, kind: str | None, where: str, warned: set[str]) -> pa.Array:
    """One column of a part. ``kind`` is the documented type, None for undocumented columns.

    Values are converted with arrow's type inference, then *safely* cast to the documented
    type: ``pa.array([1.5], type=pa.int64())`` would silently truncate to 1, a safe cast
    refuses. When inference fails (a torch scalar, a lone surrogate, numbers mixed with text)
    the values are made plain first. Values that do not fit the documented type are stored
    with the type they have: recording never fails over one odd value, and the reader coerces
    or reports it. Each column (``where``) is logged once per writer (``warned``).
    """
    errors = (pa.ArrowException, TypeError, ValueError, OverflowError, UnicodeError)
    try:
        arr = pa.array(values)
    except errors:
        plain = [_plain_scalar(v) for v in values]
        try:
            arr = pa.array(plain)
        except errors:
            # Mixed types (numbers and strings, ...): keep every value, as text.
            if where not in warned:
                warned.add(where)
                _log.warning("%s: mixed value types, stored as strings", where)
            return pa.array([None if v is None else str(v) for v in plain], type=pa.string())
    arr = _normalize_inferred(arr)
    target = _ARROW_TYPES[kind] if kind else None
    if target is None or arr.type == target:
        return arr
    try:
        return arr.cast(target)  # safe: refuses truncation, overflow, unparsable text
    except errors:
        if where not in warned:
            warned.add(where)
            _log.warning("%s: values do not fit %s, stored as %s", where, kind, arr.type)
        return arr


class _Buffer:
    """Rows of one table waiting for a flush, kept column-wise in python lists.

    Appending a row costs a dict walk and list appends: no pandas, no arrow per row. Columns
    that appear late are back-filled with None; columns missing from a row get None.
    """

    __slots__ = ("table", "columns", "n", "chunks", "rows", "warned")

    def __init__(self, table: str):
        self.table = table
        self.columns: dict[str, list] = {}
        self.n = 0  # rows in ``columns``
        self.chunks: list[pa.Table] = []  # sealed rows and columnar extends, in order
        self.rows = 0  # all buffered rows
        self.warned: set[str] = set()  # columns already reported as stored oddly

    def add(self, row: Mapping[str, Any]) -> None:
        cols, n = self.columns, self.n
        for key, value in row.items():
            col = cols.get(key)
            if col is None:
                col = cols[key] = [None] * n
            col.append(value)
        self.n = n + 1
        self.rows += 1
        if len(row) != len(cols):  # some known column is absent from this row
            for col in cols.values():
                if len(col) == n:
                    col.append(None)

    def seal(self) -> None:
        """Turn the row lists into an arrow chunk (keeps order with columnar extends)."""
        if not self.n:
            return
        kinds = TABLE_COLUMNS.get(self.table, {})
        arrays = {
            name: _to_arrow(values, kinds.get(name), f"{self.table}.{name}", self.warned)
            for name, values in self.columns.items()
        }
        self.chunks.append(pa.table(arrays))
        self.columns, self.n = {}, 0

    def add_columns(self, columns: Mapping[str, Any]) -> None:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"{self.table}: columns have different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        if not n:
            return
        self.seal()
        kinds = TABLE_COLUMNS.get(self.table, {})
        arrays = {
            str(name): _to_arrow(values, kinds.get(name), f"{self.table}.{name}", self.warned)
            for name, values in columns.items()
        }
        self.chunks.append(pa.table(arrays))
        self.rows += n

    def put_back(self, chunks: list[pa.Table]) -> None:
        """Return unwritten chunks (taken by :meth:`take`) to the front of the buffer."""
        self.chunks[:0] = chunks
        self.rows += sum(c.num_rows for c in chunks)

    def take(self) -> list[pa.Table]:
        """The buffered rows as arrow tables, each with one schema; empties the buffer."""
        self.seal()
        chunks, self.chunks, self.rows = self.chunks, [], 0
        if len(chunks) <= 1:
            return chunks
        try:
            return [pa.concat_tables(chunks, promote_options="permissive")]
        except pa.ArrowException:
            return chunks  # conflicting types between chunks: one part each


class RunWriter:
    """Writes one run directory. Not thread-safe: one writer per run, in one thread.

    Args:
        run_dir: ``runs/NAME``; created (with parents) if missing.
        manifest: keys of the manifest (``backbone``, ``config``, ...; see
            docs/interfaces.md). ``schema_version``, ``status``, ``created_at``,
            ``updated_at`` and ``last_step`` are managed by the writer. ``name`` defaults to
            the directory's name.
        flush_every_s: an ``append`` flushes when this long has passed since the last flush
            (also the heartbeat period). ``None`` or ``math.inf``: only on ``flush_rows``.
        flush_rows: an ``append`` flushes when one table buffers this many rows.
        merge_parts: merge a table's last this-many flushed parts into one while running
            (0 disables; ``close`` compacts regardless).
        overwrite: replace an existing run in ``run_dir``.
        resume: continue an existing run: its tables are kept and new parts are numbered
            after the existing ones. Without an existing run, starts a new one.
        enabled: ``False`` makes every method a no-op and touches no file (pass
            ``rank == 0`` under torch.distributed).
        compression: parquet codec of the parts.
        fsync: fsync each file before its rename (durability across power loss; ``kill -9``
            safety does not need it).

    Raises:
        FileExistsError: ``run_dir`` holds a run (or other files) and neither ``overwrite``
            nor ``resume`` is set.
        RuntimeError: another live process is writing the run.
        RunFormatError: ``resume`` of a run whose manifest cannot be read.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        manifest: Mapping[str, Any] | None = None,
        flush_every_s: float | None = DEFAULT_FLUSH_EVERY_S,
        flush_rows: int = DEFAULT_FLUSH_ROWS,
        merge_parts: int = DEFAULT_MERGE_PARTS,
        overwrite: bool = False,
        resume: bool = False,
        enabled: bool = True,
        compression: str = DEFAULT_COMPRESSION,
        fsync: bool = True,
    ):
        if overwrite and resume:
            raise ValueError("overwrite and resume are exclusive")
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be >= 1, got {flush_rows}")
        if merge_parts < 0 or merge_parts == 1:
            raise ValueError(f"merge_parts must be 0 (off) or >= 2, got {merge_parts}")
        self.path = Path(run_dir)
        self.enabled = bool(enabled)
        self.closed = False
        self._flush_every_s = math.inf if flush_every_s is None else float(flush_every_s)
        self._flush_rows = int(flush_rows)
        self._merge_parts = int(merge_parts)
        self._compression = compression
        self._fsync = fsync
        self._buffers: dict[str, _Buffer] = {}
        self._next_seq: dict[str, int] = {}
        # Parts flushed since the last merge, kept in memory so merging never reads back.
        self._unmerged: dict[str, list[tuple[int, pa.Table]]] = {}
        self._last_flush = time.monotonic()
        self._lock_file = None
        self._manifest: dict[str, Any] = {}
        if not self.enabled:
            return
        self._open(dict(manifest or {}), overwrite=overwrite, resume=resume)

    # -- opening -------------------------------------------------------------------------

    def _open(self, manifest: dict[str, Any], *, overwrite: bool, resume: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        has_run = (self.path / MANIFEST_NAME).is_file()
        others = [e for e in os.listdir(self.path) if e != LOCK_NAME]
        if others and not has_run:
            raise FileExistsError(f"{self.path} exists and is not a run directory")
        if has_run and not (overwrite or resume):
            raise FileExistsError(
                f"{self.path} already holds a run: pass overwrite=True or resume=True"
            )
        self._lock()
        try:
            self._start(manifest, has_run=has_run, resume=resume)
        except BaseException:
            self._unlock()
            raise

    def _start(self, manifest: dict[str, Any], *, has_run: bool, resume: bool) -> None:
        now = time.time()
        for key in ("schema_version", "status"):
            manifest.pop(key, None)
        if has_run and resume:
            old = _read_manifest(self.path)
            if _check_schema_version(old, self.path) != SCHEMA_VERSION:
                # Parts of two schema versions in one run would misread: refuse.
                raise RunFormatError(
                    f"{self.path}: cannot resume a schema {old['schema_version']} run "
                    f"(this writer writes {SCHEMA_VERSION})"
                )
            merged = {**old, **manifest}
            merged["created_at"] = old.get("created_at", now)
            merged["resumed_at"] = [*old.get("resumed_at", []), now]
            manifest = merged
            for stale in self.path.glob(f"{MANIFEST_NAME}.*{_TMP_SUFFIX}"):
                with contextlib.suppress(OSError):
                    stale.unlink()  # left by a writer killed mid-write
            for table_dir in self._table_dirs():
                for stale in table_dir.glob(f"part-*{_TMP_SUFFIX}"):
                    with contextlib.suppress(OSError):
                        stale.unlink()
                parts = _scan_parts(table_dir)
                self._next_seq[table_dir.name] = max((p.last for p in parts), default=-1) + 1
        else:
            if has_run:  # overwrite: we hold the lock, so no live writer is in there
                for entry in os.scandir(self.path):
                    if entry.name == LOCK_NAME:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
            manifest.setdefault("name", self.path.absolute().name)
            manifest["created_at"] = now
            manifest.setdefault("last_step", None)
        self._manifest = {"schema_version": SCHEMA_VERSION, **manifest, "status": "running"}
        self._manifest["updated_at"] = now
        self._write_manifest()

    def _lock(self) -> None:
        """Hold an exclusive flock on the run while open; the OS drops it if we are killed."""
        if fcntl is None:
            return
        f = open(self.path / LOCK_NAME, "a+b")  # noqa: SIM115 - held for the writer's life
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise RuntimeError(f"{self.path} is being written by another process") from None
        self._lock_file = f

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def _table_dirs(self) -> list[Path]:
        return [
            Path(e.path)
            for e in os.scandir(self.path)
            if e.is_dir(follow_symlinks=False) and _TABLE_NAME_RE.match(e.name)
        ]

    # -- recording -----------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as last written (empty when disabled)."""
        return json.loads(json.dumps(self._manifest, default=_json_default))

    def _buffer(self, table: str) -> _Buffer:
        if self.closed:
            raise ValueError(f"{self.path}: writer is closed")
        buf = self._buffers.get(table)
        if buf is None:
            buf = self._buffers[_check_table_name(table)] = _Buffer(table)
        return buf

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        """Buffer one row of ``table`` (a dict column -> python/numpy scalar)."""
        if not self.enabled:
            return
        buf = self._buffer(table)
        buf.add(row)
        if buf.rows >= self._flush_rows or self._flush_due():
            self.flush()

    def extend(self, table: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Buffer several rows of ``table``."""
        if not self.enabled:
            return
        buf = self._buffer(table)
        for row in rows:
            buf.add(row)
        if buf.rows >= self._flush_rows or self._flush_due():
            self.flush()

    def extend_columns(self, table: str, columns: Mapping[str, Sequence | np.ndarray]) -> None:
        """Buffer rows given column-wise (equal-length sequences or numpy arrays).

        The cheap way to record many rows at once (a per-layer sweep, a benchmark).
        """
        if not self.enabled:
            return
        buf = self._buffer(table)
        buf.add_columns(columns)
        if buf.rows >= self._flush_rows or self._flush_due():
            self.flush()

    def _flush_due(self) -> bool:
        return time.monotonic() - self._last_flush >= self._flush_every_s

    def heartbeat(self) -> None:
        """Flush if ``flush_every_s`` has passed. Call it from long loops that record nothing
        (an evaluation pass), so that a live run is not read as crashed."""
        if self.enabled and not self.closed and self._flush_due():
            self.flush()

    def flush(self) -> None:
        """Write every non-empty buffer as a new part, then beat the manifest's heartbeat."""
        if not self.enabled or self.closed:
            return
        last_step = None
        for table, buf in self._buffers.items():
            if not buf.rows:
                continue
            chunks = buf.take()
            for i, chunk in enumerate(chunks):
                try:
                    self._write_part(table, chunk)
                except BaseException:
                    buf.put_back(chunks[i:])  # a failed write (disk full) loses no rows
                    raise
                if "step" in chunk.column_names and pa.types.is_integer(chunk["step"].type):
                    top = pc.max(chunk["step"]).as_py()
                    if top is not None:
                        last_step = top if last_step is None else max(last_step, top)
        if last_step is not None:
            self._manifest["last_step"] = last_step
        self._last_flush = time.monotonic()
        self._manifest["updated_at"] = time.time()
        self._write_manifest()

    def update_manifest(self, **keys: Any) -> None:
        """Set manifest keys and rewrite it now (e.g. ``status="diverged"``, ``model=...``)."""
        if not self.enabled:
            return
        if "schema_version" in keys:
            raise ValueError("schema_version is managed by the writer")
        if "status" in keys and keys["status"] not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {keys['status']!r}")
        self._manifest.update(keys)
        if "updated_at" not in keys:
            self._manifest["updated_at"] = time.time()
        self._write_manifest()

    def rewind(self, step: int) -> int:
        """Drop every recorded row whose ``step`` is ``>= step``, in every table; returns how
        many rows went. For resuming from a checkpoint taken before the run stopped: the steps
        after it are recorded again, and each step must stay recorded once.

        Rows without a step (null) and tables without a ``step`` column are kept. Atomic for
        readers, by the merge rule: the kept rows of a table's affected parts are written as
        one part whose span covers them and one fresh flush number (names are never reused),
        then the covered parts are deleted; a reader sees the old rows or the new part, never
        both. Only the parts from the first one holding a step ``>= step`` are rewritten.
        """
        if not self.enabled:
            return 0
        if self.closed:
            raise ValueError(f"{self.path}: writer is closed")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"rewind step must be an integer >= 0, got {step!r}")
        step = int(step)
        self.flush()  # buffered rows go through the same filter
        dropped = 0
        for table_dir in self._table_dirs():
            dropped += self._rewind_table(table_dir, step)
        last = self._manifest.get("last_step")
        if isinstance(last, int) and not isinstance(last, bool) and last >= step:
            self._manifest["last_step"] = step - 1 if step > 0 else None
        self._manifest["updated_at"] = time.time()
        self._write_manifest()
        return dropped

    def _rewind_table(self, table_dir: Path, step: int) -> int:
        table = table_dir.name
        live, _ = _live_parts(_scan_parts(table_dir))
        start = None  # index of the first live part holding a step >= `step`
        for i, part in enumerate(live):
            try:
                steps = pq.read_table(part.path, columns=["step"])["step"]
            except (KeyError, OSError, pa.ArrowException):
                # No step column (an undocumented table) or a damaged part: not ours to cut.
                continue
            if not (pa.types.is_integer(steps.type) or pa.types.is_floating(steps.type)):
                continue
            top = pc.max(steps).as_py()
            if top is not None and top >= step:
                start = i
                break
        if start is None:
            return 0
        tail = live[start:]
        kept, dropped = [], 0
        for part in tail:
            try:
                data = pq.read_table(part.path)
            except (OSError, pa.ArrowException) as e:
                _log.warning("%s: unreadable part dropped while rewinding (%s)", part.path,
                             _one_line(e))
                continue
            steps = data["step"] if "step" in data.column_names else None
            if steps is not None and (pa.types.is_integer(steps.type)
                                      or pa.types.is_floating(steps.type)):
                keep = pc.fill_null(pc.less(steps, step), True)
                n = data.num_rows
                data = data.filter(keep)
                dropped += n - data.num_rows
            kept.append(data)
        seq = self._next_seq.get(table, tail[-1].last + 1)
        self._next_seq[table] = seq + 1
        first = tail[0].first
        merged = _concat(kept) if kept else pa.table({"step": pa.array([], pa.int64())})
        self._write_parquet(merged, self._part_path(table, first, seq))
        self._unmerged[table] = []  # pending parts were just covered: never merge them again
        for part in _scan_parts(table_dir):
            if first <= part.first and part.last < seq:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part.path)
        if self._fsync:
            _fsync_dir(table_dir)
        return dropped

    def close(self, status: str | None = None, *, compact: bool = True) -> None:
        """Flush, compact each table into one part (``compact``), set the final status.

        ``status=None`` means ``finished``, unless the caller already set a final status
        (``update_manifest(status="diverged")``). If the flush fails, the status written is
        ``crashed`` and the error propagates. Closing twice is a no-op.
        """
        if not self.enabled or self.closed:
            return
        if status is not None and status not in STATUSES[1:]:
            raise ValueError(f"final status must be one of {STATUSES[1:]}, got {status!r}")
        if status is None:
            current = self._manifest.get("status")
            status = "finished" if current == "running" else current
        try:
            self.flush()
            if compact:
                for table_dir in self._table_dirs():
                    self._compact(table_dir)
        except BaseException:
            status = "crashed"
            raise
        finally:
            self.closed = True
            self._manifest["status"] = status
            self._manifest["updated_at"] = time.time()
            try:
                self._write_manifest()
            finally:
                self._unlock()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        elif self.enabled and not self.closed:
            # Keep a final status the caller chose (diverged) before raising; else crashed.
            keep = self._manifest.get("status") not in (None, "running")
            try:
                self.close(None if keep else "crashed", compact=False)
            except Exception:
                # The caller's exception is the one to see; a failing flush only gets logged.
                _log.exception("%s: could not close the run after an error", self.path)
        return False  # never swallow the exception

    # -- files -----------------------------------------------------------------------------

    def _write_manifest(self) -> None:
        _write_json(self.path / MANIFEST_NAME, self._manifest, fsync=self._fsync)

    def _part_path(self, table: str, first: int, last: int) -> Path:
        span = f"{first:06d}" if first == last else f"{first:06d}-{last:06d}"
        return self.path / table / f"part-{span}.parquet"

    def _write_parquet(self, table: pa.Table, path: Path) -> None:
        _replace_atomically(
            path,
            lambda f: pq.write_table(table, f, compression=self._compression),
            fsync=self._fsync,
        )

    def _write_part(self, table: str, data: pa.Table) -> None:
        table_dir = self.path / table
        if table not in self._next_seq:
            table_dir.mkdir(exist_ok=True)
            self._next_seq[table] = 0
        seq = self._next_seq[table]
        self._write_parquet(data, self._part_path(table, seq, seq))
        self._next_seq[table] = seq + 1
        if self._merge_parts:
            pending = self._unmerged.setdefault(table, [])
            pending.append((seq, data))
            if len(pending) >= self._merge_parts:
                self._merge(table, pending)

    def _merge(self, table: str, pending: list[tuple[int, pa.Table]]) -> None:
        """Replace the parts in ``pending`` (consecutive flushes) by one merged part."""
        self._unmerged[table] = []
        try:
            merged = pa.concat_tables([t for _, t in pending], promote_options="permissive")
        except pa.ArrowException:
            return  # parts with conflicting types stay separate; the reader copes
        first, last = pending[0][0], pending[-1][0]
        self._write_parquet(merged, self._part_path(table, first, last))
        # Only now that the merged part exists may the parts it covers go (the reader ignores
        # covered parts, so it never sees these rows twice, nor misses them).
        for seq, _ in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._part_path(table, seq, seq))

    def _compact(self, table_dir: Path) -> None:
        """Rewrite a table's live parts as one part, same ordering rule as :meth:`_merge`."""
        self._unmerged.pop(table_dir.name, None)
        parts, _ = _live_parts(_scan_parts(table_dir))
        if len(parts) < 2:
            return
        try:
            data = _concat([pq.read_table(p.path) for p in parts])
        except (OSError, pa.ArrowException) as e:
            # A damaged part must not stop the run from closing: leave the table as it is.
            _log.warning("%s: not compacted (%s)", table_dir, _one_line(e))
            return
        self._write_parquet(data, self._part_path(table_dir.name, parts[0].first, parts[-1].last))
        for part in parts:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part.path)
        if self._fsync:
            _fsync_dir(table_dir)


# ------------------------------------------------------------------------------------------
# Reader
# ------------------------------------------------------------------------------------------


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST_NAME
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise RunFormatError(f"{path}: not a run (no {MANIFEST_NAME})") from None
    except UnicodeDecodeError:
        raise RunFormatError(f"{file}: not UTF-8 text") from None
    except OSError as e:
        raise RunFormatError(f"{file}: cannot read ({e.strerror or e})") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{file}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise RunFormatError(f"{file}: not valid JSON (nested too deeply)") from None
    if not isinstance(manifest, dict):
        raise RunFormatError(f"{file}: expected a JSON object, got {type(manifest).__name__}")
    return manifest


def _check_schema_version(manifest: Mapping[str, Any], path: Path) -> int:
    version = manifest.get("schema_version")
    if version is None:
        raise RunFormatError(f"{path}: manifest has no schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RunFormatError(f"{path}: schema_version must be an integer, got {version!r:.40}")
    if version > SCHEMA_VERSION:
        raise RunFormatError(
            f"run was written by a newer mambascope (schema {version}; "
            f"this reader knows {SCHEMA_VERSION})"
        )
    if version < 1:
        raise RunFormatError(f"{path}: unknown schema_version {version}")
    return version


def _read_part(path: Path) -> pa.Table:
    """Read one part file (a function of its own so tests can interpose).

    ``ParquetFile.read`` skips the dataset layer of ``pq.read_table``: a third faster on the
    small parts of a live run."""
    with pq.ParquetFile(path) as f:
        return f.read()


def _family(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    return str(t)


def _coerce(col: pa.ChunkedArray, kind: str, where: str, notes: list[str]) -> pa.ChunkedArray:
    """``col`` as the documented type ``kind``; notes what it had to change.

    Lossless changes between numbers (an int column in a float slot, an integral float in an
    int slot) pass silently; text parsed into numbers or booleans, or anything lossy, is noted.
    Unconvertible values become null. Only nested types (lists, structs) are an error.
    """
    target = _ARROW_TYPES[kind]
    if col.type == target:
        return col
    src, dst = _family(col.type), _family(target)
    if src == "null":
        return pa.chunked_array([pa.nulls(len(col), target)])
    try:
        out = col.cast(target)  # safe cast: fails rather than lose information
    except (pa.ArrowException, TypeError, ValueError):
        out = None
    if out is not None:
        if src != dst:  # e.g. numbers written as text: worth telling, though nothing is lost
            notes.append(f"{where}: {col.type} column read as {target}")
        return out
    if src == "number" and kind == _INT:  # NaN or fractions in an int column
        notes.append(f"{where}: non-integer values in an int column, kept as float64")
        out = col.cast(pa.float64())
        infinite = pc.is_inf(out)
        if pc.any(infinite).as_py():
            # No integer is infinite: a gap (NaN/null) as the contract has it, not a step.
            notes.append(f"{where}: infinite values in an int column read as null")
            out = pc.if_else(infinite, pa.scalar(None, pa.float64()), out)
        return out
    if src in ("string", "number", "bool") and dst in ("number", "bool"):
        series = col.to_pandas()
        if src == "string" and dst == "bool":
            lowered = series.str.strip().str.lower()
            parsed = lowered.map({"true": True, "1": True, "false": False, "0": False})
            arr = pa.array(parsed.astype(object).where(parsed.notna(), None), type=pa.bool_())
        else:
            parsed = pd.to_numeric(series, errors="coerce")
            arr = pa.array(parsed.to_numpy(dtype="float64"), type=pa.float64())
        lost = int(series.notna().sum() - parsed.notna().sum())
        notes.append(f"{where}: {col.type} column read as {arr.type} ({lost} unparsable -> null)")
        return pa.chunked_array([arr])
    if dst == "string":
        with contextlib.suppress(pa.ArrowException):
            return col.cast(pa.string())
    raise RunFormatError(f"{where}: column has type {col.type}, expected {target}")


def _concat(tables: list[pa.Table], where: str = "", notes: list[str] | None = None) -> pa.Table:
    """Concatenate parts whose schemas may differ (columns added or dropped over a run).

    Missing columns become null and ints meeting floats become floats. A column holding
    numbers in one part and text in another (undocumented columns only) is read as text.
    """
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException:
        pass
    families: dict[str, set[str]] = {}
    for t in tables:
        for field in t.schema:
            families.setdefault(field.name, set()).add(_family(field.type))
    clash = [name for name, fams in families.items() if len(fams - {"null"}) > 1]
    fixed = []
    for t in tables:
        for name in clash:
            if name in t.column_names:
                i = t.column_names.index(name)
                try:
                    t = t.set_column(i, name, t[name].cast(pa.string()))
                except pa.ArrowException:
                    raise RunFormatError(
                        f"{where}: column {name!r} has types that cannot be merged"
                    ) from None
        fixed.append(t)
    if notes is not None:
        notes.append(f"{where}: columns {clash} change type across parts, read as strings")
    try:
        return pa.concat_tables(fixed, promote_options="permissive")
    except pa.ArrowException as e:
        raise RunFormatError(f"{where}: parts cannot be combined ({e})") from None


def _empty_frame(table: str) -> pd.DataFrame:
    """The frame of an absent table: documented columns with their dtypes, no rows."""
    kinds = TABLE_COLUMNS.get(table, {})
    schema = pa.schema([(name, _ARROW_TYPES[kind]) for name, kind in kinds.items()])
    return schema.empty_table().to_pandas()


def _to_frame(data: pa.Table, table: str) -> pd.DataFrame:
    """Arrow table of all parts -> the DataFrame users see (documented columns, by step)."""
    kinds = TABLE_COLUMNS.get(table, {})
    for name, kind in kinds.items():
        if name not in data.column_names:
            data = data.append_column(name, pa.nulls(data.num_rows, _ARROW_TYPES[kind]))
    extra = [c for c in data.column_names if c not in kinds]
    data = data.select([*kinds, *extra])
    if "step" in data.column_names and data.num_rows > 1:
        step = data["step"]
        ordered = False
        numeric = pa.types.is_integer(step.type) or pa.types.is_floating(step.type)
        if numeric and not step.null_count:
            values = step.to_numpy()
            ordered = bool(np.all(values[1:] >= values[:-1]))
        if not ordered:  # parts are written in step order; re-sort only after a resume
            data = data.sort_by("step")  # stable, nulls last
    frame = data.to_pandas()
    # pandas turns a bool column with nulls into objects; the nullable "boolean" keeps masks
    # (df[df.clipped]) working, NA counting as False.
    for name in data.column_names:
        if pa.types.is_boolean(data[name].type) and data[name].null_count:
            frame[name] = frame[name].astype("boolean")
    return frame


# Documented manifest keys and the JSON types they may have (None: null allowed).
_MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "backbone": (str, type(None)), "config": (dict,), "versions": (dict,),
    "device": (str, type(None)), "scan_backend": (str, type(None)),
    "created_at": (int, float), "updated_at": (int, float, type(None)),
    "last_step": (int, type(None)), "world_size": (int,), "model": (dict,),
    "probe_every": (int, type(None)), "layer_every": (int, type(None)), "resumed_at": (list,),
}


def _checked_manifest(manifest: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """The manifest without documented keys of the wrong JSON type (each noted): readers
    can then trust ``manifest.get("config") or {}`` to be a dict, and so on."""
    out = dict(manifest)
    for key, types in _MANIFEST_TYPES.items():
        if key not in out:
            continue
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, types):
            notes.append(f"manifest {key} has type {type(value).__name__}, expected "
                         f"{' or '.join(t.__name__ for t in types)}: ignored")
            del out[key]
    return out


class Run:
    """A loaded run: the manifest and one DataFrame per table.

    Attributes:
        path: the run directory. name: its name (untrusted text: display it, never join it
        into a path). manifest: the manifest dict. status: effective status (``crashed`` for
        a ``running`` run whose heartbeat is stale). schema_version: int.
        steps, layers, ssm, ssm_state, attention, eval, events: DataFrames sorted by step,
        empty with the documented columns when the run has no such table.
        tables: names of the tables on disk. warnings: what could not be read as is (skipped
        corrupt parts, coerced columns). partial: True when rows were skipped.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], *, stale_after_s: float,
                 strict: bool):
        self.path = path
        self.name = path.absolute().name
        self.warnings: list[str] = []
        self.manifest = _checked_manifest(manifest, self.warnings)
        self.schema_version: int = manifest["schema_version"]
        self.partial = False
        self._strict = strict
        self._frames: dict[str, pd.DataFrame] = {}
        self.tables = sorted(
            e.name
            for e in os.scandir(path)
            if e.is_dir(follow_symlinks=False) and _TABLE_NAME_RE.match(e.name)
        )
        self.status = self._effective_status(stale_after_s)
        for table in TABLES:
            setattr(self, table, self.table(table))

    steps: pd.DataFrame
    layers: pd.DataFrame
    ssm: pd.DataFrame
    ssm_state: pd.DataFrame
    attention: pd.DataFrame
    eval: pd.DataFrame
    events: pd.DataFrame

    def __repr__(self) -> str:
        return f"Run({self.name!r}, status={self.status!r}, steps={len(self.steps)})"

    def _effective_status(self, stale_after_s: float) -> str:
        status = self.manifest.get("status")
        if status not in STATUSES:
            self.warnings.append(f"manifest status {status!r:.40} is not one of {STATUSES}")
            return "unknown"
        if status != "running":
            return status
        beat = self.manifest.get("updated_at")
        if isinstance(beat, bool) or not isinstance(beat, (int, float)) or not math.isfinite(beat):
            # No usable heartbeat: the manifest's own mtime is when the writer last spoke.
            with contextlib.suppress(OSError):
                beat = os.stat(self.path / MANIFEST_NAME).st_mtime
        if isinstance(beat, (int, float)) and time.time() - beat > stale_after_s:
            return "crashed"
        return status

    def table(self, name: str) -> pd.DataFrame:
        """The DataFrame of table ``name`` (documented or not); empty when absent."""
        _check_table_name(name)
        frame = self._frames.get(name)
        if frame is None:
            try:
                frame = self._frames[name] = self._load(name)
            except RunFormatError:
                raise
            except (OSError, pa.ArrowException, ValueError, TypeError, KeyError) as e:
                # Whatever the file system or arrow throws still ends as one line.
                raise RunFormatError(f"{self.name}/{name}: cannot read ({_one_line(e)})") from None
        return frame

    def _load(self, table: str) -> pd.DataFrame:
        if table not in self.tables:
            return _empty_frame(table)
        table_dir = self.path / table
        where = f"{self.name}/{table}"
        # A part's name always means the same rows (names are never reused), so parts read
        # before a re-listing stay valid: each attempt reads only the parts it has not seen.
        read: dict[str, tuple[pa.Table | None, list[str]]] = {}
        for _ in range(_READ_ATTEMPTS):
            live, notes = _live_parts(_scan_parts(table_dir))
            todo = [p for p in live if p.path.name not in read]
            try:
                # Decoding parquet releases the GIL: a few threads overlap the many small
                # parts of a live run (about 2x on 2 cores for 100 parts).
                with ThreadPoolExecutor(max(1, min(_READ_THREADS, len(todo)))) as pool:
                    results = pool.map(lambda p: self._read(p.path, table, where), todo)
                    for part, result in zip(todo, results):
                        read[part.path.name] = result
                break
            except FileNotFoundError:
                continue  # merged away since we listed: the merged part is there now
        else:
            raise RunFormatError(f"{where}: parts kept changing while reading; try again")
        parts = []
        for part in live:
            data, part_notes = read[part.path.name]
            notes += part_notes
            if data is None:
                self.partial = True
            else:
                parts.append(data)
        self.warnings += list(dict.fromkeys(notes))  # the same note from many parts: once
        if not parts:
            return _empty_frame(table)
        return _to_frame(_concat(parts, where, self.warnings), table)

    def _read(self, path: Path, table: str, where: str) -> tuple[pa.Table | None, list[str]]:
        """One part with its documented columns coerced, and notes; (None, notes) when the
        file is unreadable. FileNotFoundError propagates (the caller lists again)."""
        notes: list[str] = []
        try:
            data = _read_part(path)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException, ValueError, TypeError) as e:
            msg = f"{where}/{path.name}: unreadable part skipped ({_one_line(e)[:200]})"
            if self._strict:
                raise RunFormatError(msg) from None
            return None, [msg]
        kinds = TABLE_COLUMNS.get(table, {})
        for i, name in enumerate(data.column_names):
            if name in kinds:
                col = _coerce(data[name], kinds[name], f"{where}.{name}", notes)
                if col is not data[name]:
                    data = data.set_column(i, name, col)
        return data, notes


def load_run(
    path: str | os.PathLike,
    *,
    stale_after_s: float = STALE_AFTER_S,
    strict: bool = False,
) -> Run:
    """Load the run in ``path``.

    Args:
        path: the run directory (``runs/NAME``).
        stale_after_s: a ``running`` run whose heartbeat is older reads as ``crashed``.
        strict: raise on a corrupt part instead of skipping it (and noting it in
            ``run.warnings``, with ``run.partial`` set).

    Raises:
        RunFormatError: (one-line message) the path is missing or not a directory, there is
            no manifest or it is not a JSON object, its schema version is missing or newer
            than this reader's, or a part cannot be read and ``strict`` is set.
    """
    p = Path(path)
    try:
        if not p.exists():
            raise RunFormatError(f"{p}: no such run directory")
        if not p.is_dir():
            raise RunFormatError(f"{p}: not a directory")
        manifest = _read_manifest(p)
        _check_schema_version(manifest, p)
        run = Run(p, manifest, stale_after_s=stale_after_s, strict=strict)
    except RunFormatError:
        raise
    except (OSError, pa.ArrowException, ValueError, TypeError, KeyError) as e:
        # Anything else the file system or arrow throws at us still ends as one line.
        raise RunFormatError(f"{p}: cannot read run ({type(e).__name__}: {e})") from None
    if run.partial:
        # Said where every command's user sees it (stderr), whatever shows the run afterwards.
        _log.warning("%s: partial run, unreadable parts skipped: %s", _one_line(run.name),
                     _one_line("; ".join(w for w in run.warnings if "unreadable" in w))[:500])
    return run


def list_runs(runs_dir: str | os.PathLike) -> list[Path]:
    """Directories of ``runs_dir`` that hold a manifest, sorted by name ([] if it is missing)."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    return sorted(
        Path(e.path)
        for e in os.scandir(root)
        if e.is_dir() and os.path.isfile(os.path.join(e.path, MANIFEST_NAME))
    )


def run_signature(path: str | os.PathLike) -> tuple:
    """A cheap key that changes whenever a run's files change: for caching loaded live runs.

    Stats the manifest (rewritten on every flush) and each table's part files (count, total
    size, newest mtime); reads no file.
    """
    p = Path(path)
    if not p.is_dir():
        raise RunFormatError(f"{p}: no such run directory")
    try:
        st = os.stat(p / MANIFEST_NAME)
        sig: list[tuple] = [("manifest", st.st_mtime_ns, st.st_size)]
    except OSError:
        sig = [("manifest", None, None)]
    for entry in sorted(os.scandir(p), key=lambda e: e.name):
        if not (entry.is_dir(follow_symlinks=False) and _TABLE_NAME_RE.match(entry.name)):
            continue
        count = size = newest = 0
        with os.scandir(entry.path) as it:
            for f in it:
                if _PART_RE.match(f.name):
                    with contextlib.suppress(OSError):  # merged away while we looked
                        fst = f.stat(follow_symlinks=False)
                        count, size = count + 1, size + fst.st_size
                        newest = max(newest, fst.st_mtime_ns)
        sig.append((entry.name, count, size, newest))
    return tuple(sig)

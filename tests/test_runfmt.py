"""Tests of the run directory: diagnostics.runfmt (writer and reader) and its benchmark data."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diagnostics import runfmt
from diagnostics.bench_load import build_synthetic_run, synthetic_frames
from diagnostics.runfmt import (
    SCHEMA_VERSION,
    TABLE_COLUMNS,
    TABLES,
    RunFormatError,
    RunWriter,
    list_runs,
    load_run,
    run_signature,
)

REPO = Path(__file__).resolve().parents[1]
EXPECTED_DTYPES = {"int64": "int64", "float64": "float64", "bool": "bool", "string": "str"}
FULL_LOAD_BOUND_S = 5.0  # generous for slow CI; the real number is in bench_load's output


def writer(path, **kwargs) -> RunWriter:
    """A writer that flushes only when told (and skips fsync: tests need no power-cut safety)."""
    kwargs.setdefault("manifest", {"backbone": "MAMBA-S"})
    kwargs.setdefault("flush_every_s", None)
    kwargs.setdefault("fsync", False)
    return RunWriter(path, **kwargs)


def parts(run_dir: Path, table: str) -> list[str]:
    return sorted(p.name for p in (run_dir / table).iterdir())


def assert_same_values(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Exact equality, NaN == NaN, column by column (dtypes are checked separately)."""
    assert len(got) == len(want)
    for col in want.columns:
        g, w = got[col].to_numpy(), want[col].to_numpy()
        if w.dtype.kind == "f":
            np.testing.assert_array_equal(g.astype(float), w)  # NaN-aware, bit-exact values
        else:
            assert g.tolist() == w.tolist(), col


# ---------------------------------------------------------------------------------------------
# Round trip and speed
# ---------------------------------------------------------------------------------------------


def test_synthetic_run_round_trips_exactly(tmp_path):
    rows = build_synthetic_run(tmp_path / "r", steps=1_000, layers=6, flush_every=100, fsync=False)
    run = load_run(tmp_path / "r")
    want = synthetic_frames(steps=1_000, layers=6, flush_every=100)
    assert run.status == "finished" and not run.warnings and not run.partial
    assert len(os.listdir(tmp_path / "r" / "layers")) == 10  # one part per flush
    for table, frame in want.items():
        got = run.table(table)
        assert len(got) == rows[table]
        assert list(got.columns) == list(TABLE_COLUMNS[table])
        assert_same_values(got, frame)
    assert len(run.layers) == 1_000 * 6 * 8
    assert np.isnan(run.steps.loss).sum() == 0  # no NONFINITE step below 1,000
    assert run.attention.empty and list(run.attention.columns) == list(TABLE_COLUMNS["attention"])


def test_documented_dtypes(tmp_path):
    build_synthetic_run(tmp_path / "r", steps=200, layers=2, fsync=False)
    run = load_run(tmp_path / "r")
    for table in TABLES:
        frame = getattr(run, table)
        for col, kind in TABLE_COLUMNS[table].items():
            assert str(frame[col].dtype) == EXPECTED_DTYPES[kind], (table, col)


def test_full_size_run_loads_fast(tmp_path):
    rows = build_synthetic_run(tmp_path / "big", steps=10_000, layers=24, fsync=False)
    assert rows["layers"] == 10_000 * 24 * 8
    t0 = time.perf_counter()
    run = load_run(tmp_path / "big")
    elapsed = time.perf_counter() - t0
    assert {t: len(run.table(t)) for t in rows} == rows
    assert run.layers.step.is_monotonic_increasing
    assert elapsed < FULL_LOAD_BOUND_S, f"load took {elapsed:.2f} s"


# ---------------------------------------------------------------------------------------------
# Writer: parts, heartbeat, resume, compaction
# ---------------------------------------------------------------------------------------------


def test_manifest_and_parts_layout(tmp_path):
    w = writer(tmp_path / "r", manifest={"backbone": "VIT-S", "config": {"lr": float("nan")}})
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["schema_version"] == SCHEMA_VERSION and m["status"] == "running"
    assert m["name"] == "r" and m["backbone"] == "VIT-S" and m["last_step"] is None
    assert m["created_at"] <= m["updated_at"]
    w.append("steps", {"step": 0, "loss": 1.0})
    w.append("steps", {"step": 1, "loss": 0.5})
    w.flush()
    assert parts(tmp_path / "r", "steps") == ["part-000000.parquet"]
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["last_step"] == 1
    w.close(compact=False)
    run = load_run(tmp_path / "r")
    assert run.status == "finished" and math.isnan(run.manifest["config"]["lr"])


def test_leftover_tmp_files_are_ignored(tmp_path):
    w = writer(tmp_path / "r")
    w.append("steps", {"step": 0, "loss": 1.0})
    w.flush()
    (tmp_path / "r" / "steps" / "part-000001.parquet.999.tmp").write_bytes(b"half a parq")
    (tmp_path / "r" / "steps" / "part-000002.parquet.tmp").write_bytes(b"")
    (tmp_path / "r" / "manifest.json.999.tmp").write_text("{")
    run = load_run(tmp_path / "r")
    assert run.steps.step.tolist() == [0] and not run.warnings


def test_reader_sees_a_prefix_while_writing(tmp_path):
    w = writer(tmp_path / "r")
    for i in range(10):
        w.append("steps", {"step": i, "loss": float(i)})
    assert load_run(tmp_path / "r").steps.empty  # nothing flushed yet
    w.flush()
    for i in range(10, 15):
        w.append("steps", {"step": i, "loss": float(i)})
    run = load_run(tmp_path / "r")
    assert run.status == "running" and run.steps.step.tolist() == list(range(10))
    w.flush()
    assert load_run(tmp_path / "r").steps.step.tolist() == list(range(15))
    w.close()


def test_automatic_flush_on_rows_and_time(tmp_path):
    w = writer(tmp_path / "r", flush_rows=4)
    for i in range(9):
        w.append("steps", {"step": i})
    assert len(load_run(tmp_path / "r").steps) == 8
    w2 = writer(tmp_path / "t", flush_every_s=0.0)
    w2.append("steps", {"step": 0})
    assert len(load_run(tmp_path / "t").steps) == 1
    w.close(), w2.close()


def test_refuses_to_clobber_and_overwrites_on_request(tmp_path):
    writer(tmp_path / "r").close()
    with pytest.raises(FileExistsError):
        writer(tmp_path / "r")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        writer(tmp_path / "other", overwrite=True)  # not a run: never deleted
    with pytest.raises(ValueError):
        writer(tmp_path / "x", overwrite=True, resume=True)
    w = writer(tmp_path / "r", overwrite=True)
    w.append("steps", {"step": 5})
    w.close()
    assert load_run(tmp_path / "r").steps.step.tolist() == [5]


def test_second_writer_is_refused(tmp_path):
    w = writer(tmp_path / "r")
    with pytest.raises(RuntimeError, match="another process"):
        writer(tmp_path / "r", resume=True)
    w.close()
    writer(tmp_path / "r", resume=True).close()  # released on close


def test_resume_keeps_tables_and_numbers_parts_after_them(tmp_path):
    w = writer(tmp_path / "r", manifest={"backbone": "MAMBA-S", "config": {"a": 1}})
    for i in range(3):
        w.append("steps", {"step": i})
        w.flush()
    created = w.manifest["created_at"]
    w.close(compact=False)
    w = writer(tmp_path / "r", resume=True, manifest={"config": {"a": 2}})
    assert w.manifest["status"] == "running" and w.manifest["created_at"] == created
    w.append("steps", {"step": 3})
    w.append("eval", {"step": 3, "mAP": 50.0})
    w.close(compact=False)
    assert parts(tmp_path / "r", "steps")[-1] == "part-000003.parquet"
    run = load_run(tmp_path / "r")
    assert run.steps.step.tolist() == [0, 1, 2, 3] and run.eval.mAP.tolist() == [50.0]
    assert run.manifest["config"] == {"a": 2} and len(run.manifest["resumed_at"]) == 1
    assert run.status == "finished"


def test_resume_from_an_earlier_checkpoint_sorts_by_step(tmp_path):
    w = writer(tmp_path / "r")
    w.extend("steps", [{"step": i, "loss": 1.0} for i in range(5)])
    w.close(compact=False)
    w = writer(tmp_path / "r", resume=True)
    w.extend("steps", [{"step": i, "loss": 2.0} for i in range(3, 6)])
    w.close(compact=False)
    steps = load_run(tmp_path / "r").steps
    assert steps.step.tolist() == [0, 1, 2, 3, 3, 4, 4, 5]
    # A stable sort: for a repeated step the earlier write comes first.
    assert steps.loss.tolist() == [1, 1, 1, 1, 2, 1, 2, 2]


def test_merge_while_running(tmp_path):
    w = writer(tmp_path / "r", merge_parts=3)
    for i in range(7):
        w.append("steps", {"step": i})
        w.flush()
    assert parts(tmp_path / "r", "steps") == [
        "part-000000-000002.parquet", "part-000003-000005.parquet", "part-000006.parquet"]
    assert load_run(tmp_path / "r").steps.step.tolist() == list(range(7))
    w.close()
    assert parts(tmp_path / "r", "steps") == ["part-000000-000006.parquet"]
    assert load_run(tmp_path / "r").steps.step.tolist() == list(range(7))


def test_compaction_never_shows_duplicates_or_gaps(tmp_path):
    run_dir, aside = tmp_path / "r", tmp_path / "aside"
    w = writer(run_dir, merge_parts=0)
    for i in range(3):
        w.extend("layers", [{"step": i, "layer": j, "group": "block"} for j in range(4)])
        w.flush()
    want = load_run(run_dir).layers
    shutil.copytree(run_dir / "layers", aside)
    w.close(compact=True)
    assert parts(run_dir, "layers") == ["part-000000-000002.parquet"]
    pd.testing.assert_frame_equal(load_run(run_dir).layers, want)
    # The states a reader can meet mid-compaction: the compacted part next to all, or to some,
    # of the parts it replaces (the writer deletes those only once the compacted part exists).
    for name in sorted(os.listdir(aside)):
        shutil.copy(aside / name, run_dir / "layers" / name)
        pd.testing.assert_frame_equal(load_run(run_dir).layers, want)
    for name in sorted(os.listdir(aside))[:2]:
        os.unlink(run_dir / "layers" / name)
        pd.testing.assert_frame_equal(load_run(run_dir).layers, want)


def test_reader_lists_again_when_parts_vanish_under_it(tmp_path, monkeypatch):
    w = writer(tmp_path / "r", merge_parts=0)
    for i in range(4):
        w.append("steps", {"step": i})
        w.flush()
    real_read, calls = runfmt._read_part, []

    def read_then_compact(path):
        calls.append(path.name)
        if len(calls) == 1:
            w.close(compact=True)  # the listed parts disappear after this read
        return real_read(path)

    monkeypatch.setattr(runfmt, "_read_part", read_then_compact)
    run = load_run(tmp_path / "r")
    assert run.steps.step.tolist() == list(range(4)) and not run.warnings
    assert calls[-1] == "part-000000-000003.parquet"


def test_context_manager_statuses(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with writer(tmp_path / "a") as w:
            w.append("steps", {"step": 0})
            1 / 0
    run = load_run(tmp_path / "a")
    assert run.status == "crashed" and run.steps.step.tolist() == [0]  # flushed on the way out
    with pytest.raises(FloatingPointError):
        with writer(tmp_path / "b") as w:
            w.update_manifest(status="diverged")
            raise FloatingPointError("loss is nan")
    assert load_run(tmp_path / "b").status == "diverged"
    with writer(tmp_path / "c"):
        pass
    assert load_run(tmp_path / "c").status == "finished"
    with pytest.raises(ValueError):
        writer(tmp_path / "d").close(status="paused")


def test_failed_flush_keeps_the_rows(tmp_path, monkeypatch):
    w = writer(tmp_path / "r")
    w.append("steps", {"step": 0})
    real_write = RunWriter._write_part

    def disk_full(self, table, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RunWriter, "_write_part", disk_full)
    with pytest.raises(OSError):
        w.flush()
    monkeypatch.setattr(RunWriter, "_write_part", real_write)
    w.append("steps", {"step": 1})
    w.close()
    assert load_run(tmp_path / "r").steps.step.tolist() == [0, 1]


def test_error_while_closing_after_an_error_keeps_the_first_error(tmp_path, monkeypatch):
    monkeypatch.setattr(RunWriter, "_write_part", lambda *a: 1 / 0)
    with pytest.raises(KeyError):
        with writer(tmp_path / "r") as w:
            w.append("steps", {"step": 0})
            raise KeyError("the training loop's error")
    assert load_run(tmp_path / "r").status == "crashed"


def test_disabled_writer_is_a_no_op(tmp_path):
    with RunWriter(tmp_path / "r", manifest={}, enabled=False) as w:
        w.append("steps", {"step": 0})
        w.extend_columns("layers", {"step": [0]})
        w.flush(), w.heartbeat(), w.update_manifest(status="diverged")
    assert not (tmp_path / "r").exists()


def test_bad_table_names_are_refused(tmp_path):
    w = writer(tmp_path / "r")
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(ValueError):
            w.append(bad, {"step": 0})
    w.close()
    with pytest.raises(ValueError):
        load_run(tmp_path / "r").table("../r")


# ---------------------------------------------------------------------------------------------
# Values and schemas
# ---------------------------------------------------------------------------------------------


def test_nan_and_inf_round_trip(tmp_path):
    values = [float("nan"), float("inf"), -float("inf"), -0.0, 5e-324, 1.7976931348623157e308]
    w = writer(tmp_path / "r")
    for i, v in enumerate(values):
        w.append("steps", {"step": i, "loss": v, "extra": np.float32(v) if i < 3 else v})
    w.close()
    steps = load_run(tmp_path / "r").steps
    got = steps.loss.to_numpy()
    np.testing.assert_array_equal(got, np.array(values))
    assert np.signbit(got[3]) and steps.extra.dtype == "float64"
    assert np.isnan(steps.extra[0]) and steps.extra[1] == np.inf


HOSTILE = [
    "<script>alert('x')</script>", "../../etc/passwd", "a\nb\r\nc", "tab\there", "\x00nul\x00",
    "", "é ü 中文 🐍", "\u202eevil", "'\"quoted\\", "x" * 100_000, "None", "nan",
]


def test_hostile_strings_round_trip(tmp_path):
    w = writer(tmp_path / "r")
    for i, s in enumerate(HOSTILE):
        w.append("events", {"step": i, "kind": "note", "where": s, "message": s})
    w.append("events", {"step": len(HOSTILE), "kind": "note", "message": "lone \ud800 surrogate"})
    w.close()
    events = load_run(tmp_path / "r").events
    assert events.message.tolist()[:-1] == HOSTILE and events["where"].tolist()[:-1] == HOSTILE
    assert events.message.iloc[-1] == "lone \ufffd surrogate"  # not encodable: replaced
    assert pd.isna(events["where"].iloc[-1])


def test_hostile_run_directory_name(tmp_path):
    run_dir = tmp_path / "evil\nname <script>"
    writer(run_dir).close()
    run = load_run(run_dir)
    assert run.name == "evil\nname <script>"
    assert list_runs(tmp_path) == [run_dir]
    (run_dir / "manifest.json").write_text("{broken")
    with pytest.raises(RunFormatError) as e:
        load_run(run_dir)
    assert "\n" not in str(e.value)


def test_schema_evolution_across_parts(tmp_path):
    w = writer(tmp_path / "r")
    w.append("steps", {"step": 0, "loss": 1.0, "lr": 0.1})
    w.flush()
    w.append("steps", {"step": 1, "loss": 0.9, "lr": 0.1, "new_metric": 7})
    w.flush()
    w.append("steps", {"step": 2, "loss": 0.8, "new_metric": 7.5})  # lr gone, int -> float
    w.append("custom", {"step": 0, "v": 1})
    w.flush()
    w.append("custom", {"step": 1, "v": "text"})  # an undocumented column changes type
    w.close(compact=False)
    run = load_run(tmp_path / "r")
    s = run.steps
    assert list(s.columns) == [*TABLE_COLUMNS["steps"], "new_metric"]
    assert s.lr.tolist()[:2] == [0.1, 0.1] and math.isnan(s.lr[2])
    assert math.isnan(s.new_metric[0]) and s.new_metric.tolist()[1:] == [7.0, 7.5]
    assert s.clipped.isna().all() and run.table("custom").v.tolist() == ["1", "text"]
    assert any("custom" in note and "strings" in note for note in run.warnings)


def test_columns_missing_from_some_rows(tmp_path):
    w = writer(tmp_path / "r")
    w.append("steps", {"step": 0, "clipped": True, "epoch": 0, "nonfinite_where": ""})
    w.append("steps", {"step": 1})
    w.append("steps", {"step": 2, "clipped": False, "epoch": 0, "late": "x"})
    w.close()
    s = load_run(tmp_path / "r").steps
    assert str(s.clipped.dtype) == "boolean" and s.clipped.tolist() == [True, pd.NA, False]
    assert s.epoch.dtype == "float64" and math.isnan(s.epoch[1])  # int with a gap: NaN
    assert s.late.isna().tolist() == [True, True, False]
    assert s[s.clipped].step.tolist() == [0]  # NA masks as False


def test_odd_python_values_are_stored(tmp_path):
    w = writer(tmp_path / "r")
    w.append("steps", {"step": np.int64(0), "loss": np.float32(0.5), "clipped": np.bool_(True)})
    w.append("steps", {"step": 1, "loss": 1, "clipped": False})  # an int in a float column
    w.append("custom", {"step": 0, "mixed": 1})
    w.append("custom", {"step": 1, "mixed": "one"})  # mixed inside one part: stored as text
    w.close()
    run = load_run(tmp_path / "r")
    assert run.steps.loss.tolist() == [0.5, 1.0] and run.steps.clipped.tolist() == [True, False]
    assert run.table("custom").mixed.tolist() == ["1", "one"]


def test_values_that_do_not_fit_are_never_truncated(tmp_path):
    w = writer(tmp_path / "r")
    w.append("steps", {"step": 0, "epoch": 0})
    w.flush()
    w.append("steps", {"step": 1, "epoch": 1.5})  # a float where an int is documented
    w.close(compact=False)
    run = load_run(tmp_path / "r")
    assert run.steps.epoch.tolist() == [0.0, 1.5]
    assert any("epoch" in note for note in run.warnings)


def test_wrong_column_types_are_coerced_with_a_warning(tmp_path):
    writer(tmp_path / "r").close()
    (tmp_path / "r" / "steps").mkdir()
    pq.write_table(pa.table({"step": ["0", "1", "2"], "loss": ["0.5", "abc", None]}),
                   tmp_path / "r" / "steps" / "part-000000.parquet")
    run = load_run(tmp_path / "r")
    assert run.steps.step.tolist() == [0, 1, 2] and run.steps.step.dtype == "int64"
    assert run.steps.loss.iloc[0] == 0.5 and run.steps.loss.iloc[1:].isna().all()
    assert any("loss" in n and "1 unparsable" in n for n in run.warnings)


def test_unusable_column_type_is_a_format_error(tmp_path):
    writer(tmp_path / "r").close()
    (tmp_path / "r" / "steps").mkdir()
    pq.write_table(pa.table({"step": [0], "loss": [[1.0, 2.0]]}),
                   tmp_path / "r" / "steps" / "part-000000.parquet")
    with pytest.raises(RunFormatError) as e:
        load_run(tmp_path / "r")
    assert "loss" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Status and errors
# ---------------------------------------------------------------------------------------------


def _set_heartbeat(run_dir: Path, age_s: float, status: str = "running") -> None:
    m = json.loads((run_dir / "manifest.json").read_text())
    m.update(updated_at=time.time() - age_s, status=status)
    (run_dir / "manifest.json").write_text(json.dumps(m))


def test_stale_heartbeat_reads_as_crashed(tmp_path):
    w = writer(tmp_path / "r")
    assert load_run(tmp_path / "r").status == "running"
    _set_heartbeat(tmp_path / "r", runfmt.STALE_AFTER_S + 10)
    run = load_run(tmp_path / "r")
    assert run.status == "crashed" and run.manifest["status"] == "running"
    assert load_run(tmp_path / "r", stale_after_s=1e9).status == "running"
    _set_heartbeat(tmp_path / "r", 1e6, status="finished")
    assert load_run(tmp_path / "r").status == "finished"  # only running runs go stale
    w.close()


def _no_manifest(d):
    d.mkdir()


def _file_not_dir(d):
    d.write_text("x")


def _manifest(text):
    def make(d):
        d.mkdir()
        (d / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return make


@pytest.mark.parametrize(
    "make, expect",
    [
        (lambda d: None, "no such run directory"),
        (_file_not_dir, "not a directory"),
        (_no_manifest, "no manifest.json"),
        (_manifest("{not json"), "not valid JSON"),
        (_manifest(b"\xff\xfe{}"), "not UTF-8"),
        (_manifest("[1, 2]"), "expected a JSON object, got list"),
        (_manifest('{"status": "running"}'), "no schema_version"),
        (_manifest('{"schema_version": "1"}'), "must be an integer"),
        (_manifest('{"schema_version": 0}'), "unknown schema_version 0"),
        (_manifest('{"schema_version": 3}'),
         "run was written by a newer mambascope (schema 3; this reader knows 1)"),
    ],
    ids=["missing", "file", "no-manifest", "not-json", "not-utf8", "list", "no-version",
         "str-version", "version-0", "newer"],
)
def test_unreadable_inputs_raise_one_line_format_errors(tmp_path, make, expect):
    run_dir = tmp_path / "run"
    make(run_dir)
    with pytest.raises(RunFormatError) as e:
        load_run(run_dir)
    assert type(e.value) is RunFormatError
    assert expect in str(e.value) and len(str(e.value).splitlines()) == 1


def test_corrupt_part_is_skipped_and_marked_partial(tmp_path):
    w = writer(tmp_path / "r")
    for i in range(3):
        w.append("steps", {"step": i})
        w.flush()
    w.close(compact=False)
    part = tmp_path / "r" / "steps" / "part-000001.parquet"
    part.write_bytes(part.read_bytes()[:-20])  # truncated on disk
    run = load_run(tmp_path / "r")
    assert run.steps.step.tolist() == [0, 2] and run.partial
    assert len(run.warnings) == 1 and "part-000001.parquet" in run.warnings[0]
    with pytest.raises(RunFormatError) as e:
        load_run(tmp_path / "r", strict=True)
    assert "part-000001.parquet" in str(e.value) and len(str(e.value).splitlines()) == 1
    part.write_bytes(b"")  # an empty file too
    assert load_run(tmp_path / "r").partial


# ---------------------------------------------------------------------------------------------
# Listing and cache keys
# ---------------------------------------------------------------------------------------------


def test_list_runs_and_signature(tmp_path):
    assert list_runs(tmp_path / "missing") == []
    w = writer(tmp_path / "b")
    writer(tmp_path / "a").close()
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "file").write_text("x")
    assert list_runs(tmp_path) == [tmp_path / "a", tmp_path / "b"]
    before = run_signature(tmp_path / "b")
    assert run_signature(tmp_path / "b") == before
    w.append("steps", {"step": 0})
    w.flush()
    assert run_signature(tmp_path / "b") != before
    with pytest.raises(RunFormatError):
        run_signature(tmp_path / "missing")
    w.close()


# ---------------------------------------------------------------------------------------------
# kill -9
# ---------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from diagnostics.runfmt import RunWriter
    w = RunWriter(sys.argv[1], manifest={}, flush_every_s=None, merge_parts=3, fsync=False)
    step = 0
    while True:
        for _ in range(20):
            w.append("steps", {"step": step, "loss": float(step)})
            w.extend("layers", [{"step": step, "layer": j, "group": "block"} for j in range(50)])
            step += 1
        w.flush()
        print(step, flush=True)
    """
)


def _assert_prefix(run, at_least: int) -> int:
    """Each table holds whole flushes from the start (tables may differ by the flush in
    progress: a flush writes them one after the other)."""
    steps = run.steps.step.tolist()
    assert steps == list(range(len(steps))) and len(steps) >= at_least and len(steps) % 20 == 0
    layer_steps = run.layers.step.to_numpy()
    assert len(layer_steps) % (20 * 50) == 0 and len(layer_steps) >= 50 * at_least
    np.testing.assert_array_equal(layer_steps, np.repeat(np.arange(len(layer_steps) // 50), 50))
    return len(steps)


def test_kill_9_loses_only_unflushed_rows(tmp_path):
    run_dir = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir)], stdout=subprocess.PIPE,
                             text=True, env=env, cwd=REPO)
    try:
        flushed = 0
        for _ in range(12):  # read while it writes and merges under our feet
            flushed = int(child.stdout.readline())
            run = load_run(run_dir)
            assert run.status == "running" and not run.warnings
            _assert_prefix(run, flushed)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    time.sleep(0.1)
    run = load_run(run_dir, stale_after_s=0.05)
    assert run.status == "crashed" and not run.partial
    n = _assert_prefix(run, flushed)

    # The kill released the writer's lock: the run can be resumed and finished.
    with writer(run_dir, resume=True) as w:
        w.append("steps", {"step": n, "loss": 0.0})
    assert not list(run_dir.rglob("*.tmp"))
    run = load_run(run_dir)
    assert run.status == "finished" and run.steps.step.tolist() == list(range(n + 1))

"""`diagnose export --run R --tensorboard DIR`, read back with TensorBoard's own EventAccumulator:
the same numbers as the run's tables."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from diagnostics import load_run
from diagnostics.cli import main as cli_main
from diagnostics.export import QUANTILE_MASS, QUANTILES, export_tensorboard, tag_part
from diagnostics.runfmt import RunWriter


def _read(logdir: Path):
    ea = event_accumulator.EventAccumulator(
        str(logdir), size_guidance={event_accumulator.SCALARS: 0,
                                    event_accumulator.HISTOGRAMS: 0})
    ea.Reload()
    return ea


def _scalars(ea, tag) -> dict[int, float]:
    return {e.step: e.value for e in ea.Scalars(tag)}


def _f32(values) -> list[float]:
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64).tolist()


def _same(got: dict[int, float], steps, values) -> None:
    want = dict(zip((int(s) for s in steps), _f32(values)))
    assert got.keys() == want.keys()
    for s, v in want.items():
        assert got[s] == v or (math.isnan(got[s]) and math.isnan(v)), (s, got[s], v)


@pytest.fixture(scope="module")
def exported(tiny_mamba_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("tb") / "mamba"
    assert cli_main(["export", "--run", str(tiny_mamba_run), "--tensorboard", str(out)]) == 0
    return load_run(tiny_mamba_run), _read(out), out


def test_steps_layers_and_eval_as_scalars(exported):
    run, ea, _ = exported
    tags = set(ea.Tags()["scalars"])
    for col in ("loss", "lr", "grad_norm", "step_time_s", "peak_mem_mb", "clipped", "nonfinite"):
        _same(_scalars(ea, f"steps/{col}"), run.steps.step, run.steps[col].astype(float))
    # wall time is the step's own
    walls = {e.step: e.wall_time for e in ea.Scalars("steps/loss")}
    assert walls == dict(zip(run.steps.step.tolist(), run.steps.time.tolist()))
    # every (layer, group) series of the layers table, every column
    for (layer, group), rows in run.layers.groupby(["layer", "group"]):
        name = "Ltop" if layer == -1 else f"L{layer:02d}"
        for col in ("grad_norm", "weight_norm", "update_ratio"):
            _same(_scalars(ea, f"layers/{col}/{name}.{group}"), rows.step, rows[col])
    assert len([t for t in tags if t.startswith("layers/")]) == 3 * run.layers.groupby(
        ["layer", "group"]).ngroups
    _same(_scalars(ea, "eval/mAP"), run.eval.step, run.eval.mAP)
    assert _scalars(ea, "eval/mAP") == {5: 31.0}


def test_ssm_tables_as_scalars_and_dt_quantiles_as_histograms(exported):
    run, ea, _ = exported
    assert len(run.ssm) and len(run.ssm_state)
    floats = [c for c in run.ssm.columns if run.ssm[c].dtype == "float64"]
    for (module, direction), rows in run.ssm.groupby(["module", "direction"]):
        for col in floats:
            _same(_scalars(ea, f"ssm/{col}/{module}/{direction}"), rows.step, rows[col])
        for prefix in ("dt", "adt"):
            hist = {e.step: e.histogram_value for e in
                    ea.Histograms(f"ssm/{prefix}/{module}/{direction}")}
            assert hist.keys() == set(rows.step)
            for _, row in rows.iterrows():
                h = hist[row.step]
                q = [row[f"{prefix}_{s}"] for s in QUANTILES]
                assert (h.min, h.max) == (q[0], q[-1])
                assert list(h.bucket_limit) == q[1:] and list(h.bucket) == list(QUANTILE_MASS)
                assert h.num == 100
    for (layer, direction, pos), rows in run.ssm_state.groupby(["layer", "direction", "pos"]):
        _same(_scalars(ea, f"ssm_state/L{layer:02d}.{direction}/pos{pos:.2f}"), rows.step,
              rows.state_norm)


def test_attention_as_scalars(tiny_vit_run, tmp_path):
    result = export_tensorboard(tiny_vit_run, tmp_path / "vit")
    run, ea = load_run(tiny_vit_run), _read(tmp_path / "vit")
    assert result.histograms == 0 and result.steps == len(run.steps)
    for module, rows in run.attention.groupby("module"):
        for col in ("entropy", "mean_distance", "logit_max"):
            _same(_scalars(ea, f"attention/{col}/{module}"), rows.step, rows[col])


def test_existing_event_files_are_kept_unless_overwrite(exported, capsys):
    run, _, out = exported
    (out / "notes.txt").write_text("mine")
    first = sorted(p.name for p in out.iterdir())
    capsys.readouterr()
    assert cli_main(["export", "--run", str(run.path), "--tensorboard", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds TensorBoard event files" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == first
    assert cli_main(["export", "--run", str(run.path), "--tensorboard", str(out),
                     "--overwrite"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "notes.txt" in names and len(names) == 2  # one event file, the foreign file kept
    assert _scalars(_read(out), "eval/mAP") == {5: 31.0}  # not doubled


def test_missing_or_broken_run_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text("{")
    for run in (tmp_path / "nothing", tmp_path / "bad"):
        assert cli_main(["export", "--run", str(run), "--tensorboard", str(tmp_path / "tb")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("diagnose: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "tb").exists()


def test_hostile_names_and_values(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "[bold red]x<script>"
    with RunWriter(run_dir, manifest={"name": "../../escape"}, fsync=False) as w:
        for s in range(3):
            w.append("steps", {"step": s, "loss": [math.nan, math.inf, 1e300][s],
                               "time": 1e300 if s == 2 else 1_700_000_000.0 + s})
        # an old run resumed before duplicates were dropped: step 1 twice, the later row wins
        w.append("steps", {"step": 1, "loss": 5.0, "time": 1_700_000_001.5})
        w.append("ssm", {"step": 0, "layer": 0, "module": "../../x<script>{0}",
                         "direction": "[bold]\n", **{f"dt_{q}": i for i, q in
                                                      enumerate(QUANTILES)}})  # dt_p50 = 4
        w.append("layers", {"step": 0, "layer": None, "group": "ü/../..", "grad_norm": 1.0})
    before = set(os.listdir(tmp_path))
    capsys.readouterr()
    assert cli_main(["export", "--run", str(run_dir), "--tensorboard", str(tmp_path / "tb")]) == 0
    out = capsys.readouterr().out
    assert "[bold red]x<script>" in " ".join(out.split())  # shown as text, markup escaped
    assert set(os.listdir(tmp_path)) == before | {"tb"}
    assert all(p.name.startswith("events.out.tfevents.") for p in (tmp_path / "tb").iterdir())
    ea = _read(tmp_path / "tb")
    loss = _scalars(ea, "steps/loss")
    assert math.isnan(loss[0]) and loss[1] == 5.0 and loss[2] == math.inf  # float32: 1e300 = inf
    mod, direction = tag_part("../../x<script>{0}"), tag_part("[bold]\n")
    assert (mod, direction) == (".._.._x_script_0_", "_bold_")
    assert _scalars(ea, f"ssm/dt_p50/{mod}/{direction}") == {0: 4.0}
    assert [h.step for h in ea.Histograms(f"ssm/dt/{mod}/{direction}")] == [0]
    assert ea.Scalars("steps/loss")[-1].wall_time == ea.Scalars("steps/loss")[-2].wall_time
    assert "layers/grad_norm/Lnan._.._.." in ea.Tags()["scalars"]


def test_partial_run_exports_what_it_can_and_says_so(tiny_mamba_run, tmp_path, capsys):
    import shutil
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_mamba_run, run_dir)
    (part,) = (run_dir / "layers").iterdir()
    part.write_bytes(part.read_bytes()[:50])
    capsys.readouterr()
    assert cli_main(["export", "--run", str(run_dir), "--tensorboard", str(tmp_path / "tb")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("partial run") and "unreadable part skipped" in out
    tags = _read(tmp_path / "tb").Tags()["scalars"]
    assert "steps/loss" in tags and not [t for t in tags if t.startswith("layers/")]

"""The Remedies view of a sweep: `load_sweep` on a sweep written row by row (conftest's
``fake_sweep``: every number known), its figures, the HTML report through `diagnose --run SWEEP`, bad sweep folders,
and hostile variant names. The real sweep that trains is in tests/test_sweep.py."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from conftest import SWEEP_HOSTILE as HOSTILE, SWEEP_STEPS as STEPS
from diagnostics import figures as F
from diagnostics.cli import main as cli_main
from diagnostics.report import render_sweep_html
from diagnostics.sweep import is_sweep, load_sweep


def _trace_xs(fig, subplot_title: str) -> dict[str, list[float]]:
    """variant label -> x of the seed dots in the subplot titled ``subplot_title``."""
    titles = [a.text for a in fig.layout.annotations]
    n = titles.index(subplot_title) + 1
    xaxis = "x" if n == 1 else f"x{n}"
    out: dict[str, list[float]] = {}
    for t in fig.data:
        if t.xaxis == xaxis and t.customdata is not None and t.marker.symbol is None:
            out.setdefault(t.y[0], []).extend(float(x) for x in t.x)
    return out


# ------------------------------------------------------------------------------ load_sweep

def test_load_sweep_ranks_every_variant_and_keeps_the_runs(fake_sweep, fake_sweep_plan):
    assert is_sweep(fake_sweep) and not is_sweep(fake_sweep / "baseline-seed0")
    s = load_sweep(fake_sweep)
    assert list(s.loaded) == list(fake_sweep_plan)                     # the plan's order, baseline first
    assert all(len(runs) == 2 for runs in s.loaded.values())
    rank = s.ranking
    assert set(rank["variant"]) == set(fake_sweep_plan)
    assert rank["variant"].iloc[0] == "lr=1e-4"           # +10 mAP, twice the noise and more
    assert rank["variant"].iloc[-1] == "lr=1"             # diverged: last, never dropped
    assert rank.set_index("variant").loc["lr=1", "verdict"] == "fails"
    # final mAP is the last evaluation; the mean over the two seeds
    assert rank.set_index("variant").loc["lr=1e-4", "mAP_mean"] == pytest.approx(21.0)
    # the sweep's dt: median over layers and directions of the last probe = the planted dt
    dt = s.runs.groupby("variant")["dt_p50"].mean()
    for variant, (_, _, want, _, _) in fake_sweep_plan.items():
        assert dt[variant] == pytest.approx(want)
    assert s.notes == ["a note"] and s.plan["backbone"] == "MAMBA-V2-T"


# ------------------------------------------------------------------------------ figures

def test_every_remedy_figure_draws_the_numbers_of_the_runs(fake_sweep, fake_sweep_plan):
    s = load_sweep(fake_sweep)
    figs = {k: spec(s) for k, spec in F.REMEDY_FIGURES.items()}
    assert all(f is not None for f in figs.values()), figs
    # outcomes: one dot per run at its final mAP
    xs = _trace_xs(figs["remedy_outcomes"], "final mAP (%)")
    for variant, (maps, *_rest) in fake_sweep_plan.items():
        assert sorted(xs[F.plot_text(variant)]) == pytest.approx(sorted(maps))
    # SSM effects: one dot per run at its dt; |A·dt| the same positive number
    dts = _trace_xs(figs["remedy_ssm"], "dt median")
    adts = _trace_xs(figs["remedy_ssm"], "|A·dt| median")
    for variant, (_, _, dt, _, _) in fake_sweep_plan.items():
        assert dts[F.plot_text(variant)] == pytest.approx([dt, dt])
        assert adts[F.plot_text(variant)] == pytest.approx([dt, dt])
    # curves: a line per variant and seed in each of loss, grad norm and mAP, in one colour per
    # variant (the baseline's dark grey)
    curves = figs["remedy_curves"]
    loss_lines = [t for t in curves.data if t.yaxis == "y"]
    assert len(loss_lines) == 2 * len(fake_sweep_plan)
    assert len({t.line.color for t in loss_lines}) == len(fake_sweep_plan)
    assert {t.line.color for t in loss_lines if t.name == "baseline"} == {F.BASELINE_COLOR}
    # the smoothed loss of a straight line is that line (a centred median)
    base0 = next(t for t in loss_lines if t.name == "baseline")
    assert np.asarray(base0.y) == pytest.approx(3.0 - 2.0 * np.arange(STEPS) / STEPS, abs=0.06)
    ssm_curves = figs["remedy_ssm_curves"]
    last = [t.y[-1] for t in ssm_curves.data if t.yaxis == "y" and t.name == "lr=1e-4"]
    assert last == pytest.approx([0.05, 0.05])


def test_smoothing_removes_a_single_spike():
    x = np.arange(100.0)
    y = np.ones(100)
    y[50] = 1e6
    _, sm = F._smooth(x, y)
    assert sm.max() == 1.0


def test_remedy_figures_without_ssm_statistics(fake_sweep):
    s = load_sweep(fake_sweep)
    for runs in s.loaded.values():
        for r in runs:
            r.ssm = r.ssm.iloc[0:0]
    s.runs[["dt_p50", "adt_p50", "frac_erased", "frac_frozen", "state_norm_max",
            "alog_std"]] = math.nan
    assert F.REMEDY_FIGURES["remedy_ssm"](s) is None
    assert F.REMEDY_FIGURES["remedy_ssm_curves"](s) is None
    assert F.REMEDY_FIGURES["remedy_curves"](s) is not None


# ------------------------------------------------------------------------------ the report

def test_diagnose_run_on_a_sweep_writes_the_remedies_report(fake_sweep, fake_sweep_plan, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert cli_main(["--run", str(fake_sweep), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lr=1e-4" in printed and "report:" in printed
    html = out.read_text()
    # the ranking, best first, every variant; the hostile name only escaped
    order = [m for m in re.findall(r'<tr id="variant-\d+"><td class="num nw">\d+</td><td><b>'
                                   r"(.*?)</b>", html)]
    assert order[0] == "lr=1e-4" and order[-1] == "lr=1" and len(order) == len(fake_sweep_plan)
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert HOSTILE not in html
    for key in F.REMEDY_FIGURES:
        assert f'id="fig-{key}"' in html
    # the SSM table: lr=1e-4's dt is 0.05 / 0.7 of the baseline's
    assert f"(×{0.05 / 0.7:.3g})" in html
    # json: the ranking in order, no NaN
    assert cli_main(["--run", str(fake_sweep), "--out", str(out), "--format", "json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in payload["ranking"]][0] == "lr=1e-4"
    assert payload["report"] == str(out)


def test_render_sweep_html_is_self_contained(fake_sweep):
    from plotly.offline import get_plotlyjs
    html = render_sweep_html(load_sweep(fake_sweep))
    js = get_plotlyjs()
    assert html.count(js[:300]) == 1                        # plotly.js inlined, once
    assert not re.search(r"<script[^>]*\bsrc=", html)       # nothing fetched from elsewhere
    assert not re.search(r"<link[^>]*\bhref=", html)


@pytest.mark.parametrize("plan, words", [
    ("{not json", "not a sweep plan"),
    (json.dumps({"variants": [{"name": "x", "runs": ["../../etc"]}]}), "not a sweep plan"),
    (json.dumps({"variants": []}), "not a sweep plan"),
    (json.dumps([1, 2]), "not a sweep plan"),
])
def test_a_bad_sweep_folder_is_one_line_exit_2(tmp_path, capsys, plan, words):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(plan)
    assert cli_main(["--run", str(tmp_path / "s"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()


def test_a_sweep_goes_alone_and_without_fail_on(fake_sweep, tmp_path, capsys):
    assert cli_main(["--run", str(fake_sweep), "--run", str(fake_sweep / "baseline-seed0"),
                     "--out", str(tmp_path / "r.html")]) == 2
    assert "is a sweep" in capsys.readouterr().err
    assert cli_main(["--run", str(fake_sweep), "--fail-on", "error",
                     "--out", str(tmp_path / "r.html")]) == 2
    assert "--fail-on" in capsys.readouterr().err


def test_a_missing_run_is_a_failed_row_not_an_error(fake_sweep, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(fake_sweep, copy)
    shutil.rmtree(copy / "cosine-seed1")
    s = load_sweep(copy)
    row = s.runs.set_index(["variant", "seed"]).loc[("cosine", 1)]
    assert row["status"] == "failed"
    assert len(s.loaded["cosine"]) == 1
    assert all(f(s) is not None for f in F.REMEDY_FIGURES.values())

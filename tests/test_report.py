"""The HTML report, the figures module and `diagnose --run` (through diagnostics.cli.main)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from diagnostics import figures, load_run
from diagnostics.cli import main
from diagnostics.report import analyse_runs, default_report_path, render_html

XSS = "<script>alert(1)</script>"
XSS_DIR = "<img src=x onerror=alert(1)>[bold]"   # no '/' in a directory name; [bold]: rich markup


@pytest.fixture(scope="module")
def warned_run(train_tiny):
    """A MAMBA-V2-T run with warnings only (no error): one direction's dt bias zeroed."""
    def zero_v(model):
        with torch.no_grad():
            model.blocks[0].mixer.dt_proj.bias[1].zero_()
    return train_tiny("zeroed_v_only", steps=2, setup=zero_v)


@pytest.fixture(scope="module")
def hostile_run(tiny_mamba_run, tmp_path_factory):
    """The healthy run copied under a hostile directory name, its manifest's strings hostile."""
    dst = tmp_path_factory.mktemp("hostile") / XSS_DIR
    shutil.copytree(tiny_mamba_run, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["name"] = XSS
    m["config"] = {**m.get("config", {}), XSS: XSS, "note": XSS}
    m["device"] = XSS
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


@pytest.fixture(scope="module")
def pair_html(tiny_mamba_run, tiny_vit_run):
    runs = [load_run(tiny_mamba_run), load_run(tiny_vit_run)]
    return render_html(analyse_runs(runs))


# ------------------------------------------------------------------ the page

def test_plotly_inlined_once_and_no_cdn(pair_html):
    from plotly.offline import get_plotlyjs
    js = get_plotlyjs()
    assert pair_html.count(js[:300]) == 1 and pair_html.count(js[-300:]) == 1
    # nothing is fetched: no script or stylesheet from elsewhere (plotly.js itself mentions
    # cdn.plot.ly in strings it never loads here)
    assert not re.search(r"<script[^>]*\bsrc=", pair_html)
    assert not re.search(r"<link[^>]*\bhref=", pair_html)


def test_reading_order(pair_html):
    anchors = ['id="summary"', 'id="findings"', 'id="comparison"', 'id="fig-training_curves"',
               'id="fig-grad_heatmap"', 'id="fig-dt_bands"', 'id="fig-adt_bands"',
               'id="fig-decay_fractions"', 'id="fig-state_norms"', 'id="fig-alog_drift"',
               'id="fig-attention_stats"', 'id="glossary"']
    pos = [pair_html.find(a) for a in anchors]
    assert all(p >= 0 for p in pos), dict(zip(anchors, pos))
    assert pos == sorted(pos)
    # the summary names both backbones, the status, best mAP and the scan backend
    summary = pair_html[pos[0]:pos[1]]
    for text in ("MAMBA-V2-T", "VIT-T", "finished", "best mAP", "scan backend", "31", "32"):
        assert text in summary
    # the comparison has the claims table
    assert "C10" in pair_html[pos[2]:pos[3]] and "supported" in pair_html[pos[2]:pos[3]]


def test_findings_link_to_their_evidence(warned_run):
    html = render_html(analyse_runs([load_run(warned_run)]))
    assert "ssm.init_mismatch" in html and 'id="finding-1"' in html
    for target in set(re.findall(r'href="#(fig-[a-z_]+)"', html)):
        assert f'id="{target}"' in html
    for target in set(re.findall(r'href="#(finding-\d+)"', html)):
        assert f'id="{target}"' in html
    assert 'href="#code-ssm.init_mismatch"' in html and 'id="code-ssm.init_mismatch"' in html


def test_every_run_string_is_escaped(hostile_run):
    run = load_run(hostile_run)
    assert run.name == XSS_DIR
    html = render_html(analyse_runs([run]))
    assert XSS not in html and XSS_DIR not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;[bold]" in html
    # exactly the page's own script tags: plotly's library and one per figure
    n_figs = html.count('class="plotly-graph-div"')
    assert html.count("<script") == 1 + n_figs


def test_run_without_rows_gives_a_summary_only_report(tmp_path):
    from diagnostics.runfmt import RunWriter
    w = RunWriter(tmp_path / "fresh", manifest=dict(backbone="MAMBA-V2"))
    w.flush()                              # a run that has just started: manifest, no rows
    try:
        run = load_run(tmp_path / "fresh")
        a = analyse_runs([run])
        assert a.findings == [[]]
        html = render_html(a)
        assert 'id="summary"' in html and 'class="plotly-graph-div"' not in html
        assert "not shown (not recorded in these runs)" in html
    finally:
        w.close("finished")


# ------------------------------------------------------------------ the figures module

def test_figures_skip_quietly_and_share_axes(tiny_mamba_run, tiny_vit_run):
    mamba, vit = load_run(tiny_mamba_run), load_run(tiny_vit_run)
    assert figures.dt_bands(vit) is None and figures.attention_stats(mamba) is None
    assert not figures.FIGURES["dt_bands"].available([vit])
    keys = {s.key for s in figures.available_figures([mamba, vit])}
    assert {"training_curves", "grad_heatmap", "dt_bands", "attention_stats"} <= keys
    fig = figures.training_curves([mamba, vit])
    names = {t.name for t in fig.data if t.showlegend is not False}
    assert {mamba.name, vit.name} <= names
    heat = figures.grad_heatmap([mamba, vit])
    zs = [(t.zmin, t.zmax) for t in heat.data]
    assert len(zs) == 2 and zs[0] == zs[1]        # one colour scale for both runs
    dt = figures.dt_bands(mamba)
    assert len(fig.data) > 0 and len(dt.data) == 2 * 4 * 5   # layers x directions x traces


def test_figure_labels_escaped(hostile_run):
    fig = figures.training_curves(load_run(hostile_run))
    text = fig.to_json()
    assert "<img" not in text and "&lt;img" in text


# ------------------------------------------------------------------ diagnose --run

def test_cli_table_writes_default_report(tiny_mamba_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--run", str(tiny_mamba_run)]) == 0
    out = capsys.readouterr().out
    report = Path("reports") / "healthy_mamba.html"
    assert report.is_file() and f"report: {report}" in out
    assert "no findings" in out


def test_cli_table_shows_findings_and_escapes_names(warned_run, hostile_run, tmp_path, capsys):
    assert main(["--run", str(warned_run), "--out", str(tmp_path / "w.html")]) == 0
    out = capsys.readouterr().out
    assert "ssm.init_mismatch" in out and "warning" in out and "zeroed" in out
    assert main(["--run", str(hostile_run), "--out", str(tmp_path / "h.html")]) == 0
    assert XSS_DIR in " ".join(capsys.readouterr().out.split())   # printed as text, not markup


def test_cli_json_only_json_and_fail_on(warned_run, tmp_path, capsys):
    out_path = tmp_path / "r.html"
    rc = main(["--run", str(warned_run), "--format", "json", "--out", str(out_path),
               "--fail-on", "warning"])
    out = capsys.readouterr().out
    assert rc == 1
    data = json.loads(out)                                  # stdout is JSON and nothing else
    assert data["report"] == str(out_path) and out_path.is_file()
    (run,) = data["runs"]
    assert run["name"] == "zeroed_v_only" and data["comparisons"] == []
    f = next(f for f in run["findings"] if f["code"] == "ssm.init_mismatch")
    assert {"code", "severity", "layer", "direction", "steps", "evidence", "remedy"} <= set(f)
    assert f["layer"] == 0 and f["direction"] == "v" and f["steps"] == [0, 0]
    assert main(["--run", str(warned_run), "--format", "json", "--out", str(out_path),
                 "--fail-on", "error"]) == 0
    capsys.readouterr()


def test_cli_two_runs_side_by_side(tiny_mamba_run, tiny_vit_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--run", str(tiny_mamba_run), "--run", str(tiny_vit_run), "--format",
                 "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["runs"]] == ["healthy_mamba", "healthy_vit"]
    (cmp,) = data["comparisons"]
    assert [c["claim"] for c in cmp["claims"]] == [f"C{i}" for i in range(1, 11)]
    assert Path(data["report"]) == Path("reports/healthy_mamba_vs_healthy_vit.html")
    assert Path(data["report"]).is_file()
    assert main(["--run", str(tiny_mamba_run), "--run", str(tiny_vit_run)]) == 0
    out = capsys.readouterr().out
    assert "(a) vs" in out and "C3" in out


def _bad_runs(tmp_path):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    return {tmp_path / "missing": "no such run directory", not_a_run: "manifest",
            broken: "manifest"}


def test_cli_user_errors_exit_2(tmp_path, capsys):
    for path, text in _bad_runs(tmp_path).items():
        assert main(["--run", str(path), "--out", str(tmp_path / "x.html")]) == 2
        captured = capsys.readouterr()
        err = " ".join(captured.err.split())
        assert err.startswith("diagnose: error:") and text in err and "Traceback" not in err
        assert captured.out == ""
    assert not (tmp_path / "x.html").exists()


def test_cli_user_error_is_one_line(tmp_path, capsys):
    for path in _bad_runs(tmp_path):
        assert main(["--run", str(path)]) == 2
        assert capsys.readouterr().err.count("\n") == 1


def test_default_report_path_is_file_safe(hostile_run):
    path = default_report_path([load_run(hostile_run)])
    assert path.parent == Path("reports") and "/" not in path.name[:-5] and "<" not in path.name


# ------------------------------------------------------------------ a real browser

@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_chromium(hostile_run, tiny_vit_run, tmp_path):
    """Load the report in headless Chromium: every figure renders, the hostile name is text."""
    page = tmp_path / "report.html"
    page.write_text(render_html(analyse_runs([load_run(hostile_run), load_run(tiny_vit_run)])))
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    n_figs = page.read_text().count('class="plotly-graph-div"')
    assert n_figs >= 8 and dom.count('class="main-svg"') >= n_figs   # plotly drew each figure
    assert XSS not in dom and "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_report_shows_scan_paths_vs_attention_when_maps_are_recorded(tiny_mamba_run, tiny_vit_run,
                                                                     tmp_path):
    from diagnostics import maps as M
    from models import build_model

    runs = []
    probe = M.probe_images(2, dataset="synthetic:16", img_size=(32, 16))
    for src, backbone in ((tiny_vit_run, "VIT-T"), (tiny_mamba_run, "MAMBA-V2-T")):
        dst = tmp_path / backbone
        shutil.copytree(src, dst)
        torch.manual_seed(0)
        model = build_model(backbone, img_size=(32, 16), patch_size=8, depth=2)
        ms = M.compute_maps(model, probe, backbone=backbone, name=backbone, step=5,
                            attribution_methods=("saliency",))
        M.save_maps(ms, M.maps_dir(dst) / "step-00000005.npz")
        runs.append(load_run(dst))
    a = analyse_runs(runs)
    sets, scores, _ = a.maps
    assert [s.backbone for s in sets] == ["VIT-T", "MAMBA-V2-T"]
    page = render_html(a)
    section = page[page.index('<section id="maps">'):]
    section = section[: section.index("</section>")]
    assert 'href="#maps"' in page and "mean_distance" in section
    # the agreement table carries the numbers compare_maps computed, row for row
    assert section.count("<tr>") >= len(M.comparison_table(scores)) + 1


def test_report_without_maps_says_how_to_compute_them(tiny_vit_run):
    page = render_html(analyse_runs([load_run(tiny_vit_run)]))
    section = page[page.index('<section id="maps">'):]
    assert "diagnose maps --run" in section[: section.index("</section>")]

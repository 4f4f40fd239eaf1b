"""The Streamlit app (app/main.py): one AppTest per page on small runs made here, the empty state,
a corrupt run, a live run that grows, and run strings that never reach markdown or HTML."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "app"
MAIN = str(APP / "main.py")
PAGES = {
    "overview": "views/overview.py",
    "convergence": "views/convergence.py",
    "layers": "views/layers.py",
    "ssm": "views/ssm.py",
    "maps": "views/maps.py",
    "findings": "views/findings.py",
    "remedies": "views/remedies.py",
}
# A run folder whose name is markdown, a link and HTML: it must only ever be shown as text.
HOSTILE = "**bold** [x](javascript:alert(1)) <img src=x onerror=alert(1)>"
MARKDOWN_ELEMENTS = ("markdown", "caption", "title", "header", "subheader", "info", "warning",
                     "error", "success", "metric")


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit runs each page as a module named __main__ and leaves it in sys.modules; a
    later test that starts processes with multiprocessing (spawn/forkserver re-import the main
    module from its path) would then run app/main.py in its children. Put the real one back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_mamba_run, tiny_vit_run, train_tiny):
    """runs/: demo/MAMBA-V2-T (nested, with maps), VIT-T (with maps), lr_x100 (diverged: findings),
    HOSTILE (a copy of the ViT run), broken (manifest is not JSON)."""
    import torch

    from diagnostics import maps as M
    from models import build_model

    root = tmp_path_factory.mktemp("app_runs")
    shutil.copytree(tiny_mamba_run, root / "demo" / "MAMBA-V2-T")
    shutil.copytree(tiny_vit_run, root / "VIT-T")
    shutil.copytree(tiny_vit_run, root / HOSTILE)
    # the same key and settings as tests/test_analyzers.py: trained once per session
    shutil.copytree(train_tiny("lr_x100", steps=8, lr=1e-2 * 100, probe_every=4), root / "lr_x100")
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text("{not json")

    probe = M.probe_images(2, dataset="synthetic:16", img_size=(32, 16))
    for run, backbone in ((root / "demo" / "MAMBA-V2-T", "MAMBA-V2-T"), (root / "VIT-T", "VIT-T")):
        torch.manual_seed(0)
        model = build_model(backbone, img_size=(32, 16), patch_size=8, depth=2)
        ms = M.compute_maps(model, probe, backbone=backbone, name=run.name, step=5,
                            attribution_methods=("saliency",))
        M.save_maps(ms, M.maps_dir(run) / "step-00000005.npz")
    return root


def app(runs_dir: Path, page: str = "overview") -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["runs_dir"] = str(runs_dir)
    at.run()
    if page != "overview":
        at.switch_page(PAGES[page]).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest, kinds=MARKDOWN_ELEMENTS) -> list[str]:
    out = []
    for kind in kinds:
        for el in at.get(kind):
            out.append(str(getattr(el, "value", "")) + " " + str(getattr(el, "label", "")))
    return out


def frames(at: AppTest) -> list:
    import pandas as pd
    out = []
    for df in at.dataframe:
        v = df.value
        out.append(v.data if not isinstance(v, pd.DataFrame) and hasattr(v, "data") else v)
    return out


def plotly_count(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


# ------------------------------------------------------------------------------ one per page

def test_overview_page(runs_root):
    at = app(runs_root)
    assert [t.value for t in at.title] == ["Overview"]
    table = frames(at)[0]
    assert set(table["run"]) == {"demo/MAMBA-V2-T", "VIT-T", "lr_x100", HOSTILE}
    assert dict(zip(table["run"], table["status"]))["lr_x100"] == "diverged"
    assert table.loc[table["run"] == "VIT-T", "best mAP (%)"].item() == pytest.approx(32.0)
    # the corrupt run: its one-line error, as code; the others are still there
    assert any("broken" in c.value and "not valid JSON" in c.value for c in at.code)
    assert any("could not be read" in e.value for e in at.error)
    # four readable runs are selected by default: the comparison and its claims are shown
    assert any(h.value == "Comparison" for h in at.header)
    shown = " ".join(t.value for t in at.text)
    assert "converged faster" in shown and "C1" in shown
    assert at.sidebar.text_input(key="runs_dir").value == str(runs_root)
    assert len(at.sidebar.multiselect(key="selected").value) == 4
    # the sidebar setting: another folder, kept across pages
    at.sidebar.text_input(key="runs_dir").set_value(str(runs_root / "demo")).run()
    assert list(frames(at)[0]["run"]) == ["MAMBA-V2-T"]
    at.switch_page(PAGES["convergence"]).run()
    assert at.sidebar.text_input(key="runs_dir").value == str(runs_root / "demo")
    assert at.sidebar.multiselect(key="selected").value == [str(runs_root / "demo" / "MAMBA-V2-T")]
    assert not at.exception and plotly_count(at) == 2


def test_convergence_page(runs_root):
    at = app(runs_root, "convergence")
    titles = [s.value for s in at.subheader]
    assert "Loss, learning rate and gradient norm" in titles
    assert "Evaluation: mAP and Rank-1" in titles
    assert plotly_count(at) == 2
    events = frames(at)[0]                       # lr_x100's non-finite steps
    assert set(events["kind"]) >= {"nonfinite"} and set(events["run"]) == {"lr_x100"}


def test_layers_page(runs_root):
    at = app(runs_root, "layers")
    titles = [s.value for s in at.subheader]
    for t in ("Gradient norm per layer (layer × step)", "Update-to-weight ratio per layer",
              "Gradient profile across depth", "Attention entropy, distance and max logit"):
        assert t in titles
    assert plotly_count(at) == len(titles) == 4


def test_ssm_page(runs_root):
    at = app(runs_root, "ssm")
    titles = [s.value for s in at.subheader]
    assert titles[:2] == ["dt = softplus(dt_proj(x) + bias) per layer and direction",
                          "|A·dt| per layer and direction (decay exp(A·dt))"]
    assert "A_log drift and spread" in titles and plotly_count(at) == len(titles) >= 6
    layers = at.multiselect(key="ssm_layers")
    assert layers.value == [0, 1]
    layers.set_value([1]).run()                  # one layer: fewer facets, no error
    assert not at.exception and plotly_count(at) == len(titles)


def test_ssm_page_without_ssm_runs(runs_root):
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.session_state["runs_dir"] = str(runs_root)
    at.session_state["_selected"] = [str(runs_root / "VIT-T")]
    at.session_state["_selected_in"] = str(runs_root)
    at.run()
    at.switch_page(PAGES["ssm"]).run()
    assert not at.exception and plotly_count(at) == 0
    assert any("None of the selected runs recorded SSM internals" in i.value for i in at.info)


def test_maps_page(runs_root):
    at = app(runs_root, "maps")
    titles = [s.value for s in at.subheader]
    assert titles == ["Maps on the same image", "How much they agree",
                      "Scan directions of one SSM layer", "Effective receptive field"]
    assert plotly_count(at) == 4                 # panels, scores, directions, ERF
    sets, numbers = frames(at)
    assert set(sets["backbone"]) == {"MAMBA-V2-T", "VIT-T"}
    assert {"layer", "rollout", "saliency", "erf"} <= set(numbers["map"])
    # the runs without maps are told how to compute them
    assert any("no maps recorded" in i.value for i in at.info)
    cmd = [c.value for c in at.code if c.value.startswith("diagnose maps")]
    assert cmd and "lr_x100" in cmd[0] and "--run" in cmd[0]
    at.selectbox(key="maps_query").set_value(3).run()   # one patch's row instead of the output
    at.selectbox(key="maps_image").set_value(1).run()
    assert not at.exception and plotly_count(at) == 4


def test_findings_page(runs_root):
    at = app(runs_root, "findings")
    table = frames(at)[0]
    assert {"nonfinite", "loss.diverged"} <= set(table["code"])
    assert set(table["run"]) == {"lr_x100"}
    assert table["remedy"].str.len().min() > 10
    assert [m.value for m in at.metric][0] == str((table["severity"] == "error").sum())
    at.multiselect(key="f_code").set_value(["nonfinite"]).run()
    assert set(frames(at)[0]["code"]) == {"nonfinite"}
    at.text_input(key="f_text").set_value("no such words anywhere").run()
    assert len(frames(at)[0]) == 0 and not at.exception


# ------------------------------------------------------------------------------ states

@pytest.mark.parametrize("page", list(PAGES))
def test_empty_state(tmp_path, page):
    at = app(tmp_path / "nothing_here", page)
    assert any("make demo" in i.value for i in at.info)
    assert any("make demo" in c.value for c in at.code)
    assert plotly_count(at) == 0 and not at.error


def test_only_a_corrupt_run(tmp_path, tiny_vit_run):
    shutil.copytree(tiny_vit_run, tmp_path / "good")
    bad = tmp_path / "bad"
    (bad / "steps").mkdir(parents=True)
    (bad / "manifest.json").write_text(json.dumps({"schema_version": 99, "status": "running"}))
    at = app(tmp_path)
    assert any("bad" in c.value and "schema" in c.value.lower() for c in at.code)
    assert list(frames(at)[0]["run"]) == ["good"]
    at.switch_page(PAGES["convergence"]).run()
    assert not at.exception and plotly_count(at) == 2


def test_live_run_reloads_as_it_grows(tmp_path):
    from diagnostics.runfmt import RunWriter

    def rows(a, b):
        return [dict(step=s, loss=2.0 - 0.01 * s, lr=1e-3, grad_norm=1.0) for s in range(a, b)]

    with RunWriter(tmp_path / "live", manifest=dict(backbone="VIT-T"),
                   flush_every_s=3600) as w:
        w.extend("steps", rows(0, 5))
        w.flush()
        at = app(tmp_path)
        table = frames(at)[0]
        assert table["status"].tolist() == ["running"] and table["steps"].tolist() == [5]
        assert any("Live" in c.value for c in at.caption)       # the page follows it
        w.extend("steps", rows(5, 12))
        w.flush()
        at.run()                                                # what run_every does
        assert frames(at)[0]["steps"].tolist() == [12]
        at.switch_page(PAGES["convergence"]).run()
        assert not at.exception and plotly_count(at) == 1
        w.close(status="finished")
    at.switch_page(PAGES["overview"]).run()
    assert frames(at)[0]["status"].tolist() == ["finished"]
    assert not any("Live" in c.value for c in at.caption)


# ------------------------------------------------------------------------------ safety

def test_run_strings_never_reach_markdown(runs_root):
    for page in PAGES:
        at = app(runs_root, page)
        for t in texts(at):
            assert "onerror" not in t and "javascript:" not in t, (page, t)
    at = app(runs_root)
    assert HOSTILE in set(frames(at)[0]["run"])       # shown, as a table cell


def test_no_unsafe_html_in_the_app():
    for f in [APP / "main.py", APP / "common.py", *sorted((APP / "views").glob("*.py"))]:
        assert "unsafe_allow_html" not in f.read_text(), f


# ------------------------------------------------------------------------------ remedies

@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory, fake_sweep, tiny_vit_run):
    """runs/: sweeps/my_sweep (a sweep, one variant named with HTML), VIT-T (a plain run)."""
    root = tmp_path_factory.mktemp("app_sweeps")
    shutil.copytree(fake_sweep, root / "sweeps" / "my_sweep")
    shutil.copytree(tiny_vit_run, root / "VIT-T")
    return root


def test_remedies_page(sweep_root, fake_sweep_plan):
    at = app(sweep_root, "remedies")
    assert [t.value for t in at.title] == ["Remedies"]
    assert at.selectbox(key="sweep").value == str(sweep_root / "sweeps" / "my_sweep")
    ranking = frames(at)[0]
    assert set(ranking["variant"]) == set(fake_sweep_plan)
    assert ranking["variant"].iloc[0] == "lr=1e-4" and ranking["variant"].iloc[-1] == "lr=1"
    assert list(ranking["#"]) == list(range(1, len(fake_sweep_plan) + 1))
    assert [m.value for m in at.metric] == ["MAMBA-V2-T", "40 steps", "2", "10"]
    assert plotly_count(at) == 4
    ssm = frames(at)[2]
    assert dict(zip(ssm["variant"], ssm["dt median"]))["lr=1e-4"] == pytest.approx(0.05)
    assert dict(zip(ssm["variant"], ssm["|A·dt| median"]))["lr=1e-4"] == pytest.approx(0.05)
    # the HTML variant name: shown in tables and figures, never through markdown
    for t in texts(at):
        assert "onerror" not in t, t
    # the sweep's runs are runs like any other on the other pages
    at.switch_page(PAGES["overview"]).run()
    assert "sweeps/my_sweep/baseline-seed0" in set(frames(at)[0]["run"])


def test_remedies_page_without_a_sweep(runs_root):
    at = app(runs_root, "remedies")
    assert any("No sweep" in i.value for i in at.info)
    assert any("diagnose sweep" in c.value for c in at.code)
    assert plotly_count(at) == 0 and not at.error


def test_remedies_page_with_a_broken_sweep(tmp_path, tiny_vit_run):
    shutil.copytree(tiny_vit_run, tmp_path / "VIT-T")
    (tmp_path / "bad_sweep").mkdir()
    (tmp_path / "bad_sweep" / "sweep.json").write_text("{not json")
    at = app(tmp_path, "remedies")
    assert any("bad_sweep" in c.value and "not a sweep plan" in c.value for c in at.code)
    assert plotly_count(at) == 0


def test_runs_dir_argument():
    sys.path.insert(0, str(APP))
    try:
        import common
    finally:
        sys.path.remove(str(APP))
    assert common.cli_runs_dir(["--runs-dir", "elsewhere"]) == "elsewhere"
    assert common.cli_runs_dir([]) == "runs"
    assert common.cli_runs_dir(["-q", "tests/test_app.py"]) == "runs"
    assert common.cli_runs_dir(["--run", "x"]) == "runs"         # no abbreviations

"""`diagnose bench`: every section yields every row (not the times), and the outputs are sound.

The bench runs at even smaller settings than `--quick` here (tiny tensors, two image sizes, a
few steps), so that the whole file stays well under a minute on two busy cores.
"""

import argparse
import math

import numpy as np
import pandas as pd
import pytest
import torch

from diagnostics import bench

TINY = {
    "scan": dict(batch=2, dim=8, d_state=4, lengths=(8, 16), repeats=1, max_seconds=5),
    "resolution": dict(models=("VIT-T", "MAMBA-S-T", "MAMBA-V2-T"),
                       image_sizes=((32, 32), (64, 32)), batch=1, repeats=1, max_seconds=5),
    "recorder": dict(backbone="MAMBA-V2-T", image_size=(16, 16), patch_size=8, batch=2,
                     steps=2, rounds=1),
    "load": dict(steps=200, layers=2, repeats=1),
}


@pytest.fixture
def tiny_settings(monkeypatch):
    monkeypatch.setattr(bench, "settings", lambda device="cpu", quick=False:
                        {k: dict(v) for k, v in TINY.items()})


def test_bench_has_every_row(tiny_settings, tmp_path):
    result = bench.run_bench("cpu", quick=True, threads=1)
    assert not result.failed
    s = {sec.key: sec for sec in result.sections}
    assert list(s) == list(bench.SECTIONS)

    scan = s["scan"].frame
    assert list(zip(scan["length"], scan["backend"])) == [
        (L, be) for L in (8, 16) for be in ("mamba_ref", "reference", "fast")]
    assert scan["time_s"].notna().all() and (scan["runs"] >= 1).all()
    assert scan["speedup"].notna().all() and scan["peak_mb"].notna().all()
    # the three paths compute the same scan
    assert (scan["max_abs_dy"] < 1e-4).all() and (scan["max_rel_dgrad"] < 1e-4).all()

    res = s["resolution"].frame
    assert list(zip(res["model"], res["image"])) == [
        (m, i) for m in ("VIT-T", "MAMBA-S-T", "MAMBA-V2-T") for i in ("32x32", "64x32")]
    assert list(res["tokens"]) == [4, 8] * 3
    assert res["time_s"].notna().all() and res["images_per_s"].notna().all()
    slopes = s["resolution"].extra[0].frame
    assert list(slopes["model"]) == ["VIT-T", "MAMBA-S-T", "MAMBA-V2-T"]
    assert slopes["time_slope"].notna().all()

    rec = s["recorder"].frame
    assert list(rec["configuration"]) == ["no recorder", "probe_every=1", "probe_every=10",
                                          "probe_every=50", "probe_every=200"]
    assert rec["steps_per_s"].gt(0).all() and rec["overhead"].iloc[0] == 1.0

    load = s["load"].frame
    assert load["operation"].str.startswith("load_run").sum() == 2
    assert load["operation"].str.contains("report").any()
    assert load.loc[load["operation"].str.startswith("load_run"), "time_s"].notna().all()

    # every output carries the device, the load average and every row
    md = bench.to_markdown(result)
    page = bench.to_html(result)
    for text in (md, page):
        assert "load average" in text and "cpu" in text
        for label in ("mamba_ref", "MAMBA-V2-T", "probe_every=200", "load_run (finished run"):
            assert label in text
    assert md.count("\n| 16 | ") == 3
    # plotly's JS inline exactly once, nothing fetched from elsewhere
    assert page.count("<script type=\"text/javascript\">/**") <= 1
    assert "<script src=" not in page and 'src="http' not in page


def test_cli_main_writes_the_page_and_the_markdown(tiny_settings, tmp_path, capsys):
    p = argparse.ArgumentParser()
    bench.add_arguments(p, "bench")
    out, md = tmp_path / "r" / "bench.html", tmp_path / "bench.md"
    args = p.parse_args(["--quick", "--sections", "load", "--out", str(out),
                         "--markdown", str(md), "--no-progress", "--threads", "1"])
    assert bench.main(args, "bench") == 0
    text = capsys.readouterr().out
    assert "load average" in text and "load_run" in text
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert "4. Loading a long run" in md.read_text()
    assert p.parse_args([]).out == "reports/bench.html"
    assert p.parse_args(["--markdown"]).markdown == "auto"


def test_strings_are_escaped():
    frame = pd.DataFrame([{"operation": "<script>alert(1)</script>", "time_s": 1.0,
                           "note": "a | b"}])
    sec = bench.Section("load", "4. <b>x</b>", frame, bench.LOAD_COLUMNS, notes=["<i>n</i>"])
    result = bench.BenchResult([sec], dict(device="cpu", device_name="x", quick=True,
                                           date="2026-01-01", torch="t", python="p", threads=1,
                                           cores=2, load_start=(0.1, 0.1, 0.1)))
    page = bench.to_html(result)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>x</b>" not in page and "<i>n</i>" not in page
    assert "a \\| b" in bench.to_markdown(result)


def test_fit_slopes_recovers_known_exponents():
    tokens = np.array([64, 256, 1024])
    points = pd.DataFrame({
        "model": ["lin"] * 3 + ["quad"] * 3,
        "tokens": np.concatenate([tokens, tokens]),
        "time_s": np.concatenate([0.01 * tokens, 1e-5 * tokens**2]),
        "peak_mb": np.concatenate([2.0 * tokens, [5.0, 5.0, 5.0]]),
    })
    s = bench.fit_slopes(points).set_index("model")
    assert s.loc["lin", "time_slope"] == pytest.approx(1.0)
    assert s.loc["quad", "time_slope"] == pytest.approx(2.0)
    assert s.loc["quad", "time_slope_top"] == pytest.approx(2.0)
    assert s.loc["lin", "mem_slope"] == pytest.approx(1.0)
    assert s.loc["quad", "mem_slope"] == pytest.approx(0.0, abs=1e-9)


def test_settings_measure_what_the_issue_asks():
    full = bench.settings("cpu")
    assert (full["scan"]["batch"], full["scan"]["dim"], full["scan"]["d_state"]) == (32, 384, 16)
    assert full["scan"]["lengths"] == (196, 1024)
    assert bench.settings("cuda")["scan"]["lengths"] == (196, 1024, 4096)
    assert bench.scan_backends("cuda")[-1] == "cuda"
    assert full["resolution"]["models"] == ("VIT-S", "MAMBA-S", "MAMBA-V2")
    tokens = [h * w // 16**2 for h, w in full["resolution"]["image_sizes"]]
    assert tokens[0] == 64 and tokens[-1] == 1024
    for conf in (full, bench.settings("cpu", quick=True)):
        assert tuple(conf["recorder"].get("probe_every", bench.PROBE_EVERY)) == (1, 10, 50, 200)
        # probe_every=50 must have a probe step among the timed steps
        assert conf["recorder"]["steps"] >= 50
    assert full["load"]["steps"] == 10_000 and full["load"]["layers"] == 24


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(ValueError, match="cuda"):
        bench.run_bench("cuda", quick=True)
    with pytest.raises(ValueError, match="unknown section"):
        bench.run_bench("cpu", sections=["nope"])


def test_a_failed_measurement_is_a_row_with_a_note():
    # an unknown backend raises inside the measuring process: the row stays, with the reason
    df = bench.bench_scan(batch=1, dim=2, d_state=2, lengths=(4,), backends=["fast", "nope"],
                          repeats=1, max_seconds=1)
    assert list(df["backend"]) == ["fast", "nope"]
    assert math.isnan(df["time_s"].iloc[1]) and "nope" in df["note"].iloc[1]

"""Mixed precision: a MAMBA-V2-T trained under `torch.autocast("cpu", dtype=torch.bfloat16)`
records its dt and A_log statistics in fp32, and gives the same findings as its fp32 twin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import one_torch_thread
from diagnostics import analyze, load_run, probes
from diagnostics.recorder import Recorder
from models import build_model

STEPS = 6


def _train(run_dir, bf16: bool, seen: dict) -> None:
    """conftest.train_tiny_run's recipe (same data, seed, lr), the whole step under autocast
    when `bf16`, the recorder's call included."""
    with one_torch_thread():
        torch.manual_seed(0)
        model = build_model("MAMBA-V2-T", img_size=(32, 16), patch_size=8, depth=2)
        head = nn.Linear(model.num_features, 4)
        g = torch.Generator().manual_seed(123)
        x_all = torch.randn(16, 3, 32, 16, generator=g)
        y_all = torch.randint(0, 4, (16,), generator=g)
        opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-3)
        with Recorder(model, run_dir, probe_every=2, layer_every=1, probe_batch=4,
                      backbone="MAMBA-V2-T", config={"bf16": bf16}, flush_every_s=60.0) as rec:
            for step in range(STEPS):
                idx = torch.arange(8) + 8 * (step % 2)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = head(model(x_all[idx]))
                    seen.setdefault("out", set()).add(out.dtype)
                    loss = F.cross_entropy(out, y_all[idx])
                    loss.backward()
                    rec.step(loss, optimizer=opt, epoch=0)
                opt.step()
                opt.zero_grad()
        seen["A_log"] = {p.dtype for n, p in model.named_parameters() if n.endswith("A_log")}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    seen: dict[str, dict] = {"fp32": {}, "bf16": {}}
    # what the probes compute with, whatever the caller's autocast says
    real = probes.scan_inputs

    def spy(module, x):
        inputs = real(module, x)
        seen["current"].setdefault("probe", set()).update(
            (k, v.dtype) for k, v in inputs.items() if isinstance(v, torch.Tensor))
        return inputs

    mp = pytest.MonkeyPatch()
    mp.setattr(probes, "scan_inputs", spy)
    try:
        for name in ("fp32", "bf16"):
            seen["current"] = seen[name]
            _train(root / name, name == "bf16", seen[name])
    finally:
        mp.undo()
    return load_run(root / "fp32"), load_run(root / "bf16"), seen


def test_bf16_run_really_ran_in_bf16_and_kept_ssm_parameters_fp32(twins):
    _, _, seen = twins
    assert seen["bf16"]["out"] == {torch.bfloat16} and seen["fp32"]["out"] == {torch.float32}
    assert seen["bf16"]["A_log"] == {torch.float32}
    probe_dtypes = dict(seen["bf16"]["probe"])
    for key in ("delta", "A", "A_log", "u", "B", "C"):
        assert probe_dtypes[key] == torch.float32, key


def test_recorded_dt_and_alog_stats_are_fp32_values(twins):
    _, bf16, _ = twins
    cols = ["dt_p05", "dt_p50", "dt_p95", "adt_p50", "mem_len", "alog_mean", "alog_std"]
    values = bf16.ssm[cols].to_numpy(dtype=np.float64).ravel()
    assert len(values) and np.isfinite(values).all()
    as_bf16 = torch.tensor(values, dtype=torch.float32).to(torch.bfloat16).double().numpy()
    # statistics computed in bf16 would all be bf16 numbers (8 significant bits)
    assert (as_bf16 != values).mean() > 0.9


def test_bf16_twin_gives_the_same_findings(twins):
    fp32, bf16, _ = twins
    assert bf16.status == fp32.status == "finished"
    a, b = analyze(fp32), analyze(bf16)
    assert [(f.code, f.severity, f.layer, f.direction) for f in a] == \
           [(f.code, f.severity, f.layer, f.direction) for f in b]
    assert not [f for f in b if f.severity in ("warning", "error")]  # a healthy model
    # and the numbers behind them agree to bf16's precision
    for col in ("dt_p50", "adt_p50", "frac_erased", "frac_frozen", "mem_len", "alog_drift"):
        np.testing.assert_allclose(bf16.ssm[col], fp32.ssm[col], rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(bf16.steps.loss, fp32.steps.loss, rtol=0.05)

"""Shared fixtures. Keep them generic (others add theirs here too)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models train faster on one thread than on a busy shared CPU's many."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def train_tiny_run(run_dir: Path, backbone: str = "MAMBA-V2-T", *, steps: int = 6,
                   lr: float = 1e-3, probe_every: int = 2, layer_every: int = 1,
                   clip_grad: float | None = None,
                   setup=None, before_step=None, evals: dict | None = None, seed: int = 0,
                   depth: int = 2, config: dict | None = None, **model_kw) -> Path:
    """Train a tiny registered backbone for a few steps with the Recorder; returns the run dir.

    Data: 16 fixed random images (32x16 px, patch 8), 4 classes, a linear head outside the
    backbone, AdamW, batches of 8 alternating between the two halves.
    Hooks for making things happen for real:
        setup(model): after the model is built, before the Recorder attaches (shows at step 0);
        before_step(model, step): before each step's forward (mid-run changes);
        evals: {step: (mAP, rank1)} logged with Recorder.log_eval after that step.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from diagnostics.recorder import Recorder
    from models import build_model

    with one_torch_thread():
        torch.manual_seed(seed)
        model = build_model(backbone, img_size=(32, 16), patch_size=8, depth=depth, **model_kw)
        if setup is not None:
            setup(model)
        head = nn.Linear(model.num_features, 4)
        g = torch.Generator().manual_seed(123)
        x_all = torch.randn(16, 3, 32, 16, generator=g)
        y_all = torch.randint(0, 4, (16,), generator=g)
        opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=lr)
        cfg = dict(backbone=backbone, lr=lr, clip_grad=clip_grad, batch_size=8, depth=depth)
        cfg.update(config or {})
        with Recorder(model, run_dir, probe_every=probe_every, layer_every=layer_every,
                      probe_batch=4, backbone=backbone, config=cfg, flush_every_s=60.0) as rec:
            for step in range(steps):
                if before_step is not None:
                    before_step(model, step)
                idx = torch.arange(8) + 8 * (step % 2)
                loss = F.cross_entropy(head(model(x_all[idx])), y_all[idx])
                loss.backward()
                rec.step(loss, optimizer=opt, clip_grad=clip_grad, epoch=0)
                opt.step()
                opt.zero_grad()
                if evals and step in evals:
                    m, r1 = evals[step]
                    rec.log_eval(epoch=0, mAP=m, rank1=r1, step=step)
    return Path(run_dir)


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """Factory fixture: ``train_tiny(key, backbone=..., **kw) -> run dir``, trained once per
    session and key (see :func:`train_tiny_run` for the keyword arguments)."""
    root = tmp_path_factory.mktemp("tiny_runs")
    cache: dict[str, Path] = {}

    def make(key: str, backbone: str = "MAMBA-V2-T", **kw) -> Path:
        if key not in cache:
            cache[key] = train_tiny_run(root / key, backbone, **kw)
        return cache[key]
    return make


@pytest.fixture(scope="session")
def tiny_mamba_run(train_tiny) -> Path:
    """A healthy MAMBA-V2-T run: 6 steps, lr 1e-3, probes every 2 steps, one evaluation."""
    return train_tiny("healthy_mamba", "MAMBA-V2-T", steps=6, lr=1e-3, probe_every=2,
                      evals={5: (31.0, 52.0)})


@pytest.fixture(scope="session")
def tiny_vit_run(train_tiny) -> Path:
    """A healthy VIT-T run: 6 steps, lr 1e-3, probes every 2 steps, one evaluation."""
    return train_tiny("healthy_vit", "VIT-T", steps=6, lr=1e-3, probe_every=2,
                      evals={5: (32.0, 53.0)})


# ------------------------------------------------------------------ a sweep, written by hand

SWEEP_HOSTILE = "<img src=x onerror=alert(1)>"
SWEEP_STEPS = 40
SWEEP_LAYERS = 2
SWEEP_DIRS = ("h", "v")

# variant -> (final mAP per seed, loss scale, dt at the last probe, grad-norm wobble, status):
# the loss falls on a straight line from 3 to 1 (times the scale), the last evaluation gives the
# final mAP, and the last probe's dt_p50 is dt x (0.8, 0.9, 1.1, 1.2) over the 2 layers x 2
# directions, whose median is dt
FAKE_SWEEP_PLAN = {
    "baseline": ([10.0, 12.0], 1.0, 0.7, 0.5, "finished"),
    "lr=1e-4": ([20.0, 22.0], 0.5, 0.05, 0.1, "finished"),
    "cosine": ([11.0, 11.0], 1.0, 0.6, 0.5, "finished"),
    SWEEP_HOSTILE: ([10.5, 11.5], 1.0, 0.7, 0.5, "finished"),
    "lr=1": ([0.5, 0.5], 50.0, 30.0, 5.0, "diverged"),
}


def _sweep_dirname(variant: str, seed: int) -> str:
    import re
    return re.sub(r"[^A-Za-z0-9.-]+", "_", variant).strip("_") + f"-seed{seed}"


def _write_sweep_run(path: Path, variant: str, seed: int) -> None:
    """One recorded run with a known loss curve, final mAP, grad norms and SSM probes."""
    import numpy as np

    from diagnostics.runfmt import RunWriter

    maps, scale, dt, wobble, status = FAKE_SWEEP_PLAN[variant]
    rng = np.random.default_rng(seed)
    loss = scale * (3.0 - 2.0 * np.arange(SWEEP_STEPS) / SWEEP_STEPS) + 0.01 * seed
    grad = 1.0 + wobble * rng.random(SWEEP_STEPS)
    with RunWriter(path, manifest=dict(backbone="MAMBA-V2-T",
                                       config=dict(seed=seed, label=variant))) as w:
        w.extend("steps", [dict(step=s, epoch=s // 10, loss=float(loss[s]), lr=1e-3,
                                grad_norm=float(grad[s])) for s in range(SWEEP_STEPS)])
        for s, m in ((19, maps[seed] / 2), (SWEEP_STEPS - 1, maps[seed])):
            w.append("eval", dict(step=s, epoch=s // 10, mAP=m, rank1=m + 1))
        for s in (0, SWEEP_STEPS - 1):
            for layer in range(SWEEP_LAYERS):
                for k, d in enumerate(SWEEP_DIRS):
                    f = (0.8, 0.9, 1.1, 1.2)[layer * 2 + k] if s else 1.0
                    w.append("ssm", dict(step=s, layer=layer, module=f"blocks.{layer}.mixer",
                                         direction=d, dt_p50=dt * f, adt_p50=-dt * f,
                                         frac_erased=0.0, frac_frozen=0.1 * f,
                                         state_norm_max=3.0 * f, alog_std=0.5))
        w.close(status=status)


@pytest.fixture(scope="session")
def fake_sweep_plan() -> dict:
    """variant -> (final mAP per seed, loss scale, dt at the last probe, grad-norm wobble,
    status) of :func:`fake_sweep`."""
    return FAKE_SWEEP_PLAN


@pytest.fixture(scope="session")
def fake_sweep(tmp_path_factory) -> Path:
    """A `diagnose sweep` folder written row by row (no training): two seeds of each variant
    of FAKE_SWEEP_PLAN, every number known; one variant name is HTML."""
    import json

    root = tmp_path_factory.mktemp("remedies") / "my_sweep"
    variants = []
    for variant in FAKE_SWEEP_PLAN:
        names = [_sweep_dirname(variant, seed) for seed in (0, 1)]
        for seed, name in enumerate(names):
            _write_sweep_run(root / name, variant, seed)
        variants.append(dict(name=variant, remedies=[variant], changes=f"changes {variant}",
                             runs=names))
    (root / "sweep.json").write_text(json.dumps(dict(
        backbone="MAMBA-V2-T", budget_steps=SWEEP_STEPS, seeds=2, reference_epochs=60,
        baseline=dict(lr=1e-3), notes=["a note"], variants=variants)))
    return root

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

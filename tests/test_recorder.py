"""The Recorder, each number checked against an independent computation on tiny models."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnostics import load_run
from diagnostics.recorder import Recorder, _group_of
from models.scan import selective_scan_fn


class MambaSimpleLike(nn.Module):
    """Written the way mamba-ssm's `mamba_simple.Mamba` is (names, shapes, init), without it."""

    def __init__(self, d_model, d_state=4, d_conv=4, expand=2, dt_min=1e-3, dt_max=1e-1):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner,
                                padding=d_conv - 1)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, hidden_states):
        length = hidden_states.shape[1]
        xz = self.in_proj(hidden_states).transpose(1, 2)
        x, z = xz.chunk(2, dim=1)
        x = self.act(self.conv1d(x)[..., :length])
        x_dbl = self.x_proj(x.transpose(1, 2))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.t()).transpose(1, 2)
        A = -torch.exp(self.A_log.float())
        y = selective_scan_fn(x, dt, A, B.transpose(1, 2), C.transpose(1, 2), self.D.float(), z=z,
                              delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))


class TinyNet(nn.Module):
    def __init__(self, d_model=8, depth=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(3, d_model)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(norm=nn.LayerNorm(d_model), mixer=MambaSimpleLike(d_model)))
            for _ in range(depth))
        self.head = nn.Linear(d_model, 1)

    def forward(self, x):                                   # x: (B, L, 3)
        h = self.embed(x)
        for blk in self.blocks:
            h = h + blk["mixer"](blk["norm"](h))
        return self.head(h.mean(1)).squeeze(-1)


def _train(model, steps, run_dir=None, lr=0.05, probe_every=1, **rec_kw):
    torch.manual_seed(1)
    data = [(torch.randn(4, 12, 3), torch.randn(4)) for _ in range(steps)]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rec = Recorder(model, run_dir, probe_every=probe_every, **rec_kw) if run_dir else None
    outs, grads = [], []
    for x, y in data:
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        outs.append(out.detach().clone())
        grads.append([p.grad.clone() for p in model.parameters()])
        if rec:
            rec.step(loss, optimizer=opt, batch_size=4)
        opt.step()
        opt.zero_grad()
    if rec:
        rec.close()
    return outs, grads, data


def test_outputs_and_gradients_bit_identical_with_recorder(tmp_path):
    outs_a, grads_a, _ = _train(TinyNet(), 3)
    model = TinyNet()
    outs_b, grads_b, _ = _train(model, 3, tmp_path / "r")
    for a, b in zip(outs_a, outs_b):
        assert torch.equal(a, b)
    for ga, gb in zip(grads_a, grads_b):
        assert all(torch.equal(x, y) for x, y in zip(ga, gb))
    # close() removed every hook
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_steps_and_layer_norms_match_independent_computation(tmp_path):
    model = TinyNet()
    torch.manual_seed(1)
    x, y = torch.randn(4, 12, 3), torch.randn(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(model, tmp_path / "r", probe_every=0)
    loss = F.mse_loss(model(x), y)
    loss.backward()
    expected_total = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    blk = model.blocks[1]
    expected_blk = float(torch.nn.utils.get_total_norm([p.grad for p in blk.parameters()]))
    expected_alog = float(blk["mixer"].A_log.grad.norm())
    w_blk = float(torch.nn.utils.get_total_norm([p.detach() for p in blk.parameters()]))
    # SGD: update = lr * grad. (out_proj: its update is large enough that fp32 p_after - p_before
    # is exact to ~1e-6; dt_proj's updates here are ~1e-8 of its weights.)
    upd_out = 0.1 * float(blk["mixer"].out_proj.weight.grad.norm())
    w_out = float(blk["mixer"].out_proj.weight.detach().norm())
    total = rec.step(loss, optimizer=opt, clip_grad=1e9)
    opt.step()
    rec.close()
    assert total == pytest.approx(expected_total, rel=1e-6)
    run = load_run(tmp_path / "r")
    s = run.steps.iloc[0]
    assert s.loss == pytest.approx(float(loss.detach())) and s.grad_norm == pytest.approx(expected_total)
    assert s.lr == pytest.approx(0.1) and not s.clipped and not s.nonfinite
    L = run.layers.set_index(["layer", "group"])
    assert L.loc[(1, "block"), "grad_norm"] == pytest.approx(expected_blk, rel=1e-6)
    assert L.loc[(1, "block"), "weight_norm"] == pytest.approx(w_blk, rel=1e-6)
    assert L.loc[(1, "A_log"), "grad_norm"] == pytest.approx(expected_alog, rel=1e-6)
    assert L.loc[(1, "out_proj"), "update_ratio"] == pytest.approx(upd_out / w_out, rel=1e-4)
    assert set(L.loc[1].index) >= {"A_log", "D", "dt_proj", "x_proj", "in_proj", "out_proj",
                                   "conv", "norm", "block"}


def test_clipping_recorded_and_applied(tmp_path):
    model = TinyNet()
    x, y = torch.randn(4, 12, 3), torch.randn(4) * 100
    rec = Recorder(model, tmp_path / "r", probe_every=0)
    F.mse_loss(model(x), y).backward()
    before = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    assert before > 0.5
    total = rec.step(torch.tensor(1.0), clip_grad=0.5)
    after = float(torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]))
    rec.close()
    assert total == pytest.approx(before, rel=1e-6) and after == pytest.approx(0.5, rel=1e-4)
    assert bool(load_run(tmp_path / "r").steps.clipped.iloc[0])


def _hand_scan_inputs(mixer, h):
    """The scan inputs of MambaSimpleLike computed by hand from its weights, step by step."""
    L = h.shape[1]
    xz = h @ mixer.in_proj.weight.t()                        # (B, L, 2*d_inner)
    x = xz[..., : mixer.d_inner].transpose(1, 2)             # (B, d_inner, L)
    xp = F.pad(x, (mixer.d_conv - 1, 0))
    w = mixer.conv1d.weight[:, 0, :]                         # (d_inner, d_conv)
    conv = torch.stack([(xp[..., t: t + mixer.d_conv] * w).sum(-1) for t in range(L)], -1)
    x = F.silu(conv + mixer.conv1d.bias[:, None])
    dbl = x.transpose(1, 2) @ mixer.x_proj.weight.t()
    dt_low = dbl[..., : mixer.dt_rank]
    dt = F.softplus(dt_low @ mixer.dt_proj.weight.t() + mixer.dt_proj.bias).transpose(1, 2)
    return x, dt                                              # (B, d_inner, L) each


def test_ssm_probe_numbers_match_hand_computation(tmp_path):
    model = TinyNet()
    torch.manual_seed(3)
    x, y = torch.randn(4, 12, 3), torch.randn(4)
    captured = {}
    mixer = model.blocks[0]["mixer"]
    mixer.register_forward_pre_hook(lambda m, a: captured.setdefault("h", a[0].detach()))
    rec = Recorder(model, tmp_path / "r", probe_every=1, probe_batch=4)
    F.mse_loss(model(x), y).backward()
    rec.step(torch.tensor(0.0))
    rec.close()
    with torch.no_grad():
        _, dt = _hand_scan_inputs(mixer, captured["h"])
        A = -torch.exp(mixer.A_log)                            # (d_inner, N)
        adt = (dt[..., None] * A[None, :, None, :]).numpy()
    dt = dt.numpy()
    run = load_run(tmp_path / "r")
    row = run.ssm[(run.ssm.layer == 0) & (run.ssm.step == 0)].iloc[0]
    assert row.direction == "fwd" and row.module == "blocks.0.mixer"
    for q, name in zip((0, 1, 5, 25, 50, 75, 95, 99, 100),
                       ("min", "p01", "p05", "p25", "p50", "p75", "p95", "p99", "max")):
        assert row[f"dt_{name}"] == pytest.approx(np.percentile(dt, q), rel=1e-4, abs=1e-7)
        assert row[f"adt_{name}"] == pytest.approx(np.percentile(adt, q), rel=1e-4, abs=1e-7)
    assert row.frac_erased == pytest.approx(np.mean(np.exp(adt) < 0.01))
    assert row.frac_frozen == pytest.approx(np.mean(np.exp(adt) > 0.99))
    mean_dt = dt.mean(axis=(0, 2))
    assert row.mem_len == pytest.approx(
        np.median(1.0 / (np.abs(A.numpy()) * mean_dt[:, None])), rel=1e-4)
    assert row.selectivity == pytest.approx((dt.std(-1) / dt.mean(-1)).mean(), rel=1e-4)
    # At step 0, A_log = log(1..N) exactly and has not drifted.
    assert row.alog_drift == 0.0 and row.alog_min == 0.0
    assert row.alog_max == pytest.approx(math.log(4)) and row.d_mean == 1.0


def test_state_norms_match_explicit_states(tmp_path):
    model = TinyNet()
    x = torch.randn(2, 12, 3)
    captured = {}
    mixer = model.blocks[1]["mixer"]
    mixer.register_forward_pre_hook(lambda m, a: captured.setdefault("h", a[0].detach()))
    rec = Recorder(model, tmp_path / "r", probe_every=1)
    model(x).sum().backward()
    rec.step(torch.tensor(0.0))
    rec.close()
    with torch.no_grad():   # explicit states: run the scan on every prefix, keep the last state
        u, dt = _hand_scan_inputs(mixer, captured["h"])
        dbl = mixer.x_proj(u.transpose(1, 2))
        Bm = dbl[..., mixer.dt_rank: mixer.dt_rank + 4].transpose(1, 2)
        A = -torch.exp(mixer.A_log)
        h = torch.zeros(2, mixer.d_inner, 4)
        norms = []
        for t in range(12):
            h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[..., None] * Bm[:, None, :, t]
            norms.append(h.flatten(1).norm(dim=1).mean())
    run = load_run(tmp_path / "r")
    row = run.ssm[run.ssm.layer == 1].iloc[0]
    assert row.state_norm_first == pytest.approx(float(norms[0]), rel=1e-4)
    assert row.state_norm_last == pytest.approx(float(norms[-1]), rel=1e-4)
    assert row.state_norm_mid == pytest.approx(float(norms[6]), rel=1e-4)
    assert row.state_norm_max == pytest.approx(float(max(norms)), rel=1e-4)
    curve = run.ssm_state[run.ssm_state.layer == 1].sort_values("pos")
    assert curve.state_norm.iloc[-1] == pytest.approx(float(norms[-1]), rel=1e-4)


def test_alog_drift_after_training(tmp_path):
    model = TinyNet()
    init = model.blocks[0]["mixer"].A_log.detach().clone()
    _train(model, 3, tmp_path / "r", lr=0.5, probe_every=2)
    run = load_run(tmp_path / "r")
    # probes at steps 0 and 2; the probe at step 2 sees the weights after two updates
    assert sorted(run.ssm.step.unique()) == [0, 2]
    row = run.ssm[(run.ssm.step == 2) & (run.ssm.layer == 0)].iloc[0]
    # weights during step 2's forward = after 2 updates; recompute that state independently
    model2 = TinyNet()
    torch.manual_seed(1)
    data = [(torch.randn(4, 12, 3), torch.randn(4)) for _ in range(3)]
    opt = torch.optim.SGD(model2.parameters(), lr=0.5)
    for xb, yb in data[:2]:
        F.mse_loss(model2(xb), yb).backward()
        opt.step()
        opt.zero_grad()
    now = model2.blocks[0]["mixer"].A_log.detach()
    assert row.alog_drift == pytest.approx(float((now - init).norm() / init.norm()), rel=1e-5)
    assert row.alog_drift > 0


def test_nonfinite_first_module_and_step(tmp_path):
    model = TinyNet()
    target = model.blocks[1]["mixer"].x_proj
    state = {"step": 0}

    def inject(module, args, out):
        if state["step"] == 2:
            out = out.clone()
            out[0, 0, 0] = float("nan")
            return out
    target.register_forward_hook(inject)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    rec = Recorder(model, tmp_path / "r", probe_every=0)
    for step in range(4):
        state["step"] = step
        loss = model(torch.randn(2, 12, 3)).sum()
        loss.backward()
        rec.step(loss, optimizer=opt)
        opt.zero_grad()      # no update: later steps are finite again
    rec.close()
    run = load_run(tmp_path / "r")
    bad = run.steps[run.steps.nonfinite]
    assert list(bad.step) == [2]
    assert bad.nonfinite_where.iloc[0] == "act:blocks.1.mixer.x_proj"
    assert run.status == "diverged"
    ev = run.events[run.events.kind == "nonfinite"]
    assert list(ev.step) == [2]


def test_context_manager_marks_crash(tmp_path):
    model = TinyNet()
    with pytest.raises(RuntimeError):
        with Recorder(model, tmp_path / "r", probe_every=0) as rec:
            model(torch.randn(2, 12, 3)).sum().backward()
            rec.step(torch.tensor(1.0))
            raise RuntimeError("boom")
    run = load_run(tmp_path / "r")
    assert run.status == "crashed" and len(run.steps) == 1


@pytest.mark.parametrize("name, expected", [
    ("blocks.3.mixer.A_log", (3, "A_log")), ("blocks.3.mixer.D", (3, "D")),
    ("blocks.0.mixer.dt_proj.bias", (0, "dt_proj")), ("blocks.0.op.dt_projs.weight", (0, "dt_proj")),
    ("blocks.1.mixer.x_proj.weight", (1, "x_proj")), ("blocks.1.attn.proj.weight", (1, "proj")),
    ("blocks.1.attn.qkv.weight", (1, "qkv")), ("blocks.2.norm1.weight", (2, "norm")),
    ("blocks.2.mixer.A_b_log", (2, "A_log")), ("blocks.2.mixer.D_b", (2, "D")),
    ("patch_embed.proj.weight", (-1, "patch_embed")),
])
def test_parameter_groups(name, expected):
    assert _group_of(name) == expected

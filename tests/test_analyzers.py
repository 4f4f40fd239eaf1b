"""Findings on runs where the truth is known: each pathology is made to happen for real on a tiny
model trained with the Recorder, and the right finding must appear at the right layer and step;
healthy runs must give no warning or error."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import one_torch_thread
from diagnostics import analyze, compare, load_run
from diagnostics.analyzers import (CODES, DT_INIT_SPREAD_MIN, ERASED_DECAY, FROZEN_DECAY,
                                   Finding, findings_markdown)
from diagnostics.recorder import Recorder

ROOT = Path(__file__).resolve().parents[1]


def _codes(findings, severity_at_least="warning"):
    rank = {"info": 0, "warning": 1, "error": 2}
    return [f for f in findings if rank[f.severity] >= rank[severity_at_least]]


def _one(findings, code, **where):
    hits = [f for f in findings if f.code == code
            and all(getattr(f, k) == v for k, v in where.items())]
    found = [(f.code, f.layer, f.direction, f.steps) for f in findings]
    assert len(hits) == 1, (code, where, found)
    return hits[0]


# ------------------------------------------------------------------ runs with a known truth

@pytest.fixture(scope="module")
def lr_x100(train_tiny):
    # base lr 1e-2, x100 = 1.0: the loss explodes at once and goes NaN a few steps later
    return load_run(train_tiny("lr_x100", steps=8, lr=1e-2 * 100, probe_every=4))


@pytest.fixture(scope="module")
def dt_pushed(train_tiny):
    def push(model):   # dt = softplus(10 + small) ~ 10 in every channel of layer 1
        with torch.no_grad():
            model.blocks[1].mixer.dt_proj.bias.fill_(10.0)
    return load_run(train_tiny("dt_pushed", steps=4, setup=push))


@pytest.fixture(scope="module")
def alog_total(train_tiny):
    def at_step_3(model, step):   # A = -exp(10) ~ -22026: exp(A dt) ~ 0 for every dt >= 2e-4
        if step == 3:
            with torch.no_grad():
                model.blocks[1].mixer.A_log.fill_(10.0)
    return load_run(train_tiny("alog_total", steps=5, before_step=at_step_3))


@pytest.fixture(scope="module")
def init_bugs(train_tiny):
    def bugs(model):
        with torch.no_grad():
            # the public bidirectional Vision Mamba bug: one direction's dt bias left at zero
            model.blocks[0].mixer.dt_proj.bias[1].zero_()            # direction "v"
            # a generic re-init overwriting S4D-real A_log
            nn.init.trunc_normal_(model.blocks[1].mixer.A_log, std=0.02)
    return load_run(train_tiny("init_bugs", steps=2, setup=bugs))


@pytest.fixture(scope="module")
def nan_at_step_3(train_tiny):
    state = {"step": -1}

    def inject(module, args, out):   # a NaN in one activation of step 3's forward
        if state["step"] == 3:
            out = out.clone()
            out[0, 0, 0, 0] = float("nan")
            return out

    def hook(model):                 # registered before the Recorder's own hooks
        model.blocks[1].mixer.x_proj.register_forward_hook(inject)

    def count(model, step):
        state["step"] = step
    return load_run(train_tiny("nan_at_step_3", steps=5, probe_every=0, setup=hook,
                               before_step=count))


@pytest.fixture(scope="module")
def vit_hot_logits(train_tiny):
    def scale_qk(model):   # logits ~ 900x larger: softmax one-hot from step 0
        with torch.no_grad():
            for blk in model.blocks:
                blk.attn.qkv.weight.mul_(30.0)
    return load_run(train_tiny("vit_hot_logits", "VIT-T", steps=4, setup=scale_qk))


@pytest.fixture(scope="module")
def mamba_s(train_tiny):
    return load_run(train_tiny("mamba_s", "MAMBA-S-T", steps=4, evals={3: (20.0, 35.0)}))


class PlainNet(nn.Module):
    """`depth` Linear(+tanh) blocks without residuals, weights N(0, gain^2/width): gain < 1
    shrinks the gradient block by block towards the input, gain > 1 (no tanh) grows it."""

    def __init__(self, depth=6, width=16, gain=1.0, act=True, seed=0, input_scale=1.0):
        super().__init__()
        self.input_scale = input_scale
        torch.manual_seed(seed)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        self.act = act
        with torch.no_grad():
            for b in self.blocks:
                b.weight.normal_(0, gain / math.sqrt(width))
                b.bias.zero_()

    def forward(self, x):
        x = x * self.input_scale
        for b in self.blocks:
            x = torch.tanh(b(x)) if self.act else b(x)
        return self.head(x).squeeze(-1)


def _train_plain(run_dir, model, steps, lr):
    with one_torch_thread():
        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(16, 16, generator=g), torch.randn(16, generator=g)) for _ in range(2)]
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        with Recorder(model, run_dir, probe_every=0, layer_every=1, backbone="PlainNet",
                      config=dict(lr=lr), flush_every_s=60.0) as rec:
            for step in range(steps):
                x, y = data[step % 2]
                loss = F.mse_loss(model(x), y)
                loss.backward()
                rec.step(loss, optimizer=opt)
                opt.step()
                opt.zero_grad()
    return load_run(run_dir)


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    return dict(
        vanishing=_train_plain(root / "vanishing", PlainNet(gain=0.2), 6, 0.01),
        # linear blocks with gain 3 and a tiny input: the bias gradients grow ~3x per block
        # towards the input
        exploding=_train_plain(root / "exploding", PlainNet(gain=3.0, act=False, input_scale=1e-6),
                               6, 1e-6),
        frozen=_train_plain(root / "frozen", PlainNet(), 36, 0.0),      # lr 0: nothing moves
        learning=_train_plain(root / "learning", PlainNet(), 36, 0.05),
    )


# ------------------------------------------------------------------ healthy runs

@pytest.mark.parametrize("which", ["tiny_mamba_run", "tiny_vit_run"])
def test_healthy_runs_have_no_warning_or_error(which, request):
    run = load_run(request.getfixturevalue(which))
    assert _codes(analyze(run)) == []


def test_healthy_mamba_s_and_learning_plain_net(mamba_s, plain_runs):
    assert _codes(analyze(mamba_s)) == []
    assert _codes(analyze(plain_runs["learning"])) == []


# ------------------------------------------------------------------ each pathology

def test_lr_x100_diverges_and_goes_nonfinite(lr_x100):
    findings = analyze(lr_x100)
    assert findings[0].severity == "error"               # worst first
    first_nan = int(lr_x100.steps.step[lr_x100.steps.nonfinite].min())
    div = _one(findings, "loss.diverged")
    assert div.severity == "error" and div.steps[0] <= first_nan
    assert div.evidence["first_nonfinite_step"] == first_nan
    assert div.evidence["peak_ratio"] > 4
    nf = _one(findings, "nonfinite")
    assert nf.steps[0] == first_nan and nf.evidence["source"] == "activation"
    assert nf.evidence["module"] and nf.layer == int(nf.evidence["module"].split(".")[1])
    assert any(f.code == "update.too_large" for f in findings)
    assert lr_x100.status == "diverged"


def test_nan_injected_names_step_and_module(nan_at_step_3):
    nf = _one(analyze(nan_at_step_3), "nonfinite")
    assert nf.severity == "error" and nf.steps[0] == 3
    assert nf.layer == 1
    assert nf.evidence["module"] == "blocks.1.mixer.x_proj"
    assert nf.evidence["where"] == "act:blocks.1.mixer.x_proj"
    assert "blocks.1.mixer.x_proj" in nf.message and "step 3" in nf.message
    assert nf.evidence["last_finite_loss"] > 0


def test_dt_pushed_saturates_at_layer_1_only(dt_pushed):
    findings = analyze(dt_pushed)
    sat = _one(findings, "ssm.dt_saturated")
    assert sat.layer == 1 and sat.severity == "error" and sat.steps[0] == 0
    assert sat.direction == "h,v,h_rev,v_rev"
    assert sat.evidence["dt_p50"] == pytest.approx(10.0, rel=0.05)
    decay = _one(findings, "ssm.decay_too_fast")
    assert decay.layer == 1 and decay.severity == "error"
    assert not [f for f in findings if f.code.startswith("ssm.") and f.layer == 0]


def test_alog_set_for_total_decay_found_at_the_next_probe(alog_total):
    findings = analyze(alog_total)
    decay = _one(findings, "ssm.decay_too_fast")
    # A_log overwritten before step 3's forward; probes run at steps 0, 2, 4
    assert decay.layer == 1 and decay.steps == (4, 4) and decay.severity == "error"
    assert decay.evidence["frac_erased"] > 0.99
    collapse = _one(findings, "ssm.alog_collapse")
    assert collapse.layer == 1 and collapse.steps == (4, 4)
    assert not [f for f in _codes(findings) if f.layer == 0]


def test_init_mismatch_zeroed_dt_bias_in_one_direction_and_generic_alog(init_bugs):
    findings = [f for f in analyze(init_bugs) if f.code == "ssm.init_mismatch"]
    dt = _one(findings, "ssm.init_mismatch", layer=0)
    assert dt.direction == "v" and dt.steps == (0, 0) and dt.severity == "warning"
    assert dt.evidence["zeroed_dt_bias"] is True
    assert dt.evidence["dt_p50"] == pytest.approx(math.log(2), abs=0.05)
    assert dt.evidence["dt_span"] < DT_INIT_SPREAD_MIN
    alog = _one(findings, "ssm.init_mismatch", layer=1)
    assert alog.direction == "h,v,h_rev,v_rev" and "A_log" in alog.message
    assert alog.severity == "warning"


def test_hot_attention_logits(vit_hot_logits):
    findings = analyze(vit_hot_logits)
    assert {f.layer for f in findings if f.code == "attn.logit_growth"} == {0, 1}
    assert any(f.code == "attn.entropy_collapse" for f in findings)


def test_gradient_profile_across_depth(plain_runs):
    van = _one(analyze(plain_runs["vanishing"]), "grad.vanishing")
    assert van.layer == 0 and van.evidence["ratio_to_last_block"] < 1e-2
    exp = [f for f in analyze(plain_runs["exploding"]) if f.code == "grad.exploding"]
    assert [f.layer for f in exp] == [0] and exp[0].evidence["ratio_to_last_block"] > 100


def test_plateau(plain_runs):
    plateau = _one(analyze(plain_runs["frozen"]), "loss.plateau")
    assert plateau.severity == "warning" and plateau.steps[1] == 35
    assert not [f for f in analyze(plain_runs["learning"]) if f.code == "loss.plateau"]


# ------------------------------------------------------------------ comparison and claims

def _claims(cmp):
    return {c.claim: c for c in cmp.claims}


def test_compare_mamba_vs_vit(tiny_mamba_run, tiny_vit_run):
    cmp = compare(load_run(tiny_mamba_run), load_run(tiny_vit_run))
    claims = _claims(cmp)
    assert list(claims) == [f"C{i}" for i in range(1, 11)]
    assert {c.verdict for c in cmp.claims} <= {"supported", "contradicted", "not measurable"}
    assert claims["C3"].verdict == "supported" and "h, v, h_rev, v_rev" in claims["C3"].evidence
    assert claims["C2"].verdict == "not measurable"
    assert claims["C8"].verdict == "supported"       # ViT 32 mAP vs MAMBA-V2 31: within the range
    assert claims["C1"].verdict in ("supported", "contradicted")
    json.dumps(cmp.to_dict(), allow_nan=False)        # JSON-ready


def test_compare_mamba_s_claim_c2(mamba_s, tiny_vit_run):
    claims = _claims(compare(mamba_s, load_run(tiny_vit_run)))
    assert claims["C2"].verdict == "supported" and "0 SSM layers" in claims["C2"].evidence
    assert claims["C8"].verdict == "supported"        # ViT 32 > MAMBA-S 20


def test_compare_remedy_and_stability(lr_x100, tiny_mamba_run):
    healthy = load_run(tiny_mamba_run)
    cmp = compare(lr_x100, healthy)
    assert cmp.stability["more_stable"] == "b"
    claims = _claims(cmp)
    assert claims["C7"].verdict == "supported" and "lr" in claims["C7"].evidence
    assert claims["C1"].verdict == "supported"        # same backbone, settings changed outcome
    assert claims["C4"].verdict == "supported"        # A*dt out of range with divergence


def test_compare_alog_init_claim_c5(init_bugs, tiny_mamba_run):
    claims = _claims(compare(init_bugs, load_run(tiny_mamba_run)))
    assert claims["C5"].verdict == "supported"


def test_compare_convergence_and_depth_profile(plain_runs):
    cmp = compare(plain_runs["frozen"], plain_runs["learning"])
    assert cmp.convergence["faster"] == "b"
    d = compare(plain_runs["vanishing"], plain_runs["learning"]).depth_profile
    assert d["at_relative_depth"] == 0.0 and d["max_log10_diff"] < -1


# ------------------------------------------------------------------ the code table

def test_finding_validation_and_json():
    with pytest.raises(ValueError):
        Finding("no.such.code", "error", "x")
    f = Finding("nonfinite", "error", "x", evidence=dict(a=float("nan"), b=float("inf"), c=1))
    d = f.to_dict()
    assert set(d) >= {"code", "severity", "layer", "direction", "steps", "evidence", "remedy"}
    assert d["evidence"] == dict(a=None, b=None, c=1) and d["remedy"] == CODES["nonfinite"].remedy


def test_thresholds_agree_with_the_recorder():
    from diagnostics import probes
    assert (ERASED_DECAY, FROZEN_DECAY) == (probes.ERASED_DECAY, probes.FROZEN_DECAY)


def test_every_code_documented_once_and_doc_in_sync():
    required = {"grad.vanishing", "grad.exploding", "ssm.dt_saturated", "ssm.decay_too_fast",
                "ssm.no_forgetting", "ssm.alog_collapse", "ssm.state_growth",
                "ssm.init_mismatch", "loss.diverged", "loss.plateau", "update.too_large",
                "nonfinite"}
    assert required <= set(CODES)
    from diagnostics import figures
    for info in CODES.values():
        assert info.meaning and info.threshold and info.source and info.remedy
        assert info.figure in figures.FIGURES
    doc = (ROOT / "docs" / "findings.md").read_text(encoding="utf-8")
    assert doc == findings_markdown(), (
        "docs/findings.md is stale: python -m diagnostics.analyzers > docs/findings.md")


@pytest.mark.skipif("VIM-T" not in __import__("models").list_models(), reason="no VIM-T backbone")
def test_public_vim_dt_bias_bug_found_in_the_backward_direction(train_tiny):
    """Vim's released init zeroes dt_proj_b's bias (models/vim.py, buggy_init=True): the
    finding names the backward direction of every layer, and the fixed init gives none."""
    buggy = analyze(load_run(train_tiny("vim_buggy", "VIM-T", steps=2, buggy_init=True)))
    hits = [f for f in buggy if f.code == "ssm.init_mismatch"]
    assert [(f.layer, f.direction, f.steps) for f in hits] == [(0, "bwd", (0, 0)),
                                                               (1, "bwd", (0, 0))]
    assert all(f.evidence.get("zeroed_dt_bias") for f in hits)
    fixed = analyze(load_run(train_tiny("vim_fixed", "VIM-T", steps=2)))
    assert _codes(fixed) == []

"""VIM-S (models/vim.py): the bidirectional mixer against an independent bimamba-v2 reference,
the two directions' init (and the reproducible buggy one), the symmetry between directions, the
scan_inputs protocol, and what the recorder makes of it.

CPU, small images (64x32, patch 16: a 4x2 grid, 8 patches + the cls token); a few seconds.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from diagnostics import load_run
from diagnostics.recorder import Recorder
from models import build_model
from models.layers import init_weights_trunc_normal
from models.scan import selective_scan_fn, selective_scan_ref
from models.vim import DIRECTIONS, BiMamba, bimamba_v2_scan_inputs, scan_orders

IMG = (64, 32)
SOFTPLUS_0 = math.log(2.0)           # dt of a zeroed dt_proj bias: softplus(0) = 0.693


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _tiny(**kw):
    return build_model("VIM-T", **{**dict(img_size=IMG, depth=2), **kw})


def _mixer_input(model, x, block=0):
    """The input of blocks[block].mixer, taken with a forward pre-hook as the recorder does."""
    seen = {}
    h = model.blocks[block].mixer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    with torch.no_grad():
        model(x)
    h.remove()
    return seen["x"]


def _vim_reference(m, x, divide_out=True):
    """mamba-ssm's bimamba v2 forward as Vim runs it, written independently of models/vim.py:
    one gated scan per direction (the backward one on the flipped xz), the backward output
    flipped back, summed (halved with if_divide_out), out_proj."""
    L = x.shape[1]
    xz = m.in_proj(x).transpose(1, 2)                    # (B, 2*d_inner, L)

    def one(xz, conv, x_proj, dt_proj, A_log, D):
        xs, z = xz.chunk(2, dim=1)
        xs = F.silu(conv(xs)[..., :L])
        dt, B, C = torch.split(x_proj(xs.transpose(1, 2)), [m.dt_rank, m.d_state, m.d_state], -1)
        dt = (dt @ dt_proj.weight.t()).transpose(1, 2)
        return selective_scan_ref(xs, dt, -torch.exp(A_log), B.transpose(1, 2), C.transpose(1, 2),
                                  D, z=z, delta_bias=dt_proj.bias, delta_softplus=True)

    out = one(xz, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    out_b = one(xz.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b)
    y = out + out_b.flip(-1)
    return m.out_proj((y / 2 if divide_out else y).transpose(1, 2))


def _copy_fwd_into_bwd(m):
    with torch.no_grad():
        for a, b in (("conv1d", "conv1d_b"), ("x_proj", "x_proj_b"), ("dt_proj", "dt_proj_b")):
            getattr(m, b).load_state_dict(getattr(m, a).state_dict())
        m.A_b_log.copy_(m.A_log)
        m.D_b.copy_(m.D)


def _perturb(m, scale=0.3):
    """Move A_log, D and the biases away from their init so a symmetry test is not trivial."""
    with torch.no_grad():
        for p in (m.A_log, m.A_b_log, m.D, m.D_b, m.dt_proj.bias, m.dt_proj_b.bias):
            p.add_(scale * torch.randn_like(p))


# --------------------------------------------------------------------------------------------
# the backbone
# --------------------------------------------------------------------------------------------

def test_vim_t_shapes_and_middle_cls_token():
    model = _tiny()
    assert model.num_features == 96 and len(model.blocks) == 2
    assert model.num_prefix_tokens == 1 and model.cls_index == 4     # 8 patches: 4 | cls | 4
    x = torch.randn(2, 3, *IMG)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 9, 96)
    torch.testing.assert_close(model.forward_head(tokens), tokens[:, 4])
    assert model.patch_tokens(tokens).shape == (2, 8, 96)
    # the embedding puts the cls token at cls_index, the patches around it in row-major order
    with torch.no_grad():
        emb = model._embed(x)
        patches = model.patch_embed(x).flatten(1, 2) + model.patch_tokens(model.pos_embed)
        torch.testing.assert_close(emb[:, 4], (model.cls_token[:, 0] + model.pos_embed[:, 4]).expand(2, -1))
        torch.testing.assert_close(model.patch_tokens(emb), patches)
    out = model(x)
    (out * torch.randn_like(out)).sum().backward()
    m = model.blocks[0].mixer
    for p in (m.A_log, m.A_b_log, m.D, m.D_b, m.dt_proj.bias, m.dt_proj_b.bias,
              m.x_proj_b.weight, m.conv1d_b.weight, model.cls_token):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_default_size_and_presets():
    model = build_model("VIM-T")
    assert model.img_size == (256, 128) and model.grid_size == (16, 8)
    assert model.cls_index == 64 and model.pos_embed.shape == (1, 129, 96)
    assert build_model("VIM-T", img_size=IMG, middle_cls_token=False).cls_index == 0
    small = build_model("VIM-S", img_size=IMG, depth=1)      # sizes of Vim-S, one block
    m = small.blocks[0].mixer
    assert small.num_features == 384 and (m.d_inner, m.d_state, m.dt_rank, m.d_conv) == (768, 16, 24, 4)
    assert build_model("VIM-S", img_size=IMG, depth=1, buggy_init=True).buggy_init


def test_no_weight_decay_names():
    nwd = _tiny(depth=1).no_weight_decay()
    assert {"cls_token", "pos_embed", "blocks.0.mixer.A_log", "blocks.0.mixer.A_b_log",
            "blocks.0.mixer.D", "blocks.0.mixer.D_b"} <= nwd
    assert not any("proj" in n for n in nwd)


# --------------------------------------------------------------------------------------------
# init: Mamba's for both directions, and the public bug on demand
# --------------------------------------------------------------------------------------------

def _dt(linear):
    return F.softplus(linear.bias.detach())


def test_init_both_directions():
    model = _tiny()
    for blk in model.blocks:
        m = blk.mixer
        logN = torch.log(torch.arange(1, m.d_state + 1.0)).expand(m.d_inner, m.d_state)
        for A_log, D in ((m.A_log, m.D), (m.A_b_log, m.D_b)):
            assert A_log.dtype == torch.float32
            torch.testing.assert_close(A_log, logN)
            assert torch.equal(D, torch.ones(m.d_inner))
            assert A_log._no_weight_decay and D._no_weight_decay
        for dt_proj in (m.dt_proj, m.dt_proj_b):
            dt = _dt(dt_proj)
            assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
            assert dt.log().std() > 0.5                  # log-uniform, not a constant
            assert dt_proj.weight.abs().max() <= m.dt_rank ** -0.5
            assert dt_proj.bias._no_reinit and dt_proj.weight._no_reinit
        assert not torch.equal(m.dt_proj.bias, m.dt_proj_b.bias)   # drawn per direction


def test_buggy_init_zeroes_the_backward_dt_bias_only():
    model = _tiny(buggy_init=True)
    for blk in model.blocks:
        m = blk.mixer
        assert torch.equal(m.dt_proj_b.bias, torch.zeros(m.d_inner))
        torch.testing.assert_close(_dt(m.dt_proj_b), torch.full((m.d_inner,), SOFTPLUS_0))
        assert not (_dt(m.dt_proj_b) <= 1e-1).any()      # out of Mamba's range, every channel
        fwd = _dt(m.dt_proj)
        assert fwd.min() >= 1e-3 * (1 - 1e-4) and fwd.max() <= 1e-1 * (1 + 1e-4)
        # the rest of the backward direction is initialised correctly, as in the public code
        torch.testing.assert_close(m.A_b_log, torch.log(torch.arange(1, m.d_state + 1.0)).expand_as(m.A_b_log))
        assert m.dt_proj_b.weight.abs().max() <= m.dt_rank ** -0.5


def test_effective_dt_at_init():
    """The dt the scan uses, softplus(delta + bias), per direction: fwd in Mamba's range; bwd too,
    or ~0.69 with buggy_init."""
    for buggy in (False, True):
        model = _tiny(depth=1, buggy_init=buggy)
        m = model.blocks[0].mixer
        with torch.no_grad():
            s = m.scan_inputs(_mixer_input(model, torch.randn(2, 3, *IMG)))
        dt = F.softplus(s["delta"] + s["delta_bias"][:, None]).view(2, 2, m.d_inner, -1)
        assert 1e-3 <= dt[:, 0].median() <= 1e-1
        if buggy:
            assert abs(float(dt[:, 1].median()) - SOFTPLUS_0) < 0.05
        else:
            assert 1e-3 <= dt[:, 1].median() <= 1e-1


def test_generic_init_leaves_ssm_params_alone():
    model = _tiny(depth=1)
    m = model.blocks[0].mixer
    names = [f"{p}{s}.{w}" for p in ("dt_proj",) for s in ("", "_b") for w in ("weight", "bias")]
    names += ["A_log", "A_b_log", "D", "D_b"]
    params = dict(m.named_parameters())
    before = {k: params[k].clone() for k in names}
    model.apply(init_weights_trunc_normal)
    for k, v in before.items():
        assert torch.equal(params[k], v), k


# --------------------------------------------------------------------------------------------
# the mixer
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("divide_out", [True, False])
def test_mixer_matches_independent_bimamba_v2(divide_out):
    m = BiMamba(16, d_state=4, divide_out=divide_out)
    _perturb(m)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(m(x), _vim_reference(m, x, divide_out), atol=1e-5, rtol=1e-5)
    # and the gradients of every parameter agree with the reference's
    w = torch.randn(2, 7, 16)
    g = [torch.autograd.grad((f(x) * w).sum(), list(m.parameters()))
         for f in (m, lambda x: _vim_reference(m, x, divide_out))]
    for a, b in zip(*g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bwd_direction_is_the_fwd_scan_on_the_flipped_sequence():
    m = BiMamba(16, d_state=4).eval()
    _perturb(m)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert not torch.allclose(m(x.flip(1)), m(x).flip(1), atol=1e-4)   # distinct parameters
        _copy_fwd_into_bwd(m)
        s, s_flip = m.scan_inputs(x), m.scan_inputs(x.flip(1))
        d = m.d_inner
        # the bwd block of x's inputs is the fwd block of the flipped sequence's, exactly
        for k in ("u", "delta"):
            torch.testing.assert_close(s[k][:, d:], s_flip[k][:, :d])
        for k in ("B", "C"):
            torch.testing.assert_close(s[k][:, 1], s_flip[k][:, 0])
        for k in ("delta_bias", "D", "A", "A_log"):
            torch.testing.assert_close(s[k][d:], s_flip[k][:d])
        y = selective_scan_fn(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"],
                              delta_bias=s["delta_bias"], delta_softplus=True)
        y_flip = selective_scan_fn(s_flip["u"], s_flip["delta"], s_flip["A"], s_flip["B"],
                                   s_flip["C"], s_flip["D"], delta_bias=s_flip["delta_bias"],
                                   delta_softplus=True)
        torch.testing.assert_close(y[:, d:], y_flip[:, :d])
        # so the mixer commutes with reversing the sequence
        torch.testing.assert_close(m(x.flip(1)), m(x).flip(1), atol=1e-5, rtol=1e-5)


def test_directions_see_the_past_and_the_future():
    """fwd's scan output at token t depends on tokens <= t only, bwd's on tokens >= t only."""
    m = BiMamba(16, d_state=4)
    x = torch.randn(1, 9, 16, requires_grad=True)
    s = m.scan_inputs(x)
    y = selective_scan_fn(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"],
                          delta_bias=s["delta_bias"], delta_softplus=True)
    y_f, y_b = y[:, :m.d_inner], y[:, m.d_inner:].flip(-1)    # both in token order
    t = 4
    g_f, = torch.autograd.grad(y_f[..., t].sum(), x, retain_graph=True)
    g_b, = torch.autograd.grad(y_b[..., t].sum(), x)
    gf, gb = g_f[0].abs().sum(-1), g_b[0].abs().sum(-1)       # (L,) sensitivity per token
    assert (gf[t + 1:] == 0).all() and (gf[: t + 1] > 0).all()
    assert (gb[:t] == 0).all() and (gb[t:] > 0).all()
    # scan_orders says the same: step t of "bwd" is token L-1-t
    orders = scan_orders(9)
    assert orders.shape == (2, 9)
    assert torch.equal(orders[0], torch.arange(9)) and torch.equal(orders[1], torch.arange(9).flip(0))


def test_scan_inputs_protocol():
    model = _tiny(depth=1).eval()
    m = model.blocks[0].mixer
    assert m.directions == DIRECTIONS == ("fwd", "bwd")
    assert hasattr(m, "A_log") and hasattr(m, "dt_proj")
    s = m.scan_inputs(_mixer_input(model, torch.randn(2, 3, *IMG)))
    KD, N, L = 2 * m.d_inner, m.d_state, 9
    assert s["u"].shape == s["delta"].shape == (2, KD, L)
    assert s["delta_bias"].shape == s["D"].shape == (KD,)
    assert s["A"].shape == s["A_log"].shape == (KD, N)
    assert s["B"].shape == s["C"].shape == (2, 2, N, L)
    assert s["directions"] == ["fwd", "bwd"]
    torch.testing.assert_close(s["A"], -torch.exp(s["A_log"]))
    torch.testing.assert_close(s["A_log"], torch.cat([m.A_log, m.A_b_log]))
    torch.testing.assert_close(s["delta_bias"], torch.cat([m.dt_proj.bias, m.dt_proj_b.bias]))
    torch.testing.assert_close(s["D"], torch.cat([m.D, m.D_b]))
    with pytest.raises(ValueError):
        m.scan_inputs(torch.randn(2, 9, 7))


def test_scan_inputs_reproduce_the_forward(monkeypatch):
    model = _tiny().eval()
    m = model.blocks[1].mixer
    seen, internal = {}, []
    m.register_forward_pre_hook(lambda mod, a: seen.setdefault("x", a[0]))
    import models.vim as vim

    def spy(*args, **kwargs):
        y = selective_scan_fn(*args, **kwargs)
        internal.append(y)
        return y

    monkeypatch.setattr(vim, "selective_scan_fn", spy)
    with torch.no_grad():
        model(torch.randn(2, 3, *IMG))
        s = m.scan_inputs(seen["x"])
        y_ref = selective_scan_ref(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"],
                                   delta_bias=s["delta_bias"], delta_softplus=True)
        torch.testing.assert_close(y_ref, internal[-1], atol=1e-5, rtol=1e-5)
        # the module-level function reads only mamba-ssm's names: same inputs
        s2, _ = bimamba_v2_scan_inputs(m, seen["x"])
        for k in ("u", "delta", "delta_bias", "A", "B", "C", "D"):
            torch.testing.assert_close(s2[k], s[k])


def test_scan_backends_agree():
    model = _tiny(buggy_init=True).eval()
    x = torch.randn(2, 3, *IMG)
    with torch.no_grad():
        fast = model(x)
        model.set_scan_backend("reference")
        ref = model(x)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        model.set_scan_backend("warp")
    with pytest.raises(ValueError):
        BiMamba(16, scan_backend="warp")


# --------------------------------------------------------------------------------------------
# the recorder: two directions of one layer
# --------------------------------------------------------------------------------------------

def _record(tmp_path, **kw):
    model = _tiny(**kw)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    with Recorder(model, tmp_path / "run", probe_every=1, flush_every_s=0) as rec:
        for _ in range(2):
            out = model(torch.randn(4, 3, *IMG))
            loss = (out * torch.randn_like(out)).sum()
            loss.backward()
            rec.step(loss, optimizer=opt)
            opt.step()
            opt.zero_grad()
    return load_run(tmp_path / "run")


def test_recorder_probes_both_directions(tmp_path):
    run = _record(tmp_path)
    S = run.ssm
    assert set(S["module"]) == {"blocks.0.mixer", "blocks.1.mixer"}
    for step in (0, 1):
        for layer in (0, 1):
            rows = S[(S["step"] == step) & (S["layer"] == layer)]
            assert sorted(rows["direction"]) == ["bwd", "fwd"]
    assert {"fwd", "bwd"} <= set(run.manifest["model"]["directions"])
    step0 = S[S["step"] == 0]
    assert ((step0["dt_p50"] >= 1e-3) & (step0["dt_p50"] <= 1e-1)).all()
    assert (step0["alog_drift"] == 0).all() and (S["alog_drift"] >= 0).all()
    assert set(run.ssm_state["direction"]) == {"fwd", "bwd"}
    # the backward parameters join their kind: no "other" group
    groups = set(run.layers[run.layers["layer"] == 0]["group"])
    assert {"A_log", "D", "dt_proj", "x_proj", "conv", "in_proj", "out_proj", "norm"} <= groups
    assert "other" not in groups


def test_recorder_sees_the_buggy_init(tmp_path):
    run = _record(tmp_path, buggy_init=True)
    step0 = run.ssm[run.ssm["step"] == 0]
    fwd, bwd = step0[step0["direction"] == "fwd"], step0[step0["direction"] == "bwd"]
    assert len(fwd) == len(bwd) == 2
    assert ((fwd["dt_p50"] >= 1e-3) & (fwd["dt_p50"] <= 1e-1)).all()
    assert ((bwd["dt_p50"] - SOFTPLUS_0).abs() < 0.05).all()
    assert (bwd["dt_p95"] / bwd["dt_p05"] < 2).all()     # one value, not a log-uniform spread

"""Scan paths vs attention: hidden attention against the reference scan, rollout, ERF, captum
attributions, the comparison numbers on hand-made maps, the run round trip and `diagnose maps`."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnostics import maps as M
from diagnostics import maps_figures as MF
from models import build_model
from models.scan import selective_scan_fn, selective_scan_ref
from models.vmamba import SS2D, cross_merge

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}
TINY = dict(img_size=(32, 16), patch_size=8, depth=2)   # 4x2 patch grid


def _scan_inputs(dtype, groups, bsz=2, dim=4, length=11, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    bc = (bsz, n, length) if groups is None else (bsz, groups, n, length)
    return dict(u=r(bsz, dim, length), delta=r(bsz, dim, length) * 0.5,
                A=-torch.rand(dim, n, generator=g, dtype=dtype) - 0.1, B=r(*bc), C=r(*bc),
                delta_bias=r(dim) * 0.1)


def _apply(Mat, u):
    return (Mat @ u[..., None])[..., 0]


# --------------------------------------------------------------------------------------------
# hidden attention
# --------------------------------------------------------------------------------------------

def test_segsum_is_exact_segment_sums():
    x = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    s = M.segsum(x)
    for i in range(4):
        for j in range(4):
            want = x[j + 1:i + 1].sum() if j <= i else -math.inf
            assert s[i, j] == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [None, 1, 2])
@pytest.mark.parametrize("block_size,chunk", [(4, 1), (32, None), (3, 3)])
def test_hidden_attention_times_u_is_the_scan(dtype, groups, block_size, chunk):
    x = _scan_inputs(dtype, groups)
    Mat = M.hidden_attention(x["delta"], x["A"], x["B"], x["C"], delta_bias=x["delta_bias"],
                             delta_softplus=True, block_size=block_size, chunk_channels=chunk)
    assert Mat.shape == (2, 4, 11, 11) and Mat.dtype == dtype
    assert torch.all(Mat.triu(1) == 0)
    y = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_bias=x["delta_bias"],
                           delta_softplus=True)
    torch.testing.assert_close(_apply(Mat, x["u"]), y, **TOL[dtype])


def test_hidden_attention_is_the_definition():
    # M[b, d, i, j] = C_i . prod_{k=j+1..i} exp(delta_k A) . delta_j B_j, written out.
    x = _scan_inputs(torch.float64, 2, bsz=1, dim=2, length=6, n=2)
    dt = x["delta"]                                   # no bias, no softplus: delta used as is
    Mat = M.hidden_attention(dt.abs(), x["A"], x["B"], x["C"], block_size=4)
    dt = dt.abs()
    for d in range(2):
        g = d // 1
        for i in range(6):
            for j in range(6):
                want = 0.0
                if j <= i:
                    decay = torch.exp(dt[0, d, j + 1:i + 1].sum() * x["A"][d])
                    want = (x["C"][0, g, :, i] * decay * dt[0, d, j] * x["B"][0, g, :, j]).sum()
                assert abs(float(Mat[0, d, i, j]) - float(want)) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hidden_attention_long_sequence_where_cumsum_overflows(dtype):
    # S4D-real A = -(1..16), dt ~ 0.7: sum of A dt over 600 tokens is about -6700, so the
    # "cumulative log-space" factorisation exp(cs_i) * exp(-cs_j) overflows; segment sums do not.
    bsz, dim, n, length = 1, 3, 16, 600
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(bsz, dim, length, generator=g, dtype=dtype)
    A = -torch.arange(1, n + 1, dtype=dtype).repeat(dim, 1)
    B = torch.randn(bsz, n, length, generator=g, dtype=dtype)
    C = torch.randn(bsz, n, length, generator=g, dtype=dtype)
    u = torch.randn(bsz, dim, length, generator=g, dtype=dtype)
    cs = torch.cumsum(F.softplus(delta)[..., None] * A[None, :, None, :], dim=2)
    assert not torch.isfinite(torch.exp(-cs)).all()          # the naive way would break here
    Mat = M.hidden_attention(delta, A, B, C, delta_softplus=True)
    assert torch.isfinite(Mat).all()
    y = selective_scan_ref(u, delta, A, B, C, delta_softplus=True)
    torch.testing.assert_close(_apply(Mat, u), y, **TOL[dtype])


def test_reduce_mean_and_chunks():
    x = _scan_inputs(torch.float64, 2, dim=6, length=13)
    kw = dict(delta_bias=x["delta_bias"], delta_softplus=True, block_size=4)
    full = M.hidden_attention(x["delta"], x["A"], x["B"], x["C"], **kw)
    for chunk in (1, 4, None):
        mean = M.hidden_attention(x["delta"], x["A"], x["B"], x["C"], reduce="mean",
                                  chunk_channels=chunk, **kw)
        assert mean.shape == (2, 13, 13)
        torch.testing.assert_close(mean, full.mean(1), **TOL[torch.float64])


@pytest.mark.parametrize("bad", [
    dict(reduce="sum"), dict(chunk_channels=0), dict(block_size=0),
    dict(A=torch.zeros(5, 3)), dict(B=torch.zeros(2, 3, 3, 11)), dict(delta_bias=torch.zeros(3)),
])
def test_hidden_attention_bad_arguments(bad):
    x = _scan_inputs(torch.float32, None)
    args = dict(delta=x["delta"], A=x["A"], B=x["B"], C=x["C"])
    kw = {k: v for k, v in bad.items() if k not in args}
    args.update({k: v for k, v in bad.items() if k in args})
    with pytest.raises(ValueError):
        M.hidden_attention(args["delta"], args["A"], args["B"], args["C"], **kw)


def test_ss2d_maps_per_direction_reproduce_cross_merge():
    # Non-square grid (3x4): a transposition mix-up in the direction orders would show.
    torch.manual_seed(0)
    layer = SS2D(dim=8, d_state=4).double()
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    names, maps = M.ssm_layer_maps(layer, x, (3, 4), reduce=None)   # (K, B, D, L, L), grid order
    s = layer.scan_inputs(x)
    d_inner = layer.d_inner
    y = selective_scan_fn(s["u"], s["delta"], s["A"], s["B"], s["C"], delta_bias=s["delta_bias"],
                          delta_softplus=True, backend="reference")   # no D term
    merged = cross_merge(y.view(2, 4, d_inner, 12), (3, 4))           # (B, d_inner, L)
    u_grid = s["u"][:, :d_inner]                                      # "h" scans in grid order
    assert names == ["h", "v", "h_rev", "v_rev"]
    torch.testing.assert_close(_apply(maps.sum(0), u_grid), merged, **TOL[torch.float64])
    mean_names, mean_maps = M.ssm_layer_maps(layer, x, (3, 4))
    torch.testing.assert_close(mean_maps, maps.mean(2), **TOL[torch.float64])


# --------------------------------------------------------------------------------------------
# rollout
# --------------------------------------------------------------------------------------------

def test_rollout_hand_made_two_layers():
    a1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    a2 = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    # 0.5 I + 0.5 A:  A~1 = [[1, 0], [.25, .75]],  A~2 = [[.5, .5], [.5, .5]];  R = A~2 @ A~1
    want = torch.tensor([[[0.625, 0.375], [0.625, 0.375]]])
    torch.testing.assert_close(M.attention_rollout([a1, a2]), want)
    # rows are renormalised after adding the identity: [[2, 0], [1, 1]] -> [[1, 0], [1/3, 2/3]]
    torch.testing.assert_close(M.attention_rollout([torch.tensor([[[2.0, 0.0], [1.0, 1.0]]])]),
                               torch.tensor([[[1.0, 0.0], [1 / 3, 2 / 3]]]))
    with pytest.raises(ValueError):
        M.attention_rollout([])


def test_output_map_cls_row_or_mean_of_rows():
    a = torch.tensor([[[0.2, 0.6, 0.2], [0.0, 0.5, 0.5], [0.0, 1.0, 0.0]]])
    torch.testing.assert_close(M.output_map(a, 1), torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(M.output_map(a, 0), a.mean(1))


# --------------------------------------------------------------------------------------------
# ERF and attributions
# --------------------------------------------------------------------------------------------

def test_erf_of_a_3x3_conv_is_exactly_its_window():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    images = torch.randn(5, 3, 9, 11)
    erf = M.effective_receptive_field(conv, images, mode="abs", batch_size=2)
    want = torch.zeros(9, 11)
    want[3:6, 4:7] = conv.weight.detach().sum(0).abs().sum(0)   # sum_c |sum_o w[o, c]|
    torch.testing.assert_close(erf, want)
    # RepLKNet's mode (ReLU on the token and on the gradient): positive weights and inputs
    with torch.no_grad():
        conv.weight.abs_()
        conv.bias.abs_()
    erf = M.effective_receptive_field(conv, images.abs(), mode="replknet")
    assert torch.equal(erf > 0, want > 0)


def test_erf_summaries():
    erf = torch.zeros(9, 9)
    erf[4, 4] = 1.0
    assert M.erf_area_ratio(erf, 0.5) == pytest.approx(1 / 81)
    assert M.erf_mean_distance(erf, patch_size=1) == pytest.approx(0.0)
    erf = torch.ones(4, 4)
    assert M.erf_area_ratio(erf, 0.99) == pytest.approx(1.0)


@pytest.fixture(scope="module")
def tiny_models():
    torch.manual_seed(0)
    return {name: build_model(name, **TINY).eval() for name in ("VIT-T", "MAMBA-V2-T")}


def test_attributions_both_backbones(tiny_models):
    images = torch.randn(1, 3, 32, 16)
    for name, model in tiny_models.items():
        attr = M.attributions(model, images, ig_steps=4)
        assert set(attr) == {"saliency", "integrated_gradients"}
        for a in attr.values():
            assert a.shape == images.shape and torch.isfinite(a).all()
        assert all(p.grad is None for p in model.parameters())
        erf = M.effective_receptive_field(M.backbone_feature_map(model), images)
        assert erf.shape == (32, 16) and (erf >= 0).all() and erf.sum() > 0


def test_integrated_gradients_completeness():
    # sum of attributions = f(x) - f(baseline) (Sundararajan et al.), approximately in n_steps.
    torch.manual_seed(0)
    model = build_model("VIT-T", img_size=(16, 16), patch_size=8, depth=1).double().eval()
    images = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    attr, delta = M.integrated_gradients(model, images, n_steps=64)
    ref = F.normalize(model(images), dim=-1)
    with torch.no_grad():
        gain = (model(images) * ref).sum(-1) - (model(torch.zeros_like(images)) * ref).sum(-1)
    total = attr.sum((1, 2, 3))
    assert torch.allclose(total, gain, rtol=1e-3, atol=1e-6), (total, gain)
    assert delta.abs().max() < 1e-3 * gain.abs().max()


# --------------------------------------------------------------------------------------------
# comparison numbers on hand-made maps
# --------------------------------------------------------------------------------------------

def test_entropy_hand_made():
    assert float(M.entropy(torch.full((8,), 1 / 8))) == pytest.approx(math.log(8))
    assert float(M.entropy(torch.tensor([0.0, 1.0, 0.0]))) == 0.0
    assert float(M.entropy(torch.tensor([0.5, 0.5, 0.0]))) == pytest.approx(math.log(2))


def test_mean_attention_distance_hand_made():
    grid = (3, 3)
    assert float(M.mean_attention_distance(torch.eye(9)[None], grid)) == 0.0
    # every query looks only at the top-left corner: mean distance of the 9 cells to (0, 0)
    corner = torch.zeros(1, 9, 9)
    corner[..., 0] = 1.0
    want = (0 + 1 + 2 + 1 + math.sqrt(2) + math.sqrt(5) + 2 + math.sqrt(5) + math.sqrt(8)) / 9
    assert float(M.mean_attention_distance(corner, grid)) == pytest.approx(want)
    # half on itself, half on its right neighbour (1 patch away) for the first row of queries
    m = torch.zeros(1, 2, 9)
    m[0, 0, 0] = m[0, 0, 1] = 0.5
    m[0, 1, 1] = m[0, 1, 2] = 0.5
    assert float(M.mean_attention_distance(
        torch.cat([m, torch.eye(9)[None, 2:]], 1), grid)) == pytest.approx(1 / 9)


def test_correlation_hand_made():
    a = torch.tensor([[[1.0, 2.0, 3.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
    assert float(M.row_correlation(a, a)) == pytest.approx(1.0)
    assert float(M.row_correlation(a, -a)) == pytest.approx(-1.0)
    assert float(M.pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]))) == \
        pytest.approx(-1.0)
    # rows equal off the diagonal, different on it: only exclude_self sees them as equal
    b = torch.tensor([[[0.0, 1.0, 5.0, 2.0], [1.0, 0.0, 3.0, 4.0], [2.0, 7.0, 9.0, 1.0],
                       [4.0, 1.0, 3.0, 0.0]]])
    c = b.clone()
    c[0].diagonal().copy_(torch.tensor([9.0, 9.0, 0.0, 9.0]))
    assert float(M.row_correlation(b, c)) < 0.9
    assert float(M.row_correlation(b, c, exclude_self=True)) == pytest.approx(1.0)
    assert float(M.row_correlation(b, c, [1], exclude_self=True)) == pytest.approx(1.0)
    assert math.isnan(float(M.pearson(torch.ones(3), torch.tensor([1.0, 2.0, 3.0]))))


def test_pointing_game_and_mask_energy_hand_made():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True                          # foreground: the top-left patch of a 2x2 grid
    hit, energy, frac = M.pointing_game(torch.tensor([[[3.0, 1.0], [0.0, 0.0]]]), mask)
    assert bool(hit[0]) and float(energy) == pytest.approx(0.75) and float(frac) == 0.25
    hit, energy, _ = M.pointing_game(torch.ones(1, 2, 2), mask)   # uniform: energy = mask share
    assert float(energy) == pytest.approx(0.25)
    pix = torch.zeros(1, 4, 4)
    pix[0, 3, 3] = 1.0                                              # pixel map, peak outside
    hit, energy, _ = M.pointing_game(pix, mask)
    assert not bool(hit[0]) and float(energy) == 0.0
    with pytest.raises(ValueError):
        M.pointing_game(torch.ones(1, 3, 3), mask)


def _hand_set(name, kind, rows, out, masks=None, prefix=0):
    P = rows.shape[-1]
    return M.MapSet(backbone=name, kind=kind, grid_size=(2, 2), patch_size=2,
                    num_prefix_tokens=prefix, layer_ids=np.array([0]), layers=rows[None],
                    output_layers=out[None], rollout=rows, output_rollout=out,
                    masks=masks, image_ids=[0], attributions={}, erf=None)


def test_compare_maps_hand_made():
    uniform = np.full((1, 4, 4), 0.25, dtype=np.float32)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, :2, :2] = True                       # the top-left patch is foreground
    on_fg = np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    vit = _hand_set("vit", "attention", uniform, on_fg, masks)
    rng = np.random.default_rng(0)
    rows = rng.random((1, 4, 4)).astype(np.float32)
    rows /= rows.sum(-1, keepdims=True)
    mamba = _hand_set("mamba", "ssm", rows, np.array([[0.0, 0.0, 0.0, 1.0]], dtype=np.float32))
    twin = _hand_set("twin", "ssm", uniform + 0, on_fg)
    df = M.compare_maps([mamba, vit, twin])
    assert list(df.columns) == list(M.SCORE_COLUMNS)
    v = df[(df.backbone == "vit") & (df["map"] == "layer")].iloc[0]
    assert v["entropy"] == pytest.approx(math.log(4))
    # 2x2 grid, uniform rows: distances from a cell are 0, 1, 1, sqrt 2 -> (2 + sqrt 2) / 4
    assert v["mean_distance"] == pytest.approx((2 + math.sqrt(2)) / 4)
    assert v["pointing"] == 1.0 and v["mask_energy"] == pytest.approx(1.0)
    assert v["mask_frac"] == 0.25
    assert math.isnan(v["corr"])                     # the reference (first attention set) itself
    mb = df[(df.backbone == "mamba") & (df["map"] == "rollout")].iloc[0]
    assert mb["pointing"] == 0.0 and mb["mask_energy"] == 0.0
    assert mb["corr_output"] == pytest.approx(-1 / 3)   # [0,0,0,1] vs [1,0,0,0]
    tw = df[(df.backbone == "twin") & (df["map"] == "layer")].iloc[0]
    assert math.isnan(tw["corr"])                    # constant rows: correlation undefined
    assert tw["corr_output"] == pytest.approx(1.0)
    wide = M.comparison_table(df)
    assert list(wide[["map", "layer"]].itertuples(index=False, name=None)) == [("layer", 0),
                                                                               ("rollout", -1)]
    assert "entropy | vit" in wide.columns
    other = _hand_set("x", "ssm", uniform, on_fg)
    other.grid_size = (1, 4)
    with pytest.raises(ValueError):
        M.compare_maps([vit, other])


# --------------------------------------------------------------------------------------------
# MapSets of real (tiny) backbones, the run round trip, figures, the command
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probe():
    return M.probe_images(2, dataset="synthetic:16", img_size=(32, 16))


@pytest.fixture(scope="module")
def map_sets(tiny_models, probe):
    return [M.compute_maps(m, probe, backbone=name, ig_steps=4)
            for name, m in tiny_models.items()]


def test_compute_maps_shapes_and_mamba_rollout(tiny_models, probe, map_sets):
    vit, mamba = map_sets
    assert probe.masks.shape == (2, 32, 16) and probe.masks.dtype == torch.bool
    for s in map_sets:
        assert s.layers.shape == (2, 2, 8, 8) and s.rollout.shape == (2, 8, 8)
        assert s.output_layers.shape == (2, 2, 8) and s.output_rollout.shape == (2, 8)
        np.testing.assert_allclose(s.layers.sum(-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(s.output_rollout.sum(-1), 1.0, rtol=1e-5)
        assert set(s.attributions) == set(M.ATTRIBUTION_METHODS) and s.erf.shape == (32, 16)
    assert vit.kind == "attention" and vit.num_prefix_tokens == 1 and vit.direction_maps is None
    assert mamba.kind == "ssm" and mamba.direction_maps.shape == (2, 4, 2, 8, 8)
    # Mamba's rollout: the same rollout, of the merged hidden-attention maps made row-stochastic
    model = tiny_models["MAMBA-V2-T"]
    merged = [M.normalize_rows(maps.sum(0)) for _, _, maps in M.ssm_maps(model, probe.images)]
    np.testing.assert_allclose(mamba.rollout, M.attention_rollout(merged).numpy(), rtol=1e-5,
                               atol=1e-7)
    assert model.training is False and all(p.grad is None for p in model.parameters())


def test_compute_maps_restores_training_mode(tiny_models, probe):
    model = tiny_models["VIT-T"]
    model.train()
    try:
        M.compute_maps(model, probe, attribution_methods=(), erf=False)
        assert model.training
    finally:
        model.eval()
    with pytest.raises(ValueError):
        M.compute_maps(nn.Conv2d(3, 3, 1), probe.images)


def test_save_load_roundtrip(tmp_path, map_sets):
    _, mamba = map_sets
    mamba.step = 12
    M.record_maps  # the harness's entry point exists
    path = M.save_maps(mamba, M.maps_dir(tmp_path) / "step-00000012.npz")
    (M.maps_dir(tmp_path) / "step-00000099.npz").write_bytes(b"not an npz")
    loaded = M.load_maps(tmp_path)
    assert len(loaded) == 1 and path.exists()
    back = loaded[0]
    assert back.step == 12 and back.directions == mamba.directions
    assert back.grid_size == mamba.grid_size and back.image_ids == mamba.image_ids
    for f in ("layers", "rollout", "direction_maps", "erf", "images", "masks"):
        np.testing.assert_array_equal(getattr(back, f), getattr(mamba, f))
    np.testing.assert_array_equal(back.attributions["saliency"], mamba.attributions["saliency"])
    assert M.load_maps(tmp_path / "nothing") == []


def test_figures_and_section(map_sets):
    from diagnostics import maps_cmd

    df = M.compare_maps(map_sets)
    f = MF.map_panels_figure(map_sets, 1)
    assert len(f.layout.annotations) == 2 * (1 + 2 + 1 + 2)     # titles: rows x columns
    assert MF.map_panels_figure(map_sets, 0, query=3).data
    assert len(MF.direction_figure(map_sets[1], 0, 1).data) == 5 * 3   # image, map, query marker
    assert len(MF.erf_figure(map_sets).data) == 2
    assert MF.scores_figure(df).data and MF.scores_table_figure(df).data
    with pytest.raises(ValueError):
        MF.direction_figure(map_sets[0])
    map_sets[0].name = "<b>vit</b>"
    try:
        html = maps_cmd.section_html(map_sets)
    finally:
        map_sets[0].name = ""
    assert "<b>vit</b>" not in html and "&lt;b&gt;vit&lt;/b&gt;" in html
    assert html.count('class="fig"') == 4 and "<table" in html


def _fake_run(root, name, backbone, step=7, style="train"):
    """A finished run with a checkpoint: as `diagnose train` writes it (``checkpoint.pt``, state
    dict under "model" with the BNNeck head's extra keys, config keys image_size / patch_size /
    depth), or in a generic style (DDP's "module." prefix, ``model_kwargs``)."""
    from diagnostics.runfmt import RunWriter

    model = build_model(backbone, **TINY)
    sd = model.state_dict()
    if style == "train":
        config = dict(image_size=[32, 16], patch_size=8, depth=2, dataset="synthetic:16")
        ckpt = dict(format=1, model={**sd, "reid_head.bn.weight": torch.ones(3)}, step=step,
                    config=config)
        path = root / name / "checkpoint.pt"
    else:
        config = dict(img_size="32x16", dataset="synthetic:16",
                      model_kwargs=dict(patch_size=8, depth=2))
        ckpt = {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "global_step": step}
        path = root / name / "last.pth"
    RunWriter(root / name, manifest=dict(backbone=backbone, config=config)).close("finished")
    torch.save(ckpt, path)
    return model


def test_diagnose_maps_command(tmp_path, capsys):
    from diagnostics import maps_cmd

    _fake_run(tmp_path, "vit", "VIT-T")
    mamba = _fake_run(tmp_path, "mamba", "MAMBA-V2-T", style="generic")
    p = argparse.ArgumentParser()
    maps_cmd.add_arguments(p, "maps")
    out = tmp_path / "page.html"
    args = p.parse_args(["--run", str(tmp_path / "mamba"), "--run", str(tmp_path / "vit"),
                         "--images", "0,3", "--methods", "saliency", "--out", str(out)])
    assert maps_cmd.main(args, "maps") == 0
    printed = capsys.readouterr().out
    assert "scan paths vs attention" in printed and "rollout" in printed
    assert out.stat().st_size > 0
    sets = M.load_maps(tmp_path / "mamba")
    assert len(sets) == 1 and sets[0].step == 7 and sets[0].image_ids == [0, 3]
    loaded, _, _ = maps_cmd.load_backbone(tmp_path / "mamba")
    for k, v in mamba.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    (tmp_path / "empty").mkdir()
    sets, scores, notes = M.maps_for_report([tmp_path / n for n in ("vit", "mamba", "empty")])
    assert [s.backbone for s in sets] == ["VIT-T", "MAMBA-V2-T"] and len(notes) == 1
    assert set(scores["backbone"]) == {"vit @ step 7", "mamba @ step 7"}
    assert "no maps recorded" in maps_cmd.section_html(sets, scores, notes=notes)
    args = p.parse_args(["--run", str(tmp_path / "vit"), "--images", "1", "--no-html",
                         "--no-save", "--methods", "none", "--no-erf", "--format", "json"])
    assert maps_cmd.main(args, "maps") == 0
    assert '"scores"' in capsys.readouterr().out


def test_diagnose_maps_user_errors(tmp_path):
    from diagnostics import maps_cmd
    from diagnostics.runfmt import RunWriter

    with pytest.raises(argparse.ArgumentTypeError):
        maps_cmd.parse_images("zero")
    with pytest.raises(argparse.ArgumentTypeError):
        maps_cmd.parse_images("0")
    assert maps_cmd.parse_images("2,5") == (None, [2, 5])
    RunWriter(tmp_path / "r", manifest=dict(backbone="VIT-T")).close("finished")
    with pytest.raises(FileNotFoundError):
        maps_cmd.run_maps([tmp_path / "r"])
    torch.save({"optimizer": {}}, tmp_path / "r" / "x.pt")
    with pytest.raises(ValueError):
        maps_cmd.run_maps([tmp_path / "r"])
    with pytest.raises(ValueError):
        maps_cmd.run_maps([tmp_path / "r"], checkpoints=["a", "b"])
    with pytest.raises(ValueError):
        maps_cmd.run_maps([tmp_path / "r"], methods=["gradcam"])


def test_registered_in_the_cli(tmp_path, monkeypatch, capsys):
    # How the lead wires it: SUBCOMMANDS["maps"] = ("diagnostics.maps_cmd", help).
    from diagnostics import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "maps", ("diagnostics.maps_cmd", "scan paths vs attn"))
    _fake_run(tmp_path, "vit", "VIT-T")
    assert cli.main(["maps", "--run", str(tmp_path / "vit"), "--images", "1", "--methods", "none",
                     "--no-erf", "--no-html"]) == 0
    assert (tmp_path / "vit" / "maps" / "step-00000007.npz").is_file()
    capsys.readouterr()
    assert cli.main(["maps", "--run", str(tmp_path / "missing")]) == 2
    assert "diagnose: error:" in capsys.readouterr().err

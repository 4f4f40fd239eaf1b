"""The training harness: `diagnose train` / `compare` on tiny presets and tiny synthetic data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diagnostics import load_run
from diagnostics.cli import main as cli_main
from diagnostics.train import (CHECKPOINT_NAME, TrainConfig, active_depth, compare,
                               depth_schedule, load_checkpoint, lr_factor, param_groups,
                               summary_table, train)

@pytest.fixture(autouse=True)
def _one_thread():
    from conftest import one_torch_thread
    with one_torch_thread():
        yield


# 32x16 images, patch 8: 8 tokens; 16 identities (8 train, 8 test); P=2 x K=4.
TINY = TrainConfig(dataset="synthetic:16", image_size=(32, 16), patch_size=8, batch_size=8,
                   num_instances=4, epochs=2, warmup_epochs=0, max_steps=2, probe_every=2,
                   lr=1e-3, quiet=True, maps=0)


def _tiny(tmp_path, backbone="VIT-T", name="run", **kw) -> TrainConfig:
    return dataclasses.replace(TINY, backbone=backbone, run=str(tmp_path / name), **kw)


@pytest.mark.parametrize("backbone,table", [("VIT-T", "attention"), ("MAMBA-S-T", "attention"),
                                            ("MAMBA-V2-T", "ssm")])
def test_two_steps_write_a_loadable_run(tmp_path, backbone, table):
    path = train(_tiny(tmp_path, backbone))
    run = load_run(path)
    assert run.status == "finished"
    assert list(run.steps["step"]) == [0, 1]
    assert run.steps["loss"].notna().all() and (run.steps["grad_norm"] > 0).all()
    assert len(run.layers) and len(getattr(run, table))
    if backbone == "MAMBA-V2-T":
        assert set(run.ssm["direction"]) == {"h", "v", "h_rev", "v_rev"}
    assert len(run.eval) == 1 and 0 <= run.eval["mAP"].iloc[0] <= 100
    assert run.manifest["config"]["backbone"] == backbone
    assert (path / CHECKPOINT_NAME).is_file()
    # the head's parameters are recorded with the backbone's
    assert "reid_head" in set(run.layers["group"])


def test_same_seed_same_losses_and_resume_continues(tmp_path, capsys):
    cfg = _tiny(tmp_path, max_steps=3, probe_every=0)
    a = load_run(train(dataclasses.replace(cfg, run=str(tmp_path / "a"))))
    b = load_run(train(dataclasses.replace(cfg, run=str(tmp_path / "b"))))
    assert len(a.steps) == 3
    assert list(a.steps["loss"]) == list(b.steps["loss"])  # deterministic under the seed

    # 2 steps, then resume through the CLI (options come from the checkpoint) up to 3 steps
    path = train(dataclasses.replace(cfg, run=str(tmp_path / "r"), max_steps=2))
    ckpt = load_checkpoint(path)  # weights_only=True inside
    assert ckpt["step"] == 2 and ckpt["epoch"] == 0 and ckpt["batch"] == 2
    assert cli_main(["train", "--run", str(path), "--resume", "--max-steps", "3", "--quiet"]) == 0
    run = load_run(path)
    assert list(run.steps["step"]) == [0, 1, 2]
    assert run.status == "finished" and "resume" in set(run.events["kind"])
    # the resumed step is the one an uninterrupted run takes (same data order and state)
    assert list(run.steps["loss"]) == pytest.approx(list(a.steps["loss"]), rel=1e-5)
    # a resumed run keeps its model: another backbone is refused in one line
    capsys.readouterr()
    assert cli_main(["train", "--backbone", "MAMBA-S-T", "--run", str(path), "--resume"]) == 2
    assert "backbone differs" in capsys.readouterr().err


def test_nonfinite_loss_stops_and_marks_diverged(tmp_path):
    path = train(_tiny(tmp_path, lr=1e30, max_steps=None, epochs=3, probe_every=0))
    run = load_run(path)
    assert run.status == "diverged"
    assert run.steps["nonfinite"].any()
    assert "nonfinite" in set(run.events["kind"])
    assert len(run.steps) < 3 * 2  # stopped before the end
    assert summary_table([path])["stopped"].iloc[0] == "nonfinite"


@pytest.mark.parametrize("argv,needle", [
    (["--backbone", "VIT-X"], "unknown backbone"),
    (["--backbone", "VIT-T", "--image-size", "64by32"], "HEIGHTxWIDTH"),
    (["--backbone", "VIT-T", "--image-size", "30x16", "--patch-size", "8"], "multiple"),
    (["--backbone", "VIT-T", "--progressive-depth", "4,6,8"], "deeper than the model"),
    (["--backbone", "VIT-T", "--progressive-depth", "3,2"], "increasing"),
    (["--backbone", "VIT-T", "--batch-size", "6"], "multiple of --num-instances"),
    (["--backbone", "VIT-T", "--vim-buggy-init"], "applies to VIM"),
])
def test_bad_arguments_give_one_line_and_status_2(tmp_path, capsys, argv, needle):
    status = cli_main(["train", "--run", str(tmp_path / "bad"), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert needle in " ".join(err.split())
    assert err.startswith("diagnose: error:") and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()  # refused before anything was written


def test_progressive_depth_schedule_and_frozen_blocks(tmp_path):
    assert depth_schedule([4, 6, 8], 8, 6) == [(0, 4), (2, 6), (4, 8)]
    assert depth_schedule([4, 6, 8], 12, 8) == [(0, 4), (2, 6), (4, 8), (6, 12)]
    assert depth_schedule(None, 4, 10) == [(0, 4)]
    sched = depth_schedule([2, 4], 4, 2)
    assert active_depth(sched, 0) == 2 and active_depth(sched, 1) == 4
    # epoch 0 trains blocks 0-1 only: blocks 2-3 get no gradient and do not move
    path = train(_tiny(tmp_path, progressive_depth=(2, 4), max_steps=2, probe_every=0))
    run = load_run(path)
    blocks = run.layers[run.layers["group"] == "block"]
    g = blocks.groupby("layer")["grad_norm"].max()
    assert g[0] > 0 and g[1] > 0 and g[2] == 0 and g[3] == 0
    assert run.events["message"].str.contains("progressive depth").any()


def test_schedule_and_weight_decay_groups():
    f = lambda s, sch="cosine": lr_factor(s, warmup_steps=10, total_steps=110, scheduler=sch)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.505)
    assert f(110) == pytest.approx(0.01)
    assert f(50, "none") == 1.0 and f(60, "step") == pytest.approx(0.1)
    from models import build_model
    m = build_model("MAMBA-V2-T", img_size=(32, 16), patch_size=8)
    decay, no_decay = param_groups(m, 0.05)
    names = {id(p): n for n, p in m.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    assert any(n.endswith("A_log") for n in nd) and any(n.endswith(".D") for n in nd)
    assert all(p.ndim >= 2 for p in decay["params"]) and no_decay["weight_decay"] == 0


def test_compare_and_summary_table(tmp_path, capsys):
    base = dataclasses.replace(TINY, max_steps=1, probe_every=0)
    paths = compare(["VIT-T", "MAMBA-S-T"], tmp_path / "exp", base, isolate=False,
                    labels={"VIT-T": "VIT-S (tiny preset VIT-T)"})
    assert [p.name for p in paths] == ["vit_t", "mamba_s_t"]
    df = summary_table(paths)
    assert list(df["label"]) == ["VIT-S (tiny preset VIT-T)", "MAMBA-S-T"]
    assert df["mAP"].notna().all() and (df["params"] > 0).all()
    assert (df["steps"] == 1).all() and df["epochs_to_90"].notna().all()
    # the table of existing runs, without training
    assert cli_main(["compare", "--backbones", "VIT-T,MAMBA-S-T", "--runs-dir",
                     str(tmp_path / "exp"), "--table-only"]) == 0
    out = capsys.readouterr().out
    assert "VIT-S (tiny preset VIT-T)" in out and "MAMBA-S-T" in out, out


def test_checkpoint_is_plain_and_runs_are_not_clobbered(tmp_path):
    cfg = _tiny(tmp_path, max_steps=1, probe_every=0)
    path = train(cfg)
    ckpt = torch.load(path / CHECKPOINT_NAME, weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "step", "rng", "config"} <= set(ckpt)
    assert all(math.isfinite(float(v.float().sum())) for v in ckpt["model"].values())
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(cfg)


def test_demo_labels_presets_and_writes_the_report(tmp_path, monkeypatch, capsys):
    from diagnostics import demo

    real = demo.demo_config

    def tiny_demo(epochs=None, threads=None, quiet=False):
        return dataclasses.replace(real(epochs, threads, quiet), dataset="synthetic:16",
                                   image_size=(32, 16), batch_size=8, max_steps=1,
                                   probe_every=0, quiet=True)

    monkeypatch.setattr(demo, "demo_config", tiny_demo)
    out_html = tmp_path / "demo.html"
    result = demo.run_demo(tmp_path / "demo", minutes=5, isolate=False, report=out_html)
    assert [p.name for p in result["runs"]] == ["vit_t", "mamba_s_t", "mamba_v2_t"]
    assert list(result["table"]["label"]) == ["VIT-S (tiny preset VIT-T)",
                                              "MAMBA-S (tiny preset MAMBA-S-T)",
                                              "MAMBA-V2 (tiny preset MAMBA-V2-T)"]
    out = capsys.readouterr().out
    assert "tiny preset" in out and "stopped early" not in out  # by max_steps, not the budget
    assert set(result["table"]["stopped"]) == {"max-steps"}
    if result["report"] is not None:
        assert out_html.is_file() and str(out_html) in " ".join(out.split())


@pytest.mark.parametrize("buggy", [False, True])
def test_vim_buggy_init_flag_is_caught_at_step_0(tmp_path, buggy):
    from diagnostics import analyze
    path = train(_tiny(tmp_path, "VIM-T", vim_buggy_init=buggy, max_steps=1, probe_every=1))
    run = load_run(path)
    assert set(run.ssm["direction"]) == {"fwd", "bwd"}
    mismatch = [f for f in analyze(run) if f.code == "ssm.init_mismatch"]
    if buggy:
        assert mismatch and all("bwd" in f.direction and "fwd" not in f.direction.split(",")
                                for f in mismatch)
    else:
        assert not mismatch


def test_maps_are_recorded_at_the_first_and_last_step(tmp_path):
    from diagnostics.maps import load_maps, maps_for_report
    paths = [train(_tiny(tmp_path, bb, name=bb, maps=2, maps_images=2))
             for bb in ("VIT-T", "MAMBA-V2-T")]
    for path in paths:
        assert sorted(p.name for p in (path / "maps").glob("*.npz")) == [
            "step-00000000.npz", "step-00000002.npz"]
        assert [m.step for m in load_maps(path)] == [0, 2]
    sets, scores, _ = maps_for_report(paths)
    assert [s.backbone for s in sets] == ["VIT-T", "MAMBA-V2-T"] and len(scores)

"""`diagnose sweep`: remedies parsed and planned, the init perturbation, the ranking, and one
real sweep of the toy preset (one spawned training process per run)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from diagnostics import load_run
from diagnostics.cli import main as cli_main
from diagnostics.train import TrainConfig
from diagnostics.sweep import (BASELINE, DEFAULT_REMEDIES, RUN_COLUMNS, parse_remedies,
                               plan_sweep, ranking, sweep)
from models.layers import generic_init, ssm_parts
from models import build_model


# 32x16 images, patch 8: 8 tokens; 16 identities (8 train: 67 images, 8 steps an epoch at
# batch 8); 2 blocks.
def _toy(**kw) -> TrainConfig:
    toy = dict(backbone="MAMBA-V2-T", dataset="synthetic:16", image_size=(32, 16), patch_size=8,
               batch_size=8, depth=2, threads=1)
    return dataclasses.replace(TrainConfig(**BASELINE), **{**toy, **kw})


# ---------------------------------------------------------------------------------------------
# remedies and the plan (no training)
# ---------------------------------------------------------------------------------------------

def test_parse_remedies_the_seeds_list_and_mistakes():
    rs = parse_remedies(DEFAULT_REMEDIES)
    assert [r.kind for r in rs] == ["lr", "clip", "warmup", "cosine", "batch",
                                    "progressive-depth", "augment", "dt-init", "alog-init"]
    assert rs[0].value == 1e-4 and rs[5].value == (4, 6, 8) and rs[3].value is None
    for bad, words in (("lr=1e-4,momentum=0.9", "unknown remedy"), ("cosine=1", "no value"),
                       ("lr", "needs a value"), ("lr=fast", "not a number"),
                       ("lr=1e-4,lr=1e-3", "twice"), ("augment=heavy", "augment=light"),
                       ("progressive-depth=8-4", "increasing"), ("", "empty")):
        with pytest.raises(ValueError, match=words):
            parse_remedies(bad)


def test_generic_init_clobbers_only_the_named_ssm_parts():
    torch.manual_seed(0)
    model = build_model("MAMBA-V2-T", img_size=(32, 16), patch_size=8, depth=2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert ssm_parts(model) == ("dt", "alog")
    state = torch.get_rng_state()
    names = generic_init(model, ("dt",), seed=0)
    assert torch.equal(torch.get_rng_state(), state)   # own generator: the run's RNG unchanged
    assert sorted(names) == [f"blocks.{i}.mixer.dt_proj.{w}" for i in (0, 1)
                             for w in ("bias", "weight")]
    mixer = model.blocks[0].mixer
    assert torch.all(mixer.dt_proj.bias == 0)                      # dt = softplus(0) = 0.69
    assert torch.equal(mixer.A_log, before["blocks.0.mixer.A_log"])  # S4D-real kept
    generic_init(model, ("alog",), seed=0)
    assert mixer.A_log.abs().max() <= 0.04 and mixer.A_log.std() > 0  # A ~ -1: one decay rate
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {f"blocks.{i}.mixer.{w}" for i in (0, 1)
                       for w in ("A_log", "dt_proj.weight", "dt_proj.bias")}
    # Vim's backward direction follows the same names; a ViT has nothing to perturb
    vim = build_model("VIM-T", img_size=(32, 16), patch_size=8, depth=1)
    assert {n.rsplit(".", 2)[-2] if "dt_proj" in n else n.rsplit(".", 1)[-1]
            for n in generic_init(vim)} == {"A_log", "A_b_log", "dt_proj", "dt_proj_b"}
    assert ssm_parts(build_model("VIT-T", img_size=(32, 16), patch_size=8, depth=1)) == ()


def test_plan_one_variant_per_remedy_plus_recipe_with_the_budget_compressed(tmp_path):
    notes: list[str] = []
    variants = plan_sweep(_toy(depth=None), parse_remedies(DEFAULT_REMEDIES), tmp_path,
                          budget_steps=20, seeds=2, notes=notes)
    names = [v.name for v in variants]
    assert names == ["baseline", "lr=1e-4", "clip=1.0", "warmup=10", "cosine", "batch=16",
                     "progressive-depth=4-6-8", "augment=light", "dt-init", "alog-init", "recipe"]
    by = {v.name: v for v in variants}
    base = by["baseline"].configs[0]
    assert [c.seed for c in by["baseline"].configs] == [0, 1]
    assert base.generic_init == ("dt", "alog") and base.lr == 1e-3 and base.clip_grad is None
    assert base.max_steps == 20 and base.epochs == 3      # 67 train images // 8 = 8 steps/epoch
    assert base.run == str(tmp_path / "baseline-seed0") and base.label == "baseline"
    # each remedy alone changes only its own settings
    fields = ("lr", "clip_grad", "warmup_epochs", "scheduler", "batch_size", "progressive_depth",
              "augment", "generic_init")
    diff = {v.name: {f for f in fields if getattr(v.configs[0], f) != getattr(base, f)}
            for v in variants}
    assert diff["lr=1e-4"] == {"lr"} and diff["cosine"] == {"scheduler"}
    assert diff["dt-init"] == {"generic_init"}
    assert by["dt-init"].configs[0].generic_init == ("alog",)
    assert diff["batch=16"] == {"batch_size"} and by["batch=16"].configs[0].epochs == 5
    assert diff["recipe"] == set(fields) and by["recipe"].configs[0].generic_init == ()
    # warm-up 10 of the 60 reference epochs: the first sixth of the 3 epochs
    assert by["warmup=10"].configs[0].warmup_epochs == pytest.approx(0.5)
    # 4-6-8 on the preset's 4 blocks: 2-3-4
    assert by["progressive-depth=4-6-8"].configs[0].progressive_depth == (2, 3, 4)
    assert notes == []


def test_plan_skips_what_the_baseline_has_and_init_remedies_without_ssm(tmp_path):
    notes: list[str] = []
    variants = plan_sweep(_toy(backbone="VIT-T"), parse_remedies("batch=8,dt-init,clip=1.0"),
                          tmp_path, budget_steps=4, seeds=1, notes=notes)
    assert [v.name for v in variants] == ["baseline", "clip=1.0"]   # no recipe of one
    assert variants[0].configs[0].generic_init == ()
    assert any("batch=8" in n and "already" in n for n in notes)
    assert any("dt-init" in n and "no dt_proj" in n for n in notes)
    with pytest.raises(ValueError, match="identities per batch|batch"):
        plan_sweep(_toy(batch_size=6), parse_remedies("clip=1.0"), tmp_path, budget_steps=4,
                   seeds=1)


# ---------------------------------------------------------------------------------------------
# the ranking (no training)
# ---------------------------------------------------------------------------------------------

def _rows(variant, status, mAPs, losses, cvs, findings=()):
    out = []
    for seed, (m, loss, cv) in enumerate(zip(mAPs, losses, cvs)):
        steps = np.arange(10)
        curve = (steps, np.linspace(2 * loss, loss, 10))
        out.append(dict(variant=variant, seed=seed, run=f"{variant}-{seed}", status=status,
                        error="", mAP=m, rank1=m, initial_loss=2 * loss, final_loss=loss,
                        grad_cv=cv, findings=list(findings), _curve=curve))
    return out


def test_ranking_weighs_effects_by_seed_noise_and_keeps_failed_variants_last():
    runs = pd.DataFrame(
        _rows("baseline", "finished", [10, 11], [3.0, 3.1], [0.30, 0.32], ["loss.plateau"])
        # higher mAP, but within the seeds' noise; loss and gradients clearly worse
        + _rows("harmful", "finished", [11, 12], [5.0, 5.1], [1.30, 1.32],
                ["loss.plateau", "grad.exploding"])
        # clearly lower loss, same mAP: better
        + _rows("good", "finished", [10.5, 11.5], [2.0, 2.1], [0.30, 0.31])
        + _rows("broken", "diverged", [math.nan, 30], [math.nan, 1.0], [math.nan, 0.1]))
    rank = ranking(runs, {"good": "lr 1e-4"})
    assert list(rank["variant"]) == ["good", "baseline", "harmful", "broken"]
    r = rank.set_index("variant")
    assert r.loc["harmful", "verdict"] == "worse: loss, grad-norm CV"
    assert r.loc["good", "verdict"] == "better: loss" and r.loc["good", "changes"] == "lr 1e-4"
    assert r.loc["broken", "verdict"] == "fails" and r.loc["broken", "statuses"] == "2 diverged"
    assert r.loc["harmful", "findings_new"] == "grad.exploding"
    assert r.loc["good", "findings_gone"] == "loss.plateau"
    assert r.loc["harmful", "delta_mAP"] == pytest.approx(1.0)
    assert r.loc["baseline", "score"] == 0 and math.isnan(r.loc["baseline", "delta_mAP"])
    # steps to the baseline's final loss (3.05): the good variant gets there first
    assert r.loc["good", "loss_threshold"] == pytest.approx(3.05)
    assert r.loc["good", "steps_to_threshold_mean"] < r.loc["baseline", "steps_to_threshold_mean"]
    assert r.loc["harmful", "reached_threshold"] == 0
    # one seed: no noise estimate, the verdict says so
    one = ranking(runs[runs["seed"] == 0].copy()).set_index("variant")
    assert one.loc["good", "verdict"] == "? (1 seed)"


# ---------------------------------------------------------------------------------------------
# one real sweep: the toy preset, 2 remedies, a handful of steps, one process per run
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_sweep(tmp_path_factory):
    runs_dir = tmp_path_factory.mktemp("sweep")
    # lr=1: x1000 the baseline's 1e-3, harmful beyond doubt (x100 ranks last too, but by a
    # margin that 8 steps of a toy model leave to rounding: it flipped with the scan's rounding)
    rank = sweep("MAMBA-V2-T", runs_dir, "lr=1,clip=1.0", budget_steps=8, seeds=1, jobs=2,
                 base=_toy(probe_every=4), detail=True)
    return runs_dir, rank


def test_toy_sweep_ranks_every_variant_and_records_every_run(toy_sweep):
    runs_dir, result = toy_sweep
    rank = result.ranking
    assert sorted(rank["variant"]) == ["baseline", "clip=1.0", "lr=1", "recipe"]
    assert list(rank["rank"]) == [1, 2, 3, 4]
    status = result.runs.set_index("variant")["status"]
    # a diverged variant is reported as such, not dropped
    assert status.to_dict() == {"baseline": "finished", "lr=1": "diverged",
                                "clip=1.0": "finished", "recipe": "diverged"}
    assert (result.runs["error"] == "").all()
    assert list(result.runs.columns) == list(RUN_COLUMNS)
    csv = pd.read_csv(runs_dir / "ranking.csv")
    assert list(csv["variant"]) == list(rank["variant"])
    plan = json.loads((runs_dir / "sweep.json").read_text())
    assert [v["name"] for v in plan["variants"]] == ["baseline", "lr=1", "clip=1.0", "recipe"]
    base = load_run(runs_dir / "baseline-seed0")
    cfg = base.manifest["config"]
    assert cfg["label"] == "baseline" and cfg["generic_init"] == ["dt", "alog"]
    assert cfg["max_steps"] == 8 and len(base.steps) == 8
    # the init perturbation happened in the training process: dt = softplus(0) at step 0
    step0 = base.ssm[base.ssm["step"] == 0]
    assert step0["dt_p50"].between(0.6, 0.8).all()
    assert "ssm.init_mismatch" in result.runs.set_index("variant").loc["baseline", "findings"]
    recipe = load_run(runs_dir / "recipe-seed0")
    assert recipe.manifest["config"]["clip_grad"] == 1.0
    assert recipe.manifest["config"]["lr"] == pytest.approx(1.0)


def test_toy_sweep_ranks_the_harmful_lr_last(toy_sweep):
    rank = toy_sweep[1].ranking
    # lr x1000 (1 against the baseline's 1e-3) and the recipe that contains it: the last two
    assert list(rank["variant"].iloc[-2:]) == ["recipe", "lr=1"]
    assert rank.set_index("variant").loc["lr=1", "score"] < 0


def test_cli_reuses_finished_runs_and_prints_the_table(toy_sweep, capsys):
    runs_dir, _ = toy_sweep
    argv = ["sweep", "--backbone", "MAMBA-V2-T", "--runs-dir", str(runs_dir), "--remedies",
            "lr=1,clip=1.0", "--budget-steps", "8", "--seeds", "1", "--jobs", "2",
            "--dataset", "synthetic:16", "--image-size", "32x16", "--patch-size", "8",
            "--batch-size", "8", "--depth", "2", "--threads", "1", "--probe-every", "4",
            "--report", str(runs_dir.parent / "remedies.html")]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("kept (already trained)") == 4
    assert "lr=1" in out and "recipe" in out and "ranking.csv" in out
    # the Remedies report of the real sweep: every variant ranked, every figure drawn
    html = (runs_dir.parent / "remedies.html").read_text()
    for variant in ("baseline", "lr=1", "clip=1.0", "recipe"):
        assert f"<td><b>{variant}</b></td>" in html
    for key in ("remedy_curves", "remedy_outcomes", "remedy_ssm", "remedy_ssm_curves"):
        assert f'id="plot-{key}"' in html
    # other settings on top of the same runs are refused in one line
    assert cli_main(argv[:-4] + ["--probe-every", "3"]) == 2
    assert "--overwrite" in capsys.readouterr().err

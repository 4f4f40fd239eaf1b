"""`diagnose sweep`: which of the seed's remedies helps this model? (issue 11, claim C7)

    diagnose sweep --backbone MAMBA-V2 --runs-dir runs/sweep
        [--remedies lr=1e-4,clip=1.0,warmup=10,cosine,batch=16,progressive-depth=4-6-8,
                    augment=light,dt-init,alog-init]
        [--budget-steps N] [--seeds 2] [--jobs N] [every `diagnose train` option: the baseline]

Trains a **baseline**, one **variant per remedy** (that remedy alone on top of the baseline)
and the **recipe** (all the listed remedies together: the seed's full recipe with the default
list), each for ``--seeds`` seeds, every run recorded under ``--runs-dir`` by the training
harness (`diagnostics.train`) in its own process, ``--jobs`` at a time. Then it ranks the
variants and writes ``ranking.csv``, ``runs.csv`` and ``sweep.json`` (the plan) beside the runs,
and the Remedies report (``reports/sweep_NAME.html``; ``diagnose --run RUNS_DIR`` re-reads the
folder and writes it again, :func:`load_sweep`).

The baseline is "what the user had before the remedies": the training harness's defaults are the
seed's recipe, so the sweep starts from the opposite, :data:`BASELINE`:

=====================  ===========================================  ===========================
option                 baseline (override with the train option)    remedy
=====================  ===========================================  ===========================
AdamW peak lr          1e-3 (AdamW's default; ``--lr 1e-2`` is the   ``lr=1e-4``
                       ViT lr the seed quotes)
gradient clipping      none                                         ``clip=1.0``
warm-up                none                                         ``warmup=10`` (epochs)
schedule               constant lr                                  ``cosine``
batch                  64 (Bag of Tricks' 16 ids x 4 images)        ``batch=16``
depth                  all blocks from the start                    ``progressive-depth=4-6-8``
augmentation           none                                         ``augment=light``
dt init                generic: dt_proj weight trunc-normal(0.02),   ``dt-init`` (Mamba's:
                       bias 0, so dt = softplus(0) = 0.69            log-uniform [1e-3, 1e-1])
A_log init             generic: trunc-normal(0.02), A ~ -1 for      ``alog-init`` (S4D-real:
                       every state (one decay rate)                 A_log = log(1..N))
=====================  ===========================================  ===========================

The two init rows are the bug the seed worries about (C5, and Vim's zeroed ``dt_proj_b``): a
generic ``_init_weights`` that does not skip Mamba's ``_no_reinit`` parameters overwrites them
(:func:`generic_init`). The baseline applies it to both; ``dt-init`` / ``alog-init`` leave that
part as the model initialises it (Mamba's init). Backbones without SSM parameters (ViT,
MAMBA-S) get no init perturbation and the two init remedies are skipped. A remedy that the
baseline already has (e.g. ``batch=16`` with ``--batch-size 16``) is skipped, with a note.

Budget. ``--budget-steps N`` stops every run after N optimizer steps and compresses the
reference schedule (``--epochs``, default 60) into them: each run trains
``ceil(N / steps_per_epoch)`` epochs, so the cosine schedule and the progressive-depth stages
span the budget, and ``warmup=W`` warms up over W/60 of it (10 epochs of 60: the first sixth).
Progressive depths deeper than the model are scaled to it (4-6-8 on the 4-block CPU presets is
2-3-4). Runs of different batch sizes see different numbers of images in N steps; the
batch-hard triplet loss also depends on the batch, so compare their losses with care (mAP does
not).

Ranking (:func:`ranking`), one row per variant, mean +- std over seeds: status of its runs,
final mAP / Rank-1, final loss (trailing median over the last tenth of the steps), steps until
the smoothed loss first reaches the baseline's final loss, gradient-norm stability (CV after
warm-up, as the compare table), findings (warning or worse) that disappeared / appeared compared
with the baseline. Seed-to-seed spread decides what is an effect: each metric's difference from
the baseline is measured in units of its seed-to-seed std (pooled over the variants); the
``score`` is the mean of these effects over mAP, final loss and grad-norm CV (each clipped to
+-3; with one seed the std across the variants stands in), and the ``verdict`` names the
metrics whose difference exceeds 2 standard errors (``better: loss; worse: mAP``), or says
``within noise``. Variants with a crashed or diverged run rank last and are shown, never
dropped; the others by score. Read the verdict before the rank: a budget too short for the
model to learn identities leaves mAP at chance, and the loss then says how fast a run gets
down to the trivial solution (uniform class scores: ln(classes) + the triplet margin), which a
small lr reaches last.

Init: the perturbation is `TrainConfig.generic_init` (recorded in each run's manifest), which
the harness applies right after building the backbone (`models.layers.generic_init`); every
variant runs in its own process through `train._train_isolated`.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from models.layers import ssm_parts
from diagnostics.train import (TrainConfig, _train_isolated, _add_training_options, parse_depths,
                               parse_image_size, results_console, validate)

log = logging.getLogger(__name__)

#: What the user had before the remedies (see the module docstring). Command-line training
#: options replace these; everything else is `TrainConfig`'s.
BASELINE: dict[str, Any] = dict(lr=1e-3, clip_grad=None, warmup_epochs=0.0, scheduler="none",
                                batch_size=64, progressive_depth=None, augment="none",
                                generic_init=("dt", "alog"))

#: The seed's remedies (SUMMARY.md, C7), in its order: the default ``--remedies``.
DEFAULT_REMEDIES = ("lr=1e-4,clip=1.0,warmup=10,cosine,batch=16,progressive-depth=4-6-8,"
                    "augment=light,dt-init,alog-init")
DEFAULT_BUDGET_STEPS = 300
DEFAULT_SEEDS = 2
#: Probes per run when --probe-every is not given (step 0 included: the init findings need it).
PROBES_PER_RUN = 5
#: Evaluations per run when --eval-every is not given (the last one ends the run).
EVALS_PER_RUN = 2
#: A difference is an effect when it exceeds this many standard errors of the difference.
EFFECT_SE = 2.0
#: Fraction of a run's last steps whose median is its final loss (at least FINAL_MIN_STEPS).
FINAL_FRACTION = 0.1
FINAL_MIN_STEPS = 5
#: Statuses of runs that did not train to the end.
FAILED = ("crashed", "diverged", "failed", "running")


# ---------------------------------------------------------------------------------------------
# remedies
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RemedyKind:
    """A remedy of the seed: how its value is parsed and which settings it changes."""
    name: str
    help: str
    parse: Callable[[str], Any] | None       # None: the remedy takes no value
    apply: Callable[[dict, Any], None]       # apply(settings, value) changes settings in place


def _set(key: str) -> Callable[[dict, Any], None]:
    def apply(s: dict, v: Any) -> None:
        s[key] = v
    return apply


def _restore_init(part: str) -> Callable[[dict, Any], None]:
    def apply(s: dict, _v: Any) -> None:
        s["generic_init"] = tuple(p for p in s["generic_init"] if p != part)
    return apply


def _positive(kind: type, what: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise ValueError(f"{what}={text!r} is not a number") from None
        if not v > 0:
            raise ValueError(f"{what}={text} must be > 0")
        return v
    return parse


def _augment(text: str) -> str:
    if text != "light":
        raise ValueError(f"augment={text!r}: the seed's augmentation is augment=light")
    return text


def _depths(text: str) -> tuple[int, ...]:
    return parse_depths(text.replace("-", ","))


REMEDY_KINDS: dict[str, RemedyKind] = {k.name: k for k in (
    RemedyKind("lr", "AdamW peak learning rate (seed: 1e-4 for Mamba)",
               _positive(float, "lr"), _set("lr")),
    RemedyKind("clip", "clip the global gradient norm (seed: 1.0)",
               _positive(float, "clip"), _set("clip_grad")),
    RemedyKind("warmup", "linear warm-up, in epochs of the reference schedule (seed: 10)",
               _positive(float, "warmup"), _set("warmup_epochs")),
    RemedyKind("cosine", "cosine lr schedule instead of a constant lr", None,
               lambda s, _v: s.update(scheduler="cosine")),
    RemedyKind("batch", "images per batch (seed: 16)", _positive(int, "batch"),
               _set("batch_size")),
    RemedyKind("progressive-depth", "train 4, then 6, then 8 blocks (seed: 4-6-8)", _depths,
               _set("progressive_depth")),
    RemedyKind("augment", "light augmentation: RandomResizedCrop 0.8-1, flip, ColorJitter 0.1",
               _augment, _set("augment")),
    RemedyKind("dt-init", "Mamba's dt init (log-uniform in [1e-3, 1e-1]) instead of a generic "
               "init's dt = softplus(0)", None, _restore_init("dt")),
    RemedyKind("alog-init", "S4D-real A_log = log(1..N) instead of a generic init's A ~ -1",
               None, _restore_init("alog")),
)}


@dataclass(frozen=True)
class Remedy:
    """One entry of --remedies: ``name`` as typed (``lr=1e-4``), its kind and parsed value."""
    name: str
    kind: str
    value: Any = None

    def apply(self, settings: dict) -> None:
        REMEDY_KINDS[self.kind].apply(settings, self.value)


def parse_remedies(text: str | Sequence[str]) -> list[Remedy]:
    """``"lr=1e-4,clip=1.0,cosine"`` -> remedies; ValueError (one line) for unknown names,
    bad values and a kind given twice."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[Remedy] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        kind, eq, value = item.partition("=")
        kind = kind.strip()
        if kind not in REMEDY_KINDS:
            raise ValueError(f"unknown remedy {item!r}; known: {', '.join(REMEDY_KINDS)} "
                             f"(e.g. --remedies {DEFAULT_REMEDIES})")
        spec = REMEDY_KINDS[kind]
        if spec.parse is None and eq:
            raise ValueError(f"remedy {kind} takes no value (got {item!r})")
        if spec.parse is not None and not value.strip():
            raise ValueError(f"remedy {kind} needs a value, e.g. {kind}="
                             f"{_example(DEFAULT_REMEDIES, kind)}")
        if any(r.kind == kind for r in out):
            raise ValueError(f"--remedies lists {kind} twice")
        out.append(Remedy(item.replace(" ", ""), kind,
                          spec.parse(value.strip()) if spec.parse else None))
    if not out:
        raise ValueError("--remedies is empty")
    return out


def _example(remedies: str, kind: str) -> str:
    for item in remedies.split(","):
        if item.startswith(kind + "="):
            return item.split("=", 1)[1]
    return "VALUE"


# ---------------------------------------------------------------------------------------------
# the plan: variants x seeds -> run configs
# ---------------------------------------------------------------------------------------------

@dataclass
class Variant:
    """A row of the ranking: the baseline, one remedy, or the recipe; one config per seed."""
    name: str
    remedies: list[Remedy]
    changes: str                         # what differs from the baseline, in words
    configs: list[TrainConfig] = field(default_factory=list)


def run_dir_name(variant: str, seed: int) -> str:
    """``'lr=1e-4', 0`` -> ``'lr_1e-4-seed0'`` (the run's directory under --runs-dir)."""
    return f"{re.sub(r'[^A-Za-z0-9.-]+', '_', variant).strip('_')}-seed{seed}"


def _train_size(dataset: str, image_size, seed: int, cache: dict) -> int:
    key = (dataset, seed)
    if key not in cache:
        from diagnostics.data import build_dataset
        cache[key] = len(build_dataset(dataset, img_size=image_size, seed=seed,
                                       augment="none").train)
    return cache[key]


def _describe(s: dict, base: dict, ref_epochs: int) -> str:
    parts = []
    if s["lr"] != base["lr"]:
        parts.append(f"lr {s['lr']:g}")
    if s["clip_grad"] != base["clip_grad"]:
        parts.append(f"clip {s['clip_grad']:g}" if s["clip_grad"] else "no clipping")
    if s["warmup_epochs"] != base["warmup_epochs"]:
        parts.append(f"warm-up {s['warmup_epochs']:g}/{ref_epochs} of the schedule")
    if s["scheduler"] != base["scheduler"]:
        parts.append(f"{s['scheduler']} schedule")
    if s["batch_size"] != base["batch_size"]:
        parts.append(f"batch {s['batch_size']}")
    if s["progressive_depth"] != base["progressive_depth"]:
        parts.append("depth " + "-".join(map(str, s["progressive_depth"] or ())))
    if s["augment"] != base["augment"]:
        parts.append(f"augment {s['augment']}")
    for part, words in (("dt", "Mamba dt init"), ("alog", "S4D-real A_log")):
        if (part in base["generic_init"]) != (part in s["generic_init"]):
            parts.append(words if part not in s["generic_init"] else f"generic {part} init")
    return ", ".join(parts) or "-"


def _scale_depths(depths: tuple[int, ...] | None, model_depth: int) -> tuple[int, ...] | None:
    """Depth stages deeper than the model are scaled so that the last is the model's depth."""
    if not depths or depths[-1] <= model_depth:
        return depths
    scaled = []
    for d in depths:
        v = max(1, round(d * model_depth / depths[-1]))
        if not scaled or v > scaled[-1]:
            scaled.append(v)
    return tuple(scaled)


def plan_sweep(base: TrainConfig, remedies: Sequence[Remedy], runs_dir: str | os.PathLike, *,
               budget_steps: int | None = DEFAULT_BUDGET_STEPS, seeds: int = DEFAULT_SEEDS,
               recipe: bool = True, notes: list[str] | None = None) -> list[Variant]:
    """The variants and their run configs, validated (ValueError before anything trains).

    Args:
        base: the baseline (see :data:`BASELINE`); its ``epochs`` is the reference schedule.
        remedies: parsed --remedies.
        runs_dir: parent of the runs.
        budget_steps: optimizer steps per run (None: the full reference schedule).
        seeds: seeds ``base.seed .. base.seed + seeds - 1`` per variant.
        recipe: add the variant with every remedy together (when there are two or more).
        notes: collects one line per remedy skipped (and why).
    """
    if seeds < 1:
        raise ValueError("--seeds must be >= 1")
    if budget_steps is not None and budget_steps < 1:
        raise ValueError("--budget-steps must be >= 1")
    notes = notes if notes is not None else []
    base = dataclasses.replace(base, image_size=parse_image_size(base.image_size),
                               progressive_depth=parse_depths(base.progressive_depth),
                               clip_grad=base.clip_grad or None)
    model_depth = validate(base)
    parts = _model_ssm_parts(base)
    base_s = _settings(base)
    base_s["generic_init"] = tuple(p for p in base_s["generic_init"] if p in parts)

    def settings(rs: Sequence[Remedy]) -> dict:
        s = dict(base_s)
        for r in rs:
            r.apply(s)
        s["progressive_depth"] = _scale_depths(s["progressive_depth"], model_depth)
        return s

    variants = [Variant("baseline", [], "-")]
    kept = []
    for r in remedies:
        if r.kind in ("dt-init", "alog-init") and r.kind.split("-")[0] not in parts:
            notes.append(f"{r.name}: skipped, {base.backbone} has no "
                         f"{'dt_proj' if r.kind == 'dt-init' else 'A_log'} parameters")
            continue
        if settings([r]) == base_s:
            notes.append(f"{r.name}: skipped, the baseline already has it")
            continue
        kept.append(r)
        variants.append(Variant(r.name, [r], _describe(settings([r]), base_s, base.epochs)))
    if recipe and len(kept) >= 2:
        variants.append(Variant("recipe", kept, _describe(settings(kept), base_s, base.epochs)))

    sizes: dict = {}
    for v in variants:
        s = settings(v.remedies)
        for i in range(seeds):
            seed = base.seed + i
            cfg = dataclasses.replace(base, **s, seed=seed, label=v.name,
                                      run=str(Path(runs_dir) / run_dir_name(v.name, seed)))
            cfg = _fit_budget(cfg, budget_steps, sizes)
            validate(cfg)
            v.configs.append(cfg)
    return variants


def _settings(cfg: TrainConfig) -> dict:
    keys = ("lr", "clip_grad", "warmup_epochs", "scheduler", "batch_size", "progressive_depth",
            "augment", "generic_init")
    return {k: getattr(cfg, k) for k in keys}


def _model_ssm_parts(cfg: TrainConfig) -> tuple[str, ...]:
    from diagnostics.train import _build_backbone
    return ssm_parts(_build_backbone(cfg, meta=True))


def _fit_budget(cfg: TrainConfig, budget_steps: int | None, sizes: dict) -> TrainConfig:
    """Compress the reference schedule (``cfg.epochs``) into ``budget_steps`` steps."""
    if budget_steps is None:
        evals = cfg.eval_every or max(1, cfg.epochs // EVALS_PER_RUN)
        return dataclasses.replace(cfg, eval_every=evals, max_steps=None)
    n_train = _train_size(cfg.dataset, cfg.image_size, cfg.seed, sizes)
    per_epoch = max(1, n_train // cfg.batch_size)     # PKSampler's epoch length
    epochs = max(1, math.ceil(budget_steps / per_epoch))
    warmup = cfg.warmup_epochs * epochs / cfg.epochs
    if warmup >= epochs:
        raise ValueError(f"warm-up {cfg.warmup_epochs:g} of --epochs {cfg.epochs} leaves no "
                         "training after it")
    probe = cfg.probe_every if cfg.probe_every != TrainConfig.probe_every else \
        max(1, budget_steps // PROBES_PER_RUN)
    return dataclasses.replace(cfg, epochs=epochs, warmup_epochs=warmup, max_steps=budget_steps,
                               probe_every=probe,
                               eval_every=cfg.eval_every or max(1, math.ceil(epochs /
                                                                             EVALS_PER_RUN)))


# ---------------------------------------------------------------------------------------------
# running: one process per run, --jobs at a time
# ---------------------------------------------------------------------------------------------

#: Config keys that do not change what a run trains (a finished run with the same others is
#: reused instead of retrained).
_VOLATILE = {"run", "quiet", "overwrite", "resume", "threads", "workers", "max_minutes"}


def _existing(cfg: TrainConfig) -> str | None:
    """'reuse' (finished or diverged with the same config), 'retrain' (crashed, same config),
    'differs', 'running', or None when there is no run."""
    path = Path(cfg.run)
    if not (path / "manifest.json").exists():
        return None
    from diagnostics.runfmt import RunFormatError, load_run
    try:
        run = load_run(path)
    except RunFormatError:
        return "differs"
    planned = json.loads(json.dumps(cfg.to_dict()))
    recorded = run.manifest.get("config") or {}
    same = all(recorded.get(k) == v for k, v in planned.items() if k not in _VOLATILE)
    if not same:
        return "differs"
    if run.status == "running":
        return "running"
    return "reuse" if run.status in ("finished", "diverged") else "retrain"


@dataclass
class RunResult:
    variant: str
    seed: int
    path: Path
    error: str = ""            # why the run failed to start or died ("" when it ended)
    reused: bool = False
    wall_s: float = math.nan


def run_variants(variants: Sequence[Variant], *, jobs: int = 1, overwrite: bool = False,
                 on_done: Callable[[RunResult, int, int], None] | None = None
                 ) -> list[RunResult]:
    """Train every config of every variant (seed-major: every variant's first seed before the
    second seeds), ``jobs`` processes at a time. Finished runs with the same config are kept.

    A run that fails is a result with ``error`` set; the sweep goes on. ``on_done(result, i, n)``
    is called as each run ends.
    """
    if jobs < 1:
        raise ValueError("--jobs must be >= 1")
    n_seeds = max(len(v.configs) for v in variants)
    todo = [(v.name, cfg) for i in range(n_seeds) for v in variants if i < len(v.configs)
            for cfg in [v.configs[i]]]
    for name, cfg in todo:   # refuse before training anything
        state = _existing(cfg)
        if state == "running":
            raise ValueError(f"{cfg.run} is being written by another process (status running)")
        if state == "differs" and not overwrite:
            raise FileExistsError(f"{cfg.run} holds a run with other settings: pass --overwrite "
                                  "to retrain it, or use another --runs-dir")
    results: list[RunResult] = []

    def one(name: str, cfg: TrainConfig) -> RunResult:
        res = RunResult(name, cfg.seed, Path(cfg.run))
        state = _existing(cfg)
        if state == "reuse" and not overwrite:
            res.reused = True
            return res
        log.info("training %s seed %d into %s", name, cfg.seed, cfg.run)
        t0 = time.monotonic()
        try:
            _train_isolated(dataclasses.replace(cfg, overwrite=state is not None, quiet=True))
        except Exception as e:  # noqa: BLE001 - one failed run is a row of the table
            res.error = " ".join(str(e).split()) or type(e).__name__
        res.wall_s = time.monotonic() - t0
        return res

    with cf.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, name, cfg) for name, cfg in todo]
        try:
            for fut in cf.as_completed(futures):
                results.append(fut.result())
                if on_done is not None:
                    on_done(results[-1], len(results), len(todo))
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            raise
    order = {(n, c.seed): i for i, (n, c) in enumerate(todo)}
    return sorted(results, key=lambda r: order[(r.variant, r.seed)])


# ---------------------------------------------------------------------------------------------
# per-run numbers and the ranking
# ---------------------------------------------------------------------------------------------

RUN_COLUMNS = ("variant", "seed", "run", "status", "stopped", "error", "steps", "initial_loss",
               "final_loss", "steps_to_threshold", "mAP", "rank1", "grad_cv", "clipped_frac",
               "nonfinite_steps", "findings", "dt_p50", "adt_p50", "frac_erased", "frac_frozen",
               "state_norm_max", "alog_std", "wall_s")

#: Columns of :func:`run_table` that are not written to runs.csv (objects, not numbers).
_PRIVATE = ("_curve", "_run")

#: SSM statistics of the last probe (median over layers and directions) in the per-run table.
SSM_COLUMNS = ("dt_p50", "adt_p50", "frac_erased", "frac_frozen", "state_norm_max", "alog_std")


def _smoothed_loss(steps) -> tuple[Any, Any]:
    import numpy as np
    s = steps[np.isfinite(steps["loss"].astype(float))]
    window = max(FINAL_MIN_STEPS, int(len(s) * FINAL_FRACTION))
    sm = s["loss"].astype(float).rolling(window, min_periods=1).median()
    return s["step"].to_numpy(), sm.to_numpy()


def run_table(results: Sequence[RunResult]) -> "pandas.DataFrame":  # noqa: F821
    """One row per run (:data:`RUN_COLUMNS`, then the private ``_curve``: (steps, smoothed
    loss), and ``_run``: the loaded run); a run that never wrote a manifest is a row with status
    ``failed`` and its error. ``steps_to_threshold`` is filled in by :func:`ranking`;
    ``findings`` is a sorted list of the codes found at warning or worse."""
    import numpy as np
    import pandas as pd

    from diagnostics.analyzers import analyze, severity_rank
    from diagnostics.runfmt import RunFormatError, load_run
    from diagnostics.train import summary_table

    rows = []
    for res in results:
        row: dict[str, Any] = dict(variant=res.variant, seed=res.seed, run=str(res.path),
                                   error=res.error, wall_s=res.wall_s, findings=[])
        try:
            run = load_run(res.path)
        except (RunFormatError, FileNotFoundError, NotADirectoryError):
            row.update(status="failed", steps=0)
            rows.append(row)
            continue
        summary = summary_table([res.path]).iloc[0]
        for k in ("status", "stopped", "steps", "mAP", "rank1", "grad_cv", "clipped_frac",
                  "nonfinite_steps"):
            row[k] = summary[k]
        if res.error and row["status"] == "running":
            row["status"] = "crashed"   # the process died without closing the run
        steps, sm = _smoothed_loss(run.steps)
        row["_curve"], row["_run"] = (steps, sm), run
        if len(sm):
            row["initial_loss"] = float(run.steps["loss"].iloc[0])
            row["final_loss"] = float(sm[-1])
        row["findings"] = sorted({f.code for f in analyze(run)
                                  if severity_rank(f.severity) >= severity_rank("warning")})
        ssm = run.ssm
        if len(ssm):
            last = ssm[ssm["step"] == ssm["step"].max()]
            for col in SSM_COLUMNS:
                vals = last[col].astype(float) if col in last else pd.Series(dtype=float)
                vals = vals[np.isfinite(vals)]
                row[col] = float(vals.median()) if len(vals) else math.nan
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in (*RUN_COLUMNS, *_PRIVATE):
        if col not in df:
            df[col] = None if col in (*_PRIVATE, "stopped") else math.nan
    return df[[*RUN_COLUMNS, *_PRIVATE]]


#: The metrics of the score and the verdict: (column, +1 when higher is better, word). Rank-1
#: is shown, not scored: one point of the CMC curve, noisier than mAP and measuring the same.
SCORE_METRICS = (("mAP", +1, "mAP"), ("final_loss", -1, "loss"), ("grad_cv", -1, "grad-norm CV"))
#: An effect counts at most this many noise units in the score (no single metric dominates).
SCORE_CLIP = 3.0

RANKING_COLUMNS = ("rank", "variant", "changes", "score", "verdict", "runs", "statuses",
                   "failed", "mAP_mean", "mAP_std", "rank1_mean", "rank1_std", "final_loss_mean",
                   "final_loss_std", "loss_threshold", "steps_to_threshold_mean",
                   "steps_to_threshold_std", "reached_threshold", "grad_cv_mean", "grad_cv_std",
                   "findings_gone", "findings_new", "delta_mAP", "delta_mAP_se", "noise")


def _fill_steps_to_threshold(runs, baseline: str) -> float:
    """``runs.steps_to_threshold`` (in place): the first step at which the smoothed loss is at
    or below the threshold, the baseline's mean final loss (90 % of the mean initial loss when
    the baseline has none). Returns the threshold."""
    import numpy as np
    base = runs[(runs["variant"] == baseline) & ~runs["status"].isin(FAILED)]
    base_loss = base["final_loss"].astype(float).dropna()
    threshold = (float(base_loss.mean()) if len(base_loss)
                 else 0.9 * float(runs["initial_loss"].astype(float).mean()))
    reached = []
    for curve in runs["_curve"]:
        if not isinstance(curve, tuple) or not len(curve[1]):
            reached.append(math.nan)
            continue
        steps, sm = curve
        hit = np.flatnonzero(sm <= threshold * (1 + 1e-9))
        reached.append(float(steps[hit[0]]) if len(hit) else math.nan)
    runs["steps_to_threshold"] = reached
    return threshold


def _noise(runs, column: str) -> tuple[float, bool]:
    """Seed-to-seed std of a metric, pooled over the variants with two or more values, and
    True; without repeated seeds, the std across the variants' means and False (no noise
    estimate: the score then only orders the variants)."""
    ss, dof, means = 0.0, 0, []
    for _, g in runs.groupby("variant", sort=False):
        v = g[column].astype(float)
        v = v[v.map(math.isfinite)]
        if len(v):
            means.append(float(v.mean()))
        if len(v) >= 2:
            ss += float(v.var(ddof=1)) * (len(v) - 1)
            dof += len(v) - 1
    if dof and ss > 0:
        return math.sqrt(ss / dof), True
    if len(means) >= 2:
        import statistics
        sd = statistics.stdev(means)
        return (sd if sd > 0 else math.nan), False
    return math.nan, False


def ranking(runs: "pandas.DataFrame", changes: dict[str, str] | None = None,  # noqa: F821
            baseline: str = "baseline") -> "pandas.DataFrame":  # noqa: F821
    """The ranking (:data:`RANKING_COLUMNS`), best first, from :func:`run_table`'s rows (whose
    ``steps_to_threshold`` it fills in).

    Each metric of :data:`SCORE_METRICS` becomes an effect against the baseline in units of
    its seed-to-seed noise: ``z = sign * (variant mean - baseline mean) / noise``, clipped to
    +-SCORE_CLIP; the ``score`` is the mean of the variant's effects (the baseline's is 0), so a
    metric whose differences are noise weighs little. ``verdict`` names the metrics whose
    difference exceeds EFFECT_SE standard errors of the difference (``better: mAP, loss``),
    ``within noise`` when none does, ``?`` without repeated seeds, ``fails`` when a run crashed
    or diverged. Order: variants with a failed run last, then by score, then by mAP.
    """
    import numpy as np
    import pandas as pd

    changes = changes or {}
    threshold = _fill_steps_to_threshold(runs, baseline)
    noise = {col: _noise(runs, col) for col, _, _ in SCORE_METRICS}

    def finite(g, col):
        v = g[col].astype(float)
        return v[np.isfinite(v)]

    def codes(g) -> dict[str, int]:
        out: dict[str, int] = {}
        for fs in g["findings"]:
            for c in fs or []:
                out[c] = out.get(c, 0) + 1
        return out

    base = runs[runs["variant"] == baseline]
    base_codes, base_n = codes(base), len(base)
    rows = []
    for name, g in runs.groupby("variant", sort=False):
        row: dict[str, Any] = dict(variant=name, changes=changes.get(name, ""), runs=len(g))
        row["statuses"] = ", ".join(f"{n} {s}" for s, n in g["status"].value_counts().items())
        row["failed"] = bool(g["status"].isin(FAILED).any())
        for col in ("mAP", "rank1", "final_loss", "steps_to_threshold", "grad_cv"):
            v = finite(g, col)
            row[f"{col}_mean"] = float(v.mean()) if len(v) else math.nan
            row[f"{col}_std"] = float(v.std(ddof=1)) if len(v) >= 2 else math.nan
        row["loss_threshold"] = threshold
        row["reached_threshold"] = int(g["steps_to_threshold"].notna().sum())
        mine = codes(g)

        def fmt(code: str, n: int, of: int) -> str:
            return code if n == of else f"{code} ({n}/{of})"
        other = name != baseline
        row["findings_gone"] = ", ".join(fmt(c, n, base_n) for c, n in sorted(base_codes.items())
                                         if c not in mine) if other else ""
        row["findings_new"] = ", ".join(fmt(c, n, len(g)) for c, n in sorted(mine.items())
                                        if c not in base_codes) if other else ""
        zs, better, worse, measured = [], [], [], True
        for col, sign, word in SCORE_METRICS:
            mine_v, base_v = finite(g, col), finite(base, col)
            sd, real = noise[col]
            if not (len(mine_v) and len(base_v) and math.isfinite(sd)):
                continue
            delta = float(mine_v.mean() - base_v.mean())
            zs.append(max(-SCORE_CLIP, min(SCORE_CLIP, sign * delta / sd)))
            se = sd * math.sqrt(1 / len(mine_v) + 1 / len(base_v))
            if col == "mAP" and other:
                row["delta_mAP"], row["delta_mAP_se"] = delta, (se if real else math.nan)
            measured = measured and real
            if real and abs(delta) > EFFECT_SE * se:
                (better if sign * delta > 0 else worse).append(word)
        row["score"] = float(np.mean(zs)) if zs else math.nan
        if row["failed"]:
            row["verdict"] = "fails"
        elif not other:
            row["verdict"] = "-"
        elif not measured:
            row["verdict"] = "? (1 seed)"
        elif better or worse:
            row["verdict"] = "; ".join(f"{what}: {', '.join(ws)}"
                                       for what, ws in (("better", better), ("worse", worse)) if ws)
        else:
            row["verdict"] = "within noise"
        row["noise"] = ", ".join(f"{word} {noise[col][0]:.3g}" for col, _, word in SCORE_METRICS
                                 if math.isfinite(noise[col][0]) and noise[col][1])
        rows.append(row)
    df = pd.DataFrame(rows)
    for col in ("delta_mAP", "delta_mAP_se"):
        if col not in df:
            df[col] = math.nan
    df = df.assign(_k1=df["failed"], _k2=-df["score"].fillna(-math.inf),
                   _k3=-df["mAP_mean"].fillna(-math.inf))
    df = df.sort_values(["_k1", "_k2", "_k3"], kind="stable").drop(columns=["_k1", "_k2", "_k3"])
    df.insert(0, "rank", range(1, len(df) + 1))
    return df[list(RANKING_COLUMNS)].reset_index(drop=True)


def ssm_effects(runs: "pandas.DataFrame") -> "pandas.DataFrame":  # noqa: F821
    """Per variant, the mean over seeds of the last probe's SSM statistics (:data:`SSM_COLUMNS`):
    what each remedy did to dt, A*dt, the decays and the state norms."""
    cols = [c for c in SSM_COLUMNS if c in runs]
    return (runs.groupby("variant", sort=False)[cols].mean(numeric_only=True)
            .dropna(how="all").reset_index())


# ---------------------------------------------------------------------------------------------
# the sweep
# ---------------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    ranking: Any            # DataFrame: ranking()
    runs: Any               # DataFrame: run_table(), steps_to_threshold filled
    variants: list[Variant]
    notes: list[str]
    runs_dir: Path
    wall_s: float
    #: variant -> its loaded runs, by seed, in the plan's order (baseline first): what the
    #: Remedies figures overlay. Runs that could not be read are left out (their rows say why).
    loaded: dict[str, list] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)   # sweep.json

    @property
    def name(self) -> str:
        return self.runs_dir.name or str(self.runs_dir)


def _result(runs, rank, variants, notes, runs_dir: Path, wall_s: float,
            plan: dict[str, Any]) -> SweepResult:
    loaded: dict[str, list] = {v.name: [] for v in variants}
    for variant, run in zip(runs["variant"], runs["_run"]):
        if hasattr(run, "steps"):           # rows without a run hold None or NaN
            loaded.setdefault(variant, []).append(run)
    return SweepResult(rank, runs.drop(columns=list(_PRIVATE)), variants, notes, runs_dir,
                       wall_s, loaded, plan)


def sweep(backbone: str = "MAMBA-V2", runs_dir: str | os.PathLike = "runs/sweep",
          remedies: str | Sequence[str] = DEFAULT_REMEDIES, *,
          budget_steps: int | None = DEFAULT_BUDGET_STEPS, seeds: int = DEFAULT_SEEDS,
          jobs: int = 1, base: TrainConfig | None = None, recipe: bool = True,
          overwrite: bool = False, on_done: Callable[[RunResult, int, int], None] | None = None,
          notes: list[str] | None = None, detail: bool = False):
    """Train the baseline, each remedy alone and the recipe, and rank them.

    Args:
        backbone: registered name.
        runs_dir: where the runs, ``ranking.csv``, ``runs.csv`` and ``sweep.json`` go.
        remedies: ``"lr=1e-4,clip=1.0,..."`` (see :data:`REMEDY_KINDS`).
        budget_steps: optimizer steps per run (None: the full ``base.epochs``).
        seeds: runs per variant.
        jobs: training processes at a time (each gets ``cpu_count // jobs`` torch threads
            unless ``base.threads`` says otherwise).
        base: the baseline's settings; default ``TrainConfig(**BASELINE)`` (a plain
            `TrainConfig` gets the generic init of :data:`BASELINE` too).
        recipe: add the all-remedies variant.
        overwrite: retrain runs that exist with other settings.
        on_done: progress callback ``(RunResult, done, total)``.
        notes: collects the skipped remedies (one line each).
        detail: return a :class:`SweepResult` instead of the ranking.
    Returns the ranking DataFrame (:data:`RANKING_COLUMNS`), best first.
    """
    t0 = time.monotonic()
    notes = notes if notes is not None else []
    base = base if base is not None else TrainConfig(**BASELINE)
    if not isinstance(base, TrainConfig):   # a plain TrainConfig: the generic init as well
        base = TrainConfig(**{**dataclasses.asdict(base),
                              "generic_init": BASELINE["generic_init"]})
    threads = base.threads or max(1, (os.cpu_count() or 1) // max(1, jobs))
    base = dataclasses.replace(base, backbone=backbone, threads=threads)
    variants = plan_sweep(base, parse_remedies(remedies), runs_dir, budget_steps=budget_steps,
                          seeds=seeds, recipe=recipe, notes=notes)
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    _write_plan(runs_dir, variants, base, budget_steps, seeds, notes)
    results = run_variants(variants, jobs=jobs, overwrite=overwrite, on_done=on_done)
    runs = run_table(results)
    rank = ranking(runs, {v.name: v.changes for v in variants})
    rank.to_csv(runs_dir / "ranking.csv", index=False)
    out = runs.drop(columns=list(_PRIVATE)).assign(findings=runs["findings"].map(
        lambda fs: ";".join(fs or [])))
    out.to_csv(runs_dir / "runs.csv", index=False)
    if detail:
        return _result(runs, rank, variants, notes, runs_dir, time.monotonic() - t0,
                       _read_plan(runs_dir))
    return rank


def _write_plan(runs_dir: Path, variants, base, budget_steps, seeds, notes) -> None:
    plan = dict(backbone=base.backbone, budget_steps=budget_steps, seeds=seeds,
                reference_epochs=base.epochs,
                baseline={k: v for k, v in _settings(base).items()}, notes=notes,
                variants=[dict(name=v.name, remedies=[r.name for r in v.remedies],
                               changes=v.changes,
                               runs=[Path(c.run).name for c in v.configs]) for v in variants])
    tmp = runs_dir / f"sweep.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(plan, indent=2, default=list))
    os.replace(tmp, runs_dir / "sweep.json")


def is_sweep(path: str | os.PathLike) -> bool:
    """A folder written by `diagnose sweep` (it holds ``sweep.json``)."""
    return (Path(path) / "sweep.json").is_file()


def _read_plan(runs_dir: Path) -> dict[str, Any]:
    """``sweep.json``, checked: a one-line RunFormatError when it is not a sweep's plan. Run
    names must be plain folder names, so that nothing outside ``runs_dir`` is read."""
    from diagnostics.runfmt import RunFormatError

    path = runs_dir / "sweep.json"
    if not path.is_file():
        raise RunFormatError(f"{runs_dir} holds no sweep (no sweep.json)")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunFormatError(f"{path}: not a sweep plan ({type(e).__name__})") from None
    variants = plan.get("variants") if isinstance(plan, dict) else None
    ok = isinstance(variants, list) and len(variants) > 0 and all(
        isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("runs"), list)
        and all(isinstance(r, str) and r and r not in (".", "..") and "/" not in r
                and "\\" not in r for r in v["runs"])
        for v in variants)
    if not ok:
        raise RunFormatError(f"{path}: not a sweep plan (variants with a name and their run "
                             "folders expected)")
    return plan


def load_sweep(runs_dir: str | os.PathLike) -> SweepResult:
    """Rank the runs of a sweep already on disk (from its ``sweep.json``), without training:
    what the report and the app show as the "Remedies" view. A bad ``sweep.json`` raises a
    one-line RunFormatError; a run that is missing or unreadable is a ``failed`` row."""
    runs_dir = Path(runs_dir)
    plan = _read_plan(runs_dir)
    variants, results = [], []
    for v in plan["variants"]:
        variants.append(Variant(v["name"], [], str(v.get("changes", ""))))
        for name in v["runs"]:
            seed = name.rsplit("-seed", 1)[1] if "-seed" in name else "0"
            results.append(RunResult(v["name"], int(seed) if seed.isdigit() else 0,
                                     runs_dir / name))
    runs = run_table(results)
    rank = ranking(runs, {v.name: v.changes for v in variants})
    notes = [str(n) for n in plan.get("notes") or []]
    return _result(runs, rank, variants, notes, runs_dir, math.nan, plan)


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------

def _pm(mean: float, std: float, fmt: str) -> str:
    if mean is None or not math.isfinite(mean):
        return "-"
    return format(mean, fmt) + (f" ± {std:{fmt}}" if std is not None and math.isfinite(std)
                                else "")


def print_ranking(rank, console=None, title: str = "remedies ranked") -> None:
    """The ranking, with rich."""
    from rich.markup import escape
    from rich.table import Table

    console = console or results_console()
    thr = rank["loss_threshold"].iloc[0] if len(rank) else math.nan
    noise = next((n for n in rank["noise"] if n), "")
    t = Table(title=title, caption="mean ± std over seeds. score: mean effect against the "
                                   "baseline in units of seed-to-seed noise (mAP, loss, "
                                   f"grad-norm CV). verdict: differences over {EFFECT_SE:g} "
                                   "standard errors" + (f". noise (std): {noise}" if noise else ""))
    for name, just in (("#", "right"), ("variant", "left"), ("score", "right"),
                       ("verdict", "left"), ("mAP (Δ)", "right"),
                       ("Rank-1", "right"), ("final loss", "right"),
                       (f"steps to loss ≤ {thr:.3g}", "right"), ("grad-norm CV", "right"),
                       ("findings vs baseline", "left")):
        t.add_column(name, justify=just, no_wrap=name in ("variant", "#"),
                     overflow="fold", min_width=16 if name.startswith("findings") else None)
    for r in rank.to_dict("records"):
        d = r["delta_mAP"]
        found = [f"-{c}" for c in r["findings_gone"].split(", ") if c] + \
                [f"+{c}" for c in r["findings_new"].split(", ") if c]
        verdict = escape(r["verdict"] if not r["failed"] else f"fails ({r['statuses']})")
        if r["verdict"] == "fails" or r["verdict"].startswith("worse"):
            verdict = f"[red]{verdict}[/]"
        elif r["verdict"].startswith("better") and "worse" not in r["verdict"]:
            verdict = f"[green]{verdict}[/]"
        t.add_row(str(r["rank"]), escape(r["variant"]),
                  "-" if not math.isfinite(r["score"]) else f"{r['score']:+.2f}", verdict,
                  _pm(r["mAP_mean"], r["mAP_std"], ".1f")
                  + ("" if not math.isfinite(d) else f" ({d:+.1f})"),
                  _pm(r["rank1_mean"], r["rank1_std"], ".1f"),
                  _pm(r["final_loss_mean"], r["final_loss_std"], ".2f"), _reached(r),
                  _pm(r["grad_cv_mean"], r["grad_cv_std"], ".2f"),
                  escape(" ".join(found)) or "-")
    console.print(t)


def _reached(r: dict) -> str:
    if not r["reached_threshold"]:
        return "never"
    text = _pm(r["steps_to_threshold_mean"], r["steps_to_threshold_std"], ".0f")
    return text if r["reached_threshold"] == r["runs"] else \
        f"{text} ({r['reached_threshold']}/{r['runs']} runs)"


def print_ssm_effects(runs, console=None) -> None:
    """The last probe's SSM statistics per variant, with rich (nothing when no SSM)."""
    from rich.markup import escape
    from rich.table import Table

    eff = ssm_effects(runs)
    if not len(eff):
        return
    console = console or results_console()
    t = Table(title="SSM statistics at the last probe (median over layers and directions, "
                    "mean over seeds)")
    heads = dict(dt_p50="dt median", adt_p50="A·dt median", frac_erased="erased (e^{A·dt}<0.01)",
                 frac_frozen="frozen (e^{A·dt}>0.99)", state_norm_max="state norm max",
                 alog_std="A_log std")
    t.add_column("variant", no_wrap=True)
    for c in eff.columns[1:]:
        t.add_column(heads.get(c, c), justify="right")
    for r in eff.to_dict("records"):
        t.add_row(escape(str(r["variant"])),
                  *[("-" if not math.isfinite(r[c]) else f"{r[c]:.3g}") for c in eff.columns[1:]])
    console.print(t)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

_BASELINE_HELP = {
    "lr": "the baseline's AdamW lr (default 1e-3; --lr 1e-2 is the ViT lr the seed quotes)",
    "batch_size": "the baseline's batch, P identities x K (default 64)",
    "warmup_epochs": "the baseline's warm-up epochs (default 0)",
    "scheduler": "the baseline's schedule (default none: constant lr)",
    "clip_grad": "the baseline's gradient clipping, 0 for none (default none)",
    "augment": "the baseline's augmentation (default none)",
    "epochs": "the reference schedule that --budget-steps compresses (default 60)",
    "max_steps": argparse.SUPPRESS,
    "probe_every": f"probe every N steps (default: {PROBES_PER_RUN} probes per run)",
    "eval_every": f"evaluate every E epochs (default: {EVALS_PER_RUN} evaluations per run)",
}


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--backbone", default="MAMBA-V2",
                   help="backbone to sweep (default MAMBA-V2; MAMBA-V2-T on a CPU)")
    p.add_argument("--runs-dir", default="runs/sweep", metavar="PATH",
                   help="parent of the runs and of ranking.csv (default runs/sweep)")
    p.add_argument("--remedies", default=DEFAULT_REMEDIES, metavar="R1,R2,...",
                   help="remedies to test, each alone and all together (default: the seed's: "
                        f"{DEFAULT_REMEDIES})")
    p.add_argument("--budget-steps", type=int, default=DEFAULT_BUDGET_STEPS, metavar="N",
                   help="optimizer steps per run; the reference schedule (--epochs) is "
                        f"compressed into them; 0 for the full schedule "
                        f"(default {DEFAULT_BUDGET_STEPS})")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                   help=f"runs per variant, for the seed-to-seed spread (default {DEFAULT_SEEDS})")
    p.add_argument("--jobs", type=int, default=1,
                   help="training processes at a time (default 1)")
    p.add_argument("--no-recipe", action="store_true",
                   help="do not add the variant with every remedy together")
    p.add_argument("--report", default=None, metavar="PATH",
                   help="the Remedies report (default reports/sweep_NAME.html, NAME the "
                        "--runs-dir folder); later: diagnose --run RUNS_DIR")
    g = p.add_argument_group("baseline", "training options: what you had before the remedies "
                                         "(unset ones: no remedy)")
    _add_training_options(g)
    for action in g._group_actions:
        if action.dest in _BASELINE_HELP:
            action.help = _BASELINE_HELP[action.dest]


_CONFIG_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def base_from_args(args: argparse.Namespace) -> TrainConfig:
    """The baseline: :data:`BASELINE`, replaced by the training options given."""
    given = {k: v for k, v in vars(args).items()
             if k in _CONFIG_KEYS and v is not None and k != "backbone"}
    if given.get("max_steps") is not None:
        raise ValueError("diagnose sweep: use --budget-steps, not --max-steps")
    if "image_size" in given:
        given["image_size"] = parse_image_size(given["image_size"])
    if "progressive_depth" in given:
        given["progressive_depth"] = parse_depths(given["progressive_depth"])
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    given.pop("overwrite", None)
    return TrainConfig(**{**BASELINE, **given})


def main(args: argparse.Namespace, name: str) -> int:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = results_console()
    base = base_from_args(args)
    notes: list[str] = []
    quiet = bool(args.quiet)
    progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=quiet, transient=True)
    task = None

    def on_done(res: RunResult, i: int, n: int) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task("sweep", total=n)
        progress.update(task, completed=i)
        if quiet:
            return
        what = ("kept (already trained)" if res.reused else
                f"[red]failed[/red]: {escape(res.error)}" if res.error
                else f"done in {res.wall_s:.0f} s")
        progress.console.print(f"{escape(f'[{i}/{n}] {res.variant} seed {res.seed}')}: {what}")

    with progress:
        result = sweep(args.backbone, args.runs_dir, args.remedies,
                       budget_steps=args.budget_steps or None, seeds=args.seeds, jobs=args.jobs,
                       base=base, recipe=not args.no_recipe, overwrite=bool(args.overwrite),
                       on_done=on_done, notes=notes, detail=True)
    for note in notes:
        console.print(escape(f"note: {note}"))
    budget = f"{args.budget_steps} steps" if args.budget_steps else "full schedule"
    print_ranking(result.ranking, console,
                  title=escape(f"{args.backbone}: the seed's remedies, {budget} x {args.seeds} "
                               f"seed(s) ({result.runs_dir})"))
    print_ssm_effects(result.runs, console)
    from diagnostics.report import write_sweep_report
    report = write_sweep_report(result, args.report)
    console.print(escape(f"ranking written to {result.runs_dir / 'ranking.csv'} "
                         f"(per run: {result.runs_dir / 'runs.csv'}); one run: diagnose --run "
                         f"{result.variants[0].configs[0].run}"))
    console.print(escape(f"report: {report}"))
    # diverged runs are results; a run that could not train is an error
    return 1 if (result.runs["error"].fillna("") != "").any() else 0

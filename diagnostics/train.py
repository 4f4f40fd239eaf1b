"""The reference training harness: `diagnose train` and `diagnose compare`.

    diagnose train --backbone MAMBA-V2 --run runs/mamba_v2 [--dataset synthetic] [--lr 1e-4]
        [--batch-size 16] [--num-instances 4] [--epochs 60] [--warmup-epochs 10]
        [--scheduler cosine|none|step] [--clip-grad 1.0] [--weight-decay 0.05]
        [--progressive-depth 4,6,8] [--augment light|none] [--image-size 256x128]
        [--patch-size 16] [--depth N] [--probe-every 50] [--eval-every E] [--seed 0]
        [--device cpu|cuda] [--resume] [--overwrite] [--quiet] [--max-steps N]
        [--max-minutes M] [--on-nonfinite stop|continue]
    diagnose compare --backbones VIT-S,MAMBA-S,MAMBA-V2 --runs-dir runs/exp1 [same options]

What one run does (the "Bag of Tricks" re-ID strong baseline around any backbone of `models/`):

* Data: `diagnostics.data.build_dataset(--dataset)`; batches of P identities x K images
  (`PKSampler`, K = --num-instances, P = --batch-size / K); --augment light is the seed's light
  augmentation (RandomResizedCrop 0.8-1, flip, ColorJitter 0.1), train split only.
* Model: the backbone, and a BNNeck head (`diagnostics.reid.BNNeckHead`) registered as the
  backbone's sub-module ``reid_head``: the recorder sees the backbone (its `blocks`, grid and
  layer names unchanged) and the head's parameters count in the global gradient norm, in the
  clipping and in the `layers` table (layer -1, group ``reid_head``).
* Loss: cross-entropy with label smoothing on the BNNeck logits + batch-hard triplet on the
  global feature (`diagnostics.reid.ReIDLoss`).
* Optimiser: AdamW; no weight decay on the parameters the model names in `no_weight_decay()`
  (position embedding, cls token, A_log, D) nor on 1-D parameters (biases, norms).
* Schedule, per optimizer step: linear warm-up over --warmup-epochs from lr/warmup_steps to lr,
  then cosine to 1 % of lr at the end of --epochs (`cosine`), constant (`none`), or x0.1 at
  50 % and 75 % of the steps (`step`). --max-steps and --max-minutes stop early without
  changing the schedule.
* Clipping: the recorder clips (`Recorder.step(clip_grad=...)`), so the recorded norm is the
  one before clipping. --clip-grad 0 turns clipping off.
* Progressive depth (--progressive-depth 4,6,8): training starts with the first 4 blocks active
  (the others are skipped: identity, no gradient, no update), then 6, then 8, each stage
  starting at an evenly spaced epoch milestone: stage i of n starts at epoch round(i * E / n).
  When the last listed depth is below the model's depth, the full depth is added as a final
  stage, so the model evaluated at the end is the whole model. Each change is an event.
* Evaluation every --eval-every epochs (default: about ten evaluations per run) and at the end:
  BNNeck features, cosine distance, Market-1501 protocol (`diagnostics.metrics`), recorded with
  `Recorder.log_eval` (the eval row's `epoch` is the 0-based epoch it came after).
* Checkpoint `checkpoint.pt` in the run directory after every epoch and when training stops
  early: model, optimiser, scheduler, epoch, position in the epoch, step, RNG states and the
  config, tensors and plain types only, so `torch.load(weights_only=True)` reads it. --resume
  loads it and continues the same run (same step numbering). Resuming a run that died
  mid-epoch re-records the steps after the last checkpoint, so the rows the dead attempt
  recorded from the checkpoint's step on are dropped first (`RunWriter.rewind`): every step is
  recorded once; a `resume` event says how many rows went.
* Determinism: with the same --seed on the CPU two runs give identical losses (model init,
  sampler and augmentation are all seeded; the data order depends only on (seed, epoch)).
* Non-finite loss or gradient norm: the run stops and is marked diverged (--on-nonfinite stop,
  the default), or that step's update is skipped and training goes on (continue).

Under torchrun (`python -m torch.distributed.run --standalone --nproc-per-node N -m --
diagnostics.cli train ...`, see docs/scale-out.md): the process group comes from torchrun's environment (gloo on the CPU,
nccl on CUDA, each rank on cuda:LOCAL_RANK), the model is wrapped in DistributedDataParallel,
each rank takes every N-th PK batch of the epoch (the DistributedSampler rule: an epoch is one
pass over the data for all ranks together, so --batch-size is per rank and the effective batch
is N x --batch-size; the lr is not rescaled), and rank 0 alone shows progress, evaluates,
writes the run and the checkpoint. Stopping (non-finite values, --max-minutes) is agreed by
all ranks at every step, so no rank waits for another that stopped.

`train(config)` and `compare(...)` are the plain functions; `main` only converts arguments.
`summary_table(run_paths)` builds the seed's comparison table from run directories (through
`load_run`, the one reader), so finished runs can be compared without retraining.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger(__name__)

SCHEDULERS = ("cosine", "none", "step")
ON_NONFINITE = ("stop", "continue")
AUGMENTS = ("light", "none")
CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1

#: Cosine schedule's floor, as a fraction of the peak lr.
COSINE_MIN_RATIO = 0.01
#: `step` schedule: multiply the lr by STEP_GAMMA at these fractions of the training steps.
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1
#: Evaluations per run when --eval-every is not given.
DEFAULT_EVALS_PER_RUN = 10

#: Keys that must match the checkpoint when resuming (they define the model, data and optimiser).
FIXED_ON_RESUME = ("backbone", "dataset", "image_size", "patch_size", "depth", "batch_size",
                   "num_instances", "seed", "lr", "weight_decay", "progressive_depth")


@dataclass
class TrainConfig:
    """Everything one training run needs (the `diagnose train` options).

    Defaults are the seed's recommended recipe (claim C7): AdamW lr 1e-4, batch 16, 10 warm-up
    epochs, cosine schedule, clipping at 1.0, light augmentation. Each remedy can be turned off:
    ``warmup_epochs=0``, ``scheduler="none"``, ``clip_grad=None`` (or 0), ``augment="none"``.
    """

    backbone: str = "MAMBA-V2"
    run: str = "runs/train"
    dataset: str = "synthetic"
    lr: float = 1e-4
    batch_size: int = 16
    num_instances: int = 4
    epochs: int = 60
    warmup_epochs: float = 10
    scheduler: str = "cosine"
    clip_grad: float | None = 1.0
    weight_decay: float = 0.05
    progressive_depth: tuple[int, ...] | None = None
    augment: str = "light"
    image_size: tuple[int, int] = (256, 128)
    patch_size: int | None = None        # None: the model's default (16)
    depth: int | None = None             # None: the backbone's own depth
    vim_buggy_init: bool = False         # VIM-*: reproduce Vim's zeroed dt_proj_b bias on purpose
    maps: int = 3                        # map snapshots (scan paths vs attention) over the run
    generic_init: tuple[str, ...] = ()   # SSM parts ("dt", "alog") given a generic init after
                                         # building: the bug diagnose sweep's init remedies fix
    maps_images: int = 4                 # probe images the maps are computed on
    probe_every: int = 50
    eval_every: int | None = None        # None: about DEFAULT_EVALS_PER_RUN evaluations
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    max_steps: int | None = None         # stop after this many optimizer steps in all
    max_minutes: float | None = None     # stop (cleanly, with a final eval) after this long
    on_nonfinite: str = "stop"
    workers: int = 0                     # DataLoader workers
    threads: int | None = None           # torch CPU threads (None: torch's default)
    label: str | None = None             # how tables name the run (default: the backbone)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["progressive_depth"] = list(self.progressive_depth) if self.progressive_depth else None
        d["generic_init"] = list(self.generic_init)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        if d.get("image_size") is not None:
            d["image_size"] = tuple(int(v) for v in d["image_size"])
        if d.get("progressive_depth"):
            d["progressive_depth"] = tuple(int(v) for v in d["progressive_depth"])
        d["generic_init"] = tuple(d.get("generic_init") or ())
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# parsing and validation (cheap: no dataset, the model is built on the meta device)
# ---------------------------------------------------------------------------------------------

def parse_image_size(text: str | Sequence[int]) -> tuple[int, int]:
    """'256x128' -> (256, 128); ValueError (one line) otherwise."""
    if not isinstance(text, str):
        h, w = (int(v) for v in text)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if not m:
            raise ValueError(f"--image-size {text!r} is not HEIGHTxWIDTH, e.g. 256x128")
        h, w = int(m.group(1)), int(m.group(2))
    if h < 8 or w < 8:
        raise ValueError(f"--image-size {h}x{w}: both sides must be at least 8 pixels")
    return h, w


def parse_depths(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """'4,6,8' -> (4, 6, 8); None or '' -> None."""
    if text is None or text == "":
        return None
    if isinstance(text, str):
        try:
            depths = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"--progressive-depth {text!r} is not a list of block counts, "
                             "e.g. 4,6,8") from None
    else:
        depths = tuple(int(v) for v in text)
    if not depths or min(depths) < 1 or any(b <= a for a, b in zip(depths, depths[1:])):
        raise ValueError(f"--progressive-depth {','.join(map(str, depths))}: block counts must "
                         "be positive and increasing, e.g. 4,6,8")
    return depths


def _model_kwargs(config: TrainConfig) -> dict:
    kw: dict[str, Any] = {"img_size": tuple(config.image_size)}
    if config.patch_size is not None:
        kw["patch_size"] = int(config.patch_size)
    if config.depth is not None:
        kw["depth"] = int(config.depth)
    if config.vim_buggy_init:
        if not config.backbone.startswith("VIM"):
            raise ValueError(f"--vim-buggy-init applies to VIM-S / VIM-T, not {config.backbone}")
        kw["buggy_init"] = True
    return kw


def _build_backbone(config: TrainConfig, meta: bool = False):
    import torch

    from models import build_model
    try:
        if meta:
            with torch.device("meta"):
                return build_model(config.backbone, **_model_kwargs(config))
        return build_model(config.backbone, **_model_kwargs(config))
    except (TypeError, AssertionError) as e:
        raise ValueError(f"cannot build {config.backbone}: {e}") from None


def depth_schedule(depths: Sequence[int] | None, model_depth: int,
                   epochs: int) -> list[tuple[int, int]]:
    """[(start epoch, active blocks), ...] of progressive depth (see the module docstring).

    No schedule: ``[(0, model_depth)]``. Stage i of n starts at epoch ``round(i * epochs / n)``;
    the full depth is appended when the last listed depth is below it.
    """
    if not depths:
        return [(0, model_depth)]
    stages = list(depths)
    if stages[-1] > model_depth:
        raise ValueError(f"--progressive-depth {','.join(map(str, depths))}: {stages[-1]} blocks "
                         f"is deeper than the model ({model_depth} blocks)")
    if stages[-1] < model_depth:
        stages.append(model_depth)
    n = len(stages)
    return [(int(round(i * epochs / n)), d) for i, d in enumerate(stages)]


def active_depth(schedule: list[tuple[int, int]], epoch: int) -> int:
    """Blocks active during `epoch` under `schedule`."""
    depth = schedule[0][1]
    for start, d in schedule:
        if epoch >= start:
            depth = d
    return depth


def validate(config: TrainConfig) -> int:
    """Check a config without training (unknown backbone, sizes, depths, batch). Returns the
    model's depth. Raises ValueError with a one-line message."""
    import torch

    from models import list_models
    if config.backbone not in list_models():
        raise ValueError(f"unknown backbone {config.backbone!r}; known: {', '.join(list_models())}")
    parse_image_size(config.image_size)
    if config.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler must be one of {', '.join(SCHEDULERS)}; "
                         f"got {config.scheduler!r}")
    if config.augment not in AUGMENTS:
        raise ValueError(f"--augment must be one of {', '.join(AUGMENTS)}; got {config.augment!r}")
    if config.on_nonfinite not in ON_NONFINITE:
        raise ValueError(f"--on-nonfinite must be one of {', '.join(ON_NONFINITE)}")
    if config.epochs < 1:
        raise ValueError(f"--epochs must be >= 1; got {config.epochs}")
    if config.warmup_epochs < 0 or 0 < config.warmup_epochs >= config.epochs:
        raise ValueError(f"--warmup-epochs {config.warmup_epochs:g} must be >= 0 and shorter than "
                         f"--epochs {config.epochs} (pass a smaller --warmup-epochs)")
    if not config.lr > 0 or config.weight_decay < 0:
        raise ValueError("--lr must be > 0 and --weight-decay >= 0")
    if config.clip_grad is not None and config.clip_grad < 0:
        raise ValueError("--clip-grad must be > 0 (or 0 to turn clipping off)")
    k = config.num_instances
    if k < 1 or config.batch_size % k or config.batch_size // k < 2:
        raise ValueError(f"--batch-size {config.batch_size} must be a multiple of --num-instances "
                         f"{k} with at least 2 identities per batch (the triplet loss needs "
                         "negatives)")
    if config.probe_every < 0 or (config.eval_every is not None and config.eval_every < 1):
        raise ValueError("--probe-every must be >= 0 and --eval-every >= 1")
    if config.max_steps is not None and config.max_steps < 1:
        raise ValueError("--max-steps must be >= 1")
    if config.threads is not None and config.threads < 1:
        raise ValueError("--threads must be >= 1")
    if config.depth is not None and config.depth < 1:
        raise ValueError("--depth must be >= 1")
    if config.resume and config.overwrite:
        raise ValueError("--resume and --overwrite are exclusive")
    dev = torch.device(config.device)  # "cuda:1", "cpu"; a bad name raises RuntimeError
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu)")
    model = _build_backbone(config, meta=True)
    depth = len(model.blocks)
    depth_schedule(config.progressive_depth, depth, config.epochs)
    return depth


# ---------------------------------------------------------------------------------------------
# pieces of the loop
# ---------------------------------------------------------------------------------------------

def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on weight matrices; none on `no_weight_decay()` names and 1-D params."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in skip or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, scheduler: str) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "none":
        return 1.0
    if scheduler == "step":
        return STEP_GAMMA ** sum(step >= m * total_steps for m in STEP_MILESTONES)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return COSINE_MIN_RATIO + (1 - COSINE_MIN_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


def _set_active_blocks(model, n: int) -> None:
    """Blocks past the first `n` become identities (their own forward is skipped)."""
    for i, blk in enumerate(model.blocks):
        if i < n:
            blk.__dict__.pop("forward", None)
        else:
            blk.forward = _skip_block


def _skip_block(x, *args, **kwargs):
    return x


def _rng_state() -> dict:
    import numpy as np
    import torch
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(path: Path, **payload) -> None:
    """torch.save to a temporary name, then an atomic replace (a kill never leaves half a file)."""
    import torch
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    os.replace(tmp, path)


def load_checkpoint(run_dir: str | os.PathLike, map_location="cpu") -> dict:
    """The run's checkpoint (``weights_only=True``). FileNotFoundError when there is none."""
    import torch
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from in {run_dir} "
                                f"(expected {CHECKPOINT_NAME})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpicklable content, truncated file
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format')!r}, expected "
                         f"{CHECKPOINT_FORMAT}")
    return ckpt


def _check_resume(config: TrainConfig, saved: dict) -> None:
    old = TrainConfig.from_dict(saved).to_dict()
    new = config.to_dict()
    for key in FIXED_ON_RESUME:
        if old.get(key) != new.get(key):
            raise ValueError(f"--resume: {key} differs from the checkpoint's "
                             f"({new.get(key)!r} vs {old.get(key)!r}); a resumed run keeps it")


# ---------------------------------------------------------------------------------------------
# torchrun
# ---------------------------------------------------------------------------------------------

def launched_by_torchrun() -> bool:
    """True in a process that torchrun started as one of several ranks (WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


@dataclass
class _Dist:
    """This process's place in the job: rank, world size, and whether `train` made the group."""

    rank: int = 0
    world: int = 1
    owned: bool = False

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist
            dist.barrier()

    def agree(self, *flags: bool, device=None) -> list[bool]:
        """Each flag true on any rank -> true on every rank (one small all-reduce)."""
        if self.world == 1:
            return list(flags)
        import torch
        import torch.distributed as dist
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]


def _init_distributed(config: TrainConfig) -> tuple[_Dist, str]:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT): gloo on the CPU, nccl on CUDA with each rank on
    cuda:LOCAL_RANK. A group the caller already made is used as it is. Returns the rank info and
    the device name this rank trains on."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), owned=False), config.device
    if not launched_by_torchrun():
        return _Dist(), config.device
    if not dist.is_available():
        raise ValueError("started as several ranks (WORLD_SIZE > 1) but this torch build has "
                         "no torch.distributed")
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE > 1 but {', '.join(missing)} not set: start the ranks "
                         "with torchrun (python -m torch.distributed.run)")
    device = config.device
    dev = torch.device(device)
    if dev.type == "cuda":
        if dev.index is not None:
            raise ValueError(f"--device {device} under torchrun: pass --device cuda (each rank "
                             "uses cuda:LOCAL_RANK)")
        local_rank = int(os.environ["LOCAL_RANK"])
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend=backend)
    return _Dist(dist.get_rank(), dist.get_world_size(), owned=True), device


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

def train(config: TrainConfig) -> Path:
    """Train one backbone as `config` says, recording into `config.run`. Returns the run path.

    Raises ValueError / FileExistsError / FileNotFoundError for what the user asked wrongly
    (one-line messages); the run is marked crashed if anything else fails during training.
    Under torchrun every rank calls it; it returns on each rank once the run is closed.
    """
    import torch

    config = dataclasses.replace(
        config, image_size=parse_image_size(config.image_size),
        progressive_depth=parse_depths(config.progressive_depth),
        clip_grad=config.clip_grad if config.clip_grad else None)
    model_depth = validate(config)
    run_dir = Path(config.run)
    ckpt = None
    if config.resume:
        ckpt = load_checkpoint(run_dir)
        _check_resume(config, ckpt["config"])
    elif (run_dir / "manifest.json").exists() and not config.overwrite:
        raise FileExistsError(f"{run_dir} already holds a run: pass --overwrite to replace it "
                              "or --resume to continue it")
    ddp, device_name = _init_distributed(config)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        # Every rank has looked at the run directory before rank 0 writes into it.
        ddp.barrier()
        path = _train(config, model_depth, run_dir, ckpt, torch.device(device_name), ddp)
        ddp.barrier()  # the run is closed on rank 0 before any rank returns
        return path
    finally:
        torch.set_num_threads(threads_before)
        if ddp.owned:
            torch.distributed.destroy_process_group()


def _with_head(backbone):
    """Backbone + its ``reid_head`` as one module, for DDP to wrap: the forward DDP runs must
    produce the loss's inputs, head included, else the head's parameters look unused to it."""
    import torch.nn as nn

    class BackboneWithHead(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return self.backbone.reid_head(self.backbone(x))

    return BackboneWithHead(backbone)


def _train(config: TrainConfig, model_depth: int, run_dir: Path, ckpt: dict | None,
           device, ddp: _Dist) -> Path:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from diagnostics.data import PKSampler, build_dataset
    from diagnostics.metrics import evaluate_features
    from diagnostics.recorder import Recorder
    from diagnostics.reid import BNNeckHead, ReIDLoss

    # Seeds first: model init, then everything else, is a function of the seed.
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    small = config.image_size[0] * config.image_size[1] <= 128 * 64
    data = build_dataset(config.dataset, img_size=config.image_size, seed=config.seed,
                         augment=config.augment, cache=small)
    K = config.num_instances
    P = config.batch_size // K
    if P > data.num_classes:
        raise ValueError(f"--batch-size {config.batch_size} / --num-instances {K} = {P} "
                         f"identities per batch, but {data.spec} has {data.num_classes}")
    # One epoch is about one pass over the data for all ranks together (DistributedSampler's
    # rule): the sampler draws world x steps_per_epoch batches and rank r takes every world-th
    # one from the r-th, so every rank runs the same number of steps.
    one_pass = len(PKSampler(data.train.pids, P, K, seed=config.seed))
    steps_per_epoch = max(1, one_pass // ddp.world)
    sampler = PKSampler(data.train.pids, P, K, seed=config.seed,
                        num_batches=steps_per_epoch * ddp.world)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    eval_every = config.eval_every or max(1, config.epochs // DEFAULT_EVALS_PER_RUN)
    schedule = depth_schedule(config.progressive_depth, model_depth, config.epochs)

    torch.manual_seed(config.seed)
    model = _build_backbone(config)
    if config.generic_init:   # before the head: its init and the data order stay the same
        from models.layers import generic_init
        generic_init(model, config.generic_init, seed=config.seed)
    backbone_params = sum(p.numel() for p in model.parameters())
    model.add_module("reid_head", BNNeckHead(model.num_features, data.num_classes))
    model.to(device)
    if ddp.world > 1:
        from torch.nn.parallel import DistributedDataParallel
        # Progressive depth skips blocks: their parameters get no gradient on some epochs.
        net = DistributedDataParallel(
            _with_head(model), device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(config.progressive_depth))
    else:
        def net(x):
            return model.reid_head(model(x))
    criterion = ReIDLoss(data.num_classes)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps=warmup_steps, total_steps=total_steps,
                                       scheduler=config.scheduler))

    start_epoch, start_batch, start_step = 0, 0, 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, start_batch, start_step = ckpt["epoch"], ckpt["batch"], ckpt["step"]
        _set_rng_state(ckpt["rng"])

    label = config.label or config.backbone
    recorded = dict(config.to_dict(), label=label, steps_per_epoch=steps_per_epoch,
                    warmup_steps=warmup_steps, total_steps=total_steps, eval_every=eval_every,
                    backbone_params=backbone_params, num_classes=data.num_classes,
                    data=data.summary(), depth_schedule=schedule, batch_P=P,
                    world_size=ddp.world)
    # Evaluation batches as large as the training ones: a larger batch would set the peak memory
    # that the comparison table reports (no_grad, so training's peak stays the higher one).
    query_loader = DataLoader(data.query, batch_size=config.batch_size, shuffle=False,
                              num_workers=config.workers)
    gallery_loader = DataLoader(data.gallery, batch_size=config.batch_size, shuffle=False,
                                num_workers=config.workers)

    def evaluate() -> dict:
        model.eval()
        try:
            return evaluate_features(lambda x: model.reid_head(model(x)), query_loader,
                                     gallery_loader, metric="cosine", device=device)
        finally:
            model.train()

    def checkpoint(rec, epoch: int, batch: int, step: int) -> None:
        if ddp.rank != 0:
            return
        # The rows of every step before the checkpoint's go to disk first: a crash then loses
        # no step that a resume would skip (it redoes those after the checkpoint, and drops
        # any the dead attempt flushed). The last step's per-layer rows wait in the recorder
        # for their update ratios, which the optimizer step has filled in by now.
        rec.flush()
        _save_checkpoint(run_dir / CHECKPOINT_NAME, model=model.state_dict(),
                         optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         epoch=epoch, batch=batch, step=step, rng=_rng_state(),
                         config=config.to_dict())

    t0 = time.monotonic()
    budget_s = config.max_minutes * 60 if config.max_minutes else None
    stop_at = min(total_steps, config.max_steps) if config.max_steps else total_steps

    # Scan paths vs attention on fixed probe images (the same for every backbone on the same
    # data and size), at `config.maps` steps spread over the run: the first, the last and
    # evenly between. Rank 0 only; the time it takes falls on the next step's step_time_s.
    maps_due = ([stop_at] if config.maps == 1 else
                sorted({round(i * stop_at / max(config.maps - 1, 1)) for i in range(config.maps)}))
    probe = None
    if config.maps > 0 and ddp.rank == 0:
        from diagnostics.maps import probe_images
        probe = probe_images(config.maps_images, dataset=config.dataset,
                             img_size=tuple(config.image_size), seed=config.seed)

    def snapshot_maps(rec, step: int, final: bool = False) -> None:
        if probe is None or not maps_due or (step < maps_due[0] and not final):
            return
        from diagnostics.maps import record_maps
        record_maps(run_dir, model, probe, step, backbone=config.backbone, name=label,
                    ig_steps=16)
        while maps_due and maps_due[0] <= step:
            maps_due.pop(0)
        rec.heartbeat()
    model.train()
    with Recorder(model, run_dir, probe_every=config.probe_every, config=recorded,
                  backbone=config.backbone, overwrite=config.overwrite,
                  resume=config.resume, start_step=start_step) as rec:
        if ckpt is not None:
            rec.event("resume", f"resumed from the checkpoint at step {start_step} "
                                f"(epoch {start_epoch}, batch {start_batch}); "
                                f"{rec.rows_dropped_on_resume} rows recorded after it by the "
                                f"previous attempt dropped")
        bar = tqdm(total=stop_at, initial=min(start_step, stop_at),
                   disable=config.quiet or ddp.rank != 0,
                   desc=label, unit="step", dynamic_ncols=True, leave=True)
        step, epoch, batch_i = start_step, start_epoch, start_batch
        stopped = None        # why training ended early: "max-steps", "time", "nonfinite"
        evaluated_at = None   # (epoch, step) of the last evaluation
        depth_now = None
        try:
            snapshot_maps(rec, step)
            for epoch in range(start_epoch, config.epochs):
                if step >= stop_at:
                    stopped = stopped or "max-steps"
                    break
                d = active_depth(schedule, epoch)
                if d != depth_now:
                    _set_active_blocks(model, d)
                    if depth_now is not None or d < model_depth:
                        rec.event("note", f"progressive depth: {d} of {model_depth} blocks "
                                          f"active from epoch {epoch}")
                    depth_now = d
                sampler.set_epoch(epoch)
                data.train.set_epoch(epoch)
                batches = list(sampler)[ddp.rank::ddp.world]
                batches = batches[(start_batch if epoch == start_epoch else 0):]
                loader = DataLoader(data.train, batch_sampler=batches, num_workers=config.workers)
                batch_i = start_batch if epoch == start_epoch else 0
                for images, pids, _ in loader:
                    images, pids = images.to(device), pids.to(device)
                    optimizer.zero_grad(set_to_none=True)
                    global_feat, _, logits = net(images)
                    loss = criterion(global_feat, logits, pids)
                    loss.backward()
                    gnorm = rec.step(loss, optimizer=optimizer, clip_grad=config.clip_grad,
                                     epoch=epoch)
                    loss_v = float(loss.detach())
                    finite = math.isfinite(loss_v) and math.isfinite(gnorm)
                    time_up = budget_s is not None and time.monotonic() - t0 > budget_s
                    if ddp.world > 1:  # every rank takes the same decisions
                        bad, time_up = ddp.agree(not finite, time_up, device=device)
                        finite = not bad
                    if finite:
                        optimizer.step()
                    scheduler.step()
                    step += 1
                    batch_i += 1
                    bar.update(1)
                    bar.set_postfix(ep=epoch, loss=f"{loss_v:.3f}",
                                    lr=f"{optimizer.param_groups[0]['lr']:.2e}",
                                    gn=f"{gnorm:.2f}", refresh=False)
                    if not finite:
                        what = "loss" if not math.isfinite(loss_v) else "gradient norm"
                        if config.on_nonfinite == "stop":
                            rec.event("nonfinite", f"non-finite {what} at step {step - 1}: "
                                                   "training stopped (--on-nonfinite stop)")
                            stopped = "nonfinite"
                            break
                        rec.event("nonfinite", f"non-finite {what} at step {step - 1}: "
                                               "update skipped (--on-nonfinite continue)")
                    if step >= stop_at:
                        stopped = "max-steps" if step < total_steps else None
                        break
                    if time_up:
                        stopped = "time"
                        break
                if stopped == "nonfinite":
                    break
                epoch_done = batch_i >= steps_per_epoch
                if epoch_done and ((epoch + 1) % eval_every == 0 or epoch + 1 == config.epochs):
                    if ddp.rank == 0:
                        _log_eval(rec, evaluate(), epoch, bar, config.quiet)
                    evaluated_at = (epoch, step)
                if step < stop_at:
                    snapshot_maps(rec, step)
                checkpoint(rec, epoch + 1 if epoch_done else epoch, 0 if epoch_done else batch_i,
                           step)
                ddp.barrier()  # the other ranks wait for rank 0's evaluation and checkpoint
                if stopped or step >= stop_at:
                    break
            if stopped == "nonfinite":
                rec.event("stop", f"stopped at step {step} (epoch {epoch}): non-finite values",
                          where="nonfinite")
                rec.close("diverged")
            else:
                if evaluated_at != (epoch, step) and ddp.rank == 0:
                    _log_eval(rec, evaluate(), epoch, bar, config.quiet)
                snapshot_maps(rec, step, final=True)
                if stopped:
                    why = (f"--max-steps {config.max_steps}" if stopped == "max-steps"
                           else f"--max-minutes {config.max_minutes:g}")
                    # where = the reason, for tables: max-steps, time
                    rec.event("stop", f"stopped early by {why} at step {step} (epoch {epoch})",
                              where=stopped)
        finally:
            bar.close()
    return run_dir


def _log_eval(rec, result: dict, epoch: int, bar, quiet: bool) -> None:
    rec.log_eval(epoch=epoch, mAP=result["mAP"], rank1=result["rank1"], rank5=result["rank5"],
                 rank10=result["rank10"])
    if not quiet:
        bar.write(f"{bar.desc}: epoch {epoch}: mAP {result['mAP']:.1f}  "
                  f"Rank-1 {result['rank1']:.1f}  Rank-5 {result['rank5']:.1f}")


# ---------------------------------------------------------------------------------------------
# compare and the summary table
# ---------------------------------------------------------------------------------------------

def run_name(backbone: str) -> str:
    """Directory name of a backbone's run: 'MAMBA-V2' -> 'mamba_v2'."""
    return re.sub(r"[^a-z0-9]+", "_", backbone.lower()).strip("_")


def _train_child(config: TrainConfig, conn) -> None:  # pragma: no cover - runs in a subprocess
    try:
        path = train(config)
        conn.send(("ok", str(path)))
    except KeyboardInterrupt:
        conn.send(("error", "interrupted"))
    except BaseException as e:  # noqa: BLE001 - reported to the parent in one line
        conn.send(("error", f"{type(e).__name__}: {' '.join(str(e).split())}"))
        raise
    finally:
        conn.close()


def _train_isolated(config: TrainConfig) -> Path:
    """`train(config)` in a fresh process (spawn): each run's peak memory (process max RSS on the
    CPU) is its own, and a crash in one run leaves the others alone."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_train_child, args=(config, child), name=f"train-{config.backbone}")
    proc.start()
    child.close()
    try:
        msg = parent.recv() if parent.poll(None) else ("error", "no answer")
    except EOFError:
        msg = ("error", f"training process died (exit status {proc.exitcode})")
    proc.join()
    if msg[0] != "ok":
        raise RuntimeError(f"{config.backbone}: {msg[1]}")
    return Path(msg[1])


def compare(backbones: Sequence[str], runs_dir: str | os.PathLike, base: TrainConfig,
            *, labels: dict[str, str] | None = None, isolate: bool = True,
            budget_minutes: float | None = None, on_error=None) -> list[Path]:
    """Train each backbone with the same settings into ``runs_dir/<name>``, one after another.

    Args:
        backbones: registered names.
        runs_dir: parent directory of the runs.
        base: the shared settings (its ``backbone``, ``run`` and ``label`` are replaced).
        labels: table labels per backbone (default: the name).
        isolate: each run in its own process (see `_train_isolated`); False trains in-process.
        budget_minutes: wall-clock budget for all runs: each run gets an equal share of what is
            left (``max_minutes``), so a slow machine shortens runs rather than overrunning.
        on_error: called ``(backbone, exception)`` when a run fails; default: raise.
    Returns the run paths that were written.
    """
    labels = labels or {}
    configs = []
    for b in backbones:
        cfg = dataclasses.replace(base, backbone=b, run=str(Path(runs_dir) / run_name(b)),
                                  label=labels.get(b))
        validate(dataclasses.replace(cfg, image_size=parse_image_size(cfg.image_size),
                                     progressive_depth=parse_depths(cfg.progressive_depth)))
        configs.append(cfg)
    paths = []
    t0 = time.monotonic()
    for i, cfg in enumerate(configs):
        if budget_minutes is not None:
            left = budget_minutes - (time.monotonic() - t0) / 60
            share = max(0.1, left / (len(configs) - i))
            cfg = dataclasses.replace(cfg, max_minutes=min(share, cfg.max_minutes or math.inf))
        try:
            paths.append(_train_isolated(cfg) if isolate else train(cfg))
        except (KeyboardInterrupt, ValueError, FileExistsError, FileNotFoundError):
            raise
        except Exception as e:  # noqa: BLE001
            if on_error is None:
                raise
            on_error(cfg.backbone, e)
            if (Path(cfg.run) / "manifest.json").exists():
                paths.append(Path(cfg.run))
    return paths


SUMMARY_COLUMNS = ("run", "backbone", "label", "status", "stopped", "epochs", "steps", "mAP",
                   "rank1",
                   "best_mAP", "best_epoch", "epochs_to_90", "grad_cv", "clipped_frac",
                   "steps_per_s", "params", "peak_mem_mb", "nonfinite_steps")


def summary_table(run_paths: Sequence[str | os.PathLike]) -> "pandas.DataFrame":  # noqa: F821
    """The seed's comparison table from run directories, one row per run.

    Columns: ``run, backbone, label, status, epochs`` (epochs trained, partial ones counted),
    ``stopped`` (why training ended before --epochs: ``max-steps``, ``time``, ``nonfinite``;
    ``""`` when it ran to the end), ``steps, mAP, rank1`` (last evaluation, percent), ``best_mAP, best_epoch`` (0-based),
    ``epochs_to_90`` (epochs trained when mAP first reached 90 % of its best, counted from 1),
    ``grad_cv`` (coefficient of variation of the gradient norm after warm-up: std / mean over
    the steps from ``warmup_steps`` on; all steps when the config has no warm-up record),
    ``clipped_frac``, ``steps_per_s`` (1 / median step time), ``params`` (backbone parameters,
    the re-ID head excluded), ``peak_mem_mb`` (the largest recorded: CUDA peak, or process max
    RSS on the CPU), ``nonfinite_steps``. NaN where a run has no data for a column.
    """
    import numpy as np
    import pandas as pd

    from diagnostics.runfmt import load_run

    rows = []
    for path in run_paths:
        run = load_run(path)
        m, cfg = run.manifest, run.manifest.get("config") or {}
        steps, ev = run.steps, run.eval
        row: dict[str, Any] = dict(run=run.name, backbone=m.get("backbone"),
                                   label=cfg.get("label") or m.get("backbone"), status=run.status)
        row["steps"] = int(len(steps))
        stops = run.events[run.events["kind"] == "stop"] if len(run.events) else run.events
        row["stopped"] = str(stops["where"].iloc[-1]) if len(stops) else ""
        if len(steps):
            spe = cfg.get("steps_per_epoch")
            row["epochs"] = (len(steps) / spe) if spe else float(steps["epoch"].max() + 1)
        else:
            row["epochs"] = 0.0
        if len(ev):
            ev = ev.sort_values("step")
            last = ev.iloc[-1]
            row["mAP"], row["rank1"] = float(last["mAP"]), float(last["rank1"])
            best = ev.loc[ev["mAP"].idxmax()]
            row["best_mAP"], row["best_epoch"] = float(best["mAP"]), int(best["epoch"])
            reached = ev[ev["mAP"] >= 0.9 * best["mAP"]].iloc[0]
            row["epochs_to_90"] = int(reached["epoch"]) + 1
        gn = steps["grad_norm"] if len(steps) else pd.Series(dtype=float)
        warm = cfg.get("warmup_steps")
        if warm is not None and len(steps):
            gn = steps.loc[steps["step"] >= warm, "grad_norm"]
        gn = gn[np.isfinite(gn)]
        row["grad_cv"] = float(gn.std() / gn.mean()) if len(gn) >= 2 and gn.mean() > 0 else math.nan
        if len(steps):
            # steps that did not record clipping (a loop without a clip) say nothing: NaN
            clipped = steps["clipped"].astype("boolean").dropna()
            row["clipped_frac"] = float(clipped.mean()) if len(clipped) else math.nan
            st = steps["step_time_s"]
            st = st[np.isfinite(st) & (st > 0)]
            row["steps_per_s"] = float(1.0 / st.median()) if len(st) else math.nan
            row["peak_mem_mb"] = float(steps["peak_mem_mb"].max())
            row["nonfinite_steps"] = int(steps["nonfinite"].astype("boolean").fillna(False).sum())
        row["params"] = cfg.get("backbone_params") or (m.get("model") or {}).get("params")
        rows.append(row)
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def print_summary(df, console=None, title: str = "backbones compared") -> None:
    """The summary table, with rich."""
    from rich.table import Table

    console = console or results_console()

    def num(v, fmt):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    t = Table(title=title)
    cols = (("backbone", "left"), ("status", "left"), ("mAP", "right"), ("Rank-1", "right"),
            ("best mAP (ep)", "right"), ("epochs to 90%", "right"), ("grad-norm CV", "right"),
            ("clipped", "right"), ("steps/s", "right"), ("params", "right"),
            ("peak mem", "right"), ("epochs", "right"))
    for name, just in cols:
        t.add_column(name, justify=just, no_wrap=name == "backbone")
    for r in df.to_dict("records"):
        best = "-" if _nan(r["best_mAP"]) else f"{r['best_mAP']:.1f} ({int(r['best_epoch'])})"
        t.add_row(str(r["label"]), str(r["status"]), num(r["mAP"], ".1f"), num(r["rank1"], ".1f"),
                  best, "-" if _nan(r["epochs_to_90"]) else str(int(r["epochs_to_90"])),
                  num(r["grad_cv"], ".2f"),
                  "-" if _nan(r["clipped_frac"]) else f"{100 * r['clipped_frac']:.0f}%",
                  num(r["steps_per_s"], ".2f"),
                  "-" if _nan(r["params"]) else f"{r['params'] / 1e6:.2f} M",
                  "-" if _nan(r["peak_mem_mb"]) else f"{r['peak_mem_mb']:.0f} MB",
                  num(r["epochs"], ".1f"))
    console.print(t)


def results_console():
    """A rich console for result tables: piped output gets 150 columns instead of rich's 80
    (too narrow for twelve columns); a real terminal keeps its own width."""
    from rich.console import Console
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _nan(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------

def _add_training_options(p: argparse.ArgumentParser) -> None:
    """The options shared by train and compare. Defaults are None: TrainConfig holds the real
    defaults, and --resume can tell what was given."""
    d = TrainConfig()
    a = p.add_argument
    a("--dataset", help=f"synthetic[:N_IDS], market1501:PATH, dukemtmc:PATH, imagefolder:PATH, "
                        f"digits (default {d.dataset})")
    a("--lr", type=float, help=f"peak learning rate of AdamW (default {d.lr:g})")
    a("--batch-size", type=int, help=f"images per batch, P identities x K (default {d.batch_size})")
    a("--num-instances", type=int, metavar="K",
      help=f"images per identity in a batch (default {d.num_instances})")
    a("--epochs", type=int, help=f"epochs (default {d.epochs})")
    a("--warmup-epochs", type=float,
      help=f"linear warm-up epochs, 0 for none (default {d.warmup_epochs:g})")
    a("--scheduler", choices=SCHEDULERS, help=f"lr schedule after warm-up (default {d.scheduler})")
    a("--clip-grad", type=float, metavar="NORM",
      help=f"clip the global gradient norm, 0 for no clipping (default {d.clip_grad:g})")
    a("--weight-decay", type=float, help=f"AdamW weight decay (default {d.weight_decay:g})")
    a("--progressive-depth", metavar="D1,D2,...",
      help="train with the first D1 blocks, then D2, ... at evenly spaced epochs (e.g. 4,6,8)")
    a("--augment", choices=AUGMENTS, help=f"training augmentation (default {d.augment})")
    a("--image-size", metavar="HxW", help="input size (default 256x128)")
    a("--patch-size", type=int, help="patch side (default: the model's, 16)")
    a("--depth", type=int, help="number of blocks (default: the backbone's)")
    a("--maps", type=int, metavar="N",
      help=f"map snapshots (scan paths vs attention) over the run, 0 for none (default {d.maps})")
    a("--vim-buggy-init", action="store_true", default=None,
      help="VIM-S/VIM-T only: leave the backward scan's dt_proj_b bias at zero, as the public "
           "Vim code does (dt = softplus(0) = 0.69), to see what the analyzers say")
    a("--probe-every", type=int, metavar="N",
      help=f"probe SSM and attention layers every N steps, 0 for never (default {d.probe_every})")
    a("--eval-every", type=int, metavar="E",
      help=f"evaluate every E epochs (default: about {DEFAULT_EVALS_PER_RUN} times a run)")
    a("--seed", type=int, help=f"seed of init, sampling and augmentation (default {d.seed})")
    a("--device", help=f"cpu, cuda, cuda:1, ... (default {d.device})")
    a("--max-steps", type=int, metavar="N", help="stop after N optimizer steps in all")
    a("--max-minutes", type=float, metavar="M", help="stop cleanly after M minutes of training")
    a("--on-nonfinite", choices=ON_NONFINITE,
      help="on a non-finite loss or gradient: stop, marking the run diverged (default), "
           "or skip the update and continue")
    a("--workers", type=int, help="DataLoader workers (default 0)")
    a("--threads", type=int, help="torch CPU threads (default: torch's; 1 is often fastest for "
                                  "tiny models on a busy machine)")
    a("--overwrite", action="store_true", default=None, help="replace an existing run")
    a("--quiet", action="store_true", default=None, help="no progress bar")


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    if name == "train":
        p.add_argument("--backbone", help="VIT-S, MAMBA-S, MAMBA-V2, or a tiny preset "
                                          "(VIT-T, MAMBA-S-T, MAMBA-V2-T)")
        p.add_argument("--run", metavar="PATH", help="run directory to write (e.g. runs/mamba_v2)")
        p.add_argument("--resume", action="store_true", default=None,
                       help="continue the run in --run from its checkpoint")
    else:
        p.add_argument("--backbones", default="VIT-S,MAMBA-S,MAMBA-V2",
                       help="comma-separated backbones (default VIT-S,MAMBA-S,MAMBA-V2)")
        p.add_argument("--runs-dir", default="runs/compare", metavar="PATH",
                       help="parent of the runs, one per backbone (default runs/compare)")
        p.add_argument("--in-process", action="store_true",
                       help="train in this process instead of one subprocess per backbone "
                            "(peak memory then accumulates across runs)")
        p.add_argument("--table-only", action="store_true",
                       help="do not train: print the table of the runs already in --runs-dir")
    _add_training_options(p)


_CONFIG_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from parsed arguments; with --resume, unspecified options come from the
    run's checkpoint."""
    given = {k: v for k, v in vars(args).items() if k in _CONFIG_KEYS and v is not None}
    if "image_size" in given:
        given["image_size"] = parse_image_size(given["image_size"])
    if "progressive_depth" in given:
        given["progressive_depth"] = parse_depths(given["progressive_depth"])
    if given.get("clip_grad") == 0:
        given["clip_grad"] = None
    base: dict = {}
    if given.get("resume"):
        if not given.get("run"):
            raise ValueError("--resume needs --run PATH")
        base = load_checkpoint(given["run"])["config"]
        for k in ("resume", "overwrite", "quiet", "max_steps", "max_minutes"):
            base.pop(k, None)
    return TrainConfig.from_dict({**base, **given})


def main(args: argparse.Namespace, name: str) -> int:
    console = results_console()
    if name == "train":
        if not args.backbone and not args.resume:
            raise ValueError("diagnose train needs --backbone NAME (e.g. MAMBA-V2)")
        if not args.run:
            raise ValueError("diagnose train needs --run PATH (e.g. runs/mamba_v2)")
        config = config_from_args(args)
        path = train(config)
        if int(os.environ.get("RANK", "0")) != 0:
            return 0  # under torchrun rank 0 speaks for the run
        print_summary(summary_table([path]), console, title=f"run {path}")
        console.print(f"run written to {path}  (analyse it: diagnose --run {path})")
        return 0

    if launched_by_torchrun():
        raise ValueError("diagnose compare trains one backbone after another: start it without "
                         "torchrun (or run `diagnose train` per backbone under torchrun)")
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if not backbones:
        raise ValueError("--backbones is empty")
    if len(set(backbones)) != len(backbones):
        raise ValueError("--backbones lists a backbone twice")
    failed: list[str] = []
    if args.table_only:
        paths = [Path(args.runs_dir) / run_name(b) for b in backbones]
    else:
        config = config_from_args(args)
        paths = compare(backbones, args.runs_dir, config, isolate=not args.in_process,
                        on_error=lambda b, e: failed.append(f"{b}: {e}"))
        for f in failed:
            console.print(f"[red]failed[/red] {f}")
    print_summary(summary_table(paths), console,
                  title=f"{', '.join(backbones)}: same settings ({args.runs_dir})")
    return 1 if failed else 0

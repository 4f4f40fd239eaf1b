"""The Recorder: what happens inside a model while it trains, written into a run directory.

Three lines in any training loop::

    rec = Recorder(model, run_dir="runs/mamba_v2", probe_every=50, config=vars(args))
    for batch in loader:
        loss = criterion(model(x), y); loss.backward()
        rec.step(loss, optimizer=opt, clip_grad=1.0)    # after backward, before opt.step()
        opt.step(); opt.zero_grad()
    rec.close()        # or `with Recorder(...) as rec:`; an exception marks the run crashed

What is recorded (columns in docs/interfaces.md):

- every step (cheap): loss, lr, global gradient norm before clipping and whether clipping fired,
  step time, samples/s, peak memory, and the first non-finite value (loss, a gradient, or the
  first module in forward order whose output went non-finite from finite inputs);
- every `layer_every` steps (default 10), per block and per parameter kind (`A_log`, `D`, `dt_proj`, ...):
  gradient norm, weight norm, and the update-to-weight ratio of the optimizer step (from hooks
  on the optimizer's `step`, so it is the real update, whatever the optimizer);
- on probe steps (every `probe_every` steps, step 0 included): for every SSM layer (any module
  with `A_log` and `dt_proj`) and scan direction, dt and A·dt quantiles, decay fractions, memory
  length, selectivity, hidden-state norms along the sequence and A_log drift from step 0; for
  attention layers, entropy, mean attention distance and the maximum logit. Probes recompute
  these from the layer's input (captured by a forward pre-hook on the first `probe_batch`
  samples) and the layer's own parameters after the step, with our own scan: the model's
  own forward is untouched, so its outputs and gradients are bit-identical with and without the
  recorder.

Under torch.distributed only rank 0 writes. What is per rank and what is reduced: gradients,
weights and updates are identical on every rank after DDP's all-reduce, so they are rank 0's;
the loss is averaged over ranks (one all-reduce of a scalar per step); probes, step time,
throughput and peak memory are rank 0's own (its local batch; samples/s is multiplied by the
world size). No collective runs on probe steps, so ranks cannot deadlock there.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import re
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from diagnostics import probes
from diagnostics.runfmt import RunWriter

log = logging.getLogger(__name__)

# Parameter kinds recorded per layer, matched in this order against the parameter's name inside
# its block (dt_proj before proj: "dt_proj.weight" contains "proj"). The SSM names are
# mamba-ssm's; "_b" suffixes (bidirectional Mamba's backward direction) map to the same kind.
PARAM_GROUPS = (
    ("A_log", re.compile(r"(^|\.)A(_b)?_logs?$")),
    ("D", re.compile(r"(^|\.)Ds?(_b)?$")),
    ("dt_proj", re.compile(r"dt_projs?(_b)?\.")),
    ("x_proj", re.compile(r"x_projs?(_b)?\.")),
    ("in_proj", re.compile(r"in_proj")),
    ("out_proj", re.compile(r"out_proj")),
    ("conv", re.compile(r"conv")),
    ("norm", re.compile(r"norm")),
    ("qkv", re.compile(r"qkv")),
    ("mlp", re.compile(r"mlp|fc\d")),
    ("proj", re.compile(r"proj")),
)
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _group_of(name: str) -> tuple[int, str]:
    """(layer, group) of a parameter name: layer = index in `model.blocks`, -1 outside."""
    m = _BLOCK.match(name)
    if not m:
        return -1, name.split(".")[0]
    layer, rest = int(m.group(1)), m.group(2)
    for group, pattern in PARAM_GROUPS:
        if pattern.search(rest):
            return layer, group
    return layer, "other"


def _layer_of(module_name: str) -> int:
    m = re.match(r"^blocks\.(\d+)(\.|$)", module_name)
    return int(m.group(1)) if m else -1


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last call: CUDA allocator peak on GPU, process max RSS on the CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    # ru_maxrss is KiB on Linux and never decreases: on the CPU this is the process peak so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _all_finite(x) -> bool:
    if isinstance(x, torch.Tensor):
        return not x.is_floating_point() or bool(torch.isfinite(x).all())
    if isinstance(x, (tuple, list)):
        return all(_all_finite(t) for t in x)
    if isinstance(x, dict):
        return all(_all_finite(t) for t in x.values())
    return True


class Recorder:
    """Records a model's training into `run_dir` (see the module docstring).

    Args:
        model: the model being trained (a DDP wrapper is unwrapped).
        run_dir: the run directory to create, e.g. ``runs/mamba_v2``.
        probe_every: probe SSM and attention layers every this many steps (0 disables probes).
        layer_every: record per-layer norms and update ratios every this many steps (the
            update ratio needs a copy of the weights on those steps).
        probe_batch: samples of the batch that probes use (they pay for a second scan).
        config: the run's configuration (stored in the manifest).
        backbone: the backbone's name for the manifest (default: config["backbone"] or the class).
        check_activations: when the model's output is non-finite, name the first module whose
            output went non-finite from finite inputs.
        overwrite, resume: passed to the writer (an existing run is never clobbered silently).
        start_step: the step to continue from when resuming; rows of later steps that the
            previous attempt recorded are dropped.
        flush_every_s: how often buffered rows reach the disk (a crash loses at most this much).
    """

    def __init__(self, model: nn.Module, run_dir: str | os.PathLike, *, probe_every: int = 50,
                 layer_every: int = 10, probe_batch: int = 8, config: dict | None = None,
                 backbone: str | None = None, check_activations: bool = True,
                 overwrite: bool = False, resume: bool = False, flush_every_s: float = 2.0,
                 start_step: int = 0):
        if probe_every < 0 or layer_every < 1 or probe_batch < 1:
            raise ValueError("probe_every must be >= 0, layer_every and probe_batch >= 1")
        self.model = model.module if hasattr(model, "module") and isinstance(
            model, nn.parallel.DistributedDataParallel) else model
        self.run_dir = Path(run_dir)
        self.probe_every, self.layer_every, self.probe_batch = probe_every, layer_every, probe_batch
        self.rank, self.world_size = _dist_rank_world()
        self.enabled = self.rank == 0
        self.step_index = start_step
        self.diverged = False
        self._closed = False
        self._device = next(self.model.parameters()).device
        config = dict(config or {})

        # Parameters and their (layer, group), once.
        self._names, self._params = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                self._names.append(name)
                self._params.append(p)
        keys = sorted({_group_of(n) for n in self._names})
        self._group_keys = keys
        index = {k: i for i, k in enumerate(keys)}
        self._group_index = torch.tensor([index[_group_of(n)] for n in self._names])
        self._layers = sorted({k[0] for k in keys if k[0] >= 0})

        # SSM and attention layers, found by what they are.
        self._ssm = [(n, m) for n, m in self.model.named_modules() if probes.is_ssm_module(m)]
        self._attn = [(n, m) for n, m in self.model.named_modules() if probes.is_attention_module(m)]
        alog_path = self.run_dir / "alog_init.pt"
        if resume and alog_path.exists():
            self._alog_init = torch.load(alog_path, weights_only=True)
        else:
            self._alog_init = {n: probes.stacked_A_log(m) for n, m in self._ssm}
        directions = sorted({d for _, m in self._ssm for d in getattr(
            m, "directions", ["fwd", "bwd"] if hasattr(m, "A_b_log") else ["fwd"])})

        manifest = dict(
            name=self.run_dir.name,
            backbone=backbone or config.get("backbone") or type(self.model).__name__,
            config=config, versions=_versions(), device=str(self._device),
            scan_backend=_scan_backend(self._device), world_size=self.world_size,
            probe_every=probe_every, layer_every=layer_every,
            model=dict(params=sum(p.numel() for p in self.model.parameters()),
                       num_layers=len(getattr(self.model, "blocks", [])),
                       ssm_layers=[n for n, _ in self._ssm],
                       attention_layers=[n for n, _ in self._attn], directions=directions),
        )
        self.writer = RunWriter(self.run_dir, manifest=manifest, overwrite=overwrite,
                                resume=resume, flush_every_s=flush_every_s, enabled=self.enabled)
        self.rows_dropped_on_resume = 0
        if resume and start_step:
            # The attempt that died may have recorded steps past the checkpoint it is resumed
            # from; they are recorded again now, so they go first (each step recorded once).
            self.rows_dropped_on_resume = self.writer.rewind(start_step)
        if self.enabled and not (resume and alog_path.exists()):
            tmp = alog_path.with_suffix(".pt.tmp")     # atomic, like every file of the run
            torch.save(self._alog_init, tmp)
            os.replace(tmp, alog_path)

        # Hooks (all removed on close).
        self._hooks = []
        self._captured: dict[str, torch.Tensor] = {}
        self._nonfinite_module: str | None = None
        self._batch_size: int | None = None
        self._t_last: float | None = None
        self._hooks.append(self.model.register_forward_pre_hook(self._on_model_forward))
        for name, m in self._ssm + self._attn:
            self._hooks.append(m.register_forward_pre_hook(self._capture_hook(name)))
        if check_activations:
            # Each module's hook only keeps a reference to (inputs, output); the model's own
            # output is checked once at the end of the forward, and only when it is non-finite
            # are the kept outputs searched. A healthy step pays a list append per module.
            for name, m in self.model.named_modules():
                if name:
                    self._hooks.append(m.register_forward_hook(self._keep_hook(name)))
            self._hooks.append(self.model.register_forward_hook(self._on_model_output))
        self._kept: list[tuple[str, tuple, object]] = []
        self._optimizer = None
        self._snapshot = None
        self._pending_layers: list[dict] | None = None
        self._pending_weight_sq: torch.Tensor | None = None

    # ---------------------------------------------------------------- hooks
    def _probe_now(self) -> bool:
        return self.enabled and self.probe_every > 0 and self.step_index % self.probe_every == 0

    def _on_model_forward(self, module, args):
        if self._t_last is None:
            self._t_last = time.perf_counter()
        if args and isinstance(args[0], torch.Tensor):
            self._batch_size = args[0].shape[0]

    def _capture_hook(self, name):
        def hook(module, args):
            if self._probe_now() and args and isinstance(args[0], torch.Tensor):
                self._captured[name] = args[0][: self.probe_batch].detach()
        return hook

    def _keep_hook(self, name):
        def hook(module, args, output):
            self._kept.append((name, args, output))
        return hook

    def _on_model_output(self, module, args, output):
        kept, self._kept = self._kept, []   # released here: nothing is held through backward
        if self._nonfinite_module is not None or _all_finite(output):
            return
        # Blame the first module (in the order forwards finish) whose output is non-finite
        # although its inputs were finite: a child fed by non-finite values is not the source.
        for name, inputs, out in kept:
            if not _all_finite(out) and _all_finite(inputs):
                self._nonfinite_module = name
                return

    def _on_opt_pre(self, optimizer, args, kwargs):
        if self._pending_layers is not None:
            self._snapshot = [p.detach().clone() for p in self._params]

    def _on_opt_post(self, optimizer, args, kwargs):
        if self._snapshot is None or self._pending_layers is None:
            return
        with torch.no_grad():
            delta = torch._foreach_sub([p.detach() for p in self._params], self._snapshot)
            upd_sq = self._grouped_sq(delta)
        self._snapshot = None
        ratio = (upd_sq.sqrt() / self._pending_weight_sq.sqrt().clamp_min(1e-30)).tolist()
        for row in self._pending_layers:
            if "_g" in row:
                row["update_ratio"] = ratio[row["_g"]]
        self._fill_block_updates(upd_sq)

    # ---------------------------------------------------------------- per step
    def _grouped_sq(self, tensors) -> torch.Tensor:
        """Sum of squares of each parameter group: (num_groups,) float64 on the CPU."""
        norms = torch.stack([n.float() for n in torch._foreach_norm(tensors)]).double().cpu()
        out = torch.zeros(len(self._group_keys), dtype=torch.float64)
        return out.index_add_(0, self._group_index, norms.pow(2))

    def _fill_block_updates(self, upd_sq):
        for row in self._pending_layers:
            if row["group"] == "block":
                sel = [i for i, k in enumerate(self._group_keys) if k[0] == row["layer"]]
                row["update_ratio"] = math.sqrt(float(upd_sq[sel].sum())) / max(
                    row["weight_norm"], 1e-30)

    def _commit_layers(self):
        if self._pending_layers:
            for row in self._pending_layers:
                row.pop("_g", None)
            self.writer.extend("layers", self._pending_layers)
        self._pending_layers = None

    def step(self, loss, *, lr: float | None = None, optimizer=None, clip_grad: float | None = None,
             grad_norm: float | None = None, batch_size: int | None = None,
             epoch: int | None = None) -> float:
        """Record one optimizer step; call after `backward()` and before `optimizer.step()`.

        Args:
            loss: the step's loss (tensor or float).
            lr: learning rate (default: the optimizer's first param group).
            optimizer: the optimizer; enables update-to-weight ratios.
            clip_grad: clip gradients to this global norm here (replaces `clip_grad_norm_`).
            grad_norm: the pre-clipping norm, if you clipped yourself before this call.
        Returns the global gradient norm before clipping.
        """
        if self._closed:
            raise RuntimeError("Recorder.step() after close()")
        self._commit_layers()
        step = self.step_index
        now = time.perf_counter()
        step_time = now - self._t_last if self._t_last is not None else float("nan")
        self._t_last = now

        if optimizer is not None and optimizer is not self._optimizer:
            self._optimizer = optimizer
            self._hooks.append(optimizer.register_step_pre_hook(self._on_opt_pre))
            self._hooks.append(optimizer.register_step_post_hook(self._on_opt_post))
        if lr is None and optimizer is not None:
            lr = optimizer.param_groups[0]["lr"]

        loss_t = loss.detach().float() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        if self.world_size > 1:  # the loss is per rank: report the mean over ranks
            loss_t = loss_t.clone().to(self._device)
            torch.distributed.all_reduce(loss_t)
            loss_t = loss_t / self.world_size
        loss_v = float(loss_t)

        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device)
                     for p in self._params]
            per_param = torch.stack([n.float() for n in torch._foreach_norm(grads)]).double().cpu()
            total = float(per_param.pow(2).sum().sqrt()) if grad_norm is None else float(grad_norm)
            clipped = False
            if clip_grad is not None and math.isfinite(total):
                clipped = total > clip_grad
                torch.nn.utils.clip_grads_with_norm_(
                    [p for p in self._params if p.grad is not None], clip_grad,
                    torch.tensor(total))

        where = ""
        if not math.isfinite(loss_v):
            where = "loss"
        bad = (~torch.isfinite(per_param)).nonzero()
        if len(bad):
            where = where or f"grad:{self._names[int(bad[0])]}"
        if self._nonfinite_module is not None:
            # The activation is the earliest cause when there is one.
            where = f"act:{self._nonfinite_module}"
        if where:
            if not math.isfinite(loss_v):
                self.diverged = True
            self.writer.append("events", dict(step=step, kind="nonfinite", where=where,
                                              message=f"non-finite value first seen in {where}"))

        bsz = batch_size if batch_size is not None else self._batch_size
        self.writer.append("steps", dict(
            step=step, time=time.time(), epoch=-1 if epoch is None else int(epoch), loss=loss_v,
            lr=float("nan") if lr is None else float(lr), grad_norm=total,
            clip=float("nan") if clip_grad is None else float(clip_grad), clipped=bool(clipped),
            step_time_s=step_time,
            samples_per_s=(bsz * self.world_size / step_time) if bsz and step_time > 0 else float("nan"),
            peak_mem_mb=_peak_memory_mb(self._device), nonfinite=bool(where),
            nonfinite_where=where))

        if self.enabled and step % self.layer_every == 0:
            self._record_layers(step, per_param)
        if self._probe_now():
            self._record_probes(step)
        self._captured.clear()
        self._nonfinite_module = None
        self.step_index += 1
        return total

    def _record_layers(self, step: int, per_param: torch.Tensor):
        grad_sq = torch.zeros(len(self._group_keys), dtype=torch.float64).index_add_(
            0, self._group_index, per_param.pow(2))
        with torch.no_grad():
            weight_sq = self._grouped_sq([p.detach() for p in self._params])
        rows = []
        for g, (layer, group) in enumerate(self._group_keys):
            rows.append(dict(step=step, layer=layer, group=group,
                             grad_norm=math.sqrt(grad_sq[g]), weight_norm=math.sqrt(weight_sq[g]),
                             update_ratio=float("nan"), _g=g))
        for layer in self._layers:
            sel = [g for g, k in enumerate(self._group_keys) if k[0] == layer]
            rows.append(dict(step=step, layer=layer, group="block",
                             grad_norm=math.sqrt(grad_sq[sel].sum()),
                             weight_norm=math.sqrt(weight_sq[sel].sum()), update_ratio=float("nan")))
        self._pending_layers = rows
        self._pending_weight_sq = weight_sq

    @torch.no_grad()
    def _record_probes(self, step: int):
        with torch.autocast(self._device.type, enabled=False):
            for name, module in self._ssm:
                x = self._captured.get(name)
                if x is None:
                    continue
                inputs = probes.scan_inputs(module, x.float())
                for row in probes.ssm_stats(inputs, self._alog_init.get(name)):
                    curve = row.pop("_state_curve")
                    layer = _layer_of(name)
                    self.writer.append("ssm", dict(step=step, layer=layer, module=name, **row))
                    self.writer.extend("ssm_state", [
                        dict(step=step, layer=layer, direction=row["direction"], pos=p, state_norm=v)
                        for p, v in curve])
            grid = getattr(self.model, "grid_size", None)
            prefix = getattr(self.model, "num_prefix_tokens", 0)
            for name, module in self._attn:
                x = self._captured.get(name)
                if x is None or grid is None:
                    continue
                probs, logit_max = module.attention_probs(x.float())
                stats = probes.attention_stats(probs, logit_max, tuple(grid), prefix)
                self.writer.append("attention", dict(step=step, layer=_layer_of(name),
                                                     module=name, **stats))

    # ---------------------------------------------------------------- other records
    def log_eval(self, *, epoch: int, mAP: float, rank1: float, rank5: float = float("nan"),
                 rank10: float = float("nan"), step: int | None = None):
        """Record an evaluation (percentages)."""
        self.writer.append("eval", dict(step=self.step_index - 1 if step is None else step,
                                        epoch=int(epoch), mAP=float(mAP), rank1=float(rank1),
                                        rank5=float(rank5), rank10=float(rank10)))
        self.writer.flush()

    def flush(self):
        """Put every recorded row on disk now (before a checkpoint: a crash then loses no step
        that a resume from that checkpoint would skip)."""
        self._commit_layers()
        self.writer.flush()

    def heartbeat(self):
        """Tell readers the run is alive during long stretches without steps (evaluation)."""
        self.writer.heartbeat()

    def event(self, kind: str, message: str, where: str = ""):
        self.writer.append("events", dict(step=self.step_index, kind=kind, where=where,
                                          message=message))

    def close(self, status: str | None = None):
        """Flush, remove every hook and set the final status (default finished, or diverged)."""
        if self._closed:
            return
        self._closed = True
        self._commit_layers()
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self.writer.close(status or ("diverged" if self.diverged else "finished"))

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close("crashed" if exc_type is not None else None)
        return False


def _scan_backend(device: torch.device) -> str:
    from models.scan import resolve_backend
    return resolve_backend("auto", device)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    try:
        out["mambascope"] = version("mambascope")
    except PackageNotFoundError:
        out["mambascope"] = "unknown"
    return out

"""`diagnose maps`: scan paths against attention maps of trained runs, from their checkpoints.

    diagnose maps --run runs/mamba_v2 [--run runs/vit_s] [--images 4 | --images 0,7,12]
                  [--checkpoint PATH ...] [--dataset synthetic] [--image-size 256x128]
                  [--methods saliency,integrated_gradients] [--ig-steps 32] [--grad-batch 4]
                  [--no-erf] [--out PATH] [--no-html] [--no-save] [--device cpu]
                  [--format table|json]

For each run: the backbone is built from the manifest (``backbone``, image size from ``config``),
its weights loaded from the checkpoint (``torch.load(..., weights_only=True)``), and the maps of
`diagnostics.maps` computed on a few fixed probe images of the run's dataset (the synthetic
data by default: it has foreground masks). They are written into the run as
``runs/NAME/maps/step-<step>.npz`` (`diagnostics.maps.load_maps` reads them back), the comparison
numbers are printed, and an HTML page with the maps side by side is written (offline: plotly.js
inlined).

`main` only parses arguments; `run_maps` does the work and is what tests call.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["add_arguments", "main", "run_maps", "MapsResult", "parse_images", "find_checkpoint",
           "load_backbone", "section_html", "page_html"]

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
TRAIN_CHECKPOINT = "checkpoint.pt"      # what diagnostics.train writes
# Keys under which training scripts keep the model's weights in a checkpoint dict.
STATE_DICT_KEYS = ("model", "state_dict", "model_state", "model_state_dict", "backbone", "net")
STEP_KEYS = ("step", "global_step", "last_step")
DEFAULT_IMAGES = "4"


# --------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------

def parse_images(text: str) -> tuple[int | None, list[int] | None]:
    """``"4"`` -> (4, None): four images evenly spaced over the probe split; ``"0,7,12"`` ->
    (None, [0, 7, 12]): those items."""
    text = str(text).strip()
    try:
        if "," in text:
            idx = [int(t) for t in text.split(",") if t.strip()]
            if not idx or min(idx) < 0:
                raise ValueError
            return None, idx
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--images {text!r}: expected a count N or indices I,J,... (non-negative ints)"
        ) from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--images {text!r}: need at least one image")
    return n, None


def _parse_size(text: str) -> tuple[int, int]:
    from diagnostics.commands import parse_size
    return parse_size(text)


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    # dests are prefixed: the top-level parser has its own --run/--out/--format.
    p.add_argument("--run", dest="maps_runs", action="append", required=True, metavar="PATH",
                   help="run directory (repeat to compare backbones on the same images; the "
                        "first attention backbone is the reference of the correlations)")
    p.add_argument("--checkpoint", dest="maps_checkpoints", action="append", metavar="PATH",
                   help="weights of each --run, in the same order (default: the newest "
                        "*.pt/*.pth/*.ckpt in the run directory)")
    p.add_argument("--images", dest="maps_images", type=parse_images,
                   default=parse_images(DEFAULT_IMAGES), metavar="N|I,J,...",
                   help="probe images: a count, evenly spaced over the dataset's query split, "
                        f"or item indices (default {DEFAULT_IMAGES})")
    p.add_argument("--dataset", dest="maps_dataset", default=None, metavar="SPEC",
                   help="dataset of the probe images (default: the run's config 'dataset', "
                        "else 'synthetic', which has foreground masks)")
    p.add_argument("--image-size", dest="maps_image_size", type=_parse_size, default=None,
                   metavar="HxW", help="input size (default: the run's config, else the model's)")
    p.add_argument("--methods", dest="maps_methods", default="saliency,integrated_gradients",
                   help="captum attributions, comma-separated, or 'none'")
    p.add_argument("--ig-steps", dest="maps_ig_steps", type=int, default=32, metavar="N",
                   help="Integrated Gradients steps (default 32)")
    p.add_argument("--grad-batch", dest="maps_grad_batch", type=int, default=4, metavar="N",
                   help="images per forward/backward of the attributions and the ERF (memory: "
                        "MAMBA-V2 at 256x128 takes about 0.4 GB per image; default 4)")
    p.add_argument("--no-erf", dest="maps_erf", action="store_false",
                   help="skip the effective receptive field")
    p.add_argument("--out", dest="maps_out", default=None, metavar="PATH",
                   help="HTML page (default RUN/maps/maps.html for one run, "
                        "reports/maps_A_vs_B.html for several)")
    p.add_argument("--no-html", dest="maps_html", action="store_false", help="write no HTML page")
    p.add_argument("--no-save", dest="maps_save", action="store_false",
                   help="do not write the maps into the run directories")
    p.add_argument("--device", dest="maps_device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--format", dest="maps_format", choices=("table", "json"), default="table",
                   help="the numbers as a terminal table, or JSON on stdout")


# --------------------------------------------------------------------------------------------
# loading a run's model
# --------------------------------------------------------------------------------------------

def find_checkpoint(run_dir: str | os.PathLike) -> Path:
    """`diagnose train`'s ``checkpoint.pt`` in the run directory, else the newest checkpoint file
    there or in its ``checkpoints/`` folder."""
    run = Path(run_dir)
    if (run / TRAIN_CHECKPOINT).is_file():
        return run / TRAIN_CHECKPOINT
    found = [p for d in (run, run / "checkpoints") if d.is_dir() for p in d.iterdir()
             if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES]
    if not found:
        raise FileNotFoundError(f"{run}: no checkpoint (*.pt, *.pth, *.ckpt) in the run directory; "
                                "pass --checkpoint PATH")
    return max(found, key=lambda p: (p.stat().st_mtime, p.name))


def _state_dict_of(obj) -> tuple[dict, int | None]:
    """(weights, step) from what torch.load returned: a state dict, or a dict holding one."""
    import torch

    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    step = next((int(obj[k]) for k in STEP_KEYS if isinstance(obj.get(k), (int, float))
                 and not isinstance(obj.get(k), bool)), None)
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, step
    for key in STATE_DICT_KEYS:
        sd = obj.get(key)
        if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
            return sd, step
    raise ValueError(f"checkpoint has no state dict (looked at the top level and under "
                     f"{', '.join(STATE_DICT_KEYS)}; keys: {', '.join(map(str, list(obj)[:10]))})")


def _strip_prefix(sd: dict, model_keys: Sequence[str]) -> dict:
    """Keys as the backbone names them: drop a wrapper's prefix (``module.`` of DDP,
    ``_orig_mod.`` of torch.compile, ``backbone.`` of a re-ID model around the backbone)."""
    keys = set(model_keys)
    if keys <= set(sd):
        return {k: sd[k] for k in keys}
    probe = sorted(keys, key=len, reverse=True)[0]     # a long, specific key
    for k in sd:
        if k.endswith("." + probe):
            prefix = k[: -len(probe)]
            stripped = {kk[len(prefix):]: v for kk, v in sd.items() if kk.startswith(prefix)}
            if keys <= set(stripped):
                return {kk: stripped[kk] for kk in keys}
    missing = sorted(keys - set(sd))
    raise ValueError(f"the checkpoint does not hold this backbone's weights ({len(missing)} "
                     f"missing, e.g. {', '.join(missing[:3])})")


def _config_size(config: dict) -> tuple[int, int] | None:
    for key in ("img_size", "image_size", "input_size"):
        v = config.get(key)
        if isinstance(v, str):
            try:
                return _parse_size(v)
            except argparse.ArgumentTypeError:
                continue
        if isinstance(v, (list, tuple)) and len(v) == 2:
            return int(v[0]), int(v[1])
        if isinstance(v, int):
            return v, v
    return None


def load_backbone(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None, *,
                  image_size: tuple[int, int] | None = None, device: str = "cpu"):
    """(model in eval mode, manifest, step) of a run: built from the manifest's ``backbone`` and
    ``config`` (``image_size``, ``patch_size``, ``depth`` as `diagnose train` records them, and
    ``model_kwargs`` if present), weights from the checkpoint (`diagnose train`'s
    ``checkpoint.pt``: the state dict under ``model``, extra keys such as ``reid_head.*``
    ignored)."""
    import torch

    from diagnostics.runfmt import load_run
    from models import build_model

    run = load_run(run_dir)
    manifest = run.manifest
    backbone = manifest.get("backbone")
    if not isinstance(backbone, str) or not backbone:
        raise ValueError(f"{run_dir}: the manifest names no backbone")
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    model_kwargs = config.get("model_kwargs")
    kwargs = dict(model_kwargs) if isinstance(model_kwargs, dict) else {}
    for key in ("patch_size", "depth"):          # diagnose train's config keys
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            kwargs[key] = config[key]
    size = image_size or _config_size(config)
    if size:
        kwargs["img_size"] = tuple(size)
    model = build_model(backbone, **kwargs)
    ckpt = Path(checkpoint) if checkpoint else find_checkpoint(run_dir)
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # unpickling refused, truncated file, not a torch file
        raise ValueError(f"{ckpt}: cannot load the checkpoint ({type(e).__name__}: {e})") from None
    sd, step = _state_dict_of(obj)
    sd = _strip_prefix(sd, list(model.state_dict()))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{ckpt}: weights do not fit {backbone} {kwargs or ''} "
                         f"({str(e).splitlines()[-1].strip()}); is --image-size right?") from None
    if step is None and isinstance(manifest.get("last_step"), int):
        step = manifest["last_step"]
    return model.to(device).eval(), manifest, step


# --------------------------------------------------------------------------------------------
# the work
# --------------------------------------------------------------------------------------------

@dataclass
class MapsResult:
    """What `run_maps` computed and wrote."""
    sets: list = field(default_factory=list)          # MapSet per run
    scores: object = None                              # compare_maps' DataFrame
    saved: list[Path] = field(default_factory=list)    # npz files written into the runs
    page: Path | None = None                           # the HTML page


def run_maps(runs: Sequence[str | os.PathLike], *, checkpoints: Sequence[str] | None = None,
             n_images: int | None = 4, indices: Sequence[int] | None = None,
             dataset: str | None = None, image_size: tuple[int, int] | None = None,
             methods: Sequence[str] = ("saliency", "integrated_gradients"), ig_steps: int = 32,
             erf: bool = True, save: bool = True, html_out: str | os.PathLike | None = None,
             write_html: bool = True, device: str = "cpu", grad_batch: int = 4) -> MapsResult:
    """Maps of each run's checkpoint on the same probe images, their comparison, written out."""
    import pandas as pd

    from diagnostics import maps as M

    runs = [Path(r) for r in runs]
    if not runs:
        raise ValueError("diagnose maps needs at least one --run")
    if checkpoints and len(checkpoints) != len(runs):
        raise ValueError(f"{len(checkpoints)} --checkpoint for {len(runs)} --run: give one per "
                         "run, in the same order, or none")
    if ig_steps < 1 or grad_batch < 1:
        raise ValueError(f"--ig-steps and --grad-batch must be >= 1, got {ig_steps}, {grad_batch}")
    unknown = [m for m in methods if m not in M.ATTRIBUTION_METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {', '.join(unknown)} (known: "
                         f"{', '.join(M.ATTRIBUTION_METHODS)}, or none)")
    result = MapsResult()
    probes: dict[tuple, object] = {}
    for i, run in enumerate(runs):
        model, manifest, step = load_backbone(run, checkpoints[i] if checkpoints else None,
                                              image_size=image_size, device=device)
        config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
        run_dataset = config.get("dataset") if isinstance(config.get("dataset"), str) else None
        spec = dataset or run_dataset or "synthetic"
        key = (spec, tuple(model.img_size))
        if key not in probes:
            probes[key] = M.probe_images(n_images, dataset=spec, img_size=model.img_size,
                                         indices=indices)
        log.info("maps of %s (%s, step %s) on %s", run, manifest.get("backbone"), step, spec)
        ms = M.compute_maps(model, probes[key], backbone=str(manifest.get("backbone")),
                            name=str(manifest.get("name") or run.name), step=step,
                            attribution_methods=tuple(methods), ig_steps=ig_steps, erf=erf,
                            grad_batch=grad_batch)
        result.sets.append(ms)
        if save:
            path = M.maps_dir(run) / f"step-{int(step if step is not None else 0):08d}.npz"
            result.saved.append(M.save_maps(ms, path))
    if len(probes) > 1:
        log.warning("the runs differ in dataset or image size: each is scored on its own")
        result.scores = pd.concat([M.compare_maps([s]) for s in result.sets], ignore_index=True)
    else:
        result.scores = M.compare_maps(result.sets)
    if write_html:
        out = Path(html_out) if html_out else (
            M.maps_dir(runs[0]) / "maps.html" if len(runs) == 1 else
            Path("reports") / ("maps_" + "_vs_".join(_safe(r.name) for r in runs) + ".html"))
        title = "Scan paths vs attention: " + ", ".join(s.label for s in result.sets)
        _write_text(out, page_html(result.sets, result.scores, title=title))
        result.page = out
    return result


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "run"


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# HTML: the section (for the report) and a page of its own
# --------------------------------------------------------------------------------------------

SECTION_INTRO = (
    "Mamba's hidden attention (the matrix its selective scan applies, averaged over channels; "
    "SS2D: the four scan directions put back on the image and summed) next to ViT's attention "
    "(averaged over heads), per layer and rolled out over the layers, with gradient attributions "
    "(captum) and effective receptive fields on the same probe images. Maps are the row of the "
    "token each head reads (ViT: cls; mean-pooled backbones: the mean of the rows). Numbers: "
    "correlation with the reference backbone for the same query token (own key left out), mean "
    "attention distance (patches), entropy (nats), and the pointing game / mask energy against "
    "the foreground masks (mask_frac: what a uniform map scores).")


def section_html(sets: Sequence, scores=None, *, images: Sequence[int] = (0,),
                 notes: Sequence[str] = (), section_id: str = "maps",
                 heading: str = "Scan paths vs attention") -> str:
    """The "scan paths vs attention" section as an HTML fragment: figures as ``<div>``s that
    need plotly.js already on the page (the report inlines it once), and the numbers table.
    `sets`, `scores`, `notes`: as `diagnostics.maps.maps_for_report` returns them. Every string
    from a run is escaped."""
    from diagnostics import maps as M
    from diagnostics import maps_figures as MF

    notes_html = "".join(f'<p class="muted">{html.escape(n)}</p>' for n in notes)
    if not sets:
        return (f'<section id="{html.escape(section_id)}"><h2>{html.escape(heading)}</h2>'
                f'<p class="muted">No maps recorded (diagnose maps --run RUN computes them from '
                f'a checkpoint).</p>{notes_html}</section>')
    if scores is None:
        scores = M.compare_maps(sets)
    figs = []
    for i in images:
        if 0 <= i < sets[0].num_images:
            figs.append(MF.map_panels_figure(sets, i))
    figs.append(MF.scores_figure(scores))
    ssm = next((s for s in sets if s.direction_maps is not None), None)
    if ssm is not None:
        figs.append(MF.direction_figure(ssm, images[0] if images else 0,
                                        layer=len(ssm.layer_ids) - 1))
    if any(s.erf is not None for s in sets):
        figs.append(MF.erf_figure(sets))
    divs = "".join(f'<div class="fig">{f.to_html(full_html=False, include_plotlyjs=False)}</div>'
                   for f in figs)
    return (f'<section id="{html.escape(section_id)}"><h2>{html.escape(heading)}</h2>'
            f'<p class="desc">{html.escape(SECTION_INTRO)}</p>{notes_html}{divs}'
            f'{table_html(M.comparison_table(scores))}</section>')


def table_html(wide, digits: int = 3) -> str:
    """A DataFrame as a plain escaped HTML table (numbers right-aligned)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in wide.columns)
    body = []
    for row in wide.itertuples(index=False):
        cells = []
        for v in row:
            if isinstance(v, float):
                cells.append(f'<td class="num">{"" if math.isnan(v) else f"{v:.{digits}f}"}</td>')
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="maps"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def page_html(sets: Sequence, scores=None, *, title: str = "Scan paths vs attention") -> str:
    """A self-contained page (plotly.js inlined once: opens offline) around `section_html`."""
    from plotly.offline import get_plotlyjs

    first = range(min(3, sets[0].num_images)) if sets else ()

    css = ("body{font-family:sans-serif;margin:24px;font-size:14px}"
           "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:3px 7px}"
           "td.num{text-align:right;font-variant-numeric:tabular-nums}.desc{max-width:1100px}")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{css}</style>"
            f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
            f"<h1>{html.escape(title)}</h1>"
            f"{section_html(sets, scores, images=first)}"
            "</body></html>")


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def _map_order(kind: str) -> int:
    order = {"layer": 0, "rollout": 1, "saliency": 2, "integrated_gradients": 3, "erf": 4}
    return order.get(kind, len(order))


def main(args, name) -> int:
    methods = [] if args.maps_methods.strip().lower() in ("", "none") else [
        m.strip() for m in args.maps_methods.split(",") if m.strip()]
    n, idx = args.maps_images
    result = run_maps(args.maps_runs, checkpoints=args.maps_checkpoints, n_images=n, indices=idx,
                      dataset=args.maps_dataset, image_size=args.maps_image_size,
                      methods=methods, ig_steps=args.maps_ig_steps, erf=args.maps_erf,
                      save=args.maps_save, html_out=args.maps_out, write_html=args.maps_html,
                      device=args.maps_device, grad_batch=args.maps_grad_batch)
    if args.maps_format == "json":
        payload = dict(scores=json.loads(result.scores.to_json(orient="records")),
                       saved=[str(p) for p in result.saved],
                       page=str(result.page) if result.page else None)
        print(json.dumps(payload, indent=1))
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    scores = result.scores.sort_values(["map", "layer"], kind="stable",
                                       key=lambda c: c.map(_map_order) if c.name == "map" else c)
    t = Table(title="scan paths vs attention (corr: with the reference backbone)")
    heads = {"backbone": "backbone", "map": "map", "layer": "layer", "entropy": "entropy",
             "mean_distance": "dist", "pointing": "point", "mask_energy": "energy",
             "mask_frac": "mask", "corr": "corr", "corr_center": "corr ctr",
             "corr_output": "corr out"}
    for c, h in heads.items():
        t.add_column(h, justify="left" if c in ("backbone", "map") else "right",
                     no_wrap=c in ("backbone", "map"))
    for row in scores[list(heads)].itertuples(index=False):
        t.add_row(*[("" if v != v else f"{v:.3f}") if isinstance(v, float) else escape(str(v))
                    for v in row])
    con = Console(highlight=False)
    con.print(t)
    for p in result.saved:
        con.print(f"maps written: {escape(str(p))}")
    if result.page:
        con.print(f"page: {escape(str(result.page))}")
    return 0

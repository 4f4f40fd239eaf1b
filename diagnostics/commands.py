"""Small subcommands: `diagnose models`."""

from __future__ import annotations

import argparse


def parse_size(text: str) -> tuple[int, int]:
    """'256x128' -> (256, 128) (height x width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size {text!r} is not HEIGHTxWIDTH, e.g. 256x128")
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"image size {text!r} must be positive")
    return h, w


def add_arguments(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--image-size", type=parse_size, default=None, metavar="HxW",
                   help="image size for the token count (default: each model's, 256x128)")
    p.add_argument("--device", default="cpu", help="device whose scan backend to report")


def model_table(image_size=None, device="cpu"):
    """One row per registered backbone, as a list of dicts (what `diagnose models` prints)."""
    import torch

    from diagnostics import probes
    from models import build_model, list_models
    from models.scan import resolve_backend

    rows = []
    for name in list_models():
        kw = {"img_size": image_size} if image_size else {}
        with torch.device("meta"):   # sizes only: no memory, no init cost
            m = build_model(name, **kw)
        ssm = [mod for mod in m.modules() if probes.is_ssm_module(mod)]
        attn = [mod for mod in m.modules() if probes.is_attention_module(mod)]
        gh, gw = m.grid_size
        rows.append(dict(
            name=name, params_m=sum(p.numel() for p in m.parameters()) / 1e6,
            depth=len(m.blocks), width=m.num_features, image=f"{m.img_size[0]}x{m.img_size[1]}",
            tokens=gh * gw + m.num_prefix_tokens, ssm_layers=len(ssm), attention_layers=len(attn),
            scan_backend=resolve_backend("auto", device) if ssm else "-"))
    return rows


def main(args, name) -> int:
    from rich.console import Console
    from rich.table import Table

    rows = model_table(args.image_size, args.device)
    t = Table(title="registered backbones")
    for col, just in (("name", "left"), ("params", "right"), ("depth", "right"),
                      ("dim", "right"), ("image", "right"), ("tokens", "right"),
                      ("SSM", "right"), ("attn", "right"), ("scan", "left")):
        t.add_column(col, justify=just)
    for r in rows:
        t.add_row(r["name"], f"{r['params_m']:.2f} M", str(r["depth"]), str(r["width"]),
                  r["image"], str(r["tokens"]), str(r["ssm_layers"]), str(r["attention_layers"]),
                  r["scan_backend"])
    Console().print(t)
    return 0

"""Figures of scan paths against attention maps (plotly). Functions of `diagnostics.maps.MapSet`s
and of `compare_maps`' table that return Figures; no I/O.

- `map_panels_figure`: for one probe image, a row per backbone: the image, each layer's map,
  the rollout and the attributions, side by side on the image.
- `direction_figure`: one SS2D layer's four scan directions and their merged map, for a query.
- `erf_figure`: the effective receptive fields side by side.
- `scores_figure`: the comparison numbers per layer, a line per backbone.
- `scores_table_figure`: `comparison_table` as a plotly table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from diagnostics.maps import MapSet, comparison_table

__all__ = ["map_panels_figure", "direction_figure", "erf_figure", "scores_figure",
           "scores_table_figure"]

COLORSCALE = "Inferno"
SHORT_NAMES = {"integrated_gradients": "IG", "saliency": "saliency"}
OPACITY = 0.6          # of a map drawn over its image
PANEL_PX = 150         # height of one panel row, pixels


def _image_uint8(ms: MapSet, i: int) -> np.ndarray | None:
    if ms.images is None:
        return None
    return (np.clip(ms.images[i].transpose(1, 2, 0), 0, 1) * 255).round().astype(np.uint8)


def _image_trace(img: np.ndarray) -> go.Image:
    """An image as an inline PNG (a few kB, where a JSON array of pixels takes hundreds)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return go.Image(source=src, hoverinfo="skip")


def _img_hw(ms: MapSet) -> tuple[int, int]:
    if ms.images is not None:
        return tuple(ms.images.shape[-2:])
    if ms.masks is not None:
        return tuple(ms.masks.shape[-2:])
    return ms.grid_size[0] * ms.patch_size, ms.grid_size[1] * ms.patch_size


def _norm(z: np.ndarray) -> np.ndarray:
    """Scaled to its maximum and stored as uint8 0..255 (plotly writes numpy arrays as compact
    typed arrays: a 256x128 map takes 44 kB instead of about 600 kB of float text)."""
    z = np.nan_to_num(np.asarray(z, dtype=np.float64).clip(min=0))
    top = z.max() if z.size else 0.0
    return (z / top * 255 if top > 0 else z).round().astype(np.uint8)


def _add_map(fig, row: int, col: int, ms: MapSet, i: int, z: np.ndarray, *, pixel: bool,
             query: int | None = None, name: str = "") -> None:
    """Draw map z (patch grid (gh, gw) or pixels (H, W)) over image i of ms at (row, col)."""
    img = _image_uint8(ms, i)
    if img is not None:
        fig.add_trace(_image_trace(img), row=row, col=col)
    step = 1 if pixel else ms.patch_size
    off = 0 if pixel else (ms.patch_size - 1) / 2
    fig.add_trace(go.Heatmap(z=_norm(z), x0=off, dx=step, y0=off, dy=step, zmin=0, zmax=255,
                             colorscale=COLORSCALE, showscale=False, name=name,
                             opacity=OPACITY if img is not None else 1.0,
                             hovertemplate=f"{name}<br>x %{{x}}, y %{{y}}: %{{z}}/255 of the max"
                                           "<extra></extra>"),
                  row=row, col=col)
    if query is not None:
        gw = ms.grid_size[1]
        qy, qx = divmod(query, gw)
        fig.add_trace(go.Scatter(x=[qx * ms.patch_size + off], y=[qy * ms.patch_size + off],
                                 mode="markers", marker=dict(symbol="x", size=9, color="cyan"),
                                 showlegend=False, hoverinfo="skip"), row=row, col=col)


def _style(fig, rows: int, cols: int, hw: tuple[int, int], title: str) -> go.Figure:
    H, W = hw
    fig.update_xaxes(visible=False, range=[-0.5, W - 0.5], constrain="domain")
    fig.update_yaxes(visible=False, range=[H - 0.5, -0.5], scaleanchor="x", constrain="domain")
    # every subplot keeps the image's aspect ratio
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            idx = (r - 1) * cols + c
            fig.update_yaxes(scaleanchor=f"x{'' if idx == 1 else idx}", row=r, col=c)
    fig.update_layout(title=title, height=PANEL_PX * 1.6 * rows + 80,
                      width=max(500, 95 * cols + 120), margin=dict(l=10, r=10, t=70, b=10),
                      showlegend=False, template="plotly_white")
    return fig


def _row_map(maps: np.ndarray, i: int, query: int | None, grid: tuple[int, int]) -> np.ndarray:
    """maps (B, P, P) -> the (gh, gw) map of the query row, or of the output row when None."""
    return maps[i, query].reshape(grid)


def map_panels_figure(sets: Sequence[MapSet], image_index: int = 0, *,
                      query: int | None = None, layers: Sequence[int] | None = None,
                      attributions: bool = True) -> go.Figure:
    """One probe image, a row per backbone: the image, each layer's map, the rollout, and the
    attributions, drawn over the image (each panel scaled to its own maximum).

    query: a patch index (row-major): show that token's row of each map; None (default): the
    output map, the row of the token the backbone's head reads (cls, or the mean of the rows).
    layers: positions in each set's layer list to show (default: all).
    """
    if not sets:
        raise ValueError("map_panels_figure needs at least one MapSet")
    n_layers = max(len(s.layer_ids) for s in sets)
    layer_pos = list(layers) if layers is not None else list(range(n_layers))
    methods = list(dict.fromkeys(m for s in sets for m in s.attributions)) if attributions else []
    titles_cols = (["image"] + [f"layer {p}" for p in layer_pos] + ["rollout"]
                   + [SHORT_NAMES.get(m, m) for m in methods])
    cols = len(titles_cols)
    titles = []
    for s in sets:
        titles += [f"{s.label}" if c == 0 else t for c, t in enumerate(titles_cols)]
    fig = make_subplots(rows=len(sets), cols=cols, subplot_titles=titles,
                        horizontal_spacing=0.01, vertical_spacing=0.06)
    for r, s in enumerate(sets, start=1):
        if not 0 <= image_index < s.num_images:
            raise ValueError(f"image_index {image_index} outside 0..{s.num_images - 1}")
        grid = tuple(s.grid_size)
        img = _image_uint8(s, image_index)
        if img is not None:
            fig.add_trace(_image_trace(img), row=r, col=1)
        if s.masks is not None:
            fig.add_trace(go.Contour(z=s.masks[image_index].astype(np.uint8), autocontour=False,
                                     contours=dict(start=0.5, end=0.5, size=1, coloring="lines"),
                                     colorscale=[[0, "lime"], [1, "lime"]], line=dict(width=1.5),
                                     showscale=False, hoverinfo="skip"), row=r, col=1)
        for c, p in enumerate(layer_pos, start=2):
            if p >= len(s.layer_ids):
                continue
            z = (s.output_layers[p, image_index].reshape(grid) if query is None
                 else _row_map(s.layers[p], image_index, query, grid))
            _add_map(fig, r, c, s, image_index, z, pixel=False, query=query,
                     name=f"{s.label} layer {int(s.layer_ids[p])}")
        c = len(layer_pos) + 2
        z = (s.output_rollout[image_index].reshape(grid) if query is None
             else _row_map(s.rollout, image_index, query, grid))
        _add_map(fig, r, c, s, image_index, z, pixel=False, query=query, name=f"{s.label} rollout")
        for j, m in enumerate(methods):
            if m in s.attributions:
                _add_map(fig, r, c + 1 + j, s, image_index, s.attributions[m][image_index],
                         pixel=True, name=f"{s.label} {m}")
    what = "output token" if query is None else f"query patch {query}"
    return _style(fig, len(sets), cols, _img_hw(sets[0]),
                  f"Scan paths vs attention: image {image_index} ({what})")


def direction_figure(ms: MapSet, image_index: int = 0, layer: int = 0, *,
                     query: int | None = None) -> go.Figure:
    """One SSM layer (position `layer` in the set): each scan direction's map and the merged map
    for a query patch (default: the central patch), on the image."""
    if ms.direction_maps is None:
        raise ValueError(f"{ms.label} has no scan directions (kind {ms.kind!r})")
    gh, gw = ms.grid_size
    query = (gh // 2) * gw + gw // 2 if query is None else int(query)
    names = list(ms.directions) + ["merged"]
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=names, horizontal_spacing=0.01)
    for c, name in enumerate(names, start=1):
        maps = ms.layers[layer] if name == "merged" else ms.direction_maps[layer, c - 1]
        _add_map(fig, 1, c, ms, image_index, _row_map(maps, image_index, query, (gh, gw)),
                 pixel=False, query=query, name=name)
    return _style(fig, 1, len(names), _img_hw(ms),
                  f"{ms.label}: scan directions of layer {int(ms.layer_ids[layer])}, "
                  f"image {image_index}, query patch {query}")


def erf_figure(sets: Sequence[MapSet]) -> go.Figure:
    """Effective receptive fields side by side, as VMamba shows them: ``log10(erf + 1)`` scaled
    to [0, 1] per backbone."""
    have = [s for s in sets if s.erf is not None]
    if not have:
        raise ValueError("none of the MapSets has an ERF")
    fig = make_subplots(rows=1, cols=len(have), subplot_titles=[s.label for s in have],
                        horizontal_spacing=0.02)
    for c, s in enumerate(have, start=1):
        z = np.log10(np.asarray(s.erf, dtype=np.float64) + 1.0)
        fig.add_trace(go.Heatmap(z=_norm(z), zmin=0, zmax=255, colorscale="Viridis",
                                 showscale=c == len(have),
                                 colorbar=dict(tickvals=[0, 255], ticktext=["0", "max"])),
                      row=1, col=c)
    return _style(fig, 1, len(have), tuple(have[0].erf.shape), "Effective receptive field")


_SCORE_PANELS = (("corr", "corr. with reference, same query"), ("entropy", "entropy (nats)"),
                 ("mean_distance", "mean attention distance (patches)"),
                 ("mask_energy", "mask energy of the output map"))


def scores_figure(scores) -> go.Figure:
    """`compare_maps`' per-layer numbers: four panels (correlation with the reference, entropy,
    mean distance, mask energy), a line per backbone over the layers; the rollout as a marker at
    the right end."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in _SCORE_PANELS],
                        vertical_spacing=0.15, horizontal_spacing=0.1)
    palette = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
    for bi, (backbone, df) in enumerate(scores.groupby("backbone", sort=False)):
        color = palette[bi % len(palette)]
        layers = df[df["map"] == "layer"].sort_values("layer")
        roll = df[df["map"] == "rollout"]
        x_roll = (layers["layer"].max() + 1.5) if len(layers) else 0
        for k, (col, _) in enumerate(_SCORE_PANELS):
            r, c = divmod(k, 2)
            fig.add_trace(go.Scatter(x=layers["layer"], y=layers[col], mode="lines+markers",
                                     name=backbone, legendgroup=backbone, showlegend=k == 0,
                                     line=dict(color=color)), row=r + 1, col=c + 1)
            if len(roll):
                fig.add_trace(go.Scatter(x=[x_roll], y=roll[col], mode="markers",
                                         marker=dict(symbol="diamond", size=10, color=color),
                                         name=f"{backbone} rollout", legendgroup=backbone,
                                         showlegend=False), row=r + 1, col=c + 1)
    fig.update_xaxes(title_text="layer (diamond: rollout)")
    fig.update_layout(title="Scan paths vs attention, per layer", height=560,
                      template="plotly_white", margin=dict(l=50, r=10, t=70, b=40))
    return fig


def scores_table_figure(scores, digits: int = 3) -> go.Figure:
    """`comparison_table(scores)` as a plotly table."""
    wide = comparison_table(scores)
    cells = [wide[c].map(lambda v: "" if v != v else (f"{v:.{digits}f}" if isinstance(v, float)
                                                      else str(v))) for c in wide.columns]
    fig = go.Figure(go.Table(header=dict(values=list(wide.columns), align="left"),
                             cells=dict(values=cells, align="left")))
    fig.update_layout(title="Scan paths vs attention: numbers", margin=dict(l=10, r=10, t=50, b=10),
                      height=120 + 28 * len(wide))
    return fig

"""Every figure of mambascope, in one module: the HTML report and the Streamlit app both call it.

Each figure is a plain function ``fn(runs) -> plotly.graph_objects.Figure | None`` taking one
loaded :class:`~diagnostics.runfmt.Run` or a list of them (anything with ``.name``,
``.manifest`` and the run's DataFrames will do), doing no I/O. Several runs share one figure on
shared axes: curves are overlaid (one colour per run), heatmaps sit side by side with one colour
scale. Each figure declares the columns it needs (Cockpit's habit) and returns ``None`` quietly
when none of the runs recorded them, so callers just skip it.

    from diagnostics import figures
    fig = figures.training_curves([run_a, run_b])        # or figures.FIGURES["training_curves"]
    for spec in figures.FIGURES.values():                 # in the report's reading order
        if spec.available(runs): fig = spec(runs)

The Remedies view of a `diagnose sweep` has its own figures, :data:`REMEDY_FIGURES`, which take
the sweep (:func:`diagnostics.sweep.load_sweep`) instead of runs: ``fig = spec(sweep)``.

Every string that comes from a run (names, module names) is escaped for plotly's text renderer
(``&``, ``<``, ``>``), so a run named ``<script>`` is shown as text wherever the figure goes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from diagnostics.analyzers import (ERASED_DECAY, FRAC_ERASED_WARN, FRAC_FROZEN_WARN, FROZEN_DECAY,
                                   UPDATE_RATIO_WARN)

__all__ = ["FIGURES", "SECTIONS", "FigureSpec", "available_figures", "run_labels", "plot_text",
           "RUN_COLORS", "REMEDY_FIGURES", "RemedyFigure", "variant_colors"]

RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
              "#17becf")
RUN_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
TEMPLATE = "plotly_white"
MAX_POINTS = 4000
"""Longest trace drawn: longer series are thinned (every k-th point), events are always kept."""
MAX_HEATMAP_COLUMNS = 400
"""Heatmaps bin steps into at most this many columns (median per bin)."""
LOG_FLOOR = 1e-12
"""Values at or below zero are drawn at this floor on log axes."""

SECTIONS = {
    "training": "Training: loss, learning rate, gradient norm, evaluation",
    "layers": "Layers: gradient norms and updates across depth",
    "ssm": "SSM internals: dt, A·dt, decay, state norms",
    "alog": "A_log drift",
    "attention": "ViT attention statistics",
}
"""Sections of figures, in the report's reading order."""


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def plot_text(text: Any) -> str:
    """Run-provided text made safe for plotly's (HTML-like) text renderer."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def run_labels(runs: Sequence[Any]) -> list[str]:
    """Display labels (escaped for plotly), unique: the run's name, '#2' appended on clashes."""
    out, seen = [], {}
    for r in runs:
        name = str(getattr(r, "name", "run"))
        seen[name] = seen.get(name, 0) + 1
        out.append(plot_text(name if seen[name] == 1 else f"{name} #{seen[name]}"))
    return out


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def _layer_colors(layers: Sequence[int]) -> dict[int, str]:
    layers = sorted(set(int(x) for x in layers))
    if len(layers) == 1:
        return {layers[0]: "#440154"}
    # Viridis without its pale yellow end, which vanishes on white
    cols = sample_colorscale("Viridis", [i / (len(layers) - 1) * 0.8 for i in range(len(layers))])
    return dict(zip(layers, cols))


def _has(df: pd.DataFrame | None, columns: Sequence[str]) -> bool:
    if df is None or not isinstance(df, pd.DataFrame) or df.empty:
        return False
    return all(c in df.columns and df[c].notna().any() for c in columns)


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64")


def _pos(v: np.ndarray) -> np.ndarray:
    """For log axes: non-positive values drawn at LOG_FLOOR (NaN stays NaN: a gap)."""
    v = np.asarray(v, dtype="float64").copy()
    v[v <= 0] = LOG_FLOOR
    return v


def _thin(df: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    if len(df) <= max_points:
        return df
    k = math.ceil(len(df) / max_points)
    return df.iloc[::k]


def _direction_key(d: str) -> tuple[int, str]:
    order = ("h", "v", "h_rev", "v_rev", "fwd", "bwd")
    return (order.index(d) if d in order else len(order), d)


@dataclass
class _Entry:
    run: Any
    label: str
    color: str
    dash: str
    index: int


def _layout(fig: go.Figure, *, title: str | None = None, height: int = 420) -> go.Figure:
    fig.update_layout(template=TEMPLATE, height=height, margin=dict(l=60, r=20, t=50, b=40),
                      legend=dict(orientation="v", yanchor="top", y=1, xanchor="left", x=1.01,
                                  font=dict(size=11), groupclick="togglegroup"),
                      hovermode="closest", font=dict(size=12))
    if title:
        fig.update_layout(title=dict(text=title, x=0.01, font=dict(size=14)))
    return fig


# ------------------------------------------------------------------------------------------
# The registry
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FigureSpec:
    """A figure: its key, title, report section, the columns it needs (table -> columns), a
    sentence on how to read it, and the function that builds it."""
    key: str
    title: str
    section: str
    requires: tuple[tuple[str, tuple[str, ...]], ...]
    description: str
    fn: Callable[..., go.Figure | None]

    def usable(self, run) -> bool:
        """The run recorded every column this figure needs (with at least one value)."""
        return all(_has(getattr(run, table, None), cols) for table, cols in self.requires)

    def available(self, runs) -> bool:
        return any(self.usable(r) for r in _as_list(runs))

    def __call__(self, runs, **kwargs) -> go.Figure | None:
        return self.fn(runs, **kwargs)


FIGURES: dict[str, FigureSpec] = {}
"""Every figure, by key, in the report's reading order."""


def _as_list(runs) -> list:
    if isinstance(runs, (list, tuple)):
        return list(runs)
    return [runs]


def _figure(key: str, title: str, section: str, requires: dict[str, Sequence[str]],
            description: str):
    req = tuple((t, tuple(c)) for t, c in requires.items())

    def deco(build: Callable[[list[_Entry]], go.Figure]):
        @functools.wraps(build)
        def fn(runs, **kwargs) -> go.Figure | None:
            runs = _as_list(runs)
            labels = run_labels(runs)
            spec = FIGURES[key]
            entries = [_Entry(r, labels[i], RUN_COLORS[i % len(RUN_COLORS)],
                              RUN_DASHES[i % len(RUN_DASHES)], i)
                       for i, r in enumerate(runs) if spec.usable(r)]
            if not entries:
                return None
            return build(entries, **kwargs)
        FIGURES[key] = FigureSpec(key, title, section, req, description, fn)
        return fn
    return deco


def available_figures(runs, section: str | None = None) -> list[FigureSpec]:
    """Specs (in reading order) that at least one of ``runs`` has the data for."""
    return [s for s in FIGURES.values()
            if (section is None or s.section == section) and s.available(runs)]


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------

@_figure("training_curves", "Loss, learning rate and gradient norm", "training",
         {"steps": ("step", "loss")},
         "Loss (log scale), learning rate and the global gradient norm before clipping, per "
         "step. Circles mark steps where clipping fired (dashed: the clip threshold), crosses "
         "mark non-finite steps.")
def training_curves(entries: list[_Entry]) -> go.Figure:
    rows = [("loss", "loss", "log")]
    if any(_has(e.run.steps, ("lr",)) for e in entries):
        rows.append(("lr", "learning rate", "log"))
    if any(_has(e.run.steps, ("grad_norm",)) for e in entries):
        rows.append(("grad_norm", "grad norm", "log"))
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[r[1] for r in rows])
    for e in entries:
        st = e.run.steps
        steps = _num(st["step"])
        nonfinite = (st["nonfinite"].astype("boolean").fillna(False).to_numpy(dtype=bool)
                     if "nonfinite" in st else np.zeros(len(st), bool))
        clipped = (st["clipped"].astype("boolean").fillna(False).to_numpy(dtype=bool)
                   if "clipped" in st else np.zeros(len(st), bool))
        for i, (col, label, _) in enumerate(rows, start=1):
            if col not in st or not st[col].notna().any():
                continue
            df = _thin(pd.DataFrame({"step": steps, "v": _num(st[col])}))
            fig.add_trace(go.Scatter(
                x=df["step"], y=_pos(df["v"]), mode="lines", name=e.label,
                legendgroup=e.label, showlegend=(i == 1), line=dict(color=e.color, width=1.5),
                hovertemplate=f"{e.label}<br>step %{{x}}<br>{label} %{{y:.4g}}<extra></extra>"),
                row=i, col=1)
            if col == "grad_norm" and clipped.any():
                g = _num(st[col])
                fig.add_trace(go.Scatter(
                    x=steps[clipped], y=_pos(g[clipped]), mode="markers",
                    name=f"{e.label}: clipped", legendgroup=e.label,
                    marker=dict(symbol="circle-open", color=e.color, size=7),
                    hovertemplate="clipped at step %{x}<extra></extra>"), row=i, col=1)
                clip = _num(st["clip"]) if "clip" in st else np.array([np.nan])
                clip = clip[np.isfinite(clip)]
                if len(clip):
                    fig.add_hline(y=float(np.median(clip)), line=dict(color=e.color, dash="dash",
                                                                       width=1), row=i, col=1)
        if nonfinite.any():
            # Non-finite steps have no value to plot: mark them on the loss row, at the last
            # finite loss (or 1).
            loss = _num(st["loss"])
            finite = loss[np.isfinite(loss)]
            y = float(finite.max()) if len(finite) else 1.0
            where = (st["nonfinite_where"].astype("string").fillna("").to_numpy()
                     if "nonfinite_where" in st else np.array([""] * len(st)))
            fig.add_trace(go.Scatter(
                x=steps[nonfinite], y=np.full(int(nonfinite.sum()), y), mode="markers",
                name=f"{e.label}: non-finite", legendgroup=e.label,
                marker=dict(symbol="x", color="#d62728", size=9),
                customdata=[plot_text(w) for w in where[nonfinite]],
                hovertemplate="non-finite at step %{x}<br>%{customdata}<extra></extra>"),
                row=1, col=1)
    for i, (_, _, scale) in enumerate(rows, start=1):
        fig.update_yaxes(type=scale, row=i, col=1)
    fig.update_xaxes(title_text="step", row=len(rows), col=1)
    return _layout(fig, height=200 + 180 * len(rows))


@_figure("eval_curves", "Evaluation: mAP and Rank-1", "training",
         {"eval": ("step", "mAP")},
         "Re-identification metrics at each evaluation (percent).")
def eval_curves(entries: list[_Entry]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=["mAP (%)", "Rank-1 (%)"])
    for e in entries:
        ev = e.run.eval
        for j, col in enumerate(("mAP", "rank1"), start=1):
            if col not in ev or not ev[col].notna().any():
                continue
            fig.add_trace(go.Scatter(
                x=_num(ev["step"]), y=_num(ev[col]), mode="lines+markers", name=e.label,
                legendgroup=e.label, showlegend=(j == 1), line=dict(color=e.color),
                hovertemplate=f"{e.label}<br>step %{{x}}<br>{col} %{{y:.2f}}<extra></extra>"),
                row=1, col=j)
    fig.update_xaxes(title_text="step")
    return _layout(fig, height=360)


# ------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------

def _blocks(run, value: str) -> pd.DataFrame:
    L = run.layers
    df = L[(L["group"].astype("string") == "block")]
    out = pd.DataFrame({"step": _num(df["step"]), "layer": _num(df["layer"]),
                        "v": _num(df[value])})
    return out[np.isfinite(out["layer"])]


def _binned_pivot(df: pd.DataFrame, max_cols: int = MAX_HEATMAP_COLUMNS) -> pd.DataFrame:
    """layer x step pivot of ``v``, steps binned into at most ``max_cols`` columns (median)."""
    steps = np.sort(df["step"].unique())
    if len(steps) > max_cols:
        edges = np.linspace(steps.min(), steps.max() + 1, max_cols + 1)
        df = df.assign(step=edges[np.searchsorted(edges, df["step"], side="right") - 1].round())
    return df.pivot_table(index="layer", columns="step", values="v", aggfunc="median", dropna=False)


@_figure("grad_heatmap", "Gradient norm per layer (layer × step)", "layers",
         {"layers": ("step", "layer", "group", "grad_norm")},
         "log10 of each block's gradient norm; rows are blocks (0 = nearest the input). Runs "
         "side by side share one colour scale. A dark bottom row is a vanishing gradient, a "
         "bright one an exploding gradient.")
def grad_heatmap(entries: list[_Entry]) -> go.Figure:
    pivots = []
    for e in entries:
        df = _blocks(e.run, "grad_norm")
        v = df["v"].to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):   # 0 / NaN / inf -> a gap
            df = df.assign(v=np.where(np.isfinite(v) & (v > 0), np.log10(np.where(v > 0, v, 1)),
                                      np.nan))
        pivots.append(_binned_pivot(df) if len(df) else pd.DataFrame())
    vals = np.concatenate([p.to_numpy().ravel() for p in pivots if p.size] or [np.array([0.0])])
    vals = vals[np.isfinite(vals)]
    zmin, zmax = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 1.0)
    fig = make_subplots(rows=1, cols=len(entries), shared_yaxes=True, shared_xaxes="all",
                        horizontal_spacing=0.04, subplot_titles=[e.label for e in entries])
    for j, (e, p) in enumerate(zip(entries, pivots), start=1):
        if not p.size:
            continue
        fig.add_trace(go.Heatmap(
            z=p.to_numpy(), x=p.columns.to_numpy(), y=p.index.to_numpy().astype(int),
            zmin=zmin, zmax=zmax, colorscale="Viridis", showscale=(j == len(entries)),
            colorbar=dict(title=dict(text="log10 |g|")),
            hovertemplate=f"{e.label}<br>step %{{x}}<br>layer %{{y}}<br>log10 grad norm "
                          "%{z:.2f}<extra></extra>"), row=1, col=j)
        fig.update_xaxes(title_text="step", row=1, col=j)
    fig.update_yaxes(title_text="layer", dtick=1, row=1, col=1)
    n_layers = max((p.shape[0] for p in pivots if p.size), default=1)
    return _layout(fig, height=max(320, 160 + 26 * n_layers))


@_figure("update_ratios", "Update-to-weight ratio per layer", "layers",
         {"layers": ("step", "layer", "group", "update_ratio")},
         "|Δw|/|w| of each block per optimizer step (log scale); the dotted line is CS231n's "
         "rule of thumb 1e-3, the dashed line the update.too_large threshold.")
def update_ratios(entries: list[_Entry]) -> go.Figure:
    fig = go.Figure()
    layers = sorted({int(x) for e in entries for x in _blocks(e.run, "update_ratio")["layer"]})
    colors = _layer_colors(layers or [0])
    for e in entries:
        df = _blocks(e.run, "update_ratio")
        for layer, g in df.groupby("layer"):
            g = _thin(g.sort_values("step"))
            fig.add_trace(go.Scatter(
                x=g["step"], y=_pos(g["v"]), mode="lines", name=f"{e.label} · L{int(layer)}",
                legendgroup=e.label, line=dict(color=colors[int(layer)], dash=e.dash, width=1.3),
                hovertemplate=f"{e.label}<br>layer {int(layer)}<br>step %{{x}}<br>ratio "
                              "%{y:.3g}<extra></extra>"))
    fig.add_hline(y=1e-3, line=dict(color="grey", dash="dot", width=1))
    fig.add_hline(y=UPDATE_RATIO_WARN, line=dict(color="#d62728", dash="dash", width=1))
    fig.update_yaxes(type="log", title_text="|Δw| / |w|")
    fig.update_xaxes(title_text="step")
    return _layout(fig, height=400)


@_figure("depth_profile", "Gradient profile across depth", "layers",
         {"layers": ("layer", "group", "grad_norm")},
         "Median gradient norm of each block over the run (log scale), runs on shared axes: "
         "a slope down towards layer 0 is a vanishing gradient.")
def depth_profile(entries: list[_Entry]) -> go.Figure:
    fig = go.Figure()
    for e in entries:
        df = _blocks(e.run, "grad_norm")
        df = df[np.isfinite(df["v"])]
        med = df.groupby("layer")["v"].median()
        fig.add_trace(go.Scatter(
            x=med.index.astype(int), y=_pos(med.to_numpy()), mode="lines+markers", name=e.label,
            line=dict(color=e.color),
            hovertemplate=(f"{e.label}<br>layer %{{x}}<br>median grad norm %{{y:.3g}}"
                           "<extra></extra>")))
    fig.update_yaxes(type="log", title_text="median grad norm")
    fig.update_xaxes(title_text="layer", dtick=1)
    return _layout(fig, height=360)


# ------------------------------------------------------------------------------------------
# SSM internals
# ------------------------------------------------------------------------------------------

def _ssm(run, columns: Sequence[str]) -> pd.DataFrame:
    S = run.ssm
    df = pd.DataFrame({"step": _num(S["step"]), "layer": _num(S["layer"]),
                       "direction": S["direction"].astype("string").fillna("").to_numpy()})
    for c in columns:
        df[c] = _num(S[c]) if c in S.columns else np.nan
    return df[np.isfinite(df["layer"])].sort_values("step", kind="stable")


def _facets(entries: list[_Entry], columns: Sequence[str]):
    """(frames per entry, sorted layers, sorted directions) for layer x direction facets."""
    frames = [_ssm(e.run, columns) for e in entries]
    layers = sorted({int(x) for f in frames for x in f["layer"].unique()})
    dirs = sorted({str(x) for f in frames for x in f["direction"].unique()}, key=_direction_key)
    return frames, layers, dirs


def _hlines(fig: go.Figure, ys: Sequence[float], rows: int, cols: int, line: dict) -> None:
    """Horizontal reference lines at ``ys`` in every subplot, added in one layout update
    (``add_hline`` over many subplots is quadratic in their number)."""
    shapes = list(fig.layout.shapes)
    for r in range(1, rows + 1):
        for c in range(1, cols + 1):
            sp = fig.get_subplot(r, c)
            xa = sp.xaxis.plotly_name.replace("axis", "")
            ya = sp.yaxis.plotly_name.replace("axis", "")
            shapes += [dict(type="line", xref=f"{xa} domain", x0=0, x1=1, yref=ya, y0=y, y1=y,
                            line=line, layer="below") for y in ys]
    fig.update_layout(shapes=shapes)


def _facet_figure(layers, dirs, *, row_height=150) -> go.Figure:
    titles = [f"layer {lay} · {plot_text(d)}" for lay in layers for d in dirs]
    fig = make_subplots(rows=len(layers), cols=len(dirs), shared_xaxes=True, shared_yaxes=True,
                        vertical_spacing=min(0.06, 0.5 / max(len(layers), 1)),
                        horizontal_spacing=0.02, subplot_titles=titles)
    fig.update_annotations(font_size=11)
    _layout(fig, height=130 + row_height * len(layers))
    return fig


def _bands(entries: list[_Entry], prefix: str, *, negate: bool, ytitle: str,
           refs: Sequence[tuple[float, str]] = ()) -> go.Figure:
    names = ("p05", "p25", "p50", "p75", "p95")
    cols = [f"{prefix}_{n}" for n in names]
    frames, layers, dirs = _facets(entries, cols)
    fig = _facet_figure(layers, dirs)
    shown = set()
    traces, rows, cols_ = [], [], []      # added in one call: add_trace per trace is slow

    def add(trace, row, col):
        traces.append(trace)
        rows.append(row)
        cols_.append(col)
    for e, df in zip(entries, frames):
        for (layer, d), g in df.groupby(["layer", "direction"], sort=False):
            row, col = layers.index(int(layer)) + 1, dirs.index(str(d)) + 1
            q = {n: (-g[c] if negate else g[c]).to_numpy() for n, c in zip(names, cols)}
            if negate:  # |A·dt|: the lower quantile of A·dt is the upper one of |A·dt|
                q = {"p05": q["p95"], "p25": q["p75"], "p50": q["p50"], "p75": q["p25"],
                     "p95": q["p05"]}
            x = g["step"].to_numpy()
            for lo, hi, alpha in (("p05", "p95", 0.15), ("p25", "p75", 0.30)):
                add(go.Scatter(x=x, y=_pos(q[hi]), mode="lines", line=dict(width=0),
                               showlegend=False, hoverinfo="skip", legendgroup=e.label), row, col)
                add(go.Scatter(x=x, y=_pos(q[lo]), mode="lines", line=dict(width=0),
                               fill="tonexty", fillcolor=_rgba(e.color, alpha), showlegend=False,
                               hoverinfo="skip", legendgroup=e.label), row, col)
            add(go.Scatter(
                x=x, y=_pos(q["p50"]), mode="lines+markers", name=e.label, legendgroup=e.label,
                showlegend=e.label not in shown, line=dict(color=e.color, width=1.5),
                marker=dict(size=4),
                customdata=np.stack([_pos(q["p05"]), _pos(q["p95"])], axis=-1),
                hovertemplate=(f"{e.label}<br>layer {int(layer)} · {plot_text(d)}<br>step %{{x}}"
                               "<br>median %{y:.3g}<br>p05–p95 %{customdata[0]:.3g} – "
                               "%{customdata[1]:.3g}<extra></extra>")), row, col)
            shown.add(e.label)
    if traces:
        fig.add_traces(traces, rows=rows, cols=cols_)
    _hlines(fig, [y for y, _ in refs], len(layers), len(dirs),
            line=dict(color="grey", dash="dot", width=1))
    fig.update_yaxes(type="log")
    for i in range(1, len(layers) + 1):
        fig.update_yaxes(title_text=ytitle if i == (len(layers) + 1) // 2 else None, row=i, col=1)
    for j in range(1, len(dirs) + 1):
        fig.update_xaxes(title_text="step", row=len(layers), col=j)
    return fig


@_figure("dt_bands", "dt = softplus(dt_proj(x) + bias) per layer and direction", "ssm",
         {"ssm": ("step", "layer", "direction", "dt_p05", "dt_p25", "dt_p50", "dt_p75", "dt_p95")},
         "Median (line), 25–75% (dark band) and 5–95% (light band) of dt over channels and "
         "tokens at each probe step. Dotted lines: Mamba's init range [1e-3, 1e-1].")
def dt_bands(entries: list[_Entry]) -> go.Figure:
    return _bands(entries, "dt", negate=False, ytitle="dt",
                  refs=((1e-3, "dt_min"), (1e-1, "dt_max")))


@_figure("adt_bands", "|A·dt| per layer and direction (decay exp(A·dt))", "ssm",
         {"ssm": ("step", "layer", "direction", "adt_p05", "adt_p25", "adt_p50", "adt_p75",
                  "adt_p95")},
         f"Quantiles of |A·dt| over channels, states and tokens. Above the upper dotted line "
         f"(-ln {ERASED_DECAY:g} = 4.6) the state is erased at every token; below the lower one "
         f"(-ln {FROZEN_DECAY:g} = 0.01) it never forgets.")
def adt_bands(entries: list[_Entry]) -> go.Figure:
    return _bands(entries, "adt", negate=True, ytitle="|A·dt|",
                  refs=((-math.log(ERASED_DECAY), "erased"), (-math.log(FROZEN_DECAY), "frozen")))


def _per_layer_lines(fig, entries, frames, column, *, row=None, col=None, log=False,
                     showlegend=True):
    layers = sorted({int(x) for f in frames for x in f["layer"].unique()})
    colors = _layer_colors(layers or [0])
    traces, shown = [], set()
    for e, df in zip(entries, frames):
        for (layer, d), g in df.groupby(["layer", "direction"], sort=False):
            y = g[column].to_numpy()
            group = f"{e.label} · L{int(layer)}"   # one legend entry per run and layer
            traces.append(go.Scatter(
                x=g["step"], y=_pos(y) if log else y, mode="lines+markers",
                name=group, legendgroup=group,
                showlegend=showlegend and group not in shown, marker=dict(size=4),
                line=dict(color=colors[int(layer)], dash=e.dash, width=1.3),
                hovertemplate=(f"{e.label}<br>layer {int(layer)} · {plot_text(d)}<br>step %{{x}}"
                               f"<br>{column} %{{y:.3g}}<extra></extra>")))
            shown.add(group)
    if traces:
        if row is None:
            fig.add_traces(traces)
        else:
            fig.add_traces(traces, rows=[row] * len(traces), cols=[col] * len(traces))


@_figure("decay_fractions", "Decay fractions: erased vs frozen", "ssm",
         {"ssm": ("step", "layer", "direction", "frac_erased", "frac_frozen")},
         f"Fraction of (channel, state, token) decays exp(A·dt) below {ERASED_DECAY:g} (memory "
         f"erased every token) and above {FROZEN_DECAY:g} (state never forgets), per layer "
         "(colour) and direction.")
def decay_fractions(entries: list[_Entry]) -> go.Figure:
    frames = [_ssm(e.run, ("frac_erased", "frac_frozen")) for e in entries]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=[f"erased: exp(A·dt) < {ERASED_DECAY:g}",
                                        f"frozen: exp(A·dt) > {FROZEN_DECAY:g}"])
    _per_layer_lines(fig, entries, frames, "frac_erased", row=1, col=1)
    _per_layer_lines(fig, entries, frames, "frac_frozen", row=1, col=2, showlegend=False)
    threshold = dict(color="#d62728", dash="dash", width=1)
    fig.add_hline(y=FRAC_ERASED_WARN, line=threshold, row=1, col=1)
    fig.add_hline(y=FRAC_FROZEN_WARN, line=threshold, row=1, col=2)
    fig.update_yaxes(range=[-0.02, 1.02], title_text="fraction", row=1, col=1)
    fig.update_xaxes(title_text="step")
    return _layout(fig, height=420)


@_figure("state_norms", "Hidden-state norm along the sequence (latest probe)", "ssm",
         {"ssm_state": ("step", "layer", "direction", "pos", "state_norm")},
         "‖h_t‖ along the scan (0 = first token, 1 = last) at each run's latest probe step, "
         "per layer (colour), one panel per direction. A curve that keeps rising is a state that "
         "integrates instead of forgetting.")
def state_norms(entries: list[_Entry]) -> go.Figure:
    frames = []
    for e in entries:
        S = e.run.ssm_state
        df = pd.DataFrame({"step": _num(S["step"]), "layer": _num(S["layer"]),
                           "direction": S["direction"].astype("string").fillna("").to_numpy(),
                           "pos": _num(S["pos"]), "v": _num(S["state_norm"])})
        df = df[np.isfinite(df["step"])]
        frames.append(df[df["step"] == df["step"].max()])
    dirs = sorted({str(x) for f in frames for x in f["direction"].unique()}, key=_direction_key)
    layers = sorted({int(x) for f in frames for x in f["layer"].unique()})
    colors = _layer_colors(layers or [0])
    fig = make_subplots(rows=1, cols=max(len(dirs), 1), shared_yaxes=True,
                        horizontal_spacing=0.03, subplot_titles=[plot_text(d) for d in dirs])
    for e, df in zip(entries, frames):
        step = int(df["step"].max()) if len(df) else -1
        for (layer, d), g in df.groupby(["layer", "direction"], sort=False):
            g = g.sort_values("pos")
            fig.add_trace(go.Scatter(
                x=g["pos"], y=_pos(g["v"]), mode="lines", name=f"{e.label} · L{int(layer)}",
                legendgroup=f"{e.label} · L{int(layer)}", showlegend=(dirs.index(str(d)) == 0),
                line=dict(color=colors[int(layer)], dash=e.dash, width=1.4),
                hovertemplate=(f"{e.label} (step {step})<br>layer {int(layer)} · {plot_text(d)}"
                               "<br>position %{x:.2f}<br>‖h‖ %{y:.3g}<extra></extra>")),
                row=1, col=dirs.index(str(d)) + 1)
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="state norm", row=1, col=1)
    fig.update_xaxes(title_text="position in scan")
    return _layout(fig, height=400)


@_figure("state_norm_growth", "Largest hidden-state norm over training", "ssm",
         {"ssm": ("step", "layer", "direction", "state_norm_max")},
         "max_t ‖h_t‖ at each probe step, per layer (colour) and direction (log scale); the "
         "ssm.state_growth finding fires at 100x its first probe.")
def state_norm_growth(entries: list[_Entry]) -> go.Figure:
    frames = [_ssm(e.run, ("state_norm_max",)) for e in entries]
    fig = go.Figure()
    _per_layer_lines(fig, entries, frames, "state_norm_max", log=True)
    fig.update_yaxes(type="log", title_text="max state norm")
    fig.update_xaxes(title_text="step")
    return _layout(fig, height=400)


@_figure("selectivity", "Selectivity and memory length", "ssm",
         {"ssm": ("step", "layer", "direction", "selectivity", "mem_len")},
         "Selectivity: mean over channels of std/mean of dt across tokens (0 = dt ignores the "
         "input, C6). Memory length: median over (channel, state) of 1/|A·mean dt|, in tokens.")
def selectivity(entries: list[_Entry]) -> go.Figure:
    frames = [_ssm(e.run, ("selectivity", "mem_len")) for e in entries]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=["selectivity (std/mean of dt over tokens)",
                                        "memory length (tokens)"])
    _per_layer_lines(fig, entries, frames, "selectivity", row=1, col=1)
    _per_layer_lines(fig, entries, frames, "mem_len", row=1, col=2, log=True, showlegend=False)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_xaxes(title_text="step")
    return _layout(fig, height=400)


# ------------------------------------------------------------------------------------------
# A_log
# ------------------------------------------------------------------------------------------

@_figure("alog_drift", "A_log drift and spread", "alog",
         {"ssm": ("step", "layer", "direction", "alog_drift")},
         "Left: ‖A_log − A_log(0)‖ / ‖A_log(0)‖. Right: the spread (std) of A_log over "
         "channels "
         "and states; S4D-real log(1..N) starts at 0.76 for N = 16, and a spread that falls "
         "towards 0 is a collapse of the decay rates (C5).")
def alog_drift(entries: list[_Entry]) -> go.Figure:
    frames = [_ssm(e.run, ("alog_drift", "alog_std")) for e in entries]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=["relative drift from step 0", "A_log std"])
    _per_layer_lines(fig, entries, frames, "alog_drift", row=1, col=1)
    _per_layer_lines(fig, entries, frames, "alog_std", row=1, col=2, showlegend=False)
    fig.update_xaxes(title_text="step")
    return _layout(fig, height=400)


# ------------------------------------------------------------------------------------------
# Attention
# ------------------------------------------------------------------------------------------

@_figure("attention_stats", "Attention entropy, distance and max logit", "attention",
         {"attention": ("step", "layer", "entropy")},
         "Per attention layer (colour): mean entropy over heads and queries (nats), mean "
         "attention distance (patches) and the largest pre-softmax logit.")
def attention_stats(entries: list[_Entry]) -> go.Figure:
    cols = ("entropy", "mean_distance", "logit_max")
    titles = ("entropy (nats)", "mean distance (patches)", "max logit")
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.06, subplot_titles=titles)
    layers = sorted({int(x) for e in entries for x in _num(e.run.attention["layer"])
                     if np.isfinite(x)})
    colors = _layer_colors(layers or [0])
    for e in entries:
        A = e.run.attention
        df = pd.DataFrame({"step": _num(A["step"]), "layer": _num(A["layer"])})
        for c in cols:
            df[c] = _num(A[c]) if c in A.columns else np.nan
        for layer, g in df.groupby("layer"):
            g = g.sort_values("step")
            for j, c in enumerate(cols, start=1):
                fig.add_trace(go.Scatter(
                    x=g["step"], y=g[c], mode="lines+markers", marker=dict(size=4),
                    name=f"{e.label} · L{int(layer)}", legendgroup=f"{e.label} · L{int(layer)}",
                    showlegend=(j == 1),
                    line=dict(color=colors[int(layer)], dash=e.dash, width=1.3),
                    hovertemplate=(f"{e.label}<br>layer {int(layer)}<br>step %{{x}}<br>{c} "
                                   "%{y:.3g}<extra></extra>")), row=1, col=j)
    fig.update_xaxes(title_text="step")
    return _layout(fig, height=400)


# ------------------------------------------------------------------------------------------
# Remedies: one `diagnose sweep` (diagnostics.sweep.SweepResult), its variants overlaid
# ------------------------------------------------------------------------------------------
# These take a sweep, not runs: anything with ``.loaded`` (variant -> runs by seed, baseline
# first), ``.runs`` (one row per run: sweep.RUN_COLUMNS) and ``.ranking`` (best first). Each
# variant keeps one colour in every figure (the baseline dark grey); its seeds are lines of that
# colour, the first solid, the others thinner, so that seed-to-seed spread is seen beside the
# differences between variants.

BASELINE_COLOR = "#343a40"
VARIANT_COLORS = RUN_COLORS + ("#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939", "#843c39")


@dataclass(frozen=True)
class RemedyFigure:
    """A figure of the Remedies view: key, title, how to read it, and ``fn(sweep)``."""
    key: str
    title: str
    description: str
    fn: Callable[[Any], go.Figure | None]

    def __call__(self, sweep) -> go.Figure | None:
        return self.fn(sweep)


REMEDY_FIGURES: dict[str, RemedyFigure] = {}
"""The Remedies view's figures, by key, in reading order (report and app alike)."""


def _remedy_figure(key: str, title: str, description: str):
    def deco(fn):
        REMEDY_FIGURES[key] = RemedyFigure(key, title, description, fn)
        return fn
    return deco


def _variant_order(sweep) -> list[str]:
    """Best first (the ranking's order), then variants the ranking does not know."""
    ranked = [str(v) for v in sweep.ranking["variant"]] if len(sweep.ranking) else []
    return ranked + [v for v in sweep.loaded if v not in ranked]


def variant_colors(sweep) -> dict[str, str]:
    """variant -> colour, stable for a sweep: the baseline dark grey, the others in plan order."""
    out, i = {}, 0
    for v in list(sweep.loaded) + [str(x) for x in sweep.ranking["variant"]]:
        if v in out:
            continue
        if v == "baseline":
            out[v] = BASELINE_COLOR
        else:
            out[v] = VARIANT_COLORS[i % len(VARIANT_COLORS)]
            i += 1
    return out


def _smooth(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite points, rolling median over ~1/25 of them (at least 3): the trend, not the noise."""
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    window = max(3, len(y) // 25)
    return x, pd.Series(y).rolling(window, min_periods=1, center=True).median().to_numpy()


def _ssm_median(run, column: str, negate: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(probe steps, median over layers and directions of ``column``) of one run."""
    S = getattr(run, "ssm", None)
    if S is None or column not in S or not S[column].notna().any():
        return np.array([]), np.array([])
    df = pd.DataFrame({"step": _num(S["step"]), "v": _num(S[column])})
    df = df[np.isfinite(df["v"])]
    g = df.groupby("step")["v"].median()
    v = g.to_numpy()
    return g.index.to_numpy(), (-v if negate else v)


def _seed_lines(fig, sweep, rows: Sequence[tuple[Callable, str]], *, colors) -> set[int]:
    """For every variant and seed, one line per row: ``rows`` are (series(run) -> (x, y),
    label). Returns the rows that got a line."""
    used: set[int] = set()
    for variant in _variant_order(sweep):
        label = plot_text(variant)
        in_legend = False
        for k, run in enumerate(sweep.loaded.get(variant, [])):
            seed = (run.manifest.get("config") or {}).get("seed", k)
            for i, (series, what) in enumerate(rows, start=1):
                x, y = series(run)
                if not len(x):
                    continue
                used.add(i)
                fig.add_trace(go.Scatter(
                    x=x, y=_pos(y) if what.endswith("(log)") else y, mode="lines",
                    name=label, legendgroup=label, showlegend=not in_legend,
                    line=dict(color=colors[variant], width=2 if k == 0 else 1),
                    opacity=1 if k == 0 else 0.55,
                    hovertemplate=(f"{label} · seed {plot_text(seed)}<br>step %{{x}}<br>"
                                   f"{what.removesuffix(' (log)')} %{{y:.4g}}<extra></extra>")),
                    row=i, col=1)
                in_legend = True
    return used


def _stacked_lines(sweep, rows: Sequence[tuple[Callable, str]]) -> go.Figure | None:
    """One subplot per row (sharing the step axis), a line per variant and seed in each; rows
    whose label ends in " (log)" get a log axis. None when no run has any of the series."""
    if not any(sweep.loaded.values()):
        return None
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=[w.removesuffix(" (log)") for _, w in rows])
    if not _seed_lines(fig, sweep, rows, colors=variant_colors(sweep)):
        return None
    for i, (_, what) in enumerate(rows, start=1):
        if what.endswith("(log)"):
            fig.update_yaxes(type="log", row=i, col=1)
    fig.update_xaxes(title_text="step", row=len(rows), col=1)
    return _layout(fig, height=130 + 210 * len(rows))


@_remedy_figure(
    "remedy_curves", "Training curves of every variant, overlaid",
    "Loss and gradient norm per step (rolling median over ~1/25 of the run, log scale) and mAP "
    "at each evaluation, one colour per variant; the first seed solid, the others thin. Runs of "
    "different batch sizes see different numbers of images per step.")
def remedy_curves(sweep) -> go.Figure | None:
    def steps(col):
        def series(run):
            st = run.steps
            if col not in st or not st[col].notna().any():
                return np.array([]), np.array([])
            return _smooth(_num(st["step"]), _num(st[col]))
        return series

    def evals(run):
        ev = run.eval
        if "mAP" not in ev or not ev["mAP"].notna().any():
            return np.array([]), np.array([])
        ok = np.isfinite(_num(ev["mAP"]))
        return _num(ev["step"])[ok], _num(ev["mAP"])[ok]

    return _stacked_lines(sweep, [(steps("loss"), "loss (log)"),
                                  (steps("grad_norm"), "grad norm (log)"), (evals, "mAP (%)")])


#: The SSM statistics the Remedies view shows: (runs column, title, log axis, negate).
REMEDY_SSM = (("dt_p50", "dt median", True, False),
              ("adt_p50", "|A·dt| median", True, True),
              ("frac_erased", "erased: exp(A·dt) < 0.01", False, False),
              ("frac_frozen", "frozen: exp(A·dt) > 0.99", False, False),
              ("state_norm_max", "max state norm", True, False),
              ("alog_std", "A_log std", False, False))


def _strips(sweep, columns: Sequence[tuple[str, str, bool, bool]], ncols: int) -> go.Figure | None:
    """Small multiples, one per column: a row per variant (best at the top), a dot per run,
    a bar at the variant's mean, the baseline's mean as a dashed line."""
    runs = sweep.runs
    cols = [c for c in columns if c[0] in runs and np.isfinite(_num(runs[c[0]])).any()]
    if not cols:
        return None
    order = _variant_order(sweep)
    colors = variant_colors(sweep)
    nrows = math.ceil(len(cols) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, shared_yaxes=True, horizontal_spacing=0.04,
                        vertical_spacing=0.12 if nrows > 1 else 0.05,
                        subplot_titles=[c[1] for c in cols])
    labels = [plot_text(v) for v in order]
    variant = runs["variant"].astype(str).to_numpy()
    for n, (col, title, log, negate) in enumerate(cols):
        r, c = n // ncols + 1, n % ncols + 1
        v = _num(runs[col])
        v = 0.0 - v if negate else v
        # log axes show positive values only (a diverged run's 0 would stretch the axis to the
        # floor and hide the differences); the table beside the figure has every value
        shown = np.isfinite(v) & ((v > 0) if log else True)
        for name, lab in zip(order, labels):
            mine = v[(variant == name) & shown]
            if not len(mine):
                continue
            seeds = runs["seed"][(variant == name) & shown].to_numpy()
            fig.add_trace(go.Scatter(
                x=mine, y=[lab] * len(mine), mode="markers",
                marker=dict(color=colors[name], size=8, line=dict(width=1, color="white")),
                name=lab, legendgroup=lab, showlegend=False, customdata=seeds,
                hovertemplate=(f"{lab} · seed %{{customdata}}<br>{title} %{{x:.4g}}"
                               "<extra></extra>")), row=r, col=c)
            m = float(np.exp(np.log(mine).mean()) if log else mine.mean())
            fig.add_trace(go.Scatter(
                x=[m], y=[lab], mode="markers",
                marker=dict(symbol="line-ns", size=18, line=dict(width=3, color=colors[name])),
                showlegend=False, legendgroup=lab, hovertemplate=(
                    f"{lab}<br>{'geometric ' if log else ''}mean {title} %{{x:.4g}} over "
                    f"{len(mine)} run(s)<extra></extra>")),
                row=r, col=c)
            if name == "baseline":
                sp = fig.get_subplot(r, c)
                fig.add_shape(type="line", x0=m, x1=m, y0=0, y1=1,
                              xref=sp.xaxis.plotly_name.replace("axis", ""),
                              yref=f"{sp.yaxis.plotly_name.replace('axis', '')} domain",
                              line=dict(color=BASELINE_COLOR, dash="dash", width=1))
        if log:
            fig.update_xaxes(type="log", row=r, col=c)
    fig.update_yaxes(categoryorder="array", categoryarray=labels[::-1], type="category")
    return _layout(fig, height=110 + nrows * (60 + 26 * len(order)))


@_remedy_figure(
    "remedy_outcomes", "Outcome per variant, run by run",
    "Each dot is one run (one seed), the bar the variant's mean, the dashed line the "
    "baseline's mean: a difference smaller than the spread of the dots is noise. Final loss is "
    "the median over the last tenth of the steps; grad-norm CV is std/mean of the gradient "
    "norm after warm-up (lower is steadier).")
def remedy_outcomes(sweep) -> go.Figure | None:
    return _strips(sweep, (("mAP", "final mAP (%)", False, False),
                           ("final_loss", "final loss", False, False),
                           ("grad_cv", "grad-norm CV", False, False),
                           ("steps_to_threshold", "steps to the baseline's final loss", False,
                            False)), ncols=4)


@_remedy_figure(
    "remedy_ssm", "What each remedy did to the selective scan (last probe)",
    "The SSM statistics of each run's last probe, median over layers and scan directions: the "
    "step size dt, the decay exponent |A·dt|, the fractions of decays that erase (< 0.01) or "
    "freeze (> 0.99) the state per token, the largest hidden-state norm and the spread of "
    "A_log. Dots are runs, bars means (geometric on log axes, which leave out zeros), the "
    "dashed line the baseline.")
def remedy_ssm(sweep) -> go.Figure | None:
    return _strips(sweep, REMEDY_SSM, ncols=3)


@_remedy_figure(
    "remedy_ssm_curves", "SSM statistics over training, every variant overlaid",
    "dt median, |A·dt| median and the largest hidden-state norm at each probe step (median over "
    "layers and directions, log scale), one colour per variant, the first seed solid.")
def remedy_ssm_curves(sweep) -> go.Figure | None:
    return _stacked_lines(sweep, [
        (lambda run: _ssm_median(run, "dt_p50"), "dt median (log)"),
        (lambda run: _ssm_median(run, "adt_p50", negate=True), "|A·dt| median (log)"),
        (lambda run: _ssm_median(run, "state_norm_max"), "max state norm (log)")])

"""What every page of the app shares: where the runs are, loading them (cached), the sidebar's
run picker, live refresh, and showing figures, errors and the empty state.

The pages hold no logic of their own: they call these helpers, the one reader
(:mod:`diagnostics.runfmt`), the analyzers and the figures module the HTML report uses.

Caching. A run is loaded with ``st.cache_data`` keyed by :func:`diagnostics.runfmt.run_signature`
(stats of the manifest and of every table's parts): a growing run gets a new key on every flush
and reloads, a finished one keeps its key and is never read again. The key also holds whether
the heartbeat is older than ``STALE_AFTER_S``, so that a run killed while ``running`` (its files
no longer change) is reloaded once and then reads as ``crashed``. Small things (summary,
findings) are cached apart from the frames, so the sidebar and the Overview never copy a run's
frames.

Safety. Every string that comes from a run (its directory name, its manifest, messages) is shown
through ``st.text``, ``st.code``, ``st.dataframe``, widget options, or plotly figures whose run
strings :mod:`diagnostics.figures` escapes; never through markdown or HTML.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from diagnostics import figures
from diagnostics.analyzers import (CODES, SEVERITIES, analyze, compare, count_by_severity,
                                   run_summary)
from diagnostics.runfmt import (MANIFEST_NAME, STALE_AFTER_S, Run, RunFormatError, list_runs,
                                load_run, run_signature)

DEFAULT_RUNS_DIR = "runs"
REFRESH_S = 5
"""How often a page with a live run re-reads it (seconds). The writer flushes every 2 s by
default; 5 s keeps a 2-core machine that is also training mostly free."""
MAX_DEPTH = 3
"""Runs are looked for this many folders below the runs directory (``runs/demo/VIT-T`` is 2)."""
MAX_DEFAULT_SELECTED = 6
"""Runs selected when the app opens: all of them up to this many, else the most recently
updated (the figures have 8 distinct run colours)."""
MAKE_ONE = ("make demo                                               # three short runs "
            "into runs/demo\n"
            "diagnose train --backbone MAMBA-V2 --run runs/mamba_v2  # the reference harness\n"
            "# or, in your own training loop:  Recorder(model, run_dir='runs/my_run')")

STATUS_COLORS = {"running": "#1e8449", "finished": "#495057", "crashed": "#c0392b",
                 "diverged": "#c0392b", "unknown": "#6c757d"}
SEVERITY_COLORS = {"error": "#c0392b", "warning": "#b9770e", "info": "#2874a6"}
"""Text colours of these words in tables (the report's palette): plain words, no emoji, so that
a browser without an emoji font shows the same."""
SECTION_PAGES = {"training": "Convergence", "layers": "Layers", "attention": "Layers",
                 "ssm": "SSM internals", "alog": "SSM internals"}
"""The page that shows each section of :data:`diagnostics.figures.SECTIONS`."""
PLOTLY_CONFIG = {"displaylogo": False}


# ------------------------------------------------------------------------------------------
# Where the runs are
# ------------------------------------------------------------------------------------------

def cli_runs_dir(argv: Sequence[str] | None = None) -> str:
    """``--runs-dir`` from the arguments after ``--`` (``streamlit run app/main.py -- --runs-dir
    runs``); the default ``runs`` when absent. Unknown arguments are ignored."""
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--runs-dir", "--runs_dir", dest="runs_dir", default=DEFAULT_RUNS_DIR)
    args, _ = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return args.runs_dir


def _remember(key: str) -> None:
    """on_change of a sidebar widget: keep its value under ``_key``, which, unlike a widget's
    own key, survives a page switch (the widget is re-created on every page)."""
    st.session_state["_" + key] = st.session_state[key]


def _seed(key: str, default: Any) -> None:
    """Before a sidebar widget is created: give it the value remembered across pages."""
    st.session_state[key] = st.session_state.get("_" + key, default)


def runs_dir() -> Path:
    """The runs directory: the sidebar's setting (initialised from ``--runs-dir``)."""
    value = st.session_state.get("_runs_dir", st.session_state.get("runs_dir"))
    if value is None:
        value = st.session_state["_runs_dir"] = cli_runs_dir()
    return Path(os.path.expanduser(str(value).strip() or DEFAULT_RUNS_DIR))


def discover(root: str | os.PathLike, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every run under ``root``: :func:`list_runs` of it and of its sub-folders that are not runs
    themselves, ``max_depth`` folders deep (hidden folders skipped). ``root`` itself when it is a
    run."""
    root = Path(root)
    if root.name and root in list_runs(root.parent if str(root.parent) else "."):
        return [root]
    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        runs = list_runs(folder)
        found.extend(runs)
        if depth >= max_depth:
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        run_set = set(runs)
        for e in entries:
            try:
                is_dir = e.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if is_dir and not e.name.startswith(".") and Path(e.path) not in run_set:
                walk(Path(e.path), depth + 1)

    walk(root, 1)
    return sorted(found, key=lambda p: label_of(p, root))


def label_of(path: Path, root: Path) -> str:
    """A run's label: its path under the runs directory (``demo/VIT-T``), so that two runs with
    the same folder name in different places stay apart. Untrusted text: display it only."""
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        rel = Path(Path(path).name)
    return str(rel) if str(rel) != "." else Path(path).absolute().name


# ------------------------------------------------------------------------------------------
# Loading, cached by the run's signature
# ------------------------------------------------------------------------------------------

def _key(path: Path) -> tuple[tuple, bool]:
    """(run_signature, heartbeat stale?): the cache key of a run's current state."""
    sig = run_signature(path)
    try:
        stale = time.time() - os.stat(Path(path) / MANIFEST_NAME).st_mtime > STALE_AFTER_S
    except OSError:
        stale = True
    return sig, stale


@st.cache_data(max_entries=32, show_spinner=False)
def _load(path: str, label: str, sig: tuple, stale: bool) -> tuple[Run | None, str | None]:
    try:
        run = load_run(path)
    except RunFormatError as e:
        return None, str(e)
    run.name = label
    return run, None


@dataclass
class Digest:
    """What the sidebar, the Overview and the Findings page need about one run (small)."""
    path: Path
    label: str
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    findings: list = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        return self.summary.get("status") or "unknown"


@st.cache_data(max_entries=512, show_spinner=False)
def _digest(path: str, label: str, sig: tuple, stale: bool) -> Digest:
    run, error = _load(path, label, sig, stale)
    if run is None:
        return Digest(Path(path), label, error=error)
    try:
        findings = analyze(run)
        summary = run_summary(run, findings)
    except Exception as e:  # noqa: BLE001 - a bug on one run must not hide the others
        return Digest(Path(path), label, error=f"{label}: analysis failed "
                                                f"({type(e).__name__}: {' '.join(str(e).split())})")
    return Digest(Path(path), label, summary=summary, findings=findings,
                  warnings=list(run.warnings), manifest=dict(run.manifest))


def digest(path: Path, root: Path) -> Digest:
    label = label_of(path, root)
    try:
        sig, stale = _key(path)
    except RunFormatError as e:     # vanished since it was listed
        return Digest(Path(path), label, error=str(e))
    return _digest(str(path), label, sig, stale)


def load(path: Path, root: Path) -> tuple[Run | None, str | None]:
    """(run, None) or (None, one-line error): the run's current state, from the cache when its
    files have not changed."""
    try:
        sig, stale = _key(path)
    except RunFormatError as e:
        return None, str(e)
    return _load(str(path), label_of(path, root), sig, stale)


def all_digests() -> list[Digest]:
    """Every run under the runs directory, readable or not, in label order."""
    root = runs_dir()
    return [digest(p, root) for p in discover(root)]


@st.cache_data(max_entries=64, show_spinner=False)
def _compare(a: tuple, b: tuple):
    ra, _ = _load(*a)
    rb, _ = _load(*b)
    da, db = _digest(*a), _digest(*b)
    return compare(ra, rb, da.findings, db.findings)


def comparison(a: str | os.PathLike, b: str | os.PathLike):
    """:func:`diagnostics.analyzers.compare` of two runs (cached by both signatures)."""
    root = runs_dir()
    a, b = Path(a), Path(b)
    ka = (str(a), label_of(a, root), *_key(a))
    kb = (str(b), label_of(b, root), *_key(b))
    return _compare(ka, kb)


# ------------------------------------------------------------------------------------------
# The sidebar: runs directory, run picker, live refresh
# ------------------------------------------------------------------------------------------

def _option_label(digests: dict[str, Digest]) -> Callable[[str], str]:
    def fmt(path: str) -> str:
        d = digests.get(path)
        if d is None:
            return path
        return d.label if d.status == "finished" else f"{d.label} ({d.status})"
    return fmt


def sidebar() -> None:
    """The runs directory setting, the runs to compare and the live toggle (main.py calls it
    once per rerun, outside any fragment: fragments cannot write to the sidebar)."""
    sb = st.sidebar
    _seed("runs_dir", str(runs_dir()))
    sb.text_input("Runs directory", key="runs_dir", on_change=_remember, args=("runs_dir",),
                  help=f"Every run under this folder (up to {MAX_DEPTH} levels deep) is listed. "
                       "Start the app with `streamlit run app/main.py -- --runs-dir PATH` to "
                       "change the default.")
    digests = all_digests()
    ok = {str(d.path): d for d in digests if d.ok}
    options = list(ok)
    if "_selected" not in st.session_state or st.session_state.get("_selected_in") != str(
            runs_dir()):                         # first run, or another runs directory
        newest = sorted(ok.values(), key=lambda d: -(d.summary.get("updated_at") or 0))
        chosen = {str(d.path) for d in newest[:MAX_DEFAULT_SELECTED]}
        st.session_state._selected = [p for p in options if p in chosen]
        st.session_state._selected_in = str(runs_dir())
    # the runs directory changed, or a run disappeared: keep what still exists
    st.session_state._selected = [p for p in st.session_state._selected if p in ok]
    _seed("selected", [])
    sb.multiselect("Runs to compare", options, key="selected", format_func=_option_label(ok),
                   on_change=_remember, args=("selected",),
                   help="The runs every page shows, on shared axes; the Overview compares two "
                        "of them.",
                   placeholder="pick runs")
    _seed("follow_live", True)
    sb.toggle(f"Follow live runs (every {REFRESH_S} s)", key="follow_live",
              on_change=_remember, args=("follow_live",),
              help="A page showing a run that is still training re-reads it on its own.")
    bad = len(digests) - len(ok)
    live = sum(d.status == "running" for d in ok.values())
    sb.caption(f"{len(digests)} run{'s' * (len(digests) != 1)} found · {live} live"
               + (f" · {bad} unreadable (see Overview)" if bad else ""))


def selected_paths() -> list[Path]:
    return [Path(p) for p in st.session_state.get("_selected", [])]


# ------------------------------------------------------------------------------------------
# Live pages
# ------------------------------------------------------------------------------------------

def live(body: Callable[[], Any], *, watch: Callable[[], Iterable[Digest]] | None = None) -> None:
    """Run a page's ``body`` in a fragment that re-runs every ``REFRESH_S`` seconds while a run it
    shows is still training (``watch``: the digests it shows, default the selected runs).

    Once nothing it shows is live any more (or a run appeared or went), the whole app reruns, so
    the refresh stops and the sidebar catches up.
    """
    watch = watch or selected_digests

    def state() -> tuple:
        ds = list(watch())
        return tuple(str(d.path) for d in ds), any(d.status == "running" for d in ds)

    follow = bool(st.session_state.get("_follow_live", True))
    started = state()
    every = REFRESH_S if follow and started[1] else None

    def fragment() -> None:
        now = state()
        if every is not None and now != started:
            st.rerun(scope="app")
        if every is not None:
            st.caption(f":green[:material/radio_button_checked:] Live: re-read every "
                       f"{REFRESH_S} s; last read {time.strftime('%H:%M:%S')}.")
        body()

    fragment.__name__ = fragment.__qualname__ = f"live_{getattr(body, '__name__', 'body')}"
    st.fragment(fragment, run_every=every)()


# ------------------------------------------------------------------------------------------
# Runs of the pages
# ------------------------------------------------------------------------------------------

def selected_digests() -> list[Digest]:
    root = runs_dir()
    return [digest(p, root) for p in selected_paths()]


def empty_state(*, need_selection: bool = True) -> bool:
    """Say how to make a run when there is none (True), or what to pick when none is selected
    (``need_selection``); False when there is something to show."""
    root = runs_dir()
    if not discover(root):
        st.info("No runs yet under this folder. `make demo` trains three short runs into "
                "`runs/demo` (runs in sub-folders are found too); or train one with the "
                "reference harness, or record your own training loop:",
                icon=":material/inbox:")
        st.code(str(root), language=None)
        st.code(MAKE_ONE, language="bash")
        return True
    if need_selection and not selected_paths():
        st.info("Pick one or more runs in the sidebar (“Runs to compare”).",
                icon=":material/arrow_back:")
        return True
    return False


def show_error(message: str, label: str = "") -> None:
    """A run that cannot be read: a fixed warning and its one-line message as plain text
    (prefixed with the run's label when the message does not name it)."""
    st.error("This run could not be read; the other runs are shown.", icon=":material/error:")
    if label and label not in message:
        message = f"{label}: {message}"
    st.code(message, language=None, wrap_lines=True)


def selected_runs() -> list[Run]:
    """The selected runs, loaded (from the cache when unchanged); unreadable ones are reported
    and left out."""
    root = runs_dir()
    runs = []
    for p in selected_paths():
        run, error = load(p, root)
        if run is None:
            show_error(error or "cannot read", label_of(p, root))
        else:
            runs.append(run)
    return runs


def default_layers(layers: Sequence[int], most: int = 8) -> list[int]:
    """All layers of a shallow model; six evenly spaced ones (first and last included) of a
    deep one."""
    layers = list(layers)
    if len(layers) <= most:
        return layers
    idx = sorted({round(i * (len(layers) - 1) / 5) for i in range(6)})
    return [layers[i] for i in idx]


def multiselect(label: str, options: Sequence, *, key: str, default: Sequence | None = None,
                where=None, **kwargs) -> list:
    """``st.multiselect`` whose kept selection survives changing options: values no longer
    offered are dropped, and a new widget starts at ``default`` (all options when None)."""
    options = list(options)
    if key not in st.session_state:
        st.session_state[key] = list(options if default is None else default)
    else:
        st.session_state[key] = [v for v in st.session_state[key] if v in options]
    return (where or st).multiselect(label, options, key=key, **kwargs)


def select(label: str, options: Sequence, *, key: str, index: int = 0, where=None, **kwargs):
    """``st.selectbox`` whose kept choice survives changing options: a value no longer offered
    falls back to ``options[index]``."""
    options = list(options)
    if options and st.session_state.get(key) not in options:
        st.session_state[key] = options[min(index, len(options) - 1)]
    return (where or st).selectbox(label, options, key=key, **kwargs)


def only_layers(runs: Sequence[Run], layers: Iterable[int], tables=("ssm", "ssm_state")) -> list:
    """Shallow copies of ``runs`` whose per-layer ``tables`` keep only ``layers`` (to keep tall
    layer x direction facets readable on deep models)."""
    keep = set(int(x) for x in layers)
    out = []
    for r in runs:
        v = copy.copy(r)
        for t in tables:
            df = getattr(r, t)
            setattr(v, t, df[df["layer"].isin(keep)] if "layer" in df else df)
        out.append(v)
    return out


def ssm_layers(runs: Sequence[Run]) -> list[int]:
    """Layers with SSM statistics in any of ``runs``."""
    found = set()
    for r in runs:
        if len(r.ssm) and "layer" in r.ssm:
            found.update(int(x) for x in pd.to_numeric(r.ssm["layer"], errors="coerce").dropna())
    return sorted(found)


# ------------------------------------------------------------------------------------------
# Figures, as the report shows them
# ------------------------------------------------------------------------------------------

def plot(fig, key: str, *, width: str = "stretch") -> None:
    """A plotly figure, in the report's own template (zoom kept across live refreshes)."""
    fig.update_layout(uirevision=key)
    if width == "stretch":
        fig.update_layout(width=None)     # a figure's own width would keep it from stretching
    st.plotly_chart(fig, key=key, theme=None, width=width, config=PLOTLY_CONFIG)


def show_figures(runs: Sequence[Run], sections: Sequence[str], *,
                 findings: Sequence | None = None) -> list[str]:
    """Every figure of ``sections`` (in the report's order) that the runs recorded, each under
    its title and description; returns the titles of those not recorded."""
    by_fig: dict[str, int] = {}
    for f in findings or []:
        by_fig[CODES[f.code].figure] = by_fig.get(CODES[f.code].figure, 0) + 1
    missing = []
    for section in sections:
        for spec in figures.FIGURES.values():
            if spec.section != section:
                continue
            fig = spec(runs) if spec.available(runs) else None
            if fig is None:
                missing.append(spec.title)
                continue
            st.subheader(spec.title, anchor=f"fig-{spec.key}")
            st.caption(spec.description)
            n = by_fig.get(spec.key, 0)
            if n:
                st.caption(f":material/flag: {n} finding{'s' * (n != 1)} point to this figure "
                           "(see the Findings page).")
            plot(fig, f"fig-{spec.key}")
    return missing


def not_recorded(titles: Sequence[str]) -> None:
    if titles:
        st.caption("Not recorded in the selected runs: " + "; ".join(titles) + ".")


def findings_of(digests: Iterable[Digest]) -> list:
    return [f for d in digests if d.ok for f in d.findings]


# ------------------------------------------------------------------------------------------
# Tables (DataFrames: shown as text, whatever the runs hold)
# ------------------------------------------------------------------------------------------

def _fmt_age(ts: Any) -> str | None:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return None
    s = max(0.0, time.time() - float(ts))
    if s < 90:
        return f"{s:.0f} s ago"
    if s < 5400:
        return f"{s / 60:.0f} min ago"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(ts)))


def overview_table(digests: Sequence[Digest]) -> pd.DataFrame:
    """One row per readable run: what the issue's Overview asks for, from ``run_summary``."""
    rows = []
    for d in digests:
        if not d.ok:
            continue
        s = d.summary
        counts = s.get("findings") or count_by_severity(d.findings)
        rows.append({
            "run": d.label,
            "status": s.get("status"),
            "backbone": s.get("backbone"),
            "steps": s.get("steps"),
            "best mAP (%)": s.get("best_mAP"),
            "best Rank-1 (%)": s.get("best_rank1"),
            "errors": counts.get("error", 0),
            "warnings": counts.get("warning", 0),
            "info": counts.get("info", 0),
            "loss first": s.get("initial_loss"),
            "loss end": s.get("final_loss"),
            "last step": s.get("last_step"),
            "updated": _fmt_age(s.get("updated_at")),
            "params": s.get("params"),
            "scan": s.get("scan_backend") if s.get("ssm_layers") else "—",
            "device": s.get("device"),
        })
    return pd.DataFrame(rows)


OVERVIEW_COLUMNS = {
    "best mAP (%)": st.column_config.NumberColumn(format="%.2f"),
    "best Rank-1 (%)": st.column_config.NumberColumn(format="%.2f"),
    "loss first": st.column_config.NumberColumn(format="%.4g"),
    "loss end": st.column_config.NumberColumn(format="%.4g", help="median of the last 5 steps"),
    "params": st.column_config.NumberColumn(format="localized"),
    "errors": st.column_config.NumberColumn(help="findings of severity error"),
    "warnings": st.column_config.NumberColumn(help="findings of severity warning"),
}


def colored(df: pd.DataFrame, column: str, colors: dict[str, str]):
    """``df`` as a Styler whose ``column`` is coloured (bold) by its value."""
    def style(v):
        c = colors.get(v)
        return f"color: {c}; font-weight: 600" if c else ""
    if column not in df or not len(df):
        return df
    return df.style.map(style, subset=[column])


VERDICT_BADGES = {"supported": ":green-badge[supported]",
                  "contradicted": ":red-badge[contradicted]",
                  "not measurable": ":gray-badge[not measurable]"}


def text_table(df: pd.DataFrame, widths: Sequence[float],
               badges: dict[str, dict[str, str]] | None = None) -> None:
    """A small table whose long cells wrap (``st.dataframe`` cuts them): every cell through
    ``st.text``, except values of ``badges[column]``, a fixed vocabulary drawn as badges."""
    badges = badges or {}
    head = st.columns(widths)
    for c, name in zip(head, df.columns):
        c.caption(str(name))               # our own column names
    for row in df.itertuples(index=False):
        cells = st.columns(widths)
        for c, name, v in zip(cells, df.columns, row):
            badge = badges.get(name, {}).get(v)
            if badge:
                c.markdown(badge)
            else:
                c.text("" if v is None else str(v))


def _steps_text(steps) -> str:
    if not steps:
        return "—"
    return f"{steps[0]}–{steps[1]}" if steps[0] != steps[1] else str(steps[0])


def _evidence_text(evidence: dict[str, Any]) -> str:
    return json.dumps(evidence, default=str, ensure_ascii=False)[:2000]


def shown_in(code: str) -> str:
    """Where the evidence of a finding code is drawn: ``Page · figure title``."""
    spec = figures.FIGURES.get(CODES[code].figure)
    if spec is None:
        return "—"
    return f"{SECTION_PAGES.get(spec.section, '?')} · {spec.title}"


def findings_table(digests: Sequence[Digest]) -> pd.DataFrame:
    """Every finding of ``digests``, worst first (the analyzers' order within a run)."""
    rows = []
    for d in digests:
        if not d.ok:
            continue
        for f in d.findings:
            rows.append({
                "severity": f.severity,
                "code": f.code,
                "run": d.label,
                "layer": ("—" if f.layer is None else
                          "outside blocks" if f.layer < 0 else str(f.layer)),
                "direction": f.direction or "—",
                "steps": _steps_text(f.steps),
                "finding": f.message,
                "remedy": f.remedy,
                "evidence": _evidence_text(f.evidence),
                "shown in": shown_in(f.code),
                "_rank": -SEVERITIES.index(f.severity),
            })
    df = pd.DataFrame(rows, columns=["severity", "code", "run", "finding", "remedy", "layer",
                                     "direction", "steps", "shown in", "evidence", "_rank"])
    return df.sort_values("_rank", kind="stable").drop(columns="_rank").reset_index(drop=True)


FINDINGS_COLUMNS = {
    "finding": st.column_config.TextColumn(width="large"),
    "remedy": st.column_config.TextColumn(width="large"),
    "evidence": st.column_config.TextColumn(width="medium", help="the numbers that triggered "
                                                                  "it (JSON)"),
}


def filter_findings(table: pd.DataFrame, severities: Sequence[str], codes: Sequence[str],
                    runs: Sequence[str], text: str = "") -> pd.DataFrame:
    """Rows of :func:`findings_table` with those severities, codes and runs (an empty choice
    keeps all), holding ``text`` (case-insensitive) in the finding, remedy, code or evidence."""
    keep = pd.Series(True, index=table.index)
    for column, chosen in (("severity", severities), ("code", codes), ("run", runs)):
        if chosen:
            keep &= table[column].isin(list(chosen))
    text = (text or "").strip().lower()
    if text:
        hay = (table["finding"] + " " + table["remedy"] + " " + table["code"] + " "
               + table["evidence"]).str.lower()
        keep &= hay.str.contains(text, regex=False)
    return table[keep]


def codes_table() -> pd.DataFrame:
    return pd.DataFrame([{"code": c.code, "meaning": c.meaning, "fires when": c.threshold,
                          "threshold from": c.source, "remedy": c.remedy,
                          "shown in": shown_in(c.code)} for c in CODES.values()])


def comparison_tables(comp, label_a: str, label_b: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the pair's verdicts, the seed's claims C1-C10) of a :class:`Comparison`."""
    who = {"a": label_a, "b": label_b, None: "neither (a tie)"}
    pair = pd.DataFrame([
        {"question": "converged faster", "answer": who[comp.convergence.get("faster")],
         "evidence": comp.convergence.get("text", "")},
        {"question": "more stable", "answer": who[comp.stability.get("more_stable")],
         "evidence": comp.stability.get("text", "")},
        {"question": "gradient profile across depth", "answer": "",
         "evidence": comp.depth_profile.get("text", "")},
    ])
    claims = pd.DataFrame([{"claim": v.claim, "what it says": v.text,
                            "verdict": v.verdict,
                            "evidence": v.evidence} for v in comp.claims],
                          columns=["claim", "what it says", "verdict", "evidence"])
    return pair, claims


def config_table(manifest: dict[str, Any]) -> pd.DataFrame:
    cfg = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    return pd.DataFrame([{"key": str(k), "value": json.dumps(v, default=str, ensure_ascii=False)}
                         for k, v in sorted(cfg.items(), key=lambda kv: str(kv[0]))],
                        columns=["key", "value"])


def events_table(runs: Sequence[Run], kinds: Sequence[str] | None = None) -> pd.DataFrame:
    frames = []
    for r in runs:
        ev = r.events
        if len(ev):
            ev = ev if kinds is None else ev[ev["kind"].astype("string").isin(list(kinds))]
            frames.append(ev.assign(run=r.name)[["run", "step", "kind", "where", "message"]])
    if not frames:
        return pd.DataFrame(columns=["run", "step", "kind", "where", "message"])
    return pd.concat(frames, ignore_index=True).sort_values(["step", "run"], kind="stable")


# ------------------------------------------------------------------------------------------
# Scan paths vs attention (diagnostics.maps, issue 7)
# ------------------------------------------------------------------------------------------

def _maps_key(path: Path) -> tuple:
    """Stats of ``runs/NAME/maps/*`` (run_signature covers only the tables' parts)."""
    from diagnostics.maps import maps_dir
    folder = maps_dir(path)
    try:
        return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                            for e in os.scandir(folder) if e.is_file()))
    except OSError:
        return ()


@st.cache_data(max_entries=16, show_spinner=False)
def _maps(paths: tuple[str, ...], keys: tuple):   # keys: the maps folders' stats, a cache key
    from diagnostics.maps import maps_for_report
    return maps_for_report([Path(p) for p in paths])


def maps_of(paths: Sequence[Path]):
    """``(sets, scores, notes, without)``: the latest maps of each run that has some
    (:func:`diagnostics.maps.maps_for_report`), their comparison numbers, notes, and the runs
    without maps."""
    keys = tuple(_maps_key(p) for p in paths)
    without = [p for p, k in zip(paths, keys) if not any(n.endswith(".npz") for n, _, _ in k)]
    with_maps = [p for p in paths if p not in without]
    if not with_maps:
        return [], None, [], without
    sets, scores, notes = _maps(tuple(map(str, with_maps)),
                                tuple(k for p, k in zip(paths, keys) if p in with_maps))
    return sets, scores, notes, without


def for_plotly(sets: Sequence, scores) -> tuple[list, Any]:
    """Copies of MapSets and scores whose run strings (names, directions, attribution methods:
    all read from the run's files) are escaped for plotly's text renderer
    (``diagnostics.maps_figures`` puts them into titles as they are)."""
    t = figures.plot_text
    esc = [replace(s, name=t(s.name or s.backbone), backbone=t(s.backbone),
                   directions=[t(d) for d in s.directions],
                   attributions={t(k): v for k, v in s.attributions.items()}) for s in sets]
    sc = None
    if scores is not None:
        sc = scores.copy()
        sc["backbone"] = sc["backbone"].map(figures.plot_text)
    return esc, sc


def maps_sets_table(sets: Sequence) -> pd.DataFrame:
    """One row per MapSet: whose maps, of which images, at which step."""
    return pd.DataFrame([{"maps": s.label, "backbone": s.backbone, "kind": s.kind,
                          "step": s.step, "layers": len(s.layer_ids), "images": s.num_images,
                          "image ids": ", ".join(map(str, s.image_ids)),
                          "grid": f"{s.grid_size[0]}×{s.grid_size[1]} (patch {s.patch_size})",
                          "directions": ", ".join(s.directions) or "—",
                          "attributions": ", ".join(s.attributions) or "—",
                          "source": s.source} for s in sets])


def maps_command(paths: Sequence[Path]) -> str:
    """The command that computes maps for ``paths`` (from each run's checkpoint)."""
    import shlex
    return "diagnose maps " + " ".join(f"--run {shlex.quote(str(p))}" for p in paths)


def query_options(ms) -> list[int | None]:
    """Query tokens of a MapSet's grid: None (the output token), then every patch."""
    gh, gw = ms.grid_size
    return [None] + list(range(gh * gw))


def query_label(ms) -> Callable[[int | None], str]:
    gh, gw = ms.grid_size
    centre = (gh // 2) * gw + gw // 2

    def fmt(q: int | None) -> str:
        if q is None:
            return "output token (what the head reads)"
        r, c = divmod(q, gw)
        return f"patch {q} (row {r}, column {c})" + (" · centre" if q == centre else "")
    return fmt


def safe_figure(build: Callable[[], Any], key: str, **kwargs) -> None:
    """Draw ``build()``; a ValueError (maps that cannot be drawn together) becomes a message."""
    try:
        fig = build()
    except ValueError as e:
        st.warning("This figure cannot be drawn for these maps:", icon=":material/warning:")
        st.code(" ".join(str(e).split()), language=None, wrap_lines=True)
        return
    plot(fig, key, **kwargs)


def maps_figures():
    """:mod:`diagnostics.maps_figures` (imported on the maps page only: it pulls in torch)."""
    from diagnostics import maps_figures as MF
    return MF


def maps_numbers(scores) -> pd.DataFrame:
    """``comparison_table(scores)``: a row per (map, layer), a column per (metric, run)."""
    from diagnostics.maps import comparison_table
    return comparison_table(scores)


PAGE_FILES = {"Convergence": "views/convergence.py", "Layers": "views/layers.py",
              "SSM internals": "views/ssm.py"}


def finding_details(row: pd.Series) -> None:
    """One row of :func:`findings_table` in full: what, where, the numbers, the remedy, and a
    link to the page with its figure."""
    with st.container(border=True):
        color = {"error": "red", "warning": "orange", "info": "blue"}.get(row["severity"])
        if color:                                    # a fixed vocabulary, not run text
            st.markdown(f":{color}-badge[{row['severity']}]")
        st.code(str(row["code"]), language=None)
        st.text(str(row["finding"]))
        st.text(f"run {row['run']} · layer {row['layer']} · direction {row['direction']} · "
                f"steps {row['steps']}")
        try:
            ev = json.loads(row["evidence"])
        except ValueError:
            ev = None
        if isinstance(ev, dict) and ev:
            st.dataframe(pd.DataFrame({"evidence": list(map(str, ev)),
                                       "value": [json.dumps(v, ensure_ascii=False)
                                                 if not isinstance(v, str) else v
                                                 for v in ev.values()]}),
                         hide_index=True, key="finding-evidence")
        st.caption("Remedy")
        st.text(str(row["remedy"]))
        page = str(row["shown in"]).split(" · ", 1)[0]
        if page in PAGE_FILES:
            st.page_link(PAGE_FILES[page], label=f"See it: {row['shown in']}",
                         icon=":material/insert_chart:")


# ------------------------------------------------------------------------------------------
# Remedies: `diagnose sweep` folders
# ------------------------------------------------------------------------------------------

MAKE_SWEEP = ("diagnose sweep --backbone MAMBA-V2-T --image-size 64x32 --patch-size 8 "
              "--runs-dir runs/sweep --budget-steps 120 --seeds 2 --jobs 2")


def discover_sweeps(root: str | os.PathLike, max_depth: int = MAX_DEPTH) -> list[Path]:
    """Every folder written by `diagnose sweep` (it holds ``sweep.json``) at or under ``root``,
    ``max_depth`` folders deep (hidden folders and run folders skipped)."""
    from diagnostics.sweep import is_sweep

    found: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        if is_sweep(folder):
            found.append(folder)
            return                       # a sweep's sub-folders are its runs
        if depth >= max_depth or (folder / MANIFEST_NAME).exists():
            return
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False) and not e.name.startswith("."):
                    walk(Path(e.path), depth + 1)
            except OSError:
                continue

    walk(Path(root), 0)
    return found


def _sweep_key(path: Path) -> tuple:
    """The cache key of a sweep's current state: its plan's stats and each run's signature
    (a run still training changes it on every flush)."""
    plan = path / "sweep.json"
    try:
        st_ = os.stat(plan)
        head: tuple = (st_.st_mtime_ns, st_.st_size)
        names = [r for v in json.loads(plan.read_text(encoding="utf-8")).get("variants", [])
                 for r in v.get("runs", []) if isinstance(r, str)]
    except (OSError, ValueError, AttributeError):
        return (None,)
    sigs = []
    for name in names:
        try:
            sigs.append(run_signature(path / name))
        except (RunFormatError, OSError, ValueError):
            sigs.append(None)
    return head, tuple(sigs)


@st.cache_resource(max_entries=8, show_spinner="Reading the sweep's runs…")
def _sweep(path: str, key: tuple):
    from diagnostics.sweep import load_sweep
    try:
        return load_sweep(path), None
    except RunFormatError as e:
        return None, str(e)


def sweep_of(path: Path):
    """(SweepResult, None) or (None, one-line error); cached until a run of it changes. The
    result is shared between sessions: read it, never change it."""
    return _sweep(str(path), _sweep_key(Path(path)))


def ranking_table(rank: pd.DataFrame) -> pd.DataFrame:
    """The ranking as the terminal prints it: mean ± std strings, effects, findings."""
    from diagnostics.sweep import _pm, _reached

    rows = []
    for r in rank.to_dict("records"):
        d = r["delta_mAP"]
        rows.append({
            "#": r["rank"], "variant": r["variant"], "what it changes": r["changes"],
            "score": r["score"],
            "verdict": "reference" if r["variant"] == "baseline" else r["verdict"],
            "mAP %": _pm(r["mAP_mean"], r["mAP_std"], ".1f"),
            "Δ mAP": d if pd.notna(d) else None,
            "Rank-1 %": _pm(r["rank1_mean"], r["rank1_std"], ".1f"),
            "final loss": _pm(r["final_loss_mean"], r["final_loss_std"], ".3g"),
            "steps to loss ≤ baseline's": _reached(r),
            "grad-norm CV": _pm(r["grad_cv_mean"], r["grad_cv_std"], ".2f"),
            "findings gone": r["findings_gone"], "findings new": r["findings_new"],
            "runs": r["statuses"]})
    return pd.DataFrame(rows)


RANKING_COLUMNS = {
    "score": st.column_config.NumberColumn(
        format="%+.2f", help="Mean effect against the baseline over mAP, final loss and "
                             "grad-norm CV, each in units of its seed-to-seed std (±3 at most)"),
    "verdict": st.column_config.TextColumn(
        help="The metrics whose difference from the baseline exceeds 2 standard errors"),
    "Δ mAP": st.column_config.NumberColumn(format="%+.1f"),
}


def ssm_effects_table(sweep) -> pd.DataFrame:
    """:func:`diagnostics.sweep.ssm_effects` with the figures' titles (|A·dt| positive)."""
    from diagnostics.sweep import ssm_effects

    eff = ssm_effects(sweep.runs)
    out = pd.DataFrame({"variant": eff["variant"]}) if len(eff) else pd.DataFrame()
    for col, title, _, negate in figures.REMEDY_SSM:
        if col in eff:
            out[title] = 0.0 - eff[col] if negate else eff[col]
    return out


def sweep_runs_table(sweep) -> pd.DataFrame:
    runs = sweep.runs
    out = runs[["variant", "seed", "status", "steps", "mAP", "final_loss", "grad_cv",
                "error"]].copy()
    out.insert(2, "run", runs["run"].map(lambda p: Path(str(p)).name))
    out["findings"] = runs["findings"].map(lambda fs: ", ".join(fs) if isinstance(fs, list)
                                           else "")
    return out

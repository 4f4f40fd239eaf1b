"""The convergence report: `diagnose --run runs/x [--run runs/y]` and the self-contained HTML.

Compute -> structure -> render, each apart (ydata-profiling's habit):

    runs = load_runs(["runs/mamba_v2", "runs/vit_s"])
    analysis = analyse_runs(runs)                  # findings per run, comparisons, summaries
    html = render_html(analysis)                   # one string: the whole page, offline
    write_report(analysis, "reports/x.html")

The page reads top to bottom: summary -> findings (counts, each linked to the figure that shows
its evidence) -> comparison and the verdicts on the seed's claims (two runs or more) ->
loss/lr/grad-norm curves -> per-layer gradient heatmap -> dt and A·dt bands -> decay fractions
and state norms -> A_log drift -> ViT attention statistics -> the glossary of codes. Several runs
share each figure's axes. Plotly's JavaScript is inlined once, in the head; no CDN, so the file
opens offline. Every string that comes from a run is HTML-escaped here, and escaped for plotly's
text renderer in :mod:`diagnostics.figures`.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from diagnostics.analyzers import (CODES, SEVERITIES, Comparison, Finding, _dir_key, analyze,
                                   compare, count_by_severity, run_summary, severity_rank)
from diagnostics.runfmt import Run, load_run

__all__ = ["Analysis", "analyse_runs", "load_runs", "render_html", "write_report",
           "default_report_path", "json_payload", "diagnose_runs", "REPORTS_DIR",
           "render_sweep_html", "write_sweep_report", "diagnose_sweep"]

REPORTS_DIR = Path("reports")
JSON_SCHEMA = 1


# ------------------------------------------------------------------------------------------
# Compute
# ------------------------------------------------------------------------------------------

@dataclass
class Analysis:
    """Everything the report shows: runs, their findings and summaries, and comparisons
    (the first run against each other run)."""
    runs: list[Run]
    findings: list[list[Finding]]
    summaries: list[dict[str, Any]]
    comparisons: list[tuple[int, int, Comparison]] = field(default_factory=list)
    # scan paths vs attention (diagnostics.maps.maps_for_report): (map sets, scores, notes)
    maps: tuple[list, Any, list[str]] = field(default_factory=lambda: ([], None, []))

    def all_findings(self) -> list[tuple[int, Finding]]:
        """(run index, finding), worst first across runs."""
        items = [(i, f) for i, fs in enumerate(self.findings) for f in fs]
        return sorted(items, key=lambda it: (-severity_rank(it[1].severity), it[0]))


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Load each run; a missing path, a non-run or an unreadable run raises RunFormatError."""
    if not paths:
        raise ValueError("no run given (diagnose --run PATH)")
    return [load_run(p) for p in paths]


def analyse_runs(runs: Sequence[Run]) -> Analysis:
    runs = list(runs)
    findings = [analyze(r) for r in runs]
    summaries = [run_summary(r, f) for r, f in zip(runs, findings)]
    comps = [(0, j, compare(runs[0], runs[j], findings[0], findings[j]))
             for j in range(1, len(runs))]
    from diagnostics.maps import maps_for_report
    return Analysis(runs, findings, summaries, comps,
                    maps=maps_for_report([r.path for r in runs]))


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "run"


def default_report_path(runs: Sequence[Run], reports_dir: str | Path = REPORTS_DIR) -> Path:
    """``reports/NAME.html``; ``reports/A_vs_B.html`` for several runs (names made file-safe)."""
    stem = "_vs_".join(_safe_name(r.name) for r in runs)[:120]
    return Path(reports_dir) / f"{stem}.html"


# ------------------------------------------------------------------------------------------
# Render
# ------------------------------------------------------------------------------------------

def e(value: Any) -> str:
    """HTML-escape anything (the only way run data enters the page)."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return e(v)
    if not math.isfinite(f):
        return str(f)
    return f"{f:.{digits}g}"


def _sev(severity: str) -> str:
    return f'<span class="sev sev-{e(severity)}">{e(severity)}</span>'


def _verdict(v: str) -> str:
    cls = {"supported": "ok", "contradicted": "bad"}.get(v, "na")
    return f'<span class="verdict v-{cls}">{e(v)}</span>'


def _status(s: str) -> str:
    cls = {"finished": "ok", "running": "na", "crashed": "bad", "diverged": "bad"}.get(s, "na")
    return f'<span class="verdict v-{cls}">{e(s)}</span>'


_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mambascope">
<title>$title</title>
<style>$css</style>
<script type="text/javascript">$plotlyjs</script>
</head>
<body>
<header><h1>$title</h1><p class="sub">$subtitle</p></header>
<nav>$nav</nav>
<main>
$body
</main>
<footer>$footer</footer>
</body>
</html>
""")

_CSS = """
:root { --err:#c0392b; --warn:#b9770e; --info:#2874a6; --ok:#1e8449; --muted:#6c757d;
        --line:#dee2e6; --bg:#f8f9fa; }
* { box-sizing: border-box; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0; color: #212529; background: #fff; font-size: 14px; line-height: 1.45; }
header { padding: 18px 32px 8px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 22px; word-break: break-word; }
.sub { color: var(--muted); margin: 4px 0 0; }
nav { position: sticky; top: 0; z-index: 10; background: #fff; padding: 8px 32px;
      border-bottom: 1px solid var(--line); }
nav a { margin-right: 16px; color: #0b5ed7; text-decoration: none; white-space: nowrap; }
nav a:hover { text-decoration: underline; }
main { padding: 8px 32px 32px; max-width: 1500px; }
section { margin-top: 26px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 16px; margin: 18px 0 4px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.nw { white-space: nowrap; }
table.findings td { max-width: 420px; }
table.summary th:first-child { min-width: 150px; }
.sev, .verdict { display: inline-block; padding: 1px 7px; border-radius: 10px; color: #fff;
                 font-size: 12px; font-weight: 600; white-space: nowrap; }
.sev-error { background: var(--err); } .sev-warning { background: var(--warn); }
.sev-info { background: var(--info); }
.v-ok { background: var(--ok); } .v-bad { background: var(--err); }
.v-na { background: var(--muted); }
.counts span { margin-right: 10px; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
              font-size: 12.5px; }
.desc { color: #495057; margin: 2px 0 6px; max-width: 1100px; }
.fig { margin: 10px 0 26px; border-top: 1px solid #f1f3f5; padding-top: 6px; }
.backlinks { font-size: 12.5px; color: var(--muted); }
.muted { color: var(--muted); }
details summary { cursor: pointer; color: #0b5ed7; }
dl.ev { margin: 0; display: grid; grid-template-columns: max-content 1fr; column-gap: 8px; }
dl.ev dt { color: var(--muted); } dl.ev dd { margin: 0; word-break: break-word; }
footer { padding: 16px 32px; color: var(--muted); border-top: 1px solid var(--line);
         font-size: 12.5px; }
"""


def _evidence_html(evidence: dict[str, Any]) -> str:
    rows = []
    for k, v in evidence.items():
        if isinstance(v, dict):
            v = "; ".join(f"{kk}: {_num(vv) if not isinstance(vv, str) else vv}"
                          for kk, vv in v.items())
            rows.append(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>")
        elif isinstance(v, (list, tuple)):
            rows.append(f"<dt>{e(k)}</dt><dd>{e(', '.join(_num(x) for x in v))}</dd>")
        elif isinstance(v, str):
            rows.append(f"<dt>{e(k)}</dt><dd class=\"mono\">{e(v)}</dd>")
        else:
            rows.append(f"<dt>{e(k)}</dt><dd>{_num(v)}</dd>")
    return f'<dl class="ev">{"".join(rows)}</dl>'


def _summary_cells(x: dict[str, Any]) -> list[tuple[str, str]]:
    """(row label, cell html) of one run's summary column; every run string escaped."""
    def best(metric: str) -> str:
        v, st = x.get(f"best_{metric}"), x.get(f"best_{metric}_step")
        step = f' <span class="muted">(step {_num(st)})</span>' if v is not None else ""
        return f'<td class="num">{_num(v)}{step}</td>'

    def num(key: str, digits: int = 4) -> str:
        return f'<td class="num">{_num(x.get(key), digits)}</td>'

    dirs = sorted(map(str, x.get("directions") or []), key=_dir_key)
    scan = e(x.get("scan_backend")) if x.get("ssm_layers") else "— (no SSM layer)"
    counts = " ".join(f"{_sev(k)} {v}" for k, v in (x.get("findings") or {}).items())
    return [
        ("backbone", f"<td>{e(x.get('backbone'))}</td>"),
        ("status", f"<td>{_status(x.get('status') or 'unknown')}</td>"),
        ("steps recorded", f'<td class="num">{_num(x.get("steps"))} <span class="muted">'
                           f'(last step {_num(x.get("last_step"))})</span></td>'),
        ("best mAP (%)", best("mAP")),
        ("best Rank-1 (%)", best("rank1")),
        ("loss: first → end (median of last 5)",
         f'<td class="num">{_num(x.get("initial_loss"))} → {_num(x.get("final_loss"))}</td>'),
        ("scan backend", f"<td>{scan}</td>"),
        ("device", f"<td>{e(x.get('device'))} × {_num(x.get('world_size'))}</td>"),
        ("parameters", num("params")),
        ("layers (SSM / attention)", f'<td class="num">{_num(x.get("num_layers"))} '
                                     f'({_num(x.get("ssm_layers"))} / '
                                     f'{_num(x.get("attention_layers"))})</td>'),
        ("scan directions", f"<td>{e(', '.join(dirs) or '—')}</td>"),
        ("peak memory (MB)", num("peak_mem_mb", 5)),
        ("throughput (samples/s)", num("samples_per_s")),
        ("probe every (steps)", num("probe_every")),
        ("findings", f"<td>{counts}</td>"),
    ]


def _summary_html(a: Analysis) -> str:
    s = a.summaries
    columns = [_summary_cells(x) for x in s]
    if any(x.get("manifest_name") not in (None, x["name"]) for x in s):
        for col, x in zip(columns, s):
            col.insert(0, ("name in manifest", f"<td>{e(x.get('manifest_name'))}</td>"))
    heads = "".join(f"<th>{e(x['name'])}</th>" for x in s)
    rows = "".join(f"<tr><th>{e(label)}</th>{''.join(col[i][1] for col in columns)}</tr>"
                   for i, (label, _) in enumerate(columns[0]))
    configs = []
    for r in a.runs:
        cfg = r.manifest.get("config") or {}
        items = "".join(f'<tr><th>{e(k)}</th><td class="mono">{e(json.dumps(v, default=str))}'
                        "</td></tr>" for k, v in sorted(cfg.items(), key=lambda kv: str(kv[0])))
        versions = r.manifest.get("versions") or {}
        vers = ", ".join(f"{k} {v}" for k, v in versions.items())
        configs.append(f"<details><summary>configuration of {e(r.name)}</summary>"
                       f"<table>{items or '<tr><td>(empty)</td></tr>'}</table>"
                       f"<p class=\"muted\">{e(vers)}; run directory <code>{e(r.path)}</code></p>"
                       "</details>")
    warns = [f"<li>{e(r.name)}: {e(w)}</li>"
             for r in a.runs for w in (getattr(r, "warnings", None) or [])]
    warn_html = f"<p><b>Read with warnings:</b></p><ul>{''.join(warns)}</ul>" if warns else ""
    return (f'<section id="summary"><h2>Summary</h2>'
            f'<table class="summary"><tr><th></th>{heads}</tr>{rows}</table>'
            f'{"".join(configs)}{warn_html}</section>')


def _findings_html(a: Analysis, rendered: set[str]) -> str:
    items = a.all_findings()
    counts = count_by_severity(f for _, f in items)
    count_html = "".join(f"<span>{_sev(k)} {v}</span>" for k, v in counts.items())
    if not items:
        return (f'<section id="findings"><h2>Findings</h2><p class="counts">{count_html}</p>'
                "<p>No findings: nothing recorded crossed a threshold.</p></section>")
    multi = len(a.runs) > 1
    head = ("<tr><th>#</th><th>severity</th><th>code</th>" + ("<th>run</th>" if multi else "")
            + "<th>layer</th><th>direction</th><th>steps</th><th>what</th><th>evidence</th>"
              "<th>remedy</th></tr>")
    rows = []
    for n, (i, f) in enumerate(items, start=1):
        fig = CODES[f.code].figure
        link = (f'<a href="#fig-{e(fig)}">plot ↓</a>' if fig in rendered
                else '<span class="muted">not recorded</span>')
        steps = (f"{f.steps[0]}–{f.steps[1]}" if f.steps and f.steps[0] != f.steps[1]
                 else (str(f.steps[0]) if f.steps else "—"))
        layer = "—" if f.layer is None else ("outside blocks" if f.layer < 0 else str(f.layer))
        rows.append(
            f'<tr id="finding-{n}"><td class="num">{n}</td><td>{_sev(f.severity)}</td>'
            f'<td><a href="#code-{e(f.code)}"><code>{e(f.code)}</code></a></td>'
            + (f"<td>{e(a.runs[i].name)}</td>" if multi else "")
            + f'<td class="num">{e(layer)}</td><td>{e(f.direction or "—")}</td>'
              f'<td class="num">{e(steps)}</td><td>{e(f.message)}</td>'
              f"<td>{link}<details><summary>numbers</summary>{_evidence_html(f.evidence)}"
              f"</details></td><td>{e(f.remedy)}</td></tr>")
    return (f'<section id="findings"><h2>Findings</h2><p class="counts">{count_html}</p>'
            f'<table class="findings">{head}{"".join(rows)}</table></section>')


def _comparison_html(a: Analysis) -> str:
    if not a.comparisons:
        return ""
    parts = ['<section id="comparison"><h2>Comparison</h2>']
    for i, j, c in a.comparisons:
        na, nb = a.runs[i].name, a.runs[j].name
        who = {"a": na, "b": nb, None: "neither (a tie)"}
        parts.append(f"<h3>{e(na)} (a) vs {e(nb)} (b)</h3><table>"
                     f"<tr><th>converged faster</th><td>{e(who[c.convergence.get('faster')])}</td>"
                     f"<td>{e(c.convergence.get('text', ''))}</td></tr>"
                     f"<tr><th>more stable</th><td>{e(who[c.stability.get('more_stable')])}</td>"
                     f"<td>{e(c.stability.get('text', ''))}</td></tr>"
                     f"<tr><th>gradient profile</th><td></td>"
                     f"<td>{e(c.depth_profile.get('text', ''))}</td></tr></table>")
        rows = "".join(f"<tr><td><b>{e(v.claim)}</b></td><td>{e(v.text)}</td>"
                       f"<td>{_verdict(v.verdict)}</td><td>{e(v.evidence)}</td></tr>"
                       for v in c.claims)
        parts.append("<p class=\"desc\">The seed analysis's claims (SUMMARY.md C1–C10) that this "
                     "pair of runs can speak to:</p>"
                     "<table class=\"findings\"><tr><th>claim</th><th>what it says</th>"
                     f"<th>verdict</th><th>evidence</th></tr>{rows}</table>")
    parts.append("</section>")
    return "".join(parts)


def _figures_html(a: Analysis) -> tuple[str, set[str], list[str], list[tuple[str, str]]]:
    """(html of every figure section, keys rendered, titles skipped, nav entries)."""
    from diagnostics import figures as F

    items = a.all_findings()
    by_fig: dict[str, list[int]] = {}
    for n, (_, f) in enumerate(items, start=1):
        by_fig.setdefault(CODES[f.code].figure, []).append(n)
    out, rendered, skipped, nav = [], set(), [], []
    for section, title in F.SECTIONS.items():
        blocks = []
        for spec in F.FIGURES.values():
            if spec.section != section:
                continue
            fig = spec(a.runs) if spec.available(a.runs) else None
            if fig is None:
                skipped.append(spec.title)
                continue
            rendered.add(spec.key)
            div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{spec.key}",
                              config={"displaylogo": False, "responsive": True})
            back = by_fig.get(spec.key, [])
            back_html = ('<p class="backlinks">evidence for findings '
                         + ", ".join(f'<a href="#finding-{n}">#{n}</a>' for n in back) + "</p>"
                         if back else "")
            blocks.append(f'<div class="fig" id="fig-{e(spec.key)}"><h3>{e(spec.title)}</h3>'
                          f'<p class="desc">{e(spec.description)}</p>{back_html}{div}</div>')
        if blocks:
            nav.append((f"sec-{section}", title.split(":")[0]))
            out.append(f'<section id="sec-{e(section)}"><h2>{e(title)}</h2>'
                       f'{"".join(blocks)}</section>')
    return "".join(out), rendered, skipped, nav


def _glossary_html() -> str:
    rows = "".join(
        f'<tr id="code-{e(c.code)}"><td><code>{e(c.code)}</code></td><td>{e(c.meaning)}</td>'
        f"<td>{e(c.threshold)}</td><td>{e(c.source)}</td><td>{e(c.remedy)}</td></tr>"
        for c in CODES.values())
    return ('<section id="glossary"><h2>Finding codes</h2><table class="findings"><tr>'
            "<th>code</th><th>meaning</th><th>fires when</th><th>threshold from</th>"
            f"<th>remedy</th></tr>{rows}</table></section>")


def render_html(a: Analysis, *, title: str | None = None, now: _dt.datetime | None = None) -> str:
    """The whole report as one HTML string (plotly's JavaScript inlined once)."""
    names = [r.name for r in a.runs]
    title = title or ("mambascope: " + " vs ".join(names))
    now = now or _dt.datetime.now()
    fig_html, rendered, skipped, fig_nav = _figures_html(a)
    n_find = sum(len(f) for f in a.findings)
    nav = [("summary", "Summary"), ("findings", f"Findings ({n_find})")]
    if a.comparisons:
        nav.append(("comparison", "Comparison"))
    nav += fig_nav + [("maps", "Scan paths vs attention"), ("glossary", "Codes")]
    from diagnostics.maps_cmd import section_html
    sets, scores, notes = a.maps
    maps_html = section_html(sets, scores, images=(0, 1), notes=notes)
    body = (_summary_html(a) + _findings_html(a, rendered) + _comparison_html(a) + fig_html
            + maps_html + _glossary_html())
    return _page(title, f"{len(a.runs)} run{'s' * (len(a.runs) != 1)}: " + ", ".join(
        f"{r.name} ({r.manifest.get('backbone') or '?'}, {r.status})" for r in a.runs),
                 nav, body, skipped, now)


def _page(title: str, subtitle: str, nav: list[tuple[str, str]], body: str,
          skipped: Sequence[str], now: _dt.datetime) -> str:
    """The whole page around ``body`` (trusted HTML): title and subtitle (text, escaped here),
    navigation, footer with the version and the figures not shown, plotly.js inlined once."""
    from plotly.offline import get_plotlyjs

    try:
        from importlib.metadata import version
        ver = version("mambascope")
    except Exception:  # noqa: BLE001 - not installed: still a report
        ver = "unknown"
    footer = (f"mambascope {e(ver)} · generated {e(now.strftime('%Y-%m-%d %H:%M'))}"
              + (f" · not shown (not recorded in these runs): {e('; '.join(skipped))}"
                 if skipped else ""))
    return _PAGE.substitute(
        title=e(title), css=_CSS, plotlyjs=get_plotlyjs(),
        subtitle=e(subtitle),
        nav="".join(f'<a href="#{e(k)}">{e(v)}</a>' for k, v in nav), body=body, footer=footer)


def write_report(a: Analysis, path: str | Path) -> Path:
    """Write the report to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(a), encoding="utf-8")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------
# Remedies: the report of a `diagnose sweep` folder
# ------------------------------------------------------------------------------------------

def _verdict_class(verdict: str) -> str:
    if verdict == "fails" or verdict.startswith("worse"):
        return "bad"
    if verdict.startswith("better") and "worse" not in verdict:
        return "ok"
    return "na"


def _pm_html(mean: Any, std: Any, fmt: str) -> str:
    from diagnostics.sweep import _pm
    return e(_pm(mean, std, fmt))


def _ranking_html(rank) -> str:
    """The ranking as a table: one row per variant, best first (every cell escaped)."""
    from diagnostics.sweep import EFFECT_SE, _reached
    if not len(rank):
        return "<p>No variant to rank.</p>"
    thr = rank["loss_threshold"].iloc[0]
    head = ("<tr><th>#</th><th>variant</th><th>what it changes</th><th>score</th>"
            "<th>verdict</th><th>mAP % (Δ ± se)</th><th>Rank-1 %</th><th>final loss</th>"
            f"<th>steps to loss ≤ {_num(thr, 3)}</th><th>grad-norm CV</th>"
            "<th>findings gone</th><th>findings new</th><th>runs</th></tr>")
    rows = []
    for r in rank.to_dict("records"):
        d, se = r["delta_mAP"], r["delta_mAP_se"]
        delta = "" if not math.isfinite(d) else (
            f" ({d:+.1f}" + (f" ± {se:.1f}" if math.isfinite(se) else "") + ")")
        verdict = "reference" if r["variant"] == "baseline" else r["verdict"]
        score = "—" if not math.isfinite(r["score"]) else f"{r['score']:+.2f}"
        rows.append(
            f'<tr id="variant-{r["rank"]}"><td class="num nw">{r["rank"]}</td>'
            f"<td><b>{e(r['variant'])}</b></td><td>{e(r['changes'] or '—')}</td>"
            f'<td class="num nw">{score}</td>'
            f'<td><span class="verdict v-{_verdict_class(verdict)}">{e(verdict)}</span></td>'
            f'<td class="num nw">{_pm_html(r["mAP_mean"], r["mAP_std"], ".1f")}{e(delta)}</td>'
            f'<td class="num nw">{_pm_html(r["rank1_mean"], r["rank1_std"], ".1f")}</td>'
            f'<td class="num nw">{_pm_html(r["final_loss_mean"], r["final_loss_std"], ".3g")}</td>'
            f'<td class="num nw">{e(_reached(r))}</td>'
            f'<td class="num nw">{_pm_html(r["grad_cv_mean"], r["grad_cv_std"], ".2f")}</td>'
            f"<td>{e(r['findings_gone'] or '—')}</td><td>{e(r['findings_new'] or '—')}</td>"
            f"<td>{e(r['statuses'])}</td></tr>")
    noise = next((n for n in rank["noise"] if n), "")
    caption = ("Mean ± std over seeds. <b>score</b>: the mean effect against the baseline over "
               "mAP, final loss and grad-norm CV, each in units of its seed-to-seed std (clipped "
               f"to ±3). <b>verdict</b>: the metrics whose difference exceeds {EFFECT_SE:g} "
               "standard errors of the difference; read it before the rank. Variants with a "
               "crashed or diverged run rank last"
               + (f". Seed-to-seed std: {e(noise)}." if noise else "."))
    return (f'<p class="desc">{caption}</p><table class="findings">{head}{"".join(rows)}'
            "</table>")


def _ssm_effects_html(sweep) -> str:
    from diagnostics.figures import REMEDY_SSM
    from diagnostics.sweep import ssm_effects
    eff = ssm_effects(sweep.runs)
    cols = [(c, t, neg) for c, t, _, neg in REMEDY_SSM if c in eff]
    if not len(eff) or not cols:
        return ""
    base = eff[eff["variant"] == "baseline"]
    head = "<tr><th>variant</th>" + "".join(f"<th>{e(t)}</th>" for _, t, _ in cols) + "</tr>"
    rows = []
    for r in eff.to_dict("records"):
        cells = []
        for c, _, neg in cols:
            v = r[c]
            v = 0.0 - v if neg and v is not None else v     # 0.0 - v: no "-0"
            ratio = ""
            if len(base) and r["variant"] != "baseline":
                b = base[c].iloc[0]
                b = 0.0 - b if neg else b
                if math.isfinite(v) and math.isfinite(b) and b != 0:
                    ratio = f' <span class="muted">(×{v / b:.3g})</span>'
            cells.append(f'<td class="num">{_num(v, 3)}{ratio}</td>')
        rows.append(f"<tr><td><b>{e(r['variant'])}</b></td>{''.join(cells)}</tr>")
    return ('<p class="desc">Last probe, median over layers and scan directions, mean over '
            "seeds; in brackets the ratio to the baseline.</p>"
            f'<table class="findings">{head}{"".join(rows)}</table>')


def _sweep_runs_html(sweep) -> str:
    rows = []
    for r in sweep.runs.to_dict("records"):
        status = r.get("status") if isinstance(r.get("status"), str) else "unknown"
        found = r.get("findings") or []
        rows.append(
            f"<tr><td>{e(r['variant'])}</td><td class=\"num\">{e(r['seed'])}</td>"
            f"<td><code>diagnose --run {e(r['run'])}</code></td><td>{_status(status)}</td>"
            f'<td class="num">{_num(r.get("steps"))}</td><td class="num">{_num(r.get("mAP"), 3)}'
            f'</td><td class="num">{_num(r.get("final_loss"), 3)}</td>'
            f'<td class="num">{_num(r.get("grad_cv"), 3)}</td>'
            f"<td>{e(', '.join(found) if isinstance(found, list) else found) or '—'}</td>"
            f"<td>{e(r.get('error') or '')}</td></tr>")
    return ("<details><summary>every run of the sweep (open one with its command for its "
            "findings and figures)</summary><table class=\"findings\"><tr><th>variant</th>"
            "<th>seed</th><th>run</th><th>status</th><th>steps</th><th>mAP %</th>"
            "<th>final loss</th><th>grad-norm CV</th><th>findings (warning or worse)</th>"
            f"<th>error</th></tr>{''.join(rows)}</table></details>")


def _sweep_summary_html(sweep) -> str:
    plan = sweep.plan or {}
    budget = plan.get("budget_steps")
    items = [("backbone", e(plan.get("backbone") or "?")),
             ("budget", e(f"{budget} optimizer steps per run" if budget
                          else "the full schedule")),
             ("seeds per variant", _num(plan.get("seeds"))),
             ("variants", _num(len(sweep.ranking))),
             ("runs", e(", ".join(f"{n} {s}" for s, n in
                                  sweep.runs["status"].fillna("unknown").value_counts().items())))]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items)
    base = plan.get("baseline") or {}
    base_rows = "".join(f'<tr><th>{e(k)}</th><td class="mono">{e(json.dumps(v, default=str))}'
                        "</td></tr>" for k, v in sorted(base.items(), key=lambda kv: str(kv[0])))
    notes = "".join(f"<li>{e(n)}</li>" for n in sweep.notes)
    return ('<section id="summary"><h2>Summary</h2>'
            f'<table class="summary">{rows}</table>'
            + (f"<details><summary>the baseline's settings</summary><table>{base_rows}</table>"
               "</details>" if base_rows else "")
            + (f"<p><b>Notes:</b></p><ul>{notes}</ul>" if notes else "")
            + "</section>")


def render_sweep_html(sweep, *, title: str | None = None,
                      now: _dt.datetime | None = None) -> str:
    """The Remedies report of a sweep (:func:`diagnostics.sweep.load_sweep`) as one HTML
    string: summary, the ranking, the figures of :data:`diagnostics.figures.REMEDY_FIGURES`,
    the SSM effects per remedy and every run."""
    from diagnostics.figures import REMEDY_FIGURES

    backbone = (sweep.plan or {}).get("backbone") or "?"
    title = title or f"mambascope remedies: {sweep.name} ({backbone})"
    now = now or _dt.datetime.now()
    blocks, skipped = [], []
    for spec in REMEDY_FIGURES.values():
        fig = spec(sweep)
        if fig is None:
            skipped.append(spec.title)
            continue
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{spec.key}",
                          config={"displaylogo": False, "responsive": True})
        blocks.append(f'<div class="fig" id="fig-{e(spec.key)}"><h3>{e(spec.title)}</h3>'
                      f'<p class="desc">{e(spec.description)}</p>{div}</div>')
        if spec.key == "remedy_ssm":
            blocks.append(_ssm_effects_html(sweep))
    body = (_sweep_summary_html(sweep)
            + f'<section id="ranking"><h2>Remedies ranked</h2>{_ranking_html(sweep.ranking)}'
            + _sweep_runs_html(sweep) + "</section>"
            + f'<section id="figures"><h2>Curves and SSM effects</h2>{"".join(blocks)}'
              "</section>" + _glossary_html())
    nav = [("summary", "Summary"), ("ranking", "Ranking"), ("figures", "Curves and SSM effects"),
           ("glossary", "Codes")]
    return _page(title, f"diagnose sweep in {sweep.runs_dir}: {len(sweep.ranking)} variants, "
                        f"{len(sweep.runs)} runs", nav, body, skipped, now)


def default_sweep_report_path(sweep, reports_dir: str | Path = REPORTS_DIR) -> Path:
    """``reports/sweep_NAME.html`` (the sweep folder's name, made file-safe)."""
    return Path(reports_dir) / f"sweep_{_safe_name(sweep.name)[:120]}.html"


def write_sweep_report(sweep, path: str | Path | None = None) -> Path:
    """Write :func:`render_sweep_html` to ``path`` (default :func:`default_sweep_report_path`)."""
    path = Path(path) if path is not None else default_sweep_report_path(sweep)
    if path.is_dir() or str(path).endswith(("/", "\\")):
        path = default_sweep_report_path(sweep, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_sweep_html(sweep), encoding="utf-8")
    tmp.replace(path)
    return path


def diagnose_sweep(sweep_dir: str | Path, out: str | Path | None = None,
                   fmt: str = "table") -> int:
    """`diagnose --run runs/sweep` on a `diagnose sweep` folder: print the ranking and the SSM
    effects, write the Remedies report."""
    from diagnostics.sweep import load_sweep, print_ranking, print_ssm_effects

    sweep = load_sweep(sweep_dir)
    path = write_sweep_report(sweep, out)
    if fmt == "json":
        import sys
        from diagnostics.analyzers import _jsonable
        payload = dict(schema=JSON_SCHEMA, sweep=str(sweep.runs_dir), plan=sweep.plan,
                       ranking=_jsonable(sweep.ranking.to_dict("records")),
                       runs=_jsonable(sweep.runs.to_dict("records")), report=str(path))
        sys.stdout.write(json.dumps(payload, indent=2, allow_nan=False, default=str) + "\n")
        return 0
    from rich.console import Console
    from rich.markup import escape
    console = Console(highlight=False, soft_wrap=False, width=None if _is_tty() else 160)
    print_ranking(sweep.ranking, console, title=f"remedies ranked: {escape(str(sweep.runs_dir))}")
    print_ssm_effects(sweep.runs, console)
    console.print(f"report: {escape(str(path))}")
    return 0


# ------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------

def json_payload(a: Analysis, report: Path | None) -> dict[str, Any]:
    """What ``--format json`` prints (shape documented in docs/findings.md)."""
    from diagnostics.analyzers import _jsonable

    runs = []
    for r, fs, s in zip(a.runs, a.findings, a.summaries):
        runs.append(dict(name=r.name, path=str(r.path), backbone=r.manifest.get("backbone"),
                         status=r.status, summary=_jsonable(s),
                         findings=[f.to_dict() for f in fs]))
    return dict(schema=JSON_SCHEMA, runs=runs,
                comparisons=[c.to_dict() for _, _, c in a.comparisons],
                report=str(report) if report else None)


def _rich_tables(a: Analysis):
    from rich.markup import escape
    from rich.table import Table

    colors = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    multi = len(a.runs) > 1
    items = a.all_findings()
    counts = count_by_severity(f for _, f in items)
    title = ("findings: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + " — "
             + escape(" vs ".join(r.name for r in a.runs)))
    t = Table(title=title, show_lines=False, expand=False)
    t.add_column("severity")
    t.add_column("code")
    if multi:
        t.add_column("run")
    for col in ("layer", "dir", "steps"):
        t.add_column(col, justify="right" if col != "dir" else "left")
    t.add_column("finding", overflow="fold")
    t.add_column("remedy", overflow="fold")
    for i, f in items:
        steps = (f"{f.steps[0]}-{f.steps[1]}" if f.steps and f.steps[0] != f.steps[1]
                 else (str(f.steps[0]) if f.steps else ""))
        cells = [f"[{colors[f.severity]}]{f.severity}[/]", escape(f.code)]
        if multi:
            cells.append(escape(a.runs[i].name))
        cells += ["" if f.layer is None else str(f.layer), escape(f.direction or ""), steps,
                  escape(f.message), escape(f.remedy)]
        t.add_row(*cells)
    tables = [t]
    for i, j, c in a.comparisons:
        ct = Table(title=f"{escape(a.runs[i].name)} (a) vs {escape(a.runs[j].name)} (b)")
        ct.add_column("claim")
        ct.add_column("verdict")
        ct.add_column("evidence", overflow="fold")
        who = {"a": a.runs[i].name, "b": a.runs[j].name, None: "tie"}
        ct.add_row("faster", escape(who[c.convergence.get("faster")]),
                   escape(c.convergence.get("text", "")))
        ct.add_row("more stable", escape(who[c.stability.get("more_stable")]),
                   escape(c.stability.get("text", "")))
        ct.add_row("depth profile", "", escape(c.depth_profile.get("text", "")))
        vcol = {"supported": "green", "contradicted": "red"}
        for v in c.claims:
            ct.add_row(v.claim, f"[{vcol.get(v.verdict, 'dim')}]{v.verdict}[/]", escape(v.evidence))
        tables.append(ct)
    return tables


def diagnose_runs(run_paths: Sequence[str | Path], out: str | Path | None = None,
                  fmt: str = "table", fail_on: str | None = None) -> int:
    """`diagnose --run A [--run B ...]`: analyse, print, write the HTML report.

    Returns the exit status: 1 when ``fail_on`` (``warning``/``error``) is given and a finding
    at that severity or worse exists, else 0. User errors (a missing path, not a run, an
    unreadable run) raise RunFormatError/ValueError with a one-line message (the CLI exits 2).
    """
    if fmt not in ("table", "json"):
        raise ValueError(f"unknown format {fmt!r}: use table or json")
    if fail_on is not None and fail_on not in SEVERITIES:
        raise ValueError(f"unknown severity {fail_on!r}: use warning or error")
    from diagnostics.sweep import is_sweep
    sweeps = [p for p in run_paths if is_sweep(p)]
    if sweeps:
        if len(run_paths) > 1:
            raise ValueError(f"{sweeps[0]} is a sweep: give it alone (diagnose --run "
                             f"{sweeps[0]}), or its runs one by one")
        if fail_on is not None:
            raise ValueError("--fail-on reads one run's findings: give it a run of the sweep, "
                             "not the sweep")
        return diagnose_sweep(sweeps[0], out, fmt)
    runs = load_runs(run_paths)
    a = analyse_runs(runs)
    if out is None:
        path = default_report_path(runs)
    else:
        path = Path(out)
        if path.is_dir() or str(out).endswith(("/", "\\")):
            path = default_report_path(runs, path)
    path = write_report(a, path)
    if fmt == "json":
        import sys
        sys.stdout.write(json.dumps(json_payload(a, path), indent=2, allow_nan=False) + "\n")
    else:
        from rich.console import Console
        from rich.markup import escape
        console = Console(highlight=False, soft_wrap=False,
                          width=None if _is_tty() else 160)
        tables = _rich_tables(a)
        if a.all_findings():
            console.print(tables[0])
        else:
            console.print("no findings: nothing recorded crossed a threshold ("
                          + escape(", ".join(r.name for r in runs)) + ")")
        for t in tables[1:]:
            console.print(t)
        console.print(f"report: {escape(str(path))}")
    if fail_on is not None:
        worst = max((severity_rank(f.severity) for fs in a.findings for f in fs), default=-1)
        if worst >= severity_rank(fail_on):
            return 1
    return 0


def _is_tty() -> bool:
    import sys
    return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()

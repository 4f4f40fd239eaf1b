"""Remedies: a `diagnose sweep` folder (baseline, each remedy alone, the recipe) ranked, its
curves overlaid and each remedy's effect on the recorded SSM statistics; the HTML report's
Remedies view (`diagnose --run runs/sweep`)."""

import streamlit as st

import common
from diagnostics import figures

st.title("Remedies")
st.caption("Which of the seed's remedies helps this model? A `diagnose sweep` trains a "
           "baseline, each remedy alone and all of them together, over several seeds; here "
           "they are ranked against the seed-to-seed noise, overlaid, and compared on what the "
           "selective scan did.")


def body():
    if common.empty_state(need_selection=False):
        return
    root = common.runs_dir()
    sweeps = common.discover_sweeps(root)
    if not sweeps:
        st.info("No sweep under this folder. `diagnose sweep` writes one (each variant a run, "
                "plus sweep.json): about 22 minutes on 2 cores with the CPU preset:",
                icon=":material/inbox:")
        st.code(common.MAKE_SWEEP, language="bash")
        return
    labels = {str(p): common.label_of(p, root) for p in sweeps}
    pick = common.select("Sweep", list(labels), key="sweep", format_func=labels.get)
    sweep, error = common.sweep_of(common.Path(pick))
    if sweep is None:
        common.show_error(error or "cannot read", labels[pick])
        return
    plan = sweep.plan or {}
    c = st.columns(4)
    c[0].metric("Backbone", str(plan.get("backbone") or "?"))
    budget = plan.get("budget_steps")
    c[1].metric("Budget", f"{budget} steps" if budget else "full schedule")
    c[2].metric("Seeds per variant", str(plan.get("seeds") or "?"))
    c[3].metric("Runs", f"{len(sweep.runs)}")
    for note in sweep.notes:
        st.text(f"note: {note}")

    st.header("Ranking")
    st.caption("Best first; variants with a crashed or diverged run last. Read the verdict "
               "before the rank: a difference is an effect only when it exceeds two standard "
               "errors of the seed-to-seed noise.")
    st.dataframe(common.ranking_table(sweep.ranking), hide_index=True, key="sweep-ranking",
                 column_config=common.RANKING_COLUMNS, placeholder="—")
    noise = next((n for n in sweep.ranking["noise"] if n), "")
    if noise:
        st.text(f"seed-to-seed std: {noise}")
    with st.expander("Every run of the sweep"):
        st.dataframe(common.sweep_runs_table(sweep), hide_index=True, key="sweep-runs",
                     placeholder="—")
        st.caption("Select a run in the sidebar to open it on the other pages.")

    st.header("Curves and SSM effects")
    shown = 0
    for spec in figures.REMEDY_FIGURES.values():
        fig = spec(sweep)
        if fig is None:
            continue
        shown += 1
        st.subheader(spec.title, anchor=f"fig-{spec.key}")
        st.caption(spec.description)
        common.plot(fig, f"fig-{spec.key}")
        if spec.key == "remedy_ssm":
            eff = common.ssm_effects_table(sweep)
            if len(eff):
                st.dataframe(eff, hide_index=True, key="sweep-ssm", placeholder="—")
    if not shown:
        st.info("None of the sweep's runs could be read yet.", icon=":material/hourglass:")


def _watched():
    """The sweep's runs, so that the page follows a sweep still training."""
    root = common.runs_dir()
    pick = st.session_state.get("sweep")
    if not pick:
        return []
    sweep, _ = common.sweep_of(common.Path(pick))
    if sweep is None:
        return []
    return [common.digest(common.Path(p), root) for p in sweep.runs["run"]]


common.live(body, watch=_watched)

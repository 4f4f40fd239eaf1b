"""SSM internals: dt and A·dt bands per layer and direction, decay fractions, state norms,
selectivity, A_log drift."""

import streamlit as st

import common

st.title("SSM internals")
st.caption("What the selective scan does on probe steps, per SSM layer and scan direction: "
           "the step sizes dt, the decays exp(A·dt), hidden-state norms and the drift of A_log.")


def body():
    if common.empty_state():
        return
    runs = common.selected_runs()
    if not runs:
        return
    layers = common.ssm_layers(runs)
    if not layers:
        st.info("None of the selected runs recorded SSM internals: ViT and MAMBA-S have no "
                "selective scan (their layers are on the Layers page). Select a MAMBA-V2 run, "
                "or any model with `A_log` and `dt_proj` recorded with probes on.",
                icon=":material/info:")
        return
    shown = common.multiselect("Layers", layers, default=common.default_layers(layers),
                               key="ssm_layers",
                               help="Blocks shown in the per-layer figures (all of them by "
                                    "default on shallow models).")
    missing = common.show_figures(common.only_layers(runs, shown or layers), ["ssm", "alog"],
                                  findings=common.findings_of(common.selected_digests()))
    common.not_recorded(missing)


common.live(body)

"""Layers: gradient norms across depth, update-to-weight ratios, ViT attention statistics."""

import streamlit as st

import common

st.title("Layers")
st.caption("Gradient norm of every block over training, the gradient profile across depth, "
           "update-to-weight ratios, and the attention statistics of ViT layers.")


def body():
    if common.empty_state():
        return
    runs = common.selected_runs()
    if not runs:
        return
    missing = common.show_figures(runs, ["layers", "attention"],
                                  findings=common.findings_of(common.selected_digests()))
    common.not_recorded(missing)


common.live(body)

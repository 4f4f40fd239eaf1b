"""Convergence: loss, learning rate, gradient norm with clip events, evaluation curves; the
selected runs on shared axes."""

import streamlit as st

import common

st.title("Convergence")
st.caption("Loss, learning rate and gradient norm per step, clip and non-finite events, and the "
           "evaluation metrics: the selected runs on shared axes.")


def body():
    if common.empty_state():
        return
    runs = common.selected_runs()
    if not runs:
        return
    missing = common.show_figures(runs, ["training"],
                                  findings=common.findings_of(common.selected_digests()))
    events = common.events_table(runs)
    if len(events):
        st.subheader("Events")
        st.caption("Clip events, non-finite values and notes the recorder wrote.")
        st.dataframe(events, hide_index=True, key="events")
    common.not_recorded(missing)


common.live(body)

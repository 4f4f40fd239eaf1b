"""Findings: what the analyzers flag in the selected runs, filterable, each with its remedy."""

import streamlit as st

import common

st.title("Findings")
st.caption("What crossed a threshold in the selected runs, worst first: where (layer, scan "
           "direction), when (steps), the numbers behind it, and the remedy.")


def body():
    if common.empty_state():
        return
    digests = common.selected_digests()
    for d in digests:
        if not d.ok:
            common.show_error(d.error, d.label)
    table = common.findings_table(digests)
    counts = common.count_by_severity(common.findings_of(digests))
    cols = st.columns(3)
    for col, sev in zip(cols, ("error", "warning", "info")):
        color = {"error": "red", "warning": "orange", "info": "blue"}[sev]
        col.metric(f":{color}[{sev}]", counts.get(sev, 0), border=True)
    if not len(table):
        st.success("No findings: nothing recorded in the selected runs crossed a threshold.")
    else:
        c1, c2, c3 = st.columns([1, 2, 2])
        sev = common.multiselect("Severity", list(common.SEVERITY_COLORS), default=[],
                                 key="f_severity", where=c1, placeholder="all severities")
        code = common.multiselect("Code", sorted(table["code"].unique()), default=[],
                                  key="f_code", where=c2, placeholder="all codes")
        run = common.multiselect("Run", list(dict.fromkeys(table["run"])), default=[],
                                 key="f_run", where=c3, placeholder="all runs")
        text = st.text_input("Search", key="f_text", placeholder="words in the finding or remedy")
        shown = common.filter_findings(table, sev, code, run, text)
        st.caption(f"{len(shown)} of {len(table)} findings")
        event = st.dataframe(common.colored(shown, "severity", common.SEVERITY_COLORS),
                             hide_index=True, key="findings-table",
                             column_config=common.FINDINGS_COLUMNS, on_select="rerun",
                             selection_mode="single-row")
        rows = event.selection.rows if event is not None else []
        if rows and rows[0] < len(shown):
            common.finding_details(shown.iloc[rows[0]])
        else:
            st.caption("Select a row to read the finding in full, with its numbers.")
    with st.expander("Finding codes: what each means, when it fires, the remedy"):
        st.dataframe(common.codes_table(), hide_index=True, key="codes-table")


common.live(body)
